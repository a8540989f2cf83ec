-- userd:post-deploy
-- The contract half of 00032 (numbered after this release's expand
-- migrations: `userd serve` applies expand migrations only up to the first
-- pending post-deploy one, so a release's post-deploy migrations come after
-- all its expand ones; a database that applied it as 00033 runs it again,
-- which changes nothing).
-- Apply it once no replica of the previous release runs (`userd migrate up`; `userd serve` leaves it pending, and
-- applies it only on a new database). It drops what 00032 replaced with a
-- partial index that personal accounts do not write:
--   * 00026's full member index of the ledger, which the previous release's
--     ListMemberCreditTransactions reads (this release's reads 00032's
--     credit_transactions_member_actor_idx);
--   * the constraint accounts_organization_id_key, whose uniqueness 00032's
--     accounts_organization_key keeps.
-- One short transaction: dropping a btree index or a unique constraint is
-- a catalog change. Its locks (accounts, then credit_transactions, in the
-- writers' order) wait at most 5 s and then it fails, to be run again.

-- +goose Up
SET LOCAL lock_timeout = '5s';
LOCK TABLE accounts, credit_transactions IN ACCESS EXCLUSIVE MODE;
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_organization_id_key;
DROP INDEX IF EXISTS credit_transactions_account_actor_idx;

-- +goose Down
SET LOCAL lock_timeout = '5s';
LOCK TABLE accounts, credit_transactions IN ACCESS EXCLUSIVE MODE;
ALTER TABLE accounts ADD CONSTRAINT accounts_organization_id_key UNIQUE (organization_id);
CREATE INDEX IF NOT EXISTS credit_transactions_account_actor_idx ON credit_transactions (user_id, actor_user_id, id);

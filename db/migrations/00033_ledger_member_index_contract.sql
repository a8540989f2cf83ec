-- userd:post-deploy
-- +goose NO TRANSACTION
-- +goose Up
-- The contract half of 00032: drops 00026's full member index once no
-- replica of the previous release runs (`userd migrate up`; `userd serve`
-- leaves it pending, and applies it only on a new database). The previous
-- release's ListMemberCreditTransactions reads it; this release's reads
-- 00032's partial credit_transactions_member_actor_idx, so every personal
-- ledger write stops paying for an entry in it. CONCURRENTLY: the ledger
-- keeps taking writes meanwhile.
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_account_actor_idx;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_account_actor_idx;
CREATE INDEX CONCURRENTLY credit_transactions_account_actor_idx
    ON credit_transactions (user_id, actor_user_id, id);

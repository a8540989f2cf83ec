-- +goose NO TRANSACTION
-- +goose Up
-- Serves ListCreditTransactions filtered by member (an organization's
-- ledger, the entries one member made): one account's entries by the user
-- who acted, newest first, read from the index in order, so that a page
-- of a member's entries costs the page, not the account's whole ledger.
-- Built CONCURRENTLY, outside a transaction, so that the ledger keeps
-- taking writes from running replicas while it builds; a build that failed
-- leaves an invalid index behind, which the DROP clears before the next
-- attempt (as in 00005).
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_account_actor_idx;
CREATE INDEX CONCURRENTLY credit_transactions_account_actor_idx
    ON credit_transactions (user_id, actor_user_id, id);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_account_actor_idx;

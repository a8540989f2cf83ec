-- +goose NO TRANSACTION
-- +goose Up
-- Serves GetUsageSummary: one user's ledger entries in a time window, read
-- from the index alone (delta and reason are all the summary needs). Built
-- CONCURRENTLY, outside a transaction, so that a large ledger keeps taking
-- writes from running replicas while it builds. A build that failed leaves
-- an invalid index behind: the DROP clears it before the next attempt.
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_user_id_created_at_idx;
CREATE INDEX CONCURRENTLY credit_transactions_user_id_created_at_idx
    ON credit_transactions (user_id, created_at) INCLUDE (delta, reason);

-- The check 00004 added NOT VALID: validating it reads idempotency_keys
-- under a lock that lets writes go on.
ALTER TABLE idempotency_keys VALIDATE CONSTRAINT idempotency_keys_operation_valid;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_user_id_created_at_idx;

-- Queries on the credit ledger.

-- name: InsertCreditTransaction :one
INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
VALUES (@user_id, @delta, @balance_after, @kind, @reason, @idempotency_key)
RETURNING *;

-- name: GetCreditTransactionByKey :one
SELECT * FROM credit_transactions
WHERE user_id = @user_id AND idempotency_key = @idempotency_key::text;

-- name: GetCreditTransactionByID :one
SELECT * FROM credit_transactions
WHERE id = @id;

-- ListCreditTransactions pages newest first: pass before_id = 0 for the first
-- page, then the id of the last entry seen.
-- name: ListCreditTransactions :many
SELECT * FROM credit_transactions
WHERE user_id = @user_id
  AND (@before_id::bigint = 0 OR id < @before_id::bigint)
ORDER BY id DESC
LIMIT @row_limit;

-- name: SumCreditTransactions :one
SELECT coalesce(sum(delta), 0)::bigint AS total, count(*) AS entries
FROM credit_transactions
WHERE user_id = @user_id;

-- Queries on the credit ledger.

-- name: InsertCreditTransaction :one
INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
VALUES (@user_id, @delta, @balance_after, @kind, @reason, @idempotency_key)
RETURNING *;

-- ApplyCreditTransaction sets the user's balance and records the entry in
-- one round trip.
-- name: ApplyCreditTransaction :one
WITH balance AS (
    UPDATE users SET credits = @balance_after, updated_at = now()
    WHERE users.id = @user_id::uuid
    RETURNING id AS balance_user_id
)
INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
SELECT balance.balance_user_id, @delta, @balance_after, @kind, @reason, @idempotency_key FROM balance
RETURNING *;

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

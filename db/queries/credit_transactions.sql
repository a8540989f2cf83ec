-- Queries on the credit ledger.

-- ListCreditTransactions pages newest first: pass before_id = 0 for the first
-- page, then the id of the last entry seen.
-- name: ListCreditTransactions :many
SELECT * FROM credit_transactions
WHERE user_id = @user_id
  AND (@before_id::bigint = 0 OR id < @before_id::bigint)
ORDER BY id DESC
LIMIT @row_limit;

-- ChangeCredits deducts or grants in one round trip (see the function
-- userd_change_credits in db/migrations): the status says what happened.
-- name: ChangeCredits :one
SELECT * FROM userd_change_credits(@clerk_user_id::text, @kind::text, @delta::bigint, @reason::text, @idempotency_key::text);

-- DeductCreditsForAction charges one use of an action at its current price
-- in one round trip (see the function userd_deduct_for_action in
-- db/migrations): the status says what happened.
-- name: DeductCreditsForAction :one
SELECT * FROM userd_deduct_for_action(@clerk_user_id::text, @action::text, @idempotency_key::text);


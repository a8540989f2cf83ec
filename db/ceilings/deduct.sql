-- Ceiling of DeductCredits (amount 1, a fresh idempotency key): one
-- statement. The UPDATE takes the user's row lock (so deductions of one
-- user serialize) and applies only when the balance covers the amount, so
-- it never goes negative; the ledger row is written in the same statement
-- with the balance it produced, so credits = sum(delta) at every commit;
-- the key's uniqueness per user is the constraint on credit_transactions.
-- No row back means "unknown user or insufficient credits" and a reused
-- key is a unique violation: telling those apart, and replaying the
-- original result, may take a second round trip; a fresh key may not.
-- Once idempotency_keys (one key space per user for every keyed write,
-- issue 10) exists, the key row joins the statement as one more CTE:
--   t AS (INSERT INTO credit_transactions ... RETURNING id, user_id, idempotency_key),
--   k AS (INSERT INTO idempotency_keys (user_id, idempotency_key, operation, transaction_id)
--         SELECT user_id, idempotency_key, 'DEDUCT', id FROM t)
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH u AS (
    UPDATE users SET credits = credits - 1, updated_at = now()
    WHERE clerk_user_id = 'user_bench' || :n AND deleted_at IS NULL AND credits >= 1
    RETURNING id, credits
)
INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
SELECT id, -1, credits, 'DEDUCT', '', 'pgb' || :k || '-' || :client_id FROM u
RETURNING id, balance_after;

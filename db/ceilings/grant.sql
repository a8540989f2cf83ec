-- Ceiling of GrantCredits (amount 1, a fresh idempotency key): one
-- statement, as deduct.sql without the balance condition (an overflowing
-- balance fails on bigint range). The UPDATE takes the user's row lock;
-- the ledger row carries the balance it produced, so credits = sum(delta)
-- at every commit; the key's uniqueness per user is the constraint on
-- credit_transactions. No row back means "unknown user"; a reused key is a
-- unique violation, and its replay may take a second round trip.
-- Once idempotency_keys (issue 10) exists, the key row joins as in
-- deduct.sql, with operation 'GRANT'.
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH u AS (
    UPDATE users SET credits = credits + 1, updated_at = now()
    WHERE clerk_user_id = 'user_bench' || :n AND deleted_at IS NULL
    RETURNING id, credits
)
INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
SELECT id, 1, credits, 'GRANT', '', 'pgb' || :k || '-' || :client_id FROM u
RETURNING id, balance_after;

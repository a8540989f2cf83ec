-- Ceiling of GrantCredits (amount 1, a fresh idempotency key): one
-- statement, as deduct.sql without the balance condition (a balance that
-- would overflow fails on bigint's range). The UPDATE takes the user's row
-- lock; the key is claimed in idempotency_keys, the user's one key space;
-- the ledger row carries the balance it produced, so credits = sum(delta) at
-- every commit. No row back means "unknown user"; a used key is a unique
-- violation that undoes the statement, and its replay may take a second
-- round trip.
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH u AS (
    UPDATE users SET credits = credits + 1, updated_at = now()
    WHERE clerk_user_id = 'user_bench' || :n AND deleted_at IS NULL
    RETURNING id, credits
), claim AS (
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    SELECT id, 'pgb' || :k || '-' || :client_id, 'GRANT' FROM u
)
INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
SELECT id, 1, credits, 'GRANT', '', 'pgb' || :k || '-' || :client_id FROM u
RETURNING id, balance_after;

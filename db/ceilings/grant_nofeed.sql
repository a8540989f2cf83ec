-- Bench operation: gRPC GrantCredits, without the change feed (no feed_events row).
-- Ceiling of GrantCredits (amount 1, a fresh idempotency key): one
-- statement, as deduct.sql without the balance condition (a balance that
-- would overflow fails on bigint's range). The UPDATE takes the row lock of
-- the live user's open personal account; the key is claimed in
-- idempotency_keys, the account's one key space; the ledger row carries
-- who acted and the balance it produced, so credits = sum(delta) at every
-- commit. No row back means "unknown user"; a used key is a unique
-- violation that undoes the statement, and its replay may take a second
-- round trip.
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH u AS (
    UPDATE accounts a SET credits = a.credits + 1, updated_at = now()
    FROM users p
    WHERE p.clerk_user_id = 'user_bench' || :n AND p.deleted_at IS NULL AND a.id = p.id
      AND a.closed_at IS NULL
    RETURNING a.id, a.credits
), claim AS (
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    SELECT id, 'pgb' || :k || '-' || :client_id, 'GRANT' FROM u
)
INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key, actor_user_id, service)
SELECT id, 1, credits, 'GRANT', '', 'pgb' || :k || '-' || :client_id, id, 'bench' FROM u
RETURNING id, balance_after;

-- Bench operation: gRPC DeductCredits (and REST DeductCredits), without the change feed (no feed_events row).
-- Ceiling of DeductCredits (amount 1, a fresh idempotency key): one
-- statement. The UPDATE takes the row lock of the live user's personal
-- account (so the keyed writes of one account serialize) and applies only
-- when the account is open and the balance covers the amount, so it never
-- goes negative; the key is claimed in idempotency_keys, the account's one
-- key space across deduct, grant and set-plan (its primary key refuses a
-- key any of them used); the ledger row, with who acted (the user, through
-- a service), is written in the same statement with the balance it
-- produced, so credits = sum(delta) at every commit. No row back means
-- "unknown user or insufficient credits" and a used key is a unique
-- violation that undoes the whole statement: telling those apart, and
-- replaying the original result, may take a second round trip; a fresh key
-- may not.
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH u AS (
    UPDATE accounts a SET credits = a.credits - 1, updated_at = now()
    FROM users p
    WHERE p.clerk_user_id = 'user_bench' || :n AND p.deleted_at IS NULL AND a.id = p.id
      AND a.closed_at IS NULL AND a.credits >= 1
    RETURNING a.id, a.credits
), claim AS (
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    SELECT id, 'pgb' || :k || '-' || :client_id, 'DEDUCT' FROM u
)
INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key, actor_user_id, service)
SELECT id, -1, credits, 'DEDUCT', '', 'pgb' || :k || '-' || :client_id, id, 'bench' FROM u
RETURNING id, balance_after;

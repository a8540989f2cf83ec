-- Bench operation: gRPC DeductCredits (and REST DeductCredits), with the change feed.
-- Ceiling of DeductCredits (amount 1, a fresh idempotency key) with what
-- userd writes for it: deduct_nofeed.sql's one statement (the balance
-- update under the account's row lock, only when open and covered; the key
-- claimed in the account's one key space; the ledger row with who acted
-- and the balance it produced, so credits = sum(delta) at every commit)
-- plus the credits.changed event on the user's stream, with the payload
-- consumers read and its order_xid raised to the stream's previous event.
-- In one statement that look-up shares the snapshot taken before the row
-- lock was granted (userd reads it in a second statement, after the lock,
-- which is what keeps a stream in order under contention): the same work,
-- a weaker guarantee, so a ceiling. No row back means "unknown user or
-- insufficient credits"; a used key is a unique violation that undoes the
-- whole statement.
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH u AS (
    UPDATE accounts a SET credits = a.credits - 1, updated_at = now()
    FROM users p
    WHERE p.clerk_user_id = 'user_bench' || :n AND p.deleted_at IS NULL AND a.id = p.id
      AND a.closed_at IS NULL AND a.credits >= 1
    RETURNING a.id, a.credits, p.clerk_user_id
), claim AS (
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    SELECT id, 'pgb' || :k || '-' || :client_id, 'DEDUCT' FROM u
), t AS (
    INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind, reason, idempotency_key, actor_user_id, service)
    SELECT id, -1, credits, 'DEDUCT', '', 'pgb' || :k || '-' || :client_id, id, 'bench' FROM u
    RETURNING t.*
)
INSERT INTO feed_events (order_xid, kind, user_id, clerk_user_id, account_id, actor_clerk_user_id, payload)
SELECT greatest(pg_current_xact_id()::text::bigint,
                (SELECT e.order_xid FROM feed_events e WHERE e.clerk_user_id = u.clerk_user_id
                 ORDER BY e.order_xid DESC, e.id DESC LIMIT 1)),
       'credits.changed', u.id, u.clerk_user_id, u.id, u.clerk_user_id,
       jsonb_build_object('id', t.id, 'delta', t.delta, 'balance_after', t.balance_after, 'kind', t.kind,
           'reason', t.reason, 'idempotency_key', t.idempotency_key, 'created_at', t.created_at,
           'actor_user_id', t.actor_user_id, 'service', t.service)
FROM u JOIN t ON t.user_id = u.id
RETURNING id, payload->'balance_after';

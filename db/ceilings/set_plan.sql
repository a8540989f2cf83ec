-- Bench operation: gRPC SetPlan (PRO, bonus 1), with the change feed.
-- Ceiling of SetPlan (to PRO with 1 bonus credit, a fresh idempotency key)
-- with what userd writes for it: set_plan_nofeed.sql's one statement (the
-- locked account's previous plan, the plan and balance update, the key
-- claim, the bonus ledger row and the plan change naming it) plus the two
-- events on the user's stream in userd's order, credits.changed for the
-- bonus then plan.changed, their order_xid raised to the stream's previous
-- event (here read with a snapshot taken before the lock wait ended: see
-- deduct.sql). No row back means "unknown user"; a used key is a unique
-- violation that undoes the statement.
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH prev AS (
    SELECT a.id, a.plan, p.clerk_user_id FROM users p JOIN accounts a ON a.id = p.id
    WHERE p.clerk_user_id = 'user_bench' || :n AND p.deleted_at IS NULL AND a.closed_at IS NULL
    FOR UPDATE OF a
), u AS (
    UPDATE accounts SET plan = 'PRO', credits = accounts.credits + 1, updated_at = now()
    FROM prev WHERE accounts.id = prev.id
    RETURNING accounts.id, accounts.credits, prev.plan AS previous_plan, prev.clerk_user_id
), claim AS (
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    SELECT id, 'pgb' || :k || '-' || :client_id, 'SET_PLAN' FROM u
), t AS (
    INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind, reason, idempotency_key, actor_user_id, service)
    SELECT id, 1, credits, 'PLAN_BONUS', '', 'pgb' || :k || '-' || :client_id, id, 'bench' FROM u
    RETURNING t.*
), pc AS (
    INSERT INTO plan_changes AS pc (user_id, previous_plan, plan, bonus_credits, transaction_id, reason, idempotency_key,
                                    actor_user_id, service)
    SELECT u.id, u.previous_plan, 'PRO', 1, t.id, '', 'pgb' || :k || '-' || :client_id, u.id, 'bench'
    FROM u JOIN t ON t.user_id = u.id
    RETURNING pc.*
), events AS (
INSERT INTO feed_events (order_xid, kind, user_id, clerk_user_id, account_id, actor_clerk_user_id, payload)
SELECT greatest(pg_current_xact_id()::text::bigint,
                (SELECT e.order_xid FROM feed_events e WHERE e.clerk_user_id = u.clerk_user_id
                 ORDER BY e.order_xid DESC, e.id DESC LIMIT 1)),
       x.kind, u.id, u.clerk_user_id, u.id, u.clerk_user_id, x.payload
FROM u, LATERAL (
    SELECT 1 AS n, 'credits.changed' AS kind,
           jsonb_build_object('id', t.id, 'delta', t.delta, 'balance_after', t.balance_after, 'kind', t.kind,
               'reason', t.reason, 'idempotency_key', t.idempotency_key, 'created_at', t.created_at,
               'actor_user_id', t.actor_user_id, 'service', t.service) AS payload
    FROM t
    UNION ALL
    SELECT 2, 'plan.changed',
           jsonb_build_object('id', pc.id, 'previous_plan', pc.previous_plan, 'plan', pc.plan,
               'bonus_credits', pc.bonus_credits, 'transaction_id', pc.transaction_id, 'reason', pc.reason,
               'idempotency_key', pc.idempotency_key, 'created_at', pc.created_at,
               'actor_user_id', pc.actor_user_id, 'service', pc.service)
    FROM pc
) x
ORDER BY x.n
RETURNING id
)
-- One row back when both events were written.
SELECT max(id) FROM events HAVING count(*) = 2;

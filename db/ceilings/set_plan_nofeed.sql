-- Bench operation: gRPC SetPlan (PRO, bonus 1), without the change feed (no feed_events row).
-- Ceiling of SetPlan (to PRO with 1 bonus credit, a fresh idempotency
-- key): one statement. The first CTE locks the live user's open personal
-- account and reads the plan it had (under READ COMMITTED a locking read
-- returns the latest committed row, so previous_plan is never stale); the
-- UPDATE sets plan and balance; the key is claimed in idempotency_keys,
-- the account's one key space; the
-- bonus ledger row carries the balance it produced (credits = sum(delta) at
-- every commit) and the plan change names that ledger row. No row back
-- means "unknown user"; a used key is a unique violation that undoes the
-- statement, and its replay may take a second round trip. A change without
-- bonus drops the ledger CTE (transaction_id NULL).
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH prev AS (
    SELECT a.id, a.plan FROM users p JOIN accounts a ON a.id = p.id
    WHERE p.clerk_user_id = 'user_bench' || :n AND p.deleted_at IS NULL AND a.closed_at IS NULL
    FOR UPDATE OF a
), u AS (
    UPDATE accounts SET plan = 'PRO', credits = accounts.credits + 1, updated_at = now()
    FROM prev WHERE accounts.id = prev.id
    RETURNING accounts.id, accounts.credits, prev.plan AS previous_plan
), claim AS (
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    SELECT id, 'pgb' || :k || '-' || :client_id, 'SET_PLAN' FROM u
), t AS (
    INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key, actor_user_id, service)
    SELECT id, 1, credits, 'PLAN_BONUS', '', 'pgb' || :k || '-' || :client_id, id, 'bench' FROM u
    RETURNING id, user_id
)
INSERT INTO plan_changes (user_id, previous_plan, plan, bonus_credits, transaction_id, reason, idempotency_key,
                          actor_user_id, service)
SELECT u.id, u.previous_plan, 'PRO', 1, t.id, '', 'pgb' || :k || '-' || :client_id, u.id, 'bench'
FROM u JOIN t ON t.user_id = u.id
RETURNING id, previous_plan;

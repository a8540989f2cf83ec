-- Bench operation: gRPC DeductCredits (organization, member cap), with the change feed.
-- org_deduct_nofeed.sql plus the credits.changed event on the
-- organization's stream (actor: the member), its order_xid raised to the
-- stream's previous event (read with the statement's snapshot, as the
-- membership). org_deduct_nofeed.sql: ceiling of an organization deduction (amount 1, a fresh idempotency key)
-- by a service for a member: one statement. The seeded users are paired
-- into organizations (org_bench<n/2> has user_bench<n> as a member, with a
-- monthly cap). It reads the member's live membership of the live
-- organization (FOR KEY SHARE) and the member's live user (the entry's
-- actor); the UPDATE takes the row lock of the open organization account
-- and applies only when the balance covers the amount and the member's
-- cap, counted in the current UTC period, has room; the cap's counter
-- moves in the same statement, the key is claimed in the account's one
-- key space and the ledger row carries the member, the service and the
-- balance it produced, so credits = sum(delta) at every commit. The
-- membership is read with the statement's snapshot, taken before the row
-- lock was granted (userd reads it after the lock, so that a removal that
-- committed meanwhile refuses the spend): the same work, a weaker
-- guarantee. No row back means "refused"; a used key is a unique violation
-- that undoes the statement.
\set n random(0, :users - 1)
\set k random(1, 1000000000000)
WITH m AS (
    SELECT u.id AS actor_id, m.clerk_user_id, m.clerk_org_id
    FROM organization_memberships m
    JOIN users u ON u.clerk_user_id = m.clerk_user_id AND u.deleted_at IS NULL
    WHERE m.clerk_org_id = 'org_bench' || (:n / 2) AND m.clerk_user_id = 'user_bench' || :n AND m.deleted_at IS NULL
    ORDER BY m.clerk_updated_at DESC
    LIMIT 1
    FOR KEY SHARE OF m
), acct AS (
    UPDATE accounts a SET credits = a.credits - 1, updated_at = now()
    FROM organizations o, m
    WHERE o.clerk_org_id = m.clerk_org_id AND o.deleted_at IS NULL AND a.organization_id = o.id
      AND a.closed_at IS NULL AND a.credits >= 1
      AND NOT EXISTS (
          SELECT 1 FROM account_member_caps c
          WHERE c.account_id = a.id AND c.clerk_user_id = m.clerk_user_id
            AND c.cap - CASE WHEN c.period_start >= userd_cap_period_start(c.period, now()) THEN c.spent ELSE 0 END < 1)
    RETURNING a.id, a.credits, m.actor_id, m.clerk_user_id, o.clerk_org_id
), cap AS (
    UPDATE account_member_caps c
    SET spent = CASE WHEN c.period_start >= userd_cap_period_start(c.period, now()) THEN c.spent ELSE 0 END + 1,
        period_start = greatest(c.period_start, userd_cap_period_start(c.period, now()))
    FROM acct WHERE c.account_id = acct.id AND c.clerk_user_id = acct.clerk_user_id
), claim AS (
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    SELECT id, 'pgb' || :k || '-' || :client_id, 'DEDUCT' FROM acct
), t AS (
    INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind, reason, idempotency_key, actor_user_id, service)
    SELECT id, -1, credits, 'DEDUCT', '', 'pgb' || :k || '-' || :client_id, actor_id, 'bench' FROM acct
    RETURNING t.*
)
INSERT INTO feed_events (order_xid, kind, clerk_org_id, account_id, actor_clerk_user_id, payload)
SELECT greatest(pg_current_xact_id()::text::bigint,
                (SELECT e.order_xid FROM feed_events e WHERE e.clerk_org_id = acct.clerk_org_id
                 ORDER BY e.order_xid DESC, e.id DESC LIMIT 1)),
       'credits.changed', acct.clerk_org_id, acct.id, acct.clerk_user_id,
       jsonb_build_object('id', t.id, 'delta', t.delta, 'balance_after', t.balance_after, 'kind', t.kind,
           'reason', t.reason, 'idempotency_key', t.idempotency_key, 'created_at', t.created_at,
           'actor_user_id', t.actor_user_id, 'service', t.service)
FROM acct JOIN t ON t.user_id = acct.id
RETURNING id, payload->'balance_after';

-- Queries of the operator console (internal/console, through the domain's
-- Console reads) and its audit log.

-- SearchAccounts finds accounts by what an operator knows of a customer:
-- a prefix of a live user's email (case-insensitive), a Clerk user id, a
-- Clerk organization id or slug, or an account id (account_id, NULL unless
-- the query is a UUID). Paged by account id: after is the last id seen
-- (the nil UUID for the first page).
-- name: SearchAccounts :many
SELECT a.id, a.plan, a.credits, a.closed_at,
    u.clerk_user_id, u.email, u.first_name, u.last_name, u.deleted_at AS user_deleted_at,
    o.clerk_org_id, o.name AS org_name, o.slug AS org_slug, o.deleted_at AS org_deleted_at
FROM accounts a
LEFT JOIN users u ON u.id = a.owner_user_id
LEFT JOIN organizations o ON o.id = a.organization_id
WHERE a.id IN (
        SELECT pu.id FROM users pu
        WHERE @email_prefix::text <> '' AND pu.deleted_at IS NULL AND pu.email IS NOT NULL
          AND lower(pu.email) COLLATE "C" >= lower(@email_prefix::text) COLLATE "C"
          AND lower(pu.email) COLLATE "C" < (lower(@email_prefix::text) || chr(1114111)) COLLATE "C"
          AND starts_with(lower(pu.email), lower(@email_prefix::text))
        UNION ALL
        SELECT cu.id FROM users cu WHERE cu.clerk_user_id = @query::text
        UNION ALL
        SELECT oa.id FROM accounts oa JOIN organizations oo ON oo.id = oa.organization_id
        WHERE oo.clerk_org_id = @query::text OR lower(oo.slug) = lower(@query::text)
        UNION ALL
        SELECT ia.id FROM accounts ia WHERE ia.id = sqlc.narg(account_id)::uuid
    )
  AND a.id > @after::uuid
ORDER BY a.id
LIMIT @row_limit::int;

-- GetConsoleAccount reads an account with its owner: a user (deleted or
-- not) or an organization.
-- name: GetConsoleAccount :one
SELECT a.id, a.plan, a.credits, a.created_at, a.updated_at, a.closed_at,
    u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, u.created_at AS user_created_at,
    u.deleted_at AS user_deleted_at,
    o.clerk_org_id, o.name AS org_name, o.slug AS org_slug, o.deleted_at AS org_deleted_at
FROM accounts a
LEFT JOIN users u ON u.id = a.owner_user_id
LEFT JOIN organizations o ON o.id = a.organization_id
WHERE a.id = @account_id::uuid;

-- ListConsoleLedger pages through an account's ledger, newest first,
-- optionally only one kind and/or the entries one member (Clerk user id)
-- made; before_id = 0 for the first page. Keyset paging on the
-- (user_id, id DESC) index: a page costs the same on the first and the
-- thousandth page.
-- name: ListConsoleLedger :many
SELECT t.id, t.delta, t.balance_after, t.kind, t.reason, t.idempotency_key, t.created_at, t.service,
    coalesce(actor.clerk_user_id, '')::text AS actor_clerk_user_id
FROM credit_transactions t
LEFT JOIN users actor ON actor.id = t.actor_user_id
WHERE t.user_id = @account_id::uuid
  AND (@before_id::bigint = 0 OR t.id < @before_id::bigint)
  AND (@kind::text = '' OR t.kind = @kind::text)
  AND (@member::text = '' OR t.actor_user_id = (SELECT m.id FROM users m WHERE m.clerk_user_id = @member::text))
ORDER BY t.id DESC
LIMIT @row_limit::int;

-- ListConsolePlanChanges lists an account's latest plan changes, newest
-- first.
-- name: ListConsolePlanChanges :many
SELECT pc.id, pc.previous_plan, pc.plan, pc.bonus_credits, pc.reason, pc.created_at, pc.service
FROM plan_changes pc
WHERE pc.user_id = @account_id::uuid
ORDER BY pc.id DESC
LIMIT @row_limit::int;

-- ListUserFeedTail reads the latest change-feed events of a user's stream,
-- newest first.
-- name: ListUserFeedTail :many
SELECT e.id, e.kind, e.created_at, e.actor_clerk_user_id, e.payload
FROM feed_events e
WHERE e.clerk_user_id = @clerk_user_id::text
ORDER BY e.order_xid DESC, e.id DESC
LIMIT @row_limit::int;

-- ListOrgFeedTail is ListUserFeedTail for an organization's stream.
-- name: ListOrgFeedTail :many
SELECT e.id, e.kind, e.created_at, e.actor_clerk_user_id, e.payload
FROM feed_events e
WHERE e.clerk_org_id = @clerk_org_id::text
ORDER BY e.order_xid DESC, e.id DESC
LIMIT @row_limit::int;

-- ListUnappliedWebhookEvents lists the latest Clerk deliveries that were
-- processed without being applied (stale, or about a deleted user), newest
-- first. Deliveries that failed are not stored (they roll back and Svix
-- retries them): Clerk's dashboard lists those.
-- name: ListUnappliedWebhookEvents :many
SELECT w.svix_id, w.event_type, w.object_id, w.outcome, w.processed_at
FROM webhook_events w
WHERE w.outcome NOT IN ('created', 'updated', 'deleted')
ORDER BY w.processed_at DESC
LIMIT @row_limit::int;

-- GetClerkSyncRuns reads the last run of the Clerk reconcile (no row when
-- none ever ran).
-- name: GetClerkSyncRuns :many
SELECT s.last_started_at, s.last_finished_at, s.last_result FROM clerk_sync_state s;

-- LockAccountForAudit locks an account (FOR UPDATE, the lock every write
-- of it takes first) and reads its state before an audited correction.
-- name: LockAccountForAudit :one
SELECT a.id, jsonb_build_object('plan', a.plan, 'balance', a.credits, 'closed', a.closed_at IS NOT NULL) AS state
FROM accounts a
WHERE a.id = @account_id::uuid
FOR UPDATE;

-- InsertOperatorAudit records an operator's correction with the account's
-- state after it, read in the correction's own transaction.
-- name: InsertOperatorAudit :one
INSERT INTO operator_audit (operator, operator_role, action, account_id, details, idempotency_key, reason, before, after)
SELECT @operator::text, @operator_role::text, @action::text, a.id, @details::jsonb, @idempotency_key::text,
    @reason::text, @before::jsonb,
    jsonb_build_object('plan', a.plan, 'balance', a.credits, 'closed', a.closed_at IS NOT NULL)
FROM accounts a
WHERE a.id = @account_id::uuid
RETURNING id;

-- ListOperatorAudit pages through the audit log, newest first, of one
-- account or (account_id NULL) of all; before_id = 0 for the first page.
-- name: ListOperatorAudit :many
SELECT oa.* FROM operator_audit oa
WHERE (sqlc.narg(account_id)::uuid IS NULL OR oa.account_id = sqlc.narg(account_id)::uuid)
  AND (@before_id::bigint = 0 OR oa.id < @before_id::bigint)
ORDER BY oa.id DESC
LIMIT @row_limit::int;

-- CloseAccount closes an account (see userd_account_close).
-- name: CloseAccount :one
SELECT * FROM userd_account_close(@account_id::uuid);

-- SumConsoleUsage sums an account's ledger since a time by UTC day and
-- reason, in one pass over the (user_id, created_at) INCLUDE (delta,
-- reason) index: the console's usage chart.
-- name: SumConsoleUsage :many
SELECT date_trunc('day', t.created_at, 'UTC')::timestamptz AS day, t.reason,
    coalesce(sum(-t.delta) FILTER (WHERE t.delta < 0), 0)::bigint AS spent,
    coalesce(sum(t.delta) FILTER (WHERE t.delta > 0), 0)::bigint AS granted
FROM credit_transactions t
WHERE t.user_id = @account_id::uuid AND t.created_at >= @since::timestamptz
GROUP BY 1, 2
ORDER BY 1, 2;

-- Queries on expiring grants, the plan catalog and allowances (issue 21).

-- GrantExpiringCredits grants credits that expire, to a personal or an
-- organization's account, in one round trip (see userd_grant_expiring in
-- db/schema.sql): the status says what happened.
-- name: GrantExpiringCredits :one
SELECT * FROM userd_grant_expiring(@clerk_user_id::text, @clerk_org_id::text, @service::text, @amount::bigint,
    @reason::text, @idempotency_key::text, @source::text, @expires_at::timestamptz, @now::timestamptz);

-- GetGrantsAccount reads the account of a live user (clerk_org_id = '')
-- or of an organization with what a grants listing shows beside the
-- grants: the balance, the expiring credits, what of them is due at now
-- (not yet expired by the ledger), the plan's catalog entry (NULL columns
-- without one) and the next refill's time.
-- name: GetGrantsAccount :one
SELECT a.id, a.plan, a.credits, a.expiring_credits, a.created_at, a.closed_at, a.next_refill_at,
       (SELECT coalesce(sum(g.remaining), 0) FROM credit_grants g
        WHERE g.account_id = a.id AND g.expired_at IS NULL AND g.expires_at <= @now::timestamptz)::bigint AS due,
       c.allowance, c.period, c.rollover_cap
FROM accounts a
LEFT JOIN users u ON u.id = a.owner_user_id
LEFT JOIN organizations o ON o.id = a.organization_id
LEFT JOIN plan_catalog c ON c.plan = a.plan
WHERE (@clerk_org_id::text = '' AND u.clerk_user_id = @clerk_user_id::text AND u.deleted_at IS NULL)
   OR (@clerk_org_id::text <> '' AND o.clerk_org_id = @clerk_org_id::text);

-- ListLiveGrants lists an account's grants not expired at now and not
-- used up, soonest expiry first (the order deductions consume them in).
-- name: ListLiveGrants :many
SELECT * FROM credit_grants
WHERE account_id = @account_id AND expired_at IS NULL AND expires_at > @now::timestamptz AND remaining > 0
ORDER BY expires_at, id;

-- NextAllowancePeriod is the start of the period after the one holding now
-- for an account created at anchor on a schedule of period.
-- name: NextAllowancePeriod :one
SELECT userd_allowance_period_bound(@anchor::timestamptz, @period::text,
    greatest(userd_allowance_period_index(@anchor::timestamptz, @period::text, @now::timestamptz), 0) + 1)::timestamptz AS next_start;

-- SetPlanAllowance sets a plan's catalog entry and audits the change in
-- one round trip (see userd_set_plan_allowance in db/schema.sql).
-- name: SetPlanAllowance :one
SELECT * FROM userd_set_plan_allowance(@plan::text, @allowance::bigint, @period::text, @rollover_cap::bigint,
    @upgrade_bonus::bigint, @changed_by::text);

-- ListPlanCatalog reads the whole catalog (at most three rows).
-- name: ListPlanCatalog :many
SELECT * FROM plan_catalog ORDER BY plan;

-- ListPlanCatalogChanges pages through the catalog's audit history, newest
-- first; before_id = 0 for the first page.
-- name: ListPlanCatalogChanges :many
SELECT * FROM plan_catalog_changes
WHERE (@before_id::bigint = 0 OR id < @before_id::bigint)
ORDER BY id DESC
LIMIT @row_limit;

-- RunAllowances runs one batch of the expiry and refill job at now (see
-- userd_run_allowances in db/schema.sql).
-- name: RunAllowances :one
SELECT * FROM userd_run_allowances(@now::timestamptz, @batch_size::int);

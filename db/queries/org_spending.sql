-- Spending from organization accounts and members' spending caps (see
-- db/migrations/00012_organization_spending.sql).

-- OrgSpend deducts from an organization's account on behalf of a member,
-- by amount (action = '') or by action, in one round trip (see the
-- function userd_org_spend in db/schema.sql): the status says what
-- happened. now = NULL counts the cap in the database's clock.
-- name: OrgSpend :one
SELECT * FROM userd_org_spend(@clerk_org_id::text, @member_clerk_user_id::text, @service::text,
    @required_permission::text, @amount::bigint, @action::text, @reason::text, @idempotency_key::text,
    sqlc.narg(now)::timestamptz);

-- OrgChangeCredits grants to an organization's account for a service in
-- one round trip (see the function userd_org_change_credits in
-- db/schema.sql).
-- name: OrgChangeCredits :one
SELECT * FROM userd_org_change_credits(@clerk_org_id::text, @actor_clerk_user_id::text, @service::text,
    @kind::text, @delta::bigint, @reason::text, @idempotency_key::text);

-- OrgSetPlan changes an organization's plan for a service in one round
-- trip (see the function userd_org_set_plan in db/schema.sql).
-- name: OrgSetPlan :one
SELECT * FROM userd_org_set_plan(@clerk_org_id::text, @service::text, @plan::text, @bonus::bigint,
    @reason::text, @idempotency_key::text);

-- ListAccountMembers returns the live members of an organization (the
-- newest live membership of each user, as userd_live_membership picks it)
-- with their caps and what each spent in its cap's current period (that of
-- now, NULL: the database's clock), by Clerk user id.
-- name: ListAccountMembers :many
SELECT lm.clerk_user_id, lm.role, lm.permissions,
       c.period AS cap_period, c.cap, c.spent AS cap_counter_spent, c.period_start AS cap_counter_start,
       c.updated_at AS cap_updated_at, c.updated_by AS cap_updated_by,
       coalesce(userd_cap_period_start(c.period, coalesce(sqlc.narg(now)::timestamptz, now())),
                'epoch'::timestamptz)::timestamptz AS cap_period_start
FROM (
    SELECT DISTINCT ON (m.clerk_user_id) m.clerk_user_id, m.role, m.permissions
    FROM organization_memberships m
    JOIN organizations o ON o.clerk_org_id = m.clerk_org_id AND o.deleted_at IS NULL
    WHERE m.clerk_org_id = @clerk_org_id::text AND m.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM users u WHERE u.clerk_user_id = m.clerk_user_id AND u.deleted_at IS NOT NULL)
    ORDER BY m.clerk_user_id, m.clerk_updated_at DESC, m.clerk_membership_id
) lm
LEFT JOIN organizations o ON o.clerk_org_id = @clerk_org_id::text
LEFT JOIN accounts a ON a.organization_id = o.id
LEFT JOIN account_member_caps c ON c.account_id = a.id AND c.clerk_user_id = lm.clerk_user_id
ORDER BY lm.clerk_user_id;

-- SetMemberCap sets or removes (period = '') a member's spending cap in one
-- round trip (see the function userd_set_member_cap in db/schema.sql).
-- name: SetMemberCap :one
SELECT * FROM userd_set_member_cap(@clerk_org_id::text, @member_clerk_user_id::text, @period::text,
    @cap::bigint, @changed_by::text, sqlc.narg(now)::timestamptz);

-- ListMemberCaps returns the caps on an organization's account, by member,
-- each with what the member spent in its current period (that of now, NULL:
-- the database's clock).
-- name: ListMemberCaps :many
SELECT c.clerk_user_id, c.period, c.cap, c.updated_at, c.updated_by,
       p.start::timestamptz AS period_start,
       (CASE WHEN c.period_start >= p.start THEN c.spent ELSE 0 END)::bigint AS spent
FROM organizations o
JOIN accounts a ON a.organization_id = o.id
JOIN account_member_caps c ON c.account_id = a.id
CROSS JOIN LATERAL (SELECT userd_cap_period_start(c.period, coalesce(sqlc.narg(now)::timestamptz, now())) AS start) p
WHERE o.clerk_org_id = @clerk_org_id::text
ORDER BY c.clerk_user_id;

-- CheckOrgAffordability reads, without locking, what a member's deduction
-- from its organization's account would be checked against: the action's
-- price (NULL: unknown or not asked), the account (NULL: none), whether
-- the member's membership is live and holds the required permission, and
-- its cap with its counter and the start of the cap's current period
-- (the counter counts only if it started there or later).
-- name: CheckOrgAffordability :one
SELECT p.credits AS price, a.id AS account_id, a.credits AS available,
       userd_account_due(a.id, a.expiring_credits)::bigint AS due, a.closed_at,
       (m.clerk_membership_id IS NOT NULL)::boolean AS member,
       (m.clerk_membership_id IS NOT NULL AND (@required_permission::text = ''
           OR @required_permission::text = ANY (m.permissions)))::boolean AS permitted,
       c.period AS cap_period, c.cap, c.spent AS cap_counter_spent, c.period_start AS cap_counter_start,
       -- The epoch without a cap.
       coalesce(userd_cap_period_start(c.period, coalesce(sqlc.narg(now)::timestamptz, now())),
                'epoch'::timestamptz)::timestamptz AS cap_period_start
FROM (VALUES (1)) AS one (n)
LEFT JOIN prices p ON p.action = @action::text
LEFT JOIN organizations o ON o.clerk_org_id = @clerk_org_id::text
LEFT JOIN accounts a ON a.organization_id = o.id
-- userd_live_membership's rule, without its lock (this read locks nothing).
LEFT JOIN LATERAL (
    SELECT m.clerk_membership_id, m.permissions FROM organization_memberships m
    WHERE m.clerk_org_id = @clerk_org_id::text AND m.clerk_user_id = @member_clerk_user_id::text
      AND m.deleted_at IS NULL AND o.deleted_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM users u WHERE u.clerk_user_id = m.clerk_user_id AND u.deleted_at IS NOT NULL)
    ORDER BY m.clerk_updated_at DESC, m.clerk_membership_id
    LIMIT 1
) m ON true
LEFT JOIN account_member_caps c ON c.account_id = a.id AND c.clerk_user_id = @member_clerk_user_id::text;

-- OrgAccountID is the id of an organization's account (no row: none).
-- name: OrgAccountID :one
SELECT a.id FROM organizations o JOIN accounts a ON a.organization_id = o.id
WHERE o.clerk_org_id = @clerk_org_id::text;

-- ListAccountCreditTransactions pages an account's entries (personal or an
-- organization's) newest first (before_id = 0 for the first page), each
-- with its actor's Clerk user id.
-- name: ListAccountCreditTransactions :many
SELECT t.id, t.user_id, t.delta, t.balance_after, t.kind, t.reason, t.idempotency_key, t.actor_user_id,
       u.clerk_user_id AS actor_clerk_user_id, t.service, t.created_at
FROM credit_transactions t
LEFT JOIN users u ON u.id = t.actor_user_id
WHERE t.user_id = @account_id::uuid
  AND (@before_id::bigint = 0 OR t.id < @before_id::bigint)
ORDER BY t.id DESC
LIMIT @row_limit::int;

-- ListMemberCreditTransactions is ListAccountCreditTransactions of the
-- entries where the user member_clerk_user_id acted. Two disjoint branches:
-- the entries a member made for another account than its own (an
-- organization's), read along the partial index
-- credit_transactions_member_actor_idx (00032), whose predicate the first
-- branch repeats so that the planner may use it; and, only when the member
-- is the account's owner (a personal account), the entries it made for its
-- own account, read along (user_id, id). Each branch reads at most a page
-- in id order; the page is the newest of both.
-- name: ListMemberCreditTransactions :many
(SELECT t.id, t.user_id, t.delta, t.balance_after, t.kind, t.reason, t.idempotency_key, t.actor_user_id,
        u.clerk_user_id AS actor_clerk_user_id, t.service, t.created_at
 FROM credit_transactions t
 LEFT JOIN users u ON u.id = t.actor_user_id
 WHERE t.user_id = @account_id::uuid
   AND t.actor_user_id = (SELECT mu.id FROM users mu WHERE mu.clerk_user_id = @member_clerk_user_id::text)
   AND t.actor_user_id <> t.user_id
   AND (@before_id::bigint = 0 OR t.id < @before_id::bigint)
 ORDER BY t.id DESC
 LIMIT @row_limit::int)
UNION ALL
(SELECT t.id, t.user_id, t.delta, t.balance_after, t.kind, t.reason, t.idempotency_key, t.actor_user_id,
        u.clerk_user_id AS actor_clerk_user_id, t.service, t.created_at
 FROM credit_transactions t
 LEFT JOIN users u ON u.id = t.actor_user_id
 WHERE t.user_id = @account_id::uuid
   AND t.actor_user_id = t.user_id
   AND @account_id::uuid = (SELECT mu.id FROM users mu WHERE mu.clerk_user_id = @member_clerk_user_id::text)
   AND (@before_id::bigint = 0 OR t.id < @before_id::bigint)
 ORDER BY t.id DESC
 LIMIT @row_limit::int)
ORDER BY id DESC
LIMIT @row_limit::int;

-- SummarizeUsageByMember sums an account's entries with start_time <=
-- created_at < end_time by the user who acted (clerk_user_id '' for
-- entries no user acted for: grants by services, initial credits), the
-- members that moved the most credits first, up to row_limit rows.
-- name: SummarizeUsageByMember :many
SELECT coalesce(u.clerk_user_id, '')::text AS clerk_user_id,
       sum(greatest(-t.delta, 0))::bigint AS spent, sum(greatest(t.delta, 0))::bigint AS granted,
       count(*)::bigint AS entries
FROM credit_transactions t
LEFT JOIN users u ON u.id = t.actor_user_id
WHERE t.user_id = @account_id::uuid
  AND t.created_at >= @start_time::timestamptz AND t.created_at < @end_time::timestamptz
GROUP BY 1
ORDER BY sum(abs(t.delta)) DESC, 1
LIMIT @row_limit::int;

-- SummarizeAccountUsage is SummarizeUsage (credit_transactions.sql) for
-- an account named by its id: an organization's.
-- name: SummarizeAccountUsage :many
WITH owner AS (
    SELECT a.id, a.credits FROM accounts a WHERE a.id = @account_id::uuid
), sums AS (
    SELECT coalesce(e.period, 0)::int AS period, e.reason,
           sum(e.spent) AS spent, sum(e.granted) AS granted, count(*) AS entries
    FROM (
        SELECT width_bucket(t.created_at, @period_starts::timestamptz[]) AS period, t.reason,
               greatest(-t.delta, 0) AS spent, greatest(t.delta, 0) AS granted
        FROM owner
        JOIN credit_transactions t ON t.user_id = owner.id
        WHERE t.created_at >= (@period_starts::timestamptz[])[1] AND t.created_at < @end_time::timestamptz
    ) e
    GROUP BY GROUPING SETS ((e.period, e.reason), (e.reason))
), ranked AS (
    SELECT s.*, row_number() OVER (PARTITION BY s.period ORDER BY s.spent + s.granted DESC, s.reason) AS rank
    FROM sums s
), folded AS (
    SELECT r.period, o.other, (CASE WHEN o.other THEN '' ELSE r.reason END)::text AS reason,
           sum(r.spent)::bigint AS spent, sum(r.granted)::bigint AS granted,
           sum(r.entries)::bigint AS entries, min(r.rank) AS rank
    FROM ranked r
    CROSS JOIN LATERAL (SELECT r.rank > CASE WHEN r.period = 0 THEN @window_reasons::int
                                             ELSE @period_reasons::int END AS other) o
    GROUP BY 1, 2, 3
)
SELECT owner.credits AS balance, f.period, f.reason, f.other, f.spent, f.granted, f.entries
FROM owner
LEFT JOIN folded f ON true
ORDER BY f.period, f.rank;

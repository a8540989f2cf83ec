-- Queries of Stripe billing (issue 22): customer links, applied events, the
-- price map and its audit history, subscriptions as last fetched, payments.

-- LinkStripeCustomer links a customer to an account if neither is linked
-- yet and returns whether it did (inserted), the account the customer is
-- linked to and the customer the account is linked to (so the caller sees a
-- conflict either way). A link a concurrent call committed while this one
-- waited is not in this statement's snapshot: the nil uuid, and the caller
-- reads again.
-- name: LinkStripeCustomer :one
WITH ins AS (
    INSERT INTO stripe_customers (customer_id, account_id, clerk_user_id, clerk_org_id)
    VALUES (@customer_id::text, @account_id::uuid, sqlc.narg(clerk_user_id)::text, sqlc.narg(clerk_org_id)::text)
    ON CONFLICT DO NOTHING
    RETURNING customer_id, account_id
)
SELECT
    EXISTS (SELECT 1 FROM ins) AS inserted,
    coalesce((SELECT i.account_id FROM ins i),
             (SELECT c.account_id FROM stripe_customers c WHERE c.customer_id = @customer_id::text),
             '00000000-0000-0000-0000-000000000000')::uuid AS customer_account_id,
    coalesce((SELECT i.customer_id FROM ins i),
             (SELECT c.customer_id FROM stripe_customers c WHERE c.account_id = @account_id::uuid), '')::text AS account_customer_id;

-- GetStripeCustomer returns a customer's link.
-- name: GetStripeCustomer :one
SELECT * FROM stripe_customers WHERE customer_id = @customer_id::text;

-- GetStripeCustomerOfAccount returns an account's link.
-- name: GetStripeCustomerOfAccount :one
SELECT * FROM stripe_customers WHERE account_id = @account_id::uuid;

-- ListStripeCustomers pages through the links by customer id.
-- name: ListStripeCustomers :many
SELECT * FROM stripe_customers WHERE customer_id > @after::text ORDER BY customer_id LIMIT @row_limit;

-- LockStripeCustomer serializes the work of one customer until the
-- transaction ends (webhook deliveries and sync-stripe alike).
-- name: LockStripeCustomer :exec
SELECT pg_advisory_xact_lock(hashtextextended('userd:stripe_customer:' || @customer_id::text, 0));

-- BumpStripePlanSeq counts one plan change applied for a customer.
-- name: BumpStripePlanSeq :exec
UPDATE stripe_customers SET plan_seq = plan_seq + 1 WHERE customer_id = @customer_id::text;

-- StripeEventSeen says whether an event id was applied.
-- name: StripeEventSeen :one
SELECT EXISTS (SELECT 1 FROM stripe_events WHERE event_id = @event_id::text);

-- RecordStripeEvent records an applied event (a second record of the same
-- id changes nothing).
-- name: RecordStripeEvent :exec
INSERT INTO stripe_events (event_id, type, created, outcome)
VALUES (@event_id::text, @type::text, @created::timestamptz, @outcome::text)
ON CONFLICT (event_id) DO NOTHING;

-- DeleteStripeEventsBefore forgets up to row_limit events processed before
-- a time.
-- name: DeleteStripeEventsBefore :execrows
DELETE FROM stripe_events WHERE event_id IN (
    SELECT e.event_id FROM stripe_events e WHERE e.processed_at < @before::timestamptz LIMIT @row_limit);

-- UpsertStripeSubscription records a subscription as just fetched.
-- name: UpsertStripeSubscription :exec
INSERT INTO stripe_subscriptions (subscription_id, customer_id, status, price_id, period_end, synced_at)
VALUES (@subscription_id::text, @customer_id::text, @status::text, sqlc.narg(price_id)::text,
        sqlc.narg(period_end)::timestamptz, now())
ON CONFLICT (subscription_id) DO UPDATE
SET customer_id = excluded.customer_id, status = excluded.status, price_id = excluded.price_id,
    period_end = excluded.period_end, synced_at = excluded.synced_at;

-- SetStripePrice sets a price map entry and records the change in one
-- statement; nothing is written when the entry already says this.
-- name: SetStripePrice :one
WITH prev AS (
    SELECT p.kind, p.plan, p.credits FROM stripe_price_map p WHERE p.price_id = @price_id::text FOR UPDATE
), up AS (
    INSERT INTO stripe_price_map (price_id, kind, plan, credits, updated_by)
    VALUES (@price_id::text, @kind::text, sqlc.narg(plan)::text, @credits::bigint, @changed_by::text)
    ON CONFLICT (price_id) DO UPDATE
    SET kind = excluded.kind, plan = excluded.plan, credits = excluded.credits,
        updated_by = excluded.updated_by, updated_at = now()
    WHERE (stripe_price_map.kind, stripe_price_map.plan, stripe_price_map.credits)
          IS DISTINCT FROM (excluded.kind, excluded.plan, excluded.credits)
    RETURNING *
), ch AS (
    INSERT INTO stripe_price_map_changes (price_id, previous_kind, previous_plan, previous_credits,
                                          kind, plan, credits, changed_by)
    SELECT u.price_id, (SELECT kind FROM prev), (SELECT plan FROM prev), (SELECT credits FROM prev),
           u.kind, u.plan, u.credits, u.updated_by
    FROM up u
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM ch) AS changed;

-- GetStripePrice returns one price map entry.
-- name: GetStripePrice :one
SELECT * FROM stripe_price_map WHERE price_id = @price_id::text;

-- ListStripePrices pages through the price map by price id.
-- name: ListStripePrices :many
SELECT * FROM stripe_price_map WHERE price_id > @after::text ORDER BY price_id LIMIT @row_limit;

-- ListStripePriceChanges pages through the price map's history, newest
-- first; before_id = 0 for the first page.
-- name: ListStripePriceChanges :many
SELECT * FROM stripe_price_map_changes
WHERE (@before_id::bigint = 0 OR id < @before_id::bigint)
ORDER BY id DESC
LIMIT @row_limit;

-- RecordStripePayment records the credits a one-time payment granted.
-- name: RecordStripePayment :exec
INSERT INTO stripe_payments (payment_id, customer_id, credits)
VALUES (@payment_id::text, @customer_id::text, @credits::bigint)
ON CONFLICT (payment_id) DO NOTHING;

-- GetStripePayment returns one payment.
-- name: GetStripePayment :one
SELECT * FROM stripe_payments WHERE payment_id = @payment_id::text;

-- MarkStripePaymentReversed records that a payment's credits were taken
-- back (refund or lost dispute).
-- name: MarkStripePaymentReversed :exec
UPDATE stripe_payments SET reversed_at = coalesce(reversed_at, now()) WHERE payment_id = @payment_id::text;

-- +goose Up
-- Stripe billing (issue 22): which Stripe customer pays for which account,
-- which Stripe events were applied, which Stripe price means which plan or
-- credit pack, and the subscriptions as userd last saw them. Only new
-- tables: nothing a previous release reads or writes changes, and none of
-- the hot tables is locked (no foreign key points at accounts; the link is
-- written only for accounts that exist, see LinkStripeCustomer).

-- stripe_customers links one Stripe customer to one account and back: the
-- primary key and the unique account_id make it one-to-one, whoever races.
CREATE TABLE stripe_customers (
    customer_id    text        PRIMARY KEY,
    account_id     uuid        NOT NULL CONSTRAINT stripe_customers_account_id_key UNIQUE,
    -- The account's owner, as users.Service names it: exactly one is set.
    clerk_user_id  text,
    clerk_org_id   text,
    -- plan_seq counts the plan changes userd applied for this customer;
    -- it makes each one's idempotency key new (stripe:plan:<customer>:<n>:<plan>).
    plan_seq       bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stripe_customers_customer_id_valid CHECK (customer_id ~ '^cus_[A-Za-z0-9]{1,250}$'),
    CONSTRAINT stripe_customers_one_owner CHECK ((clerk_user_id IS NULL) <> (clerk_org_id IS NULL))
);

-- stripe_events records every event id applied, so a redelivery is
-- answered without doing the work again. A row is written only after the
-- event's effects committed (they are idempotent by key on their own).
CREATE TABLE stripe_events (
    event_id      text        PRIMARY KEY,
    type          text        NOT NULL,
    -- Stripe's event.created (one-second resolution: never used to order).
    created       timestamptz NOT NULL,
    outcome       text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX stripe_events_processed_at_idx ON stripe_events (processed_at);

-- stripe_price_map says what a Stripe price id gives: a plan (with the
-- credits of each paid period) or a credit pack (credits per unit bought).
-- Managed through the API (SetStripePrice), audited in
-- stripe_price_map_changes like the price list.
CREATE TABLE stripe_price_map (
    price_id    text        PRIMARY KEY,
    kind        text        NOT NULL,
    plan        text,
    credits     bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text        NOT NULL,
    CONSTRAINT stripe_price_map_price_id_valid CHECK (price_id ~ '^(price|plan)_[A-Za-z0-9_]{1,250}$'),
    CONSTRAINT stripe_price_map_kind_valid CHECK (
        (kind = 'PLAN' AND plan IN ('FREE', 'PRO', 'ENTERPRISE')) OR (kind = 'PACK' AND plan IS NULL)),
    CONSTRAINT stripe_price_map_credits_valid CHECK (credits >= 0 AND credits <= 1000000000000)
);

CREATE TABLE stripe_price_map_changes (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    price_id          text        NOT NULL,
    -- NULL when the change created the entry.
    previous_kind     text,
    previous_plan     text,
    previous_credits  bigint,
    kind              text        NOT NULL,
    plan              text,
    credits           bigint      NOT NULL,
    changed_by        text        NOT NULL,
    changed_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX stripe_price_map_changes_price_id_idx ON stripe_price_map_changes (price_id, id);

-- stripe_subscriptions is each subscription of a linked customer as Stripe
-- had it when userd last fetched it (webhook or sync-stripe): for
-- operators and for the plan decision's audit, never an ordering guard.
CREATE TABLE stripe_subscriptions (
    subscription_id  text        PRIMARY KEY,
    customer_id      text        NOT NULL,
    status           text        NOT NULL,
    price_id         text,
    period_end       timestamptz,
    synced_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX stripe_subscriptions_customer_id_idx ON stripe_subscriptions (customer_id);

-- stripe_payments is each one-time payment that granted credit packs, so
-- that a refund or a lost dispute takes back what that payment gave.
CREATE TABLE stripe_payments (
    payment_id    text        PRIMARY KEY,
    customer_id   text        NOT NULL,
    credits       bigint      NOT NULL,
    granted_at    timestamptz NOT NULL DEFAULT now(),
    reversed_at   timestamptz
);

-- +goose Down
DROP TABLE stripe_payments;
DROP TABLE stripe_subscriptions;
DROP TABLE stripe_price_map_changes;
DROP TABLE stripe_price_map;
DROP TABLE stripe_events;
DROP TABLE stripe_customers;

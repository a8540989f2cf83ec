-- +goose Up
-- users mirrors Clerk users and owns their plan and credit balance.
CREATE TABLE users (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    clerk_user_id     text        NOT NULL,
    email             text,
    first_name        text,
    last_name         text,
    image_url         text,
    plan              text        NOT NULL DEFAULT 'FREE',
    credits           bigint      NOT NULL,
    -- Clerk's updated_at (ms since epoch) of the profile state stored here;
    -- NULL until a Clerk event or a Clerk-sourced EnsureUser sets it. Older
    -- states never overwrite newer ones.
    clerk_updated_at  bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Set when Clerk deleted the user. The row (and its ledger) stays as a
    -- tombstone so that no late event can resurrect the user.
    deleted_at        timestamptz,
    CONSTRAINT users_clerk_user_id_key UNIQUE (clerk_user_id),
    CONSTRAINT users_credits_non_negative CHECK (credits >= 0),
    CONSTRAINT users_plan_valid CHECK (plan IN ('FREE', 'PRO', 'ENTERPRISE')),
    CONSTRAINT users_clerk_user_id_not_empty CHECK (clerk_user_id <> '')
);

-- Email is unique among live users, compared case-insensitively. Deleted
-- users keep their email for the record but do not block a new sign-up.
CREATE UNIQUE INDEX users_email_live_key ON users (lower(email))
    WHERE deleted_at IS NULL AND email IS NOT NULL;

-- credit_transactions is the ledger: one row per change of a balance.
-- Invariant: users.credits = sum(delta) over the user's rows, at every commit.
CREATE TABLE credit_transactions (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          uuid        NOT NULL REFERENCES users (id),
    delta            bigint      NOT NULL,
    balance_after    bigint      NOT NULL,
    kind             text        NOT NULL,
    reason           text        NOT NULL DEFAULT '',
    -- NULL for entries userd makes itself (the initial credits).
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_transactions_kind_valid CHECK (kind IN ('INITIAL', 'DEDUCT', 'GRANT', 'PLAN_BONUS')),
    CONSTRAINT credit_transactions_balance_after_non_negative CHECK (balance_after >= 0),
    CONSTRAINT credit_transactions_delta_sign CHECK (
        (kind = 'DEDUCT' AND delta < 0) OR (kind <> 'DEDUCT' AND delta >= 0)),
    CONSTRAINT credit_transactions_user_key UNIQUE (user_id, idempotency_key)
);

-- Serves ListCreditTransactions (newest first, keyset on id).
CREATE INDEX credit_transactions_user_id_id_idx ON credit_transactions (user_id, id DESC);

-- A user gets its initial credits at most once.
CREATE UNIQUE INDEX credit_transactions_initial_once ON credit_transactions (user_id)
    WHERE kind = 'INITIAL';

-- plan_changes records every applied SetPlan, keyed for idempotency.
CREATE TABLE plan_changes (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          uuid        NOT NULL REFERENCES users (id),
    previous_plan    text        NOT NULL,
    plan             text        NOT NULL,
    bonus_credits    bigint      NOT NULL DEFAULT 0,
    -- The ledger entry of the bonus, when bonus_credits > 0.
    transaction_id   bigint      REFERENCES credit_transactions (id),
    reason           text        NOT NULL DEFAULT '',
    idempotency_key  text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plan_changes_plan_valid CHECK (plan IN ('FREE', 'PRO', 'ENTERPRISE')),
    CONSTRAINT plan_changes_previous_plan_valid CHECK (previous_plan IN ('FREE', 'PRO', 'ENTERPRISE')),
    CONSTRAINT plan_changes_bonus_non_negative CHECK (bonus_credits >= 0),
    CONSTRAINT plan_changes_bonus_has_transaction CHECK ((bonus_credits = 0) = (transaction_id IS NULL)),
    CONSTRAINT plan_changes_user_key UNIQUE (user_id, idempotency_key)
);

-- +goose Down
DROP TABLE plan_changes;
DROP TABLE credit_transactions;
DROP TABLE users;

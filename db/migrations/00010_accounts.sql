-- +goose NO TRANSACTION
-- +goose Up
-- Accounts (issue 20). A plan, a balance, a ledger and an idempotency key
-- space belong to an account, which a user (its personal account) or an
-- organization owns. This is the expand half of an expand/contract change
-- that a fleet applies while the previous release keeps serving:
--
--   * Every user gets a personal account whose id is the user's id, with
--     the user's plan and balance. The ledger tables keep their rows and
--     their user_id column, which from now on names the account (for a
--     personal account, the same uuid), so no ledger row is rewritten.
--   * users.credits and users.plan stay, as a mirror of the personal
--     account, for the previous release (it reads them, and inserts users
--     and their INITIAL entry directly): the triggers below keep the two in
--     step in both directions until 00019 (post-deploy) drops the mirror.
--   * The feed table is renamed feed_events; user_events becomes a view of
--     the events a previous release understands (personal events of the
--     five kinds it knows), so an old replica never reads an
--     organization's event, let alone as a user's.
--
-- It runs outside a single transaction so that no step holds a lock on a
-- hot table for longer than that step needs: each DDL statement on users,
-- credit_transactions, idempotency_keys, plan_changes or the feed waits at
-- most lock_timeout for its lock and retries (so it never queues writers
-- behind it for long), foreign keys are added NOT VALID and validated
-- separately (validation blocks no writer), and the backfill commits in
-- batches, each locking only the users rows it copies. Every step can run
-- again, so an interrupted migration is finished by the next attempt.

-- pg_temp.userd_ddl runs statements in one subtransaction, retrying while
-- a lock cannot be had within 200 ms; "already there" errors count as done
-- (a rerun after an interruption).
-- +goose StatementBegin
CREATE FUNCTION pg_temp.userd_ddl(p_statements text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer := 0;
    v_statement text;
BEGIN
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '200ms', true);
            FOREACH v_statement IN ARRAY p_statements LOOP
                EXECUTE v_statement;
            END LOOP;
            PERFORM set_config('lock_timeout', '0', true);
            RETURN;
        EXCEPTION
            WHEN lock_not_available THEN
                v_attempt := v_attempt + 1;
                IF v_attempt >= 600 THEN
                    RAISE;
                END IF;
                PERFORM set_config('lock_timeout', '0', true);
                PERFORM pg_sleep(least(0.01 * v_attempt, 0.5));
            WHEN duplicate_object OR duplicate_table OR duplicate_column THEN
                PERFORM set_config('lock_timeout', '0', true);
                RETURN;
        END;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- organizations mirrors Clerk organizations (written by the webhook and
-- `userd sync-clerk`). A deleted organization stays as a tombstone, and its
-- account is closed.
CREATE TABLE IF NOT EXISTS organizations (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    clerk_org_id      text        NOT NULL,
    name              text,
    slug              text,
    image_url         text,
    -- Clerk's updated_at (ms since epoch) of the state stored here.
    clerk_updated_at  bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    CONSTRAINT organizations_clerk_org_id_key UNIQUE (clerk_org_id),
    CONSTRAINT organizations_clerk_org_id_not_empty CHECK (clerk_org_id <> '')
);

-- organization_memberships mirrors Clerk memberships, keyed by Clerk ids
-- and without foreign keys: a membership delivered before its organization
-- or its user is kept. A deleted membership is a tombstone (deleted_at set,
-- final).
CREATE TABLE IF NOT EXISTS organization_memberships (
    clerk_membership_id  text        PRIMARY KEY,
    clerk_org_id         text        NOT NULL,
    clerk_user_id        text        NOT NULL,
    role                 text        NOT NULL DEFAULT '',
    permissions          text[]      NOT NULL DEFAULT '{}',
    clerk_updated_at     bigint      NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    deleted_at           timestamptz,
    CONSTRAINT organization_memberships_clerk_membership_id_not_empty CHECK (clerk_membership_id <> '')
);

-- Not unique: shuffled deliveries can hold an old and a new membership of
-- one pair live for a moment.
CREATE INDEX IF NOT EXISTS organization_memberships_org_user_live_idx
    ON organization_memberships (clerk_org_id, clerk_user_id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS organization_memberships_user_live_idx
    ON organization_memberships (clerk_user_id) WHERE deleted_at IS NULL;

-- accounts owns plans and balances. Invariant: credits = sum(delta) over the
-- account's credit_transactions, at every commit. Every write to a balance
-- locks the account row first. A personal account's id is its owner's user
-- id. A closed account (its organization was deleted) refuses spends,
-- grants and plan changes and keeps its ledger.
SELECT pg_temp.userd_ddl(ARRAY[$ddl$
CREATE TABLE IF NOT EXISTS accounts (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_user_id    uuid        CONSTRAINT accounts_owner_user_id_fkey REFERENCES users (id),
    organization_id  uuid        CONSTRAINT accounts_organization_id_fkey REFERENCES organizations (id),
    plan             text        NOT NULL DEFAULT 'FREE',
    credits          bigint      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz,
    CONSTRAINT accounts_owner_user_id_key UNIQUE (owner_user_id),
    CONSTRAINT accounts_organization_id_key UNIQUE (organization_id),
    CONSTRAINT accounts_one_owner CHECK ((owner_user_id IS NULL) <> (organization_id IS NULL)),
    CONSTRAINT accounts_personal_id CHECK (owner_user_id IS NULL OR id = owner_user_id),
    CONSTRAINT accounts_credits_non_negative CHECK (credits >= 0),
    CONSTRAINT accounts_plan_valid CHECK (plan IN ('FREE', 'PRO', 'ENTERPRISE'))
)$ddl$]);

-- Compatibility with the previous release, until 00019: a user it inserts
-- (with its credits and plan) gets its personal account, and a change of
-- users.credits or users.plan it makes reaches the account. The reverse
-- trigger keeps users.credits and users.plan a mirror of the personal
-- account that this release moves. Each copies only what differs, so the
-- two never chase each other.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_users_to_account() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Until 00019: users.credits and users.plan, written by the previous
    -- release, copied to the user's personal account (created if missing).
    INSERT INTO accounts AS a (id, owner_user_id, plan, credits, created_at, updated_at)
    VALUES (NEW.id, NEW.id, NEW.plan, NEW.credits, NEW.created_at, NEW.updated_at)
    ON CONFLICT (id) DO UPDATE
    SET plan = EXCLUDED.plan, credits = EXCLUDED.credits, updated_at = EXCLUDED.updated_at
    WHERE (a.plan, a.credits) IS DISTINCT FROM (EXCLUDED.plan, EXCLUDED.credits);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_to_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Until 00019: a personal account's credits and plan mirrored to
    -- users.credits and users.plan, which the previous release reads.
    UPDATE users u SET plan = NEW.plan, credits = NEW.credits, updated_at = NEW.updated_at
    WHERE u.id = NEW.owner_user_id AND (u.plan, u.credits) IS DISTINCT FROM (NEW.plan, NEW.credits);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

SELECT pg_temp.userd_ddl(ARRAY[
    $ddl$CREATE OR REPLACE TRIGGER accounts_to_user AFTER UPDATE OF plan, credits ON accounts
        FOR EACH ROW
        WHEN (NEW.owner_user_id IS NOT NULL AND (OLD.plan, OLD.credits) IS DISTINCT FROM (NEW.plan, NEW.credits))
        EXECUTE FUNCTION userd_account_to_user()$ddl$,
    -- Named to fire before users_feed_insert (triggers fire in name order),
    -- so that the user.created event finds the account.
    $ddl$CREATE OR REPLACE TRIGGER users_account_insert AFTER INSERT ON users
        FOR EACH ROW EXECUTE FUNCTION userd_users_to_account()$ddl$,
    $ddl$CREATE OR REPLACE TRIGGER users_account_update AFTER UPDATE OF plan, credits ON users
        FOR EACH ROW
        WHEN ((OLD.plan, OLD.credits) IS DISTINCT FROM (NEW.plan, NEW.credits))
        EXECUTE FUNCTION userd_users_to_account()$ddl$]);

-- The backfill: a personal account for every user, in batches of 2,000
-- users (by id), each its own transaction. A batch locks its users rows
-- (FOR UPDATE), so it copies the balance and plan as the last write to
-- each committed them, and a write that comes after waits for the batch
-- and then reaches the account through users_account_update. Users
-- inserted meanwhile get their account from users_account_insert.
-- +goose StatementBegin
DO $$
DECLARE
    v_last uuid := '00000000-0000-0000-0000-000000000000';
    v_next uuid;
BEGIN
    LOOP
        WITH batch AS (
            SELECT u.id, u.plan, u.credits, u.created_at, u.updated_at FROM users u
            WHERE u.id > v_last
            ORDER BY u.id
            LIMIT 2000
            FOR UPDATE
        ), copied AS (
            INSERT INTO accounts (id, owner_user_id, plan, credits, created_at, updated_at)
            SELECT b.id, b.id, b.plan, b.credits, b.created_at, b.updated_at FROM batch b
            ON CONFLICT (id) DO NOTHING
        )
        SELECT b.id INTO v_next FROM batch b ORDER BY b.id DESC LIMIT 1;
        EXIT WHEN v_next IS NULL;
        v_last := v_next;
        COMMIT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- Ledger rows record who acted: the user (for an organization account, the
-- member who spent; NULL when a service acted without naming one) and the
-- service (the service token's name; NULL for end users and for entries
-- userd makes itself).
SELECT pg_temp.userd_ddl(ARRAY[
    'ALTER TABLE credit_transactions ADD COLUMN IF NOT EXISTS actor_user_id uuid, ADD COLUMN IF NOT EXISTS service text',
    'ALTER TABLE plan_changes ADD COLUMN IF NOT EXISTS actor_user_id uuid, ADD COLUMN IF NOT EXISTS service text']);

-- The ledger tables' user_id now names the account: their foreign keys move
-- from users to accounts (added NOT VALID, validated without blocking
-- writes, then the old ones dropped), so that an organization account's
-- rows are possible.
SELECT pg_temp.userd_ddl(ARRAY['ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_account_fkey
    FOREIGN KEY (user_id) REFERENCES accounts (id) NOT VALID']);
SELECT pg_temp.userd_ddl(ARRAY['ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_account_fkey
    FOREIGN KEY (user_id) REFERENCES accounts (id) NOT VALID']);
SELECT pg_temp.userd_ddl(ARRAY['ALTER TABLE plan_changes ADD CONSTRAINT plan_changes_account_fkey
    FOREIGN KEY (user_id) REFERENCES accounts (id) NOT VALID']);
ALTER TABLE credit_transactions VALIDATE CONSTRAINT credit_transactions_account_fkey;
ALTER TABLE idempotency_keys VALIDATE CONSTRAINT idempotency_keys_account_fkey;
ALTER TABLE plan_changes VALIDATE CONSTRAINT plan_changes_account_fkey;
SELECT pg_temp.userd_ddl(ARRAY['ALTER TABLE credit_transactions DROP CONSTRAINT IF EXISTS credit_transactions_user_id_fkey']);
SELECT pg_temp.userd_ddl(ARRAY['ALTER TABLE idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_user_id_fkey']);
SELECT pg_temp.userd_ddl(ARRAY['ALTER TABLE plan_changes DROP CONSTRAINT IF EXISTS plan_changes_user_id_fkey']);

-- The feed. feed_events (formerly user_events) holds every event; the
-- events of an organization or its account carry clerk_org_id and no
-- clerk_user_id or user_id, those of a user or its personal account the
-- reverse; account_id names the account of a credits or plan event, and
-- actor_clerk_user_id the user who acted. user_events is what the previous
-- release reads (and, until its triggers are replaced, writes through):
-- one transaction renames the table and creates the view, so that name
-- never names nothing.
-- +goose StatementBegin
DO $$
BEGIN
    IF to_regclass('feed_events') IS NULL THEN
        PERFORM pg_temp.userd_ddl(ARRAY[
            'ALTER TABLE user_events RENAME TO feed_events',
            'ALTER TABLE feed_events ADD COLUMN account_id uuid, ADD COLUMN clerk_org_id text,
                ADD COLUMN actor_clerk_user_id text,
                ALTER COLUMN user_id DROP NOT NULL, ALTER COLUMN clerk_user_id DROP NOT NULL,
                DROP CONSTRAINT user_events_kind_valid',
            $ddl$ALTER TABLE feed_events ADD CONSTRAINT feed_events_kind_valid CHECK (kind IN (
                'user.created', 'user.updated', 'user.deleted', 'plan.changed', 'credits.changed',
                'organization.created', 'organization.updated', 'organization.deleted',
                'membership.created', 'membership.updated', 'membership.deleted',
                'member_cap.changed')) NOT VALID$ddl$,
            $ddl$ALTER TABLE feed_events ADD CONSTRAINT feed_events_one_stream CHECK (
                (clerk_user_id IS NULL) <> (clerk_org_id IS NULL)) NOT VALID$ddl$,
            $ddl$CREATE VIEW user_events AS
                SELECT e.id, e.order_xid, e.kind, e.user_id, e.clerk_user_id, e.payload, e.created_at
                FROM feed_events e
                WHERE e.clerk_org_id IS NULL AND e.user_id IS NOT NULL AND e.clerk_user_id IS NOT NULL
                  AND e.kind IN ('user.created', 'user.updated', 'user.deleted', 'plan.changed', 'credits.changed')$ddl$]);
    END IF;
END
$$;
-- +goose StatementEnd
ALTER TABLE feed_events VALIDATE CONSTRAINT feed_events_kind_valid;
ALTER TABLE feed_events VALIDATE CONSTRAINT feed_events_one_stream;

-- One organization's events in feed order: watching an organization, and
-- the emitter's look-up of the organization's previous event.
CREATE INDEX CONCURRENTLY IF NOT EXISTS feed_events_clerk_org_id_order_idx
    ON feed_events (clerk_org_id, order_xid, id) WHERE clerk_org_id IS NOT NULL;

DROP FUNCTION pg_temp.userd_ddl(text[]);

-- +goose Down
-- +goose StatementBegin
DO $$
BEGIN
    SET LOCAL lock_timeout = '10s';
    DROP INDEX IF EXISTS feed_events_clerk_org_id_order_idx;
    DROP VIEW IF EXISTS user_events;
    DELETE FROM feed_events WHERE clerk_org_id IS NOT NULL OR kind NOT IN (
        'user.created', 'user.updated', 'user.deleted', 'plan.changed', 'credits.changed');
    ALTER TABLE feed_events DROP CONSTRAINT feed_events_one_stream,
        DROP CONSTRAINT feed_events_kind_valid,
        DROP COLUMN account_id, DROP COLUMN clerk_org_id, DROP COLUMN actor_clerk_user_id,
        ALTER COLUMN user_id SET NOT NULL, ALTER COLUMN clerk_user_id SET NOT NULL,
        ADD CONSTRAINT user_events_kind_valid CHECK (kind IN (
            'user.created', 'user.updated', 'user.deleted', 'plan.changed', 'credits.changed'));
    ALTER TABLE feed_events RENAME TO user_events;

    -- The previous release's ledger names users only: an organization
    -- account's rows cannot go back.
    DELETE FROM plan_changes pc USING accounts a WHERE a.id = pc.user_id AND a.owner_user_id IS NULL;
    DELETE FROM idempotency_keys k USING accounts a WHERE a.id = k.user_id AND a.owner_user_id IS NULL;
    DELETE FROM credit_transactions t USING accounts a WHERE a.id = t.user_id AND a.owner_user_id IS NULL;
    ALTER TABLE credit_transactions DROP CONSTRAINT credit_transactions_account_fkey,
        ADD CONSTRAINT credit_transactions_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
    ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_account_fkey,
        ADD CONSTRAINT idempotency_keys_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
    ALTER TABLE plan_changes DROP CONSTRAINT plan_changes_account_fkey,
        ADD CONSTRAINT plan_changes_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
    ALTER TABLE credit_transactions DROP COLUMN actor_user_id, DROP COLUMN service;
    ALTER TABLE plan_changes DROP COLUMN actor_user_id, DROP COLUMN service;

    DROP TRIGGER users_account_update ON users;
    DROP TRIGGER users_account_insert ON users;
    DROP TABLE accounts;
    DROP FUNCTION userd_account_to_user();
    DROP FUNCTION userd_users_to_account();
    DROP TABLE organization_memberships;
    DROP TABLE organizations;
END
$$;
-- +goose StatementEnd

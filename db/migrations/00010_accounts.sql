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
-- hot table for longer than that step needs, and no step keeps a
-- transaction id for long (the change feed hands out events only below the
-- oldest running transaction id of the server). Each DDL statement on
-- users, accounts, credit_transactions, idempotency_keys, plan_changes or
-- the feed is its own short transaction that waits at most 200 ms for its
-- locks, then rolls back, pauses and tries again (so it never queues
-- writers behind it for long), and takes its locks in the order the
-- writers take theirs: users, idempotency_keys, accounts,
-- credit_transactions, plan_changes, feed_events (the new write functions
-- below keep that order; a cycle would leave the DDL timing out for as
-- long as the writers keep coming). Foreign keys are added NOT VALID and
-- validated separately (validation blocks no writer), and the backfill
-- commits in batches, each locking only the users rows it copies. Every
-- step can run again, so an interrupted migration is finished by the next
-- attempt.

-- pg_temp.userd_try_ddl runs statements in one subtransaction with a lock
-- timeout of 200 ms: true when they ran (or had run before: "already
-- exists", or p_unless names a relation that exists), false when a lock
-- was not granted in time.
-- +goose StatementBegin
CREATE FUNCTION pg_temp.userd_try_ddl(p_statements text[], p_unless text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_statement text;
BEGIN
    IF p_unless IS NOT NULL AND to_regclass(p_unless) IS NOT NULL THEN
        RETURN true;
    END IF;
    PERFORM set_config('lock_timeout', '200ms', true);
    FOREACH v_statement IN ARRAY p_statements LOOP
        EXECUTE v_statement;
    END LOOP;
    RETURN true;
EXCEPTION
    WHEN lock_not_available OR deadlock_detected THEN
        RETURN false;
    WHEN duplicate_object OR duplicate_table OR duplicate_column THEN
        RETURN true;
END
$$;
-- +goose StatementEnd

-- pg_temp.userd_ddl commits the statements, or rolls back, pauses (a few
-- ms, growing to 200) and tries again, for up to 1,000 attempts.
-- +goose StatementBegin
CREATE PROCEDURE pg_temp.userd_ddl(p_statements text[], p_unless text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer := 0;
BEGIN
    LOOP
        IF pg_temp.userd_try_ddl(p_statements, p_unless) THEN
            COMMIT;
            RETURN;
        END IF;
        ROLLBACK;
        v_attempt := v_attempt + 1;
        IF v_attempt >= 1000 THEN
            RAISE EXCEPTION 'gave up after 1000 attempts to take the locks of: %', p_statements;
        END IF;
        PERFORM pg_sleep(least(0.005 * v_attempt, 0.2) * (0.5 + random()));
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
CALL pg_temp.userd_ddl(ARRAY[$ddl$
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

-- Named to fire before users_feed_insert (triggers fire in name order), so
-- that the user.created event finds the account.
CALL pg_temp.userd_ddl(ARRAY[$ddl$CREATE OR REPLACE TRIGGER users_account_insert AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION userd_users_to_account()$ddl$]);
CALL pg_temp.userd_ddl(ARRAY[$ddl$CREATE OR REPLACE TRIGGER users_account_update AFTER UPDATE OF plan, credits ON users
    FOR EACH ROW
    WHEN ((OLD.plan, OLD.credits) IS DISTINCT FROM (NEW.plan, NEW.credits))
    EXECUTE FUNCTION userd_users_to_account()$ddl$]);
CALL pg_temp.userd_ddl(ARRAY[$ddl$CREATE OR REPLACE TRIGGER accounts_to_user AFTER UPDATE OF plan, credits ON accounts
    FOR EACH ROW
    WHEN (NEW.owner_user_id IS NOT NULL AND (OLD.plan, OLD.credits) IS DISTINCT FROM (NEW.plan, NEW.credits))
    EXECUTE FUNCTION userd_account_to_user()$ddl$]);

-- The backfill: a personal account for every user, in batches of 2,000
-- users (by id), each its own transaction. A batch locks its users rows
-- (FOR UPDATE), so it copies the balance and plan as the last write to
-- each committed them, and a write that comes after waits for the batch
-- and then reaches the account through users_account_update. Users
-- inserted meanwhile get their account from users_account_insert. A batch
-- that waits more than a second for a row (a webhook batch holding it), or
-- deadlocks with one, rolls back and is tried again.
-- +goose StatementBegin
CREATE FUNCTION pg_temp.userd_backfill_accounts(p_after uuid) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_last uuid;
BEGIN
    -- The last user id copied; NULL when none is left after p_after;
    -- p_after when the batch could not lock its rows.
    PERFORM set_config('lock_timeout', '1s', true);
    WITH batch AS (
        SELECT u.id, u.plan, u.credits, u.created_at, u.updated_at FROM users u
        WHERE u.id > p_after
        ORDER BY u.id
        LIMIT 2000
        FOR UPDATE
    ), copied AS (
        INSERT INTO accounts (id, owner_user_id, plan, credits, created_at, updated_at)
        SELECT b.id, b.id, b.plan, b.credits, b.created_at, b.updated_at FROM batch b
        ON CONFLICT (id) DO NOTHING
    )
    SELECT b.id INTO v_last FROM batch b ORDER BY b.id DESC LIMIT 1;
    RETURN v_last;
EXCEPTION
    WHEN lock_not_available OR deadlock_detected THEN
        RETURN p_after;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
DECLARE
    v_last uuid := '00000000-0000-0000-0000-000000000000';
    v_next uuid;
    v_failures integer := 0;
BEGIN
    LOOP
        v_next := pg_temp.userd_backfill_accounts(v_last);
        IF v_next IS NULL THEN
            COMMIT;
            EXIT;
        ELSIF v_next = v_last THEN
            ROLLBACK;
            v_failures := v_failures + 1;
            IF v_failures >= 1000 THEN
                RAISE EXCEPTION 'gave up backfilling accounts after 1000 lock timeouts';
            END IF;
            PERFORM pg_sleep(0.05 * (0.5 + random()));
        ELSE
            COMMIT;
            v_last := v_next;
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- Ledger rows record who acted: the user (for an organization account, the
-- member who spent; NULL when a service acted without naming one) and the
-- service (the service token's name; NULL for end users and for entries
-- userd makes itself).
CALL pg_temp.userd_ddl(ARRAY['ALTER TABLE credit_transactions ADD COLUMN IF NOT EXISTS actor_user_id uuid,
    ADD COLUMN IF NOT EXISTS service text']);
CALL pg_temp.userd_ddl(ARRAY['ALTER TABLE plan_changes ADD COLUMN IF NOT EXISTS actor_user_id uuid,
    ADD COLUMN IF NOT EXISTS service text']);

-- The ledger tables' user_id now names the account: their foreign keys move
-- from users to accounts (added NOT VALID, validated without blocking
-- writes, then the old ones dropped), so that an organization account's
-- rows are possible. Locks in the writers' order: idempotency_keys before
-- accounts, accounts before credit_transactions; plan_changes before
-- accounts, as the previous release's set-plan takes them.
CALL pg_temp.userd_ddl(ARRAY['ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_account_fkey
    FOREIGN KEY (user_id) REFERENCES accounts (id) NOT VALID']);
CALL pg_temp.userd_ddl(ARRAY['LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE',
    'ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_account_fkey
    FOREIGN KEY (user_id) REFERENCES accounts (id) NOT VALID']);
CALL pg_temp.userd_ddl(ARRAY['ALTER TABLE plan_changes ADD CONSTRAINT plan_changes_account_fkey
    FOREIGN KEY (user_id) REFERENCES accounts (id) NOT VALID']);
ALTER TABLE credit_transactions VALIDATE CONSTRAINT credit_transactions_account_fkey;
ALTER TABLE idempotency_keys VALIDATE CONSTRAINT idempotency_keys_account_fkey;
ALTER TABLE plan_changes VALIDATE CONSTRAINT plan_changes_account_fkey;
-- Dropping a foreign key locks the referenced table (users) too, in
-- ACCESS EXCLUSIVE mode: taken first, as writers take users first, and for
-- the three at once.
CALL pg_temp.userd_ddl(ARRAY['LOCK TABLE users IN ACCESS EXCLUSIVE MODE',
    'ALTER TABLE idempotency_keys DROP CONSTRAINT IF EXISTS idempotency_keys_user_id_fkey',
    'ALTER TABLE credit_transactions DROP CONSTRAINT IF EXISTS credit_transactions_user_id_fkey',
    'ALTER TABLE plan_changes DROP CONSTRAINT IF EXISTS plan_changes_user_id_fkey']);

-- The feed. feed_events (formerly user_events) holds every event; the
-- events of an organization or its account carry clerk_org_id and no
-- clerk_user_id or user_id, those of a user or its personal account the
-- reverse; account_id names the account of a credits or plan event, and
-- actor_clerk_user_id the user who acted. user_events is what the previous
-- release reads (and, until its triggers are replaced, writes through):
-- one transaction renames the table and creates the view, so that name
-- never names nothing.
CALL pg_temp.userd_ddl(ARRAY[
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
          AND e.kind IN ('user.created', 'user.updated', 'user.deleted', 'plan.changed', 'credits.changed')$ddl$],
    'feed_events');
ALTER TABLE feed_events VALIDATE CONSTRAINT feed_events_kind_valid;
ALTER TABLE feed_events VALIDATE CONSTRAINT feed_events_one_stream;

-- One organization's events in feed order: watching an organization, and
-- the emitter's look-up of the organization's previous event.
CREATE INDEX CONCURRENTLY IF NOT EXISTS feed_events_clerk_org_id_order_idx
    ON feed_events (clerk_org_id, order_xid, id) WHERE clerk_org_id IS NOT NULL;

DROP FUNCTION pg_temp.userd_backfill_accounts(uuid);
DROP PROCEDURE pg_temp.userd_ddl(text[], text);
DROP FUNCTION pg_temp.userd_try_ddl(text[], text);

-- The ledger on accounts. One transaction replaces every function that
-- moved a user's balance or plan, so that no call sees half of them; the
-- previous release keeps calling the same signatures, whose bodies now
-- work on accounts (and reach users.credits and users.plan through the
-- mirror trigger). New signatures take the account and who acted.
BEGIN;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_lock_personal_account(p_clerk_user_id text,
    OUT account_id uuid, OUT credits bigint, OUT plan text, OUT closed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    -- Locks the personal account of the live user p_clerk_user_id (FOR
    -- UPDATE) and returns it; account_id is NULL when there is no such
    -- user. Until 00019 it locks the users row first: a write of the
    -- previous release locks that row and then, through the mirror
    -- trigger, the account, and taking the two in the same order keeps
    -- the two releases from deadlocking. 00019 replaces it with a lock of
    -- the account alone.
    SELECT u.id INTO account_id FROM users u
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT a.id, a.credits, a.plan, a.closed_at IS NOT NULL INTO account_id, credits, plan, closed
    FROM accounts a WHERE a.id = account_id
    FOR UPDATE;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_claim_idempotency_key(p_user_id uuid, p_key text, p_operation text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- Claims p_key in the key space of the account p_user_id (a personal
    -- account's id is its owner's user id) for p_operation: true when this
    -- call claimed it (the caller applies its operation), false when the
    -- key was claimed before (the caller replays, or answers key_reused).
    -- The caller holds the account's row lock, so a racing claim of the
    -- same key waits for this transaction and then finds it claimed.
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    VALUES (p_user_id, p_key, p_operation)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_idempotency_key_used(p_user_id uuid, p_key text)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    -- Whether the key space of the account p_user_id holds p_key, for any
    -- operation.
    SELECT EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.user_id = p_user_id AND k.idempotency_key = p_key)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_post_ledger_entry(
    p_account_id uuid, p_balance bigint, p_allowed boolean, p_delta bigint, p_kind text, p_reason text,
    p_key text, p_operation text, p_replay_any_delta boolean, p_actor_user_id uuid, p_service text,
    OUT status text,
    OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
BEGIN
    -- Moves the balance of an account whose row the caller has locked (it
    -- was p_balance) by p_delta and writes the ledger entry, recording who
    -- acted (p_actor_user_id, p_service), under p_key claimed for
    -- p_operation. p_allowed says whether the balance (and the account)
    -- allows it; when it does not, or the key was claimed before, the
    -- key's original entry is replayed if it applied the same operation
    -- with the same reason (and the same delta, unless p_replay_any_delta:
    -- a deduction by action replays whatever price it charged). Statuses:
    --   applied     the entry was written (t_* columns)
    --   replayed    t_* columns: the original entry
    --   key_reused  the key already applied something else
    --   refused     not allowed, and the key is unused
    -- Nested, not AND: SQL leaves the order in which AND evaluates its
    -- operands open, and the key must not be claimed for a refused write.
    IF p_allowed THEN
        IF userd_claim_idempotency_key(p_account_id, p_key, p_operation) THEN
            WITH balance AS (
                UPDATE accounts SET credits = p_balance + p_delta, updated_at = now()
                WHERE id = p_account_id
                RETURNING credits
            )
            INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key,
                                             actor_user_id, service)
            SELECT p_account_id, p_delta, balance.credits, p_kind, p_reason, p_key, p_actor_user_id, p_service
            FROM balance
            RETURNING id, user_id, delta, balance_after, kind, reason, created_at, actor_user_id, service
            INTO t_id, t_account_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
                 t_actor_user_id, t_service;
            status := 'applied';
            RETURN;
        END IF;
    END IF;

    SELECT t.id, t.user_id, t.delta, t.balance_after, t.kind, t.reason, t.created_at, t.actor_user_id, t.service
    INTO t_id, t_account_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, t_actor_user_id, t_service
    FROM idempotency_keys k
    JOIN credit_transactions t ON t.user_id = k.user_id AND t.idempotency_key = k.idempotency_key
    WHERE k.user_id = p_account_id AND k.idempotency_key = p_key AND k.operation = p_operation;
    IF FOUND AND t_reason = p_reason AND (p_replay_any_delta OR t_delta = p_delta) THEN
        status := 'replayed';
        RETURN;
    END IF;
    t_id := NULL; t_account_id := NULL; t_delta := NULL; t_balance_after := NULL;
    t_kind := NULL; t_reason := NULL; t_created_at := NULL; t_actor_user_id := NULL; t_service := NULL;
    status := CASE WHEN userd_idempotency_key_used(p_account_id, p_key) THEN 'key_reused' ELSE 'refused' END;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_post_ledger_entry(
    p_user_id uuid, p_balance bigint, p_allowed boolean, p_delta bigint, p_kind text, p_reason text,
    p_key text, p_operation text, p_replay_any_delta boolean,
    OUT status text,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE sql AS $$
    -- The entry without an actor or a service (the previous release's
    -- signature); see the 11-argument userd_post_ledger_entry.
    SELECT e.status, e.t_id, e.t_account_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at
    FROM userd_post_ledger_entry(p_user_id, p_balance, p_allowed, p_delta, p_kind, p_reason,
        p_key, p_operation, p_replay_any_delta, NULL::uuid, NULL::text) e
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_post_credits(
    p_account_id uuid, p_balance bigint, p_closed boolean, p_actor_user_id uuid, p_service text,
    p_kind text, p_delta bigint, p_reason text, p_key text,
    OUT status text, OUT available bigint,
    OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
BEGIN
    -- Deducts (p_delta < 0) or grants (p_delta > 0) on an account whose
    -- row the caller has locked (FOR UPDATE; its balance was p_balance,
    -- and p_closed says whether it is closed), under p_key claimed as
    -- p_kind. For callers that check more under the same lock (an
    -- organization spend checks membership and caps first). Statuses:
    --   applied       the entry was written (t_* columns)
    --   replayed      the key already applied these parameters (t_*: the original entry)
    --   key_reused    the key already applied something else
    --   insufficient  the balance (available) is below the amount; nothing changed
    --   overflow      the balance would exceed bigint; nothing changed
    --   closed        the account is closed; nothing changed
    -- A replay answers with the original entry even when the balance is
    -- lower now, or the account closed since.
    available := p_balance;
    SELECT e.status, e.t_id, e.t_account_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at,
           e.t_actor_user_id, e.t_service
    INTO status, t_id, t_account_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
         t_actor_user_id, t_service
    FROM userd_post_ledger_entry(p_account_id, p_balance,
        NOT p_closed AND NOT ((p_delta < 0 AND p_balance < -p_delta)
                              OR (p_delta > 0 AND p_balance > 9223372036854775807 - p_delta)),
        p_delta, p_kind, p_reason, p_key, p_kind, false, p_actor_user_id, p_service) e;
    IF status = 'applied' THEN
        available := t_balance_after;
    ELSIF status = 'refused' THEN
        status := CASE WHEN p_closed THEN 'closed' WHEN p_delta < 0 THEN 'insufficient' ELSE 'overflow' END;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_change_credits(
    p_account_id uuid, p_actor_user_id uuid, p_service text,
    p_kind text, p_delta bigint, p_reason text, p_key text,
    OUT status text, OUT available bigint,
    OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_credits bigint;
    v_closed boolean;
BEGIN
    -- Deducts or grants on the account p_account_id in one call: locks the
    -- account, then as userd_account_post_credits (statuses), or
    -- not_found when there is no such account.
    SELECT a.credits, a.closed_at IS NOT NULL INTO v_credits, v_closed
    FROM accounts a WHERE a.id = p_account_id
    FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    SELECT e.* INTO status, available, t_id, t_account_id, t_delta, t_balance_after, t_kind, t_reason,
                    t_created_at, t_actor_user_id, t_service
    FROM userd_account_post_credits(p_account_id, v_credits, v_closed, p_actor_user_id, p_service,
        p_kind, p_delta, p_reason, p_key) e;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_personal_change_credits(
    p_clerk_user_id text, p_service text, p_kind text, p_delta bigint, p_reason text, p_key text,
    OUT status text, OUT available bigint,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account record;
BEGIN
    -- Deducts (p_delta < 0) or grants (p_delta > 0) on the personal account
    -- of the live user p_clerk_user_id, which acts (through the service
    -- p_service, NULL for the user itself). Statuses as
    -- userd_account_post_credits, or not_found (no live user has this
    -- Clerk id). t_user_id is the account's id, which for a personal
    -- account is the user's.
    SELECT * INTO v_account FROM userd_lock_personal_account(p_clerk_user_id);
    IF v_account.account_id IS NULL THEN
        status := 'not_found';
        RETURN;
    END IF;
    SELECT e.* INTO status, available, t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason,
                    t_created_at, t_actor_user_id, t_service
    FROM userd_account_post_credits(v_account.account_id, v_account.credits, v_account.closed,
        v_account.account_id, p_service, p_kind, p_delta, p_reason, p_key) e;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_change_credits(
    p_clerk_user_id text, p_kind text, p_delta bigint, p_reason text, p_key text,
    OUT status text, OUT available bigint,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE sql AS $$
    -- The previous release's call: userd_personal_change_credits without
    -- a service.
    SELECT c.status, c.available, c.t_id, c.t_user_id, c.t_delta, c.t_balance_after, c.t_kind, c.t_reason,
           c.t_created_at
    FROM userd_personal_change_credits(p_clerk_user_id, NULL, p_kind, p_delta, p_reason, p_key) c
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_post_action(
    p_account_id uuid, p_balance bigint, p_closed boolean, p_actor_user_id uuid, p_service text,
    p_action text, p_price bigint, p_key text,
    OUT status text, OUT available bigint, OUT price bigint,
    OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
BEGIN
    -- Charges one use of p_action at p_price (read by the caller under a
    -- share lock of the price row, see userd_account_deduct_for_action) to
    -- an account whose row the caller has locked (balance p_balance,
    -- closed p_closed), under p_key claimed as DEDUCT_ACTION. Statuses:
    -- applied, replayed (price: what the original charged), key_reused,
    -- insufficient, closed.
    available := p_balance;
    price := p_price;
    SELECT e.status, e.t_id, e.t_account_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at,
           e.t_actor_user_id, e.t_service
    INTO status, t_id, t_account_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
         t_actor_user_id, t_service
    FROM userd_post_ledger_entry(p_account_id, p_balance, NOT p_closed AND p_balance >= p_price,
        -p_price, 'DEDUCT', p_action, p_key, 'DEDUCT_ACTION', true, p_actor_user_id, p_service) e;
    IF status = 'applied' THEN
        available := t_balance_after;
    ELSIF status = 'replayed' THEN
        price := -t_delta;
    ELSIF status = 'refused' THEN
        status := CASE WHEN p_closed THEN 'closed' ELSE 'insufficient' END;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_deduct_for_action(
    p_account_id uuid, p_actor_user_id uuid, p_service text, p_action text, p_key text,
    OUT status text, OUT available bigint, OUT price bigint,
    OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_credits bigint;
    v_closed boolean;
BEGIN
    -- Charges one use of p_action at its current price to the account
    -- p_account_id in one call. The price is read first, under a share
    -- lock (a price change waits for this deduction, and a deduction that
    -- starts during a change charges the new price), then the account is
    -- locked. Statuses: unknown_action (locks nothing), not_found, then
    -- those of userd_account_post_action.
    SELECT p.credits INTO price FROM prices p WHERE p.action = p_action FOR SHARE;
    IF NOT FOUND THEN
        status := 'unknown_action';
        RETURN;
    END IF;
    SELECT a.credits, a.closed_at IS NOT NULL INTO v_credits, v_closed
    FROM accounts a WHERE a.id = p_account_id
    FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    SELECT e.* INTO status, available, price, t_id, t_account_id, t_delta, t_balance_after, t_kind, t_reason,
                    t_created_at, t_actor_user_id, t_service
    FROM userd_account_post_action(p_account_id, v_credits, v_closed, p_actor_user_id, p_service,
        p_action, price, p_key) e;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_personal_deduct_for_action(
    p_clerk_user_id text, p_service text, p_action text, p_key text,
    OUT status text, OUT available bigint, OUT price bigint,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account record;
BEGIN
    -- Charges one use of p_action at its current price to the personal
    -- account of the live user p_clerk_user_id, which acts (through the
    -- service p_service, NULL for the user itself); the key is claimed as
    -- DEDUCT_ACTION, so it never replays as a deduction by amount. The
    -- entry's reason is the action, its delta the price charged, negated.
    -- Statuses:
    --   applied         the entry was written (t_* columns; price = what it cost)
    --   replayed        the key already charged this action (t_* columns: the
    --                   original entry, whatever the price is now)
    --   unknown_action  the price list has no such action; nothing changed
    --   key_reused      the key already applied something else
    --   insufficient    the balance (available) is below the price; nothing changed
    --   not_found       no live user has this Clerk id
    -- The price comes first, under a share lock (see
    -- userd_account_deduct_for_action): an unknown action is the
    -- request's own mistake, answered the same whoever the user is, and
    -- locks nothing.
    SELECT p.credits INTO price FROM prices p WHERE p.action = p_action FOR SHARE;
    IF NOT FOUND THEN
        status := 'unknown_action';
        RETURN;
    END IF;
    SELECT * INTO v_account FROM userd_lock_personal_account(p_clerk_user_id);
    IF v_account.account_id IS NULL THEN
        status := 'not_found';
        RETURN;
    END IF;
    SELECT e.* INTO status, available, price, t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason,
                    t_created_at, t_actor_user_id, t_service
    FROM userd_account_post_action(v_account.account_id, v_account.credits, v_account.closed,
        v_account.account_id, p_service, p_action, price, p_key) e;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_deduct_for_action(
    p_clerk_user_id text, p_action text, p_key text,
    OUT status text, OUT available bigint, OUT price bigint,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE sql AS $$
    -- The previous release's call: userd_personal_deduct_for_action
    -- without a service.
    SELECT d.status, d.available, d.price, d.t_id, d.t_user_id, d.t_delta, d.t_balance_after, d.t_kind,
           d.t_reason, d.t_created_at
    FROM userd_personal_deduct_for_action(p_clerk_user_id, NULL, p_action, p_key) d
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_post_plan(
    p_account_id uuid, p_balance bigint, p_plan_now text, p_closed boolean,
    p_actor_user_id uuid, p_service text,
    p_plan text, p_bonus bigint, p_reason text, p_key text,
    OUT status text,
    OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint,
    OUT pc_reason text, OUT pc_created_at timestamptz,
    OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text,
    OUT t_reason text, OUT t_created_at timestamptz,
    OUT pc_actor_user_id uuid, OUT pc_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_claimed boolean := false;
BEGIN
    -- Moves an account whose row the caller has locked (balance p_balance,
    -- plan p_plan_now, closed p_closed) to p_plan and grants p_bonus,
    -- recording who acted, under p_key claimed as SET_PLAN. Statuses:
    -- applied, replayed (pc_*, t_*: the original change), key_reused,
    -- overflow (the bonus would exceed bigint), closed. t_* is the bonus
    -- entry (NULL without a bonus).
    IF NOT p_closed AND p_balance <= 9223372036854775807 - p_bonus THEN
        v_claimed := userd_claim_idempotency_key(p_account_id, p_key, 'SET_PLAN');
    END IF;
    IF v_claimed THEN
        -- The account first, then the ledger: the order every writer takes
        -- its locks in.
        UPDATE accounts SET plan = p_plan, credits = p_balance + p_bonus, updated_at = now()
        WHERE id = p_account_id;
        IF p_bonus > 0 THEN
            INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key,
                                             actor_user_id, service)
            VALUES (p_account_id, p_bonus, p_balance + p_bonus, 'PLAN_BONUS', p_reason, p_key,
                    p_actor_user_id, p_service)
            RETURNING id, delta, balance_after, kind, reason, created_at
            INTO t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at;
        END IF;
        INSERT INTO plan_changes (user_id, previous_plan, plan, bonus_credits, transaction_id, reason,
                                  idempotency_key, actor_user_id, service)
        VALUES (p_account_id, p_plan_now, p_plan, p_bonus, t_id, p_reason, p_key, p_actor_user_id, p_service)
        RETURNING id, previous_plan, plan, bonus_credits, reason, created_at, actor_user_id, service
        INTO pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at,
             pc_actor_user_id, pc_service;
        status := 'applied';
        RETURN;
    END IF;
    -- Not applied: a replay of this change answers with the original one,
    -- even when the bonus would overflow now or the account closed since.
    SELECT pc.id, pc.previous_plan, pc.plan, pc.bonus_credits, pc.reason, pc.created_at,
           t.id, t.delta, t.balance_after, t.kind, t.reason, t.created_at, pc.actor_user_id, pc.service
    INTO pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at,
         t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, pc_actor_user_id, pc_service
    FROM idempotency_keys k
    JOIN plan_changes pc ON pc.user_id = k.user_id AND pc.idempotency_key = k.idempotency_key
    LEFT JOIN credit_transactions t ON t.id = pc.transaction_id
    WHERE k.user_id = p_account_id AND k.idempotency_key = p_key AND k.operation = 'SET_PLAN';
    IF FOUND AND pc_plan = p_plan AND pc_bonus_credits = p_bonus AND pc_reason = p_reason THEN
        status := 'replayed';
        RETURN;
    END IF;
    pc_id := NULL; pc_previous_plan := NULL; pc_plan := NULL; pc_bonus_credits := NULL;
    pc_reason := NULL; pc_created_at := NULL; pc_actor_user_id := NULL; pc_service := NULL;
    t_id := NULL; t_delta := NULL; t_balance_after := NULL; t_kind := NULL; t_reason := NULL; t_created_at := NULL;
    status := CASE WHEN userd_idempotency_key_used(p_account_id, p_key) THEN 'key_reused'
                   WHEN p_closed THEN 'closed' ELSE 'overflow' END;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_set_plan(
    p_account_id uuid, p_actor_user_id uuid, p_service text,
    p_plan text, p_bonus bigint, p_reason text, p_key text,
    OUT status text,
    OUT a_id uuid, OUT a_plan text, OUT a_credits bigint, OUT a_created_at timestamptz,
    OUT a_updated_at timestamptz, OUT a_closed_at timestamptz,
    OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint,
    OUT pc_reason text, OUT pc_created_at timestamptz,
    OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text,
    OUT t_reason text, OUT t_created_at timestamptz,
    OUT pc_actor_user_id uuid, OUT pc_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account accounts%ROWTYPE;
BEGIN
    -- Moves the account p_account_id to p_plan and grants p_bonus in one
    -- call: locks the account, then as userd_account_post_plan
    -- (statuses), or not_found. a_* is the account after the call
    -- (applied, replayed).
    SELECT * INTO v_account FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    SELECT e.* INTO status, pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at,
                    t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, pc_actor_user_id, pc_service
    FROM userd_account_post_plan(v_account.id, v_account.credits, v_account.plan, v_account.closed_at IS NOT NULL,
        p_actor_user_id, p_service, p_plan, p_bonus, p_reason, p_key) e;
    IF status IN ('applied', 'replayed') THEN
        SELECT a.id, a.plan, a.credits, a.created_at, a.updated_at, a.closed_at
        INTO a_id, a_plan, a_credits, a_created_at, a_updated_at, a_closed_at
        FROM accounts a WHERE a.id = p_account_id;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_personal_set_plan(
    p_clerk_user_id text, p_service text, p_plan text, p_bonus bigint, p_reason text, p_key text,
    OUT status text,
    OUT u_id uuid, OUT u_clerk_user_id text, OUT u_email text, OUT u_first_name text,
    OUT u_last_name text, OUT u_image_url text, OUT u_plan text, OUT u_credits bigint,
    OUT u_clerk_updated_at bigint, OUT u_created_at timestamptz, OUT u_updated_at timestamptz,
    OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint,
    OUT pc_reason text, OUT pc_created_at timestamptz,
    OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text,
    OUT t_reason text, OUT t_created_at timestamptz,
    OUT pc_actor_user_id uuid, OUT pc_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_account record;
BEGIN
    -- Moves the personal account of the live user p_clerk_user_id to
    -- p_plan and grants p_bonus in one call; the user acts (through the
    -- service p_service, NULL for the user itself). Statuses: applied,
    -- replayed (the original change; the user as it is now), key_reused,
    -- overflow, not_found. The u_* columns are the user (with its
    -- account's plan and balance) after the call, pc_* the plan change, t_*
    -- the bonus entry (NULL without a bonus).
    SELECT * INTO v_account FROM userd_lock_personal_account(p_clerk_user_id);
    IF v_account.account_id IS NULL THEN
        status := 'not_found';
        RETURN;
    END IF;
    SELECT e.* INTO status, pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at,
                    t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, pc_actor_user_id, pc_service
    FROM userd_account_post_plan(v_account.account_id, v_account.credits, v_account.plan, v_account.closed,
        v_account.account_id, p_service, p_plan, p_bonus, p_reason, p_key) e;
    IF status IN ('applied', 'replayed') THEN
        SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, a.plan, a.credits,
               u.clerk_updated_at, u.created_at, greatest(u.updated_at, a.updated_at)
        INTO u_id, u_clerk_user_id, u_email, u_first_name, u_last_name, u_image_url, u_plan, u_credits,
             u_clerk_updated_at, u_created_at, u_updated_at
        FROM users u JOIN accounts a ON a.id = u.id
        WHERE u.id = v_account.account_id;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_set_plan(
    p_clerk_user_id text, p_plan text, p_bonus bigint, p_reason text, p_key text,
    OUT status text,
    OUT u_id uuid, OUT u_clerk_user_id text, OUT u_email text, OUT u_first_name text,
    OUT u_last_name text, OUT u_image_url text, OUT u_plan text, OUT u_credits bigint,
    OUT u_clerk_updated_at bigint, OUT u_created_at timestamptz, OUT u_updated_at timestamptz,
    OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint,
    OUT pc_reason text, OUT pc_created_at timestamptz,
    OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text,
    OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE sql AS $$
    -- The previous release's call: userd_personal_set_plan without a
    -- service.
    SELECT p.status, p.u_id, p.u_clerk_user_id, p.u_email, p.u_first_name, p.u_last_name, p.u_image_url,
           p.u_plan, p.u_credits, p.u_clerk_updated_at, p.u_created_at, p.u_updated_at,
           p.pc_id, p.pc_previous_plan, p.pc_plan, p.pc_bonus_credits, p.pc_reason, p.pc_created_at,
           p.t_id, p.t_delta, p.t_balance_after, p.t_kind, p.t_reason, p.t_created_at
    FROM userd_personal_set_plan(p_clerk_user_id, NULL, p_plan, p_bonus, p_reason, p_key) p
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_insert_user(
    p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text,
    p_clerk_updated_at bigint, p_initial_credits bigint, p_deleted boolean)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    -- Inserts a user with its personal account (plan FREE) and returns its
    -- id, or NULL when a row for the Clerk id exists already (concurrent
    -- inserts for one id wait for each other). A live user gets
    -- p_initial_credits as its INITIAL ledger entry; p_deleted inserts a
    -- tombstone (no credits, no entry). Until 00019 the account is made
    -- by the users_account_insert trigger from users.credits, as for a
    -- user the previous release inserts; 00019 inserts it here.
    WITH new_user AS (
        INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, plan, credits,
                           clerk_updated_at, deleted_at)
        VALUES (p_clerk_user_id, p_email, p_first_name, p_last_name, p_image_url, 'FREE',
                CASE WHEN p_deleted THEN 0 ELSE p_initial_credits END, p_clerk_updated_at,
                CASE WHEN p_deleted THEN now() END)
        ON CONFLICT (clerk_user_id) DO NOTHING
        RETURNING id, credits
    ), initial AS (
        INSERT INTO credit_transactions (user_id, delta, balance_after, kind)
        SELECT new_user.id, new_user.credits, new_user.credits, 'INITIAL' FROM new_user
        WHERE NOT p_deleted
    )
    SELECT new_user.id INTO v_id FROM new_user;
    RETURN v_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_create_user(
    p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text,
    p_clerk_updated_at bigint, p_initial_credits bigint,
    OUT u_id uuid, OUT u_clerk_user_id text, OUT u_email text, OUT u_first_name text, OUT u_last_name text,
    OUT u_image_url text, OUT u_plan text, OUT u_credits bigint, OUT u_clerk_updated_at bigint,
    OUT u_created_at timestamptz, OUT u_updated_at timestamptz, OUT u_deleted_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    -- Creates a live user with its personal account and the INITIAL entry
    -- of p_initial_credits (userd_insert_user) and returns it, with its
    -- account's plan and balance; u_id is NULL when a row for the Clerk id
    -- exists already (live or deleted).
    v_id := userd_insert_user(p_clerk_user_id, p_email, p_first_name, p_last_name, p_image_url,
        p_clerk_updated_at, p_initial_credits, false);
    IF v_id IS NULL THEN
        RETURN;
    END IF;
    SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, a.plan, a.credits,
           u.clerk_updated_at, u.created_at, greatest(u.updated_at, a.updated_at), u.deleted_at
    INTO u_id, u_clerk_user_id, u_email, u_first_name, u_last_name, u_image_url, u_plan, u_credits,
         u_clerk_updated_at, u_created_at, u_updated_at, u_deleted_at
    FROM users u JOIN accounts a ON a.id = u.id
    WHERE u.id = v_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_apply_clerk_user(p_svix_id text, p_event_type text, p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text, p_updated_at bigint, p_initial_credits bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_self users%ROWTYPE;
    v_holder users%ROWTYPE;
    v_row users%ROWTYPE;
    v_outcome text;
    v_email text;
    v_claimed boolean := false;
BEGIN
    -- Applies one Clerk state of a user (a webhook delivery, or the state
    -- fetched for EnsureUser when p_svix_id is NULL): creates the user with
    -- its personal account (userd_insert_user), updates its profile unless
    -- the stored state is newer, or ignores it (deleted user). The email
    -- moves to the newer state when another live user holds it. Returns
    -- created, updated, stale, ignored_deleted or duplicate.
    IF p_svix_id IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_events w WHERE w.svix_id = p_svix_id) THEN
        RETURN 'duplicate';
    END IF;
    LOOP
        v_self := NULL;
        v_holder := NULL;
        FOR v_row IN
            SELECT * FROM users u
            WHERE u.clerk_user_id = p_clerk_user_id
               OR (p_email <> '' AND lower(u.email) = lower(p_email) AND u.deleted_at IS NULL)
            FOR UPDATE
        LOOP
            IF v_row.clerk_user_id = p_clerk_user_id THEN
                v_self := v_row;
            ELSE
                v_holder := v_row;
            END IF;
        END LOOP;

        -- The accounts too: every event of a user's stream is written
        -- under the lock of its personal account (credit and plan changes
        -- lock nothing else), which keeps the stream in order.
        PERFORM 1 FROM accounts a WHERE a.id IN (v_self.id, v_holder.id) ORDER BY a.id FOR UPDATE;

        v_outcome := CASE
            WHEN v_self.id IS NULL THEN 'created'
            WHEN v_self.deleted_at IS NOT NULL THEN 'ignored_deleted'
            WHEN v_self.clerk_updated_at >= p_updated_at THEN 'stale'
            ELSE 'updated'
        END;

        IF p_svix_id IS NULL THEN
            NULL; -- Clerk's state fetched for EnsureUser: no message to record.
        ELSIF NOT v_claimed THEN
            INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
            VALUES (p_svix_id, p_event_type, p_clerk_user_id, v_outcome)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                RETURN 'duplicate';
            END IF;
            v_claimed := true;
        ELSE
            UPDATE webhook_events SET outcome = v_outcome WHERE svix_id = p_svix_id;
        END IF;

        IF v_outcome IN ('stale', 'ignored_deleted') THEN
            RETURN v_outcome;
        END IF;

        v_email := nullif(p_email, '');
        IF v_email IS NOT NULL AND v_holder.id IS NOT NULL THEN
            IF v_holder.clerk_updated_at > p_updated_at THEN
                v_email := NULL;
            ELSE
                UPDATE users SET email = NULL, updated_at = now() WHERE id = v_holder.id;
            END IF;
        END IF;

        IF v_outcome = 'updated' THEN
            UPDATE users
            SET email = v_email, first_name = nullif(p_first_name, ''), last_name = nullif(p_last_name, ''),
                image_url = nullif(p_image_url, ''), clerk_updated_at = p_updated_at, updated_at = now()
            WHERE id = v_self.id;
            RETURN v_outcome;
        END IF;

        IF userd_insert_user(p_clerk_user_id, v_email, nullif(p_first_name, ''), nullif(p_last_name, ''),
                             nullif(p_image_url, ''), p_updated_at, p_initial_credits, false) IS NOT NULL THEN
            RETURN v_outcome;
        END IF;
        -- Another transaction created the user after the lock query found
        -- nothing: look again, now that its row is committed.
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_delete_clerk_user(p_svix_id text, p_event_type text, p_clerk_user_id text, p_erase boolean) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    -- Applies a Clerk deletion: marks the user deleted (a tombstone, with
    -- its account and ledger kept; its personal data erased when p_erase),
    -- or records a tombstone for a user never seen, so that no late event
    -- creates it. Returns deleted or duplicate.
    IF coalesce(p_svix_id, '') <> '' THEN
        INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
        VALUES (p_svix_id, p_event_type, p_clerk_user_id, 'deleted')
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
    END IF;
    LOOP
        SELECT u.id INTO v_id FROM users u WHERE u.clerk_user_id = p_clerk_user_id FOR UPDATE;
        IF FOUND THEN
            -- Under the account's lock, as every event of the user's stream.
            PERFORM 1 FROM accounts a WHERE a.id = v_id FOR UPDATE;
            UPDATE users
            SET deleted_at = coalesce(users.deleted_at, now()), updated_at = now(),
                email = CASE WHEN p_erase THEN NULL ELSE users.email END,
                first_name = CASE WHEN p_erase THEN NULL ELSE users.first_name END,
                last_name = CASE WHEN p_erase THEN NULL ELSE users.last_name END,
                image_url = CASE WHEN p_erase THEN NULL ELSE users.image_url END
            WHERE id = v_id;
            RETURN 'deleted';
        END IF;
        IF userd_insert_user(p_clerk_user_id, NULL, NULL, NULL, NULL, NULL, 0, true) IS NOT NULL THEN
            RETURN 'deleted';
        END IF;
        -- Created meanwhile: mark it deleted on the next pass.
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_emit_event(
    p_kind text, p_user_id uuid, p_clerk_user_id text, p_clerk_org_id text, p_account_id uuid,
    p_actor_clerk_user_id text, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_order_xid bigint := pg_current_xact_id()::text::bigint;
    v_previous bigint;
BEGIN
    -- Appends one event of the current transaction to the feed. An event
    -- belongs to one stream: a user's (p_clerk_user_id, with p_user_id;
    -- the user and its personal account) or an organization's
    -- (p_clerk_org_id; the organization, its memberships and its
    -- account). Its order_xid is raised to that of the stream's previous
    -- event, so that one stream's events are in the order they were
    -- applied: every change of a stream happens under one row lock (the
    -- user's or account's), so that previous event is committed and
    -- visible. p_account_id names the account of a credits or plan event,
    -- p_actor_clerk_user_id the user who acted (NULL: userd, Clerk, or a
    -- service that named no user).
    IF p_clerk_org_id IS NULL THEN
        SELECT e.order_xid INTO v_previous FROM feed_events e
        WHERE e.clerk_user_id = p_clerk_user_id
        ORDER BY e.order_xid DESC, e.id DESC
        LIMIT 1;
    ELSE
        SELECT e.order_xid INTO v_previous FROM feed_events e
        WHERE e.clerk_org_id = p_clerk_org_id
        ORDER BY e.order_xid DESC, e.id DESC
        LIMIT 1;
    END IF;
    INSERT INTO feed_events (order_xid, kind, user_id, clerk_user_id, clerk_org_id, account_id,
                             actor_clerk_user_id, payload)
    VALUES (greatest(v_order_xid, v_previous), p_kind,
            CASE WHEN p_clerk_org_id IS NULL THEN p_user_id END,
            CASE WHEN p_clerk_org_id IS NULL THEN p_clerk_user_id END,
            p_clerk_org_id, p_account_id, p_actor_clerk_user_id, p_payload);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_emit_user_event(p_kind text, p_user_id uuid, p_clerk_user_id text, p_payload jsonb)
RETURNS void
LANGUAGE sql AS $$
    -- An event of a user's stream; see userd_emit_event.
    SELECT userd_emit_event(p_kind, p_user_id, p_clerk_user_id, NULL, NULL, NULL, p_payload)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_emit_account_event(p_kind text, p_account_id uuid, p_actor_user_id uuid, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_owner_user_id uuid;
    v_clerk_user_id text;
    v_clerk_org_id text;
    v_actor text;
BEGIN
    -- Emits an event of the account p_account_id on its owner's stream:
    -- the owner's user (personal) or organization. The actor is the user
    -- p_actor_user_id, by Clerk id.
    SELECT a.owner_user_id, u.clerk_user_id, o.clerk_org_id INTO v_owner_user_id, v_clerk_user_id, v_clerk_org_id
    FROM accounts a
    LEFT JOIN users u ON u.id = a.owner_user_id
    LEFT JOIN organizations o ON o.id = a.organization_id
    WHERE a.id = p_account_id;
    IF p_actor_user_id IS NOT NULL THEN
        IF p_actor_user_id = v_owner_user_id THEN
            v_actor := v_clerk_user_id;
        ELSE
            SELECT u.clerk_user_id INTO v_actor FROM users u WHERE u.id = p_actor_user_id;
        END IF;
    END IF;
    PERFORM userd_emit_event(p_kind, v_owner_user_id, v_clerk_user_id, v_clerk_org_id, p_account_id,
        v_actor, p_payload);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_credit_transactions_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- credits.changed for a ledger entry, on the stream of the account's
    -- owner.
    PERFORM userd_emit_account_event('credits.changed', NEW.user_id, NEW.actor_user_id,
        jsonb_build_object(
            'id', NEW.id, 'delta', NEW.delta, 'balance_after', NEW.balance_after, 'kind', NEW.kind,
            'reason', NEW.reason, 'idempotency_key', NEW.idempotency_key, 'created_at', NEW.created_at,
            'actor_user_id', NEW.actor_user_id, 'service', NEW.service));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_plan_changes_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- plan.changed for a plan change, on the stream of the account's
    -- owner.
    PERFORM userd_emit_account_event('plan.changed', NEW.user_id, NEW.actor_user_id,
        jsonb_build_object(
            'id', NEW.id, 'previous_plan', NEW.previous_plan, 'plan', NEW.plan,
            'bonus_credits', NEW.bonus_credits, 'transaction_id', NEW.transaction_id,
            'reason', NEW.reason, 'idempotency_key', NEW.idempotency_key, 'created_at', NEW.created_at,
            'actor_user_id', NEW.actor_user_id, 'service', NEW.service));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_user_event_payload(u users)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    -- The user as an event shows it, with its personal account's plan and
    -- balance.
    SELECT jsonb_build_object(
        'email', u.email, 'first_name', u.first_name, 'last_name', u.last_name,
        'image_url', u.image_url, 'plan', a.plan, 'credits', a.credits,
        'created_at', u.created_at, 'updated_at', u.updated_at)
    FROM (SELECT 1) one
    LEFT JOIN accounts a ON a.id = u.id
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_users_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- user.created, user.updated and user.deleted. A deletion that erased
    -- the user's personal data (USERD_KEEP_DELETED_USER_DATA off, the
    -- default), or a later erasure of a deleted user's kept data (userd
    -- erase-user), erases it from the user's earlier events as well, so
    -- the outbox keeps none of it for the rest of its retention. A deleted
    -- user emits nothing more.
    IF NEW.deleted_at IS NULL THEN
        PERFORM userd_emit_event(
            CASE TG_OP WHEN 'INSERT' THEN 'user.created' ELSE 'user.updated' END,
            NEW.id, NEW.clerk_user_id, NULL, NULL, NULL, userd_user_event_payload(NEW));
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.deleted_at IS NULL THEN
        -- A deletion, or a tombstone for a user never seen.
        PERFORM userd_emit_event('user.deleted', NEW.id, NEW.clerk_user_id, NULL, NULL, NULL,
            (SELECT jsonb_build_object('plan', a.plan, 'credits', a.credits, 'deleted_at', NEW.deleted_at)
             FROM (SELECT 1) one LEFT JOIN accounts a ON a.id = NEW.id));
    END IF;
    IF NEW.email IS NULL AND NEW.first_name IS NULL AND NEW.last_name IS NULL AND NEW.image_url IS NULL THEN
        UPDATE feed_events
        SET payload = payload || jsonb_build_object('email', NULL, 'first_name', NULL, 'last_name', NULL, 'image_url', NULL)
        WHERE clerk_user_id = NEW.clerk_user_id AND kind IN ('user.created', 'user.updated');
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_prune_user_events(p_before timestamptz, p_limit integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_horizon bigint;
    v_last_xid bigint;
    v_last_id bigint;
    v_count bigint;
BEGIN
    -- Deletes up to p_limit of the oldest final events created before
    -- p_before, in feed order and stopping at the first newer one, so that
    -- what is deleted is always a prefix of the feed and
    -- user_events_pruned marks its end exactly. Replicas prune one at a
    -- time (the row lock on user_events_pruned). Returns how many it
    -- deleted.
    PERFORM 1 FROM user_events_pruned FOR UPDATE;
    v_horizon := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    SELECT h.order_xid, h.id INTO v_last_xid, v_last_id
    FROM (
        SELECT e.order_xid, e.id, e.created_at,
               bool_and(e.created_at < p_before) OVER (ORDER BY e.order_xid, e.id) AS all_old
        FROM (SELECT * FROM feed_events
              WHERE order_xid < v_horizon
              ORDER BY order_xid, id
              LIMIT p_limit) e
    ) h
    WHERE h.all_old
    ORDER BY h.order_xid DESC, h.id DESC
    LIMIT 1;
    IF v_last_xid IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM feed_events WHERE (order_xid, id) <= (v_last_xid, v_last_id);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE user_events_pruned SET order_xid = v_last_xid, id = v_last_id, pruned_at = now();
    RETURN v_count;
END
$$;
-- +goose StatementEnd

COMMIT;

-- +goose Down

-- The previous release's bodies (00003 to 00009), then the new functions.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_claim_idempotency_key(p_user_id uuid, p_key text, p_operation text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Claims p_key in the user's key space for p_operation: true when this
    -- call claimed it (the caller applies its operation), false when the
    -- key was claimed before (the caller replays, or answers key_reused).
    -- The caller holds the user's row lock, so a racing claim of the same
    -- key waits for this transaction and then finds it claimed.
    INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
    VALUES (p_user_id, p_key, p_operation)
    ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_idempotency_key_used(p_user_id uuid, p_key text) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
    -- Whether the user's key space holds p_key, for any operation.
    SELECT EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.user_id = p_user_id AND k.idempotency_key = p_key)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_post_ledger_entry(p_user_id uuid, p_balance bigint, p_allowed boolean, p_delta bigint, p_kind text, p_reason text, p_key text, p_operation text, p_replay_any_delta boolean, OUT status text, OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone)
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Moves the balance of a user whose row the caller has locked (it was
    -- p_balance) by p_delta and writes the ledger entry, under p_key
    -- claimed for p_operation. p_allowed says whether the balance allows
    -- it; when it does not, or the key was claimed before, the key's
    -- original entry is replayed if it applied the same operation with the
    -- same reason (and the same delta, unless p_replay_any_delta: a
    -- deduction by action replays whatever price it charged). Statuses:
    --   applied     the entry was written (t_* columns)
    --   replayed    t_* columns: the original entry
    --   key_reused  the key already applied something else
    --   refused     not allowed, and the key is unused
    -- Nested, not AND: SQL leaves the order in which AND evaluates its
    -- operands open, and the key must not be claimed for a refused write.
    IF p_allowed THEN
        IF userd_claim_idempotency_key(p_user_id, p_key, p_operation) THEN
            WITH balance AS (
                UPDATE users SET credits = p_balance + p_delta, updated_at = now()
                WHERE id = p_user_id
                RETURNING credits
            )
            INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
            SELECT p_user_id, p_delta, balance.credits, p_kind, p_reason, p_key FROM balance
            RETURNING id, user_id, delta, balance_after, kind, reason, created_at
            INTO t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at;
            status := 'applied';
            RETURN;
        END IF;
    END IF;

    SELECT t.id, t.user_id, t.delta, t.balance_after, t.kind, t.reason, t.created_at
    INTO t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at
    FROM idempotency_keys k
    JOIN credit_transactions t ON t.user_id = k.user_id AND t.idempotency_key = k.idempotency_key
    WHERE k.user_id = p_user_id AND k.idempotency_key = p_key AND k.operation = p_operation;
    IF FOUND AND t_reason = p_reason AND (p_replay_any_delta OR t_delta = p_delta) THEN
        status := 'replayed';
        RETURN;
    END IF;
    t_id := NULL; t_user_id := NULL; t_delta := NULL; t_balance_after := NULL;
    t_kind := NULL; t_reason := NULL; t_created_at := NULL;
    status := CASE WHEN userd_idempotency_key_used(p_user_id, p_key) THEN 'key_reused' ELSE 'refused' END;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_change_credits(p_clerk_user_id text, p_kind text, p_delta bigint, p_reason text, p_key text, OUT status text, OUT available bigint, OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone)
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_user_id uuid;
    v_credits bigint;
BEGIN
    -- Deducts (p_delta < 0) or grants (p_delta > 0) credits in one call,
    -- under the user's row lock and p_key (claimed as p_kind). Expected
    -- outcomes are a status, not an error, so that the caller needs no
    -- second round trip:
    --   applied       the entry was written (t_* columns)
    --   replayed      the key already applied these parameters (t_* columns: the original entry)
    --   key_reused    the key already applied something else
    --   insufficient  the balance (available) is below the amount; nothing changed
    --   overflow      the balance would exceed bigint; nothing changed
    --   not_found     no live user has this Clerk id
    -- A replay answers with the original entry even when the balance is
    -- lower now. Every statement after the lock runs with a snapshot taken
    -- after the lock was granted (READ COMMITTED), so it sees whatever a
    -- racing call that held the lock before committed.
    SELECT u.id, u.credits INTO v_user_id, v_credits FROM users u
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    available := v_credits;

    SELECT e.status, e.t_id, e.t_user_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at
    INTO status, t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at
    FROM userd_post_ledger_entry(v_user_id, v_credits,
        NOT ((p_delta < 0 AND v_credits < -p_delta) OR (p_delta > 0 AND v_credits > 9223372036854775807 - p_delta)),
        p_delta, p_kind, p_reason, p_key, p_kind, false) e;
    IF status = 'applied' THEN
        available := t_balance_after;
    ELSIF status = 'refused' THEN
        status := CASE WHEN p_delta < 0 THEN 'insufficient' ELSE 'overflow' END;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_deduct_for_action(p_clerk_user_id text, p_action text, p_key text, OUT status text, OUT available bigint, OUT price bigint, OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone)
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_user_id uuid;
    v_credits bigint;
BEGIN
    -- Charges one use of p_action at its current price in one call, under
    -- the same row lock and key space as userd_change_credits; the key is
    -- claimed as DEDUCT_ACTION, so it never replays as a deduction by
    -- amount. The entry's reason is the action, its delta the price
    -- charged, negated. Statuses:
    --   applied         the entry was written (t_* columns; price = what it cost)
    --   replayed        the key already charged this action (t_* columns: the
    --                   original entry, whatever the price is now)
    --   unknown_action  the price list has no such action; nothing changed
    --   key_reused      the key already applied something else
    --   insufficient    the balance (available) is below the price; nothing changed
    --   not_found       no live user has this Clerk id
    -- The price is read under a share lock: a price change of the action
    -- (which locks the row for update) waits until this deduction commits,
    -- and a deduction that starts while a change is in flight waits for it
    -- and charges the new price. So every deduction charges the price in
    -- effect when it commits. The price comes first: an unknown action is
    -- the request's own mistake, answered the same whoever the user is,
    -- and locks nothing.
    SELECT p.credits INTO price FROM prices p WHERE p.action = p_action FOR SHARE;
    IF NOT FOUND THEN
        status := 'unknown_action';
        RETURN;
    END IF;

    SELECT u.id, u.credits INTO v_user_id, v_credits FROM users u
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    available := v_credits;

    SELECT e.status, e.t_id, e.t_user_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at
    INTO status, t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at
    FROM userd_post_ledger_entry(v_user_id, v_credits, v_credits >= price,
        -price, 'DEDUCT', p_action, p_key, 'DEDUCT_ACTION', true) e;
    IF status = 'applied' THEN
        available := t_balance_after;
    ELSIF status = 'replayed' THEN
        price := -t_delta;
    ELSIF status = 'refused' THEN
        status := 'insufficient';
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_set_plan(p_clerk_user_id text, p_plan text, p_bonus bigint, p_reason text, p_key text, OUT status text, OUT u_id uuid, OUT u_clerk_user_id text, OUT u_email text, OUT u_first_name text, OUT u_last_name text, OUT u_image_url text, OUT u_plan text, OUT u_credits bigint, OUT u_clerk_updated_at bigint, OUT u_created_at timestamp with time zone, OUT u_updated_at timestamp with time zone, OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint, OUT pc_reason text, OUT pc_created_at timestamp with time zone, OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone)
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_user users%ROWTYPE;
    v_claimed boolean := false;
BEGIN
    -- Moves the user to p_plan and grants p_bonus in one call, under the
    -- same lock and key space as userd_change_credits (the key claimed as
    -- SET_PLAN). Statuses: applied, replayed (the original change; the
    -- user as it is now), key_reused, overflow, not_found. The u_* columns
    -- are the user after the call, pc_* the plan change, t_* the bonus
    -- entry (NULL without a bonus).
    SELECT * INTO v_user FROM users u
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;

    IF v_user.credits <= 9223372036854775807 - p_bonus THEN
        v_claimed := userd_claim_idempotency_key(v_user.id, p_key, 'SET_PLAN');
    END IF;
    IF v_claimed THEN
        IF p_bonus > 0 THEN
            INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
            VALUES (v_user.id, p_bonus, v_user.credits + p_bonus, 'PLAN_BONUS', p_reason, p_key)
            RETURNING id, delta, balance_after, kind, reason, created_at
            INTO t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at;
        END IF;
        INSERT INTO plan_changes (user_id, previous_plan, plan, bonus_credits, transaction_id, reason, idempotency_key)
        VALUES (v_user.id, v_user.plan, p_plan, p_bonus, t_id, p_reason, p_key)
        RETURNING id, previous_plan, plan, bonus_credits, reason, created_at
        INTO pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at;
        UPDATE users SET plan = p_plan, credits = credits + p_bonus, updated_at = now()
        WHERE id = v_user.id
        RETURNING * INTO v_user;
        status := 'applied';
    ELSE
        -- Not applied: a replay of this change answers with the original
        -- one, even when the bonus would overflow now.
        SELECT pc.id, pc.previous_plan, pc.plan, pc.bonus_credits, pc.reason, pc.created_at,
               t.id, t.delta, t.balance_after, t.kind, t.reason, t.created_at
        INTO pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at,
             t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at
        FROM idempotency_keys k
        JOIN plan_changes pc ON pc.user_id = k.user_id AND pc.idempotency_key = k.idempotency_key
        LEFT JOIN credit_transactions t ON t.id = pc.transaction_id
        WHERE k.user_id = v_user.id AND k.idempotency_key = p_key AND k.operation = 'SET_PLAN';
        IF FOUND AND pc_plan = p_plan AND pc_bonus_credits = p_bonus AND pc_reason = p_reason THEN
            status := 'replayed';
        ELSE
            status := CASE WHEN userd_idempotency_key_used(v_user.id, p_key) THEN 'key_reused' ELSE 'overflow' END;
            RETURN;
        END IF;
    END IF;

    u_id := v_user.id; u_clerk_user_id := v_user.clerk_user_id; u_email := v_user.email;
    u_first_name := v_user.first_name; u_last_name := v_user.last_name; u_image_url := v_user.image_url;
    u_plan := v_user.plan; u_credits := v_user.credits; u_clerk_updated_at := v_user.clerk_updated_at;
    u_created_at := v_user.created_at; u_updated_at := v_user.updated_at;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_apply_clerk_user(p_svix_id text, p_event_type text, p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text, p_updated_at bigint, p_initial_credits bigint) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_self users%ROWTYPE;
    v_holder users%ROWTYPE;
    v_row users%ROWTYPE;
    v_outcome text;
    v_email text;
    v_claimed boolean := false;
BEGIN
    IF p_svix_id IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_events w WHERE w.svix_id = p_svix_id) THEN
        RETURN 'duplicate';
    END IF;
    LOOP
        v_self := NULL;
        v_holder := NULL;
        FOR v_row IN
            SELECT * FROM users u
            WHERE u.clerk_user_id = p_clerk_user_id
               OR (p_email <> '' AND lower(u.email) = lower(p_email) AND u.deleted_at IS NULL)
            FOR UPDATE
        LOOP
            IF v_row.clerk_user_id = p_clerk_user_id THEN
                v_self := v_row;
            ELSE
                v_holder := v_row;
            END IF;
        END LOOP;

        v_outcome := CASE
            WHEN v_self.id IS NULL THEN 'created'
            WHEN v_self.deleted_at IS NOT NULL THEN 'ignored_deleted'
            WHEN v_self.clerk_updated_at >= p_updated_at THEN 'stale'
            ELSE 'updated'
        END;

        IF p_svix_id IS NULL THEN
            NULL; -- Clerk's state fetched for EnsureUser: no message to record.
        ELSIF NOT v_claimed THEN
            INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
            VALUES (p_svix_id, p_event_type, p_clerk_user_id, v_outcome)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                RETURN 'duplicate';
            END IF;
            v_claimed := true;
        ELSE
            UPDATE webhook_events SET outcome = v_outcome WHERE svix_id = p_svix_id;
        END IF;

        IF v_outcome IN ('stale', 'ignored_deleted') THEN
            RETURN v_outcome;
        END IF;

        v_email := nullif(p_email, '');
        IF v_email IS NOT NULL AND v_holder.id IS NOT NULL THEN
            IF v_holder.clerk_updated_at > p_updated_at THEN
                v_email := NULL;
            ELSE
                UPDATE users SET email = NULL, updated_at = now() WHERE id = v_holder.id;
            END IF;
        END IF;

        IF v_outcome = 'updated' THEN
            UPDATE users
            SET email = v_email, first_name = nullif(p_first_name, ''), last_name = nullif(p_last_name, ''),
                image_url = nullif(p_image_url, ''), clerk_updated_at = p_updated_at, updated_at = now()
            WHERE id = v_self.id;
            RETURN v_outcome;
        END IF;

        WITH new_user AS (
            INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, plan, credits, clerk_updated_at)
            VALUES (p_clerk_user_id, v_email, nullif(p_first_name, ''), nullif(p_last_name, ''),
                    nullif(p_image_url, ''), 'FREE', p_initial_credits, p_updated_at)
            ON CONFLICT (clerk_user_id) DO NOTHING
            RETURNING id, credits
        )
        INSERT INTO credit_transactions (user_id, delta, balance_after, kind)
        SELECT new_user.id, new_user.credits, new_user.credits, 'INITIAL' FROM new_user;
        IF FOUND THEN
            RETURN v_outcome;
        END IF;
        -- Another transaction created the user after the lock query found
        -- nothing: look again, now that its row is committed.
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_delete_clerk_user(p_svix_id text, p_event_type text, p_clerk_user_id text, p_erase boolean) RETURNS text
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF coalesce(p_svix_id, '') <> '' THEN
        INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
        VALUES (p_svix_id, p_event_type, p_clerk_user_id, 'deleted')
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
    END IF;
    INSERT INTO users (clerk_user_id, plan, credits, deleted_at)
    VALUES (p_clerk_user_id, 'FREE', 0, now())
    ON CONFLICT (clerk_user_id) DO UPDATE
    SET deleted_at = coalesce(users.deleted_at, now()), updated_at = now(),
        email = CASE WHEN p_erase THEN NULL ELSE users.email END,
        first_name = CASE WHEN p_erase THEN NULL ELSE users.first_name END,
        last_name = CASE WHEN p_erase THEN NULL ELSE users.last_name END,
        image_url = CASE WHEN p_erase THEN NULL ELSE users.image_url END;
    RETURN 'deleted';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_emit_user_event(p_kind text, p_user_id uuid, p_clerk_user_id text, p_payload jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_order_xid bigint := pg_current_xact_id()::text::bigint;
    v_previous bigint;
BEGIN
    SELECT e.order_xid INTO v_previous FROM user_events e
    WHERE e.clerk_user_id = p_clerk_user_id
    ORDER BY e.order_xid DESC, e.id DESC
    LIMIT 1;
    INSERT INTO user_events (order_xid, kind, user_id, clerk_user_id, payload)
    VALUES (greatest(v_order_xid, v_previous), p_kind, p_user_id, p_clerk_user_id, p_payload);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_credit_transactions_feed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM userd_emit_user_event('credits.changed', NEW.user_id,
        (SELECT u.clerk_user_id FROM users u WHERE u.id = NEW.user_id),
        jsonb_build_object(
            'id', NEW.id, 'delta', NEW.delta, 'balance_after', NEW.balance_after, 'kind', NEW.kind,
            'reason', NEW.reason, 'idempotency_key', NEW.idempotency_key, 'created_at', NEW.created_at));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_plan_changes_feed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM userd_emit_user_event('plan.changed', NEW.user_id,
        (SELECT u.clerk_user_id FROM users u WHERE u.id = NEW.user_id),
        jsonb_build_object(
            'id', NEW.id, 'previous_plan', NEW.previous_plan, 'plan', NEW.plan,
            'bonus_credits', NEW.bonus_credits, 'transaction_id', NEW.transaction_id,
            'reason', NEW.reason, 'idempotency_key', NEW.idempotency_key, 'created_at', NEW.created_at));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_user_event_payload(u public.users) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT jsonb_build_object(
        'email', u.email, 'first_name', u.first_name, 'last_name', u.last_name,
        'image_url', u.image_url, 'plan', u.plan, 'credits', u.credits,
        'created_at', u.created_at, 'updated_at', u.updated_at)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_users_feed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.deleted_at IS NULL THEN
        PERFORM userd_emit_user_event(
            CASE TG_OP WHEN 'INSERT' THEN 'user.created' ELSE 'user.updated' END,
            NEW.id, NEW.clerk_user_id, userd_user_event_payload(NEW));
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.deleted_at IS NULL THEN
        -- A deletion, or a tombstone for a user never seen.
        PERFORM userd_emit_user_event('user.deleted', NEW.id, NEW.clerk_user_id,
            jsonb_build_object('plan', NEW.plan, 'credits', NEW.credits, 'deleted_at', NEW.deleted_at));
    END IF;
    IF NEW.email IS NULL AND NEW.first_name IS NULL AND NEW.last_name IS NULL AND NEW.image_url IS NULL THEN
        UPDATE user_events
        SET payload = payload || jsonb_build_object('email', NULL, 'first_name', NULL, 'last_name', NULL, 'image_url', NULL)
        WHERE clerk_user_id = NEW.clerk_user_id AND kind IN ('user.created', 'user.updated');
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION public.userd_prune_user_events(p_before timestamp with time zone, p_limit integer) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_horizon bigint;
    v_last_xid bigint;
    v_last_id bigint;
    v_count bigint;
BEGIN
    PERFORM 1 FROM user_events_pruned FOR UPDATE;
    v_horizon := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    SELECT h.order_xid, h.id INTO v_last_xid, v_last_id
    FROM (
        SELECT e.order_xid, e.id, e.created_at,
               bool_and(e.created_at < p_before) OVER (ORDER BY e.order_xid, e.id) AS all_old
        FROM (SELECT * FROM user_events
              WHERE order_xid < v_horizon
              ORDER BY order_xid, id
              LIMIT p_limit) e
    ) h
    WHERE h.all_old
    ORDER BY h.order_xid DESC, h.id DESC
    LIMIT 1;
    IF v_last_xid IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM user_events WHERE (order_xid, id) <= (v_last_xid, v_last_id);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE user_events_pruned SET order_xid = v_last_xid, id = v_last_id, pruned_at = now();
    RETURN v_count;
END
$$;
-- +goose StatementEnd

DROP FUNCTION userd_personal_set_plan(text, text, text, bigint, text, text);
DROP FUNCTION userd_personal_deduct_for_action(text, text, text, text);
DROP FUNCTION userd_personal_change_credits(text, text, text, bigint, text, text);
DROP FUNCTION userd_account_set_plan(uuid, uuid, text, text, bigint, text, text);
DROP FUNCTION userd_account_post_plan(uuid, bigint, text, boolean, uuid, text, text, bigint, text, text);
DROP FUNCTION userd_account_deduct_for_action(uuid, uuid, text, text, text);
DROP FUNCTION userd_account_post_action(uuid, bigint, boolean, uuid, text, text, bigint, text);
DROP FUNCTION userd_account_change_credits(uuid, uuid, text, text, bigint, text, text);
DROP FUNCTION userd_account_post_credits(uuid, bigint, boolean, uuid, text, text, bigint, text, text);
DROP FUNCTION userd_post_ledger_entry(uuid, bigint, boolean, bigint, text, text, text, text, boolean, uuid, text);
DROP FUNCTION userd_lock_personal_account(text);
DROP FUNCTION userd_create_user(text, text, text, text, text, bigint, bigint);
DROP FUNCTION userd_insert_user(text, text, text, text, text, bigint, bigint, boolean);
DROP FUNCTION userd_emit_account_event(text, uuid, uuid, jsonb);
DROP FUNCTION userd_emit_event(text, uuid, text, text, uuid, text, jsonb);

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

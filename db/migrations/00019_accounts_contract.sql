-- userd:post-deploy
-- Accounts (issue 20), the contract half of 00010: apply it once no replica
-- of the previous release runs (`userd migrate up`; `userd serve` leaves it
-- pending, and applies it only on a new database). It drops what only the
-- previous release needed: users.credits and users.plan (the mirror of the
-- personal account), the triggers that kept the mirror, and the user_events
-- view that it read the feed through. The ledger tables keep their column
-- name user_id, which names the account (for a personal account, its
-- owner's user id): the release that applies this one reads and writes
-- them the same way before and after it.
--
-- One short transaction: the functions that wrote users.credits change with
-- the columns. Its locks (users, then accounts, in the writers' order) are
-- held for the time of catalog changes; it waits at most 5 s for them and
-- then fails, to be run again.

-- +goose Up
SET LOCAL lock_timeout = '5s';
LOCK TABLE users, accounts IN ACCESS EXCLUSIVE MODE;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_lock_personal_account(p_clerk_user_id text,
    OUT account_id uuid, OUT credits bigint, OUT plan text, OUT closed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    -- Locks the personal account of the live user p_clerk_user_id (FOR
    -- UPDATE) and returns it; account_id is NULL when there is no such
    -- user. Only the account is locked: a write of a user's balance or
    -- plan waits for nothing but the account's other writes (and the
    -- user's profile changes, which lock the account too, so that the
    -- user's feed stream stays in order).
    SELECT a.id, a.credits, a.plan, a.closed_at IS NOT NULL INTO account_id, credits, plan, closed
    FROM users u JOIN accounts a ON a.id = u.id
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE OF a;
END
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
    -- tombstone (no credits, no entry). One statement: the feed's triggers,
    -- which run at its end, see the user with its account.
    WITH new_user AS (
        INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, clerk_updated_at, deleted_at)
        VALUES (p_clerk_user_id, p_email, p_first_name, p_last_name, p_image_url, p_clerk_updated_at,
                CASE WHEN p_deleted THEN now() END)
        ON CONFLICT (clerk_user_id) DO NOTHING
        RETURNING id, created_at, updated_at
    ), account AS (
        INSERT INTO accounts (id, owner_user_id, plan, credits, created_at, updated_at)
        SELECT new_user.id, new_user.id, 'FREE', CASE WHEN p_deleted THEN 0 ELSE p_initial_credits END,
               new_user.created_at, new_user.updated_at
        FROM new_user
        RETURNING id, credits
    ), initial AS (
        INSERT INTO credit_transactions (user_id, delta, balance_after, kind)
        SELECT account.id, account.credits, account.credits, 'INITIAL' FROM account
        WHERE NOT p_deleted
    )
    SELECT account.id INTO v_id FROM account;
    RETURN v_id;
END
$$;
-- +goose StatementEnd

DROP TRIGGER users_account_insert ON users;
DROP TRIGGER users_account_update ON users;
DROP TRIGGER accounts_to_user ON accounts;
DROP FUNCTION userd_users_to_account();
DROP FUNCTION userd_account_to_user();
ALTER TABLE users DROP COLUMN credits, DROP COLUMN plan;
DROP VIEW user_events;

-- +goose Down
SET LOCAL lock_timeout = '5s';
LOCK TABLE users, accounts IN ACCESS EXCLUSIVE MODE;
CREATE VIEW user_events AS
    SELECT e.id, e.order_xid, e.kind, e.user_id, e.clerk_user_id, e.payload, e.created_at
    FROM feed_events e
    WHERE e.clerk_org_id IS NULL AND e.user_id IS NOT NULL AND e.clerk_user_id IS NOT NULL
      AND e.kind IN ('user.created', 'user.updated', 'user.deleted', 'plan.changed', 'credits.changed');

ALTER TABLE users ADD COLUMN plan text NOT NULL DEFAULT 'FREE', ADD COLUMN credits bigint NOT NULL DEFAULT 0;
UPDATE users u SET plan = a.plan, credits = a.credits FROM accounts a WHERE a.id = u.id;
ALTER TABLE users ALTER COLUMN credits DROP DEFAULT,
    ADD CONSTRAINT users_credits_non_negative CHECK (credits >= 0),
    ADD CONSTRAINT users_plan_valid CHECK (plan IN ('FREE', 'PRO', 'ENTERPRISE'));

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

CREATE TRIGGER users_account_insert AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION userd_users_to_account();
CREATE TRIGGER users_account_update AFTER UPDATE OF plan, credits ON users
    FOR EACH ROW
    WHEN ((OLD.plan, OLD.credits) IS DISTINCT FROM (NEW.plan, NEW.credits))
    EXECUTE FUNCTION userd_users_to_account();
CREATE TRIGGER accounts_to_user AFTER UPDATE OF plan, credits ON accounts
    FOR EACH ROW
    WHEN (NEW.owner_user_id IS NOT NULL AND (OLD.plan, OLD.credits) IS DISTINCT FROM (NEW.plan, NEW.credits))
    EXECUTE FUNCTION userd_account_to_user();

-- 00010's bodies.
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

-- +goose Up
-- idempotency_keys is the one key space of a user: every keyed operation
-- (deduct, grant, set plan) claims its key here first, under the user's row
-- lock, so a key can apply at most one operation even when two different
-- operations race with it. The operation's own row (ledger entry, plan
-- change) still carries the key, for replays and for callers reading the
-- ledger.
CREATE TABLE idempotency_keys (
    user_id          uuid        NOT NULL REFERENCES users (id),
    idempotency_key  text        NOT NULL,
    operation        text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (user_id, idempotency_key),
    CONSTRAINT idempotency_keys_operation_valid CHECK (operation IN ('DEDUCT', 'GRANT', 'SET_PLAN'))
);

-- Keys used before this table existed. Plan changes first: a plan bonus is
-- a ledger entry under the plan change's key.
INSERT INTO idempotency_keys (user_id, idempotency_key, operation, created_at)
SELECT user_id, idempotency_key, 'SET_PLAN', created_at FROM plan_changes
ON CONFLICT DO NOTHING;
INSERT INTO idempotency_keys (user_id, idempotency_key, operation, created_at)
SELECT user_id, idempotency_key, kind, created_at FROM credit_transactions
WHERE idempotency_key IS NOT NULL AND kind IN ('DEDUCT', 'GRANT')
ON CONFLICT DO NOTHING;

-- userd_change_credits deducts (p_delta < 0) or grants (p_delta > 0) credits
-- in one call: it takes the user's row lock, claims the key, moves the
-- balance and writes the ledger entry. Expected outcomes are a status, not
-- an error, so that the caller needs no second round trip:
--   applied       the entry was written (t_* columns)
--   replayed      the key already applied these parameters (t_* columns: the original entry)
--   key_reused    the key already applied something else
--   insufficient  the balance (available) is below the amount; nothing changed
--   overflow      the balance would exceed bigint; nothing changed
--   not_found     no live user has this Clerk id
-- Every statement after the lock runs with a snapshot taken after the lock
-- was granted (READ COMMITTED), so it sees whatever a racing call that held
-- the lock before committed.
-- +goose StatementBegin
CREATE FUNCTION userd_change_credits(
    p_clerk_user_id text, p_kind text, p_delta bigint, p_reason text, p_key text,
    OUT status text, OUT available bigint,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_user_id uuid;
    v_credits bigint;
BEGIN
    SELECT u.id, u.credits INTO v_user_id, v_credits FROM users u
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    available := v_credits;

    IF (p_delta < 0 AND v_credits < -p_delta) OR (p_delta > 0 AND v_credits > 9223372036854775807 - p_delta) THEN
        -- Refused unless the key already applied exactly this: a replay
        -- answers with the original entry even when the balance is lower now.
        IF NOT EXISTS (SELECT 1 FROM idempotency_keys k
                       WHERE k.user_id = v_user_id AND k.idempotency_key = p_key) THEN
            status := CASE WHEN p_delta < 0 THEN 'insufficient' ELSE 'overflow' END;
            RETURN;
        END IF;
    ELSE
        INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
        VALUES (v_user_id, p_key, p_kind)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            WITH balance AS (
                UPDATE users SET credits = v_credits + p_delta, updated_at = now()
                WHERE id = v_user_id
                RETURNING credits
            )
            INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
            SELECT v_user_id, p_delta, balance.credits, p_kind, p_reason, p_key FROM balance
            RETURNING id, user_id, delta, balance_after, kind, reason, created_at
            INTO t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at;
            status := 'applied';
            available := t_balance_after;
            RETURN;
        END IF;
    END IF;

    -- The key was used before: replay it if it applied these parameters.
    SELECT t.id, t.user_id, t.delta, t.balance_after, t.kind, t.reason, t.created_at
    INTO t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at
    FROM idempotency_keys k
    JOIN credit_transactions t ON t.user_id = k.user_id AND t.idempotency_key = k.idempotency_key
    WHERE k.user_id = v_user_id AND k.idempotency_key = p_key AND k.operation = p_kind;
    IF FOUND AND t_delta = p_delta AND t_reason = p_reason THEN
        status := 'replayed';
    ELSE
        status := 'key_reused';
        t_id := NULL; t_user_id := NULL; t_delta := NULL; t_balance_after := NULL;
        t_kind := NULL; t_reason := NULL; t_created_at := NULL;
    END IF;
END
$$;
-- +goose StatementEnd

-- userd_set_plan moves the user to p_plan and grants p_bonus in one call,
-- under the same lock and key space as userd_change_credits. Statuses:
-- applied, replayed (the original change; the user as it is now),
-- key_reused, overflow, not_found. The u_* columns are the user after the
-- call, pc_* the plan change, t_* the bonus entry (NULL without a bonus).
-- +goose StatementBegin
CREATE FUNCTION userd_set_plan(
    p_clerk_user_id text, p_plan text, p_bonus bigint, p_reason text, p_key text,
    OUT status text,
    OUT u_id uuid, OUT u_clerk_user_id text, OUT u_email text, OUT u_first_name text,
    OUT u_last_name text, OUT u_image_url text, OUT u_plan text, OUT u_credits bigint,
    OUT u_clerk_updated_at bigint, OUT u_created_at timestamptz, OUT u_updated_at timestamptz,
    OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint,
    OUT pc_reason text, OUT pc_created_at timestamptz,
    OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text,
    OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_user users%ROWTYPE;
    v_claimed boolean := false;
BEGIN
    SELECT * INTO v_user FROM users u
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;

    IF v_user.credits <= 9223372036854775807 - p_bonus THEN
        INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
        VALUES (v_user.id, p_key, 'SET_PLAN')
        ON CONFLICT DO NOTHING;
        v_claimed := FOUND;
    ELSIF NOT EXISTS (SELECT 1 FROM idempotency_keys k
                      WHERE k.user_id = v_user.id AND k.idempotency_key = p_key) THEN
        status := 'overflow';
        RETURN;
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
            status := 'key_reused';
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

-- userd_apply_clerk_user applies one user.created/user.updated delivery in
-- one call and returns its outcome: created, updated, stale,
-- ignored_deleted, or duplicate (the Svix message id was applied before;
-- nothing changed). Clerk's updated_at (ms) versions each state: an older
-- state never overwrites a newer one, and a deletion is final. When another
-- live user holds the email, the newer state keeps it (an older holder
-- loses it; a newer holder keeps it and this user is stored without one).
-- The message id is claimed before any write, once the outcome is known,
-- so a redelivery racing this one waits for it and then changes nothing.
-- p_svix_id NULL applies a state fetched from Clerk without a message.
-- A racing creation of the same user is seen on the next pass of the loop.
-- +goose StatementBegin
CREATE FUNCTION userd_apply_clerk_user(
    p_svix_id text, p_event_type text, p_clerk_user_id text, p_email text,
    p_first_name text, p_last_name text, p_image_url text, p_updated_at bigint,
    p_initial_credits bigint)
RETURNS text
LANGUAGE plpgsql AS $$
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

-- userd_delete_clerk_user applies one user.deleted delivery: the user is
-- marked deleted, or a tombstone is made when no row exists yet, so that no
-- late event can create it. Its ledger and plan history are kept; with
-- p_erase its personal data (email, names, image) is erased. Returns
-- deleted, or duplicate when the message id was applied before.
-- +goose StatementBegin
CREATE FUNCTION userd_delete_clerk_user(p_svix_id text, p_event_type text, p_clerk_user_id text, p_erase boolean)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
    VALUES (p_svix_id, p_event_type, p_clerk_user_id, 'deleted')
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
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

-- userd_apply_clerk_events applies a batch of deliveries in one call and one
-- transaction (group commit): each event runs in its own subtransaction, so
-- one that fails leaves the others applied. Events are in arrays of equal
-- length; p_deleted[i] marks a user.deleted (only the id is read); an empty
-- svix id applies a user state without recording a message; new users get
-- p_initial_credits, and p_erase_deleted erases the personal data of users
-- deleted. It returns
-- one row per event, in order: the outcome, or 'retry' with the SQLSTATE (error_code) when
-- the event failed and should be delivered again (Svix retries a 5xx).
-- +goose StatementBegin
CREATE FUNCTION userd_apply_clerk_events(
    p_svix_ids text[], p_event_types text[], p_clerk_user_ids text[], p_deleted boolean[],
    p_emails text[], p_first_names text[], p_last_names text[], p_image_urls text[],
    p_updated_ats bigint[], p_initial_credits bigint, p_erase_deleted boolean,
    OUT ordinal integer, OUT outcome text, OUT error_code text)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_svix_ids, 1), 0) LOOP
        ordinal := i;
        error_code := NULL;
        BEGIN
            IF p_deleted[i] THEN
                outcome := userd_delete_clerk_user(p_svix_ids[i], p_event_types[i], p_clerk_user_ids[i], p_erase_deleted);
            ELSE
                outcome := userd_apply_clerk_user(nullif(p_svix_ids[i], ''), p_event_types[i], p_clerk_user_ids[i],
                    p_emails[i], p_first_names[i], p_last_names[i], p_image_urls[i], p_updated_ats[i],
                    p_initial_credits);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            outcome := 'retry';
            error_code := SQLSTATE;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- The helpers of 00009, whose down leaves them (see there), go with the
-- functions that call them.
DROP FUNCTION IF EXISTS userd_post_ledger_entry(uuid, bigint, boolean, bigint, text, text, text, text, boolean);
DROP FUNCTION IF EXISTS userd_idempotency_key_used(uuid, text);
DROP FUNCTION IF EXISTS userd_claim_idempotency_key(uuid, text, text);
DROP FUNCTION userd_apply_clerk_events(text[], text[], text[], boolean[], text[], text[], text[], text[], bigint[], bigint, boolean);
DROP FUNCTION userd_apply_clerk_user(text, text, text, text, text, text, text, bigint, bigint);
DROP FUNCTION userd_delete_clerk_user(text, text, text, boolean);
DROP FUNCTION userd_set_plan(text, text, bigint, text, text);
DROP FUNCTION userd_change_credits(text, text, bigint, text, text);
DROP TABLE idempotency_keys;

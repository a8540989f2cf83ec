-- +goose Up
-- One key claim. Every keyed write claims its idempotency key through
-- userd_claim_idempotency_key, and the two ledger writes (by amount, by
-- action) apply or replay their entry through userd_post_ledger_entry, so
-- that a change of the key space or of how an entry is written (accounts,
-- events written by the write functions themselves) is made in one place.
-- userd_change_credits, userd_deduct_for_action and userd_set_plan keep
-- their signatures and their answers; only their bodies change. The
-- functions document themselves inside their bodies, which db/schema.sql
-- shows as PostgreSQL has them.

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_claim_idempotency_key(p_user_id uuid, p_key text, p_operation text)
RETURNS boolean
LANGUAGE plpgsql AS $$
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
CREATE OR REPLACE FUNCTION userd_idempotency_key_used(p_user_id uuid, p_key text)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    -- Whether the user's key space holds p_key, for any operation.
    SELECT EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.user_id = p_user_id AND k.idempotency_key = p_key)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_post_ledger_entry(
    p_user_id uuid, p_balance bigint, p_allowed boolean, p_delta bigint, p_kind text, p_reason text,
    p_key text, p_operation text, p_replay_any_delta boolean,
    OUT status text,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE plpgsql AS $$
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
CREATE OR REPLACE FUNCTION userd_change_credits(
    p_clerk_user_id text, p_kind text, p_delta bigint, p_reason text, p_key text,
    OUT status text, OUT available bigint,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE plpgsql AS $$
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
CREATE OR REPLACE FUNCTION userd_deduct_for_action(
    p_clerk_user_id text, p_action text, p_key text,
    OUT status text, OUT available bigint, OUT price bigint,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE plpgsql AS $$
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
LANGUAGE plpgsql AS $$
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

-- +goose Down
-- Nothing: the three write functions keep their signatures and answer as
-- the bodies of 00003 and 00004 did, so the release of 00007 runs on them,
-- and restoring those bodies here would copy them once more. The helpers
-- stay with the functions that call them (CREATE OR REPLACE above, so that
-- up after down applies again); 00003's down drops them with those
-- functions.

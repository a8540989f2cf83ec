-- +goose Up
-- prices is the price list: what one use of a named action costs, in
-- credits. Services set prices through the API (SetPrice); every service
-- that charges by action (DeductCredits with an action) charges the price
-- stored here at the moment its deduction commits.
CREATE TABLE prices (
    action      text        PRIMARY KEY,
    credits     bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- The principal that set the current price ("service:<name>").
    updated_by  text        NOT NULL,
    -- Action names are path segments of the REST API: no ':' or '/'.
    CONSTRAINT prices_action_valid CHECK (action ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    CONSTRAINT prices_credits_positive CHECK (credits > 0 AND credits <= 1000000000000)
);

-- price_changes is the audit history of the price list: one row per change
-- that SetPrice applied (a call that sets the price already in effect
-- changes nothing and writes nothing).
CREATE TABLE price_changes (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action            text        NOT NULL,
    -- NULL when the change created the action.
    previous_credits  bigint,
    credits           bigint      NOT NULL,
    changed_by        text        NOT NULL,
    changed_at        timestamptz NOT NULL DEFAULT now()
);

-- Serves ListPriceChanges of one action, newest first.
CREATE INDEX price_changes_action_id_idx ON price_changes (action, id);

-- A deduction by action claims its key as its own operation, so that the
-- same key can never replay as a deduction by amount (or the other way
-- round) even when the amount equals the price. NOT VALID: the new list is
-- a superset of the old one, so no existing row can break it; 00005
-- validates it without blocking writes.
ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_operation_valid,
    ADD CONSTRAINT idempotency_keys_operation_valid
        CHECK (operation IN ('DEDUCT', 'DEDUCT_ACTION', 'GRANT', 'SET_PLAN')) NOT VALID;

-- userd_deduct_for_action charges one use of p_action at its current price
-- in one call, under the same row lock and key space as
-- userd_change_credits. The ledger entry's reason is the action and its
-- delta is the price charged, negated. Statuses:
--   applied         the entry was written (t_* columns; price = what it cost)
--   replayed        the key already charged this action (t_* columns: the
--                   original entry, whatever the price is now)
--   unknown_action  the price list has no such action; nothing changed
--   key_reused      the key already applied something else
--   insufficient    the balance (available) is below the price; nothing changed
--   not_found       no live user has this Clerk id
-- The price is read FOR SHARE: a price change of the action (which locks
-- the row FOR UPDATE) waits until this deduction commits, and a deduction
-- that starts while a change is in flight waits for it and charges the new
-- price. So every deduction charges the price in effect when it commits.
-- +goose StatementBegin
CREATE FUNCTION userd_deduct_for_action(
    p_clerk_user_id text, p_action text, p_key text,
    OUT status text, OUT available bigint, OUT price bigint,
    OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_user_id uuid;
    v_credits bigint;
BEGIN
    -- The price first: an unknown action is the request's own mistake,
    -- answered the same whoever the user is, and locks nothing.
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

    IF v_credits >= price THEN
        INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
        VALUES (v_user_id, p_key, 'DEDUCT_ACTION')
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            WITH balance AS (
                UPDATE users SET credits = v_credits - price, updated_at = now()
                WHERE id = v_user_id
                RETURNING credits
            )
            INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason, idempotency_key)
            SELECT v_user_id, -price, balance.credits, 'DEDUCT', p_action, p_key FROM balance
            RETURNING id, user_id, delta, balance_after, kind, reason, created_at
            INTO t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at;
            status := 'applied';
            available := t_balance_after;
            RETURN;
        END IF;
    END IF;

    -- Not applied: a replay of this action with this key answers with the
    -- original entry, at the price charged then.
    SELECT t.id, t.user_id, t.delta, t.balance_after, t.kind, t.reason, t.created_at
    INTO t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at
    FROM idempotency_keys k
    JOIN credit_transactions t ON t.user_id = k.user_id AND t.idempotency_key = k.idempotency_key
    WHERE k.user_id = v_user_id AND k.idempotency_key = p_key AND k.operation = 'DEDUCT_ACTION';
    IF FOUND AND t_reason = p_action THEN
        status := 'replayed';
        price := -t_delta;
        RETURN;
    END IF;
    t_id := NULL; t_user_id := NULL; t_delta := NULL; t_balance_after := NULL;
    t_kind := NULL; t_reason := NULL; t_created_at := NULL;

    status := CASE WHEN EXISTS (SELECT 1 FROM idempotency_keys k
                                WHERE k.user_id = v_user_id AND k.idempotency_key = p_key)
              THEN 'key_reused' ELSE 'insufficient' END;
END
$$;
-- +goose StatementEnd

-- userd_set_price sets the price of p_action (creating the action if new)
-- and records the change with who made it, in one call. Statuses: applied
-- (the price changed or was created; previous_credits is NULL for a new
-- action) and unchanged (it already had this price; nothing written). The
-- row lock (FOR UPDATE) waits for deductions of the action in flight, so
-- each of them charges the price that was in effect when it committed.
-- +goose StatementBegin
CREATE FUNCTION userd_set_price(
    p_action text, p_credits bigint, p_changed_by text,
    OUT status text, OUT previous_credits bigint,
    OUT pr_action text, OUT pr_credits bigint, OUT pr_created_at timestamptz,
    OUT pr_updated_at timestamptz, OUT pr_updated_by text,
    OUT change_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_row prices%ROWTYPE;
BEGIN
    LOOP
        SELECT * INTO v_row FROM prices p WHERE p.action = p_action FOR UPDATE;
        IF FOUND THEN
            IF v_row.credits = p_credits THEN
                status := 'unchanged';
            ELSE
                previous_credits := v_row.credits;
                -- clock_timestamp: when the change took effect, after any
                -- wait for the lock, rather than when the call began.
                UPDATE prices p SET credits = p_credits, updated_at = clock_timestamp(), updated_by = p_changed_by
                WHERE p.action = p_action
                RETURNING * INTO v_row;
                status := 'applied';
            END IF;
            EXIT;
        END IF;
        INSERT INTO prices (action, credits, created_at, updated_at, updated_by)
        VALUES (p_action, p_credits, clock_timestamp(), clock_timestamp(), p_changed_by)
        ON CONFLICT DO NOTHING
        RETURNING * INTO v_row;
        IF FOUND THEN
            status := 'applied';
            EXIT;
        END IF;
        -- A concurrent call created the action after the lock query found
        -- nothing: lock its row on the next pass.
    END LOOP;

    IF status = 'applied' THEN
        INSERT INTO price_changes (action, previous_credits, credits, changed_by, changed_at)
        VALUES (v_row.action, previous_credits, v_row.credits, v_row.updated_by, v_row.updated_at)
        RETURNING id INTO change_id;
    END IF;
    pr_action := v_row.action; pr_credits := v_row.credits; pr_created_at := v_row.created_at;
    pr_updated_at := v_row.updated_at; pr_updated_by := v_row.updated_by;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION userd_set_price(text, bigint, text);
DROP FUNCTION userd_deduct_for_action(text, text, text);
-- Keys of deductions by action become plain deduction keys again, so that
-- the old constraint holds.
UPDATE idempotency_keys SET operation = 'DEDUCT' WHERE operation = 'DEDUCT_ACTION';
ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_operation_valid,
    ADD CONSTRAINT idempotency_keys_operation_valid CHECK (operation IN ('DEDUCT', 'GRANT', 'SET_PLAN'));
DROP TABLE price_changes;
DROP TABLE prices;

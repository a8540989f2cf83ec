-- +goose Up
-- Spending from organization accounts (issue 20, item 3). A member spends
-- from its organization's account only while its membership is live, only
-- with the permission the operator requires, and never past the spending
-- cap an organization admin set for it for the current day, week or month
-- (UTC). Every check runs in the spend's own transaction, under the
-- account's row lock, which membership writes take too (before they change
-- the membership): once a removal has committed, no spend by that member
-- can commit, and N members racing cannot exceed their caps or the
-- balance.

-- account_member_caps holds each member's cap and, beside it, the counter
-- that enforces it in O(1): what the member spent from the account in the
-- period starting at period_start. The counter moves only under the
-- account's row lock, in the transaction of the spend it counts, so it
-- equals the sum of the member's deductions of that period in the ledger.
-- A spend in a later period starts the counter again from 0. Keyed by the
-- member's Clerk user id, like memberships; a removed member's cap stays
-- (and applies again if it rejoins) until an admin removes it.
CREATE TABLE account_member_caps (
    account_id     uuid        NOT NULL CONSTRAINT account_member_caps_account_fkey REFERENCES accounts (id),
    clerk_user_id  text        NOT NULL,
    period         text        NOT NULL,
    cap            bigint      NOT NULL,
    period_start   timestamptz NOT NULL,
    spent          bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- The principal that set the cap (a Clerk user id, or "service:<name>").
    updated_by     text        NOT NULL,
    CONSTRAINT account_member_caps_pkey PRIMARY KEY (account_id, clerk_user_id),
    CONSTRAINT account_member_caps_period_valid CHECK (period IN ('day', 'week', 'month')),
    CONSTRAINT account_member_caps_cap_non_negative CHECK (cap >= 0),
    CONSTRAINT account_member_caps_spent_non_negative CHECK (spent >= 0)
);

-- account_member_cap_changes is the audit history of caps: one row per
-- change userd_set_member_cap applied (setting the cap in effect writes
-- nothing).
CREATE TABLE account_member_cap_changes (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       uuid        NOT NULL CONSTRAINT account_member_cap_changes_account_fkey REFERENCES accounts (id),
    clerk_user_id    text        NOT NULL,
    -- NULL when there was no cap before, or none after (removed).
    previous_period  text,
    previous_cap     bigint,
    period           text,
    cap              bigint,
    changed_by       text        NOT NULL,
    changed_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX account_member_cap_changes_account_idx ON account_member_cap_changes (account_id, id);

-- +goose StatementBegin
CREATE FUNCTION userd_cap_period_start(p_period text, p_at timestamptz)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
    -- The start of the UTC day, week (ISO: from Monday) or month holding
    -- p_at.
    SELECT date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION userd_org_spend(
    p_clerk_org_id text, p_member_clerk_user_id text, p_service text, p_required_permission text,
    p_amount bigint, p_action text, p_reason text, p_key text, p_now timestamptz,
    OUT status text, OUT account_id uuid, OUT available bigint, OUT price bigint,
    OUT cap bigint, OUT spent bigint, OUT remaining bigint, OUT period text, OUT period_start timestamptz,
    OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_credits bigint;
    v_closed_at timestamptz;
    v_permissions text[];
    v_actor uuid;
    v_cap account_member_caps%ROWTYPE;
    v_start timestamptz;
    v_amount bigint;
    v_refusal text;
BEGIN
    -- Deducts from the account of organization p_clerk_org_id on behalf of
    -- its member p_member_clerk_user_id, by p_amount (p_action = '') or by
    -- one use of p_action at its current price (then p_reason is unused:
    -- the action is the entry's reason), in one call. p_service names the
    -- calling service ('' for an end user), recorded on the entry with
    -- the member as its actor. p_now is the time whose UTC period the cap
    -- counts in (NULL: now()). In order, under the account's row lock:
    --   unknown_action      the price list has no p_action (checked first,
    --                       locking nothing; the price read FOR SHARE as
    --                       in userd_deduct_for_action)
    --   not_found           no account for this organization
    --   closed              the account is closed (its organization was
    --                       deleted)
    --   not_member          no live membership of the member
    --                       (userd_live_membership: the newest live one
    --                       counts when deliveries left two)
    --   missing_permission  p_required_permission <> '' and the
    --                       membership's permissions lack it
    --   user_not_found      the member is not a live user here
    --   cap_reached         the amount exceeds what is left of the
    --                       member's cap for the period (cap, spent,
    --                       remaining, period, period_start)
    -- then the account-level write (userd_account_post_credits or
    -- userd_account_post_action, under this lock) answers applied,
    -- replayed, key_reused or insufficient (available). Refusals after
    -- not_found are answered only when the key is unused: a replay answers
    -- with the original entry even when the member was removed since, its
    -- cap is reached or the account closed now, as the account-level
    -- writes replay when the balance is lower or the account closed. An
    -- applied spend adds what it cost to the member's counter in the same
    -- transaction (cap, spent, remaining are then after it). A spend that
    -- began before a period boundary and got the lock after a spend of the
    -- new period counts in the new period: a cap is never exceeded.
    IF p_action <> '' THEN
        SELECT pr.credits INTO price FROM prices pr WHERE pr.action = p_action FOR SHARE;
        IF NOT FOUND THEN
            status := 'unknown_action';
            RETURN;
        END IF;
        v_amount := price;
    ELSE
        v_amount := p_amount;
    END IF;

    SELECT a.id, a.credits, a.closed_at INTO account_id, v_credits, v_closed_at
    FROM organizations o
    JOIN accounts a ON a.organization_id = o.id
    WHERE o.clerk_org_id = p_clerk_org_id
    FOR UPDATE OF a;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    available := v_credits;

    IF v_closed_at IS NOT NULL THEN
        v_refusal := 'closed';
    ELSE
        SELECT m.permissions INTO v_permissions FROM userd_live_membership(p_clerk_org_id, p_member_clerk_user_id) m;
    END IF;
    IF v_refusal IS NOT NULL THEN
        NULL;
    ELSIF v_permissions IS NULL THEN
        -- No row (a membership's permissions are never NULL).
        v_refusal := 'not_member';
    ELSIF p_required_permission <> '' AND NOT (p_required_permission = ANY (v_permissions)) THEN
        v_refusal := 'missing_permission';
    ELSE
        SELECT u.id INTO v_actor FROM users u
        WHERE u.clerk_user_id = p_member_clerk_user_id AND u.deleted_at IS NULL;
        IF NOT FOUND THEN
            v_refusal := 'user_not_found';
        ELSE
            SELECT * INTO v_cap FROM account_member_caps c
            WHERE c.account_id = userd_org_spend.account_id AND c.clerk_user_id = p_member_clerk_user_id;
            IF FOUND THEN
                v_start := userd_cap_period_start(v_cap.period, coalesce(p_now, now()));
                period := v_cap.period;
                period_start := greatest(v_cap.period_start, v_start);
                cap := v_cap.cap;
                spent := CASE WHEN v_cap.period_start >= v_start THEN v_cap.spent ELSE 0 END;
                remaining := greatest(cap - spent, 0);
                IF v_amount > remaining THEN
                    v_refusal := 'cap_reached';
                END IF;
            END IF;
        END IF;
    END IF;
    IF v_refusal IS NOT NULL AND NOT userd_idempotency_key_used(account_id, p_key) THEN
        status := v_refusal;
        RETURN;
    END IF;
    -- Allowed, or a used key: the account-level write (under the lock
    -- taken above) applies the spend, or replays (or refuses as
    -- key_reused) what the key did before.

    IF p_action <> '' THEN
        SELECT e.status, e.available, e.price, e.t_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at,
               e.t_actor_user_id, e.t_service
        INTO status, available, price, t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
             t_actor_user_id, t_service
        FROM userd_account_post_action(account_id, v_credits, v_closed_at IS NOT NULL, v_actor,
            nullif(p_service, ''), p_action, price, p_key) e;
    ELSE
        SELECT e.status, e.available, e.t_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at,
               e.t_actor_user_id, e.t_service
        INTO status, available, t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
             t_actor_user_id, t_service
        FROM userd_account_post_credits(account_id, v_credits, v_closed_at IS NOT NULL, v_actor,
            nullif(p_service, ''), 'DEDUCT', -p_amount, p_reason, p_key) e;
    END IF;

    IF status = 'applied' AND v_cap.account_id IS NOT NULL THEN
        spent := spent - t_delta;
        remaining := greatest(cap - spent, 0);
        UPDATE account_member_caps c
        SET period_start = userd_org_spend.period_start, spent = userd_org_spend.spent
        WHERE c.account_id = userd_org_spend.account_id AND c.clerk_user_id = p_member_clerk_user_id;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION userd_org_change_credits(
    p_clerk_org_id text, p_actor_clerk_user_id text, p_service text, p_kind text, p_delta bigint,
    p_reason text, p_key text,
    OUT status text, OUT account_id uuid, OUT available bigint,
    OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_actor uuid;
BEGIN
    -- Grants to (p_delta > 0) the account of organization p_clerk_org_id,
    -- for a service: no membership, permission or cap applies (a deduction
    -- goes through userd_org_spend). p_actor_clerk_user_id, when not '',
    -- names the live user the service acted for, recorded as the entry's
    -- actor. Statuses: not_found (no account), user_not_found (no such
    -- live user), then those of userd_account_change_credits (applied,
    -- replayed, key_reused, overflow, closed).
    SELECT a.id INTO account_id
    FROM organizations o
    JOIN accounts a ON a.organization_id = o.id
    WHERE o.clerk_org_id = p_clerk_org_id;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    IF p_actor_clerk_user_id <> '' THEN
        SELECT u.id INTO v_actor FROM users u
        WHERE u.clerk_user_id = p_actor_clerk_user_id AND u.deleted_at IS NULL;
        IF NOT FOUND THEN
            status := 'user_not_found';
            RETURN;
        END IF;
    END IF;
    SELECT e.status, e.available, e.t_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at,
           e.t_actor_user_id, e.t_service
    INTO status, available, t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
         t_actor_user_id, t_service
    FROM userd_account_change_credits(account_id, v_actor, nullif(p_service, ''), p_kind, p_delta, p_reason, p_key) e;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION userd_org_set_plan(
    p_clerk_org_id text, p_service text, p_plan text, p_bonus bigint, p_reason text, p_key text,
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
    v_account_id uuid;
BEGIN
    -- Moves the account of organization p_clerk_org_id to p_plan and
    -- grants p_bonus, for the service p_service (no user acts): not_found
    -- when the organization has no account, else the statuses and columns
    -- of userd_account_set_plan (applied, replayed, key_reused, overflow,
    -- closed).
    SELECT a.id INTO v_account_id
    FROM organizations o
    JOIN accounts a ON a.organization_id = o.id
    WHERE o.clerk_org_id = p_clerk_org_id;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    SELECT e.* INTO status, a_id, a_plan, a_credits, a_created_at, a_updated_at, a_closed_at,
                    pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at,
                    t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, pc_actor_user_id, pc_service
    FROM userd_account_set_plan(v_account_id, NULL, nullif(p_service, ''), p_plan, p_bonus, p_reason, p_key) e;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION userd_set_member_cap(
    p_clerk_org_id text, p_member_clerk_user_id text, p_period text, p_cap bigint, p_changed_by text,
    p_now timestamptz,
    OUT status text, OUT account_id uuid, OUT period text, OUT cap bigint, OUT spent bigint,
    OUT period_start timestamptz, OUT updated_at timestamptz, OUT updated_by text)
LANGUAGE plpgsql AS $$
DECLARE
    v_closed_at timestamptz;
    v_old account_member_caps%ROWTYPE;
    v_actor uuid;
    v_start timestamptz;
BEGIN
    -- Sets the member's spending cap on its organization's account to
    -- p_cap per p_period ('day', 'week' or 'month', UTC), or removes it
    -- (p_period = ''), under the account's row lock, and records who did
    -- it (p_changed_by) in account_member_cap_changes and a
    -- member_cap.changed event. Statuses:
    --   applied     the cap is set (the columns: the cap now) or removed
    --               (the columns NULL)
    --   unchanged   the cap was already this (or there was none to
    --               remove); nothing written
    --   not_found   no account for this organization
    --   closed      the account is closed
    --   not_member  setting a cap for a user without a live membership
    --               (removing one needs none)
    -- A new cap, or a new period, starts its counter at what the member
    -- spent so far in the current period (p_now's, NULL: now()), summed
    -- from the ledger; a new cap for the same period keeps the counter.
    SELECT a.id, a.closed_at INTO account_id, v_closed_at
    FROM organizations o
    JOIN accounts a ON a.organization_id = o.id
    WHERE o.clerk_org_id = p_clerk_org_id
    FOR UPDATE OF a;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    IF v_closed_at IS NOT NULL THEN
        status := 'closed';
        RETURN;
    END IF;

    SELECT * INTO v_old FROM account_member_caps c
    WHERE c.account_id = userd_set_member_cap.account_id AND c.clerk_user_id = p_member_clerk_user_id;

    IF p_period = '' THEN
        IF v_old.account_id IS NULL THEN
            status := 'unchanged';
            RETURN;
        END IF;
        DELETE FROM account_member_caps c
        WHERE c.account_id = userd_set_member_cap.account_id AND c.clerk_user_id = p_member_clerk_user_id;
    ELSE
        IF NOT EXISTS (SELECT 1 FROM userd_live_membership(p_clerk_org_id, p_member_clerk_user_id)) THEN
            status := 'not_member';
            RETURN;
        END IF;
        v_start := userd_cap_period_start(p_period, coalesce(p_now, now()));
        IF v_old.period = p_period THEN
            IF v_old.cap = p_cap THEN
                status := 'unchanged';
                period := v_old.period; cap := v_old.cap; period_start := v_old.period_start;
                spent := CASE WHEN v_old.period_start >= v_start THEN v_old.spent ELSE 0 END;
                updated_at := v_old.updated_at; updated_by := v_old.updated_by;
                RETURN;
            END IF;
            period_start := greatest(v_old.period_start, v_start);
            spent := CASE WHEN v_old.period_start >= v_start THEN v_old.spent ELSE 0 END;
        ELSE
            SELECT u.id INTO v_actor FROM users u WHERE u.clerk_user_id = p_member_clerk_user_id;
            period_start := v_start;
            SELECT coalesce(sum(-t.delta), 0) INTO spent FROM credit_transactions t
            WHERE t.user_id = userd_set_member_cap.account_id AND t.actor_user_id = v_actor
              AND t.kind = 'DEDUCT' AND t.created_at >= v_start;
        END IF;
        INSERT INTO account_member_caps AS c (account_id, clerk_user_id, period, cap, period_start, spent, updated_at, updated_by)
        VALUES (userd_set_member_cap.account_id, p_member_clerk_user_id, p_period, p_cap,
                userd_set_member_cap.period_start, userd_set_member_cap.spent, now(), p_changed_by)
        ON CONFLICT ON CONSTRAINT account_member_caps_pkey DO UPDATE
        SET period = EXCLUDED.period, cap = EXCLUDED.cap, period_start = EXCLUDED.period_start,
            spent = EXCLUDED.spent, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by
        RETURNING c.period, c.cap, c.updated_at, c.updated_by
        INTO period, cap, updated_at, updated_by;
    END IF;

    INSERT INTO account_member_cap_changes (account_id, clerk_user_id, previous_period, previous_cap, period, cap, changed_by)
    VALUES (account_id, p_member_clerk_user_id, v_old.period, v_old.cap, nullif(p_period, ''),
            CASE WHEN p_period = '' THEN NULL ELSE p_cap END, p_changed_by);
    -- The organization's stream; the actor is the admin when a user (not
    -- a service) made the change.
    PERFORM userd_emit_event('member_cap.changed', NULL, NULL, p_clerk_org_id, account_id,
        CASE WHEN p_changed_by LIKE 'user\_%' THEN p_changed_by END,
        jsonb_build_object(
            'clerk_user_id', p_member_clerk_user_id,
            'previous_period', v_old.period, 'previous_cap', v_old.cap,
            'period', nullif(p_period, ''), 'cap', CASE WHEN p_period = '' THEN NULL ELSE p_cap END,
            'changed_by', p_changed_by, 'changed_at', now()));
    status := 'applied';
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION userd_set_member_cap(text, text, text, bigint, text, timestamptz);
DROP FUNCTION userd_org_set_plan(text, text, text, bigint, text, text);
DROP FUNCTION userd_org_change_credits(text, text, text, text, bigint, text, text);
DROP FUNCTION userd_org_spend(text, text, text, text, bigint, text, text, text, timestamptz);
DROP FUNCTION userd_cap_period_start(text, timestamptz);
DROP TABLE account_member_cap_changes;
DROP TABLE account_member_caps;

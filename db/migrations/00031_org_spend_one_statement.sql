-- +goose Up
-- A member's spend from an organization's account in two statements, as a
-- personal deduction (issue 20: the organization deduct at >= 0.8 of the
-- personal one). 00020's userd_org_spend ran, after the account's row lock,
-- one statement for the membership, the member's user and its cap, then
-- userd_account_post_entry (a nested PL/pgSQL call: set_config and its
-- statement), then one more statement for the cap's counter: five
-- statements and a function call per spend, against two for a personal
-- deduction. Here the statement after the lock does all of it: it reads
-- the membership (KEY SHARE, as before), the user and the cap with a
-- snapshot taken after the lock was granted, and only when every check
-- passes claims the key, moves the balance, writes the ledger row, its
-- credits.changed event on the organization's stream (actor: the member)
-- and the cap's counter. Anything else (a refusal, a used key, an
-- account holding expiring grants) falls back to 00020's steps with what
-- that statement read, so every answer is the same as before.
--
-- Same signature, same answers, same guarantees (membership read after
-- the account's lock in the spend's transaction, caps counted under that
-- lock, the key claimed in the account's one key space, balance ==
-- sum(ledger) at every commit, the event's order_xid raised to the
-- stream's previous event read after the lock): the previous release,
-- which calls this signature, runs on the new body.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_org_spend(p_clerk_org_id text, p_member_clerk_user_id text, p_service text,
    p_required_permission text, p_amount bigint, p_action text, p_reason text, p_key text, p_now timestamptz,
    OUT status text, OUT account_id uuid, OUT available bigint, OUT price bigint, OUT cap bigint, OUT spent bigint,
    OUT remaining bigint, OUT period text, OUT period_start timestamptz, OUT t_id bigint, OUT t_delta bigint,
    OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_closed boolean;
    v_member boolean;
    v_permissions text[];
    v_actor uuid;
    v_has_cap boolean;
    v_cap_period text;
    v_cap_spent bigint;
    v_amount bigint;
    v_reason text;
    v_operation text;
    v_refusal text;
    v_account uuid;
    v_expiring bigint;
    v_marked text;
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
    --                       in userd_personal_deduct_for_action)
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
    -- then the account-level write answers applied, replayed, key_reused
    -- or insufficient (available).
    -- Refusals after not_found are answered only when the key is unused: a
    -- replay answers with the original entry even when the member was
    -- removed since, its cap is reached or the account closed now, as the
    -- account-level writes replay when the balance is lower or the account
    -- closed. An applied spend adds what it cost to the member's counter
    -- in the same transaction (cap, spent, remaining are then after it). A
    -- spend that began before a period boundary and got the lock after a
    -- spend of the new period counts in the new period: a cap is never
    -- exceeded.
    --
    -- Two statements when the spend applies (00031): the account's row
    -- lock, then one statement that checks the member and its cap and
    -- writes the key, the balance, the ledger row, its event and the cap's
    -- counter. Everything else takes 00020's steps.
    IF p_action <> '' THEN
        SELECT pr.credits INTO price FROM prices pr WHERE pr.action = p_action FOR SHARE;
        IF NOT FOUND THEN
            status := 'unknown_action';
            RETURN;
        END IF;
        v_amount := price;
        v_reason := p_action;
        v_operation := 'DEDUCT_ACTION';
    ELSE
        v_amount := p_amount;
        v_reason := p_reason;
        v_operation := 'DEDUCT';
    END IF;

    SELECT a.id, a.credits, a.closed_at IS NOT NULL, a.expiring_credits INTO v_account, available, v_closed, v_expiring
    FROM organizations o
    JOIN accounts a ON a.organization_id = o.id
    WHERE o.clerk_org_id = p_clerk_org_id
    FOR UPDATE OF a;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    account_id := v_account;

    IF v_closed THEN
        v_refusal := 'closed';
    ELSE
        -- This transaction's writers write their own events (see
        -- userd_credit_transactions_feed). An assignment, not PERFORM: a
        -- simple expression, no statement.
        v_marked := set_config('userd.writer_emits_events', 'on', true);
        -- One statement, after the lock (its snapshot sees a membership
        -- change that committed while this call waited: those lock the
        -- account too): the membership (userd_live_membership's query,
        -- inlined, with its KEY SHARE lock), the member's user and its cap
        -- with the cap's counter in the period of p_now; then, only when
        -- the member may spend v_amount, the balance covers it and the
        -- account holds no expiring grants (those take 00020's steps
        -- below), userd_account_post_entry's writes (key claim, balance,
        -- ledger row, credits.changed on the organization's stream, its
        -- order_xid raised to the stream's previous event) and the cap's
        -- counter. A claim that finds the key used writes nothing.
        WITH chk AS (
            SELECT m.clerk_membership_id IS NOT NULL AND u.deleted_at IS NULL AS member, m.permissions,
                   CASE WHEN u.deleted_at IS NULL THEN u.id END AS actor,
                   c.account_id IS NOT NULL AS has_cap, c.period, c.cap,
                   greatest(c.period_start, s.start) AS period_start,
                   CASE WHEN c.period_start >= s.start THEN c.spent ELSE 0 END AS spent
            FROM (SELECT 1) one
            LEFT JOIN LATERAL (
                SELECT lm.clerk_membership_id, lm.permissions FROM organization_memberships lm
                WHERE lm.clerk_org_id = p_clerk_org_id AND lm.clerk_user_id = p_member_clerk_user_id
                  AND lm.deleted_at IS NULL
                  AND EXISTS (SELECT 1 FROM organizations o WHERE o.clerk_org_id = lm.clerk_org_id AND o.deleted_at IS NULL)
                ORDER BY lm.clerk_updated_at DESC, lm.clerk_membership_id
                LIMIT 1
                FOR KEY SHARE OF lm
            ) m ON true
            -- The member's user, live or not (clerk_user_id is unique):
            -- a deleted user is no member (userd_live_membership's NOT
            -- EXISTS) and no actor, read with one probe instead of two.
            LEFT JOIN users u ON u.clerk_user_id = p_member_clerk_user_id
            LEFT JOIN account_member_caps c ON c.account_id = v_account AND c.clerk_user_id = p_member_clerk_user_id
            LEFT JOIN LATERAL (SELECT userd_cap_period_start(c.period, coalesce(p_now, now())) AS start) s ON true
        ), ok AS (
            SELECT chk.* FROM chk
            WHERE chk.member AND chk.actor IS NOT NULL
              AND (p_required_permission = '' OR p_required_permission = ANY (chk.permissions))
              AND (NOT chk.has_cap OR v_amount <= chk.cap - chk.spent)
              AND available >= v_amount AND NOT (v_expiring > 0 AND v_amount > 0)
        ), claim AS (
            INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
            SELECT v_account, p_key, v_operation FROM ok
            ON CONFLICT DO NOTHING
            RETURNING user_id
        ), balance AS (
            UPDATE accounts a SET credits = available - v_amount, updated_at = now()
            FROM claim WHERE a.id = claim.user_id
            RETURNING a.credits
        ), entry AS (
            INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind, reason, idempotency_key,
                                                  actor_user_id, service)
            SELECT v_account, -v_amount, balance.credits, 'DEDUCT', v_reason, p_key, ok.actor, nullif(p_service, '')
            FROM balance, ok
            RETURNING t
        ), counter AS (
            UPDATE account_member_caps c SET period_start = ok.period_start, spent = ok.spent + v_amount
            FROM ok, entry
            WHERE ok.has_cap AND c.account_id = v_account AND c.clerk_user_id = p_member_clerk_user_id
        ), event AS (
            INSERT INTO feed_events (order_xid, kind, clerk_org_id, account_id, actor_clerk_user_id, payload)
            SELECT greatest(pg_current_xact_id()::text::bigint,
                       (SELECT e.order_xid FROM feed_events e WHERE e.clerk_org_id = p_clerk_org_id
                        ORDER BY e.order_xid DESC, e.id DESC LIMIT 1)),
                   'credits.changed', p_clerk_org_id, v_account, p_member_clerk_user_id,
                   userd_credits_changed_payload(entry.t)
            FROM entry
        )
        SELECT chk.member, chk.permissions, chk.actor, chk.has_cap, chk.period, chk.cap, chk.period_start,
               chk.spent, (entry.t).id, (entry.t).delta, (entry.t).balance_after, (entry.t).kind,
               (entry.t).reason, (entry.t).created_at, (entry.t).actor_user_id, (entry.t).service
        INTO v_member, v_permissions, v_actor, v_has_cap, v_cap_period, cap, period_start, v_cap_spent,
             t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, t_actor_user_id, t_service
        FROM chk
        LEFT JOIN entry ON true;
        IF t_id IS NOT NULL THEN
            status := 'applied';
            available := t_balance_after;
            IF v_has_cap THEN
                period := v_cap_period;
                spent := v_cap_spent + v_amount;
                remaining := greatest(cap - spent, 0);
            END IF;
            RETURN;
        END IF;

        -- Not applied: 00020's steps, with what the statement read.
        IF NOT v_member THEN
            v_refusal := 'not_member';
        ELSIF p_required_permission <> '' AND NOT (p_required_permission = ANY (v_permissions)) THEN
            v_refusal := 'missing_permission';
        ELSIF v_actor IS NULL THEN
            v_refusal := 'user_not_found';
        ELSIF v_has_cap THEN
            period := v_cap_period;
            spent := v_cap_spent;
            remaining := greatest(cap - spent, 0);
            IF v_amount > remaining THEN
                v_refusal := 'cap_reached';
            END IF;
        END IF;
        IF v_refusal IS NOT NULL AND v_refusal <> 'cap_reached' THEN
            cap := NULL;
            period_start := NULL;
            v_has_cap := false;
        ELSIF NOT v_has_cap THEN
            period_start := NULL;
        END IF;
    END IF;
    IF v_refusal IS NOT NULL AND NOT userd_idempotency_key_used(v_account, p_key) THEN
        status := v_refusal;
        RETURN;
    END IF;
    -- Allowed, or a used key: the account-level write (under the lock
    -- taken above) applies the spend, or replays (or refuses as
    -- key_reused) what the key did before.
    -- Expiring grants (00022, issue 21): only an account that holds some
    -- leaves the fast path. Its grants that are due expire first (their
    -- own EXPIRE entries), so a deduction never spends an expired grant.
    IF v_expiring > 0 AND v_amount > 0 THEN
        available := userd_account_expire_due(v_account, now());
    END IF;
    SELECT e.status, e.t_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at,
           e.t_actor_user_id, e.t_service
    INTO status, t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, t_actor_user_id, t_service
    FROM userd_account_post_entry(v_account, available, NOT v_closed AND available >= v_amount, -v_amount,
        'DEDUCT', v_reason, p_key, v_operation, p_action <> '', v_actor,
        nullif(p_service, ''), NULL, NULL, p_clerk_org_id,
        CASE WHEN v_actor IS NOT NULL THEN p_member_clerk_user_id END) e;
    IF status = 'applied' THEN
        available := t_balance_after;
    ELSIF status = 'replayed' AND p_action <> '' THEN
        price := -t_delta;
    ELSIF status = 'refused' THEN
        status := CASE WHEN v_closed THEN 'closed' ELSE 'insufficient' END;
    END IF;
    -- ... and an applied deduction takes from the grants soonest-expiry
    -- first, then from the credits that never expire.
    IF status = 'applied' AND v_expiring > 0 AND v_amount > 0 THEN
        PERFORM userd_account_take_grants(v_account, v_amount, now());
    END IF;

    IF status = 'applied' AND v_has_cap THEN
        spent := spent - t_delta;
        remaining := greatest(cap - spent, 0);
        UPDATE account_member_caps c
        SET period_start = userd_org_spend.period_start, spent = userd_org_spend.spent
        WHERE c.account_id = v_account AND c.clerk_user_id = p_member_clerk_user_id;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- Nothing: the function keeps its signature and answers every call as
-- 00020's body did, so the previous release runs on it, and restoring that
-- body here would copy it once more (db/README.md). 00020's down restores
-- the body before it.

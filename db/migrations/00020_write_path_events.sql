-- +goose NO TRANSACTION
-- +goose Up
-- The write path without the feed's tax (issues 20 and 24). Until now a
-- ledger row, a plan change and a new user reached the change feed through
-- AFTER INSERT row triggers that looked up, for every row, the account's
-- owner (accounts joined with users and organizations), the actor's Clerk
-- id and the stream's previous event, through four nested PL/pgSQL calls;
-- a personal deduction ran five levels deep. From this migration on the
-- write functions write their events themselves, in the statement that
-- writes the row, with what they already know (the owner's Clerk id or the
-- organization's, the actor), and a personal deduction is two statements:
-- the account's row lock, then one statement that claims the key, moves
-- the balance, writes the ledger row and its credits.changed event.
--
-- The events are the same as before (kind, stream, account, actor,
-- payload), in the same order within a transaction, and their order_xid is
-- still raised to the stream's previous event (read by a statement that
-- starts after the stream's row lock is granted), so feed order is
-- unchanged.
--
-- The previous release calls the same function names and signatures: they
-- are replaced in place (CREATE OR REPLACE), so an old replica writes
-- through the new bodies as soon as they commit. The three triggers stay,
-- and write an event only for a row whose writer did not: the writers of
-- this migration mark their transaction (set_config of
-- userd.writer_emits_events, transaction-local) and the triggers skip it.
-- A call that was already running an old body when the switch committed
-- still gets its events from the triggers. (Turning the triggers into
-- no-ops in the switch's transaction lost exactly such an event under
-- make fleet-test.) A later post-deploy migration can drop them.
--
-- Rule from now on: a function that inserts into credit_transactions or
-- plan_changes writes the feed event too. userd_post_ledger_entry (both
-- signatures) and userd_account_post_plan still do it for callers that only
-- know the account (they look the owner up, once); the hot paths pass the
-- stream to userd_account_post_entry / userd_account_write_plan.

-- pg_temp.userd_try_ddl and pg_temp.userd_ddl: 00010's helpers (statements
-- run with a 200 ms lock timeout, rolled back, paused and retried).
-- +goose StatementBegin
CREATE FUNCTION pg_temp.userd_try_ddl(p_statements text[]) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_statement text;
BEGIN
    PERFORM set_config('lock_timeout', '200ms', true);
    FOREACH v_statement IN ARRAY p_statements LOOP
        EXECUTE v_statement;
    END LOOP;
    RETURN true;
EXCEPTION
    WHEN lock_not_available OR deadlock_detected THEN
        RETURN false;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE PROCEDURE pg_temp.userd_ddl(p_statements text[])
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer := 0;
BEGIN
    LOOP
        IF pg_temp.userd_try_ddl(p_statements) THEN
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

-- The deductions below leave their fast path for an account that holds
-- expiring grants (00022, issue 21): the column they read is added here, so
-- they work from the moment they commit; it stays 0 until 00022's grants
-- exist, and 00022's ADD COLUMN IF NOT EXISTS finds it. Adding a column
-- with a constant default rewrites nothing; the lock is taken with
-- userd_ddl's timeout and retries.
CALL pg_temp.userd_ddl(ARRAY[$ddl$
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS expiring_credits bigint NOT NULL DEFAULT 0
$ddl$]);

BEGIN;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_feed_order_xid(p_clerk_user_id text, p_clerk_org_id text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_previous bigint;
BEGIN
    -- The order_xid of a new event of the current transaction on a
    -- stream: a user's (p_clerk_user_id) or an organization's
    -- (p_clerk_org_id): the transaction's id, raised to that of the
    -- stream's previous event (see userd_emit_event). The caller holds the
    -- stream's row lock and calls this from a statement that began after
    -- it was granted, so that previous event is committed and visible.
    -- PL/pgSQL, not SQL: its plans are kept for the session.
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
    RETURN greatest(pg_current_xact_id()::text::bigint, v_previous);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_credits_changed_payload(t credit_transactions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    -- The payload of credits.changed for the ledger entry t.
    SELECT jsonb_build_object(
        'id', t.id, 'delta', t.delta, 'balance_after', t.balance_after, 'kind', t.kind,
        'reason', t.reason, 'idempotency_key', t.idempotency_key, 'created_at', t.created_at,
        'actor_user_id', t.actor_user_id, 'service', t.service)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_plan_changed_payload(pc plan_changes) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    -- The payload of plan.changed for the plan change pc.
    SELECT jsonb_build_object(
        'id', pc.id, 'previous_plan', pc.previous_plan, 'plan', pc.plan,
        'bonus_credits', pc.bonus_credits, 'transaction_id', pc.transaction_id,
        'reason', pc.reason, 'idempotency_key', pc.idempotency_key, 'created_at', pc.created_at,
        'actor_user_id', pc.actor_user_id, 'service', pc.service)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_feed_stream(p_account_id uuid, p_actor_user_id uuid,
    OUT user_id uuid, OUT clerk_user_id text, OUT clerk_org_id text, OUT actor_clerk_user_id text)
LANGUAGE sql STABLE AS $$
    -- The stream an event of the account p_account_id belongs to (its
    -- owner: a user, with its id, or an organization) and the Clerk id of
    -- the user p_actor_user_id, for writers that know only the account.
    SELECT a.owner_user_id, u.clerk_user_id, o.clerk_org_id,
           CASE WHEN p_actor_user_id = a.owner_user_id THEN u.clerk_user_id
                ELSE (SELECT x.clerk_user_id FROM users x WHERE x.id = p_actor_user_id) END
    FROM accounts a
    LEFT JOIN users u ON u.id = a.owner_user_id
    LEFT JOIN organizations o ON o.id = a.organization_id
    WHERE a.id = p_account_id
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_post_entry(p_account_id uuid, p_balance bigint, p_allowed boolean,
    p_delta bigint, p_kind text, p_reason text, p_key text, p_operation text, p_replay_any_delta boolean,
    p_actor_user_id uuid, p_service text,
    p_user_id uuid, p_clerk_user_id text, p_clerk_org_id text, p_actor_clerk_user_id text,
    OUT status text, OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz, OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
BEGIN
    -- This transaction's writers write their own events (see
    -- userd_credit_transactions_feed).
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    -- Moves the balance of an account whose row the caller has locked (it
    -- was p_balance) by p_delta, writes the ledger entry recording who
    -- acted (p_actor_user_id, p_service) and its credits.changed event on
    -- the owner's stream (p_user_id and p_clerk_user_id for a personal
    -- account, p_clerk_org_id for an organization's; the actor as
    -- p_actor_clerk_user_id), under p_key claimed for p_operation: one
    -- statement. p_allowed says whether the balance (and the account)
    -- allows it; when it does not, or the key was claimed before, the
    -- key's original entry is replayed if it applied the same operation
    -- with the same reason (and the same delta, unless p_replay_any_delta:
    -- a deduction by action replays whatever price it charged). Statuses:
    --   applied     the entry was written (t_* columns)
    --   replayed    t_* columns: the original entry
    --   key_reused  the key already applied something else
    --   refused     not allowed, and the key is unused
    -- The key is claimed only when allowed (a refused write claims
    -- nothing); the balance moves only when the claim inserted a row.
    IF p_allowed THEN
        WITH claim AS (
            INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
            VALUES (p_account_id, p_key, p_operation)
            ON CONFLICT DO NOTHING
            RETURNING user_id
        ), balance AS (
            UPDATE accounts a SET credits = p_balance + p_delta, updated_at = now()
            FROM claim WHERE a.id = claim.user_id
            RETURNING a.credits
        ), entry AS (
            INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind, reason, idempotency_key,
                                                  actor_user_id, service)
            SELECT p_account_id, p_delta, balance.credits, p_kind, p_reason, p_key, p_actor_user_id, p_service
            FROM balance
            RETURNING t
        ), event AS (
            INSERT INTO feed_events (order_xid, kind, user_id, clerk_user_id, clerk_org_id, account_id,
                                     actor_clerk_user_id, payload)
            -- userd_feed_order_xid, inlined on this hot path (a call
            -- costs about as much as the look-up).
            SELECT greatest(pg_current_xact_id()::text::bigint,
                       CASE WHEN p_clerk_org_id IS NULL THEN
                           (SELECT e.order_xid FROM feed_events e WHERE e.clerk_user_id = p_clerk_user_id
                            ORDER BY e.order_xid DESC, e.id DESC LIMIT 1)
                       ELSE
                           (SELECT e.order_xid FROM feed_events e WHERE e.clerk_org_id = p_clerk_org_id
                            ORDER BY e.order_xid DESC, e.id DESC LIMIT 1)
                       END),
                   'credits.changed',
                   CASE WHEN p_clerk_org_id IS NULL THEN p_user_id END,
                   CASE WHEN p_clerk_org_id IS NULL THEN p_clerk_user_id END,
                   p_clerk_org_id, p_account_id, p_actor_clerk_user_id, userd_credits_changed_payload(entry.t)
            FROM entry
        )
        SELECT (entry.t).id, (entry.t).user_id, (entry.t).delta, (entry.t).balance_after, (entry.t).kind,
               (entry.t).reason, (entry.t).created_at, (entry.t).actor_user_id, (entry.t).service
        INTO t_id, t_account_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, t_actor_user_id, t_service
        FROM entry;
        IF FOUND THEN
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
    -- Allowed and not applied: the claim found the key taken.
    status := CASE WHEN p_allowed OR userd_idempotency_key_used(p_account_id, p_key) THEN 'key_reused'
                   ELSE 'refused' END;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_post_ledger_entry(p_account_id uuid, p_balance bigint, p_allowed boolean,
    p_delta bigint, p_kind text, p_reason text, p_key text, p_operation text, p_replay_any_delta boolean,
    p_actor_user_id uuid, p_service text,
    OUT status text, OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint,
    OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz, OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE sql AS $$
    -- userd_account_post_entry for a caller that knows only the account:
    -- the owner's stream and the actor's Clerk id are looked up here.
    SELECT e.* FROM userd_feed_stream(p_account_id, p_actor_user_id) s,
        userd_account_post_entry(p_account_id, p_balance, p_allowed, p_delta, p_kind, p_reason, p_key,
            p_operation, p_replay_any_delta, p_actor_user_id, p_service,
            s.user_id, s.clerk_user_id, s.clerk_org_id, s.actor_clerk_user_id) e
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_personal_change_credits(p_clerk_user_id text, p_service text, p_kind text,
    p_delta bigint, p_reason text, p_key text,
    OUT status text, OUT available bigint, OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint,
    OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_closed boolean;
    v_expiring bigint;
BEGIN
    -- Deducts (p_delta < 0) or grants (p_delta > 0) on the personal account
    -- of the live user p_clerk_user_id, which acts (through the service
    -- p_service, NULL for the user itself). Statuses as
    -- userd_account_post_credits (applied, replayed, key_reused,
    -- insufficient, overflow, closed), or not_found (no live user has this
    -- Clerk id). t_user_id is the account's id, which for a personal
    -- account is the user's. Two statements: the account's row lock, then
    -- userd_account_post_entry's one.
    SELECT a.id, a.credits, a.closed_at IS NOT NULL, a.expiring_credits INTO v_id, available, v_closed, v_expiring
    FROM users u JOIN accounts a ON a.id = u.id
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE OF a;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    -- Expiring grants (00022, issue 21): only an account that holds some
    -- leaves the fast path. Its grants that are due expire first (their
    -- own EXPIRE entries), so a deduction never spends an expired grant.
    IF v_expiring > 0 AND -p_delta > 0 THEN
        available := userd_account_expire_due(v_id, now());
    END IF;
    SELECT e.* INTO status, t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
                    t_actor_user_id, t_service
    FROM userd_account_post_entry(v_id, available,
        NOT v_closed AND NOT ((p_delta < 0 AND available < -p_delta)
                              OR (p_delta > 0 AND available > 9223372036854775807 - p_delta)),
        p_delta, p_kind, p_reason, p_key, p_kind, false, v_id, p_service,
        v_id, p_clerk_user_id, NULL, p_clerk_user_id) e;
    IF status = 'applied' THEN
        available := t_balance_after;
    ELSIF status = 'refused' THEN
        status := CASE WHEN v_closed THEN 'closed' WHEN p_delta < 0 THEN 'insufficient' ELSE 'overflow' END;
    END IF;
    -- ... and an applied deduction takes from the grants soonest-expiry
    -- first, then from the credits that never expire.
    IF status = 'applied' AND v_expiring > 0 AND -p_delta > 0 THEN
        PERFORM userd_account_take_grants(v_id, -p_delta, now());
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_personal_deduct_for_action(p_clerk_user_id text, p_service text, p_action text,
    p_key text,
    OUT status text, OUT available bigint, OUT price bigint, OUT t_id bigint, OUT t_user_id uuid,
    OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text,
    OUT t_created_at timestamptz, OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_closed boolean;
    v_expiring bigint;
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
    --   closed          the account is closed; nothing changed
    --   not_found       no live user has this Clerk id
    -- The price comes first, under a share lock (a price change waits for
    -- this deduction, and a deduction that starts during a change charges
    -- the new price): an unknown action is the request's own mistake,
    -- answered the same whoever the user is, and locks nothing.
    SELECT p.credits INTO price FROM prices p WHERE p.action = p_action FOR SHARE;
    IF NOT FOUND THEN
        status := 'unknown_action';
        RETURN;
    END IF;
    SELECT a.id, a.credits, a.closed_at IS NOT NULL, a.expiring_credits INTO v_id, available, v_closed, v_expiring
    FROM users u JOIN accounts a ON a.id = u.id
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE OF a;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    -- Expiring grants (00022, issue 21): only an account that holds some
    -- leaves the fast path. Its grants that are due expire first (their
    -- own EXPIRE entries), so a deduction never spends an expired grant.
    IF v_expiring > 0 AND price > 0 THEN
        available := userd_account_expire_due(v_id, now());
    END IF;
    SELECT e.* INTO status, t_id, t_user_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
                    t_actor_user_id, t_service
    FROM userd_account_post_entry(v_id, available, NOT v_closed AND available >= price,
        -price, 'DEDUCT', p_action, p_key, 'DEDUCT_ACTION', true, v_id, p_service,
        v_id, p_clerk_user_id, NULL, p_clerk_user_id) e;
    IF status = 'applied' THEN
        available := t_balance_after;
    ELSIF status = 'replayed' THEN
        price := -t_delta;
    ELSIF status = 'refused' THEN
        status := CASE WHEN v_closed THEN 'closed' ELSE 'insufficient' END;
    END IF;
    -- ... and an applied deduction takes from the grants soonest-expiry
    -- first, then from the credits that never expire.
    IF status = 'applied' AND v_expiring > 0 AND price > 0 THEN
        PERFORM userd_account_take_grants(v_id, price, now());
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_write_plan(p_account_id uuid, p_balance bigint, p_plan_now text,
    p_closed boolean, p_actor_user_id uuid, p_service text, p_plan text, p_bonus bigint, p_reason text, p_key text,
    p_user_id uuid, p_clerk_user_id text, p_clerk_org_id text, p_actor_clerk_user_id text,
    OUT status text, OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint,
    OUT pc_reason text, OUT pc_created_at timestamptz, OUT t_id bigint, OUT t_delta bigint,
    OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT pc_actor_user_id uuid, OUT pc_service text)
LANGUAGE plpgsql AS $$
BEGIN
    -- This transaction's writers write their own events (see
    -- userd_credit_transactions_feed).
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    -- Moves an account whose row the caller has locked (balance p_balance,
    -- plan p_plan_now, closed p_closed) to p_plan and grants p_bonus,
    -- recording who acted, under p_key claimed as SET_PLAN, in one
    -- statement that also writes the events on the owner's stream (as
    -- userd_account_post_entry): credits.changed for the bonus entry, then
    -- plan.changed. Statuses: applied, replayed (pc_*, t_*: the original
    -- change), key_reused, overflow (the bonus would exceed bigint),
    -- closed. t_* is the bonus entry (NULL without a bonus).
    IF NOT p_closed AND p_balance <= 9223372036854775807 - p_bonus THEN
        WITH claim AS (
            INSERT INTO idempotency_keys (user_id, idempotency_key, operation)
            VALUES (p_account_id, p_key, 'SET_PLAN')
            ON CONFLICT DO NOTHING
            RETURNING user_id
        ), balance AS (
            UPDATE accounts a SET plan = p_plan, credits = p_balance + p_bonus, updated_at = now()
            FROM claim WHERE a.id = claim.user_id
            RETURNING a.credits
        ), entry AS (
            INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind, reason, idempotency_key,
                                                  actor_user_id, service)
            SELECT p_account_id, p_bonus, balance.credits, 'PLAN_BONUS', p_reason, p_key, p_actor_user_id, p_service
            FROM balance WHERE p_bonus > 0
            RETURNING t
        ), change AS (
            INSERT INTO plan_changes AS pc (user_id, previous_plan, plan, bonus_credits, transaction_id, reason,
                                            idempotency_key, actor_user_id, service)
            SELECT p_account_id, p_plan_now, p_plan, p_bonus, (SELECT (entry.t).id FROM entry), p_reason, p_key,
                   p_actor_user_id, p_service
            FROM balance
            RETURNING pc
        ), event AS (
            INSERT INTO feed_events (order_xid, kind, user_id, clerk_user_id, clerk_org_id, account_id,
                                     actor_clerk_user_id, payload)
            SELECT userd_feed_order_xid(p_clerk_user_id, p_clerk_org_id), x.kind,
                   CASE WHEN p_clerk_org_id IS NULL THEN p_user_id END,
                   CASE WHEN p_clerk_org_id IS NULL THEN p_clerk_user_id END,
                   p_clerk_org_id, p_account_id, p_actor_clerk_user_id, x.payload
            FROM (SELECT 1 AS n, 'credits.changed' AS kind, userd_credits_changed_payload(entry.t) AS payload FROM entry
                  UNION ALL
                  SELECT 2, 'plan.changed', userd_plan_changed_payload(change.pc) FROM change) x
            ORDER BY x.n
        )
        SELECT (change.pc).id, (change.pc).previous_plan, (change.pc).plan, (change.pc).bonus_credits,
               (change.pc).reason, (change.pc).created_at, (entry.t).id, (entry.t).delta, (entry.t).balance_after,
               (entry.t).kind, (entry.t).reason, (entry.t).created_at, (change.pc).actor_user_id, (change.pc).service
        INTO pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at,
             t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, pc_actor_user_id, pc_service
        FROM change LEFT JOIN entry ON true;
        IF FOUND THEN
            status := 'applied';
            RETURN;
        END IF;
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
CREATE OR REPLACE FUNCTION userd_account_post_plan(p_account_id uuid, p_balance bigint, p_plan_now text,
    p_closed boolean, p_actor_user_id uuid, p_service text, p_plan text, p_bonus bigint, p_reason text, p_key text,
    OUT status text, OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint,
    OUT pc_reason text, OUT pc_created_at timestamptz, OUT t_id bigint, OUT t_delta bigint,
    OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT pc_actor_user_id uuid, OUT pc_service text)
LANGUAGE sql AS $$
    -- userd_account_write_plan for a caller that knows only the account:
    -- the owner's stream and the actor's Clerk id are looked up here.
    SELECT w.* FROM userd_feed_stream(p_account_id, p_actor_user_id) s,
        userd_account_write_plan(p_account_id, p_balance, p_plan_now, p_closed, p_actor_user_id, p_service,
            p_plan, p_bonus, p_reason, p_key, s.user_id, s.clerk_user_id, s.clerk_org_id, s.actor_clerk_user_id) w
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_personal_set_plan(p_clerk_user_id text, p_service text, p_plan text,
    p_bonus bigint, p_reason text, p_key text,
    OUT status text, OUT u_id uuid, OUT u_clerk_user_id text, OUT u_email text, OUT u_first_name text,
    OUT u_last_name text, OUT u_image_url text, OUT u_plan text, OUT u_credits bigint,
    OUT u_clerk_updated_at bigint, OUT u_created_at timestamptz, OUT u_updated_at timestamptz,
    OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint,
    OUT pc_reason text, OUT pc_created_at timestamptz, OUT t_id bigint, OUT t_delta bigint,
    OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamptz,
    OUT pc_actor_user_id uuid, OUT pc_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_closed boolean;
    v_user_updated_at timestamptz;
    v_account_updated_at timestamptz;
BEGIN
    -- Moves the personal account of the live user p_clerk_user_id to
    -- p_plan and grants p_bonus in one call; the user acts (through the
    -- service p_service, NULL for the user itself). Statuses: applied,
    -- replayed (the original change; the user as it is now), key_reused,
    -- overflow, closed, not_found. The u_* columns are the user (with its
    -- account's plan and balance) after the call, pc_* the plan change, t_*
    -- the bonus entry (NULL without a bonus). The lock statement reads the
    -- user too: a profile change locks the account as well, so the user
    -- read under the lock is the user after the call.
    SELECT u.id, u.clerk_user_id, u.email, u.first_name, u.last_name, u.image_url, a.plan, a.credits,
           u.clerk_updated_at, u.created_at, u.updated_at, a.updated_at, a.closed_at IS NOT NULL
    INTO u_id, u_clerk_user_id, u_email, u_first_name, u_last_name, u_image_url, u_plan, u_credits,
         u_clerk_updated_at, u_created_at, v_user_updated_at, v_account_updated_at, v_closed
    FROM users u JOIN accounts a ON a.id = u.id
    WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL
    FOR UPDATE OF a;
    IF NOT FOUND THEN
        status := 'not_found';
        RETURN;
    END IF;
    SELECT w.* INTO status, pc_id, pc_previous_plan, pc_plan, pc_bonus_credits, pc_reason, pc_created_at,
                    t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at, pc_actor_user_id, pc_service
    FROM userd_account_write_plan(u_id, u_credits, u_plan, v_closed, u_id, p_service, p_plan, p_bonus,
        p_reason, p_key, u_id, p_clerk_user_id, NULL, p_clerk_user_id) w;
    IF status = 'applied' THEN
        u_plan := p_plan;
        u_credits := u_credits + p_bonus;
        v_account_updated_at := now();
    END IF;
    IF status IN ('applied', 'replayed') THEN
        u_updated_at := greatest(v_user_updated_at, v_account_updated_at);
    ELSE
        u_id := NULL; u_clerk_user_id := NULL; u_email := NULL; u_first_name := NULL; u_last_name := NULL;
        u_image_url := NULL; u_plan := NULL; u_credits := NULL; u_clerk_updated_at := NULL; u_created_at := NULL;
    END IF;
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
    -- This transaction's writers write their own events (see
    -- userd_credit_transactions_feed).
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    -- Inserts a user with its personal account (plan FREE) and returns its
    -- id, or NULL when a row for the Clerk id exists already (concurrent
    -- inserts for one id wait for each other). A live user gets
    -- p_initial_credits as its INITIAL ledger entry; p_deleted inserts a
    -- tombstone (no credits, no entry). One statement, with the user's
    -- first events: user.created (or user.deleted for a tombstone), then
    -- credits.changed for the INITIAL entry. The user's stream is new (a
    -- users row is never removed, so no event names this Clerk id yet):
    -- their order_xid is the transaction's.
    WITH new_user AS (
        INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, clerk_updated_at, deleted_at)
        VALUES (p_clerk_user_id, p_email, p_first_name, p_last_name, p_image_url, p_clerk_updated_at,
                CASE WHEN p_deleted THEN now() END)
        ON CONFLICT (clerk_user_id) DO NOTHING
        RETURNING id, email, first_name, last_name, image_url, created_at, updated_at, deleted_at
    ), account AS (
        INSERT INTO accounts (id, owner_user_id, plan, credits, created_at, updated_at)
        SELECT new_user.id, new_user.id, 'FREE', CASE WHEN p_deleted THEN 0 ELSE p_initial_credits END,
               new_user.created_at, new_user.updated_at
        FROM new_user
        RETURNING id, plan, credits
    ), initial AS (
        INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind)
        SELECT account.id, account.credits, account.credits, 'INITIAL' FROM account
        WHERE NOT p_deleted
        RETURNING t
    ), event AS (
        INSERT INTO feed_events (order_xid, kind, user_id, clerk_user_id, account_id, payload)
        SELECT pg_current_xact_id()::text::bigint, x.kind, new_user.id, p_clerk_user_id, x.account_id, x.payload
        FROM new_user JOIN account ON account.id = new_user.id,
        LATERAL (
            SELECT 1 AS n, CASE WHEN p_deleted THEN 'user.deleted' ELSE 'user.created' END AS kind,
                   NULL::uuid AS account_id,
                   CASE WHEN p_deleted THEN
                       jsonb_build_object('plan', account.plan, 'credits', account.credits,
                                          'deleted_at', new_user.deleted_at)
                   ELSE jsonb_build_object(
                       'email', new_user.email, 'first_name', new_user.first_name, 'last_name', new_user.last_name,
                       'image_url', new_user.image_url, 'plan', account.plan, 'credits', account.credits,
                       'created_at', new_user.created_at, 'updated_at', new_user.updated_at) END AS payload
            UNION ALL
            SELECT 2, 'credits.changed', account.id, userd_credits_changed_payload(initial.t) FROM initial
        ) x
        ORDER BY x.n
    )
    SELECT account.id INTO v_id FROM account;
    RETURN v_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_users_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- user.updated and user.deleted (user.created and a tombstone's
    -- user.deleted are written by userd_insert_user). A deletion that
    -- erased the user's personal data (USERD_KEEP_DELETED_USER_DATA off,
    -- the default), or a later erasure of a deleted user's kept data
    -- (userd erase-user), erases it from the user's earlier events as
    -- well, so the outbox keeps none of it for the rest of its retention.
    -- A deleted user emits nothing more.
    IF TG_OP = 'INSERT' AND current_setting('userd.writer_emits_events', true) = 'on' THEN
        -- userd_insert_user (00020) wrote user.created or the tombstone's
        -- user.deleted itself; an insert by a writer of before 00020 gets
        -- them here (see userd_credit_transactions_feed).
        RETURN NULL;
    END IF;
    IF NEW.deleted_at IS NULL THEN
        PERFORM userd_emit_event(CASE TG_OP WHEN 'INSERT' THEN 'user.created' ELSE 'user.updated' END,
            NEW.id, NEW.clerk_user_id, NULL, NULL, NULL, userd_user_event_payload(NEW));
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.deleted_at IS NULL THEN
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
CREATE OR REPLACE FUNCTION userd_apply_clerk_organization(p_svix_id text, p_event_type text, p_clerk_org_id text, p_name text, p_slug text, p_image_url text, p_updated_at bigint, p_initial_credits bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_org organizations%ROWTYPE;
    v_outcome text;
    v_claimed boolean := false;
    v_account_id uuid;
BEGIN
    -- This transaction's writers write their own events (see
    -- userd_credit_transactions_feed).
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    IF p_svix_id IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_events w WHERE w.svix_id = p_svix_id) THEN
        RETURN 'duplicate';
    END IF;
    LOOP
        SELECT * INTO v_org FROM organizations o WHERE o.clerk_org_id = p_clerk_org_id FOR UPDATE;
        v_outcome := CASE
            WHEN NOT FOUND THEN 'created'
            WHEN v_org.deleted_at IS NOT NULL THEN 'ignored_deleted'
            WHEN v_org.clerk_updated_at >= p_updated_at THEN 'stale'
            ELSE 'updated'
        END;

        IF p_svix_id IS NULL THEN
            NULL;
        ELSIF NOT v_claimed THEN
            INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
            VALUES (p_svix_id, p_event_type, p_clerk_org_id, v_outcome)
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
        IF v_outcome = 'updated' THEN
            UPDATE organizations
            SET name = nullif(p_name, ''), slug = nullif(p_slug, ''), image_url = nullif(p_image_url, ''),
                clerk_updated_at = p_updated_at, updated_at = now()
            WHERE id = v_org.id;
            RETURN v_outcome;
        END IF;

        -- One statement, so that the feed's organization.created (an
        -- AFTER trigger, fired at the statement's end) names the account.
        WITH new_org AS (
            INSERT INTO organizations (clerk_org_id, name, slug, image_url, clerk_updated_at)
            VALUES (p_clerk_org_id, nullif(p_name, ''), nullif(p_slug, ''), nullif(p_image_url, ''), p_updated_at)
            ON CONFLICT (clerk_org_id) DO NOTHING
            RETURNING id
        )
        INSERT INTO accounts (organization_id, plan, credits)
        SELECT new_org.id, 'FREE', p_initial_credits FROM new_org
        RETURNING id INTO v_account_id;
        IF v_account_id IS NOT NULL THEN
            IF p_initial_credits > 0 THEN
                -- The INITIAL entry and its credits.changed, after the
                -- organization.created its trigger wrote.
                WITH initial AS (
                    INSERT INTO credit_transactions AS t (user_id, delta, balance_after, kind)
                    VALUES (v_account_id, p_initial_credits, p_initial_credits, 'INITIAL')
                    RETURNING t
                )
                INSERT INTO feed_events (order_xid, kind, clerk_org_id, account_id, payload)
                SELECT userd_feed_order_xid(NULL, p_clerk_org_id), 'credits.changed', p_clerk_org_id, v_account_id,
                       userd_credits_changed_payload(initial.t)
                FROM initial;
            END IF;
            RETURN v_outcome;
        END IF;
        -- Another transaction created the organization after the lock
        -- query found nothing: look again, now that its row is committed.
    END LOOP;
END
$$;
-- +goose StatementEnd

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
    v_cap_period_start timestamptz;
    v_cap_spent bigint;
    v_start timestamptz;
    v_amount bigint;
    v_refusal text;
    v_account uuid;
    v_expiring bigint;
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
    -- then the account-level write (userd_account_post_entry, under this
    -- lock, with the credits.changed event on the organization's stream)
    -- answers applied, replayed, key_reused or insufficient (available).
    -- Refusals after not_found are answered only when the key is unused: a
    -- replay answers with the original entry even when the member was
    -- removed since, its cap is reached or the account closed now, as the
    -- account-level writes replay when the balance is lower or the account
    -- closed. An applied spend adds what it cost to the member's counter
    -- in the same transaction (cap, spent, remaining are then after it). A
    -- spend that began before a period boundary and got the lock after a
    -- spend of the new period counts in the new period: a cap is never
    -- exceeded.
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
        -- One statement, after the lock (its snapshot sees a membership
        -- change that committed while this call waited: those lock the
        -- account too): the membership, the member's user and its cap.
        -- The membership is userd_live_membership's query, inlined (a SQL
        -- function returning a set is planned on every call).
        SELECT m.clerk_membership_id IS NOT NULL, m.permissions, u.id, c.account_id IS NOT NULL,
               c.period, c.cap, c.period_start, c.spent
        INTO v_member, v_permissions, v_actor, v_has_cap, v_cap_period, cap, v_cap_period_start, v_cap_spent
        FROM (SELECT 1) one
        LEFT JOIN LATERAL (
            SELECT lm.clerk_membership_id, lm.permissions FROM organization_memberships lm
            WHERE lm.clerk_org_id = p_clerk_org_id AND lm.clerk_user_id = p_member_clerk_user_id
              AND lm.deleted_at IS NULL
              AND EXISTS (SELECT 1 FROM organizations o WHERE o.clerk_org_id = lm.clerk_org_id AND o.deleted_at IS NULL)
              AND NOT EXISTS (SELECT 1 FROM users d WHERE d.clerk_user_id = lm.clerk_user_id AND d.deleted_at IS NOT NULL)
            ORDER BY lm.clerk_updated_at DESC, lm.clerk_membership_id
            LIMIT 1
            FOR KEY SHARE OF lm
        ) m ON true
        LEFT JOIN users u ON u.clerk_user_id = p_member_clerk_user_id AND u.deleted_at IS NULL
        LEFT JOIN account_member_caps c ON c.account_id = v_account AND c.clerk_user_id = p_member_clerk_user_id;
        IF NOT v_member THEN
            v_refusal := 'not_member';
        ELSIF p_required_permission <> '' AND NOT (p_required_permission = ANY (v_permissions)) THEN
            v_refusal := 'missing_permission';
        ELSIF v_actor IS NULL THEN
            v_refusal := 'user_not_found';
        ELSIF v_has_cap THEN
            v_start := userd_cap_period_start(v_cap_period, coalesce(p_now, now()));
            period := v_cap_period;
            period_start := greatest(v_cap_period_start, v_start);
            spent := CASE WHEN v_cap_period_start >= v_start THEN v_cap_spent ELSE 0 END;
            remaining := greatest(cap - spent, 0);
            IF v_amount > remaining THEN
                v_refusal := 'cap_reached';
            END IF;
        END IF;
        IF v_refusal IS NOT NULL AND v_refusal <> 'cap_reached' THEN
            cap := NULL;
            v_has_cap := false;
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
        'DEDUCT', CASE WHEN p_action <> '' THEN p_action ELSE p_reason END, p_key,
        CASE WHEN p_action <> '' THEN 'DEDUCT_ACTION' ELSE 'DEDUCT' END, p_action <> '', v_actor,
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
        -- (None to lock when neither user exists: the common create.)
        IF v_self.id IS NOT NULL OR v_holder.id IS NOT NULL THEN
            PERFORM 1 FROM accounts a WHERE a.id IN (v_self.id, v_holder.id) ORDER BY a.id FOR UPDATE;
        END IF;

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
CREATE OR REPLACE FUNCTION userd_credit_transactions_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- credits.changed for a ledger entry written by a writer of before
    -- 00020, which relies on this trigger; the writers of 00020 write the
    -- event themselves and say so for their transaction
    -- (userd.writer_emits_events). Turning this trigger off at the switch
    -- would lose the event of a call that was already running an old
    -- body when the switch committed (seen in make fleet-test).
    IF current_setting('userd.writer_emits_events', true) IS DISTINCT FROM 'on' THEN
        PERFORM userd_emit_account_event('credits.changed', NEW.user_id, NEW.actor_user_id,
            userd_credits_changed_payload(NEW));
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_plan_changes_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- plan.changed for a plan change written by a writer of before 00020
    -- (see userd_credit_transactions_feed).
    IF current_setting('userd.writer_emits_events', true) IS DISTINCT FROM 'on' THEN
        PERFORM userd_emit_account_event('plan.changed', NEW.user_id, NEW.actor_user_id,
            userd_plan_changed_payload(NEW));
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

COMMIT;


DROP PROCEDURE pg_temp.userd_ddl(text[]);
DROP FUNCTION pg_temp.userd_try_ddl(text[]);

-- +goose Down
-- One transaction: the previous bodies (00010-00019) and their triggers
-- come back together.
BEGIN;

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
CREATE OR REPLACE FUNCTION userd_post_ledger_entry(p_account_id uuid, p_balance bigint, p_allowed boolean, p_delta bigint, p_kind text, p_reason text, p_key text, p_operation text, p_replay_any_delta boolean, p_actor_user_id uuid, p_service text, OUT status text, OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT t_actor_user_id uuid, OUT t_service text)
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
CREATE OR REPLACE FUNCTION userd_personal_change_credits(p_clerk_user_id text, p_service text, p_kind text, p_delta bigint, p_reason text, p_key text, OUT status text, OUT available bigint, OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT t_actor_user_id uuid, OUT t_service text)
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
CREATE OR REPLACE FUNCTION userd_personal_deduct_for_action(p_clerk_user_id text, p_service text, p_action text, p_key text, OUT status text, OUT available bigint, OUT price bigint, OUT t_id bigint, OUT t_user_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT t_actor_user_id uuid, OUT t_service text)
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
CREATE OR REPLACE FUNCTION userd_account_post_plan(p_account_id uuid, p_balance bigint, p_plan_now text, p_closed boolean, p_actor_user_id uuid, p_service text, p_plan text, p_bonus bigint, p_reason text, p_key text, OUT status text, OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint, OUT pc_reason text, OUT pc_created_at timestamp with time zone, OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT pc_actor_user_id uuid, OUT pc_service text)
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
CREATE OR REPLACE FUNCTION userd_personal_set_plan(p_clerk_user_id text, p_service text, p_plan text, p_bonus bigint, p_reason text, p_key text, OUT status text, OUT u_id uuid, OUT u_clerk_user_id text, OUT u_email text, OUT u_first_name text, OUT u_last_name text, OUT u_image_url text, OUT u_plan text, OUT u_credits bigint, OUT u_clerk_updated_at bigint, OUT u_created_at timestamp with time zone, OUT u_updated_at timestamp with time zone, OUT pc_id bigint, OUT pc_previous_plan text, OUT pc_plan text, OUT pc_bonus_credits bigint, OUT pc_reason text, OUT pc_created_at timestamp with time zone, OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT pc_actor_user_id uuid, OUT pc_service text)
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
CREATE OR REPLACE FUNCTION userd_insert_user(p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text, p_clerk_updated_at bigint, p_initial_credits bigint, p_deleted boolean) RETURNS uuid
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
CREATE OR REPLACE FUNCTION userd_apply_clerk_organization(p_svix_id text, p_event_type text, p_clerk_org_id text, p_name text, p_slug text, p_image_url text, p_updated_at bigint, p_initial_credits bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_org organizations%ROWTYPE;
    v_outcome text;
    v_claimed boolean := false;
    v_account_id uuid;
BEGIN
    IF p_svix_id IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_events w WHERE w.svix_id = p_svix_id) THEN
        RETURN 'duplicate';
    END IF;
    LOOP
        SELECT * INTO v_org FROM organizations o WHERE o.clerk_org_id = p_clerk_org_id FOR UPDATE;
        v_outcome := CASE
            WHEN NOT FOUND THEN 'created'
            WHEN v_org.deleted_at IS NOT NULL THEN 'ignored_deleted'
            WHEN v_org.clerk_updated_at >= p_updated_at THEN 'stale'
            ELSE 'updated'
        END;

        IF p_svix_id IS NULL THEN
            NULL;
        ELSIF NOT v_claimed THEN
            INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
            VALUES (p_svix_id, p_event_type, p_clerk_org_id, v_outcome)
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
        IF v_outcome = 'updated' THEN
            UPDATE organizations
            SET name = nullif(p_name, ''), slug = nullif(p_slug, ''), image_url = nullif(p_image_url, ''),
                clerk_updated_at = p_updated_at, updated_at = now()
            WHERE id = v_org.id;
            RETURN v_outcome;
        END IF;

        -- One statement, so that the feed's organization.created (an
        -- AFTER trigger, fired at the statement's end) names the account.
        WITH new_org AS (
            INSERT INTO organizations (clerk_org_id, name, slug, image_url, clerk_updated_at)
            VALUES (p_clerk_org_id, nullif(p_name, ''), nullif(p_slug, ''), nullif(p_image_url, ''), p_updated_at)
            ON CONFLICT (clerk_org_id) DO NOTHING
            RETURNING id
        )
        INSERT INTO accounts (organization_id, plan, credits)
        SELECT new_org.id, 'FREE', p_initial_credits FROM new_org
        RETURNING id INTO v_account_id;
        IF v_account_id IS NOT NULL THEN
            IF p_initial_credits > 0 THEN
                INSERT INTO credit_transactions (user_id, delta, balance_after, kind)
                VALUES (v_account_id, p_initial_credits, p_initial_credits, 'INITIAL');
            END IF;
            RETURN v_outcome;
        END IF;
        -- Another transaction created the organization after the lock
        -- query found nothing: look again, now that its row is committed.
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_org_spend(p_clerk_org_id text, p_member_clerk_user_id text, p_service text, p_required_permission text, p_amount bigint, p_action text, p_reason text, p_key text, p_now timestamp with time zone, OUT status text, OUT account_id uuid, OUT available bigint, OUT price bigint, OUT cap bigint, OUT spent bigint, OUT remaining bigint, OUT period text, OUT period_start timestamp with time zone, OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT t_actor_user_id uuid, OUT t_service text)
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

DROP TRIGGER IF EXISTS users_feed_insert ON users;
CREATE TRIGGER users_feed_insert AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION userd_users_feed();
DROP TRIGGER IF EXISTS credit_transactions_feed ON credit_transactions;
CREATE TRIGGER credit_transactions_feed AFTER INSERT ON credit_transactions
    FOR EACH ROW EXECUTE FUNCTION userd_credit_transactions_feed();
DROP TRIGGER IF EXISTS plan_changes_feed ON plan_changes;
CREATE TRIGGER plan_changes_feed AFTER INSERT ON plan_changes
    FOR EACH ROW EXECUTE FUNCTION userd_plan_changes_feed();
DROP FUNCTION userd_account_post_entry(uuid, bigint, boolean, bigint, text, text, text, text, boolean, uuid, text,
    uuid, text, text, text);
DROP FUNCTION userd_account_write_plan(uuid, bigint, text, boolean, uuid, text, text, bigint, text, text,
    uuid, text, text, text);
DROP FUNCTION userd_feed_stream(uuid, uuid);
DROP FUNCTION userd_feed_order_xid(text, text);
DROP FUNCTION userd_credits_changed_payload(credit_transactions);
DROP FUNCTION userd_plan_changed_payload(plan_changes);
COMMIT;

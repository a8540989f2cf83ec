-- +goose NO TRANSACTION
-- +goose Up
-- Plans with allowances, and credits that expire (issue 21).
--
--   * plan_catalog says, per plan, the allowance an account on it gets each
--     period (anchored at the account's creation, UTC), how much unused
--     allowance rolls over (up to a cap), and the one-time bonus of an
--     upgrade to it. Managed through the API (SetPlanAllowance), audited in
--     plan_catalog_changes; read in the transactions that use it. No rows:
--     today's behaviour exactly (no refills, no expiry).
--   * credit_grants holds the grants that expire (allowances, grants with an
--     expiry): amount, remaining, expiry, source, the ledger entry that
--     made it and, once expired, the EXPIRE entry that took the unused
--     remainder out of the balance. accounts.expiring_credits is the sum of
--     remaining over an account's grants not yet expired by the ledger;
--     balance - expiring_credits is the account's pool of credits that
--     never expire. A deduction takes from the grants soonest-expiry-first
--     (ties by id), then from the pool, under the account's row lock.
--   * allowance_periods records, per account and period, the allowance
--     granted (exactly once: its primary key), or a run of periods that
--     were skipped because no refill ran during them.
--
-- Expand only: new tables, columns with defaults, new functions, and new
-- bodies of userd_account_post_credits and userd_account_post_action with
-- their signatures (an account without expiring credits takes exactly the
-- path it took before). It runs outside one transaction so that each DDL
-- statement on a hot table waits at most 200 ms for its lock (00010).

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


CALL pg_temp.userd_ddl(ARRAY[$ddl$
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS expiring_credits bigint NOT NULL DEFAULT 0
$ddl$, $ddl$
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS next_refill_at timestamptz
$ddl$]);

CALL pg_temp.userd_ddl(ARRAY[$ddl$
ALTER TABLE accounts ADD CONSTRAINT accounts_expiring_credits_non_negative CHECK (expiring_credits >= 0) NOT VALID
$ddl$]);
ALTER TABLE accounts VALIDATE CONSTRAINT accounts_expiring_credits_non_negative;

-- Two new ledger kinds: ALLOWANCE (a period's allowance, granted by userd)
-- and EXPIRE (the unused remainder of an expired grant, negative). Both
-- lists are supersets of the old ones: NOT VALID, then validated without
-- blocking writers.
CALL pg_temp.userd_ddl(ARRAY[$ddl$
ALTER TABLE credit_transactions
    DROP CONSTRAINT credit_transactions_kind_valid,
    ADD CONSTRAINT credit_transactions_kind_valid
        CHECK (kind IN ('INITIAL', 'DEDUCT', 'GRANT', 'PLAN_BONUS', 'ALLOWANCE', 'EXPIRE')) NOT VALID,
    DROP CONSTRAINT credit_transactions_delta_sign,
    ADD CONSTRAINT credit_transactions_delta_sign
        CHECK ((kind IN ('DEDUCT', 'EXPIRE') AND delta < 0) OR (kind NOT IN ('DEDUCT', 'EXPIRE') AND delta >= 0)) NOT VALID
$ddl$]);
ALTER TABLE credit_transactions VALIDATE CONSTRAINT credit_transactions_kind_valid;
ALTER TABLE credit_transactions VALIDATE CONSTRAINT credit_transactions_delta_sign;

-- The refill job's queue: an open account is due when next_refill_at is
-- NULL (never refilled) or past.
CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_next_refill_idx
    ON accounts (next_refill_at NULLS FIRST) WHERE closed_at IS NULL;

CREATE TABLE IF NOT EXISTS plan_catalog (
    plan           text        PRIMARY KEY,
    -- Credits granted at the start of each period; they expire at its end.
    allowance      bigint      NOT NULL,
    period         text        NOT NULL DEFAULT 'month',
    -- Unused allowance carried into the next period's allowance, at most
    -- this much (0: none rolls over).
    rollover_cap   bigint      NOT NULL DEFAULT 0,
    -- Credits (that never expire) granted once per account on its first
    -- upgrade to this plan (a move from a plan with a smaller allowance).
    upgrade_bonus  bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- The principal that set the entry ("service:<name>").
    updated_by     text        NOT NULL,
    CONSTRAINT plan_catalog_plan_valid CHECK (plan IN ('FREE', 'PRO', 'ENTERPRISE')),
    CONSTRAINT plan_catalog_period_valid CHECK (period IN ('day', 'week', 'month')),
    CONSTRAINT plan_catalog_allowance_range CHECK (allowance >= 0 AND allowance <= 1000000000000),
    CONSTRAINT plan_catalog_rollover_cap_range CHECK (rollover_cap >= 0 AND rollover_cap <= 1000000000000),
    CONSTRAINT plan_catalog_upgrade_bonus_range CHECK (upgrade_bonus >= 0 AND upgrade_bonus <= 1000000000000)
);

-- plan_catalog_changes is the audit history of the catalog: one row per
-- change SetPlanAllowance applied (previous_*: NULL when it created the
-- entry).
CREATE TABLE IF NOT EXISTS plan_catalog_changes (
    id                      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plan                    text        NOT NULL,
    previous_allowance      bigint,
    previous_period         text,
    previous_rollover_cap   bigint,
    previous_upgrade_bonus  bigint,
    allowance               bigint      NOT NULL,
    period                  text        NOT NULL,
    rollover_cap            bigint      NOT NULL,
    upgrade_bonus           bigint      NOT NULL,
    changed_by              text        NOT NULL,
    changed_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS credit_grants (
    id                     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id             uuid        NOT NULL CONSTRAINT credit_grants_account_fkey REFERENCES accounts (id),
    source                 text        NOT NULL,
    amount                 bigint      NOT NULL,
    remaining              bigint      NOT NULL,
    effective_at           timestamptz NOT NULL,
    expires_at             timestamptz NOT NULL,
    -- The period an ALLOWANCE grant is for.
    period_start           timestamptz,
    -- The ledger entry that granted it.
    transaction_id         bigint      NOT NULL CONSTRAINT credit_grants_transaction_fkey REFERENCES credit_transactions (id),
    -- Set once expired: when, how much left the balance, and the EXPIRE
    -- entry that took it (NULL when nothing was left).
    expired_at             timestamptz,
    expired_amount         bigint,
    expire_transaction_id  bigint      CONSTRAINT credit_grants_expire_transaction_fkey REFERENCES credit_transactions (id),
    created_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_grants_source_valid CHECK (source IN ('GRANT', 'ALLOWANCE', 'PURCHASE', 'REFUND', 'SUPPORT', 'BONUS')),
    CONSTRAINT credit_grants_amount_positive CHECK (amount > 0),
    CONSTRAINT credit_grants_remaining_range CHECK (remaining >= 0 AND remaining <= amount),
    CONSTRAINT credit_grants_expires_after_effective CHECK (expires_at > effective_at),
    CONSTRAINT credit_grants_expired_is_empty CHECK (expired_at IS NULL OR remaining = 0)
);

-- A deduction's consumption order and an account's live grants (expires_at
-- > now: the range skips the expired ones), and the grants of a period's
-- end (rollover).
CREATE INDEX IF NOT EXISTS credit_grants_account_expiry_idx ON credit_grants (account_id, expires_at, id);
-- No index on expires_at alone: the expiry job finds due grants by a scan
-- per batch, and such an index (partial on expired_at IS NULL) drew the
-- planner away from credit_grants_account_expiry_idx in every query of one
-- account (each of them then read every due grant of every account).
CREATE INDEX IF NOT EXISTS credit_grants_transaction_idx ON credit_grants (transaction_id);

CREATE TABLE IF NOT EXISTS allowance_periods (
    account_id       uuid        NOT NULL CONSTRAINT allowance_periods_account_fkey REFERENCES accounts (id),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    -- granted: the period's allowance was granted (amount: the plan's
    -- allowance, raised by upgrades in the period; rollover: carried in).
    -- skipped: no refill ran in [period_start, period_end), skipped_periods
    -- periods; nothing was granted for them.
    status           text        NOT NULL,
    plan             text        NOT NULL,
    amount           bigint      NOT NULL DEFAULT 0,
    rollover         bigint      NOT NULL DEFAULT 0,
    skipped_periods  integer     NOT NULL DEFAULT 0,
    recorded_at      timestamptz NOT NULL,
    CONSTRAINT allowance_periods_pkey PRIMARY KEY (account_id, period_start),
    CONSTRAINT allowance_periods_status_valid CHECK (status IN ('granted', 'skipped')),
    CONSTRAINT allowance_periods_ordered CHECK (period_end > period_start)
);

-- One upgrade bonus per account and plan, ever.
CREATE TABLE IF NOT EXISTS plan_upgrade_bonuses (
    account_id      uuid        NOT NULL CONSTRAINT plan_upgrade_bonuses_account_fkey REFERENCES accounts (id),
    plan            text        NOT NULL,
    transaction_id  bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plan_upgrade_bonuses_pkey PRIMARY KEY (account_id, plan)
);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_allowance_period_bound(p_anchor timestamptz, p_period text, p_n bigint)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT AS $$
    -- The start of period p_n (0: the one starting at p_anchor) of a
    -- p_period ('day', 'week', 'month') schedule anchored at p_anchor, in
    -- UTC. A month from the 31st ends on the last day of a shorter month.
    SELECT ((p_anchor AT TIME ZONE 'UTC') + CASE p_period
        WHEN 'day' THEN make_interval(days => p_n::int)
        WHEN 'week' THEN make_interval(weeks => p_n::int)
        ELSE make_interval(months => p_n::int) END) AT TIME ZONE 'UTC'
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_allowance_period_index(p_anchor timestamptz, p_period text, p_at timestamptz)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    v_n bigint;
    v_a timestamp := p_anchor AT TIME ZONE 'UTC';
    v_t timestamp := p_at AT TIME ZONE 'UTC';
BEGIN
    -- The number of the period holding p_at (see
    -- userd_allowance_period_bound); negative before p_anchor.
    IF p_period = 'day' THEN
        RETURN floor(extract(epoch FROM v_t - v_a) / 86400)::bigint;
    ELSIF p_period = 'week' THEN
        RETURN floor(extract(epoch FROM v_t - v_a) / 604800)::bigint;
    END IF;
    v_n := (extract(year FROM v_t) - extract(year FROM v_a)) * 12 + extract(month FROM v_t) - extract(month FROM v_a);
    IF userd_allowance_period_bound(p_anchor, p_period, v_n) > p_at THEN
        v_n := v_n - 1;
    END IF;
    RETURN v_n;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_expire_due(p_account_id uuid, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_credits bigint;
    v_expiring bigint;
    v_grant record;
    v_amount bigint;
    v_tid bigint;
    v_entry credit_transactions;
    v_any boolean := false;
BEGIN
    -- Writes its entries' events itself (00020): the ledger's feed
    -- trigger must not write them again.
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    -- Expires the grants of the account p_account_id whose expiry is at or
    -- before p_now and returns the balance after: each grant's unused
    -- remainder leaves the balance through an EXPIRE entry of its own
    -- (none when nothing was left), and the grant records it. Locks the
    -- account (FOR UPDATE; callers that hold the lock already lose
    -- nothing). Idempotent: an expired grant is never expired again. The
    -- amount never exceeds the balance (a replica of the previous release
    -- deducts without consuming grants).
    SELECT a.credits, a.expiring_credits INTO v_credits, v_expiring
    FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    FOR v_grant IN
        SELECT g.id, g.remaining FROM credit_grants g
        WHERE g.account_id = p_account_id AND g.expired_at IS NULL AND g.expires_at <= p_now
        ORDER BY g.expires_at, g.id
    LOOP
        v_any := true;
        v_amount := least(v_grant.remaining, v_credits);
        v_tid := NULL;
        IF v_amount > 0 THEN
            v_credits := v_credits - v_amount;
            -- The account first, then the ledger: the writers' lock order.
            UPDATE accounts SET credits = v_credits, updated_at = now() WHERE id = p_account_id;
            INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason)
            VALUES (p_account_id, -v_amount, v_credits, 'EXPIRE', 'expired')
            RETURNING * INTO v_entry;
            v_tid := v_entry.id;
            -- Writers write their entry's event themselves (00020).
            PERFORM userd_emit_account_event('credits.changed', p_account_id, NULL,
                                             userd_credits_changed_payload(v_entry));
        END IF;
        v_expiring := v_expiring - v_grant.remaining;
        UPDATE credit_grants
        SET remaining = 0, expired_at = p_now, expired_amount = v_amount, expire_transaction_id = v_tid
        WHERE id = v_grant.id;
    END LOOP;
    IF v_any THEN
        UPDATE accounts SET expiring_credits = greatest(v_expiring, 0) WHERE id = p_account_id;
    END IF;
    RETURN v_credits;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_take_grants(p_account_id uuid, p_amount bigint, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_taken bigint;
BEGIN
    -- Takes p_amount (a deduction the caller just applied, under the
    -- account's row lock) from the account's live grants, soonest expiry
    -- first (ties by id), and returns how much they gave; the rest came
    -- from the pool of credits that never expire. One statement.
    WITH live AS (
        SELECT g.id, g.remaining,
               sum(g.remaining) OVER (ORDER BY g.expires_at, g.id) - g.remaining AS before
        FROM credit_grants g
        WHERE g.account_id = p_account_id AND g.expired_at IS NULL AND g.expires_at > p_now AND g.remaining > 0
    ), taken AS (
        UPDATE credit_grants g SET remaining = g.remaining - least(l.remaining, p_amount - l.before)
        FROM live l
        WHERE g.id = l.id AND l.before < p_amount
        RETURNING least(l.remaining, p_amount - l.before) AS amount
    )
    SELECT coalesce(sum(amount), 0) INTO v_taken FROM taken;
    IF v_taken > 0 THEN
        UPDATE accounts SET expiring_credits = greatest(expiring_credits - v_taken, 0) WHERE id = p_account_id;
    END IF;
    RETURN v_taken;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_add_grant(
    p_account_id uuid, p_kind text, p_amount bigint, p_reason text, p_source text,
    p_expires_at timestamptz, p_period_start timestamptz, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_tid bigint;
    v_entry credit_transactions;
    v_credits bigint;
BEGIN
    -- Writes its entries' events itself (00020): the ledger's feed
    -- trigger must not write them again.
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    -- Grants p_amount (> 0) that userd itself decided (an allowance, an
    -- upgrade bonus) to the account p_account_id, whose row the caller has
    -- locked: a ledger entry of p_kind, and, when p_expires_at is not
    -- NULL, the grant that expires then. Returns the entry's id.
    UPDATE accounts SET credits = credits + p_amount, updated_at = now(),
                        expiring_credits = expiring_credits + CASE WHEN p_expires_at IS NULL THEN 0 ELSE p_amount END
    WHERE id = p_account_id
    RETURNING credits INTO v_credits;
    INSERT INTO credit_transactions (user_id, delta, balance_after, kind, reason)
    VALUES (p_account_id, p_amount, v_credits, p_kind, p_reason)
    RETURNING * INTO v_entry;
    v_tid := v_entry.id;
    -- Writers write their entry's event themselves (00020).
    PERFORM userd_emit_account_event('credits.changed', p_account_id, NULL, userd_credits_changed_payload(v_entry));
    IF p_expires_at IS NOT NULL THEN
        INSERT INTO credit_grants (account_id, source, amount, remaining, effective_at, expires_at, period_start,
                                   transaction_id)
        VALUES (p_account_id, p_source, p_amount, p_amount, p_now, p_expires_at, p_period_start, v_tid);
    END IF;
    RETURN v_tid;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_refill(p_account_id uuid, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_account accounts%ROWTYPE;
    v_catalog plan_catalog%ROWTYPE;
    v_period text;
    v_n bigint;
    v_start timestamptz;
    v_end timestamptz;
    v_row allowance_periods%ROWTYPE;
    v_last timestamptz;
    v_rollover bigint;
    v_granted bigint := 0;
BEGIN
    -- Brings the account p_account_id up to date at p_now and returns the
    -- allowance credits it granted: expires its due grants, then, when its
    -- plan has a catalog entry with an allowance,
    --   * grants the current period's allowance (plus what rolls over from
    --     the previous period's, up to the cap) if the period has none yet,
    --     expiring at the period's end. Only the current period: periods
    --     that passed without a refill (the job was down) are recorded as
    --     one skipped run and never granted (their allowance would have
    --     expired already);
    --   * grants the difference at once when the plan's allowance is above
    --     what the period got (an upgrade in mid-period). A downgrade takes
    --     nothing back: the smaller allowance applies from the next period.
    -- Periods are anchored at the account's creation, UTC. Exactly once per
    -- (account, period): allowance_periods' primary key, under the
    -- account's row lock. Sets next_refill_at to the next period's start.
    -- A closed account gets nothing.
    SELECT * INTO v_account FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    IF NOT FOUND OR v_account.closed_at IS NOT NULL THEN
        RETURN 0;
    END IF;
    IF v_account.expiring_credits > 0 THEN
        PERFORM userd_account_expire_due(p_account_id, p_now);
    END IF;
    SELECT * INTO v_catalog FROM plan_catalog c WHERE c.plan = v_account.plan;
    v_period := coalesce(v_catalog.period, 'month');
    v_n := greatest(userd_allowance_period_index(v_account.created_at, v_period, p_now), 0);
    v_start := userd_allowance_period_bound(v_account.created_at, v_period, v_n);
    v_end := userd_allowance_period_bound(v_account.created_at, v_period, v_n + 1);
    IF v_catalog.allowance > 0 THEN
        SELECT * INTO v_row FROM allowance_periods p
        WHERE p.account_id = p_account_id AND p.period_start = v_start;
        IF NOT FOUND THEN
            SELECT max(p.period_end) INTO v_last FROM allowance_periods p WHERE p.account_id = p_account_id;
            IF v_last < v_start THEN
                INSERT INTO allowance_periods (account_id, period_start, period_end, status, plan,
                                               skipped_periods, recorded_at)
                VALUES (p_account_id, v_last, v_start, 'skipped', v_account.plan,
                        greatest(v_n - userd_allowance_period_index(v_account.created_at, v_period, v_last), 1),
                        p_now);
            END IF;
            SELECT least(coalesce(sum(g.expired_amount), 0), v_catalog.rollover_cap) INTO v_rollover
            FROM credit_grants g
            WHERE g.account_id = p_account_id AND g.source = 'ALLOWANCE' AND g.expires_at = v_start;
            v_granted := v_catalog.allowance + v_rollover;
            PERFORM userd_account_add_grant(p_account_id, 'ALLOWANCE', v_granted,
                'allowance', 'ALLOWANCE', v_end, v_start, p_now);
            INSERT INTO allowance_periods (account_id, period_start, period_end, status, plan, amount, rollover,
                                           recorded_at)
            VALUES (p_account_id, v_start, v_end, 'granted', v_account.plan, v_catalog.allowance, v_rollover, p_now);
        ELSIF v_row.status = 'granted' AND v_row.amount < v_catalog.allowance THEN
            v_granted := v_catalog.allowance - v_row.amount;
            PERFORM userd_account_add_grant(p_account_id, 'ALLOWANCE', v_granted,
                'allowance upgrade', 'ALLOWANCE', v_row.period_end, v_start, p_now);
            UPDATE allowance_periods SET amount = v_catalog.allowance, plan = v_account.plan
            WHERE account_id = p_account_id AND period_start = v_start;
        END IF;
    END IF;
    UPDATE accounts SET next_refill_at = v_end WHERE id = p_account_id;
    RETURN v_granted;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_run_allowances(p_now timestamptz, p_limit integer,
    OUT accounts integer, OUT expired integer, OUT granted bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_credits bigint;
BEGIN
    -- One batch of the expiry and refill job at p_now: expires the due
    -- grants of up to p_limit accounts, then refills up to p_limit due
    -- accounts (none while the catalog is empty). Accounts another
    -- transaction holds are skipped (SKIP LOCKED) and picked up by the
    -- next batch. accounts: how many the batch processed (a batch with
    -- fewer than 2 * p_limit ends the run).
    accounts := 0; expired := 0; granted := 0;
    FOR v_id IN
        SELECT a.id FROM accounts a
        WHERE a.id IN (SELECT g.account_id FROM credit_grants g
                       WHERE g.expired_at IS NULL AND g.expires_at <= p_now
                       ORDER BY g.expires_at LIMIT p_limit)
        FOR UPDATE SKIP LOCKED
    LOOP
        v_credits := userd_account_expire_due(v_id, p_now);
        accounts := accounts + 1;
        expired := expired + 1;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM plan_catalog) THEN
        RETURN;
    END IF;
    FOR v_id IN
        SELECT a.id FROM accounts a
        WHERE a.closed_at IS NULL AND (a.next_refill_at IS NULL OR a.next_refill_at <= p_now)
        ORDER BY a.next_refill_at NULLS FIRST
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        granted := granted + userd_account_refill(v_id, p_now);
        accounts := accounts + 1;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_initial_allowance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A new account (its INITIAL entry) gets its first allowance at once,
    -- in the transaction that creates it, when its plan has one.
    IF EXISTS (SELECT 1 FROM plan_catalog c JOIN accounts a ON a.plan = c.plan
               WHERE a.id = NEW.user_id AND c.allowance > 0) THEN
        PERFORM userd_account_refill(NEW.user_id, NEW.created_at);
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE OR REPLACE TRIGGER credit_transactions_initial_allowance
    AFTER INSERT ON credit_transactions
    FOR EACH ROW WHEN (NEW.kind = 'INITIAL')
    EXECUTE FUNCTION userd_initial_allowance();

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_plan_change_allowance() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_new plan_catalog%ROWTYPE;
    v_old_allowance bigint;
    v_tid bigint;
BEGIN
    -- A plan change, in its own transaction (the account is locked):
    --   * an upgrade (to a plan whose allowance is above the previous
    --     plan's) grants the new plan's upgrade bonus, once per account and
    --     plan ever (plan_upgrade_bonuses), as credits that never expire;
    --   * the current period's allowance is brought up to the new plan's
    --     (userd_account_refill: the difference at once; a downgrade
    --     applies from the next period).
    IF NOT EXISTS (SELECT 1 FROM plan_catalog) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO v_new FROM plan_catalog c WHERE c.plan = NEW.plan;
    SELECT c.allowance INTO v_old_allowance FROM plan_catalog c WHERE c.plan = NEW.previous_plan;
    IF v_new.upgrade_bonus > 0 AND v_new.allowance > coalesce(v_old_allowance, 0) THEN
        IF NOT EXISTS (SELECT 1 FROM plan_upgrade_bonuses b WHERE b.account_id = NEW.user_id AND b.plan = NEW.plan) THEN
            v_tid := userd_account_add_grant(NEW.user_id, 'PLAN_BONUS', v_new.upgrade_bonus,
                'upgrade bonus ' || NEW.plan, NULL, NULL, NULL, NEW.created_at);
            INSERT INTO plan_upgrade_bonuses (account_id, plan, transaction_id) VALUES (NEW.user_id, NEW.plan, v_tid);
        END IF;
    END IF;
    PERFORM userd_account_refill(NEW.user_id, NEW.created_at);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE OR REPLACE TRIGGER plan_changes_allowance
    AFTER INSERT ON plan_changes
    FOR EACH ROW EXECUTE FUNCTION userd_plan_change_allowance();

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_set_plan_allowance(
    p_plan text, p_allowance bigint, p_period text, p_rollover_cap bigint, p_upgrade_bonus bigint,
    p_changed_by text, OUT status text, OUT change_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_old plan_catalog%ROWTYPE;
BEGIN
    -- Sets the catalog entry of p_plan and records the change in one call.
    -- Statuses: applied (change_id: the audit row), unchanged (the entry
    -- in effect was asked for; nothing written). The entry is locked
    -- (FOR UPDATE), so concurrent changes of one plan apply one after the
    -- other, each audited against the one before. A change applies to
    -- each account from its next period (a refill reads the entry in its
    -- own transaction).
    SELECT * INTO v_old FROM plan_catalog c WHERE c.plan = p_plan FOR UPDATE;
    IF FOUND AND v_old.allowance = p_allowance AND v_old.period = p_period
       AND v_old.rollover_cap = p_rollover_cap AND v_old.upgrade_bonus = p_upgrade_bonus THEN
        status := 'unchanged';
        RETURN;
    END IF;
    INSERT INTO plan_catalog (plan, allowance, period, rollover_cap, upgrade_bonus, updated_by)
    VALUES (p_plan, p_allowance, p_period, p_rollover_cap, p_upgrade_bonus, p_changed_by)
    ON CONFLICT (plan) DO UPDATE
    SET allowance = EXCLUDED.allowance, period = EXCLUDED.period, rollover_cap = EXCLUDED.rollover_cap,
        upgrade_bonus = EXCLUDED.upgrade_bonus, updated_by = EXCLUDED.updated_by, updated_at = now();
    INSERT INTO plan_catalog_changes (plan, previous_allowance, previous_period, previous_rollover_cap,
                                      previous_upgrade_bonus, allowance, period, rollover_cap, upgrade_bonus,
                                      changed_by)
    VALUES (p_plan, v_old.allowance, v_old.period, v_old.rollover_cap, v_old.upgrade_bonus,
            p_allowance, p_period, p_rollover_cap, p_upgrade_bonus, p_changed_by)
    RETURNING id INTO change_id;
    status := 'applied';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_grant_expiring(
    p_clerk_user_id text, p_clerk_org_id text, p_service text, p_amount bigint, p_reason text, p_key text,
    p_source text, p_expires_at timestamptz, p_now timestamptz,
    OUT status text, OUT account_id uuid, OUT available bigint, OUT grant_id bigint,
    OUT t_id bigint, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text,
    OUT t_created_at timestamptz, OUT t_actor_user_id uuid, OUT t_service text)
LANGUAGE plpgsql AS $$
DECLARE
    v_actor uuid;
    v_credits bigint;
    v_closed boolean;
    v_grant credit_grants%ROWTYPE;
BEGIN
    -- Grants p_amount that expires at p_expires_at (source p_source) to the
    -- account of organization p_clerk_org_id (p_clerk_user_id, when not
    -- '', names the live user the service acted for) or, with
    -- p_clerk_org_id = '', to the personal account of the live user
    -- p_clerk_user_id, under p_key claimed as GRANT. Statuses as
    -- userd_org_change_credits (not_found, user_not_found, applied,
    -- replayed, key_reused, overflow, closed); a replay must name the same
    -- expiry and source, else key_reused.
    IF p_clerk_org_id <> '' THEN
        SELECT a.id INTO account_id FROM organizations o JOIN accounts a ON a.organization_id = o.id
        WHERE o.clerk_org_id = p_clerk_org_id;
        IF NOT FOUND THEN
            status := 'not_found';
            RETURN;
        END IF;
        IF p_clerk_user_id <> '' THEN
            SELECT u.id INTO v_actor FROM users u WHERE u.clerk_user_id = p_clerk_user_id AND u.deleted_at IS NULL;
            IF NOT FOUND THEN
                status := 'user_not_found';
                RETURN;
            END IF;
        END IF;
        SELECT a.credits, a.closed_at IS NOT NULL INTO v_credits, v_closed
        FROM accounts a WHERE a.id = account_id FOR UPDATE;
    ELSE
        SELECT l.account_id, l.credits, l.closed INTO account_id, v_credits, v_closed
        FROM userd_lock_personal_account(p_clerk_user_id) l;
        IF account_id IS NULL THEN
            status := 'not_found';
            RETURN;
        END IF;
        v_actor := account_id;
    END IF;
    SELECT e.status, e.available, e.t_id, e.t_delta, e.t_balance_after, e.t_kind, e.t_reason, e.t_created_at,
           e.t_actor_user_id, e.t_service
    INTO status, available, t_id, t_delta, t_balance_after, t_kind, t_reason, t_created_at,
         t_actor_user_id, t_service
    FROM userd_account_post_credits(account_id, v_credits, v_closed, v_actor, nullif(p_service, ''), 'GRANT',
        p_amount, p_reason, p_key) e;
    IF status = 'applied' THEN
        INSERT INTO credit_grants (account_id, source, amount, remaining, effective_at, expires_at, transaction_id)
        VALUES (account_id, p_source, p_amount, p_amount, p_now, p_expires_at, t_id)
        RETURNING id INTO grant_id;
        UPDATE accounts SET expiring_credits = expiring_credits + p_amount WHERE id = account_id;
    ELSIF status = 'replayed' THEN
        SELECT * INTO v_grant FROM credit_grants g WHERE g.transaction_id = t_id;
        IF NOT FOUND OR v_grant.expires_at <> p_expires_at OR v_grant.source <> p_source THEN
            status := 'key_reused';
            t_id := NULL; t_delta := NULL; t_balance_after := NULL; t_kind := NULL; t_reason := NULL;
            t_created_at := NULL; t_actor_user_id := NULL; t_service := NULL;
            RETURN;
        END IF;
        grant_id := v_grant.id;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_due_credits(p_account_id uuid, p_expiring bigint)
RETURNS bigint
LANGUAGE sql STABLE AS $$
    -- What a read must not count of an account holding p_expiring
    -- expiring credits: the remainder of its grants that are due but not
    -- yet expired by the ledger (the job or the next spend expires them).
    -- An account without expiring credits reads no other row.
    SELECT CASE WHEN p_expiring > 0 THEN coalesce(
        (SELECT sum(g.remaining) FROM credit_grants g
         WHERE g.account_id = p_account_id AND g.expired_at IS NULL AND g.expires_at <= now()), 0)::bigint
        ELSE 0 END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_post_credits(p_account_id uuid, p_balance bigint, p_closed boolean, p_actor_user_id uuid, p_service text, p_kind text, p_delta bigint, p_reason text, p_key text, OUT status text, OUT available bigint, OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT t_actor_user_id uuid, OUT t_service text)
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_expiring bigint := 0;
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
    -- BEGIN allow (issue 21): expiring grants, before the balance check.
    -- Only an account holding expiring credits leaves today's path: its
    -- grants that are due expire first (their own EXPIRE entries), so the
    -- deduction never spends an expired grant.
    IF p_delta < 0 AND p_balance > 0 THEN
        SELECT a.expiring_credits INTO v_expiring FROM accounts a WHERE a.id = p_account_id;
        IF v_expiring > 0 THEN
            p_balance := userd_account_expire_due(p_account_id, now());
        END IF;
    END IF;
    -- END allow
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
    -- BEGIN allow (issue 21): the deduction takes from the expiring
    -- grants soonest-expiry-first (ties by id), then from the pool.
    IF status = 'applied' AND v_expiring > 0 THEN
        PERFORM userd_account_take_grants(p_account_id, -p_delta, now());
    END IF;
    -- END allow
END
$$;

-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_account_post_action(p_account_id uuid, p_balance bigint, p_closed boolean, p_actor_user_id uuid, p_service text, p_action text, p_price bigint, p_key text, OUT status text, OUT available bigint, OUT price bigint, OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT t_actor_user_id uuid, OUT t_service text)
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_expiring bigint := 0;
BEGIN
    -- Charges one use of p_action at p_price (read by the caller under a
    -- share lock of the price row, see userd_account_deduct_for_action) to
    -- an account whose row the caller has locked (balance p_balance,
    -- closed p_closed), under p_key claimed as DEDUCT_ACTION. Statuses:
    -- applied, replayed (price: what the original charged), key_reused,
    -- insufficient, closed.
    -- BEGIN allow (issue 21): expiring grants, before the balance check.
    -- Only an account holding expiring credits leaves today's path: its
    -- grants that are due expire first (their own EXPIRE entries), so the
    -- deduction never spends an expired grant.
    IF p_price > 0 AND p_balance > 0 THEN
        SELECT a.expiring_credits INTO v_expiring FROM accounts a WHERE a.id = p_account_id;
        IF v_expiring > 0 THEN
            p_balance := userd_account_expire_due(p_account_id, now());
        END IF;
    END IF;
    -- END allow
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
    -- BEGIN allow (issue 21): the deduction takes from the expiring
    -- grants soonest-expiry-first (ties by id), then from the pool.
    IF status = 'applied' AND v_expiring > 0 THEN
        PERFORM userd_account_take_grants(p_account_id, p_price, now());
    END IF;
    -- END allow
END
$$;
-- +goose StatementEnd


-- A new user's first allowance replaces its sign-up credits where the
-- catalog gives FREE an allowance (the INITIAL entry is then 0).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_insert_user(
    p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text,
    p_clerk_updated_at bigint, p_initial_credits bigint, p_deleted boolean)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    -- Writes its events itself (00020): the feed triggers skip them.
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    -- 00020's body, but a live user's INITIAL entry is 0 when the plan
    -- catalog gives FREE an allowance (00022). Inserts a user with its
    -- personal account (plan FREE) and returns its id, or NULL when a row for the Clerk id exists already (concurrent
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
        SELECT new_user.id, new_user.id, 'FREE',
               CASE WHEN p_deleted THEN 0
                    -- Where the catalog gives FREE an allowance, the first
                    -- allowance (granted with the INITIAL entry, see
                    -- userd_initial_allowance) replaces the sign-up credits.
                    WHEN EXISTS (SELECT 1 FROM plan_catalog c WHERE c.plan = 'FREE' AND c.allowance > 0) THEN 0
                    ELSE p_initial_credits END,
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

-- +goose Down
-- 00020's userd_insert_user: sign-up credits whatever the catalog says.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_insert_user(
    p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text,
    p_clerk_updated_at bigint, p_initial_credits bigint, p_deleted boolean)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    -- Writes its events itself (00020): the feed triggers skip them.
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
CREATE OR REPLACE FUNCTION userd_account_post_credits(p_account_id uuid, p_balance bigint, p_closed boolean, p_actor_user_id uuid, p_service text, p_kind text, p_delta bigint, p_reason text, p_key text, OUT status text, OUT available bigint, OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT t_actor_user_id uuid, OUT t_service text)
    LANGUAGE plpgsql
    AS $$
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
CREATE OR REPLACE FUNCTION userd_account_post_action(p_account_id uuid, p_balance bigint, p_closed boolean, p_actor_user_id uuid, p_service text, p_action text, p_price bigint, p_key text, OUT status text, OUT available bigint, OUT price bigint, OUT t_id bigint, OUT t_account_id uuid, OUT t_delta bigint, OUT t_balance_after bigint, OUT t_kind text, OUT t_reason text, OUT t_created_at timestamp with time zone, OUT t_actor_user_id uuid, OUT t_service text)
    LANGUAGE plpgsql
    AS $$
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

DROP TRIGGER IF EXISTS plan_changes_allowance ON plan_changes;
DROP TRIGGER IF EXISTS credit_transactions_initial_allowance ON credit_transactions;
DROP FUNCTION IF EXISTS userd_grant_expiring(text, text, text, bigint, text, text, text, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS userd_set_plan_allowance(text, bigint, text, bigint, bigint, text);
DROP FUNCTION IF EXISTS userd_plan_change_allowance();
DROP FUNCTION IF EXISTS userd_initial_allowance();
DROP FUNCTION IF EXISTS userd_run_allowances(timestamptz, integer);
DROP FUNCTION IF EXISTS userd_account_refill(uuid, timestamptz);
DROP FUNCTION IF EXISTS userd_account_add_grant(uuid, text, bigint, text, text, timestamptz, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS userd_account_take_grants(uuid, bigint, timestamptz);
DROP FUNCTION IF EXISTS userd_account_expire_due(uuid, timestamptz);
DROP FUNCTION IF EXISTS userd_allowance_period_index(timestamptz, text, timestamptz);
DROP FUNCTION IF EXISTS userd_allowance_period_bound(timestamptz, text, bigint);
DROP TABLE IF EXISTS plan_upgrade_bonuses;
DROP TABLE IF EXISTS allowance_periods;
DROP TABLE IF EXISTS credit_grants;
DROP TABLE IF EXISTS plan_catalog_changes;
DROP TABLE IF EXISTS plan_catalog;
DROP INDEX IF EXISTS accounts_next_refill_idx;
DROP FUNCTION IF EXISTS userd_account_due_credits(uuid, bigint);
-- Fails while the ledger holds ALLOWANCE or EXPIRE entries: a ledger is
-- never rewritten, so a database that used them stays at this version.
ALTER TABLE credit_transactions
    DROP CONSTRAINT credit_transactions_kind_valid,
    ADD CONSTRAINT credit_transactions_kind_valid CHECK (kind IN ('INITIAL', 'DEDUCT', 'GRANT', 'PLAN_BONUS')),
    DROP CONSTRAINT credit_transactions_delta_sign,
    ADD CONSTRAINT credit_transactions_delta_sign
        CHECK ((kind = 'DEDUCT' AND delta < 0) OR (kind <> 'DEDUCT' AND delta >= 0));
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_expiring_credits_non_negative;
ALTER TABLE accounts DROP COLUMN IF EXISTS next_refill_at;
ALTER TABLE accounts DROP COLUMN IF EXISTS expiring_credits;

-- +goose Up
-- One allowance per period for accounts Stripe bills (issue 22). The
-- catalog's refill (userd_account_refill, 00022: the job, a new account's
-- first allowance, a plan change's top-up) skips an account with a live
-- Stripe subscription; invoice.paid grants its allowance (the price map's
-- credits, expiring at the period's end). Only the function's body
-- changes, same signature: nothing a previous release calls changes shape,
-- and a previous release's job running beside this one can at worst grant
-- a Stripe-billed account's allowance once more, as it did before.

-- stripe_customers is read by account in the refill: its unique
-- account_id (00027) is the index; stripe_subscriptions by customer.

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
    --
    -- Stripe (issue 22, 00028): an account with a live Stripe subscription
    -- (a linked customer whose subscription, as userd last fetched it, has
    -- a status that gives a plan: active, trialing, past_due, as
    -- billing.StatusGivesPlan) gets its allowance from invoice.paid, not
    -- from the catalog: it is brought up to date (expiry, next_refill_at)
    -- but granted nothing here, so one period is never paid for twice.
    SELECT * INTO v_account FROM accounts a WHERE a.id = p_account_id FOR UPDATE;
    IF NOT FOUND OR v_account.closed_at IS NOT NULL THEN
        RETURN 0;
    END IF;
    IF v_account.expiring_credits > 0 THEN
        PERFORM userd_account_expire_due(p_account_id, p_now);
    END IF;
    SELECT * INTO v_catalog FROM plan_catalog c WHERE c.plan = v_account.plan;
    IF v_catalog.allowance > 0 AND EXISTS (
        SELECT 1 FROM stripe_customers sc
        JOIN stripe_subscriptions ss ON ss.customer_id = sc.customer_id
        WHERE sc.account_id = p_account_id AND ss.status IN ('active', 'trialing', 'past_due')) THEN
        v_catalog.allowance := 0;
    END IF;
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

-- +goose Down
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

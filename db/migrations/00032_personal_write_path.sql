-- +goose NO TRANSACTION
-- +goose Up
-- The personal-account write path (issue 20: a deduction, a grant, a plan
-- change and a user's creation cost PostgreSQL more than before accounts).
-- Expand-only: the previous release keeps working on this schema.
--
-- 1. The feed triggers of the ledger, of plan changes and of a user's
--    insert get a WHEN clause that skips them when the transaction's writer
--    writes its own events (userd.writer_emits_events, set by every writer
--    since 00020 before its first write). Their functions returned at once
--    in that case; now such a write no longer queues an after-trigger event
--    nor calls PL/pgSQL per row. A writer that does not set it (a body of
--    before 00020, as userd_credit_transactions_feed says; a plain INSERT)
--    still gets its events from the triggers, as before: the WHEN is the
--    functions' own test, on the same transaction-local setting.
--    CREATE OR REPLACE TRIGGER swaps each trigger in one statement, so no
--    write runs between a drop and a create without its trigger.
--
-- 2. The member index of 00026 (an account's entries by the user who acted)
--    is needed only for the entries a member made for another account than
--    its own: an organization's. A personal account's entries name the
--    account's owner as their actor (or none: initial credits, a service's
--    grant) and its ledger pages read (user_id, id) whatever the filter.
--    The partial index below holds only entries whose actor is not the
--    account (actor_user_id <> user_id, which no NULL actor passes), so a
--    personal deduction, grant or sign-up writes one index entry less; this
--    release's ListMemberCreditTransactions reads it (the owner of a
--    personal account in a second branch, from (user_id, id)). Built
--    CONCURRENTLY, outside a transaction, so the ledger keeps taking
--    writes while it builds; a failed build leaves an invalid index that
--    the DROP clears before the next attempt (as in 00026). The full index
--    of 00026 stays until 00036 (post-deploy): the previous release's
--    query reads it.
--
-- 3. One account per organization, by a unique index of the organizations'
--    accounts only: the constraint accounts_organization_id_key (00010)
--    holds an entry for every personal account too (all NULL, all on the
--    index's rightmost page, which every sign-up wrote). Nothing infers it
--    in ON CONFLICT (neither this release nor the previous one); 00036
--    drops it post-deploy. Built CONCURRENTLY, as above.
--
-- 4. A new user's first allowance (00022) is granted by userd_insert_user
--    itself, after its one statement, when the catalog gives FREE an
--    allowance, instead of by the trigger credit_transactions_initial_allowance
--    on its INITIAL entry: that trigger queued an after-trigger event and ran
--    a PL/pgSQL look-up for every sign-up, mostly to find no allowance. It
--    now skips the INITIAL entries of a writer that says it grants the
--    allowance itself (userd.writer_grants_initial_allowance, which
--    userd_insert_user sets around its statement only, so that an
--    organization created later in the same transaction, say in one
--    webhook batch, still gets its allowance from the trigger). A call of
--    userd_insert_user's previous body (running while this commits) does
--    not set it and gets the trigger as before; between the two statements
--    below both may run, and userd_account_refill grants a period once.
DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_member_actor_idx;
CREATE INDEX CONCURRENTLY credit_transactions_member_actor_idx
    ON credit_transactions (user_id, actor_user_id, id) WHERE actor_user_id <> user_id;

DROP INDEX CONCURRENTLY IF EXISTS accounts_organization_key;
CREATE UNIQUE INDEX CONCURRENTLY accounts_organization_key
    ON accounts (organization_id) WHERE organization_id IS NOT NULL;

CREATE OR REPLACE TRIGGER credit_transactions_feed AFTER INSERT ON credit_transactions
    FOR EACH ROW WHEN (current_setting('userd.writer_emits_events', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION userd_credit_transactions_feed();

CREATE OR REPLACE TRIGGER plan_changes_feed AFTER INSERT ON plan_changes
    FOR EACH ROW WHEN (current_setting('userd.writer_emits_events', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION userd_plan_changes_feed();

CREATE OR REPLACE TRIGGER users_feed_insert AFTER INSERT ON users
    FOR EACH ROW WHEN (current_setting('userd.writer_emits_events', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION userd_users_feed();

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_insert_user(
    p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text,
    p_clerk_updated_at bigint, p_initial_credits bigint, p_deleted boolean)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_allowance boolean;
BEGIN
    -- Writes its events itself (00020): the feed triggers skip them.
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    -- Grants the first allowance itself (00032), below: the trigger
    -- credit_transactions_initial_allowance skips its INITIAL entry.
    PERFORM set_config('userd.writer_grants_initial_allowance', 'on', true);
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
    WITH catalog AS MATERIALIZED (
        SELECT EXISTS (SELECT 1 FROM plan_catalog c WHERE c.plan = 'FREE' AND c.allowance > 0) AS free_allowance
    ), new_user AS (
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
                    -- allowance (granted below) replaces the sign-up
                    -- credits.
                    WHEN catalog.free_allowance THEN 0
                    ELSE p_initial_credits END,
               new_user.created_at, new_user.updated_at
        FROM new_user, catalog
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
    SELECT account.id, catalog.free_allowance INTO v_id, v_allowance FROM account, catalog;
    PERFORM set_config('userd.writer_grants_initial_allowance', 'off', true);
    -- The first allowance, in the transaction that creates the account,
    -- after its INITIAL entry and events (where the trigger granted it).
    IF v_id IS NOT NULL AND v_allowance AND NOT p_deleted THEN
        PERFORM userd_account_refill(v_id, now());
    END IF;
    RETURN v_id;
END
$$;
-- +goose StatementEnd

CREATE OR REPLACE TRIGGER credit_transactions_initial_allowance AFTER INSERT ON credit_transactions
    FOR EACH ROW
    WHEN (NEW.kind = 'INITIAL'
          AND current_setting('userd.writer_grants_initial_allowance', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION userd_initial_allowance();

-- +goose Down
CREATE OR REPLACE TRIGGER credit_transactions_initial_allowance AFTER INSERT ON credit_transactions
    FOR EACH ROW WHEN (NEW.kind = 'INITIAL')
    EXECUTE FUNCTION userd_initial_allowance();

-- 00022's body.
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

CREATE OR REPLACE TRIGGER users_feed_insert AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION userd_users_feed();

CREATE OR REPLACE TRIGGER plan_changes_feed AFTER INSERT ON plan_changes
    FOR EACH ROW EXECUTE FUNCTION userd_plan_changes_feed();

CREATE OR REPLACE TRIGGER credit_transactions_feed AFTER INSERT ON credit_transactions
    FOR EACH ROW EXECUTE FUNCTION userd_credit_transactions_feed();

DROP INDEX CONCURRENTLY IF EXISTS credit_transactions_member_actor_idx;

DROP INDEX CONCURRENTLY IF EXISTS accounts_organization_key;

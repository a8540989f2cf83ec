-- +goose Up
-- A batch of sign-ups in one statement (issue 20: a user's creation by
-- webhook cost PostgreSQL more than before accounts, because it writes a
-- personal account row too). Expand-only: the previous release calls the
-- same two functions with the same arguments and gets the same writes.
--
-- 1. userd_insert_users inserts any number of users with their personal
--    accounts, INITIAL entries and first events in one statement: what
--    userd_insert_user did for one (00032), set-based, so that the
--    statement's start-up (planning its five inserts, preparing each
--    table's constraints and indexes) is paid once per batch rather than
--    once per user. userd_insert_user is now that function called for one
--    user, so both paths write alike.
--
-- 2. userd_apply_clerk_batch applies a batch made only of user events that
--    create users (not deletions, each with a Svix id, no Clerk id or Svix
--    id seen before) in one subtransaction: the webhook_events rows, then
--    userd_insert_users. That is what each event's general path
--    (userd_apply_clerk_user) does when it finds neither its Svix id nor
--    its user: claim the Svix id with outcome created, then
--    userd_insert_user. Any surprise (a Clerk id or Svix id that appeared
--    since the check or twice in the batch, an email a live user holds, any
--    error) rolls the subtransaction back and the batch takes the general
--    path, event by event, which decides it as before: the fast path
--    writes only what the general path would have written for the same
--    batch, or nothing.

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_insert_users(
    p_clerk_user_ids text[], p_emails text[], p_first_names text[], p_last_names text[], p_image_urls text[],
    p_clerk_updated_ats bigint[], p_deleted boolean[], p_initial_credits bigint)
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_ids uuid[];
    v_live uuid[];
    v_allowance boolean;
    v_id uuid;
BEGIN
    -- Inserts users (element i of each array is user i) with their
    -- personal accounts (plan FREE) and returns the ids of those inserted,
    -- in the order given; a user whose Clerk id has a row already (or
    -- gets one from a concurrent insert, which this waits for, or comes
    -- earlier in the arrays) is left out. A live user gets p_initial_credits as its INITIAL ledger entry,
    -- or 0 when the plan catalog gives FREE an allowance (00022), whose
    -- first period it is then granted below; p_deleted[i] inserts a
    -- tombstone (no credits, no entry). One statement, with each user's
    -- first events: user.created (user.deleted for a tombstone), then
    -- credits.changed for its INITIAL entry. A new user's stream is new (a
    -- users row is never removed, so no event names its Clerk id yet):
    -- their order_xid is the transaction's, their ids ascend in the order
    -- given.
    --
    -- Writes its events itself (00020): the feed triggers skip them. Grants
    -- the first allowance itself (00032): the trigger
    -- credit_transactions_initial_allowance skips its INITIAL entries.
    PERFORM set_config('userd.writer_emits_events', 'on', true);
    PERFORM set_config('userd.writer_grants_initial_allowance', 'on', true);
    WITH input AS MATERIALIZED (
        -- A Clerk id given twice: its first element counts, the later
        -- ones are left out.
        SELECT DISTINCT ON (i.clerk_user_id) i.*
        FROM unnest(p_clerk_user_ids, p_emails, p_first_names, p_last_names, p_image_urls,
                    p_clerk_updated_ats, p_deleted)
            WITH ORDINALITY AS i(clerk_user_id, email, first_name, last_name, image_url, clerk_updated_at,
                                 deleted, ord)
        ORDER BY i.clerk_user_id, i.ord
    ), catalog AS MATERIALIZED (
        SELECT EXISTS (SELECT 1 FROM plan_catalog c WHERE c.plan = 'FREE' AND c.allowance > 0) AS free_allowance
    ), new_user AS (
        INSERT INTO users (clerk_user_id, email, first_name, last_name, image_url, clerk_updated_at, deleted_at)
        SELECT input.clerk_user_id, input.email, input.first_name, input.last_name, input.image_url,
               input.clerk_updated_at, CASE WHEN input.deleted THEN now() END
        FROM input ORDER BY input.ord
        ON CONFLICT (clerk_user_id) DO NOTHING
        RETURNING id, clerk_user_id, email, first_name, last_name, image_url, created_at, updated_at, deleted_at
    ), account AS (
        INSERT INTO accounts (id, owner_user_id, plan, credits, created_at, updated_at)
        SELECT new_user.id, new_user.id, 'FREE',
               CASE WHEN new_user.deleted_at IS NOT NULL THEN 0
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
        SELECT account.id, account.credits, account.credits, 'INITIAL'
        FROM account JOIN new_user ON new_user.id = account.id
        WHERE new_user.deleted_at IS NULL
        RETURNING t
    ), event AS (
        INSERT INTO feed_events (order_xid, kind, user_id, clerk_user_id, account_id, payload)
        SELECT pg_current_xact_id()::text::bigint, x.kind, new_user.id, new_user.clerk_user_id, x.account_id,
               x.payload
        FROM new_user
        JOIN account ON account.id = new_user.id
        JOIN input ON input.clerk_user_id = new_user.clerk_user_id,
        LATERAL (
            SELECT 1 AS n, CASE WHEN new_user.deleted_at IS NOT NULL THEN 'user.deleted' ELSE 'user.created' END AS kind,
                   NULL::uuid AS account_id,
                   CASE WHEN new_user.deleted_at IS NOT NULL THEN
                       jsonb_build_object('plan', account.plan, 'credits', account.credits,
                                          'deleted_at', new_user.deleted_at)
                   ELSE jsonb_build_object(
                       'email', new_user.email, 'first_name', new_user.first_name, 'last_name', new_user.last_name,
                       'image_url', new_user.image_url, 'plan', account.plan, 'credits', account.credits,
                       'created_at', new_user.created_at, 'updated_at', new_user.updated_at) END AS payload
            UNION ALL
            SELECT 2, 'credits.changed', account.id, userd_credits_changed_payload(initial.t)
            FROM initial WHERE (initial.t).user_id = account.id
        ) x
        ORDER BY input.ord, x.n
    )
    SELECT array_agg(new_user.id ORDER BY input.ord),
           array_agg(new_user.id ORDER BY input.ord) FILTER (WHERE new_user.deleted_at IS NULL),
           bool_and(catalog.free_allowance)
    INTO v_ids, v_live, v_allowance
    FROM new_user JOIN input ON input.clerk_user_id = new_user.clerk_user_id, catalog;
    PERFORM set_config('userd.writer_grants_initial_allowance', 'off', true);
    -- The first allowance, in the transaction that creates the account,
    -- after its INITIAL entry and events (where the trigger granted it).
    IF v_allowance THEN
        FOREACH v_id IN ARRAY coalesce(v_live, '{}') LOOP
            PERFORM userd_account_refill(v_id, now());
        END LOOP;
    END IF;
    RETURN QUERY SELECT unnest(coalesce(v_ids, '{}'));
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_insert_user(
    p_clerk_user_id text, p_email text, p_first_name text, p_last_name text, p_image_url text,
    p_clerk_updated_at bigint, p_initial_credits bigint, p_deleted boolean)
RETURNS uuid
LANGUAGE sql AS $$
    -- userd_insert_users for one user: its id, or NULL when a row for the
    -- Clerk id exists already.
    SELECT id FROM userd_insert_users(ARRAY[p_clerk_user_id], ARRAY[p_email], ARRAY[p_first_name],
        ARRAY[p_last_name], ARRAY[p_image_url], ARRAY[p_clerk_updated_at], ARRAY[p_deleted],
        p_initial_credits) AS id
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_apply_clerk_batch(
    p_events jsonb, p_initial_credits bigint, p_org_initial_credits bigint, p_erase_deleted boolean,
    OUT ordinal integer, OUT outcome text, OUT error_code text)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    v_n integer;
    v_creates integer;
    v_svix_ids text[];
    v_types text[];
    v_ids text[];
    v_emails text[];
    v_first_names text[];
    v_last_names text[];
    v_image_urls text[];
    v_updated_ats bigint[];
BEGIN
    -- The common batch, sign-ups only, in one subtransaction (00034).
    SELECT count(*)::integer,
           count(*) FILTER (WHERE x.kind = 'user' AND NOT coalesce(x.deleted, false)
                                  AND coalesce(x.svix_id, '') <> '' AND coalesce(x.id, '') <> '')::integer,
           array_agg(x.svix_id ORDER BY x.ord), array_agg(x.type ORDER BY x.ord), array_agg(x.id ORDER BY x.ord),
           array_agg(nullif(x.email, '') ORDER BY x.ord), array_agg(nullif(x.first_name, '') ORDER BY x.ord),
           array_agg(nullif(x.last_name, '') ORDER BY x.ord), array_agg(nullif(x.image_url, '') ORDER BY x.ord),
           array_agg(x.updated_at ORDER BY x.ord)
    INTO v_n, v_creates, v_svix_ids, v_types, v_ids, v_emails, v_first_names, v_last_names, v_image_urls,
         v_updated_ats
    FROM ROWS FROM (jsonb_to_recordset(p_events) AS (svix_id text, type text, kind text, deleted boolean,
                                                     id text, email text, first_name text, last_name text,
                                                     image_url text, updated_at bigint))
         WITH ORDINALITY AS x(svix_id, type, kind, deleted, id, email, first_name, last_name, image_url,
                              updated_at, ord);
    -- Neither a Svix id nor a Clerk id of the batch seen before: an index
    -- probe each. (Not "= ANY (array)": this statement's plan is cached
    -- for the session, and planned while the tables were small it scanned
    -- them whole, ever longer as they grew, until the next ANALYZE.)
    IF v_n > 0 AND v_creates = v_n
       AND NOT EXISTS (
           SELECT 1 FROM unnest(v_svix_ids, v_ids) AS k(svix_id, id)
           CROSS JOIN LATERAL (
               SELECT 1 FROM webhook_events w WHERE w.svix_id = k.svix_id
               UNION ALL
               SELECT 1 FROM users u WHERE u.clerk_user_id = k.id
               LIMIT 1) seen) THEN
        BEGIN
            -- No ON CONFLICT: a Svix id recorded since the check, or twice
            -- in the batch, raises and the batch takes the general path.
            INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
            SELECT s.svix_id, s.type, s.id, 'created'
            FROM unnest(v_svix_ids, v_types, v_ids) AS s(svix_id, type, id);
            -- A user left out (its Clerk id inserted since the check, or
            -- twice in the batch) or an email a live user holds
            -- (users_email_live_key raises) sends it there too.
            IF (SELECT count(*) FROM userd_insert_users(v_ids, v_emails, v_first_names, v_last_names,
                    v_image_urls, v_updated_ats, array_fill(false, ARRAY[v_n]), p_initial_credits)) <> v_n THEN
                RAISE EXCEPTION USING ERRCODE = 'unique_violation', MESSAGE = 'a user of the batch exists';
            END IF;
            -- The last statement of the block: nothing may fail once the
            -- rows are returned.
            RETURN QUERY SELECT g, 'created'::text, NULL::text FROM generate_series(1, v_n) g;
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            NULL; -- rolled back: the general path below decides each event.
        END;
    END IF;

    -- The general path (00011): each event in its own subtransaction.
    FOR e, ordinal IN SELECT x.value, x.ordinality::integer FROM jsonb_array_elements(p_events) WITH ORDINALITY x LOOP
        error_code := NULL;
        BEGIN
            CASE e->>'kind'
            WHEN 'user' THEN
                IF (e->>'deleted')::boolean THEN
                    outcome := userd_delete_clerk_user(e->>'svix_id', e->>'type', e->>'id', p_erase_deleted);
                ELSE
                    outcome := userd_apply_clerk_user(nullif(e->>'svix_id', ''), e->>'type', e->>'id',
                        e->>'email', e->>'first_name', e->>'last_name', e->>'image_url', (e->>'updated_at')::bigint,
                        p_initial_credits);
                END IF;
            WHEN 'organization' THEN
                IF (e->>'deleted')::boolean THEN
                    outcome := userd_delete_clerk_organization(e->>'svix_id', e->>'type', e->>'id', p_erase_deleted);
                ELSE
                    outcome := userd_apply_clerk_organization(nullif(e->>'svix_id', ''), e->>'type', e->>'id',
                        e->>'name', e->>'slug', e->>'image_url', (e->>'updated_at')::bigint, p_org_initial_credits);
                END IF;
            WHEN 'membership' THEN
                outcome := userd_apply_clerk_membership(e->>'svix_id', e->>'type', e->>'id',
                    e->>'org_id', e->>'user_id', e->>'role',
                    ARRAY(SELECT jsonb_array_elements_text(e->'permissions')), (e->>'updated_at')::bigint,
                    (e->>'deleted')::boolean);
            END CASE;
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
-- 00011's body.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_apply_clerk_batch(
    p_events jsonb, p_initial_credits bigint, p_org_initial_credits bigint, p_erase_deleted boolean,
    OUT ordinal integer, OUT outcome text, OUT error_code text)
RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
BEGIN
    FOR e, ordinal IN SELECT x.value, x.ordinality::integer FROM jsonb_array_elements(p_events) WITH ORDINALITY x LOOP
        error_code := NULL;
        BEGIN
            CASE e->>'kind'
            WHEN 'user' THEN
                IF (e->>'deleted')::boolean THEN
                    outcome := userd_delete_clerk_user(e->>'svix_id', e->>'type', e->>'id', p_erase_deleted);
                ELSE
                    outcome := userd_apply_clerk_user(nullif(e->>'svix_id', ''), e->>'type', e->>'id',
                        e->>'email', e->>'first_name', e->>'last_name', e->>'image_url', (e->>'updated_at')::bigint,
                        p_initial_credits);
                END IF;
            WHEN 'organization' THEN
                IF (e->>'deleted')::boolean THEN
                    outcome := userd_delete_clerk_organization(e->>'svix_id', e->>'type', e->>'id', p_erase_deleted);
                ELSE
                    outcome := userd_apply_clerk_organization(nullif(e->>'svix_id', ''), e->>'type', e->>'id',
                        e->>'name', e->>'slug', e->>'image_url', (e->>'updated_at')::bigint, p_org_initial_credits);
                END IF;
            WHEN 'membership' THEN
                outcome := userd_apply_clerk_membership(e->>'svix_id', e->>'type', e->>'id',
                    e->>'org_id', e->>'user_id', e->>'role',
                    ARRAY(SELECT jsonb_array_elements_text(e->'permissions')), (e->>'updated_at')::bigint,
                    (e->>'deleted')::boolean);
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            outcome := 'retry';
            error_code := SQLSTATE;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- 00032's body.
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


DROP FUNCTION userd_insert_users(text[], text[], text[], text[], text[], bigint[], boolean[], bigint);

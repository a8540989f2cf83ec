-- +goose Up
-- Clerk Organizations and memberships, mirrored the way users are (issue
-- 20): organization.* and organizationMembership.* deliveries, and states
-- listed by `userd sync-clerk`, are applied by versioned functions, batched
-- with user events by userd_apply_clerk_batch (one call per group commit,
-- each event in its own subtransaction). The tables are 00010's.
--
-- Rules, as for users: an older Clerk updated_at never overwrites a newer
-- state; a deletion is final (a tombstone row stays, and a later delivery
-- of an older state cannot revive it); a membership whose organization or
-- user is not mirrored yet is kept. Locks are taken in one order —
-- organization row, then its account row, then membership rows — and a
-- membership change locks the organization's account row first, so that a
-- spend (which locks the account, then checks the membership) and the
-- change are serialized.

-- Feed events of organizations and memberships go on the organization's
-- stream through 00010's userd_emit_event (clerk_org_id set, no user).

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_organizations_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_account_id uuid;
BEGIN
    -- organization.created / .updated with the organization's state, and
    -- organization.deleted once (also for the tombstone of an organization
    -- never seen). An erasure also erases the name, slug and image from
    -- the organization's earlier events.
    SELECT a.id INTO v_account_id FROM accounts a WHERE a.organization_id = NEW.id;
    IF NEW.deleted_at IS NULL THEN
        PERFORM userd_emit_event(
            CASE TG_OP WHEN 'INSERT' THEN 'organization.created' ELSE 'organization.updated' END,
            NULL, NULL, NEW.clerk_org_id, v_account_id, NULL, jsonb_build_object(
                'id', NEW.id, 'name', NEW.name, 'slug', NEW.slug, 'image_url', NEW.image_url,
                'created_at', NEW.created_at, 'updated_at', NEW.updated_at));
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.deleted_at IS NULL THEN
        PERFORM userd_emit_event('organization.deleted', NULL, NULL, NEW.clerk_org_id, v_account_id, NULL,
            jsonb_build_object('id', NEW.id, 'deleted_at', NEW.deleted_at));
    END IF;
    IF NEW.name IS NULL AND NEW.slug IS NULL AND NEW.image_url IS NULL THEN
        UPDATE feed_events
        SET payload = payload || jsonb_build_object('name', NULL, 'slug', NULL, 'image_url', NULL)
        WHERE clerk_org_id = NEW.clerk_org_id AND kind IN ('organization.created', 'organization.updated');
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER organizations_feed_insert AFTER INSERT ON organizations
    FOR EACH ROW EXECUTE FUNCTION userd_organizations_feed();
CREATE TRIGGER organizations_feed_update AFTER UPDATE OF name, slug, image_url, deleted_at ON organizations
    FOR EACH ROW EXECUTE FUNCTION userd_organizations_feed();

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_memberships_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- membership.created / .updated / .deleted on the organization's
    -- stream; the member is payload.clerk_user_id.
    IF TG_OP = 'UPDATE' AND OLD.deleted_at IS NOT NULL THEN
        RETURN NULL;
    END IF;
    PERFORM userd_emit_event(
        CASE WHEN NEW.deleted_at IS NOT NULL THEN 'membership.deleted'
             WHEN TG_OP = 'INSERT' THEN 'membership.created'
             ELSE 'membership.updated' END,
        NULL, NULL, NEW.clerk_org_id,
        (SELECT a.id FROM organizations o JOIN accounts a ON a.organization_id = o.id
         WHERE o.clerk_org_id = NEW.clerk_org_id),
        NULL, jsonb_build_object(
            'clerk_membership_id', NEW.clerk_membership_id, 'clerk_user_id', NEW.clerk_user_id,
            'role', NEW.role, 'permissions', to_jsonb(NEW.permissions),
            'created_at', NEW.created_at, 'updated_at', NEW.updated_at, 'deleted_at', NEW.deleted_at));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER organization_memberships_feed_insert AFTER INSERT ON organization_memberships
    FOR EACH ROW EXECUTE FUNCTION userd_memberships_feed();
CREATE TRIGGER organization_memberships_feed_update AFTER UPDATE OF role, permissions, deleted_at ON organization_memberships
    FOR EACH ROW EXECUTE FUNCTION userd_memberships_feed();

-- userd_apply_clerk_organization applies one organization.created/updated
-- state (p_svix_id NULL: a state listed by `userd sync-clerk`, no message
-- to record). Outcomes: created (the organization and its account, plan
-- FREE with p_initial_credits, a ledger entry when > 0), updated, stale,
-- ignored_deleted, duplicate.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_apply_clerk_organization(
    p_svix_id text, p_event_type text, p_clerk_org_id text, p_name text, p_slug text, p_image_url text,
    p_updated_at bigint, p_initial_credits bigint)
RETURNS text
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

-- userd_delete_clerk_organization applies organization.deleted (p_svix_id
-- NULL or '': found missing by `userd sync-clerk --delete-missing`): the
-- organization is marked deleted, or a tombstone made, its name, slug and
-- image erased when p_erase, its account closed (the ledger stays: a closed
-- account refuses spends, grants and plan changes) and its live
-- memberships ended. Outcomes: deleted, duplicate.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_delete_clerk_organization(p_svix_id text, p_event_type text, p_clerk_org_id text, p_erase boolean)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_org_id uuid;
BEGIN
    IF coalesce(p_svix_id, '') <> '' THEN
        INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
        VALUES (p_svix_id, p_event_type, p_clerk_org_id, 'deleted')
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
    END IF;
    INSERT INTO organizations (clerk_org_id, deleted_at)
    VALUES (p_clerk_org_id, now())
    ON CONFLICT (clerk_org_id) DO UPDATE
    SET deleted_at = coalesce(organizations.deleted_at, now()), updated_at = now(),
        name = CASE WHEN p_erase THEN NULL ELSE organizations.name END,
        slug = CASE WHEN p_erase THEN NULL ELSE organizations.slug END,
        image_url = CASE WHEN p_erase THEN NULL ELSE organizations.image_url END
    RETURNING id INTO v_org_id;
    UPDATE accounts SET closed_at = coalesce(closed_at, now()), updated_at = now()
    WHERE organization_id = v_org_id AND closed_at IS NULL;
    UPDATE organization_memberships SET deleted_at = now(), updated_at = now()
    WHERE clerk_org_id = p_clerk_org_id AND deleted_at IS NULL;
    RETURN 'deleted';
END
$$;
-- +goose StatementEnd

-- userd_apply_clerk_membership applies one organizationMembership.created,
-- .updated or (p_deleted) .deleted state (p_svix_id NULL: listed by
-- `userd sync-clerk`, or '' with p_deleted: found missing by it). The
-- organization's account row is locked first (when the organization has
-- one). Outcomes: created, updated, stale, deleted (final, whatever the
-- version: Clerk deletes a membership after its last update),
-- ignored_deleted (the membership or its organization is deleted),
-- duplicate. A membership of an organization or a user not mirrored yet is
-- stored all the same.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_apply_clerk_membership(
    p_svix_id text, p_event_type text, p_clerk_membership_id text, p_clerk_org_id text, p_clerk_user_id text,
    p_role text, p_permissions text[], p_updated_at bigint, p_deleted boolean)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_m organization_memberships%ROWTYPE;
    v_found boolean;
    v_org_deleted boolean;
    v_outcome text;
    v_claimed boolean := false;
BEGIN
    p_svix_id := nullif(p_svix_id, '');
    IF p_svix_id IS NOT NULL AND EXISTS (SELECT 1 FROM webhook_events w WHERE w.svix_id = p_svix_id) THEN
        RETURN 'duplicate';
    END IF;
    -- The account first (see the Locking rules of ACCOUNTS-DESIGN.md): a
    -- spend by this member either committed before, or runs after this
    -- change commits and sees it.
    PERFORM 1 FROM accounts a
    WHERE a.organization_id = (SELECT o.id FROM organizations o WHERE o.clerk_org_id = p_clerk_org_id)
    FOR UPDATE;
    LOOP
        -- A statement of its own, after the lock: its snapshot sees a
        -- deletion of the organization that committed while it waited.
        SELECT o.deleted_at IS NOT NULL INTO v_org_deleted FROM organizations o
        WHERE o.clerk_org_id = p_clerk_org_id;
        SELECT * INTO v_m FROM organization_memberships m
        WHERE m.clerk_membership_id = p_clerk_membership_id
        FOR UPDATE;
        v_found := FOUND;
        v_outcome := CASE
            WHEN v_found AND v_m.deleted_at IS NOT NULL THEN 'ignored_deleted'
            WHEN p_deleted THEN 'deleted'
            WHEN coalesce(v_org_deleted, false) THEN 'ignored_deleted'
            WHEN NOT v_found THEN 'created'
            WHEN v_m.clerk_updated_at >= p_updated_at THEN 'stale'
            ELSE 'updated'
        END;

        IF p_svix_id IS NULL THEN
            NULL;
        ELSIF NOT v_claimed THEN
            INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
            VALUES (p_svix_id, p_event_type, p_clerk_membership_id, v_outcome)
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
        IF v_found THEN
            -- updated, or deleted: a deletion keeps the newest state it
            -- knows of.
            UPDATE organization_memberships m
            SET role = CASE WHEN m.clerk_updated_at < p_updated_at THEN p_role ELSE m.role END,
                permissions = CASE WHEN m.clerk_updated_at < p_updated_at THEN p_permissions ELSE m.permissions END,
                clerk_updated_at = greatest(m.clerk_updated_at, p_updated_at),
                deleted_at = CASE WHEN p_deleted THEN now() END,
                updated_at = now()
            WHERE m.clerk_membership_id = p_clerk_membership_id;
            RETURN v_outcome;
        END IF;
        INSERT INTO organization_memberships
            (clerk_membership_id, clerk_org_id, clerk_user_id, role, permissions, clerk_updated_at, deleted_at)
        VALUES (p_clerk_membership_id, p_clerk_org_id, p_clerk_user_id, p_role, p_permissions, p_updated_at,
                CASE WHEN p_deleted THEN now() END)
        ON CONFLICT (clerk_membership_id) DO NOTHING;
        IF FOUND THEN
            RETURN v_outcome;
        END IF;
        -- Inserted concurrently: lock it on the next pass.
    END LOOP;
END
$$;
-- +goose StatementEnd

-- userd_apply_clerk_batch applies a batch of Clerk deliveries — users,
-- organizations and memberships — in one call and one transaction, each in
-- its own subtransaction: one that fails (outcome 'retry' with its
-- SQLSTATE) leaves the others applied. p_events is a JSON array of
-- {"svix_id", "type", "kind": "user"|"organization"|"membership",
-- "deleted", "id", ...the state}; one row per event, in order.
-- userd_apply_clerk_events (00003) stays for the previous release.
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

-- userd_live_membership is the newest live membership of a user in a live
-- organization (no row: not a member): what spending from an organization
-- account checks after locking the account (membership changes lock it
-- too). A member whose user is deleted in userd is not a member. It also
-- takes a KEY SHARE lock on the membership row, which a membership change
-- (SELECT ... FOR UPDATE) conflicts with: a spend and a removal are
-- serialized even in the one case the account lock cannot order them (an
-- organization whose account was created while the removal ran), and a
-- spend that waited for a removal sees the membership gone.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_live_membership(p_clerk_org_id text, p_clerk_user_id text)
RETURNS SETOF organization_memberships
LANGUAGE sql AS $$
    SELECT m.* FROM organization_memberships m
    WHERE m.clerk_org_id = p_clerk_org_id AND m.clerk_user_id = p_clerk_user_id AND m.deleted_at IS NULL
      AND EXISTS (SELECT 1 FROM organizations o WHERE o.clerk_org_id = m.clerk_org_id AND o.deleted_at IS NULL)
      AND NOT EXISTS (SELECT 1 FROM users u WHERE u.clerk_user_id = m.clerk_user_id AND u.deleted_at IS NOT NULL)
    ORDER BY m.clerk_updated_at DESC, m.clerk_membership_id
    LIMIT 1
    FOR KEY SHARE OF m
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION userd_live_membership(text, text);
DROP FUNCTION userd_apply_clerk_batch(jsonb, bigint, bigint, boolean);
DROP FUNCTION userd_apply_clerk_membership(text, text, text, text, text, text, text[], bigint, boolean);
DROP FUNCTION userd_delete_clerk_organization(text, text, text, boolean);
DROP FUNCTION userd_apply_clerk_organization(text, text, text, text, text, text, bigint, bigint);
DROP TRIGGER organization_memberships_feed_update ON organization_memberships;
DROP TRIGGER organization_memberships_feed_insert ON organization_memberships;
DROP FUNCTION userd_memberships_feed();
DROP TRIGGER organizations_feed_update ON organizations;
DROP TRIGGER organizations_feed_insert ON organizations;
DROP FUNCTION userd_organizations_feed();

-- +goose Up
-- user_events is the change feed's outbox: one row per committed change of
-- a user, its plan or its credits, written by the row triggers below in the
-- same statement — so in the same transaction and the same round trip — as
-- the change. A change that rolls back leaves no event; a write that
-- changes nothing (a replayed key, a duplicate or stale webhook delivery)
-- fires no trigger and leaves none.
--
-- Order without gaps. An identity value is taken before commit, so a reader
-- that resumes "after id N" skips a row with a lower id that commits later.
-- Readers therefore hand out only events of finished transactions: those
-- whose order_xid is below the xmin of the reading statement's snapshot
-- (every transaction with a lower id has committed or rolled back, and no
-- new one can get a lower id). Those events are final, and they are read in
-- (order_xid, id) order, which is the same for every reader on every
-- replica. order_xid is the writing transaction's id (pg_current_xact_id),
-- raised when needed to the order_xid of the user's previous event, so that
-- one user's events are in the order they were applied even when a
-- transaction got its id before it locked the user (a webhook batch): every
-- change of a user happens under the user's row lock, so that previous
-- event is committed and visible. Raising it never breaks the no-gap rule,
-- which needs only order_xid >= the writer's own id.
--
-- order_xid is an xid8 (epoch and xid, which never wraps) kept as bigint.
CREATE TABLE user_events (
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    order_xid      bigint      NOT NULL,
    kind           text        NOT NULL,
    user_id        uuid        NOT NULL,
    clerk_user_id  text        NOT NULL,
    -- The change: the user (user.created, user.updated), the plan change or
    -- the ledger entry. Personal data of a user whose deletion erased it is
    -- erased here too.
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_events_pkey PRIMARY KEY (order_xid, id),
    CONSTRAINT user_events_kind_valid CHECK (kind IN (
        'user.created', 'user.updated', 'user.deleted', 'plan.changed', 'credits.changed'))
);

-- One user's events in feed order: watching one user, and the trigger's
-- look-up of the user's previous event.
CREATE INDEX user_events_clerk_user_id_order_idx ON user_events (clerk_user_id, order_xid, id);

-- user_events_pruned remembers where pruning stopped: every event at or
-- before this position has been deleted, so a cursor before it has missed
-- events and must resynchronise.
CREATE TABLE user_events_pruned (
    singleton  boolean     PRIMARY KEY DEFAULT true,
    order_xid  bigint      NOT NULL DEFAULT 0,
    id         bigint      NOT NULL DEFAULT 0,
    pruned_at  timestamptz,
    CONSTRAINT user_events_pruned_singleton CHECK (singleton)
);
INSERT INTO user_events_pruned DEFAULT VALUES;

-- userd_emit_user_event appends one event of the current transaction.
-- +goose StatementBegin
CREATE FUNCTION userd_emit_user_event(p_kind text, p_user_id uuid, p_clerk_user_id text, p_payload jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_order_xid bigint := pg_current_xact_id()::text::bigint;
    v_previous bigint;
BEGIN
    SELECT e.order_xid INTO v_previous FROM user_events e
    WHERE e.clerk_user_id = p_clerk_user_id
    ORDER BY e.order_xid DESC, e.id DESC
    LIMIT 1;
    INSERT INTO user_events (order_xid, kind, user_id, clerk_user_id, payload)
    VALUES (greatest(v_order_xid, v_previous), p_kind, p_user_id, p_clerk_user_id, p_payload);
END
$$;
-- +goose StatementEnd

-- userd_user_event_payload is the user as an event shows it.
-- +goose StatementBegin
CREATE FUNCTION userd_user_event_payload(u users)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'email', u.email, 'first_name', u.first_name, 'last_name', u.last_name,
        'image_url', u.image_url, 'plan', u.plan, 'credits', u.credits,
        'created_at', u.created_at, 'updated_at', u.updated_at)
$$;
-- +goose StatementEnd

-- userd_users_feed emits user.created, user.updated and user.deleted. A
-- deletion that erased the user's personal data (USERD_KEEP_DELETED_USER_DATA
-- off, the default), or a later erasure of a deleted user's kept data
-- (userd erase-user), erases it from the user's earlier events as well, so
-- the outbox keeps none of it for the rest of its retention. A deleted
-- user emits nothing more.
-- +goose StatementBegin
CREATE FUNCTION userd_users_feed()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.deleted_at IS NULL THEN
        PERFORM userd_emit_user_event(
            CASE TG_OP WHEN 'INSERT' THEN 'user.created' ELSE 'user.updated' END,
            NEW.id, NEW.clerk_user_id, userd_user_event_payload(NEW));
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.deleted_at IS NULL THEN
        -- A deletion, or a tombstone for a user never seen.
        PERFORM userd_emit_user_event('user.deleted', NEW.id, NEW.clerk_user_id,
            jsonb_build_object('plan', NEW.plan, 'credits', NEW.credits, 'deleted_at', NEW.deleted_at));
    END IF;
    IF NEW.email IS NULL AND NEW.first_name IS NULL AND NEW.last_name IS NULL AND NEW.image_url IS NULL THEN
        UPDATE user_events
        SET payload = payload || jsonb_build_object('email', NULL, 'first_name', NULL, 'last_name', NULL, 'image_url', NULL)
        WHERE clerk_user_id = NEW.clerk_user_id AND kind IN ('user.created', 'user.updated');
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- Profile changes and deletions only: moving credits or the plan updates
-- the row too, but those changes have events of their own, and a newer
-- Clerk state with the same profile changes nothing a consumer sees.
CREATE TRIGGER users_feed_insert AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION userd_users_feed();
CREATE TRIGGER users_feed_update AFTER UPDATE OF email, first_name, last_name, image_url, deleted_at ON users
    FOR EACH ROW
    WHEN ((OLD.email, OLD.first_name, OLD.last_name, OLD.image_url, OLD.deleted_at) IS DISTINCT FROM
          (NEW.email, NEW.first_name, NEW.last_name, NEW.image_url, NEW.deleted_at))
    EXECUTE FUNCTION userd_users_feed();

-- userd_credit_transactions_feed emits credits.changed for a ledger entry.
-- +goose StatementBegin
CREATE FUNCTION userd_credit_transactions_feed()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM userd_emit_user_event('credits.changed', NEW.user_id,
        (SELECT u.clerk_user_id FROM users u WHERE u.id = NEW.user_id),
        jsonb_build_object(
            'id', NEW.id, 'delta', NEW.delta, 'balance_after', NEW.balance_after, 'kind', NEW.kind,
            'reason', NEW.reason, 'idempotency_key', NEW.idempotency_key, 'created_at', NEW.created_at));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER credit_transactions_feed AFTER INSERT ON credit_transactions
    FOR EACH ROW EXECUTE FUNCTION userd_credit_transactions_feed();

-- userd_plan_changes_feed emits plan.changed.
-- +goose StatementBegin
CREATE FUNCTION userd_plan_changes_feed()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM userd_emit_user_event('plan.changed', NEW.user_id,
        (SELECT u.clerk_user_id FROM users u WHERE u.id = NEW.user_id),
        jsonb_build_object(
            'id', NEW.id, 'previous_plan', NEW.previous_plan, 'plan', NEW.plan,
            'bonus_credits', NEW.bonus_credits, 'transaction_id', NEW.transaction_id,
            'reason', NEW.reason, 'idempotency_key', NEW.idempotency_key, 'created_at', NEW.created_at));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER plan_changes_feed AFTER INSERT ON plan_changes
    FOR EACH ROW EXECUTE FUNCTION userd_plan_changes_feed();

-- userd_prune_user_events deletes up to p_limit of the oldest final events
-- created before p_before, in feed order and stopping at the first newer
-- one, so that what is deleted is always a prefix of the feed and
-- user_events_pruned marks its end exactly. Replicas prune one at a time
-- (the row lock on user_events_pruned). Returns how many it deleted.
-- +goose StatementBegin
CREATE FUNCTION userd_prune_user_events(p_before timestamptz, p_limit integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_horizon bigint;
    v_last_xid bigint;
    v_last_id bigint;
    v_count bigint;
BEGIN
    PERFORM 1 FROM user_events_pruned FOR UPDATE;
    v_horizon := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    SELECT h.order_xid, h.id INTO v_last_xid, v_last_id
    FROM (
        SELECT e.order_xid, e.id, e.created_at,
               bool_and(e.created_at < p_before) OVER (ORDER BY e.order_xid, e.id) AS all_old
        FROM (SELECT * FROM user_events
              WHERE order_xid < v_horizon
              ORDER BY order_xid, id
              LIMIT p_limit) e
    ) h
    WHERE h.all_old
    ORDER BY h.order_xid DESC, h.id DESC
    LIMIT 1;
    IF v_last_xid IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM user_events WHERE (order_xid, id) <= (v_last_xid, v_last_id);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE user_events_pruned SET order_xid = v_last_xid, id = v_last_id, pruned_at = now();
    RETURN v_count;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION userd_prune_user_events(timestamptz, integer);
DROP TRIGGER plan_changes_feed ON plan_changes;
DROP FUNCTION userd_plan_changes_feed();
DROP TRIGGER credit_transactions_feed ON credit_transactions;
DROP FUNCTION userd_credit_transactions_feed();
DROP TRIGGER users_feed_update ON users;
DROP TRIGGER users_feed_insert ON users;
DROP FUNCTION userd_users_feed();
DROP FUNCTION userd_user_event_payload(users);
DROP FUNCTION userd_emit_user_event(text, uuid, text, jsonb);
DROP TABLE user_events_pruned;
DROP TABLE user_events;

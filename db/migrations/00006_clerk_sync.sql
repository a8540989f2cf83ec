-- +goose Up
-- userd_delete_clerk_user as in 00003, except that a deletion without a Svix
-- message id (empty or NULL: a user found missing from Clerk by
-- `userd sync-clerk --delete-missing`, or erased by `userd erase-user`)
-- records no message, exactly as userd_apply_clerk_user does for states
-- without one. Before, every such call claimed the message id '' and all
-- but the first answered 'duplicate' without deleting anything.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION userd_delete_clerk_user(p_svix_id text, p_event_type text, p_clerk_user_id text, p_erase boolean)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(p_svix_id, '') <> '' THEN
        INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
        VALUES (p_svix_id, p_event_type, p_clerk_user_id, 'deleted')
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN 'duplicate';
        END IF;
    END IF;
    INSERT INTO users (clerk_user_id, plan, credits, deleted_at)
    VALUES (p_clerk_user_id, 'FREE', 0, now())
    ON CONFLICT (clerk_user_id) DO UPDATE
    SET deleted_at = coalesce(users.deleted_at, now()), updated_at = now(),
        email = CASE WHEN p_erase THEN NULL ELSE users.email END,
        first_name = CASE WHEN p_erase THEN NULL ELSE users.first_name END,
        last_name = CASE WHEN p_erase THEN NULL ELSE users.last_name END,
        image_url = CASE WHEN p_erase THEN NULL ELSE users.image_url END;
    RETURN 'deleted';
END
$$;
-- +goose StatementEnd

-- clerk_sync_state is the one row that spaces the periodic Clerk reconcile
-- of a fleet: the replica holding the sync lock starts a run only when the
-- last one (of any replica, or `userd sync-clerk`) started at least an
-- interval ago. It also tells operators how the last run ended.
CREATE TABLE clerk_sync_state (
    id               boolean     PRIMARY KEY DEFAULT true,
    last_started_at  timestamptz NOT NULL,
    last_finished_at timestamptz,
    -- ok, failed, refused (--delete-missing safety stop), or NULL while running.
    last_result      text,
    CONSTRAINT clerk_sync_state_one_row CHECK (id)
);

-- +goose Down
-- userd_delete_clerk_user keeps the fix above: it answers as 00003's did
-- for every call with a message id, so the release before this one runs on
-- it, and restoring the old body would copy it once more (db/README.md).
DROP TABLE clerk_sync_state;

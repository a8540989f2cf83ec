-- Coordination of Clerk reconcile runs (see internal/clerksync): one
-- session-level advisory lock so that one run at a time goes on across
-- replicas, and the clerk_sync_state row that spaces periodic runs.

-- TryClerkSyncLock takes the sync lock for the session, if free. It is held
-- on a connection set aside for the run and released by
-- ClerkSyncUnlock, or by PostgreSQL when that connection ends.
-- name: TryClerkSyncLock :one
SELECT pg_try_advisory_lock(@lock_key::bigint)::boolean AS acquired;

-- name: ClerkSyncUnlock :one
SELECT pg_advisory_unlock(@lock_key::bigint)::boolean AS released;

-- StartClerkSync records that a run starts, unless one started less than
-- min_interval_seconds ago (then it returns no row: the run is not due).
-- name: StartClerkSync :one
INSERT INTO clerk_sync_state AS s (id, last_started_at) VALUES (true, now())
ON CONFLICT (id) DO UPDATE
SET last_started_at = now(), last_finished_at = NULL, last_result = NULL
WHERE s.last_started_at <= now() - make_interval(secs => @min_interval_seconds::float8)
RETURNING s.last_started_at;

-- name: FinishClerkSync :exec
UPDATE clerk_sync_state SET last_finished_at = now(), last_result = @result::text WHERE id;

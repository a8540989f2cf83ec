-- Queries on the change feed (user_events; see db/schema.sql).
--
-- A read returns the final events after a position, in feed order, with the
-- horizon of its own snapshot: every event of a transaction below horizon is
-- final (committed or gone), and every event at or before (pruned_xid,
-- pruned_id) has been pruned. Both come from the statement's one snapshot,
-- so a read can never miss events to a prune that ran between two queries.
-- The first row always exists; its event columns are NULL when there are
-- no events.

-- name: ReadUserEvents :many
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
           p.order_xid AS pruned_xid, p.id AS pruned_id
    FROM user_events_pruned p
), page AS (
    SELECT ue.* FROM user_events ue
    WHERE (ue.order_xid, ue.id) > (@after_xid::bigint, @after_id::bigint)
      AND ue.order_xid < (SELECT horizon FROM horizon)
    ORDER BY ue.order_xid, ue.id
    LIMIT @row_limit::int
)
SELECT h.horizon, h.pruned_xid, h.pruned_id,
       e.order_xid, e.id, e.kind, e.user_id, e.clerk_user_id, e.payload, e.created_at
FROM horizon h
LEFT JOIN page e ON true
ORDER BY e.order_xid, e.id;

-- name: ReadUserEventsOfUser :many
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
           p.order_xid AS pruned_xid, p.id AS pruned_id
    FROM user_events_pruned p
), page AS (
    SELECT ue.* FROM user_events ue
    WHERE ue.clerk_user_id = @clerk_user_id::text
      AND (ue.order_xid, ue.id) > (@after_xid::bigint, @after_id::bigint)
      AND ue.order_xid < (SELECT horizon FROM horizon)
    ORDER BY ue.order_xid, ue.id
    LIMIT @row_limit::int
)
SELECT h.horizon, h.pruned_xid, h.pruned_id,
       e.order_xid, e.id, e.kind, e.user_id, e.clerk_user_id, e.payload, e.created_at
FROM horizon h
LEFT JOIN page e ON true
ORDER BY e.order_xid, e.id;

-- PruneUserEvents deletes up to row_limit of the oldest events created
-- before a time (see userd_prune_user_events).
-- name: PruneUserEvents :one
SELECT userd_prune_user_events(@before::timestamptz, @row_limit::int)::bigint AS pruned;

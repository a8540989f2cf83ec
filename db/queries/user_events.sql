-- Queries on the change feed (feed_events; see db/schema.sql).
--
-- A read returns the final events after a position, in feed order, with the
-- horizon of its own snapshot: every event of a transaction below horizon is
-- final (committed or gone), and every event at or before (pruned_xid,
-- pruned_id) has been pruned. Both come from the statement's one snapshot,
-- so a read can never miss events to a prune that ran between two queries.
-- The first row always exists; its event columns are NULL when there are
-- no events.
--
-- page_lsn is a WAL position (bytes from 0/0) at or past the commit of
-- every transaction the snapshot shows: on the primary, where its WAL ended
-- when the snapshot was taken; on a hot standby (in_recovery), how far it
-- had received WAL — received is at or past everything replayed, and the
-- replay position alone can trail a commit that is already visible.
-- sync_required says the primary has synchronous_standby_names set: the
-- caller then hands the page out only once a synchronous standby has
-- flushed up to page_lsn (SyncStandbyFlushed), so that no event, and no
-- horizon, comes from a transaction a failover could lose
-- (internal/store/feed.go). A page read on a standby is checked the same
-- way, on the primary.
--
-- horizon_xmax is the snapshot's xmax: every transaction that had
-- committed before the snapshot was taken (and every event it wrote, whose
-- order_xid is its xid or an earlier event's) is below it. The read cache
-- trusts a poll's time and the previous poll's page_lsn once the hub's
-- head has passed it (internal/store/readcache.go).

-- name: ReadUserEvents :many
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS horizon_xmax,
           p.order_xid AS pruned_xid, p.id AS pruned_id,
           pg_is_in_recovery() AS in_recovery,
           coalesce(CASE WHEN pg_is_in_recovery()
                         THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0'::pg_lsn
                         ELSE pg_current_wal_insert_lsn() - '0/0'::pg_lsn END, 0)::bigint AS page_lsn,
           (NOT pg_is_in_recovery() AND current_setting('synchronous_standby_names') <> '') AS sync_required
    -- One row (the table's singleton): LIMIT 1 tells the planner so,
    -- since autovacuum never analyzes a table this small.
    FROM (SELECT * FROM user_events_pruned LIMIT 1) p
), page AS (
    SELECT ue.* FROM feed_events ue
    WHERE (ue.order_xid, ue.id) > (@after_xid::bigint, @after_id::bigint)
      AND ue.order_xid < (SELECT horizon FROM horizon)
    ORDER BY ue.order_xid, ue.id
    LIMIT @row_limit::int
)
SELECT h.horizon, h.horizon_xmax, h.pruned_xid, h.pruned_id, h.in_recovery, h.page_lsn, h.sync_required,
       e.order_xid, e.id, e.kind, e.user_id, e.clerk_user_id, e.payload, e.created_at,
       e.account_id, e.clerk_org_id, e.actor_clerk_user_id
FROM horizon h
LEFT JOIN page e ON true
ORDER BY e.order_xid, e.id;

-- name: ReadUserEventsOfUser :many
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS horizon_xmax,
           p.order_xid AS pruned_xid, p.id AS pruned_id,
           pg_is_in_recovery() AS in_recovery,
           coalesce(CASE WHEN pg_is_in_recovery()
                         THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0'::pg_lsn
                         ELSE pg_current_wal_insert_lsn() - '0/0'::pg_lsn END, 0)::bigint AS page_lsn,
           (NOT pg_is_in_recovery() AND current_setting('synchronous_standby_names') <> '') AS sync_required
    -- One row (the table's singleton): LIMIT 1 tells the planner so,
    -- since autovacuum never analyzes a table this small.
    FROM (SELECT * FROM user_events_pruned LIMIT 1) p
), page AS (
    SELECT ue.* FROM feed_events ue
    WHERE ue.clerk_user_id = @clerk_user_id::text
      AND (ue.order_xid, ue.id) > (@after_xid::bigint, @after_id::bigint)
      AND ue.order_xid < (SELECT horizon FROM horizon)
    ORDER BY ue.order_xid, ue.id
    LIMIT @row_limit::int
)
SELECT h.horizon, h.horizon_xmax, h.pruned_xid, h.pruned_id, h.in_recovery, h.page_lsn, h.sync_required,
       e.order_xid, e.id, e.kind, e.user_id, e.clerk_user_id, e.payload, e.created_at,
       e.account_id, e.clerk_org_id, e.actor_clerk_user_id
FROM horizon h
LEFT JOIN page e ON true
ORDER BY e.order_xid, e.id;

-- PruneUserEvents deletes up to row_limit of the oldest events created
-- before a time (see userd_prune_user_events).
-- name: PruneUserEvents :one
SELECT userd_prune_user_events(@before::timestamptz, @row_limit::int)::bigint AS pruned;

-- SyncStandbyFlushed is how far (bytes from 0/0, -1: none) the most advanced
-- synchronous standby has flushed WAL, how many standbys this role may
-- not see the state of (reading it takes pg_read_all_stats, e.g. through
-- pg_monitor), and whether synchronous_standby_names is set.
-- name: SyncStandbyFlushed :one
SELECT current_setting('synchronous_standby_names') <> '' AS required,
       coalesce(max((flush_lsn - '0/0'::pg_lsn)::bigint) FILTER (WHERE sync_state IN ('sync', 'quorum')), -1)::bigint AS flushed,
       count(*) FILTER (WHERE sync_state IS NULL)::bigint AS hidden
FROM pg_catalog.pg_stat_get_wal_senders();

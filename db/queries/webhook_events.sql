-- Queries on processed webhook deliveries.

-- DeleteWebhookEventsBefore forgets up to row_limit messages processed
-- before a time, oldest first, so that pruning never holds long locks.
-- name: DeleteWebhookEventsBefore :execrows
DELETE FROM webhook_events AS w
WHERE w.svix_id IN (
    SELECT old.svix_id FROM webhook_events AS old
    WHERE old.processed_at < @before::timestamptz
    ORDER BY old.processed_at
    LIMIT @row_limit::int
);

-- ApplyClerkEvents applies a batch of Clerk user deliveries in one round
-- trip, each in its own subtransaction (see userd_apply_clerk_events in
-- db/schema.sql); one row per event, in order. The previous release's
-- path, kept for tests; userd applies every Clerk event (users,
-- organizations, memberships) with ApplyClerkBatch (organizations.sql).
-- name: ApplyClerkEvents :many
SELECT r.ordinal::integer AS ordinal, r.outcome::text AS outcome, coalesce(r.error_code, '')::text AS error_code
FROM userd_apply_clerk_events(
    @svix_ids::text[], @event_types::text[], @clerk_user_ids::text[], @deleted::boolean[],
    @emails::text[], @first_names::text[], @last_names::text[], @image_urls::text[],
    @updated_ats::bigint[], @initial_credits::bigint, @erase_deleted::boolean) AS r;

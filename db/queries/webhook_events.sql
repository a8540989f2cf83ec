-- Queries on processed webhook deliveries.

-- InsertWebhookEvent records an applied message with its outcome. It
-- returns no row when the message was already recorded; a concurrent insert
-- of the same id waits for the other transaction and then returns no row if
-- that one committed.
-- name: InsertWebhookEvent :one
INSERT INTO webhook_events (svix_id, event_type, object_id, outcome)
VALUES (@svix_id, @event_type, @object_id, @outcome)
ON CONFLICT (svix_id) DO NOTHING
RETURNING svix_id;

-- name: GetWebhookEvent :one
SELECT * FROM webhook_events WHERE svix_id = @svix_id;

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

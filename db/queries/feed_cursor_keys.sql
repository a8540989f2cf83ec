-- The secrets that seal change feed cursors (see the 00008 migration).

-- name: FeedCursorKeys :many
SELECT id, secret FROM feed_cursor_keys ORDER BY id;

-- CreateFeedCursorKey creates the first key; replicas racing to create it
-- all read back the one that won.
-- name: CreateFeedCursorKey :exec
INSERT INTO feed_cursor_keys (id, secret) VALUES (1, @secret::bytea) ON CONFLICT (id) DO NOTHING;

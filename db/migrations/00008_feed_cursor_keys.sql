-- +goose Up
-- feed_cursor_keys holds the deployment's secrets that seal change feed
-- cursors (internal/feed/cursor.go): a cursor is the feed position
-- encrypted and authenticated with a key derived from one of them, so it
-- reveals nothing of the server (the position is a transaction id: the
-- database's whole write rate) and cannot be forged. Every replica reads
-- the same rows, so a cursor from one resumes on any other. userd creates
-- key 1 on first use; a key with a higher id, inserted by an operator,
-- rotates them: new cursors are sealed with the highest, every key present
-- still opens its own.
CREATE TABLE feed_cursor_keys (
    id         smallint PRIMARY KEY CHECK (id BETWEEN 1 AND 255),
    secret     bytea NOT NULL CHECK (octet_length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE feed_cursor_keys;

-- +goose Up
-- webhook_events remembers every Svix message applied, so that a redelivery
-- (same svix-id) is answered without applying it again. The row is written
-- in the same transaction as the change it caused.
CREATE TABLE webhook_events (
    svix_id      text        PRIMARY KEY,
    event_type   text        NOT NULL,
    -- The Clerk object the event was about (e.g. "user_..."), for operators.
    object_id    text        NOT NULL DEFAULT '',
    -- What applying it did: created, updated, stale, deleted, ...
    outcome      text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_events_processed_at_idx ON webhook_events (processed_at);

-- +goose Down
DROP TABLE webhook_events;

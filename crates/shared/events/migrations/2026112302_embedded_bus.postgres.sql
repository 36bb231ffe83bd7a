-- The embedded bus: a durable, append-only event log with per-consumer offsets.
CREATE TABLE event_log (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    envelope TEXT NOT NULL,
    appended_at BIGINT NOT NULL
);

CREATE TABLE event_consumer_offsets (
    consumer TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Consumers record each event they handled, in the handler's own transaction, so an
-- at-least-once delivery is processed exactly once.
CREATE TABLE processed_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

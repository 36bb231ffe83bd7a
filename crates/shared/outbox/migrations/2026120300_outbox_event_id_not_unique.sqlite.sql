-- Event ids are minted by the platform (UUIDv7), one per event, and the relay fences
-- its updates by `seq`: a unique index on `event_id` was one more entry, with its
-- uniqueness check, on every event written, and nothing read through it. SQLite
-- cannot drop a column's UNIQUE, so the table is rebuilt without it.
CREATE TABLE outbox_events_rebuilt (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    envelope TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published', 'failed')),
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error TEXT,
    published_at BIGINT
);
INSERT INTO outbox_events_rebuilt
    (seq, event_id, subject, envelope, correlation_id, occurred_at, status, attempts, next_attempt_at,
     lease_owner, lease_until, last_error, published_at)
SELECT seq, event_id, subject, envelope, correlation_id, occurred_at, status, attempts, next_attempt_at,
       lease_owner, lease_until, last_error, published_at
FROM outbox_events;
DROP TABLE outbox_events;
ALTER TABLE outbox_events_rebuilt RENAME TO outbox_events;
CREATE INDEX ix_outbox_events_pending ON outbox_events (status, next_attempt_at);

CREATE TABLE outbox_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
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
CREATE INDEX ix_outbox_events_pending ON outbox_events (status, next_attempt_at);

CREATE TABLE outbox_dead_letters (
    event_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    dead_letter_envelope TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    failed_at BIGINT NOT NULL,
    forwarded_at BIGINT
);
CREATE INDEX ix_outbox_dead_letters_unforwarded ON outbox_dead_letters (forwarded_at);

CREATE TABLE policy_values (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    description TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

INSERT INTO policy_values (key, value, description, updated_at) VALUES
    ('outbox.relay.batch_size', '50', 'Outbox rows one relay claims per pass.', 0),
    ('outbox.relay.interval_ms', '2000', 'Pause between relay passes when nothing is pending; jitter is added.', 0),
    ('outbox.relay.jitter_ms', '200', 'Random spread added to relay pauses so several relays do not move in step.', 0),
    ('outbox.relay.lease_seconds', '30', 'How long a relay owns the rows it claimed before another may take them.', 0),
    ('outbox.max_attempts', '10', 'Publish attempts before an outbox row is marked failed and copied to the dead-letter queue.', 0),
    ('outbox.retry.base_ms', '1000', 'First retry delay; doubles on each failed attempt.', 0),
    ('outbox.retry.max_ms', '60000', 'Upper bound of the retry delay.', 0),
    ('idempotency.ttl_seconds', '86400', 'How long a stored idempotent response is replayed.', 0),
    ('idempotency.in_flight_timeout_seconds', '60', 'After this, an unfinished idempotent request no longer blocks its key.', 0),
    ('http.max_body_bytes', '1048576', 'Largest request body the public API accepts.', 0);

INSERT INTO policy_values (key, value, description, updated_at) VALUES
    ('events.retention_hours', '72', 'Published outbox rows, the embedded bus''s log entries every consumer has read and consumers'' processed-event records older than this are deleted by the workers role (at least 1).', 0);

-- Event ids are minted by the platform (UUIDv7), one per event, and the relay fences
-- its updates by `seq`: a unique index on `event_id` was one more entry, with its
-- uniqueness check, on every event written, and nothing read through it.
ALTER TABLE outbox_events DROP CONSTRAINT IF EXISTS outbox_events_event_id_key;

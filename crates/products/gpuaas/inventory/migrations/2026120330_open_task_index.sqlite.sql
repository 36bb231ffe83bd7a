-- A task is open (queued or leased) until completed_at is set, which every finishing
-- status sets. One partial index of open tasks replaces the queued and leased ones: a
-- lease then changes no indexed column (status and the lease times are in no index and
-- no index's condition) and PostgreSQL updates the row in place (ADR 032).
DROP INDEX node_tasks_queued;
DROP INDEX node_tasks_leased;
CREATE INDEX node_tasks_open ON node_tasks (node_id, created_at, id) WHERE completed_at IS NULL;

-- A task's status changes twice (queued → leased → finished) and both status indexes
-- held every task, so each change wrote a new entry in each. Pulls look only at queued
-- tasks and the sweep only at leased ones: partial indexes hold just those, so a task
-- is in each for one stage of its life and a finished task in neither.
DROP INDEX node_tasks_node_status;
DROP INDEX node_tasks_status_lease;
CREATE INDEX node_tasks_queued ON node_tasks (node_id, created_at, id) WHERE status = 'queued';
CREATE INDEX node_tasks_leased ON node_tasks (lease_expires_at) WHERE status = 'leased';

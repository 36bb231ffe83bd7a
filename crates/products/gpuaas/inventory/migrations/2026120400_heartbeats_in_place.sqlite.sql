-- Only the offline sweep read this index, and every heartbeat and free-count update
-- wrote it; the sweep scans the fleet's rows instead (ADR 033).
DROP INDEX nodes_status_heartbeat;

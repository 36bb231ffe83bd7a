-- A heartbeat changes last_heartbeat_at, the agent's versions and updated_at; only
-- this index held one of them, and only the offline sweep read it (a scan of the
-- fleet's rows every sweep does as well). Without it a heartbeat that keeps the
-- node's status changes no indexed column and PostgreSQL updates the row in place (a
-- HOT update) when its page has room, which the fill factor leaves on new pages; the
-- free-count updates of placement and release now write four index entries, not
-- five (ADR 033).
DROP INDEX nodes_status_heartbeat;
ALTER TABLE nodes SET (fillfactor = 80);

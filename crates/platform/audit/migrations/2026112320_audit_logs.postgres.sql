-- Append-only audit trail. The triggers below make the database itself refuse to
-- change or remove a row, so no code path (or SQL console) can rewrite history.
CREATE TABLE audit_logs (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_type TEXT NOT NULL CHECK (actor_type IN ('user', 'service_account', 'system', 'anonymous')),
    actor_role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    tenant_id TEXT,
    result TEXT NOT NULL CHECK (result IN ('success', 'denied', 'failure')),
    correlation_id TEXT NOT NULL,
    details TEXT NOT NULL
);
-- Listing is newest first with keyset paging on (at, id); each filter index ends in
-- (at, id) so a filtered page is one index range scan.
CREATE INDEX ix_audit_logs_at_id ON audit_logs (at, id);
CREATE INDEX ix_audit_logs_actor ON audit_logs (actor_id, at, id);
CREATE INDEX ix_audit_logs_target ON audit_logs (target, at, id);
CREATE INDEX ix_audit_logs_action ON audit_logs (action, at, id);

CREATE FUNCTION audit_logs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_logs is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_logs_no_update_delete BEFORE UPDATE OR DELETE ON audit_logs
    FOR EACH ROW EXECUTE FUNCTION audit_logs_refuse_change();

-- TRUNCATE fires no row triggers, so it needs its own statement-level one.
CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_refuse_change();

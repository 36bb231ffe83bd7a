-- SSH public keys users register for runtime access. Only public keys: a pasted
-- private key is refused before it reaches this table.
CREATE TABLE ssh_keys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, fingerprint)
);
CREATE INDEX ix_ssh_keys_user ON ssh_keys (user_id, created_at, id);

-- One row per allocation: what was asked, where it was placed, its lifecycle status
-- with the time of each transition, and the state of its durable workflow
-- (workflow_* columns and the task ids), so a restarted worker resumes from here.
CREATE TABLE allocations (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    name TEXT,
    sku_id TEXT NOT NULL,
    gpu_count BIGINT NOT NULL,
    status TEXT NOT NULL,
    node_id TEXT NOT NULL,
    gpu_indices TEXT NOT NULL,
    ssh_host TEXT NOT NULL,
    ssh_username TEXT NOT NULL,
    authorized_keys TEXT NOT NULL,
    ssh_key_ids TEXT NOT NULL,
    cpu_millicores BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    price_per_gpu_hour_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    failure_reason TEXT,
    correlation_id TEXT NOT NULL,
    workflow_due_at BIGINT,
    workflow_lease_until BIGINT,
    workflow_attempts BIGINT NOT NULL DEFAULT 0,
    workflow_deadline BIGINT,
    provision_task_id TEXT,
    release_task_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    provisioning_at BIGINT,
    active_at BIGINT,
    releasing_at BIGINT,
    released_at BIGINT,
    failed_at BIGINT,
    release_failed_at BIGINT
);
CREATE INDEX ix_allocations_tenant ON allocations (tenant_id, created_at, id);
CREATE INDEX ix_allocations_status ON allocations (status, created_at, id);
CREATE INDEX ix_allocations_user_status ON allocations (user_id, status);
CREATE INDEX ix_allocations_project_status ON allocations (project_id, status);
CREATE INDEX ix_allocations_tenant_status ON allocations (tenant_id, status);
CREATE INDEX ix_allocations_node ON allocations (node_id, status);
CREATE INDEX ix_allocations_due ON allocations (workflow_due_at) WHERE workflow_due_at IS NOT NULL;

-- Every transition with who made it, why, and under which correlation id.
CREATE TABLE allocation_transitions (
    id TEXT PRIMARY KEY,
    allocation_id TEXT NOT NULL REFERENCES allocations (id),
    from_status TEXT,
    to_status TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT,
    correlation_id TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX ix_allocation_transitions ON allocation_transitions (allocation_id, at, id);

-- What nodes report versus what is billed: an allocation active here but absent from
-- its node's latest user list, or a user on a node with no live allocation.
CREATE TABLE reconciliation_findings (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    username TEXT NOT NULL,
    allocation_id TEXT,
    first_seen_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    resolved_at BIGINT,
    UNIQUE (node_id, kind, username)
);
CREATE INDEX ix_reconciliation_open ON reconciliation_findings (resolved_at, first_seen_at);

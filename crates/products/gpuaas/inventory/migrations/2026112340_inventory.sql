-- The node plane: what can be sold (SKUs), where it runs (nodes, their GPUs and the
-- slots allocations reserve), how nodes prove who they are (enrollment tokens,
-- certificates) and what they are asked to do (node tasks). Booleans are BIGINT 0/1
-- and instants BIGINT microseconds on both engines.
CREATE TABLE sku_catalog (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    gpu_model TEXT NOT NULL,
    gpus_per_node BIGINT NOT NULL CHECK (gpus_per_node BETWEEN 1 AND 64),
    gpu_memory_mib BIGINT NOT NULL CHECK (gpu_memory_mib > 0),
    vcpus_per_node BIGINT NOT NULL CHECK (vcpus_per_node > 0),
    memory_bytes_per_node BIGINT NOT NULL CHECK (memory_bytes_per_node > 0),
    price_per_gpu_hour_minor BIGINT NOT NULL CHECK (price_per_gpu_hour_minor >= 0),
    currency TEXT NOT NULL,
    active BIGINT NOT NULL CHECK (active IN (0, 1)),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    sku_id TEXT NOT NULL REFERENCES sku_catalog (id),
    onboarding_mode TEXT NOT NULL CHECK (onboarding_mode IN ('manual', 'maas')),
    status TEXT NOT NULL CHECK (status IN ('pending_enrollment', 'active', 'draining', 'offline', 'retired')),
    -- The operator's intent survives an offline spell: a draining node that comes back
    -- is draining again, not active.
    drain_requested BIGINT NOT NULL DEFAULT 0 CHECK (drain_requested IN (0, 1)),
    agent_version TEXT,
    protocol_version BIGINT,
    reported_hostname TEXT,
    inventory_source TEXT CHECK (inventory_source IN ('detected', 'declared')),
    cpu_cores BIGINT,
    memory_bytes BIGINT,
    disk_bytes BIGINT,
    allocation_users TEXT,
    inventory_updated_at BIGINT,
    last_heartbeat_at BIGINT,
    enrolled_at BIGINT,
    retired_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- A hostname names one live node; a retired node's name may be registered again.
CREATE UNIQUE INDEX nodes_live_hostname ON nodes (hostname) WHERE status <> 'retired';
CREATE INDEX nodes_created ON nodes (created_at, id);
CREATE INDEX nodes_status_heartbeat ON nodes (status, last_heartbeat_at);
CREATE INDEX nodes_sku_status ON nodes (sku_id, status);

CREATE TABLE node_gpus (
    node_id TEXT NOT NULL REFERENCES nodes (id),
    gpu_index BIGINT NOT NULL,
    uuid TEXT,
    model TEXT NOT NULL,
    memory_mib BIGINT NOT NULL,
    driver_version TEXT,
    cuda_version TEXT,
    health TEXT NOT NULL CHECK (health IN ('ok', 'degraded', 'failed', 'unknown')),
    PRIMARY KEY (node_id, gpu_index)
);

-- One row per sellable GPU of a node; an allocation holds a slot while allocation_id
-- is set. Placement claims slots with a conditional UPDATE, so no two allocations can
-- ever hold the same one.
CREATE TABLE node_resource_slots (
    node_id TEXT NOT NULL REFERENCES nodes (id),
    gpu_index BIGINT NOT NULL,
    allocation_id TEXT,
    reserved_at BIGINT,
    PRIMARY KEY (node_id, gpu_index)
);
CREATE INDEX node_resource_slots_allocation ON node_resource_slots (allocation_id);

CREATE TABLE node_enrollment_tokens (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes (id),
    token_hash TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX node_enrollment_tokens_node ON node_enrollment_tokens (node_id);

-- Certificates are looked up by the SHA-256 of their DER on every internal request, so
-- a revocation takes effect on the node's next call.
CREATE TABLE node_certificates (
    fingerprint TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes (id),
    serial TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT
);
CREATE INDEX node_certificates_node ON node_certificates (node_id, issued_at);

CREATE TABLE node_tasks (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes (id),
    task_type TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'leased', 'succeeded', 'failed', 'expired')),
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    leased_at BIGINT,
    lease_expires_at BIGINT,
    completed_at BIGINT,
    result TEXT,
    error TEXT,
    refusal_code TEXT,
    correlation_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- queued -> leased, the delay the dispatch benchmark reports.
    first_leased_at BIGINT
);
CREATE INDEX node_tasks_node_status ON node_tasks (node_id, status, created_at);
CREATE INDEX node_tasks_status_lease ON node_tasks (status, lease_expires_at);
CREATE INDEX node_tasks_created ON node_tasks (node_id, created_at, id);

-- Creates check the concurrency caps against how many live allocations each user,
-- project and tenant holds. Counting them in `allocations` read every row version the
-- live index still pointed at: each allocation passes through four live statuses, each
-- a new index entry, and until a vacuum the count visited every dead one (hundreds per
-- tenant within a minute under load). The counts are kept here instead, changed in the
-- transaction that creates an allocation or ends it, so a create reads one row per
-- (tenant, project, user). The status list is AllocationStatus::LIVE.
CREATE TABLE allocation_live_counts (
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    live BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, project_id, user_id)
);
INSERT INTO allocation_live_counts (tenant_id, project_id, user_id, live)
    SELECT tenant_id, project_id, user_id, COUNT(*) FROM allocations
    WHERE status IN ('requested', 'provisioning', 'active', 'releasing', 'release_failed')
    GROUP BY tenant_id, project_id, user_id;

-- Creates count the live allocations of their batch's tenants, users and projects. Through
-- (tenant_id, status) the planner combined that index with the status one and read every
-- allocation those tenants ever had; a partial index of live allocations holds only what
-- the count reads, and an allocation leaves it when it ends (the status list is
-- AllocationStatus::LIVE, in its order, as the queries write it).
DROP INDEX ix_allocations_tenant_status;
CREATE INDEX ix_allocations_live ON allocations (tenant_id, project_id, user_id)
    WHERE status IN ('requested', 'provisioning', 'active', 'releasing', 'release_failed');

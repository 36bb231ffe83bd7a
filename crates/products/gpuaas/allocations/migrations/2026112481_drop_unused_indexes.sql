-- Every status change rewrites each index of its allocation row. No query looks
-- allocations up by (user_id, status) or (project_id, status): the caps count a
-- tenant's live allocations through ix_allocations_tenant_status and group them.
DROP INDEX ix_allocations_user_status;
DROP INDEX ix_allocations_project_status;

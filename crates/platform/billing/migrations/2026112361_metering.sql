-- The accrual worker scans only usage records still open.
CREATE INDEX ix_usage_records_open ON usage_records (started_at) WHERE ended_at IS NULL;

-- Where each tenant's balance stood at the last check, so a low-balance warning or a
-- depletion is announced once per crossing, not on every accrual cycle.
CREATE TABLE billing_balance_alerts (
    tenant_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    balance_minor BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);

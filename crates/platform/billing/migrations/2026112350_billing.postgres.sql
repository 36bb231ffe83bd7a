-- Billing: one account per tenant, the append-only ledger, immutable balance
-- checkpoints and usage records. A balance is never stored as a mutable column: it is
-- the latest checkpoint plus the few entries after it, so it can always be recomputed
-- from the ledger and checked against it.
CREATE TABLE billing_accounts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL UNIQUE,
    currency TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES billing_accounts (id),
    tenant_id TEXT NOT NULL,
    entry_no BIGINT NOT NULL CHECK (entry_no >= 1),
    entry_type TEXT NOT NULL CHECK (entry_type IN ('credit_purchase', 'usage_debit', 'admin_credit', 'admin_debit', 'refund', 'reversal')),
    -- Signed minor units: credits are positive, debits negative.
    amount_minor BIGINT NOT NULL CHECK (amount_minor <> 0),
    currency TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    reference_type TEXT NOT NULL,
    reference_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    description TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Gap-free numbering per account: the next entry is MAX(entry_no) + 1 under the
    -- account lock, and this index makes that lookup (and the balance tail sum) cheap.
    UNIQUE (account_id, entry_no),
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX ix_ledger_entries_listing ON ledger_entries (account_id, created_at, id);
-- Only refunds are looked up by reference (the refundable remainder of a credit);
-- a partial index spares every other posting its upkeep.
CREATE INDEX ix_ledger_entries_refunds ON ledger_entries (reference_id) WHERE entry_type = 'refund';

-- The running balance after entry `entry_no`, written in the same transaction as that
-- entry. Never updated: a later balance is a later checkpoint.
CREATE TABLE ledger_checkpoints (
    account_id TEXT NOT NULL REFERENCES billing_accounts (id),
    entry_no BIGINT NOT NULL,
    balance_minor BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, entry_no)
);

CREATE TABLE usage_records (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    allocation_id TEXT NOT NULL,
    sku_id TEXT NOT NULL,
    gpu_count BIGINT NOT NULL,
    price_per_gpu_hour_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    billed_seconds BIGINT NOT NULL DEFAULT 0,
    billed_minor BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
-- Listing and export page newest first per tenant on (started_at, id).
CREATE INDEX ix_usage_records_tenant ON usage_records (tenant_id, started_at, id);
CREATE INDEX ix_usage_records_allocation ON usage_records (allocation_id);

-- The ledger and its checkpoints are append-only: the database itself refuses to
-- change or remove a row, so no code path (or SQL console) can rewrite history.
-- Corrections are new entries (reversal, refund, admin_credit/admin_debit).
CREATE FUNCTION billing_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER ledger_entries_no_update_delete BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();
-- TRUNCATE fires no row triggers, so it needs its own statement-level one.
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION billing_refuse_change();

CREATE TRIGGER ledger_checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_truncate BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION billing_refuse_change();

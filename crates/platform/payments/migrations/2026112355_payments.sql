-- Card top-ups through Stripe. Money itself lives in the billing ledger; these tables
-- only say what Stripe was asked and what it answered. Instants are BIGINT
-- microseconds on both engines.
CREATE TABLE payment_sessions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN
        ('initiated', 'checkout_completed', 'credited', 'expired', 'failed', 'failed_reconcile')),
    -- NULL until Stripe answers; unique so a webhook finds exactly one session.
    stripe_session_id TEXT UNIQUE,
    stripe_payment_intent TEXT,
    failure_reason TEXT,
    ledger_entry_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX ix_payment_sessions_created ON payment_sessions (created_at, id);
CREATE INDEX ix_payment_sessions_status_created ON payment_sessions (status, created_at, id);
CREATE INDEX ix_payment_sessions_tenant ON payment_sessions (tenant_id, created_at);

-- Every webhook event id ever accepted: the primary key is what makes a redelivered
-- event a no-op.
CREATE TABLE stripe_events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE TABLE stripe_customers (
    tenant_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE refund_requests (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    credit_entry_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('requested', 'succeeded', 'failed')),
    stripe_refund_id TEXT,
    ledger_entry_id TEXT,
    failure_reason TEXT,
    requested_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX ix_refund_requests_credit ON refund_requests (credit_entry_id, status);
CREATE INDEX ix_refund_requests_tenant ON refund_requests (tenant_id, created_at);

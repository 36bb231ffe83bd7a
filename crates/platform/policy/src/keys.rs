//! Every policy key the platform reads. Defaults are seeded by this crate's migrations.

use crate::PolicyKey;

pub const OUTBOX_RELAY_BATCH_SIZE: PolicyKey<i64> = PolicyKey::new("outbox.relay.batch_size");
pub const OUTBOX_RELAY_INTERVAL_MS: PolicyKey<i64> = PolicyKey::new("outbox.relay.interval_ms");
pub const OUTBOX_RELAY_JITTER_MS: PolicyKey<i64> = PolicyKey::new("outbox.relay.jitter_ms");
pub const OUTBOX_RELAY_LEASE_SECONDS: PolicyKey<i64> = PolicyKey::new("outbox.relay.lease_seconds");
pub const OUTBOX_MAX_ATTEMPTS: PolicyKey<i64> = PolicyKey::new("outbox.max_attempts");
pub const OUTBOX_RETRY_BASE_MS: PolicyKey<i64> = PolicyKey::new("outbox.retry.base_ms");
pub const OUTBOX_RETRY_MAX_MS: PolicyKey<i64> = PolicyKey::new("outbox.retry.max_ms");
pub const EVENTS_RETENTION_HOURS: PolicyKey<i64> = PolicyKey::new("events.retention_hours");
pub const IDEMPOTENCY_TTL_SECONDS: PolicyKey<i64> = PolicyKey::new("idempotency.ttl_seconds");
pub const IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS: PolicyKey<i64> =
    PolicyKey::new("idempotency.in_flight_timeout_seconds");
pub const HTTP_MAX_BODY_BYTES: PolicyKey<i64> = PolicyKey::new("http.max_body_bytes");
pub const AUTH_PERSONAL_LOGIN_ENABLED: PolicyKey<bool> = PolicyKey::new("auth.personal_login.enabled");
pub const AUTH_ACCESS_TOKEN_TTL_SECONDS: PolicyKey<i64> = PolicyKey::new("auth.access_token_ttl_seconds");
pub const AUTH_REFRESH_TOKEN_TTL_SECONDS: PolicyKey<i64> = PolicyKey::new("auth.refresh_token_ttl_seconds");
pub const AUTH_SERVICE_ACCOUNT_TOKEN_TTL_SECONDS: PolicyKey<i64> =
    PolicyKey::new("auth.service_account_token_ttl_seconds");
pub const AUTH_LOCKOUT_MAX_FAILURES: PolicyKey<i64> = PolicyKey::new("auth.lockout.max_failures");
pub const AUTH_LOCKOUT_SECONDS: PolicyKey<i64> = PolicyKey::new("auth.lockout.seconds");
pub const AUTH_OIDC_FLOW_TTL_SECONDS: PolicyKey<i64> = PolicyKey::new("auth.oidc.flow_ttl_seconds");
pub const RATELIMIT_AUTH_BURST: PolicyKey<i64> = PolicyKey::new("ratelimit.auth.burst");
pub const RATELIMIT_AUTH_PER_MINUTE: PolicyKey<i64> = PolicyKey::new("ratelimit.auth.per_minute");
pub const RATELIMIT_READ_BURST: PolicyKey<i64> = PolicyKey::new("ratelimit.read.burst");
pub const RATELIMIT_READ_PER_MINUTE: PolicyKey<i64> = PolicyKey::new("ratelimit.read.per_minute");
pub const RATELIMIT_WRITE_BURST: PolicyKey<i64> = PolicyKey::new("ratelimit.write.burst");
pub const RATELIMIT_WRITE_PER_MINUTE: PolicyKey<i64> = PolicyKey::new("ratelimit.write.per_minute");
pub const RATELIMIT_ADMIN_BURST: PolicyKey<i64> = PolicyKey::new("ratelimit.admin.burst");
pub const RATELIMIT_ADMIN_PER_MINUTE: PolicyKey<i64> = PolicyKey::new("ratelimit.admin.per_minute");
pub const NODES_ENROLLMENT_TOKEN_TTL_SECONDS: PolicyKey<i64> = PolicyKey::new("nodes.enrollment_token_ttl_seconds");
pub const NODES_CERTIFICATE_TTL_SECONDS: PolicyKey<i64> = PolicyKey::new("nodes.certificate_ttl_seconds");
pub const NODES_HEARTBEAT_INTERVAL_SECONDS: PolicyKey<i64> = PolicyKey::new("nodes.heartbeat_interval_seconds");
pub const NODES_OFFLINE_AFTER_SECONDS: PolicyKey<i64> = PolicyKey::new("nodes.offline_after_seconds");
pub const NODES_TASK_LEASE_SECONDS: PolicyKey<i64> = PolicyKey::new("nodes.task_lease_seconds");
pub const NODES_TASK_TTL_SECONDS: PolicyKey<i64> = PolicyKey::new("nodes.task_ttl_seconds");
pub const NODES_TASK_MAX_ATTEMPTS: PolicyKey<i64> = PolicyKey::new("nodes.task_max_attempts");
pub const NODES_PROBE_WAIT_SECONDS: PolicyKey<i64> = PolicyKey::new("nodes.probe_wait_seconds");
pub const NODES_EXPOSE_HOSTNAMES: PolicyKey<bool> = PolicyKey::new("nodes.expose_hostnames");
pub const PAYMENTS_MIN_AMOUNT_MINOR: PolicyKey<i64> = PolicyKey::new("payments.min_amount_minor");
pub const PAYMENTS_MAX_AMOUNT_MINOR: PolicyKey<i64> = PolicyKey::new("payments.max_amount_minor");
pub const PAYMENTS_CURRENCIES: PolicyKey<Vec<String>> = PolicyKey::new("payments.currencies");
pub const BILLING_REFUND_WINDOW_DAYS: PolicyKey<i64> = PolicyKey::new("billing.refund_window_days");
pub const BILLING_CHECKPOINT_EVERY: PolicyKey<i64> = PolicyKey::new("billing.checkpoint_every");
pub const BILLING_WINDOW_SECONDS: PolicyKey<i64> = PolicyKey::new("billing.window_seconds");
pub const BILLING_LOW_BALANCE_THRESHOLD_MINOR: PolicyKey<i64> = PolicyKey::new("billing.low_balance_threshold_minor");
pub const ALLOCATIONS_MAX_CONCURRENT_PER_USER: PolicyKey<i64> = PolicyKey::new("allocations.max_concurrent_per_user");
pub const ALLOCATIONS_MAX_CONCURRENT_PER_PROJECT: PolicyKey<i64> =
    PolicyKey::new("allocations.max_concurrent_per_project");
pub const ALLOCATIONS_MAX_CONCURRENT_PER_TENANT: PolicyKey<i64> =
    PolicyKey::new("allocations.max_concurrent_per_tenant");
pub const ALLOCATIONS_PLACEMENT_STRATEGY: PolicyKey<String> = PolicyKey::new("allocations.placement_strategy");
pub const ALLOCATIONS_PROVISION_TIMEOUT_SECONDS: PolicyKey<i64> =
    PolicyKey::new("allocations.provision_timeout_seconds");
pub const ALLOCATIONS_RELEASE_TIMEOUT_SECONDS: PolicyKey<i64> = PolicyKey::new("allocations.release_timeout_seconds");
pub const ALLOCATIONS_WORKFLOW_MAX_ATTEMPTS: PolicyKey<i64> = PolicyKey::new("allocations.workflow_max_attempts");
pub const ALLOCATIONS_WORKFLOW_RETRY_BASE_MS: PolicyKey<i64> = PolicyKey::new("allocations.workflow_retry_base_ms");
pub const ALLOCATIONS_WORKFLOW_POLL_INTERVAL_MS: PolicyKey<i64> =
    PolicyKey::new("allocations.workflow_poll_interval_ms");
pub const ALLOCATIONS_RECONCILE_GRACE_SECONDS: PolicyKey<i64> = PolicyKey::new("allocations.reconcile_grace_seconds");

/// All keys, so a test can prove each one is seeded and parses.
pub const ALL_I64: &[PolicyKey<i64>] = &[
    OUTBOX_RELAY_BATCH_SIZE,
    OUTBOX_RELAY_INTERVAL_MS,
    OUTBOX_RELAY_JITTER_MS,
    OUTBOX_RELAY_LEASE_SECONDS,
    OUTBOX_MAX_ATTEMPTS,
    OUTBOX_RETRY_BASE_MS,
    OUTBOX_RETRY_MAX_MS,
    EVENTS_RETENTION_HOURS,
    IDEMPOTENCY_TTL_SECONDS,
    IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS,
    HTTP_MAX_BODY_BYTES,
    AUTH_ACCESS_TOKEN_TTL_SECONDS,
    AUTH_REFRESH_TOKEN_TTL_SECONDS,
    AUTH_SERVICE_ACCOUNT_TOKEN_TTL_SECONDS,
    AUTH_LOCKOUT_MAX_FAILURES,
    AUTH_LOCKOUT_SECONDS,
    AUTH_OIDC_FLOW_TTL_SECONDS,
    RATELIMIT_AUTH_BURST,
    RATELIMIT_AUTH_PER_MINUTE,
    RATELIMIT_READ_BURST,
    RATELIMIT_READ_PER_MINUTE,
    RATELIMIT_WRITE_BURST,
    RATELIMIT_WRITE_PER_MINUTE,
    RATELIMIT_ADMIN_BURST,
    RATELIMIT_ADMIN_PER_MINUTE,
    NODES_ENROLLMENT_TOKEN_TTL_SECONDS,
    NODES_CERTIFICATE_TTL_SECONDS,
    NODES_HEARTBEAT_INTERVAL_SECONDS,
    NODES_OFFLINE_AFTER_SECONDS,
    NODES_TASK_LEASE_SECONDS,
    NODES_TASK_TTL_SECONDS,
    NODES_TASK_MAX_ATTEMPTS,
    NODES_PROBE_WAIT_SECONDS,
    PAYMENTS_MIN_AMOUNT_MINOR,
    PAYMENTS_MAX_AMOUNT_MINOR,
    BILLING_REFUND_WINDOW_DAYS,
    BILLING_CHECKPOINT_EVERY,
    BILLING_WINDOW_SECONDS,
    BILLING_LOW_BALANCE_THRESHOLD_MINOR,
    ALLOCATIONS_MAX_CONCURRENT_PER_USER,
    ALLOCATIONS_MAX_CONCURRENT_PER_PROJECT,
    ALLOCATIONS_MAX_CONCURRENT_PER_TENANT,
    ALLOCATIONS_PROVISION_TIMEOUT_SECONDS,
    ALLOCATIONS_RELEASE_TIMEOUT_SECONDS,
    ALLOCATIONS_WORKFLOW_MAX_ATTEMPTS,
    ALLOCATIONS_WORKFLOW_RETRY_BASE_MS,
    ALLOCATIONS_WORKFLOW_POLL_INTERVAL_MS,
    ALLOCATIONS_RECONCILE_GRACE_SECONDS,
];

pub const ALL_BOOL: &[PolicyKey<bool>] = &[AUTH_PERSONAL_LOGIN_ENABLED, NODES_EXPOSE_HOSTNAMES];

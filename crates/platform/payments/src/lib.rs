//! Card top-ups through Stripe: Checkout sessions, verified webhooks that credit the
//! billing ledger, operator refunds and manual balance adjustments.
//!
//! This crate owns `payment_sessions`, `stripe_events`, `stripe_customers` and
//! `refund_requests`; money itself is posted through `gpuaas-billing` in the same
//! transaction as the state change, its audit row and its outbox event. It must never
//! credit an account without a webhook whose signature verified, never credit one
//! payment twice (however often and in whatever order Stripe delivers), never refund
//! more than a credit holds, and never log a secret key, a webhook secret or card
//! data (it never sees card data: Checkout collects it on Stripe's pages).

mod admin;
mod checkout;
mod error;
mod signature;
mod status;
mod stripe;
mod webhook;

use std::sync::Arc;

use gpuaas_audit::{ActorType, AuditResult, NewAuditLog};
use gpuaas_policy::PolicyClient;
use gpuaas_store::{Connection, Dialect, Migration, Store};

pub use admin::{RefundRequest, RefundStatus};
pub use checkout::{CheckoutResponse, PaymentSession, SessionFilter, SessionPage};
pub use error::PaymentsError;
pub use signature::{DEFAULT_TOLERANCE_SECONDS, SIGNATURE_HEADER, SignatureError, verify_signature};
pub use status::{InvalidTransition, SessionEvent, SessionStatus, next_status};
pub use stripe::{
    CheckoutRequest, CheckoutSession, DEFAULT_API_BASE, HttpStripeClient, StripeClient, StripeConfig, StripeRefund,
};
pub use webhook::WebhookOutcome;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112355,
    name: "payments",
    sqlite: include_str!("../migrations/2026112355_payments.sql"),
    postgres: include_str!("../migrations/2026112355_payments.sql"),
}];

/// A signed-in user paying for their own tenant.
#[derive(Debug, Clone)]
pub struct PaymentActor {
    pub user_id: String,
    pub email: String,
    pub tenant_id: String,
    pub correlation_id: String,
}

/// A platform operator moving money by hand.
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: String,
    pub role: String,
    pub correlation_id: String,
}

impl Operator {
    fn audit(&self, action: &str, target: String, tenant_id: &str, details: serde_json::Value) -> NewAuditLog {
        NewAuditLog {
            actor_id: self.id.clone(),
            actor_type: ActorType::User,
            actor_role: self.role.clone(),
            action: action.into(),
            target,
            tenant_id: Some(tenant_id.into()),
            result: AuditResult::Success,
            correlation_id: self.correlation_id.clone(),
            details,
        }
    }
}

/// The payments service. Cheap to clone.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    policy: PolicyClient,
    stripe: Option<Arc<dyn StripeClient>>,
    config: Option<StripeConfig>,
}

impl Payments {
    /// Without both a client and a configuration every card operation answers
    /// [`PaymentsError::NotConfigured`]; operator credits and debits still work.
    pub fn new(
        store: Store,
        policy: PolicyClient,
        stripe: Option<Arc<dyn StripeClient>>,
        config: Option<StripeConfig>,
    ) -> Self {
        Self { inner: Arc::new(Inner { store, policy, stripe, config }) }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Whether card payments can be taken at all.
    pub fn is_configured(&self) -> bool {
        self.inner.stripe.is_some() && self.inner.config.is_some()
    }

    fn stripe(&self) -> Result<(&dyn StripeClient, &StripeConfig), PaymentsError> {
        match (&self.inner.stripe, &self.inner.config) {
            (Some(client), Some(config)) => Ok((client.as_ref(), config)),
            _ => Err(PaymentsError::NotConfigured),
        }
    }

    fn dialect(&self) -> Dialect {
        self.inner.store.dialect()
    }

    async fn checkpoint_every(&self) -> Result<i64, PaymentsError> {
        Ok(self.inner.policy.get(gpuaas_policy::keys::BILLING_CHECKPOINT_EVERY).await?)
    }
}

/// Row-lock suffix for a read that is about to be written back: PostgreSQL locks the row;
/// SQLite's write transactions (`BEGIN IMMEDIATE`) are serialized already.
pub(crate) const fn for_update(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "",
        Dialect::Postgres => " FOR UPDATE",
    }
}

/// Serializes every refund decision about one credit until the transaction ends.
/// PostgreSQL takes a transaction-scoped advisory lock on the credit's id; SQLite holds
/// the database write lock already.
pub(crate) async fn lock_credit(
    connection: &mut Connection,
    dialect: Dialect,
    credit_entry_id: &str,
) -> Result<(), PaymentsError> {
    if dialect == Dialect::Postgres {
        gpuaas_store::sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 7))) AS locked")
            .bind(credit_entry_id)
            .execute(&mut *connection)
            .await?;
    }
    Ok(())
}

/// A currency as the platform stores it: ISO 4217, upper case.
pub(crate) fn normalize_currency(currency: &str) -> Result<String, PaymentsError> {
    let trimmed = currency.trim();
    if trimmed.len() == 3 && trimmed.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(trimmed.to_ascii_uppercase())
    } else {
        Err(PaymentsError::invalid("currency", "an ISO 4217 code, e.g. USD"))
    }
}

pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), PaymentsError> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(PaymentsError::invalid(field, format!("1 to {max} printable characters")));
    }
    Ok(())
}

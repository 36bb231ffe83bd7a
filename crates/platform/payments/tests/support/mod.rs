//! Shared fixtures for the payments tests: a migrated database and a payments service
//! talking to the testkit's local fake of the Stripe endpoints, with webhook payloads
//! signed the way Stripe signs them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use gpuaas_payments::{HttpStripeClient, PaymentActor, Payments, StripeClient, StripeConfig, WebhookOutcome};
use gpuaas_policy::PolicyClient;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Migration, PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};

// The Stripe fake and the webhook signer live in the testkit, shared with the API and
// end-to-end tests of the binary.
#[allow(unused_imports)]
pub use gpuaas_testkit::stripe::{
    FakeStripe, SECRET_KEY, checkout_event, now_secs, sign_webhook, stripe_signature, v1,
};

#[allow(unused_imports)]
pub use gpuaas_testkit::err;

pub const CORR: &str = "corr-test";
pub const WEBHOOK_SECRET: &str = "whsec_test_current";
pub const OLD_WEBHOOK_SECRET: &str = "whsec_test_previous";

pub fn migrations() -> Vec<Migration> {
    [
        gpuaas_policy::MIGRATIONS,
        gpuaas_outbox::MIGRATIONS,
        gpuaas_events::MIGRATIONS,
        gpuaas_audit::MIGRATIONS,
        gpuaas_billing::MIGRATIONS,
        gpuaas_payments::MIGRATIONS,
    ]
    .concat()
}

pub struct Env {
    pub db: TestDatabase,
    pub store: Store,
    pub policy: PolicyClient,
    pub payments: Payments,
    pub stripe: FakeStripe,
}

pub fn config(api_base: &str) -> StripeConfig {
    StripeConfig {
        secret_key: SECRET_KEY.into(),
        webhook_secrets: vec![WEBHOOK_SECRET.into(), OLD_WEBHOOK_SECRET.into()],
        api_base: api_base.into(),
        success_url: "https://console.example.com/billing/success?session={CHECKOUT_SESSION_ID}".into(),
        cancel_url: "https://console.example.com/billing/cancel".into(),
        portal_return_url: "https://console.example.com/billing".into(),
    }
}

/// A migrated database and a payments service talking to a fresh fake Stripe.
pub async fn env(backend: Backend) -> Env {
    env_with(backend, true).await
}

/// Like [`env`], but without any Stripe configuration when `configured` is false.
pub async fn env_with(backend: Backend, configured: bool) -> Env {
    let db = TestDatabase::create(backend).await;
    let settings = PoolSettings { max_connections: 16, acquire_timeout: Duration::from_secs(60) };
    let store = Store::connect(&db.url, &settings).await.expect("connect");
    store.migrate(&migrations()).await.expect("migrate");
    // No cache: a policy change in a test takes effect on the next call.
    let policy = PolicyClient::new(store.clone(), Duration::ZERO);
    let stripe = FakeStripe::start().await;
    let payments = if configured {
        let config = config(stripe.url());
        let client: Arc<dyn StripeClient> = Arc::new(HttpStripeClient::new(&config).expect("client"));
        Payments::new(store.clone(), policy.clone(), Some(client), Some(config))
    } else {
        Payments::new(store.clone(), policy.clone(), None, None)
    };
    Env { db, store, policy, payments, stripe }
}

pub fn actor(tenant_id: &str) -> PaymentActor {
    PaymentActor {
        user_id: format!("user-of-{tenant_id}"),
        email: format!("owner@{tenant_id}.example.com"),
        tenant_id: tenant_id.into(),
        correlation_id: CORR.into(),
    }
}

pub fn operator() -> gpuaas_payments::Operator {
    gpuaas_payments::Operator { id: "op-1".into(), role: "platform_admin".into(), correlation_id: CORR.into() }
}

pub fn sign_now(body: &[u8]) -> String {
    sign_webhook(body, WEBHOOK_SECRET)
}

/// Opens a checkout for `tenant_id` and returns (payment session id, Stripe session id).
pub async fn open_checkout(env: &Env, tenant_id: &str, amount_minor: i64, currency: &str) -> (String, String) {
    let response = env.payments.create_checkout_session(&actor(tenant_id), amount_minor, currency).await.unwrap();
    let session = env.payments.session(&response.payment_session_id).await.unwrap();
    (response.payment_session_id, session.stripe_session_id.expect("Stripe session id stored"))
}

/// A paid card top-up, credited through a signed webhook; returns the ledger entry id.
pub async fn paid_top_up(env: &Env, tenant_id: &str, amount_minor: i64) -> String {
    let (id, cs) = open_checkout(env, tenant_id, amount_minor, "USD").await;
    let body = checkout_event(
        &format!("evt_paid_{id}"),
        "checkout.session.completed",
        &cs,
        &id,
        tenant_id,
        amount_minor,
        "usd",
        "paid",
    );
    match env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap() {
        WebhookOutcome::Credited { ledger_entry_id, .. } => ledger_entry_id,
        other => panic!("expected a credit, got {other:?}"),
    }
}

pub async fn count(store: &Store, sql: &'static str, binds: &[&str]) -> i64 {
    let mut query = sqlx::query(sql);
    for bind in binds {
        query = query.bind(bind.to_string());
    }
    let row = query.fetch_one(store.pool()).await.unwrap();
    row.try_get::<i64, _>(0).unwrap()
}

pub async fn ledger_count(store: &Store, tenant_id: &str, entry_type: &str) -> i64 {
    count(
        store,
        "SELECT COUNT(*) FROM ledger_entries WHERE tenant_id = $1 AND entry_type = $2",
        &[tenant_id, entry_type],
    )
    .await
}

pub async fn outbox_count(store: &Store, subject: &str) -> i64 {
    count(store, "SELECT COUNT(*) FROM outbox_events WHERE subject = $1", &[subject]).await
}

pub async fn audit_count(store: &Store, action: &str) -> i64 {
    count(store, "SELECT COUNT(*) FROM audit_logs WHERE action = $1", &[action]).await
}

pub async fn balance(store: &Store, tenant_id: &str) -> i64 {
    gpuaas_billing::balance(store, tenant_id).await.unwrap().amount_minor
}

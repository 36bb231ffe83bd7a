//! Shared fixtures for the payments tests: a migrated database, a local HTTP fake of
//! the Stripe endpoints the service calls, and webhook payloads signed the way Stripe
//! signs them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gpuaas_payments::{HttpStripeClient, PaymentActor, Payments, StripeClient, StripeConfig, WebhookOutcome};
use gpuaas_policy::PolicyClient;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Migration, PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

#[allow(unused_imports)]
pub use gpuaas_testkit::err;

pub const CORR: &str = "corr-test";
pub const SECRET_KEY: &str = "sk_test_51Hxyz_do_not_log_me";
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

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub form: Vec<(String, String)>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

#[derive(Default)]
struct FakeState {
    requests: Vec<Recorded>,
    fail: bool,
    counter: u64,
}

/// A local stand-in for api.stripe.com: records every request and answers with JSON
/// shaped like Stripe's, or with a Stripe error while told to fail.
#[derive(Clone)]
pub struct FakeStripe {
    pub url: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .route("/v1/checkout/sessions", post(handle))
            .route("/v1/billing_portal/sessions", post(handle))
            .route("/v1/refunds", post(handle))
            .route("/v1/customers", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the Stripe fake");
        let url = format!("http://{}", listener.local_addr().expect("fake address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeStripe { url, state }
    }

    pub fn fail(&self, fail: bool) {
        self.state.lock().unwrap().fail = fail;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }
}

async fn handle(
    State(state): State<Arc<Mutex<FakeState>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let recorded = Recorded {
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        form: url::form_urlencoded::parse(&body).into_owned().collect(),
    };
    let mut state = state.lock().unwrap();
    state.requests.push(recorded.clone());
    if recorded.authorization.as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
        let body =
            json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****_me"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    if state.fail {
        let body = json!({"error": {"type": "invalid_request_error", "code": "charge_already_refunded",
            "message": "The request could not be completed (test failure)."}});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    // Stripe answers a repeated idempotency key with the first answer.
    let earlier = state.requests[..state.requests.len() - 1]
        .iter()
        .filter(|r| {
            r.path == recorded.path && r.idempotency_key.is_some() && r.idempotency_key == recorded.idempotency_key
        })
        .count();
    state.counter += 1;
    let n = if earlier > 0 {
        format!("idem_{}", recorded.idempotency_key.clone().unwrap_or_default())
    } else {
        format!("{:04}", state.counter)
    };
    let body = match recorded.path.as_str() {
        "/v1/checkout/sessions" => json!({
            "id": format!("cs_test_a1{n}"),
            "object": "checkout.session",
            "url": format!("https://checkout.stripe.com/c/pay/cs_test_a1{n}"),
            "mode": "payment",
            "status": "open",
        }),
        "/v1/billing_portal/sessions" => json!({
            "id": format!("bps_{n}"),
            "object": "billing_portal.session",
            "url": format!("https://billing.stripe.com/p/session/test_{n}"),
        }),
        "/v1/refunds" => json!({"id": format!("re_3{n}"), "object": "refund", "status": "succeeded",
            "amount": recorded.field("amount").and_then(|a| a.parse::<i64>().ok())}),
        _ => json!({"id": format!("cus_{n}"), "object": "customer", "email": recorded.field("email")}),
    };
    (StatusCode::OK, axum::Json(body)).into_response()
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
        let config = config(&stripe.url);
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

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// HMAC-SHA256 over `"{t}.{body}"`, hex, written out here rather than borrowed from
/// the crate so a mistake in one cannot hide a mistake in the other.
pub fn v1(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Stripe-Signature` header Stripe sends: `t=…,v1=…`.
pub fn stripe_signature(body: &[u8], secret: &str, timestamp: i64) -> String {
    format!("t={timestamp},v1={}", v1(body, secret, timestamp))
}

pub fn sign_now(body: &[u8]) -> String {
    stripe_signature(body, WEBHOOK_SECRET, now_secs())
}

/// A `checkout.session.*` event as Stripe sends it (trimmed to realistic fields).
#[allow(clippy::too_many_arguments)]
pub fn checkout_event(
    event_id: &str,
    event_type: &str,
    checkout_session_id: &str,
    payment_session_id: &str,
    tenant_id: &str,
    amount_total: i64,
    currency: &str,
    payment_status: &str,
) -> Vec<u8> {
    json!({
        "id": event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": now_secs(),
        "livemode": false,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": {
            "id": checkout_session_id,
            "object": "checkout.session",
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "client_reference_id": payment_session_id,
            "currency": currency.to_ascii_lowercase(),
            "customer": "cus_0001",
            "metadata": {"payment_session_id": payment_session_id, "tenant_id": tenant_id},
            "mode": "payment",
            "payment_intent": format!("pi_3{}", checkout_session_id.trim_start_matches("cs_test_")),
            "payment_status": payment_status,
            "status": if event_type == "checkout.session.expired" { "expired" } else { "complete" },
        }}
    })
    .to_string()
    .into_bytes()
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

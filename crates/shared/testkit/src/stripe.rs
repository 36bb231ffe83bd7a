//! A local stand-in for the Stripe API and webhook payloads signed the way Stripe
//! signs them, shared by the payments crate's tests, the HTTP API tests and the
//! end-to-end tests of the binary.
//!
//! The signer is written out here rather than borrowed from the payments crate, so a
//! mistake in one cannot hide a mistake in the other.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// The API key the fake accepts (`Authorization: Bearer …`); any other is refused
/// with 401 like Stripe refuses a wrong key.
pub const SECRET_KEY: &str = "sk_test_51Hxyz_do_not_log_me";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub form: Vec<(String, String)>,
}

impl Recorded {
    /// The first form field called `name`.
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

type Shared = Arc<Mutex<FakeState>>;

fn lock(state: &Shared) -> MutexGuard<'_, FakeState> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A local stand-in for api.stripe.com on a loopback port: records every request and
/// answers with JSON shaped like Stripe's, or with a Stripe error while told to fail.
/// Serves checkout sessions, billing-portal sessions, refunds and customers.
#[derive(Clone)]
pub struct FakeStripe {
    url: String,
    state: Shared,
}

impl FakeStripe {
    /// Starts the fake on a free loopback port; it lives as long as the runtime.
    pub async fn start() -> FakeStripe {
        let state: Shared = Arc::default();
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

    /// The API base to configure (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// While `fail` holds, every request with the right key gets a Stripe error (400).
    pub fn fail(&self, fail: bool) {
        lock(&self.state).fail = fail;
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state).requests.clone()
    }

    /// The requests to one path, e.g. `/v1/checkout/sessions`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }
}

async fn handle(State(state): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let recorded = Recorded {
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        form: url::form_urlencoded::parse(&body).into_owned().collect(),
    };
    let mut state = lock(&state);
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

/// Seconds since the Unix epoch, as Stripe's `t=` carries them.
pub fn now_secs() -> i64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(elapsed.as_secs()).expect("seconds fit in i64")
}

/// HMAC-SHA256 over `"{timestamp}.{body}"`, hex: Stripe's `v1` signature.
pub fn v1(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `Stripe-Signature` header Stripe sends: `t=…,v1=…`.
pub fn stripe_signature(body: &[u8], secret: &str, timestamp: i64) -> String {
    format!("t={timestamp},v1={}", v1(body, secret, timestamp))
}

/// The `Stripe-Signature` header for `body`, signed with `secret` now.
pub fn sign_webhook(body: &[u8], secret: &str) -> String {
    stripe_signature(body, secret, now_secs())
}

/// A `checkout.session.*` event as Stripe sends it (trimmed to realistic fields).
/// `payment_session_id` is ours (Stripe echoes it as `client_reference_id` and in the
/// metadata); `checkout_session_id` is Stripe's (`cs_…`).
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

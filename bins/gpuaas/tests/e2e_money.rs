//! Money end to end with the real binary: `gpuaas up` configured against a local fake
//! of Stripe, a card top-up credited by a webhook signed with the previous secret of a
//! rotation, operator credits and refunds, then `gpuaas ledger verify` on what it wrote.

use gpuaas_testkit::free_port;
use gpuaas_testkit::stripe::{FakeStripe, SECRET_KEY, checkout_event, sign_webhook};
use serde_json::json;
use tokio::process::Child;

mod process;

use process::{Running, gpuaas, start, terminate};

const ADMIN_EMAIL: &str = "ops@e2e.local";
const PASSWORD: &str = "correct horse battery staple";
const PAYER_EMAIL: &str = "payer@e2e.local";

/// Starts `gpuaas up` on free ports and returns it with the URL it announced; its
/// stdout keeps being drained so that nothing it prints later can block or fail.
async fn up(data: &std::path::Path, stripe: &FakeStripe) -> (Child, String) {
    let mut command = gpuaas();
    command
        .arg("up")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("GPUAAS_ADMIN_EMAIL", ADMIN_EMAIL)
        .env("GPUAAS_ADMIN_PASSWORD", PASSWORD)
        .env("GPUAAS_STRIPE_SECRET_KEY", SECRET_KEY)
        .env("GPUAAS_STRIPE_WEBHOOK_SECRET", "whsec_old,whsec_new")
        .env("GPUAAS_STRIPE_API_BASE", stripe.url());
    let Running { child, url, .. } = start(command).await;
    (child, url)
}

async fn stop(child: Child) -> i32 {
    terminate(child).await.0.code().unwrap_or(-1)
}

struct Api {
    url: String,
    client: reqwest::Client,
}

impl Api {
    async fn login(&self, email: &str) -> String {
        let (status, body) = self
            .send("POST", "/api/v1/auth/personal/login", None, Some(json!({"email": email, "password": PASSWORD})))
            .await;
        assert_eq!(status, 200, "login of {email}: {body}");
        body["access_token"].as_str().unwrap_or_else(|| panic!("no token: {body}")).to_owned()
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn webhook(&self, body: &[u8], signature: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(format!("{}/api/v1/payments/webhook", self.url))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn balance(&self, token: &str) -> i64 {
        let (status, body) = self.send("GET", "/api/v1/billing/balance", Some(token), None).await;
        assert_eq!(status, 200, "{body}");
        body["amount_minor"].as_i64().unwrap_or_else(|| panic!("no amount: {body}"))
    }
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_tops_up_by_card_an_operator_credits_and_refunds_and_the_ledger_verifies() {
    let stripe = FakeStripe::start().await;
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (child, url) = up(data.path(), &stripe).await;
    let api = Api { url, client: reqwest::Client::new() };
    let admin = api.login(ADMIN_EMAIL).await;

    let (status, payer) = api
        .send("POST", "/api/v1/admin/users", Some(&admin), Some(json!({"email": PAYER_EMAIL, "password": PASSWORD})))
        .await;
    assert_eq!(status, 201, "{payer}");
    let payer_id = text(&payer["id"]);
    let tenant = text(&payer["tenant_id"]);
    let user = api.login(PAYER_EMAIL).await;
    assert_eq!(api.balance(&user).await, 0);

    // The top-up: a Checkout session at (fake) Stripe, with the configured key.
    let response = api
        .client
        .post(format!("{}/api/v1/payments/checkout-session", api.url))
        .bearer_auth(&user)
        .header("x-idempotency-key", "e2e-top-up")
        .json(&json!({"amount_minor": 3000, "currency": "USD"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 201);
    let opened: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    let calls = stripe.requests_to("/v1/checkout/sessions");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].authorization.as_deref(), Some(format!("Bearer {SECRET_KEY}").as_str()));
    let success_url = calls[0].field("success_url").unwrap_or_default().to_owned();
    assert!(success_url.starts_with(&api.url) && success_url.contains("{CHECKOUT_SESSION_ID}"), "{success_url}");
    let checkout_url = text(&opened["url"]);
    let checkout_id = checkout_url.rsplit('/').next().unwrap_or_default().to_owned();
    let payment_session_id = text(&opened["payment_session_id"]);

    // Stripe still signs with the old secret during the rotation; both are accepted.
    let event = checkout_event(
        "evt_e2e_paid",
        "checkout.session.completed",
        &checkout_id,
        &payment_session_id,
        &tenant,
        3000,
        "usd",
        "paid",
    );
    let (status, body) = api.webhook(&event, &sign_webhook(&event, "whsec_unknown")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("webhook_signature_invalid")), "{body}");
    let (status, body) = api.webhook(&event, &sign_webhook(&event, "whsec_old")).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("credited")), "{body}");
    let (status, body) = api.webhook(&event, &sign_webhook(&event, "whsec_new")).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")), "{body}");
    assert_eq!(api.balance(&user).await, 3000);
    let (status, ledger) = api.send("GET", "/api/v1/billing/ledger?type=credit_purchase", Some(&user), None).await;
    assert_eq!(status, 200, "{ledger}");
    let purchase_id = text(&ledger["items"][0]["id"]);

    // An operator credit and refunds: of it (in the ledger) and of the card top-up (at Stripe).
    let (status, credit) = api
        .send(
            "POST",
            &format!("/api/v1/admin/users/{payer_id}/balance"),
            Some(&admin),
            Some(json!({"amount_minor": 1000, "currency": "USD", "reason": "e2e goodwill"})),
        )
        .await;
    assert_eq!(status, 201, "{credit}");
    assert_eq!(api.balance(&user).await, 4000);
    let refunds = format!("/api/v1/admin/users/{payer_id}/refunds");
    let (status, refund) = api
        .send(
            "POST",
            &refunds,
            Some(&admin),
            Some(json!({"credit_entry_id": credit["id"], "amount_minor": 400, "reason": "partly taken back"})),
        )
        .await;
    assert_eq!((status, refund["status"].as_str()), (201, Some("succeeded")), "{refund}");
    let (status, refund) = api
        .send(
            "POST",
            &refunds,
            Some(&admin),
            Some(json!({"credit_entry_id": purchase_id, "amount_minor": 500, "reason": "card refund"})),
        )
        .await;
    assert_eq!((status, refund["status"].as_str()), (201, Some("succeeded")), "{refund}");
    let card_refunds = stripe.requests_to("/v1/refunds");
    assert_eq!(card_refunds.len(), 1, "only the card top-up is refunded at Stripe: {card_refunds:?}");
    assert_eq!(card_refunds[0].field("amount"), Some("500"));
    assert_eq!(api.balance(&user).await, 3100);
    let (status, sessions) =
        api.send("GET", "/api/v1/admin/payments/sessions?status=credited", Some(&admin), None).await;
    assert_eq!(status, 200, "{sessions}");
    assert_eq!(sessions["items"][0]["id"], payment_session_id.as_str());

    assert_eq!(stop(child).await, 0, "gpuaas exits 0 on SIGTERM");

    let verify = gpuaas()
        .args(["ledger", "verify", "--data-dir"])
        .arg(data.path())
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let output = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert_eq!(verify.status.code(), Some(0), "{output}");
    assert!(output.contains("ledger is clean"), "{output}");
    assert!(output.contains("1 accounts, 4 entries"), "{output}");
}

//! Money over HTTP: card top-ups through a fake Stripe and its signed webhook,
//! balances and the ledger, operator credits and refunds, usage, tenant isolation.

use gpuaas_iam::GlobalRole;
use gpuaas_policy::keys;
use gpuaas_testkit::Backend;
use gpuaas_testkit::stripe::{FakeStripe, checkout_event, sign_webhook, stripe_signature};
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, WEBHOOK_SECRET, envelope, json};

const CHECKOUT: &str = "/api/v1/payments/checkout-session";
const WEBHOOK: &str = "/api/v1/payments/webhook";
const BALANCE: &str = "/api/v1/billing/balance";
const LEDGER: &str = "/api/v1/billing/ledger";

async fn webhook(app: &TestApp, body: &[u8], signature: Option<&str>) -> reqwest::Response {
    let mut request = app.client.post(app.url(WEBHOOK)).header("content-type", "application/json").body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.unwrap_or_else(|e| panic!("{e}"))
}

async fn tenant_of(app: &TestApp, token: &str) -> String {
    let me = json(app.get("/api/v1/users/me", token).await, 200).await;
    me["user"]["tenant_id"].as_str().unwrap_or_else(|| panic!("no tenant in {me}")).to_owned()
}

async fn balance_of(app: &TestApp, token: &str) -> serde_json::Value {
    json(app.get(BALANCE, token).await, 200).await
}

fn items(page: &serde_json::Value) -> Vec<serde_json::Value> {
    page["items"].as_array().cloned().unwrap_or_else(|| panic!("no items in {page}"))
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An operator credit of `amount_minor` to `user_id`; returns the ledger entry.
async fn credit(app: &TestApp, token: &str, user_id: &str, amount_minor: i64, currency: &str) -> serde_json::Value {
    let body = json!({"amount_minor": amount_minor, "currency": currency, "reason": "goodwill for the outage"});
    json(app.post(&format!("/api/v1/admin/users/{user_id}/balance"), token, body).await, 201).await
}

async fn a_card_top_up_is_credited_once_by_its_signed_webhook(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let app = TestApp::spawn_with_stripe(backend, &stripe).await;
    let alice = app.token_for("alice").await;
    let admin = app.token_for("admin").await;
    let tenant = tenant_of(&app, &alice).await;
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 0);

    let request = json!({"amount_minor": 2500, "currency": "USD"});
    let opened = json(app.post_idempotent(CHECKOUT, &alice, "top-up-1", request.clone()).await, 201).await;
    let replay = app.post_idempotent(CHECKOUT, &alice, "top-up-1", request).await;
    assert_eq!(replay.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(json(replay, 201).await, opened, "a replay answers the same session");
    let calls = stripe.requests_to("/v1/checkout/sessions");
    assert_eq!(calls.len(), 1, "Stripe was asked once: {calls:?}");
    assert_eq!(calls[0].field("client_reference_id"), Some(text(&opened["payment_session_id"]).as_str()));
    let url = text(&opened["url"]);
    let checkout_id = url.rsplit('/').next().unwrap_or_default().to_owned();
    assert!(url.starts_with("https://checkout.stripe.com/c/pay/cs_test_"), "the fake's URL: {url}");
    let payment_session_id = text(&opened["payment_session_id"]);

    let initiated = json(app.get("/api/v1/admin/payments/sessions?status=initiated", &admin).await, 200).await;
    let session = &items(&initiated)[0];
    assert_eq!(session["id"], payment_session_id.as_str());
    assert_eq!(session["stripe_session_id"], checkout_id.as_str());
    assert_eq!(session["tenant_id"], tenant.as_str());

    let event = checkout_event(
        "evt_1PaidTopUp",
        "checkout.session.completed",
        &checkout_id,
        &payment_session_id,
        &tenant,
        2500,
        "usd",
        "paid",
    );
    // Nothing unsigned, tampered with or stale is believed.
    let unsigned = envelope(webhook(&app, &event, None).await, 400, "webhook_signature_invalid").await;
    assert!(!unsigned.to_string().contains(WEBHOOK_SECRET), "{unsigned}");
    let mut tampered = event.clone();
    let at = String::from_utf8_lossy(&tampered).find("2500").unwrap_or_else(|| panic!("amount in the event"));
    tampered[at] = b'9';
    let signature = sign_webhook(&event, WEBHOOK_SECRET);
    envelope(webhook(&app, &tampered, Some(&signature)).await, 400, "webhook_signature_invalid").await;
    let stale = stripe_signature(&event, WEBHOOK_SECRET, gpuaas_testkit::stripe::now_secs() - 3600);
    envelope(webhook(&app, &event, Some(&stale)).await, 400, "webhook_signature_invalid").await;
    let other_secret = sign_webhook(&event, "whsec_someone_else");
    envelope(webhook(&app, &event, Some(&other_secret)).await, 400, "webhook_signature_invalid").await;
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 0, "rejected deliveries credit nothing");

    let receipt = json(webhook(&app, &event, Some(&signature)).await, 200).await;
    assert_eq!(receipt, json!({"received": true, "outcome": "credited"}));
    let balance = balance_of(&app, &alice).await;
    assert_eq!(balance["amount_minor"], 2500, "{balance}");
    assert_eq!(balance["currency"], "USD");
    assert_eq!(balance["tenant_id"], tenant.as_str());
    let ledger = items(&json(app.get(LEDGER, &alice).await, 200).await);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["entry_type"], "credit_purchase");
    assert_eq!(ledger[0]["amount_minor"], 2500);
    assert_eq!(ledger[0]["currency"], "USD");

    // Stripe delivers at least once: the same event again changes nothing.
    let again = sign_webhook(&event, WEBHOOK_SECRET);
    assert_eq!(json(webhook(&app, &event, Some(&again)).await, 200).await["outcome"], "duplicate");
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 2500);
    assert_eq!(items(&json(app.get(LEDGER, &alice).await, 200).await).len(), 1);

    let credited = json(app.get("/api/v1/admin/payments/sessions?status=credited", &admin).await, 200).await;
    let credited = items(&credited);
    assert_eq!(credited.len(), 1, "{credited:?}");
    assert_eq!(credited[0]["id"], payment_session_id.as_str());
    assert_eq!(credited[0]["ledger_entry_id"], ledger[0]["id"]);
    let initiated = json(app.get("/api/v1/admin/payments/sessions?status=initiated", &admin).await, 200).await;
    assert!(items(&initiated).is_empty(), "{initiated}");
    let bad = app.get("/api/v1/admin/payments/sessions?status=paid", &admin).await;
    assert_eq!(envelope(bad, 400, "validation_error").await["error"]["details"]["field"], "status");

    // An event for a session that is not ours is acknowledged and ignored.
    let foreign =
        checkout_event("evt_foreign", "checkout.session.completed", "cs_test_other", "nope", &tenant, 9, "usd", "paid");
    let signature = sign_webhook(&foreign, WEBHOOK_SECRET);
    assert_eq!(json(webhook(&app, &foreign, Some(&signature)).await, 200).await["outcome"], "ignored");
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 2500);

    let portal = json(app.post("/api/v1/payments/customer-portal-session", &alice, json!({})).await, 201).await;
    assert!(text(&portal["url"]).starts_with("https://billing.stripe.com/p/session/"), "{portal}");
}

async fn checkout_requests_are_checked_before_stripe_is_asked(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let app = TestApp::spawn_with_stripe(backend, &stripe).await;
    let alice = app.token_for("alice").await;
    for amount in [0, 499, 1_000_001, -5] {
        let response = app.post(CHECKOUT, &alice, json!({"amount_minor": amount, "currency": "USD"})).await;
        let body = envelope(response, 400, "payment_amount_out_of_range").await;
        assert_eq!(body["error"]["details"]["field"], "amount_minor", "{body}");
    }
    let response = app.post(CHECKOUT, &alice, json!({"amount_minor": 1000, "currency": "JPY"})).await;
    assert_eq!(envelope(response, 400, "validation_error").await["error"]["details"]["field"], "currency");
    let response = app.post(CHECKOUT, &alice, json!({"amount_minor": 1000, "currency": "USD", "tip": 5})).await;
    assert_eq!(envelope(response, 400, "unknown_field").await["error"]["details"]["field"], "tip");
    assert!(stripe.requests().is_empty(), "Stripe was asked: {:?}", stripe.requests());
}

async fn an_unconfigured_platform_refuses_card_payments_but_operators_still_credit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let admin = app.token_for("admin").await;
    let response = app.post(CHECKOUT, &alice, json!({"amount_minor": 1000, "currency": "USD"})).await;
    envelope(response, 503, "payments_not_configured").await;
    let response = app.post("/api/v1/payments/customer-portal-session", &alice, json!({})).await;
    envelope(response, 503, "payments_not_configured").await;
    let body = checkout_event("evt_x", "checkout.session.completed", "cs_test_x", "x", "t", 1000, "usd", "paid");
    let signature = sign_webhook(&body, WEBHOOK_SECRET);
    envelope(webhook(&app, &body, Some(&signature)).await, 503, "payments_not_configured").await;

    let alice_id = app.user_id("alice").await;
    let entry = credit(&app, &admin, &alice_id, 700, "USD").await;
    assert_eq!(entry["entry_type"], "admin_credit");
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 700);
    // An operator credit is refunded in the ledger alone, so no Stripe is needed.
    let refund = json!({"credit_entry_id": entry["id"], "amount_minor": 200, "reason": "partial"});
    let refunded = json(app.post(&format!("/api/v1/admin/users/{alice_id}/refunds"), &admin, refund).await, 201).await;
    assert_eq!(refunded["status"], "succeeded", "{refunded}");
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 500);
}

async fn operators_credit_and_refund_with_a_reason_and_an_audit_trail(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let app = TestApp::spawn_with_stripe(backend, &stripe).await;
    let alice = app.token_for("alice").await;
    let alice_id = app.user_id("alice").await;
    let bob_id = app.user_id("bob").await;
    let admin = app.token_for("admin").await;
    let balance_path = format!("/api/v1/admin/users/{alice_id}/balance");
    let refunds_path = format!("/api/v1/admin/users/{alice_id}/refunds");

    // A plain user has no billing:operate, not even over their own account.
    let body = json!({"amount_minor": 100, "currency": "USD", "reason": "x"});
    envelope(app.post(&balance_path, &alice, body).await, 403, "forbidden").await;
    let body = json!({"credit_entry_id": "x", "amount_minor": 1, "reason": "x"});
    envelope(app.post(&refunds_path, &alice, body).await, 403, "forbidden").await;
    envelope(app.get("/api/v1/admin/payments/sessions", &alice).await, 403, "forbidden").await;

    app.create_user("cashier@test.local", GlobalRole::BillingOperator).await;
    let login = json(app.login("cashier@test.local", PASSWORD).await, 200).await;
    let cashier = text(&login["access_token"]);
    let missing = app.post(&balance_path, &cashier, json!({"amount_minor": 100, "currency": "USD"})).await;
    assert_eq!(envelope(missing, 400, "validation_error").await["error"]["details"]["field"], "reason");
    let blank = app.post(&balance_path, &cashier, json!({"amount_minor": 100, "currency": "USD", "reason": ""})).await;
    assert_eq!(envelope(blank, 400, "validation_error").await["error"]["details"]["field"], "reason");
    let zero = app.post(&balance_path, &cashier, json!({"amount_minor": 0, "currency": "USD", "reason": "x"})).await;
    assert_eq!(envelope(zero, 400, "validation_error").await["error"]["details"]["field"], "amount_minor");
    let nobody = format!("/api/v1/admin/users/{}/balance", gpuaas_kernel::new_id());
    let body = json!({"amount_minor": 100, "currency": "USD", "reason": "x"});
    envelope(app.post(&nobody, &cashier, body).await, 404, "not_found").await;

    let entry = credit(&app, &cashier, &alice_id, 1500, "USD").await;
    assert_eq!(entry["entry_type"], "admin_credit");
    assert_eq!(entry["amount_minor"], 1500);
    assert_eq!(entry["description"], "goodwill for the outage");
    let balance = balance_of(&app, &alice).await;
    assert_eq!((balance["amount_minor"].as_i64(), balance["currency"].as_str()), (Some(1500), Some("USD")));
    let audit = json(app.get("/api/v1/admin/audit-logs?action=billing.admin_adjustment", &admin).await, 200).await;
    let audit = items(&audit);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["actor_role"], "billing_operator", "{}", audit[0]);
    assert!(audit[0].to_string().contains("goodwill for the outage"), "the reason is kept: {}", audit[0]);
    // Bob's account is not touched by Alice's credit.
    let bob = app.token_for("bob").await;
    assert_eq!(balance_of(&app, &bob).await["amount_minor"], 0);

    // Refunds of that credit: within the window, never more than what remains.
    let credit_id = text(&entry["id"]);
    let refund = |amount: i64| json!({"credit_entry_id": credit_id, "amount_minor": amount, "reason": "asked back"});
    let done = json(app.post(&refunds_path, &cashier, refund(600)).await, 201).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["credit_entry_id"], credit_id.as_str());
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 900);
    envelope(app.post(&refunds_path, &cashier, refund(901)).await, 422, "refund_exceeds_remainder").await;
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 900);
    let ledger = items(&json(app.get(&format!("{LEDGER}?type=refund"), &alice).await, 200).await);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["amount_minor"], -600);
    // Bob's user id does not reach Alice's credit.
    let crossed = app.post(&format!("/api/v1/admin/users/{bob_id}/refunds"), &cashier, refund(1)).await;
    envelope(crossed, 404, "not_found").await;
    assert!(stripe.requests_to("/v1/refunds").is_empty(), "an operator credit is not refunded at Stripe");

    app.policy.set(keys::BILLING_REFUND_WINDOW_DAYS, &0).await.unwrap_or_else(|e| panic!("{e}"));
    envelope(app.post(&refunds_path, &cashier, refund(100)).await, 422, "refund_window_exceeded").await;
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 900);

    // The account is in USD now: a credit in EUR is refused, and so is a EUR top-up.
    let eur = app.post(&balance_path, &cashier, json!({"amount_minor": 100, "currency": "EUR", "reason": "x"})).await;
    envelope(eur, 409, "currency_mismatch").await;
    let eur = app.post(CHECKOUT, &alice, json!({"amount_minor": 1000, "currency": "EUR"})).await;
    envelope(eur, 409, "currency_mismatch").await;
    assert!(stripe.requests_to("/v1/checkout/sessions").is_empty());
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 900);

    // A debit takes money back by hand.
    let debit = json!({"amount_minor": -400, "currency": "USD", "reason": "correction"});
    let debit = json(app.post(&balance_path, &admin, debit).await, 201).await;
    assert_eq!(debit["entry_type"], "admin_debit");
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 500);
}

async fn the_ledger_filters_by_type_and_time_and_pages_without_gaps(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let alice_id = app.user_id("alice").await;
    let admin = app.token_for("admin").await;
    let mut posted = Vec::new();
    for n in 1..=7 {
        posted.push(credit(&app, &admin, &alice_id, n * 100, "USD").await);
    }
    let debit = json!({"amount_minor": -50, "currency": "USD", "reason": "fee"});
    posted.push(json(app.post(&format!("/api/v1/admin/users/{alice_id}/balance"), &admin, debit).await, 201).await);
    assert_eq!(balance_of(&app, &alice).await["amount_minor"], 2750);

    // Newest first, three at a time, every entry exactly once.
    let mut seen = Vec::new();
    let mut path = format!("{LEDGER}?limit=3");
    loop {
        let page = json(app.get(&path, &alice).await, 200).await;
        let page_items = items(&page);
        assert!(page_items.len() <= 3, "{page}");
        seen.extend(page_items.iter().map(|entry| text(&entry["id"])));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{LEDGER}?limit=3&cursor={}", encode(cursor)),
            None => break,
        }
    }
    let expected: Vec<String> = posted.iter().rev().map(|entry| text(&entry["id"])).collect();
    assert_eq!(seen, expected);

    let credits = items(&json(app.get(&format!("{LEDGER}?type=admin_credit"), &alice).await, 200).await);
    assert_eq!(credits.len(), 7);
    assert!(credits.iter().all(|entry| entry["entry_type"] == "admin_credit"));
    let debits = items(&json(app.get(&format!("{LEDGER}?type=admin_debit"), &alice).await, 200).await);
    assert_eq!(debits.len(), 1);
    assert_eq!(debits[0]["amount_minor"], -50);

    let fourth = text(&posted[3]["created_at"]);
    let from = items(&json(app.get(&format!("{LEDGER}?from={}", encode(&fourth)), &alice).await, 200).await);
    assert!(from.len() >= 5 && from.len() <= 8, "from the 4th entry on: {from:?}");
    assert!(from.iter().any(|entry| entry["id"] == posted[3]["id"]), "from is inclusive");
    assert!(from.iter().all(|entry| text(&entry["created_at"]) >= fourth));
    let past = items(&json(app.get(&format!("{LEDGER}?to=2000-01-01T00:00:00Z"), &alice).await, 200).await);
    assert!(past.is_empty(), "{past:?}");
    let future = items(&json(app.get(&format!("{LEDGER}?from=2999-01-01T00:00:00Z"), &alice).await, 200).await);
    assert!(future.is_empty(), "{future:?}");
    let window = format!("{LEDGER}?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z&type=admin_credit&limit=200");
    assert_eq!(items(&json(app.get(&window, &alice).await, 200).await).len(), 7);

    let bad_type = app.get(&format!("{LEDGER}?type=gift"), &alice).await;
    assert_eq!(envelope(bad_type, 400, "validation_error").await["error"]["details"]["field"], "type");
    let bad_from = app.get(&format!("{LEDGER}?from=yesterday"), &alice).await;
    assert_eq!(envelope(bad_from, 400, "validation_error").await["error"]["details"]["field"], "from");
    let bad_to = app.get(&format!("{LEDGER}?to=2024-13-01"), &alice).await;
    assert_eq!(envelope(bad_to, 400, "validation_error").await["error"]["details"]["field"], "to");
    let bad_limit = app.get(&format!("{LEDGER}?limit=0"), &alice).await;
    assert_eq!(envelope(bad_limit, 400, "validation_error").await["error"]["details"]["field"], "limit");
    let bad_cursor = app.get(&format!("{LEDGER}?cursor=not-a-cursor"), &alice).await;
    assert_eq!(bad_cursor.status().as_u16(), 400);
}

async fn usage_is_listed_and_exported_as_csv(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let bob = app.token_for("bob").await;
    let tenant = tenant_of(&app, &alice).await;
    let bob_tenant = tenant_of(&app, &bob).await;

    let empty = json(app.get("/api/v1/billing/usage", &alice).await, 200).await;
    assert_eq!(empty, json!({"items": [], "next_cursor": null}));
    let csv = app.get("/api/v1/billing/usage/csv", &alice).await;
    assert_eq!(csv.status().as_u16(), 200);
    let content_type = csv.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    assert_eq!(csv.text().await.unwrap_or_else(|e| panic!("{e}")), gpuaas_billing::USAGE_CSV_HEADER);

    let start = gpuaas_kernel::Timestamp::parse_rfc3339("2026-01-05T10:00:00Z").unwrap_or_else(|e| panic!("{e}"));
    let mut tx = app.store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    for (n, tenant_id) in [(1, tenant.as_str()), (2, tenant.as_str()), (3, tenant.as_str()), (4, bob_tenant.as_str())] {
        let allocation = format!("alloc-{n}");
        let record = gpuaas_billing::NewUsageRecord {
            tenant_id,
            project_id: "proj-1",
            allocation_id: &allocation,
            sku_id: "h100-80gb-x8",
            gpu_count: n,
            price_per_gpu_hour_minor: 250,
            currency: "USD",
            started_at: start,
            ended_at: None,
            billed_seconds: 3600,
            billed_minor: 250 * n,
        };
        gpuaas_billing::insert_usage_record(&mut tx, &record).await.unwrap_or_else(|e| panic!("{e}"));
    }
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));

    let page = json(app.get("/api/v1/billing/usage?limit=2", &alice).await, 200).await;
    let first = items(&page);
    assert_eq!(first.len(), 2);
    let cursor = text(&page["next_cursor"]);
    let rest =
        json(app.get(&format!("/api/v1/billing/usage?limit=2&cursor={}", encode(&cursor)), &alice).await, 200).await;
    let mut allocations: Vec<String> =
        first.iter().chain(items(&rest).iter()).map(|record| text(&record["allocation_id"])).collect();
    allocations.sort();
    assert_eq!(allocations, ["alloc-1", "alloc-2", "alloc-3"], "Alice sees her three records, not Bob's");
    assert!(rest["next_cursor"].is_null(), "{rest}");

    let csv = app.get("/api/v1/billing/usage/csv", &alice).await.text().await.unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 4, "header and three rows: {csv}");
    assert_eq!(format!("{}\r\n", lines[0]), gpuaas_billing::USAGE_CSV_HEADER);
    assert!(lines[1..].iter().all(|line| line.contains(&tenant) && !line.contains("alloc-4")), "{csv}");
    assert!(lines.iter().any(|line| line.contains("alloc-3") && line.contains(",750,")), "{csv}");
    let bob_csv = app.get("/api/v1/billing/usage/csv", &bob).await.text().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bob_csv.split_terminator("\r\n").count(), 2, "{bob_csv}");
}

async fn tenants_never_see_each_others_money(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let bob = app.token_for("bob").await;
    let bob_id = app.user_id("bob").await;
    let admin = app.token_for("admin").await;
    let entry = credit(&app, &admin, &bob_id, 4200, "GBP").await;

    let bob_balance = balance_of(&app, &bob).await;
    assert_eq!((bob_balance["amount_minor"].as_i64(), bob_balance["currency"].as_str()), (Some(4200), Some("GBP")));
    let alice_balance = balance_of(&app, &alice).await;
    assert_eq!(alice_balance["amount_minor"], 0);
    assert!(alice_balance["currency"].is_null(), "{alice_balance}");
    assert_eq!(alice_balance["tenant_id"], tenant_of(&app, &alice).await.as_str());
    assert!(items(&json(app.get(LEDGER, &alice).await, 200).await).is_empty());
    assert_eq!(items(&json(app.get(LEDGER, &bob).await, 200).await).len(), 1);
    // Query parameters cannot point at another tenant.
    let other =
        app.get(&format!("{LEDGER}?tenant_id={}", entry["tenant_id"].as_str().unwrap_or_default()), &alice).await;
    assert_eq!(other.status().as_u16(), 400);
    // A cursor from Bob's ledger does not reveal his entries to Alice.
    let bob_page = json(app.get(&format!("{LEDGER}?limit=1"), &bob).await, 200).await;
    assert!(bob_page["next_cursor"].is_null());
    envelope(app.get(BALANCE, "not-a-token").await, 401, "token_invalid").await;
}

gpuaas_testkit::both_backends!(
    a_card_top_up_is_credited_once_by_its_signed_webhook,
    checkout_requests_are_checked_before_stripe_is_asked,
    an_unconfigured_platform_refuses_card_payments_but_operators_still_credit,
    operators_credit_and_refund_with_a_reason_and_an_audit_trail,
    the_ledger_filters_by_type_and_time_and_pages_without_gaps,
    usage_is_listed_and_exported_as_csv,
    tenants_never_see_each_others_money,
);

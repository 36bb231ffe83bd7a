//! Checkout sessions and the webhooks that credit them, on both databases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use gpuaas_payments::{PaymentsError, SessionFilter, SessionStatus, WebhookOutcome};
use gpuaas_testkit::{Backend, assert_err, both_backends};
use support::*;

const TENANT: &str = "tenant-a";

async fn checkout_creates_an_initiated_session_and_asks_stripe(backend: Backend) {
    let env = env(backend).await;
    let response = env.payments.create_checkout_session(&actor(TENANT), 2500, "usd").await.unwrap();
    assert!(response.url.starts_with("https://checkout.stripe.com/c/pay/cs_test_"), "{}", response.url);

    let session = env.payments.session(&response.payment_session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Initiated);
    assert_eq!(session.amount_minor, 2500);
    assert_eq!(session.currency, "USD");
    assert_eq!(session.tenant_id, TENANT);
    let cs = session.stripe_session_id.clone().unwrap();
    assert!(response.url.ends_with(&cs));

    let customers = env.stripe.requests_to("/v1/customers");
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].field("metadata[tenant_id]"), Some(TENANT));
    let calls = env.stripe.requests_to("/v1/checkout/sessions");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.authorization.as_deref(), Some(format!("Bearer {SECRET_KEY}").as_str()));
    assert_eq!(call.idempotency_key.as_deref(), Some(response.payment_session_id.as_str()));
    assert_eq!(call.field("mode"), Some("payment"));
    assert_eq!(call.field("line_items[0][price_data][currency]"), Some("usd"));
    assert_eq!(call.field("line_items[0][price_data][unit_amount]"), Some("2500"));
    assert_eq!(call.field("line_items[0][quantity]"), Some("1"));
    assert!(call.field("line_items[0][price_data][product_data][name]").is_some());
    assert_eq!(call.field("client_reference_id"), Some(response.payment_session_id.as_str()));
    assert_eq!(call.field("metadata[tenant_id]"), Some(TENANT));
    assert_eq!(call.field("metadata[payment_session_id]"), Some(response.payment_session_id.as_str()));
    assert_eq!(call.field("customer"), Some("cus_0001"));
    assert!(call.field("success_url").unwrap().contains("{CHECKOUT_SESSION_ID}"));
    assert!(call.field("cancel_url").is_some());

    // The tenant's customer is remembered: a second checkout does not create another.
    env.payments.create_checkout_session(&actor(TENANT), 1000, "USD").await.unwrap();
    assert_eq!(env.stripe.requests_to("/v1/customers").len(), 1);
    assert_eq!(env.stripe.requests_to("/v1/checkout/sessions")[1].field("customer"), Some("cus_0001"));
    // Nothing is credited before a webhook.
    assert_eq!(balance(&env.store, TENANT).await, 0);
}

async fn out_of_range_amounts_and_unknown_currencies_never_reach_stripe(backend: Backend) {
    let env = env(backend).await;
    let error = assert_err!(
        env.payments.create_checkout_session(&actor(TENANT), 499, "USD").await,
        PaymentsError::AmountOutOfRange { min: 500, max: 1_000_000 }
    );
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::PaymentAmountOutOfRange);
    assert_err!(
        env.payments.create_checkout_session(&actor(TENANT), 1_000_001, "USD").await,
        PaymentsError::AmountOutOfRange { .. }
    );
    let error = assert_err!(
        env.payments.create_checkout_session(&actor(TENANT), 1000, "JPY").await,
        PaymentsError::Invalid { .. }
    );
    assert_eq!(error.field(), Some("currency"));
    assert_err!(env.payments.create_checkout_session(&actor(TENANT), 1000, "US").await, PaymentsError::Invalid { .. });
    assert!(env.stripe.requests().is_empty(), "{:?}", env.stripe.requests());
    assert_eq!(count(&env.store, "SELECT COUNT(*) FROM payment_sessions", &[]).await, 0);
}

async fn without_stripe_every_card_call_is_not_configured(backend: Backend) {
    let env = env_with(backend, false).await;
    let error = assert_err!(
        env.payments.create_checkout_session(&actor(TENANT), 1000, "USD").await,
        PaymentsError::NotConfigured
    );
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::PaymentsNotConfigured);
    assert_eq!(error.code().http_status(), 503);
    assert_err!(env.payments.create_portal_session(&actor(TENANT)).await, PaymentsError::NotConfigured);
    let body = checkout_event("evt_1", "checkout.session.completed", "cs_test_x", "ps", TENANT, 1000, "usd", "paid");
    assert_err!(env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await, PaymentsError::NotConfigured);
    // Operators can still credit by hand.
    env.payments.admin_adjust_balance(&operator(), TENANT, 700, "USD", "goodwill", None).await.unwrap();
    assert_eq!(balance(&env.store, TENANT).await, 700);
}

async fn a_stripe_failure_at_checkout_fails_the_session(backend: Backend) {
    let env = env(backend).await;
    // Let the customer exist first, so the checkout call itself fails.
    env.payments.create_checkout_session(&actor(TENANT), 1000, "USD").await.unwrap();
    env.stripe.fail(true);
    let error = assert_err!(
        env.payments.create_checkout_session(&actor(TENANT), 1000, "USD").await,
        PaymentsError::Provider(_)
    );
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::PaymentProviderError);
    assert!(!error.to_string().contains(SECRET_KEY));
    let failed = env
        .payments
        .list_sessions(&SessionFilter { status: Some(SessionStatus::Failed), tenant_id: None }, None, None)
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    assert!(failed.items[0].failure_reason.is_some());
}

async fn a_portal_session_uses_the_tenants_customer(backend: Backend) {
    let env = env(backend).await;
    let url = env.payments.create_portal_session(&actor(TENANT)).await.unwrap();
    assert!(url.starts_with("https://billing.stripe.com/p/session/"), "{url}");
    let calls = env.stripe.requests_to("/v1/billing_portal/sessions");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].field("customer"), Some("cus_0001"));
    assert_eq!(calls[0].field("return_url"), Some("https://console.example.com/billing"));
}

async fn a_signed_webhook_credits_exactly_once(backend: Backend) {
    let env = env(backend).await;
    let (id, cs) = open_checkout(&env, TENANT, 2500, "USD").await;
    let body = checkout_event("evt_1", "checkout.session.completed", &cs, &id, TENANT, 2500, "usd", "paid");

    let outcome = env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();
    let WebhookOutcome::Credited { payment_session_id, ledger_entry_id } = outcome else {
        panic!("expected a credit, got {outcome:?}");
    };
    assert_eq!(payment_session_id, id);
    assert_eq!(balance(&env.store, TENANT).await, 2500);
    let session = env.payments.session(&id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Credited);
    assert_eq!(session.ledger_entry_id.as_deref(), Some(ledger_entry_id.as_str()));
    assert!(session.stripe_payment_intent.as_deref().is_some_and(|pi| pi.starts_with("pi_")));
    let entry = gpuaas_billing::entry(&env.store, &ledger_entry_id).await.unwrap();
    assert_eq!(entry.entry_type, gpuaas_billing::EntryType::CreditPurchase);
    assert_eq!(entry.idempotency_key, format!("stripe:{cs}"));
    assert_eq!((entry.reference_type.as_str(), entry.reference_id.as_str()), ("payment_session", id.as_str()));
    assert_eq!(outbox_count(&env.store, "platform.payments.balance_credited").await, 1);
    assert_eq!(audit_count(&env.store, "payments.balance_credited").await, 1);
    let envelope: String = {
        use gpuaas_store::sqlx::{self, Row as _};
        sqlx::query("SELECT envelope FROM outbox_events WHERE subject = 'platform.payments.balance_credited'")
            .fetch_one(env.store.pool())
            .await
            .unwrap()
            .try_get("envelope")
            .unwrap()
    };
    let envelope: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!(
        envelope["payload"],
        serde_json::json!({"tenant_id": TENANT, "payment_session_id": id, "amount_minor": 2500,
            "currency": "USD", "ledger_entry_id": ledger_entry_id})
    );

    // The same event again: a duplicate, nothing new.
    let again = env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();
    assert_eq!(again, WebhookOutcome::Duplicate);
    // Another event id for the same Checkout session (Stripe resends as a new event,
    // or async_payment_succeeded follows): still one credit.
    for (event_id, event_type) in
        [("evt_2", "checkout.session.completed"), ("evt_3", "checkout.session.async_payment_succeeded")]
    {
        let other = checkout_event(event_id, event_type, &cs, &id, TENANT, 2500, "usd", "paid");
        let outcome = env.payments.handle_webhook(&other, Some(&sign_now(&other)), CORR).await.unwrap();
        assert_eq!(outcome, WebhookOutcome::Ignored);
    }
    // And a late expiry does not undo it.
    let expired = checkout_event("evt_4", "checkout.session.expired", &cs, &id, TENANT, 2500, "usd", "unpaid");
    assert_eq!(
        env.payments.handle_webhook(&expired, Some(&sign_now(&expired)), CORR).await.unwrap(),
        WebhookOutcome::Ignored
    );

    assert_eq!(balance(&env.store, TENANT).await, 2500);
    assert_eq!(ledger_count(&env.store, TENANT, "credit_purchase").await, 1);
    assert_eq!(outbox_count(&env.store, "platform.payments.balance_credited").await, 1);
    assert_eq!(env.payments.session(&id).await.unwrap().status, SessionStatus::Credited);
    assert_eq!(count(&env.store, "SELECT COUNT(*) FROM stripe_events", &[]).await, 4);
}

async fn fifty_concurrent_deliveries_credit_once(backend: Backend) {
    let env = env(backend).await;
    let (id, cs) = open_checkout(&env, TENANT, 4000, "USD").await;
    let body =
        Arc::new(checkout_event("evt_race", "checkout.session.completed", &cs, &id, TENANT, 4000, "usd", "paid"));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let payments = env.payments.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move { payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await }));
    }
    let mut credited = 0;
    let mut duplicates = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            WebhookOutcome::Credited { .. } => credited += 1,
            WebhookOutcome::Duplicate => duplicates += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((credited, duplicates), (1, 49));
    assert_eq!(ledger_count(&env.store, TENANT, "credit_purchase").await, 1);
    assert_eq!(balance(&env.store, TENANT).await, 4000);
    assert_eq!(outbox_count(&env.store, "platform.payments.balance_credited").await, 1);
}

async fn concurrent_distinct_events_for_one_session_credit_once(backend: Backend) {
    let env = env(backend).await;
    let (id, cs) = open_checkout(&env, TENANT, 4000, "USD").await;
    let mut tasks = Vec::new();
    for n in 0..20 {
        let payments = env.payments.clone();
        let body =
            checkout_event(&format!("evt_{n}"), "checkout.session.completed", &cs, &id, TENANT, 4000, "usd", "paid");
        tasks.push(tokio::spawn(async move { payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await }));
    }
    let mut credited = 0;
    for task in tasks {
        if let WebhookOutcome::Credited { .. } = task.await.unwrap().unwrap() {
            credited += 1;
        }
    }
    assert_eq!(credited, 1);
    assert_eq!(ledger_count(&env.store, TENANT, "credit_purchase").await, 1);
    assert_eq!(balance(&env.store, TENANT).await, 4000);
}

async fn a_mutated_or_stale_webhook_writes_nothing(backend: Backend) {
    let env = env(backend).await;
    let (id, cs) = open_checkout(&env, TENANT, 2500, "USD").await;
    let body = checkout_event("evt_1", "checkout.session.completed", &cs, &id, TENANT, 2500, "usd", "paid");
    let header = sign_now(&body);

    // Same signature, amount raised in the body.
    let mutated = String::from_utf8(body.clone()).unwrap().replace("2500", "250000").into_bytes();
    let error =
        assert_err!(env.payments.handle_webhook(&mutated, Some(&header), CORR).await, PaymentsError::Signature(_));
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::WebhookSignatureInvalid);
    assert_eq!(error.code().http_status(), 400);

    let stale = stripe_signature(&body, WEBHOOK_SECRET, now_secs() - 301);
    assert_err!(
        env.payments.handle_webhook(&body, Some(&stale), CORR).await,
        PaymentsError::Signature(gpuaas_payments::SignatureError::TimestampOutsideTolerance)
    );
    assert_err!(
        env.payments.handle_webhook(&body, None, CORR).await,
        PaymentsError::Signature(gpuaas_payments::SignatureError::MissingHeader)
    );
    let forged = stripe_signature(&body, "whsec_attacker", now_secs());
    assert_err!(env.payments.handle_webhook(&body, Some(&forged), CORR).await, PaymentsError::Signature(_));
    // Not even JSON: refused by the signature before any parsing.
    assert_err!(env.payments.handle_webhook(b"\xff not json", Some(&header), CORR).await, PaymentsError::Signature(_));

    assert_eq!(count(&env.store, "SELECT COUNT(*) FROM stripe_events", &[]).await, 0);
    assert_eq!(balance(&env.store, TENANT).await, 0);
    assert_eq!(count(&env.store, "SELECT COUNT(*) FROM outbox_events", &[]).await, 0);
    assert_eq!(env.payments.session(&id).await.unwrap().status, SessionStatus::Initiated);

    // The genuine delivery still works afterwards.
    let outcome = env.payments.handle_webhook(&body, Some(&header), CORR).await.unwrap();
    assert!(matches!(outcome, WebhookOutcome::Credited { .. }), "{outcome:?}");
}

async fn a_webhook_signed_with_the_previous_secret_is_accepted(backend: Backend) {
    let env = env(backend).await;
    let (id, cs) = open_checkout(&env, TENANT, 1500, "USD").await;
    let body = checkout_event("evt_old", "checkout.session.completed", &cs, &id, TENANT, 1500, "usd", "paid");
    let header = stripe_signature(&body, OLD_WEBHOOK_SECRET, now_secs());
    let outcome = env.payments.handle_webhook(&body, Some(&header), CORR).await.unwrap();
    assert!(matches!(outcome, WebhookOutcome::Credited { .. }), "{outcome:?}");
}

async fn an_amount_mismatch_fails_reconciliation_without_credit(backend: Backend) {
    let env = env(backend).await;
    let (id, cs) = open_checkout(&env, TENANT, 2500, "USD").await;
    let body = checkout_event("evt_1", "checkout.session.completed", &cs, &id, TENANT, 2400, "usd", "paid");
    let outcome = env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();
    assert_eq!(
        outcome,
        WebhookOutcome::Updated { payment_session_id: id.clone(), status: SessionStatus::FailedReconcile }
    );
    let session = env.payments.session(&id).await.unwrap();
    assert_eq!(session.status, SessionStatus::FailedReconcile);
    assert!(session.failure_reason.as_deref().is_some_and(|r| r.contains("2400")), "{session:?}");
    assert_eq!(balance(&env.store, TENANT).await, 0);
    assert_eq!(ledger_count(&env.store, TENANT, "credit_purchase").await, 0);
    assert_eq!(outbox_count(&env.store, "platform.payments.reconcile_failed").await, 1);
    assert_eq!(outbox_count(&env.store, "platform.payments.balance_credited").await, 0);

    // A later, correct-looking event cannot revive it.
    let later = checkout_event("evt_2", "checkout.session.completed", &cs, &id, TENANT, 2500, "usd", "paid");
    assert_eq!(
        env.payments.handle_webhook(&later, Some(&sign_now(&later)), CORR).await.unwrap(),
        WebhookOutcome::Ignored
    );
    assert_eq!(balance(&env.store, TENANT).await, 0);

    // A currency mismatch is one too.
    let (id, cs) = open_checkout(&env, TENANT, 2500, "USD").await;
    let body = checkout_event("evt_3", "checkout.session.completed", &cs, &id, TENANT, 2500, "eur", "paid");
    env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();
    assert_eq!(env.payments.session(&id).await.unwrap().status, SessionStatus::FailedReconcile);
    assert_eq!(balance(&env.store, TENANT).await, 0);
}

async fn unknown_event_types_are_acknowledged_and_ignored(backend: Backend) {
    let env = env(backend).await;
    let body = serde_json::json!({
        "id": "evt_unknown", "object": "event", "type": "customer.subscription.updated",
        "data": {"object": {"id": "sub_1", "object": "subscription"}}
    })
    .to_string()
    .into_bytes();
    let outcome = env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();
    assert_eq!(outcome, WebhookOutcome::Ignored);
    assert_eq!(count(&env.store, "SELECT COUNT(*) FROM stripe_events WHERE event_id = 'evt_unknown'", &[]).await, 1);
    assert_eq!(count(&env.store, "SELECT COUNT(*) FROM outbox_events", &[]).await, 0);
    assert_eq!(count(&env.store, "SELECT COUNT(*) FROM audit_logs", &[]).await, 0);
    // A completed session that is not ours is acknowledged too.
    let foreign = checkout_event(
        "evt_foreign",
        "checkout.session.completed",
        "cs_test_other",
        "nope",
        TENANT,
        900,
        "usd",
        "paid",
    );
    assert_eq!(
        env.payments.handle_webhook(&foreign, Some(&sign_now(&foreign)), CORR).await.unwrap(),
        WebhookOutcome::Ignored
    );
    assert_eq!(balance(&env.store, TENANT).await, 0);
}

async fn delayed_payments_and_expiry_follow_the_state_machine(backend: Backend) {
    let env = env(backend).await;
    let (id, cs) = open_checkout(&env, TENANT, 3000, "USD").await;
    let unpaid = checkout_event("evt_1", "checkout.session.completed", &cs, &id, TENANT, 3000, "usd", "unpaid");
    assert_eq!(
        env.payments.handle_webhook(&unpaid, Some(&sign_now(&unpaid)), CORR).await.unwrap(),
        WebhookOutcome::Updated { payment_session_id: id.clone(), status: SessionStatus::CheckoutCompleted }
    );
    assert_eq!(balance(&env.store, TENANT).await, 0);
    let paid =
        checkout_event("evt_2", "checkout.session.async_payment_succeeded", &cs, &id, TENANT, 3000, "usd", "paid");
    let outcome = env.payments.handle_webhook(&paid, Some(&sign_now(&paid)), CORR).await.unwrap();
    assert!(matches!(outcome, WebhookOutcome::Credited { .. }), "{outcome:?}");
    assert_eq!(balance(&env.store, TENANT).await, 3000);

    let (id, cs) = open_checkout(&env, TENANT, 3000, "USD").await;
    let expired = checkout_event("evt_3", "checkout.session.expired", &cs, &id, TENANT, 3000, "usd", "unpaid");
    env.payments.handle_webhook(&expired, Some(&sign_now(&expired)), CORR).await.unwrap();
    assert_eq!(env.payments.session(&id).await.unwrap().status, SessionStatus::Expired);
    let late = checkout_event("evt_4", "checkout.session.completed", &cs, &id, TENANT, 3000, "usd", "paid");
    assert_eq!(
        env.payments.handle_webhook(&late, Some(&sign_now(&late)), CORR).await.unwrap(),
        WebhookOutcome::Ignored
    );
    assert_eq!(balance(&env.store, TENANT).await, 3000);
}

async fn a_webhook_before_our_update_finds_the_session_by_metadata(backend: Backend) {
    let env = env(backend).await;
    let (id, _) = open_checkout(&env, TENANT, 1200, "USD").await;
    // Simulate the webhook racing our own write of Stripe's session id.
    gpuaas_store::sqlx::query("UPDATE payment_sessions SET stripe_session_id = NULL WHERE id = $1")
        .bind(&id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let body = checkout_event("evt_1", "checkout.session.completed", "cs_test_early", &id, TENANT, 1200, "usd", "paid");
    let outcome = env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();
    assert!(matches!(outcome, WebhookOutcome::Credited { .. }), "{outcome:?}");
    assert_eq!(env.payments.session(&id).await.unwrap().stripe_session_id.as_deref(), Some("cs_test_early"));
}

async fn operators_page_sessions_newest_first(backend: Backend) {
    let env = env(backend).await;
    let mut ids = Vec::new();
    for amount in [1000, 1100, 1200, 1300, 1400] {
        ids.push(open_checkout(&env, TENANT, amount, "USD").await.0);
    }
    let (credited, cs) = open_checkout(&env, "tenant-b", 900, "USD").await;
    let body = checkout_event("evt_1", "checkout.session.completed", &cs, &credited, "tenant-b", 900, "usd", "paid");
    env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();

    let first = env.payments.list_sessions(&SessionFilter::default(), None, Some(4)).await.unwrap();
    assert_eq!(first.items.len(), 4);
    assert_eq!(first.items[0].id, credited);
    let second =
        env.payments.list_sessions(&SessionFilter::default(), first.next_cursor.as_deref(), Some(4)).await.unwrap();
    assert_eq!(second.items.len(), 2);
    assert!(second.next_cursor.is_none());
    let seen: Vec<String> = first.items.iter().chain(&second.items).map(|s| s.id.clone()).collect();
    let mut expected: Vec<String> = ids.iter().rev().cloned().collect();
    expected.insert(0, credited.clone());
    assert_eq!(seen, expected);

    let only_credited = env
        .payments
        .list_sessions(&SessionFilter { status: Some(SessionStatus::Credited), tenant_id: None }, None, None)
        .await
        .unwrap();
    assert_eq!(only_credited.items.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec![credited.as_str()]);
    assert_err!(
        env.payments.list_sessions(&SessionFilter::default(), Some("bogus!"), None).await,
        PaymentsError::Invalid { .. }
    );
    assert_err!(
        env.payments.list_sessions(&SessionFilter::default(), None, Some(0)).await,
        PaymentsError::Invalid { .. }
    );
}

both_backends!(
    checkout_creates_an_initiated_session_and_asks_stripe,
    out_of_range_amounts_and_unknown_currencies_never_reach_stripe,
    without_stripe_every_card_call_is_not_configured,
    a_stripe_failure_at_checkout_fails_the_session,
    a_portal_session_uses_the_tenants_customer,
    a_signed_webhook_credits_exactly_once,
    fifty_concurrent_deliveries_credit_once,
    concurrent_distinct_events_for_one_session_credit_once,
    a_mutated_or_stale_webhook_writes_nothing,
    a_webhook_signed_with_the_previous_secret_is_accepted,
    an_amount_mismatch_fails_reconciliation_without_credit,
    unknown_event_types_are_acknowledged_and_ignored,
    delayed_payments_and_expiry_follow_the_state_machine,
    a_webhook_before_our_update_finds_the_session_by_metadata,
    operators_page_sessions_newest_first,
);

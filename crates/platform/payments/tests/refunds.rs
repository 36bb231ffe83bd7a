//! Operator refunds and manual balance adjustments, on both databases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use gpuaas_billing::EntryType;
use gpuaas_payments::{PaymentsError, RefundStatus};
use gpuaas_policy::keys;
use gpuaas_testkit::{Backend, assert_err, both_backends};
use support::*;

const TENANT: &str = "tenant-a";

async fn a_card_credit_is_refunded_at_stripe_and_in_the_ledger(backend: Backend) {
    let env = env(backend).await;
    let credit = paid_top_up(&env, TENANT, 5000).await;
    let refund = env.payments.refund(&operator(), TENANT, &credit, 2000, "customer asked").await.unwrap();
    assert_eq!(refund.status, RefundStatus::Succeeded);
    assert_eq!(refund.amount_minor, 2000);
    assert_eq!(refund.currency, "USD");
    assert!(refund.stripe_refund_id.as_deref().is_some_and(|id| id.starts_with("re_")), "{refund:?}");

    let calls = env.stripe.requests_to("/v1/refunds");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].field("amount"), Some("2000"));
    let session = env.payments.list_sessions(&Default::default(), None, None).await.unwrap().items.remove(0);
    assert_eq!(calls[0].field("payment_intent"), session.stripe_payment_intent.as_deref());
    assert_eq!(calls[0].idempotency_key.as_deref(), Some(refund.id.as_str()));

    assert_eq!(balance(&env.store, TENANT).await, 3000);
    let entry = gpuaas_billing::entry(&env.store, refund.ledger_entry_id.as_deref().unwrap()).await.unwrap();
    assert_eq!(entry.entry_type, EntryType::Refund);
    assert_eq!(entry.amount_minor, -2000);
    assert_eq!((entry.reference_type.as_str(), entry.reference_id.as_str()), ("ledger_entry", credit.as_str()));
    assert_eq!(entry.idempotency_key, format!("refund:{}", refund.id));
    assert_eq!(audit_count(&env.store, "billing.refund").await, 1);
    assert_eq!(outbox_count(&env.store, "platform.billing.refund_posted").await, 1);
    assert_eq!(env.payments.refund_request(&refund.id).await.unwrap(), refund);

    // What is left can still be refunded, but not a cent more.
    let error = assert_err!(
        env.payments.refund(&operator(), TENANT, &credit, 3001, "too much").await,
        PaymentsError::RefundExceedsRemainder { remaining: 3000 }
    );
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::RefundExceedsRemainder);
    assert_eq!(error.code().http_status(), 422);
    env.payments.refund(&operator(), TENANT, &credit, 3000, "the rest").await.unwrap();
    assert_err!(
        env.payments.refund(&operator(), TENANT, &credit, 1, "nothing left").await,
        PaymentsError::RefundExceedsRemainder { remaining: 0 }
    );
    assert_eq!(balance(&env.store, TENANT).await, 0);
    assert_eq!(env.stripe.requests_to("/v1/refunds").len(), 2);
}

async fn a_credit_older_than_the_window_cannot_be_refunded(backend: Backend) {
    let env = env(backend).await;
    let credit = paid_top_up(&env, TENANT, 5000).await;
    env.policy.set(keys::BILLING_REFUND_WINDOW_DAYS, &0).await.unwrap();
    let error = assert_err!(
        env.payments.refund(&operator(), TENANT, &credit, 100, "late").await,
        PaymentsError::RefundWindowExceeded { days: 0 }
    );
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::RefundWindowExceeded);
    assert!(env.stripe.requests_to("/v1/refunds").is_empty());
    assert_eq!(balance(&env.store, TENANT).await, 5000);
    assert!(env.payments.refunds_of(&credit).await.unwrap().is_empty());
}

async fn an_operator_credit_is_refunded_without_stripe(backend: Backend) {
    let env = env(backend).await;
    let credit =
        env.payments.admin_adjust_balance(&operator(), TENANT, 1000, "USD", "trial credit", None).await.unwrap();
    let refund = env.payments.refund(&operator(), TENANT, &credit.id, 400, "trial ended").await.unwrap();
    assert_eq!(refund.status, RefundStatus::Succeeded);
    assert!(refund.stripe_refund_id.is_none());
    assert!(env.stripe.requests().is_empty(), "{:?}", env.stripe.requests());
    assert_eq!(balance(&env.store, TENANT).await, 600);
}

async fn only_credits_of_the_tenant_can_be_refunded(backend: Backend) {
    let env = env(backend).await;
    let credit = env.payments.admin_adjust_balance(&operator(), TENANT, 1000, "USD", "credit", None).await.unwrap();
    let debit = env.payments.admin_adjust_balance(&operator(), TENANT, -100, "USD", "fee", None).await.unwrap();
    assert_err!(
        env.payments.refund(&operator(), "tenant-b", &credit.id, 100, "wrong tenant").await,
        PaymentsError::NotFound(_)
    );
    let error = assert_err!(
        env.payments.refund(&operator(), TENANT, &debit.id, 100, "a debit").await,
        PaymentsError::Invalid { .. }
    );
    assert_eq!(error.field(), Some("credit_entry_id"));
    assert_err!(
        env.payments.refund(&operator(), TENANT, "no-such-entry", 100, "missing").await,
        PaymentsError::Billing(_)
    );
    assert_err!(env.payments.refund(&operator(), TENANT, &credit.id, 0, "zero").await, PaymentsError::Invalid { .. });
    assert_err!(env.payments.refund(&operator(), TENANT, &credit.id, 10, "").await, PaymentsError::Invalid { .. });
    assert_eq!(balance(&env.store, TENANT).await, 900);
}

async fn a_stripe_refund_failure_posts_nothing(backend: Backend) {
    let env = env(backend).await;
    let credit = paid_top_up(&env, TENANT, 5000).await;
    env.stripe.fail(true);
    let error = assert_err!(
        env.payments.refund(&operator(), TENANT, &credit, 1000, "refund").await,
        PaymentsError::Provider(_)
    );
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::PaymentProviderError);
    assert_eq!(error.code().http_status(), 502);
    assert!(!error.to_string().contains(SECRET_KEY));
    let requests = env.payments.refunds_of(&credit).await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, RefundStatus::Failed);
    assert!(requests[0].failure_reason.is_some());
    assert!(requests[0].ledger_entry_id.is_none());
    assert_eq!(ledger_count(&env.store, TENANT, "refund").await, 0);
    assert_eq!(balance(&env.store, TENANT).await, 5000);
    assert_eq!(outbox_count(&env.store, "platform.billing.refund_posted").await, 0);

    // A failed request reserves nothing: the full amount is still refundable.
    env.stripe.fail(false);
    env.payments.refund(&operator(), TENANT, &credit, 5000, "refund").await.unwrap();
    assert_eq!(balance(&env.store, TENANT).await, 0);
}

async fn concurrent_refunds_never_exceed_the_credit(backend: Backend) {
    let env = env(backend).await;
    let credit = paid_top_up(&env, TENANT, 1000).await;
    let mut tasks = Vec::new();
    for n in 0..10 {
        let payments = env.payments.clone();
        let credit = credit.clone();
        tasks.push(tokio::spawn(async move {
            payments.refund(&operator(), TENANT, &credit, 300, &format!("refund {n}")).await
        }));
    }
    let mut succeeded = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(refund) => {
                assert_eq!(refund.status, RefundStatus::Succeeded);
                succeeded += 1;
            }
            Err(PaymentsError::RefundExceedsRemainder { .. }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(succeeded, 3);
    assert_eq!(env.stripe.requests_to("/v1/refunds").len(), 3, "Stripe was asked for more than the credit");
    let mut conn = env.store.pool().acquire().await.unwrap();
    assert_eq!(gpuaas_billing::refunded_against(&mut conn, &credit).await.unwrap(), 900);
    assert_eq!(balance(&env.store, TENANT).await, 100);
}

async fn operator_adjustments_post_the_right_types_with_audit_rows(backend: Backend) {
    let env = env(backend).await;
    let credit = env.payments.admin_adjust_balance(&operator(), TENANT, 1500, "usd", "goodwill", None).await.unwrap();
    assert_eq!(credit.entry_type, EntryType::AdminCredit);
    assert_eq!(credit.amount_minor, 1500);
    assert_eq!(credit.currency, "USD");
    let debit = env.payments.admin_adjust_balance(&operator(), TENANT, -500, "USD", "correction", None).await.unwrap();
    assert_eq!(debit.entry_type, EntryType::AdminDebit);
    assert_eq!(debit.amount_minor, -500);
    assert_eq!(balance(&env.store, TENANT).await, 1000);
    assert_eq!(audit_count(&env.store, "billing.admin_adjustment").await, 2);
    assert_eq!(
        count(
            &env.store,
            "SELECT COUNT(*) FROM audit_logs WHERE action = 'billing.admin_adjustment' AND actor_id = $1 AND tenant_id = $2",
            &["op-1", TENANT]
        )
        .await,
        2
    );

    // A caller-provided key makes a retry harmless.
    let first = env.payments.admin_adjust_balance(&operator(), TENANT, 200, "USD", "retry", Some("k-1")).await.unwrap();
    let second =
        env.payments.admin_adjust_balance(&operator(), TENANT, 200, "USD", "retry", Some("k-1")).await.unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(balance(&env.store, TENANT).await, 1200);
    assert_eq!(audit_count(&env.store, "billing.admin_adjustment").await, 3);

    // A long reason is kept whole in the audit row even though the ledger shortens it.
    let long = "x".repeat(500);
    env.payments.admin_adjust_balance(&operator(), TENANT, 1, "USD", &long, None).await.unwrap();
}

async fn invalid_adjustments_are_refused(backend: Backend) {
    let env = env(backend).await;
    let error = assert_err!(
        env.payments.admin_adjust_balance(&operator(), TENANT, 0, "USD", "nothing", None).await,
        PaymentsError::Invalid { .. }
    );
    assert_eq!(error.field(), Some("amount_minor"));
    for reason in ["", "   ", &"y".repeat(501)] {
        let error = assert_err!(
            env.payments.admin_adjust_balance(&operator(), TENANT, 100, "USD", reason, None).await,
            PaymentsError::Invalid { .. }
        );
        assert_eq!(error.field(), Some("reason"));
    }
    assert_err!(
        env.payments.admin_adjust_balance(&operator(), TENANT, 100, "dollars", "r", None).await,
        PaymentsError::Invalid { .. }
    );
    // The account's currency is fixed by its first entry.
    env.payments.admin_adjust_balance(&operator(), TENANT, 100, "USD", "first", None).await.unwrap();
    let error = assert_err!(
        env.payments.admin_adjust_balance(&operator(), TENANT, 100, "EUR", "other currency", None).await,
        PaymentsError::Billing(_)
    );
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::CurrencyMismatch);
    assert_eq!(balance(&env.store, TENANT).await, 100);
    assert_eq!(audit_count(&env.store, "billing.admin_adjustment").await, 1);
}

async fn checkout_in_another_currency_than_the_account_is_refused(backend: Backend) {
    let env = env(backend).await;
    env.payments.admin_adjust_balance(&operator(), TENANT, 100, "EUR", "first", None).await.unwrap();
    let error = assert_err!(
        env.payments.create_checkout_session(&actor(TENANT), 1000, "USD").await,
        PaymentsError::CurrencyMismatch { .. }
    );
    assert_eq!(error.code(), gpuaas_kernel::ErrCode::CurrencyMismatch);
    assert!(env.stripe.requests().is_empty());
}

async fn a_payment_in_another_currency_than_the_account_fails_reconciliation(backend: Backend) {
    let env = env(backend).await;
    let (id, cs) = open_checkout(&env, TENANT, 1000, "USD").await;
    // The account gets its currency from an operator entry while the customer pays.
    env.payments.admin_adjust_balance(&operator(), TENANT, 100, "EUR", "first", None).await.unwrap();
    let body = checkout_event("evt_1", "checkout.session.completed", &cs, &id, TENANT, 1000, "usd", "paid");
    let outcome = env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();
    assert_eq!(
        outcome,
        gpuaas_payments::WebhookOutcome::Updated {
            payment_session_id: id.clone(),
            status: gpuaas_payments::SessionStatus::FailedReconcile
        }
    );
    assert_eq!(balance(&env.store, TENANT).await, 100);
    assert_eq!(outbox_count(&env.store, "platform.payments.reconcile_failed").await, 1);
    // Acknowledged, so Stripe does not retry it for days.
    let again = env.payments.handle_webhook(&body, Some(&sign_now(&body)), CORR).await.unwrap();
    assert_eq!(again, gpuaas_payments::WebhookOutcome::Duplicate);
}

both_backends!(
    a_payment_in_another_currency_than_the_account_fails_reconciliation,
    a_card_credit_is_refunded_at_stripe_and_in_the_ledger,
    a_credit_older_than_the_window_cannot_be_refunded,
    an_operator_credit_is_refunded_without_stripe,
    only_credits_of_the_tenant_can_be_refunded,
    a_stripe_refund_failure_posts_nothing,
    concurrent_refunds_never_exceed_the_credit,
    operator_adjustments_post_the_right_types_with_audit_rows,
    invalid_adjustments_are_refused,
    checkout_in_another_currency_than_the_account_is_refused,
);

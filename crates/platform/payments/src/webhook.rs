//! Stripe webhooks: verified, recorded once by event id, applied through the session
//! state machine, all in one transaction with the ledger credit it causes.

use std::collections::HashMap;

use gpuaas_audit::{ActorType, AuditResult, NewAuditLog};
use gpuaas_billing::{BillingError, EntryType, NewEntry};
use gpuaas_events::EventEnvelope;
use gpuaas_kernel::Timestamp;
use gpuaas_store::Connection;
use gpuaas_store::sqlx;
use serde::Deserialize;
use serde_json::json;

use crate::checkout::{SESSION_COLUMNS, session_from_row};
use crate::{
    DEFAULT_TOLERANCE_SECONDS, PaymentSession, Payments, PaymentsError, SessionEvent, SessionStatus, for_update,
    next_status, verify_signature,
};

/// Longest Stripe event id accepted; Stripe's are around 30 characters.
const MAX_EVENT_ID_LEN: usize = 255;

/// What a verified webhook did. Every variant is a 2xx for Stripe: only a refused
/// signature or a failure of ours makes Stripe retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The account was credited.
    Credited { payment_session_id: String, ledger_entry_id: String },
    /// The session moved to a state that credits nothing (checkout completed but unpaid,
    /// expired, failed, failed to reconcile).
    Updated { payment_session_id: String, status: SessionStatus },
    /// This event id was processed before; nothing was written.
    Duplicate,
    /// Recorded and acknowledged, but nothing to do: a type we do not handle, a session
    /// that is not ours, or a move the state machine refuses (e.g. after `credited`).
    Ignored,
}

/// What every step of one delivery needs to know about it.
#[derive(Clone, Copy)]
struct EventContext<'a> {
    event_id: &'a str,
    correlation_id: &'a str,
    checkpoint_every: i64,
}

#[derive(Deserialize)]
struct StripeEvent {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: serde_json::Value,
}

/// The fields of a Checkout session object this platform reads.
#[derive(Deserialize)]
struct CheckoutObject {
    id: String,
    #[serde(default)]
    amount_total: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    /// A string id, or the object itself when a client expanded it.
    #[serde(default)]
    payment_intent: Option<serde_json::Value>,
    #[serde(default)]
    payment_status: Option<String>,
    #[serde(default)]
    metadata: Option<HashMap<String, serde_json::Value>>,
}

impl CheckoutObject {
    fn payment_intent(&self) -> Option<String> {
        match self.payment_intent.as_ref()? {
            serde_json::Value::String(id) => Some(id.clone()),
            other => other.get("id").and_then(|id| id.as_str()).map(str::to_owned),
        }
    }

    fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key)?.as_str()
    }

    /// Why Stripe's view of the payment differs from ours, if it does.
    fn mismatch(&self, session: &PaymentSession) -> Option<String> {
        let currency_matches =
            self.currency.as_deref().is_some_and(|currency| currency.eq_ignore_ascii_case(&session.currency));
        if self.amount_total != Some(session.amount_minor) || !currency_matches {
            return Some(format!(
                "Stripe reported {} {} for a session of {} {}",
                self.amount_total.map_or_else(|| "no amount".into(), |amount| amount.to_string()),
                self.currency.as_deref().unwrap_or("no currency").to_ascii_uppercase(),
                session.amount_minor,
                session.currency
            ));
        }
        if let Some(tenant) = self.metadata("tenant_id")
            && tenant != session.tenant_id
        {
            return Some("Stripe reported a different tenant for this session".into());
        }
        None
    }
}

impl Payments {
    /// Handles one webhook delivery. `raw_body` must be the request body exactly as
    /// received (not re-serialized JSON) and `signature_header` the `Stripe-Signature`
    /// header; the signature is checked before the body is parsed.
    pub async fn handle_webhook(
        &self,
        raw_body: &[u8],
        signature_header: Option<&str>,
        correlation_id: &str,
    ) -> Result<WebhookOutcome, PaymentsError> {
        let (_, config) = self.stripe()?;
        let now = Timestamp::now().as_micros() / 1_000_000;
        verify_signature(raw_body, signature_header, &config.webhook_secrets, now, DEFAULT_TOLERANCE_SECONDS)?;

        let event: StripeEvent =
            serde_json::from_slice(raw_body).map_err(|_| PaymentsError::invalid("body", "not a Stripe event"))?;
        if event.id.is_empty() || event.id.len() > MAX_EVENT_ID_LEN {
            return Err(PaymentsError::invalid("id", "not a Stripe event id"));
        }

        // Read before the transaction: a policy read inside it would wait for a second
        // pool connection while holding one, and a burst of deliveries would starve the pool.
        let checkpoint_every = self.checkpoint_every().await?;
        let mut tx = self.store().begin().await?;
        // The event id's primary key makes concurrent deliveries of one event queue
        // behind the first; whichever comes second finds it and does nothing.
        let inserted = sqlx::query(
            "INSERT INTO stripe_events (event_id, event_type, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&event.id)
        .bind(&event.event_type)
        .bind(Timestamp::now().as_micros())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            tracing::info!(event_id = %event.id, "duplicate Stripe event acknowledged");
            return Ok(WebhookOutcome::Duplicate);
        }

        let outcome = match event.event_type.as_str() {
            "checkout.session.completed"
            | "checkout.session.async_payment_succeeded"
            | "checkout.session.async_payment_failed"
            | "checkout.session.expired" => {
                let object: CheckoutObject = serde_json::from_value(event.data.object)
                    .map_err(|_| PaymentsError::invalid("data.object", "not a Checkout session"))?;
                let context = EventContext { event_id: &event.id, correlation_id, checkpoint_every };
                self.apply_checkout_event(&mut tx, &context, &event.event_type, &object).await?
            }
            _ => WebhookOutcome::Ignored,
        };
        tx.commit().await?;
        tracing::info!(event_id = %event.id, event_type = %event.event_type, ?outcome, "Stripe event processed");
        Ok(outcome)
    }

    async fn apply_checkout_event(
        &self,
        tx: &mut Connection,
        context: &EventContext<'_>,
        event_type: &str,
        object: &CheckoutObject,
    ) -> Result<WebhookOutcome, PaymentsError> {
        let event_id = context.event_id;
        let Some(session) = self.lock_session(tx, object).await? else {
            tracing::warn!(event_id, checkout_session = %object.id, "Stripe event for a session that is not ours");
            return Ok(WebhookOutcome::Ignored);
        };
        let mismatch = object.mismatch(&session);
        let event = match event_type {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" if mismatch.is_some() => {
                SessionEvent::Mismatch
            }
            "checkout.session.completed" if object.payment_status.as_deref() != Some("paid") => {
                SessionEvent::CompletedUnpaid
            }
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => SessionEvent::Paid,
            "checkout.session.async_payment_failed" => SessionEvent::PaymentFailed,
            _ => SessionEvent::Expired,
        };
        let next = match next_status(session.status, event) {
            Ok(next) => next,
            Err(refused) => {
                tracing::info!(event_id, payment_session_id = %session.id, %refused, "Stripe event changes nothing");
                return Ok(WebhookOutcome::Ignored);
            }
        };
        let payment_intent = object.payment_intent().or(session.stripe_payment_intent.clone());
        match next {
            SessionStatus::Credited => {
                match self.credit(tx, context, &session, object, payment_intent.as_deref()).await {
                    // The account got its currency from another entry after checkout
                    // began; retrying cannot help, so an operator has to look at it.
                    // Billing refuses before writing, so the transaction is still usable.
                    Err(PaymentsError::Billing(refusal @ BillingError::CurrencyMismatch { .. })) => {
                        let reason = refusal.to_string();
                        self.fail_reconcile(tx, context, &session, object, payment_intent.as_deref(), &reason).await
                    }
                    other => other,
                }
            }
            SessionStatus::FailedReconcile => {
                let reason = mismatch.unwrap_or_else(|| "Stripe's payment differs from the session".into());
                self.fail_reconcile(tx, context, &session, object, payment_intent.as_deref(), &reason).await
            }
            _ => {
                let reason = match next {
                    SessionStatus::Failed => Some("the payment failed at Stripe"),
                    SessionStatus::Expired => Some("the Checkout session expired unpaid"),
                    _ => None,
                };
                self.set_status(tx, &session.id, next, &object.id, payment_intent.as_deref(), reason).await?;
                Ok(WebhookOutcome::Updated { payment_session_id: session.id, status: next })
            }
        }
    }

    async fn fail_reconcile(
        &self,
        tx: &mut Connection,
        context: &EventContext<'_>,
        session: &PaymentSession,
        object: &CheckoutObject,
        payment_intent: Option<&str>,
        reason: &str,
    ) -> Result<WebhookOutcome, PaymentsError> {
        let EventContext { event_id, correlation_id, .. } = *context;
        let status = SessionStatus::FailedReconcile;
        self.set_status(tx, &session.id, status, &object.id, payment_intent, Some(reason)).await?;
        tracing::error!(event_id, payment_session_id = %session.id, %reason, "payment failed to reconcile");
        let details = json!({"event_id": event_id, "reason": reason});
        let audit = system_audit("payments.reconcile_failed", session, AuditResult::Failure, correlation_id, details);
        gpuaas_audit::record(tx, &audit).await?;
        let payload = json!({
            "tenant_id": session.tenant_id,
            "payment_session_id": session.id,
            "amount_minor": session.amount_minor,
            "currency": session.currency,
            "reported_amount_minor": object.amount_total,
            "reported_currency": object.currency.as_deref().map(str::to_ascii_uppercase),
            "reason": reason,
        });
        let envelope = EventEnvelope::new("platform.payments.reconcile_failed", 1, correlation_id, payload);
        gpuaas_outbox::enqueue(tx, &envelope).await?;
        Ok(WebhookOutcome::Updated { payment_session_id: session.id.clone(), status })
    }

    /// Finds and locks the session a Checkout object belongs to: by Stripe's session id,
    /// else by the id we put in its metadata (the webhook can beat our own update).
    async fn lock_session(
        &self,
        tx: &mut Connection,
        object: &CheckoutObject,
    ) -> Result<Option<PaymentSession>, PaymentsError> {
        let lock = for_update(self.dialect());
        let sql = format!("SELECT {SESSION_COLUMNS} FROM payment_sessions WHERE stripe_session_id = $1{lock}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&object.id).fetch_optional(&mut *tx).await?;
        if let Some(row) = row {
            return Ok(Some(session_from_row(&row)?));
        }
        let Some(ours) = object.metadata("payment_session_id") else {
            return Ok(None);
        };
        let sql =
            format!("SELECT {SESSION_COLUMNS} FROM payment_sessions WHERE id = $1 AND stripe_session_id IS NULL{lock}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ours).fetch_optional(&mut *tx).await?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn set_status(
        &self,
        tx: &mut Connection,
        id: &str,
        status: SessionStatus,
        checkout_session_id: &str,
        payment_intent: Option<&str>,
        failure_reason: Option<&str>,
    ) -> Result<(), PaymentsError> {
        sqlx::query(
            "UPDATE payment_sessions SET status = $1, stripe_session_id = $2, stripe_payment_intent = $3, \
             failure_reason = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(status.as_str())
        .bind(checkout_session_id)
        .bind(payment_intent)
        .bind(failure_reason)
        .bind(Timestamp::now().as_micros())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn credit(
        &self,
        tx: &mut Connection,
        context: &EventContext<'_>,
        session: &PaymentSession,
        object: &CheckoutObject,
        payment_intent: Option<&str>,
    ) -> Result<WebhookOutcome, PaymentsError> {
        let EventContext { event_id, correlation_id, checkpoint_every } = *context;
        let idempotency_key = format!("stripe:{}", object.id);
        let description = format!("Card top-up (Stripe {})", object.id);
        let entry = NewEntry {
            tenant_id: &session.tenant_id,
            entry_type: EntryType::CreditPurchase,
            amount_minor: session.amount_minor,
            currency: &session.currency,
            idempotency_key: &idempotency_key,
            reference_type: "payment_session",
            reference_id: &session.id,
            correlation_id,
            created_by: "stripe",
            description: Some(&description),
        };
        let posted = gpuaas_billing::post(tx, self.dialect(), &entry, checkpoint_every).await?;
        let ledger = posted.entry();
        sqlx::query(
            "UPDATE payment_sessions SET status = $1, stripe_session_id = $2, stripe_payment_intent = $3, \
             ledger_entry_id = $4, failure_reason = NULL, updated_at = $5 WHERE id = $6",
        )
        .bind(SessionStatus::Credited.as_str())
        .bind(&object.id)
        .bind(payment_intent)
        .bind(&ledger.id)
        .bind(Timestamp::now().as_micros())
        .bind(&session.id)
        .execute(&mut *tx)
        .await?;
        if posted.is_new() {
            gpuaas_audit::record(
                tx,
                &system_audit(
                    "payments.balance_credited",
                    session,
                    AuditResult::Success,
                    correlation_id,
                    json!({
                        "event_id": event_id,
                        "amount_minor": session.amount_minor,
                        "currency": session.currency,
                        "ledger_entry_id": ledger.id,
                    }),
                ),
            )
            .await?;
            let payload = json!({
                "tenant_id": session.tenant_id,
                "payment_session_id": session.id,
                "amount_minor": session.amount_minor,
                "currency": session.currency,
                "ledger_entry_id": ledger.id,
            });
            let envelope = EventEnvelope::new("platform.payments.balance_credited", 1, correlation_id, payload);
            gpuaas_outbox::enqueue(tx, &envelope).await?;
        }
        tracing::info!(payment_session_id = %session.id, tenant_id = %session.tenant_id,
            amount_minor = session.amount_minor, ledger_entry_id = %ledger.id, new = posted.is_new(),
            "card top-up credited");
        Ok(WebhookOutcome::Credited { payment_session_id: session.id.clone(), ledger_entry_id: ledger.id.clone() })
    }
}

fn system_audit(
    action: &str,
    session: &PaymentSession,
    result: AuditResult,
    correlation_id: &str,
    details: serde_json::Value,
) -> NewAuditLog {
    NewAuditLog {
        actor_id: "stripe".into(),
        actor_type: ActorType::System,
        actor_role: "payment_provider".into(),
        action: action.into(),
        target: format!("payment_session:{}", session.id),
        tenant_id: Some(session.tenant_id.clone()),
        result,
        correlation_id: correlation_id.into(),
        details,
    }
}

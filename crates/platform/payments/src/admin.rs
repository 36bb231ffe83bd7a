//! Money moved by operators: manual credits and debits, and refunds of earlier credits.
//!
//! A refund is reserved (a `requested` row, counted against the credit) before Stripe
//! is asked, and posted to the ledger only after Stripe accepted it. Every decision
//! about one credit takes that credit's lock, so concurrent refunds can never together
//! exceed what it holds, and Stripe is never asked to return money the ledger would
//! then refuse.

use std::time::Duration;

use gpuaas_billing::{EntryType, LedgerEntry, NewEntry};
use gpuaas_events::EventEnvelope;
use gpuaas_kernel::{Timestamp, new_id};
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Row};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::{Operator, Payments, PaymentsError, check_text, for_update, lock_credit, normalize_currency};

/// Longest reason an operator may give.
pub const MAX_REASON_LEN: usize = 500;
/// The longest ledger description billing accepts.
const LEDGER_DESCRIPTION_LEN: usize = 256;
const SECONDS_PER_DAY: u64 = 86_400;
const REFUND_COLUMNS: &str = "id, tenant_id, credit_entry_id, amount_minor, currency, reason, status, \
     stripe_refund_id, ledger_entry_id, failure_reason, requested_by, created_at, updated_at";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Requested,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Requested => "requested",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [RefundStatus::Requested, RefundStatus::Succeeded, RefundStatus::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RefundRequest {
    pub id: String,
    pub tenant_id: String,
    pub credit_entry_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub reason: String,
    pub status: RefundStatus,
    pub stripe_refund_id: Option<String>,
    pub ledger_entry_id: Option<String>,
    pub failure_reason: Option<String>,
    pub requested_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

fn refund_from_row(row: &Row) -> Result<RefundRequest, PaymentsError> {
    let status: String = row.try_get("status")?;
    Ok(RefundRequest {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        credit_entry_id: row.try_get("credit_entry_id")?,
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency")?,
        reason: row.try_get("reason")?,
        status: RefundStatus::parse(&status)
            .ok_or_else(|| PaymentsError::Corrupt(format!("refund request status {status:?}")))?,
        stripe_refund_id: row.try_get("stripe_refund_id")?,
        ledger_entry_id: row.try_get("ledger_entry_id")?,
        failure_reason: row.try_get("failure_reason")?,
        requested_by: row.try_get("requested_by")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
    })
}

/// The ledger keeps a shorter description than the reason an operator may give; the
/// full reason stays in the audit row.
fn ledger_description(reason: &str) -> String {
    reason.chars().take(LEDGER_DESCRIPTION_LEN).collect()
}

fn check_reason(reason: &str) -> Result<(), PaymentsError> {
    check_text("reason", reason, MAX_REASON_LEN)
}

impl Payments {
    /// Credits (`amount_minor > 0`) or debits (`< 0`) a tenant by hand. A replayed
    /// `idempotency_key` returns the entry it posted the first time; without one, every
    /// call posts.
    pub async fn admin_adjust_balance(
        &self,
        operator: &Operator,
        tenant_id: &str,
        amount_minor: i64,
        currency: &str,
        reason: &str,
        idempotency_key: Option<&str>,
    ) -> Result<LedgerEntry, PaymentsError> {
        check_text("tenant_id", tenant_id, 128)?;
        if amount_minor == 0 {
            return Err(PaymentsError::invalid("amount_minor", "must not be zero"));
        }
        let currency = normalize_currency(currency)?;
        check_reason(reason)?;
        let key = match idempotency_key {
            Some(key) => {
                check_text("idempotency_key", key, 255)?;
                format!("admin:{key}")
            }
            None => format!("admin:{}", new_id()),
        };
        let entry_type = if amount_minor > 0 { EntryType::AdminCredit } else { EntryType::AdminDebit };
        let checkpoint_every = self.checkpoint_every().await?;

        let description = ledger_description(reason);
        let mut tx = self.store().begin().await?;
        let entry = NewEntry {
            tenant_id,
            entry_type,
            amount_minor,
            currency: &currency,
            idempotency_key: &key,
            reference_type: "operator",
            reference_id: &operator.id,
            correlation_id: &operator.correlation_id,
            created_by: &operator.id,
            description: Some(&description),
        };
        let posted = gpuaas_billing::post(&mut tx, self.dialect(), &entry, checkpoint_every).await?;
        if posted.is_new() {
            let ledger = posted.entry();
            let details = json!({
                "entry_type": entry_type.as_str(),
                "amount_minor": amount_minor,
                "currency": currency,
                "ledger_entry_id": ledger.id,
                "reason": reason,
            });
            let audit =
                operator.audit("billing.admin_adjustment", format!("ledger_entry:{}", ledger.id), tenant_id, details);
            gpuaas_audit::record(&mut tx, &audit).await?;
        }
        tx.commit().await?;
        let ledger = posted.entry().clone();
        tracing::info!(tenant_id, amount_minor, ledger_entry_id = %ledger.id, operator = %operator.id,
            "operator adjusted a balance");
        Ok(ledger)
    }

    /// Refunds `amount_minor` of the credit `credit_entry_id`: at Stripe first when the
    /// credit was a card top-up, then in the ledger.
    pub async fn refund(
        &self,
        operator: &Operator,
        tenant_id: &str,
        credit_entry_id: &str,
        amount_minor: i64,
        reason: &str,
    ) -> Result<RefundRequest, PaymentsError> {
        if amount_minor <= 0 {
            return Err(PaymentsError::invalid("amount_minor", "must be positive"));
        }
        check_reason(reason)?;
        let credit = gpuaas_billing::entry(self.store(), credit_entry_id).await?;
        // Another tenant's credit is as invisible as a missing one.
        if credit.tenant_id != tenant_id {
            return Err(PaymentsError::NotFound("credit"));
        }
        if !matches!(credit.entry_type, EntryType::CreditPurchase | EntryType::AdminCredit) {
            return Err(PaymentsError::invalid(
                "credit_entry_id",
                "only a card top-up or an operator credit can be refunded",
            ));
        }
        let window_days: i64 = self.inner.policy.get(keys::BILLING_REFUND_WINDOW_DAYS).await?;
        let window = Duration::from_secs(window_days.max(0).unsigned_abs().saturating_mul(SECONDS_PER_DAY));
        if Timestamp::now().since(credit.created_at) >= window {
            return Err(PaymentsError::RefundWindowExceeded { days: window_days });
        }
        // A card top-up is refunded at Stripe; an operator credit only in the ledger.
        let payment_intent = if credit.entry_type == EntryType::CreditPurchase {
            self.stripe()?;
            Some(self.payment_intent_of(&credit).await?)
        } else {
            None
        };

        let request = self.reserve_refund(operator, &credit, amount_minor, reason).await?;

        if let Some(payment_intent) = payment_intent {
            let (client, _) = self.stripe()?;
            let outcome = client.create_refund(&payment_intent, amount_minor, &request.id).await;
            let refused = match &outcome {
                Ok(refund) if matches!(refund.status.as_str(), "failed" | "canceled") => {
                    Some(format!("Stripe refund {} ended {}", refund.id, refund.status))
                }
                Ok(_) => None,
                Err(error) => Some(error.to_string()),
            };
            if let Some(failure) = refused {
                let stripe_refund_id = outcome.as_ref().ok().map(|refund| refund.id.as_str());
                self.fail_refund(operator, &request, stripe_refund_id, &failure).await?;
                tracing::warn!(refund_id = %request.id, %failure, "Stripe refused a refund");
                return Err(match outcome {
                    Err(error) => error,
                    Ok(_) => PaymentsError::Provider(failure),
                });
            }
            let stripe_refund_id = outcome.ok().map(|refund| refund.id);
            return self.post_refund(operator, &request, &credit, stripe_refund_id.as_deref()).await;
        }
        self.post_refund(operator, &request, &credit, None).await
    }

    /// The Stripe payment behind a card top-up, from the session the credit references.
    async fn payment_intent_of(&self, credit: &LedgerEntry) -> Result<String, PaymentsError> {
        let row =
            sqlx::query("SELECT stripe_payment_intent FROM payment_sessions WHERE ledger_entry_id = $1 OR id = $2")
                .bind(&credit.id)
                .bind(&credit.reference_id)
                .fetch_optional(self.store().pool())
                .await?;
        let intent: Option<String> = row.map(|row| row.try_get("stripe_payment_intent")).transpose()?.flatten();
        intent
            .ok_or_else(|| PaymentsError::Corrupt(format!("card credit {} has no Stripe payment to refund", credit.id)))
    }

    /// How much of a credit may still be refunded: what the ledger has not refunded yet,
    /// less refunds that are reserved but not yet posted. The caller holds the credit lock.
    async fn remainder(&self, connection: &mut Connection, credit: &LedgerEntry) -> Result<i64, PaymentsError> {
        let refunded = gpuaas_billing::refunded_against(connection, &credit.id).await?;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS pending FROM refund_requests \
             WHERE credit_entry_id = $1 AND status = $2",
        )
        .bind(&credit.id)
        .bind(RefundStatus::Requested.as_str())
        .fetch_one(&mut *connection)
        .await?;
        let pending: i64 = row.try_get("pending")?;
        Ok(credit.amount_minor - refunded - pending)
    }

    async fn reserve_refund(
        &self,
        operator: &Operator,
        credit: &LedgerEntry,
        amount_minor: i64,
        reason: &str,
    ) -> Result<RefundRequest, PaymentsError> {
        let mut tx = self.store().begin().await?;
        lock_credit(&mut tx, self.dialect(), &credit.id).await?;
        let remaining = self.remainder(&mut tx, credit).await?;
        if amount_minor > remaining {
            return Err(PaymentsError::RefundExceedsRemainder { remaining: remaining.max(0) });
        }
        let now = Timestamp::now();
        let request = RefundRequest {
            id: new_id().to_string(),
            tenant_id: credit.tenant_id.clone(),
            credit_entry_id: credit.id.clone(),
            amount_minor,
            currency: credit.currency.clone(),
            reason: reason.into(),
            status: RefundStatus::Requested,
            stripe_refund_id: None,
            ledger_entry_id: None,
            failure_reason: None,
            requested_by: operator.id.clone(),
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO refund_requests (id, tenant_id, credit_entry_id, amount_minor, currency, reason, status, \
             requested_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&request.id)
        .bind(&request.tenant_id)
        .bind(&request.credit_entry_id)
        .bind(request.amount_minor)
        .bind(&request.currency)
        .bind(&request.reason)
        .bind(request.status.as_str())
        .bind(&request.requested_by)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(request)
    }

    async fn fail_refund(
        &self,
        operator: &Operator,
        request: &RefundRequest,
        stripe_refund_id: Option<&str>,
        failure: &str,
    ) -> Result<(), PaymentsError> {
        let mut tx = self.store().begin().await?;
        sqlx::query(
            "UPDATE refund_requests SET status = $1, stripe_refund_id = $2, failure_reason = $3, updated_at = $4 \
             WHERE id = $5 AND status = $6",
        )
        .bind(RefundStatus::Failed.as_str())
        .bind(stripe_refund_id)
        .bind(failure)
        .bind(Timestamp::now().as_micros())
        .bind(&request.id)
        .bind(RefundStatus::Requested.as_str())
        .execute(&mut *tx)
        .await?;
        let mut audit = operator.audit(
            "billing.refund",
            format!("refund_request:{}", request.id),
            &request.tenant_id,
            json!({
                "credit_entry_id": request.credit_entry_id,
                "amount_minor": request.amount_minor,
                "currency": request.currency,
                "reason": request.reason,
                "failure": failure,
            }),
        );
        audit.result = gpuaas_audit::AuditResult::Failure;
        gpuaas_audit::record(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn post_refund(
        &self,
        operator: &Operator,
        request: &RefundRequest,
        credit: &LedgerEntry,
        stripe_refund_id: Option<&str>,
    ) -> Result<RefundRequest, PaymentsError> {
        let checkpoint_every = self.checkpoint_every().await?;
        let mut tx = self.store().begin().await?;
        lock_credit(&mut tx, self.dialect(), &credit.id).await?;
        // The reservation already counted this request; posting must still fit what the
        // ledger has left, whatever else happened to it meanwhile.
        let refunded = gpuaas_billing::refunded_against(&mut tx, &credit.id).await?;
        let sql = format!("SELECT status FROM refund_requests WHERE id = $1{}", for_update(self.dialect()));
        let status: String =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&request.id).fetch_one(&mut *tx).await?.try_get("status")?;
        if status != RefundStatus::Requested.as_str() || request.amount_minor > credit.amount_minor - refunded {
            let remaining = (credit.amount_minor - refunded).max(0);
            tracing::error!(refund_id = %request.id, ?stripe_refund_id, remaining,
                "a reserved refund no longer fits its credit; it needs an operator");
            return Err(PaymentsError::RefundExceedsRemainder { remaining });
        }
        let idempotency_key = format!("refund:{}", request.id);
        let description = ledger_description(&request.reason);
        let entry = NewEntry {
            tenant_id: &request.tenant_id,
            entry_type: EntryType::Refund,
            amount_minor: -request.amount_minor,
            currency: &request.currency,
            idempotency_key: &idempotency_key,
            reference_type: "ledger_entry",
            reference_id: &credit.id,
            correlation_id: &operator.correlation_id,
            created_by: &operator.id,
            description: Some(&description),
        };
        let posted = gpuaas_billing::post(&mut tx, self.dialect(), &entry, checkpoint_every).await?;
        let ledger = posted.entry();
        let now = Timestamp::now();
        sqlx::query(
            "UPDATE refund_requests SET status = $1, stripe_refund_id = $2, ledger_entry_id = $3, updated_at = $4 \
             WHERE id = $5",
        )
        .bind(RefundStatus::Succeeded.as_str())
        .bind(stripe_refund_id)
        .bind(&ledger.id)
        .bind(now.as_micros())
        .bind(&request.id)
        .execute(&mut *tx)
        .await?;
        let details = json!({
            "refund_request_id": request.id,
            "credit_entry_id": credit.id,
            "amount_minor": request.amount_minor,
            "currency": request.currency,
            "ledger_entry_id": ledger.id,
            "stripe_refund_id": stripe_refund_id,
            "reason": request.reason,
        });
        let audit = operator.audit(
            "billing.refund",
            format!("refund_request:{}", request.id),
            &request.tenant_id,
            details.clone(),
        );
        gpuaas_audit::record(&mut tx, &audit).await?;
        let mut payload = details;
        payload["tenant_id"] = json!(request.tenant_id);
        let envelope = EventEnvelope::new("platform.billing.refund_posted", 1, &operator.correlation_id, payload);
        gpuaas_outbox::enqueue(&mut tx, &envelope).await?;
        tx.commit().await?;
        tracing::info!(refund_id = %request.id, credit_entry_id = %credit.id, amount_minor = request.amount_minor,
            "refund posted");
        Ok(RefundRequest {
            status: RefundStatus::Succeeded,
            stripe_refund_id: stripe_refund_id.map(str::to_owned),
            ledger_entry_id: Some(ledger.id.clone()),
            updated_at: now,
            ..request.clone()
        })
    }

    pub async fn refund_request(&self, id: &str) -> Result<RefundRequest, PaymentsError> {
        let sql = format!("SELECT {REFUND_COLUMNS} FROM refund_requests WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(self.store().pool()).await?;
        row.as_ref().map(refund_from_row).transpose()?.ok_or(PaymentsError::NotFound("refund request"))
    }

    /// Every refund request against one credit, oldest first.
    pub async fn refunds_of(&self, credit_entry_id: &str) -> Result<Vec<RefundRequest>, PaymentsError> {
        let sql =
            format!("SELECT {REFUND_COLUMNS} FROM refund_requests WHERE credit_entry_id = $1 ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(credit_entry_id).fetch_all(self.store().pool()).await?;
        rows.iter().map(refund_from_row).collect()
    }
}

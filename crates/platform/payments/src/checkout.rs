//! Starting a top-up: our session row first, then Stripe Checkout, so a webhook can
//! always be matched to a row even if the process dies between the two.

use gpuaas_kernel::{Cursor, Timestamp, new_id, page_limit};
use gpuaas_policy::keys;
use gpuaas_store::Row;
use gpuaas_store::sqlx::{self, Row as _};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{CheckoutRequest, PaymentActor, Payments, PaymentsError, SessionStatus, normalize_currency};

pub(crate) const SESSION_COLUMNS: &str = "id, tenant_id, user_id, amount_minor, currency, status, stripe_session_id, \
     stripe_payment_intent, failure_reason, ledger_entry_id, created_at, updated_at";

/// The line item customers see on the Checkout page.
const PRODUCT_NAME: &str = "Account credit";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CheckoutResponse {
    pub payment_session_id: String,
    /// Stripe Checkout's page; the client redirects the customer there.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PaymentSession {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: SessionStatus,
    pub stripe_session_id: Option<String>,
    pub stripe_payment_intent: Option<String>,
    pub failure_reason: Option<String>,
    pub ledger_entry_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub status: Option<SessionStatus>,
    pub tenant_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SessionPage {
    pub items: Vec<PaymentSession>,
    pub next_cursor: Option<String>,
}

pub(crate) fn session_from_row(row: &Row) -> Result<PaymentSession, PaymentsError> {
    let status: String = row.try_get("status")?;
    Ok(PaymentSession {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        user_id: row.try_get("user_id")?,
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency")?,
        status: SessionStatus::parse(&status)
            .ok_or_else(|| PaymentsError::Corrupt(format!("payment session status {status:?}")))?,
        stripe_session_id: row.try_get("stripe_session_id")?,
        stripe_payment_intent: row.try_get("stripe_payment_intent")?,
        failure_reason: row.try_get("failure_reason")?,
        ledger_entry_id: row.try_get("ledger_entry_id")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
    })
}

impl Payments {
    /// Opens a Stripe Checkout session for a top-up of `amount_minor` in `currency`.
    pub async fn create_checkout_session(
        &self,
        actor: &PaymentActor,
        amount_minor: i64,
        currency: &str,
    ) -> Result<CheckoutResponse, PaymentsError> {
        let (client, config) = self.stripe()?;
        let currency = normalize_currency(currency)?;
        let policy = &self.inner.policy;
        let allowed: Vec<String> = policy.get(keys::PAYMENTS_CURRENCIES).await?;
        if !allowed.iter().any(|allowed| allowed.eq_ignore_ascii_case(&currency)) {
            return Err(PaymentsError::invalid("currency", format!("must be one of {}", allowed.join(", "))));
        }
        let min = policy.get(keys::PAYMENTS_MIN_AMOUNT_MINOR).await?;
        let max = policy.get(keys::PAYMENTS_MAX_AMOUNT_MINOR).await?;
        if amount_minor < min || amount_minor > max {
            return Err(PaymentsError::AmountOutOfRange { min, max });
        }
        // Refused here rather than when the webhook arrives: by then the card is charged.
        let balance = gpuaas_billing::balance(self.store(), &actor.tenant_id).await?;
        if let Some(account) = balance.currency
            && account != currency
        {
            return Err(PaymentsError::CurrencyMismatch { account, requested: currency });
        }

        let customer_id = self.customer_id(client, &actor.tenant_id, &actor.email).await?;
        let id = new_id().to_string();
        let now = Timestamp::now().as_micros();
        sqlx::query(
            "INSERT INTO payment_sessions (id, tenant_id, user_id, amount_minor, currency, status, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(&actor.tenant_id)
        .bind(&actor.user_id)
        .bind(amount_minor)
        .bind(&currency)
        .bind(SessionStatus::Initiated.as_str())
        .bind(now)
        .execute(self.store().pool())
        .await?;

        let request = CheckoutRequest {
            payment_session_id: id.clone(),
            tenant_id: actor.tenant_id.clone(),
            amount_minor,
            currency: currency.clone(),
            customer_id: Some(customer_id),
            product_name: PRODUCT_NAME.into(),
            success_url: config.success_url.clone(),
            cancel_url: config.cancel_url.clone(),
        };
        let session = match client.create_checkout_session(&request).await {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(payment_session_id = %id, %error, "Stripe refused a checkout session");
                self.mark_failed(&id, &error.to_string()).await?;
                return Err(error);
            }
        };
        // Only an initiated row takes the id: a webhook may have filled it in already.
        sqlx::query(
            "UPDATE payment_sessions SET stripe_session_id = $1, updated_at = $2 \
             WHERE id = $3 AND stripe_session_id IS NULL",
        )
        .bind(&session.id)
        .bind(Timestamp::now().as_micros())
        .bind(&id)
        .execute(self.store().pool())
        .await?;
        tracing::info!(payment_session_id = %id, tenant_id = %actor.tenant_id, amount_minor, %currency,
            "checkout session opened");
        Ok(CheckoutResponse { payment_session_id: id, url: session.url })
    }

    async fn mark_failed(&self, id: &str, reason: &str) -> Result<(), PaymentsError> {
        sqlx::query(
            "UPDATE payment_sessions SET status = $1, failure_reason = $2, updated_at = $3 \
             WHERE id = $4 AND status = $5",
        )
        .bind(SessionStatus::Failed.as_str())
        .bind(reason)
        .bind(Timestamp::now().as_micros())
        .bind(id)
        .bind(SessionStatus::Initiated.as_str())
        .execute(self.store().pool())
        .await?;
        Ok(())
    }

    /// A Stripe customer portal link for the actor's tenant (receipts, saved cards).
    pub async fn create_portal_session(&self, actor: &PaymentActor) -> Result<String, PaymentsError> {
        let (client, config) = self.stripe()?;
        let customer_id = self.customer_id(client, &actor.tenant_id, &actor.email).await?;
        client.create_portal_session(&customer_id, &config.portal_return_url).await
    }

    /// The tenant's Stripe customer, created on first use and remembered.
    async fn customer_id(
        &self,
        client: &dyn crate::StripeClient,
        tenant_id: &str,
        email: &str,
    ) -> Result<String, PaymentsError> {
        if let Some(existing) = self.stored_customer(tenant_id).await? {
            return Ok(existing);
        }
        let created = client.find_or_create_customer(tenant_id, email).await?;
        // Two first payments racing both ask Stripe (idempotent by tenant); the first row
        // written wins and both use it.
        sqlx::query(
            "INSERT INTO stripe_customers (tenant_id, customer_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant_id)
        .bind(&created)
        .bind(Timestamp::now().as_micros())
        .execute(self.store().pool())
        .await?;
        Ok(self.stored_customer(tenant_id).await?.unwrap_or(created))
    }

    async fn stored_customer(&self, tenant_id: &str) -> Result<Option<String>, PaymentsError> {
        let row = sqlx::query("SELECT customer_id FROM stripe_customers WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(self.store().pool())
            .await?;
        Ok(row.map(|row| row.try_get("customer_id")).transpose()?)
    }

    pub async fn session(&self, id: &str) -> Result<PaymentSession, PaymentsError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM payment_sessions WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(self.store().pool()).await?;
        row.as_ref().map(session_from_row).transpose()?.ok_or(PaymentsError::NotFound("payment session"))
    }

    /// Payment sessions for operators, newest first, keyset paged.
    pub async fn list_sessions(
        &self,
        filter: &SessionFilter,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<SessionPage, PaymentsError> {
        let limit = page_limit(limit)?;
        let mut conditions = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut cursor_key = None;
        if let Some(status) = filter.status {
            binds.push(status.as_str().into());
            conditions.push(format!("status = ${}", binds.len()));
        }
        if let Some(tenant_id) = &filter.tenant_id {
            binds.push(tenant_id.clone());
            conditions.push(format!("tenant_id = ${}", binds.len()));
        }
        if let Some(text) = cursor {
            let cursor = Cursor::decode(text)?;
            binds.push(cursor.id.clone());
            let id_param = binds.len();
            cursor_key = Some(cursor.sort_key);
            conditions
                .push(format!("(created_at < ${p} OR (created_at = ${p} AND id < ${id_param}))", p = binds.len() + 1));
        }
        let where_clause =
            if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM payment_sessions {where_clause} \
             ORDER BY created_at DESC, id DESC LIMIT {}",
            i64::from(limit) + 1
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in &binds {
            query = query.bind(bind.clone());
        }
        if let Some(key) = cursor_key {
            query = query.bind(key);
        }
        let rows = query.fetch_all(self.store().pool()).await?;
        let mut items = rows.iter().map(session_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|last| Cursor::new(last.created_at.as_micros(), last.id.clone()).encode())
        } else {
            None
        };
        Ok(SessionPage { items, next_cursor })
    }
}

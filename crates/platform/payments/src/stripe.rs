//! Stripe's REST API, behind a trait so the service can be tested against a local fake
//! and run without Stripe at all.
//!
//! Requests are form-encoded POSTs with `Authorization: Bearer {secret key}` and an
//! `Idempotency-Key`, so a retried call never creates a second session or refund. An
//! error never carries the key: Stripe's own message is passed on with anything that
//! looks like a key masked.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::PaymentsError;

/// How long one Stripe call may take before it counts as a provider failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// What the platform needs to talk to Stripe. `Debug` never shows a secret.
#[derive(Clone)]
pub struct StripeConfig {
    pub secret_key: String,
    /// Every webhook signing secret currently accepted; several while one is rotated.
    pub webhook_secrets: Vec<String>,
    /// `https://api.stripe.com` unless a test points it at a fake.
    pub api_base: String,
    /// Where Checkout sends the customer after paying; may hold `{CHECKOUT_SESSION_ID}`.
    pub success_url: String,
    pub cancel_url: String,
    pub portal_return_url: String,
}

impl StripeConfig {
    /// A configuration against the real API; the URLs still have to be set.
    pub fn new(secret_key: impl Into<String>, webhook_secrets: Vec<String>) -> Self {
        Self {
            secret_key: secret_key.into(),
            webhook_secrets,
            api_base: DEFAULT_API_BASE.into(),
            success_url: String::new(),
            cancel_url: String::new(),
            portal_return_url: String::new(),
        }
    }
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("secret_key", &"[redacted]")
            .field("webhook_secrets", &format_args!("[{} redacted]", self.webhook_secrets.len()))
            .field("api_base", &self.api_base)
            .field("success_url", &self.success_url)
            .field("cancel_url", &self.cancel_url)
            .field("portal_return_url", &self.portal_return_url)
            .finish()
    }
}

/// One Checkout session for a one-off top-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRequest {
    /// Our `payment_sessions.id`; also the Stripe idempotency key and in the metadata.
    pub payment_session_id: String,
    pub tenant_id: String,
    pub amount_minor: i64,
    /// ISO 4217 in upper case, as the platform stores it.
    pub currency: String,
    pub customer_id: Option<String>,
    /// The line item's name on the Checkout page.
    pub product_name: String,
    pub success_url: String,
    pub cancel_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StripeRefund {
    pub id: String,
    /// `pending`, `requires_action`, `succeeded`, `failed` or `canceled`.
    pub status: String,
}

#[async_trait]
pub trait StripeClient: Send + Sync {
    async fn create_checkout_session(&self, req: &CheckoutRequest) -> Result<CheckoutSession, PaymentsError>;
    async fn create_portal_session(&self, customer_id: &str, return_url: &str) -> Result<String, PaymentsError>;
    async fn create_refund(
        &self,
        payment_intent: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<StripeRefund, PaymentsError>;
    /// Creates the tenant's Stripe customer; the service remembers the id per tenant, so
    /// this runs once per tenant (and is idempotent at Stripe by tenant).
    async fn find_or_create_customer(&self, tenant_id: &str, email: &str) -> Result<String, PaymentsError>;
}

/// The real client: reqwest over HTTPS to `api_base`.
pub struct HttpStripeClient {
    http: reqwest::Client,
    secret_key: String,
    api_base: String,
}

impl fmt::Debug for HttpStripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStripeClient").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

impl HttpStripeClient {
    pub fn new(config: &StripeConfig) -> Result<Self, PaymentsError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| PaymentsError::Provider(format!("cannot build the HTTP client: {error}")))?;
        let api_base = config.api_base.trim_end_matches('/').to_owned();
        url::Url::parse(&api_base).map_err(|_| PaymentsError::invalid("api_base", "not a URL"))?;
        Ok(Self { http, secret_key: config.secret_key.clone(), api_base })
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<T, PaymentsError> {
        let response = self
            .http
            .post(format!("{}{path}", self.api_base))
            .bearer_auth(&self.secret_key)
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            // without_url: the error text then says what failed, not where.
            .map_err(|error| PaymentsError::Provider(format!("Stripe unreachable: {}", error.without_url())))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| PaymentsError::Provider(format!("Stripe answer unreadable: {}", error.without_url())))?;
        if !status.is_success() {
            return Err(PaymentsError::Provider(provider_message(status.as_u16(), &body)));
        }
        serde_json::from_slice(&body)
            .map_err(|_| PaymentsError::Provider(format!("Stripe answered {path} with something unusable")))
    }
}

#[derive(Deserialize)]
struct StripeErrorBody {
    error: StripeErrorDetail,
}

#[derive(Deserialize)]
struct StripeErrorDetail {
    message: Option<String>,
    code: Option<String>,
}

/// Stripe's own error message, masked: "Invalid API Key provided: sk_test_****1234"
/// names part of a key, which must not reach a log or a client.
fn provider_message(status: u16, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<StripeErrorBody>(body).ok().map(|body| body.error);
    let message = detail
        .as_ref()
        .and_then(|d| d.message.as_deref().or(d.code.as_deref()))
        .map(mask_secrets)
        .unwrap_or_else(|| "no error message".into());
    format!("Stripe answered {status}: {message}")
}

/// Replaces every word that looks like a Stripe key or signing secret.
pub(crate) fn mask_secrets(text: &str) -> String {
    const SECRET_PREFIXES: &[&str] = &["sk_", "rk_", "pk_", "whsec_"];
    text.split(' ')
        .map(|word| {
            let bare = word.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
            if SECRET_PREFIXES.iter().any(|prefix| bare.starts_with(prefix)) { "[redacted]" } else { word }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn pair(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_owned(), value.into())
}

#[async_trait]
impl StripeClient for HttpStripeClient {
    async fn create_checkout_session(&self, req: &CheckoutRequest) -> Result<CheckoutSession, PaymentsError> {
        let mut form = vec![
            pair("mode", "payment"),
            pair("line_items[0][price_data][currency]", req.currency.to_ascii_lowercase()),
            pair("line_items[0][price_data][unit_amount]", req.amount_minor.to_string()),
            pair("line_items[0][price_data][product_data][name]", req.product_name.clone()),
            pair("line_items[0][quantity]", "1"),
            pair("client_reference_id", req.payment_session_id.clone()),
            pair("metadata[tenant_id]", req.tenant_id.clone()),
            pair("metadata[payment_session_id]", req.payment_session_id.clone()),
            pair("success_url", req.success_url.clone()),
            pair("cancel_url", req.cancel_url.clone()),
        ];
        if let Some(customer) = &req.customer_id {
            form.push(pair("customer", customer.clone()));
        }
        self.post("/v1/checkout/sessions", &form, &req.payment_session_id).await
    }

    async fn create_portal_session(&self, customer_id: &str, return_url: &str) -> Result<String, PaymentsError> {
        #[derive(Deserialize)]
        struct Portal {
            url: String,
        }
        let form = [pair("customer", customer_id), pair("return_url", return_url)];
        // A portal session is short-lived and harmless to create twice; a fresh key per
        // call keeps Stripe from answering with a stale one.
        let key = format!("portal:{}", gpuaas_kernel::new_id());
        let portal: Portal = self.post("/v1/billing_portal/sessions", &form, &key).await?;
        Ok(portal.url)
    }

    async fn create_refund(
        &self,
        payment_intent: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<StripeRefund, PaymentsError> {
        let form = [pair("payment_intent", payment_intent), pair("amount", amount_minor.to_string())];
        self.post("/v1/refunds", &form, idempotency_key).await
    }

    async fn find_or_create_customer(&self, tenant_id: &str, email: &str) -> Result<String, PaymentsError> {
        #[derive(Deserialize)]
        struct Customer {
            id: String,
        }
        let form = [pair("email", email), pair("metadata[tenant_id]", tenant_id)];
        let customer: Customer = self.post("/v1/customers", &form, &format!("customer:{tenant_id}")).await?;
        Ok(customer.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_every_secret() {
        let config = StripeConfig::new("sk_test_supersecret", vec!["whsec_one".into(), "whsec_two".into()]);
        let text = format!("{config:?}");
        assert!(!text.contains("supersecret"), "{text}");
        assert!(!text.contains("whsec_"), "{text}");
        assert!(text.contains("api.stripe.com"));
    }

    #[test]
    fn provider_messages_mask_keys() {
        let body =
            br#"{"error":{"message":"Invalid API Key provided: sk_test_****1234","type":"invalid_request_error"}}"#;
        let message = provider_message(401, body);
        assert!(!message.contains("sk_test"), "{message}");
        assert!(message.contains("Invalid API Key provided"), "{message}");
        assert_eq!(provider_message(500, b"<html>"), "Stripe answered 500: no error message");
    }
}

//! Card top-ups through Stripe and the operators' money routes.
//!
//! The webhook handler reads the raw body and hands it over unparsed: Stripe signs the
//! exact bytes, so nothing may decode JSON before the signature is checked.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use gpuaas_billing::LedgerEntry;
use gpuaas_http::{ApiError, ApiJson, current_correlation_id};
use gpuaas_iam::{AuthContext, IamError, User};
use gpuaas_payments::{
    CheckoutResponse, Operator, PaymentActor, RefundRequest, SIGNATURE_HEADER, SessionFilter, SessionPage,
    SessionStatus, WebhookOutcome,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::HandlerResult;
use super::security::Caller;

async fn user(state: &AppState, user_id: &str) -> HandlerResult<User> {
    Ok(gpuaas_iam::accounts::user_by_id(&state.store, user_id).await?.ok_or(IamError::NotFound("user"))?)
}

/// Card payments are made by people: a service account has no customer to charge.
async fn payer(state: &AppState, ctx: &AuthContext) -> HandlerResult<PaymentActor> {
    if ctx.actor_type != gpuaas_iam::ActorType::User {
        return Err(IamError::Forbidden("card payments are made by users, not service accounts".into()).into());
    }
    let user = user(state, &ctx.actor_id).await?;
    Ok(PaymentActor {
        user_id: user.id,
        email: user.email,
        tenant_id: ctx.tenant_id.clone(),
        correlation_id: current_correlation_id(),
    })
}

fn operator(ctx: &AuthContext) -> Operator {
    Operator { id: ctx.actor_id.clone(), role: ctx.role_name().into(), correlation_id: current_correlation_id() }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// Minor units (cents for USD); bounds from policy.
    pub amount_minor: i64,
    /// ISO 4217, upper case; one of the policy's currencies.
    pub currency: String,
}

/// Starts a Stripe Checkout top-up; the client sends the customer to `url`. The credit
/// lands when Stripe's signed webhook confirms payment. Send `X-Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/payments/checkout-session", tag = "payments", security(("bearer" = [])),
    request_body = CheckoutRequest, responses((status = 201, body = CheckoutResponse),
        (status = 400, body = gpuaas_kernel::ErrorResponse, description = "`payment_amount_out_of_range` or a bad currency"),
        (status = 503, body = gpuaas_kernel::ErrorResponse, description = "`payments_not_configured`")))]
pub async fn checkout_session(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<CheckoutRequest>,
) -> HandlerResult<(StatusCode, Json<CheckoutResponse>)> {
    let actor = payer(&state, &ctx).await?;
    let response = state.payments.create_checkout_session(&actor, body.amount_minor, &body.currency).await?;
    Ok((StatusCode::CREATED, Json(response)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PortalResponse {
    /// Stripe's billing portal for the tenant's customer.
    pub url: String,
}

/// A Stripe billing-portal link for the caller's tenant.
#[utoipa::path(post, path = "/api/v1/payments/customer-portal-session", tag = "payments", security(("bearer" = [])),
    responses((status = 201, body = PortalResponse),
        (status = 503, body = gpuaas_kernel::ErrorResponse, description = "`payments_not_configured`")))]
pub async fn customer_portal_session(
    State(state): State<AppState>,
    Caller(ctx): Caller,
) -> HandlerResult<(StatusCode, Json<PortalResponse>)> {
    let actor = payer(&state, &ctx).await?;
    let url = state.payments.create_portal_session(&actor).await?;
    Ok((StatusCode::CREATED, Json(PortalResponse { url })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    pub received: bool,
    /// `credited`, `updated`, `duplicate` or `ignored`.
    pub outcome: String,
}

/// Stripe's webhook. The `Stripe-Signature` header is verified over the raw body
/// (several secrets during a rotation, 300 s tolerance) before anything is parsed;
/// a duplicate delivery is acknowledged and changes nothing.
#[utoipa::path(post, path = "/api/v1/payments/webhook", tag = "payments",
    request_body(content = String, description = "Stripe event JSON, verified byte for byte", content_type = "application/json"),
    responses((status = 200, body = WebhookReceipt),
        (status = 400, body = gpuaas_kernel::ErrorResponse, description = "`webhook_signature_invalid`")))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> HandlerResult<Json<WebhookReceipt>> {
    let signature = headers.get(SIGNATURE_HEADER).and_then(|value| value.to_str().ok());
    let outcome = state.payments.handle_webhook(&body, signature, &current_correlation_id()).await?;
    let outcome = match outcome {
        WebhookOutcome::Credited { .. } => "credited",
        WebhookOutcome::Updated { .. } => "updated",
        WebhookOutcome::Duplicate => "duplicate",
        WebhookOutcome::Ignored => "ignored",
    };
    Ok(Json(WebhookReceipt { received: true, outcome: outcome.into() }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalanceAdjustment {
    /// Minor units: positive credits the account (`admin_credit`), negative debits it
    /// (`admin_debit`).
    pub amount_minor: i64,
    pub currency: String,
    /// Required; kept in the audit trail.
    pub reason: String,
}

/// Credits or debits a user's tenant by hand, with a reason; audited.
#[utoipa::path(post, path = "/api/v1/admin/users/{user_id}/balance", tag = "admin", security(("bearer" = [])),
    params(("user_id" = String, Path)), request_body = BalanceAdjustment,
    responses((status = 201, body = LedgerEntry), (status = 400, body = gpuaas_kernel::ErrorResponse),
        (status = 404, body = gpuaas_kernel::ErrorResponse), (status = 409, body = gpuaas_kernel::ErrorResponse, description = "`currency_mismatch`")))]
pub async fn adjust_balance(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<BalanceAdjustment>,
) -> HandlerResult<(StatusCode, Json<LedgerEntry>)> {
    let user = user(&state, &user_id).await?;
    let entry = state
        .payments
        .admin_adjust_balance(&operator(&ctx), &user.tenant_id, body.amount_minor, &body.currency, &body.reason, None)
        .await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// The ledger entry of the credit to refund (`credit_purchase` or `admin_credit`).
    pub credit_entry_id: String,
    /// Minor units, positive; at most what remains refundable of that credit.
    pub amount_minor: i64,
    pub reason: String,
}

/// Refunds (part of) a credit within the policy's window: through Stripe for card
/// credits, as a ledger entry otherwise.
#[utoipa::path(post, path = "/api/v1/admin/users/{user_id}/refunds", tag = "admin", security(("bearer" = [])),
    params(("user_id" = String, Path)), request_body = RefundBody,
    responses((status = 201, body = RefundRequest),
        (status = 422, body = gpuaas_kernel::ErrorResponse, description = "`refund_window_exceeded` or `refund_exceeds_remainder`"),
        (status = 502, body = gpuaas_kernel::ErrorResponse, description = "`payment_provider_error`")))]
pub async fn refund(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<RefundBody>,
) -> HandlerResult<(StatusCode, Json<RefundRequest>)> {
    let user = user(&state, &user_id).await?;
    let request = state
        .payments
        .refund(&operator(&ctx), &user.tenant_id, &body.credit_entry_id, body.amount_minor, &body.reason)
        .await?;
    Ok((StatusCode::CREATED, Json(request)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
    /// `initiated`, `checkout_completed`, `credited`, `expired`, `failed`, `failed_reconcile`.
    pub status: Option<String>,
    pub tenant_id: Option<String>,
}

/// Payment sessions, newest first, e.g. `?status=failed_reconcile` to reconcile.
#[utoipa::path(get, path = "/api/v1/admin/payments/sessions", tag = "admin", security(("bearer" = [])), params(SessionQuery),
    responses((status = 200, body = SessionPage), (status = 403, body = gpuaas_kernel::ErrorResponse)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    Query(query): Query<SessionQuery>,
) -> HandlerResult<Json<SessionPage>> {
    let status = query
        .status
        .as_deref()
        .map(|text| {
            SessionStatus::parse(text).ok_or_else(|| ApiError::invalid_field("status", "not a payment session status"))
        })
        .transpose()?;
    let filter = SessionFilter { status, tenant_id: query.tenant_id };
    Ok(Json(state.payments.list_sessions(&filter, query.cursor.as_deref(), query.limit).await?))
}

//! A tenant's money over HTTP: balance, ledger and usage, for the signed-in user's
//! tenant only.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use gpuaas_billing::{Balance, EntryType, LedgerFilter, LedgerPage, UsagePage};
use gpuaas_http::ApiError;
use gpuaas_kernel::Timestamp;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::HandlerResult;
use super::security::Caller;

/// The tenant's balance: the sum of its ledger, never a stored number.
#[utoipa::path(get, path = "/api/v1/billing/balance", tag = "billing", security(("bearer" = [])),
    responses((status = 200, body = Balance)))]
pub async fn balance(State(state): State<AppState>, Caller(ctx): Caller) -> HandlerResult<Json<Balance>> {
    Ok(Json(gpuaas_billing::balance(&state.store, &ctx.tenant_id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
    /// `credit_purchase`, `usage_debit`, `admin_credit`, `admin_debit`, `refund` or `reversal`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub entry_type: Option<String>,
    /// RFC 3339; entries at or after it.
    pub from: Option<String>,
    /// RFC 3339; entries before it.
    pub to: Option<String>,
}

fn timestamp(field: &str, text: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    text.map(|text| Timestamp::parse_rfc3339(text).map_err(|_| ApiError::invalid_field(field, "not an RFC 3339 time")))
        .transpose()
}

/// The tenant's ledger, newest first (cursor pagination; filters by type and date).
#[utoipa::path(get, path = "/api/v1/billing/ledger", tag = "billing", security(("bearer" = [])), params(LedgerQuery),
    responses((status = 200, body = LedgerPage), (status = 400, body = gpuaas_kernel::ErrorResponse)))]
pub async fn ledger(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Query(query): Query<LedgerQuery>,
) -> HandlerResult<Json<LedgerPage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(|e| ApiError::invalid_field("limit", e.to_string()))?;
    let entry_type = query
        .entry_type
        .as_deref()
        .map(|text| EntryType::parse(text).ok_or_else(|| ApiError::invalid_field("type", "not a ledger entry type")))
        .transpose()?;
    let filter = LedgerFilter {
        entry_type,
        from: timestamp("from", query.from.as_deref())?,
        to: timestamp("to", query.to.as_deref())?,
    };
    Ok(Json(gpuaas_billing::list_ledger(&state.store, &ctx.tenant_id, &filter, query.cursor.as_deref(), limit).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
}

/// The tenant's usage records (one per allocation), newest first.
#[utoipa::path(get, path = "/api/v1/billing/usage", tag = "billing", security(("bearer" = [])), params(UsageQuery),
    responses((status = 200, body = UsagePage)))]
pub async fn usage(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Query(query): Query<UsageQuery>,
) -> HandlerResult<Json<UsagePage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(|e| ApiError::invalid_field("limit", e.to_string()))?;
    Ok(Json(gpuaas_billing::list_usage(&state.store, &ctx.tenant_id, query.cursor.as_deref(), limit).await?))
}

/// Every usage record of the tenant as CSV, streamed page by page (constant memory).
#[utoipa::path(get, path = "/api/v1/billing/usage/csv", tag = "billing", security(("bearer" = [])),
    responses((status = 200, description = "CSV", content_type = "text/csv")))]
pub async fn usage_csv(State(state): State<AppState>, Caller(ctx): Caller) -> Response {
    let stream = gpuaas_billing::export_usage_csv(state.store.clone(), ctx.tenant_id.clone()).map(|chunk| {
        chunk.map_err(|error| {
            tracing::error!(%error, "usage export failed mid-stream");
            std::io::Error::other("usage export failed")
        })
    });
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"usage.csv\""),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

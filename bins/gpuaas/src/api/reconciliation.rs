//! Reconciliation findings for operators: where nodes' reports and billing disagree.
//! The findings are made by the workers' reconciliation pass, never by a request.

use axum::Json;
use axum::extract::{Query, State};
use gpuaas_allocations::AllocationError;
use gpuaas_allocations::reconcile::FindingPage;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::HandlerResult;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FindingListQuery {
    /// Only findings that still hold (default `true`); `false` includes resolved ones.
    pub open: Option<bool>,
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
}

/// Allocations billed as active whose user their node no longer has (each was
/// force-released), and allocation users on nodes with no live allocation, newest first.
#[utoipa::path(get, path = "/api/v1/admin/reconciliation", tag = "admin", security(("bearer" = [])),
    params(FindingListQuery), responses((status = 200, body = FindingPage),
        (status = 400, body = gpuaas_kernel::ErrorResponse), (status = 403, body = gpuaas_kernel::ErrorResponse)))]
pub async fn list_findings(
    State(state): State<AppState>,
    Query(query): Query<FindingListQuery>,
) -> HandlerResult<Json<FindingPage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(AllocationError::from)?;
    let open_only = query.open.unwrap_or(true);
    Ok(Json(state.allocations.list_findings(open_only, query.cursor.as_deref(), limit).await?))
}

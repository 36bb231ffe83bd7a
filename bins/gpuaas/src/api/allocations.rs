//! Allocations: users create, read and release their tenant's; operators list all and
//! force-release. Scoping (another tenant's allocation answers 404) and the project
//! permission are checked here; everything else is the allocations crate's.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gpuaas_allocations::service::MAX_REASON_LEN;
use gpuaas_allocations::{
    Allocation, AllocationError, AllocationFilter, AllocationPage, AllocationStatus, NewAllocation,
};
use gpuaas_http::ApiJson;
use gpuaas_iam::{ActorType, Permission};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::HandlerResult;
use super::nodes::actor;
use super::security::Caller;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAllocationRequest {
    /// SKU id or name, e.g. `h100-80gb-x8`.
    pub sku: String,
    /// GPUs on one node, 1 to the SKU's GPUs per node.
    pub gpu_count: i64,
    /// The project the allocation belongs to; the caller needs write access to it.
    pub project_id: String,
    /// Registered SSH keys to install for the allocation's user.
    pub ssh_key_ids: Vec<String>,
    pub name: Option<String>,
}

/// Places an allocation and starts provisioning it. Send `X-Idempotency-Key`: a
/// retried request returns the first answer instead of a second allocation.
#[utoipa::path(post, path = "/api/v1/allocations", tag = "allocations", security(("bearer" = [])),
    request_body = CreateAllocationRequest, responses(
        (status = 201, body = Allocation),
        (status = 400, body = gpuaas_kernel::ErrorResponse, description = "`details.field` names the bad field"),
        (status = 402, body = gpuaas_kernel::ErrorResponse, description = "`insufficient_balance`"),
        (status = 409, body = gpuaas_kernel::ErrorResponse, description = "`sku_unavailable`"),
        (status = 429, body = gpuaas_kernel::ErrorResponse, description = "`allocation_limit_reached`"),
    ))]
pub async fn create_allocation(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<CreateAllocationRequest>,
) -> HandlerResult<(StatusCode, Json<Allocation>)> {
    if body.project_id.is_empty() {
        return Err(AllocationError::invalid("project_id", "must name a project").into());
    }
    let project = state.iam.project(&ctx, &body.project_id, Permission::ProjectWrite).await?;
    let new = NewAllocation {
        tenant_id: &project.tenant_id,
        project_id: &project.id,
        user_id: &ctx.actor_id,
        sku: &body.sku,
        gpu_count: body.gpu_count,
        ssh_key_ids: &body.ssh_key_ids,
        name: body.name.as_deref(),
    };
    let allocation = state.allocations.create(&actor(&ctx), &new).await?;
    Ok((StatusCode::CREATED, Json(allocation)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AllocationListQuery {
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
    /// `requested`, `provisioning`, `active`, `releasing`, `released`, `failed` or `release_failed`.
    pub status: Option<String>,
}

fn filter(query: &AllocationListQuery, tenant_id: Option<String>) -> Result<AllocationFilter, AllocationError> {
    let status = query
        .status
        .as_deref()
        .map(|text| {
            AllocationStatus::parse(text).ok_or_else(|| {
                AllocationError::invalid(
                    "status",
                    "one of requested, provisioning, active, releasing, released, failed, release_failed",
                )
            })
        })
        .transpose()?;
    Ok(AllocationFilter { status, tenant_id })
}

/// The tenant's allocations, newest first.
#[utoipa::path(get, path = "/api/v1/allocations", tag = "allocations", security(("bearer" = [])),
    params(AllocationListQuery), responses((status = 200, body = AllocationPage), (status = 400, body = gpuaas_kernel::ErrorResponse)))]
pub async fn list_allocations(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Query(query): Query<AllocationListQuery>,
) -> HandlerResult<Json<AllocationPage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(AllocationError::from)?;
    let filter = filter(&query, Some(ctx.tenant_id.clone()))?;
    Ok(Json(state.allocations.list(&filter, query.cursor.as_deref(), limit).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AllocationWaitQuery {
    /// Statuses to wait through, comma-separated (e.g. `requested,provisioning`): the
    /// answer comes once the status is none of them, or when `wait_seconds` pass.
    pub while_status: Option<String>,
    /// How long to wait, 1 to 60 seconds; default 30. Only with `while_status`.
    // Read as text, so that a bad value gets this API's error naming it.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 60)]
    pub wait_seconds: Option<String>,
}

/// How long a long poll waits when `wait_seconds` is not given.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The statuses and the wait a long poll asks for; `None` when it asks for none.
fn wait_request(query: &AllocationWaitQuery) -> Result<Option<(Vec<AllocationStatus>, Duration)>, AllocationError> {
    let Some(list) = query.while_status.as_deref() else {
        if query.wait_seconds.is_some() {
            return Err(AllocationError::invalid("wait_seconds", "only with while_status"));
        }
        return Ok(None);
    };
    let statuses = list
        .split(',')
        .map(|text| {
            AllocationStatus::parse(text.trim()).ok_or_else(|| {
                AllocationError::invalid(
                    "while_status",
                    "comma-separated statuses: requested, provisioning, active, releasing, released, failed, \
                     release_failed",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let most = gpuaas_allocations::watch::MAX_WAIT.as_secs();
    let wait = match query.wait_seconds.as_deref() {
        None => DEFAULT_WAIT,
        Some(text) => match text.parse::<u64>() {
            Ok(seconds) if (1..=most).contains(&seconds) => Duration::from_secs(seconds),
            _ => return Err(AllocationError::invalid("wait_seconds", format!("a whole number from 1 to {most}"))),
        },
    };
    Ok(Some((statuses, wait)))
}

/// One allocation: status, node and GPUs, SSH access once active, the time and cause
/// of every transition, and its cost so far. With `while_status` it is a long poll:
/// the answer waits while the allocation is in one of those statuses (up to
/// `wait_seconds`), so a client follows it without polling.
#[utoipa::path(get, path = "/api/v1/allocations/{allocation_id}", tag = "allocations", security(("bearer" = [])),
    params(("allocation_id" = String, Path), AllocationWaitQuery), responses((status = 200, body = Allocation),
        (status = 400, body = gpuaas_kernel::ErrorResponse, description = "`details.field` names the bad parameter"),
        (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn get_allocation(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(allocation_id): Path<String>,
    Query(query): Query<AllocationWaitQuery>,
) -> HandlerResult<Json<Allocation>> {
    let wait = wait_request(&query)?;
    // Read first: another tenant's allocation is not found, whatever the wait.
    let allocation = state.allocations.get(&allocation_id, Some(&ctx.tenant_id)).await?;
    let Some((statuses, wait)) = wait.filter(|(statuses, _)| statuses.contains(&allocation.status)) else {
        return Ok(Json(allocation));
    };
    state.allocations.wait_while(&allocation_id, &statuses, wait).await?;
    Ok(Json(state.allocations.get(&allocation_id, Some(&ctx.tenant_id)).await?))
}

/// Releases an active allocation, or retries a failed release. Already releasing:
/// 409 `allocation_invalid_transition`.
#[utoipa::path(post, path = "/api/v1/allocations/{allocation_id}/release", tag = "allocations", security(("bearer" = [])),
    params(("allocation_id" = String, Path)), responses((status = 200, body = Allocation),
        (status = 404, body = gpuaas_kernel::ErrorResponse),
        (status = 409, body = gpuaas_kernel::ErrorResponse, description = "`allocation_invalid_transition`")))]
pub async fn release_allocation(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(allocation_id): Path<String>,
) -> HandlerResult<Json<Allocation>> {
    let allocation = state.allocations.get(&allocation_id, Some(&ctx.tenant_id)).await?;
    // Viewers of a project may look but not release.
    if ctx.actor_type == ActorType::ServiceAccount || allocation.user_id != ctx.actor_id {
        state.iam.project(&ctx, &allocation.project_id, Permission::ProjectWrite).await?;
    }
    Ok(Json(state.allocations.release(&actor(&ctx), &allocation_id, &ctx.tenant_id).await?))
}

/// Every allocation, newest first; filter by status (`release_failed` needs a person).
#[utoipa::path(get, path = "/api/v1/admin/allocations", tag = "admin", security(("bearer" = [])),
    params(AllocationListQuery), responses((status = 200, body = AllocationPage), (status = 403, body = gpuaas_kernel::ErrorResponse)))]
pub async fn admin_list_allocations(
    State(state): State<AppState>,
    Query(query): Query<AllocationListQuery>,
) -> HandlerResult<Json<AllocationPage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(AllocationError::from)?;
    let filter = filter(&query, None)?;
    Ok(Json(state.allocations.list(&filter, query.cursor.as_deref(), limit).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceReleaseRequest {
    /// Why, for the audit trail and the allocation's history (1 to 500 characters).
    pub reason: String,
}

/// Releases an allocation whatever its state: a failed release is tried again, one
/// still provisioning fails (GPUs freed, the node told to remove the user). Metering
/// stops now. Audited.
#[utoipa::path(post, path = "/api/v1/admin/allocations/{allocation_id}/force-release", tag = "admin", security(("bearer" = [])),
    params(("allocation_id" = String, Path)), request_body = ForceReleaseRequest,
    responses((status = 200, body = Allocation), (status = 404, body = gpuaas_kernel::ErrorResponse),
        (status = 409, body = gpuaas_kernel::ErrorResponse, description = "already released or failed")))]
pub async fn force_release_allocation(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(allocation_id): Path<String>,
    ApiJson(body): ApiJson<ForceReleaseRequest>,
) -> HandlerResult<Json<Allocation>> {
    if body.reason.trim().is_empty() || body.reason.chars().count() > MAX_REASON_LEN {
        return Err(AllocationError::invalid("reason", format!("1 to {MAX_REASON_LEN} characters")).into());
    }
    Ok(Json(state.allocations.force_release(&actor(&ctx), &allocation_id, &body.reason).await?))
}

//! The node plane over the public API: the SKU catalog, the fleet for users and
//! operators, and node enrollment.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gpuaas_http::{ApiJson, current_correlation_id};
use gpuaas_inventory::nodes::{self, NewNode, NodeFilter, NodePage, NodeStatus, NodeSummary, NodeView, RegisteredNode};
use gpuaas_inventory::skus::{self, NewSku, Sku, SkuUpdate};
use gpuaas_inventory::tasks::{self, NodeTask, TaskPage};
use gpuaas_inventory::{Actor, InventoryError};
use gpuaas_nodeagent_protocol::wire::{EnrollRequest, EnrollResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::HandlerResult;
use super::security::Caller;

/// The audit actor for an authenticated caller of this request.
pub fn actor(ctx: &gpuaas_iam::AuthContext) -> Actor {
    Actor {
        id: ctx.actor_id.clone(),
        actor_type: match ctx.actor_type {
            gpuaas_iam::ActorType::User => gpuaas_audit::ActorType::User,
            gpuaas_iam::ActorType::ServiceAccount => gpuaas_audit::ActorType::ServiceAccount,
        },
        role: ctx.role_name().into(),
        tenant_id: Some(ctx.tenant_id.clone()),
        correlation_id: current_correlation_id(),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SkuList {
    pub items: Vec<Sku>,
}

/// Active SKUs: GPU model, GPUs per node, memory, vCPU, RAM and price per GPU-hour.
#[utoipa::path(get, path = "/api/v1/skus", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = SkuList)))]
pub async fn list_skus(State(state): State<AppState>) -> HandlerResult<Json<SkuList>> {
    Ok(Json(SkuList { items: skus::list_active(&state.store).await? }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeSummaryList {
    pub items: Vec<NodeSummary>,
}

/// Nodes that serve or will again, with their free GPUs. No secrets; hostnames only
/// when the `nodes.expose_hostnames` policy allows.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = NodeSummaryList)))]
pub async fn list_public_nodes(State(state): State<AppState>) -> HandlerResult<Json<NodeSummaryList>> {
    Ok(Json(NodeSummaryList { items: state.nodes.list_public().await? }))
}

/// Every SKU, active or not.
#[utoipa::path(get, path = "/api/v1/admin/skus", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = SkuList), (status = 403, body = gpuaas_kernel::ErrorResponse)))]
pub async fn admin_list_skus(State(state): State<AppState>) -> HandlerResult<Json<SkuList>> {
    Ok(Json(SkuList { items: skus::list_all(&state.store).await? }))
}

/// Adds a SKU to the catalog.
#[utoipa::path(post, path = "/api/v1/admin/skus", tag = "admin", security(("bearer" = [])), request_body = NewSku,
    responses((status = 201, body = Sku), (status = 400, body = gpuaas_kernel::ErrorResponse),
        (status = 409, body = gpuaas_kernel::ErrorResponse, description = "name taken")))]
pub async fn create_sku(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<NewSku>,
) -> HandlerResult<(StatusCode, Json<Sku>)> {
    Ok((StatusCode::CREATED, Json(state.nodes.create_sku(&actor(&ctx), &body).await?)))
}

/// Changes a SKU's price, description or availability (`"active": false` deactivates).
#[utoipa::path(patch, path = "/api/v1/admin/skus/{sku_id}", tag = "admin", security(("bearer" = [])),
    params(("sku_id" = String, Path)), request_body = SkuUpdate,
    responses((status = 200, body = Sku), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn update_sku(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(sku_id): Path<String>,
    ApiJson(body): ApiJson<SkuUpdate>,
) -> HandlerResult<Json<Sku>> {
    Ok(Json(state.nodes.update_sku(&actor(&ctx), &sku_id, &body).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NodeListQuery {
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
    /// `pending_enrollment`, `active`, `draining`, `offline` or `retired`.
    pub status: Option<String>,
    pub sku_id: Option<String>,
}

/// The fleet, newest first: lifecycle, occupancy, last heartbeat, agent version, GPUs.
#[utoipa::path(get, path = "/api/v1/admin/nodes", tag = "admin", security(("bearer" = [])), params(NodeListQuery),
    responses((status = 200, body = NodePage), (status = 403, body = gpuaas_kernel::ErrorResponse)))]
pub async fn admin_list_nodes(
    State(state): State<AppState>,
    Query(query): Query<NodeListQuery>,
) -> HandlerResult<Json<NodePage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(InventoryError::from)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(NodeStatus::parse(text).ok_or_else(|| {
            InventoryError::invalid("status", "one of pending_enrollment, active, draining, offline, retired")
        })?),
    };
    let filter = NodeFilter { status, sku_id: query.sku_id };
    Ok(Json(nodes::list(&state.store, &filter, query.cursor.as_deref(), limit).await?))
}

/// Registers a node. The enrollment token in the answer is shown once.
#[utoipa::path(post, path = "/api/v1/admin/nodes", tag = "admin", security(("bearer" = [])), request_body = NewNode,
    responses((status = 201, body = RegisteredNode), (status = 400, body = gpuaas_kernel::ErrorResponse),
        (status = 409, body = gpuaas_kernel::ErrorResponse, description = "hostname taken")))]
pub async fn register_node(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<NewNode>,
) -> HandlerResult<(StatusCode, Json<RegisteredNode>)> {
    Ok((StatusCode::CREATED, Json(state.nodes.register_node(&actor(&ctx), &body).await?)))
}

/// One node with its GPUs.
#[utoipa::path(get, path = "/api/v1/admin/nodes/{node_id}", tag = "admin", security(("bearer" = [])),
    params(("node_id" = String, Path)), responses((status = 200, body = NodeView), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn get_node(State(state): State<AppState>, Path(node_id): Path<String>) -> HandlerResult<Json<NodeView>> {
    Ok(Json(nodes::get(&state.store, &node_id).await?))
}

/// Retires a node; refused with 409 `node_in_use` while any allocation holds its GPUs.
#[utoipa::path(delete, path = "/api/v1/admin/nodes/{node_id}", tag = "admin", security(("bearer" = [])),
    params(("node_id" = String, Path)), responses((status = 200, body = NodeView),
        (status = 409, body = gpuaas_kernel::ErrorResponse, description = "`node_in_use`")))]
pub async fn retire_node(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(node_id): Path<String>,
) -> HandlerResult<Json<NodeView>> {
    Ok(Json(state.nodes.retire(&actor(&ctx), &node_id).await?))
}

/// Stops new placements on the node; allocations already there run on.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{node_id}/drain", tag = "admin", security(("bearer" = [])),
    params(("node_id" = String, Path)), responses((status = 200, body = NodeView), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn drain_node(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(node_id): Path<String>,
) -> HandlerResult<Json<NodeView>> {
    Ok(Json(state.nodes.drain(&actor(&ctx), &node_id).await?))
}

/// Makes a draining node schedulable again.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{node_id}/resume", tag = "admin", security(("bearer" = [])),
    params(("node_id" = String, Path)), responses((status = 200, body = NodeView), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn resume_node(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(node_id): Path<String>,
) -> HandlerResult<Json<NodeView>> {
    Ok(Json(state.nodes.resume(&actor(&ctx), &node_id).await?))
}

/// Queues a `node.inventory` task and waits briefly for the answer: 200 with the
/// finished task, or 202 when the node has not answered yet.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{node_id}/probe", tag = "admin", security(("bearer" = [])),
    params(("node_id" = String, Path)), responses((status = 200, body = NodeTask), (status = 202, body = NodeTask),
        (status = 409, body = gpuaas_kernel::ErrorResponse, description = "node not enrolled")))]
pub async fn probe_node(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(node_id): Path<String>,
) -> HandlerResult<(StatusCode, Json<NodeTask>)> {
    let task = state.nodes.probe(&actor(&ctx), &node_id).await?;
    let status = if task.status.is_terminal() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(task)))
}

/// A new enrollment token for the node (lost token, reinstalled host); earlier unused
/// tokens stop working. Shown once.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{node_id}/enrollment-token", tag = "admin", security(("bearer" = [])),
    params(("node_id" = String, Path)), responses((status = 201, body = gpuaas_inventory::nodes::EnrollmentTicket),
        (status = 403, body = gpuaas_kernel::ErrorResponse, description = "`node_retired`")))]
pub async fn issue_enrollment_token(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(node_id): Path<String>,
) -> HandlerResult<(StatusCode, Json<gpuaas_inventory::nodes::EnrollmentTicket>)> {
    Ok((StatusCode::CREATED, Json(state.nodes.issue_enrollment_token(&actor(&ctx), &node_id).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeCertificatesRequest {
    /// Why, for the audit trail.
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokeCertificatesResponse {
    pub certificates_revoked: u64,
}

/// Revokes every certificate of the node: its agent is refused on its next request.
#[utoipa::path(post, path = "/api/v1/admin/nodes/{node_id}/revoke-certificates", tag = "admin", security(("bearer" = [])),
    params(("node_id" = String, Path)), request_body = RevokeCertificatesRequest,
    responses((status = 200, body = RevokeCertificatesResponse), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn revoke_certificates(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(node_id): Path<String>,
    ApiJson(body): ApiJson<RevokeCertificatesRequest>,
) -> HandlerResult<Json<RevokeCertificatesResponse>> {
    let revoked = state.nodes.revoke_certificates(&actor(&ctx), &node_id, &body.reason).await?;
    Ok(Json(RevokeCertificatesResponse { certificates_revoked: revoked }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
}

/// The node's tasks, newest first, with results, errors and refusals.
#[utoipa::path(get, path = "/api/v1/admin/nodes/{node_id}/tasks", tag = "admin", security(("bearer" = [])),
    params(("node_id" = String, Path), TaskListQuery), responses((status = 200, body = TaskPage), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn list_node_tasks(
    State(state): State<AppState>,
    Path(node_id): Path<String>,
    Query(query): Query<TaskListQuery>,
) -> HandlerResult<Json<TaskPage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(InventoryError::from)?;
    nodes::get(&state.store, &node_id).await?;
    Ok(Json(tasks::list_for_node(&state.store, &node_id, query.cursor.as_deref(), limit).await?))
}

/// Spends a one-time enrollment token on a client certificate for the key in the CSR
/// (the private key never leaves the node). Reused, expired or unknown tokens get 401
/// `enrollment_token_used`, `enrollment_token_expired` or `enrollment_token_invalid`.
#[utoipa::path(post, path = "/api/v1/nodes/enroll", tag = "nodes", request_body = EnrollRequest,
    responses((status = 201, body = EnrollResponse), (status = 400, body = gpuaas_kernel::ErrorResponse),
        (status = 401, body = gpuaas_kernel::ErrorResponse, description = "token reused, expired or unknown")))]
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> HandlerResult<(StatusCode, Json<EnrollResponse>)> {
    Ok((StatusCode::CREATED, Json(state.nodes.enroll(&body, &current_correlation_id()).await?)))
}

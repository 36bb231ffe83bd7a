//! The caller's own identity, projects and service accounts. Every lookup is scoped to
//! the caller's memberships: another tenant's ids answer 404.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gpuaas_http::{ApiJson, current_correlation_id};
use gpuaas_iam::service_accounts::{IssuedCredential, ServiceAccount};
use gpuaas_iam::{ActorType, IamError, Me, Permission, Project};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::HandlerResult;
use super::security::Caller;

/// The signed-in user, their tenant, projects and roles.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])), responses(
    (status = 200, body = Me),
    (status = 401, body = gpuaas_kernel::ErrorResponse),
))]
pub async fn me(State(state): State<AppState>, Caller(ctx): Caller) -> HandlerResult<Json<Me>> {
    Ok(Json(state.iam.me(&ctx).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    pub items: Vec<Project>,
}

/// Projects the caller is a member of.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", security(("bearer" = [])), responses((status = 200, body = ProjectList)))]
pub async fn list_projects(State(state): State<AppState>, Caller(ctx): Caller) -> HandlerResult<Json<ProjectList>> {
    Ok(Json(ProjectList { items: state.iam.list_projects(&ctx).await? }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    pub name: String,
}

/// Creates a project in the caller's tenant; the caller administers it.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", security(("bearer" = [])), request_body = CreateProjectRequest, responses(
    (status = 201, body = Project),
    (status = 409, body = gpuaas_kernel::ErrorResponse, description = "name taken in this tenant"),
))]
pub async fn create_project(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<CreateProjectRequest>,
) -> HandlerResult<(StatusCode, Json<Project>)> {
    if ctx.actor_type != ActorType::User {
        return Err(IamError::Forbidden("service accounts cannot create projects".into()).into());
    }
    let project = state.iam.create_project(&ctx, &body.name, &current_correlation_id()).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// One project the caller is a member of.
#[utoipa::path(get, path = "/api/v1/projects/{project_id}", tag = "projects", security(("bearer" = [])),
    params(("project_id" = String, Path)), responses((status = 200, body = Project), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn get_project(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
) -> HandlerResult<Json<Project>> {
    Ok(Json(state.iam.project(&ctx, &project_id, Permission::ProjectRead).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceAccountList {
    pub items: Vec<ServiceAccount>,
}

/// Service accounts of a project (project admins only).
#[utoipa::path(get, path = "/api/v1/projects/{project_id}/service-accounts", tag = "service-accounts", security(("bearer" = [])),
    params(("project_id" = String, Path)), responses((status = 200, body = ServiceAccountList), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn list_service_accounts(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
) -> HandlerResult<Json<ServiceAccountList>> {
    Ok(Json(ServiceAccountList { items: state.iam.list_service_accounts(&ctx, &project_id).await? }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccountRequest {
    pub name: String,
    /// Any of `project:read`, `project:write`.
    pub scopes: Vec<String>,
}

/// Creates a service account; the client secret in the answer is shown only this once.
#[utoipa::path(post, path = "/api/v1/projects/{project_id}/service-accounts", tag = "service-accounts", security(("bearer" = [])),
    params(("project_id" = String, Path)), request_body = CreateServiceAccountRequest,
    responses((status = 201, body = IssuedCredential), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn create_service_account(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(project_id): Path<String>,
    ApiJson(body): ApiJson<CreateServiceAccountRequest>,
) -> HandlerResult<(StatusCode, Json<IssuedCredential>)> {
    let issued = state
        .iam
        .create_service_account(&ctx, &project_id, &body.name, &body.scopes, &current_correlation_id())
        .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// Replaces the account's credential; the old secret and its tokens stop working at once.
#[utoipa::path(post, path = "/api/v1/projects/{project_id}/service-accounts/{service_account_id}/rotate", tag = "service-accounts",
    security(("bearer" = [])), params(("project_id" = String, Path), ("service_account_id" = String, Path)),
    responses((status = 200, body = IssuedCredential), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn rotate_service_account(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path((project_id, account_id)): Path<(String, String)>,
) -> HandlerResult<Json<IssuedCredential>> {
    Ok(Json(state.iam.rotate_service_account(&ctx, &project_id, &account_id, &current_correlation_id()).await?))
}

/// Revokes the account; its credentials and tokens stop working at once.
#[utoipa::path(post, path = "/api/v1/projects/{project_id}/service-accounts/{service_account_id}/revoke", tag = "service-accounts",
    security(("bearer" = [])), params(("project_id" = String, Path), ("service_account_id" = String, Path)),
    responses((status = 200, body = ServiceAccount), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn revoke_service_account(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path((project_id, account_id)): Path<(String, String)>,
) -> HandlerResult<Json<ServiceAccount>> {
    Ok(Json(state.iam.revoke_service_account(&ctx, &project_id, &account_id, &current_correlation_id()).await?))
}

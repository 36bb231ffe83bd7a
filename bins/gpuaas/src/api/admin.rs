//! Operator endpoints: user management, audit log and signing-key rotation.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use gpuaas_audit::{AuditFilter, AuditPage};
use gpuaas_http::{ApiError, ApiJson, current_correlation_id};
use gpuaas_iam::{GlobalRole, IamError, User, UserFilter, UserPage, UserStatus, accounts};
use gpuaas_kernel::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::HandlerResult;
use super::security::Caller;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UserListQuery {
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
    /// `active` or `disabled`.
    pub status: Option<String>,
    /// Case-insensitive email prefix.
    pub email: Option<String>,
}

/// All users, newest first (cursor pagination).
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])), params(UserListQuery),
    responses((status = 200, body = UserPage), (status = 403, body = gpuaas_kernel::ErrorResponse)))]
pub async fn list_users(
    State(state): State<AppState>,
    Query(query): Query<UserListQuery>,
) -> HandlerResult<Json<UserPage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(IamError::from)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(
            UserStatus::parse(text).ok_or_else(|| ApiError::invalid_field("status", "must be active or disabled"))?,
        ),
    };
    if query.email.as_ref().is_some_and(|prefix| prefix.len() > accounts::MAX_EMAIL_LEN) {
        return Err(ApiError::invalid_field("email", "too long").into());
    }
    let filter = UserFilter { status, email_prefix: query.email };
    Ok(Json(accounts::list_users(state.iam.store(), &filter, query.cursor.as_deref(), limit).await?))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/admin/users/{user_id}", tag = "admin", security(("bearer" = [])),
    params(("user_id" = String, Path)), responses((status = 200, body = User), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn get_user(State(state): State<AppState>, Path(user_id): Path<String>) -> HandlerResult<Json<User>> {
    Ok(Json(accounts::user_by_id(state.iam.store(), &user_id).await?.ok_or(IamError::NotFound("user"))?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub email: String,
    /// At least 12 characters.
    pub password: String,
    pub display_name: Option<String>,
    /// `admin`, `billing_operator` or `user` (default).
    pub role: Option<String>,
}

/// Creates a local account with its own tenant and default project.
#[utoipa::path(post, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])), request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = 409, body = gpuaas_kernel::ErrorResponse, description = "email taken")))]
pub async fn create_user(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> HandlerResult<(StatusCode, Json<User>)> {
    let role = match body.role.as_deref() {
        None => GlobalRole::User,
        Some(text) => GlobalRole::parse(text)
            .ok_or_else(|| ApiError::invalid_field("role", "must be admin, billing_operator or user"))?,
    };
    let user = state
        .iam
        .admin_create_user(
            &ctx,
            &body.email,
            body.display_name.as_deref(),
            &body.password,
            role,
            &current_correlation_id(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Disables a user: refresh tokens are revoked at once and access tokens stop working.
#[utoipa::path(post, path = "/api/v1/admin/users/{user_id}/disable", tag = "admin", security(("bearer" = [])),
    params(("user_id" = String, Path)), responses((status = 200, body = User), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn disable_user(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(user_id): Path<String>,
) -> HandlerResult<Json<User>> {
    Ok(Json(state.iam.admin_set_user_status(&ctx, &user_id, UserStatus::Disabled, &current_correlation_id()).await?))
}

/// Enables a disabled user again.
#[utoipa::path(post, path = "/api/v1/admin/users/{user_id}/enable", tag = "admin", security(("bearer" = [])),
    params(("user_id" = String, Path)), responses((status = 200, body = User), (status = 404, body = gpuaas_kernel::ErrorResponse)))]
pub async fn enable_user(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(user_id): Path<String>,
) -> HandlerResult<Json<User>> {
    Ok(Json(state.iam.admin_set_user_status(&ctx, &user_id, UserStatus::Active, &current_correlation_id()).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    /// Key id of the new signing key.
    pub kid: String,
}

/// Rotates the built-in issuer's signing key; tokens signed by the old key stay valid
/// until they expire.
#[utoipa::path(post, path = "/api/v1/admin/signing-keys/rotate", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = RotatedKey)))]
pub async fn rotate_signing_key(State(state): State<AppState>, Caller(ctx): Caller) -> HandlerResult<Json<RotatedKey>> {
    Ok(Json(RotatedKey { kid: state.iam.rotate_signing_key(&ctx, &current_correlation_id()).await? }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub target: Option<String>,
    pub action: Option<String>,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, inclusive.
    pub to: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

fn timestamp(field: &str, text: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    text.map(|text| {
        Timestamp::parse_rfc3339(text).map_err(|_| ApiError::invalid_field(field, "must be an RFC 3339 time"))
    })
    .transpose()
}

fn audit_filter(query: &AuditQuery) -> Result<AuditFilter, ApiError> {
    Ok(AuditFilter {
        actor_id: query.actor.clone(),
        target: query.target.clone(),
        action: query.action.clone(),
        from: timestamp("from", query.from.as_deref())?,
        to: timestamp("to", query.to.as_deref())?,
    })
}

/// Audit log, newest first, filtered by actor, target, action and time range.
#[utoipa::path(get, path = "/api/v1/admin/audit-logs", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = gpuaas_kernel::ErrorResponse)))]
pub async fn audit_logs(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> HandlerResult<Json<AuditPage>> {
    let filter = audit_filter(&query)?;
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(IamError::from)?;
    Ok(Json(gpuaas_audit::list(&state.store, &filter, query.cursor.as_deref(), limit).await?))
}

/// The same audit rows as CSV, streamed.
#[utoipa::path(get, path = "/api/v1/admin/audit-logs/export", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, description = "CSV", content_type = "text/csv"), (status = 400, body = gpuaas_kernel::ErrorResponse)))]
pub async fn export_audit_logs(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> HandlerResult<Response> {
    let filter = audit_filter(&query)?;
    if query.cursor.is_some() || query.limit.is_some() {
        return Err(
            ApiError::invalid_field("cursor", "the export streams every matching row; drop cursor and limit").into()
        );
    }
    // Validate before streaming: once the 200 is sent an error can only cut the body.
    filter.validate()?;
    let stream = gpuaas_audit::export_csv(state.store.clone(), filter).map(|chunk| {
        chunk.map_err(|error| {
            tracing::error!(%error, "audit export failed mid-stream");
            std::io::Error::other("audit export failed")
        })
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"audit-logs.csv\""),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

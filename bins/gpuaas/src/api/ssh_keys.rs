//! The caller's SSH public keys, installed on nodes for the allocations that name them.
//! Keys belong to a person: service accounts may list (they have none) but not add or
//! remove, and another user's key answers 404 as if it did not exist.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gpuaas_allocations::AllocationError;
use gpuaas_allocations::ssh_keys::{SshKey, SshKeyPage};
use gpuaas_http::ApiJson;
use gpuaas_iam::{ActorType, AuthContext, IamError};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::HandlerResult;
use super::nodes::actor;
use super::security::Caller;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SshKeyListQuery {
    pub cursor: Option<String>,
    /// 1 to 200; default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSshKeyRequest {
    /// 1 to 64 printable characters, e.g. `laptop`.
    pub name: String,
    /// One OpenSSH public key line (the contents of a `.pub` file): `ssh-ed25519`,
    /// `ecdsa-sha2-nistp256/384/521`, `ssh-rsa` of at least 3072 bits, or a FIDO
    /// `sk-` key. Private keys and key options are refused.
    pub public_key: String,
}

/// Keys are a person's: a machine identity must not grant shell access on its own.
fn require_user(ctx: &AuthContext) -> HandlerResult<()> {
    if ctx.actor_type != ActorType::User {
        return Err(IamError::Forbidden("service accounts cannot manage SSH keys".into()).into());
    }
    Ok(())
}

/// The caller's SSH public keys, newest first.
#[utoipa::path(get, path = "/api/v1/ssh-keys", tag = "ssh-keys", security(("bearer" = [])), params(SshKeyListQuery),
    responses((status = 200, body = SshKeyPage), (status = 400, body = gpuaas_kernel::ErrorResponse, description = "bad cursor or limit")))]
pub async fn list_ssh_keys(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Query(query): Query<SshKeyListQuery>,
) -> HandlerResult<Json<SshKeyPage>> {
    let limit = gpuaas_kernel::page_limit(query.limit).map_err(AllocationError::from)?;
    Ok(Json(state.allocations.list_ssh_keys(&ctx.actor_id, query.cursor.as_deref(), limit).await?))
}

/// Registers an SSH public key for runtime access. The answer carries the key's
/// `SHA256:` fingerprint, as `ssh-keygen -lf` prints it.
#[utoipa::path(post, path = "/api/v1/ssh-keys", tag = "ssh-keys", security(("bearer" = [])), request_body = AddSshKeyRequest,
    responses((status = 201, body = SshKey),
        (status = 400, body = gpuaas_kernel::ErrorResponse, description = "not a supported public key (a private key, RSA under 3072 bits, key options); `details.field` names the field"),
        (status = 403, body = gpuaas_kernel::ErrorResponse, description = "service accounts cannot add keys"),
        (status = 409, body = gpuaas_kernel::ErrorResponse, description = "already registered, or 50 keys registered")))]
pub async fn add_ssh_key(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(body): ApiJson<AddSshKeyRequest>,
) -> HandlerResult<(StatusCode, Json<SshKey>)> {
    require_user(&ctx)?;
    let key = state.allocations.add_ssh_key(&actor(&ctx), &ctx.actor_id, &body.name, &body.public_key).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Removes one of the caller's keys from future allocations. Allocations that already
/// installed it keep it until they are released.
#[utoipa::path(delete, path = "/api/v1/ssh-keys/{key_id}", tag = "ssh-keys", security(("bearer" = [])),
    params(("key_id" = String, Path)),
    responses((status = 204, description = "removed"),
        (status = 403, body = gpuaas_kernel::ErrorResponse, description = "service accounts cannot remove keys"),
        (status = 404, body = gpuaas_kernel::ErrorResponse, description = "no such key of the caller's")))]
pub async fn delete_ssh_key(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    Path(key_id): Path<String>,
) -> HandlerResult<StatusCode> {
    require_user(&ctx)?;
    state.allocations.delete_ssh_key(&actor(&ctx), &ctx.actor_id, &key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Sign-in endpoints: password login, refresh, logout, OIDC code flow, service-account
//! tokens, and the built-in issuer's discovery document and JWKS.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpuaas_http::{ApiJson, current_correlation_id};
use gpuaas_iam::SessionTokens;
use gpuaas_iam::service_accounts::ServiceAccountToken;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::HandlerResult;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcExchangeRequest {
    /// The `code` the provider appended to the redirect URI.
    pub code: String,
    /// The `state` the provider appended to the redirect URI.
    pub state: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OidcAuthorizeResponse {
    /// Send the browser here; the provider redirects back with `code` and `state`.
    pub authorization_url: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountTokenRequest {
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated subset of the account's scopes; all of them when absent.
    pub scope: Option<String>,
}

/// Signs in a local account with email and password.
#[utoipa::path(post, path = "/api/v1/auth/personal/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, body = SessionTokens),
    (status = 401, body = gpuaas_kernel::ErrorResponse, description = "`invalid_credentials`"),
    (status = 403, body = gpuaas_kernel::ErrorResponse, description = "`account_disabled` or `feature_disabled`"),
    (status = 429, body = gpuaas_kernel::ErrorResponse, description = "`account_locked`, with Retry-After"),
))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> HandlerResult<Json<SessionTokens>> {
    Ok(Json(state.iam.login(&body.email, &body.password, &current_correlation_id()).await?))
}

/// Exchanges a refresh token for a new session; the presented refresh token is revoked.
#[utoipa::path(post, path = "/api/v1/auth/token/refresh", tag = "auth", request_body = RefreshRequest, responses(
    (status = 200, body = SessionTokens),
    (status = 401, body = gpuaas_kernel::ErrorResponse, description = "`invalid_credentials`: unknown, expired or revoked"),
))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> HandlerResult<Json<SessionTokens>> {
    Ok(Json(state.iam.refresh(&body.refresh_token, &current_correlation_id()).await?))
}

/// Ends a session by revoking its refresh token.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest, responses(
    (status = 204, description = "Revoked"),
    (status = 401, body = gpuaas_kernel::ErrorResponse, description = "`invalid_credentials`: unknown or already revoked"),
))]
pub async fn logout(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> HandlerResult<StatusCode> {
    state.iam.logout(&body.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts sign-in at the external OIDC provider (authorization code + PKCE). Answers
/// 302 to the provider, with the same URL in the body for clients that follow it
/// themselves.
#[utoipa::path(get, path = "/api/v1/auth/oidc/authorize", tag = "auth", responses(
    (status = 302, body = OidcAuthorizeResponse),
    (status = 403, body = gpuaas_kernel::ErrorResponse, description = "`feature_disabled`: no provider configured"),
    (status = 502, body = gpuaas_kernel::ErrorResponse, description = "`identity_provider_error`"),
))]
pub async fn oidc_authorize(State(state): State<AppState>) -> HandlerResult<Response> {
    let url = state.iam.oidc_authorize().await?;
    Ok((StatusCode::FOUND, [(header::LOCATION, url.clone())], Json(OidcAuthorizeResponse { authorization_url: url }))
        .into_response())
}

/// Finishes OIDC sign-in: redeems the code, verifies the ID token and nonce, upserts
/// the user and returns the platform's session tokens.
#[utoipa::path(post, path = "/api/v1/auth/oidc/exchange", tag = "auth", request_body = OidcExchangeRequest, responses(
    (status = 200, body = SessionTokens),
    (status = 400, body = gpuaas_kernel::ErrorResponse, description = "`oidc_flow_invalid`: state or nonce mismatch, code refused"),
    (status = 401, body = gpuaas_kernel::ErrorResponse, description = "`token_invalid`: the ID token failed verification"),
))]
pub async fn oidc_exchange(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<OidcExchangeRequest>,
) -> HandlerResult<Json<SessionTokens>> {
    Ok(Json(state.iam.oidc_exchange(&body.code, &body.state, &current_correlation_id()).await?))
}

/// Exchanges service-account credentials for a short-lived access token.
#[utoipa::path(post, path = "/api/v1/auth/service-accounts/token", tag = "auth", request_body = ServiceAccountTokenRequest, responses(
    (status = 200, body = ServiceAccountToken),
    (status = 401, body = gpuaas_kernel::ErrorResponse, description = "`invalid_credentials`"),
))]
pub async fn service_account_token(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ServiceAccountTokenRequest>,
) -> HandlerResult<Json<ServiceAccountToken>> {
    let token = state
        .iam
        .service_account_token(&body.client_id, &body.client_secret, body.scope.as_deref(), &current_correlation_id())
        .await?;
    Ok(Json(token))
}

/// OpenID Provider metadata of the built-in issuer.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "auth", responses((status = 200, description = "OpenID Provider metadata")))]
pub async fn openid_configuration(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.iam.discovery_document())
}

/// Public keys that verify the platform's tokens, including retired keys whose tokens
/// may still be live.
#[utoipa::path(get, path = "/api/v1/auth/jwks", tag = "auth", responses((status = 200, description = "JWK set")))]
pub async fn jwks(State(state): State<AppState>) -> HandlerResult<Json<serde_json::Value>> {
    Ok(Json(state.iam.jwks().await?))
}

//! Sign-in endpoints: password login, refresh, logout, OIDC code flow, service-account
//! tokens, and the built-in issuer's discovery document and JWKS.
//!
//! Two session styles share the same domain calls. The JSON endpoints hand both tokens
//! to the client (the CLI keeps them in a 0600 file). The browser-session endpoints under
//! `/api/v1/auth/session/` hand the portal only the access token, kept in memory; the
//! refresh token travels in an `HttpOnly` cookie that page scripts, and so an injected
//! script, cannot read.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpuaas_http::{ApiError, ApiJson, current_correlation_id};
use gpuaas_iam::service_accounts::ServiceAccountToken;
use gpuaas_iam::{IamError, SessionTokens};
use gpuaas_kernel::ErrCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{HandlerError, HandlerResult};
use super::security::BROWSER_SESSION_PATH;

/// Name of the cookie that carries a browser session's refresh token.
pub const REFRESH_COOKIE: &str = "gpuaas_refresh";

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

/// A browser session's answer: the access token only. The refresh token is in the
/// `gpuaas_refresh` cookie, out of reach of page scripts.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrowserSession {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires; refresh before then.
    pub expires_in: u64,
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

/// The sign-in methods this installation offers, so a sign-in page shows only those.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignInMethods {
    /// Email and password (policy `auth.personal_login.enabled`).
    pub password: bool,
    /// An external OIDC provider: start at `GET /api/v1/auth/oidc/authorize`.
    pub oidc: bool,
}

/// Which sign-in methods are available.
#[utoipa::path(get, path = "/api/v1/auth/providers", tag = "auth", responses((status = 200, body = SignInMethods)))]
pub async fn sign_in_methods(State(state): State<AppState>) -> HandlerResult<Json<SignInMethods>> {
    Ok(Json(SignInMethods { password: state.iam.password_login_enabled().await?, oidc: state.iam.oidc_enabled() }))
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

/// Signs a local account in for the web portal: the access token in the body, the
/// refresh token in an `HttpOnly` cookie. Same checks, lockout and audit as
/// `/api/v1/auth/personal/login`.
#[utoipa::path(post, path = "/api/v1/auth/session/login", tag = "auth", request_body = LoginRequest,
    params(("X-Gpuaas-Client" = String, Header, description = "Must be `portal`: the CSRF guard of every browser-session endpoint")),
    responses(
        (status = 200, body = BrowserSession, headers(
            ("Set-Cookie" = String, description = "`gpuaas_refresh=…; HttpOnly; SameSite=Strict; Path=/api/v1/auth/session; Max-Age=<refresh-token lifetime>`, plus `; Secure` over https"),
        )),
        (status = 400, body = gpuaas_kernel::ErrorResponse, description = "`validation_error`, also for a request carrying `X-Idempotency-Key`"),
        (status = 401, body = gpuaas_kernel::ErrorResponse, description = "`invalid_credentials`"),
        (status = 403, body = gpuaas_kernel::ErrorResponse, description = "`forbidden` without `X-Gpuaas-Client: portal`; `account_disabled` or `feature_disabled`"),
        (status = 429, body = gpuaas_kernel::ErrorResponse, description = "`account_locked`, with Retry-After"),
    ))]
pub async fn session_login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginRequest>,
) -> HandlerResult<Response> {
    let tokens = state.iam.login(&body.email, &body.password, &current_correlation_id()).await?;
    browser_session(tokens, cookie_secure(&state, &headers))
}

/// Rotates the browser session in the `gpuaas_refresh` cookie, exactly like
/// `/api/v1/auth/token/refresh`: a new access token and a new cookie; the old refresh
/// token is revoked, and presenting it again revokes every session of the user. No
/// body, or `{}`. Any refusal also clears the cookie.
#[utoipa::path(post, path = "/api/v1/auth/session/refresh", tag = "auth",
    params(
        ("X-Gpuaas-Client" = String, Header, description = "Must be `portal`"),
        ("gpuaas_refresh" = Option<String>, Cookie, description = "The refresh token, set by a browser-session sign-in or refresh"),
    ),
    responses(
        (status = 200, body = BrowserSession, headers(("Set-Cookie" = String, description = "The rotated `gpuaas_refresh` cookie"))),
        (status = 401, body = gpuaas_kernel::ErrorResponse, description = "`invalid_credentials`: no cookie, or an unknown, expired or revoked one; `Set-Cookie` clears it"),
        (status = 403, body = gpuaas_kernel::ErrorResponse, description = "`forbidden` without `X-Gpuaas-Client: portal`; `account_disabled` (the cookie is cleared)"),
    ))]
pub async fn session_refresh(State(state): State<AppState>, headers: HeaderMap, _: EmptyBody) -> Response {
    let secure = cookie_secure(&state, &headers);
    let outcome = match refresh_token_from(&headers) {
        None => Err(ApiError::new(ErrCode::InvalidCredentials, "no browser session: sign in").into()),
        Some(token) => state.iam.refresh(&token, &current_correlation_id()).await.map_err(HandlerError::from),
    };
    match outcome.and_then(|tokens| browser_session(tokens, secure)) {
        Ok(response) => response,
        Err(error) => {
            // A refused token is spent for good (refresh revokes before it checks the
            // account); a server failure may have left it valid, so the browser keeps
            // it for a retry.
            let spent = error.error.status().is_client_error();
            let mut response = error.into_response();
            if spent {
                response.headers_mut().append(header::SET_COOKIE, cleared_cookie(secure));
            }
            response
        }
    }
}

/// Ends the browser session: revokes the cookie's refresh token and clears the cookie.
/// Answers 204 also without a cookie or with a spent one: the browser is signed out
/// either way.
#[utoipa::path(post, path = "/api/v1/auth/session/logout", tag = "auth",
    params(
        ("X-Gpuaas-Client" = String, Header, description = "Must be `portal`"),
        ("gpuaas_refresh" = Option<String>, Cookie, description = "The refresh token to revoke"),
    ),
    responses(
        (status = 204, description = "Signed out", headers(("Set-Cookie" = String, description = "Clears `gpuaas_refresh` (`Max-Age=0`)"))),
        (status = 403, body = gpuaas_kernel::ErrorResponse, description = "`forbidden` without `X-Gpuaas-Client: portal`"),
    ))]
pub async fn session_logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    _: EmptyBody,
) -> HandlerResult<Response> {
    if let Some(token) = refresh_token_from(&headers) {
        match state.iam.logout(&token).await {
            Ok(()) | Err(IamError::InvalidCredentials) => {}
            // The token may still be live: keep the cookie so that a retry revokes it.
            Err(error) => return Err(error.into()),
        }
    }
    let cleared = cleared_cookie(cookie_secure(&state, &headers));
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cleared)]).into_response())
}

/// Finishes OIDC sign-in for the web portal: like `/api/v1/auth/oidc/exchange`, with the
/// refresh token in the `gpuaas_refresh` cookie instead of the body.
#[utoipa::path(post, path = "/api/v1/auth/session/oidc/exchange", tag = "auth", request_body = OidcExchangeRequest,
    params(("X-Gpuaas-Client" = String, Header, description = "Must be `portal`")),
    responses(
        (status = 200, body = BrowserSession, headers(("Set-Cookie" = String, description = "The new `gpuaas_refresh` cookie"))),
        (status = 400, body = gpuaas_kernel::ErrorResponse, description = "`oidc_flow_invalid`: state or nonce mismatch, code refused"),
        (status = 401, body = gpuaas_kernel::ErrorResponse, description = "`token_invalid`: the ID token failed verification"),
        (status = 403, body = gpuaas_kernel::ErrorResponse, description = "`forbidden` without `X-Gpuaas-Client: portal`; `feature_disabled`"),
    ))]
pub async fn session_oidc_exchange(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<OidcExchangeRequest>,
) -> HandlerResult<Response> {
    let tokens = state.iam.oidc_exchange(&body.code, &body.state, &current_correlation_id()).await?;
    browser_session(tokens, cookie_secure(&state, &headers))
}

/// The body of a request whose input is the cookie: none, or an empty JSON object.
pub struct EmptyBody;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyObject {}

impl<S: Send + Sync> FromRequest<S> for EmptyBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = request.headers().clone();
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrCode::PayloadTooLarge, "request body is larger than this endpoint accepts")
            } else {
                ApiError::new(ErrCode::ValidationError, "request body could not be read")
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self);
        }
        // Anything else must be `{}`; ApiJson names what is wrong with it.
        let mut rebuilt = Request::new(Body::from(bytes));
        *rebuilt.headers_mut() = headers;
        ApiJson::<EmptyObject>::from_request(rebuilt, state).await.map(|_| Self)
    }
}

/// `Secure` when the public URL is https, or a TLS-terminating proxy says the browser
/// came over https. A forged header only makes the sender's own cookie stricter.
fn cookie_secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The refresh token from the request's cookies, when there is a non-empty one.
fn refresh_token_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name.trim() == REFRESH_COOKIE).then(|| value.trim().trim_matches('"').to_owned())
        })
        .filter(|value| !value.is_empty())
}

/// `SameSite=Strict`: the browser never sends it with a request started by another
/// site. The path keeps it off every request but the session endpoints.
fn refresh_cookie(value: &str, max_age_seconds: u64, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={value}; HttpOnly; SameSite=Strict; Path={BROWSER_SESSION_PATH}; Max-Age={max_age_seconds}{secure}"
    ))
    .map_err(ApiError::internal)
}

/// Same name and path as [`refresh_cookie`], or the browser keeps the old one.
fn cleared_cookie(secure: bool) -> HeaderValue {
    HeaderValue::from_static(if secure {
        "gpuaas_refresh=; HttpOnly; SameSite=Strict; Path=/api/v1/auth/session; Max-Age=0; Secure"
    } else {
        "gpuaas_refresh=; HttpOnly; SameSite=Strict; Path=/api/v1/auth/session; Max-Age=0"
    })
}

/// The answer of a browser-session sign-in or refresh. `no-store`: tokens must not
/// stay in any cache.
fn browser_session(tokens: SessionTokens, secure: bool) -> HandlerResult<Response> {
    let cookie = refresh_cookie(&tokens.refresh_token, tokens.refresh_expires_in, secure)?;
    let body = BrowserSession {
        access_token: tokens.access_token,
        token_type: tokens.token_type,
        expires_in: tokens.expires_in,
    };
    Ok(([(header::SET_COOKIE, cookie), (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cleared_cookie_names_the_cookie_it_clears() {
        for secure in [false, true] {
            let set = refresh_cookie("x", 60, secure).unwrap_or_else(|e| panic!("{e}"));
            let set = set.to_str().unwrap_or_default().replace("=x;", "=;").replace("Max-Age=60", "Max-Age=0");
            assert_eq!(cleared_cookie(secure).to_str().unwrap_or_default(), set);
        }
    }

    #[test]
    fn the_refresh_token_is_found_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("theme=dark; gpuaas_refresh=abc-_1"));
        assert_eq!(refresh_token_from(&headers).as_deref(), Some("abc-_1"));
        headers.insert(header::COOKIE, HeaderValue::from_static("gpuaas_refresh=; other=1"));
        assert_eq!(refresh_token_from(&headers), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("not_gpuaas_refresh=abc"));
        assert_eq!(refresh_token_from(&headers), None);
    }
}

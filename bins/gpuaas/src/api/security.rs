//! Authentication and authorization at the HTTP edge.
//!
//! Every route is registered through [`RouteTable`] with the [`Permission`] it needs;
//! there is no other way to add a route to the public API, so a route without a
//! permission cannot exist (a test walks the table to prove it). The authentication
//! layer verifies the bearer token once per request; the per-route guard then decides.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::{HeaderName, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use gpuaas_http::{ApiError, Principal};
use gpuaas_iam::{AuthContext, IamError, Permission, Project};
use gpuaas_kernel::ErrCode;

use super::AppState;
use super::error::HandlerError;

/// One route and what it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub permission: Permission,
}

/// Collects routes together with their permissions.
#[derive(Default)]
pub struct RouteTable {
    specs: Vec<RouteSpec>,
    routers: BTreeMap<&'static str, MethodRouter<AppState>>,
}

impl RouteTable {
    pub fn add<H, T>(mut self, method: Method, path: &'static str, permission: Permission, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        let guarded =
            on(filter, handler).route_layer(axum::middleware::from_fn(move |request: Request, next: Next| {
                require(permission, request, next)
            }));
        let entry = self.routers.remove(path).map_or(guarded.clone(), |existing| existing.merge(guarded));
        self.routers.insert(path, entry);
        self.specs.push(RouteSpec { method, path, permission });
        self
    }

    pub fn specs(&self) -> &[RouteSpec] {
        &self.specs
    }

    pub fn into_router(self) -> Router<AppState> {
        self.routers.into_iter().fold(Router::new(), |router, (path, methods)| router.route(path, methods))
    }
}

/// The outcome of authentication, stored on the request for the guard and handlers.
#[derive(Clone)]
enum Authentication {
    Anonymous,
    Authenticated(AuthContext),
    Failed(ErrCode, String),
}

/// Verifies a bearer token when one is presented. Never refuses by itself: whether a
/// route needs a caller is the guard's decision, so public routes keep working for a
/// client holding a stale token.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let header_value = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().map(str::to_owned));
    let outcome = match header_value {
        None => Authentication::Anonymous,
        Some(Err(_)) => {
            Authentication::Failed(ErrCode::TokenInvalid, "the Authorization header is not readable".into())
        }
        Some(Ok(value)) => match value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
            None => Authentication::Failed(ErrCode::TokenInvalid, "use the Bearer authorization scheme".into()),
            Some(token) => match state.iam.authenticate(token.trim()).await {
                Ok(context) => Authentication::Authenticated(context),
                Err(error) => {
                    let error = HandlerError::from(error).error;
                    Authentication::Failed(error.code, error.message)
                }
            },
        },
    };
    if let Authentication::Authenticated(context) = &outcome {
        request.extensions_mut().insert(Principal { id: context.actor_id.clone() });
        request.extensions_mut().insert(context.clone());
        // The active project travels per request and is checked against membership.
        if let Some(project_id) = request.headers().get("x-project-id").map(|v| v.to_str().map(str::to_owned)) {
            let Ok(project_id) = project_id else {
                return ApiError::invalid_field("X-Project-Id", "not a project id").into_response();
            };
            match state.iam.project(context, &project_id, Permission::ProjectRead).await {
                Ok(project) => {
                    request.extensions_mut().insert(ActiveProject(project));
                }
                Err(error) => return HandlerError::from(error).into_response(),
            }
        }
    }
    request.extensions_mut().insert(outcome);
    next.run(request).await
}

/// The project named by `X-Project-Id`, already checked against the caller's membership.
#[derive(Debug, Clone)]
pub struct ActiveProject(pub Project);

async fn require(permission: Permission, request: Request, next: Next) -> Response {
    if permission == Permission::Public {
        return next.run(request).await;
    }
    let outcome = request.extensions().get::<Authentication>().cloned().unwrap_or(Authentication::Anonymous);
    match outcome {
        Authentication::Anonymous => {
            ApiError::new(ErrCode::TokenMissing, "this endpoint needs a bearer token").into_response()
        }
        Authentication::Failed(code, message) => ApiError::new(code, message).into_response(),
        Authentication::Authenticated(context) if context.allows(permission) => next.run(request).await,
        Authentication::Authenticated(_) => HandlerError::from(IamError::Forbidden(format!(
            "this endpoint needs the {} permission",
            permission.as_str()
        )))
        .into_response(),
    }
}

/// Query parameter names that would carry a credential. Credentials in URLs end up in
/// proxy logs, browser history and Referer headers, so any request carrying one is
/// refused outright, on every route.
pub const CREDENTIAL_QUERY_PARAMETERS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "password",
    "client_secret",
    "secret",
    "api_key",
    "apikey",
    "authorization",
];

pub async fn refuse_credentials_in_url(request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query() {
        for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
            let lowered = name.to_ascii_lowercase();
            if CREDENTIAL_QUERY_PARAMETERS.contains(&lowered.as_str()) {
                return ApiError::invalid_field(
                    &lowered,
                    "credentials must never be sent in the URL; use the Authorization header or the request body",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// Where the browser-session endpoints live; also the refresh cookie's `Path`, so the
/// browser sends that cookie to them and to nothing else.
pub const BROWSER_SESSION_PATH: &str = "/api/v1/auth/session";
/// The header every browser-session request carries, with the value [`PORTAL_CLIENT`].
pub const PORTAL_CLIENT_HEADER: HeaderName = HeaderName::from_static("x-gpuaas-client");
pub const PORTAL_CLIENT: &str = "portal";

/// CSRF guard of the endpoints that act on the refresh cookie. A page on another origin
/// can make a browser send a cookie with a plain form POST, but not with a custom
/// header: that needs a CORS preflight, which this server never grants. Runs before
/// idempotency, so a refused request claims no key.
pub async fn guard_browser_sessions(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let under = path.strip_prefix(BROWSER_SESSION_PATH).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if !under {
        return next.run(request).await;
    }
    let from_portal = request.headers().get(&PORTAL_CLIENT_HEADER).is_some_and(|value| value == PORTAL_CLIENT);
    if !from_portal {
        return ApiError::new(
            ErrCode::Forbidden,
            format!("browser-session endpoints need the header `X-Gpuaas-Client: {PORTAL_CLIENT}`"),
        )
        .with_details(serde_json::json!({ "header": "X-Gpuaas-Client" }))
        .into_response();
    }
    // Idempotency keys are scoped per principal, and every caller here is anonymous: a
    // stored refresh answer would be replayed to anyone presenting the same key, and a
    // replay could not set the cookie anyway.
    if request.headers().contains_key(&gpuaas_http::idempotency::HEADER) {
        return ApiError::invalid_field(
            "X-Idempotency-Key",
            "browser-session endpoints do not take X-Idempotency-Key; send the request without it",
        )
        .into_response();
    }
    next.run(request).await
}

/// The caller, for handlers behind a non-public permission.
pub struct Caller(pub AuthContext);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = HandlerError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthContext>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::new(ErrCode::TokenMissing, "this endpoint needs a bearer token").into())
    }
}

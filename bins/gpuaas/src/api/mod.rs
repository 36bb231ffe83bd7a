//! The public HTTP surface: the route table with each route's permission, the
//! middleware stack, fallbacks and the system routes.

pub mod admin;
pub mod allocations;
pub mod auth;
pub mod billing;
pub mod error;
pub mod internal;
pub mod nodes;
pub mod payments;
pub mod portal;
pub mod projects;
pub mod reconciliation;
pub mod security;
pub mod ssh_keys;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gpuaas_events::EventBus;
use gpuaas_http::idempotency::{IdempotencySettings, IdempotencySettingsSource, IdempotencyState};
use gpuaas_http::ratelimit::{
    BucketLimit, RateLimitSettings, RateLimitSettingsSource, RateLimitState, RateLimiter, RouteClass,
};
use gpuaas_http::{ApiError, ApiJson};
use gpuaas_kernel::ErrCode;
use gpuaas_policy::{PolicyClient, keys};
use gpuaas_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::ToSchema;

use self::security::RouteTable;

/// Everything a handler may reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub bus: Arc<dyn EventBus>,
    pub policy: PolicyClient,
    pub metrics: PrometheusHandle,
    pub iam: gpuaas_iam::Iam,
    /// In-process for `up`, Redis for `serve` when REDIS_URL is set.
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// SKUs, nodes, enrollment and the node task queue.
    pub nodes: gpuaas_inventory::NodePlane,
    /// Card top-ups, operator adjustments and refunds.
    pub payments: gpuaas_payments::Payments,
    /// SSH keys, allocations and their provisioning workflow.
    pub allocations: gpuaas_allocations::Allocations,
    /// The built web portal, served at `/` and for every client-side route.
    pub portal: portal::Portal,
    /// The public URL is https: the browser-session cookie is always `Secure`. Behind a
    /// TLS-terminating proxy that says `X-Forwarded-Proto: https` it is `Secure` anyway.
    pub secure_cookies: bool,
}

/// Reads per-class bucket limits from policy (the policy client caches). A policy read
/// failure falls back to the seeded defaults rather than failing the request.
struct PolicyRateLimits(PolicyClient);

#[async_trait]
impl RateLimitSettingsSource for PolicyRateLimits {
    async fn limit_for(&self, class: RouteClass) -> BucketLimit {
        let (burst, per_minute) = match class {
            RouteClass::Auth => (keys::RATELIMIT_AUTH_BURST, keys::RATELIMIT_AUTH_PER_MINUTE),
            RouteClass::Read => (keys::RATELIMIT_READ_BURST, keys::RATELIMIT_READ_PER_MINUTE),
            RouteClass::Write => (keys::RATELIMIT_WRITE_BURST, keys::RATELIMIT_WRITE_PER_MINUTE),
            RouteClass::Admin => (keys::RATELIMIT_ADMIN_BURST, keys::RATELIMIT_ADMIN_PER_MINUTE),
        };
        let fallback = RateLimitSettings::default().for_class(class);
        let read = |key| async move { self.0.get(key).await.ok().and_then(|value: i64| u32::try_from(value).ok()) };
        BucketLimit {
            burst: read(burst).await.unwrap_or(fallback.burst),
            per_minute: read(per_minute).await.unwrap_or(fallback.per_minute),
        }
    }
}

/// Reads idempotency settings from policy on each use (the policy client caches).
struct PolicyIdempotency(PolicyClient);

#[async_trait]
impl IdempotencySettingsSource for PolicyIdempotency {
    async fn idempotency_settings(&self) -> Result<IdempotencySettings, ApiError> {
        let policy = &self.0;
        Ok(IdempotencySettings {
            ttl: policy.get_duration_secs(keys::IDEMPOTENCY_TTL_SECONDS).await.map_err(ApiError::internal)?,
            in_flight_timeout: policy
                .get_duration_secs(keys::IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS)
                .await
                .map_err(ApiError::internal)?,
            max_body_bytes: max_body_bytes(policy).await.map_err(ApiError::internal)?,
        })
    }
}

pub async fn max_body_bytes(policy: &PolicyClient) -> Result<usize, gpuaas_policy::PolicyError> {
    let bytes = policy.get(keys::HTTP_MAX_BODY_BYTES).await?;
    usize::try_from(bytes).map_err(|_| gpuaas_policy::PolicyError::Invalid {
        key: keys::HTTP_MAX_BODY_BYTES.name,
        reason: "must not be negative".into(),
    })
}

/// Every public route with the permission it needs. The only place routes are added.
pub fn route_table() -> RouteTable {
    use axum::http::Method;
    use gpuaas_iam::Permission::{
        AdminRead, AdminWrite, Authenticated, BillingOperate, ProjectAdmin, ProjectRead, Public,
    };
    const NODE: &str = "/api/v1/admin/nodes/{node_id}";
    RouteTable::default()
        .add(Method::GET, "/", Public, portal_index)
        .add(Method::GET, "/metrics", Public, metrics)
        .add(Method::GET, "/api/v1/healthz", Public, healthz)
        .add(Method::GET, "/api/v1/readyz", Public, readyz)
        .add(Method::GET, "/api/v1/buildinfo", Public, buildinfo)
        .add(Method::GET, "/api/v1/openapi.json", Public, openapi_document)
        .add(Method::GET, "/.well-known/openid-configuration", Public, auth::openid_configuration)
        .add(Method::GET, "/api/v1/auth/jwks", Public, auth::jwks)
        .add(Method::GET, "/api/v1/auth/providers", Public, auth::sign_in_methods)
        .add(Method::POST, "/api/v1/auth/personal/login", Public, auth::login)
        .add(Method::POST, "/api/v1/auth/token/refresh", Public, auth::refresh)
        .add(Method::POST, "/api/v1/auth/logout", Public, auth::logout)
        .add(Method::GET, "/api/v1/auth/oidc/authorize", Public, auth::oidc_authorize)
        .add(Method::POST, "/api/v1/auth/oidc/exchange", Public, auth::oidc_exchange)
        .add(Method::POST, "/api/v1/auth/session/login", Public, auth::session_login)
        .add(Method::POST, "/api/v1/auth/session/refresh", Public, auth::session_refresh)
        .add(Method::POST, "/api/v1/auth/session/logout", Public, auth::session_logout)
        .add(Method::POST, "/api/v1/auth/session/oidc/exchange", Public, auth::session_oidc_exchange)
        .add(Method::POST, "/api/v1/auth/service-accounts/token", Public, auth::service_account_token)
        .add(Method::GET, "/api/v1/users/me", Authenticated, projects::me)
        .add(Method::GET, "/api/v1/projects", Authenticated, projects::list_projects)
        .add(Method::POST, "/api/v1/projects", Authenticated, projects::create_project)
        .add(Method::GET, "/api/v1/projects/{project_id}", ProjectRead, projects::get_project)
        .add(
            Method::GET,
            "/api/v1/projects/{project_id}/service-accounts",
            ProjectAdmin,
            projects::list_service_accounts,
        )
        .add(
            Method::POST,
            "/api/v1/projects/{project_id}/service-accounts",
            ProjectAdmin,
            projects::create_service_account,
        )
        .add(
            Method::POST,
            "/api/v1/projects/{project_id}/service-accounts/{service_account_id}/rotate",
            ProjectAdmin,
            projects::rotate_service_account,
        )
        .add(
            Method::POST,
            "/api/v1/projects/{project_id}/service-accounts/{service_account_id}/revoke",
            ProjectAdmin,
            projects::revoke_service_account,
        )
        .add(Method::GET, "/api/v1/admin/users", AdminRead, admin::list_users)
        .add(Method::POST, "/api/v1/admin/users", AdminWrite, admin::create_user)
        .add(Method::GET, "/api/v1/admin/users/{user_id}", AdminRead, admin::get_user)
        .add(Method::POST, "/api/v1/admin/users/{user_id}/disable", AdminWrite, admin::disable_user)
        .add(Method::POST, "/api/v1/admin/users/{user_id}/enable", AdminWrite, admin::enable_user)
        .add(Method::POST, "/api/v1/admin/signing-keys/rotate", AdminWrite, admin::rotate_signing_key)
        .add(Method::GET, "/api/v1/admin/audit-logs", AdminRead, admin::audit_logs)
        .add(Method::GET, "/api/v1/admin/audit-logs/export", AdminRead, admin::export_audit_logs)
        .add(Method::GET, "/api/v1/skus", Authenticated, nodes::list_skus)
        .add(Method::GET, "/api/v1/nodes", Authenticated, nodes::list_public_nodes)
        .add(Method::POST, "/api/v1/nodes/enroll", Public, nodes::enroll)
        .add(Method::GET, "/api/v1/ssh-keys", Authenticated, ssh_keys::list_ssh_keys)
        .add(Method::POST, "/api/v1/ssh-keys", Authenticated, ssh_keys::add_ssh_key)
        .add(Method::DELETE, "/api/v1/ssh-keys/{key_id}", Authenticated, ssh_keys::delete_ssh_key)
        .add(Method::GET, "/api/v1/admin/skus", AdminRead, nodes::admin_list_skus)
        .add(Method::POST, "/api/v1/admin/skus", AdminWrite, nodes::create_sku)
        .add(Method::PATCH, "/api/v1/admin/skus/{sku_id}", AdminWrite, nodes::update_sku)
        .add(Method::GET, "/api/v1/admin/nodes", AdminRead, nodes::admin_list_nodes)
        .add(Method::POST, "/api/v1/admin/nodes", AdminWrite, nodes::register_node)
        .add(Method::GET, NODE, AdminRead, nodes::get_node)
        .add(Method::DELETE, NODE, AdminWrite, nodes::retire_node)
        .add(Method::POST, "/api/v1/admin/nodes/{node_id}/drain", AdminWrite, nodes::drain_node)
        .add(Method::POST, "/api/v1/admin/nodes/{node_id}/resume", AdminWrite, nodes::resume_node)
        .add(Method::POST, "/api/v1/admin/nodes/{node_id}/probe", AdminWrite, nodes::probe_node)
        .add(Method::POST, "/api/v1/admin/nodes/{node_id}/enrollment-token", AdminWrite, nodes::issue_enrollment_token)
        .add(Method::POST, "/api/v1/admin/nodes/{node_id}/revoke-certificates", AdminWrite, nodes::revoke_certificates)
        .add(Method::GET, "/api/v1/admin/nodes/{node_id}/tasks", AdminRead, nodes::list_node_tasks)
        .add(Method::GET, "/api/v1/billing/balance", Authenticated, billing::balance)
        .add(Method::GET, "/api/v1/billing/ledger", Authenticated, billing::ledger)
        .add(Method::GET, "/api/v1/billing/usage", Authenticated, billing::usage)
        .add(Method::GET, "/api/v1/billing/usage/csv", Authenticated, billing::usage_csv)
        .add(Method::POST, "/api/v1/payments/checkout-session", Authenticated, payments::checkout_session)
        .add(Method::POST, "/api/v1/payments/customer-portal-session", Authenticated, payments::customer_portal_session)
        .add(Method::POST, "/api/v1/payments/webhook", Public, payments::webhook)
        .add(Method::POST, "/api/v1/admin/users/{user_id}/balance", BillingOperate, payments::adjust_balance)
        .add(Method::POST, "/api/v1/admin/users/{user_id}/refunds", BillingOperate, payments::refund)
        .add(Method::GET, "/api/v1/admin/payments/sessions", BillingOperate, payments::list_sessions)
        .add(Method::GET, "/api/v1/allocations", Authenticated, allocations::list_allocations)
        .add(Method::POST, "/api/v1/allocations", Authenticated, allocations::create_allocation)
        .add(Method::GET, "/api/v1/allocations/{allocation_id}", Authenticated, allocations::get_allocation)
        .add(
            Method::POST,
            "/api/v1/allocations/{allocation_id}/release",
            Authenticated,
            allocations::release_allocation,
        )
        .add(Method::GET, "/api/v1/admin/allocations", AdminRead, allocations::admin_list_allocations)
        .add(
            Method::POST,
            "/api/v1/admin/allocations/{allocation_id}/force-release",
            AdminWrite,
            allocations::force_release_allocation,
        )
        .add(Method::GET, "/api/v1/admin/reconciliation", AdminRead, reconciliation::list_findings)
}

/// Builds the whole router. `extra` lets tests mount routes under the same stack.
pub async fn router(state: AppState, extra: Router<AppState>) -> Result<Router, gpuaas_policy::PolicyError> {
    let body_limit = max_body_bytes(&state.policy).await?;
    let idempotency =
        IdempotencyState { store: state.store.clone(), settings: Arc::new(PolicyIdempotency(state.policy.clone())) };
    let api = route_table()
        .into_router()
        .merge(extra)
        .fallback(portal_or_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // Outermost first on the way in: correlation id, envelope guard, body limit, no
    // credentials in URLs, authentication (sets the principal), rate limit, the
    // browser-session CSRF guard, idempotency (rate limit and idempotency both keyed by
    // that principal), then the per-route permission guard.
    let rate_limits = RateLimitState {
        limiter: state.rate_limiter.clone(),
        settings: Arc::new(PolicyRateLimits(state.policy.clone())),
    };
    Ok(api
        .layer(axum::middleware::from_fn_with_state(idempotency, gpuaas_http::idempotency::layer))
        .layer(axum::middleware::from_fn(security::guard_browser_sessions))
        .layer(axum::middleware::from_fn_with_state(rate_limits, gpuaas_http::ratelimit::layer))
        .layer(axum::middleware::from_fn_with_state(state, security::authenticate))
        .layer(axum::middleware::from_fn(security::refuse_credentials_in_url))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(gpuaas_http::error::envelope_guard))
        .layer(axum::middleware::from_fn(gpuaas_http::correlation::layer)))
}

async fn route_not_found() -> ApiError {
    ApiError::new(ErrCode::RouteNotFound, "no endpoint at this path")
}

/// Reads outside the API are the portal's (its files, else its client-side routes);
/// anything else keeps the JSON 404.
async fn portal_or_not_found(State(state): State<AppState>, request: Request) -> Response {
    if portal::Portal::handles(request.method(), request.uri().path()) {
        return state.portal.serve(request).await;
    }
    route_not_found().await.into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrCode::MethodNotAllowed, "this endpoint does not accept that HTTP method")
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/api/v1/healthz", tag = "system", responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into() })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DependencyCheck {
    /// `ok` or `failing`.
    pub status: String,
    /// Which engine serves this dependency (`sqlite`, `postgres`, `embedded`, `nats`).
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    pub database: DependencyCheck,
    pub event_bus: DependencyCheck,
}

const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: the database and the event bus answer. 503 names the failing dependency.
#[utoipa::path(get, path = "/api/v1/readyz", tag = "system", responses(
    (status = 200, body = Readiness),
    (status = 503, body = gpuaas_kernel::ErrorResponse, description = "`details.failing` lists the failing dependencies"),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let database = check(state.store.dialect().name(), async { state.store.ping().await.map_err(|e| e.to_string()) });
    let bus = check(state.bus.name(), async { state.bus.health().await.map_err(|e| e.to_string()) });
    let (database, event_bus) = tokio::join!(database, bus);
    let mut failing = Vec::new();
    if database.status != "ok" {
        failing.push("database");
    }
    if event_bus.status != "ok" {
        failing.push("event_bus");
    }
    if failing.is_empty() {
        return axum::Json(Readiness { status: "ready".into(), database, event_bus }).into_response();
    }
    ApiError::new(ErrCode::ServiceUnavailable, format!("not ready: {} failing", failing.join(", ")))
        .with_details(serde_json::json!({
            "failing": failing,
            "database": database,
            "event_bus": event_bus,
        }))
        .into_response()
}

async fn check(backend: &str, probe: impl Future<Output = Result<(), String>>) -> DependencyCheck {
    let outcome = tokio::time::timeout(READINESS_TIMEOUT, probe).await.unwrap_or_else(|_| Err("timed out".into()));
    match outcome {
        Ok(()) => DependencyCheck { status: "ok".into(), backend: backend.into(), error: None },
        Err(error) => {
            tracing::warn!(backend, %error, "readiness check failing");
            DependencyCheck {
                status: "failing".into(),
                backend: backend.into(),
                error: Some(gpuaas_telemetry::sanitize::scrub_text(&error)),
            }
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BuildInfo {
    pub name: String,
    pub version: String,
    /// Commit the binary was built from, when the build recorded it.
    pub git_commit: String,
    /// `debug` or `release`.
    pub profile: String,
}

pub fn build_info() -> BuildInfo {
    BuildInfo {
        name: "gpuaas".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        git_commit: option_env!("GPUAAS_GIT_COMMIT").unwrap_or("unknown").into(),
        profile: if cfg!(debug_assertions) { "debug" } else { "release" }.into(),
    }
}

/// What this binary is.
#[utoipa::path(get, path = "/api/v1/buildinfo", tag = "system", responses((status = 200, body = BuildInfo)))]
pub async fn buildinfo() -> axum::Json<BuildInfo> {
    axum::Json(build_info())
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::document_json()).into_response()
}

/// Prometheus metrics: request counts and latency by route and status, outbox gauges,
/// relay counters.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// The web portal. Every other path outside `/api/`, `/metrics` and `/.well-known/`
/// is the portal's too: a file of the built portal, else its `index.html`. When the
/// portal is not built, a page saying how to build it.
#[utoipa::path(get, path = "/", tag = "system", responses((status = 200, description = "HTML", content_type = "text/html")))]
pub async fn portal_index(State(state): State<AppState>, request: Request) -> Response {
    state.portal.serve(request).await
}

/// Routes that exist only to exercise the middleware stack end to end in tests; they
/// are mounted by the test harness, never by `up` or `serve`.
pub fn echo_routes() -> Router<AppState> {
    #[derive(serde::Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Echo {
        name: String,
        count: u32,
    }
    async fn echo(ApiJson(body): ApiJson<Echo>) -> impl IntoResponse {
        (
            axum::http::StatusCode::CREATED,
            axum::Json(serde_json::json!({
                "name": body.name, "count": body.count, "id": gpuaas_kernel::new_id().to_string()
            })),
        )
    }
    Router::new().route("/api/v1/test/echo", axum::routing::post(echo))
}

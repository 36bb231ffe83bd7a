//! Per-principal, per-route-class rate limiting with token buckets.
//!
//! Every request is put into a [`RouteClass`]; each (class, caller) pair has its own
//! bucket of `burst` tokens refilled at `per_minute`. Authenticated callers are keyed by
//! their [`Principal`] id, anonymous ones by client IP, so sign-in attempts from one
//! address share a bucket. The limits come from a [`RateLimitSettingsSource`] (policy, in
//! the running platform); the buckets live in a [`RateLimiter`]: [`InProcessLimiter`] for
//! a single process (`gpuaas up`), [`RedisLimiter`] when several processes must share
//! them (`gpuaas serve`).
//!
//! The limiter fails open: when the backend errors, the request goes through and
//! `rate_limit_backend_errors_total` counts it. A rate limiter protects capacity; an
//! outage of it must not become an outage of the API.
//!
//! [`layer`] must run after authentication has inserted the [`Principal`]; before it,
//! every caller looks anonymous.

mod bucket;
mod in_process;
mod redis_limiter;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gpuaas_kernel::ErrCode;

pub use in_process::InProcessLimiter;
pub use redis_limiter::RedisLimiter;

use crate::{ApiError, Principal};

pub const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Seconds until the bucket is full again.
pub const RESET_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// At most one "backend failing" warning per this interval; the counter has the rest.
const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Which bucket family a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// `/api/v1/auth/…`: sign-in and token endpoints, the brute-force target.
    Auth,
    /// Safe methods elsewhere.
    Read,
    /// Everything that may change state.
    Write,
    /// `/api/v1/admin/…`.
    Admin,
}

impl RouteClass {
    pub const ALL: [RouteClass; 4] = [RouteClass::Auth, RouteClass::Read, RouteClass::Write, RouteClass::Admin];

    pub const fn as_str(self) -> &'static str {
        match self {
            RouteClass::Auth => "auth",
            RouteClass::Read => "read",
            RouteClass::Write => "write",
            RouteClass::Admin => "admin",
        }
    }

    /// The path decides first (auth and admin have their own budgets whatever the
    /// method), then the method.
    pub fn classify(method: &Method, path: &str) -> RouteClass {
        if SESSION_UPKEEP.contains(&path) {
            RouteClass::Read
        } else if is_under(path, "/api/v1/auth") {
            RouteClass::Auth
        } else if is_under(path, "/api/v1/admin") {
            RouteClass::Admin
        } else if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            RouteClass::Read
        } else {
            RouteClass::Write
        }
    }
}

impl std::fmt::Display for RouteClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Auth endpoints that are no brute-force target: refresh and logout present a random
/// 256-bit cookie, the others are public metadata. A browser calls some of them on
/// every page load, so they draw from the read budget; the scarce auth budget stays
/// for password, code and secret exchanges.
const SESSION_UPKEEP: [&str; 4] =
    ["/api/v1/auth/session/refresh", "/api/v1/auth/session/logout", "/api/v1/auth/providers", "/api/v1/auth/jwks"];

/// `path` is `prefix` itself or below it (`/api/v1/authz` is not under `/api/v1/auth`).
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// One bucket's shape: it holds at most `burst` tokens and regains `per_minute` a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLimit {
    pub burst: u32,
    pub per_minute: u32,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The bucket's capacity (`burst`).
    pub limit: u32,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// When refused: until the next token.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limit backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("rate limit backend failed recently; not asking again yet")]
    CoolingDown,
    #[error("rate limit backend: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("rate limit backend answered something unexpected: {0}")]
    Protocol(String),
}

/// Where the buckets live.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Takes one token from bucket `key`, creating it full with `limit` if new.
    async fn check(&self, key: &str, limit: BucketLimit) -> Result<Decision, RateLimitError>;

    /// Short name for metrics and logs (`in_process`, `redis`).
    fn backend(&self) -> &'static str;
}

/// Where the limits come from (policy, in the running platform). Infallible on purpose:
/// a source that cannot read its values answers its last known or default ones, because
/// a settings hiccup must not refuse or stall requests.
#[async_trait]
pub trait RateLimitSettingsSource: Send + Sync {
    async fn limit_for(&self, class: RouteClass) -> BucketLimit;
}

/// Fixed limits per class; [`Default`] matches the values policy is seeded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    pub auth: BucketLimit,
    pub read: BucketLimit,
    pub write: BucketLimit,
    pub admin: BucketLimit,
}

impl RateLimitSettings {
    pub fn for_class(&self, class: RouteClass) -> BucketLimit {
        match class {
            RouteClass::Auth => self.auth,
            RouteClass::Read => self.read,
            RouteClass::Write => self.write,
            RouteClass::Admin => self.admin,
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            auth: BucketLimit { burst: 20, per_minute: 30 },
            read: BucketLimit { burst: 120, per_minute: 600 },
            write: BucketLimit { burst: 60, per_minute: 300 },
            admin: BucketLimit { burst: 60, per_minute: 300 },
        }
    }
}

#[async_trait]
impl RateLimitSettingsSource for RateLimitSettings {
    async fn limit_for(&self, class: RouteClass) -> BucketLimit {
        self.for_class(class)
    }
}

#[derive(Clone)]
pub struct RateLimitState {
    pub limiter: Arc<dyn RateLimiter>,
    pub settings: Arc<dyn RateLimitSettingsSource>,
}

/// The bucket key for a request: `{class}:{principal id}`, or `{class}:ip:{address}` for
/// anonymous callers (`unknown` when the server was not asked for connection info).
pub fn bucket_key(class: RouteClass, request: &Request) -> String {
    match request.extensions().get::<Principal>() {
        Some(principal) if principal.id != Principal::ANONYMOUS => format!("{class}:{}", principal.id),
        _ => match request.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(address)) => format!("{class}:ip:{}", address.ip()),
            None => format!("{class}:ip:unknown"),
        },
    }
}

pub async fn layer(State(state): State<RateLimitState>, request: Request, next: Next) -> Response {
    // A nested router sees a shortened path; the class is decided on the full one.
    let path = match request.extensions().get::<OriginalUri>() {
        Some(OriginalUri(uri)) => uri.path().to_owned(),
        None => request.uri().path().to_owned(),
    };
    let class = RouteClass::classify(request.method(), &path);
    let key = bucket_key(class, &request);
    let limit = state.settings.limit_for(class).await;

    let decision = match state.limiter.check(&key, limit).await {
        Ok(decision) => decision,
        Err(error) => {
            let backend = state.limiter.backend();
            metrics::counter!("rate_limit_backend_errors_total", "backend" => backend).increment(1);
            warn_backend_error(backend, &error);
            // Fail open, and without headers: there is no truthful `remaining` to send.
            return next.run(request).await;
        }
    };

    if !decision.allowed {
        metrics::counter!("rate_limited_requests_total", "class" => class.as_str()).increment(1);
        let retry_secs = whole_seconds(decision.retry_after.unwrap_or(Duration::ZERO)).max(1);
        let mut response =
            ApiError::new(ErrCode::RateLimited, format!("too many {class} requests; retry after {retry_secs} s"))
                .with_details(serde_json::json!({ "class": class.as_str(), "retry_after_seconds": retry_secs }))
                .into_response();
        set_headers(response.headers_mut(), &decision);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_secs));
        return response;
    }

    let mut response = next.run(request).await;
    set_headers(response.headers_mut(), &decision);
    response
}

fn set_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert(LIMIT_HEADER, HeaderValue::from(decision.limit));
    headers.insert(REMAINING_HEADER, HeaderValue::from(decision.remaining));
    headers.insert(RESET_HEADER, HeaderValue::from(whole_seconds(decision.reset_after)));
}

/// Rounded up, so a client that waits this long finds what it waits for.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Logs a backend failure at most once per [`WARN_INTERVAL`] per process: during an
/// outage every request fails, and the counter already says how many.
fn warn_backend_error(backend: &'static str, error: &RateLimitError) {
    static LAST_WARNING: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST_WARNING.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < WARN_INTERVAL) {
        return;
    }
    *last = Some(now);
    drop(last);
    tracing::warn!(
        backend,
        %error,
        "rate limit backend failing; letting requests through unlimited (see rate_limit_backend_errors_total)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_path_then_method() {
        let cases = [
            (Method::POST, "/api/v1/auth/token", RouteClass::Auth),
            (Method::GET, "/api/v1/auth/oidc/callback", RouteClass::Auth),
            (Method::POST, "/api/v1/auth", RouteClass::Auth),
            (Method::POST, "/api/v1/auth/session/login", RouteClass::Auth),
            (Method::POST, "/api/v1/auth/session/refresh", RouteClass::Read),
            (Method::GET, "/api/v1/auth/providers", RouteClass::Read),
            (Method::GET, "/api/v1/admin/users", RouteClass::Admin),
            (Method::DELETE, "/api/v1/admin/nodes/1", RouteClass::Admin),
            (Method::GET, "/api/v1/authz", RouteClass::Read),
            (Method::GET, "/api/v1/instances", RouteClass::Read),
            (Method::HEAD, "/api/v1/instances", RouteClass::Read),
            (Method::OPTIONS, "/api/v1/instances", RouteClass::Read),
            (Method::POST, "/api/v1/instances", RouteClass::Write),
            (Method::PATCH, "/api/v1/administrators", RouteClass::Write),
            (Method::PUT, "/healthz", RouteClass::Write),
        ];
        for (method, path, class) in cases {
            assert_eq!(RouteClass::classify(&method, path), class, "{method} {path}");
        }
    }

    #[test]
    fn class_names() {
        let names: Vec<_> = RouteClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["auth", "read", "write", "admin"]);
    }

    #[test]
    fn whole_seconds_round_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
    }
}

//! The rate-limit layer over the in-process limiter: headers, 429 envelope, keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};
use gpuaas_http::Principal;
use gpuaas_http::ratelimit::{
    self, BucketLimit, Decision, InProcessLimiter, RateLimitError, RateLimitSettings, RateLimitState, RateLimiter,
};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const READ: BucketLimit = BucketLimit { burst: 3, per_minute: 60 };
const WRITE: BucketLimit = BucketLimit { burst: 2, per_minute: 60 };
const AUTH: BucketLimit = BucketLimit { burst: 1, per_minute: 60 };
const ADMIN: BucketLimit = BucketLimit { burst: 5, per_minute: 60 };

struct App {
    router: Router,
    handled: Arc<AtomicUsize>,
}

fn app(limiter: Arc<dyn RateLimiter>) -> App {
    let handled = Arc::new(AtomicUsize::new(0));
    let count = |handled: &Arc<AtomicUsize>| {
        let handled = handled.clone();
        move || {
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }
    };
    let settings = RateLimitSettings { auth: AUTH, read: READ, write: WRITE, admin: ADMIN };
    let state = RateLimitState { limiter, settings: Arc::new(settings) };
    let router = Router::new()
        .route("/api/v1/things", get(count(&handled)).post(count(&handled)))
        .route("/api/v1/auth/token", post(count(&handled)))
        .layer(from_fn_with_state(state, ratelimit::layer));
    App { router, handled }
}

fn request(method: Method, path: &str, principal: Option<&str>, ip: Option<[u8; 4]>) -> Request {
    let mut request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
    if let Some(id) = principal {
        request.extensions_mut().insert(Principal { id: id.to_owned() });
    }
    if let Some(ip) = ip {
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from((ip, 40_000))));
    }
    request
}

async fn send(app: &App, request: Request) -> Response {
    app.router.clone().oneshot(request).await.unwrap()
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn body_json(response: Response) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn allowed_answers_carry_the_headers() {
    let app = app(Arc::new(InProcessLimiter::new()));
    for remaining in ["2", "1", "0"] {
        let response = send(&app, request(Method::GET, "/api/v1/things", Some("user:a"), None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ratelimit-limit"), Some("3"));
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some(remaining));
        let reset: u64 = header(&response, "x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=3).contains(&reset), "reset {reset}");
        assert!(header(&response, "retry-after").is_none());
    }
}

#[tokio::test]
async fn refused_requests_get_429_envelope_and_retry_after_without_running_the_handler() {
    let handle = gpuaas_telemetry::metrics_handle();
    let app = app(Arc::new(InProcessLimiter::new()));
    for _ in 0..2 {
        let response = send(&app, request(Method::POST, "/api/v1/things", Some("user:a"), None)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(app.handled.load(Ordering::SeqCst), 2);

    let response = send(&app, request(Method::POST, "/api/v1/things", Some("user:a"), None)).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), Some("1"));
    assert_eq!(header(&response, "x-ratelimit-limit"), Some("2"));
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&response, "x-ratelimit-reset"), Some("2"));
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let body = body_json(response).await;
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["details"]["class"], "write");
    assert_eq!(body["error"]["details"]["retry_after_seconds"], 1);
    assert!(body["error"]["correlation_id"].is_string());
    assert!(body["error"]["message"].as_str().unwrap().contains("retry after 1 s"));
    assert_eq!(app.handled.load(Ordering::SeqCst), 2, "the handler did not run");

    let rendered = handle.render();
    assert!(rendered.lines().any(|l| l.starts_with("rate_limited_requests_total{class=\"write\"}")), "{rendered}");
}

#[tokio::test]
async fn buckets_are_per_principal_and_per_class() {
    let app = app(Arc::new(InProcessLimiter::new()));
    for _ in 0..2 {
        send(&app, request(Method::POST, "/api/v1/things", Some("user:a"), None)).await;
    }
    let write_a = send(&app, request(Method::POST, "/api/v1/things", Some("user:a"), None)).await;
    assert_eq!(write_a.status(), StatusCode::TOO_MANY_REQUESTS);
    let write_b = send(&app, request(Method::POST, "/api/v1/things", Some("user:b"), None)).await;
    assert_eq!(write_b.status(), StatusCode::OK, "another principal has its own bucket");
    let read_a = send(&app, request(Method::GET, "/api/v1/things", Some("user:a"), None)).await;
    assert_eq!(read_a.status(), StatusCode::OK, "reads have their own bucket");
    assert_eq!(header(&read_a, "x-ratelimit-limit"), Some("3"));
}

#[tokio::test]
async fn anonymous_callers_are_keyed_by_client_ip() {
    let app = app(Arc::new(InProcessLimiter::new()));
    let sign_in = |principal: Option<&str>, ip| request(Method::POST, "/api/v1/auth/token", principal, ip);

    let first = send(&app, sign_in(None, Some([10, 0, 0, 1]))).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-ratelimit-limit"), Some("1"), "auth class");
    // The explicit anonymous principal is the same caller as no principal at all.
    let again = send(&app, sign_in(Some(Principal::ANONYMOUS), Some([10, 0, 0, 1]))).await;
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
    let other_ip = send(&app, sign_in(None, Some([10, 0, 0, 2]))).await;
    assert_eq!(other_ip.status(), StatusCode::OK);

    // Without connection info every anonymous caller shares one bucket.
    assert_eq!(send(&app, sign_in(None, None)).await.status(), StatusCode::OK);
    assert_eq!(send(&app, sign_in(None, None)).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn bucket_keys() {
    let req = request(Method::GET, "/x", Some("user:a"), Some([10, 0, 0, 1]));
    assert_eq!(ratelimit::bucket_key(ratelimit::RouteClass::Read, &req), "read:user:a");
    let req = request(Method::GET, "/x", None, Some([10, 0, 0, 1]));
    assert_eq!(ratelimit::bucket_key(ratelimit::RouteClass::Auth, &req), "auth:ip:10.0.0.1");
    let req = request(Method::GET, "/x", None, None);
    assert_eq!(ratelimit::bucket_key(ratelimit::RouteClass::Write, &req), "write:ip:unknown");
}

struct Broken;

#[async_trait]
impl RateLimiter for Broken {
    async fn check(&self, _key: &str, _limit: BucketLimit) -> Result<Decision, RateLimitError> {
        Err(RateLimitError::Protocol("broken on purpose".into()))
    }

    fn backend(&self) -> &'static str {
        "broken"
    }
}

#[tokio::test]
async fn a_failing_limiter_lets_requests_through() {
    let handle = gpuaas_telemetry::metrics_handle();
    let app = app(Arc::new(Broken));
    for _ in 0..5 {
        let response = send(&app, request(Method::POST, "/api/v1/things", Some("user:a"), None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(header(&response, "x-ratelimit-remaining").is_none());
    }
    assert_eq!(app.handled.load(Ordering::SeqCst), 5);
    let rendered = handle.render();
    assert!(rendered.contains("rate_limit_backend_errors_total{backend=\"broken\"} 5"), "{rendered}");
}

#[tokio::test]
async fn default_settings_match_the_seeded_policy() {
    let settings = RateLimitSettings::default();
    assert_eq!(settings.auth, BucketLimit { burst: 20, per_minute: 30 });
    assert_eq!(settings.read, BucketLimit { burst: 120, per_minute: 600 });
    assert_eq!(settings.write, BucketLimit { burst: 60, per_minute: 300 });
    assert_eq!(settings.admin, BucketLimit { burst: 60, per_minute: 300 });
}

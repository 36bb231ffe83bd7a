//! RedisLimiter against a real redis-server: atomicity, refill, isolation, expiry, and
//! failing open while Redis is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::post;
use gpuaas_http::Principal;
use gpuaas_http::ratelimit::{self, BucketLimit, RateLimitSettings, RateLimitState, RateLimiter, RedisLimiter};
use gpuaas_testkit::RedisServer;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

async fn limiter(server: &RedisServer) -> Arc<RedisLimiter> {
    Arc::new(RedisLimiter::connect(&server.url()).await.unwrap())
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_on_one_key_allow_exactly_burst() {
    let server = RedisServer::start().await;
    let limiter = limiter(&server).await;
    assert_eq!(limiter.backend(), "redis");
    // One token a minute: nothing refills while the test runs.
    let limit = BucketLimit { burst: 10, per_minute: 1 };
    let mut checks = JoinSet::new();
    for _ in 0..60 {
        let limiter = limiter.clone();
        checks.spawn(async move { limiter.check("write:user:a", limit).await.unwrap() });
    }
    let mut allowed = 0;
    let mut remaining = Vec::new();
    while let Some(decision) = checks.join_next().await {
        let decision = decision.unwrap();
        assert_eq!(decision.limit, 10);
        if decision.allowed {
            allowed += 1;
            remaining.push(decision.remaining);
        } else {
            assert!(decision.retry_after.unwrap() > Duration::ZERO);
        }
    }
    assert_eq!(allowed, 10);
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<_>>(), "each allowed check took its own token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_refill_over_time() {
    let server = RedisServer::start().await;
    let limiter = limiter(&server).await;
    // Ten tokens a second.
    let limit = BucketLimit { burst: 2, per_minute: 600 };
    assert!(limiter.check("k", limit).await.unwrap().allowed);
    assert!(limiter.check("k", limit).await.unwrap().allowed);
    let refused = limiter.check("k", limit).await.unwrap();
    assert!(!refused.allowed);
    let retry = refused.retry_after.unwrap();
    assert!(retry > Duration::ZERO && retry <= Duration::from_millis(100), "{retry:?}");
    assert!(refused.reset_after <= Duration::from_millis(200));

    tokio::time::sleep(Duration::from_millis(150)).await;
    let later = limiter.check("k", limit).await.unwrap();
    assert!(later.allowed, "a token came back");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let full = limiter.check("k", limit).await.unwrap();
    assert_eq!((full.allowed, full.remaining), (true, 1), "refill stops at burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_isolated_per_principal_and_class() {
    let server = RedisServer::start().await;
    let limiter = limiter(&server).await;
    let limit = BucketLimit { burst: 1, per_minute: 1 };
    for key in ["write:user:a", "write:user:b", "read:user:a", "auth:ip:10.0.0.1"] {
        assert!(limiter.check(key, limit).await.unwrap().allowed, "{key} has its own bucket");
    }
    for key in ["write:user:a", "write:user:b", "read:user:a", "auth:ip:10.0.0.1"] {
        assert!(!limiter.check(key, limit).await.unwrap().allowed, "{key} is spent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_expire_once_they_would_be_full() {
    let server = RedisServer::start().await;
    let limiter = limiter(&server).await;
    let mut redis = raw(&server).await;
    // One token a second: after one check the bucket is full again in a second.
    limiter.check("read:user:a", BucketLimit { burst: 5, per_minute: 60 }).await.unwrap();
    let key = RedisLimiter::redis_key("read:user:a");
    assert!(key.starts_with("gpuaas:ratelimit:"));
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!(ttl > 0 && ttl <= 2_000, "ttl {ttl} ms");

    // A bucket that never refills still expires, after at most an hour.
    limiter.check("read:user:b", BucketLimit { burst: 5, per_minute: 0 }).await.unwrap();
    let ttl: i64 =
        redis::cmd("PTTL").arg(RedisLimiter::redis_key("read:user:b")).query_async(&mut redis).await.unwrap();
    assert!(ttl > 3_590_000 && ttl <= 3_601_000, "ttl {ttl} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded() {
    let server = RedisServer::start().await;
    let limiter = limiter(&server).await;
    let limit = BucketLimit { burst: 3, per_minute: 1 };
    assert_eq!(limiter.check("k", limit).await.unwrap().remaining, 2);
    let mut redis = raw(&server).await;
    let () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut redis).await.unwrap();
    assert_eq!(limiter.check("k", limit).await.unwrap().remaining, 1, "EVALSHA fell back to loading the script");
}

fn backend_errors(rendered: &str) -> f64 {
    rendered
        .lines()
        .find_map(|line| line.strip_prefix("rate_limit_backend_errors_total{backend=\"redis\"} "))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

fn write_request(principal: &str) -> Request {
    let mut request = Request::builder().method("POST").uri("/api/v1/things").body(Body::empty()).unwrap();
    request.extensions_mut().insert(Principal { id: principal.to_owned() });
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_open_while_redis_is_down_and_limits_again_after() {
    let metrics = gpuaas_telemetry::metrics_handle();
    let mut server = RedisServer::start().await;
    let limiter = limiter(&server).await;
    let write = BucketLimit { burst: 1, per_minute: 1 };
    let settings = RateLimitSettings { write, ..RateLimitSettings::default() };
    let state = RateLimitState { limiter: limiter.clone(), settings: Arc::new(settings) };
    let app = Router::new()
        .route("/api/v1/things", post(|| async { "ok" }))
        .layer(from_fn_with_state(state, ratelimit::layer));
    let status = |principal: &'static str| {
        let app = app.clone();
        async move { app.oneshot(write_request(principal)).await.unwrap().status() }
    };

    assert_eq!(status("user:a").await, StatusCode::OK);
    assert_eq!(status("user:a").await, StatusCode::TOO_MANY_REQUESTS);

    server.stop().await;
    let started = Instant::now();
    assert!(limiter.check("write:user:a", write).await.is_err(), "Redis is down");
    assert!(started.elapsed() < Duration::from_secs(1), "a failing check is bounded: {:?}", started.elapsed());
    let before = backend_errors(&metrics.render());
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(status("user:a").await, StatusCode::OK, "fails open");
        assert!(started.elapsed() < Duration::from_secs(1), "no stall: {:?}", started.elapsed());
    }
    assert!(backend_errors(&metrics.render()) >= before + 3.0, "each pass-through is counted");

    server.restart().await;
    // The connection manager reconnects in the background; limiting resumes shortly.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if limiter.check("write:user:z", write).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "limiting did not resume after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted Redis is empty, so user:a starts with a full bucket again.
    assert_eq!(status("user:a").await, StatusCode::OK);
    assert_eq!(status("user:a").await, StatusCode::TOO_MANY_REQUESTS);
}

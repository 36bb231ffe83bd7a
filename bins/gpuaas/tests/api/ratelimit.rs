//! Rate limits from policy, per principal, through the whole stack.

use gpuaas_policy::keys;
use gpuaas_testkit::Backend;

use crate::helpers::{TestApp, envelope};

async fn bursts_beyond_policy_get_429_per_principal(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token_for("alice").await;
    let bob = app.token_for("bob").await;
    app.policy.set(keys::RATELIMIT_READ_BURST, &3).await.unwrap_or_else(|e| panic!("{e}"));
    app.policy.set(keys::RATELIMIT_READ_PER_MINUTE, &1).await.unwrap_or_else(|e| panic!("{e}"));
    for remaining in (0..3).rev() {
        let response = app.get("/api/v1/users/me", &alice).await;
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers().get("x-ratelimit-limit").and_then(|v| v.to_str().ok()), Some("3"));
        let left = response.headers().get("x-ratelimit-remaining").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(left, Some(remaining.to_string()));
    }
    let refused = app.get("/api/v1/users/me", &alice).await;
    assert!(refused.headers().get("retry-after").is_some());
    assert!(refused.headers().get("x-ratelimit-reset").is_some());
    envelope(refused, 429, "rate_limited").await;
    // Another principal has a bucket of its own.
    assert_eq!(app.get("/api/v1/users/me", &bob).await.status().as_u16(), 200);
}

gpuaas_testkit::both_backends!(bursts_beyond_policy_get_429_per_principal);

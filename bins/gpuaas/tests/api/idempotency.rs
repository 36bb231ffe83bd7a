use std::time::Duration;

use axum::Router;
use axum::routing::post;
use gpuaas::api::AppState;
use gpuaas_policy::keys;
use gpuaas_testkit::Backend;

use crate::helpers::{TestApp, envelope};

fn slow_route() -> Router<AppState> {
    Router::new().route(
        "/api/v1/test/slow",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            (
                axum::http::StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"id": gpuaas_kernel::new_id().to_string()})),
            )
        }),
    )
}

async fn post_echo(app: &TestApp, key: &str, principal: &str, body: serde_json::Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/test/echo"))
        .header("x-idempotency-key", key)
        .bearer_auth(app.token_for(principal).await)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn same_key_and_body_replays_the_stored_response(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = serde_json::json!({"name": "a", "count": 1});
    let first = post_echo(&app, "k-1", "user:alice", body.clone()).await;
    assert_eq!(first.status().as_u16(), 201);
    let first: serde_json::Value = first.json().await.unwrap_or_default();
    let second = post_echo(&app, "k-1", "user:alice", body).await;
    assert_eq!(second.status().as_u16(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: serde_json::Value = second.json().await.unwrap_or_default();
    assert_eq!(first, second, "the handler ran once: the generated id is the same");
}

async fn same_key_different_body_is_422(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    post_echo(&app, "k-2", "user:alice", serde_json::json!({"name": "a", "count": 1})).await;
    let reused = post_echo(&app, "k-2", "user:alice", serde_json::json!({"name": "a", "count": 2})).await;
    envelope(reused, 422, "idempotency_key_reused").await;
}

async fn keys_are_scoped_per_principal(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice: serde_json::Value =
        post_echo(&app, "shared", "user:alice", serde_json::json!({"name": "a", "count": 1}))
            .await
            .json()
            .await
            .unwrap_or_default();
    let bob = post_echo(&app, "shared", "user:bob", serde_json::json!({"name": "b", "count": 1})).await;
    assert_eq!(bob.status().as_u16(), 201, "bob's key is his own");
    assert!(!bob.headers().contains_key("idempotent-replayed"));
    let bob: serde_json::Value = bob.json().await.unwrap_or_default();
    assert_ne!(alice["id"], bob["id"]);
}

async fn key_in_flight_is_409(backend: Backend) {
    let app = TestApp::spawn_with(backend, slow_route()).await;
    let alice = app.token_for("user:alice").await;
    let send = || {
        app.client.post(app.url("/api/v1/test/slow")).header("x-idempotency-key", "slow-1").bearer_auth(&alice).send()
    };
    let first = send();
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send().await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap_or_else(|e| panic!("{e}")).status().as_u16(), 202);
    envelope(second.unwrap_or_else(|e| panic!("{e}")), 409, "idempotency_key_in_flight").await;
    // Once finished, the same request replays.
    let third = send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(third.status().as_u16(), 202);
    assert_eq!(third.headers()["idempotent-replayed"], "true");
}

async fn expired_keys_can_be_used_again(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.policy.set(keys::IDEMPOTENCY_TTL_SECONDS, &0).await.unwrap_or_else(|e| panic!("{e}"));
    post_echo(&app, "k-3", "user:alice", serde_json::json!({"name": "a", "count": 1})).await;
    let again = post_echo(&app, "k-3", "user:alice", serde_json::json!({"name": "a", "count": 2})).await;
    assert_eq!(again.status().as_u16(), 201, "past its TTL the key is free");
    assert!(gpuaas_http::idempotency::purge_expired(&app.store).await.unwrap_or_else(|e| panic!("{e}")) >= 1);
}

async fn bad_keys_and_failed_requests(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long = "x".repeat(300);
    let response = post_echo(&app, &long, "user:alice", serde_json::json!({"name": "a", "count": 1})).await;
    envelope(response, 400, "idempotency_key_invalid").await;
    // A 4xx is stored and replayed like any other answer.
    let rejected = post_echo(&app, "k-4", "user:alice", serde_json::json!({"name": "a"})).await;
    let original = envelope(rejected, 400, "validation_error").await;
    let replayed = post_echo(&app, "k-4", "user:alice", serde_json::json!({"name": "a"})).await;
    assert_eq!(replayed.status().as_u16(), 400);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    // The stored answer comes back byte for byte, original correlation id included.
    let replayed: serde_json::Value = replayed.json().await.unwrap_or_default();
    assert_eq!(replayed, original);
}

gpuaas_testkit::both_backends!(
    same_key_and_body_replays_the_stored_response,
    same_key_different_body_is_422,
    keys_are_scoped_per_principal,
    key_in_flight_is_409,
    expired_keys_can_be_used_again,
    bad_keys_and_failed_requests,
);

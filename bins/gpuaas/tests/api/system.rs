use gpuaas_testkit::Backend;

use crate::helpers::{TestApp, envelope};

async fn health_ready_and_buildinfo_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let health: serde_json::Value = app
        .client
        .get(app.url("/api/v1/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(health["status"], "ok");
    let ready = app.client.get(app.url("/api/v1/readyz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ready.status().as_u16(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap_or_default();
    assert_eq!(ready["database"]["status"], "ok");
    assert_eq!(ready["database"]["backend"], backend.name());
    assert_eq!(ready["event_bus"]["backend"], "embedded");
    let build: serde_json::Value = app
        .client
        .get(app.url("/api/v1/buildinfo"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(build["version"], env!("CARGO_PKG_VERSION"));
}

async fn readiness_names_the_failing_dependency(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.store.close().await;
    let response = app.client.get(app.url("/api/v1/readyz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    let body = envelope(response, 503, "service_unavailable").await;
    let failing = body["error"]["details"]["failing"].as_array().cloned().unwrap_or_default();
    assert!(failing.contains(&serde_json::json!("database")), "{body}");
}

async fn every_bad_input_gets_the_envelope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let c = &app.client;
    let echo = app.url("/api/v1/test/echo");

    envelope(
        c.get(app.url("/api/v1/nothing-here")).send().await.unwrap_or_else(|e| panic!("{e}")),
        404,
        "route_not_found",
    )
    .await;
    let response = c.delete(app.url("/api/v1/healthz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(response.headers().contains_key("allow"));
    envelope(response, 405, "method_not_allowed").await;
    envelope(
        c.post(&echo).header("content-type", "text/plain").body("{}").send().await.unwrap_or_else(|e| panic!("{e}")),
        415,
        "unsupported_media_type",
    )
    .await;
    envelope(
        c.post(&echo)
            .header("content-type", "application/json")
            .body("{\"name\": ")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        400,
        "malformed_json",
    )
    .await;
    let body = envelope(
        c.post(&echo)
            .json(&serde_json::json!({"name": "a", "count": 1, "admin": true}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        400,
        "unknown_field",
    )
    .await;
    assert_eq!(body["error"]["details"]["field"], "admin");
    let body = envelope(
        c.post(&echo)
            .json(&serde_json::json!({"name": "a", "count": -3}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        400,
        "validation_error",
    )
    .await;
    assert_eq!(body["error"]["details"]["field"], "count", "{body}");
    envelope(
        c.post(&echo).json(&serde_json::json!({"name": "a"})).send().await.unwrap_or_else(|e| panic!("{e}")),
        400,
        "validation_error",
    )
    .await;
    // Over the policy's body limit: with a declared length and with a streamed body.
    // Only just over the 1 MiB default, so the client has finished sending before the
    // server answers and closes the connection.
    let huge = format!("{{\"name\": \"{}\", \"count\": 1}}", "x".repeat(1024 * 1024 + 1024));
    envelope(
        c.post(&echo)
            .header("content-type", "application/json")
            .body(huge.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        413,
        "payload_too_large",
    )
    .await;
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(huge.into_bytes())]);
    envelope(
        c.post(&echo)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        413,
        "payload_too_large",
    )
    .await;
    let created = c
        .post(&echo)
        .json(&serde_json::json!({"name": "a", "count": 2}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.status().as_u16(), 201);
}

async fn correlation_id_is_echoed_or_generated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .client
        .get(app.url("/api/v1/missing"))
        .header("x-correlation-id", "support-ticket-42")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.headers()["x-correlation-id"], "support-ticket-42");
    let body = envelope(response, 404, "route_not_found").await;
    assert_eq!(body["error"]["correlation_id"], "support-ticket-42");
    // A hostile header value is replaced, not echoed.
    let response = app
        .client
        .get(app.url("/api/v1/healthz"))
        .header("x-correlation-id", "<script>alert(1)</script>")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let generated = response.headers()["x-correlation-id"].to_str().unwrap_or_default().to_owned();
    assert_eq!(generated.len(), 36, "{generated}");
}

async fn metrics_count_requests_by_route_and_status(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.client.get(app.url("/api/v1/healthz")).send().await.unwrap_or_else(|e| panic!("{e}"));
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(text.contains("http_requests_total{method=\"GET\",route=\"/api/v1/healthz\",status=\"200\"}"), "{text}");
    assert!(text.contains("http_request_duration_seconds"), "{text}");
}

gpuaas_testkit::both_backends!(
    health_ready_and_buildinfo_answer,
    readiness_names_the_failing_dependency,
    every_bad_input_gets_the_envelope,
    correlation_id_is_echoed_or_generated,
    metrics_count_requests_by_route_and_status,
);

#[test]
fn openapi_document_matches_the_committed_copy() {
    let generated = gpuaas::openapi::document_json();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("{e}"));
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/api/openapi.json is out of date: run `cargo run --bin gpuaas -- openapi > docs/api/openapi.json`"
    );
    let document: serde_json::Value = serde_json::from_str(&generated).unwrap_or_default();
    for path in ["/api/v1/healthz", "/api/v1/readyz", "/api/v1/buildinfo", "/api/v1/openapi.json", "/metrics"] {
        assert!(document["paths"].get(path).is_some(), "{path} missing from the document");
    }
    assert!(document["components"]["schemas"].get("ErrorResponse").is_some());
}

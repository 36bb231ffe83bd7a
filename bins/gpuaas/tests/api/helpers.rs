use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use gpuaas::api::{AppState, echo_routes, router};
use gpuaas_events::{EmbeddedBus, EventBus};
use gpuaas_http::Principal;
use gpuaas_policy::PolicyClient;
use gpuaas_store::{PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub policy: PolicyClient,
    _database: TestDatabase,
}

/// Stands in for the authentication layer (a later milestone): tells the stack who the
/// caller is so per-principal behaviour can be exercised.
async fn test_principal(mut request: Request, next: Next) -> Response {
    let principal = request.headers().get("x-test-principal").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(id) = principal {
        request.extensions_mut().insert(Principal { id });
    }
    next.run(request).await
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, Router::new()).await
    }

    pub async fn spawn_with(backend: Backend, extra: Router<AppState>) -> Self {
        let database = TestDatabase::create(backend).await;
        let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
        store.migrate(&gpuaas::migrations()).await.unwrap_or_else(|e| panic!("{e}"));
        let bus: Arc<dyn EventBus> = Arc::new(EmbeddedBus::new(store.clone()));
        let policy = PolicyClient::new(store.clone(), Duration::from_millis(0));
        let state =
            AppState { store: store.clone(), bus, policy: policy.clone(), metrics: gpuaas_telemetry::metrics_handle() };
        let app = router(state, echo_routes().merge(extra))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .layer(axum::middleware::from_fn(test_principal));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base: format!("http://{address}"), client: reqwest::Client::new(), store, policy, _database: database }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Reads an error response and checks the envelope's shape; returns the body.
pub async fn envelope(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("application/json"), "content-type {content_type}");
    let header_id = response.headers().get("x-correlation-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    let error = body.get("error").unwrap_or_else(|| panic!("no error object in {body}"));
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["details"].is_object(), "{body}");
    assert_eq!(error["correlation_id"].as_str(), header_id.as_deref(), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    body
}

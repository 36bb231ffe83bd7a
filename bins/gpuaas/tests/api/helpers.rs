use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use gpuaas::api::{AppState, echo_routes, router};
use gpuaas_events::{EmbeddedBus, EventBus};
use gpuaas_http::ratelimit::InProcessLimiter;
use gpuaas_iam::{GlobalRole, Iam, IamConfig, NewUser};
use gpuaas_policy::PolicyClient;
use gpuaas_store::{PoolSettings, Store};
use gpuaas_testkit::stripe::FakeStripe;
use gpuaas_testkit::{Backend, TestDatabase};
use tokio::sync::Mutex;

pub const PASSWORD: &str = "correct horse battery staple";
pub const ADMIN_EMAIL: &str = "root@test.local";
/// The webhook signing secret of an app from [`TestApp::spawn_with_stripe`].
pub const WEBHOOK_SECRET: &str = "whsec_test";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub policy: PolicyClient,
    pub nodes: gpuaas_inventory::NodePlane,
    /// The allocations service the API uses; tests drive its workflow steps directly.
    pub allocations: gpuaas_allocations::Allocations,
    /// The internal mTLS listener (`https://127.0.0.1:PORT`), served like `up` does.
    pub internal_base: String,
    /// PEM of the CA that signs node certificates and the internal listener's.
    pub ca_pem: String,
    /// The node CA's key, certificate and the task-signing key.
    pub pki_dir: tempfile::TempDir,
    tokens: Mutex<HashMap<String, String>>,
    _database: TestDatabase,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, Router::new()).await
    }

    pub async fn spawn_with(backend: Backend, extra: Router<AppState>) -> Self {
        Self::spawn_inner(backend, extra, None, None, PoolSettings::default()).await
    }

    /// Like [`TestApp::spawn`], on a database pool of `pool`'s size and wait.
    pub async fn spawn_with_pool(backend: Backend, pool: PoolSettings) -> Self {
        Self::spawn_inner(backend, Router::new(), None, None, pool).await
    }

    /// Like [`TestApp::spawn`], serving the web portal from `portal_dir`.
    pub async fn spawn_with_portal(backend: Backend, portal_dir: &Path) -> Self {
        Self::spawn_inner(backend, Router::new(), None, Some(portal_dir), PoolSettings::default()).await
    }

    /// Like [`TestApp::spawn`], with payments configured against `stripe` (webhook
    /// secret [`WEBHOOK_SECRET`], API key the fake accepts).
    pub async fn spawn_with_stripe(backend: Backend, stripe: &FakeStripe) -> Self {
        Self::spawn_inner(backend, Router::new(), Some(stripe), None, PoolSettings::default()).await
    }

    async fn spawn_inner(
        backend: Backend,
        extra: Router<AppState>,
        stripe: Option<&FakeStripe>,
        portal_dir: Option<&Path>,
        pool: PoolSettings,
    ) -> Self {
        let database = TestDatabase::create(backend).await;
        let store = Store::connect(&database.url, &pool).await.unwrap_or_else(|e| panic!("{e}"));
        store.migrate(&gpuaas::migrations()).await.unwrap_or_else(|e| panic!("{e}"));
        let bus: Arc<dyn EventBus> = Arc::new(EmbeddedBus::new(store.clone()));
        let policy = PolicyClient::new(store.clone(), Duration::from_millis(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let base = format!("http://{address}");
        let iam = Iam::new(
            store.clone(),
            policy.clone(),
            IamConfig {
                issuer_url: base.clone(),
                audience: gpuaas::runtime::IAM_AUDIENCE.into(),
                oidc: None,
                resource_ids: Default::default(),
            },
            reqwest::Client::new(),
        );
        iam.bootstrap_admin(ADMIN_EMAIL, PASSWORD).await.unwrap_or_else(|e| panic!("{e}"));
        let pki_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = gpuaas_pki::BuiltinCa::load_or_create(pki_dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let ca_pem = gpuaas_pki::CaClient::ca_certificate_pem(&ca);
        let server_identity = gpuaas_pki::CaClient::issue_server_certificate(
            &ca,
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            Duration::from_secs(3600),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let tls = gpuaas_pki::mtls_server_config(&ca_pem, &server_identity).unwrap_or_else(|e| panic!("{e}"));
        let internal_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let internal_base = format!("https://{}", internal_listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        let signing_key = gpuaas_pki::load_or_create_signing_key(&pki_dir.path().join("task-signing.key"))
            .unwrap_or_else(|e| panic!("{e}"));
        let nodes = gpuaas_inventory::NodePlane::new(
            store.clone(),
            policy.clone(),
            Arc::new(ca),
            gpuaas_nodeagent_protocol::TaskSigner::new(signing_key),
            gpuaas_inventory::NodePlaneConfig { internal_url: internal_base.clone(), resource_ids: Default::default() },
        );
        let allocations =
            gpuaas_allocations::Allocations::new(store.clone(), policy.clone(), nodes.clone(), Default::default());
        let state = AppState {
            store: store.clone(),
            bus,
            policy: policy.clone(),
            metrics: gpuaas_telemetry::metrics_handle(),
            iam,
            rate_limiter: Arc::new(InProcessLimiter::new()),
            nodes: nodes.clone(),
            payments: match stripe {
                None => gpuaas_payments::Payments::new(store.clone(), policy.clone(), None, None),
                Some(stripe) => stripe_payments(&store, &policy, stripe),
            },
            allocations: allocations.clone(),
            portal: gpuaas::api::portal::Portal::new(
                portal_dir.map_or_else(|| PathBuf::from(gpuaas::config::Config::DEFAULT_PORTAL_DIR), Path::to_path_buf),
            ),
            secure_cookies: false,
        };
        let internal_app = gpuaas::api::internal::router(state.clone(), 1 << 20);
        tokio::spawn(gpuaas::api::internal::serve(
            internal_listener,
            tls,
            internal_app,
            tokio_util::sync::CancellationToken::new(),
        ));
        let app = router(state, echo_routes().merge(extra)).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
        });
        Self {
            base,
            client: reqwest::Client::new(),
            store,
            policy,
            nodes,
            allocations,
            internal_base,
            ca_pem,
            pki_dir,
            tokens: Mutex::new(HashMap::new()),
            _database: database,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a local user straight in the store (with their own tenant and project).
    pub async fn create_user(&self, email: &str, role: GlobalRole) {
        let hash = gpuaas_iam::password::hash(PASSWORD.into()).await.unwrap_or_else(|e| panic!("{e}"));
        let mut tx = self.store.begin().await.unwrap_or_else(|e| panic!("{e}"));
        gpuaas_iam::accounts::create_user(
            &mut tx,
            NewUser { email: email.into(), display_name: email.into(), password_hash: Some(hash), role, oidc: None },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Signs in over HTTP and returns the whole token answer.
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/auth/personal/login"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// An access token for `name` (a user `name@test.local`, created on first use).
    pub async fn token_for(&self, name: &str) -> String {
        let name = name.trim_start_matches("user:");
        let mut tokens = self.tokens.lock().await;
        if let Some(token) = tokens.get(name) {
            return token.clone();
        }
        let email = if name == "admin" { ADMIN_EMAIL.to_owned() } else { format!("{name}@test.local") };
        if name != "admin" {
            self.create_user(&email, GlobalRole::User).await;
        }
        let response = self.login(&email, PASSWORD).await;
        assert_eq!(response.status().as_u16(), 200, "login of {email}");
        let body: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
        let token = body["access_token"].as_str().unwrap_or_else(|| panic!("no token in {body}")).to_owned();
        tokens.insert(name.to_owned(), token.clone());
        token
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn post(&self, path: &str, token: &str, body: serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(path)).bearer_auth(token).json(&body).send().await.unwrap_or_else(|e| panic!("{e}"))
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

pub async fn json(response: reqwest::Response, status: u16) -> serde_json::Value {
    let actual = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(actual, status, "{body}");
    body
}

/// Payments talking to `stripe`, configured the way `runtime::payments` does.
fn stripe_payments(store: &Store, policy: &PolicyClient, stripe: &FakeStripe) -> gpuaas_payments::Payments {
    let config = gpuaas_payments::StripeConfig {
        secret_key: gpuaas_testkit::stripe::SECRET_KEY.into(),
        webhook_secrets: vec![WEBHOOK_SECRET.into()],
        api_base: stripe.url().into(),
        success_url: "https://console.test.local/billing/top-up/success?session_id={CHECKOUT_SESSION_ID}".into(),
        cancel_url: "https://console.test.local/billing/top-up/cancelled".into(),
        portal_return_url: "https://console.test.local/billing".into(),
    };
    let client = gpuaas_payments::HttpStripeClient::new(&config).unwrap_or_else(|e| panic!("{e}"));
    gpuaas_payments::Payments::new(store.clone(), policy.clone(), Some(Arc::new(client)), Some(config))
}

impl TestApp {
    /// The id of the user `name@test.local` (created on first use, like [`TestApp::token_for`]).
    pub async fn user_id(&self, name: &str) -> String {
        let token = self.token_for(name).await;
        let me = json(self.get("/api/v1/users/me", &token).await, 200).await;
        me["user"]["id"].as_str().unwrap_or_else(|| panic!("no user id in {me}")).to_owned()
    }

    /// A POST with an `X-Idempotency-Key`.
    pub async fn post_idempotent(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .header("x-idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

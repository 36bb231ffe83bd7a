//! Shared fixtures for the identity tests: a database with every migration the service
//! needs, the service itself, and a small in-process OIDC provider whose signing keys a
//! test can rotate at runtime.
//!
//! The keys under `tests/fixtures/` were generated once with `openssl genpkey` for these
//! tests only (RSA key generation in a debug build is slow). They protect nothing.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gpuaas_audit::{AuditFilter, AuditLog};
use gpuaas_iam::{AuthContext, GlobalRole, Iam, IamConfig, IamOptions, OidcConfig, SessionTokens, User};
use gpuaas_kernel::Timestamp;
use gpuaas_policy::PolicyClient;
use gpuaas_store::{Migration, PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore as _;
use serde_json::{Value, json};
use sha2::Digest as _;

/// `iss` of the platform's own tokens in these tests.
pub const PLATFORM_ISSUER: &str = "https://gpuaas.test";
/// `aud` of the platform's own access tokens in these tests.
pub const AUDIENCE: &str = "gpuaas-api";
/// The platform's client registration at the test provider.
pub const CLIENT_ID: &str = "gpuaas-portal";
pub const CLIENT_SECRET: &str = "portal-client-secret";
pub const REDIRECT_URI: &str = "https://portal.gpuaas.test/auth/callback";
pub const ROLES_CLAIM: &str = "realm_access.roles";

pub const ADMIN_EMAIL: &str = "admin@gpuaas.test";
pub const PASSWORD: &str = "correct horse battery staple";
pub const CORR: &str = "corr-test";

/// Seconds since the epoch, as JWT `exp`/`iat`/`nbf` count them.
pub fn now_secs() -> i64 {
    Timestamp::now().as_micros() / 1_000_000
}

// Not every test binary calls it directly; assert_err! and assert_invalid! do.
#[allow(unused_imports)]
pub use gpuaas_testkit::err;

// ------------------------------------------------------------------ keys

/// A signing key of the test provider, with the public JWK it publishes.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    STANDARD.decode(body.trim()).expect("fixture PEM is base64")
}

/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

impl TestKey {
    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Self {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).expect("public JWK")).expect("json");
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        Self { kid: kid.to_owned(), alg, encoding, jwk }
    }

    /// RS256 with the fixed 2048-bit fixture key.
    pub fn rsa(kid: &str) -> Self {
        let der = pem_body(include_str!("../fixtures/rsa_pkcs1.pem"));
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(&der))
    }

    /// ES256 with the fixed P-256 fixture key.
    pub fn ec(kid: &str) -> Self {
        let der = pem_body(include_str!("../fixtures/ec_p256_pkcs8.pem"));
        Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(&der))
    }

    /// EdDSA with the fixed Ed25519 fixture key.
    pub fn ed25519(kid: &str) -> Self {
        let der = pem_body(include_str!("../fixtures/ed25519_pkcs8.pem"));
        Self::new(kid, Algorithm::EdDSA, EncodingKey::from_ed_der(&der))
    }

    /// A fresh random Ed25519 key (cheap, unlike RSA).
    pub fn random_ed25519(kid: &str) -> Self {
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        der.extend_from_slice(&seed);
        Self::new(kid, Algorithm::EdDSA, EncodingKey::from_ed_der(&der))
    }

    /// The same key material published under another key id.
    pub fn renamed(&self, kid: &str) -> Self {
        let mut key = self.clone();
        key.kid = kid.to_owned();
        key.jwk["kid"] = kid.into();
        key
    }

    /// The same key with a JWK that names no `alg` (many providers omit it).
    pub fn without_alg(&self) -> Self {
        let mut key = self.clone();
        key.jwk.as_object_mut().expect("JWK object").remove("alg");
        key
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }
}

/// Builds a compact JWS from raw header and claims JSON and a raw signature, for
/// tokens no honest library would produce.
pub fn raw_jwt(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// The decoded claims of a compact JWT (no verification).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

/// The decoded header of a compact JWT (no verification).
pub fn jwt_header(token: &str) -> Value {
    let header = token.split('.').next().expect("JWT has a header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).expect("JSON header")
}

pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

// ------------------------------------------------------------------ provider

/// Who signs in at the provider.
#[derive(Debug, Clone)]
pub struct Identity {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
}

impl Identity {
    pub fn new(sub: &str, email: &str, roles: &[&str]) -> Self {
        Self {
            sub: sub.to_owned(),
            email: email.to_owned(),
            name: format!("Name of {sub}"),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        }
    }
}

/// An authorization code the provider issued, and what redeeming it requires.
#[derive(Debug, Clone)]
pub struct Grant {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub nonce: Option<String>,
    pub identity: Identity,
    /// Merged over the ID token's claims (to forge bad tokens).
    pub claims_patch: Value,
}

struct ProviderState {
    issuer: String,
    signing: TestKey,
    published: Vec<TestKey>,
    codes: HashMap<String, Grant>,
    next_login: Option<Identity>,
    jwks_fetches: usize,
    jwks_failing: bool,
    token_requests: usize,
    token_refusals: Vec<String>,
}

type Shared = Arc<Mutex<ProviderState>>;

/// A minimal OpenID provider on 127.0.0.1: discovery, JWKS, authorize (logs in
/// whoever the test named, no UI) and a token endpoint that checks client, redirect
/// URI and PKCE before it signs an ID token with its current key.
pub struct Provider {
    pub issuer: String,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    /// Starts a provider that signs with `keys[0]` and publishes all of `keys`.
    pub async fn start(keys: Vec<TestKey>) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let issuer = format!("http://{}", listener.local_addr().expect("local addr"));
        let state = Arc::new(Mutex::new(ProviderState {
            issuer: issuer.clone(),
            signing: keys[0].clone(),
            published: keys,
            codes: HashMap::new(),
            next_login: None,
            jwks_fetches: 0,
            jwks_failing: false,
            token_requests: 0,
            token_refusals: Vec::new(),
        }));
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("test provider serves");
        });
        Provider { issuer, state, task }
    }

    fn lock(&self) -> MutexGuard<'_, ProviderState> {
        self.state.lock().expect("provider state")
    }

    pub fn signing_key(&self) -> TestKey {
        self.lock().signing.clone()
    }

    /// Starts signing with `key`; the old keys stay published only if `keep_old`.
    pub fn rotate(&self, key: TestKey, keep_old: bool) {
        let mut state = self.lock();
        if !keep_old {
            state.published.clear();
        }
        state.published.push(key.clone());
        state.signing = key;
    }

    /// Makes the JWKS endpoint answer 500 (a provider outage).
    pub fn set_jwks_failing(&self, failing: bool) {
        self.lock().jwks_failing = failing;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.lock().jwks_fetches
    }

    pub fn token_requests(&self) -> usize {
        self.lock().token_requests
    }

    /// Why the token endpoint refused requests, in order.
    pub fn token_refusals(&self) -> Vec<String> {
        self.lock().token_refusals.clone()
    }

    /// The claims of a valid ID token for `identity` (no nonce), valid for 5 minutes.
    pub fn claims(&self, identity: &Identity) -> Value {
        id_claims(&self.lock().issuer, identity, None)
    }

    /// Signs `claims` with the provider's current key.
    pub fn sign(&self, claims: &Value) -> String {
        self.signing_key().sign(claims)
    }

    /// A valid ID token for `identity`, signed with the current key.
    pub fn token_for(&self, identity: &Identity) -> String {
        self.sign(&self.claims(identity))
    }

    /// Registers an authorization code as if the provider had issued it.
    pub fn register_code(&self, grant: Grant) -> String {
        let code = random_token();
        self.lock().codes.insert(code.clone(), grant);
        code
    }

    /// Plays the browser: follows `authorize_url` (built by `Iam::oidc_authorize`),
    /// signs `identity` in, and returns the `code` and `state` the provider sends back
    /// to the redirect URI.
    pub async fn log_in(&self, authorize_url: &str, identity: &Identity) -> (String, String) {
        self.lock().next_login = Some(identity.clone());
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let response = http.get(authorize_url).send().await.expect("authorize request");
        assert!(response.status().is_redirection(), "authorize answered {}", response.status());
        let location = response.headers()["location"].to_str().expect("ascii location").to_owned();
        assert!(location.starts_with(REDIRECT_URI), "redirected to {location}");
        let query = query_of(&location);
        (query["code"].clone(), query["state"].clone())
    }
}

/// The query parameters of a URL.
pub fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url).expect("URL").query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn id_claims(issuer: &str, identity: &Identity, nonce: Option<&str>) -> Value {
    let now = now_secs();
    let mut claims = json!({
        "iss": issuer,
        "sub": identity.sub,
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "email": identity.email,
        "name": identity.name,
        "realm_access": {"roles": identity.roles},
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = nonce.into();
    }
    claims
}

async fn discovery(State(state): State<Shared>) -> Response {
    let issuer = state.lock().expect("provider state").issuer.clone();
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Shared>) -> Response {
    let mut state = state.lock().expect("provider state");
    state.jwks_fetches += 1;
    if state.jwks_failing {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys: Vec<Value> = state.published.iter().map(|key| key.jwk.clone()).collect();
    axum::Json(json!({ "keys": keys })).into_response()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({ "error": error }))).into_response()
}

fn refuse(state: &mut ProviderState, status: StatusCode, error: &str, why: &str) -> Response {
    state.token_refusals.push(why.to_owned());
    oauth_error(status, error)
}

async fn authorize(State(state): State<Shared>, Query(query): Query<HashMap<String, String>>) -> Response {
    let param = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
    if param("response_type") != "code"
        || param("client_id") != CLIENT_ID
        || param("redirect_uri") != REDIRECT_URI
        || param("code_challenge_method") != "S256"
        || param("code_challenge").is_empty()
        || param("state").is_empty()
        || param("nonce").is_empty()
        || !param("scope").split(' ').any(|scope| scope == "openid")
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let mut state = state.lock().expect("provider state");
    let Some(identity) = state.next_login.take() else {
        return oauth_error(StatusCode::BAD_REQUEST, "login_required");
    };
    let code = random_token();
    state.codes.insert(
        code.clone(),
        Grant {
            client_id: param("client_id").to_owned(),
            redirect_uri: param("redirect_uri").to_owned(),
            code_challenge: param("code_challenge").to_owned(),
            nonce: Some(param("nonce").to_owned()),
            identity,
            claims_patch: Value::Null,
        },
    );
    let mut back = url::Url::parse(REDIRECT_URI).expect("redirect URI");
    back.query_pairs_mut().append_pair("code", &code).append_pair("state", param("state"));
    Redirect::to(back.as_str()).into_response()
}

async fn token(State(state): State<Shared>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let param = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let mut state = state.lock().expect("provider state");
    state.token_requests += 1;
    if param("grant_type") != "authorization_code" {
        return refuse(&mut state, StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant_type");
    }
    if param("client_id") != CLIENT_ID || param("client_secret") != CLIENT_SECRET {
        return refuse(&mut state, StatusCode::UNAUTHORIZED, "invalid_client", "client");
    }
    // A code is single use, whatever the outcome.
    let Some(grant) = state.codes.remove(param("code")) else {
        return refuse(&mut state, StatusCode::BAD_REQUEST, "invalid_grant", "code");
    };
    if grant.client_id != param("client_id") {
        return refuse(&mut state, StatusCode::BAD_REQUEST, "invalid_grant", "code of another client");
    }
    if grant.redirect_uri != param("redirect_uri") {
        return refuse(&mut state, StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri");
    }
    if param("code_verifier").is_empty() || s256(param("code_verifier")) != grant.code_challenge {
        return refuse(&mut state, StatusCode::BAD_REQUEST, "invalid_grant", "code_verifier");
    }
    let mut claims = id_claims(&state.issuer, &grant.identity, grant.nonce.as_deref());
    if let Value::Object(patch) = &grant.claims_patch {
        for (name, value) in patch {
            claims[name] = value.clone();
        }
    }
    let id_token = state.signing.sign(&claims);
    axum::Json(json!({
        "access_token": random_token(),
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
    }))
    .into_response()
}

// ------------------------------------------------------------------ service

/// A test database, its store, the identity service and (optionally) a provider.
pub struct Env {
    pub db: TestDatabase,
    pub store: Store,
    pub policy: PolicyClient,
    pub iam: Iam,
    pub provider: Option<Provider>,
}

impl Env {
    pub fn provider(&self) -> &Provider {
        self.provider.as_ref().expect("this test env has a provider")
    }

    /// Another service instance on the same database (another process, in effect).
    pub fn second_instance(&self) -> Iam {
        iam_for(&self.store, self.provider.as_ref(), IamOptions::default())
    }
}

pub fn migrations() -> Vec<Migration> {
    [gpuaas_policy::MIGRATIONS, gpuaas_audit::MIGRATIONS, gpuaas_iam::MIGRATIONS].concat()
}

pub async fn database(backend: Backend) -> (TestDatabase, Store) {
    let db = TestDatabase::create(backend).await;
    let store = Store::connect(&db.url, &PoolSettings::default()).await.expect("connect");
    store.migrate(&migrations()).await.expect("migrate");
    (db, store)
}

pub fn oidc_config(provider: &Provider) -> OidcConfig {
    OidcConfig {
        issuer_url: provider.issuer.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(CLIENT_SECRET.into()),
        redirect_uri: REDIRECT_URI.into(),
        roles_claim: ROLES_CLAIM.into(),
        scopes: "openid email profile".into(),
    }
}

pub fn iam_for(store: &Store, provider: Option<&Provider>, options: IamOptions) -> Iam {
    Iam::with_options(
        store.clone(),
        PolicyClient::new(store.clone(), Duration::ZERO),
        IamConfig {
            issuer_url: PLATFORM_ISSUER.into(),
            audience: AUDIENCE.into(),
            oidc: provider.map(oidc_config),
            resource_ids: Default::default(),
        },
        reqwest::Client::new(),
        options,
    )
}

pub async fn env_with(backend: Backend, provider: Option<Provider>, options: IamOptions) -> Env {
    let (db, store) = database(backend).await;
    let policy = PolicyClient::new(store.clone(), Duration::ZERO);
    let iam = iam_for(&store, provider.as_ref(), options);
    Env { db, store, policy, iam, provider }
}

/// No external provider: local accounts and the built-in issuer only.
pub async fn env(backend: Backend) -> Env {
    env_with(backend, None, IamOptions::default()).await
}

/// A provider signing with `keys[0]` and publishing all of `keys`, trusted by the service.
pub async fn env_with_provider(backend: Backend, keys: Vec<TestKey>) -> Env {
    let provider = Provider::start(keys).await;
    env_with(backend, Some(provider), IamOptions::default()).await
}

/// A signed-in user: their account, request context and session.
pub struct SignedIn {
    pub user: User,
    pub ctx: AuthContext,
    pub session: SessionTokens,
}

/// Creates the bootstrap admin and signs them in.
pub async fn admin(env: &Env) -> SignedIn {
    let user = env.iam.bootstrap_admin(ADMIN_EMAIL, PASSWORD).await.expect("bootstrap").expect("first admin");
    let session = env.iam.login(ADMIN_EMAIL, PASSWORD, CORR).await.expect("admin login");
    let ctx = env.iam.authenticate(&session.access_token).await.expect("admin token");
    SignedIn { user, ctx, session }
}

/// An admin creates a local user (own tenant and default project), who signs in.
pub async fn user(env: &Env, admin: &AuthContext, email: &str) -> SignedIn {
    let user =
        env.iam.admin_create_user(admin, email, None, PASSWORD, GlobalRole::User, CORR).await.expect("create user");
    let session = env.iam.login(email, PASSWORD, CORR).await.expect("user login");
    let ctx = env.iam.authenticate(&session.access_token).await.expect("user token");
    SignedIn { user, ctx, session }
}

/// Audit rows about `target`, newest first.
pub async fn audit_rows(store: &Store, target: &str) -> Vec<AuditLog> {
    let filter = AuditFilter { target: Some(target.to_owned()), ..AuditFilter::default() };
    gpuaas_audit::list(store, &filter, None, 200).await.expect("audit list").items
}

/// The canonical audit target of a user (default prefix and region).
pub fn user_target(tenant_id: &str, user_id: &str) -> String {
    format!("gpuaas:local:{tenant_id}:-:user:{user_id}")
}

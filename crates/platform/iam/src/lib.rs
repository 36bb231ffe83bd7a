//! Identity and access: local accounts and the built-in OIDC issuer, verification of
//! tokens from it and from any external OIDC provider, tenants, projects and
//! memberships, roles and permissions, service accounts, and sign-in lockout.
//!
//! This crate owns `users`, `tenants`, `projects`, `tenant_memberships`,
//! `project_memberships`, `refresh_tokens`, `service_accounts`,
//! `service_account_credentials`, `signing_keys` and `oidc_flows`. It is the one place
//! that decides who may do what. It must never store a password, refresh token or
//! client secret in clear, never let one reach a log, an error or an audit row, and
//! never read another domain's tables.

use std::sync::Arc;
use std::time::Duration;

use gpuaas_kernel::{ResourceIdFormat, ResourceType};
use gpuaas_policy::PolicyClient;
use gpuaas_store::{Migration, Store};

pub mod accounts;
mod audit;
mod authn;
mod error;
pub mod keys;
pub mod oidc;
pub mod password;
pub mod roles;
pub mod service_accounts;
mod sessions;
pub mod verify;

pub use accounts::{NewUser, Project, Tenant, User, UserFilter, UserPage, UserStatus};
pub use authn::{AuthContext, Me};
pub use error::IamError;
pub use oidc::OidcConfig;
pub use roles::{ActorType, GlobalRole, Permission, ProjectRole, TenantRole};
pub use sessions::SessionTokens;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112330,
    name: "iam",
    sqlite: include_str!("../migrations/2026112330_iam.sql"),
    postgres: include_str!("../migrations/2026112330_iam.sql"),
}];

/// How this platform names itself as an issuer and which external provider it trusts.
#[derive(Debug, Clone)]
pub struct IamConfig {
    /// `iss` of tokens the built-in issuer signs: the platform's public base URL.
    pub issuer_url: String,
    /// `aud` of the platform's own access tokens.
    pub audience: String,
    pub oidc: Option<OidcConfig>,
    /// How audit targets and events name resources.
    pub resource_ids: ResourceIdFormat,
}

/// Tunables of [`Iam`]; the defaults are the production values.
#[derive(Debug, Clone)]
pub struct IamOptions {
    /// Least time between two JWKS fetch attempts at the external provider that tokens
    /// naming an unknown `kid` (or a failing refresh) may trigger: a key rotation at
    /// the provider is picked up at most this long after the last fetch.
    pub remote_jwks_refetch_interval: Duration,
}

impl Default for IamOptions {
    fn default() -> Self {
        Self { remote_jwks_refetch_interval: verify::REMOTE_UNKNOWN_KID_MIN_INTERVAL }
    }
}

/// The identity service. Cheap to clone.
#[derive(Clone)]
pub struct Iam {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    policy: PolicyClient,
    keys: keys::KeyStore,
    config: IamConfig,
    verifier: verify::Verifier,
    oidc: Option<Arc<oidc::OidcClient>>,
}

impl Iam {
    pub fn new(store: Store, policy: PolicyClient, config: IamConfig, http: reqwest::Client) -> Self {
        Self::with_options(store, policy, config, http, IamOptions::default())
    }

    pub fn with_options(
        store: Store,
        policy: PolicyClient,
        config: IamConfig,
        http: reqwest::Client,
        options: IamOptions,
    ) -> Self {
        let keys = keys::KeyStore::new(store.clone());
        let own = Arc::new(verify::TrustedIssuer::new(
            config.issuer_url.clone(),
            vec![config.audience.clone()],
            verify::JwksSource::Local(keys.clone()),
        ));
        let mut verifier = verify::Verifier::new(vec![own]);
        let oidc = config.oidc.clone().map(|oidc_config| {
            Arc::new(oidc::OidcClient::new(oidc_config, http, options.remote_jwks_refetch_interval))
        });
        if let Some(client) = &oidc {
            verifier = verifier.with_issuer(client.trusted_issuer());
        }
        Self { inner: Arc::new(Inner { store, policy, keys, config, verifier, oidc }) }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn issuer_url(&self) -> &str {
        &self.inner.config.issuer_url
    }

    /// The built-in issuer's OpenID Provider metadata.
    pub fn discovery_document(&self) -> serde_json::Value {
        let issuer = self.issuer_url().trim_end_matches('/');
        serde_json::json!({
            "issuer": self.issuer_url(),
            "jwks_uri": format!("{issuer}/api/v1/auth/jwks"),
            "token_endpoint": format!("{issuer}/api/v1/auth/personal/login"),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "grant_types_supported": ["password", "refresh_token", "client_credentials"],
        })
    }

    /// The public keys that verify this platform's tokens.
    pub async fn jwks(&self) -> Result<serde_json::Value, IamError> {
        let keys = self.inner.keys.published().await?;
        Ok(serde_json::json!({"keys": keys.iter().map(keys::PublishedKey::to_jwk).collect::<Vec<_>>()}))
    }

    /// Verifies a token from any trusted issuer (used by tests and the CLI's checks).
    pub async fn verify(&self, token: &str) -> Result<verify::VerifiedToken, IamError> {
        self.inner.verifier.verify(token).await
    }
}

impl Iam {
    /// The canonical id of a resource, as written in audit rows and events.
    pub(crate) fn resource_id(
        &self,
        tenant: Option<&str>,
        project: Option<&str>,
        resource_type: ResourceType,
        id: &str,
    ) -> String {
        self.inner.config.resource_ids.name(tenant, project, resource_type, id)
    }
}

pub(crate) fn is_unique_violation(error: &gpuaas_store::sqlx::Error) -> bool {
    gpuaas_store::is_unique_violation(error)
}

/// Random, URL-safe secret of 32 bytes (256 bits).
pub(crate) fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a high-entropy secret. Enough for random tokens (no dictionary to
/// attack), and lookups by hash stay an index seek.
pub(crate) fn secret_hash(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

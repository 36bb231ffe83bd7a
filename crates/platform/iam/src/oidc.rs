//! Sign-in through an external OIDC provider: discovery, authorization code with PKCE,
//! state and nonce, and the ID token verified by the same [`Verifier`] as our own
//! tokens. The user is upserted by `(issuer, subject)` and their global role mapped
//! from a configurable claim.
//!
//! [`Verifier`]: crate::verify::Verifier

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gpuaas_audit::AuditResult;
use gpuaas_kernel::Timestamp;
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use serde::Deserialize;
use sha2::Digest as _;

use crate::accounts::{self, NewUser, User};
use crate::roles::GlobalRole;
use crate::sessions::SessionTokens;
use crate::verify::{JwksSource, RemoteJwks, TrustedIssuer, VerifiedToken};
use crate::{Iam, IamError, audit, random_secret, secret_hash};

const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_FLOW_PARAM_LEN: usize = 2048;

#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The provider's issuer URL; everything else comes from its discovery document.
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Where the provider sends the browser back (the portal's callback page).
    pub redirect_uri: String,
    /// Dot-separated path of the claim holding role names, e.g. `realm_access.roles`.
    pub roles_claim: String,
    pub scopes: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

/// Fetches and checks `{issuer}/.well-known/openid-configuration`.
pub async fn discover(client: &reqwest::Client, issuer: &str) -> Result<Discovery, IamError> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let response = client
        .get(&url)
        .timeout(PROVIDER_TIMEOUT)
        .send()
        .await
        .map_err(|e| IamError::Provider(format!("discovery failed: {e}")))?;
    if !response.status().is_success() {
        return Err(IamError::Provider(format!("discovery answered {}", response.status())));
    }
    let discovery: Discovery =
        response.json().await.map_err(|e| IamError::Provider(format!("discovery document unreadable: {e}")))?;
    // OIDC Discovery §4.3: the document must name exactly the issuer we asked.
    if discovery.issuer != issuer {
        return Err(IamError::Provider("discovery document names a different issuer".into()));
    }
    Ok(discovery)
}

pub(crate) struct OidcClient {
    config: OidcConfig,
    http: reqwest::Client,
    issuer: Arc<TrustedIssuer>,
}

impl OidcClient {
    pub fn new(config: OidcConfig, http: reqwest::Client, unknown_kid_min_interval: Duration) -> Self {
        let issuer = Arc::new(
            TrustedIssuer::new(
                config.issuer_url.clone(),
                vec![config.client_id.clone()],
                JwksSource::Remote {
                    jwks: RemoteJwks::ViaDiscovery { issuer: config.issuer_url.clone() },
                    client: http.clone(),
                },
            )
            .with_unknown_kid_min_interval(unknown_kid_min_interval),
        );
        Self { config, http, issuer }
    }

    pub fn trusted_issuer(&self) -> Arc<TrustedIssuer> {
        self.issuer.clone()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
}

/// Reads a dot-separated claim path as a list of strings (a single string counts).
fn claim_strings(claims: &serde_json::Map<String, serde_json::Value>, path: &str) -> Vec<String> {
    let mut segments = path.split('.');
    let Some(first) = segments.next() else { return Vec::new() };
    let mut value = claims.get(first);
    for segment in segments {
        value = value.and_then(|v| v.get(segment));
    }
    match value {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// The strongest platform role named in the provider's roles.
pub fn map_role(roles: &[String]) -> GlobalRole {
    if roles.iter().any(|r| r == GlobalRole::Admin.as_str()) {
        GlobalRole::Admin
    } else if roles.iter().any(|r| r == GlobalRole::BillingOperator.as_str()) {
        GlobalRole::BillingOperator
    } else {
        GlobalRole::User
    }
}

impl Iam {
    /// Whether an external OIDC provider is configured (the portal offers SSO then).
    pub fn oidc_enabled(&self) -> bool {
        self.inner.oidc.is_some()
    }

    fn oidc_client(&self) -> Result<&Arc<OidcClient>, IamError> {
        self.inner
            .oidc
            .as_ref()
            .ok_or_else(|| IamError::FeatureDisabled("no external OIDC provider is configured".into()))
    }

    /// Starts an authorization-code flow: returns the provider URL to send the browser
    /// to. State, nonce and the PKCE verifier are kept server-side, single use.
    pub async fn oidc_authorize(&self) -> Result<String, IamError> {
        let client = self.oidc_client()?;
        let discovery = discover(&client.http, &client.config.issuer_url).await?;
        let state = random_secret();
        let nonce = random_secret();
        let verifier = random_secret();
        let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let ttl = self.inner.policy.get_duration_secs(keys::AUTH_OIDC_FLOW_TTL_SECONDS).await?;
        let now = Timestamp::now();
        sqlx::query(
            "INSERT INTO oidc_flows (state_hash, nonce, code_verifier, redirect_uri, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(secret_hash(&state))
        .bind(&nonce)
        .bind(&verifier)
        .bind(&client.config.redirect_uri)
        .bind(now.as_micros())
        .bind(now.saturating_add(ttl).as_micros())
        .execute(self.store().pool())
        .await?;
        let mut url = url::Url::parse(&discovery.authorization_endpoint)
            .map_err(|_| IamError::Provider("authorization endpoint is not a URL".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.config.client_id)
            .append_pair("redirect_uri", &client.config.redirect_uri)
            .append_pair("scope", &client.config.scopes)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Finishes the flow: checks the state, redeems the code with the PKCE verifier,
    /// verifies the ID token and its nonce, upserts the user and opens a session.
    pub async fn oidc_exchange(
        &self,
        code: &str,
        state: &str,
        correlation_id: &str,
    ) -> Result<SessionTokens, IamError> {
        let client = self.oidc_client()?;
        if code.is_empty() || code.len() > MAX_FLOW_PARAM_LEN {
            return Err(IamError::invalid("code", "must be the code the provider returned"));
        }
        if state.is_empty() || state.len() > MAX_FLOW_PARAM_LEN {
            return Err(IamError::invalid("state", "must be the state the provider returned"));
        }
        // Deleting claims the flow: a replayed state finds nothing.
        let row = sqlx::query(
            "DELETE FROM oidc_flows WHERE state_hash = $1 RETURNING nonce, code_verifier, redirect_uri, expires_at",
        )
        .bind(secret_hash(state))
        .fetch_optional(self.store().pool())
        .await?;
        let Some(row) = row else { return Err(IamError::OidcFlowInvalid("unknown, used or expired state".into())) };
        let expires_at: i64 = row.try_get("expires_at")?;
        if expires_at <= Timestamp::now().as_micros() {
            return Err(IamError::OidcFlowInvalid("unknown, used or expired state".into()));
        }
        let nonce: String = row.try_get("nonce")?;
        let verifier: String = row.try_get("code_verifier")?;
        let redirect_uri: String = row.try_get("redirect_uri")?;
        let discovery = discover(&client.http, &client.config.issuer_url).await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", redirect_uri),
            ("client_id", client.config.client_id.clone()),
            ("code_verifier", verifier),
        ];
        if let Some(secret) = &client.config.client_secret {
            form.push(("client_secret", secret.clone()));
        }
        let response = client
            .http
            .post(&discovery.token_endpoint)
            .timeout(PROVIDER_TIMEOUT)
            .form(&form)
            .send()
            .await
            .map_err(|e| IamError::Provider(format!("token request failed: {e}")))?;
        if response.status().is_client_error() {
            return Err(IamError::OidcFlowInvalid("the provider refused the authorization code".into()));
        }
        if !response.status().is_success() {
            return Err(IamError::Provider(format!("token endpoint answered {}", response.status())));
        }
        let tokens: TokenResponse =
            response.json().await.map_err(|e| IamError::Provider(format!("token response unreadable: {e}")))?;
        let id_token = tokens.id_token.ok_or_else(|| IamError::Provider("token response has no id_token".into()))?;
        let verified = self.inner.verifier.verify(&id_token).await?;
        if verified.issuer != client.config.issuer_url {
            return Err(IamError::TokenInvalid("ID token from an unexpected issuer".into()));
        }
        if verified.string_claim("nonce") != Some(nonce.as_str()) {
            return Err(IamError::OidcFlowInvalid("ID token nonce does not match the flow".into()));
        }
        let user = self.upsert_oidc_user(&verified).await?;
        if user.status == accounts::UserStatus::Disabled {
            return Err(IamError::AccountDisabled);
        }
        let mut entry = audit::anonymous(
            &user.id,
            "auth.oidc_login",
            self.user_resource(&user),
            AuditResult::Success,
            correlation_id,
        );
        entry.actor_type = gpuaas_audit::ActorType::User;
        entry.actor_role = user.role.as_str().into();
        entry.tenant_id = Some(user.tenant_id.clone());
        gpuaas_audit::record_standalone(self.store(), &entry).await?;
        self.issue_session_for(&user).await
    }

    /// Creates or updates the user a provider vouched for, by `(issuer, subject)`.
    pub(crate) async fn upsert_oidc_user(&self, verified: &VerifiedToken) -> Result<User, IamError> {
        let client = self.oidc_client()?;
        let subject = verified.subject();
        if subject.is_empty() || subject.len() > 255 {
            return Err(IamError::TokenInvalid("token has no usable subject".into()));
        }
        let email = verified
            .string_claim("email")
            .ok_or_else(|| IamError::TokenInvalid("the provider did not share an email address".into()))
            .and_then(|email| {
                accounts::normalize_email(email)
                    .map_err(|_| IamError::TokenInvalid("the provider's email claim is not an email".into()))
            })?;
        let display_name = verified
            .string_claim("name")
            .or_else(|| verified.string_claim("preferred_username"))
            .and_then(|name| accounts::validate_name("name", name).ok())
            .unwrap_or_else(|| email.clone());
        let role = map_role(&claim_strings(&verified.claims, &client.config.roles_claim));
        let store = self.store();
        let mut tx = store.begin().await?;
        let updated = sqlx::query(
            "UPDATE users SET email = $1, display_name = $2, global_role = $3, updated_at = $4 \
             WHERE oidc_issuer = $5 AND oidc_subject = $6",
        )
        .bind(&email)
        .bind(&display_name)
        .bind(role.as_str())
        .bind(Timestamp::now().as_micros())
        .bind(&verified.issuer)
        .bind(subject)
        .execute(&mut *tx)
        .await;
        let updated = match updated {
            Ok(done) => done.rows_affected(),
            Err(error) if crate::is_unique_violation(&error) => {
                return Err(IamError::Conflict("another account already uses this email".into()));
            }
            Err(error) => return Err(error.into()),
        };
        if updated == 0 {
            let user = accounts::create_user(
                &mut tx,
                NewUser {
                    email,
                    display_name,
                    password_hash: None,
                    role,
                    oidc: Some((verified.issuer.clone(), subject.to_owned())),
                },
            )
            .await?;
            gpuaas_audit::record(&mut tx, &audit::system("user.create_from_oidc", self.user_resource(&user))).await?;
        }
        tx.commit().await?;
        accounts::user_by_oidc(store, &verified.issuer, subject).await?.ok_or(IamError::NotFound("user"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_nested_claims() {
        let claims =
            serde_json::json!({"realm_access": {"roles": ["offline_access", "admin"]}, "groups": "billing_operator"});
        let claims = claims.as_object().cloned().unwrap_or_default();
        assert_eq!(map_role(&claim_strings(&claims, "realm_access.roles")), GlobalRole::Admin);
        assert_eq!(map_role(&claim_strings(&claims, "groups")), GlobalRole::BillingOperator);
        assert_eq!(map_role(&claim_strings(&claims, "missing.path")), GlobalRole::User);
    }
}

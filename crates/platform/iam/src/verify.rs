//! Bearer-token verification: one path for tokens of the built-in issuer and of any
//! external OIDC provider.
//!
//! Keys come from each issuer's JWKS, cached and refreshed every five minutes and when
//! a token names an unknown `kid` (for remote providers at most one attempt per 30 s,
//! successful or not, so neither a flood of forged kids nor an outage hammers the
//! provider). Only asymmetric algorithms are accepted, and the key's own family must
//! match the token's `alg`; `none` and HS* never verify.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::IamError;
use crate::keys::KeyStore;

/// Algorithms a token may be signed with.
pub const ACCEPTED_ALGORITHMS: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// Default least time between two fetches of a remote JWKS (successful or not) that
/// tokens naming an unknown `kid`, or a failing refresh, may trigger.
pub const REMOTE_UNKNOWN_KID_MIN_INTERVAL: Duration = Duration::from_secs(30);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A token longer than this is not one anybody issued to us.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Where an issuer's public keys come from.
#[derive(Clone)]
pub enum JwksSource {
    /// The built-in issuer's own keys, read from the database.
    Local(KeyStore),
    /// A provider's `jwks_uri`, or its issuer URL whose discovery document names it.
    Remote { jwks: RemoteJwks, client: reqwest::Client },
}

#[derive(Clone)]
pub enum RemoteJwks {
    Url(String),
    ViaDiscovery { issuer: String },
}

struct CachedKeys {
    keys: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    /// The last successful fetch.
    fetched_at: Option<Instant>,
    /// The last fetch, successful or not.
    attempted_at: Option<Instant>,
}

/// One trusted issuer: its `iss`, accepted audiences and key cache.
pub struct TrustedIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    source: JwksSource,
    /// For a remote source: how soon after the last fetch attempt another may happen.
    unknown_kid_min_interval: Duration,
    cache: Mutex<CachedKeys>,
}

impl TrustedIssuer {
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>, source: JwksSource) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            source,
            unknown_kid_min_interval: REMOTE_UNKNOWN_KID_MIN_INTERVAL,
            cache: Mutex::new(CachedKeys { keys: HashMap::new(), fetched_at: None, attempted_at: None }),
        }
    }

    /// Overrides [`REMOTE_UNKNOWN_KID_MIN_INTERVAL`] (tests shorten it).
    pub fn with_unknown_kid_min_interval(mut self, interval: Duration) -> Self {
        self.unknown_kid_min_interval = interval;
        self
    }

    async fn key(&self, kid: &str) -> Result<(DecodingKey, Option<Algorithm>), IamError> {
        let mut cache = self.cache.lock().await;
        let stale = cache.fetched_at.is_none_or(|at| at.elapsed() >= JWKS_MAX_AGE);
        let unknown = !cache.keys.contains_key(kid);
        // A remote provider is asked at most once per interval whether or not the last
        // attempt worked, so neither forged kids nor an outage turn requests into fetches.
        let may_fetch = match self.source {
            JwksSource::Local(_) => true,
            JwksSource::Remote { .. } => {
                cache.attempted_at.is_none_or(|at| at.elapsed() >= self.unknown_kid_min_interval)
            }
        };
        if (stale || unknown) && may_fetch {
            cache.attempted_at = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.fetched_at = Some(Instant::now());
                }
                // Keep serving the keys we have when the provider blips.
                Err(error) if !cache.keys.is_empty() => {
                    tracing::warn!(issuer = %self.issuer, %error, "JWKS refresh failed; using cached keys");
                }
                Err(error) => return Err(error),
            }
        } else if cache.fetched_at.is_none() {
            return Err(IamError::Provider("the provider's JWKS is unavailable; retrying shortly".into()));
        }
        cache.keys.get(kid).cloned().ok_or_else(|| IamError::TokenInvalid("unknown signing key".into()))
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Option<Algorithm>)>, IamError> {
        let set: JwkSet = match &self.source {
            JwksSource::Local(keys) => {
                let jwks =
                    serde_json::json!({"keys": keys.published().await?.iter().map(|k| k.to_jwk()).collect::<Vec<_>>()});
                serde_json::from_value(jwks).map_err(|e| IamError::Internal(format!("own JWKS unreadable: {e}")))?
            }
            JwksSource::Remote { jwks, client } => {
                let url = match jwks {
                    RemoteJwks::Url(url) => url.clone(),
                    RemoteJwks::ViaDiscovery { issuer } => crate::oidc::discover(client, issuer).await?.jwks_uri,
                };
                let response = client
                    .get(&url)
                    .timeout(JWKS_FETCH_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| IamError::Provider(format!("JWKS fetch failed: {e}")))?;
                if !response.status().is_success() {
                    return Err(IamError::Provider(format!("JWKS fetch answered {}", response.status())));
                }
                response.json().await.map_err(|e| IamError::Provider(format!("JWKS is not a JWK set: {e}")))?
            }
        };
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            // Symmetric keys in a JWKS are ignored: an HMAC secret published as a "public
            // key" is exactly the confusion attack we refuse.
            if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let algorithm = jwk.common.key_algorithm.and_then(|alg| alg.to_string().parse::<Algorithm>().ok());
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, (key, algorithm));
                }
                Err(error) => tracing::warn!(issuer = %self.issuer, kid, %error, "skipping unusable JWK"),
            }
        }
        Ok(keys)
    }
}

/// The verified claims of a token, and which issuer vouched for them.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub issuer: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl VerifiedToken {
    pub fn subject(&self) -> &str {
        self.claims.get("sub").and_then(|v| v.as_str()).unwrap_or_default()
    }

    pub fn string_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(|v| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct Verifier {
    issuers: Vec<Arc<TrustedIssuer>>,
}

#[derive(Deserialize)]
struct IssuerOnly {
    iss: Option<String>,
}

impl Verifier {
    pub fn new(issuers: Vec<Arc<TrustedIssuer>>) -> Self {
        Self { issuers }
    }

    pub fn with_issuer(mut self, issuer: Arc<TrustedIssuer>) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Verifies signature, issuer, audience, `exp` and `nbf`.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, IamError> {
        if token.is_empty() {
            return Err(IamError::TokenMissing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(IamError::TokenInvalid("token too long".into()));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| IamError::TokenInvalid("malformed header".into()))?;
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(IamError::TokenInvalid(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| IamError::TokenInvalid("token names no key id".into()))?;
        // Read `iss` unverified only to pick the issuer whose keys then verify everything.
        let unverified: IssuerOnly = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| IamError::TokenInvalid("malformed claims".into()))?;
        let issuer_name = unverified.iss.ok_or_else(|| IamError::TokenInvalid("token has no issuer".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|candidate| candidate.issuer == issuer_name)
            .ok_or_else(|| IamError::TokenInvalid("issuer is not trusted".into()))?;
        let (key, key_algorithm) = issuer.key(&kid).await?;
        if key_algorithm.is_some_and(|alg| alg != header.alg) {
            return Err(IamError::TokenInvalid("token algorithm does not match its key".into()));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer.issuer.as_str()]);
        validation.set_audience(&issuer.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => IamError::TokenExpired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    IamError::TokenInvalid("token is not valid yet".into())
                }
                jsonwebtoken::errors::ErrorKind::InvalidAudience => IamError::TokenInvalid("wrong audience".into()),
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => IamError::TokenInvalid("wrong issuer".into()),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => IamError::TokenInvalid("bad signature".into()),
                _ => IamError::TokenInvalid("token failed verification".into()),
            })?;
        Ok(VerifiedToken { issuer: issuer.issuer.clone(), claims: data.claims })
    }
}

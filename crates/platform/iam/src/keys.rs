//! Signing keys of the built-in issuer: created on first use, rotated on demand.
//!
//! A rotated key stops signing at once but stays published in the JWKS until every
//! token it signed has expired, so rotation never logs anyone out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gpuaas_kernel::Timestamp;
use gpuaas_store::Store;
use gpuaas_store::sqlx::{self, Row as _};
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::RngCore as _;
use tokio::sync::RwLock;

use crate::IamError;

/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410); the seed follows these bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
/// Another process may rotate; re-reading the active key this often bounds how long
/// this one keeps signing with a retired key.
const ACTIVE_KEY_RECHECK: Duration = Duration::from_secs(60);
/// Slack added to a retired key's publication window for clock skew and stale signers.
const PUBLISH_SLACK: Duration = Duration::from_secs(180);

/// The key that signs new tokens.
pub struct ActiveKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
}

/// A public key to publish in the JWKS.
#[derive(Debug, Clone)]
pub struct PublishedKey {
    pub kid: String,
    /// base64url of the raw 32-byte Ed25519 public key.
    pub x: String,
}

impl PublishedKey {
    pub fn to_jwk(&self) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid, "x": self.x})
    }
}

/// The active key and when it was read from the database.
type LoadedKey = (Arc<ActiveKey>, Instant);

#[derive(Clone)]
pub struct KeyStore {
    store: Store,
    active: Arc<RwLock<Option<LoadedKey>>>,
}

impl KeyStore {
    pub fn new(store: Store) -> Self {
        Self { store, active: Arc::new(RwLock::new(None)) }
    }

    /// The key to sign with, creating the first one when there is none.
    pub async fn active(&self) -> Result<Arc<ActiveKey>, IamError> {
        if let Some((key, loaded)) = self.active.read().await.as_ref()
            && loaded.elapsed() < ACTIVE_KEY_RECHECK
        {
            return Ok(key.clone());
        }
        let key = match self.load_active().await? {
            Some(key) => key,
            None => {
                self.insert_new_key(None).await?;
                self.load_active().await?.ok_or_else(|| IamError::Internal("signing key vanished".into()))?
            }
        };
        let key = Arc::new(key);
        *self.active.write().await = Some((key.clone(), Instant::now()));
        Ok(key)
    }

    /// Retires every current key and starts signing with a new one. Retired keys stay
    /// published for `max_token_lifetime` (plus slack). Returns the new key id.
    pub async fn rotate(&self, max_token_lifetime: Duration) -> Result<String, IamError> {
        let kid = self.insert_new_key(Some(max_token_lifetime + PUBLISH_SLACK)).await?;
        *self.active.write().await = None;
        Ok(kid)
    }

    /// Keys whose tokens may still be in circulation.
    pub async fn published(&self) -> Result<Vec<PublishedKey>, IamError> {
        let rows = sqlx::query(
            "SELECT kid, public_key FROM signing_keys \
             WHERE retired_at IS NULL OR publish_until > $1 ORDER BY created_at DESC, kid DESC",
        )
        .bind(Timestamp::now().as_micros())
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| Ok(PublishedKey { kid: row.try_get("kid")?, x: row.try_get("public_key")? }))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(IamError::from)
    }

    async fn load_active(&self) -> Result<Option<ActiveKey>, IamError> {
        let row = sqlx::query(
            "SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL \
             ORDER BY created_at DESC, kid DESC LIMIT 1",
        )
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kid: String = row.try_get("kid")?;
        let private: String = row.try_get("private_key")?;
        let seed = STANDARD
            .decode(private)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| IamError::Internal(format!("signing key {kid} is corrupt")))?;
        Ok(Some(ActiveKey { kid, algorithm: Algorithm::EdDSA, encoding: encoding_key(&seed) }))
    }

    async fn insert_new_key(&self, retire_others_for: Option<Duration>) -> Result<String, IamError> {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let kid = gpuaas_kernel::new_id().to_string();
        let now = Timestamp::now();
        let mut tx = self.store.begin().await?;
        if let Some(window) = retire_others_for {
            sqlx::query("UPDATE signing_keys SET retired_at = $1, publish_until = $2 WHERE retired_at IS NULL")
                .bind(now.as_micros())
                .bind(now.saturating_add(window).as_micros())
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at) \
             VALUES ($1, 'EdDSA', $2, $3, $4)",
        )
        .bind(&kid)
        .bind(STANDARD.encode(seed))
        .bind(URL_SAFE_NO_PAD.encode(public))
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(kid, "created signing key");
        Ok(kid)
    }
}

pub(crate) fn encoding_key(seed: &[u8; 32]) -> EncodingKey {
    let mut der = Vec::with_capacity(48);
    der.extend_from_slice(&ED25519_PKCS8_PREFIX);
    der.extend_from_slice(seed);
    EncodingKey::from_ed_der(&der)
}

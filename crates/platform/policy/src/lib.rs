//! Runtime business policy: the `policy_values` table and a typed, briefly cached client.
//!
//! Limits, windows, retry counts and thresholds live here, seeded by migration and
//! changeable without a deploy, so no handler or worker hard-codes a business constant.
//! This crate owns `policy_values`; it must never read another domain's tables.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuaas_kernel::Timestamp;
use gpuaas_store::sqlx::{self, Row};
use gpuaas_store::{Migration, Store, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

pub mod keys;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112301,
        name: "policy_values",
        sqlite: include_str!("../migrations/2026112301_policy_values.sql"),
        postgres: include_str!("../migrations/2026112301_policy_values.sql"),
    },
    Migration {
        version: 2026112305,
        name: "ratelimit_policy",
        sqlite: include_str!("../migrations/2026112305_ratelimit_policy.sql"),
        postgres: include_str!("../migrations/2026112305_ratelimit_policy.sql"),
    },
    Migration {
        version: 2026112306,
        name: "auth_policy",
        sqlite: include_str!("../migrations/2026112306_auth_policy.sql"),
        postgres: include_str!("../migrations/2026112306_auth_policy.sql"),
    },
    Migration {
        version: 2026112335,
        name: "node_policy",
        sqlite: include_str!("../migrations/2026112335_node_policy.sql"),
        postgres: include_str!("../migrations/2026112335_node_policy.sql"),
    },
    Migration {
        version: 2026112345,
        name: "money_policy",
        sqlite: include_str!("../migrations/2026112345_money_policy.sql"),
        postgres: include_str!("../migrations/2026112345_money_policy.sql"),
    },
    Migration {
        version: 2026112358,
        name: "allocation_policy",
        sqlite: include_str!("../migrations/2026112358_allocation_policy.sql"),
        postgres: include_str!("../migrations/2026112358_allocation_policy.sql"),
    },
];

/// A named policy value of type `T` (stored as JSON text).
#[derive(Debug)]
pub struct PolicyKey<T> {
    pub name: &'static str,
    value_type: PhantomData<fn() -> T>,
}

impl<T> Clone for PolicyKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for PolicyKey<T> {}

impl<T> PolicyKey<T> {
    pub const fn new(name: &'static str) -> Self {
        Self { name, value_type: PhantomData }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy value `{0}` is not set")]
    Missing(&'static str),
    #[error("policy value `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PolicyError {
    fn from(error: sqlx::Error) -> Self {
        PolicyError::Store(StoreError::Database(error))
    }
}

/// Reads policy values with a short cache: a change reaches every process within the
/// cache lifetime without a query per request.
#[derive(Clone)]
pub struct PolicyClient {
    store: Store,
    cache_ttl: Duration,
    cache: Arc<Mutex<HashMap<&'static str, (Instant, serde_json::Value)>>>,
}

impl PolicyClient {
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5);

    pub fn new(store: Store, cache_ttl: Duration) -> Self {
        Self { store, cache_ttl, cache: Arc::default() }
    }

    pub async fn get<T: DeserializeOwned>(&self, key: PolicyKey<T>) -> Result<T, PolicyError> {
        let raw = self.raw(key.name).await?;
        serde_json::from_value(raw).map_err(|error| PolicyError::Invalid { key: key.name, reason: error.to_string() })
    }

    /// A whole-seconds policy value as a duration; negative values are refused.
    pub async fn get_duration_secs(&self, key: PolicyKey<i64>) -> Result<Duration, PolicyError> {
        let seconds = self.get(key).await?;
        u64::try_from(seconds)
            .map(Duration::from_secs)
            .map_err(|_| PolicyError::Invalid { key: key.name, reason: "must not be negative".into() })
    }

    /// A milliseconds policy value as a duration; negative values are refused.
    pub async fn get_duration_ms(&self, key: PolicyKey<i64>) -> Result<Duration, PolicyError> {
        let millis = self.get(key).await?;
        u64::try_from(millis)
            .map(Duration::from_millis)
            .map_err(|_| PolicyError::Invalid { key: key.name, reason: "must not be negative".into() })
    }

    /// Writes a value (operator change) and drops this process's cached copy.
    pub async fn set<T: Serialize>(&self, key: PolicyKey<T>, value: &T) -> Result<(), PolicyError> {
        let text = serde_json::to_string(value)
            .map_err(|error| PolicyError::Invalid { key: key.name, reason: error.to_string() })?;
        let updated = sqlx::query("UPDATE policy_values SET value = $1, updated_at = $2 WHERE key = $3")
            .bind(text)
            .bind(Timestamp::now().as_micros())
            .bind(key.name)
            .execute(self.store.pool())
            .await?;
        if updated.rows_affected() == 0 {
            return Err(PolicyError::Missing(key.name));
        }
        self.cache.lock().await.remove(key.name);
        Ok(())
    }

    async fn raw(&self, name: &'static str) -> Result<serde_json::Value, PolicyError> {
        if let Some((fetched_at, value)) = self.cache.lock().await.get(name)
            && fetched_at.elapsed() < self.cache_ttl
        {
            return Ok(value.clone());
        }
        let row = sqlx::query("SELECT value FROM policy_values WHERE key = $1")
            .bind(name)
            .fetch_optional(self.store.pool())
            .await?
            .ok_or(PolicyError::Missing(name))?;
        let text: String = row.try_get("value")?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|error| PolicyError::Invalid { key: name, reason: error.to_string() })?;
        self.cache.lock().await.insert(name, (Instant::now(), value.clone()));
        Ok(value)
    }
}

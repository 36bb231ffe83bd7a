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
    Migration {
        version: 2026120410,
        name: "event_retention_policy",
        sqlite: include_str!("../migrations/2026120410_event_retention_policy.sql"),
        postgres: include_str!("../migrations/2026120410_event_retention_policy.sql"),
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

fn non_negative(key: PolicyKey<i64>, value: i64) -> Result<u64, PolicyError> {
    u64::try_from(value).map_err(|_| PolicyError::Invalid { key: key.name, reason: "must not be negative".into() })
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
        non_negative(key, self.get(key).await?).map(Duration::from_secs)
    }

    /// A milliseconds policy value as a duration; negative values are refused.
    pub async fn get_duration_ms(&self, key: PolicyKey<i64>) -> Result<Duration, PolicyError> {
        non_negative(key, self.get(key).await?).map(Duration::from_millis)
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

    /// [`Self::get`] for code that holds a transaction: a value not cached is read on
    /// `connection`. Read from the pool, it would wait for a second connection while
    /// holding one, and a pool full of such callers waits on itself.
    pub async fn get_in<T: DeserializeOwned>(
        &self,
        connection: &mut gpuaas_store::Connection,
        key: PolicyKey<T>,
    ) -> Result<T, PolicyError> {
        let raw = match self.cached(key.name).await {
            Some(value) => value,
            None => self.fetch(&mut *connection, key.name).await?,
        };
        serde_json::from_value(raw).map_err(|error| PolicyError::Invalid { key: key.name, reason: error.to_string() })
    }

    /// [`Self::get_duration_secs`] on the caller's connection (see [`Self::get_in`]).
    pub async fn get_duration_secs_in(
        &self,
        connection: &mut gpuaas_store::Connection,
        key: PolicyKey<i64>,
    ) -> Result<Duration, PolicyError> {
        non_negative(key, self.get_in(connection, key).await?).map(Duration::from_secs)
    }

    async fn cached(&self, name: &'static str) -> Option<serde_json::Value> {
        match self.cache.lock().await.get(name) {
            Some((fetched_at, value)) if fetched_at.elapsed() < self.cache_ttl => Some(value.clone()),
            _ => None,
        }
    }

    async fn raw(&self, name: &'static str) -> Result<serde_json::Value, PolicyError> {
        match self.cached(name).await {
            Some(value) => Ok(value),
            None => self.fetch(self.store.pool(), name).await,
        }
    }

    async fn fetch<'e, E>(&self, executor: E, name: &'static str) -> Result<serde_json::Value, PolicyError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let row = sqlx::query("SELECT value FROM policy_values WHERE key = $1")
            .bind(name)
            .fetch_optional(executor)
            .await?
            .ok_or(PolicyError::Missing(name))?;
        let text: String = row.try_get("value")?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|error| PolicyError::Invalid { key: name, reason: error.to_string() })?;
        self.cache.lock().await.insert(name, (Instant::now(), value.clone()));
        Ok(value)
    }
}

//! A migration runner that lets each domain crate ship its own migrations.
//!
//! Each crate exposes `pub const MIGRATIONS: &[Migration]` with one SQL text per
//! dialect; the binary hands the union to [`Store::migrate`]. Versions are global
//! (`YYYYMMDDNN`), so crates never collide, and the runner refuses a database that has
//! migrations this binary does not know: an old binary must not write to a newer schema.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use sqlx::{Acquire, Connection as _, Row};

use crate::{Dialect, Store, StoreError};

/// Arbitrary constant key for the PostgreSQL advisory lock that serializes concurrent
/// `migrate` runs from several processes.
const MIGRATION_LOCK_KEY: i64 = 7_243_001_917;

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

impl Migration {
    fn sql(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::Postgres => self.postgres,
        }
    }

    fn checksum(&self, dialect: Dialect) -> String {
        hex::encode(Sha256::digest(self.sql(dialect).as_bytes()))
    }
}

/// Where a database stands against the migrations a binary knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    pub applied: Vec<i64>,
    pub pending: Vec<i64>,
    /// Applied versions this binary does not know: the schema is newer than the binary.
    pub unknown: Vec<i64>,
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

impl Store {
    /// Applies every pending migration, each in its own transaction together with its
    /// `schema_migrations` row. Idempotent; safe to run from several processes at once.
    /// Returns the versions it applied.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<Vec<i64>, StoreError> {
        let known = index(migrations)?;
        let mut connection = self.pool().acquire().await?;
        if self.dialect() == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut *connection).await?;
        }
        let outcome = async {
            sqlx::query(CREATE_TABLE).execute(&mut *connection).await?;
            let applied = applied_checksums(&mut connection).await?;
            check_known(&known, &applied, self.dialect())?;
            let mut newly_applied = Vec::new();
            for (version, migration) in &known {
                if applied.contains_key(version) {
                    continue;
                }
                let mut tx = match self.dialect() {
                    Dialect::Sqlite => (*connection).begin_with("BEGIN IMMEDIATE").await?,
                    Dialect::Postgres => connection.begin().await?,
                };
                sqlx::raw_sql(migration.sql(self.dialect())).execute(&mut *tx).await.map_err(|source| {
                    StoreError::MigrationFailed { version: *version, name: migration.name.to_owned(), source }
                })?;
                sqlx::query(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(*version)
                .bind(migration.name)
                .bind(migration.checksum(self.dialect()))
                .bind(now_micros())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::info!(version, name = migration.name, "applied migration");
                newly_applied.push(*version);
            }
            Ok::<_, StoreError>(newly_applied)
        }
        .await;
        if self.dialect() == Dialect::Postgres {
            // Unlock even when a migration failed; a broken connection drops the lock anyway.
            let _ =
                sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK_KEY).execute(&mut *connection).await;
        }
        outcome
    }

    pub async fn schema_status(&self, migrations: &[Migration]) -> Result<SchemaStatus, StoreError> {
        let known = index(migrations)?;
        let mut connection = self.pool().acquire().await?;
        let exists = match self.dialect() {
            Dialect::Sqlite => {
                sqlx::query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
            }
            Dialect::Postgres => sqlx::query("SELECT 1 FROM pg_tables WHERE tablename = 'schema_migrations'"),
        }
        .fetch_optional(&mut *connection)
        .await?
        .is_some();
        let applied = if exists { applied_checksums(&mut connection).await? } else { BTreeMap::new() };
        let unknown = applied.keys().filter(|v| !known.contains_key(v)).copied().collect();
        let pending = known.keys().filter(|v| !applied.contains_key(v)).copied().collect();
        Ok(SchemaStatus { applied: applied.keys().copied().collect(), pending, unknown })
    }

    /// Refuses to run against a schema newer than this binary, or one not migrated yet.
    pub async fn ensure_schema_current(&self, migrations: &[Migration]) -> Result<(), StoreError> {
        let status = self.schema_status(migrations).await?;
        if !status.unknown.is_empty() {
            return Err(StoreError::SchemaNewer { unknown: status.unknown });
        }
        if !status.pending.is_empty() {
            return Err(StoreError::SchemaBehind { pending: status.pending.len() });
        }
        Ok(())
    }
}

fn index(migrations: &[Migration]) -> Result<BTreeMap<i64, &Migration>, StoreError> {
    let mut known = BTreeMap::new();
    for migration in migrations {
        if known.insert(migration.version, migration).is_some() {
            return Err(StoreError::MigrationChanged {
                version: migration.version,
                name: format!("{} (version declared twice)", migration.name),
            });
        }
    }
    Ok(known)
}

async fn applied_checksums(
    connection: &mut sqlx::AnyConnection,
) -> Result<BTreeMap<i64, (String, String)>, StoreError> {
    let rows = sqlx::query("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        .fetch_all(&mut *connection)
        .await?;
    let mut applied = BTreeMap::new();
    for row in rows {
        let version: i64 = row.try_get("version")?;
        applied.insert(version, (row.try_get("name")?, row.try_get("checksum")?));
    }
    Ok(applied)
}

fn check_known(
    known: &BTreeMap<i64, &Migration>,
    applied: &BTreeMap<i64, (String, String)>,
    dialect: Dialect,
) -> Result<(), StoreError> {
    let unknown: BTreeSet<i64> = applied.keys().filter(|v| !known.contains_key(v)).copied().collect();
    if !unknown.is_empty() {
        return Err(StoreError::SchemaNewer { unknown: unknown.into_iter().collect() });
    }
    for (version, (name, checksum)) in applied {
        if let Some(migration) = known.get(version)
            && migration.checksum(dialect) != *checksum
        {
            return Err(StoreError::MigrationChanged { version: *version, name: name.clone() });
        }
    }
    Ok(())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

//! One database handle over SQLite (embedded default) and PostgreSQL (production),
//! the migration runner, transaction helpers and group commit.
//!
//! Every domain crate reaches the database through [`Store`] and writes SQL that both
//! engines accept (`$1` placeholders, `BIGINT` integers and microsecond timestamps,
//! `TEXT` ids and JSON); where the engines must differ, [`Dialect`] says so. This crate
//! owns only `schema_migrations`; it must never hold business rules or another
//! domain's tables.

mod group_commit;
mod migrate;

use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

pub use group_commit::GroupCommit;
pub use migrate::{Migration, SchemaStatus};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection as _, Executor};

/// A transaction on either engine; `&mut *tx` is its connection. On SQLite it also
/// holds this process's write turn until it ends: writers queue here, in order, rather
/// than in SQLite's busy handler, which sleeps up to 100 ms between tries and lets an
/// unlucky writer starve past its timeout under load.
pub struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Any>,
    // Dropped after `inner`, so the turn passes on only once the transaction is over.
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}
/// See [`Store::one_write`]; `&mut *one` is its connection.
pub enum OneWrite {
    Alone(sqlx::pool::PoolConnection<sqlx::Any>),
    InTransaction(Tx),
}

impl OneWrite {
    /// Commits on SQLite; on PostgreSQL the statement committed when it ran.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            OneWrite::Alone(_) => Ok(()),
            OneWrite::InTransaction(tx) => tx.commit().await,
        }
    }
}

impl std::ops::Deref for OneWrite {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &Self::Target {
        match self {
            OneWrite::Alone(connection) => connection,
            OneWrite::InTransaction(tx) => tx,
        }
    }
}

impl std::ops::DerefMut for OneWrite {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            OneWrite::Alone(connection) => connection,
            OneWrite::InTransaction(tx) => tx,
        }
    }
}

/// A connection on either engine, e.g. `&mut *tx` inside a transaction.
pub type Connection = sqlx::AnyConnection;
pub type Row = sqlx::any::AnyRow;
pub use sqlx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The engine behind a connection, for code that is handed a transaction only.
    pub fn of(connection: &Connection) -> Self {
        if connection.backend_name() == "SQLite" { Dialect::Sqlite } else { Dialect::Postgres }
    }

    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// Row-locking suffix for a claim query: PostgreSQL skips rows another worker holds;
    /// SQLite needs none because its write transactions are already serialized.
    pub const fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL must start with sqlite:, postgres:// or postgresql://")]
    UnsupportedUrl,
    #[error("cannot connect to the {dialect} database: {source}")]
    Connect {
        dialect: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "the database schema is newer than this binary (unknown migrations {unknown:?}); upgrade gpuaas before starting it"
    )]
    SchemaNewer { unknown: Vec<i64> },
    #[error("the database schema is behind ({pending} pending migrations); run `gpuaas migrate`")]
    SchemaBehind { pending: usize },
    #[error("migration {version} ({name}) was changed after it was applied; never edit an applied migration")]
    MigrationChanged { version: i64, name: String },
    #[error("migration {version} ({name}) failed: {source}")]
    MigrationFailed {
        version: i64,
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// True when the failure is a unique-constraint violation (a duplicate insert), which
    /// callers usually turn into an idempotent no-op or a 409.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database(error) => is_unique_violation(error),
            _ => false,
        }
    }
}

pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self { max_connections: 10, acquire_timeout: Duration::from_secs(10) }
    }
}

/// The shared database handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite's one writer, taken in turn by [`Store::begin`].
    write_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

static INSTALL_DRIVERS: Once = Once::new();

/// `count` numbered placeholders from `$first` on, comma-separated (`$3, $4, $5`), for
/// `IN (…)` lists and multi-row `VALUES`; both engines number them the same way.
pub fn placeholders(first: usize, count: usize) -> String {
    let mut text = String::with_capacity(count * 6);
    push_placeholders(&mut text, first, count);
    text
}

/// `rows` groups of `columns` numbered placeholders from `$first` on, for a multi-row
/// `VALUES` list: `value_rows(1, 2, 2)` is `($1, $2), ($3, $4)`.
///
/// Written into one buffer: batched statements are written afresh for every call, and
/// a text of a few hundred rows built from a string per placeholder was a few thousand
/// allocations (about 6 % of the service's CPU in the allocation benchmark).
pub fn value_rows(first: usize, rows: usize, columns: usize) -> String {
    let mut text = String::with_capacity(rows * (columns * 6 + 4));
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        push_placeholders(&mut text, first + row * columns, columns);
        text.push(')');
    }
    text
}

fn push_placeholders(text: &mut String, first: usize, count: usize) {
    use std::fmt::Write as _;
    for index in first..first + count {
        if index > first {
            text.push_str(", ");
        }
        // Writing into a String cannot fail.
        let _ = write!(text, "${index}");
    }
}

/// The rows a batched statement of `rows` rows is written for: the next power of two,
/// but no more than `most` (the caller's chunk size, itself one of the counts).
/// PostgreSQL plans each statement text on its own, five times on each connection
/// before it settles on a generic plan and once more whenever a table's statistics
/// change; one text per batch size made a few hundred texts of the hot path and about
/// 1.5 plans per allocation's life (ADR 022). Written for size classes, a batched
/// statement has a handful of texts.
pub fn batch_rows(rows: usize, most: usize) -> usize {
    if rows == 0 {
        return 0;
    }
    rows.next_power_of_two().min(most.max(rows))
}

/// The most rows an unchunked `IN (…)` list is padded to; a longer list keeps its own
/// length.
pub const LIST_PADDING_MOST: usize = 1024;

/// A batch written for [`batch_rows`] rows: its text and its binds come from here, so
/// they always agree. Padding rows repeat the last item, which is harmless in an
/// `IN (…)` list and in an `UPDATE … FROM (VALUES …)` join (both engines update a
/// target row once, however many join rows match it); an INSERT binds its key as NULL
/// on padding rows and reads its rows through [`Padded::insert_rows`], which leaves
/// them out.
pub struct Padded<'a, T> {
    items: &'a [T],
    rows: usize,
}

impl<'a, T> Padded<'a, T> {
    /// `items` padded to the next power of two, at most `most` (the caller's chunk size).
    pub fn new(items: &'a [T], most: usize) -> Self {
        Self { items, rows: batch_rows(items.len(), most) }
    }

    /// The batch's `IN (…)` placeholders from `$first` on.
    pub fn placeholders(&self, first: usize) -> String {
        placeholders(first, self.rows)
    }

    /// The batch's `VALUES` rows of `columns` placeholders from `$first` on.
    pub fn value_rows(&self, first: usize, columns: usize) -> String {
        value_rows(first, self.rows, columns)
    }

    /// The rows of a batched INSERT: `SELECT * FROM (VALUES …) AS batch WHERE column1
    /// IS NOT NULL`, the first column being the key that padding rows bind as NULL.
    /// Both engines name a `VALUES` list's columns `column1`, `column2`….
    pub fn insert_rows(&self, first: usize, columns: usize) -> String {
        format!("SELECT * FROM (VALUES {}) AS batch WHERE column1 IS NOT NULL", self.value_rows(first, columns))
    }

    /// Each item with `false`, then the last item again, with `true`, on each padding
    /// row.
    pub fn rows(&self) -> impl Iterator<Item = (&'a T, bool)> + use<'a, T> {
        let items = self.items;
        let padding = self.rows - items.len();
        let last = items.last().into_iter().flat_map(move |last| std::iter::repeat_n((last, true), padding));
        items.iter().map(|item| (item, false)).chain(last)
    }
}

#[derive(Debug, Clone, Copy)]
enum Access {
    ReadOnly,
    ReadWrite,
}

/// Rows one statement of [`Store::purge_in_batches`] deletes at most.
pub const PURGE_BATCH: i64 = 5_000;

/// How long a pooled connection may sit idle before it is pinged on its next acquire.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Prepared statements each PostgreSQL connection keeps, unless the URL sets
/// `statement-cache-capacity`. Batched statements take one text per batch size, so
/// the platform's hot path alone has a few hundred; with the driver's default of 100 a
/// connection kept preparing statements again and planning them as new (ADR 017).
pub const POSTGRES_STATEMENT_CACHE: usize = 1024;

/// How PostgreSQL plans the prepared statements of every connection, unless the URL
/// names `plan_cache_mode` itself (`options[plan_cache_mode]=auto`). Every statement
/// the platform prepares has a fixed shape whose plan does not depend on its values
/// (key lookups, padded batches), yet under `auto` PostgreSQL kept planning many of
/// them afresh on each call, about a tenth of its CPU under load (ADR 027).
pub const POSTGRES_PLAN_CACHE_MODE: &str = "force_generic_plan";

/// The planner's cost of a page read out of order, on every PostgreSQL connection,
/// unless the URL names `random_page_cost` itself. PostgreSQL's default (4) prices a
/// disk that seeks; the platform's tables are hot and in memory, and at the default
/// the generic plan of a padded `UPDATE … FROM (VALUES …)` joined on a primary key
/// hashed the VALUES and read the whole table (a release of GPU slots: 3 ms a
/// statement, about 0.5 ms with index probes) (ADR 031). 1.1 is the usual setting
/// for SSDs and cached data.
pub const POSTGRES_RANDOM_PAGE_COST: &str = "1.1";

/// `url` with the PostgreSQL defaults the URL leaves unset: [`POSTGRES_STATEMENT_CACHE`],
/// [`POSTGRES_PLAN_CACHE_MODE`] and [`POSTGRES_RANDOM_PAGE_COST`] (the last two are
/// startup options, so they cost no round trip).
fn with_postgres_defaults(url: &str, dialect: Dialect) -> String {
    if dialect != Dialect::Postgres {
        return url.to_owned();
    }
    let mut missing = Vec::new();
    if !url.contains("statement-cache-capacity=") {
        missing.push(format!("statement-cache-capacity={POSTGRES_STATEMENT_CACHE}"));
    }
    for (setting, value) in
        [("plan_cache_mode", POSTGRES_PLAN_CACHE_MODE), ("random_page_cost", POSTGRES_RANDOM_PAGE_COST)]
    {
        if !url.contains(setting) {
            missing.push(format!("options[{setting}]={value}"));
        }
    }
    if missing.is_empty() {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{}", missing.join("&"))
}

impl Store {
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let dialect = Dialect::from_url(url)?;
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let options = AnyConnectOptions::from_str(&with_postgres_defaults(url, dialect))
            .map_err(|source| StoreError::Connect { dialect: dialect.name(), source })?;
        let pool = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // A connection used moments ago is known good; one that sat idle may have
            // been cut (a database restart, a proxy's timeout) and is pinged first.
            // The driver's default pings on every acquire: a round trip per
            // transaction and per lone statement, on both sides (ADR 018).
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |connection, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL lets readers run beside the one writer; the long busy
                        // timeout makes writers queue instead of failing under load.
                        connection
                            .execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect { dialect: dialect.name(), source })?;
        Ok(Self { pool, dialect, write_turn: std::sync::Arc::default() })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Begins a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so a read-then-write transaction never fails half-way with
    /// `SQLITE_BUSY` when another writer commits first.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        match self.dialect {
            Dialect::Sqlite => {
                // The turn first, the connection second: a writer waiting for its turn
                // holds no pooled connection.
                let turn = self.write_turn.clone().lock_owned().await;
                let inner = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(Tx { inner, _turn: Some(turn) })
            }
            Dialect::Postgres => Ok(Tx { inner: self.pool.begin().await?, _turn: None }),
        }
    }

    /// A connection for one write statement. On PostgreSQL a statement alone is its
    /// own transaction, so this is a plain pooled connection and costs no BEGIN and
    /// COMMIT round trips; on SQLite it is a transaction holding this process's write
    /// turn (see [`Tx`]). [`OneWrite::finish`] ends it; dropping it instead rolls the
    /// SQLite transaction back.
    pub async fn one_write(&self) -> Result<OneWrite, StoreError> {
        match self.dialect {
            Dialect::Postgres => Ok(OneWrite::Alone(self.pool.acquire().await?)),
            Dialect::Sqlite => Ok(OneWrite::InTransaction(self.begin().await?)),
        }
    }

    /// Runs a read whose best plan depends on its values, such as a listing whose
    /// filters could each use an index (a rare status within one tenant's
    /// allocations). On PostgreSQL it runs in a read-only transaction that plans it
    /// with its values, where the platform otherwise keeps one generic plan per
    /// statement (ADR 027): its BEGIN and the setting are one round trip, its COMMIT
    /// another. SQLite has no such setting and runs it on a pooled connection.
    pub async fn fetch_all_with_values<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<Vec<Row>, StoreError> {
        match self.dialect {
            Dialect::Postgres => {
                let mut tx = self.begin_planned_with_values(Access::ReadOnly).await?;
                let rows = query.fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(rows)
            }
            Dialect::Sqlite => Ok(query.fetch_all(&self.pool).await?),
        }
    }

    /// Runs `delete` (a `DELETE` whose rows a subquery picks with `LIMIT $2`, older
    /// than `$1`) until it deletes less than a batch; returns how many rows went. Each
    /// batch is its own transaction, so a large purge never holds its locks, or a
    /// SQLite write turn, for long. On PostgreSQL it is planned with its values (see
    /// [`Store::fetch_all_with_values`]): whether an index range finds the old rows
    /// depends on the cutoff.
    pub async fn purge_in_batches(&self, delete: &'static str, older_than: i64) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let mut tx = match self.dialect {
                Dialect::Postgres => {
                    Tx { inner: self.begin_planned_with_values(Access::ReadWrite).await?, _turn: None }
                }
                Dialect::Sqlite => self.begin().await?,
            };
            let deleted =
                sqlx::query(delete).bind(older_than).bind(PURGE_BATCH).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            purged += deleted;
            if deleted < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }

    /// A PostgreSQL transaction whose statements are planned with their values, where
    /// the platform otherwise keeps one generic plan per statement (ADR 027); the
    /// setting travels with its BEGIN, in the same round trip.
    async fn begin_planned_with_values(
        &self,
        access: Access,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        self.pool
            .begin_with(match access {
                Access::ReadOnly => "BEGIN READ ONLY; SET LOCAL plan_cache_mode = force_custom_plan",
                Access::ReadWrite => "BEGIN; SET LOCAL plan_cache_mode = force_custom_plan",
            })
            .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_lists_and_rows_are_numbered_from_where_they_start() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
        assert_eq!(value_rows(1, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(value_rows(4, 2, 3), "($4, $5, $6), ($7, $8, $9)");
        assert_eq!(
            Padded::new(&[7], 64).insert_rows(1, 2),
            "SELECT * FROM (VALUES ($1, $2)) AS batch WHERE column1 IS NOT NULL"
        );
        assert_eq!(Padded::new(&[7, 8, 9], 64).placeholders(2), "$2, $3, $4, $5");
    }

    #[test]
    fn batches_are_padded_to_a_few_sizes_with_their_last_row() {
        assert_eq!((0..=9).map(|rows| batch_rows(rows, 64)).collect::<Vec<_>>(), [0, 1, 2, 4, 4, 8, 8, 8, 8, 16]);
        assert_eq!(batch_rows(40, 50), 50);
        assert_eq!(batch_rows(70, 50), 70);
        let rows: Vec<(&char, bool)> = Padded::new(&['a', 'b', 'c'], 64).rows().collect();
        assert_eq!(rows, [(&'a', false), (&'b', false), (&'c', false), (&'c', true)]);
        assert_eq!(Padded::<char>::new(&[], 64).rows().count(), 0);
    }

    #[test]
    fn postgres_urls_get_a_statement_cache_and_planner_settings_unless_they_set_their_own() {
        let settings = "options[plan_cache_mode]=force_generic_plan&options[random_page_cost]=1.1";
        let defaults = format!("statement-cache-capacity=1024&{settings}");
        assert_eq!(
            with_postgres_defaults("postgres://u@h/db", Dialect::Postgres),
            format!("postgres://u@h/db?{defaults}")
        );
        assert_eq!(
            with_postgres_defaults("postgres://u@h/db?sslmode=require", Dialect::Postgres),
            format!("postgres://u@h/db?sslmode=require&{defaults}")
        );
        assert_eq!(
            with_postgres_defaults("postgres://u@h/db?statement-cache-capacity=50", Dialect::Postgres),
            format!("postgres://u@h/db?statement-cache-capacity=50&{settings}")
        );
        let own = "postgres://u@h/db?statement-cache-capacity=50&options[plan_cache_mode]=auto";
        assert_eq!(with_postgres_defaults(own, Dialect::Postgres), format!("{own}&options[random_page_cost]=1.1"));
        let all_own = format!("{own}&options[random_page_cost]=4");
        assert_eq!(with_postgres_defaults(&all_own, Dialect::Postgres), all_own);
        assert_eq!(with_postgres_defaults("sqlite:/tmp/x.db", Dialect::Sqlite), "sqlite:/tmp/x.db");
    }
}

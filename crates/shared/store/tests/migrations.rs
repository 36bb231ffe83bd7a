use gpuaas_store::sqlx::{self, Row};
use gpuaas_store::{Migration, PoolSettings, Store, StoreError};
use gpuaas_testkit::{Backend, TestDatabase};

const FIRST: Migration = Migration {
    version: 1,
    name: "widgets",
    sqlite: "CREATE TABLE widgets (id TEXT PRIMARY KEY, size BIGINT NOT NULL);",
    postgres: "CREATE TABLE widgets (id TEXT PRIMARY KEY, size BIGINT NOT NULL);",
};
const SECOND: Migration = Migration {
    version: 2,
    name: "gadgets",
    sqlite: "CREATE TABLE gadgets (id TEXT PRIMARY KEY);",
    postgres: "CREATE TABLE gadgets (id TEXT PRIMARY KEY);",
};

async fn connect(backend: Backend) -> (TestDatabase, Store) {
    let database = TestDatabase::create(backend).await;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    (database, store)
}

async fn migrate_is_idempotent(backend: Backend) {
    let (_db, store) = connect(backend).await;
    assert_eq!(store.dialect().name(), backend.name());
    assert_eq!(store.migrate(&[FIRST, SECOND]).await.unwrap_or_else(|e| panic!("{e}")), vec![1, 2]);
    assert_eq!(store.migrate(&[FIRST, SECOND]).await.unwrap_or_else(|e| panic!("{e}")), Vec::<i64>::new());
    store.ensure_schema_current(&[FIRST, SECOND]).await.unwrap_or_else(|e| panic!("{e}"));
}

async fn a_newer_schema_is_refused(backend: Backend) {
    let (_db, store) = connect(backend).await;
    store.migrate(&[FIRST, SECOND]).await.unwrap_or_else(|e| panic!("{e}"));
    // A binary that only knows the first migration meets a database that has the second.
    let error = store.ensure_schema_current(&[FIRST]).await.err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(error, StoreError::SchemaNewer { ref unknown } if unknown == &vec![2]), "{error}");
    assert!(matches!(store.migrate(&[FIRST]).await, Err(StoreError::SchemaNewer { .. })));
}

async fn a_schema_behind_is_reported(backend: Backend) {
    let (_db, store) = connect(backend).await;
    store.migrate(&[FIRST]).await.unwrap_or_else(|e| panic!("{e}"));
    let error = store.ensure_schema_current(&[FIRST, SECOND]).await.err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(error, StoreError::SchemaBehind { pending: 1 }), "{error}");
}

async fn an_edited_migration_is_refused(backend: Backend) {
    let (_db, store) = connect(backend).await;
    store.migrate(&[FIRST]).await.unwrap_or_else(|e| panic!("{e}"));
    let edited =
        Migration { sqlite: "CREATE TABLE widgets (id TEXT);", postgres: "CREATE TABLE widgets (id TEXT);", ..FIRST };
    assert!(matches!(store.migrate(&[edited]).await, Err(StoreError::MigrationChanged { version: 1, .. })));
}

async fn a_failing_migration_leaves_nothing_behind(backend: Backend) {
    let (_db, store) = connect(backend).await;
    let broken = Migration {
        version: 3,
        name: "broken",
        sqlite: "CREATE TABLE half (id TEXT); INSERT INTO nowhere VALUES (1);",
        postgres: "CREATE TABLE half (id TEXT); INSERT INTO nowhere VALUES (1);",
    };
    assert!(matches!(store.migrate(&[FIRST, broken]).await, Err(StoreError::MigrationFailed { version: 3, .. })));
    let status = store.schema_status(&[FIRST, broken]).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.applied, vec![1]);
    assert_eq!(status.pending, vec![3]);
    assert!(sqlx::query("SELECT * FROM half").fetch_all(store.pool()).await.is_err(), "partial migration kept");
}

async fn unique_violations_are_recognised(backend: Backend) {
    let (_db, store) = connect(backend).await;
    store.migrate(&[FIRST]).await.unwrap_or_else(|e| panic!("{e}"));
    let insert = || sqlx::query("INSERT INTO widgets (id, size) VALUES ($1, $2)").bind("w-1").bind(3_i64);
    insert().execute(store.pool()).await.unwrap_or_else(|e| panic!("{e}"));
    let error = StoreError::from(insert().execute(store.pool()).await.err().unwrap_or_else(|| panic!("accepted")));
    assert!(error.is_unique_violation());
}

async fn concurrent_writers_all_commit(backend: Backend) {
    let (_db, store) = connect(backend).await;
    store.migrate(&[FIRST]).await.unwrap_or_else(|e| panic!("{e}"));
    let mut tasks = Vec::new();
    for n in 0..40_i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
            let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM widgets")
                .fetch_one(&mut *tx)
                .await
                .and_then(|row| row.try_get("n"))
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::query("INSERT INTO widgets (id, size) VALUES ($1, $2)")
                .bind(format!("w-{n}"))
                .bind(total)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        }));
    }
    for task in tasks {
        task.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM widgets")
        .fetch_one(store.pool())
        .await
        .and_then(|row| row.try_get("n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(total, 40);
}

gpuaas_testkit::both_backends!(
    migrate_is_idempotent,
    a_newer_schema_is_refused,
    a_schema_behind_is_reported,
    an_edited_migration_is_refused,
    a_failing_migration_leaves_nothing_behind,
    unique_violations_are_recognised,
    concurrent_writers_all_commit,
);

#[tokio::test]
async fn unsupported_urls_are_refused_clearly() {
    let error = Store::connect("mysql://localhost/x", &PoolSettings::default()).await.err();
    assert!(matches!(error, Some(StoreError::UnsupportedUrl)));
}

/// Acquires skip the driver's ping on connections used moments ago, so a connection
/// the server cut must still be caught once it has sat idle: the next statement gets a
/// fresh connection instead of an I/O error.
#[tokio::test]
async fn a_postgres_connection_cut_while_idle_is_replaced_on_its_next_use() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let settings = PoolSettings { max_connections: 1, ..PoolSettings::default() };
    let store = Store::connect(&database.url, &settings).await.unwrap_or_else(|e| panic!("{e}"));
    let backend_pid = || async {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let first = backend_pid().await;
    let admin = Store::connect(&database.url, &settings).await.unwrap_or_else(|e| panic!("{e}"));
    let cut: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(admin.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cut);
    tokio::time::sleep(gpuaas_store::PING_IDLE_AFTER + std::time::Duration::from_millis(300)).await;
    let second = backend_pid().await;
    assert_ne!(first, second);
}

//! Padded batches (ADR 022) change only a statement's text, never what it does: on
//! both engines an INSERT leaves its padding rows out, an upsert meets each key once,
//! and an UPDATE joined to repeated rows changes each target row once.

use gpuaas_store::sqlx::{self, Row};
use gpuaas_store::{Padded, PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};

async fn counters(backend: Backend) -> (TestDatabase, Store) {
    let database = TestDatabase::create(backend).await;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("CREATE TABLE counters (id TEXT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (database, store)
}

async fn values(store: &Store) -> Vec<(String, i64)> {
    sqlx::query("SELECT id, n FROM counters ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|row| (row.get("id"), row.get("n")))
        .collect()
}

const ROWS: [(&str, i64); 3] = [("a", 1), ("b", 2), ("c", 3)];

async fn insert(store: &Store, upsert: bool) -> u64 {
    let batch = Padded::new(&ROWS, 64);
    let conflict = if upsert { " ON CONFLICT (id) DO UPDATE SET n = counters.n + excluded.n" } else { "" };
    let sql = format!("INSERT INTO counters (id, n) {}{conflict}", batch.insert_rows(1, 2));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for ((id, n), padding) in batch.rows() {
        query = query.bind((!padding).then_some(*id)).bind(*n);
    }
    query.execute(store.pool()).await.unwrap_or_else(|e| panic!("{e}")).rows_affected()
}

async fn padded_rows_change_nothing_twice(backend: Backend) {
    let (_db, store) = counters(backend).await;
    // Three rows are written for four: the fourth repeats the last one.
    assert_eq!(Padded::new(&ROWS, 64).rows().count(), 4);

    assert_eq!(insert(&store, false).await, 3);
    assert_eq!(values(&store).await, [("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]);

    assert_eq!(insert(&store, true).await, 3);
    assert_eq!(values(&store).await, [("a".into(), 2), ("b".into(), 4), ("c".into(), 6)]);

    let batch = Padded::new(&ROWS, 64);
    let sql = format!(
        "WITH added (id, n) AS (VALUES {}) UPDATE counters SET n = counters.n + added.n FROM added \
         WHERE counters.id = added.id",
        batch.value_rows(1, 2)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for ((id, n), _) in batch.rows() {
        query = query.bind(*id).bind(*n);
    }
    assert_eq!(query.execute(store.pool()).await.unwrap_or_else(|e| panic!("{e}")).rows_affected(), 3);
    assert_eq!(values(&store).await, [("a".into(), 3), ("b".into(), 6), ("c".into(), 9)]);

    let ids = ["c", "a"];
    let batch = Padded::new(&ids, 64);
    let sql = format!("SELECT id FROM counters WHERE id IN ({}) ORDER BY id", batch.placeholders(1));
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
    for (id, _) in batch.rows() {
        query = query.bind(*id);
    }
    assert_eq!(query.fetch_all(store.pool()).await.unwrap_or_else(|e| panic!("{e}")), ["a", "c"]);
}

gpuaas_testkit::both_backends!(padded_rows_change_nothing_twice);

//! The both_backends! macro runs a body once per backend on a fresh database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gpuaas_testkit::{Backend, TestDatabase};
use sqlx::Connection as _;

async fn fresh_database_accepts_writes(backend: Backend) {
    sqlx::any::install_default_drivers();
    let db = TestDatabase::create(backend).await;
    assert_eq!(db.backend, backend);
    assert!(db.url.starts_with(backend.name()), "{}", db.url);

    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::query("CREATE TABLE items (id BIGINT PRIMARY KEY)").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO items (id) VALUES (1), (2)").execute(&mut conn).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM items").fetch_one(&mut conn).await.unwrap();
    assert_eq!(count, 2);
}

async fn databases_start_empty(backend: Backend) {
    sqlx::any::install_default_drivers();
    // Both create a table of the same name: only works if each is fresh.
    for _ in 0..2 {
        let db = TestDatabase::create(backend).await;
        let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        sqlx::query("CREATE TABLE items (id BIGINT PRIMARY KEY)").execute(&mut conn).await.unwrap();
    }
}

gpuaas_testkit::both_backends!(fresh_database_accepts_writes, databases_start_empty,);

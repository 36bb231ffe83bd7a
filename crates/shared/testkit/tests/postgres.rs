//! TestDatabase on PostgreSQL: reachable, and every database is a new one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gpuaas_testkit::{Backend, TestDatabase};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_databases_are_reachable_and_distinct() {
    let a = TestDatabase::create(Backend::Postgres).await;
    let b = TestDatabase::create(Backend::Postgres).await;
    assert_eq!(a.backend, Backend::Postgres);
    assert_ne!(a.url, b.url);

    let mut conn_a = PgConnection::connect(&a.url).await.unwrap();
    let mut conn_b = PgConnection::connect(&b.url).await.unwrap();

    let name_a: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn_a).await.unwrap();
    let name_b: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn_b).await.unwrap();
    assert_ne!(name_a, name_b);
    assert!(name_a.starts_with("t_"), "{name_a}");
    assert!(a.url.ends_with(&format!("/{name_a}")), "{}", a.url);

    // A table made in one database is not visible in the other.
    sqlx::query("CREATE TABLE only_in_a (id BIGINT PRIMARY KEY)").execute(&mut conn_a).await.unwrap();
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_in_a'")
        .fetch_one(&mut conn_b)
        .await
        .unwrap();
    assert_eq!(in_b, 0);
}

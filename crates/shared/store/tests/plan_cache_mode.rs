//! PostgreSQL connections plan the platform's prepared statements once (ADR 027): the
//! setting travels in every pooled connection's startup packet, and a URL that names
//! `plan_cache_mode` keeps its own; reads that need plans for their values get them in
//! a transaction of their own. They also price a random page read as cached data
//! (ADR 031), unless the URL names `random_page_cost`.

use gpuaas_store::sqlx::{self, Row};
use gpuaas_store::{POSTGRES_PLAN_CACHE_MODE, POSTGRES_RANDOM_PAGE_COST, PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};

/// `plan_cache_mode` as each of `connections` pooled connections, all held at once, sees it.
async fn modes(url: &str, connections: u32) -> Vec<String> {
    let settings = PoolSettings { max_connections: connections, ..PoolSettings::default() };
    let store = Store::connect(url, &settings).await.unwrap_or_else(|e| panic!("{e}"));
    let mut held = Vec::new();
    for _ in 0..connections {
        held.push(store.pool().acquire().await.unwrap_or_else(|e| panic!("{e}")));
    }
    let mut seen = Vec::new();
    for connection in &mut held {
        seen.push(mode(connection).await);
    }
    seen
}

#[tokio::test]
async fn postgres_connections_use_generic_plans_unless_the_url_says_otherwise() {
    let database = TestDatabase::create(Backend::Postgres).await;
    assert_eq!(modes(&database.url, 3).await, vec![POSTGRES_PLAN_CACHE_MODE; 3]);

    let separator = if database.url.contains('?') { '&' } else { '?' };
    let own = format!("{}{separator}options[plan_cache_mode]=auto", database.url);
    assert_eq!(modes(&own, 2).await, ["auto", "auto"]);
}

#[tokio::test]
async fn postgres_connections_price_random_reads_as_cached_unless_the_url_says_otherwise() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let cost = |url: String| async move {
        let store = Store::connect(&url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let cost: String = sqlx::query_scalar("SELECT current_setting('random_page_cost')")
            .fetch_one(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        cost
    };
    assert_eq!(cost(database.url.clone()).await, POSTGRES_RANDOM_PAGE_COST);
    let separator = if database.url.contains('?') { '&' } else { '?' };
    assert_eq!(cost(format!("{}{separator}options[random_page_cost]=4", database.url)).await, "4");
}

/// `plan_cache_mode` as `connection` sees it.
async fn mode(connection: &mut gpuaas_store::Connection) -> String {
    sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
        .fetch_one(connection)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn reads_with_values_are_planned_per_call_and_leave_the_connection_as_it_was() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let settings = PoolSettings { max_connections: 1, ..PoolSettings::default() };
    let store = Store::connect(&database.url, &settings).await.unwrap_or_else(|e| panic!("{e}"));

    let setting = sqlx::query("SELECT current_setting('plan_cache_mode') AS mode");
    let rows = store.fetch_all_with_values(setting).await.unwrap_or_else(|e| panic!("{e}"));
    let mode_inside: String = rows[0].try_get("mode").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mode_inside, "force_custom_plan");

    let write = sqlx::query("CREATE TABLE written (id TEXT)");
    assert!(store.fetch_all_with_values(write).await.is_err(), "a read may not write");

    // The pool's one connection, after both reads, the failed one included: the
    // setting was the transaction's.
    let mut connection = store.pool().acquire().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mode(&mut connection).await, POSTGRES_PLAN_CACHE_MODE);
}

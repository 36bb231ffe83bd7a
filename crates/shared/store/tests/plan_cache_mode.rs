//! PostgreSQL connections plan the platform's prepared statements once (ADR 027): the
//! setting travels in every pooled connection's startup packet, and a URL that names
//! `plan_cache_mode` keeps its own.

use gpuaas_store::sqlx;
use gpuaas_store::{POSTGRES_PLAN_CACHE_MODE, PoolSettings, Store};
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
        let mode: String = sqlx::query_scalar("SELECT current_setting('plan_cache_mode')")
            .fetch_one(&mut **connection)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        seen.push(mode);
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

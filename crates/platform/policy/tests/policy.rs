use std::time::Duration;

use gpuaas_policy::{PolicyClient, PolicyError, PolicyKey, keys};
use gpuaas_store::{PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};

async fn setup(backend: Backend) -> (TestDatabase, Store) {
    let database = TestDatabase::create(backend).await;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    store.migrate(gpuaas_policy::MIGRATIONS).await.unwrap_or_else(|e| panic!("{e}"));
    (database, store)
}

async fn every_key_is_seeded_and_typed(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let policy = PolicyClient::new(store, Duration::ZERO);
    for key in keys::ALL_I64 {
        let value = policy.get(*key).await.unwrap_or_else(|e| panic!("{}: {e}", key.name));
        assert!(value >= 0, "{}", key.name);
    }
    for key in keys::ALL_BOOL {
        policy.get(*key).await.unwrap_or_else(|e| panic!("{}: {e}", key.name));
    }
    let currencies = policy.get(keys::PAYMENTS_CURRENCIES).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(currencies.iter().all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())), "{currencies:?}");
    let strategy = policy.get(keys::ALLOCATIONS_PLACEMENT_STRATEGY).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(strategy, "best_fit");
    assert_eq!(policy.get(keys::OUTBOX_MAX_ATTEMPTS).await.unwrap_or_default(), 10);
    assert_eq!(policy.get(keys::RATELIMIT_AUTH_BURST).await.unwrap_or_default(), 20);
    assert_eq!(policy.get(keys::RATELIMIT_READ_PER_MINUTE).await.unwrap_or_default(), 600);
}

async fn cached_values_expire_and_writes_invalidate(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let cached = PolicyClient::new(store.clone(), Duration::from_secs(3600));
    let writer = PolicyClient::new(store.clone(), Duration::ZERO);
    assert_eq!(cached.get(keys::OUTBOX_MAX_ATTEMPTS).await.unwrap_or_default(), 10);
    writer.set(keys::OUTBOX_MAX_ATTEMPTS, &4).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cached.get(keys::OUTBOX_MAX_ATTEMPTS).await.unwrap_or_default(), 10, "served from cache");
    assert_eq!(writer.get(keys::OUTBOX_MAX_ATTEMPTS).await.unwrap_or_default(), 4, "no cache, fresh value");
    cached.set(keys::OUTBOX_MAX_ATTEMPTS, &5).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cached.get(keys::OUTBOX_MAX_ATTEMPTS).await.unwrap_or_default(), 5, "own write drops the cache");
}

async fn missing_and_mistyped_values_are_errors(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let policy = PolicyClient::new(store, Duration::ZERO);
    const NOT_SEEDED: PolicyKey<i64> = PolicyKey::new("no.such.key");
    assert!(matches!(policy.get(NOT_SEEDED).await, Err(PolicyError::Missing("no.such.key"))));
    const AS_TEXT: PolicyKey<String> = PolicyKey::new("outbox.max_attempts");
    assert!(matches!(policy.get(AS_TEXT).await, Err(PolicyError::Invalid { .. })));
    policy.set(keys::IDEMPOTENCY_TTL_SECONDS, &-5).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(policy.get_duration_secs(keys::IDEMPOTENCY_TTL_SECONDS).await, Err(PolicyError::Invalid { .. })));
}

/// A caller inside a transaction on a pool of one connection: reading from the pool
/// would wait for the connection it holds itself.
async fn a_read_in_a_transaction_uses_its_connection(backend: Backend) {
    let (database, migrated) = setup(backend).await;
    migrated.close().await;
    let pool = PoolSettings { max_connections: 1, acquire_timeout: Duration::from_millis(500) };
    let store = Store::connect(&database.url, &pool).await.unwrap_or_else(|e| panic!("{e}"));
    let policy = PolicyClient::new(store.clone(), Duration::ZERO);
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(policy.get(keys::OUTBOX_MAX_ATTEMPTS).await.is_err(), "the pool's one connection is taken");
    assert_eq!(policy.get_in(&mut tx, keys::OUTBOX_MAX_ATTEMPTS).await.unwrap_or_else(|e| panic!("{e}")), 10);
    let ttl =
        policy.get_duration_secs_in(&mut tx, keys::IDEMPOTENCY_TTL_SECONDS).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(ttl > Duration::ZERO);
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
}

gpuaas_testkit::both_backends!(
    a_read_in_a_transaction_uses_its_connection,
    every_key_is_seeded_and_typed,
    cached_values_expire_and_writes_invalidate,
    missing_and_mistyped_values_are_errors,
);

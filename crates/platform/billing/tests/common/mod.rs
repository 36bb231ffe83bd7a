//! Helpers shared by the billing test binaries.
#![allow(dead_code)]

use gpuaas_billing::{BillingError, EntryType, NewEntry, Posted};
use gpuaas_store::sqlx::{self, Row};
use gpuaas_store::{PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};

pub async fn setup(backend: Backend) -> (TestDatabase, Store) {
    let database = TestDatabase::create(backend).await;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    store.migrate(gpuaas_billing::MIGRATIONS).await.unwrap_or_else(|e| panic!("{e}"));
    (database, store)
}

pub fn new_entry<'a>(tenant_id: &'a str, entry_type: EntryType, amount_minor: i64, key: &'a str) -> NewEntry<'a> {
    NewEntry {
        tenant_id,
        entry_type,
        amount_minor,
        currency: "EUR",
        idempotency_key: key,
        reference_type: "test",
        reference_id: key,
        correlation_id: "corr-1",
        created_by: "tester",
        description: None,
    }
}

/// Posts in a transaction of its own: committed when accepted, rolled back otherwise.
pub async fn post_one(store: &Store, entry: &NewEntry<'_>, every: i64) -> Result<Posted, BillingError> {
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    match gpuaas_billing::post(&mut tx, store.dialect(), entry, every).await {
        Ok(posted) => {
            tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
            Ok(posted)
        }
        Err(error) => {
            tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
            Err(error)
        }
    }
}

pub async fn post_ok(store: &Store, entry: &NewEntry<'_>, every: i64) -> Posted {
    post_one(store, entry, every).await.unwrap_or_else(|e| panic!("{e}"))
}

pub async fn balance_of(store: &Store, tenant_id: &str) -> i64 {
    gpuaas_billing::balance(store, tenant_id).await.unwrap_or_else(|e| panic!("{e}")).amount_minor
}

/// The balance the slow way: every entry summed.
pub async fn full_sum(store: &Store, tenant_id: &str) -> i64 {
    sqlx::query("SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) AS s FROM ledger_entries WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(store.pool())
        .await
        .and_then(|row| row.try_get::<i64, _>("s"))
        .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn entry_nos(store: &Store, tenant_id: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT entry_no FROM ledger_entries WHERE tenant_id = $1 ORDER BY entry_no")
        .bind(tenant_id)
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// (entry_no, balance_minor) of the tenant's checkpoints, in order.
pub async fn checkpoints(store: &Store, tenant_id: &str) -> Vec<(i64, i64)> {
    sqlx::query(
        "SELECT c.entry_no, c.balance_minor FROM ledger_checkpoints c JOIN billing_accounts a ON a.id = c.account_id \
         WHERE a.tenant_id = $1 ORDER BY c.entry_no",
    )
    .bind(tenant_id)
    .fetch_all(store.pool())
    .await
    .and_then(|rows| rows.iter().map(|row| Ok((row.try_get("entry_no")?, row.try_get("balance_minor")?))).collect())
    .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn count(store: &Store, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Checkpoints every `every` entries, each equal to the sum of the entries up to it.
pub fn expected_checkpoints(amounts: &[i64], every: i64) -> Vec<(i64, i64)> {
    let mut running = 0;
    let mut out = Vec::new();
    for (index, amount) in amounts.iter().enumerate() {
        running += amount;
        let entry_no = index as i64 + 1;
        if entry_no % every == 0 {
            out.push((entry_no, running));
        }
    }
    out
}

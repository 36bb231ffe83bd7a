//! Metering on both databases: window debits of open usage records, exact and
//! idempotent, the final partial window at close, and balance crossings announced once
//! (depletion also stopping the tenant's metering).

mod common;

use std::collections::BTreeSet;

use common::{balance_of, count, entry_nos, new_entry, post_ok};
use gpuaas_billing::accrual::{AccrualSettings, BalanceState, accrue, check_balances, close_usage, cost_through};
use gpuaas_billing::{EntryType, NewUsageRecord, insert_usage_record};
use gpuaas_kernel::Timestamp;
use gpuaas_store::{Store, sqlx};
use gpuaas_testkit::Backend;

const SECOND: i64 = 1_000_000;

/// Billing's tables and the outbox its crossings are queued in.
async fn setup_with_outbox(backend: Backend) -> (gpuaas_testkit::TestDatabase, Store) {
    let database = gpuaas_testkit::TestDatabase::create(backend).await;
    let store =
        Store::connect(&database.url, &gpuaas_store::PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let migrations = [gpuaas_billing::MIGRATIONS, gpuaas_outbox::MIGRATIONS].concat();
    store.migrate(&migrations).await.unwrap_or_else(|e| panic!("{e}"));
    (database, store)
}

/// Opens a usage record for `allocation` that started `seconds_ago` seconds ago.
async fn open(store: &Store, tenant: &str, allocation: &str, seconds_ago: i64, price: i64) {
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let record = NewUsageRecord {
        tenant_id: tenant,
        project_id: "p1",
        allocation_id: allocation,
        sku_id: "h100",
        gpu_count: 2,
        price_per_gpu_hour_minor: price,
        currency: "EUR",
        started_at: Timestamp::from_micros(Timestamp::now().as_micros() - seconds_ago * SECOND),
        ended_at: None,
        billed_seconds: 0,
        billed_minor: 0,
    };
    insert_usage_record(&mut tx, &record).await.unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
}

async fn events(store: &Store, subject: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox_events WHERE subject = $1")
        .bind(subject)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn open_records(store: &Store, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM usage_records WHERE tenant_id = $1 AND ended_at IS NULL")
        .bind(tenant)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

gpuaas_testkit::both_backends!(
    windows_are_debited_once_and_close_bills_the_rest,
    crossings_are_announced_once,
    shared_cycles_debit_every_record_once
);

async fn windows_are_debited_once_and_close_bills_the_rest(backend: Backend) {
    let (_db, store) = setup_with_outbox(backend).await;
    post_ok(&store, &new_entry("t1", EntryType::AdminCredit, 1_000_000, "credit"), 100).await;
    // 3,600 per GPU-hour × 2 GPUs: 2 per second. 185 s ago with 60 s windows: 3 whole windows.
    open(&store, "t1", "a1", 185, 3_600).await;
    let settings = AccrualSettings { window_seconds: 60, checkpoint_every: 100, batch: 10, workers: 2 };
    let report = accrue(&store, Timestamp::now(), &settings).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.records, report.entries, report.debited_minor), (1, 3, 360));
    assert_eq!(report.tenants, BTreeSet::from(["t1".to_owned()]));
    // Again at once: no whole window has passed since.
    let again = accrue(&store, Timestamp::now(), &settings).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.entries, 0);
    assert_eq!(balance_of(&store, "t1").await, 1_000_000 - 360);

    // Closing bills the partial window (5 s) and nothing after.
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let total = close_usage(&mut tx, store.dialect(), "a1", Timestamp::now(), 60, 100, "close")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let total = total.unwrap_or_else(|| panic!("the record was open"));
    assert!((370..=372).contains(&total), "185 s at 2/s: {total}");
    assert_eq!(balance_of(&store, "t1").await, 1_000_000 - total);
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let closed_again = close_usage(&mut tx, store.dialect(), "a1", Timestamp::now(), 60, 100, "close")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(closed_again, None, "a closed record bills nothing more");
    assert_eq!(accrue(&store, Timestamp::now(), &settings).await.unwrap_or_else(|e| panic!("{e}")).entries, 0);
    assert_eq!(count(&store, "ledger_entries").await, 1 + 4);
    assert_eq!(cost_through(3_600, 2, 185), 370);
}

async fn crossings_are_announced_once(backend: Backend) {
    let (_db, store) = setup_with_outbox(backend).await;
    let tenants = BTreeSet::from(["t1".to_owned()]);
    let check = |store: Store| {
        let tenants = tenants.clone();
        async move { check_balances(&store, &tenants, 1_000, "test").await.unwrap_or_else(|e| panic!("{e}")) }
    };
    post_ok(&store, &new_entry("t1", EntryType::AdminCredit, 5_000, "credit-1"), 100).await;
    assert!(check(store.clone()).await.is_empty(), "well above the threshold");

    // Into low: one warning; staying low: nothing more.
    post_ok(&store, &new_entry("t1", EntryType::UsageDebit, -4_200, "use-1"), 100).await;
    let alerts = check(store.clone()).await;
    assert_eq!(alerts.iter().map(|a| (a.from, a.to)).collect::<Vec<_>>(), [(BalanceState::Ok, BalanceState::Low)]);
    assert!(check(store.clone()).await.is_empty());
    assert_eq!(events(&store, "platform.billing.low_balance_warning").await, 1);

    // Depleted: one event, and the tenant's open metering stops at its billed point.
    open(&store, "t1", "a1", 30, 3_600).await;
    post_ok(&store, &new_entry("t1", EntryType::UsageDebit, -900, "use-2"), 100).await;
    let alerts = check(store.clone()).await;
    assert_eq!(alerts.iter().map(|a| a.to).collect::<Vec<_>>(), [BalanceState::Depleted]);
    assert_eq!(events(&store, "platform.billing.balance_depleted").await, 1);
    assert_eq!(open_records(&store, "t1").await, 0, "metering stopped");
    assert!(check(store.clone()).await.is_empty());
    assert_eq!(events(&store, "platform.billing.low_balance_warning").await, 1, "no second warning");

    // A top-up re-arms both: the next fall is announced again.
    post_ok(&store, &new_entry("t1", EntryType::AdminCredit, 10_000, "credit-2"), 100).await;
    let alerts = check(store.clone()).await;
    assert_eq!(alerts.iter().map(|a| a.to).collect::<Vec<_>>(), [BalanceState::Ok]);
    post_ok(&store, &new_entry("t1", EntryType::UsageDebit, -9_500, "use-3"), 100).await;
    check(store.clone()).await;
    assert_eq!(events(&store, "platform.billing.low_balance_warning").await, 2);
}

/// A cycle split between workers (shares of 300 tenants each), run twice at once as
/// two billing workers would: every record's windows are debited once, each
/// tenant's entries are numbered without a gap, and a later cycle finds nothing.
async fn shared_cycles_debit_every_record_once(backend: Backend) {
    let (_db, store) = setup_with_outbox(backend).await;
    let tenants: Vec<String> = (0..600).map(|index| format!("tenant-{index:03}")).collect();
    let started_at = Timestamp::from_micros(Timestamp::now().as_micros() - 185 * SECOND);
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    for (index, tenant) in tenants.iter().enumerate() {
        for run in 0..2 {
            let allocation = format!("a-{index}-{run}");
            let record = NewUsageRecord {
                tenant_id: tenant,
                project_id: "p1",
                allocation_id: &allocation,
                sku_id: "h100",
                gpu_count: 2,
                price_per_gpu_hour_minor: 3_600,
                currency: "EUR",
                started_at,
                ended_at: None,
                billed_seconds: 0,
                billed_minor: 0,
            };
            insert_usage_record(&mut tx, &record).await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));

    let settings = AccrualSettings { window_seconds: 60, checkpoint_every: 4, batch: 50, workers: 2 };
    let now = Timestamp::now();
    let (first, second) = tokio::join!(accrue(&store, now, &settings), accrue(&store, now, &settings));
    let (first, second) = (first.unwrap_or_else(|e| panic!("{e}")), second.unwrap_or_else(|e| panic!("{e}")));
    // 2 GPUs at 3,600 per GPU-hour: 2 per second, 120 a window, three whole windows.
    assert_eq!(first.entries + second.entries, 600 * 2 * 3);
    assert_eq!(first.debited_minor + second.debited_minor, 600 * 2 * 360);
    assert_eq!(count(&store, "ledger_entries").await, 600 * 2 * 3);
    let debited: BTreeSet<String> = first.tenants.union(&second.tenants).cloned().collect();
    assert_eq!(debited, tenants.iter().cloned().collect::<BTreeSet<_>>());
    for tenant in [&tenants[0], &tenants[255], &tenants[256], &tenants[299], &tenants[300], &tenants[599]] {
        assert_eq!(balance_of(&store, tenant).await, -720, "{tenant}");
        let numbers = entry_nos(&store, tenant).await;
        let from = numbers.first().copied().unwrap_or_default();
        assert_eq!(numbers, (from..from + 6).collect::<Vec<_>>(), "{tenant}");
    }
    let again = accrue(&store, Timestamp::now(), &settings).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((again.records, again.entries), (0, 0));
}

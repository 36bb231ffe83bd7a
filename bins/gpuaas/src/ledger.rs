//! `gpuaas ledger verify` and `gpuaas bench ledger`: operator tools over the ledger.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use gpuaas_billing::{EntryType, NewEntry};
use gpuaas_store::{PoolSettings, Store};

/// Recomputes every account from its first entry and checks every checkpoint and the
/// entry numbering. Returns whether the ledger is clean.
pub async fn verify(store: &Store) -> anyhow::Result<bool> {
    let started = Instant::now();
    let report = gpuaas_billing::verify(store).await.context("verifying the ledger")?;
    println!(
        "ledger verify: {} accounts, {} entries, {} checkpoints checked in {:.1} s",
        report.accounts,
        report.entries,
        report.checkpoints,
        started.elapsed().as_secs_f64()
    );
    if report.mismatches.is_empty() {
        println!("ledger is clean");
        return Ok(true);
    }
    for mismatch in &report.mismatches {
        println!("MISMATCH {mismatch}");
    }
    println!("{} mismatches", report.mismatches.len());
    Ok(false)
}

/// What `gpuaas bench ledger` measures.
#[derive(Debug, Clone)]
pub struct LedgerBench {
    pub entries: u64,
    pub accounts: u64,
    pub batch: usize,
    pub writers: usize,
    pub reads: usize,
    pub checkpoint_every: i64,
}

/// Posts `entries` ledger rows round-robin over `accounts` tenants in batches (one
/// transaction each) from `writers` concurrent writers, each owning a disjoint share of
/// the accounts (the way billing workers shard tenants), then refreshes the planner's
/// statistics, as an operator would after a bulk load, reads `reads` balances of random
/// accounts, and prints inserts per second and the balance-read latency percentiles.
pub async fn bench(database_url: &str, settings: &LedgerBench) -> anyhow::Result<()> {
    let store = Store::connect(database_url, &PoolSettings::default()).await?;
    store.migrate(&crate::migrations()).await?;
    let tenants: Vec<String> = (0..settings.accounts).map(|i| format!("bench-tenant-{i:06}")).collect();
    let writers = settings.writers.clamp(1, 64) as u64;
    let started = Instant::now();
    let posted = std::sync::atomic::AtomicU64::new(0);
    let mut tasks = Vec::new();
    for writer in 0..writers {
        tasks.push(post_share(&store, &tenants, settings, writer, writers, &posted, started));
    }
    futures::future::try_join_all(tasks).await?;
    let insert_seconds = started.elapsed().as_secs_f64();
    let refresh = match store.dialect() {
        gpuaas_store::Dialect::Postgres => "VACUUM (ANALYZE) ledger_entries",
        gpuaas_store::Dialect::Sqlite => "ANALYZE",
    };
    gpuaas_store::sqlx::query(refresh).execute(store.pool()).await.context("refreshing planner statistics")?;

    let mut latencies = Vec::with_capacity(settings.reads);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..settings.reads {
        // xorshift: a cheap, reproducible spread over the accounts.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let tenant = &tenants[(state % settings.accounts) as usize];
        let read = Instant::now();
        gpuaas_billing::balance(&store, tenant).await?;
        latencies.push(read.elapsed());
    }
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "ledger benchmark on {}: {} entries over {} accounts in batches of {} from {} writers",
        store.dialect().name(),
        settings.entries,
        settings.accounts,
        settings.batch.max(1),
        writers
    );
    println!("  inserts: {:.0} entries/s ({:.1} s)", settings.entries as f64 / insert_seconds, insert_seconds);
    println!(
        "  balance reads ({}): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        settings.reads,
        percentile(0.50),
        percentile(0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    store.close().await;
    Ok(())
}

/// One writer's share: the entries numbered `writer`, `writer + writers`, … , so its
/// accounts (entry number modulo the account count) are its own when `writers` divides
/// the account count.
async fn post_share(
    store: &Store,
    tenants: &[String],
    settings: &LedgerBench,
    writer: u64,
    writers: u64,
    posted: &std::sync::atomic::AtomicU64,
    started: Instant,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let batch = settings.batch.max(1);
    let accounts = settings.accounts.max(1);
    let mut numbers = (writer..settings.entries).step_by(writers as usize).peekable();
    let mut last_report = Instant::now();
    while numbers.peek().is_some() {
        let chunk: Vec<u64> = numbers.by_ref().take(batch).collect();
        let keys: Vec<String> = chunk.iter().map(|n| format!("bench-{n}")).collect();
        let entries: Vec<NewEntry<'_>> = chunk
            .iter()
            .zip(&keys)
            .map(|(&n, key)| {
                let tenant = &tenants[(n % accounts) as usize];
                // Mostly usage debits with a top-up now and then, like a real account.
                let (entry_type, amount_minor) = if n % 10 == 0 {
                    (EntryType::AdminCredit, 10_000)
                } else {
                    (EntryType::UsageDebit, -(1 + (n % 97) as i64))
                };
                NewEntry {
                    tenant_id: tenant,
                    entry_type,
                    amount_minor,
                    currency: "USD",
                    idempotency_key: key,
                    reference_type: "bench",
                    reference_id: key,
                    correlation_id: "bench",
                    created_by: "bench",
                    description: None,
                }
            })
            .collect();
        let mut tx = store.begin().await?;
        gpuaas_billing::post_many(&mut tx, store.dialect(), &entries, settings.checkpoint_every).await?;
        tx.commit().await?;
        let total = posted.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        if writer == 0 && last_report.elapsed() > Duration::from_secs(10) {
            println!("  {total} entries posted ({:.0}/s)", total as f64 / started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
    }
    Ok(())
}

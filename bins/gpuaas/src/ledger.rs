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
    pub reads: usize,
    pub checkpoint_every: i64,
}

/// Posts `entries` ledger rows round-robin over `accounts` tenants in batches (one
/// transaction each), then reads `reads` balances of random accounts, and prints
/// inserts per second and the balance-read latency percentiles.
pub async fn bench(database_url: &str, settings: &LedgerBench) -> anyhow::Result<()> {
    let store = Store::connect(database_url, &PoolSettings::default()).await?;
    store.migrate(&crate::migrations()).await?;
    let tenants: Vec<String> = (0..settings.accounts).map(|i| format!("bench-tenant-{i:06}")).collect();
    let batch = settings.batch.max(1) as u64;
    let started = Instant::now();
    let mut posted = 0u64;
    let mut last_report = Instant::now();
    while posted < settings.entries {
        let size = batch.min(settings.entries - posted);
        let keys: Vec<String> = (posted..posted + size).map(|n| format!("bench-{n}")).collect();
        let entries: Vec<NewEntry<'_>> = (posted..posted + size)
            .zip(&keys)
            .map(|(n, key)| {
                let tenant = &tenants[(n % settings.accounts) as usize];
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
        posted += size;
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("  {posted} entries posted ({:.0}/s)", posted as f64 / started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
    }
    let insert_seconds = started.elapsed().as_secs_f64();

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
        "ledger benchmark on {}: {} entries over {} accounts in batches of {}",
        store.dialect().name(),
        settings.entries,
        settings.accounts,
        batch
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

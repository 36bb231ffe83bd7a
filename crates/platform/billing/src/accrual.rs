//! Per-second metering. An open usage record is debited window by window (the
//! policy's `billing.window_seconds`): the cost of the first `s` seconds is
//! `floor(price_per_gpu_hour × gpu_count × s / 3600)`, and a window from `a` to `b`
//! seconds costs `cost(b) − cost(a)`. Rounding down the running total instead of each
//! window keeps the sum of all windows exactly the cost of the whole run, never more
//! than one minor unit under the exact amount. Each window's entry has the idempotency
//! key `usage:{record}:{window start}`, so a replayed cycle posts nothing twice.

use std::collections::BTreeSet;

use gpuaas_events::EventEnvelope;
use gpuaas_kernel::Timestamp;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Dialect, Store};
use serde::Serialize;

use crate::{BillingError, EntryType, NewEntry};

pub const LOW_BALANCE_WARNING: &str = "platform.billing.low_balance_warning";
pub const BALANCE_DEPLETED: &str = "platform.billing.balance_depleted";
/// `reference_type` of usage debits.
pub const REFERENCE_USAGE_RECORD: &str = "usage_record";
const MICROS_PER_SECOND: i64 = 1_000_000;

/// How an accrual cycle runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccrualSettings {
    pub window_seconds: i64,
    pub checkpoint_every: i64,
    /// Records debited per transaction.
    pub batch: usize,
    /// Shares of tenants debited side by side on PostgreSQL (see [`accrue`]).
    pub workers: usize,
}

/// What a cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccrualReport {
    pub records: usize,
    pub entries: usize,
    pub debited_minor: i64,
    /// Tenants debited in this cycle, for the balance check that follows.
    pub tenants: BTreeSet<String>,
}

/// The cost of the first `seconds` seconds at `price_per_gpu_hour_minor` for
/// `gpu_count` GPUs, rounded down; saturates rather than overflows.
pub fn cost_through(price_per_gpu_hour_minor: i64, gpu_count: i64, seconds: i64) -> i64 {
    i128::from(price_per_gpu_hour_minor)
        .checked_mul(i128::from(gpu_count))
        .and_then(|rate| rate.checked_mul(i128::from(seconds.max(0))))
        .map_or(i64::MAX, |total| i64::try_from(total / 3600).unwrap_or(i64::MAX))
}

struct OpenRecord {
    id: String,
    tenant_id: String,
    currency: String,
    gpu_count: i64,
    price: i64,
    started_at: i64,
    billed_seconds: i64,
    billed_minor: i64,
}

fn open_record(row: &gpuaas_store::Row) -> Result<OpenRecord, BillingError> {
    Ok(OpenRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        currency: row.try_get("currency")?,
        gpu_count: row.try_get("gpu_count")?,
        price: row.try_get("price_per_gpu_hour_minor")?,
        started_at: row.try_get("started_at")?,
        billed_seconds: row.try_get("billed_seconds")?,
        billed_minor: row.try_get("billed_minor")?,
    })
}

const OPEN_COLUMNS: &str =
    "id, tenant_id, currency, gpu_count, price_per_gpu_hour_minor, started_at, billed_seconds, billed_minor";

/// A debit to post for one window, with the record's new totals.
struct WindowDebit {
    record: usize,
    key: String,
    amount_minor: i64,
}

/// The debits that bring `record` up to `through_seconds`, one per window starting at
/// its billed point, and its new billed totals.
fn debits_through(
    record: &OpenRecord,
    index: usize,
    through_seconds: i64,
    window_seconds: i64,
    out: &mut Vec<WindowDebit>,
) -> (i64, i64) {
    let mut billed = record.billed_seconds;
    let mut billed_minor = record.billed_minor;
    while billed < through_seconds {
        let end = (billed + window_seconds).min(through_seconds);
        let amount =
            cost_through(record.price, record.gpu_count, end) - cost_through(record.price, record.gpu_count, billed);
        // A window too short to cost a whole minor unit posts nothing; the running
        // total carries it into the next one.
        if amount > 0 {
            out.push(WindowDebit { record: index, key: format!("usage:{}:{billed}", record.id), amount_minor: amount });
            billed_minor += amount;
        }
        billed = end;
    }
    (billed, billed_minor)
}

async fn post_debits(
    connection: &mut Connection,
    dialect: Dialect,
    records: &[OpenRecord],
    debits: &[WindowDebit],
    correlation_ids: &[&str],
    checkpoint_every: i64,
) -> Result<(), BillingError> {
    if debits.is_empty() {
        return Ok(());
    }
    let entries: Vec<NewEntry<'_>> = debits
        .iter()
        .map(|debit| {
            let record = &records[debit.record];
            NewEntry {
                tenant_id: &record.tenant_id,
                entry_type: EntryType::UsageDebit,
                amount_minor: -debit.amount_minor,
                currency: &record.currency,
                idempotency_key: &debit.key,
                reference_type: REFERENCE_USAGE_RECORD,
                reference_id: &record.id,
                correlation_id: correlation_ids.get(debit.record).copied().unwrap_or("metering"),
                created_by: "system:billing",
                description: None,
            }
        })
        .collect();
    crate::post_many(connection, dialect, &entries, checkpoint_every).await?;
    Ok(())
}

/// Debits every open usage record for the whole windows elapsed by `now`, in batches
/// of `settings.batch` records per transaction. Records another worker holds are
/// skipped on PostgreSQL and picked up by the next cycle.
///
/// On PostgreSQL the tenants with a window due are split into `settings.workers`
/// shares, ranges of tenant ids in the database's own order, debited side by side,
/// each on a connection of its own: one backend runs on one core, and the shares never
/// touch the same account, so they never wait for each other's locks. SQLite has one
/// writer, so it takes them all in one pass.
pub async fn accrue(store: &Store, now: Timestamp, settings: &AccrualSettings) -> Result<AccrualReport, BillingError> {
    if settings.window_seconds < 1 {
        return Err(BillingError::invalid("window_seconds", "must be at least 1"));
    }
    let workers = match store.dialect() {
        Dialect::Sqlite => 1,
        Dialect::Postgres => settings.workers.max(1),
    };
    if workers == 1 {
        return accrue_share(store, now, settings, None).await;
    }
    let sql =
        format!("SELECT DISTINCT tenant_id FROM usage_records WHERE ended_at IS NULL AND {} ORDER BY tenant_id", due());
    let tenants: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(settings.window_seconds)
        .bind(now.as_micros())
        .persistent(false)
        .fetch_all(store.pool())
        .await?;
    let per_share = tenants.len().div_ceil(workers).max(1);
    let shares = tenants.chunks(per_share).filter_map(|share| {
        let (first, last) = (share.first()?, share.last()?);
        Some(accrue_share(store, now, settings, Some((first.as_str(), last.as_str()))))
    });
    let mut report = AccrualReport::default();
    for part in futures::future::try_join_all(shares).await? {
        report.records += part.records;
        report.entries += part.entries;
        report.debited_minor += part.debited_minor;
        report.tenants.extend(part.tenants);
    }
    Ok(report)
}

/// An open record with at least one whole window not yet billed by `$2` (`$1` the
/// window's seconds).
fn due() -> String {
    format!("started_at + (billed_seconds + $1) * {MICROS_PER_SECOND} <= $2")
}

/// Debits, batch by batch, the open records of the tenants from `first` to `last`
/// (both included, in the database's order of tenant ids), or of every tenant.
async fn accrue_share(
    store: &Store,
    now: Timestamp,
    settings: &AccrualSettings,
    tenants: Option<(&str, &str)>,
) -> Result<AccrualReport, BillingError> {
    let window = settings.window_seconds;
    let correlation_id = format!("accrual-{}", now.as_micros());
    let batch = settings.batch.max(1);
    let sql = format!(
        "SELECT {OPEN_COLUMNS} FROM usage_records WHERE ended_at IS NULL AND {}{} \
         ORDER BY started_at, id LIMIT $3{}",
        due(),
        if tenants.is_some() { " AND tenant_id >= $4 AND tenant_id <= $5" } else { "" },
        store.dialect().skip_locked()
    );
    let mut report = AccrualReport::default();
    loop {
        let mut tx = store.begin().await?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(window)
            .bind(now.as_micros())
            .bind(i64::try_from(batch).unwrap_or(i64::MAX));
        if let Some((first, last)) = tenants {
            query = query.bind(first).bind(last);
        }
        let rows = query.persistent(false).fetch_all(&mut *tx).await?;
        if rows.is_empty() {
            break;
        }
        let records = rows.iter().map(open_record).collect::<Result<Vec<_>, _>>()?;
        let mut debits = Vec::new();
        let mut totals = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let elapsed = (now.as_micros() - record.started_at) / MICROS_PER_SECOND;
            // Only whole windows here; the partial one is billed when the record closes.
            let through = record.billed_seconds + (elapsed - record.billed_seconds) / window * window;
            totals.push(debits_through(record, index, through, window, &mut debits));
        }
        let correlation_ids = vec![correlation_id.as_str(); records.len()];
        post_debits(&mut tx, store.dialect(), &records, &debits, &correlation_ids, settings.checkpoint_every).await?;
        update_totals(&mut tx, &records, &totals, None).await?;
        tx.commit().await?;
        report.records += records.len();
        report.entries += debits.len();
        report.debited_minor += debits.iter().map(|debit| debit.amount_minor).sum::<i64>();
        report.tenants.extend(records.iter().map(|record| record.tenant_id.clone()));
        if records.len() < batch {
            break;
        }
    }
    Ok(report)
}

/// Records whose totals one UPDATE writes (4 parameters each at most).
const TOTALS_PER_UPDATE: usize = 500;

/// Writes the new billed totals of `records` in one statement per 500 (and each
/// record's `ended_at`, when closing).
async fn update_totals(
    connection: &mut Connection,
    records: &[OpenRecord],
    totals: &[(i64, i64)],
    ended_at: Option<&[i64]>,
) -> Result<(), BillingError> {
    let columns = if ended_at.is_some() { 4 } else { 3 };
    let (names, ended) = match ended_at {
        Some(_) => ("id, billed_seconds, billed_minor, ended_at", ", ended_at = totals.ended_at"),
        None => ("id, billed_seconds, billed_minor", ""),
    };
    let rows: Vec<(&OpenRecord, &(i64, i64), Option<i64>)> = records
        .iter()
        .zip(totals)
        .enumerate()
        .map(|(index, (record, total))| (record, total, ended_at.and_then(|ended_at| ended_at.get(index).copied())))
        .collect();
    for chunk in rows.chunks(TOTALS_PER_UPDATE) {
        let batch = gpuaas_store::Padded::new(chunk, TOTALS_PER_UPDATE);
        let sql = format!(
            "WITH totals ({names}) AS (VALUES {}) UPDATE usage_records SET billed_seconds = totals.billed_seconds, \
             billed_minor = totals.billed_minor{ended} FROM totals WHERE usage_records.id = totals.id",
            batch.value_rows(1, columns)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((record, (seconds, minor), ended), _) in batch.rows() {
            query = query.bind(record.id.as_str()).bind(*seconds).bind(*minor);
            if ended_at.is_some() {
                query = query.bind(*ended);
            }
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

/// Closes the allocation's open usage record at `ended_at` in the caller's
/// transaction, billing the seconds not yet billed (the final, partial window). `None`
/// when the allocation has no open record (never active, or already closed).
pub async fn close_usage(
    connection: &mut Connection,
    dialect: Dialect,
    allocation_id: &str,
    ended_at: Timestamp,
    window_seconds: i64,
    checkpoint_every: i64,
    correlation_id: &str,
) -> Result<Option<i64>, BillingError> {
    let close = UsageClose { allocation_id, ended_at, correlation_id };
    let mut billed = close_usages(connection, dialect, &[close], window_seconds, checkpoint_every).await?;
    Ok(billed.remove(allocation_id))
}

/// One allocation's usage to close, for [`close_usages`].
#[derive(Debug, Clone, Copy)]
pub struct UsageClose<'a> {
    pub allocation_id: &'a str,
    pub ended_at: Timestamp,
    /// Names the debits posted for the last window.
    pub correlation_id: &'a str,
}

/// [`close_usage`] for many allocations, with one read, one ledger posting and one
/// update for all of them. Returns what each allocation with an open record was billed
/// in total; the others are absent.
pub async fn close_usages(
    connection: &mut Connection,
    dialect: Dialect,
    closes: &[UsageClose<'_>],
    window_seconds: i64,
    checkpoint_every: i64,
) -> Result<std::collections::HashMap<String, i64>, BillingError> {
    let mut billed = std::collections::HashMap::new();
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    for closes in closes.chunks(500) {
        // Id order: two closers lock the records they share in the same order. Every
        // record of the allocations is read (an allocation has one or a few) and the
        // closed ones are skipped here: a condition on `ended_at` lets the planner add
        // the open-records index, and read all of it, to a lookup by allocation.
        let batch = gpuaas_store::Padded::new(closes, 500);
        let sql = format!(
            "SELECT allocation_id, ended_at, {OPEN_COLUMNS} FROM usage_records WHERE allocation_id IN ({}) \
             ORDER BY id{lock}",
            batch.placeholders(1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (close, _) in batch.rows() {
            query = query.bind(close.allocation_id);
        }
        let rows = query.fetch_all(&mut *connection).await?;
        let mut records = Vec::with_capacity(rows.len());
        let mut owners: Vec<&UsageClose<'_>> = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<i64>, _>("ended_at")?.is_some() {
                continue;
            }
            let allocation_id: String = row.try_get("allocation_id")?;
            let close = closes
                .iter()
                .find(|close| close.allocation_id == allocation_id)
                .ok_or_else(|| BillingError::Corrupt(format!("usage of {allocation_id} was not asked for")))?;
            records.push(open_record(row)?);
            owners.push(close);
        }
        if records.is_empty() {
            continue;
        }
        let mut debits = Vec::new();
        let mut totals = Vec::with_capacity(records.len());
        for (index, (record, close)) in records.iter().zip(&owners).enumerate() {
            let elapsed =
                ((close.ended_at.as_micros() - record.started_at) / MICROS_PER_SECOND).max(record.billed_seconds);
            totals.push(debits_through(record, index, elapsed, window_seconds.max(1), &mut debits));
        }
        let correlation_ids: Vec<&str> = owners.iter().map(|close| close.correlation_id).collect();
        post_debits(connection, dialect, &records, &debits, &correlation_ids, checkpoint_every).await?;
        let ended: Vec<i64> = owners.iter().map(|close| close.ended_at.as_micros()).collect();
        update_totals(connection, &records, &totals, Some(&ended)).await?;
        for (close, (_, minor)) in owners.iter().zip(&totals) {
            *billed.entry(close.allocation_id.to_owned()).or_insert(0) += minor;
        }
    }
    Ok(billed)
}

/// Where a tenant's balance stands against the low-balance threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceState {
    Ok,
    Low,
    Depleted,
}

impl BalanceState {
    pub const fn as_str(self) -> &'static str {
        match self {
            BalanceState::Ok => "ok",
            BalanceState::Low => "low",
            BalanceState::Depleted => "depleted",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "low" => BalanceState::Low,
            "depleted" => BalanceState::Depleted,
            _ => BalanceState::Ok,
        }
    }

    pub const fn of(balance_minor: i64, threshold_minor: i64) -> Self {
        if balance_minor <= 0 {
            BalanceState::Depleted
        } else if balance_minor <= threshold_minor {
            BalanceState::Low
        } else {
            BalanceState::Ok
        }
    }
}

/// A crossing announced by [`check_balances`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceAlert {
    pub tenant_id: String,
    pub from: BalanceState,
    pub to: BalanceState,
    pub balance_minor: i64,
}

/// Compares the balance of `tenants` (and of every tenant last seen low or depleted,
/// so a top-up resets it) with the threshold and records each crossing once: entering
/// low (from ok) queues `platform.billing.low_balance_warning`; entering depleted queues
/// `platform.billing.balance_depleted` (and the warning too when it came straight from
/// ok) and closes the tenant's open usage at its last billed second. Staying low or
/// depleted announces nothing; going back above the threshold re-arms both.
pub async fn check_balances(
    store: &Store,
    tenants: &BTreeSet<String>,
    threshold_minor: i64,
    correlation_id: &str,
) -> Result<Vec<BalanceAlert>, BillingError> {
    let flagged: Vec<String> = sqlx::query_scalar("SELECT tenant_id FROM billing_balance_alerts WHERE state <> 'ok'")
        .fetch_all(store.pool())
        .await?;
    let mut all: BTreeSet<&str> = tenants.iter().map(String::as_str).collect();
    all.extend(flagged.iter().map(String::as_str));
    let mut alerts = Vec::new();
    for tenant in all {
        let mut tx = store.begin().await?;
        let balance = crate::balance_in(&mut tx, tenant).await?;
        let Some(currency) = balance.currency else {
            continue;
        };
        let row = sqlx::query("SELECT state FROM billing_balance_alerts WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
        let from = match &row {
            Some(row) => BalanceState::parse(&row.try_get::<String, _>("state")?),
            None => BalanceState::Ok,
        };
        let to = BalanceState::of(balance.amount_minor, threshold_minor);
        if from == to {
            continue;
        }
        let now = Timestamp::now().as_micros();
        sqlx::query(
            "INSERT INTO billing_balance_alerts (tenant_id, state, balance_minor, changed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id) DO UPDATE SET state = $2, balance_minor = $3, changed_at = $4",
        )
        .bind(tenant)
        .bind(to.as_str())
        .bind(balance.amount_minor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({
            "tenant_id": tenant,
            "balance_minor": balance.amount_minor,
            "currency": currency,
            "threshold_minor": threshold_minor,
        });
        if from == BalanceState::Ok && to != BalanceState::Ok {
            gpuaas_outbox::enqueue(
                &mut tx,
                &EventEnvelope::new(LOW_BALANCE_WARNING, 1, correlation_id, payload.clone()),
            )
            .await?;
        }
        if to == BalanceState::Depleted {
            // Metering stops here, at the last billed second: whatever runs until the
            // force-release lands is not billed, so the balance ends at most one
            // window's cost below zero.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE usage_records SET ended_at = started_at + billed_seconds * {MICROS_PER_SECOND} \
                 WHERE tenant_id = $1 AND ended_at IS NULL"
            )))
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
            gpuaas_outbox::enqueue(&mut tx, &EventEnvelope::new(BALANCE_DEPLETED, 1, correlation_id, payload)).await?;
        }
        tx.commit().await?;
        alerts.push(BalanceAlert { tenant_id: tenant.to_owned(), from, to, balance_minor: balance.amount_minor });
    }
    Ok(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(price: i64, gpus: i64) -> OpenRecord {
        OpenRecord {
            id: "u1".into(),
            tenant_id: "t1".into(),
            currency: "USD".into(),
            gpu_count: gpus,
            price,
            started_at: 0,
            billed_seconds: 0,
            billed_minor: 0,
        }
    }

    #[test]
    fn cost_rounds_the_running_total_down() {
        assert_eq!(cost_through(250, 8, 3600), 2000);
        assert_eq!(cost_through(250, 1, 1), 0);
        assert_eq!(cost_through(250, 1, 15), 1);
        assert_eq!(cost_through(i64::MAX, i64::MAX, i64::MAX), i64::MAX);
        assert_eq!(cost_through(100, 1, -5), 0);
    }

    #[test]
    fn balance_states_follow_the_threshold() {
        assert_eq!(BalanceState::of(0, 100), BalanceState::Depleted);
        assert_eq!(BalanceState::of(-1, 100), BalanceState::Depleted);
        assert_eq!(BalanceState::of(100, 100), BalanceState::Low);
        assert_eq!(BalanceState::of(101, 100), BalanceState::Ok);
    }

    proptest! {
        /// However the run is cut into windows and cycles, the debits sum to the cost
        /// of the whole run, each key is used once, and no debit is zero or negative.
        #[test]
        fn windows_sum_to_the_whole(
            price in 1i64..100_000,
            gpus in 1i64..16,
            window in 1i64..600,
            cuts in proptest::collection::vec(0i64..5_000, 1..12),
        ) {
            let mut record = record(price, gpus);
            let mut debits = Vec::new();
            let mut through = 0;
            for cut in cuts {
                through += cut;
                let (billed, minor) = debits_through(&record, 0, through, window, &mut debits);
                record.billed_seconds = billed;
                record.billed_minor = minor;
            }
            prop_assert_eq!(record.billed_seconds, through);
            prop_assert_eq!(record.billed_minor, cost_through(price, gpus, through));
            prop_assert_eq!(debits.iter().map(|d| d.amount_minor).sum::<i64>(), record.billed_minor);
            prop_assert!(debits.iter().all(|d| d.amount_minor > 0));
            let keys: BTreeSet<&str> = debits.iter().map(|d| d.key.as_str()).collect();
            prop_assert_eq!(keys.len(), debits.len());
        }
    }
}

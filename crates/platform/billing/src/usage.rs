//! Usage records: what each allocation ran, at which price, and what was billed for
//! it. Written by the allocation lifecycle; listed and exported here.

use bytes::Bytes;
use futures::Stream;
use gpuaas_kernel::{Cursor, Timestamp, new_id};
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Store};
use serde::Serialize;
use utoipa::ToSchema;

use crate::BillingError;
use crate::ledger::{MAX_TEXT_LEN, validate_currency, validate_text};
use crate::query::{Bind, Conditions, check_limit};
use gpuaas_kernel::csv::write_row;

/// Rows read per query while exporting; each page becomes one chunk of the stream.
pub const USAGE_EXPORT_PAGE_SIZE: u32 = 1000;

/// The first line of every usage export.
pub const USAGE_CSV_HEADER: &str = "id,tenant_id,project_id,allocation_id,sku_id,gpu_count,price_per_gpu_hour_minor,\
currency,started_at,ended_at,billed_seconds,billed_minor,created_at\r\n";

const COLUMNS: &str = "id, tenant_id, project_id, allocation_id, sku_id, gpu_count, price_per_gpu_hour_minor, \
     currency, started_at, ended_at, billed_seconds, billed_minor, created_at";

/// A usage record to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewUsageRecord<'a> {
    pub tenant_id: &'a str,
    pub project_id: &'a str,
    pub allocation_id: &'a str,
    pub sku_id: &'a str,
    pub gpu_count: i64,
    pub price_per_gpu_hour_minor: i64,
    pub currency: &'a str,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub billed_seconds: i64,
    pub billed_minor: i64,
}

/// A stored usage record. `ended_at` is absent while the allocation still runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UsageRecord {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub allocation_id: String,
    pub sku_id: String,
    pub gpu_count: i64,
    pub price_per_gpu_hour_minor: i64,
    pub currency: String,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    pub billed_seconds: i64,
    pub billed_minor: i64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// One page of usage records, newest start first; `next_cursor` is absent on the
/// last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UsagePage {
    pub items: Vec<UsageRecord>,
    pub next_cursor: Option<String>,
}

fn validate(record: &NewUsageRecord<'_>) -> Result<(), BillingError> {
    validate_text("tenant_id", record.tenant_id, MAX_TEXT_LEN)?;
    validate_text("project_id", record.project_id, MAX_TEXT_LEN)?;
    validate_text("allocation_id", record.allocation_id, MAX_TEXT_LEN)?;
    validate_text("sku_id", record.sku_id, MAX_TEXT_LEN)?;
    validate_currency(record.currency)?;
    if record.gpu_count < 1 {
        return Err(BillingError::invalid("gpu_count", "must be at least 1"));
    }
    for (field, value) in [
        ("price_per_gpu_hour_minor", record.price_per_gpu_hour_minor),
        ("billed_seconds", record.billed_seconds),
        ("billed_minor", record.billed_minor),
    ] {
        if value < 0 {
            return Err(BillingError::invalid(field, "must not be negative"));
        }
    }
    if let Some(ended_at) = record.ended_at
        && ended_at < record.started_at
    {
        return Err(BillingError::invalid("ended_at", "must not be earlier than started_at"));
    }
    Ok(())
}

/// The latest usage record of each of these allocations (one for most; a record per
/// run otherwise), in one statement. Allocations that never ran are absent.
pub async fn usage_for_allocations(
    store: &Store,
    allocation_ids: &[&str],
) -> Result<std::collections::HashMap<String, UsageRecord>, BillingError> {
    let mut latest = std::collections::HashMap::new();
    if allocation_ids.is_empty() {
        return Ok(latest);
    }
    let batch = gpuaas_store::Padded::new(allocation_ids, gpuaas_store::LIST_PADDING_MOST);
    let placeholders = batch.placeholders(1);
    let sql = format!(
        "SELECT {COLUMNS} FROM usage_records WHERE allocation_id IN ({}) ORDER BY started_at, id",
        placeholders
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (id, _) in batch.rows() {
        query = query.bind(*id);
    }
    for row in query.fetch_all(store.pool()).await? {
        let record = from_row(&row)?;
        latest.insert(record.allocation_id.clone(), record);
    }
    Ok(latest)
}

/// Stores a usage record on the caller's connection or transaction.
pub async fn insert_usage_record(
    connection: &mut Connection,
    record: &NewUsageRecord<'_>,
) -> Result<UsageRecord, BillingError> {
    let mut stored = insert_usage_records(connection, std::slice::from_ref(record)).await?;
    stored.pop().ok_or_else(|| BillingError::Corrupt("a usage record was not stored".into()))
}

/// Usage records per INSERT (13 parameters each).
const RECORDS_PER_INSERT: usize = 500;

/// Stores usage records on the caller's connection or transaction, one INSERT per
/// 500; all are checked before any is written.
pub async fn insert_usage_records(
    connection: &mut Connection,
    records: &[NewUsageRecord<'_>],
) -> Result<Vec<UsageRecord>, BillingError> {
    for record in records {
        validate(record)?;
    }
    let created_at = Timestamp::now();
    let stored: Vec<UsageRecord> = records
        .iter()
        .map(|record| UsageRecord {
            id: new_id().to_string(),
            tenant_id: record.tenant_id.to_owned(),
            project_id: record.project_id.to_owned(),
            allocation_id: record.allocation_id.to_owned(),
            sku_id: record.sku_id.to_owned(),
            gpu_count: record.gpu_count,
            price_per_gpu_hour_minor: record.price_per_gpu_hour_minor,
            currency: record.currency.to_owned(),
            started_at: record.started_at,
            ended_at: record.ended_at,
            billed_seconds: record.billed_seconds,
            billed_minor: record.billed_minor,
            created_at,
        })
        .collect();
    for chunk in stored.chunks(RECORDS_PER_INSERT) {
        let batch = gpuaas_store::Padded::new(chunk, RECORDS_PER_INSERT);
        let sql = format!("INSERT INTO usage_records ({COLUMNS}) {}", batch.insert_rows(1, 13));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (record, padding) in batch.rows() {
            query = query
                .bind((!padding).then_some(record.id.as_str()))
                .bind(record.tenant_id.as_str())
                .bind(record.project_id.as_str())
                .bind(record.allocation_id.as_str())
                .bind(record.sku_id.as_str())
                .bind(record.gpu_count)
                .bind(record.price_per_gpu_hour_minor)
                .bind(record.currency.as_str())
                .bind(record.started_at.as_micros())
                .bind(record.ended_at.map(Timestamp::as_micros))
                .bind(record.billed_seconds)
                .bind(record.billed_minor)
                .bind(record.created_at.as_micros());
        }
        query.execute(&mut *connection).await?;
    }
    Ok(stored)
}

/// Lists the tenant's usage records, newest start first. `cursor` is the previous
/// page's `next_cursor`; `limit` must be 1..=`MAX_PAGE_LIMIT`.
pub async fn list_usage(
    store: &Store,
    tenant_id: &str,
    cursor: Option<&str>,
    limit: u32,
) -> Result<UsagePage, BillingError> {
    validate_text("tenant_id", tenant_id, MAX_TEXT_LEN)?;
    check_limit(limit)?;
    let after = cursor.map(Cursor::decode).transpose()?;
    let (items, next) = fetch_page(store, tenant_id, after.as_ref(), limit).await?;
    Ok(UsagePage { items, next_cursor: next.map(|cursor| cursor.encode()) })
}

/// One page after `after` (exclusive) plus the cursor of its last row when more rows
/// follow. Reads `limit + 1` rows to know that without a second query.
async fn fetch_page(
    store: &Store,
    tenant_id: &str,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<(Vec<UsageRecord>, Option<Cursor>), BillingError> {
    let mut conditions = Conditions::default();
    let tenant = conditions.param(Bind::Text(tenant_id.to_owned()));
    conditions.clauses.push(format!("tenant_id = {tenant}"));
    if let Some(after) = after {
        conditions.before("started_at", after);
    }
    let limit_param = conditions.param(Bind::Int(i64::from(limit) + 1));
    let sql = format!(
        "SELECT {COLUMNS} FROM usage_records{} ORDER BY started_at DESC, id DESC LIMIT {limit_param}",
        conditions.where_clause()
    );
    let rows = conditions.fetch_all(sql, store).await?;
    let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| Cursor::new(last.started_at.as_micros(), last.id.clone()))
    } else {
        None
    };
    Ok((items, next))
}

fn from_row(row: &gpuaas_store::Row) -> Result<UsageRecord, BillingError> {
    Ok(UsageRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
        allocation_id: row.try_get("allocation_id")?,
        sku_id: row.try_get("sku_id")?,
        gpu_count: row.try_get("gpu_count")?,
        price_per_gpu_hour_minor: row.try_get("price_per_gpu_hour_minor")?,
        currency: row.try_get("currency")?,
        started_at: Timestamp::from_micros(row.try_get("started_at")?),
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(Timestamp::from_micros),
        billed_seconds: row.try_get("billed_seconds")?,
        billed_minor: row.try_get("billed_minor")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
    })
}

enum State {
    Header,
    Page(Option<Cursor>),
    Done,
}

/// Streams the tenant's usage records as RFC 4180 CSV, newest start first: the header,
/// then one chunk per [`USAGE_EXPORT_PAGE_SIZE`] rows, each read by its own keyset
/// query, so memory stays constant however many rows there are. An invalid tenant id
/// is the stream's first and only item.
pub fn export_usage_csv(
    store: Store,
    tenant_id: String,
) -> impl Stream<Item = Result<Bytes, BillingError>> + Send + 'static {
    futures::stream::try_unfold((store, tenant_id, State::Header), |(store, tenant_id, state)| async move {
        match state {
            State::Header => {
                validate_text("tenant_id", &tenant_id, MAX_TEXT_LEN)?;
                Ok(Some((Bytes::from_static(USAGE_CSV_HEADER.as_bytes()), (store, tenant_id, State::Page(None)))))
            }
            State::Page(after) => {
                let (items, next) = fetch_page(&store, &tenant_id, after.as_ref(), USAGE_EXPORT_PAGE_SIZE).await?;
                if items.is_empty() {
                    return Ok(None);
                }
                let mut chunk = String::new();
                for item in &items {
                    write_record(&mut chunk, item);
                }
                let state = match next {
                    Some(cursor) => State::Page(Some(cursor)),
                    None => State::Done,
                };
                Ok(Some((Bytes::from(chunk), (store, tenant_id, state))))
            }
            State::Done => Ok(None),
        }
    })
}

fn write_record(out: &mut String, record: &UsageRecord) {
    let gpu_count = record.gpu_count.to_string();
    let price = record.price_per_gpu_hour_minor.to_string();
    let started_at = record.started_at.to_rfc3339();
    let ended_at = record.ended_at.map(Timestamp::to_rfc3339).unwrap_or_default();
    let billed_seconds = record.billed_seconds.to_string();
    let billed_minor = record.billed_minor.to_string();
    let created_at = record.created_at.to_rfc3339();
    write_row(
        out,
        &[
            &record.id,
            &record.tenant_id,
            &record.project_id,
            &record.allocation_id,
            &record.sku_id,
            &gpu_count,
            &price,
            &record.currency,
            &started_at,
            &ended_at,
            &billed_seconds,
            &billed_minor,
            &created_at,
        ],
    );
}

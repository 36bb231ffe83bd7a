//! Posting to the ledger and reading balances and single entries back.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use gpuaas_kernel::{Timestamp, new_id};
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Dialect, Store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::BillingError;

/// Largest absolute amount one entry may carry, in minor units (10^15: ten trillion
/// in a two-decimal currency). Keeps every realistic balance far from `i64` overflow.
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;
/// Longest tenant id, reference, correlation id, author or description, in characters.
pub const MAX_TEXT_LEN: usize = 256;
/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// A sensible `checkpoint_every` for callers without a policy of their own: a balance
/// read then sums at most 99 entries.
pub const DEFAULT_CHECKPOINT_EVERY: i64 = 100;
/// `reference_type` of an entry that refers to another ledger entry (a refund of a
/// credit, a reversal); [`refunded_against`] sums refunds with this reference.
pub const REFERENCE_LEDGER_ENTRY: &str = "ledger_entry";

pub(crate) const ENTRY_COLUMNS: &str = "id, tenant_id, entry_no, entry_type, amount_minor, currency, idempotency_key, \
     reference_type, reference_id, correlation_id, description, created_by, created_at";

/// Rows per multi-row INSERT: at 14 binds a row this stays far below the bind limits
/// (SQLite 32,766, PostgreSQL 65,535) while a batch of a few hundred is one statement.
const INSERT_CHUNK: usize = 500;
/// Idempotency keys looked up per query.
const KEY_CHUNK: usize = 500;

/// What an entry is for. The sign of its amount follows from the type: see
/// [`EntryType::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    CreditPurchase,
    UsageDebit,
    AdminCredit,
    AdminDebit,
    Refund,
    Reversal,
}

impl EntryType {
    pub const ALL: &'static [EntryType] = &[
        EntryType::CreditPurchase,
        EntryType::UsageDebit,
        EntryType::AdminCredit,
        EntryType::AdminDebit,
        EntryType::Refund,
        EntryType::Reversal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EntryType::CreditPurchase => "credit_purchase",
            EntryType::UsageDebit => "usage_debit",
            EntryType::AdminCredit => "admin_credit",
            EntryType::AdminDebit => "admin_debit",
            EntryType::Refund => "refund",
            EntryType::Reversal => "reversal",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        EntryType::ALL.iter().copied().find(|kind| kind.as_str() == text)
    }

    /// Always adds to the balance (amount > 0).
    pub const fn is_credit(self) -> bool {
        matches!(self, EntryType::CreditPurchase | EntryType::AdminCredit)
    }

    /// Always takes from the balance (amount < 0). A refund is a debit: money leaves
    /// the account back to the card.
    pub const fn is_debit(self) -> bool {
        matches!(self, EntryType::UsageDebit | EntryType::AdminDebit | EntryType::Refund)
    }

    /// Whether an amount of this sign fits the type. A reversal undoes an earlier entry
    /// of either sign, so it may be either; zero is never allowed.
    pub const fn allows(self, amount_minor: i64) -> bool {
        if amount_minor == 0 {
            false
        } else if self.is_credit() {
            amount_minor > 0
        } else if self.is_debit() {
            amount_minor < 0
        } else {
            true
        }
    }
}

impl std::fmt::Display for EntryType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry to post. `amount_minor` is signed: credits positive, debits negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEntry<'a> {
    pub tenant_id: &'a str,
    pub entry_type: EntryType,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub idempotency_key: &'a str,
    pub reference_type: &'a str,
    pub reference_id: &'a str,
    pub correlation_id: &'a str,
    pub created_by: &'a str,
    pub description: Option<&'a str>,
}

/// A posted entry, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LedgerEntry {
    pub id: String,
    pub tenant_id: String,
    pub entry_no: i64,
    pub entry_type: EntryType,
    pub amount_minor: i64,
    pub currency: String,
    pub idempotency_key: String,
    pub reference_type: String,
    pub reference_id: String,
    pub correlation_id: String,
    pub description: Option<String>,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// What a post did: wrote a new entry, or found the one this idempotency key already
/// wrote (the ledger is unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    New(LedgerEntry),
    Replayed(LedgerEntry),
}

impl Posted {
    pub fn entry(&self) -> &LedgerEntry {
        match self {
            Posted::New(entry) | Posted::Replayed(entry) => entry,
        }
    }

    pub fn is_new(&self) -> bool {
        matches!(self, Posted::New(_))
    }

    pub fn into_entry(self) -> LedgerEntry {
        match self {
            Posted::New(entry) | Posted::Replayed(entry) => entry,
        }
    }
}

/// A tenant's balance. `currency` is `None` (and the amount 0) while the tenant has no
/// billing account, i.e. before its first posting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Balance {
    pub tenant_id: String,
    pub amount_minor: i64,
    pub currency: Option<String>,
}

/// Refuses anything but three upper-case ASCII letters (ISO 4217 form).
pub fn validate_currency(currency: &str) -> Result<(), BillingError> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(BillingError::invalid("currency", "must be three upper-case letters, e.g. EUR"))
    }
}

pub(crate) fn validate_text(field: &str, value: &str, max: usize) -> Result<(), BillingError> {
    let length = value.chars().count();
    if length == 0 || length > max {
        return Err(BillingError::invalid(field, format!("must be 1 to {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(BillingError::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn validate(entry: &NewEntry<'_>) -> Result<(), BillingError> {
    validate_text("tenant_id", entry.tenant_id, MAX_TEXT_LEN)?;
    validate_currency(entry.currency)?;
    if entry.amount_minor == 0 {
        return Err(BillingError::invalid("amount_minor", "must not be zero"));
    }
    if entry.amount_minor.unsigned_abs() > MAX_AMOUNT_MINOR.unsigned_abs() {
        return Err(BillingError::invalid("amount_minor", format!("must be within ±{MAX_AMOUNT_MINOR}")));
    }
    if !entry.entry_type.allows(entry.amount_minor) {
        let sign = if entry.entry_type.is_credit() { "positive" } else { "negative" };
        return Err(BillingError::invalid("amount_minor", format!("a {} must be {sign}", entry.entry_type)));
    }
    validate_text("idempotency_key", entry.idempotency_key, MAX_IDEMPOTENCY_KEY_LEN)?;
    validate_text("reference_type", entry.reference_type, MAX_TEXT_LEN)?;
    validate_text("reference_id", entry.reference_id, MAX_TEXT_LEN)?;
    validate_text("correlation_id", entry.correlation_id, MAX_TEXT_LEN)?;
    validate_text("created_by", entry.created_by, MAX_TEXT_LEN)?;
    if let Some(description) = entry.description {
        validate_text("description", description, MAX_TEXT_LEN)?;
    }
    Ok(())
}

/// Posts one entry on `connection`, which must be the caller's transaction
/// (`&mut *tx`), so the caller can update its own rows and queue events atomically
/// with the posting. See [`post_many`] for the rules; on any error the caller must
/// roll its transaction back.
pub async fn post(
    connection: &mut Connection,
    dialect: Dialect,
    entry: &NewEntry<'_>,
    checkpoint_every: i64,
) -> Result<Posted, BillingError> {
    post_many(connection, dialect, std::slice::from_ref(entry), checkpoint_every)
        .await?
        .pop()
        .ok_or_else(|| BillingError::Corrupt("posting one entry returned no result".to_owned()))
}

/// Posts `entries` on the caller's transaction; the result is in input order.
///
/// Each entry is validated (currency, amount range, sign for its type, text bounds)
/// before anything is read or written. The tenant's account is found or created with
/// the currency of its first entry, then locked for the rest of the transaction, so
/// entries of one account get consecutive `entry_no`s without gaps. Accounts are
/// locked in tenant-id order, so two batches never deadlock on each other.
///
/// An idempotency key already used on the account (earlier, or earlier in this batch)
/// yields [`Posted::Replayed`] with the stored entry when type, amount and currency
/// agree, and [`BillingError::IdempotencyConflict`] otherwise. A new entry in another
/// currency than the account's is a [`BillingError::CurrencyMismatch`]. Whenever an
/// entry's number is a multiple of `checkpoint_every`, the balance after it is written
/// as a checkpoint. Debits may take a balance below zero: usage is billed for time
/// already used, and refusing a debit for lack of funds is the caller's decision.
///
/// All refusals happen before the first row is written; the caller should still roll
/// back on any error, since a database failure can happen half-way.
pub async fn post_many(
    connection: &mut Connection,
    dialect: Dialect,
    entries: &[NewEntry<'_>],
    checkpoint_every: i64,
) -> Result<Vec<Posted>, BillingError> {
    if checkpoint_every < 1 {
        return Err(BillingError::invalid("checkpoint_every", "must be at least 1"));
    }
    for entry in entries {
        validate(entry)?;
    }
    let mut by_tenant: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, entry) in entries.iter().enumerate() {
        by_tenant.entry(entry.tenant_id).or_default().push(index);
    }
    let now = Timestamp::now();
    let mut results: Vec<Option<Posted>> = vec![None; entries.len()];
    let mut fresh: Vec<(String, LedgerEntry)> = Vec::new();
    let mut checkpoints: Vec<(String, i64, i64)> = Vec::new();
    // A constant number of queries per batch, however many accounts it touches: the
    // accounts are created and locked together (in tenant order, so batches never
    // deadlock), then their known keys and last entry numbers are read together.
    let first_currency: Vec<(&str, &str)> = by_tenant
        .iter()
        .filter_map(|(tenant, indexes)| indexes.first().map(|&first| (*tenant, entries[first].currency)))
        .collect();
    let accounts = lock_accounts(connection, dialect, &first_currency, now).await?;
    let account_ids: Vec<&str> = accounts.values().map(|account| account.id.as_str()).collect();
    let pairs: Vec<(&str, &str)> = entries
        .iter()
        .filter_map(|entry| accounts.get(entry.tenant_id).map(|account| (account.id.as_str(), entry.idempotency_key)))
        .collect();
    let mut known_by_tenant = entries_by_keys(connection, &pairs).await?;
    let last_numbers = last_entry_numbers(connection, &account_ids).await?;
    for (tenant_id, indexes) in &by_tenant {
        let account = accounts
            .get(*tenant_id)
            .ok_or_else(|| BillingError::Corrupt(format!("the billing account of tenant {tenant_id} vanished")))?;
        let mut known = known_by_tenant.remove(*tenant_id).unwrap_or_default();
        let last_before = last_numbers.get(&account.id).copied().unwrap_or(0);
        let mut next_no = last_before + 1;
        let mut account_fresh: Vec<LedgerEntry> = Vec::new();
        for &index in indexes {
            let new = &entries[index];
            if let Some(existing) = known.get(new.idempotency_key) {
                results[index] = Some(replay(existing, new)?);
                continue;
            }
            if new.currency != account.currency {
                return Err(BillingError::CurrencyMismatch {
                    account: account.currency.clone(),
                    given: new.currency.to_owned(),
                });
            }
            let entry = LedgerEntry {
                id: new_id().to_string(),
                tenant_id: new.tenant_id.to_owned(),
                entry_no: next_no,
                entry_type: new.entry_type,
                amount_minor: new.amount_minor,
                currency: new.currency.to_owned(),
                idempotency_key: new.idempotency_key.to_owned(),
                reference_type: new.reference_type.to_owned(),
                reference_id: new.reference_id.to_owned(),
                correlation_id: new.correlation_id.to_owned(),
                description: new.description.map(str::to_owned),
                created_by: new.created_by.to_owned(),
                created_at: now,
            };
            next_no += 1;
            known.insert(entry.idempotency_key.clone(), entry.clone());
            results[index] = Some(Posted::New(entry.clone()));
            account_fresh.push(entry);
        }
        let last_after = next_no - 1;
        // The running balance is only needed when this batch crosses a checkpoint.
        if last_after / checkpoint_every > last_before / checkpoint_every {
            let mut running = account_balance(connection, &account.id).await?;
            for entry in &account_fresh {
                running = running.checked_add(entry.amount_minor).ok_or_else(|| {
                    BillingError::invalid("amount_minor", "the balance would leave the representable range")
                })?;
                if entry.entry_no % checkpoint_every == 0 {
                    checkpoints.push((account.id.clone(), entry.entry_no, running));
                }
            }
        }
        fresh.extend(account_fresh.into_iter().map(|entry| (account.id.clone(), entry)));
    }
    insert_entries(connection, &fresh).await?;
    insert_checkpoints(connection, &checkpoints, now).await?;
    results
        .into_iter()
        .map(|result| result.ok_or_else(|| BillingError::Corrupt("an entry of the batch was not posted".to_owned())))
        .collect()
}

fn replay(existing: &LedgerEntry, new: &NewEntry<'_>) -> Result<Posted, BillingError> {
    if existing.entry_type == new.entry_type
        && existing.amount_minor == new.amount_minor
        && existing.currency == new.currency
    {
        Ok(Posted::Replayed(existing.clone()))
    } else {
        Err(BillingError::IdempotencyConflict(format!(
            "idempotency key `{}` was already used for a {} of {} {}",
            existing.idempotency_key, existing.entry_type, existing.amount_minor, existing.currency
        )))
    }
}

pub(crate) struct Account {
    pub(crate) id: String,
    pub(crate) currency: String,
}

/// Finds or creates the accounts of `tenants` (each with the currency of its first
/// entry) and, on PostgreSQL, locks them until the transaction ends. SQLite needs no
/// row lock: `Store::begin` already holds the database's single write lock.
async fn lock_accounts(
    connection: &mut Connection,
    dialect: Dialect,
    tenants: &[(&str, &str)],
    now: Timestamp,
) -> Result<HashMap<String, Account>, BillingError> {
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let names: Vec<&str> = tenants.iter().map(|(tenant, _)| *tenant).collect();
    let mut found = select_accounts(connection, &names, lock).await?;
    let missing: Vec<(&str, &str)> =
        tenants.iter().copied().filter(|(tenant, _)| !found.contains_key(*tenant)).collect();
    if missing.is_empty() {
        return Ok(found);
    }
    // A concurrent first posting may create an account between our read and this
    // insert; ON CONFLICT waits for it and does nothing, and the re-read locks its row.
    for chunk in missing.chunks(KEY_CHUNK) {
        let mut sql = String::from("INSERT INTO billing_accounts (id, tenant_id, currency, created_at) VALUES ");
        push_placeholders(&mut sql, chunk.len(), 4);
        sql.push_str(" ON CONFLICT (tenant_id) DO NOTHING");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (tenant, currency) in chunk {
            query = query.bind(new_id().to_string()).bind(*tenant).bind(*currency).bind(now.as_micros());
        }
        query.execute(&mut *connection).await?;
    }
    let created: Vec<&str> = missing.iter().map(|(tenant, _)| *tenant).collect();
    found.extend(select_accounts(connection, &created, lock).await?);
    Ok(found)
}

/// The accounts of `tenants` by tenant id, in tenant order (the lock order).
async fn select_accounts(
    connection: &mut Connection,
    tenants: &[&str],
    lock: &str,
) -> Result<HashMap<String, Account>, BillingError> {
    let mut found = HashMap::new();
    for chunk in tenants.chunks(KEY_CHUNK) {
        let sql = format!(
            "SELECT id, tenant_id, currency FROM billing_accounts WHERE tenant_id IN ({}) ORDER BY tenant_id{lock}",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for tenant in chunk {
            query = query.bind(*tenant);
        }
        for row in query.persistent(false).fetch_all(&mut *connection).await? {
            found.insert(
                row.try_get("tenant_id")?,
                Account { id: row.try_get("id")?, currency: row.try_get("currency")? },
            );
        }
    }
    Ok(found)
}

/// `$first, $first+1, …` for `count` values.
fn placeholders(first: usize, count: usize) -> String {
    let mut text = String::new();
    for position in 0..count {
        if position > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "${}", first + position);
    }
    text
}

// Reads here are `persistent(false)`: PostgreSQL plans them afresh on every call,
// against the ledger as it is then. A prepared statement cached while the ledger was
// still small keeps the plan chosen for an empty table (a sequential scan), which
// would make every later lookup grow with the ledger. Under the platform's
// `force_generic_plan` (ADR 027) that fresh plan leaves the values out, which key
// probes like these do not need.

/// Entries matching the (account, idempotency key) pairs, by tenant and then key.
/// The pairs are a VALUES list joined on the unique index, so every pair is one index
/// probe on both engines and the plan stays small however long the list; a row-value
/// IN list would be planned as a thousand-way OR.
async fn entries_by_keys(
    connection: &mut Connection,
    pairs: &[(&str, &str)],
) -> Result<HashMap<String, HashMap<String, LedgerEntry>>, BillingError> {
    let mut found: HashMap<String, HashMap<String, LedgerEntry>> = HashMap::new();
    let columns = ENTRY_COLUMNS.split(", ").map(|column| format!("e.{column}")).collect::<Vec<_>>().join(", ");
    for chunk in pairs.chunks(KEY_CHUNK) {
        let mut sql = String::from("WITH wanted (account_id, idempotency_key) AS (VALUES ");
        push_placeholders(&mut sql, chunk.len(), 2);
        let _ = write!(
            sql,
            ") SELECT {columns} FROM wanted w JOIN ledger_entries e \
             ON e.account_id = w.account_id AND e.idempotency_key = w.idempotency_key"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (account, key) in chunk {
            query = query.bind(*account).bind(*key);
        }
        for row in query.persistent(false).fetch_all(&mut *connection).await? {
            let entry = from_row(&row)?;
            found.entry(entry.tenant_id.clone()).or_default().insert(entry.idempotency_key.clone(), entry);
        }
    }
    Ok(found)
}

/// The highest entry number of each account (absent: no entry yet). One index probe
/// per account, whatever the length of its history.
async fn last_entry_numbers(
    connection: &mut Connection,
    accounts: &[&str],
) -> Result<HashMap<String, i64>, BillingError> {
    let mut found = HashMap::new();
    for chunk in accounts.chunks(KEY_CHUNK) {
        let sql = format!(
            "SELECT a.id, (SELECT MAX(e.entry_no) FROM ledger_entries e WHERE e.account_id = a.id) AS last_no \
             FROM billing_accounts a WHERE a.id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for account in chunk {
            query = query.bind(*account);
        }
        for row in query.persistent(false).fetch_all(&mut *connection).await? {
            if let Some(last) = row.try_get::<Option<i64>, _>("last_no")? {
                found.insert(row.try_get("id")?, last);
            }
        }
    }
    Ok(found)
}

/// The latest checkpoint plus the entries after it: with checkpoints every N entries,
/// at most N-1 rows are summed, however long the ledger.
async fn account_balance(connection: &mut Connection, account_id: &str) -> Result<i64, BillingError> {
    let checkpoint = sqlx::query(
        "SELECT entry_no, balance_minor FROM ledger_checkpoints WHERE account_id = $1 ORDER BY entry_no DESC LIMIT 1",
    )
    .bind(account_id)
    .persistent(false)
    .fetch_optional(&mut *connection)
    .await?;
    let (after, base) = match checkpoint {
        Some(row) => (row.try_get::<i64, _>("entry_no")?, row.try_get::<i64, _>("balance_minor")?),
        None => (0, 0),
    };
    // PostgreSQL sums BIGINT into NUMERIC; the cast keeps the type one both engines
    // decode as i64.
    let tail: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM ledger_entries \
         WHERE account_id = $1 AND entry_no > $2",
    )
    .bind(account_id)
    .bind(after)
    .persistent(false)
    .fetch_one(&mut *connection)
    .await?;
    base.checked_add(tail)
        .ok_or_else(|| BillingError::Corrupt(format!("the balance of account {account_id} overflows")))
}

/// The tenant's balance, read from the pool.
pub async fn balance(store: &Store, tenant_id: &str) -> Result<Balance, BillingError> {
    let mut connection = store.pool().acquire().await?;
    balance_in(&mut connection, tenant_id).await
}

/// What a balance read returns per account: its currency, its latest checkpoint
/// (`base`) and the entries after it (`tail`). PostgreSQL sums BIGINT into NUMERIC;
/// the casts keep types both engines decode as i64.
const BALANCE_COLUMNS: &str = "a.tenant_id, a.currency, \
    CAST(COALESCE((SELECT c.balance_minor FROM ledger_checkpoints c WHERE c.account_id = a.id \
                   ORDER BY c.entry_no DESC LIMIT 1), 0) AS BIGINT) AS base, \
    CAST(COALESCE((SELECT SUM(e.amount_minor) FROM ledger_entries e WHERE e.account_id = a.id \
                   AND e.entry_no > COALESCE((SELECT MAX(c.entry_no) FROM ledger_checkpoints c \
                                              WHERE c.account_id = a.id), 0)), 0) AS BIGINT) AS tail";

fn balance_from_row(row: &gpuaas_store::Row) -> Result<Balance, BillingError> {
    let tenant_id: String = row.try_get("tenant_id")?;
    let base: i64 = row.try_get("base")?;
    let tail: i64 = row.try_get("tail")?;
    let amount_minor = base
        .checked_add(tail)
        .ok_or_else(|| BillingError::Corrupt(format!("the balance of tenant {tenant_id} overflows")))?;
    Ok(Balance { tenant_id, amount_minor, currency: Some(row.try_get("currency")?) })
}

/// The tenant's balance as the caller's transaction sees it, e.g. after posting in it.
/// One statement: the latest checkpoint plus the entries after it.
pub async fn balance_in(connection: &mut Connection, tenant_id: &str) -> Result<Balance, BillingError> {
    let mut balances = balances_in(connection, &[tenant_id]).await?;
    balances
        .remove(tenant_id)
        .ok_or_else(|| BillingError::Corrupt(format!("no balance was read for tenant {tenant_id}")))
}

/// [`balance_in`] for several tenants in one statement (a batch of requests); a
/// tenant without an account has a zero balance. A prepared statement per batch size:
/// balance reads are the hot path, planning costs more than running this query, and
/// its plan (probes of unique indexes) does not depend on table size; PostgreSQL
/// replans it after ANALYZE anyway.
pub async fn balances_in(
    connection: &mut Connection,
    tenant_ids: &[&str],
) -> Result<HashMap<String, Balance>, BillingError> {
    let mut balances: HashMap<String, Balance> = HashMap::with_capacity(tenant_ids.len());
    for tenant_id in tenant_ids {
        validate_text("tenant_id", tenant_id, MAX_TEXT_LEN)?;
        balances.insert(
            (*tenant_id).to_owned(),
            Balance { tenant_id: (*tenant_id).to_owned(), amount_minor: 0, currency: None },
        );
    }
    if balances.is_empty() {
        return Ok(balances);
    }
    let tenants: Vec<&String> = balances.keys().collect();
    let batch = gpuaas_store::Padded::new(&tenants, gpuaas_store::LIST_PADDING_MOST);
    let placeholders = batch.placeholders(1);
    let sql = format!("SELECT {BALANCE_COLUMNS} FROM billing_accounts a WHERE a.tenant_id IN ({})", placeholders);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (tenant_id, _) in batch.rows() {
        query = query.bind((*tenant_id).clone());
    }
    for row in query.fetch_all(&mut *connection).await? {
        let balance = balance_from_row(&row)?;
        balances.insert(balance.tenant_id.clone(), balance);
    }
    Ok(balances)
}

/// One entry by id; [`BillingError::NotFound`] when there is none.
pub async fn entry(store: &Store, entry_id: &str) -> Result<LedgerEntry, BillingError> {
    validate_text("entry_id", entry_id, MAX_TEXT_LEN)?;
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(entry_id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(BillingError::NotFound("ledger entry"))?;
    from_row(&row)
}

/// How much has been refunded against a credit so far, as a positive number: the sum
/// of `refund` entries whose reference is ([`REFERENCE_LEDGER_ENTRY`],
/// `credit_entry_id`). Run it in the refunding transaction, after [`post`] has locked
/// the account, so two refunds of one credit cannot both see the old remainder.
pub async fn refunded_against(connection: &mut Connection, credit_entry_id: &str) -> Result<i64, BillingError> {
    let sum: i64 = sqlx::query_scalar(
        // `entry_type` is a literal so the planner can use the partial refunds index.
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM ledger_entries \
         WHERE entry_type = 'refund' AND reference_id = $2 AND reference_type = $1",
    )
    .bind(REFERENCE_LEDGER_ENTRY)
    .bind(credit_entry_id)
    .persistent(false)
    .fetch_one(&mut *connection)
    .await?;
    sum.checked_neg().ok_or_else(|| BillingError::Corrupt(format!("refunds against {credit_entry_id} overflow")))
}

async fn insert_entries(connection: &mut Connection, rows: &[(String, LedgerEntry)]) -> Result<(), BillingError> {
    const COLUMNS: usize = 14;
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO ledger_entries (id, account_id, tenant_id, entry_no, entry_type, amount_minor, currency, \
             idempotency_key, reference_type, reference_id, correlation_id, description, created_by, created_at) VALUES ",
        );
        push_placeholders(&mut sql, chunk.len(), COLUMNS);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (account_id, entry) in chunk {
            query = query
                .bind(entry.id.as_str())
                .bind(account_id.as_str())
                .bind(entry.tenant_id.as_str())
                .bind(entry.entry_no)
                .bind(entry.entry_type.as_str())
                .bind(entry.amount_minor)
                .bind(entry.currency.as_str())
                .bind(entry.idempotency_key.as_str())
                .bind(entry.reference_type.as_str())
                .bind(entry.reference_id.as_str())
                .bind(entry.correlation_id.as_str())
                .bind(entry.description.as_deref())
                .bind(entry.created_by.as_str())
                .bind(entry.created_at.as_micros());
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

async fn insert_checkpoints(
    connection: &mut Connection,
    rows: &[(String, i64, i64)],
    now: Timestamp,
) -> Result<(), BillingError> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql =
            String::from("INSERT INTO ledger_checkpoints (account_id, entry_no, balance_minor, created_at) VALUES ");
        push_placeholders(&mut sql, chunk.len(), 4);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (account_id, entry_no, balance_minor) in chunk {
            query = query.bind(account_id.as_str()).bind(*entry_no).bind(*balance_minor).bind(now.as_micros());
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

/// Appends `($1, $2, …), (…)` for `rows` rows of `columns` binds each.
fn push_placeholders(sql: &mut String, rows: usize, columns: usize) {
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", row * columns + column + 1);
        }
        sql.push(')');
    }
}

pub(crate) fn from_row(row: &gpuaas_store::Row) -> Result<LedgerEntry, BillingError> {
    let id: String = row.try_get("id")?;
    let entry_type: String = row.try_get("entry_type")?;
    let entry_type = EntryType::parse(&entry_type)
        .ok_or_else(|| BillingError::Corrupt(format!("ledger entry {id} has unknown type `{entry_type}`")))?;
    Ok(LedgerEntry {
        id,
        tenant_id: row.try_get("tenant_id")?,
        entry_no: row.try_get("entry_no")?,
        entry_type,
        amount_minor: row.try_get("amount_minor")?,
        currency: row.try_get("currency")?,
        idempotency_key: row.try_get("idempotency_key")?,
        reference_type: row.try_get("reference_type")?,
        reference_id: row.try_get("reference_id")?,
        correlation_id: row.try_get("correlation_id")?,
        description: row.try_get("description")?,
        created_by: row.try_get("created_by")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(entry_type: EntryType, amount_minor: i64) -> NewEntry<'static> {
        NewEntry {
            tenant_id: "t1",
            entry_type,
            amount_minor,
            currency: "EUR",
            idempotency_key: "k1",
            reference_type: "payment",
            reference_id: "p1",
            correlation_id: "c1",
            created_by: "system",
            description: None,
        }
    }

    #[test]
    fn entry_types_round_trip_through_text_and_json() {
        for kind in EntryType::ALL {
            assert_eq!(EntryType::parse(kind.as_str()), Some(*kind));
            assert_eq!(serde_json::to_value(kind).ok(), Some(serde_json::json!(kind.as_str())));
        }
        assert_eq!(EntryType::parse("Refund"), None);
    }

    #[test]
    fn signs_follow_the_type() {
        assert!(EntryType::CreditPurchase.allows(1) && !EntryType::CreditPurchase.allows(-1));
        assert!(EntryType::AdminCredit.allows(1) && !EntryType::AdminCredit.allows(-1));
        for debit in [EntryType::UsageDebit, EntryType::AdminDebit, EntryType::Refund] {
            assert!(debit.allows(-1) && !debit.allows(1), "{debit}");
        }
        assert!(EntryType::Reversal.allows(1) && EntryType::Reversal.allows(-1));
        for kind in EntryType::ALL {
            assert!(!kind.allows(0), "{kind}");
        }
    }

    #[test]
    fn entries_are_validated() {
        assert!(validate(&sample(EntryType::CreditPurchase, 100)).is_ok());
        assert!(validate(&sample(EntryType::CreditPurchase, MAX_AMOUNT_MINOR)).is_ok());
        assert!(validate(&sample(EntryType::AdminDebit, -MAX_AMOUNT_MINOR)).is_ok());
        let field = |entry: NewEntry<'_>| validate(&entry).err().and_then(|e| e.field().map(str::to_owned));
        assert_eq!(field(sample(EntryType::CreditPurchase, 0)).as_deref(), Some("amount_minor"));
        assert_eq!(field(sample(EntryType::CreditPurchase, -5)).as_deref(), Some("amount_minor"));
        assert_eq!(field(sample(EntryType::UsageDebit, 5)).as_deref(), Some("amount_minor"));
        assert_eq!(field(sample(EntryType::CreditPurchase, MAX_AMOUNT_MINOR + 1)).as_deref(), Some("amount_minor"));
        assert_eq!(field(sample(EntryType::AdminDebit, i64::MIN)).as_deref(), Some("amount_minor"));
        for currency in ["eur", "EU", "EURO", "E1R", "ÉUR", ""] {
            assert_eq!(field(NewEntry { currency, ..sample(EntryType::Refund, -1) }).as_deref(), Some("currency"));
        }
        let long_key = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
        assert_eq!(
            field(NewEntry { idempotency_key: &long_key, ..sample(EntryType::Reversal, 1) }).as_deref(),
            Some("idempotency_key")
        );
        assert_eq!(field(NewEntry { tenant_id: "", ..sample(EntryType::Reversal, 1) }).as_deref(), Some("tenant_id"));
        assert_eq!(
            field(NewEntry { reference_id: "a\nb", ..sample(EntryType::Reversal, 1) }).as_deref(),
            Some("reference_id")
        );
        let long = "d".repeat(MAX_TEXT_LEN + 1);
        assert_eq!(
            field(NewEntry { description: Some(&long), ..sample(EntryType::Reversal, -1) }).as_deref(),
            Some("description")
        );
    }
}

//! Listing the ledger: filters, keyset pages newest first.

use gpuaas_kernel::cursor::MAX_PAGE_LIMIT;
use gpuaas_kernel::{Cursor, PageError, Timestamp};
use gpuaas_store::Store;
use gpuaas_store::sqlx;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::BillingError;
use crate::ledger::{ENTRY_COLUMNS, EntryType, LedgerEntry, MAX_TEXT_LEN, from_row, validate_text};

/// What to list. `from` and `to` are both inclusive and apply to `created_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LedgerFilter {
    pub entry_type: Option<EntryType>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

/// One page of entries, newest first; `next_cursor` is absent on the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LedgerPage {
    pub items: Vec<LedgerEntry>,
    pub next_cursor: Option<String>,
}

pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// A WHERE clause under construction. Only placeholders are formatted into the SQL;
/// every value travels as a bind.
#[derive(Default)]
pub(crate) struct Conditions {
    pub(crate) clauses: Vec<String>,
    pub(crate) binds: Vec<Bind>,
}

impl Conditions {
    /// Adds a bind and returns its placeholder.
    pub(crate) fn param(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        format!("${}", self.binds.len())
    }

    /// Keyset condition for a newest-first listing ordered by (`column`, id); `id`
    /// breaks ties between equal sort keys, so no row is skipped or repeated.
    pub(crate) fn before(&mut self, column: &str, after: &Cursor) {
        let key = self.param(Bind::Int(after.sort_key));
        let id = self.param(Bind::Text(after.id.clone()));
        self.clauses.push(format!("({column} < {key} OR ({column} = {key} AND id < {id}))"));
    }

    pub(crate) fn where_clause(&self) -> String {
        if self.clauses.is_empty() { String::new() } else { format!(" WHERE {}", self.clauses.join(" AND ")) }
    }

    pub(crate) async fn fetch_all(self, sql: String, store: &Store) -> Result<Vec<gpuaas_store::Row>, BillingError> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in self.binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(number) => query.bind(number),
            };
        }
        // Planned afresh against the table as it is, not with a plan cached while
        // the table was small (see the note above `ledger::entries_by_keys`).
        Ok(query.persistent(false).fetch_all(store.pool()).await?)
    }
}

pub(crate) fn check_limit(limit: u32) -> Result<(), BillingError> {
    if (1..=MAX_PAGE_LIMIT).contains(&limit) { Ok(()) } else { Err(PageError::InvalidLimit.into()) }
}

/// Lists the tenant's entries matching `filter`, newest first (by `created_at`, then
/// id). `cursor` is the previous page's `next_cursor`; `limit` must be
/// 1..=`MAX_PAGE_LIMIT`. A tenant without an account has an empty ledger.
pub async fn list_ledger(
    store: &Store,
    tenant_id: &str,
    filter: &LedgerFilter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<LedgerPage, BillingError> {
    validate_text("tenant_id", tenant_id, MAX_TEXT_LEN)?;
    check_limit(limit)?;
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from > to
    {
        return Err(BillingError::invalid("from", "must not be later than to"));
    }
    let after = cursor.map(Cursor::decode).transpose()?;

    let mut conditions = Conditions::default();
    // The subquery resolves the tenant's one account, so the page is a range scan of
    // the (account_id, created_at, id) index.
    let tenant = conditions.param(Bind::Text(tenant_id.to_owned()));
    conditions.clauses.push(format!("account_id = (SELECT id FROM billing_accounts WHERE tenant_id = {tenant})"));
    if let Some(entry_type) = filter.entry_type {
        let param = conditions.param(Bind::Text(entry_type.as_str().to_owned()));
        conditions.clauses.push(format!("entry_type = {param}"));
    }
    if let Some(from) = filter.from {
        let param = conditions.param(Bind::Int(from.as_micros()));
        conditions.clauses.push(format!("created_at >= {param}"));
    }
    if let Some(to) = filter.to {
        let param = conditions.param(Bind::Int(to.as_micros()));
        conditions.clauses.push(format!("created_at <= {param}"));
    }
    if let Some(after) = &after {
        conditions.before("created_at", after);
    }
    // One row more than asked tells whether another page follows.
    let limit_param = conditions.param(Bind::Int(i64::from(limit) + 1));
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries{} ORDER BY created_at DESC, id DESC LIMIT {limit_param}",
        conditions.where_clause()
    );
    let rows = conditions.fetch_all(sql, store).await?;
    let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| Cursor::new(last.created_at.as_micros(), last.id.clone()).encode())
    } else {
        None
    };
    Ok(LedgerPage { items, next_cursor })
}

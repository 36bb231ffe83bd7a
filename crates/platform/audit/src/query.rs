//! Reading the trail back: filters, keyset pages newest first.

use gpuaas_kernel::cursor::MAX_PAGE_LIMIT;
use gpuaas_kernel::{Cursor, Timestamp};
use gpuaas_store::Store;
use gpuaas_store::sqlx::{self, Row};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AuditError, AuditLog};

/// Longest value any text filter accepts, in characters.
pub const MAX_FILTER_LEN: usize = 256;

const COLUMNS: &str =
    "id, at, actor_id, actor_type, actor_role, action, target, tenant_id, result, correlation_id, details";

/// What to list. Text filters match exactly; `from` and `to` are both inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuditFilter {
    pub actor_id: Option<String>,
    pub target: Option<String>,
    pub action: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

impl AuditFilter {
    /// Refuses empty or oversized text filters and an inverted date range.
    pub fn validate(&self) -> Result<(), AuditError> {
        for (name, value) in [("actor_id", &self.actor_id), ("target", &self.target), ("action", &self.action)] {
            if let Some(value) = value {
                if value.is_empty() {
                    return Err(AuditError::InvalidFilter(format!("{name} must not be empty")));
                }
                if value.chars().count() > MAX_FILTER_LEN {
                    return Err(AuditError::InvalidFilter(format!(
                        "{name} must be at most {MAX_FILTER_LEN} characters"
                    )));
                }
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from > to
        {
            return Err(AuditError::InvalidFilter("from must not be later than to".to_owned()));
        }
        Ok(())
    }
}

/// One page of entries, newest first; `next_cursor` is absent on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditLog>,
    pub next_cursor: Option<String>,
}

/// Lists entries matching `filter`, newest first. `cursor` is the previous page's
/// `next_cursor`; `limit` must be 1..=`MAX_PAGE_LIMIT` (see `gpuaas_kernel::page_limit`).
pub async fn list(
    store: &Store,
    filter: &AuditFilter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<AuditPage, AuditError> {
    filter.validate()?;
    if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
        return Err(AuditError::InvalidLimit);
    }
    let after = cursor.map(|text| Cursor::decode(text).map_err(|_| AuditError::InvalidCursor)).transpose()?;
    let (items, next) = fetch_page(store, filter, after.as_ref(), limit).await?;
    Ok(AuditPage { items, next_cursor: next.map(|cursor| cursor.encode()) })
}

enum Bind {
    Text(String),
    Int(i64),
}

/// A WHERE clause under construction. Only placeholders are formatted into the SQL;
/// every value travels as a bind.
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    binds: Vec<Bind>,
}

impl Conditions {
    /// Adds a bind and returns its placeholder.
    fn param(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        format!("${}", self.binds.len())
    }

    fn text(&mut self, column: &str, value: &Option<String>) {
        if let Some(value) = value {
            let param = self.param(Bind::Text(value.clone()));
            self.clauses.push(format!("{column} = {param}"));
        }
    }

    fn where_clause(&self) -> String {
        if self.clauses.is_empty() { String::new() } else { format!(" WHERE {}", self.clauses.join(" AND ")) }
    }
}

/// One page after `after` (exclusive) plus the cursor of its last row when more rows
/// follow. Reads `limit + 1` rows to know that without a second query.
pub(crate) async fn fetch_page(
    store: &Store,
    filter: &AuditFilter,
    after: Option<&Cursor>,
    limit: u32,
) -> Result<(Vec<AuditLog>, Option<Cursor>), AuditError> {
    let mut conditions = Conditions::default();
    conditions.text("actor_id", &filter.actor_id);
    conditions.text("target", &filter.target);
    conditions.text("action", &filter.action);
    if let Some(from) = filter.from {
        let param = conditions.param(Bind::Int(from.as_micros()));
        conditions.clauses.push(format!("at >= {param}"));
    }
    if let Some(to) = filter.to {
        let param = conditions.param(Bind::Int(to.as_micros()));
        conditions.clauses.push(format!("at <= {param}"));
    }
    if let Some(after) = after {
        // `id` breaks ties between equal timestamps, so no row is skipped or repeated.
        let at = conditions.param(Bind::Int(after.sort_key));
        let id = conditions.param(Bind::Text(after.id.clone()));
        conditions.clauses.push(format!("(at < {at} OR (at = {at} AND id < {id}))"));
    }
    let limit_param = conditions.param(Bind::Int(i64::from(limit) + 1));
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_logs{} ORDER BY at DESC, id DESC LIMIT {limit_param}",
        conditions.where_clause()
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for bind in conditions.binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(number) => query.bind(number),
        };
    }
    // Planned with its values: which filter's index to walk depends on how rare its
    // value is (one actor's entries against a common action's).
    let rows = store.fetch_all_with_values(query).await?;
    let mut items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| Cursor::new(last.at.as_micros(), last.id.clone()))
    } else {
        None
    };
    Ok((items, next))
}

fn from_row(row: &gpuaas_store::Row) -> Result<AuditLog, AuditError> {
    let id: String = row.try_get("id")?;
    let corrupt = |reason: String| AuditError::CorruptRow { id: id.clone(), reason };
    let actor_type: String = row.try_get("actor_type")?;
    let result: String = row.try_get("result")?;
    let details: String = row.try_get("details")?;
    Ok(AuditLog {
        id: id.clone(),
        at: Timestamp::from_micros(row.try_get("at")?),
        actor_id: row.try_get("actor_id")?,
        actor_type: actor_type.parse().map_err(|e: AuditError| corrupt(e.to_string()))?,
        actor_role: row.try_get("actor_role")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        tenant_id: row.try_get("tenant_id")?,
        result: result.parse().map_err(|e: AuditError| corrupt(e.to_string()))?,
        correlation_id: row.try_get("correlation_id")?,
        details: serde_json::from_str(&details).map_err(|e| corrupt(format!("details are not JSON: {e}")))?,
    })
}

//! The audit trail: who did what to which resource, when, and with what result.
//!
//! Domain code calls [`record`] inside the same transaction as the change it audits, so
//! an entry exists exactly when the change does; [`record_standalone`] is for events
//! with no transaction of their own (a failed login). Entries are read back with
//! [`list`] (newest first, keyset paged) and [`export_csv`] (streamed).
//!
//! This crate owns `audit_logs`, which is append-only: the database itself refuses
//! UPDATE, DELETE and TRUNCATE (see ADR 005). It must never offer a way to change or
//! remove an entry, and never store a secret: `details` and `target` are scrubbed with
//! `gpuaas_telemetry::sanitize` before they are written.

mod export;
mod query;

use std::fmt;
use std::str::FromStr;

use gpuaas_kernel::{Timestamp, new_id};
use gpuaas_store::sqlx;
use gpuaas_store::{Connection, Migration, Store, StoreError};
use gpuaas_telemetry::sanitize::{sanitize, scrub_text};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use export::{CSV_HEADER, EXPORT_PAGE_SIZE, export_csv};
pub use query::{AuditFilter, AuditPage, MAX_FILTER_LEN, list};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112320,
    name: "audit_logs",
    sqlite: include_str!("../migrations/2026112320_audit_logs.sqlite.sql"),
    postgres: include_str!("../migrations/2026112320_audit_logs.postgres.sql"),
}];

/// Longest stored actor id, role, target, tenant id or correlation id, in characters.
pub const MAX_TEXT_LEN: usize = 256;
/// Longest action name, e.g. `user.create`.
pub const MAX_ACTION_LEN: usize = 128;
/// Largest `details` JSON stored; a bigger one is replaced by a marker saying so.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    User,
    ServiceAccount,
    System,
    Anonymous,
}

impl ActorType {
    pub const ALL: &'static [ActorType] =
        &[ActorType::User, ActorType::ServiceAccount, ActorType::System, ActorType::Anonymous];

    pub const fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::ServiceAccount => "service_account",
            ActorType::System => "system",
            ActorType::Anonymous => "anonymous",
        }
    }
}

impl FromStr for ActorType {
    type Err = AuditError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ActorType::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| AuditError::unknown_value("actor type", text))
    }
}

/// How the audited attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    Success,
    Denied,
    Failure,
}

impl AuditResult {
    pub const ALL: &'static [AuditResult] = &[AuditResult::Success, AuditResult::Denied, AuditResult::Failure];

    pub const fn as_str(self) -> &'static str {
        match self {
            AuditResult::Success => "success",
            AuditResult::Denied => "denied",
            AuditResult::Failure => "failure",
        }
    }
}

impl FromStr for AuditResult {
    type Err = AuditError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AuditResult::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| AuditError::unknown_value("audit result", text))
    }
}

/// An entry to record. `target` is a canonical resource id
/// (`gpuaas_kernel::ResourceIdFormat::format`) where there is one, free text otherwise
/// (e.g. the login name of a failed sign-in).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditLog {
    pub actor_id: String,
    pub actor_type: ActorType,
    pub actor_role: String,
    pub action: String,
    pub target: String,
    pub tenant_id: Option<String>,
    pub result: AuditResult,
    pub correlation_id: String,
    pub details: serde_json::Value,
}

/// A recorded entry, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuditLog {
    pub id: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub actor_id: String,
    pub actor_type: ActorType,
    pub actor_role: String,
    pub action: String,
    pub target: String,
    pub tenant_id: Option<String>,
    pub result: AuditResult,
    pub correlation_id: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cursor is not one this API issued")]
    InvalidCursor,
    #[error("limit must be between 1 and {}", gpuaas_kernel::cursor::MAX_PAGE_LIMIT)]
    InvalidLimit,
    #[error("invalid audit filter: {0}")]
    InvalidFilter(String),
    #[error("invalid audit entry: {0}")]
    InvalidEntry(String),
    #[error("unknown {kind} `{value}`")]
    UnknownValue { kind: &'static str, value: String },
    #[error("stored audit entry {id} cannot be read: {reason}")]
    CorruptRow { id: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl AuditError {
    /// Echoes at most a short, debug-escaped piece of the offending text, so an error
    /// message can never carry control characters or a huge payload back to a client.
    fn unknown_value(kind: &'static str, text: &str) -> Self {
        let value: String = text.chars().take(64).flat_map(char::escape_debug).collect();
        AuditError::UnknownValue { kind, value }
    }
}

/// Records `entry` on `connection`, which must be the caller's transaction
/// (`&mut *tx`): a rolled-back change leaves no audit entry, and a committed one
/// always has one.
///
/// Only `action` is validated (it is a constant chosen by code, so a bad one is a bug).
/// The other text fields may carry user input, e.g. a mistyped login name; they are
/// cut to [`MAX_TEXT_LEN`] characters rather than refused, because losing the entry
/// would be worse than shortening it.
pub async fn record(connection: &mut Connection, entry: &NewAuditLog) -> Result<AuditLog, AuditError> {
    let log = prepare(entry)?;
    insert(connection, std::slice::from_ref(&log)).await?;
    Ok(log)
}

/// [`record`] for many entries at once (a batch of requests in one transaction),
/// written by one INSERT per hundred.
pub async fn record_many(connection: &mut Connection, entries: &[NewAuditLog]) -> Result<(), AuditError> {
    let logs = entries.iter().map(prepare).collect::<Result<Vec<_>, _>>()?;
    for chunk in logs.chunks(ENTRIES_PER_INSERT) {
        insert(connection, chunk).await?;
    }
    Ok(())
}

/// Audit rows per INSERT (11 parameters each).
const ENTRIES_PER_INSERT: usize = 100;

/// The row `entry` becomes: checked, cut to size and scrubbed.
fn prepare(entry: &NewAuditLog) -> Result<AuditLog, AuditError> {
    validate_action(&entry.action)?;
    Ok(AuditLog {
        id: new_id().to_string(),
        at: Timestamp::now(),
        actor_id: truncate(&entry.actor_id),
        actor_type: entry.actor_type,
        actor_role: truncate(&entry.actor_role),
        action: entry.action.clone(),
        target: truncate(&scrub_text(&entry.target)),
        tenant_id: entry.tenant_id.as_deref().map(truncate),
        result: entry.result,
        correlation_id: truncate(&entry.correlation_id),
        details: clean_details(&entry.details),
    })
}

async fn insert(connection: &mut Connection, logs: &[AuditLog]) -> Result<(), AuditError> {
    if logs.is_empty() {
        return Ok(());
    }
    let batch = gpuaas_store::Padded::new(logs, ENTRIES_PER_INSERT);
    let sql = format!(
        "INSERT INTO audit_logs (id, at, actor_id, actor_type, actor_role, action, target, tenant_id, result, \
         correlation_id, details) {}",
        batch.insert_rows(1, 11)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (log, padding) in batch.rows() {
        query = query
            .bind((!padding).then(|| log.id.clone()))
            .bind(log.at.as_micros())
            .bind(log.actor_id.clone())
            .bind(log.actor_type.as_str())
            .bind(log.actor_role.clone())
            .bind(log.action.clone())
            .bind(log.target.clone())
            .bind(log.tenant_id.clone())
            .bind(log.result.as_str())
            .bind(log.correlation_id.clone())
            .bind(log.details.to_string());
    }
    query.execute(&mut *connection).await?;
    Ok(())
}

/// Records `entry` in a transaction of its own, for events that have no domain
/// transaction to join (a refused login, a denied request).
pub async fn record_standalone(store: &Store, entry: &NewAuditLog) -> Result<AuditLog, AuditError> {
    let mut tx = store.begin().await?;
    let log = record(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(log)
}

fn validate_action(action: &str) -> Result<(), AuditError> {
    if action.is_empty() || action.len() > MAX_ACTION_LEN {
        return Err(AuditError::InvalidEntry(format!("action must be 1 to {MAX_ACTION_LEN} characters")));
    }
    if !action.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(AuditError::InvalidEntry("action may only contain a-z, 0-9, '.', '_' and '-'".to_owned()));
    }
    Ok(())
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_TEXT_LEN).collect()
}

/// Secrets are redacted before anything is stored; an oversized value is replaced by a
/// marker so one careless caller cannot bloat the table or fail the audited change.
fn clean_details(details: &serde_json::Value) -> serde_json::Value {
    let clean = sanitize(details);
    let size = clean.to_string().len();
    if size > MAX_DETAILS_BYTES { serde_json::json!({ "truncated": true, "original_bytes": size }) } else { clean }
}

impl fmt::Display for ActorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for AuditResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_text_and_json() {
        for kind in ActorType::ALL {
            assert_eq!(kind.as_str().parse::<ActorType>().ok(), Some(*kind));
            assert_eq!(serde_json::to_value(kind).ok(), Some(serde_json::json!(kind.as_str())));
        }
        for result in AuditResult::ALL {
            assert_eq!(result.as_str().parse::<AuditResult>().ok(), Some(*result));
            assert_eq!(serde_json::to_value(result).ok(), Some(serde_json::json!(result.as_str())));
        }
        assert!(matches!("root".parse::<ActorType>(), Err(AuditError::UnknownValue { .. })));
        let long_hostile = format!("x\n{}", "y".repeat(500));
        let Err(AuditError::UnknownValue { value, .. }) = long_hostile.parse::<AuditResult>() else {
            panic!("hostile value parsed");
        };
        assert!(!value.contains('\n') && value.len() < 80, "{value}");
    }

    #[test]
    fn actions_are_validated() {
        assert!(validate_action("user.create").is_ok());
        assert!(validate_action("auth.login_failed").is_ok());
        for bad in ["", "User.Create", "user create", "user;drop", &"a".repeat(MAX_ACTION_LEN + 1)] {
            assert!(matches!(validate_action(bad), Err(AuditError::InvalidEntry(_))), "{bad}");
        }
    }

    #[test]
    fn details_are_sanitized_and_bounded() {
        let clean = clean_details(&serde_json::json!({"password": "hunter2", "nested": {"api_key": "k"}, "ok": 1}));
        assert_eq!(clean["password"], gpuaas_telemetry::sanitize::REDACTED);
        assert_eq!(clean["nested"]["api_key"], gpuaas_telemetry::sanitize::REDACTED);
        assert_eq!(clean["ok"], 1);
        let huge = clean_details(&serde_json::json!({"blob": "x".repeat(MAX_DETAILS_BYTES * 2)}));
        assert_eq!(huge["truncated"], true);
    }
}

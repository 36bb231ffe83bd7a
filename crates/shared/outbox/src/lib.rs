//! The transactional outbox: domain code writes an event row in the SAME transaction as
//! its domain rows ([`enqueue`]); the [`Relay`] later claims pending rows, publishes them
//! to the bus, and marks them published. A rolled-back transaction therefore publishes
//! nothing, and a bus outage only delays events.
//!
//! Rows are claimed with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several
//! relays never publish the same row at once. Failed publishes back off exponentially
//! with jitter; after the policy's attempt limit the row is marked `failed` and a copy
//! goes to the dead-letter queue. This crate owns `outbox_events` and
//! `outbox_dead_letters`; it must never publish anything that was not committed.

mod relay;

use gpuaas_events::EventEnvelope;
use gpuaas_events::catalog::validate_subject;
use gpuaas_store::{Connection, Migration, StoreError};
pub use relay::{OutboxCounts, Relay, RelayReport, RelaySettings};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112303,
    name: "outbox",
    sqlite: include_str!("../migrations/2026112303_outbox.sqlite.sql"),
    postgres: include_str!("../migrations/2026112303_outbox.postgres.sql"),
}];

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("event cannot be written to the outbox: {0}")]
    InvalidEvent(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<gpuaas_store::sqlx::Error> for OutboxError {
    fn from(error: gpuaas_store::sqlx::Error) -> Self {
        OutboxError::Store(StoreError::Database(error))
    }
}

/// Writes `event` to the outbox on `connection`, which must be the caller's domain
/// transaction (`&mut *tx`), so the event exists exactly when the domain change does.
pub async fn enqueue(connection: &mut Connection, event: &EventEnvelope) -> Result<(), OutboxError> {
    validate_subject(&event.subject).map_err(OutboxError::InvalidEvent)?;
    let envelope = event.to_json().map_err(|e| OutboxError::InvalidEvent(e.to_string()))?;
    gpuaas_store::sqlx::query(
        "INSERT INTO outbox_events (event_id, subject, envelope, correlation_id, occurred_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(event.id.to_string())
    .bind(&event.subject)
    .bind(envelope)
    .bind(&event.correlation_id)
    .bind(event.occurred_at.as_micros())
    .execute(&mut *connection)
    .await?;
    Ok(())
}

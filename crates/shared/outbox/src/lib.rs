//! The transactional outbox: domain code writes an event row in the SAME transaction as
//! its domain rows ([`enqueue`]); the [`Relay`] later claims pending rows, publishes them
//! to the bus, and marks them published. A rolled-back transaction therefore publishes
//! nothing, and a bus outage only delays events.
//!
//! Rows are claimed with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several
//! relays never publish the same row at once. Failed publishes back off exponentially
//! with jitter; after the policy's attempt limit the row is marked `failed` and a copy
//! goes to the dead-letter queue; published rows are deleted once past the retention
//! window ([`purge_published`]). This crate owns `outbox_events` and
//! `outbox_dead_letters`; it must never publish anything that was not committed.

mod relay;

use gpuaas_events::EventEnvelope;
use gpuaas_events::catalog::validate_subject;
use gpuaas_kernel::Timestamp;
use gpuaas_store::{Connection, Migration, Store, StoreError};
pub use relay::{OutboxCounts, Relay, RelayReport, RelaySettings};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112303,
        name: "outbox",
        sqlite: include_str!("../migrations/2026112303_outbox.sqlite.sql"),
        postgres: include_str!("../migrations/2026112303_outbox.postgres.sql"),
    },
    Migration {
        version: 2026120300,
        name: "outbox_event_id_not_unique",
        sqlite: include_str!("../migrations/2026120300_outbox_event_id_not_unique.sqlite.sql"),
        postgres: include_str!("../migrations/2026120300_outbox_event_id_not_unique.postgres.sql"),
    },
];

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

/// Deletes the rows published before `older_than` (the retention policy's cutoff, run
/// by the workers role); pending and failed rows stay whatever their age. Returns how
/// many went.
pub async fn purge_published(store: &Store, older_than: Timestamp) -> Result<u64, OutboxError> {
    // A row is published only once it is due, so one published before the cutoff was
    // due before it too: the condition on next_attempt_at adds nothing to the result
    // but lets the pending index (status, next_attempt_at) find exactly the old rows,
    // where a minute with nothing to purge would otherwise read every published row.
    let delete = "DELETE FROM outbox_events WHERE seq IN (SELECT seq FROM outbox_events \
                  WHERE status = 'published' AND next_attempt_at < $1 AND published_at < $1 LIMIT $2)";
    Ok(store.purge_in_batches(delete, older_than.as_micros()).await?)
}

/// Writes `event` to the outbox on `connection`, which must be the caller's domain
/// transaction (`&mut *tx`), so the event exists exactly when the domain change does.
pub async fn enqueue(connection: &mut Connection, event: &EventEnvelope) -> Result<(), OutboxError> {
    enqueue_many(connection, std::slice::from_ref(event)).await
}

/// Most events one INSERT carries (6 parameters each, well within both engines'
/// limits).
const EVENTS_PER_INSERT: usize = 200;

/// [`enqueue`] for several events, in order, with one INSERT per
/// [`EVENTS_PER_INSERT`] events: for callers that change many rows in one transaction.
/// Every event is checked before anything is written.
pub async fn enqueue_many(connection: &mut Connection, events: &[EventEnvelope]) -> Result<(), OutboxError> {
    let mut envelopes = Vec::with_capacity(events.len());
    for event in events {
        validate_subject(&event.subject).map_err(OutboxError::InvalidEvent)?;
        envelopes.push(event.to_json().map_err(|e| OutboxError::InvalidEvent(e.to_string()))?);
    }
    for (events, envelopes) in events.chunks(EVENTS_PER_INSERT).zip(envelopes.chunks(EVENTS_PER_INSERT)) {
        let rows: Vec<(&EventEnvelope, &String)> = events.iter().zip(envelopes).collect();
        let batch = gpuaas_store::Padded::new(&rows, EVENTS_PER_INSERT);
        let sql = format!(
            "INSERT INTO outbox_events (event_id, subject, envelope, correlation_id, occurred_at, next_attempt_at) {}",
            batch.insert_rows(1, 6)
        );
        let mut query = gpuaas_store::sqlx::query(gpuaas_store::sqlx::AssertSqlSafe(sql));
        for ((event, envelope), padding) in batch.rows() {
            query = query
                .bind((!padding).then(|| event.id.to_string()))
                .bind(event.subject.clone())
                .bind(String::clone(envelope))
                .bind(event.correlation_id.clone())
                // Due for delivery as soon as it occurred.
                .bind(event.occurred_at.as_micros())
                .bind(event.occurred_at.as_micros());
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

//! Events: the envelope every domain event travels in, the subject and stream catalog,
//! and the [`EventBus`] with its two adapters: the embedded bus (a durable log in the
//! database, for `gpuaas up`) and NATS JetStream (for `gpuaas serve`).
//!
//! Domain code never publishes here directly: it writes to the outbox in its own
//! transaction and the relay publishes. Consumers are at-least-once and deduplicate by
//! event id through [`consumer::process_once`]; [`purge_before`] keeps both the log and
//! those records to the retention window. This crate owns `event_log`,
//! `event_consumer_offsets` and `processed_events`; it holds no business rules.

pub mod bus;
pub mod catalog;
pub mod consumer;
pub mod embedded;
pub mod envelope;
pub mod nats;

pub use bus::{BusError, ConsumerSpec, Delivery, EventBus};
pub use embedded::EmbeddedBus;
pub use envelope::EventEnvelope;
use gpuaas_store::Migration;
pub use nats::NatsBus;

/// Retention (run by the workers role): deletes the embedded bus's log entries
/// appended before `older_than` that every consumer has read past, and the consumers'
/// records of events processed before it: such an event can no longer be redelivered,
/// from the log or from the outbox, whose published rows go at the same age. Returns
/// how many log entries and records went.
pub async fn purge_before(
    store: &gpuaas_store::Store,
    older_than: gpuaas_kernel::Timestamp,
) -> Result<(u64, u64), gpuaas_store::StoreError> {
    // The log is appended in time order, so its oldest entries are its first: a batch
    // is the first entries every consumer has read, of which the old ones go. A batch
    // that is not all old ends the purge, and a minute with nothing to purge reads one
    // batch of the primary key, not the whole log.
    let log = "DELETE FROM event_log WHERE appended_at < $1 AND seq IN (SELECT seq FROM event_log \
               WHERE seq <= (SELECT COALESCE(MIN(last_seq), 0) FROM event_consumer_offsets) ORDER BY seq LIMIT $2)";
    let processed = "DELETE FROM processed_events WHERE (consumer, event_id) IN (SELECT consumer, event_id \
                     FROM processed_events WHERE processed_at < $1 LIMIT $2)";
    let cutoff = older_than.as_micros();
    Ok((store.purge_in_batches(log, cutoff).await?, store.purge_in_batches(processed, cutoff).await?))
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112302,
        name: "embedded_bus",
        sqlite: include_str!("../migrations/2026112302_embedded_bus.sqlite.sql"),
        postgres: include_str!("../migrations/2026112302_embedded_bus.postgres.sql"),
    },
    Migration {
        version: 2026120420,
        name: "processed_events_age",
        sqlite: include_str!("../migrations/2026120420_processed_events_age.sql"),
        postgres: include_str!("../migrations/2026120420_processed_events_age.sql"),
    },
];

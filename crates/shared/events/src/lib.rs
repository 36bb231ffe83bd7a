//! Events: the envelope every domain event travels in, the subject and stream catalog,
//! and the [`EventBus`] with its two adapters: the embedded bus (a durable log in the
//! database, for `gpuaas up`) and NATS JetStream (for `gpuaas serve`).
//!
//! Domain code never publishes here directly: it writes to the outbox in its own
//! transaction and the relay publishes. Consumers are at-least-once and deduplicate by
//! event id through [`consumer::process_once`]. This crate owns `event_log`,
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

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112302,
    name: "embedded_bus",
    sqlite: include_str!("../migrations/2026112302_embedded_bus.sqlite.sql"),
    postgres: include_str!("../migrations/2026112302_embedded_bus.postgres.sql"),
}];

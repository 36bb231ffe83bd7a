use std::time::Duration;

use async_trait::async_trait;

use crate::EventEnvelope;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("event rejected: {0}")]
    Rejected(String),
    #[error("event store: {0}")]
    Store(#[from] gpuaas_store::StoreError),
    #[error("event could not be decoded: {0}")]
    Decode(String),
}

impl From<gpuaas_store::sqlx::Error> for BusError {
    fn from(error: gpuaas_store::sqlx::Error) -> Self {
        BusError::Store(gpuaas_store::StoreError::Database(error))
    }
}

/// A durable consumer: its name keeps its position across restarts; its filter is a
/// subject pattern (`*`, `>` wildcards) inside one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub name: String,
    pub filter: String,
}

impl ConsumerSpec {
    pub fn new(name: impl Into<String>, filter: impl Into<String>) -> Self {
        Self { name: name.into(), filter: filter.into() }
    }
}

/// One event handed to a consumer. Unacknowledged deliveries come again (at-least-once);
/// acknowledge in delivery order.
pub struct Delivery {
    pub event: EventEnvelope,
    pub(crate) acker: Acker,
}

pub(crate) enum Acker {
    Embedded { store: gpuaas_store::Store, consumer: String, seq: i64 },
    Nats(Box<async_nats::jetstream::Message>),
}

impl Delivery {
    pub async fn ack(self) -> Result<(), BusError> {
        match self.acker {
            Acker::Embedded { store, consumer, seq } => crate::embedded::commit_offset(&store, &consumer, seq).await,
            Acker::Nats(message) => message.ack().await.map_err(|error| BusError::Unavailable(error.to_string())),
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("event", &self.event).finish_non_exhaustive()
    }
}

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes one event durably; returns only once the bus has stored it. Publishing
    /// the same event id twice stores it once where the bus can tell (both adapters do).
    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError>;

    /// Fetches up to `max` events after the consumer's position, waiting up to `wait`
    /// for the first one.
    async fn fetch(&self, consumer: &ConsumerSpec, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError>;

    /// Reachable and able to store events.
    async fn health(&self) -> Result<(), BusError>;

    fn name(&self) -> &'static str;
}

//! The embedded bus: events appended to `event_log` in the platform's own database.
//! Durable across restarts, shared by every process on the same database, and needs no
//! other server. Consumers poll; a publish in the same process wakes them at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gpuaas_kernel::Timestamp;
use gpuaas_store::Store;
use gpuaas_store::sqlx::{self, Row};
use tokio::sync::Notify;

use crate::EventEnvelope;
use crate::bus::{Acker, BusError, ConsumerSpec, Delivery, EventBus};
use crate::catalog::{subject_matches, validate_subject};

/// How often a waiting consumer looks for events appended by another process.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct EmbeddedBus {
    store: Store,
    appended: Arc<Notify>,
}

impl EmbeddedBus {
    pub fn new(store: Store) -> Self {
        Self { store, appended: Arc::new(Notify::new()) }
    }

    async fn read_after(&self, consumer: &ConsumerSpec, max: usize) -> Result<Vec<Delivery>, BusError> {
        let offset: i64 = sqlx::query("SELECT last_seq FROM event_consumer_offsets WHERE consumer = $1")
            .bind(&consumer.name)
            .fetch_optional(self.store.pool())
            .await?
            .map(|row| row.try_get("last_seq"))
            .transpose()?
            .unwrap_or(0);
        let scan = i64::try_from(max.max(1) * 4).unwrap_or(i64::MAX);
        let rows = sqlx::query("SELECT seq, subject, envelope FROM event_log WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(offset)
            .bind(scan)
            .fetch_all(self.store.pool())
            .await?;
        let mut deliveries = Vec::new();
        let mut last_scanned = offset;
        for row in rows {
            let seq: i64 = row.try_get("seq")?;
            last_scanned = seq;
            let subject: String = row.try_get("subject")?;
            if !subject_matches(&consumer.filter, &subject) {
                continue;
            }
            let text: String = row.try_get("envelope")?;
            let event = EventEnvelope::from_json(text.as_bytes()).map_err(|e| BusError::Decode(e.to_string()))?;
            deliveries.push(Delivery {
                event,
                acker: Acker::Embedded { store: self.store.clone(), consumer: consumer.name.clone(), seq },
            });
            if deliveries.len() >= max {
                break;
            }
        }
        if deliveries.is_empty() && last_scanned > offset {
            // Nothing for this consumer in the scanned range: move past it so the next
            // fetch does not scan it again.
            commit_offset(&self.store, &consumer.name, last_scanned).await?;
        }
        Ok(deliveries)
    }
}

pub(crate) async fn commit_offset(store: &Store, consumer: &str, seq: i64) -> Result<(), BusError> {
    sqlx::query(
        "INSERT INTO event_consumer_offsets (consumer, last_seq, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer) DO UPDATE SET last_seq = excluded.last_seq, updated_at = excluded.updated_at \
         WHERE event_consumer_offsets.last_seq < excluded.last_seq",
    )
    .bind(consumer)
    .bind(seq)
    .bind(Timestamp::now().as_micros())
    .execute(store.pool())
    .await?;
    Ok(())
}

#[async_trait]
impl EventBus for EmbeddedBus {
    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError> {
        validate_subject(&event.subject).map_err(BusError::Rejected)?;
        let text = event.to_json().map_err(|e| BusError::Rejected(e.to_string()))?;
        sqlx::query(
            "INSERT INTO event_log (event_id, subject, envelope, appended_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event.id.to_string())
        .bind(&event.subject)
        .bind(text)
        .bind(Timestamp::now().as_micros())
        .execute(self.store.pool())
        .await?;
        self.appended.notify_waiters();
        Ok(())
    }

    async fn fetch(&self, consumer: &ConsumerSpec, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.appended.notified();
            let deliveries = self.read_after(consumer, max).await?;
            let now = tokio::time::Instant::now();
            if !deliveries.is_empty() || now >= deadline {
                return Ok(deliveries);
            }
            let nap = POLL_INTERVAL.min(deadline - now);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn health(&self) -> Result<(), BusError> {
        self.store.ping().await?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

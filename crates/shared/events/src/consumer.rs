//! Exactly-once processing on top of at-least-once delivery.

use std::future::Future;
use std::pin::Pin;

use gpuaas_kernel::Timestamp;
use gpuaas_store::{Store, StoreError, Tx};

use crate::EventEnvelope;

pub type HandlerFuture<'a, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'a>>;

/// What [`process_once`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    AlreadyHandled,
}

/// Runs `handler` for `event` inside one transaction that also records
/// `(consumer, event id)` in `processed_events`. A redelivered event finds its record and
/// is skipped, so the handler's effects happen once however often the bus delivers.
pub async fn process_once<E>(
    store: &Store,
    consumer: &str,
    event: &EventEnvelope,
    handler: impl for<'t> FnOnce(&'t mut Tx, &'t EventEnvelope) -> HandlerFuture<'t, E>,
) -> Result<Outcome, E>
where
    E: From<StoreError>,
{
    let mut tx = store.begin().await?;
    let inserted = gpuaas_store::sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event.id.to_string())
    .bind(Timestamp::now().as_micros())
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await.map_err(StoreError::from)?;
        return Ok(Outcome::AlreadyHandled);
    }
    handler(&mut tx, event).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Outcome::Handled)
}

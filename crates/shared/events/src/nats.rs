//! NATS JetStream adapter for `gpuaas serve`: file-backed streams from the catalog,
//! durable pull consumers, publish deduplicated by event id (`Nats-Msg-Id`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Mutex;

use crate::EventEnvelope;
use crate::bus::{Acker, BusError, ConsumerSpec, Delivery, EventBus};
use crate::catalog::{STREAMS, stream_for, validate_subject};

/// JetStream drops a second publish with the same message id inside this window, which
/// covers a relay that crashed between publishing and marking the row published.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// How long a publish waits for JetStream's acknowledgement before the relay counts
/// the attempt as failed and backs off.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Redelivery delay for an event a consumer fetched but did not acknowledge.
const ACK_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    consumers: Arc<Mutex<HashMap<String, jetstream::consumer::PullConsumer>>>,
}

impl NatsBus {
    /// Connects and makes sure every stream of the catalog exists. Fails fast when the
    /// server cannot be reached; after that the client reconnects on its own.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(url)
            .await
            .map_err(|error| BusError::Unavailable(format!("cannot connect to NATS: {error}")))?;
        let jetstream = jetstream::ContextBuilder::new().timeout(PUBLISH_ACK_TIMEOUT).build(client.clone());
        let bus = Self { client, jetstream, consumers: Arc::default() };
        bus.ensure_streams().await?;
        Ok(bus)
    }

    async fn ensure_streams(&self) -> Result<(), BusError> {
        for spec in STREAMS {
            self.jetstream
                .get_or_create_stream(stream::Config {
                    name: spec.name.to_owned(),
                    subjects: spec.subjects.iter().map(|s| (*s).to_owned()).collect(),
                    storage: stream::StorageType::File,
                    duplicate_window: DUPLICATE_WINDOW,
                    ..Default::default()
                })
                .await
                .map_err(|error| BusError::Unavailable(format!("cannot create stream {}: {error}", spec.name)))?;
        }
        Ok(())
    }

    async fn consumer(&self, spec: &ConsumerSpec) -> Result<jetstream::consumer::PullConsumer, BusError> {
        let mut consumers = self.consumers.lock().await;
        if let Some(consumer) = consumers.get(&spec.name) {
            return Ok(consumer.clone());
        }
        let stream_spec = stream_for(&spec.filter)
            .ok_or_else(|| BusError::Rejected(format!("no stream holds subjects `{}`", spec.filter)))?;
        let stream = self
            .jetstream
            .get_stream(stream_spec.name)
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))?;
        let consumer = stream
            .get_or_create_consumer(
                &spec.name,
                pull::Config {
                    durable_name: Some(spec.name.clone()),
                    filter_subject: spec.filter.clone(),
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))?;
        consumers.insert(spec.name.clone(), consumer.clone());
        Ok(consumer)
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError> {
        validate_subject(&event.subject).map_err(BusError::Rejected)?;
        let body = event.to_json().map_err(|e| BusError::Rejected(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
        headers.insert("X-Correlation-Id", event.correlation_id.as_str());
        let ack = self
            .jetstream
            .publish_with_headers(event.subject.clone(), headers, body.into())
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))?;
        ack.await.map_err(|error| BusError::Unavailable(error.to_string()))?;
        Ok(())
    }

    async fn fetch(&self, spec: &ConsumerSpec, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let consumer = self.consumer(spec).await?;
        let mut batch = consumer
            .batch()
            .max_messages(max.max(1))
            .expires(wait.max(Duration::from_millis(100)))
            .messages()
            .await
            .map_err(|error| BusError::Unavailable(error.to_string()))?;
        let mut deliveries = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|error| BusError::Unavailable(error.to_string()))?;
            match EventEnvelope::from_json(&message.payload) {
                Ok(event) => deliveries.push(Delivery { event, acker: Acker::Nats(Box::new(message)) }),
                Err(error) => {
                    // A message that is not an envelope can never be processed: terminate
                    // it so it does not come back forever, and say so.
                    tracing::error!(subject = %message.subject, %error, "dropping undecodable event");
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                }
            }
        }
        Ok(deliveries)
    }

    async fn health(&self) -> Result<(), BusError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BusError::Unavailable("not connected to NATS".into()));
        }
        self.jetstream
            .query_account()
            .await
            .map_err(|error| BusError::Unavailable(format!("JetStream not answering: {error}")))?;
        Ok(())
    }

    fn name(&self) -> &'static str {
        "nats"
    }
}

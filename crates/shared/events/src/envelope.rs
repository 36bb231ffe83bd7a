use gpuaas_kernel::{Timestamp, new_id};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The wire shape of every event on every bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventEnvelope {
    /// Unique per event; consumers deduplicate by it.
    pub id: Uuid,
    pub subject: String,
    /// Payload schema version of this subject.
    pub version: u32,
    pub occurred_at: Timestamp,
    pub correlation_id: String,
    pub payload: serde_json::Value,
}

impl EventEnvelope {
    pub fn new(
        subject: impl Into<String>,
        version: u32,
        correlation_id: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            id: new_id(),
            subject: subject.into(),
            version,
            occurred_at: Timestamp::now(),
            correlation_id: correlation_id.into(),
            payload,
        }
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    pub fn from_json(text: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(text)
    }
}

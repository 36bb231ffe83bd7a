//! Messages of the enrollment endpoint and the internal (mTLS) API.

use gpuaas_kernel::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::inventory::Inventory;
use crate::signing::SignedTask;

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
/// Longest a pull may wait for work.
pub const MAX_PULL_WAIT_SECONDS: u64 = 30;
/// Most tasks one pull hands out.
pub const MAX_TASKS_PER_PULL: usize = 16;

/// `POST /api/v1/nodes/enroll`: the one-time token buys a certificate for the key in
/// the CSR. The private key never leaves the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token shown once when the node was registered.
    pub token: String,
    /// PKCS#10 certificate signing request, PEM. Only its public key is used.
    pub csr_pem: String,
    /// The host's own name, for the operator's records.
    pub hostname: String,
    pub agent_version: String,
    pub protocol_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    pub node_id: String,
    /// The node's client certificate, PEM.
    pub certificate_pem: String,
    #[schema(value_type = String, format = DateTime)]
    pub certificate_expires_at: Timestamp,
    /// The CA that signs node certificates and the internal listener's certificate.
    pub ca_certificate_pem: String,
    /// Where the agent connects with its certificate (`https://host:8443`).
    pub internal_url: String,
    /// Ed25519 public key that signs every task, base64; the agent pins it.
    pub task_signing_public_key: String,
    pub heartbeat_interval_seconds: u64,
    pub protocol_version: u32,
}

/// `POST /internal/v1/nodes/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub agent_version: String,
    pub protocol_version: u32,
    /// Sent on the first heartbeat and whenever it changes; omitted otherwise.
    pub inventory: Option<Inventory>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatResponse {
    pub node_id: String,
    /// The node's lifecycle status after this heartbeat.
    pub status: String,
    pub heartbeat_interval_seconds: u64,
    /// True when the control plane has no inventory for the node yet: send it.
    pub inventory_wanted: bool,
}

/// `GET /internal/v1/nodes/tasks?wait_seconds=N`: leased tasks, possibly none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullResponse {
    pub tasks: Vec<SignedTask>,
}

/// `POST /internal/v1/nodes/certificate`: a new certificate for a new key, before the
/// current one expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewResponse {
    pub certificate_pem: String,
    #[schema(value_type = String, format = DateTime)]
    pub certificate_expires_at: Timestamp,
}

//! The wire protocol between the control plane and node agents, shared by both sides
//! and versioned ([`PROTOCOL_VERSION`]): the task catalog with typed, validated
//! parameters; the signed task envelope and its verification (signature, node binding,
//! time window, replay); inventory reports; and the enrollment, heartbeat, pull, result
//! and renewal messages of the internal API.
//!
//! This crate owns no tables and performs no I/O. It must never grow a task that runs
//! an arbitrary command or shell string: every task is a closed, typed operation whose
//! parameters are validated here, before any host action, on both sides.

pub mod inventory;
pub mod signing;
pub mod tasks;
pub mod wire;

pub use inventory::{DeclaredInventory, GpuHealth, GpuInfo, Inventory, InventorySource};
pub use signing::{NonceCache, SignedTask, TaskSigner, TaskVerifier, VerifiedTask};
pub use tasks::{ProvisionUserParams, Refusal, RefusalCode, RevokeUserParams, Task, TaskOutcome, TaskResult, TaskType};

/// Version of this protocol. The control plane refuses agents speaking another major
/// version; the agent refuses tasks signed for another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Paths of the endpoints an agent calls.
pub mod paths {
    /// Public listener, authenticated by the one-time enrollment token.
    pub const ENROLL: &str = "/api/v1/nodes/enroll";
    /// Internal mTLS listener, authenticated by the node certificate.
    pub const HEARTBEAT: &str = "/internal/v1/nodes/heartbeat";
    pub const TASKS: &str = "/internal/v1/nodes/tasks";
    pub const CERTIFICATE: &str = "/internal/v1/nodes/certificate";

    /// Where the result of task `task_id` is posted.
    pub fn task_result(task_id: &str) -> String {
        format!("{TASKS}/{task_id}/result")
    }
}

/// True for ids the control plane issues (UUIDs) and other short opaque ids: 1 to 64
/// characters of `[A-Za-z0-9-]`. Used for node, task and allocation ids on the wire.
pub fn is_valid_id(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

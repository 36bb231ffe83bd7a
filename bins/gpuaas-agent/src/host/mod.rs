//! Everything the agent changes on its host goes through [`HostDriver`].
//!
//! The control plane can only ask for closed, typed operations (provision an
//! allocation user, revoke it); the driver turns each into a fixed sequence of host
//! steps. Keeping that behind one narrow trait means there is exactly one place to
//! audit for what the agent can do as root, the agent never runs an arbitrary command
//! or shell string, and the fleet simulator can swap the real driver for one that
//! touches nothing.
//!
//! Drivers are idempotent: tasks may be delivered more than once (retries, a lost
//! result), so every operation converges to the requested state instead of failing
//! on "already done".

use std::collections::BTreeSet;
use std::sync::Mutex;

use gpuaas_nodeagent_protocol::{ProvisionUserParams, RevokeUserParams};
use serde_json::{Value, json};

pub mod inventory;
pub mod linux;

pub use linux::{LinuxHostConfig, LinuxHostDriver};

/// The host operations the agent may perform. Implementations re-check the
/// parameters they rely on even though the task layer validated them already.
pub trait HostDriver: Send + Sync + 'static {
    /// Creates (or converges) the allocation's user: account, keys, GPU access and
    /// limits. Idempotent; returns a small JSON report of what was done and skipped.
    fn provision_user(&self, params: &ProvisionUserParams) -> Result<Value, HostError>;

    /// Ends the user's processes, closes its GPUs, removes its limits and account.
    /// Idempotent: revoking an absent user succeeds and the report says so.
    fn revoke_user(&self, params: &RevokeUserParams) -> Result<Value, HostError>;

    /// Users this driver created that still exist, sorted.
    fn allocation_users(&self) -> Result<Vec<String>, HostError>;

    /// Restores GPU grants that something else on the host undid (the NVIDIA driver
    /// resets device files whenever a root process initialises it). Returns what was
    /// repaired; drivers that grant nothing have nothing to do.
    fn enforce_gpu_grants(&self) -> Result<Vec<String>, HostError> {
        Ok(Vec::new())
    }
}

/// Why a host operation failed. Messages name users, paths and commands, never key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The request does not pass the driver's own checks.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The driver's configuration is unusable (e.g. a uid range that includes root).
    #[error("invalid host driver configuration: {0}")]
    Config(String),
    /// The target exists but is not the driver's to change (a host account, a uid
    /// outside the allocation range).
    #[error("refusing to touch {target}: {reason}")]
    Refused { target: String, reason: String },
    /// The target belongs to another allocation, or the host is in a state the
    /// driver will not overwrite.
    #[error("conflict: {0}")]
    Conflict(String),
    /// An external command failed; `stderr` is what it printed, trimmed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A host file (passwd, group, meminfo…) could not be understood.
    #[error("malformed {file}: {reason}")]
    Malformed { file: String, reason: String },
    /// The inventory could not be assembled or does not pass protocol validation.
    #[error("inventory: {0}")]
    Inventory(String),
}

impl HostError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HostError::Io { context: context.into(), source }
    }
}

/// A driver that changes nothing on the host and only remembers, in memory, which
/// users it was asked to provision. For the fleet simulator and for agents started
/// in a dry-run mode; never for a real GPU host.
#[derive(Debug, Default)]
pub struct NoopDriver {
    users: Mutex<BTreeSet<String>>,
}

impl NoopDriver {
    pub fn new() -> Self {
        Self::default()
    }

    fn users(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A panic while holding this lock cannot leave the set half-updated.
        self.users.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl HostDriver for NoopDriver {
    fn provision_user(&self, params: &ProvisionUserParams) -> Result<Value, HostError> {
        params.validate().map_err(HostError::Invalid)?;
        let created = self.users().insert(params.username.clone());
        Ok(json!({
            "driver": "noop",
            "username": params.username,
            "created_user": created,
            "gpu_indices": params.gpu_indices,
        }))
    }

    fn revoke_user(&self, params: &RevokeUserParams) -> Result<Value, HostError> {
        params.validate().map_err(HostError::Invalid)?;
        let removed = self.users().remove(&params.username);
        Ok(json!({"driver": "noop", "username": params.username, "user_existed": removed}))
    }

    fn allocation_users(&self) -> Result<Vec<String>, HostError> {
        Ok(self.users().iter().cloned().collect())
    }
}

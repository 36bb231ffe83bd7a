//! The subjects this crate publishes (through the outbox) and the payload they carry.

use serde::Serialize;

use crate::AllocationStatus;

pub const PROVISIONING_REQUESTED: &str = "gpuaas.provisioning.requested";
pub const PROVISIONING_ACTIVE: &str = "gpuaas.provisioning.active";
pub const PROVISIONING_FAILED: &str = "gpuaas.provisioning.failed";
pub const RELEASING_REQUESTED: &str = "gpuaas.provisioning.releasing.requested";
pub const RELEASING_COMPLETED: &str = "gpuaas.provisioning.releasing.completed";
pub const RELEASE_FAILED: &str = "gpuaas.provisioning.release_failed";
pub const FORCE_RELEASE_REQUESTED: &str = "gpuaas.provisioning.force_release_requested";
pub const RECONCILE_ALLOCATION_MISSING: &str = "gpuaas.reconciliation.allocation_missing";
pub const RECONCILE_ORPHAN_USER: &str = "gpuaas.reconciliation.orphan_user";

/// Every subject above, so a test can prove each one has a stream.
pub const ALL: &[&str] = &[
    PROVISIONING_REQUESTED,
    PROVISIONING_ACTIVE,
    PROVISIONING_FAILED,
    RELEASING_REQUESTED,
    RELEASING_COMPLETED,
    RELEASE_FAILED,
    FORCE_RELEASE_REQUESTED,
    RECONCILE_ALLOCATION_MISSING,
    RECONCILE_ORPHAN_USER,
];

/// The payload of every lifecycle event.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleEvent<'a> {
    pub allocation_id: &'a str,
    pub tenant_id: &'a str,
    pub project_id: &'a str,
    pub user_id: &'a str,
    pub node_id: &'a str,
    pub from: Option<AllocationStatus>,
    pub to: AllocationStatus,
    pub reason: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subject_has_a_stream() {
        for subject in super::ALL {
            assert_eq!(gpuaas_events::catalog::validate_subject(subject), Ok(()), "{subject}");
        }
    }
}

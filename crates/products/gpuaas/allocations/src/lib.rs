//! GPU allocations, the heart of the product: users' SSH public keys, placement of an
//! allocation on GPU slots, its lifecycle state machine, the durable workflow that
//! provisions and releases it through signed node tasks, metering hand-offs to billing,
//! and reconciliation against what nodes report.
//!
//! This crate owns `ssh_keys`, `allocations`, `allocation_transitions` and
//! `reconciliation_findings`. It reserves slots and queues tasks only through the
//! inventory crate and posts money only through the billing crate. It must never store
//! a private key, never let two allocations hold one GPU slot, never change an
//! allocation's status except along [`AllocationStatus::can_become`], and never free
//! the slots of an allocation whose release did not complete.

mod create;
mod error;
pub mod events;
pub mod reconcile;
mod release;
pub mod service;
pub mod ssh_keys;
mod status;
pub mod workflow;

use std::sync::Arc;

use gpuaas_inventory::NodePlane;
use gpuaas_kernel::{ResourceIdFormat, ResourceType};
use gpuaas_policy::PolicyClient;
use gpuaas_store::{Migration, Store};
use tokio::sync::Notify;

pub use error::AllocationError;
pub use gpuaas_inventory::Actor;
pub use service::{Allocation, AllocationFilter, AllocationPage, NewAllocation, Transition};
pub use status::AllocationStatus;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112360,
        name: "allocations",
        sqlite: include_str!("../migrations/2026112360_allocations.sql"),
        postgres: include_str!("../migrations/2026112360_allocations.sql"),
    },
    Migration {
        version: 2026112481,
        name: "drop_unused_allocation_indexes",
        sqlite: include_str!("../migrations/2026112481_drop_unused_indexes.sql"),
        postgres: include_str!("../migrations/2026112481_drop_unused_indexes.sql"),
    },
];

/// The allocations service. Cheap to clone.
#[derive(Clone)]
pub struct Allocations {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    policy: PolicyClient,
    nodes: NodePlane,
    resource_ids: ResourceIdFormat,
    /// Wakes this process's workflow runner when there is new work for it.
    wake: Notify,
    /// Creates waiting for a batch to share.
    creates: create::CreateQueue,
    /// Releases waiting for a batch to share.
    releases: release::ReleaseQueue,
}

impl Allocations {
    pub fn new(store: Store, policy: PolicyClient, nodes: NodePlane, resource_ids: ResourceIdFormat) -> Self {
        let (creates, releases) = (create::queue(store.dialect()), release::queue(store.dialect()));
        let wake = Notify::new();
        Self { inner: Arc::new(Inner { store, policy, nodes, resource_ids, wake, creates, releases }) }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn policy(&self) -> &PolicyClient {
        &self.inner.policy
    }

    pub fn nodes(&self) -> &NodePlane {
        &self.inner.nodes
    }

    /// The canonical id of an allocation, as audit rows name it.
    pub(crate) fn resource_id(&self, id: &str) -> String {
        self.inner.resource_ids.name(None, None, ResourceType::Allocation, id)
    }

    /// Tells this process's workflow runner to look for due work now.
    pub fn wake_runner(&self) {
        self.inner.wake.notify_one();
    }

    pub(crate) fn creates(&self) -> &create::CreateQueue {
        &self.inner.creates
    }

    pub(crate) fn releases(&self) -> &release::ReleaseQueue {
        &self.inner.releases
    }

    pub(crate) fn wake_signal(&self) -> &Notify {
        &self.inner.wake
    }
}

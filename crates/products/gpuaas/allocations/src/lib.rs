//! GPU allocations, the heart of the product: users' SSH public keys, placement of an
//! allocation on GPU slots, its lifecycle state machine, the durable workflow that
//! provisions and releases it through signed node tasks, metering hand-offs to billing,
//! and reconciliation against what nodes report.
//!
//! This crate owns `ssh_keys`, `allocations` (each with its transitions),
//! `allocation_live_counts` and `reconciliation_findings`. It reserves slots and queues
//! tasks only through the inventory crate and posts money only through the billing
//! crate. It must never store a private key, never let two allocations hold one GPU
//! slot, never change an allocation's status except along
//! [`AllocationStatus::can_become`] (and never without its live count), and never free
//! the slots of an allocation whose release did not complete.

mod create;
mod error;
pub mod events;
pub mod reconcile;
mod release;
pub mod service;
pub mod ssh_keys;
mod status;
pub mod watch;
pub mod workflow;

use std::sync::{Arc, Mutex};

use gpuaas_inventory::NodePlane;
use gpuaas_kernel::{ResourceIdFormat, ResourceType};
use gpuaas_nodeagent_protocol::TaskType;
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
    Migration {
        version: 2026120200,
        name: "drop_workflow_lease",
        sqlite: include_str!("../migrations/2026120200_drop_workflow_lease.sql"),
        postgres: include_str!("../migrations/2026120200_drop_workflow_lease.sql"),
    },
    Migration {
        version: 2026120220,
        name: "transitions_in_row",
        sqlite: include_str!("../migrations/2026120220_transitions_in_row.sqlite.sql"),
        postgres: include_str!("../migrations/2026120220_transitions_in_row.postgres.sql"),
    },
    Migration {
        version: 2026120240,
        name: "live_allocations_index",
        sqlite: include_str!("../migrations/2026120240_live_allocations_index.sql"),
        postgres: include_str!("../migrations/2026120240_live_allocations_index.sql"),
    },
    Migration {
        version: 2026120260,
        name: "live_allocation_counts",
        sqlite: include_str!("../migrations/2026120260_live_allocation_counts.sql"),
        postgres: include_str!("../migrations/2026120260_live_allocation_counts.sql"),
    },
    Migration {
        version: 2026120320,
        name: "drop_live_allocations_index",
        sqlite: include_str!("../migrations/2026120320_drop_live_allocations_index.sql"),
        postgres: include_str!("../migrations/2026120320_drop_live_allocations_index.sql"),
    },
];

/// What wakes this process's workflow runner, shared with the node plane's listener.
#[derive(Default)]
struct Signals {
    wake: Notify,
    /// Allocations whose current node task a node reported finished to this process.
    finished: Mutex<Vec<String>>,
}

/// Most allocations kept as told finished. A process without a runner (an API-only
/// role) is told too and never takes them; past this, news is dropped and the rows'
/// own due times find them.
const MAX_TOLD: usize = 10_000;

impl Signals {
    fn task_finished(&self, allocation_id: &str) {
        let mut finished = self.lock_finished();
        if finished.len() < MAX_TOLD {
            finished.push(allocation_id.to_owned());
        }
        drop(finished);
        self.wake.notify_one();
    }

    fn lock_finished(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

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
    signals: Arc<Signals>,
    /// Creates waiting for a batch to share.
    creates: create::CreateQueue,
    /// Releases waiting for a batch to share.
    releases: release::ReleaseQueue,
    /// Where this process's workflow passes look for due rows.
    due_scan: workflow::DueScan,
    /// Allocations callers wait on, woken by the changes this process commits.
    status_watch: watch::StatusWatch,
    /// Status reads waiting for a statement to share.
    status_reads: watch::StatusReads,
}

impl Allocations {
    pub fn new(store: Store, policy: PolicyClient, nodes: NodePlane, resource_ids: ResourceIdFormat) -> Self {
        let (creates, releases) = (create::queue(store.dialect()), release::queue(store.dialect()));
        let signals = Arc::new(Signals::default());
        // A node's report of a provisioning or release task moves its allocation on at
        // once; without it (a report to another process) the row's next poll finds it.
        let told = signals.clone();
        nodes.on_task_finished(Arc::new(move |task: &gpuaas_inventory::NodeTask| {
            let ours = [TaskType::ProvisionUser.as_str(), TaskType::RevokeUser.as_str()];
            if ours.contains(&task.task_type.as_str())
                && let Some(id) = task.params.get("allocation_id").and_then(serde_json::Value::as_str)
            {
                told.task_finished(id);
            }
        }));
        let due_scan = workflow::DueScan::default();
        Self {
            inner: Arc::new(Inner {
                store,
                policy,
                nodes,
                resource_ids,
                signals,
                creates,
                releases,
                due_scan,
                status_watch: Default::default(),
                status_reads: watch::status_reads(),
            }),
        }
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
        self.inner.signals.wake.notify_one();
    }

    /// Up to `limit` allocations whose node task was reported finished, oldest news
    /// first; the rest stay for the next pass.
    pub(crate) fn take_finished(&self, limit: usize) -> Vec<String> {
        let mut finished = self.inner.signals.lock_finished();
        let take = finished.len().min(limit);
        finished.drain(..take).collect()
    }

    pub(crate) fn creates(&self) -> &create::CreateQueue {
        &self.inner.creates
    }

    pub(crate) fn releases(&self) -> &release::ReleaseQueue {
        &self.inner.releases
    }

    pub(crate) fn wake_signal(&self) -> &Notify {
        &self.inner.signals.wake
    }

    pub(crate) fn due_scan(&self) -> &workflow::DueScan {
        &self.inner.due_scan
    }

    pub(crate) fn status_watch(&self) -> &watch::StatusWatch {
        &self.inner.status_watch
    }

    pub(crate) fn status_reads(&self) -> &watch::StatusReads {
        &self.inner.status_reads
    }
}

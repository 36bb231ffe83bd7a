//! The node plane: the SKU catalog, nodes with their GPUs and resource slots, node
//! enrollment (one-time tokens, certificates from the CA), heartbeats and offline
//! detection, and the queue of signed typed tasks nodes pull over mTLS.
//!
//! This crate owns `sku_catalog`, `nodes`, `node_gpus`, `node_resource_slots`,
//! `node_enrollment_tokens`, `node_certificates` and `node_tasks`. It must never store
//! an enrollment token in clear or a private key at all, never trust a node id that did
//! not come from a verified certificate, never hand a task to a node it is not bound
//! to, and never queue a task whose parameters fail the protocol's validation.

mod audit;
pub mod enrollment;
mod error;
pub mod nodes;
pub mod skus;
pub mod slots;
pub mod tasks;

use std::sync::Arc;

use gpuaas_kernel::{ResourceIdFormat, ResourceType};
use gpuaas_nodeagent_protocol::TaskSigner;
use gpuaas_pki::CaClient;
use gpuaas_policy::PolicyClient;
use gpuaas_store::{Migration, Store};

pub use audit::Actor;
pub use error::InventoryError;
pub use nodes::{NodeFilter, NodeGpu, NodePage, NodeStatus, NodeSummary, NodeView, OnboardingMode};
pub use skus::{NewSku, Sku, SkuUpdate};
pub use tasks::{NodeTask, TaskStatus};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112340,
        name: "inventory",
        sqlite: include_str!("../migrations/2026112340_inventory.sql"),
        postgres: include_str!("../migrations/2026112340_inventory.sql"),
    },
    Migration {
        version: 2026112341,
        name: "free_gpus",
        sqlite: include_str!("../migrations/2026112341_free_gpus.sql"),
        postgres: include_str!("../migrations/2026112341_free_gpus.sql"),
    },
    Migration {
        version: 2026112470,
        name: "placement_order",
        sqlite: include_str!("../migrations/2026112470_placement_order.sql"),
        postgres: include_str!("../migrations/2026112470_placement_order.sql"),
    },
    Migration {
        version: 2026112480,
        name: "drop_sku_status_index",
        sqlite: include_str!("../migrations/2026112480_drop_sku_status_index.sql"),
        postgres: include_str!("../migrations/2026112480_drop_sku_status_index.sql"),
    },
    Migration {
        version: 2026120210,
        name: "drop_duplicate_slot_index",
        sqlite: include_str!("../migrations/2026120210_drop_duplicate_slot_index.sql"),
        postgres: include_str!("../migrations/2026120210_drop_duplicate_slot_index.sql"),
    },
    Migration {
        version: 2026120230,
        name: "partial_task_indexes",
        sqlite: include_str!("../migrations/2026120230_partial_task_indexes.sql"),
        postgres: include_str!("../migrations/2026120230_partial_task_indexes.sql"),
    },
    Migration {
        version: 2026120310,
        name: "slots_without_allocation_index",
        sqlite: include_str!("../migrations/2026120310_slots_without_allocation_index.sqlite.sql"),
        postgres: include_str!("../migrations/2026120310_slots_without_allocation_index.postgres.sql"),
    },
    Migration {
        version: 2026120330,
        name: "open_task_index",
        sqlite: include_str!("../migrations/2026120330_open_task_index.sqlite.sql"),
        postgres: include_str!("../migrations/2026120330_open_task_index.postgres.sql"),
    },
    Migration {
        version: 2026120400,
        name: "heartbeats_in_place",
        sqlite: include_str!("../migrations/2026120400_heartbeats_in_place.sqlite.sql"),
        postgres: include_str!("../migrations/2026120400_heartbeats_in_place.postgres.sql"),
    },
];

/// How the node plane is reached and named.
#[derive(Clone)]
pub struct NodePlaneConfig {
    /// The mTLS listener's URL as agents reach it (`https://host:8443`).
    pub internal_url: String,
    pub resource_ids: ResourceIdFormat,
}

/// The node-plane service. Cheap to clone.
#[derive(Clone)]
pub struct NodePlane {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    policy: PolicyClient,
    ca: Arc<dyn CaClient>,
    signer: TaskSigner,
    config: NodePlaneConfig,
    waiters: tasks::Waiters,
    finished: tasks::FinishedListeners,
    finishes: tasks::FinishQueue,
    leases: tasks::LeaseQueue,
}

impl NodePlane {
    pub fn new(
        store: Store,
        policy: PolicyClient,
        ca: Arc<dyn CaClient>,
        signer: TaskSigner,
        config: NodePlaneConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                finishes: tasks::finish_queue(store.dialect()),
                leases: tasks::lease_queue(store.dialect()),
                store,
                policy,
                ca,
                signer,
                config,
                waiters: tasks::Waiters::default(),
                finished: Default::default(),
            }),
        }
    }

    /// Registers `listener` for the tasks nodes report finished to this process.
    pub fn on_task_finished(&self, listener: tasks::TaskFinishedListener) {
        self.inner.finished.add(listener);
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn policy(&self) -> &PolicyClient {
        &self.inner.policy
    }

    pub fn internal_url(&self) -> &str {
        &self.inner.config.internal_url
    }

    pub fn task_signing_public_key(&self) -> String {
        self.inner.signer.public_key_base64()
    }

    /// The CA that signs node certificates (and the internal listener's).
    pub fn ca(&self) -> &Arc<dyn CaClient> {
        &self.inner.ca
    }

    pub fn ca_certificate_pem(&self) -> String {
        self.inner.ca.ca_certificate_pem()
    }

    /// The canonical id of a node-plane resource, as audit rows and events name it.
    pub(crate) fn resource_id(&self, resource_type: ResourceType, id: &str) -> String {
        self.inner.config.resource_ids.name(None, None, resource_type, id)
    }
}

/// Random, URL-safe secret of 32 bytes (256 bits) with a recognisable prefix.
pub(crate) fn random_token(prefix: &str) -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of a high-entropy secret; lookups by hash stay an index seek.
pub(crate) fn secret_hash(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A duplicate insert becomes a 409 saying what already exists; other errors pass.
pub(crate) fn conflict_on_duplicate<T>(
    result: Result<T, gpuaas_store::sqlx::Error>,
    what: impl FnOnce() -> String,
) -> Result<T, InventoryError> {
    match result {
        Err(error) if gpuaas_store::is_unique_violation(&error) => Err(InventoryError::Conflict(what())),
        other => Ok(other?),
    }
}

pub(crate) fn bool_flag(value: i64) -> bool {
    value != 0
}

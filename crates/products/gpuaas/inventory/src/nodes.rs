//! Nodes and their lifecycle.
//!
//! `pending_enrollment → active ⇄ offline`, `active ⇄ draining` (operator), any → `retired`.
//! Draining is kept as the operator's intent (`drain_requested`) apart from liveness,
//! so a draining node that misses heartbeats and comes back is draining again.

use std::collections::HashMap;
use std::time::Duration;

use gpuaas_events::EventEnvelope;
use gpuaas_kernel::{Cursor, ResourceType, Timestamp, new_id};
use gpuaas_nodeagent_protocol::wire::{HeartbeatRequest, HeartbeatResponse};
use gpuaas_nodeagent_protocol::{Inventory, PROTOCOL_VERSION};
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Row, Store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::skus::check_text;
use crate::{Actor, InventoryError, NodePlane, bool_flag};

/// Published when a node misses heartbeats for the policy's window.
pub const NODE_OFFLINE_SUBJECT: &str = "gpuaas.inventory.node_offline";
/// Published when an offline node's heartbeat returns.
pub const NODE_ONLINE_SUBJECT: &str = "gpuaas.inventory.node_online";
pub const NODE_ENROLLED_SUBJECT: &str = "gpuaas.inventory.node_enrolled";
pub const NODE_RETIRED_SUBJECT: &str = "gpuaas.inventory.node_retired";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    PendingEnrollment,
    Active,
    Draining,
    Offline,
    Retired,
}

impl NodeStatus {
    pub const ALL: &'static [NodeStatus] =
        &[Self::PendingEnrollment, Self::Active, Self::Draining, Self::Offline, Self::Retired];

    pub const fn as_str(self) -> &'static str {
        match self {
            NodeStatus::PendingEnrollment => "pending_enrollment",
            NodeStatus::Active => "active",
            NodeStatus::Draining => "draining",
            NodeStatus::Offline => "offline",
            NodeStatus::Retired => "retired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|status| status.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnboardingMode {
    /// The operator installs the agent and runs `gpuaas-agent enroll` by hand.
    Manual,
    /// The host is deployed by MAAS, which runs the enrollment on first boot.
    Maas,
}

impl OnboardingMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            OnboardingMode::Manual => "manual",
            OnboardingMode::Maas => "maas",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "manual" => Some(Self::Manual),
            "maas" => Some(Self::Maas),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NodeGpu {
    pub index: i64,
    pub uuid: Option<String>,
    pub model: String,
    pub memory_mib: i64,
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
    /// `ok`, `degraded`, `failed` or `unknown`.
    pub health: String,
    /// `detected` (NVML) or `declared` (an operator's inventory file).
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Occupancy {
    pub gpus_total: i64,
    pub gpus_allocated: i64,
    pub gpus_free: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct HostFacts {
    /// `detected` or `declared`: where the GPU facts came from.
    pub source: String,
    pub reported_hostname: Option<String>,
    pub cpu_cores: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub disk_bytes: Option<i64>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A node as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub sku_id: String,
    pub sku_name: String,
    pub onboarding_mode: OnboardingMode,
    pub status: NodeStatus,
    pub drain_requested: bool,
    pub agent_version: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub enrolled_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub retired_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub occupancy: Occupancy,
    pub host: Option<HostFacts>,
    pub gpus: Vec<NodeGpu>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodePage {
    pub items: Vec<NodeView>,
    pub next_cursor: Option<String>,
}

/// A node as users see it: capacity, never secrets or (unless policy allows) hostnames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NodeSummary {
    pub id: String,
    pub sku_name: String,
    pub gpu_model: String,
    /// `active`, `draining` or `offline`.
    pub status: NodeStatus,
    pub occupancy: Occupancy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct NodeFilter {
    pub status: Option<NodeStatus>,
    pub sku_id: Option<String>,
}

/// `POST /api/v1/admin/nodes`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    pub hostname: String,
    /// SKU id or name.
    pub sku: String,
    /// `manual` (default) or `maas`.
    pub onboarding_mode: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnrollmentTicket {
    /// Shown once; only its hash is stored.
    pub token: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RegisteredNode {
    pub node: NodeView,
    pub enrollment: EnrollmentTicket,
}

pub(crate) fn check_hostname(hostname: &str) -> Result<(), InventoryError> {
    let ok = (1..=253).contains(&hostname.len())
        && hostname.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok { Ok(()) } else { Err(InventoryError::invalid("hostname", "not a valid DNS host name")) }
}

const NODE_COLUMNS: &str = "n.id, n.hostname, n.sku_id, s.name AS sku_name, n.onboarding_mode, n.status, \
     n.drain_requested, n.agent_version, n.reported_hostname, n.inventory_source, n.cpu_cores, n.memory_bytes, \
     n.disk_bytes, n.inventory_updated_at, n.last_heartbeat_at, n.enrolled_at, n.retired_at, n.created_at, \
     (SELECT COUNT(*) FROM node_resource_slots r WHERE r.node_id = n.id) AS gpus_total, \
     (SELECT COUNT(*) FROM node_resource_slots r WHERE r.node_id = n.id AND r.allocation_id IS NOT NULL) AS gpus_allocated";

fn optional_time(row: &Row, column: &str) -> Result<Option<Timestamp>, InventoryError> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(Timestamp::from_micros))
}

fn occupancy(row: &Row) -> Result<Occupancy, InventoryError> {
    let gpus_total: i64 = row.try_get("gpus_total")?;
    let gpus_allocated: i64 = row.try_get("gpus_allocated")?;
    Ok(Occupancy { gpus_total, gpus_allocated, gpus_free: gpus_total - gpus_allocated })
}

fn node_from_row(row: &Row) -> Result<NodeView, InventoryError> {
    let status: String = row.try_get("status")?;
    let mode: String = row.try_get("onboarding_mode")?;
    let host =
        match (row.try_get::<Option<String>, _>("inventory_source")?, optional_time(row, "inventory_updated_at")?) {
            (Some(source), Some(updated_at)) => Some(HostFacts {
                source,
                reported_hostname: row.try_get("reported_hostname")?,
                cpu_cores: row.try_get("cpu_cores")?,
                memory_bytes: row.try_get("memory_bytes")?,
                disk_bytes: row.try_get("disk_bytes")?,
                updated_at,
            }),
            _ => None,
        };
    Ok(NodeView {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        sku_id: row.try_get("sku_id")?,
        sku_name: row.try_get("sku_name")?,
        onboarding_mode: OnboardingMode::parse(&mode).ok_or_else(|| InventoryError::Corrupt(mode.clone()))?,
        status: NodeStatus::parse(&status).ok_or_else(|| InventoryError::Corrupt(status.clone()))?,
        drain_requested: bool_flag(row.try_get("drain_requested")?),
        agent_version: row.try_get("agent_version")?,
        last_heartbeat_at: optional_time(row, "last_heartbeat_at")?,
        enrolled_at: optional_time(row, "enrolled_at")?,
        retired_at: optional_time(row, "retired_at")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
        occupancy: occupancy(row)?,
        host,
        gpus: Vec::new(),
    })
}

/// Loads the GPUs of `nodes` in one query and attaches them.
async fn attach_gpus(store: &Store, nodes: &mut [NodeView]) -> Result<(), InventoryError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=nodes.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT node_id, gpu_index, uuid, model, memory_mib, driver_version, cuda_version, health FROM node_gpus \
         WHERE node_id IN ({}) ORDER BY node_id, gpu_index",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for node in nodes.iter() {
        query = query.bind(node.id.clone());
    }
    let rows = query.fetch_all(store.pool()).await?;
    let mut by_node: HashMap<String, Vec<NodeGpu>> = HashMap::new();
    let sources: HashMap<String, String> =
        nodes.iter().filter_map(|n| n.host.as_ref().map(|h| (n.id.clone(), h.source.clone()))).collect();
    for row in &rows {
        let node_id: String = row.try_get("node_id")?;
        let gpu = NodeGpu {
            index: row.try_get("gpu_index")?,
            uuid: row.try_get("uuid")?,
            model: row.try_get("model")?,
            memory_mib: row.try_get("memory_mib")?,
            driver_version: row.try_get("driver_version")?,
            cuda_version: row.try_get("cuda_version")?,
            health: row.try_get("health")?,
            source: sources.get(&node_id).cloned().unwrap_or_else(|| "declared".into()),
        };
        by_node.entry(node_id).or_default().push(gpu);
    }
    for node in nodes.iter_mut() {
        node.gpus = by_node.remove(&node.id).unwrap_or_default();
    }
    Ok(())
}

/// The allocation users a node listed in its latest inventory, and when it sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedUsers {
    pub node_id: String,
    pub users: Vec<String>,
    pub reported_at: Timestamp,
}

/// Every node's latest user list, for reconciliation. Retired and never-enrolled nodes
/// bill nothing, and a node that never sent a list is unknown rather than empty: both
/// are left out, so no allocation is released on a report that does not exist.
pub async fn reported_users(store: &Store) -> Result<Vec<ReportedUsers>, InventoryError> {
    let rows = sqlx::query(
        "SELECT id, allocation_users, inventory_updated_at FROM nodes \
         WHERE status NOT IN ('retired', 'pending_enrollment') \
         AND inventory_updated_at IS NOT NULL AND allocation_users IS NOT NULL ORDER BY id",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let users: String = row.try_get("allocation_users")?;
            let users = serde_json::from_str(&users)
                .map_err(|error| InventoryError::Corrupt(format!("allocation_users: {error}")))?;
            Ok(ReportedUsers {
                node_id: row.try_get("id")?,
                users,
                reported_at: Timestamp::from_micros(row.try_get("inventory_updated_at")?),
            })
        })
        .collect()
}

pub async fn get(store: &Store, node_id: &str) -> Result<NodeView, InventoryError> {
    let sql = format!("SELECT {NODE_COLUMNS} FROM nodes n JOIN sku_catalog s ON s.id = n.sku_id WHERE n.id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(node_id).fetch_optional(store.pool()).await?;
    let node = row.as_ref().map(node_from_row).transpose()?.ok_or(InventoryError::NotFound("node"))?;
    let mut nodes = [node];
    attach_gpus(store, &mut nodes).await?;
    let [node] = nodes;
    Ok(node)
}

/// All nodes, newest first, keyset paged.
pub async fn list(
    store: &Store,
    filter: &NodeFilter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<NodePage, InventoryError> {
    let mut conditions = Vec::new();
    let mut binds: Vec<String> = Vec::new();
    let mut cursor_key = None;
    if let Some(status) = filter.status {
        binds.push(status.as_str().into());
        conditions.push(format!("n.status = ${}", binds.len()));
    }
    if let Some(sku) = &filter.sku_id {
        binds.push(sku.clone());
        conditions.push(format!("n.sku_id = ${}", binds.len()));
    }
    if let Some(text) = cursor {
        let cursor = Cursor::decode(text)?;
        binds.push(cursor.id.clone());
        let id_param = binds.len();
        cursor_key = Some(cursor.sort_key);
        conditions.push(format!(
            "(n.created_at < ${p} OR (n.created_at = ${p} AND n.id < ${id_param}))",
            p = binds.len() + 1
        ));
    }
    let where_clause =
        if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    let sql = format!(
        "SELECT {NODE_COLUMNS} FROM nodes n JOIN sku_catalog s ON s.id = n.sku_id {where_clause} \
         ORDER BY n.created_at DESC, n.id DESC LIMIT {}",
        i64::from(limit) + 1
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for bind in &binds {
        query = query.bind(bind.clone());
    }
    if let Some(key) = cursor_key {
        query = query.bind(key);
    }
    let rows = query.fetch_all(store.pool()).await?;
    let mut items = rows.iter().map(node_from_row).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| Cursor::new(last.created_at.as_micros(), last.id.clone()).encode())
    } else {
        None
    };
    attach_gpus(store, &mut items).await?;
    Ok(NodePage { items, next_cursor })
}

/// Nodes that can serve or will again (active, draining, offline), as users see them.
pub async fn list_public(store: &Store, show_hostnames: bool) -> Result<Vec<NodeSummary>, InventoryError> {
    let sql = format!(
        "SELECT {NODE_COLUMNS}, s.gpu_model FROM nodes n JOIN sku_catalog s ON s.id = n.sku_id \
         WHERE n.status IN ('active', 'draining', 'offline') ORDER BY s.name, n.created_at, n.id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(store.pool()).await?;
    rows.iter()
        .map(|row| {
            let node = node_from_row(row)?;
            Ok(NodeSummary {
                id: node.id,
                sku_name: node.sku_name,
                gpu_model: row.try_get("gpu_model")?,
                status: node.status,
                occupancy: node.occupancy,
                hostname: show_hostnames.then_some(node.hostname),
            })
        })
        .collect()
}

/// The node's status inside a transaction, locking its row on PostgreSQL so lifecycle
/// changes and placements on one node happen one at a time.
pub(crate) async fn lock_status(
    connection: &mut Connection,
    dialect: gpuaas_store::Dialect,
    node_id: &str,
) -> Result<NodeStatus, InventoryError> {
    let lock = match dialect {
        gpuaas_store::Dialect::Postgres => " FOR UPDATE",
        gpuaas_store::Dialect::Sqlite => "",
    };
    let sql = format!("SELECT status FROM nodes WHERE id = $1{lock}");
    let status: Option<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(node_id).fetch_optional(&mut *connection).await?;
    let status = status.ok_or(InventoryError::NotFound("node"))?;
    NodeStatus::parse(&status).ok_or(InventoryError::Corrupt(status))
}

/// How a transaction locks a node's row on PostgreSQL (SQLite's one writer already
/// excludes the others). Lifecycle changes (drain, retire, enrollment) take
/// [`lock_status`], which excludes both of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeLock {
    /// Placement: excludes other placements and lifecycle changes, not task enqueues.
    Place,
    /// Task enqueue: only keeps the status from changing until the commit, so queueing
    /// a task never waits for a placement on the same node.
    Enqueue,
}

impl NodeLock {
    pub(crate) const fn clause(self, dialect: gpuaas_store::Dialect) -> &'static str {
        match (dialect, self) {
            (gpuaas_store::Dialect::Sqlite, _) => "",
            (gpuaas_store::Dialect::Postgres, NodeLock::Place) => " FOR NO KEY UPDATE",
            (gpuaas_store::Dialect::Postgres, NodeLock::Enqueue) => " FOR KEY SHARE",
        }
    }
}

/// The node's status under `lock` (see [`NodeLock`]).
pub(crate) async fn status_under(
    connection: &mut Connection,
    dialect: gpuaas_store::Dialect,
    node_id: &str,
    lock: NodeLock,
) -> Result<NodeStatus, InventoryError> {
    let sql = format!("SELECT status FROM nodes WHERE id = $1{}", lock.clause(dialect));
    let status: Option<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(node_id).fetch_optional(&mut *connection).await?;
    let status = status.ok_or(InventoryError::NotFound("node"))?;
    NodeStatus::parse(&status).ok_or(InventoryError::Corrupt(status))
}

pub(crate) async fn publish(
    connection: &mut Connection,
    subject: &str,
    correlation_id: &str,
    payload: serde_json::Value,
) -> Result<(), InventoryError> {
    gpuaas_outbox::enqueue(connection, &EventEnvelope::new(subject, 1, correlation_id, payload)).await?;
    Ok(())
}

impl NodePlane {
    /// Registers a node and returns its first enrollment token (shown once).
    pub async fn register_node(&self, actor: &Actor, new: &NewNode) -> Result<RegisteredNode, InventoryError> {
        check_hostname(&new.hostname)?;
        check_text("sku", &new.sku, 64)?;
        let mode = match new.onboarding_mode.as_deref() {
            None => OnboardingMode::Manual,
            Some(text) => OnboardingMode::parse(text)
                .ok_or_else(|| InventoryError::invalid("onboarding_mode", "must be manual or maas"))?,
        };
        let ttl = self.policy().get_duration_secs(keys::NODES_ENROLLMENT_TOKEN_TTL_SECONDS).await?;
        let id = new_id().to_string();
        let now = Timestamp::now();
        let mut tx = self.store().begin().await?;
        let sku = crate::skus::resolve(&mut tx, &new.sku).await?;
        if !sku.active {
            return Err(InventoryError::invalid("sku", "the SKU is deactivated"));
        }
        let inserted = sqlx::query(
            "INSERT INTO nodes (id, hostname, sku_id, onboarding_mode, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'pending_enrollment', $5, $5)",
        )
        .bind(&id)
        .bind(&new.hostname)
        .bind(&sku.id)
        .bind(mode.as_str())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await;
        crate::conflict_on_duplicate(inserted, || format!("a node named {} is registered", new.hostname))?;
        for index in 0..sku.gpus_per_node {
            sqlx::query("INSERT INTO node_resource_slots (node_id, gpu_index) VALUES ($1, $2)")
                .bind(&id)
                .bind(index)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE nodes SET free_gpus = $2 WHERE id = $1")
            .bind(&id)
            .bind(sku.gpus_per_node)
            .execute(&mut *tx)
            .await?;
        let enrollment = crate::enrollment::insert_token(&mut tx, &id, &actor.id, ttl).await?;
        let entry = actor.entry(
            "node.register",
            self.resource_id(ResourceType::Node, &id),
            serde_json::json!({"hostname": new.hostname, "sku": sku.name, "onboarding_mode": mode.as_str()}),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(RegisteredNode { node: get(self.store(), &id).await?, enrollment })
    }

    /// Stops new placements on the node; allocations already there run on.
    pub async fn drain(&self, actor: &Actor, node_id: &str) -> Result<NodeView, InventoryError> {
        self.set_drain(actor, node_id, true).await
    }

    /// Makes a draining node schedulable again.
    pub async fn resume(&self, actor: &Actor, node_id: &str) -> Result<NodeView, InventoryError> {
        self.set_drain(actor, node_id, false).await
    }

    async fn set_drain(&self, actor: &Actor, node_id: &str, drain: bool) -> Result<NodeView, InventoryError> {
        let mut tx = self.store().begin().await?;
        let status = lock_status(&mut tx, self.store().dialect(), node_id).await?;
        if status == NodeStatus::Retired {
            return Err(InventoryError::NodeRetired);
        }
        let next = match (status, drain) {
            (NodeStatus::Active, true) => NodeStatus::Draining,
            (NodeStatus::Draining, false) => NodeStatus::Active,
            (other, _) => other,
        };
        sqlx::query("UPDATE nodes SET drain_requested = $2, status = $3, updated_at = $4 WHERE id = $1")
            .bind(node_id)
            .bind(i64::from(drain))
            .bind(next.as_str())
            .bind(Timestamp::now().as_micros())
            .execute(&mut *tx)
            .await?;
        let action = if drain { "node.drain" } else { "node.resume" };
        let entry = actor.entry(
            action,
            self.resource_id(ResourceType::Node, node_id),
            serde_json::json!({"from": status.as_str(), "to": next.as_str()}),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        get(self.store(), node_id).await
    }

    /// Retires a node: refused while any of its GPUs is allocated. Its certificates
    /// and unused enrollment tokens are revoked and its queued tasks expire.
    pub async fn retire(&self, actor: &Actor, node_id: &str) -> Result<NodeView, InventoryError> {
        let mut tx = self.store().begin().await?;
        let status = lock_status(&mut tx, self.store().dialect(), node_id).await?;
        if status == NodeStatus::Retired {
            drop(tx);
            return get(self.store(), node_id).await;
        }
        let in_use: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM node_resource_slots WHERE node_id = $1 AND allocation_id IS NOT NULL",
        )
        .bind(node_id)
        .fetch_one(&mut *tx)
        .await?;
        if in_use > 0 {
            return Err(InventoryError::NodeInUse(in_use));
        }
        let now = Timestamp::now().as_micros();
        sqlx::query("UPDATE nodes SET status = 'retired', retired_at = $2, updated_at = $2 WHERE id = $1")
            .bind(node_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        crate::enrollment::revoke_all(&mut tx, node_id, "node retired", now).await?;
        sqlx::query(
            "UPDATE node_tasks SET status = 'expired', completed_at = $2, error = 'node retired' \
             WHERE node_id = $1 AND completed_at IS NULL AND status IN ('queued', 'leased')",
        )
        .bind(node_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let target = self.resource_id(ResourceType::Node, node_id);
        gpuaas_audit::record(
            &mut tx,
            &actor.entry("node.retire", target.clone(), serde_json::json!({"from": status.as_str()})),
        )
        .await?;
        publish(
            &mut tx,
            NODE_RETIRED_SUBJECT,
            &actor.correlation_id,
            serde_json::json!({"node_id": node_id, "resource": target}),
        )
        .await?;
        tx.commit().await?;
        get(self.store(), node_id).await
    }

    /// Records a heartbeat from an authenticated node: it is alive (an offline node
    /// comes back), and its inventory is stored when sent.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        request: &HeartbeatRequest,
        correlation_id: &str,
    ) -> Result<HeartbeatResponse, InventoryError> {
        check_text("agent_version", &request.agent_version, 64)?;
        if request.protocol_version != PROTOCOL_VERSION {
            return Err(InventoryError::invalid(
                "protocol_version",
                format!("this control plane speaks protocol {PROTOCOL_VERSION}"),
            ));
        }
        if let Some(inventory) = &request.inventory {
            inventory.validate().map_err(|message| InventoryError::invalid("inventory", message))?;
        }
        let interval = self.policy().get(keys::NODES_HEARTBEAT_INTERVAL_SECONDS).await?;
        let now = Timestamp::now().as_micros();
        let mut tx = self.store().begin().await?;
        // Locked like every lifecycle change, so a retire or an offline mark that commits
        // first is seen here rather than overwritten with a stale status.
        let lock = match self.store().dialect() {
            gpuaas_store::Dialect::Postgres => " FOR UPDATE",
            gpuaas_store::Dialect::Sqlite => "",
        };
        let sql = format!("SELECT status, drain_requested, inventory_updated_at FROM nodes WHERE id = $1{lock}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(node_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(InventoryError::NotFound("node"))?;
        let status: String = row.try_get("status")?;
        let status = NodeStatus::parse(&status).ok_or(InventoryError::Corrupt(status))?;
        let drain = bool_flag(row.try_get("drain_requested")?);
        let had_inventory = row.try_get::<Option<i64>, _>("inventory_updated_at")?.is_some();
        let next = match status {
            NodeStatus::Retired => return Err(InventoryError::NodeRetired),
            NodeStatus::Offline | NodeStatus::PendingEnrollment if drain => NodeStatus::Draining,
            NodeStatus::Offline | NodeStatus::PendingEnrollment => NodeStatus::Active,
            other => other,
        };
        sqlx::query(
            "UPDATE nodes SET status = $2, last_heartbeat_at = $3, agent_version = $4, protocol_version = $5, \
             updated_at = $3 WHERE id = $1",
        )
        .bind(node_id)
        .bind(next.as_str())
        .bind(now)
        .bind(&request.agent_version)
        .bind(i64::from(request.protocol_version))
        .execute(&mut *tx)
        .await?;
        if let Some(inventory) = &request.inventory {
            store_inventory(&mut tx, node_id, inventory, now).await?;
        }
        if status == NodeStatus::Offline {
            publish(
                &mut tx,
                NODE_ONLINE_SUBJECT,
                correlation_id,
                serde_json::json!({"node_id": node_id, "status": next.as_str()}),
            )
            .await?;
        }
        tx.commit().await?;
        if status == NodeStatus::Offline {
            tracing::info!(node_id, status = next.as_str(), "node back online");
        }
        Ok(HeartbeatResponse {
            node_id: node_id.into(),
            status: next.as_str().into(),
            heartbeat_interval_seconds: u64::try_from(interval).unwrap_or(15),
            inventory_wanted: !had_inventory && request.inventory.is_none(),
        })
    }

    /// Marks nodes whose last heartbeat is older than the policy's window offline,
    /// publishing `gpuaas.inventory.node_offline` for each. Returns their ids.
    pub async fn mark_offline(&self) -> Result<Vec<String>, InventoryError> {
        let window = self.policy().get_duration_secs(keys::NODES_OFFLINE_AFTER_SECONDS).await?;
        self.mark_offline_older_than(window).await
    }

    pub async fn mark_offline_older_than(&self, window: Duration) -> Result<Vec<String>, InventoryError> {
        let now = Timestamp::now();
        let cutoff = now.saturating_sub(window).as_micros();
        let mut tx = self.store().begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE nodes SET status = 'offline', updated_at = $2 \
             WHERE status IN ('active', 'draining') AND last_heartbeat_at < $1 RETURNING id",
        )
        .bind(cutoff)
        .bind(now.as_micros())
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            publish(
                &mut tx,
                NODE_OFFLINE_SUBJECT,
                "",
                serde_json::json!({"node_id": id, "resource": self.resource_id(ResourceType::Node, id), "missed_heartbeats_for_seconds": window.as_secs()}),
            )
            .await?;
        }
        tx.commit().await?;
        for id in &ids {
            tracing::warn!(node_id = %id, window_seconds = window.as_secs(), "node missed heartbeats; marked offline");
        }
        Ok(ids)
    }

    /// Users see nodes' capacity; hostnames only when policy allows.
    pub async fn list_public(&self) -> Result<Vec<NodeSummary>, InventoryError> {
        let show = self.policy().get(keys::NODES_EXPOSE_HOSTNAMES).await?;
        list_public(self.store(), show).await
    }
}

/// Replaces the node's stored hardware facts with a report.
pub(crate) async fn store_inventory(
    connection: &mut Connection,
    node_id: &str,
    inventory: &Inventory,
    now: i64,
) -> Result<(), InventoryError> {
    let users =
        serde_json::to_string(&inventory.allocation_users).map_err(|e| InventoryError::Corrupt(e.to_string()))?;
    sqlx::query(
        "UPDATE nodes SET inventory_source = $2, reported_hostname = $3, cpu_cores = $4, memory_bytes = $5, \
         disk_bytes = $6, allocation_users = $7, inventory_updated_at = $8 WHERE id = $1",
    )
    .bind(node_id)
    .bind(inventory.source.as_str())
    .bind(&inventory.hostname)
    .bind(i64::from(inventory.cpu_cores))
    .bind(i64::try_from(inventory.memory_bytes).unwrap_or(i64::MAX))
    .bind(i64::try_from(inventory.disk_bytes).unwrap_or(i64::MAX))
    .bind(users)
    .bind(now)
    .execute(&mut *connection)
    .await?;
    sqlx::query("DELETE FROM node_gpus WHERE node_id = $1").bind(node_id).execute(&mut *connection).await?;
    for gpu in &inventory.gpus {
        sqlx::query(
            "INSERT INTO node_gpus (node_id, gpu_index, uuid, model, memory_mib, driver_version, cuda_version, health) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(node_id)
        .bind(i64::from(gpu.index))
        .bind(gpu.uuid.clone())
        .bind(&gpu.model)
        .bind(i64::try_from(gpu.memory_mib).unwrap_or(i64::MAX))
        .bind(gpu.driver_version.clone())
        .bind(gpu.cuda_version.clone())
        .bind(gpu.health.as_str())
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

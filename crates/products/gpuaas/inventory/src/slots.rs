//! GPU slots: placement reserves them, release frees them. A slot is claimed with an
//! UPDATE conditioned on it being free, so two allocations can never hold the same
//! GPU on either database, whatever the interleaving.

use gpuaas_kernel::Timestamp;
use gpuaas_store::sqlx;
use gpuaas_store::{Connection, Dialect};
use serde::{Deserialize, Serialize};

use crate::InventoryError;
use crate::nodes::NodeLock;

/// How placement picks among nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// The node with the fewest free GPUs that still fits: keeps large blocks free.
    BestFit,
    /// The node with the most free GPUs: spreads load and failure impact.
    Spread,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub node_id: String,
    /// The node's hostname, read back with the claim (users reach it by this name).
    pub hostname: String,
    pub gpu_indices: Vec<i64>,
}

/// Reserves `gpu_count` GPUs on one active node of the SKU for `allocation_id`, in the
/// caller's transaction. `None` when no node has room. Draining, offline, retired and
/// unenrolled nodes are never chosen.
pub async fn reserve(
    connection: &mut Connection,
    dialect: Dialect,
    sku_id: &str,
    gpu_count: i64,
    allocation_id: &str,
    strategy: PlacementStrategy,
) -> Result<Option<Reservation>, InventoryError> {
    if gpu_count < 1 {
        return Err(InventoryError::invalid("gpu_count", "must be at least 1"));
    }
    let order = match strategy {
        PlacementStrategy::BestFit => "free_gpus ASC",
        PlacementStrategy::Spread => "free_gpus DESC",
    };
    let now = Timestamp::now().as_micros();
    // Lock a node before claiming on it: retire and drain take a lock that excludes
    // this one, so a node cannot be retired between the check and the claim (task
    // enqueues take a weaker one that does not wait for placements). One statement finds the
    // best node that fits and locks it, skipping nodes another placement holds (on
    // PostgreSQL the WHERE is checked again on the row it locks, so the node is active
    // and has the room when it is returned). Concurrent placements thus spread over
    // the best few nodes instead of queueing on the single best one, and a placement
    // never waits for a node while holding another (two could deadlock). A node whose
    // free slots turn out to be held (a release in flight) is left for the next one.
    let mut tried: Vec<String> = Vec::new();
    while tried.len() < MAX_CANDIDATES {
        let excluded: Vec<String> = (0..tried.len()).map(|index| format!("${}", index + 3)).collect();
        let excluded =
            if excluded.is_empty() { String::new() } else { format!(" AND id NOT IN ({})", excluded.join(", ")) };
        let sql = format!(
            "SELECT id FROM nodes WHERE sku_id = $1 AND status = 'active' AND free_gpus >= $2{excluded} \
             ORDER BY {order}, id LIMIT 1{}",
            match dialect {
                Dialect::Postgres => " FOR NO KEY UPDATE SKIP LOCKED",
                Dialect::Sqlite => "",
            }
        );
        let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(sku_id).bind(gpu_count);
        for id in &tried {
            query = query.bind(id);
        }
        let Some(node_id): Option<String> = query.fetch_optional(&mut *connection).await? else { break };
        if let Some((hostname, gpu_indices)) =
            claim_on(connection, dialect, &node_id, gpu_count, allocation_id, now).await?
        {
            return Ok(Some(Reservation { node_id, hostname, gpu_indices }));
        }
        tried.push(node_id);
    }
    if !tried.is_empty() {
        return Ok(None);
    }
    // Every node that fits is held by another placement (or none fits): wait for the
    // best one, holding none.
    let sql = format!(
        "SELECT id FROM nodes WHERE sku_id = $1 AND status = 'active' AND free_gpus >= $2 ORDER BY {order}, id LIMIT 1"
    );
    let best: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(sku_id)
        .bind(gpu_count)
        .fetch_optional(&mut *connection)
        .await?;
    let Some(node_id) = best else { return Ok(None) };
    if crate::nodes::status_under(connection, dialect, &node_id, NodeLock::Place).await? != crate::NodeStatus::Active {
        return Ok(None);
    }
    let claimed = claim_on(connection, dialect, &node_id, gpu_count, allocation_id, now).await?;
    Ok(claimed.map(|(hostname, gpu_indices)| Reservation { node_id, hostname, gpu_indices }))
}

/// Most nodes one placement tries before answering that none has room.
const MAX_CANDIDATES: usize = 16;

/// Claims `gpu_count` free slots on a node the caller has locked, and takes them off
/// its free count; returns the node's hostname and the GPUs, or `None` (and nothing
/// claimed) when they are not all to be had.
async fn claim_on(
    connection: &mut Connection,
    dialect: Dialect,
    node_id: &str,
    gpu_count: i64,
    allocation_id: &str,
    now: i64,
) -> Result<Option<(String, Vec<i64>)>, InventoryError> {
    let sql = format!(
        "SELECT gpu_index FROM node_resource_slots WHERE node_id = $1 AND allocation_id IS NULL \
         ORDER BY gpu_index LIMIT $2{}",
        dialect.skip_locked()
    );
    let free: Vec<i64> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(node_id).bind(gpu_count).fetch_all(&mut *connection).await?;
    if (free.len() as i64) < gpu_count {
        return Ok(None);
    }
    // The rows are ours (locked above, skipping any another transaction holds): one
    // UPDATE claims them all, still conditioned on each being free.
    let placeholders: Vec<String> = (0..free.len()).map(|index| format!("${}", index + 4)).collect();
    let sql = format!(
        "UPDATE node_resource_slots SET allocation_id = $2, reserved_at = $3 \
         WHERE node_id = $1 AND allocation_id IS NULL AND gpu_index IN ({}) RETURNING gpu_index",
        placeholders.join(", ")
    );
    let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(node_id).bind(allocation_id).bind(now);
    for index in &free {
        query = query.bind(*index);
    }
    let mut claimed: Vec<i64> = query.fetch_all(&mut *connection).await?;
    claimed.sort_unstable();
    if claimed.len() as i64 == gpu_count {
        let hostname: String =
            sqlx::query_scalar("UPDATE nodes SET free_gpus = free_gpus - $2 WHERE id = $1 RETURNING hostname")
                .bind(node_id)
                .bind(gpu_count)
                .fetch_one(&mut *connection)
                .await?;
        return Ok(Some((hostname, claimed)));
    }
    // Lost a race for part of this node: give back what we took (its count was not
    // taken yet).
    unclaim(connection, allocation_id).await?;
    Ok(None)
}

/// Frees every slot `allocation_id` holds; returns how many.
pub async fn release(connection: &mut Connection, allocation_id: &str) -> Result<u64, InventoryError> {
    let freed = FreedSlots::default();
    let count = release_into(connection, allocation_id, &freed).await?;
    freed.credit(connection).await?;
    Ok(count)
}

/// [`release`] without the nodes' free counts, which are added to `freed` for
/// [`FreedSlots::credit`] to write later in the same transaction.
pub async fn release_into(
    connection: &mut Connection,
    allocation_id: &str,
    freed: &FreedSlots,
) -> Result<u64, InventoryError> {
    let nodes = unclaim(connection, allocation_id).await?;
    let mut per_node = freed.per_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for node in &nodes {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    Ok(nodes.len() as u64)
}

/// Slots cleared in a transaction and not yet counted on their nodes. A placement
/// locks its node for its whole transaction, so a caller that frees slots of many
/// allocations in one transaction credits the nodes as its last writes, in node
/// order: node rows are then held from there to the commit, not for the whole
/// transaction. Only touched between awaits, hence a plain mutex.
#[derive(Debug, Default)]
pub struct FreedSlots {
    per_node: std::sync::Mutex<std::collections::BTreeMap<String, i64>>,
}

impl FreedSlots {
    /// Adds what was freed to each node's free count and forgets it.
    pub async fn credit(&self, connection: &mut Connection) -> Result<(), InventoryError> {
        let per_node = std::mem::take(&mut *self.per_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (node, freed) in per_node {
            sqlx::query("UPDATE nodes SET free_gpus = free_gpus + $2 WHERE id = $1")
                .bind(node)
                .bind(freed)
                .execute(&mut *connection)
                .await?;
        }
        Ok(())
    }
}

/// Clears the slots `allocation_id` holds without touching the nodes' free counts;
/// returns the node of each slot cleared.
async fn unclaim(connection: &mut Connection, allocation_id: &str) -> Result<Vec<String>, InventoryError> {
    Ok(sqlx::query_scalar(
        "UPDATE node_resource_slots SET allocation_id = NULL, reserved_at = NULL WHERE allocation_id = $1 \
         RETURNING node_id",
    )
    .bind(allocation_id)
    .fetch_all(&mut *connection)
    .await?)
}

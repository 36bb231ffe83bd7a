//! GPU slots: placement reserves them, release frees them. A slot is claimed with an
//! UPDATE conditioned on it being free, so two allocations can never hold the same
//! GPU on either database, whatever the interleaving.

use gpuaas_kernel::Timestamp;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Dialect};
use serde::{Deserialize, Serialize};

use crate::InventoryError;

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
        PlacementStrategy::BestFit => "free ASC",
        PlacementStrategy::Spread => "free DESC",
    };
    let sql = format!(
        "SELECT n.id, COUNT(*) AS free FROM nodes n JOIN node_resource_slots r ON r.node_id = n.id \
         WHERE n.sku_id = $1 AND n.status = 'active' AND r.allocation_id IS NULL \
         GROUP BY n.id HAVING COUNT(*) >= $2 ORDER BY {order}, n.id LIMIT 16"
    );
    let candidates: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(sku_id)
        .bind(gpu_count)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;
    let now = Timestamp::now().as_micros();
    for node_id in candidates {
        // Lock the node: retire and drain take the same lock, so a node cannot be
        // retired between the check and the claim.
        if crate::nodes::lock_status(connection, dialect, &node_id).await? != crate::NodeStatus::Active {
            continue;
        }
        let sql = format!(
            "SELECT gpu_index FROM node_resource_slots WHERE node_id = $1 AND allocation_id IS NULL \
             ORDER BY gpu_index LIMIT $2{}",
            dialect.skip_locked()
        );
        let free: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(&node_id)
            .bind(gpu_count)
            .fetch_all(&mut *connection)
            .await?;
        if (free.len() as i64) < gpu_count {
            continue;
        }
        let mut claimed = Vec::with_capacity(free.len());
        for index in free {
            let updated = sqlx::query(
                "UPDATE node_resource_slots SET allocation_id = $3, reserved_at = $4 \
                 WHERE node_id = $1 AND gpu_index = $2 AND allocation_id IS NULL",
            )
            .bind(&node_id)
            .bind(index)
            .bind(allocation_id)
            .bind(now)
            .execute(&mut *connection)
            .await?
            .rows_affected();
            if updated == 1 {
                claimed.push(index);
            }
        }
        if claimed.len() as i64 == gpu_count {
            return Ok(Some(Reservation { node_id, gpu_indices: claimed }));
        }
        // Lost a race for part of this node: give back what we took and try the next.
        release(connection, allocation_id).await?;
    }
    Ok(None)
}

/// Frees every slot `allocation_id` holds; returns how many.
pub async fn release(connection: &mut Connection, allocation_id: &str) -> Result<u64, InventoryError> {
    let freed =
        sqlx::query("UPDATE node_resource_slots SET allocation_id = NULL, reserved_at = NULL WHERE allocation_id = $1")
            .bind(allocation_id)
            .execute(&mut *connection)
            .await?
            .rows_affected();
    Ok(freed)
}

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

/// One allocation of a batch to place: its id and how many GPUs it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub allocation_id: &'a str,
    pub gpu_count: i64,
}

/// [`reserve`] for a batch of allocations of one SKU, in the caller's transaction, in
/// a few statements whatever the batch's size: it locks up to one fitting node per
/// request of each size (skipping nodes another transaction holds; it never waits for
/// one), reads their free slots, picks by `strategy` in the batch's order, and claims
/// every slot with one UPDATE and the nodes' counts with another. `None` for a request
/// that did not fit on the nodes it could lock: the caller tries it alone with
/// [`reserve`], which may wait for a node. Two batches do not wait for each other's
/// nodes, except where PostgreSQL's `SKIP LOCKED` follows a row's update chain (see
/// [`lock_nodes_to_credit`], which keeps that from closing a cycle with a credit).
pub async fn reserve_many(
    connection: &mut Connection,
    dialect: Dialect,
    sku_id: &str,
    wanted: &[Wanted<'_>],
    strategy: PlacementStrategy,
) -> Result<Vec<Option<Reservation>>, InventoryError> {
    if let Some(bad) = wanted.iter().find(|want| want.gpu_count < 1) {
        return Err(InventoryError::invalid("gpu_count", format!("must be at least 1, not {}", bad.gpu_count)));
    }
    let order = match strategy {
        PlacementStrategy::BestFit => "free_gpus ASC",
        PlacementStrategy::Spread => "free_gpus DESC",
    };
    let lock = match dialect {
        Dialect::Postgres => " FOR NO KEY UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    // Largest requests first: the nodes that fit them fit the smaller ones too.
    let mut sizes: Vec<i64> = wanted.iter().map(|want| want.gpu_count).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    let mut nodes: Vec<(String, String)> = Vec::new();
    for size in sizes {
        let count = wanted.iter().filter(|want| want.gpu_count == size).count();
        let taken_nodes = gpuaas_store::Padded::new(&nodes, gpuaas_store::LIST_PADDING_MOST);
        let excluded =
            if nodes.is_empty() { String::new() } else { format!(" AND id NOT IN ({})", taken_nodes.placeholders(4)) };
        let sql = format!(
            "SELECT id, hostname FROM nodes WHERE sku_id = $1 AND status = 'active' AND free_gpus >= $2{excluded} \
             ORDER BY {order}, id LIMIT $3{lock}"
        );
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(sku_id)
            .bind(size)
            .bind(i64::try_from(count).unwrap_or(i64::MAX));
        for ((id, _), _) in taken_nodes.rows() {
            query = query.bind(id.clone());
        }
        let found: Vec<(String, String)> = query.fetch_all(&mut *connection).await?;
        nodes.extend(found);
    }
    if nodes.is_empty() {
        return Ok(vec![None; wanted.len()]);
    }
    // The nodes are locked, so their free slots stay free until this commits; the claim
    // below is still conditioned on each slot being free, and checked.
    let batch = gpuaas_store::Padded::new(&nodes, gpuaas_store::LIST_PADDING_MOST);
    let placeholders = batch.placeholders(1);
    let sql = format!(
        "SELECT node_id, gpu_index FROM node_resource_slots WHERE allocation_id IS NULL AND node_id IN ({}) \
         ORDER BY node_id, gpu_index",
        placeholders
    );
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    for ((id, _), _) in batch.rows() {
        query = query.bind(id.clone());
    }
    let free: Vec<(String, i64)> = query.fetch_all(&mut *connection).await?;
    let mut free_by_node: std::collections::BTreeMap<&str, Vec<i64>> =
        nodes.iter().map(|(id, _)| (id.as_str(), Vec::new())).collect();
    for (node, index) in &free {
        if let Some(slots) = free_by_node.get_mut(node.as_str()) {
            slots.push(*index);
        }
    }
    let picks = pick_slots(&mut free_by_node, wanted, strategy);
    let claims: Vec<(&str, i64, &str)> = picks
        .iter()
        .zip(wanted)
        .filter_map(|(pick, want)| pick.as_ref().map(|(node, indices)| (node, indices, want.allocation_id)))
        .flat_map(|(node, indices, allocation)| indices.iter().map(move |index| (node.as_str(), *index, allocation)))
        .collect();
    if claims.is_empty() {
        return Ok(vec![None; wanted.len()]);
    }
    let now = Timestamp::now().as_micros();
    for chunk in claims.chunks(CLAIMS_PER_UPDATE) {
        let batch = gpuaas_store::Padded::new(chunk, CLAIMS_PER_UPDATE);
        let sql = format!(
            "WITH claims (node_id, gpu_index, allocation_id) AS (VALUES {}) \
             UPDATE node_resource_slots SET allocation_id = claims.allocation_id, reserved_at = $1 FROM claims \
             WHERE node_resource_slots.node_id = claims.node_id AND node_resource_slots.gpu_index = claims.gpu_index \
             AND node_resource_slots.allocation_id IS NULL",
            batch.value_rows(2, 3)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for ((node, index, allocation), _) in batch.rows() {
            query = query.bind(*node).bind(*index).bind(*allocation);
        }
        if query.execute(&mut *connection).await?.rows_affected() != chunk.len() as u64 {
            // Cannot happen while the nodes are locked; refused rather than half-claimed.
            return Err(InventoryError::Conflict("a GPU slot was claimed meanwhile; try again".into()));
        }
    }
    let mut taken: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for (node, _, _) in &claims {
        *taken.entry(node).or_default() += 1;
    }
    let taken: Vec<(&str, i64)> = taken.into_iter().collect();
    let batch = gpuaas_store::Padded::new(&taken, gpuaas_store::LIST_PADDING_MOST);
    let sql = format!(
        "WITH taken (id, gpus) AS (VALUES {}) UPDATE nodes SET free_gpus = nodes.free_gpus - taken.gpus FROM taken \
         WHERE nodes.id = taken.id",
        batch.value_rows(1, 2)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for ((node, gpus), _) in batch.rows() {
        query = query.bind(*node).bind(*gpus);
    }
    query.execute(&mut *connection).await?;
    let hostnames: std::collections::HashMap<&str, &str> =
        nodes.iter().map(|(id, hostname)| (id.as_str(), hostname.as_str())).collect();
    Ok(picks
        .into_iter()
        .map(|pick| {
            pick.map(|(node_id, gpu_indices)| Reservation {
                hostname: hostnames.get(node_id.as_str()).map(|name| (*name).to_owned()).unwrap_or_default(),
                node_id,
                gpu_indices,
            })
        })
        .collect())
}

/// Slot claims, or releases, per UPDATE (3 parameters each).
const CLAIMS_PER_UPDATE: usize = 300;

/// Picks slots for each request in turn from `free` (node → its free GPU indices,
/// taken out as they are picked): best fit takes the node with the fewest free GPUs
/// that still fits, spread the one with the most; ties go to the lowest node id, and
/// a request gets its node's lowest free indices.
fn pick_slots(
    free: &mut std::collections::BTreeMap<&str, Vec<i64>>,
    wanted: &[Wanted<'_>],
    strategy: PlacementStrategy,
) -> Vec<Option<(String, Vec<i64>)>> {
    wanted
        .iter()
        .map(|want| {
            let need = usize::try_from(want.gpu_count).unwrap_or(usize::MAX);
            let fitting = free.iter().filter(|(_, slots)| slots.len() >= need);
            let node = match strategy {
                // `min_by_key`/`max_by_key` keep the first/last of equals: the BTreeMap
                // order makes the lowest id win both ways.
                PlacementStrategy::BestFit => fitting.min_by_key(|(_, slots)| slots.len()),
                PlacementStrategy::Spread => fitting.rev().max_by_key(|(_, slots)| slots.len()),
            }
            .map(|(node, _)| *node)?;
            let slots = free.get_mut(node)?;
            let picked: Vec<i64> = slots.drain(..need).collect();
            Some((node.to_owned(), picked))
        })
        .collect()
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
    let took = Held { allocation_id: allocation_id.to_owned(), node_id: node_id.to_owned(), gpu_indices: claimed };
    unclaim(connection, std::slice::from_ref(&took)).await?;
    Ok(None)
}

/// The slots an allocation holds, as its record names them (the node and GPUs its
/// reservation returned). Release finds the slots by them, so the slots need no index
/// on the allocation: a claim or release then changes no indexed column, and
/// PostgreSQL can update the row in place (a HOT update) instead of adding index
/// entries for it (ADR 030).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub allocation_id: String,
    pub node_id: String,
    pub gpu_indices: Vec<i64>,
}

/// Frees the slots `held` names, where its allocation still holds them; returns how
/// many.
pub async fn release(connection: &mut Connection, held: &Held) -> Result<u64, InventoryError> {
    let freed = FreedSlots::default();
    release_into(held, &freed);
    freed.credit(connection).await
}

/// [`release`] later: the slots are cleared and counted on their nodes when `freed` is
/// credited, as the transaction's last writes.
pub fn release_into(held: &Held, freed: &FreedSlots) {
    freed.allocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(held.clone());
}

/// Allocations whose slots a transaction frees, not yet cleared. A placement locks its
/// node for its whole transaction, so a caller that frees slots of many allocations in
/// one transaction clears them with one UPDATE and credits the nodes as its last
/// writes, in node order: node rows are then held from there to the commit, not for the
/// whole transaction. Only touched between awaits, hence a plain mutex.
#[derive(Debug, Default)]
pub struct FreedSlots {
    allocations: std::sync::Mutex<Vec<Held>>,
}

impl FreedSlots {
    /// Clears the slots of every allocation added, adds them to their nodes' free
    /// counts, forgets them, and returns how many slots were freed.
    pub async fn credit(&self, connection: &mut Connection) -> Result<u64, InventoryError> {
        let allocations =
            std::mem::take(&mut *self.allocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut freed = 0;
        let mut per_node: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for node in unclaim(connection, &allocations).await? {
            *per_node.entry(node).or_default() += 1;
            freed += 1;
        }
        credit_nodes(connection, &per_node).await?;
        Ok(freed)
    }
}

/// Nodes whose free counts one statement credits (2 parameters each).
const CREDITS_PER_UPDATE: usize = 500;

/// Adds `per_node` to the nodes' free counts, one UPDATE per 500 nodes. On PostgreSQL
/// the nodes are locked first (see [`lock_nodes_to_credit`]).
async fn credit_nodes(
    connection: &mut Connection,
    per_node: &std::collections::BTreeMap<String, i64>,
) -> Result<(), InventoryError> {
    let per_node: Vec<(&String, &i64)> = per_node.iter().collect();
    for chunk in per_node.chunks(CREDITS_PER_UPDATE) {
        let batch = gpuaas_store::Padded::new(chunk, CREDITS_PER_UPDATE);
        // SQLite's one writer already excludes the others.
        if Dialect::of(connection) == Dialect::Postgres {
            let nodes: Vec<&str> = chunk.iter().map(|(node, _)| node.as_str()).collect();
            lock_nodes_to_credit(connection, &nodes).await?;
        }
        let sql = format!(
            "WITH credit (id, freed) AS (VALUES {}) UPDATE nodes SET free_gpus = free_gpus + credit.freed \
             FROM credit WHERE nodes.id = credit.id",
            batch.value_rows(1, 2)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((node, count), _) in batch.rows() {
            query = query.bind(node.as_str()).bind(**count);
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

/// Locks `nodes` (distinct, in id order) on PostgreSQL without ever waiting for one
/// while holding another. Placements lock with `SKIP LOCKED` and so were meant never
/// to wait, but PostgreSQL's `SKIP LOCKED` does not cover a row's update chain: a
/// placement that finds an old version of a node's row waits for whoever locked the
/// newer one. A transaction that held some nodes here while waiting for a node that
/// placement's batch held closed a cycle, which PostgreSQL found only after its
/// `deadlock_timeout` (a second). So the nodes are taken with `SKIP LOCKED` inside a
/// savepoint; when one is missing, the savepoint gives the others back, the wait is for
/// that one alone, and the whole set is tried again. Only that same update-chain case
/// can still make this wait while holding nodes, and a cycle then needs both sides in
/// it at once.
async fn lock_nodes_to_credit(connection: &mut Connection, nodes: &[&str]) -> Result<(), InventoryError> {
    let batch = gpuaas_store::Padded::new(nodes, CREDITS_PER_UPDATE);
    let lock = NodeLock::Place.clause(Dialect::Postgres);
    let sql = format!("SELECT id FROM nodes WHERE id IN ({}) ORDER BY id{lock} SKIP LOCKED", batch.placeholders(1));
    let wait_sql = format!("SELECT id FROM nodes WHERE id = $1{lock}");
    sqlx::raw_sql("SAVEPOINT lock_nodes_to_credit").execute(&mut *connection).await?;
    loop {
        let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()));
        for (node, _) in batch.rows() {
            query = query.bind(*node);
        }
        let locked: std::collections::HashSet<String> = query.fetch_all(&mut *connection).await?.into_iter().collect();
        let Some(missing) = nodes.iter().find(|node| !locked.contains(**node)) else {
            sqlx::raw_sql("RELEASE SAVEPOINT lock_nodes_to_credit").execute(&mut *connection).await?;
            return Ok(());
        };
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT lock_nodes_to_credit").execute(&mut *connection).await?;
        // Holding none of them, wait for this one; the next try takes the others
        // beside it, or gives it back again.
        let waited: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(wait_sql.as_str()))
            .bind(*missing)
            .fetch_optional(&mut *connection)
            .await?;
        if waited.is_none() {
            return Err(InventoryError::Corrupt(format!("slots freed on node {missing}, which does not exist")));
        }
    }
}

/// Clears the slots `held` names, each only while its allocation holds it, without
/// touching the nodes' free counts; returns the node of each slot cleared.
async fn unclaim(connection: &mut Connection, held: &[Held]) -> Result<Vec<String>, InventoryError> {
    let slots: Vec<(&str, i64, &str)> = held
        .iter()
        .flat_map(|held| {
            held.gpu_indices.iter().map(|index| (held.node_id.as_str(), *index, held.allocation_id.as_str()))
        })
        .collect();
    let mut nodes = Vec::with_capacity(slots.len());
    for chunk in slots.chunks(CLAIMS_PER_UPDATE) {
        let batch = gpuaas_store::Padded::new(chunk, CLAIMS_PER_UPDATE);
        let sql = format!(
            "WITH held (node_id, gpu_index, allocation_id) AS (VALUES {}) \
             UPDATE node_resource_slots SET allocation_id = NULL, reserved_at = NULL FROM held \
             WHERE node_resource_slots.node_id = held.node_id AND node_resource_slots.gpu_index = held.gpu_index \
             AND node_resource_slots.allocation_id = held.allocation_id RETURNING node_resource_slots.node_id",
            batch.value_rows(1, 3)
        );
        let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
        for ((node, index, allocation), _) in batch.rows() {
            query = query.bind(*node).bind(*index).bind(*allocation);
        }
        nodes.extend(query.fetch_all(&mut *connection).await?);
    }
    Ok(nodes)
}

//! The queue of typed tasks nodes pull. `queued → leased → succeeded | failed`,
//! `queued → expired`; a lease that runs out hands the task out again until its
//! attempts are spent. Every delivery is signed afresh (new nonce, window ending with
//! the lease), so a re-delivery is never mistaken for a replay and a captured delivery
//! is useless once the lease ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpuaas_kernel::{Cursor, ResourceType, Timestamp, new_id};
use gpuaas_nodeagent_protocol::signing::Delivery;
use gpuaas_nodeagent_protocol::wire::MAX_TASKS_PER_PULL;
use gpuaas_nodeagent_protocol::{Inventory, SignedTask, Task, TaskOutcome, TaskResult, TaskType};
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Row, Store};
use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;

use crate::nodes::{NodeLock, NodeStatus};
use crate::{Actor, InventoryError, NodePlane};

/// A node task waiting in [`QueuedTasks`].
#[derive(Debug, Clone)]
struct NewTask {
    id: String,
    node_id: String,
    task: Task,
    correlation_id: String,
    created_by: String,
}

/// Tasks a transaction queues, written together by [`NodePlane::enqueue_queued_in`]
/// before it commits. Only touched between awaits, hence a plain mutex.
#[derive(Debug, Default)]
pub struct QueuedTasks {
    pending: Mutex<Vec<NewTask>>,
}

impl QueuedTasks {
    /// Adds `task` for `node_id` under the id the caller chose; it is checked now and
    /// written later.
    pub fn push(&self, actor: &Actor, node_id: &str, task: &Task, id: &str) -> Result<(), InventoryError> {
        task.validate().map_err(|message| InventoryError::invalid("params", message))?;
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(NewTask {
            id: id.to_owned(),
            node_id: node_id.to_owned(),
            task: task.clone(),
            correlation_id: actor.correlation_id.clone(),
            created_by: actor.id.clone(),
        });
        Ok(())
    }
}

/// Tasks per INSERT (7 parameters each).
const TASKS_PER_INSERT: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Leased,
    Succeeded,
    Failed,
    Expired,
}

impl TaskStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Leased => "leased",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Queued, Self::Leased, Self::Succeeded, Self::Failed, Self::Expired]
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Expired)
    }
}

/// A task as operators (and the provisioning workflow) see it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NodeTask {
    pub id: String,
    pub node_id: String,
    pub task_type: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub status: TaskStatus,
    pub attempts: i64,
    pub max_attempts: i64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub leased_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<Timestamp>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Set when the agent refused the task before acting (`bad_signature`, `replayed`, …).
    pub refusal_code: Option<String>,
    pub correlation_id: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskPage {
    pub items: Vec<NodeTask>,
    pub next_cursor: Option<String>,
}

const TASK_COLUMNS: &str = "id, node_id, task_type, params, status, attempts, max_attempts, created_at, expires_at, \
     leased_at, completed_at, result, error, refusal_code, correlation_id";

/// A node's report that a leased task finished (not refused, not an inventory),
/// waiting in [`FinishQueue`]. Agents report each task on its own, so under load many
/// reports are in flight at once; they are written with one UPDATE per batch instead
/// of a statement (and a commit) each.
pub(crate) struct FinishReport {
    node_id: String,
    task_id: String,
    status: TaskStatus,
    output: String,
    error: Option<String>,
    completed_at: i64,
}

/// The queue finished-task reports wait in for their batch. The answer is the finished
/// task, or `None` when the report must take the full path: the task was not this
/// node's leased task, or the batch failed.
pub(crate) type FinishQueue = gpuaas_store::GroupCommit<FinishReport, Option<NodeTask>>;

/// Most reports in one batch, written by one UPDATE (6 parameters each).
const MAX_FINISH_BATCH: usize = 64;

pub(crate) fn finish_queue(dialect: gpuaas_store::Dialect) -> FinishQueue {
    gpuaas_store::GroupCommit::for_writes(dialect, MAX_FINISH_BATCH)
}

/// Finishes the leased tasks the reports name, in one transaction; each report gets its
/// task back, or `None` (see [`FinishQueue`]). A failed batch answers `None` to all,
/// and each report then finds out alone what happened: a commit that failed after it
/// reached the database leaves the tasks finished, which the full path answers with.
async fn finish_leased(store: &Store, reports: Vec<FinishReport>) -> Vec<Option<NodeTask>> {
    // A task reported twice in one batch is written with its first report only, as
    // alone: the first writes, a repeat takes the full path and finds it finished.
    let mut seen = std::collections::HashSet::with_capacity(reports.len());
    let first: Vec<&FinishReport> =
        reports.iter().filter(|report| seen.insert((report.task_id.as_str(), report.node_id.as_str()))).collect();
    match finish_leased_together(store, &first).await {
        Ok(mut finished) => {
            reports.iter().map(|report| finished.remove(&(report.task_id.clone(), report.node_id.clone()))).collect()
        }
        Err(error) => {
            tracing::warn!(%error, reports = reports.len(), "batched task reports failed; taking them one by one");
            reports.iter().map(|_| None).collect()
        }
    }
}

async fn finish_leased_together(
    store: &Store,
    reports: &[&FinishReport],
) -> Result<HashMap<(String, String), NodeTask>, InventoryError> {
    let batch = gpuaas_store::Padded::new(reports, MAX_FINISH_BATCH);
    let returning: Vec<String> = TASK_COLUMNS.split(", ").map(|column| format!("node_tasks.{column}")).collect();
    let sql = format!(
        "WITH done (id, node_id, status, result, error, completed_at) AS (VALUES {}) \
         UPDATE node_tasks SET status = CAST(done.status AS TEXT), result = CAST(done.result AS TEXT), \
         error = CAST(done.error AS TEXT), completed_at = CAST(done.completed_at AS BIGINT) FROM done \
         WHERE node_tasks.id = done.id AND node_tasks.node_id = done.node_id AND node_tasks.status = 'leased' \
         AND node_tasks.task_type <> '{}' RETURNING {}",
        batch.value_rows(1, 6),
        TaskType::NodeInventory.as_str(),
        returning.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (report, _) in batch.rows() {
        query = query
            .bind(report.task_id.clone())
            .bind(report.node_id.clone())
            .bind(report.status.as_str())
            .bind(report.output.clone())
            .bind(report.error.clone())
            .bind(report.completed_at);
    }
    let mut one = store.one_write().await?;
    let mut finished = HashMap::with_capacity(reports.len());
    for row in query.fetch_all(&mut *one).await? {
        let task = task_from_row(&row)?;
        finished.insert((task.id.clone(), task.node_id.clone()), task);
    }
    one.finish().await?;
    Ok(finished)
}

/// The queue pulls wait in, by node id, for a lease of their node's queued tasks. A
/// commit that queues tasks for many nodes wakes their pulls together; they then lease
/// with one statement (and one commit) instead of one each. `None` when the batch's
/// statement failed and the pull must lease alone.
pub(crate) type LeaseQueue = gpuaas_store::GroupCommit<String, Option<Leased>>;

/// Most pulls in one lease statement.
const MAX_LEASE_BATCH: usize = 32;

pub(crate) fn lease_queue(dialect: gpuaas_store::Dialect) -> LeaseQueue {
    gpuaas_store::GroupCommit::for_writes(dialect, MAX_LEASE_BATCH)
}

/// What one pull leased: its tasks, oldest first, and the lease's start and end.
#[derive(Debug)]
pub(crate) struct Leased {
    at: Timestamp,
    until: Timestamp,
    tasks: Vec<LeasedTask>,
}

#[derive(Debug)]
struct LeasedTask {
    id: String,
    task_type: String,
    params: String,
    expires_at: i64,
    created_at: i64,
}

fn task_from_row(row: &Row) -> Result<NodeTask, InventoryError> {
    let status: String = row.try_get("status")?;
    let params: String = row.try_get("params")?;
    let result: Option<String> = row.try_get("result")?;
    let json = |text: &str| serde_json::from_str(text).map_err(|e| InventoryError::Corrupt(e.to_string()));
    Ok(NodeTask {
        id: row.try_get("id")?,
        node_id: row.try_get("node_id")?,
        task_type: row.try_get("task_type")?,
        params: json(&params)?,
        status: TaskStatus::parse(&status).ok_or(InventoryError::Corrupt(status))?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
        expires_at: Timestamp::from_micros(row.try_get("expires_at")?),
        leased_at: row.try_get::<Option<i64>, _>("leased_at")?.map(Timestamp::from_micros),
        completed_at: row.try_get::<Option<i64>, _>("completed_at")?.map(Timestamp::from_micros),
        result: result.as_deref().map(json).transpose()?,
        error: row.try_get("error")?,
        refusal_code: row.try_get("refusal_code")?,
        correlation_id: row.try_get("correlation_id")?,
    })
}

/// Pulls waiting in this process, by node. Enqueueing wakes the node's pull at once;
/// work queued by another process is found by [`NodePlane::wake_waiting_nodes`].
#[derive(Default)]
pub(crate) struct Waiters {
    by_node: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    fn notify_for(&self, node_id: &str) -> Arc<Notify> {
        let mut map = self.by_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(node_id.to_owned()).or_default().clone()
    }

    fn wake(&self, node_id: &str) {
        let map = self.by_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(notify) = map.get(node_id) {
            notify.notify_one();
        }
    }

    fn waiting(&self) -> Vec<String> {
        let map = self.by_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().filter(|(_, notify)| Arc::strong_count(notify) > 1).map(|(id, _)| id.clone()).collect()
    }

    fn forget_idle(&self, node_id: &str) {
        let mut map = self.by_node.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(node_id).is_some_and(|notify| Arc::strong_count(notify) == 1) {
            map.remove(node_id);
        }
    }
}

/// Who in this process wants to know when a node reports a task finished: the
/// workflow that queued it moves on at once instead of polling for the result. Tasks
/// finished otherwise (expired, failed by a sweep) are found by their owners' own
/// deadlines.
#[derive(Default)]
pub(crate) struct FinishedListeners {
    listeners: std::sync::RwLock<Vec<TaskFinishedListener>>,
}

/// Called with each task a node reports finished, after its result is committed. It
/// runs on the reporting request's task, so it must only hand the news on.
pub type TaskFinishedListener = Arc<dyn Fn(&NodeTask) + Send + Sync>;

impl FinishedListeners {
    pub(crate) fn add(&self, listener: TaskFinishedListener) {
        self.listeners.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(listener);
    }

    fn tell(&self, task: &NodeTask) {
        for listener in self.listeners.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            listener(task);
        }
    }
}

/// What a sweep changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub requeued: u64,
    pub failed: u64,
    pub expired: u64,
}

pub async fn get(store: &Store, task_id: &str) -> Result<NodeTask, InventoryError> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM node_tasks WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(task_id).fetch_optional(store.pool()).await?;
    row.as_ref().map(task_from_row).transpose()?.ok_or(InventoryError::NotFound("task"))
}

/// Where a task stands, as the provisioning workflow needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub status: TaskStatus,
    pub error: Option<String>,
}

/// The state of each of `task_ids` that exists, in one read on `connection` (the
/// workflow's runner looks at a whole claimed group at once, in the group's
/// transaction).
pub async fn states(
    connection: &mut gpuaas_store::Connection,
    task_ids: &[&str],
) -> Result<HashMap<String, TaskState>, InventoryError> {
    let mut states = HashMap::with_capacity(task_ids.len());
    // Bounded IN lists: well under either engine's limit on parameters.
    for chunk in task_ids.chunks(500) {
        let batch = gpuaas_store::Padded::new(chunk, 500);
        let placeholders = batch.placeholders(1);
        let sql = format!("SELECT id, status, error FROM node_tasks WHERE id IN ({})", placeholders);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, _) in batch.rows() {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *connection).await? {
            let status: String = row.try_get("status")?;
            let status = TaskStatus::parse(&status).ok_or(InventoryError::Corrupt(status))?;
            states.insert(row.try_get("id")?, TaskState { status, error: row.try_get("error")? });
        }
    }
    Ok(states)
}

/// A node's tasks, newest first.
pub async fn list_for_node(
    store: &Store,
    node_id: &str,
    cursor: Option<&str>,
    limit: u32,
) -> Result<TaskPage, InventoryError> {
    let (condition, cursor) = match cursor {
        Some(text) => (" AND (created_at < $2 OR (created_at = $2 AND id < $3))", Some(Cursor::decode(text)?)),
        None => ("", None),
    };
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM node_tasks WHERE node_id = $1{condition} ORDER BY created_at DESC, id DESC LIMIT {}",
        i64::from(limit) + 1
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(node_id);
    if let Some(cursor) = &cursor {
        query = query.bind(cursor.sort_key).bind(cursor.id.clone());
    }
    let rows = query.fetch_all(store.pool()).await?;
    let mut items = rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| Cursor::new(last.created_at.as_micros(), last.id.clone()).encode())
    } else {
        None
    };
    Ok(TaskPage { items, next_cursor })
}

impl NodePlane {
    /// Queues a validated task for a node. Refused for nodes that are retired or not
    /// yet enrolled, and for parameters the protocol rejects.
    pub async fn enqueue_task(&self, actor: &Actor, node_id: &str, task: &Task) -> Result<NodeTask, InventoryError> {
        let mut tx = self.store().begin().await?;
        let id = self.enqueue_task_in(&mut tx, actor, node_id, task).await?;
        tx.commit().await?;
        self.wake_node(node_id);
        get(self.store(), &id).await
    }

    /// [`Self::enqueue_task`] inside the caller's transaction, so a workflow records the
    /// task id in the same commit that queues the task; returns the task id. Call
    /// [`Self::wake_node`] after the commit so a parked pull sees it at once.
    pub async fn enqueue_task_in(
        &self,
        connection: &mut gpuaas_store::Connection,
        actor: &Actor,
        node_id: &str,
        task: &Task,
    ) -> Result<String, InventoryError> {
        let id = new_id().to_string();
        self.enqueue_task_with_id_in(connection, actor, node_id, task, &id).await?;
        Ok(id)
    }

    /// [`Self::enqueue_task_in`] under an id the caller chose (from
    /// [`gpuaas_kernel::new_id`]), so a workflow can record the id in the row it
    /// updates first, before it takes the node's lock.
    pub async fn enqueue_task_with_id_in(
        &self,
        connection: &mut gpuaas_store::Connection,
        actor: &Actor,
        node_id: &str,
        task: &Task,
        id: &str,
    ) -> Result<(), InventoryError> {
        task.validate().map_err(|message| InventoryError::invalid("params", message))?;
        let ttl = self.policy().get_duration_secs_in(connection, keys::NODES_TASK_TTL_SECONDS).await?;
        let max_attempts: i64 = self.policy().get_in(connection, keys::NODES_TASK_MAX_ATTEMPTS).await?;
        let now = Timestamp::now();
        let params = task.params().to_string();
        let dialect = self.store().dialect();
        // The common case in one statement: the row is written only for a node that
        // takes tasks, read under the enqueue lock. When nothing was written, the
        // node's status says why.
        let sql = format!(
            "INSERT INTO node_tasks (id, node_id, task_type, params, status, attempts, max_attempts, expires_at, \
             correlation_id, created_by, created_at) \
             SELECT $1, id, $3, $4, 'queued', 0, $5, $6, $7, $8, $9 FROM nodes \
             WHERE id = $2 AND status NOT IN ('{}', '{}'){}",
            NodeStatus::Retired.as_str(),
            NodeStatus::PendingEnrollment.as_str(),
            NodeLock::Enqueue.clause(dialect)
        );
        // A node that enrolled between the two reads gets a second try.
        for _ in 0..2 {
            let written = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .bind(node_id)
                .bind(task.task_type().as_str())
                .bind(&params)
                .bind(max_attempts.max(1))
                .bind(now.saturating_add(ttl).as_micros())
                .bind(&actor.correlation_id)
                .bind(&actor.id)
                .bind(now.as_micros())
                .execute(&mut *connection)
                .await?
                .rows_affected();
            if written == 1 {
                return Ok(());
            }
            match crate::nodes::status_under(connection, dialect, node_id, NodeLock::Enqueue).await? {
                NodeStatus::Retired => return Err(InventoryError::NodeRetired),
                NodeStatus::PendingEnrollment => {
                    return Err(InventoryError::Conflict("the node has not enrolled yet".into()));
                }
                _ => {}
            }
        }
        Err(InventoryError::Conflict("the node changed while the task was queued; try again".into()))
    }

    /// Writes every task of `queued` in one statement on `connection` (the caller's
    /// transaction), each only if its node takes tasks (read under the enqueue lock,
    /// as [`Self::enqueue_task_with_id_in`] does). When any node does not, nothing is
    /// written and the answer is a conflict: the caller takes its work again one task
    /// at a time, where the refusal says which node and why.
    pub async fn enqueue_queued_in(
        &self,
        connection: &mut gpuaas_store::Connection,
        queued: &QueuedTasks,
    ) -> Result<(), InventoryError> {
        let tasks = std::mem::take(&mut *queued.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if tasks.is_empty() {
            return Ok(());
        }
        let ttl = self.policy().get_duration_secs_in(connection, keys::NODES_TASK_TTL_SECONDS).await?;
        let max_attempts: i64 = self.policy().get_in(connection, keys::NODES_TASK_MAX_ATTEMPTS).await?;
        let now = Timestamp::now();
        let mut created_at = now.as_micros();
        let lock = match self.store().dialect() {
            gpuaas_store::Dialect::Postgres => " FOR KEY SHARE OF nodes",
            gpuaas_store::Dialect::Sqlite => "",
        };
        for chunk in tasks.chunks(TASKS_PER_INSERT) {
            let batch = gpuaas_store::Padded::new(chunk, TASKS_PER_INSERT);
            let sql = format!(
                "WITH batch (id, node_id, task_type, params, correlation_id, created_by, created_at) AS (VALUES {}) \
                 INSERT INTO node_tasks (id, node_id, task_type, params, status, attempts, max_attempts, expires_at, \
                 correlation_id, created_by, created_at) \
                 SELECT batch.id, nodes.id, batch.task_type, batch.params, 'queued', 0, $1, $2, batch.correlation_id, \
                 batch.created_by, batch.created_at FROM batch JOIN nodes ON nodes.id = batch.node_id \
                 WHERE batch.id IS NOT NULL AND nodes.status NOT IN ('{}', '{}'){lock}",
                batch.value_rows(3, 7),
                NodeStatus::Retired.as_str(),
                NodeStatus::PendingEnrollment.as_str(),
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(max_attempts.max(1))
                .bind(now.saturating_add(ttl).as_micros());
            // Padding rows bind no id, which leaves them out (see `gpuaas_store::Padded`).
            for (task, padding) in batch.rows() {
                // A microsecond apart, in the order queued: pulls hand tasks out oldest first.
                created_at += 1;
                query = query
                    .bind((!padding).then(|| task.id.clone()))
                    .bind(task.node_id.clone())
                    .bind(task.task.task_type().as_str())
                    .bind(task.task.params().to_string())
                    .bind(task.correlation_id.clone())
                    .bind(task.created_by.clone())
                    .bind(created_at);
            }
            if query.execute(&mut *connection).await?.rows_affected() != chunk.len() as u64 {
                return Err(InventoryError::Conflict("a node of these tasks does not take tasks now".into()));
            }
        }
        Ok(())
    }

    /// Wakes this process's parked pull of `node_id`, if any.
    pub fn wake_node(&self, node_id: &str) {
        self.inner.waiters.wake(node_id);
    }

    /// Leases up to [`MAX_TASKS_PER_PULL`] queued tasks of the node, waiting up to
    /// `wait` for one to arrive. Each is signed for this delivery.
    pub async fn pull_tasks(&self, node_id: &str, wait: Duration) -> Result<Vec<SignedTask>, InventoryError> {
        self.pull(node_id, wait, None).await
    }

    /// [`Self::pull_tasks`] for a node that authenticated with a certificate: the
    /// certificate is checked again each time the wait ends, so a node revoked or
    /// retired while its pull was parked gets no task.
    pub async fn pull_tasks_as(
        &self,
        node: &crate::enrollment::AuthenticatedNode,
        wait: Duration,
    ) -> Result<Vec<SignedTask>, InventoryError> {
        self.pull(&node.node_id, wait, Some(&node.certificate)).await
    }

    async fn pull(
        &self,
        node_id: &str,
        wait: Duration,
        certificate: Option<&gpuaas_pki::PeerCertificate>,
    ) -> Result<Vec<SignedTask>, InventoryError> {
        let notify = self.inner.waiters.notify_for(node_id);
        let deadline = tokio::time::Instant::now() + wait;
        let mut first = true;
        let result = loop {
            // Register interest before looking, so an enqueue between the look and the
            // wait is not missed.
            let notified = notify.notified();
            if let (Some(certificate), false) = (certificate, first)
                && let Err(error) = self.authenticate_node(certificate).await
            {
                break Err(error);
            }
            first = false;
            let leased = self.lease(node_id).await;
            match leased {
                Ok(tasks) if tasks.is_empty() => {}
                other => break other,
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break Ok(Vec::new());
            }
        };
        drop(notify);
        self.inner.waiters.forget_idle(node_id);
        result
    }

    /// Leases the node's oldest queued tasks (up to [`MAX_TASKS_PER_PULL`]) and signs
    /// each for this delivery. Pulls that look at once (a commit that queued tasks for
    /// many nodes wakes them all together) share one statement (see [`LeaseQueue`]).
    async fn lease(&self, node_id: &str) -> Result<Vec<SignedTask>, InventoryError> {
        let this = self.clone();
        let run = move |batch: Vec<String>| {
            let this = this.clone();
            async move { this.lease_batch(batch).await }
        };
        let leased = match self.inner.leases.submit(node_id.to_owned(), run).await {
            Some(Some(leased)) => leased,
            // The shared statement failed: this pull finds out alone what happens.
            _ => self
                .lease_together(&[node_id])
                .await?
                .pop()
                .ok_or_else(|| InventoryError::Corrupt("a lone lease was left unanswered".into()))?,
        };
        let mut deliveries = Vec::with_capacity(leased.tasks.len());
        for task in &leased.tasks {
            let params: serde_json::Value =
                serde_json::from_str(&task.params).map_err(|e| InventoryError::Corrupt(e.to_string()))?;
            deliveries.push(self.inner.signer.sign(&Delivery {
                task_id: &task.id,
                node_id,
                task_type: &task.task_type,
                params: &params,
                not_before: leased.at,
                expires_at: Timestamp::from_micros(task.expires_at).min(leased.until),
            }));
        }
        if !deliveries.is_empty() {
            tracing::debug!(node_id, count = deliveries.len(), "tasks leased");
        }
        Ok(deliveries)
    }

    /// A batch of lease requests: each gets its node's tasks, or `None` for all when
    /// the statement failed.
    async fn lease_batch(&self, nodes: Vec<String>) -> Vec<Option<Leased>> {
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        match self.lease_together(&nodes).await {
            Ok(leased) => leased.into_iter().map(Some).collect(),
            Err(error) => {
                tracing::warn!(%error, pulls = nodes.len(), "batched task leases failed; taking them one by one");
                nodes.iter().map(|_| None).collect()
            }
        }
    }

    /// Leases the queued tasks of `nodes` in one statement, each node's oldest first
    /// and at most [`MAX_TASKS_PER_PULL`] of them; answers in the order of `nodes`. A
    /// node named twice gets its tasks the first time and none the second, as two
    /// pulls of one node one after the other would.
    async fn lease_together(&self, nodes: &[&str]) -> Result<Vec<Leased>, InventoryError> {
        let lease = self.policy().get_duration_secs(keys::NODES_TASK_LEASE_SECONDS).await?;
        let at = Timestamp::now();
        let until = at.saturating_add(lease);
        let mut distinct: Vec<&str> = nodes.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        const SET: &str = "UPDATE node_tasks SET status = 'leased', attempts = attempts + 1, leased_at = $1, \
             lease_expires_at = $2, first_leased_at = COALESCE(first_leased_at, $1)";
        const RETURNING: &str = "RETURNING node_tasks.node_id, node_tasks.id, node_tasks.task_type, \
             node_tasks.params, node_tasks.expires_at, node_tasks.created_at";
        // Each node's own oldest tasks, with its own limit (on PostgreSQL skipping rows
        // another pull holds). `completed_at IS NULL` names the index of open tasks,
        // the only one that finds them (ADR 032): both engines take a partial index
        // only for a query that states its condition.
        let pick = |node: &str| {
            format!(
                "SELECT id FROM node_tasks WHERE node_id = {node} AND completed_at IS NULL AND status = 'queued' \
                 AND expires_at > $1 ORDER BY created_at, id LIMIT {MAX_TASKS_PER_PULL}"
            )
        };
        let (sql, nodes_bound): (String, Vec<String>) = match self.store().dialect() {
            // One text for any number of nodes (a JSON list of them), so PostgreSQL
            // plans it once per connection however many pulls share it. The picks are
            // made once, before the update: a pick run again inside the join would pass
            // over the rows the update had just changed and take the next ones, beyond
            // the node's limit.
            gpuaas_store::Dialect::Postgres => {
                let sql = format!(
                    "WITH picks AS MATERIALIZED (SELECT picked.id FROM \
                     json_array_elements_text(CAST($3 AS json)) AS pulling (node_id) \
                     CROSS JOIN LATERAL ({} FOR UPDATE SKIP LOCKED) AS picked) \
                     {SET} FROM picks WHERE node_tasks.id = picks.id AND node_tasks.status = 'queued' {RETURNING}",
                    pick("pulling.node_id")
                );
                let nodes = serde_json::to_string(&distinct).map_err(|e| InventoryError::Corrupt(e.to_string()))?;
                (sql, vec![nodes])
            }
            // SQLite has no LATERAL: a sub-select per node. The outer condition names
            // the nodes too, so the planner does not read every queued task of the
            // fleet to match the few picked.
            gpuaas_store::Dialect::Sqlite => {
                let picks: Vec<String> = (0..distinct.len())
                    .map(|index| format!("SELECT id FROM ({}) AS node_{index}", pick(&format!("${}", index + 3))))
                    .collect();
                let sql = format!(
                    "{SET} WHERE node_id IN ({}) AND status = 'queued' AND id IN ({}) {RETURNING}",
                    gpuaas_store::placeholders(3, distinct.len()),
                    picks.join(" UNION ALL ")
                );
                (sql, distinct.iter().map(|node| (*node).to_owned()).collect())
            }
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(at.as_micros()).bind(until.as_micros());
        for node in nodes_bound {
            query = query.bind(node);
        }
        let mut one = self.store().one_write().await?;
        let rows = query.fetch_all(&mut *one).await?;
        one.finish().await?;
        let mut by_node: HashMap<String, Vec<LeasedTask>> = HashMap::with_capacity(distinct.len());
        for row in &rows {
            let task = LeasedTask {
                id: row.try_get("id")?,
                task_type: row.try_get("task_type")?,
                params: row.try_get("params")?,
                expires_at: row.try_get("expires_at")?,
                created_at: row.try_get("created_at")?,
            };
            by_node.entry(row.try_get("node_id")?).or_default().push(task);
        }
        Ok(nodes
            .iter()
            .map(|node| {
                let mut tasks = by_node.remove(*node).unwrap_or_default();
                // Handed out oldest first, as queued.
                tasks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
                Leased { at, until, tasks }
            })
            .collect())
    }

    /// Records the node's result for a task it holds. A second report of an already
    /// finished task is answered with its current state (agents retry on network
    /// errors). A refusal is audited: it means a delivery failed verification.
    pub async fn complete_task(
        &self,
        node_id: &str,
        task_id: &str,
        result: &TaskResult,
        correlation_id: &str,
    ) -> Result<NodeTask, InventoryError> {
        let finished = self.record_result(node_id, task_id, result, correlation_id).await?;
        // After the commit: a listener that looks finds the result. A repeated report
        // tells them again, which they take as harmless.
        if finished.status.is_terminal() {
            self.inner.finished.tell(&finished);
        }
        Ok(finished)
    }

    async fn record_result(
        &self,
        node_id: &str,
        task_id: &str,
        result: &TaskResult,
        correlation_id: &str,
    ) -> Result<NodeTask, InventoryError> {
        let (status, error, refusal_code) = match result.outcome {
            TaskOutcome::Succeeded => (TaskStatus::Succeeded, None, None),
            TaskOutcome::Failed => (
                TaskStatus::Failed,
                Some(result.error.clone().unwrap_or_else(|| "failed without a reason".into())),
                None,
            ),
            TaskOutcome::Refused => {
                let refusal = result
                    .refusal
                    .as_ref()
                    .ok_or_else(|| InventoryError::invalid("refusal", "a refused result names its refusal"))?;
                (TaskStatus::Failed, Some(refusal.message.clone()), Some(refusal.code.as_str()))
            }
        };
        // Host error text is the agent's to word; keep it bounded rather than refuse it.
        let error = error.map(|text| text.chars().filter(|c| !c.is_control()).take(4096).collect::<String>());
        let output = result.output.to_string();
        if output.len() > 1 << 20 {
            return Err(InventoryError::invalid("output", "at most 1 MiB"));
        }
        let now = Timestamp::now().as_micros();
        // The common case in one statement: a leased task that is not an inventory
        // (whose output is checked first) finishing without a refusal (which is audited
        // in the same transaction). On PostgreSQL it is its own transaction; SQLite's
        // writers take turns through `Store::begin`. Anything else (not leased, not
        // this node's, an inventory, a refusal) takes the path below.
        //
        // Reports that arrive together share that statement (see [`FinishReport`]).
        if refusal_code.is_none() {
            let report = FinishReport {
                node_id: node_id.to_owned(),
                task_id: task_id.to_owned(),
                status,
                output: output.clone(),
                error: error.clone(),
                completed_at: now,
            };
            let store = self.store().clone();
            let run = move |batch: Vec<FinishReport>| {
                let store = store.clone();
                async move { finish_leased(&store, batch).await }
            };
            if let Some(Some(finished)) = self.inner.finishes.submit(report, run).await {
                return Ok(finished);
            }
        }
        let mut tx = self.store().begin().await?;
        let sql = format!("SELECT {TASK_COLUMNS} FROM node_tasks WHERE id = $1 AND node_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(task_id).bind(node_id).fetch_optional(&mut *tx).await?;
        // Another node's task is answered exactly like a missing one.
        let task = row.as_ref().map(task_from_row).transpose()?.ok_or(InventoryError::NotFound("task"))?;
        if task.status != TaskStatus::Leased {
            drop(tx);
            if task.status.is_terminal() {
                return Ok(task);
            }
            return Err(InventoryError::Conflict(format!("the task is {}, not leased", task.status.as_str())));
        }
        let inventory = if status == TaskStatus::Succeeded && task.task_type == TaskType::NodeInventory.as_str() {
            let inventory: Inventory = serde_json::from_value(result.output.clone())
                .map_err(|e| InventoryError::invalid("output", format!("not an inventory: {e}")))?;
            inventory.validate().map_err(|message| InventoryError::invalid("output", message))?;
            Some(inventory)
        } else {
            None
        };
        // RETURNING gives the finished task without reading it again after the commit.
        let sql = format!(
            "UPDATE node_tasks SET status = $2, result = $3, error = $4, refusal_code = $5, completed_at = $6 \
             WHERE id = $1 RETURNING {TASK_COLUMNS}"
        );
        let finished = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(task_id)
            .bind(status.as_str())
            .bind(output)
            .bind(error.clone())
            .bind(refusal_code)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        let finished = task_from_row(&finished)?;
        if let Some(inventory) = &inventory {
            crate::nodes::store_inventory(&mut tx, node_id, inventory, now).await?;
        }
        if let Some(code) = refusal_code {
            let mut entry = Actor::node(node_id, correlation_id).entry(
                "node.task.refused",
                self.resource_id(ResourceType::Node, node_id),
                serde_json::json!({"task_id": task_id, "task_type": task.task_type, "refusal_code": code, "message": error}),
            );
            entry.result = gpuaas_audit::AuditResult::Denied;
            gpuaas_audit::record(&mut tx, &entry).await?;
        }
        tx.commit().await?;
        if let Some(code) = refusal_code {
            tracing::warn!(node_id, task_id, refusal_code = code, "node refused a task delivery");
        }
        Ok(finished)
    }

    /// Hands out again tasks whose lease ran out (or fails them when their attempts
    /// are spent) and expires queued tasks nobody pulled in time.
    pub async fn sweep_tasks(&self) -> Result<SweepReport, InventoryError> {
        let now = Timestamp::now().as_micros();
        let mut tx = self.store().begin().await?;
        let failed = sqlx::query(
            "UPDATE node_tasks SET status = 'failed', completed_at = $1, \
             error = 'the node did not report a result before its last lease ended' \
             WHERE completed_at IS NULL AND status = 'leased' AND lease_expires_at < $1 AND attempts >= max_attempts",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let requeued: Vec<String> = sqlx::query_scalar(
            "UPDATE node_tasks SET status = 'queued', lease_expires_at = NULL \
             WHERE completed_at IS NULL AND status = 'leased' AND lease_expires_at < $1 AND attempts < max_attempts \
             AND expires_at > $1 RETURNING node_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let expired = sqlx::query(
            "UPDATE node_tasks SET status = 'expired', completed_at = $1, error = 'not delivered before it expired' \
             WHERE completed_at IS NULL \
             AND ((status = 'queued' AND expires_at <= $1) OR (status = 'leased' AND lease_expires_at < $1))",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        for node_id in &requeued {
            self.inner.waiters.wake(node_id);
        }
        Ok(SweepReport { requeued: requeued.len() as u64, failed, expired })
    }

    /// Wakes this process's waiting pulls for nodes that have queued work, so tasks
    /// queued by another process are delivered within one call of this.
    pub async fn wake_waiting_nodes(&self) -> Result<usize, InventoryError> {
        let waiting = self.inner.waiters.waiting();
        if waiting.is_empty() {
            return Ok(0);
        }
        let nodes = self.nodes_with_queued_tasks().await?;
        let waiting: std::collections::HashSet<String> = waiting.into_iter().collect();
        let mut woken = 0;
        for node in nodes.iter().filter(|node| waiting.contains(*node)) {
            self.inner.waiters.wake(node);
            woken += 1;
        }
        Ok(woken)
    }

    /// The nodes that have tasks waiting to be pulled, read through the index of open
    /// tasks (ADR 032).
    pub async fn nodes_with_queued_tasks(&self) -> Result<Vec<String>, InventoryError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT node_id FROM node_tasks WHERE completed_at IS NULL AND status = 'queued'",
        )
        .fetch_all(self.store().pool())
        .await?)
    }

    /// Queues a `node.inventory` task and waits up to the policy's probe time for the
    /// node's answer. The returned task says whether it finished.
    pub async fn probe(&self, actor: &Actor, node_id: &str) -> Result<NodeTask, InventoryError> {
        let wait = self.policy().get_duration_secs(keys::NODES_PROBE_WAIT_SECONDS).await?;
        let task = self.enqueue_task(actor, node_id, &Task::NodeInventory).await?;
        // Audited once queued, so a refused probe (node retired or not enrolled) leaves
        // no row claiming success.
        let entry = actor.entry(
            "node.probe",
            self.resource_id(ResourceType::Node, node_id),
            serde_json::json!({"task_id": task.id}),
        );
        gpuaas_audit::record_standalone(self.store(), &entry).await?;
        self.wait_for_task(&task.id, wait).await
    }

    /// Polls a task until it finishes or `wait` passes; returns its latest state.
    pub async fn wait_for_task(&self, task_id: &str, wait: Duration) -> Result<NodeTask, InventoryError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let task = get(self.store(), task_id).await?;
            if task.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(task);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

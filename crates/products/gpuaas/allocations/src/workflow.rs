//! The durable provisioning workflow: a step runner over the `allocations` table.
//!
//! An allocation with `workflow_due_at` set has work to do. A runner takes a group of
//! such rows in one transaction, locking them as it reads them (rows another runner
//! holds are skipped, never waited for), and takes one step per allocation: queue the
//! next node task (its id recorded in the same commit), or look at the task in flight
//! and move the allocation on. The row lock is the claim, and everything the next step
//! needs is in the row, so a process killed at any point leaves either the old state or
//! the new one and the next runner takes the same step again: no task is queued twice,
//! no GPU is freed twice, nothing is billed twice.
//!
//! A node's report that a task finished moves its allocation on at once (the node
//! plane tells this process, see `Allocations::new`); the row's own due time is the
//! fallback, for reports taken by another process, and the phase deadline.
//!
//! Events (`gpuaas.provisioning.requested`, `…releasing.requested`,
//! `…force_release_requested`) only make an allocation due sooner; the row decides
//! what happens, so a duplicate or late event is harmless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use gpuaas_inventory::slots;
use gpuaas_inventory::tasks::{self as node_tasks, TaskState, TaskStatus};
use gpuaas_kernel::{Timestamp, new_id};
use gpuaas_nodeagent_protocol::{ProvisionUserParams, RevokeUserParams, Task};
use gpuaas_policy::keys;
use gpuaas_store::Connection;
use gpuaas_store::sqlx;

use crate::events;
use crate::service::{COLUMNS, Change, Journal, Record, Sets, Value, apply_journaled, record_from_row, schedule};
use crate::{Actor, AllocationError, AllocationStatus, Allocations};

/// Most steps one transaction of the runner takes (ADR 023).
const MAX_GROUP: usize = 64;
/// How long a row whose step failed waits before the next try.
const FAILED_STEP_RETRY: Duration = Duration::from_secs(30);
/// Longest backoff between task attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How far behind the last complete look a pass starts (see [`DueScan`]): a row is
/// written due at its writer's now, and may commit a little later.
const DUE_LOOKBACK: Duration = Duration::from_millis(500);
/// How often a pass of this process looks back all the way instead.
const FULL_LOOK_EVERY: Duration = Duration::from_secs(1);

/// Where this process's passes start looking for due rows.
///
/// On PostgreSQL every step leaves its row's old due time behind as a dead entry of
/// the due index, and those entries, all in the past, sit in front of the live ones
/// until VACUUM removes them (autovacuum comes at most once a minute). A look from the
/// index's start read them all, twice a pass (the count and the claim): about 120
/// buffers a look under load (ADR 028). So a pass looks from a floor instead: when a look
/// found fewer due rows than it could take, every row due by its time was taken or
/// held by another runner, and the floor moves up to that time less
/// [`DUE_LOOKBACK`]. A look that found as many as it could take leaves the floor
/// where it is, so a backlog is worked oldest first. Once every [`FULL_LOOK_EVERY`] a
/// pass looks back all the way, for rows that came due below the floor (a commit
/// later than the lookback, another process's clock), so such a row waits at most
/// that long beyond the runners' own delay.
#[derive(Debug)]
pub(crate) struct DueScan {
    floor: AtomicI64,
    last_full_look: AtomicI64,
}

impl Default for DueScan {
    fn default() -> Self {
        // A new process's first pass looks all the way.
        Self { floor: AtomicI64::new(i64::MIN), last_full_look: AtomicI64::new(i64::MIN) }
    }
}

impl DueScan {
    /// The window of the pass starting `now` (microseconds).
    fn window(&self, now: i64) -> DueWindow {
        let every = i64::try_from(FULL_LOOK_EVERY.as_micros()).unwrap_or(i64::MAX);
        // One pass of the process takes the full look: the one that moves its time on.
        let full = now.saturating_sub(self.last_full_look.load(Ordering::Relaxed)) >= every
            && self.last_full_look.fetch_max(now, Ordering::Relaxed) <= now.saturating_sub(every);
        let after = if full { i64::MIN } else { self.floor.load(Ordering::Relaxed) };
        DueWindow { after, until: now }
    }

    /// A look over `window` found `found` due rows of the `most` it counts up to.
    fn looked(&self, window: DueWindow, found: usize, most: usize) {
        if found < most {
            let lookback = i64::try_from(DUE_LOOKBACK.as_micros()).unwrap_or(i64::MAX);
            self.floor.fetch_max(window.until.saturating_sub(lookback), Ordering::Relaxed);
        }
    }
}

/// The due times one pass looks at: after `after` (exclusive) and up to `until`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DueWindow {
    after: i64,
    until: i64,
}

impl DueWindow {
    /// No due time at all: for a pass whose told rows fill its group.
    const NONE: Self = Self { after: i64::MAX, until: i64::MIN };
}

/// How `step_together` takes its rows: up to `due` of those in
/// `window` beside the told ones, and with a batched journal or writing as it goes.
#[derive(Debug, Clone, Copy)]
struct Together {
    due: usize,
    window: DueWindow,
    batched: bool,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    pub claimed: usize,
    pub failed_steps: usize,
}

/// Timing the workflow reads from policy once per pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    provision_timeout: Duration,
    release_timeout: Duration,
    max_attempts: i64,
    retry_base: Duration,
    poll: Duration,
    /// Usage closed by a step is billed with these.
    billing_window_seconds: i64,
    checkpoint_every: i64,
}

impl Timing {
    /// A journal that writes everything at the end (see [`Journal::batched`]), billing
    /// the usage it closes with this timing.
    pub(crate) fn batched_journal(&self) -> Journal {
        Journal::batched(self.billing_window_seconds, self.checkpoint_every)
    }
}

impl Allocations {
    /// Read before a transaction begins: a policy read inside one would wait for a
    /// second pooled connection while holding one.
    pub(crate) async fn timing(&self) -> Result<Timing, AllocationError> {
        let policy = self.policy();
        Ok(Timing {
            provision_timeout: policy.get_duration_secs(keys::ALLOCATIONS_PROVISION_TIMEOUT_SECONDS).await?,
            release_timeout: policy.get_duration_secs(keys::ALLOCATIONS_RELEASE_TIMEOUT_SECONDS).await?,
            max_attempts: policy.get(keys::ALLOCATIONS_WORKFLOW_MAX_ATTEMPTS).await?,
            retry_base: policy.get_duration_ms(keys::ALLOCATIONS_WORKFLOW_RETRY_BASE_MS).await?,
            poll: policy.get_duration_ms(keys::ALLOCATIONS_WORKFLOW_POLL_INTERVAL_MS).await?,
            billing_window_seconds: policy.get(keys::BILLING_WINDOW_SECONDS).await?,
            checkpoint_every: policy.get(keys::BILLING_CHECKPOINT_EVERY).await?,
        })
    }

    /// Takes up to `limit` allocations with work to do, in up to `parallel` groups at
    /// once, and one step for each. First those a node task of which this process was
    /// told finished (see [`Allocations::new`]), then those whose time has come.
    ///
    /// A group is one transaction: it locks the rows it takes (`SKIP LOCKED` on
    /// PostgreSQL, so groups and processes never wait for each other's rows; SQLite's
    /// writer turn does the same), reads their tasks' states, and writes every step.
    /// The lock is the claim: a process killed mid-group takes its claim with it, and
    /// nothing but the step itself writes the row.
    pub async fn run_due(&self, limit: usize, parallel: usize) -> Result<RunReport, AllocationError> {
        let (limit, parallel) = (limit.max(1), parallel.max(1));
        let per_group = limit.div_ceil(parallel).clamp(1, MAX_GROUP);
        let told = self.take_finished(limit);
        // Groups are opened for the work seen, no more: one allocation to step is one
        // transaction, not `parallel` of which all but one claim nothing. An idle
        // runner looks with one read and opens no transaction (on SQLite, takes no
        // writer's turn).
        let room = (per_group * parallel).saturating_sub(told.len());
        // A pass with no room looks at no due times, so it never takes the second's
        // full look from one that would use it.
        let (window, mut due) = if room > 0 {
            let window = self.due_scan().window(Timestamp::now().as_micros());
            let most = per_group * parallel;
            let found = self.due_count(window, most).await?;
            self.due_scan().looked(window, found, most);
            (window, found.min(room))
        } else {
            (DueWindow::NONE, 0)
        };
        let groups = (told.len() + due).div_ceil(per_group).min(parallel);
        if groups == 0 {
            return Ok(RunReport::default());
        }
        let timing = self.timing().await?;
        let told_per_group = told.len().div_ceil(groups);
        let mut told = told.into_iter();
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..groups {
            let told: Vec<String> = told.by_ref().take(told_per_group).collect();
            // The group's size: its told rows and its share of the due ones. A told row
            // another group holds leaves room for a due one instead.
            let take_due = per_group.saturating_sub(told.len()).min(due);
            due -= take_due;
            let size = told.len() + take_due;
            let this = self.clone();
            running.spawn(async move { this.run_group(told, size, window, &timing).await });
        }
        let mut report = RunReport::default();
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok(Ok(group)) => {
                    report.claimed += group.claimed;
                    report.failed_steps += group.failed_steps;
                }
                Ok(Err(error)) => return Err(error),
                Err(join_error) => {
                    report.failed_steps += 1;
                    tracing::error!(%join_error, "workflow steps panicked");
                }
            }
        }
        Ok(report)
    }

    /// How many allocations are due now, counting up to `most`: one read of the due
    /// index (the order makes it an index scan; without it the planner may scan the
    /// table). Rows another runner holds are counted too; their groups claim less.
    ///
    /// The limit is written into the text, not bound: with a bound limit PostgreSQL
    /// costs the cached generic plan as if a tenth of the table were wanted, finds it
    /// dearer than a plan for the actual values and plans the statement afresh on every
    /// call, which was most of its cost (ADR 019). A runner counts with one limit.
    async fn due_count(&self, window: DueWindow, most: usize) -> Result<usize, AllocationError> {
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT workflow_due_at FROM allocations \
             WHERE workflow_due_at > $1 AND workflow_due_at <= $2 ORDER BY workflow_due_at LIMIT {most}) AS due"
        );
        let due: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(window.after)
            .bind(window.until)
            .fetch_one(self.store().pool())
            .await?;
        Ok(usize::try_from(due).unwrap_or(0))
    }

    /// One group: `told` (allocations whose task finished) and then as many due ones
    /// as fit in `size`, stepped in one transaction. When a step fails (a lock wait was
    /// broken, a node stopped taking tasks), everything the group wrote is dropped and
    /// each allocation gets a transaction of its own, so one conflict costs its
    /// neighbours nothing; a row whose step fails alone too is postponed.
    async fn run_group(
        &self,
        told: Vec<String>,
        size: usize,
        window: DueWindow,
        timing: &Timing,
    ) -> Result<RunReport, AllocationError> {
        let together = Together { due: size, window, batched: true };
        let StepFailure { claimed, error } = match self.step_together(&told, together, timing).await {
            Ok(claimed) => return Ok(RunReport { claimed: claimed.len(), failed_steps: 0 }),
            // Nothing was claimed: the database itself failed.
            Err(failure) if failure.claimed.is_empty() => return Err(failure.error),
            Err(failure) => failure,
        };
        // Alone, a step writes as it goes, so a node that stopped taking tasks fails
        // that step's way (its allocation fails) instead of the whole batch.
        tracing::debug!(%error, steps = claimed.len(), "grouped workflow steps failed; taking them one by one");
        let mut report = RunReport::default();
        for id in claimed {
            let alone = Together { due: 0, window, batched: false };
            match self.step_together(std::slice::from_ref(&id), alone, timing).await {
                Ok(taken) => report.claimed += taken.len(),
                Err(failure) => {
                    report.claimed += 1;
                    report.failed_steps += 1;
                    self.step_failed(&id, &failure.error).await;
                }
            }
        }
        Ok(report)
    }

    /// Claims `told` and up to `due` rows whose time has come, steps them and commits,
    /// in one transaction; returns the ids it stepped. A `batched` journal writes
    /// everything at the end (see [`Journal::batched`]); otherwise each step writes as
    /// it goes. On failure the transaction is rolled back at once, not on its
    /// connection's next use: its rows would stay locked until then.
    async fn step_together(
        &self,
        told: &[String],
        together: Together,
        timing: &Timing,
    ) -> Result<Vec<String>, StepFailure> {
        let failed = |claimed: &[String], error: AllocationError| StepFailure { claimed: claimed.to_vec(), error };
        let mut tx = self.store().begin().await.map_err(|error| failed(&[], error.into()))?;
        let claimed = match self.claim(&mut tx, told, together.due, together.window).await {
            Ok(claimed) => claimed,
            Err(error) => {
                drop(tx.rollback().await);
                return Err(failed(&[], error));
            }
        };
        let ids: Vec<String> = claimed.iter().map(|record| record.view.id.clone()).collect();
        if ids.is_empty() {
            tx.rollback().await.map_err(|error| failed(&[], error.into()))?;
            return Ok(ids);
        }
        let journal = if together.batched { timing.batched_journal() } else { Journal::default() };
        let written = async {
            let wake = self.step_claimed(&mut tx, claimed, timing, &journal).await?;
            self.write_journal(&mut tx, &journal).await?;
            Ok::<_, AllocationError>(wake)
        }
        .await;
        match written {
            Ok(wake) => {
                tx.commit().await.map_err(|error| failed(&ids, error.into()))?;
                self.wake_nodes(wake);
                self.announce(journal.take_moved());
                Ok(ids)
            }
            Err(error) => {
                drop(tx.rollback().await);
                Err(failed(&ids, error))
            }
        }
    }

    /// Logs a failed step and makes its row due again only after
    /// [`FAILED_STEP_RETRY`], so a step that keeps failing (a broken row, a lost
    /// database connection) is retried at that pace instead of on every pass. Best
    /// effort: a row it cannot postpone is retried on the next pass.
    async fn step_failed(&self, allocation_id: &str, error: &AllocationError) {
        tracing::warn!(allocation_id, %error, "workflow step failed; retried later");
        let due = Timestamp::now().saturating_add(FAILED_STEP_RETRY).as_micros();
        let postponed = async {
            let mut one = self.store().one_write().await?;
            sqlx::query("UPDATE allocations SET workflow_due_at = $1 WHERE id = $2 AND workflow_due_at IS NOT NULL")
                .bind(due)
                .bind(allocation_id)
                .execute(&mut *one)
                .await?;
            one.finish().await?;
            Ok::<_, AllocationError>(())
        }
        .await;
        if let Err(error) = postponed {
            tracing::warn!(allocation_id, %error, "a failed workflow step could not be postponed");
        }
    }

    /// Locks and reads, in the caller's transaction, the allocations of `told` that
    /// still have work and then up to `due` of those whose time has come, skipping rows
    /// another transaction holds.
    async fn claim(
        &self,
        tx: &mut Connection,
        told: &[String],
        due: usize,
        window: DueWindow,
    ) -> Result<Vec<Record>, AllocationError> {
        let store = self.store();
        let lock = store.dialect().skip_locked();
        let mut claimed: Vec<Record> = Vec::new();
        if !told.is_empty() {
            let batch = gpuaas_store::Padded::new(told, MAX_GROUP);
            let sql = format!(
                "SELECT {COLUMNS} FROM allocations WHERE id IN ({}) AND workflow_due_at IS NOT NULL{lock}",
                batch.placeholders(1)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, _) in batch.rows() {
                query = query.bind(id.as_str());
            }
            for row in query.fetch_all(&mut *tx).await? {
                claimed.push(record_from_row(&row)?);
            }
        }
        let room = due.saturating_sub(claimed.len());
        if room > 0 {
            // The limit is in the text for the reason given at `due_count`, rounded up
            // to a batch size class (ADR 022): a handful of texts, and a group that
            // takes a few more due rows than it had room for.
            let room = gpuaas_store::batch_rows(room, MAX_GROUP);
            let sql = format!(
                "SELECT {COLUMNS} FROM allocations WHERE workflow_due_at > $1 AND workflow_due_at <= $2 \
                 ORDER BY workflow_due_at LIMIT {room}{lock}"
            );
            let rows =
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(window.after).bind(window.until).fetch_all(&mut *tx).await?;
            for row in &rows {
                let record = record_from_row(row)?;
                // A told row that was also due is already held by this transaction.
                if !claimed.iter().any(|held| held.view.id == record.view.id) {
                    claimed.push(record);
                }
            }
        }
        Ok(claimed)
    }

    /// One step for each claimed allocation, in the caller's transaction, in node order
    /// (two groups that lock the same nodes take them in the same order). Rows whose
    /// node task is still in flight are only put back for a later look, all in one
    /// statement. Returns the nodes to wake once the transaction commits.
    async fn step_claimed(
        &self,
        tx: &mut Connection,
        claimed: Vec<Record>,
        timing: &Timing,
        journal: &Journal,
    ) -> Result<Vec<String>, AllocationError> {
        // A task only moves forward: a result that lands after this read is told again.
        let task_ids: Vec<&str> = claimed.iter().filter_map(|record| current_task(record)).collect();
        let mut states = if task_ids.is_empty() { HashMap::new() } else { node_tasks::states(tx, &task_ids).await? };
        let checked_at = Timestamp::now();
        let (waiting, mut work): (Vec<Record>, Vec<Record>) = claimed.into_iter().partition(|record| {
            let task = current_task(record).and_then(|id| states.get(id));
            still_waiting(record, task, checked_at)
        });
        if !waiting.is_empty() {
            let ids: Vec<&str> = waiting.iter().map(|record| record.view.id.as_str()).collect();
            look_again_later(tx, &ids, checked_at.saturating_add(timing.poll)).await?;
        }
        work.sort_by(|a, b| a.view.node_id.cmp(&b.view.node_id));
        let mut wake = Vec::new();
        for record in work {
            let task = current_task(&record).and_then(|id| states.remove(id));
            wake.extend(self.step(tx, record, task, timing, journal).await?);
        }
        Ok(wake)
    }

    /// Waits until woken (a create or release in this process) or `idle` passes.
    pub async fn wait_for_work(&self, idle: Duration) {
        let _ = tokio::time::timeout(idle, self.wake_signal().notified()).await;
    }

    /// The poll interval runners use between passes when idle.
    pub async fn poll_interval(&self) -> Duration {
        self.policy()
            .get_duration_ms(keys::ALLOCATIONS_WORKFLOW_POLL_INTERVAL_MS)
            .await
            .unwrap_or(Duration::from_millis(250))
    }

    pub(crate) fn wake_nodes(&self, nodes: impl IntoIterator<Item = String>) {
        for node in nodes {
            self.nodes().wake_node(&node);
        }
    }

    /// One step for one claimed allocation, in the caller's transaction; returns the
    /// node to wake once it commits. `task` is the state of the phase's node task as
    /// read after the claim, whose row lock the transaction holds.
    async fn step(
        &self,
        tx: &mut Connection,
        mut record: Record,
        task: Option<TaskState>,
        timing: &Timing,
        journal: &Journal,
    ) -> Result<Option<String>, AllocationError> {
        let actor = Actor { correlation_id: record.view.correlation_id.clone(), ..Actor::system() };
        let now = Timestamp::now();
        let step = Step { journal, timing, now, actor: &actor };
        let wake_node = match record.view.status {
            AllocationStatus::Requested => self.start_provisioning(tx, &mut record, &step).await?,
            AllocationStatus::Provisioning => self.check_provisioning(tx, &mut record, task, &step).await?,
            AllocationStatus::Releasing => self.check_releasing(tx, &mut record, task, &step).await?,
            // Nothing to drive: waiting for a person, or finished.
            AllocationStatus::Active
            | AllocationStatus::ReleaseFailed
            | AllocationStatus::Released
            | AllocationStatus::Failed => {
                apply_journaled(tx, &mut record, None, schedule(None, false), step.journal).await?;
                None
            }
        };
        Ok(wake_node)
    }

    /// `requested → provisioning` with the task's id, then the task itself: the row is
    /// written first (fenced on the claim, taking its lock) and the node's lock after,
    /// the order every other writer takes them in.
    async fn start_provisioning(
        &self,
        tx: &mut Connection,
        record: &mut Record,
        step: &Step<'_>,
    ) -> Result<Option<String>, AllocationError> {
        let change = Change { to: AllocationStatus::Provisioning, actor: step.actor, reason: None, subject: None };
        let task_id = new_id().to_string();
        let deadline = Some(step.now.saturating_add(step.timing.provision_timeout));
        let sets = set_task(TaskColumn::Provision, &task_id, 1, deadline, step.now.saturating_add(step.timing.poll));
        apply_journaled(tx, record, Some(&change), sets, step.journal).await?;
        match self.queue_provision_task(tx, record, step.actor, &task_id, Some(step.journal)).await {
            Ok(()) => Ok(Some(record.view.node_id.clone())),
            // The node went away between placement and now: nothing was provisioned.
            Err(AllocationError::Inventory(error)) => {
                let reason = format!("the node cannot take tasks: {error}");
                // The task was never queued: the row must not name it.
                let sets = vec![(TaskColumn::Provision.name(), Value::Text(None))];
                self.fail_provisioning(tx, record, step, &reason, false, sets).await?;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    async fn queue_provision_task(
        &self,
        tx: &mut Connection,
        record: &Record,
        actor: &Actor,
        task_id: &str,
        journal: Option<&Journal>,
    ) -> Result<(), AllocationError> {
        let task = Task::ProvisionUser(ProvisionUserParams {
            allocation_id: record.view.id.clone(),
            username: record.ssh_username.clone(),
            authorized_keys: record.authorized_keys.clone(),
            gpu_indices: record.view.gpu_indices.iter().filter_map(|index| u32::try_from(*index).ok()).collect(),
            cpu_millicores: u32::try_from(record.cpu_millicores).unwrap_or(u32::MAX),
            memory_bytes: u64::try_from(record.memory_bytes).unwrap_or(0),
        });
        self.queue_task(tx, record, actor, &task, task_id, journal).await
    }

    /// Queues `task` for the record's node under `task_id`: with the transaction's
    /// other tasks when `journal` gathers them, else at once.
    async fn queue_task(
        &self,
        tx: &mut Connection,
        record: &Record,
        actor: &Actor,
        task: &Task,
        task_id: &str,
        journal: Option<&Journal>,
    ) -> Result<(), AllocationError> {
        match journal.and_then(|journal| journal.tasks.as_ref()) {
            Some(tasks) => Ok(tasks.push(actor, &record.view.node_id, task, task_id)?),
            None => Ok(self.nodes().enqueue_task_with_id_in(tx, actor, &record.view.node_id, task, task_id).await?),
        }
    }

    async fn check_provisioning(
        &self,
        tx: &mut Connection,
        record: &mut Record,
        task: Option<TaskState>,
        step: &Step<'_>,
    ) -> Result<Option<String>, AllocationError> {
        let (timing, now, actor) = (step.timing, step.now, step.actor);
        let Some(task_id) = record.provision_task_id.clone() else {
            // A retry whose backoff has passed: queue the next attempt, or give up.
            if !can_retry(record, timing, now) {
                let reason = format!("provisioning failed after {} attempts", record.workflow_attempts);
                self.fail_provisioning(tx, record, step, &reason, true, Vec::new()).await?;
                return Ok(Some(record.view.node_id.clone()));
            }
            let task_id = new_id().to_string();
            let attempts = record.workflow_attempts + 1;
            let due = now.saturating_add(timing.poll);
            let sets = set_task(TaskColumn::Provision, &task_id, attempts, record.workflow_deadline, due);
            apply_journaled(tx, record, None, sets, step.journal).await?;
            self.queue_provision_task(tx, record, actor, &task_id, Some(step.journal)).await?;
            return Ok(Some(record.view.node_id.clone()));
        };
        let task = task.ok_or_else(|| AllocationError::Corrupt(format!("task {task_id} is missing")))?;
        match task.status {
            TaskStatus::Succeeded => {
                let change = Change {
                    to: AllocationStatus::Active,
                    actor,
                    reason: None,
                    subject: Some(events::PROVISIONING_ACTIVE),
                };
                apply_journaled(tx, record, Some(&change), schedule(None, false), step.journal).await?;
                step.journal.open_usage(&record.view, now);
                Ok(None)
            }
            TaskStatus::Failed | TaskStatus::Expired => {
                let error = task.error.unwrap_or_else(|| "no reason given".into());
                if can_retry(record, timing, now) {
                    retry_later(tx, record, TaskColumn::Provision, step, &error).await?;
                    return Ok(None);
                }
                let reason = format!("provisioning failed after {} attempts: {error}", record.workflow_attempts);
                self.fail_provisioning(tx, record, step, &reason, true, Vec::new()).await?;
                Ok(Some(record.view.node_id.clone()))
            }
            TaskStatus::Queued | TaskStatus::Leased => {
                if !phase_has_time(record, now) {
                    let reason = format!("provisioning timed out after {} s", timing.provision_timeout.as_secs());
                    self.fail_provisioning(tx, record, step, &reason, true, Vec::new()).await?;
                    return Ok(Some(record.view.node_id.clone()));
                }
                let sets = schedule(Some(now.saturating_add(timing.poll)), false);
                apply_journaled(tx, record, None, sets, step.journal).await?;
                Ok(None)
            }
        }
    }

    /// `provisioning → failed` (with `extra` columns set in the same UPDATE): frees
    /// the GPUs (nothing was billed) and, when a task may have reached the node, queues
    /// a best-effort removal of the user.
    async fn fail_provisioning(
        &self,
        tx: &mut Connection,
        record: &mut Record,
        step: &Step<'_>,
        reason: &str,
        cleanup: bool,
        extra: Sets,
    ) -> Result<(), AllocationError> {
        let change = Change {
            to: AllocationStatus::Failed,
            actor: step.actor,
            reason: Some(reason),
            subject: Some(events::PROVISIONING_FAILED),
        };
        let mut sets = schedule(None, false);
        sets.extend(extra);
        apply_journaled(tx, record, Some(&change), sets, step.journal).await?;
        slots::release_into(&record.held_slots(), &step.journal.freed);
        if cleanup {
            queue_cleanup(self, tx, record, step.actor, Some(step.journal)).await?;
        }
        tracing::warn!(allocation_id = %record.view.id, reason, "allocation failed");
        Ok(())
    }

    async fn check_releasing(
        &self,
        tx: &mut Connection,
        record: &mut Record,
        task: Option<TaskState>,
        step: &Step<'_>,
    ) -> Result<Option<String>, AllocationError> {
        let (timing, now, actor) = (step.timing, step.now, step.actor);
        let Some(task_id) = record.release_task_id.clone() else {
            // A new release phase starts its clock; a retry whose backoff has passed
            // keeps it, and gives up once attempts or time are spent.
            let (attempts, deadline) = match record.workflow_deadline {
                None => (1, Some(now.saturating_add(timing.release_timeout))),
                Some(_) if !can_retry(record, timing, now) => {
                    let reason = format!("release failed after {} attempts", record.workflow_attempts);
                    self.fail_release(tx, record, step, &reason).await?;
                    return Ok(None);
                }
                Some(deadline) => (record.workflow_attempts + 1, Some(deadline)),
            };
            return self.queue_release_attempt(tx, record, step, attempts, deadline).await;
        };
        let task = task.ok_or_else(|| AllocationError::Corrupt(format!("task {task_id} is missing")))?;
        match task.status {
            TaskStatus::Succeeded => {
                let change = Change {
                    to: AllocationStatus::Released,
                    actor,
                    reason: None,
                    subject: Some(events::RELEASING_COMPLETED),
                };
                apply_journaled(tx, record, Some(&change), schedule(None, false), step.journal).await?;
                self.stop_metering_in(tx, step, &record.view.id).await?;
                slots::release_into(&record.held_slots(), &step.journal.freed);
                Ok(None)
            }
            TaskStatus::Failed | TaskStatus::Expired => {
                let error = task.error.unwrap_or_else(|| "no reason given".into());
                if can_retry(record, timing, now) {
                    retry_later(tx, record, TaskColumn::Release, step, &error).await?;
                    return Ok(None);
                }
                let reason = format!("release failed after {} attempts: {error}", record.workflow_attempts);
                self.fail_release(tx, record, step, &reason).await?;
                Ok(None)
            }
            TaskStatus::Queued | TaskStatus::Leased => {
                if !phase_has_time(record, now) {
                    let reason = format!("release timed out after {} s", timing.release_timeout.as_secs());
                    self.fail_release(tx, record, step, &reason).await?;
                    return Ok(None);
                }
                let sets = schedule(Some(now.saturating_add(timing.poll)), false);
                apply_journaled(tx, record, None, sets, step.journal).await?;
                Ok(None)
            }
        }
    }

    /// `releasing → release_failed`: metering stops (the tenant is not billed for our
    /// failure) but the GPUs stay reserved until an operator resolves it, since the
    /// user may still be on the node.
    async fn fail_release(
        &self,
        tx: &mut Connection,
        record: &mut Record,
        step: &Step<'_>,
        reason: &str,
    ) -> Result<(), AllocationError> {
        let change = Change {
            to: AllocationStatus::ReleaseFailed,
            actor: step.actor,
            reason: Some(reason),
            subject: Some(events::RELEASE_FAILED),
        };
        apply_journaled(tx, record, Some(&change), schedule(None, false), step.journal).await?;
        self.stop_metering_in(tx, step, &record.view.id).await?;
        tracing::warn!(allocation_id = %record.view.id, reason, "allocation release failed");
        Ok(())
    }

    /// Closes the allocation's usage at the step's time: with the journal's other
    /// closes when it batches them, else at once.
    async fn stop_metering_in(
        &self,
        tx: &mut Connection,
        step: &Step<'_>,
        allocation_id: &str,
    ) -> Result<(), AllocationError> {
        if step.journal.close_usage(allocation_id, step.now, &step.actor.correlation_id) {
            return Ok(());
        }
        self.stop_metering(tx, allocation_id, step.now, &step.actor.correlation_id).await
    }

    /// Records a new release attempt's task on the row and queues the task (the row
    /// first, then the node's lock, as every writer takes them); returns the node to
    /// wake once the transaction commits.
    async fn queue_release_attempt(
        &self,
        tx: &mut Connection,
        record: &mut Record,
        step: &Step<'_>,
        attempts: i64,
        deadline: Option<Timestamp>,
    ) -> Result<Option<String>, AllocationError> {
        let task_id = new_id().to_string();
        let due = step.now.saturating_add(step.timing.poll);
        let sets = set_task(TaskColumn::Release, &task_id, attempts, deadline, due);
        apply_journaled(tx, record, None, sets, step.journal).await?;
        self.queue_revoke_task(tx, record, step.actor, &task_id, Some(step.journal)).await?;
        Ok(Some(record.view.node_id.clone()))
    }

    /// Moves each of `changes` to `releasing` and starts its release phase, in the
    /// caller's transaction: the first revoke task is queued in the same commit, as the
    /// runner's first step of the phase would queue it, so the node gets it without a
    /// runner's pass in between. Rows (with their transitions), events and tasks are
    /// written together at the end. Returns the nodes to wake once the transaction commits.
    pub(crate) async fn begin_releases(
        &self,
        tx: &mut Connection,
        changes: Vec<(&mut Record, Change<'_>)>,
        timing: &Timing,
        journal: &Journal,
    ) -> Result<Vec<String>, AllocationError> {
        let now = Timestamp::now();
        let deadline = Some(now.saturating_add(timing.release_timeout));
        let mut wake = Vec::with_capacity(changes.len());
        for (record, change) in changes {
            apply_journaled(tx, record, Some(&change), schedule(None, true), journal).await?;
            let step = Step { journal, timing, now, actor: change.actor };
            wake.extend(self.queue_release_attempt(tx, record, &step, 1, deadline).await?);
        }
        self.write_journal(tx, journal).await?;
        Ok(wake)
    }

    /// Writes what `journal` kept, in the caller's transaction: the node tasks it
    /// gathered (one statement), then everything else (see [`Journal::flush`]).
    async fn write_journal(&self, tx: &mut Connection, journal: &Journal) -> Result<(), AllocationError> {
        if let Some(tasks) = &journal.tasks {
            self.nodes().enqueue_queued_in(tx, tasks).await?;
        }
        journal.flush(tx).await
    }

    async fn queue_revoke_task(
        &self,
        tx: &mut Connection,
        record: &Record,
        actor: &Actor,
        task_id: &str,
        journal: Option<&Journal>,
    ) -> Result<(), AllocationError> {
        let task = Task::RevokeUser(RevokeUserParams {
            allocation_id: record.view.id.clone(),
            username: record.ssh_username.clone(),
            // The allocation is over: its home directory goes with the user.
            remove_home: true,
        });
        self.queue_task(tx, record, actor, &task, task_id, journal).await
    }

    /// Makes an allocation due now, e.g. on a lifecycle event; harmless when it has
    /// nothing to do (the step clears it).
    pub async fn kick(&self, allocation_id: &str) -> Result<(), AllocationError> {
        sqlx::query(
            "UPDATE allocations SET workflow_due_at = COALESCE(workflow_due_at, $1) \
             WHERE id = $2 AND status IN ('requested', 'provisioning', 'releasing')",
        )
        .bind(Timestamp::now().as_micros())
        .bind(allocation_id)
        .execute(self.store().pool())
        .await?;
        self.wake_runner();
        Ok(())
    }
}

/// Queues a best-effort `allocation.revoke_user` after a failed or cancelled
/// provisioning, so a user the node did create does not linger. Its outcome is not
/// awaited: reconciliation reports a user that survives it. Returns the node to wake.
pub(crate) async fn queue_cleanup(
    allocations: &Allocations,
    tx: &mut Connection,
    record: &Record,
    actor: &Actor,
    journal: Option<&Journal>,
) -> Result<Option<String>, AllocationError> {
    match allocations.queue_revoke_task(tx, record, actor, &new_id().to_string(), journal).await {
        Ok(()) => Ok(Some(record.view.node_id.clone())),
        Err(AllocationError::Inventory(error)) => {
            tracing::warn!(allocation_id = %record.view.id, %error, "cleanup task not queued");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// A group that failed: the rows it had claimed (none when the database failed before
/// it could claim any) and why.
struct StepFailure {
    claimed: Vec<String>,
    error: AllocationError,
}

/// What one step knows besides the row: the pass's timing, the time it started and
/// who it acts as.
struct Step<'a> {
    /// Where the step's row changes and events wait for the transaction's flush.
    journal: &'a Journal,
    timing: &'a Timing,
    now: Timestamp,
    actor: &'a Actor,
}

/// The node task the row's current phase waits on, if any.
fn current_task(record: &Record) -> Option<&str> {
    match record.view.status {
        AllocationStatus::Provisioning => record.provision_task_id.as_deref(),
        AllocationStatus::Releasing => record.release_task_id.as_deref(),
        _ => None,
    }
}

/// Whether the row's step would only be "look again later": its phase's task is still
/// queued or leased and the phase has time left (the rule `check_provisioning` and
/// `check_releasing` apply to a task in flight).
fn still_waiting(record: &Record, task: Option<&TaskState>, now: Timestamp) -> bool {
    matches!(record.view.status, AllocationStatus::Provisioning | AllocationStatus::Releasing)
        && current_task(record).is_some()
        && task.is_some_and(|task| matches!(task.status, TaskStatus::Queued | TaskStatus::Leased))
        && phase_has_time(record, now)
}

/// Whether the current phase is still before its deadline; a phase without one has
/// none left.
fn phase_has_time(record: &Record, now: Timestamp) -> bool {
    record.workflow_deadline.is_some_and(|deadline| now < deadline)
}

/// Hands claimed rows whose task is still in flight back, due again at `due_at`, in
/// the claiming transaction.
async fn look_again_later(tx: &mut Connection, ids: &[&str], due_at: Timestamp) -> Result<(), AllocationError> {
    let batch = gpuaas_store::Padded::new(ids, MAX_GROUP);
    let sql = format!("UPDATE allocations SET workflow_due_at = $1 WHERE id IN ({})", batch.placeholders(2));
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(due_at.as_micros());
    for (id, _) in batch.rows() {
        query = query.bind(*id);
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

fn backoff(timing: &Timing, attempts: i64) -> Duration {
    let factor = 1u32 << u32::try_from(attempts.clamp(1, 16) - 1).unwrap_or(0);
    timing.retry_base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Which task column of the row a phase uses.
#[derive(Debug, Clone, Copy)]
enum TaskColumn {
    Provision,
    Release,
}

impl TaskColumn {
    const fn name(self) -> &'static str {
        match self {
            TaskColumn::Provision => "provision_task_id",
            TaskColumn::Release => "release_task_id",
        }
    }
}

/// Whether the phase may queue another task: attempts and time are left.
fn can_retry(record: &Record, timing: &Timing, now: Timestamp) -> bool {
    record.workflow_attempts < timing.max_attempts && phase_has_time(record, now)
}

/// A task of the phase failed and another attempt is allowed: forget the task and come
/// back after the backoff, when the next step queues the new one.
async fn retry_later(
    tx: &mut Connection,
    record: &mut Record,
    column: TaskColumn,
    step: &Step<'_>,
    error: &str,
) -> Result<(), AllocationError> {
    let due = step.now.saturating_add(backoff(step.timing, record.workflow_attempts));
    let mut sets = schedule(Some(due), false);
    sets.push((column.name(), Value::Text(None)));
    apply_journaled(tx, record, None, sets, step.journal).await?;
    tracing::info!(allocation_id = %record.view.id, attempts = record.workflow_attempts, %error, ?column, "node task failed; retrying after backoff");
    Ok(())
}

/// The columns that record a queued task of the phase and when to look at it next.
fn set_task(column: TaskColumn, task_id: &str, attempts: i64, deadline: Option<Timestamp>, due_at: Timestamp) -> Sets {
    vec![
        (column.name(), Value::Text(Some(task_id.to_owned()))),
        ("workflow_attempts", Value::Int(Some(attempts))),
        ("workflow_deadline", Value::Int(deadline.map(Timestamp::as_micros))),
        ("workflow_due_at", Value::Int(Some(due_at.as_micros()))),
    ]
}

/// Durable consumer names and filters of the allocation workers.
pub const PROVISIONING_CONSUMER: (&str, &str) = ("allocations_provisioning_worker", "gpuaas.provisioning.>");
pub const DEPLETION_CONSUMER: (&str, &str) =
    ("allocations_balance_depleted", gpuaas_billing::accrual::BALANCE_DEPLETED);

impl Allocations {
    /// Handles one delivered event. Every effect is idempotent (a kick, a release of
    /// what is still live), so a redelivery changes nothing.
    pub async fn handle_event(&self, event: &gpuaas_events::EventEnvelope) -> Result<(), AllocationError> {
        let field = |name: &str| event.payload.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
        match event.subject.as_str() {
            events::PROVISIONING_REQUESTED | events::RELEASING_REQUESTED | events::FORCE_RELEASE_REQUESTED => {
                if let Some(id) = field("allocation_id") {
                    self.kick(&id).await?;
                }
            }
            gpuaas_billing::accrual::BALANCE_DEPLETED => {
                if let Some(tenant) = field("tenant_id") {
                    let released = self.release_depleted_tenant(&tenant, &event.correlation_id).await?;
                    if released > 0 {
                        tracing::warn!(tenant_id = %tenant, released, "balance depleted: allocations force-released");
                    }
                }
            }
            // Outcomes (active, failed, completed) need nothing from the workflow.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    fn micros(duration: Duration) -> i64 {
        i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
    }

    /// A process whose first (full) look, at `at`, found `found` of 64.
    fn after_first_look(at: i64, found: usize) -> DueScan {
        let scan = DueScan::default();
        let first = scan.window(at);
        scan.looked(first, found, 64);
        scan
    }

    #[test]
    fn a_new_process_looks_all_the_way_back_first() {
        let scan = DueScan::default();
        assert_eq!(scan.window(100 * SECOND).after, i64::MIN);
    }

    #[test]
    fn a_look_that_took_all_it_found_moves_the_floor_up_to_its_time_less_the_lookback() {
        let scan = after_first_look(100 * SECOND, 3);
        let next = scan.window(100 * SECOND + 10_000);
        assert_eq!(next.after, 100 * SECOND - micros(DUE_LOOKBACK));
        assert_eq!(next.until, 100 * SECOND + 10_000);
    }

    #[test]
    fn a_look_that_found_all_it_could_take_leaves_the_floor_so_a_backlog_is_taken_oldest_first() {
        let scan = after_first_look(100 * SECOND, 1);
        let busy = scan.window(100 * SECOND + 1_000);
        scan.looked(busy, 64, 64);
        assert_eq!(scan.window(100 * SECOND + 2_000).after, busy.after);
    }

    #[test]
    fn one_pass_a_second_looks_all_the_way_back() {
        let scan = after_first_look(100 * SECOND, 0);
        let every = micros(FULL_LOOK_EVERY);
        assert_ne!(scan.window(100 * SECOND + every - 1).after, i64::MIN);
        // Two passes starting together: one of them looks all the way.
        let (a, b) = (scan.window(100 * SECOND + every), scan.window(100 * SECOND + every));
        assert_eq!([a.after, b.after].iter().filter(|after| **after == i64::MIN).count(), 1);
    }

    #[test]
    fn the_floor_never_moves_back() {
        let scan = after_first_look(200 * SECOND, 0);
        let early = DueWindow { after: i64::MIN, until: 150 * SECOND };
        scan.looked(early, 0, 64);
        assert_eq!(scan.window(200 * SECOND + 1).after, 200 * SECOND - micros(DUE_LOOKBACK));
    }
}

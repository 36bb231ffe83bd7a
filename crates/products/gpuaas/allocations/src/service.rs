//! Creating, reading and releasing allocations. Every status change goes through
//! [`apply`]: it checks the state machine, stamps the time, records who and
//! why, and queues the event, all in the caller's transaction.

use gpuaas_billing::UsageRecord;
use gpuaas_events::EventEnvelope;
use gpuaas_inventory::slots;
use gpuaas_kernel::{Cursor, Timestamp};
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Dialect, Row};
use serde::Serialize;
use utoipa::ToSchema;

use crate::events::{self, LifecycleEvent};
use crate::{Actor, AllocationError, AllocationStatus, Allocations};

/// Most GPUs one allocation may ask for (one node's worth on the largest SKUs).
pub const MAX_GPU_COUNT: i64 = 16;
/// Most SSH keys installed for one allocation.
pub const MAX_SSH_KEYS: usize = 32;
/// Longest allocation name, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// Longest reason an operator may give, in characters.
pub const MAX_REASON_LEN: usize = 500;
/// The SSH port allocation users reach their node on.
pub const SSH_PORT: u16 = 22;

/// What a user asks for. `sku` is a SKU id or name.
#[derive(Debug, Clone)]
pub struct NewAllocation<'a> {
    pub tenant_id: &'a str,
    pub project_id: &'a str,
    pub user_id: &'a str,
    pub sku: &'a str,
    pub gpu_count: i64,
    pub ssh_key_ids: &'a [String],
    pub name: Option<&'a str>,
}

/// How to reach an active allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SshAccess {
    pub host: String,
    pub port: u16,
    pub username: String,
    /// Ready to paste: `ssh -p 22 user@host`.
    pub command: String,
}

/// One status change, with who made it and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Transition {
    pub from: Option<AllocationStatus>,
    pub to: AllocationStatus,
    pub actor: String,
    pub reason: Option<String>,
    pub correlation_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

/// An allocation as its owner and operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Allocation {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub user_id: String,
    pub name: Option<String>,
    pub sku_id: String,
    pub gpu_count: i64,
    pub status: AllocationStatus,
    pub node_id: String,
    pub gpu_indices: Vec<i64>,
    /// Present once the allocation is active (and while it is being released).
    pub ssh: Option<SshAccess>,
    pub price_per_gpu_hour_minor: i64,
    /// Price of the whole allocation for one hour.
    pub hourly_cost_minor: i64,
    pub currency: String,
    /// What its run has cost so far (debited plus accrued since the last window).
    pub accrued_cost_minor: i64,
    pub failure_reason: Option<String>,
    pub correlation_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub provisioning_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub active_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub releasing_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub released_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failed_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub release_failed_at: Option<Timestamp>,
    /// Every transition, oldest first (single-allocation reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transitions: Option<Vec<Transition>>,
}

/// The stored row with the workflow's own columns, which the API never shows.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) view: Allocation,
    pub(crate) ssh_username: String,
    pub(crate) authorized_keys: Vec<String>,
    pub(crate) cpu_millicores: i64,
    pub(crate) memory_bytes: i64,
    pub(crate) workflow_attempts: i64,
    pub(crate) workflow_deadline: Option<Timestamp>,
    pub(crate) provision_task_id: Option<String>,
    pub(crate) release_task_id: Option<String>,
}

impl Record {
    /// The GPU slots this allocation holds, as its reservation named them.
    pub(crate) fn held_slots(&self) -> slots::Held {
        slots::Held {
            allocation_id: self.view.id.clone(),
            node_id: self.view.node_id.clone(),
            gpu_indices: self.view.gpu_indices.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationFilter {
    pub status: Option<AllocationStatus>,
    /// Only this tenant's (users); `None` for operators.
    pub tenant_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AllocationPage {
    pub items: Vec<Allocation>,
    pub next_cursor: Option<String>,
}

pub(crate) const COLUMNS: &str = "id, tenant_id, project_id, user_id, name, sku_id, gpu_count, status, node_id, \
     gpu_indices, ssh_host, ssh_username, authorized_keys, cpu_millicores, memory_bytes, price_per_gpu_hour_minor, \
     currency, failure_reason, correlation_id, workflow_attempts, workflow_deadline, provision_task_id, \
     release_task_id, created_at, updated_at, provisioning_at, active_at, releasing_at, released_at, failed_at, \
     release_failed_at, transitions";

fn time(row: &Row, column: &str) -> Result<Option<Timestamp>, AllocationError> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(Timestamp::from_micros))
}

fn json_list<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> Result<Vec<T>, AllocationError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|error| AllocationError::Corrupt(format!("{column}: {error}")))
}

/// A transition as its allocation's `transitions` column keeps it: a JSON array,
/// oldest first, written with the status change it records (ADR 017).
#[derive(Serialize, serde::Deserialize)]
struct StoredTransition {
    from: Option<String>,
    to: String,
    actor: String,
    reason: Option<String>,
    correlation_id: String,
    at: i64,
}

/// `transitions` as the `transitions` column stores them.
pub(crate) fn transitions_json(transitions: &[Transition]) -> Result<String, AllocationError> {
    let stored: Vec<StoredTransition> = transitions
        .iter()
        .map(|transition| StoredTransition {
            from: transition.from.map(|status| status.as_str().to_owned()),
            to: transition.to.as_str().to_owned(),
            actor: transition.actor.clone(),
            reason: transition.reason.clone(),
            correlation_id: transition.correlation_id.clone(),
            at: transition.at.as_micros(),
        })
        .collect();
    to_json(&stored)
}

fn transitions_from_row(row: &Row) -> Result<Vec<Transition>, AllocationError> {
    let parse = |text: &str| {
        AllocationStatus::parse(text).ok_or_else(|| AllocationError::Corrupt(format!("transition status {text}")))
    };
    json_list::<StoredTransition>(row, "transitions")?
        .into_iter()
        .map(|stored| {
            Ok(Transition {
                from: stored.from.as_deref().map(parse).transpose()?,
                to: parse(&stored.to)?,
                actor: stored.actor,
                reason: stored.reason,
                correlation_id: stored.correlation_id,
                at: Timestamp::from_micros(stored.at),
            })
        })
        .collect()
}

/// The first transition of an allocation created by `actor` at `at`.
pub(crate) fn created_transition(actor: &Actor, at: Timestamp) -> Transition {
    Transition {
        from: None,
        to: AllocationStatus::Requested,
        actor: actor.id.clone(),
        reason: None,
        correlation_id: actor.correlation_id.clone(),
        at,
    }
}

pub(crate) fn record_from_row(row: &Row) -> Result<Record, AllocationError> {
    let status: String = row.try_get("status")?;
    let status =
        AllocationStatus::parse(&status).ok_or_else(|| AllocationError::Corrupt(format!("status {status}")))?;
    let ssh_host: String = row.try_get("ssh_host")?;
    let ssh_username: String = row.try_get("ssh_username")?;
    let gpu_count: i64 = row.try_get("gpu_count")?;
    let price: i64 = row.try_get("price_per_gpu_hour_minor")?;
    let ssh =
        matches!(status, AllocationStatus::Active | AllocationStatus::Releasing | AllocationStatus::ReleaseFailed)
            .then(|| SshAccess {
                command: format!("ssh -p {SSH_PORT} {ssh_username}@{ssh_host}"),
                host: ssh_host.clone(),
                port: SSH_PORT,
                username: ssh_username.clone(),
            });
    let view = Allocation {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        project_id: row.try_get("project_id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        sku_id: row.try_get("sku_id")?,
        gpu_count,
        status,
        node_id: row.try_get("node_id")?,
        gpu_indices: json_list(row, "gpu_indices")?,
        ssh,
        price_per_gpu_hour_minor: price,
        hourly_cost_minor: price.saturating_mul(gpu_count),
        currency: row.try_get("currency")?,
        accrued_cost_minor: 0,
        failure_reason: row.try_get("failure_reason")?,
        correlation_id: row.try_get("correlation_id")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
        provisioning_at: time(row, "provisioning_at")?,
        active_at: time(row, "active_at")?,
        releasing_at: time(row, "releasing_at")?,
        released_at: time(row, "released_at")?,
        failed_at: time(row, "failed_at")?,
        release_failed_at: time(row, "release_failed_at")?,
        transitions: Some(transitions_from_row(row)?),
    };
    Ok(Record {
        view,
        ssh_username,
        authorized_keys: json_list(row, "authorized_keys")?,
        cpu_millicores: row.try_get("cpu_millicores")?,
        memory_bytes: row.try_get("memory_bytes")?,
        workflow_attempts: row.try_get("workflow_attempts")?,
        workflow_deadline: time(row, "workflow_deadline")?,
        provision_task_id: row.try_get("provision_task_id")?,
        release_task_id: row.try_get("release_task_id")?,
    })
}

/// Reads and locks one allocation in the caller's transaction (PostgreSQL row lock;
/// SQLite's write transaction already excludes other writers).
pub(crate) async fn lock(
    connection: &mut Connection,
    dialect: Dialect,
    allocation_id: &str,
) -> Result<Record, AllocationError> {
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let sql = format!("SELECT {COLUMNS} FROM allocations WHERE id = $1{lock}");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(allocation_id).fetch_optional(&mut *connection).await?;
    row.as_ref().map(record_from_row).transpose()?.ok_or(AllocationError::NotFound("allocation"))
}

/// A status change to make.
pub(crate) struct Change<'a> {
    pub(crate) to: AllocationStatus,
    pub(crate) actor: &'a Actor,
    pub(crate) reason: Option<&'a str>,
    /// The event to queue, if this change announces one.
    pub(crate) subject: Option<&'static str>,
}

/// A value for one of the workflow columns [`apply`] sets.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

/// Workflow columns to set in the same UPDATE as a status change.
pub(crate) type Sets = Vec<(&'static str, Value)>;

/// The columns that mark the workflow due at `due_at` (or idle); a new phase also
/// resets its attempt count, deadline and release task.
pub(crate) fn schedule(due_at: Option<Timestamp>, new_phase: bool) -> Sets {
    let mut sets = vec![("workflow_due_at", Value::Int(due_at.map(Timestamp::as_micros)))];
    if new_phase {
        sets.extend([
            ("workflow_attempts", Value::Int(Some(0))),
            ("workflow_deadline", Value::Int(None)),
            ("release_task_id", Value::Text(None)),
        ]);
    }
    sets
}

/// Moves `record` to `change.to` (when there is a change) and sets the workflow
/// columns `sets`, in one UPDATE in the caller's transaction. Refuses an illegal
/// transition and refuses (as a conflict) a row whose status moved since it was read
/// (callers hold its lock, so this is a guard, not a race). Stamps the status's time
/// column, records the transition and queues the event.
pub(crate) async fn apply(
    connection: &mut Connection,
    record: &mut Record,
    change: Option<&Change<'_>>,
    sets: Sets,
) -> Result<(), AllocationError> {
    let journal = Journal::default();
    apply_journaled(connection, record, change, sets, &journal).await?;
    journal.flush(connection).await
}

/// [`apply`], with the transition and its event kept in `journal`, which the caller
/// flushes in the same transaction: a runner moving many rows writes them all in two
/// statements.
pub(crate) async fn apply_journaled(
    connection: &mut Connection,
    record: &mut Record,
    change: Option<&Change<'_>>,
    sets: Sets,
    journal: &Journal,
) -> Result<(), AllocationError> {
    let from = record.view.status;
    let to = match change {
        Some(change) => from.transition(change.to)?,
        None => from,
    };
    let now = Timestamp::now();
    if journal.batched.is_some() {
        let columns = columns_set(record, change.map(|change| (to, change)), sets, now)?;
        if !columns.is_empty() {
            journal.update(&record.view.id, from.as_str(), columns);
        }
        return match change {
            Some(change) => journal_change(record, to, change, now, journal),
            None => Ok(()),
        };
    }
    // Placeholders: $1 id, $2 the status read, then the columns set.
    let (assignments, values) = assignments(record, change.map(|change| (to, change)), sets, now, 3)?;
    if assignments.is_empty() {
        return Ok(());
    }
    let sql = format!("UPDATE allocations SET {} WHERE id = $1 AND status = $2", assignments.join(", "));
    let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&record.view.id).bind(from.as_str());
    if bind_values(query, values).execute(&mut *connection).await?.rows_affected() != 1 {
        return Err(AllocationError::Conflict("the allocation changed meanwhile; try again".into()));
    }
    match change {
        Some(change) => journal_change(record, to, change, now, journal),
        None => Ok(()),
    }
}

/// One status change per record, all to the same status (and failure reason, when
/// it records one), with the columns `sets`, in one UPDATE: the records are locked by
/// the caller's transaction and may all make their change. Each transition and event
/// goes to `journal`.
pub(crate) async fn apply_many(
    connection: &mut Connection,
    changes: &mut [(&mut Record, Change<'_>)],
    sets: Sets,
    journal: &Journal,
) -> Result<(), AllocationError> {
    let Some((_, first)) = changes.first() else { return Ok(()) };
    let (to, reason) = (first.to, failure_reason(first.to, first));
    let now = Timestamp::now();
    let mut updates = Vec::with_capacity(changes.len());
    for (record, change) in changes.iter() {
        if change.to != to || failure_reason(change.to, change) != reason {
            return Err(AllocationError::Corrupt("one UPDATE cannot make different changes".into()));
        }
        let from = record.view.status.transition(to).map(|_| record.view.status)?;
        // Each row's own history, so the rows set the same columns to their own values.
        let columns = columns_set(record, Some((to, change)), sets.clone(), now)?;
        updates.push(RowUpdate { id: record.view.id.clone(), from: from.as_str(), columns });
    }
    write_updates(connection, updates).await?;
    for (record, change) in changes.iter_mut() {
        journal_change(record, to, change, now, journal)?;
    }
    Ok(())
}

/// The SET list of a status change (to `to`, when there is one) and of `sets`, with
/// placeholders numbered from `first`, and the values to bind to them in order.
fn assignments(
    record: &Record,
    change: Option<(AllocationStatus, &Change<'_>)>,
    sets: Sets,
    now: Timestamp,
    first: usize,
) -> Result<(Vec<String>, Vec<Value>), AllocationError> {
    let columns = columns_set(record, change, sets, now)?;
    let assignments =
        columns.iter().enumerate().map(|(index, (column, _))| format!("{column} = ${}", index + first)).collect();
    Ok((assignments, columns.into_iter().map(|(_, value)| value).collect()))
}

/// The columns a status change of `record` (to `to`, when there is one) and `sets`
/// write, with their values, in order. A change writes the row's whole history with
/// its transition added (the caller holds the row, so the history read is current).
fn columns_set(
    record: &Record,
    change: Option<(AllocationStatus, &Change<'_>)>,
    sets: Sets,
    now: Timestamp,
) -> Result<Vec<(String, Value)>, AllocationError> {
    let mut columns = Vec::new();
    if let Some((to, change)) = change {
        columns.push(("status".into(), Value::Text(Some(to.as_str().to_owned()))));
        columns.push(("updated_at".into(), Value::Int(Some(now.as_micros()))));
        columns.push((format!("{}_at", to.as_str()), Value::Int(Some(now.as_micros()))));
        if let Some(reason) = failure_reason(to, change) {
            columns.push(("failure_reason".into(), Value::Text(Some(reason.to_owned()))));
        }
        let mut history = history(record)?.to_vec();
        history.push(next_transition(record, to, change, now));
        columns.push(("transitions".into(), Value::Text(Some(transitions_json(&history)?))));
    }
    columns.extend(sets.into_iter().map(|(column, value)| (column.to_owned(), value)));
    Ok(columns)
}

/// The transitions read with `record`'s row. Rows are always read with them; a record
/// without them would have its history overwritten, so it is refused.
fn history(record: &Record) -> Result<&[Transition], AllocationError> {
    record
        .view
        .transitions
        .as_deref()
        .ok_or_else(|| AllocationError::Corrupt(format!("{} was read without its transitions", record.view.id)))
}

/// The transition a change of `record` to `to` at `now` records.
fn next_transition(record: &Record, to: AllocationStatus, change: &Change<'_>, now: Timestamp) -> Transition {
    Transition {
        from: Some(record.view.status),
        to,
        actor: change.actor.id.clone(),
        reason: change.reason.map(str::to_owned),
        correlation_id: change.actor.correlation_id.clone(),
        at: now,
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind_values(mut query: AnyQuery<'_>, values: impl IntoIterator<Item = Value>) -> AnyQuery<'_> {
    for value in values {
        query = match value {
            Value::Int(value) => query.bind(value),
            Value::Text(value) => query.bind(value),
        };
    }
    query
}

/// The reason a change records as the allocation's failure: only failures have one.
fn failure_reason<'a>(to: AllocationStatus, change: &Change<'a>) -> Option<&'a str> {
    change.reason.filter(|_| matches!(to, AllocationStatus::Failed | AllocationStatus::ReleaseFailed))
}

/// Records a change written to `record`'s row: its transition and event go to
/// `journal`, and the record in memory takes its new status and times.
fn journal_change(
    record: &mut Record,
    to: AllocationStatus,
    change: &Change<'_>,
    now: Timestamp,
    journal: &Journal,
) -> Result<(), AllocationError> {
    let from = record.view.status;
    let event = match change.subject {
        Some(subject) => {
            Some(lifecycle_event(record, subject, Some(from), to, change.reason, &change.actor.correlation_id)?)
        }
        None => None,
    };
    let transition = next_transition(record, to, change, now);
    record.view.transitions.get_or_insert_with(Vec::new).push(transition);
    journal.record(event);
    journal.lock_moved().push((record.view.id.clone(), to));
    if to.is_terminal() && !from.is_terminal() {
        journal.count_live(&record.view, -1);
    }
    let view = &mut record.view;
    view.status = to;
    view.updated_at = now;
    let stamp = match to {
        AllocationStatus::Requested => &mut view.created_at,
        AllocationStatus::Provisioning => view.provisioning_at.insert(now),
        AllocationStatus::Active => view.active_at.insert(now),
        AllocationStatus::Releasing => view.releasing_at.insert(now),
        AllocationStatus::Released => view.released_at.insert(now),
        AllocationStatus::Failed => view.failed_at.insert(now),
        AllocationStatus::ReleaseFailed => view.release_failed_at.insert(now),
    };
    *stamp = now;
    if let Some(reason) = failure_reason(to, change) {
        view.failure_reason = Some(reason.to_owned());
    }
    Ok(())
}

/// Events recorded by [`apply_journaled`] and not yet written.
/// Only touched between awaits (never held across one), hence a plain mutex.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pending: std::sync::Mutex<Pending>,
    /// GPUs freed by the changes; their nodes are credited last (see
    /// [`slots::FreedSlots`]).
    pub(crate) freed: slots::FreedSlots,
    /// Node tasks the changes queue, when they are written together (see
    /// [`Journal::batched`]); `None` queues each at once.
    pub(crate) tasks: Option<gpuaas_inventory::tasks::QueuedTasks>,
    /// Set when row updates and usage closes wait for the flush too: the billing
    /// window and checkpoint interval the closes are billed with.
    batched: Option<(i64, i64)>,
    /// Each allocation the changes moved, with its new status, for the waiters to be
    /// told once the transaction commits (see [`Journal::take_moved`]).
    moved: std::sync::Mutex<Vec<(String, AllocationStatus)>>,
}

#[derive(Debug, Default)]
struct Pending {
    events: Vec<EventEnvelope>,
    /// Row updates of a batched journal, one per allocation, in the order first made.
    updates: Vec<RowUpdate>,
    /// Usage records to open: the allocation and when it became active.
    opened: Vec<(Allocation, Timestamp)>,
    /// Usage to close, for a batched journal: allocation, when, correlation id.
    closed: Vec<(String, Timestamp, String)>,
    /// Allocations created (+1) and ended (-1) per (tenant, project, user), for
    /// `allocation_live_counts`; sorted, so every writer locks the rows in one order.
    live: std::collections::BTreeMap<(String, String, String), i64>,
}

/// The columns one allocation's changes set, and the status its row had when read.
#[derive(Debug)]
struct RowUpdate {
    id: String,
    from: &'static str,
    columns: Vec<(String, Value)>,
}

/// Allocation rows per batched UPDATE.
const UPDATES_PER_STATEMENT: usize = 100;

impl Journal {
    /// A journal that keeps everything for the flush: row updates (one UPDATE per set
    /// of columns), usage records opened and closed, and the node tasks the changes
    /// queue, which the caller writes in one statement (`NodePlane::enqueue_queued_in`)
    /// before flushing. A task for a node that no longer takes tasks then fails the
    /// whole transaction, and a row found changed fails the flush, so only callers that
    /// hold the rows' locks and can take their changes again one by one batch them.
    pub(crate) fn batched(window_seconds: i64, checkpoint_every: i64) -> Self {
        Self { tasks: Some(Default::default()), batched: Some((window_seconds, checkpoint_every)), ..Self::default() }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_moved(&self) -> std::sync::MutexGuard<'_, Vec<(String, AllocationStatus)>> {
        self.moved.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The allocations the changes moved and their new statuses, in the order moved;
    /// only to be announced once the transaction that wrote them has committed.
    pub(crate) fn take_moved(&self) -> Vec<(String, AllocationStatus)> {
        std::mem::take(&mut *self.lock_moved())
    }

    /// Keeps `columns` for the row `id` (read as `from`); a second change to the same
    /// row in this journal is folded into the first, later values winning.
    fn update(&self, id: &str, from: &'static str, columns: Vec<(String, Value)>) {
        let mut pending = self.lock_pending();
        match pending.updates.iter_mut().find(|update| update.id == id) {
            Some(update) => {
                for (column, value) in columns {
                    match update.columns.iter_mut().find(|(name, _)| *name == column) {
                        Some(slot) => slot.1 = value,
                        None => update.columns.push((column, value)),
                    }
                }
            }
            None => pending.updates.push(RowUpdate { id: id.to_owned(), from, columns }),
        }
    }

    /// Opens the allocation's usage at `at` (its price snapshot) when the journal is
    /// flushed.
    pub(crate) fn open_usage(&self, allocation: &Allocation, at: Timestamp) {
        self.lock_pending().opened.push((allocation.clone(), at));
    }

    /// Closes the allocation's open usage at `at` when the journal is flushed; `false`
    /// (and nothing kept) for a journal that does not batch.
    pub(crate) fn close_usage(&self, allocation_id: &str, at: Timestamp, correlation_id: &str) -> bool {
        if self.batched.is_none() {
            return false;
        }
        self.lock_pending().closed.push((allocation_id.to_owned(), at, correlation_id.to_owned()));
        true
    }

    /// The `gpuaas.provisioning.requested` event of a new allocation (its first
    /// transition is inserted with its row).
    pub(crate) fn record_created(&self, record: &Record, actor: &Actor) -> Result<(), AllocationError> {
        let requested = lifecycle_event(
            record,
            events::PROVISIONING_REQUESTED,
            None,
            AllocationStatus::Requested,
            None,
            &actor.correlation_id,
        )?;
        self.record(Some(requested));
        self.count_live(&record.view, 1);
        Ok(())
    }

    fn record(&self, event: Option<EventEnvelope>) {
        self.lock_pending().events.extend(event);
    }

    /// Adds `delta` (a create's +1, an end's -1) to `allocation`'s live counts when the
    /// journal is flushed.
    fn count_live(&self, allocation: &Allocation, delta: i64) {
        let key = (allocation.tenant_id.clone(), allocation.project_id.clone(), allocation.user_id.clone());
        *self.lock_pending().live.entry(key).or_default() += delta;
    }

    /// Writes what was recorded, in order, on `connection` (the transaction that made
    /// the changes): row updates (with their transitions), events, usage opened and
    /// closed, the freed GPUs' nodes, and last the live counts.
    pub(crate) async fn flush(&self, connection: &mut Connection) -> Result<(), AllocationError> {
        let Pending { events, updates, opened, closed, live } = std::mem::take(&mut *self.lock_pending());
        write_updates(connection, updates).await?;
        gpuaas_outbox::enqueue_many(connection, &events).await?;
        if !opened.is_empty() {
            let records: Vec<gpuaas_billing::NewUsageRecord<'_>> =
                opened.iter().map(|(allocation, at)| new_usage(allocation, *at)).collect();
            gpuaas_billing::insert_usage_records(connection, &records).await?;
        }
        // Only a batched journal keeps closes.
        if let Some((window, checkpoint_every)) = self.batched.filter(|_| !closed.is_empty()) {
            let closes: Vec<gpuaas_billing::accrual::UsageClose<'_>> = closed
                .iter()
                .map(|(allocation_id, ended_at, correlation_id)| gpuaas_billing::accrual::UsageClose {
                    allocation_id,
                    ended_at: *ended_at,
                    correlation_id: metering_correlation(correlation_id),
                })
                .collect();
            let dialect = gpuaas_store::Dialect::of(connection);
            gpuaas_billing::accrual::close_usages(connection, dialect, &closes, window, checkpoint_every).await?;
        }
        self.freed.credit(connection).await?;
        // Last, after the nodes: a create holds its nodes when it counts, so taking
        // the counts before the nodes here could wait on it in a cycle.
        write_live_counts(connection, &live).await
    }
}

/// Adds `deltas` to the live counts, in key order, in one statement (a row is created
/// by its first allocation).
async fn write_live_counts(
    connection: &mut Connection,
    deltas: &std::collections::BTreeMap<(String, String, String), i64>,
) -> Result<(), AllocationError> {
    let changed: Vec<(&(String, String, String), &i64)> = deltas.iter().filter(|(_, delta)| **delta != 0).collect();
    for chunk in changed.chunks(UPDATES_PER_STATEMENT) {
        let batch = gpuaas_store::Padded::new(chunk, UPDATES_PER_STATEMENT);
        let sql = format!(
            "INSERT INTO allocation_live_counts (tenant_id, project_id, user_id, live) {} \
             ON CONFLICT (tenant_id, project_id, user_id) DO UPDATE SET live = allocation_live_counts.live + excluded.live",
            batch.insert_rows(1, 4)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (((tenant, project, user), delta), padding) in batch.rows() {
            query =
                query.bind((!padding).then(|| tenant.clone())).bind(project.clone()).bind(user.clone()).bind(**delta);
        }
        query.execute(&mut *connection).await?;
    }
    Ok(())
}

/// The usage record an allocation opens when it becomes active at `at`: the price
/// snapshot taken at create, nothing billed yet.
fn new_usage(allocation: &Allocation, at: Timestamp) -> gpuaas_billing::NewUsageRecord<'_> {
    gpuaas_billing::NewUsageRecord {
        tenant_id: &allocation.tenant_id,
        project_id: &allocation.project_id,
        allocation_id: &allocation.id,
        sku_id: &allocation.sku_id,
        gpu_count: allocation.gpu_count,
        price_per_gpu_hour_minor: allocation.price_per_gpu_hour_minor,
        currency: &allocation.currency,
        started_at: at,
        ended_at: None,
        billed_seconds: 0,
        billed_minor: 0,
    }
}

/// The correlation id usage debits carry: the change's, or `metering` without one.
pub(crate) fn metering_correlation(correlation_id: &str) -> &str {
    if correlation_id.is_empty() { "metering" } else { correlation_id }
}

/// Writes a batched journal's row updates: one UPDATE for the rows that set the same
/// columns, each fenced on the status it was read with. A row that moved anyway fails
/// the whole flush.
async fn write_updates(connection: &mut Connection, updates: Vec<RowUpdate>) -> Result<(), AllocationError> {
    let mut shapes: Vec<(Vec<String>, Vec<RowUpdate>)> = Vec::new();
    for update in updates {
        let names: Vec<String> = update.columns.iter().map(|(name, _)| name.clone()).collect();
        match shapes.iter_mut().find(|(shape, _)| *shape == names) {
            Some((_, rows)) => rows.push(update),
            None => shapes.push((names, vec![update])),
        }
    }
    for (names, rows) in shapes {
        for chunk in rows.chunks(UPDATES_PER_STATEMENT) {
            let batch = gpuaas_store::Padded::new(chunk, UPDATES_PER_STATEMENT);
            let casts: Vec<String> = chunk[0]
                .columns
                .iter()
                .map(|(name, value)| {
                    let sql_type = match value {
                        Value::Int(_) => "BIGINT",
                        Value::Text(_) => "TEXT",
                    };
                    format!("{name} = CAST(v.{name} AS {sql_type})")
                })
                .collect();
            let sql = format!(
                "WITH v (id, from_status, {}) AS (VALUES {}) UPDATE allocations SET {} FROM v \
                 WHERE allocations.id = v.id AND allocations.status = v.from_status",
                names.join(", "),
                batch.value_rows(1, names.len() + 2),
                casts.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (row, _) in batch.rows() {
                query =
                    bind_values(query.bind(row.id.clone()).bind(row.from), row.columns.iter().map(|(_, v)| v.clone()));
            }
            if query.execute(&mut *connection).await?.rows_affected() != chunk.len() as u64 {
                return Err(AllocationError::Conflict("an allocation changed meanwhile; try again".into()));
            }
        }
    }
    Ok(())
}

pub(crate) fn lifecycle_event(
    record: &Record,
    subject: &'static str,
    from: Option<AllocationStatus>,
    to: AllocationStatus,
    reason: Option<&str>,
    correlation_id: &str,
) -> Result<EventEnvelope, AllocationError> {
    let payload = LifecycleEvent {
        allocation_id: &record.view.id,
        tenant_id: &record.view.tenant_id,
        project_id: &record.view.project_id,
        user_id: &record.view.user_id,
        node_id: &record.view.node_id,
        from,
        to,
        reason,
    };
    let payload = serde_json::to_value(&payload).map_err(|error| AllocationError::Corrupt(error.to_string()))?;
    Ok(EventEnvelope::new(subject, 1, correlation_id, payload))
}

pub(crate) fn validate_text(field: &str, value: &str, max: usize) -> Result<(), AllocationError> {
    let length = value.chars().count();
    if length == 0 || length > max {
        return Err(AllocationError::invalid(field, format!("must be 1 to {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(AllocationError::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// The POSIX user an allocation runs as on its node: unique, valid on every distro
/// (`[a-z_][a-z0-9_-]{0,31}`), and recognisable as ours.
pub(crate) fn username_for(allocation_id: &str) -> String {
    let hex: String = allocation_id.chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_lowercase()).collect();
    let tail = hex.get(hex.len().saturating_sub(29)..).unwrap_or(&hex);
    format!("ga_{tail}")
}

impl Allocations {
    /// One allocation with its transitions and cost so far. `tenant_id` scopes the
    /// lookup for users: another tenant's allocation is answered like a missing one.
    pub async fn get(&self, allocation_id: &str, tenant_id: Option<&str>) -> Result<Allocation, AllocationError> {
        let sql = format!("SELECT {COLUMNS} FROM allocations WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(allocation_id).fetch_optional(self.store().pool()).await?;
        let record = row.as_ref().map(record_from_row).transpose()?.ok_or(AllocationError::NotFound("allocation"))?;
        if tenant_id.is_some_and(|tenant| tenant != record.view.tenant_id) {
            return Err(AllocationError::NotFound("allocation"));
        }
        let mut views = self.full_views(vec![record.view]).await?;
        views.pop().ok_or(AllocationError::NotFound("allocation"))
    }

    /// `views` (read with their transitions) with their cost so far, read for all of
    /// them at once.
    pub(crate) async fn full_views(&self, mut views: Vec<Allocation>) -> Result<Vec<Allocation>, AllocationError> {
        let ids: Vec<&str> = views.iter().map(|view| view.id.as_str()).collect();
        let usage = gpuaas_billing::usage_for_allocations(self.store(), &ids).await?;
        let now = Timestamp::now();
        for view in &mut views {
            view.accrued_cost_minor = accrued(usage.get(&view.id), now);
        }
        Ok(views)
    }

    /// Just the status: one indexed read, shared with the status reads of concurrent
    /// callers (see [`crate::watch`]).
    pub async fn status_of(&self, allocation_id: &str) -> Result<AllocationStatus, AllocationError> {
        let read = |ids: Vec<String>| {
            let this = self.clone();
            async move {
                let count = ids.len();
                // A failed shared read leaves every caller to read alone and see why.
                this.statuses(&ids)
                    .await
                    .map_or_else(|_| vec![None; count], |found| found.into_iter().map(Some).collect())
            }
        };
        let found = match self.status_reads().submit(allocation_id.to_owned(), read).await {
            Some(Some(found)) => found,
            _ => self.statuses(&[allocation_id.to_owned()]).await?.pop().flatten(),
        };
        found.ok_or(AllocationError::NotFound("allocation"))
    }

    /// The status of each of `ids` (`None`: no such allocation), in one statement.
    async fn statuses(&self, ids: &[String]) -> Result<Vec<Option<AllocationStatus>>, AllocationError> {
        let batch = gpuaas_store::Padded::new(ids, crate::watch::MAX_STATUS_READS);
        let sql = format!("SELECT id, status FROM allocations WHERE id IN ({})", batch.placeholders(1));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, _) in batch.rows() {
            query = query.bind(id.as_str());
        }
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for row in query.fetch_all(self.store().pool()).await? {
            let (id, status): (String, String) = (row.try_get("id")?, row.try_get("status")?);
            let status =
                AllocationStatus::parse(&status).ok_or_else(|| AllocationError::Corrupt(format!("status {status}")))?;
            found.insert(id, status);
        }
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }

    /// Allocations newest first, filtered by status and (for users) tenant.
    pub async fn list(
        &self,
        filter: &AllocationFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<AllocationPage, AllocationError> {
        if !(1..=gpuaas_kernel::cursor::MAX_PAGE_LIMIT).contains(&limit) {
            return Err(gpuaas_kernel::PageError::InvalidLimit.into());
        }
        let after = cursor.map(Cursor::decode).transpose()?;
        let mut clauses = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        let mut position = 0;
        let mut param = |texts: &mut Vec<String>, value: String| {
            texts.push(value);
            position += 1;
            format!("${position}")
        };
        if let Some(tenant) = &filter.tenant_id {
            let p = param(&mut texts, tenant.clone());
            clauses.push(format!("tenant_id = {p}"));
        }
        if let Some(status) = filter.status {
            let p = param(&mut texts, status.as_str().to_owned());
            clauses.push(format!("status = {p}"));
        }
        let mut cursor_binds = None;
        if let Some(after) = &after {
            let key = position + 1;
            let id = position + 2;
            clauses.push(format!("(created_at < ${key} OR (created_at = ${key} AND id < ${id}))"));
            cursor_binds = Some((after.sort_key, after.id.clone()));
        }
        let where_clause = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
        let sql = format!(
            "SELECT {COLUMNS} FROM allocations{where_clause} ORDER BY created_at DESC, id DESC LIMIT {}",
            i64::from(limit) + 1
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for text in texts {
            query = query.bind(text);
        }
        if let Some((key, id)) = cursor_binds {
            query = query.bind(key).bind(id);
        }
        // Planned with its values: a tenant's rare status is found through the status
        // index, not by walking all of the tenant's allocations.
        let rows = self.store().fetch_all_with_values(query).await?;
        let mut items =
            rows.iter().map(|row| record_from_row(row).map(|record| record.view)).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|last| Cursor::new(last.created_at.as_micros(), last.id.clone()).encode())
        } else {
            None
        };
        let now = Timestamp::now();
        for item in &mut items {
            item.accrued_cost_minor = estimated(item, now);
            // Lists stay light: transitions are for single reads.
            item.transitions = None;
        }
        Ok(AllocationPage { items, next_cursor })
    }

    /// An operator's (or the platform's) release, with a reason: from `requested` or
    /// `provisioning` the allocation fails (GPUs freed, the node told to remove the
    /// user); from `active` or `release_failed` it is released again; a release in
    /// progress starts over. Metering stops now: the tenant does not pay for a
    /// teardown it did not ask for.
    pub async fn force_release(
        &self,
        actor: &Actor,
        allocation_id: &str,
        reason: &str,
    ) -> Result<Allocation, AllocationError> {
        validate_text("reason", reason, MAX_REASON_LEN)?;
        let mut tx = self.store().begin().await?;
        let woken = self.force_release_in(&mut tx, actor, allocation_id, reason).await?;
        let entry = actor.entry(
            "allocation.force_release",
            self.resource_id(allocation_id),
            serde_json::json!({"reason": reason}),
        );
        gpuaas_audit::record(&mut tx, &entry).await?;
        tx.commit().await?;
        if let Some(node) = woken {
            self.nodes().wake_node(&node);
        }
        self.wake_runner();
        let allocation = self.get(allocation_id, None).await?;
        self.announce(vec![(allocation.id.clone(), allocation.status)]);
        Ok(allocation)
    }

    /// [`Self::force_release`] in the caller's transaction; returns the node to wake
    /// when a cleanup task was queued.
    pub(crate) async fn force_release_in(
        &self,
        connection: &mut Connection,
        actor: &Actor,
        allocation_id: &str,
        reason: &str,
    ) -> Result<Option<String>, AllocationError> {
        let dialect = self.store().dialect();
        let mut record = lock(connection, dialect, allocation_id).await?;
        let now = Timestamp::now();
        match record.view.status {
            AllocationStatus::Requested | AllocationStatus::Provisioning => {
                let change = Change {
                    to: AllocationStatus::Failed,
                    actor,
                    reason: Some(reason),
                    subject: Some(events::PROVISIONING_FAILED),
                };
                apply(connection, &mut record, Some(&change), schedule(None, false)).await?;
                slots::release(connection, &record.held_slots()).await?;
                let woken = if record.provision_task_id.is_some() {
                    crate::workflow::queue_cleanup(self, connection, &record, actor, None).await?
                } else {
                    None
                };
                Ok(woken)
            }
            AllocationStatus::Active | AllocationStatus::ReleaseFailed => {
                let change = Change {
                    to: AllocationStatus::Releasing,
                    actor,
                    reason: Some(reason),
                    subject: Some(events::FORCE_RELEASE_REQUESTED),
                };
                apply(connection, &mut record, Some(&change), schedule(Some(now), true)).await?;
                self.stop_metering(connection, allocation_id, now, &actor.correlation_id).await?;
                Ok(None)
            }
            AllocationStatus::Releasing => {
                apply(connection, &mut record, None, schedule(Some(now), true)).await?;
                self.stop_metering(connection, allocation_id, now, &actor.correlation_id).await?;
                Ok(None)
            }
            status @ (AllocationStatus::Released | AllocationStatus::Failed) => {
                Err(AllocationError::InvalidTransition { from: status, to: AllocationStatus::Releasing })
            }
        }
    }

    /// Force-releases every live allocation of a tenant whose balance ran out;
    /// returns how many. Duplicate depletion events find nothing left to release.
    pub async fn release_depleted_tenant(
        &self,
        tenant_id: &str,
        correlation_id: &str,
    ) -> Result<usize, AllocationError> {
        // Through the status index: the allocations in these statuses hold GPUs, so
        // there are at most as many as the fleet has, where the tenant index would
        // walk everything the tenant ever ran (ADR 032). Planned with its values, as
        // the cheaper path depends on them.
        let query = sqlx::query(
            "SELECT id FROM allocations WHERE status IN ('requested', 'provisioning', 'active') AND tenant_id = $1",
        )
        .bind(tenant_id);
        let ids = self
            .store()
            .fetch_all_with_values(query)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("id"))
            .collect::<Result<Vec<_>, _>>()?;
        let actor = Actor { correlation_id: correlation_id.to_owned(), ..Actor::system() };
        let mut released = 0;
        for id in ids {
            match self.force_release(&actor, &id, "the tenant's balance is depleted").await {
                Ok(_) => released += 1,
                // Released meanwhile by someone else: nothing left to do for it.
                Err(AllocationError::InvalidTransition { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(released)
    }

    /// Closes the allocation's usage record at `at`, billing its final partial window.
    pub(crate) async fn stop_metering(
        &self,
        connection: &mut Connection,
        allocation_id: &str,
        at: Timestamp,
        correlation_id: &str,
    ) -> Result<(), AllocationError> {
        let window: i64 = self.policy().get_in(connection, keys::BILLING_WINDOW_SECONDS).await?;
        let checkpoint_every: i64 = self.policy().get_in(connection, keys::BILLING_CHECKPOINT_EVERY).await?;
        gpuaas_billing::accrual::close_usage(
            connection,
            self.store().dialect(),
            allocation_id,
            at,
            window,
            checkpoint_every,
            metering_correlation(correlation_id),
        )
        .await?;
        Ok(())
    }
}

/// Cost so far from the usage record: what was debited, or while it runs, the cost of
/// every second since it opened (the same rounding the debits use).
fn accrued(usage: Option<&UsageRecord>, now: Timestamp) -> i64 {
    match usage {
        None => 0,
        Some(record) if record.ended_at.is_some() => record.billed_minor,
        Some(record) => {
            let seconds = (now.as_micros() - record.started_at.as_micros()) / 1_000_000;
            gpuaas_billing::accrual::cost_through(record.price_per_gpu_hour_minor, record.gpu_count, seconds)
        }
    }
}

/// A list's cost column without a usage lookup per row: the seconds since activation
/// (until release) at the allocation's price.
fn estimated(allocation: &Allocation, now: Timestamp) -> i64 {
    let Some(active_at) = allocation.active_at else { return 0 };
    let end = allocation.released_at.or(allocation.release_failed_at).or(allocation.releasing_at).unwrap_or(now);
    let seconds = (end.as_micros() - active_at.as_micros()) / 1_000_000;
    gpuaas_billing::accrual::cost_through(allocation.price_per_gpu_hour_minor, allocation.gpu_count, seconds)
}

/// A value as JSON text for a TEXT column.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, AllocationError> {
    serde_json::to_string(value).map_err(|error| AllocationError::Corrupt(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_valid_posix_names_and_differ_per_allocation() {
        let a = username_for(&gpuaas_kernel::new_id().to_string());
        let b = username_for(&gpuaas_kernel::new_id().to_string());
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(gpuaas_nodeagent_protocol::tasks::is_valid_username(name), "{name}");
            assert!(name.len() <= 32);
        }
    }

    #[test]
    fn the_live_counts_start_from_the_live_statuses() {
        let live_list = || {
            AllocationStatus::LIVE.iter().map(|status| format!("'{}'", status.as_str())).collect::<Vec<_>>().join(", ")
        };
        // The live counts start from the allocations live when they were made.
        let counts = include_str!("../migrations/2026120260_live_allocation_counts.sql");
        assert!(counts.contains(&format!("WHERE status IN ({})", live_list())), "{counts}");
    }
}

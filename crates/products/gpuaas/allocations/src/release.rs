//! Owners releasing their allocations. Concurrent releases share a transaction (group
//! commit, as creates do): one statement locks every allocation of the batch, one
//! UPDATE moves those that may go to `releasing` (each row with its transition) and
//! names their first revoke task, and those tasks, events and audit rows are written
//! with one INSERT each. The release phase thus starts in the owner's commit: the
//! node's pull gets the task at once, with no workflow pass in between. Each request
//! is answered as it would have been alone: a missing or foreign allocation is not
//! found, one that cannot be released (already releasing, or released twice in one
//! batch) is a conflict.

use std::collections::{BTreeSet, HashMap};

use gpuaas_kernel::Timestamp;
use gpuaas_store::sqlx;
use gpuaas_store::{Dialect, GroupCommit};

use crate::events;
use crate::service::{COLUMNS, Change, Journal, Record, apply_many, record_from_row, schedule};
use crate::workflow::Timing;
use crate::{Actor, Allocation, AllocationError, AllocationStatus, Allocations};

/// Most releases in one transaction.
const MAX_BATCH: usize = 64;

/// Who starts a release phase: the release's own transaction, which queues the first
/// revoke task with the workflow's timing (read before the transaction: a policy read
/// inside it would wait for a second pooled connection while holding one), or the
/// workflow runner's next pass.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Begun(Timing),
    ToRunner,
}

/// A release waiting for its batch.
pub(crate) struct ReleaseRequest {
    actor: Actor,
    allocation_id: String,
    tenant_id: String,
}

/// The queue releases wait in for their batch.
pub(crate) type ReleaseQueue = GroupCommit<ReleaseRequest, Result<Allocation, AllocationError>>;

pub(crate) fn queue(dialect: Dialect) -> ReleaseQueue {
    GroupCommit::for_writes(dialect, MAX_BATCH)
}

impl Allocations {
    /// The owner's release: `active → releasing`, or a retry from `release_failed`.
    /// Already releasing (or any other status) is a 409.
    pub async fn release(
        &self,
        actor: &Actor,
        allocation_id: &str,
        tenant_id: &str,
    ) -> Result<Allocation, AllocationError> {
        let request = ReleaseRequest {
            actor: actor.clone(),
            allocation_id: allocation_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
        };
        let this = self.clone();
        let run = move |batch: Vec<ReleaseRequest>| {
            let this = this.clone();
            async move { this.release_batch(batch).await }
        };
        self.releases().submit(request, run).await.unwrap_or_else(|| {
            Err(AllocationError::Corrupt("the batch holding this release stopped without an answer".into()))
        })
    }

    async fn release_batch(&self, requests: Vec<ReleaseRequest>) -> Vec<Result<Allocation, AllocationError>> {
        let begun = match self.timing().await {
            Ok(timing) => self.release_together(&requests, Phase::Begun(timing)).await,
            Err(error) => Err(error),
        };
        match begun {
            Ok(results) => results,
            Err(error) => {
                // Taken again one by one, each leaving its first release task to the
                // runner: a node that takes no tasks now fails the runner's step (and
                // is retried there), not the owner's release.
                tracing::debug!(%error, releases = requests.len(), "batched releases failed; taking them one by one");
                let mut results = Vec::with_capacity(requests.len());
                for request in &requests {
                    results.push(match self.release_together(std::slice::from_ref(request), Phase::ToRunner).await {
                        Ok(mut one) => one.pop().unwrap_or_else(|| {
                            Err(AllocationError::Corrupt("a lone release was left unanswered".into()))
                        }),
                        Err(error) => Err(error),
                    });
                }
                results
            }
        }
    }

    /// The requests in one transaction, answered in order. An error means nothing was
    /// written.
    async fn release_together(
        &self,
        requests: &[ReleaseRequest],
        phase: Phase,
    ) -> Result<Vec<Result<Allocation, AllocationError>>, AllocationError> {
        let store = self.store();
        let mut tx = store.begin().await?;
        let ids: Vec<&str> = requests
            .iter()
            .map(|request| request.allocation_id.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut records = lock_many(&mut tx, store.dialect(), &ids).await?;

        // Who releases what, in request order; the first request for an allocation
        // takes it, a second finds it releasing.
        let mut answers: Vec<Option<Result<(), AllocationError>>> = requests.iter().map(|_| None).collect();
        let mut taken: HashMap<&str, usize> = HashMap::new();
        for (index, request) in requests.iter().enumerate() {
            let id = request.allocation_id.as_str();
            let refusal = match records.get(id) {
                None => Some(AllocationError::NotFound("allocation")),
                Some(record) if record.view.tenant_id != request.tenant_id => {
                    Some(AllocationError::NotFound("allocation"))
                }
                Some(_) if taken.contains_key(id) => Some(AllocationError::InvalidTransition {
                    from: AllocationStatus::Releasing,
                    to: AllocationStatus::Releasing,
                }),
                Some(record) => record.view.status.transition(AllocationStatus::Releasing).err(),
            };
            match refusal {
                Some(error) => answers[index] = Some(Err(error)),
                None => {
                    taken.insert(id, index);
                }
            }
        }

        let mut changes: Vec<(&mut Record, Change<'_>)> = Vec::with_capacity(taken.len());
        let mut audit = Vec::with_capacity(taken.len());
        for (id, record) in &mut records {
            let Some(&index) = taken.get(id.as_str()) else { continue };
            let actor = &requests[index].actor;
            audit.push(actor.entry("allocation.release", self.resource_id(id), serde_json::json!({})));
            let change = Change {
                to: AllocationStatus::Releasing,
                actor,
                reason: Some("released by its owner"),
                subject: Some(events::RELEASING_REQUESTED),
            };
            changes.push((record, change));
        }
        if changes.is_empty() {
            tx.rollback().await?;
        } else if let Phase::Begun(timing) = &phase {
            let journal = timing.batched_journal();
            let wake = self.begin_releases(&mut tx, changes, timing, &journal).await?;
            gpuaas_audit::record_many(&mut tx, &audit).await?;
            tx.commit().await?;
            self.wake_nodes(wake);
            self.announce(journal.take_moved());
        } else {
            let journal = Journal::default();
            apply_many(&mut tx, &mut changes, schedule(Some(Timestamp::now()), true), &journal).await?;
            journal.flush(&mut tx).await?;
            gpuaas_audit::record_many(&mut tx, &audit).await?;
            tx.commit().await?;
            self.wake_runner();
            self.announce(journal.take_moved());
        }

        let released: Vec<Allocation> =
            taken.keys().filter_map(|id| records.get(*id)).map(|record| record.view.clone()).collect();
        let mut views: HashMap<String, Allocation> =
            self.full_views(released).await?.into_iter().map(|view| (view.id.clone(), view)).collect();
        Ok(requests
            .iter()
            .zip(answers)
            .map(|(request, answer)| match answer {
                Some(Err(error)) => Err(error),
                _ => views
                    .remove(&request.allocation_id)
                    .ok_or_else(|| AllocationError::Corrupt(format!("{} was released unseen", request.allocation_id))),
            })
            .collect())
    }
}

/// Reads and locks the allocations `ids` (sorted, so two batches lock in the same
/// order) in the caller's transaction; absent ones are left out.
async fn lock_many(
    connection: &mut gpuaas_store::Connection,
    dialect: Dialect,
    ids: &[&str],
) -> Result<HashMap<String, Record>, AllocationError> {
    let lock = match dialect {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let batch = gpuaas_store::Padded::new(ids, MAX_BATCH);
    let placeholders = batch.placeholders(1);
    let sql = format!("SELECT {COLUMNS} FROM allocations WHERE id IN ({}) ORDER BY id{lock}", placeholders);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (id, _) in batch.rows() {
        query = query.bind(*id);
    }
    let rows = query.fetch_all(&mut *connection).await?;
    rows.iter().map(|row| record_from_row(row).map(|record| (record.view.id.clone(), record))).collect()
}

//! Reconciliation: compares what each node reports with what is billed.
//!
//! A node's agent lists the allocation users present on it with its inventory. Two
//! disagreements matter:
//!
//! - `allocation_missing_on_node`: an allocation billed as `active` (longer than the
//!   grace period before the report) whose user the node does not have. Whatever
//!   happened to it, the tenant must not keep paying: it is force-released, which
//!   closes its metering at once, in the same transaction as the finding.
//! - `orphan_node_user`: a `ga_…` user on a node with no live allocation there. Nobody
//!   pays for it, but it may hold a tenant's data or access; operators decide.
//!
//! Each finding is one row per node, kind and user, reopened when it comes back. Its
//! event is queued only when it opens, so a pass repeated every few seconds announces
//! a problem once. A missing-allocation finding stays open while the allocation is
//! still live and absent (its release is under way), so operators can see it.

use std::collections::HashSet;
use std::time::Duration;

use gpuaas_events::EventEnvelope;
use gpuaas_inventory::nodes::ReportedUsers;
use gpuaas_kernel::{Cursor, Timestamp};
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Row};
use serde::Serialize;
use utoipa::ToSchema;

use crate::service::lock;
use crate::{Actor, AllocationError, AllocationStatus, Allocations, events};

/// Users the agent creates for allocations start with this; other users on the host
/// (operators', system accounts) are none of reconciliation's business.
const ALLOCATION_USER_PREFIX: &str = "ga_";
const RELEASE_REASON: &str = "reconciliation: the node no longer has this allocation's user";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Billed as active, but its user is gone from the node; it was force-released.
    AllocationMissingOnNode,
    /// An allocation user on the node with no live allocation there.
    OrphanNodeUser,
}

impl FindingKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            FindingKind::AllocationMissingOnNode => "allocation_missing_on_node",
            FindingKind::OrphanNodeUser => "orphan_node_user",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [FindingKind::AllocationMissingOnNode, FindingKind::OrphanNodeUser]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One disagreement between a node's report and the allocations table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Finding {
    pub id: String,
    pub node_id: String,
    pub kind: FindingKind,
    /// The POSIX user concerned.
    pub username: String,
    /// The allocation the user belongs (or belonged) to, when there is one.
    pub allocation_id: Option<String>,
    /// When this occurrence was first seen (reset when a resolved finding comes back).
    #[schema(value_type = String, format = DateTime)]
    pub first_seen_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen_at: Timestamp,
    /// Set once a pass no longer sees it; null while open.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resolved_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FindingPage {
    pub items: Vec<Finding>,
    pub next_cursor: Option<String>,
}

/// What one pass did. `missing` and `orphans` count findings that opened in this pass
/// (each queued one event; each missing allocation was force-released).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub nodes: usize,
    pub missing: usize,
    pub orphans: usize,
    pub resolved: usize,
}

/// The payload of both reconciliation events.
#[derive(Debug, Serialize)]
struct FindingEvent<'a> {
    finding_id: &'a str,
    node_id: &'a str,
    kind: FindingKind,
    username: &'a str,
    allocation_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    reported_at: Timestamp,
}

/// An allocation of the node as the pass first reads it.
struct Placed {
    id: String,
    status: AllocationStatus,
    username: String,
    active_at: Option<Timestamp>,
}

const FINDING_COLUMNS: &str = "id, node_id, kind, username, allocation_id, first_seen_at, last_seen_at, resolved_at";

fn finding_from_row(row: &Row) -> Result<Finding, AllocationError> {
    let kind: String = row.try_get("kind")?;
    Ok(Finding {
        id: row.try_get("id")?,
        node_id: row.try_get("node_id")?,
        kind: FindingKind::parse(&kind).ok_or_else(|| AllocationError::Corrupt(format!("finding kind {kind}")))?,
        username: row.try_get("username")?,
        allocation_id: row.try_get("allocation_id")?,
        first_seen_at: Timestamp::from_micros(row.try_get("first_seen_at")?),
        last_seen_at: Timestamp::from_micros(row.try_get("last_seen_at")?),
        resolved_at: row.try_get::<Option<i64>, _>("resolved_at")?.map(Timestamp::from_micros),
    })
}

impl Allocations {
    /// Compares every node's latest user list with its allocations, records what
    /// disagrees, stops billing allocations their node no longer has, and resolves
    /// findings that no longer hold. Each node is one transaction; a node that fails
    /// does not stop the others, and the first failure is returned after all ran.
    pub async fn reconcile(&self) -> Result<ReconcileReport, AllocationError> {
        let grace = self.policy().get_duration_secs(keys::ALLOCATIONS_RECONCILE_GRACE_SECONDS).await?;
        let reports = gpuaas_inventory::nodes::reported_users(self.store()).await?;
        let now = Timestamp::now();
        let actor = Actor { correlation_id: format!("reconcile-{}", now.as_micros()), ..Actor::system() };
        let mut total = ReconcileReport::default();
        let mut first_error = None;
        for report in &reports {
            match self.reconcile_node(&actor, report, grace).await {
                Ok(node) => {
                    total.nodes += 1;
                    total.missing += node.missing;
                    total.orphans += node.orphans;
                    total.resolved += node.resolved;
                    if node.missing + node.orphans + node.resolved > 0 {
                        tracing::info!(node_id = %report.node_id, ?node, "node reconciled");
                    }
                }
                Err(error) => {
                    tracing::warn!(node_id = %report.node_id, %error, "reconciling the node failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(total),
        }
    }

    async fn reconcile_node(
        &self,
        actor: &Actor,
        report: &ReportedUsers,
        grace: Duration,
    ) -> Result<ReconcileReport, AllocationError> {
        let dialect = self.store().dialect();
        let node_id = report.node_id.as_str();
        let reported: HashSet<&str> = report.users.iter().map(String::as_str).collect();
        // An allocation active since before this was certainly in the list by the time
        // the node sent it; one that ended after it may still be listed, because the
        // node built the list before removing its user.
        let settled = report.reported_at.saturating_sub(grace);
        let now = Timestamp::now();
        let mut outcome = ReconcileReport { nodes: 1, ..Default::default() };
        let mut holding: HashSet<(FindingKind, String)> = HashSet::new();
        let mut woken = Vec::new();
        let mut released = false;

        let mut tx = self.store().begin().await?;
        let live = AllocationStatus::LIVE.iter().map(|status| format!("'{}'", status.as_str())).collect::<Vec<_>>();
        let sql = format!(
            "SELECT id, status, ssh_username, active_at FROM allocations \
             WHERE node_id = $1 AND (status IN ({}) OR released_at > $2 OR failed_at > $2) ORDER BY id",
            live.join(", ")
        );
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(node_id).bind(settled.as_micros()).fetch_all(&mut *tx).await?;
        let placed = rows
            .iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(Placed {
                    id: row.try_get("id")?,
                    status: AllocationStatus::parse(&status)
                        .ok_or_else(|| AllocationError::Corrupt(format!("status {status}")))?,
                    username: row.try_get("ssh_username")?,
                    active_at: row.try_get::<Option<i64>, _>("active_at")?.map(Timestamp::from_micros),
                })
            })
            .collect::<Result<Vec<_>, AllocationError>>()?;

        for allocation in &placed {
            let overdue = allocation.active_at.is_some_and(|active_at| active_at < settled);
            if allocation.status != AllocationStatus::Active
                || !overdue
                || reported.contains(allocation.username.as_str())
            {
                continue;
            }
            // Under the row lock: a release that committed since the read above has
            // already stopped the billing.
            let record = lock(&mut tx, dialect, &allocation.id).await?;
            if record.view.status != AllocationStatus::Active {
                continue;
            }
            let kind = FindingKind::AllocationMissingOnNode;
            let opened = open_finding(&mut tx, node_id, kind, &allocation.username, Some(&allocation.id), now).await?;
            if let Some(finding_id) = &opened {
                let event = FindingEvent {
                    finding_id,
                    node_id,
                    kind,
                    username: &allocation.username,
                    allocation_id: Some(&allocation.id),
                    tenant_id: Some(&record.view.tenant_id),
                    reported_at: report.reported_at,
                };
                queue(&mut tx, events::RECONCILE_ALLOCATION_MISSING, &event, &actor.correlation_id).await?;
                outcome.missing += 1;
            }
            if let Some(node) = self.force_release_in(&mut tx, actor, &allocation.id, RELEASE_REASON).await? {
                woken.push(node);
            }
            released = true;
            let entry = actor.entry(
                "allocation.force_release",
                self.resource_id(&allocation.id),
                serde_json::json!({
                    "reason": RELEASE_REASON, "node_id": node_id, "username": allocation.username,
                    "reported_at": report.reported_at, "finding_id": opened,
                }),
            );
            gpuaas_audit::record(&mut tx, &entry).await?;
            tracing::warn!(
                allocation_id = %allocation.id, node_id, username = %allocation.username,
                "allocation missing on its node; force-released to stop billing"
            );
            holding.insert((kind, allocation.username.clone()));
        }

        // Users some allocation of the node accounts for, including those whose
        // allocation ended after the report was made.
        let expected: HashSet<&str> = placed.iter().map(|allocation| allocation.username.as_str()).collect();
        for username in &report.users {
            if !username.starts_with(ALLOCATION_USER_PREFIX) || expected.contains(username.as_str()) {
                continue;
            }
            let kind = FindingKind::OrphanNodeUser;
            // The allocation it was created for, if the node ever had one: where an
            // operator starts looking.
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT id FROM allocations WHERE node_id = $1 AND ssh_username = $2 \
                 ORDER BY created_at DESC, id DESC LIMIT 1",
            )
            .bind(node_id)
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(finding_id) = open_finding(&mut tx, node_id, kind, username, owner.as_deref(), now).await? {
                let event = FindingEvent {
                    finding_id: &finding_id,
                    node_id,
                    kind,
                    username,
                    allocation_id: owner.as_deref(),
                    tenant_id: None,
                    reported_at: report.reported_at,
                };
                queue(&mut tx, events::RECONCILE_ORPHAN_USER, &event, &actor.correlation_id).await?;
                outcome.orphans += 1;
                tracing::warn!(node_id, %username, "allocation user on a node with no live allocation");
            }
            holding.insert((kind, username.clone()));
        }

        let open = sqlx::query(
            "SELECT id, kind, username, allocation_id FROM reconciliation_findings \
             WHERE node_id = $1 AND resolved_at IS NULL ORDER BY id",
        )
        .bind(node_id)
        .fetch_all(&mut *tx)
        .await?;
        for row in &open {
            let id: String = row.try_get("id")?;
            let kind: String = row.try_get("kind")?;
            let username: String = row.try_get("username")?;
            let allocation_id: Option<String> = row.try_get("allocation_id")?;
            let Some(kind) = FindingKind::parse(&kind) else {
                return Err(AllocationError::Corrupt(format!("finding kind {kind}")));
            };
            if holding.contains(&(kind, username.clone())) {
                continue;
            }
            // Billing already stopped, but until the release ends (or the user shows up
            // again) the books and the node still disagree: operators keep seeing it.
            let still_missing = kind == FindingKind::AllocationMissingOnNode
                && !reported.contains(username.as_str())
                && placed.iter().any(|allocation| {
                    Some(&allocation.id) == allocation_id.as_ref() && !allocation.status.is_terminal()
                });
            let sql = if still_missing {
                "UPDATE reconciliation_findings SET last_seen_at = $1 WHERE id = $2 AND resolved_at IS NULL"
            } else {
                "UPDATE reconciliation_findings SET resolved_at = $1 WHERE id = $2 AND resolved_at IS NULL"
            };
            let changed = sqlx::query(sql).bind(now.as_micros()).bind(&id).execute(&mut *tx).await?.rows_affected();
            if !still_missing {
                outcome.resolved += usize::try_from(changed).unwrap_or(0);
            }
        }
        tx.commit().await?;
        for node in &woken {
            self.nodes().wake_node(node);
        }
        if released {
            self.wake_runner();
        }
        Ok(outcome)
    }

    /// Findings newest first (by when they were first seen); only open ones unless
    /// `open_only` is false.
    pub async fn list_findings(
        &self,
        open_only: bool,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<FindingPage, AllocationError> {
        if !(1..=gpuaas_kernel::cursor::MAX_PAGE_LIMIT).contains(&limit) {
            return Err(gpuaas_kernel::PageError::InvalidLimit.into());
        }
        let after = cursor.map(Cursor::decode).transpose()?;
        let mut clauses = Vec::new();
        if open_only {
            clauses.push("resolved_at IS NULL");
        }
        if after.is_some() {
            clauses.push("(first_seen_at < $1 OR (first_seen_at = $1 AND id < $2))");
        }
        let where_clause = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
        let sql = format!(
            "SELECT {FINDING_COLUMNS} FROM reconciliation_findings{where_clause} \
             ORDER BY first_seen_at DESC, id DESC LIMIT {}",
            i64::from(limit) + 1
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(after) = &after {
            query = query.bind(after.sort_key).bind(after.id.clone());
        }
        let rows = query.fetch_all(self.store().pool()).await?;
        let mut items = rows.iter().map(finding_from_row).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|last| Cursor::new(last.first_seen_at.as_micros(), last.id.clone()).encode())
        } else {
            None
        };
        Ok(FindingPage { items, next_cursor })
    }
}

/// Records that a finding holds at `now`. Returns its id when it opened here (new, or
/// back after being resolved), the one moment worth an event; `None` when it was
/// already open.
async fn open_finding(
    connection: &mut Connection,
    node_id: &str,
    kind: FindingKind,
    username: &str,
    allocation_id: Option<&str>,
    now: Timestamp,
) -> Result<Option<String>, AllocationError> {
    let touched = sqlx::query(
        "UPDATE reconciliation_findings SET last_seen_at = $1 \
         WHERE node_id = $2 AND kind = $3 AND username = $4 AND resolved_at IS NULL",
    )
    .bind(now.as_micros())
    .bind(node_id)
    .bind(kind.as_str())
    .bind(username)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if touched > 0 {
        return Ok(None);
    }
    // The conditional update makes a concurrent pass that opened the same finding
    // first win: this one then changes nothing and announces nothing.
    let opened: Option<String> = sqlx::query_scalar(
        "INSERT INTO reconciliation_findings \
         (id, node_id, kind, username, allocation_id, first_seen_at, last_seen_at, resolved_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, NULL) \
         ON CONFLICT (node_id, kind, username) DO UPDATE SET allocation_id = excluded.allocation_id, \
         first_seen_at = excluded.first_seen_at, last_seen_at = excluded.last_seen_at, resolved_at = NULL \
         WHERE reconciliation_findings.resolved_at IS NOT NULL \
         RETURNING id",
    )
    .bind(gpuaas_kernel::new_id().to_string())
    .bind(node_id)
    .bind(kind.as_str())
    .bind(username)
    .bind(allocation_id)
    .bind(now.as_micros())
    .fetch_optional(&mut *connection)
    .await?;
    Ok(opened)
}

async fn queue(
    connection: &mut Connection,
    subject: &'static str,
    event: &FindingEvent<'_>,
    correlation_id: &str,
) -> Result<(), AllocationError> {
    let payload = serde_json::to_value(event).map_err(|error| AllocationError::Corrupt(error.to_string()))?;
    gpuaas_outbox::enqueue(connection, &EventEnvelope::new(subject, 1, correlation_id, payload)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_kinds_round_trip_through_text_and_json() {
        for kind in [FindingKind::AllocationMissingOnNode, FindingKind::OrphanNodeUser] {
            assert_eq!(FindingKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).ok(), Some(serde_json::json!(kind.as_str())));
        }
        assert_eq!(FindingKind::parse("orphan"), None);
    }
}

//! Creating allocations. Concurrent creates share a transaction (group commit): one
//! batch reads every SKU, key, balance and cap it needs in a statement each, places
//! all its allocations on GPU slots together, and writes them (each with its first
//! transition), their events and audit rows with one INSERT each. A lone create is a
//! batch of one. The checks and their order are those of a single create, request by
//! request, so a batch answers each one as it would have been answered alone.

use std::collections::{BTreeSet, HashMap};

use gpuaas_inventory::InventoryError;
use gpuaas_inventory::skus::{self, Sku};
use gpuaas_inventory::slots::{self, PlacementStrategy, Reservation, Wanted};
use gpuaas_kernel::{Timestamp, new_id};
use gpuaas_policy::keys;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Connection, Dialect, GroupCommit};

use crate::service::{
    COLUMNS, Journal, MAX_GPU_COUNT, MAX_NAME_LEN, MAX_SSH_KEYS, Record, created_transition, record_from_row, to_json,
    transitions_json, username_for, validate_text,
};
use crate::ssh_keys::{SshKey, keys_by_id, owned_keys};
use crate::{Actor, Allocation, AllocationError, AllocationStatus, Allocations, NewAllocation};

/// Most creates in one transaction.
const MAX_BATCH: usize = 64;
/// Allocation rows per INSERT (22 parameters each).
const ROWS_PER_INSERT: usize = 64;
/// Create batches in flight at once on PostgreSQL. Placements skip the nodes another
/// batch holds rather than wait for them, so batches run side by side; with two turns
/// a create under load mostly waited for a turn and then for its own batch (ADR 026).
const TURNS_ON_POSTGRES: usize = 4;

/// A create waiting for its batch.
pub(crate) struct CreateRequest {
    actor: Actor,
    tenant_id: String,
    project_id: String,
    user_id: String,
    sku: String,
    gpu_count: i64,
    ssh_key_ids: Vec<String>,
    name: Option<String>,
}

/// The queue creates wait in for their batch.
pub(crate) type CreateQueue = GroupCommit<CreateRequest, Result<Allocation, AllocationError>>;

pub(crate) fn queue(dialect: Dialect) -> CreateQueue {
    GroupCommit::for_writes_with(dialect, TURNS_ON_POSTGRES, MAX_BATCH)
}

/// What one request of a batch came to.
enum Outcome {
    Created(Box<Allocation>),
    Refused(AllocationError),
    /// Not decided in the batch: it found no room on the nodes the batch could lock,
    /// or the batch's transaction failed. It is taken again alone.
    Alone,
}

/// What creates read from policy, once per batch.
struct Settings {
    /// The per-user, per-project and per-tenant caps on live allocations.
    caps: [i64; 3],
    strategy: PlacementStrategy,
}

/// Checks that need no database, before a request joins a batch.
fn validate(new: &NewAllocation<'_>) -> Result<(), AllocationError> {
    if !(1..=MAX_GPU_COUNT).contains(&new.gpu_count) {
        return Err(AllocationError::invalid("gpu_count", format!("must be 1 to {MAX_GPU_COUNT}")));
    }
    if new.ssh_key_ids.is_empty() || new.ssh_key_ids.len() > MAX_SSH_KEYS {
        return Err(AllocationError::invalid("ssh_key_ids", format!("give 1 to {MAX_SSH_KEYS} SSH key ids")));
    }
    let mut distinct = new.ssh_key_ids.to_vec();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != new.ssh_key_ids.len() {
        return Err(AllocationError::invalid("ssh_key_ids", "lists a key twice"));
    }
    if let Some(name) = new.name {
        validate_text("name", name, MAX_NAME_LEN)?;
    }
    validate_text("sku", new.sku, 256)
}

impl Allocations {
    /// Validates, checks money and caps, places the allocation on GPU slots and records
    /// it as `requested` with its `gpuaas.provisioning.requested` event, atomically
    /// (in a transaction shared with concurrent creates).
    pub async fn create(&self, actor: &Actor, new: &NewAllocation<'_>) -> Result<Allocation, AllocationError> {
        validate(new)?;
        let request = CreateRequest {
            actor: actor.clone(),
            tenant_id: new.tenant_id.to_owned(),
            project_id: new.project_id.to_owned(),
            user_id: new.user_id.to_owned(),
            sku: new.sku.to_owned(),
            gpu_count: new.gpu_count,
            ssh_key_ids: new.ssh_key_ids.to_vec(),
            name: new.name.map(str::to_owned),
        };
        let this = self.clone();
        let run = move |batch: Vec<CreateRequest>| {
            let this = this.clone();
            async move { this.create_batch(batch).await }
        };
        self.creates().submit(request, run).await.unwrap_or_else(|| {
            Err(AllocationError::Corrupt("the batch holding this create stopped without an answer".into()))
        })
    }

    async fn create_batch(&self, requests: Vec<CreateRequest>) -> Vec<Result<Allocation, AllocationError>> {
        if let [request] = requests.as_slice() {
            return vec![self.create_alone(request).await];
        }
        let outcomes = match self.create_together(&requests).await {
            Ok(outcomes) => {
                if outcomes.iter().any(|outcome| matches!(outcome, Outcome::Created(_))) {
                    self.wake_runner();
                }
                outcomes
            }
            Err(error) => {
                tracing::debug!(%error, creates = requests.len(), "batched creates failed; taking them one by one");
                requests.iter().map(|_| Outcome::Alone).collect()
            }
        };
        let mut results = Vec::with_capacity(requests.len());
        for (request, outcome) in requests.iter().zip(outcomes) {
            results.push(match outcome {
                Outcome::Created(allocation) => Ok(*allocation),
                Outcome::Refused(error) => Err(error),
                Outcome::Alone => self.create_alone(request).await,
            });
        }
        results
    }

    async fn create_alone(&self, request: &CreateRequest) -> Result<Allocation, AllocationError> {
        let outcome = self.create_together(std::slice::from_ref(request)).await?.pop();
        match outcome {
            Some(Outcome::Created(allocation)) => {
                self.wake_runner();
                Ok(*allocation)
            }
            Some(Outcome::Refused(error)) => Err(error),
            // A batch of one places with `slots::reserve`, which decides.
            Some(Outcome::Alone) | None => Err(AllocationError::Corrupt("a lone create was left undecided".into())),
        }
    }

    async fn create_settings(&self) -> Result<Settings, AllocationError> {
        let policy = self.policy();
        Ok(Settings {
            caps: [
                policy.get(keys::ALLOCATIONS_MAX_CONCURRENT_PER_USER).await?,
                policy.get(keys::ALLOCATIONS_MAX_CONCURRENT_PER_PROJECT).await?,
                policy.get(keys::ALLOCATIONS_MAX_CONCURRENT_PER_TENANT).await?,
            ],
            strategy: match policy.get(keys::ALLOCATIONS_PLACEMENT_STRATEGY).await?.as_str() {
                "spread" => PlacementStrategy::Spread,
                _ => PlacementStrategy::BestFit,
            },
        })
    }

    /// The requests in one transaction, answered in order. An error means nothing was
    /// written.
    async fn create_together(&self, requests: &[CreateRequest]) -> Result<Vec<Outcome>, AllocationError> {
        let settings = self.create_settings().await?;
        let store = self.store();
        let dialect = store.dialect();
        let mut tx = store.begin().await?;

        let mut skus: HashMap<&str, Option<Sku>> = HashMap::new();
        for request in requests {
            if !skus.contains_key(request.sku.as_str()) {
                let sku = match skus::resolve(&mut tx, &request.sku).await {
                    Ok(sku) => Some(sku),
                    Err(InventoryError::Invalid { .. }) => None,
                    Err(error) => return Err(error.into()),
                };
                skus.insert(&request.sku, sku);
            }
        }
        let key_ids: BTreeSet<&str> =
            requests.iter().flat_map(|request| request.ssh_key_ids.iter().map(String::as_str)).collect();
        let found_keys = keys_by_id(&mut tx, &key_ids.into_iter().collect::<Vec<_>>()).await?;
        let tenants: Vec<&str> =
            requests.iter().map(|request| request.tenant_id.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
        // Creates of one tenant queue behind each other on PostgreSQL, so two racing
        // requests cannot both pass a cap with one slot left (SQLite's write lock
        // already serializes them).
        if dialect == Dialect::Postgres {
            lock_tenants(&mut tx, &tenants).await?;
        }
        let balances = gpuaas_billing::balances_in(&mut tx, &tenants).await?;
        let mut live = LiveCounts::read(&mut tx, &tenants).await?;

        // Each request's checks, in a single create's order; the ones that pass wait
        // for placement.
        let mut outcomes: Vec<Option<Outcome>> = requests.iter().map(|_| None).collect();
        let mut passed: Vec<Passed<'_>> = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            let sku = skus.get(request.sku.as_str()).and_then(Option::as_ref);
            match check(request, sku, &found_keys, &balances, &mut live, &settings) {
                Ok((sku, keys)) => {
                    passed.push(Passed { index, id: new_id().to_string(), sku, keys, reservation: None });
                }
                Err(error) => outcomes[index] = Some(Outcome::Refused(error)),
            }
        }

        let alone = requests.len() == 1;
        let mut placed_any = false;
        let by_sku: BTreeSet<&str> = passed.iter().map(|pass| pass.sku.id.as_str()).collect();
        for sku_id in by_sku {
            let mine: Vec<usize> = (0..passed.len()).filter(|&at| passed[at].sku.id == sku_id).collect();
            let reservations = if alone {
                let pass = &passed[mine[0]];
                let count = requests[pass.index].gpu_count;
                vec![slots::reserve(&mut tx, dialect, sku_id, count, &pass.id, settings.strategy).await?]
            } else {
                let wanted: Vec<Wanted<'_>> = mine
                    .iter()
                    .map(|&at| Wanted {
                        allocation_id: &passed[at].id,
                        gpu_count: requests[passed[at].index].gpu_count,
                    })
                    .collect();
                slots::reserve_many(&mut tx, dialect, sku_id, &wanted, settings.strategy).await?
            };
            for (at, reservation) in mine.into_iter().zip(reservations) {
                match reservation {
                    Some(reservation) => {
                        passed[at].reservation = Some(reservation);
                        placed_any = true;
                    }
                    None if alone => {
                        let name = passed[at].sku.name.clone();
                        outcomes[passed[at].index] = Some(Outcome::Refused(AllocationError::SkuUnavailable(name)));
                    }
                    None => outcomes[passed[at].index] = Some(Outcome::Alone),
                }
            }
        }
        // The caps above counted requests that are now to be taken alone; one refused
        // for a cap after them is taken alone too, against the counts of the time.
        if outcomes.iter().any(|outcome| matches!(outcome, Some(Outcome::Alone))) {
            for outcome in &mut outcomes {
                if matches!(outcome, Some(Outcome::Refused(AllocationError::LimitReached(_)))) {
                    *outcome = Some(Outcome::Alone);
                }
            }
        }
        if !placed_any {
            tx.rollback().await?;
            return Ok(outcomes.into_iter().map(|outcome| outcome.unwrap_or(Outcome::Alone)).collect());
        }

        let placed: Vec<&Passed<'_>> = passed.iter().filter(|pass| pass.reservation.is_some()).collect();
        let now = Timestamp::now();
        let mut records = insert_allocations(&mut tx, requests, &placed, now).await?;
        let journal = Journal::default();
        let mut audit = Vec::with_capacity(placed.len());
        for pass in &placed {
            let request = &requests[pass.index];
            let record =
                records.get(&pass.id).ok_or_else(|| AllocationError::Corrupt(format!("{} not inserted", pass.id)))?;
            journal.record_created(record, &request.actor)?;
            audit.push(request.actor.entry(
                "allocation.create",
                self.resource_id(&pass.id),
                serde_json::json!({
                    "sku_id": pass.sku.id, "gpu_count": request.gpu_count, "node_id": record.view.node_id,
                    "gpu_indices": record.view.gpu_indices, "project_id": request.project_id,
                }),
            ));
        }
        journal.flush(&mut tx).await?;
        gpuaas_audit::record_many(&mut tx, &audit).await?;
        tx.commit().await?;
        for pass in &placed {
            if let Some(record) = records.remove(&pass.id) {
                outcomes[pass.index] = Some(Outcome::Created(Box::new(record.view)));
            }
        }
        Ok(outcomes.into_iter().map(|outcome| outcome.unwrap_or(Outcome::Alone)).collect())
    }
}

/// A request that passed its checks, with what placement gave it.
struct Passed<'a> {
    /// Its position in the batch.
    index: usize,
    /// The new allocation's id.
    id: String,
    sku: &'a Sku,
    keys: Vec<SshKey>,
    reservation: Option<Reservation>,
}

/// One request's checks, in a single create's order: the SKU, its size, the keys, the
/// balance, then the caps, which count the request once it passes them.
fn check<'a>(
    request: &CreateRequest,
    sku: Option<&'a Sku>,
    found_keys: &HashMap<String, SshKey>,
    balances: &HashMap<String, gpuaas_billing::Balance>,
    live: &mut LiveCounts,
    settings: &Settings,
) -> Result<(&'a Sku, Vec<SshKey>), AllocationError> {
    let sku = sku.ok_or_else(|| InventoryError::invalid("sku", "no such SKU"))?;
    if !sku.active {
        return Err(AllocationError::SkuUnavailable(sku.name.clone()));
    }
    if request.gpu_count > sku.gpus_per_node {
        return Err(AllocationError::invalid(
            "gpu_count",
            format!("SKU {} has {} GPUs per node", sku.name, sku.gpus_per_node),
        ));
    }
    let ids: Vec<&str> = request.ssh_key_ids.iter().map(String::as_str).collect();
    let keys = owned_keys(found_keys, &request.user_id, &ids)?;
    let balance = balances.get(&request.tenant_id);
    let amount = balance.map_or(0, |balance| balance.amount_minor);
    if amount <= 0 {
        return Err(AllocationError::InsufficientBalance {
            balance_minor: amount,
            currency: balance.and_then(|balance| balance.currency.clone()).unwrap_or_else(|| sku.currency.clone()),
        });
    }
    live.admit(request, &settings.caps)?;
    Ok((sku, keys))
}

/// Live allocations per user, project and tenant (users and projects within their
/// tenant), as the batch's transaction saw them plus the batch's own.
struct LiveCounts {
    by_user: HashMap<(String, String), i64>,
    by_project: HashMap<(String, String), i64>,
    by_tenant: HashMap<String, i64>,
}

impl LiveCounts {
    async fn read(connection: &mut Connection, tenants: &[&str]) -> Result<Self, AllocationError> {
        let batch = gpuaas_store::Padded::new(tenants, gpuaas_store::LIST_PADDING_MOST);
        let placeholders = batch.placeholders(1);
        let sql = format!(
            "SELECT tenant_id, project_id, user_id, live FROM allocation_live_counts WHERE tenant_id IN ({})",
            placeholders
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (tenant, _) in batch.rows() {
            query = query.bind(*tenant);
        }
        let mut counts = Self { by_user: HashMap::new(), by_project: HashMap::new(), by_tenant: HashMap::new() };
        for row in query.fetch_all(&mut *connection).await? {
            let tenant: String = row.try_get("tenant_id")?;
            let project: String = row.try_get("project_id")?;
            let user: String = row.try_get("user_id")?;
            let live: i64 = row.try_get("live")?;
            *counts.by_user.entry((tenant.clone(), user)).or_default() += live;
            *counts.by_project.entry((tenant.clone(), project)).or_default() += live;
            *counts.by_tenant.entry(tenant).or_default() += live;
        }
        Ok(counts)
    }

    /// Refuses the request when any of its scopes is at its cap; otherwise counts it.
    fn admit(&mut self, request: &CreateRequest, caps: &[i64; 3]) -> Result<(), AllocationError> {
        let user_key = (request.tenant_id.clone(), request.user_id.clone());
        let project_key = (request.tenant_id.clone(), request.project_id.clone());
        let counts = [
            self.by_user.get(&user_key).copied().unwrap_or(0),
            self.by_project.get(&project_key).copied().unwrap_or(0),
            self.by_tenant.get(&request.tenant_id).copied().unwrap_or(0),
        ];
        for ((scope, cap), count) in ["user", "project", "tenant"].iter().zip(caps).zip(counts) {
            if count >= *cap {
                return Err(AllocationError::LimitReached(format!(
                    "this {scope} already holds {count} live allocations (the limit is {cap}); release one first"
                )));
            }
        }
        *self.by_user.entry(user_key).or_default() += 1;
        *self.by_project.entry(project_key).or_default() += 1;
        *self.by_tenant.entry(request.tenant_id.clone()).or_default() += 1;
        Ok(())
    }
}

/// Takes the creates lock of each tenant, in one statement and in the order of their
/// keys, so two batches sharing tenants cannot deadlock.
async fn lock_tenants(connection: &mut Connection, tenants: &[&str]) -> Result<(), AllocationError> {
    let batch = gpuaas_store::Padded::new(tenants, gpuaas_store::LIST_PADDING_MOST);
    let sql = format!(
        "SELECT pg_advisory_xact_lock(lock_key) FROM (SELECT DISTINCT hashtext(tenant_id) AS lock_key \
         FROM (VALUES {}) AS batch (tenant_id) ORDER BY lock_key OFFSET 0) AS keys",
        batch.value_rows(1, 1)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (tenant, _) in batch.rows() {
        query = query.bind(*tenant);
    }
    query.execute(&mut *connection).await?;
    Ok(())
}

/// Inserts the placed allocations as `requested`; returns their stored rows by id.
async fn insert_allocations(
    connection: &mut Connection,
    requests: &[CreateRequest],
    placed: &[&Passed<'_>],
    now: Timestamp,
) -> Result<HashMap<String, Record>, AllocationError> {
    let mut records = HashMap::with_capacity(placed.len());
    for chunk in placed.chunks(ROWS_PER_INSERT) {
        let batch = gpuaas_store::Padded::new(chunk, ROWS_PER_INSERT);
        let sql = format!(
            "INSERT INTO allocations (id, tenant_id, project_id, user_id, name, sku_id, gpu_count, status, node_id, \
             gpu_indices, ssh_host, ssh_username, authorized_keys, ssh_key_ids, cpu_millicores, memory_bytes, \
             price_per_gpu_hour_minor, currency, correlation_id, workflow_due_at, created_at, updated_at, \
             transitions) {} RETURNING {COLUMNS}",
            batch.insert_rows(1, 23)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (pass, padding) in batch.rows() {
            let request = &requests[pass.index];
            let reservation = pass
                .reservation
                .as_ref()
                .ok_or_else(|| AllocationError::Corrupt(format!("{} has no reservation", pass.id)))?;
            let sku = pass.sku;
            let share = |total: i64| total.saturating_mul(request.gpu_count) / sku.gpus_per_node.max(1);
            let authorized: Vec<&str> = pass.keys.iter().map(|key| key.public_key.as_str()).collect();
            query = query
                .bind((!padding).then(|| pass.id.clone()))
                .bind(request.tenant_id.clone())
                .bind(request.project_id.clone())
                .bind(request.user_id.clone())
                .bind(request.name.clone())
                .bind(sku.id.clone())
                .bind(request.gpu_count)
                .bind(AllocationStatus::Requested.as_str())
                .bind(reservation.node_id.clone())
                .bind(to_json(&reservation.gpu_indices)?)
                .bind(reservation.hostname.clone())
                .bind(username_for(&pass.id))
                .bind(to_json(&authorized)?)
                .bind(to_json(&request.ssh_key_ids)?)
                .bind(share(sku.vcpus_per_node).saturating_mul(1000).max(1000))
                .bind(share(sku.memory_bytes_per_node))
                .bind(sku.price_per_gpu_hour_minor)
                .bind(sku.currency.clone())
                .bind(request.actor.correlation_id.clone())
                // Due for its first workflow step at once; created and updated now.
                .bind(now.as_micros())
                .bind(now.as_micros())
                .bind(now.as_micros())
                .bind(transitions_json(&[created_transition(&request.actor, now)])?);
        }
        for row in query.fetch_all(&mut *connection).await? {
            let record = record_from_row(&row)?;
            records.insert(record.view.id.clone(), record);
        }
    }
    Ok(records)
}

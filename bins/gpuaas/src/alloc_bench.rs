//! `gpuaas bench allocations`: the allocation service under load, in process (no
//! HTTP), on a throwaway database: a registered and enrolled fleet, concurrent clients
//! creating and releasing, the workflow runner, and an in-process fleet answering its
//! node tasks. Then one accrual cycle over many open usage records.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gpuaas_allocations::{Actor, AllocationError, AllocationStatus, Allocations, NewAllocation};
use gpuaas_billing::{EntryType, NewEntry, NewUsageRecord};
use gpuaas_inventory::nodes::NewNode;
use gpuaas_inventory::{NewSku, NodePlane, NodePlaneConfig};
use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::TaskResult;
use gpuaas_nodeagent_protocol::wire::EnrollRequest;
use gpuaas_policy::{PolicyClient, keys};
use gpuaas_store::{PoolSettings, Store};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKPvtWANiUEyI5Bec7Kq7kXQjbukv2J9T2+pusBj/hiE bench";

/// What `gpuaas bench allocations` runs.
#[derive(Debug, Clone)]
pub struct AllocationBench {
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub clients: u32,
    pub seconds: u64,
    /// Load before the measured seconds, after which PostgreSQL's statistics are
    /// taken (see [`bench`]).
    pub warmup: Duration,
    /// Live allocations a client keeps before releasing its oldest.
    pub per_client: usize,
    pub accrual_records: u32,
    /// Database connections, the production pool's size unless chosen.
    pub pool_size: u32,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1)).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub async fn bench(database_url: &str, settings: &AllocationBench, pki_dir: &std::path::Path) -> anyhow::Result<()> {
    // SQLite has one writer: 64 clients queue for it far longer than the default wait.
    let pool = PoolSettings { max_connections: settings.pool_size, acquire_timeout: Duration::from_secs(300) };
    let store = Store::connect(database_url, &pool).await?;
    store.migrate(&crate::migrations()).await?;
    let policy = PolicyClient::new(store.clone(), PolicyClient::DEFAULT_CACHE_TTL);
    for (key, value) in [
        (keys::ALLOCATIONS_MAX_CONCURRENT_PER_USER, 1_000_000),
        (keys::ALLOCATIONS_MAX_CONCURRENT_PER_PROJECT, 1_000_000),
        (keys::ALLOCATIONS_MAX_CONCURRENT_PER_TENANT, 1_000_000),
        (keys::BILLING_WINDOW_SECONDS, 60),
    ] {
        policy.set(key, &value).await?;
    }
    let ca = gpuaas_pki::BuiltinCa::load_or_create(pki_dir)?;
    let signer = gpuaas_nodeagent_protocol::TaskSigner::new(gpuaas_pki::load_or_create_signing_key(
        &pki_dir.join(crate::runtime::TASK_SIGNING_KEY_FILE),
    )?);
    let nodes = NodePlane::new(
        store.clone(),
        policy.clone(),
        Arc::new(ca),
        signer,
        NodePlaneConfig { internal_url: "https://127.0.0.1:8443".into(), resource_ids: Default::default() },
    );
    let allocations = Allocations::new(store.clone(), policy.clone(), nodes.clone(), Default::default());

    let started = Instant::now();
    let fleet = build_fleet(&nodes, settings).await?;
    println!(
        "fleet: {} nodes × {} GPUs registered and enrolled in {:.1} s",
        fleet.len(),
        settings.gpus_per_node,
        started.elapsed().as_secs_f64()
    );
    let clients = build_clients(&store, &allocations, settings.clients).await?;

    let stop = CancellationToken::new();
    let runner = tokio::spawn(crate::runtime::workflow_loop(allocations.clone(), stop.clone()));
    let answering = tokio::spawn(answer_tasks(nodes.clone(), stop.clone()));
    let latencies = Arc::new(Latencies::default());
    let refused = Arc::new(AtomicU64::new(0));
    let released = Arc::new(AtomicU64::new(0));
    // The tables start empty and PostgreSQL plans them without statistics until
    // autovacuum looks (once a minute), while an installation in service has them. So
    // the clients run a warm-up first, statistics are taken under that load, and only
    // what starts after it is measured.
    let measure_from = Instant::now() + settings.warmup;
    let deadline = measure_from + Duration::from_secs(settings.seconds);
    let mut workers = tokio::task::JoinSet::new();
    for client in clients {
        let allocations = allocations.clone();
        let latencies = latencies.clone();
        let refused = refused.clone();
        let released = released.clone();
        let pace = Pace { per_client: settings.per_client.max(1), measure_from };
        workers.spawn(async move {
            run_client(&allocations, &client, deadline, pace, &latencies, &refused, &released).await
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let measured_since = Timestamp::now();
    let cpu_before = CpuSample::take();
    if !settings.warmup.is_zero() && store.dialect() == gpuaas_store::Dialect::Postgres {
        gpuaas_store::sqlx::query("ANALYZE").execute(store.pool()).await?;
    }
    while let Some(result) = workers.join_next().await {
        result??;
    }
    let run_seconds = measure_from.elapsed().as_secs_f64();
    let cpu_after = CpuSample::take();
    // Let the workflow finish what is in flight before measuring it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    runner.await??;
    answering.await??;

    let release_latencies = Latencies::sorted(&latencies.releases).await;
    let latencies = Latencies::sorted(&latencies.creates).await;
    let rows: Vec<(i64, i64)> = gpuaas_store::sqlx::query_as(
        "SELECT created_at, active_at FROM allocations WHERE active_at IS NOT NULL AND created_at >= $1",
    )
    .bind(measured_since.as_micros())
    .fetch_all(store.pool())
    .await?;
    let mut to_active: Vec<Duration> = rows
        .iter()
        .map(|(created, active)| Duration::from_micros(u64::try_from(active - created).unwrap_or(0)))
        .collect();
    to_active.sort();
    println!(
        "allocations on {} ({} connections): {} clients for {:.0} s after a {} s warm-up over {} nodes × {} GPUs \
         (service layer, in process; each client holds {} and waits for its oldest to be active)",
        store.dialect().name(),
        settings.pool_size,
        settings.clients,
        run_seconds,
        settings.warmup.as_secs(),
        settings.nodes,
        settings.gpus_per_node,
        settings.per_client,
    );
    println!(
        "  creates: {} ({:.0}/s), refused (no capacity): {}, released: {}",
        latencies.len(),
        latencies.len() as f64 / run_seconds,
        refused.load(Ordering::Relaxed),
        released.load(Ordering::Relaxed)
    );
    println!(
        "  create latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    println!(
        "  release latency: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&release_latencies, 0.50),
        percentile(&release_latencies, 0.99)
    );
    println!(
        "  requested → active ({} allocations): p50 {:.0} ms, p99 {:.0} ms",
        to_active.len(),
        percentile(&to_active, 0.50),
        percentile(&to_active, 0.99)
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!("  {}", cpu_before_after(&before, &after, latencies.len(), run_seconds));
    }

    accrual(&store, &policy, settings.accrual_records).await?;
    store.close().await;
    Ok(())
}

/// The machine's CPU counters (Linux `/proc`), to tell what the measured seconds cost
/// and how much of the machine they had: on a shared host, time stolen by other guests
/// lowers every figure above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuSample {
    cores: u64,
    /// Ticks of all cores: busy (user, nice, system, irq, softirq), stolen, in all.
    busy: u64,
    steal: u64,
    total: u64,
    /// Ticks this process ran (user and system).
    own: u64,
}

impl CpuSample {
    fn take() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Self::parse(&stat, &own)
    }

    fn parse(stat: &str, own: &str) -> Option<Self> {
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks.try_into().ok()?;
        let cores = stat.lines().filter(|line| line.starts_with("cpu") && !line.starts_with("cpu ")).count() as u64;
        // The fields after the command's closing parenthesis, from the state on:
        // utime and stime are the 12th and 13th.
        let fields: Vec<&str> = own.rsplit_once(") ")?.1.split_whitespace().collect();
        let own = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            cores: cores.max(1),
            busy: user + nice + system + irq + softirq,
            steal,
            total: user + nice + system + idle + iowait + irq + softirq + steal,
            own,
        })
    }
}

/// What the measured run cost in CPU, per create: the whole machine's (this process,
/// its clients and simulated fleet, and the database when it runs here) and this
/// process's, with the share of the machine stolen by other guests. Core-seconds come
/// from the tick counts themselves (all cores tick together), so no clock rate is
/// assumed.
fn cpu_before_after(before: &CpuSample, after: &CpuSample, creates: usize, seconds: f64) -> String {
    let total = after.total.saturating_sub(before.total).max(1) as f64;
    let busy = after.busy.saturating_sub(before.busy) as f64 / total;
    let steal = after.steal.saturating_sub(before.steal) as f64 / total;
    // A process's own count goes on while its core is stolen (the machine's busy count
    // does not), so it is scaled down by the machine's stolen share of the time it was
    // not idle.
    let not_idle = busy + steal;
    let own = after.own.saturating_sub(before.own) as f64 / total * if not_idle > 0.0 { busy / not_idle } else { 1.0 };
    let cores = after.cores as f64;
    // A share of all ticks is that share of every core for the whole run.
    let wall = |share: f64| share * cores;
    let per_create = |share: f64| share * cores * seconds * 1000.0 / creates.max(1) as f64;
    format!(
        "CPU: {:.2} of {} cores busy ({:.0}% of the machine stolen by other guests); {:.2} of them this process; \
         per create (and its release) {:.1} core-ms in all, {:.1} in this process",
        wall(busy),
        after.cores,
        steal * 100.0,
        wall(own),
        per_create(busy),
        per_create(own),
    )
}

/// Registers and enrolls the fleet through the node plane, as agents would.
async fn build_fleet(nodes: &NodePlane, settings: &AllocationBench) -> anyhow::Result<Vec<String>> {
    let actor = Actor::system();
    let sku = NewSku {
        name: "bench-gpu".into(),
        display_name: None,
        gpu_model: "Simulated H100 80GB".into(),
        gpus_per_node: i64::from(settings.gpus_per_node),
        gpu_memory_mib: 81_559,
        vcpus_per_node: 96,
        memory_bytes_per_node: 1 << 40,
        price_per_gpu_hour_minor: 250,
        currency: "USD".into(),
    };
    nodes.create_sku(&actor, &sku).await?;
    let mut ids = Vec::with_capacity(settings.nodes as usize);
    for index in 0..settings.nodes {
        let hostname = format!("bench-node-{index:05}.invalid");
        let new = NewNode { hostname: hostname.clone(), sku: "bench-gpu".into(), onboarding_mode: None };
        let registered = nodes.register_node(&actor, &new).await?;
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::new(vec![hostname.clone()])?.serialize_request(&key)?;
        let request = EnrollRequest {
            token: registered.enrollment.token,
            csr_pem: csr.pem()?,
            hostname,
            agent_version: "bench".into(),
            protocol_version: gpuaas_nodeagent_protocol::PROTOCOL_VERSION,
        };
        nodes.enroll(&request, "bench").await?;
        ids.push(registered.node.id);
    }
    Ok(ids)
}

/// Credit enough for the whole run.
fn credit(tenant_id: &str) -> NewEntry<'_> {
    NewEntry {
        tenant_id,
        entry_type: EntryType::AdminCredit,
        amount_minor: 1_000_000_000,
        currency: "USD",
        idempotency_key: "bench-credit",
        reference_type: "bench",
        reference_id: "bench",
        correlation_id: "bench",
        created_by: "bench",
        description: None,
    }
}

/// The statuses a client waits through before releasing.
const PROVISIONING: &[AllocationStatus] = &[AllocationStatus::Requested, AllocationStatus::Provisioning];

/// How long one wait for an allocation to be active lasts.
const ACTIVE_WAIT: Duration = Duration::from_secs(10);

struct Client {
    tenant: String,
    project: String,
    user: String,
    keys: Vec<String>,
}

/// One tenant, project and user per client, each with a key and plenty of credit.
async fn build_clients(store: &Store, allocations: &Allocations, count: u32) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count as usize);
    for index in 0..count {
        let client = Client {
            tenant: format!("bench-tenant-{index}"),
            project: format!("bench-project-{index}"),
            user: format!("bench-user-{index}"),
            keys: Vec::new(),
        };
        let key = allocations.add_ssh_key(&Actor::system(), &client.user, "bench", SSH_KEY).await?;
        let mut tx = store.begin().await?;
        gpuaas_billing::post(&mut tx, store.dialect(), &credit(&client.tenant), 100).await?;
        tx.commit().await?;
        clients.push(Client { keys: vec![key.id], ..client });
    }
    Ok(clients)
}

/// Where clients put the latencies they measured.
#[derive(Default)]
struct Latencies {
    creates: Mutex<Vec<Duration>>,
    releases: Mutex<Vec<Duration>>,
}

impl Latencies {
    async fn sorted(measured: &Mutex<Vec<Duration>>) -> Vec<Duration> {
        let mut all = std::mem::take(&mut *measured.lock().await);
        all.sort();
        all
    }
}

/// How a client holds its allocations: `per_client` live at most; then it waits for
/// the oldest to be active, as `gpuaas alloc create --wait` does, and releases it.
#[derive(Debug, Clone, Copy)]
struct Pace {
    per_client: usize,
    /// Creates and releases that start before this are the warm-up's, not counted.
    measure_from: Instant,
}

async fn run_client(
    allocations: &Allocations,
    client: &Client,
    deadline: Instant,
    pace: Pace,
    latencies: &Latencies,
    refused: &AtomicU64,
    released: &AtomicU64,
) -> anyhow::Result<()> {
    let actor = Actor { id: client.user.clone(), ..Actor::system() };
    let mut live: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut mine = Vec::new();
    let mut my_releases = Vec::new();
    let mut turn = 0u64;
    while Instant::now() < deadline {
        turn += 1;
        if live.len() >= pace.per_client
            && let Some(oldest) = live.pop_front()
        {
            // A release attempt on one not yet active would take the write lock only
            // to be refused.
            let status = allocations.wait_while(&oldest, PROVISIONING, ACTIVE_WAIT).await?;
            if status != AllocationStatus::Active {
                // Still provisioning after the wait: looked at again later. One that
                // failed, or that something else is releasing, is no longer this
                // client's to release.
                if PROVISIONING.contains(&status) {
                    live.push_back(oldest);
                }
                continue;
            }
            let started = Instant::now();
            match allocations.release(&actor, &oldest, &client.tenant).await {
                Ok(_) => {
                    if started >= pace.measure_from {
                        released.fetch_add(1, Ordering::Relaxed);
                        my_releases.push(started.elapsed());
                    }
                }
                // Moved on by someone else since: looked at again on a later turn.
                Err(AllocationError::InvalidTransition { .. }) => live.push_back(oldest),
                Err(error) => return Err(error.into()),
            }
            continue;
        }
        let new = NewAllocation {
            tenant_id: &client.tenant,
            project_id: &client.project,
            user_id: &client.user,
            sku: "bench-gpu",
            gpu_count: 1 + (turn % 2) as i64,
            ssh_key_ids: &client.keys,
            name: None,
        };
        let started = Instant::now();
        let measured = started >= pace.measure_from;
        match allocations.create(&actor, &new).await {
            Ok(allocation) => {
                if measured {
                    mine.push(started.elapsed());
                }
                live.push_back(allocation.id);
            }
            Err(AllocationError::SkuUnavailable(_)) => {
                if measured {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    latencies.creates.lock().await.extend(mine);
    latencies.releases.lock().await.extend(my_releases);
    Ok(())
}

/// The fleet's side, in process: every node with queued tasks has them pulled (signed
/// per delivery, as for a real agent) and answered successfully.
async fn answer_tasks(nodes: NodePlane, stop: CancellationToken) -> anyhow::Result<()> {
    while !stop.is_cancelled() {
        let waiting = nodes.nodes_with_queued_tasks().await?;
        let mut answers = tokio::task::JoinSet::new();
        for node in waiting {
            let nodes = nodes.clone();
            answers.spawn(async move {
                for delivery in nodes.pull_tasks(&node, Duration::ZERO).await? {
                    let result = TaskResult::succeeded(serde_json::json!({}));
                    nodes.complete_task(&node, &delivery.task_id, &result, "bench").await?;
                }
                Ok::<_, gpuaas_inventory::InventoryError>(())
            });
        }
        while let Some(result) = answers.join_next().await {
            result??;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Opens `records` usage records that have run just over one window, then times one
/// accrual cycle (debits and the balance check after it).
async fn accrual(store: &Store, policy: &PolicyClient, records: u32) -> anyhow::Result<()> {
    let window: i64 = policy.get(keys::BILLING_WINDOW_SECONDS).await?;
    let started_at = Timestamp::from_micros(Timestamp::now().as_micros() - (window + 1) * 1_000_000);
    let tenants = 100u32;
    // Funded tenants: the cycle measured is the everyday one, not a mass depletion.
    let names: Vec<String> = (0..tenants).map(|index| format!("accrual-tenant-{index}")).collect();
    let credits: Vec<NewEntry<'_>> = names.iter().map(|tenant| credit(tenant)).collect();
    let mut tx = store.begin().await?;
    gpuaas_billing::post_many(&mut tx, store.dialect(), &credits, 100).await?;
    for index in 0..records {
        let tenant = format!("accrual-tenant-{}", index % tenants);
        let allocation = format!("accrual-allocation-{index}");
        gpuaas_billing::insert_usage_record(
            &mut tx,
            &NewUsageRecord {
                tenant_id: &tenant,
                project_id: "accrual-project",
                allocation_id: &allocation,
                sku_id: "bench-gpu",
                gpu_count: 8,
                price_per_gpu_hour_minor: 250,
                currency: "USD",
                started_at,
                ended_at: None,
                billed_seconds: 0,
                billed_minor: 0,
            },
        )
        .await?;
    }
    tx.commit().await?;
    let cycle = Instant::now();
    let report = crate::runtime::accrual_cycle(store, policy, window).await.context("accrual cycle")?;
    println!(
        "  accrual: {} open usage records ({} tenants) debited in {:.2} s ({} ledger entries, balance check included)",
        report.records,
        report.tenants.len(),
        cycle.elapsed().as_secs_f64(),
        report.entries
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str =
        "cpu  100 10 50 800 5 3 2 30 0 0\ncpu0 50 5 25 400 3 2 1 15 0 0\ncpu1 50 5 25 400 2 1 1 15 0 0\nintr 1\n";
    const OWN: &str = "4242 (gpuaas (bench)) S 1 4242 4242 0 -1 4194560 100 0 0 0 70 20 0 0 20 0 9 0 100 0 0";

    #[test]
    fn cpu_counters_are_read_from_proc() {
        assert_eq!(
            CpuSample::parse(STAT, OWN),
            Some(CpuSample { cores: 2, busy: 165, steal: 30, total: 1000, own: 90 })
        );
        assert_eq!(CpuSample::parse("intr 1\n", OWN), None);
        assert_eq!(CpuSample::parse(STAT, "4242 (gpuaas) S 1"), None);
    }

    #[test]
    fn cpu_per_create_is_the_busy_share_of_every_core_over_the_run() {
        let before = CpuSample { cores: 2, busy: 0, steal: 0, total: 0, own: 0 };
        // 10 s on 2 cores: half the ticks busy (10 core-seconds), an eighth stolen;
        // this process counted 600 ticks, a fifth of them stolen; 1,000 creates.
        let after = CpuSample { cores: 2, busy: 1000, steal: 250, total: 2000, own: 600 };
        let line = cpu_before_after(&before, &after, 1000, 10.0);
        assert!(line.starts_with("CPU: 1.00 of 2 cores busy (12% of the machine stolen"), "{line}");
        assert!(line.contains("0.48 of them this process"), "{line}");
        assert!(line.ends_with("10.0 core-ms in all, 4.8 in this process"), "{line}");
    }
}

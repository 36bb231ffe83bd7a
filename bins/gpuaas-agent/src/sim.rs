//! `gpuaas-agent sim`: many agents in one process, for load-testing the control plane.
//! Each simulated agent is a real one — its own state directory, key, certificate,
//! mTLS client, verifier and nonce cache — with the in-memory [`NoopDriver`] and a
//! declared inventory, so nothing on the host changes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gpuaas_nodeagent_protocol::DeclaredInventory;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info_span, warn};

use crate::enroll::{self, EnrollOptions};
use crate::host::NoopDriver;
use crate::host::inventory::InventoryOptions;
use crate::runtime::{self, AgentOptions, DEFAULT_HEARTBEAT_INTERVAL};
use crate::state::StateDir;

/// Most enrollments in flight at once.
pub const ENROLL_CONCURRENCY: usize = 32;
pub const DEFAULT_SIM_STATE_DIR: &str = "./.gpuaas-sim";
/// Marks which token an agent enrolled with, so a restarted simulator knows which
/// lines of the token file are spent. Only a hash is kept.
const TOKEN_MARK_FILE: &str = "token.sha256";
const BUILTIN_INVENTORY_FILE: &str = "declared-inventory.json";

/// The declaration used when no `--inventory-file` is given.
pub fn builtin_inventory() -> DeclaredInventory {
    DeclaredInventory {
        gpu_model: "Simulated H100 80GB".into(),
        gpu_memory_mib: 81920,
        gpu_count: 8,
        driver_version: None,
        cuda_version: None,
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub count: usize,
    pub server_url: String,
    pub token_file: PathBuf,
    pub state_dir: PathBuf,
    pub inventory_file: Option<PathBuf>,
    /// Extra trusted root for the public URL.
    pub ca_pem: Option<Vec<u8>>,
}

/// The state directory of simulated agent `index`.
pub fn agent_dir(root: &Path, index: usize) -> PathBuf {
    root.join(format!("node-{index:05}"))
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Tokens of the file (one a line; blank lines and `#` comments skipped) whose hash is
/// not in `spent`, in file order.
pub fn unused_tokens(text: &str, spent: &HashSet<String>) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter(|token| !spent.contains(&token_hash(token)))
        .map(str::to_owned)
        .collect()
}

/// Runs the simulator until `shutdown`. Errors are for the operator: a missing token
/// file, too few tokens, no agent enrolled.
pub async fn run_sim(options: SimOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(options.count > 0, "--count must be at least 1");
    let root = StateDir::new(&options.state_dir);
    root.create()?;
    let declared_file = match &options.inventory_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
            DeclaredInventory::parse(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
            path.clone()
        }
        None => {
            let json = serde_json::to_vec_pretty(&builtin_inventory())?;
            root.write(BUILTIN_INVENTORY_FILE, &json)?;
            root.file(BUILTIN_INVENTORY_FILE)
        }
    };
    warn_about_open_file_limit(options.count);

    let dirs: Vec<StateDir> = (0..options.count).map(|index| StateDir::new(agent_dir(root.path(), index))).collect();
    let pending: Vec<usize> = (0..options.count).filter(|&index| !dirs[index].is_enrolled()).collect();
    let already = options.count - pending.len();
    if !pending.is_empty() {
        let text = std::fs::read_to_string(&options.token_file)
            .map_err(|error| anyhow::anyhow!("{}: {error}", options.token_file.display()))?;
        let spent: HashSet<String> = dirs
            .iter()
            .filter_map(|dir| std::fs::read_to_string(dir.file(TOKEN_MARK_FILE)).ok())
            .map(|hash| hash.trim().to_owned())
            .collect();
        let tokens = unused_tokens(&text, &spent);
        anyhow::ensure!(
            tokens.len() >= pending.len(),
            "{} holds {} unused tokens but {} agents need enrolling",
            options.token_file.display(),
            tokens.len(),
            pending.len()
        );
        let client = crate::http::public_client(options.ca_pem.as_deref()).map_err(anyhow::Error::msg)?;
        let failed = enroll_all(&client, &options, &dirs, &pending, tokens, already, &shutdown).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if failed > 0 {
            println!("sim: {failed} of {} enrollments failed", pending.len());
        }
    }

    let enrolled: Vec<usize> = (0..options.count).filter(|&index| dirs[index].is_enrolled()).collect();
    anyhow::ensure!(!enrolled.is_empty(), "no simulated agent is enrolled");
    let mut agents = JoinSet::new();
    for (position, &index) in enrolled.iter().enumerate() {
        let hostname = sim_hostname(index);
        // First heartbeats land evenly over one interval instead of all at once.
        let start_delay = DEFAULT_HEARTBEAT_INTERVAL.mul_f64(position as f64 / enrolled.len() as f64);
        let options = AgentOptions {
            state_dir: dirs[index].clone(),
            driver: Arc::new(NoopDriver::default()),
            inventory: Arc::new(InventoryOptions {
                declared_file: Some(declared_file.clone()),
                hostname: Some(hostname.clone()),
            }),
            common_name: hostname.clone(),
            start_delay,
        };
        let span = info_span!("agent", node = %hostname);
        let stop = shutdown.clone();
        agents.spawn(async move { (index, runtime::run_agent(options, stop).await) }.instrument(span));
    }
    println!("sim: {} agents running", enrolled.len());

    let mut stopped = 0;
    while let Some(joined) = agents.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(error))) => {
                stopped += 1;
                error!(node = %sim_hostname(index), %error, "simulated agent stopped");
            }
            Err(error) => {
                stopped += 1;
                error!(%error, "simulated agent panicked");
            }
        }
    }
    if shutdown.is_cancelled() {
        return Ok(());
    }
    anyhow::bail!("all {stopped} simulated agents stopped")
}

fn sim_hostname(index: usize) -> String {
    format!("sim-node-{index:05}")
}

/// Enrolls `pending` agents, at most [`ENROLL_CONCURRENCY`] at a time; returns how
/// many failed.
async fn enroll_all(
    client: &reqwest::Client,
    options: &SimOptions,
    dirs: &[StateDir],
    pending: &[usize],
    tokens: Vec<String>,
    already: usize,
    shutdown: &CancellationToken,
) -> usize {
    let total = options.count;
    let done = Arc::new(AtomicUsize::new(already));
    let failed = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(Semaphore::new(ENROLL_CONCURRENCY));
    let mut jobs = JoinSet::new();
    for (&index, token) in pending.iter().zip(tokens) {
        let (client, dir, server) = (client.clone(), dirs[index].clone(), options.server_url.clone());
        let (done, failed, permits) = (done.clone(), failed.clone(), permits.clone());
        jobs.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let hostname = sim_hostname(index);
            let request = EnrollOptions { server_url: server, token, hostname: hostname.clone(), force: false };
            match enroll_patiently(&client, &dir, &request).await {
                Ok(_) => {
                    if let Err(error) = dir.write(TOKEN_MARK_FILE, token_hash(&request.token).as_bytes()) {
                        warn!(node = %hostname, %error, "could not mark the token as spent");
                    }
                    let count = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if count.is_multiple_of(100) || count == total {
                        println!("sim: {count}/{total} enrolled");
                    }
                }
                Err(error) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    error!(node = %hostname, %error, "enrollment failed");
                }
            }
        });
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                jobs.abort_all();
                break;
            }
            joined = jobs.join_next() => if joined.is_none() { break },
        }
    }
    let count = done.load(Ordering::Relaxed);
    if !count.is_multiple_of(100) && count != total {
        println!("sim: {count}/{total} enrolled");
    }
    failed.load(Ordering::Relaxed)
}

/// Each agent keeps about two connections open (the long-poll and a heartbeat); a
/// soft limit of 1024 open files stops a large fleet long before the server does.
fn warn_about_open_file_limit(count: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return };
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|value| value.parse::<usize>().ok());
    let needed = count * 3 + 64;
    if let Some(soft) = soft.filter(|&soft| soft < needed) {
        warn!(soft_limit = soft, needed, "the open file limit is low for this many agents; raise it with `ulimit -n`");
    }
}

/// Most waits for one agent's enrollment while the control plane rate-limits.
const ENROLL_RATE_LIMIT_RETRIES: u32 = 600;

/// Enrolls, waiting and retrying while the control plane answers 429: a whole
/// simulated fleet enrolls from one address and shares its rate limit, as a rack
/// behind one NAT would.
async fn enroll_patiently(
    client: &reqwest::Client,
    dir: &crate::state::StateDir,
    request: &EnrollOptions,
) -> Result<crate::state::AgentState, enroll::EnrollError> {
    let mut attempt = 0;
    loop {
        match enroll::enroll(client, dir, request).await {
            Err(enroll::EnrollError::Refused { status: 429, .. }) if attempt < ENROLL_RATE_LIMIT_RETRIES => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spent_tokens_are_skipped() {
        let spent: HashSet<String> = [token_hash("b")].into_iter().collect();
        let tokens = unused_tokens("a\n# comment\n\n b \nc\n", &spent);
        assert_eq!(tokens, vec!["a".to_owned(), "c".to_owned()]);
    }

    #[test]
    fn the_builtin_declaration_is_valid() {
        let json = serde_json::to_string(&builtin_inventory()).unwrap_or_default();
        assert_eq!(DeclaredInventory::parse(&json), Ok(builtin_inventory()));
        assert_eq!(agent_dir(Path::new("/s"), 7), PathBuf::from("/s/node-00007"));
    }
}

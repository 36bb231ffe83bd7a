//! `gpuaas-agent run`: an enrolled agent's life. Three loops share one mTLS client
//! until shutdown: heartbeats (with the inventory when it is new or asked for), the
//! long-poll for tasks, and certificate renewal.
//!
//! Every delivery goes through [`handle_delivery`]: it is verified (signature, node,
//! window, nonce, type, parameters) before anything touches the host, its nonce is
//! saved before the task runs so a restart cannot be tricked into running it twice,
//! and only then does the [`HostDriver`] see it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::wire::{
    HeartbeatRequest, HeartbeatResponse, MAX_PULL_WAIT_SECONDS, PullResponse, RenewRequest, RenewResponse,
};
use gpuaas_nodeagent_protocol::{
    Inventory, NonceCache, PROTOCOL_VERSION, RefusalCode, SignedTask, Task, TaskOutcome, TaskResult, TaskVerifier,
    is_valid_id, paths, signing,
};
use reqwest::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, jitter};
use crate::enroll::new_key_and_csr;
use crate::host::HostDriver;
use crate::host::inventory::{self, InventoryOptions};
use crate::http::{self, CallError};
use crate::state::{AgentState, StateDir, StateError};

/// The interval the control plane usually names; the simulator spreads its agents'
/// first heartbeats over it before any answer arrived.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Heartbeat intervals are spread by this much either way.
pub const HEARTBEAT_JITTER: f64 = 0.1;
/// An empty pull that came back sooner than this did not wait; pausing keeps a
/// misbehaving server from turning the long-poll into a busy loop.
const MIN_EMPTY_PULL: Duration = Duration::from_secs(1);
/// Attempts to report one result before giving up on it; the control plane hands the
/// task out again when its lease runs out.
const RESULT_ATTEMPTS: u32 = 8;
/// Renewal re-checks the clock at least this often, so a suspended host or a
/// stepped clock does not sleep past the renewal point.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

/// Verifies one delivery and, when it passes, saves the nonce cache with `persist`
/// and executes the task. A refused delivery never reaches `driver`; neither does an
/// accepted one whose nonce could not be saved.
pub fn handle_delivery(
    verifier: &mut TaskVerifier,
    task: &SignedTask,
    now: Timestamp,
    persist: &mut dyn FnMut(&NonceCache) -> Result<(), String>,
    driver: &dyn HostDriver,
    options: &InventoryOptions,
) -> TaskResult {
    match verifier.verify(task, now) {
        Ok(verified) => {
            if let Err(error) = persist(verifier.nonces()) {
                return TaskResult::failed(format!("the delivery could not be recorded, so it was not run: {error}"));
            }
            execute(&verified.task, driver, options)
        }
        Err(refusal) => {
            // These checks come after the verifier remembered the nonce; saving it keeps
            // a restarted agent refusing the same delivery for the same reason.
            if matches!(refusal.code, RefusalCode::UnknownType | RefusalCode::InvalidParams)
                && let Err(error) = persist(verifier.nonces())
            {
                warn!(%error, "could not save the nonce cache");
            }
            TaskResult::refused(refusal)
        }
    }
}

/// Runs a verified task on the host.
pub fn execute(task: &Task, driver: &dyn HostDriver, options: &InventoryOptions) -> TaskResult {
    match task {
        Task::NodeInventory => match inventory::collect(options, driver) {
            Ok(inventory) => match serde_json::to_value(&inventory) {
                Ok(output) => TaskResult::succeeded(output),
                Err(error) => TaskResult::failed(format!("inventory could not be encoded: {error}")),
            },
            Err(error) => TaskResult::failed(error.to_string()),
        },
        Task::NodeHealth => TaskResult::succeeded(inventory::health(options, driver)),
        Task::ProvisionUser(params) => match driver.provision_user(params) {
            Ok(output) => TaskResult::succeeded(output),
            Err(error) => TaskResult::failed(error.to_string()),
        },
        Task::RevokeUser(params) => match driver.revoke_user(params) {
            Ok(output) => TaskResult::succeeded(output),
            Err(error) => TaskResult::failed(error.to_string()),
        },
    }
}

/// A verifier pinned to the key and node id learned at enrollment.
pub fn verifier_for(agent: &AgentState, nonces: NonceCache) -> Result<TaskVerifier, String> {
    let key = signing::verifying_key_from_base64(&agent.task_signing_public_key)
        .map_err(|error| format!("agent.json: task_signing_public_key: {error}"))?;
    Ok(TaskVerifier::new(key, agent.node_id.clone(), nonces))
}

/// The control plane's interval, kept within sane bounds so a bad answer cannot make
/// the agent hammer it or go silent.
pub fn heartbeat_interval(seconds: u64) -> Duration {
    Duration::from_secs(seconds.clamp(1, 3600))
}

/// Whether a heartbeat carries the inventory: on the first heartbeat, whenever its
/// serialized form differs from the last one the control plane took, and whenever the
/// control plane asked for it. Never when none could be collected.
pub fn should_send_inventory(current: Option<&str>, last_sent: Option<&str>, wanted: bool) -> bool {
    current.is_some() && (wanted || current != last_sent)
}

/// When a certificate issued at `issued_at` and expiring at `expires_at` should be
/// renewed: once less than a third of its lifetime remains.
pub fn renewal_due_at(issued_at: Timestamp, expires_at: Timestamp) -> Timestamp {
    expires_at.saturating_sub(expires_at.since(issued_at) / 3)
}

/// How an agent stopped, short of a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The control plane answered 401 or 403: the certificate was revoked or the node
    /// retired. Only a new enrollment helps.
    #[error("the control plane no longer accepts this node ({code}: {message}); enroll it again")]
    ReenrollmentNeeded { status: u16, code: String, message: String },
    #[error("the node certificate expired at {0}; enroll it again")]
    CertificateExpired(Timestamp),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Setup(String),
}

impl AgentError {
    /// The process exit status for this error: 3 asks for re-enrollment.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::ReenrollmentNeeded { .. } | AgentError::CertificateExpired(_) => 3,
            AgentError::State(_) | AgentError::Setup(_) => 1,
        }
    }

    fn from_call(error: CallError) -> Option<Self> {
        match error {
            CallError::Unauthorized { status, code, message } => {
                Some(AgentError::ReenrollmentNeeded { status, code, message })
            }
            _ => None,
        }
    }
}

pub struct AgentOptions {
    pub state_dir: StateDir,
    pub driver: Arc<dyn HostDriver>,
    pub inventory: Arc<InventoryOptions>,
    /// Common name for renewal CSRs (the control plane ignores it).
    pub common_name: String,
    /// Wait before the first heartbeat and pull; the simulator spreads its agents
    /// with it.
    pub start_delay: Duration,
}

/// What the loops share. The client and the agent state change on renewal.
struct Shared {
    state_dir: StateDir,
    driver: Arc<dyn HostDriver>,
    inventory: Arc<InventoryOptions>,
    common_name: String,
    agent: Mutex<AgentState>,
    client: Mutex<Client>,
    verifier: Arc<Mutex<TaskVerifier>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data behind (each
    // critical section is a read or a whole-value swap), so carrying on is safe.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn client(&self) -> Client {
        lock(&self.client).clone()
    }

    fn url(&self, path: &str) -> String {
        http::join(&lock(&self.agent).internal_url, path)
    }

    fn agent(&self) -> AgentState {
        lock(&self.agent).clone()
    }
}

/// Runs an enrolled agent until `shutdown` is cancelled (`Ok`) or it cannot go on.
pub async fn run_agent(options: AgentOptions, shutdown: CancellationToken) -> Result<(), AgentError> {
    let enrollment = options.state_dir.load()?;
    let agent = enrollment.agent;
    if Timestamp::now() >= agent.certificate_expires_at {
        return Err(AgentError::CertificateExpired(agent.certificate_expires_at));
    }
    let nonces = options.state_dir.load_nonces()?;
    let verifier = verifier_for(&agent, nonces).map_err(AgentError::Setup)?;
    let client = http::internal_client(&enrollment.credentials).map_err(AgentError::Setup)?;
    info!(node_id = %agent.node_id, internal_url = %agent.internal_url, "agent starting");
    let shared = Arc::new(Shared {
        state_dir: options.state_dir,
        driver: options.driver,
        inventory: options.inventory,
        common_name: options.common_name,
        agent: Mutex::new(agent),
        client: Mutex::new(client),
        verifier: Arc::new(Mutex::new(verifier)),
    });

    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        () = tokio::time::sleep(options.start_delay) => {}
    }
    let outcome = tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        error = heartbeat_loop(&shared) => Err(error),
        error = pull_loop(&shared) => Err(error),
        error = renewal_loop(&shared) => Err(error),
    };
    if outcome.is_ok() {
        info!("agent stopping");
    }
    outcome
}

/// How often [`enforce_grants_loop`] checks the GPU device files.
pub const GRANT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Restores GPU grants that another root process on the host reset (see
/// [`HostDriver::enforce_gpu_grants`]) until `shutdown`. Runs beside the agent on a
/// real host; the checks are a few `stat`s.
pub async fn enforce_grants_loop(driver: Arc<dyn HostDriver>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(GRANT_CHECK_INTERVAL) => {}
        }
        let driver = driver.clone();
        match tokio::task::spawn_blocking(move || driver.enforce_gpu_grants()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => warn!(%error, "could not check GPU grants"),
            Err(error) => warn!(%error, "GPU grant check did not finish"),
        }
    }
}

async fn collect_inventory(shared: &Arc<Shared>) -> Option<Inventory> {
    let (driver, options) = (shared.driver.clone(), shared.inventory.clone());
    match tokio::task::spawn_blocking(move || inventory::collect(&options, driver.as_ref())).await {
        Ok(Ok(inventory)) => Some(inventory),
        Ok(Err(error)) => {
            warn!(%error, "inventory collection failed; heartbeat goes without it");
            None
        }
        Err(error) => {
            warn!(%error, "inventory collection did not finish");
            None
        }
    }
}

async fn heartbeat_loop(shared: &Arc<Shared>) -> AgentError {
    let mut last_sent: Option<String> = None;
    let mut inventory_wanted = false;
    let mut backoff = Backoff::default();
    loop {
        let inventory = collect_inventory(shared).await;
        let serialized = inventory.as_ref().and_then(|inventory| serde_json::to_string(inventory).ok());
        let send_inventory = should_send_inventory(serialized.as_deref(), last_sent.as_deref(), inventory_wanted);
        let request = HeartbeatRequest {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: PROTOCOL_VERSION,
            inventory: if send_inventory { inventory } else { None },
        };
        let sent = http::send(shared.client().post(shared.url(paths::HEARTBEAT)).json(&request)).await;
        let answer = match sent {
            Ok(response) => http::read_json::<HeartbeatResponse>(response).await,
            Err(error) => Err(error),
        };
        let delay = match answer {
            Ok(answer) => {
                backoff.reset();
                if send_inventory {
                    last_sent = serialized;
                }
                inventory_wanted = answer.inventory_wanted;
                debug!(status = %answer.status, with_inventory = send_inventory, "heartbeat sent");
                jitter(heartbeat_interval(answer.heartbeat_interval_seconds), HEARTBEAT_JITTER)
            }
            Err(error) => {
                if let Some(fatal) = AgentError::from_call(error.clone()) {
                    error!(code = error.code().unwrap_or_default(), "heartbeat refused; the node must enroll again");
                    return fatal;
                }
                warn!(%error, "heartbeat failed");
                backoff.next_delay()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

async fn pull_loop(shared: &Arc<Shared>) -> AgentError {
    let mut backoff = Backoff::default();
    let path = format!("{}?wait_seconds={MAX_PULL_WAIT_SECONDS}", paths::TASKS);
    loop {
        let started = Instant::now();
        let answer = match http::send(shared.client().get(shared.url(&path))).await {
            Ok(response) => http::read_json::<PullResponse>(response).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(answer) => {
                backoff.reset();
                if answer.tasks.is_empty() && started.elapsed() < MIN_EMPTY_PULL {
                    tokio::time::sleep(MIN_EMPTY_PULL).await;
                }
                for task in answer.tasks {
                    if let Err(fatal) = process_delivery(shared, task).await {
                        return fatal;
                    }
                }
            }
            Err(error) => {
                if let Some(fatal) = AgentError::from_call(error.clone()) {
                    error!(code = error.code().unwrap_or_default(), "task pull refused; the node must enroll again");
                    return fatal;
                }
                warn!(%error, "task pull failed");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

async fn process_delivery(shared: &Arc<Shared>, task: SignedTask) -> Result<(), AgentError> {
    let task_id = task.task_id.clone();
    if !is_valid_id(&task_id) {
        // Its id goes into the result URL; one that is not an id cannot be reported.
        warn!("dropping a delivery whose task id is not a valid id");
        return Ok(());
    }
    let task_type = task.task_type.clone();
    let worker = Arc::clone(shared);
    let result = tokio::task::spawn_blocking(move || {
        let mut verifier = lock(&worker.verifier);
        let state_dir = &worker.state_dir;
        let mut persist = |nonces: &NonceCache| state_dir.save_nonces(nonces).map_err(|error| error.to_string());
        handle_delivery(&mut verifier, &task, Timestamp::now(), &mut persist, worker.driver.as_ref(), &worker.inventory)
    })
    .await
    .unwrap_or_else(|error| TaskResult::failed(format!("the task did not finish: {error}")));
    match result.outcome {
        TaskOutcome::Succeeded => info!(%task_id, %task_type, "task succeeded"),
        TaskOutcome::Failed => {
            warn!(%task_id, %task_type, error = result.error.as_deref().unwrap_or(""), "task failed")
        }
        TaskOutcome::Refused => warn!(
            %task_id,
            %task_type,
            refusal = %result.refusal.as_ref().map(ToString::to_string).unwrap_or_default(),
            "task refused"
        ),
    }
    report_result(shared, &task_id, &result).await
}

async fn report_result(shared: &Arc<Shared>, task_id: &str, result: &TaskResult) -> Result<(), AgentError> {
    let mut backoff = Backoff::default();
    for attempt in 1..=RESULT_ATTEMPTS {
        let url = shared.url(&paths::task_result(task_id));
        match http::send(shared.client().post(url).json(result)).await {
            Ok(_) => return Ok(()),
            Err(error) => {
                if let Some(fatal) = AgentError::from_call(error.clone()) {
                    error!(code = error.code().unwrap_or_default(), %task_id, "result refused; the node must enroll again");
                    return Err(fatal);
                }
                if let CallError::Rejected { .. } = error {
                    warn!(%task_id, %error, "the control plane did not take the result");
                    return Ok(());
                }
                warn!(%task_id, %error, attempt, "reporting the result failed");
                if attempt < RESULT_ATTEMPTS {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
    warn!(%task_id, "giving up on reporting the result");
    Ok(())
}

async fn renewal_loop(shared: &Arc<Shared>) -> AgentError {
    let mut backoff = Backoff::default();
    loop {
        let agent = shared.agent();
        let now = Timestamp::now();
        if now >= agent.certificate_expires_at {
            error!(expired_at = %agent.certificate_expires_at, "the node certificate expired");
            return AgentError::CertificateExpired(agent.certificate_expires_at);
        }
        let due = renewal_due_at(agent.certificate_issued_at, agent.certificate_expires_at);
        if now < due {
            tokio::time::sleep(due.since(now).min(RENEWAL_CHECK)).await;
            continue;
        }
        match renew(shared).await {
            Ok(expires_at) => {
                backoff.reset();
                info!(%expires_at, "certificate renewed");
            }
            Err(RenewError::Call(error)) => {
                if let Some(fatal) = AgentError::from_call(error.clone()) {
                    error!(code = error.code().unwrap_or_default(), "renewal refused; the node must enroll again");
                    return fatal;
                }
                warn!(%error, "certificate renewal failed");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(RenewError::Local(error)) => {
                warn!(%error, "certificate renewal failed");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

enum RenewError {
    Call(CallError),
    Local(String),
}

/// A new key and certificate. The new client is built before anything is stored, so
/// an unusable answer leaves the working pair in place.
async fn renew(shared: &Arc<Shared>) -> Result<Timestamp, RenewError> {
    let key = new_key_and_csr(&shared.common_name).map_err(|error| RenewError::Local(error.to_string()))?;
    let request = RenewRequest { csr_pem: key.csr_pem.clone() };
    let response = http::send(shared.client().post(shared.url(paths::CERTIFICATE)).json(&request))
        .await
        .map_err(RenewError::Call)?;
    let answer: RenewResponse = http::read_json(response).await.map_err(RenewError::Call)?;
    let mut credentials = shared.state_dir.load().map_err(|error| RenewError::Local(error.to_string()))?.credentials;
    credentials.key_pem = key.key_pem;
    credentials.cert_pem = answer.certificate_pem;
    let client = http::internal_client(&credentials).map_err(RenewError::Local)?;
    let mut agent = shared.agent();
    agent.certificate_expires_at = answer.certificate_expires_at;
    agent.certificate_issued_at = Timestamp::now();
    let state_dir = shared.state_dir.clone();
    let stored = agent.clone();
    tokio::task::spawn_blocking(move || state_dir.save_renewal(&credentials.key_pem, &credentials.cert_pem, &stored))
        .await
        .map_err(|error| RenewError::Local(error.to_string()))?
        .map_err(|error| RenewError::Local(error.to_string()))?;
    *lock(&shared.client) = client;
    *lock(&shared.agent) = agent;
    Ok(answer.certificate_expires_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inventory_goes_first_on_change_and_on_request() {
        assert!(should_send_inventory(Some("a"), None, false));
        assert!(!should_send_inventory(Some("a"), Some("a"), false));
        assert!(should_send_inventory(Some("b"), Some("a"), false));
        assert!(should_send_inventory(Some("a"), Some("a"), true));
        assert!(!should_send_inventory(None, None, true));
        assert_eq!(heartbeat_interval(0), Duration::from_secs(1));
        assert_eq!(heartbeat_interval(15), Duration::from_secs(15));
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let issued = Timestamp::from_micros(0);
        let expires = Timestamp::from_micros(90_000_000);
        assert_eq!(renewal_due_at(issued, expires), Timestamp::from_micros(60_000_000));
    }
}

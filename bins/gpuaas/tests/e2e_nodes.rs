//! The node plane end to end with the real binaries: `gpuaas up`, then
//! `gpuaas-agent enroll` and `gpuaas-agent run` as an operator would type them.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gpuaas_testkit::free_port;
use tokio::process::{Child, Command};

mod process;

use process::{ProcessLog, Running, agent_binary, gpuaas, start, terminate};

const ADMIN_EMAIL: &str = "ops@e2e.local";
const ADMIN_PASSWORD: &str = "correct horse battery staple";

fn agent(args: &[&str]) -> Command {
    let mut command = Command::new(agent_binary());
    command.args(args).env_remove("GPUAAS_ENROLL_TOKEN").stdin(Stdio::null()).kill_on_drop(true);
    command
}

struct Platform {
    child: Child,
    url: String,
    internal_url: String,
    client: reqwest::Client,
    token: String,
    log: ProcessLog,
    /// Every agent run's stderr, one after another.
    agent_log: ProcessLog,
    _data: tempfile::TempDir,
}

impl Platform {
    async fn start() -> Self {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut command = gpuaas();
        command
            .arg("up")
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .env("GPUAAS_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("GPUAAS_ADMIN_PASSWORD", ADMIN_PASSWORD);
        let Running { child, url, internal_url, log } = start(command).await;
        let client = reqwest::Client::new();
        let login: serde_json::Value = client
            .post(format!("{url}/api/v1/auth/personal/login"))
            .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let token = login["access_token"].as_str().unwrap_or_else(|| panic!("no token: {login}")).to_owned();
        Self { child, url, internal_url, client, token, log, agent_log: ProcessLog::default(), _data: data }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// Registers a node of a fresh SKU and returns (node id, enrollment token).
    async fn register_node(&self, hostname: &str) -> (String, String) {
        let (status, _) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/admin/skus",
                Some(serde_json::json!({
                    "name": "h100-80gb-x8", "gpu_model": "NVIDIA H100 80GB HBM3", "gpus_per_node": 8,
                    "gpu_memory_mib": 81559, "vcpus_per_node": 96, "memory_bytes_per_node": 1_099_511_627_776_i64,
                    "price_per_gpu_hour_minor": 250, "currency": "USD"
                })),
            )
            .await;
        assert!(status == 201 || status == 409, "sku: {status}");
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/admin/nodes",
                Some(serde_json::json!({"hostname": hostname, "sku": "h100-80gb-x8"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["node"]["id"].as_str().unwrap_or_default().to_owned();
        let token = body["enrollment"]["token"].as_str().unwrap_or_default().to_owned();
        (id, token)
    }

    /// Probes the node and follows the task until it finishes. The probe answers 202
    /// when the node has not answered within the policy's wait, which a slow host can
    /// reach; what is checked is the task's outcome, so the test follows it on.
    async fn probe(&self, node_id: &str) -> serde_json::Value {
        let (status, mut task) =
            self.call(reqwest::Method::POST, &format!("/api/v1/admin/nodes/{node_id}/probe"), None).await;
        assert!(status == 200 || status == 202, "{status}: {task}");
        let id = task["id"].as_str().unwrap_or_else(|| panic!("no task id: {task}")).to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(task["status"].as_str(), Some("succeeded" | "failed" | "expired")) {
            assert!(Instant::now() < deadline, "the probe never finished: {task}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (status, page) =
                self.call(reqwest::Method::GET, &format!("/api/v1/admin/nodes/{node_id}/tasks?limit=200"), None).await;
            assert_eq!(status, 200, "{page}");
            if let Some(latest) = page["items"].as_array().and_then(|items| items.iter().find(|t| t["id"] == id)) {
                task = latest.clone();
            }
        }
        task
    }

    /// The ends of the platform's and the agents' logs, for a failure message.
    fn logs(&self) -> String {
        format!("--- platform log ---\n{}\n--- agent log ---\n{}", self.log.tail(60), self.agent_log.tail(30))
    }

    async fn node(&self, id: &str) -> serde_json::Value {
        let (status, body) = self.call(reqwest::Method::GET, &format!("/api/v1/admin/nodes/{id}"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

async fn output(mut command: Command) -> (i32, String) {
    let out = command.output().await.unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn run_agent(state: &Path, inventory: &Path, log: &ProcessLog) -> Child {
    agent(&["run", "--driver", "noop"])
        .arg("--state-dir")
        .arg(state)
        .arg("--inventory-file")
        .arg(inventory)
        .stdout(Stdio::null())
        .stderr(log.stdio())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// SIGTERM, then the exit code (an agent or the platform).
async fn stop(child: Child) -> i32 {
    terminate(child).await.0.code().unwrap_or(-1)
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_enrolls_a_host_sees_its_inventory_probes_it_and_revokes_it() {
    let platform = Platform::start().await;
    let (node_id, token) = platform.register_node("gpu-e2e-01").await;
    let host = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = host.path().join("agent");
    let inventory = host.path().join("inventory.json");
    std::fs::write(
        &inventory,
        r#"{"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_memory_mib": 81559, "gpu_count": 8, "driver_version": "550.54.15", "cuda_version": "12.4"}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Enroll: the token buys a certificate; the key and certificate are private files.
    let (code, text) = output({
        let mut command = agent(&["enroll", "--server", &platform.url]);
        command.arg("--state-dir").arg(&state).env("GPUAAS_ENROLL_TOKEN", &token);
        command
    })
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("enrolled as node {node_id}")), "{text}");
    assert!(text.contains(&platform.internal_url), "enroll names where the agent connects: {text}");
    assert!(!text.contains(&token), "the token is never printed");
    #[cfg(unix)]
    for file in ["node.key", "node.crt"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(state.join(file)).unwrap_or_else(|e| panic!("{e}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // The token is single-use.
    let (code, text) = output({
        let mut command = agent(&["enroll", "--server", &platform.url, "--token", &token]);
        command.arg("--state-dir").arg(host.path().join("again"));
        command
    })
    .await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("enrollment_token_used"), "{text}");

    // Run: the first heartbeat carries the declared inventory.
    let running = run_agent(&state, &inventory, &platform.agent_log);
    eventually(Duration::from_secs(20), "the inventory appears in the admin API", || async {
        platform.node(&node_id).await["gpus"].as_array().is_some_and(|gpus| gpus.len() == 8)
    })
    .await;
    let node = platform.node(&node_id).await;
    assert_eq!(node["status"], "active");
    assert_eq!(node["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(node["host"]["source"], "declared");
    assert_eq!(node["gpus"][0]["source"], "declared", "a declared GPU is never shown as detected");
    assert_eq!(node["gpus"][0]["model"], "NVIDIA H100 80GB HBM3");
    assert_eq!(node["gpus"][0]["cuda_version"], "12.4");
    assert!(node["last_heartbeat_at"].is_string());

    // Probe: a signed node.inventory task round-trips through the agent.
    let task = platform.probe(&node_id).await;
    assert_eq!(task["status"], "succeeded", "{task}\n{}", platform.logs());
    assert_eq!(task["result"]["gpus"].as_array().map(Vec::len), Some(8), "{task}");
    assert_eq!(stop(running).await, 0, "SIGTERM stops the agent cleanly");

    // An agent pinned to another signing key refuses every delivery before acting,
    // and the control plane records the refusal.
    let agent_json = state.join("agent.json");
    let original = std::fs::read_to_string(&agent_json).unwrap_or_else(|e| panic!("{e}"));
    let mut tampered: serde_json::Value = serde_json::from_str(&original).unwrap_or_else(|e| panic!("{e}"));
    tampered["task_signing_public_key"] = serde_json::json!("O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik=");
    std::fs::write(&agent_json, tampered.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let running = run_agent(&state, &inventory, &platform.agent_log);
    let task = platform.probe(&node_id).await;
    assert_eq!(task["status"], "failed", "{task}\n{}", platform.logs());
    assert_eq!(task["refusal_code"], "bad_signature", "{task}");
    let (_, audit) =
        platform.call(reqwest::Method::GET, "/api/v1/admin/audit-logs?action=node.task.refused", None).await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(1), "{audit}");
    assert_eq!(stop(running).await, 0);
    std::fs::write(&agent_json, original).unwrap_or_else(|e| panic!("{e}"));

    // Revocation: the agent is refused on its next request and stops, asking for
    // re-enrollment (exit 3), even while a pull is parked.
    let mut running = run_agent(&state, &inventory, &platform.agent_log);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = platform
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/admin/nodes/{node_id}/revoke-certificates"),
            Some(serde_json::json!({"reason": "e2e: host decommissioned"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A task queued now wakes the parked pull, which is re-checked and refused.
    let (status, _) = platform.call(reqwest::Method::POST, &format!("/api/v1/admin/nodes/{node_id}/probe"), None).await;
    assert_eq!(status, 202, "the revoked node never answers the probe");
    let exit = tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .unwrap_or_else(|_| panic!("the revoked agent kept running"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.code(), Some(3));

    assert_eq!(stop(platform.child).await, 0);
}

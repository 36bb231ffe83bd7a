//! Allocations end to end with the real binaries: `gpuaas up` on SQLite and
//! `gpuaas serve` on PostgreSQL, a fleet simulated by `gpuaas-agent sim`, a user who
//! pays, gets GPUs, is billed for the seconds held and released when the money runs
//! out, and a control plane killed with SIGKILL mid-workflow that finishes the work
//! after a restart.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gpuaas_policy::keys;
use gpuaas_testkit::{Backend, TestDatabase, free_port};
use serde_json::json;
use tokio::process::{Child, Command};

mod process;

use process::{Running, agent_binary, cli, gpuaas, start};

const ADMIN_EMAIL: &str = "ops@e2e.local";
const PASSWORD: &str = "correct horse battery staple";
const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKPvtWANiUEyI5Bec7Kq7kXQjbukv2J9T2+pusBj/hiE e2e";
/// 36,000 per GPU-hour: 10 per GPU-second, 20 per second for the 2-GPU allocations here.
const PRICE_PER_GPU_HOUR: i64 = 36_000;
const COST_PER_SECOND: i64 = 20;

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

/// The control plane as an operator runs it, restartable on the same data.
struct Platform {
    backend: Backend,
    data: tempfile::TempDir,
    database_url: String,
    listen: String,
    internal_port: u16,
    child: Option<Child>,
    url: String,
    client: reqwest::Client,
    _database: Option<TestDatabase>,
}

impl Platform {
    /// Creates the database with a fast billing window and workflow poll, so the test
    /// runs in seconds, then starts the platform.
    async fn start(backend: Backend) -> Self {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDatabase::create(Backend::Postgres).await),
        };
        let database_url = match &database {
            Some(database) => database.url.clone(),
            None => gpuaas::config::sqlite_url(data.path()),
        };
        let store = gpuaas_store::Store::connect(&database_url, &gpuaas_store::PoolSettings::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store.migrate(&gpuaas::migrations()).await.unwrap_or_else(|e| panic!("{e}"));
        let policy = gpuaas_policy::PolicyClient::new(store.clone(), Duration::ZERO);
        for (key, value) in [
            (keys::BILLING_WINDOW_SECONDS, 1),
            (keys::ALLOCATIONS_WORKFLOW_POLL_INTERVAL_MS, 100),
            (keys::OUTBOX_RELAY_INTERVAL_MS, 100),
            (keys::OUTBOX_RELAY_JITTER_MS, 0),
        ] {
            policy.set(key, &value).await.unwrap_or_else(|e| panic!("{e}"));
        }
        store.close().await;
        let mut platform = Self {
            backend,
            data,
            database_url,
            listen: format!("127.0.0.1:{}", free_port()),
            internal_port: free_port(),
            child: None,
            url: String::new(),
            client: reqwest::Client::new(),
            _database: database,
        };
        platform.run().await;
        platform
    }

    fn command(&self) -> Command {
        let mut command = gpuaas();
        match self.backend {
            Backend::Sqlite => {
                command.arg("up").arg("--data-dir").arg(self.data.path());
            }
            Backend::Postgres => {
                command.arg("serve").env("DATABASE_URL", &self.database_url);
            }
        }
        command
            .args(["--listen", &self.listen])
            // The same internal port and PKI across restarts: agents keep their URL and CA.
            .env("GPUAAS_INTERNAL_LISTEN", format!("127.0.0.1:{}", self.internal_port))
            .env("GPUAAS_PKI_DIR", self.data.path().join("pki"))
            .env("GPUAAS_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("GPUAAS_ADMIN_PASSWORD", PASSWORD);
        command
    }

    async fn run(&mut self) {
        let Running { child, url, .. } = start(self.command()).await;
        self.child = Some(child);
        self.url = url;
    }

    /// SIGKILL: no drain, no graceful anything.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap_or_else(|e| panic!("{e}"));
        }
    }

    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url)).bearer_auth(token);
        if let Some(body) = body {
            request = request.header("x-idempotency-key", gpuaas_kernel::new_id().to_string()).json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn ok(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        expected: u16,
    ) -> serde_json::Value {
        let (status, body) = self.call(token, method, path, body).await;
        assert_eq!(status, expected, "{path}: {body}");
        body
    }

    async fn login(&self, email: &str) -> String {
        let login: serde_json::Value = self
            .client
            .post(format!("{}/api/v1/auth/personal/login", self.url))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        text(&login["access_token"])
    }
}

/// A user with a project, an SSH key and `credit` minor units.
struct User {
    id: String,
    token: String,
    project: String,
    key: String,
}

async fn user(platform: &Platform, admin: &str, email: &str, credit: i64) -> User {
    use reqwest::Method;
    let created = platform
        .ok(admin, Method::POST, "/api/v1/admin/users", Some(json!({"email": email, "password": PASSWORD})), 201)
        .await;
    let id = text(&created["id"]);
    let body = json!({"amount_minor": credit, "currency": "USD", "reason": "e2e credit"});
    platform.ok(admin, Method::POST, &format!("/api/v1/admin/users/{id}/balance"), Some(body), 201).await;
    let token = platform.login(email).await;
    let me = platform.ok(&token, Method::GET, "/api/v1/users/me", None, 200).await;
    let key = platform
        .ok(&token, Method::POST, "/api/v1/ssh-keys", Some(json!({"name": "laptop", "public_key": SSH_KEY})), 201)
        .await;
    User { id, token, project: text(&me["projects"][0]["id"]), key: text(&key["id"]) }
}

/// A simulated node: `gpuaas-agent sim` with one agent, enrolled with `token`.
fn sim(platform: &Platform, state: &Path, token_file: &Path) -> Child {
    Command::new(agent_binary())
        .args(["sim", "--count", "1", "--server", &platform.url])
        .arg("--token-file")
        .arg(token_file)
        .arg("--state-dir")
        .arg(state)
        .env_remove("GPUAAS_ENROLL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn allocation(platform: &Platform, user: &User, id: &str) -> serde_json::Value {
    platform.ok(&user.token, reqwest::Method::GET, &format!("/api/v1/allocations/{id}"), None, 200).await
}

/// Polls until the allocation reaches `status`; panics after `limit`.
async fn until_status(platform: &Platform, user: &User, id: &str, status: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let current = allocation(platform, user, id).await;
        if current["status"] == status {
            return current;
        }
        assert!(Instant::now() < deadline, "never became {status}: {current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn balance(platform: &Platform, user: &User) -> i64 {
    let body = platform.ok(&user.token, reqwest::Method::GET, "/api/v1/billing/balance", None, 200).await;
    body["amount_minor"].as_i64().unwrap_or_else(|| panic!("{body}"))
}

async fn usage_debits(platform: &Platform, user: &User) -> i64 {
    let ledger = platform
        .ok(&user.token, reqwest::Method::GET, "/api/v1/billing/ledger?type=usage_debit&limit=200", None, 200)
        .await;
    ledger["items"]
        .as_array()
        .map_or(0, |items| items.iter().map(|e| e["amount_minor"].as_i64().unwrap_or_default()).sum())
}

fn seconds_between(from: &serde_json::Value, to: &serde_json::Value) -> f64 {
    let parse = |value: &serde_json::Value| {
        gpuaas_kernel::Timestamp::parse_rfc3339(value.as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("{e:?}"))
    };
    (parse(to).as_micros() - parse(from).as_micros()) as f64 / 1e6
}

async fn a_user_pays_runs_is_billed_and_is_released_when_the_money_runs_out(backend: Backend) {
    use reqwest::Method;
    let mut platform = Platform::start(backend).await;
    let admin = platform.login(ADMIN_EMAIL).await;
    let sku = json!({
        "name": "h100-x8", "gpu_model": "NVIDIA H100 80GB HBM3", "gpus_per_node": 8, "gpu_memory_mib": 81559,
        "vcpus_per_node": 96, "memory_bytes_per_node": 1_099_511_627_776_i64,
        "price_per_gpu_hour_minor": PRICE_PER_GPU_HOUR, "currency": "USD"
    });
    platform.ok(&admin, Method::POST, "/api/v1/admin/skus", Some(sku), 201).await;
    let node = platform
        .ok(
            &admin,
            Method::POST,
            "/api/v1/admin/nodes",
            Some(json!({"hostname": "sim-node.e2e", "sku": "h100-x8"})),
            201,
        )
        .await;
    let node_id = text(&node["node"]["id"]);
    let token_file = platform.data.path().join("tokens.txt");
    std::fs::write(&token_file, text(&node["enrollment"]["token"])).unwrap_or_else(|e| panic!("{e}"));
    let sim_state = platform.data.path().join("sim");
    let mut agent = sim(&platform, &sim_state, &token_file);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let node = platform.ok(&admin, Method::GET, &format!("/api/v1/admin/nodes/{node_id}"), None, 200).await;
        if node["status"] == "active" && node["gpus"].as_array().is_some_and(|gpus| gpus.len() == 8) {
            break;
        }
        assert!(Instant::now() < deadline, "the simulated node never became active: {node}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Alice tops up (operator credit), creates, reaches active.
    let alice = user(&platform, &admin, "alice@e2e.local", 100_000).await;
    let body = json!({"sku": "h100-x8", "gpu_count": 2, "project_id": alice.project, "ssh_key_ids": [alice.key]});
    let created = platform.ok(&alice.token, Method::POST, "/api/v1/allocations", Some(body.clone()), 201).await;
    let first = text(&created["id"]);
    let active = until_status(&platform, &alice, &first, "active", Duration::from_secs(20)).await;
    assert!(text(&active["ssh"]["command"]).ends_with("@sim-node.e2e"), "{active}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    platform
        .ok(&alice.token, Method::POST, &format!("/api/v1/allocations/{first}/release"), Some(json!({})), 200)
        .await;
    let released = until_status(&platform, &alice, &first, "released", Duration::from_secs(20)).await;

    // The same through the CLI, as a newcomer runs it: `--wait` follows the allocation
    // with long polls until it is active, then until it is released.
    let carol = user(&platform, &admin, "carol@e2e.local", 100_000).await;
    let config_dir = platform.data.path().join("carol-cli");
    let login = ["login", "--email", "carol@e2e.local"];
    let (ok, _, stderr) = cli(&config_dir, &platform.url, &login, &[("GPUAAS_PASSWORD", PASSWORD)]).await;
    assert!(ok, "{stderr}");
    let create = ["alloc", "create", "--sku", "h100-x8", "--gpus", "1", "--wait"];
    let (ok, stdout, stderr) = cli(&config_dir, &platform.url, &create, &[]).await;
    assert!(ok && stderr.contains(": active") && stdout.contains("@sim-node.e2e"), "{stdout}{stderr}");
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("allocation ")?.split_once(':').map(|(id, _)| id.to_owned()))
        .unwrap_or_else(|| panic!("no allocation id in {stdout}"));
    assert_eq!(allocation(&platform, &carol, &id).await["status"], "active");
    let (ok, stdout, stderr) = cli(&config_dir, &platform.url, &["alloc", "release", &id, "--wait"], &[]).await;
    assert!(ok && stderr.contains(": released"), "{stdout}{stderr}");
    assert_eq!(allocation(&platform, &carol, &id).await["status"], "released");

    // Killed mid-provisioning: the node is down, so the provisioning task waits; the
    // control plane is SIGKILLed, restarted, the node returns, and the work finishes.
    agent.kill().await.unwrap_or_else(|e| panic!("{e}"));
    let created = platform.ok(&alice.token, Method::POST, "/api/v1/allocations", Some(body.clone()), 201).await;
    let second = text(&created["id"]);
    until_status(&platform, &alice, &second, "provisioning", Duration::from_secs(10)).await;
    platform.kill().await;
    platform.run().await;
    let mut agent = sim(&platform, &sim_state, &token_file);
    until_status(&platform, &alice, &second, "active", Duration::from_secs(30)).await;
    // Killed mid-release, the same way.
    agent.kill().await.unwrap_or_else(|e| panic!("{e}"));
    platform
        .ok(&alice.token, Method::POST, &format!("/api/v1/allocations/{second}/release"), Some(json!({})), 200)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    platform.kill().await;
    platform.run().await;
    let mut agent = sim(&platform, &sim_state, &token_file);
    let second_done = until_status(&platform, &alice, &second, "released", Duration::from_secs(30)).await;
    // One task of each kind per allocation, however often the workflow was interrupted.
    let tasks =
        platform.ok(&admin, Method::GET, &format!("/api/v1/admin/nodes/{node_id}/tasks?limit=200"), None, 200).await;
    for allocation_id in [&first, &second] {
        for kind in ["allocation.provision_user", "allocation.revoke_user"] {
            let count = tasks["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|task| task["task_type"] == kind && task["params"]["allocation_id"] == allocation_id.as_str())
                .count();
            assert_eq!(count, 1, "{kind} for {allocation_id}: {tasks}");
        }
    }

    // Billed exactly the seconds held at the price, window by window.
    let usage = platform.ok(&alice.token, Method::GET, "/api/v1/billing/usage", None, 200).await;
    let mut billed_total = 0;
    for (done, id) in [(&released, &first), (&second_done, &second)] {
        let record = usage["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["allocation_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no usage for {id}: {usage}"));
        let seconds = record["billed_seconds"].as_i64().unwrap_or_default();
        let held = seconds_between(&done["active_at"], &done["released_at"]);
        assert!((seconds as f64 - held).abs() <= 1.5, "billed {seconds} s for {held:.1} s held: {record}");
        assert_eq!(record["billed_minor"].as_i64(), Some(seconds * COST_PER_SECOND), "{record}");
        billed_total += seconds * COST_PER_SECOND;
    }
    assert_eq!(usage_debits(&platform, &alice).await, -billed_total);
    assert_eq!(balance(&platform, &alice).await, 100_000 - billed_total);

    // Depletion: Bob has 5 seconds of credit; he is released when it runs out, and his
    // balance ends at most one window's cost below zero.
    let bob = user(&platform, &admin, "bob@e2e.local", 5 * COST_PER_SECOND).await;
    let body = json!({"sku": "h100-x8", "gpu_count": 2, "project_id": bob.project, "ssh_key_ids": [bob.key]});
    let created = platform.ok(&bob.token, Method::POST, "/api/v1/allocations", Some(body), 201).await;
    let doomed = text(&created["id"]);
    until_status(&platform, &bob, &doomed, "active", Duration::from_secs(20)).await;
    let ended = until_status(&platform, &bob, &doomed, "released", Duration::from_secs(30)).await;
    let reasons: Vec<String> = ended["transitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["reason"].as_str().map(str::to_owned))
        .collect();
    assert!(reasons.iter().any(|r| r.contains("balance is depleted")), "{ended}");
    let final_balance = balance(&platform, &bob).await;
    assert!(final_balance <= 0, "released only once the money ran out: {final_balance}");
    assert!(final_balance >= -COST_PER_SECOND, "never more than one window below zero: {final_balance}");
    // And he cannot start another.
    let body = json!({"sku": "h100-x8", "gpu_count": 1, "project_id": bob.project, "ssh_key_ids": [bob.key]});
    let (status, refused) = platform.call(&bob.token, Method::POST, "/api/v1/allocations", Some(body)).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (402, Some("insufficient_balance")), "{refused}");
    let _ = bob.id;

    // The ledger is consistent after all of it.
    agent.kill().await.unwrap_or_else(|e| panic!("{e}"));
    platform.kill().await;
    let mut verify = gpuaas();
    verify.args(["ledger", "verify"]).env("DATABASE_URL", &platform.database_url);
    let out = verify.output().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_end_to_end_on_sqlite() {
    a_user_pays_runs_is_billed_and_is_released_when_the_money_runs_out(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_end_to_end_on_postgres() {
    a_user_pays_runs_is_billed_and_is_released_when_the_money_runs_out(Backend::Postgres).await;
}

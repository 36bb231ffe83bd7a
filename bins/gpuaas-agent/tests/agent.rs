//! The agent without a control plane: deliveries signed with a test key go through
//! `handle_delivery` against a counting driver; state files are checked on disk; the
//! real binary is run for its command line and against a fake enrollment endpoint.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use gpuaas_agent::host::inventory::InventoryOptions;
use gpuaas_agent::host::{HostDriver, HostError, NoopDriver};
use gpuaas_agent::runtime::{handle_delivery, verifier_for};
use gpuaas_agent::state::{AgentState, Credentials, StateDir};
use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::signing::{Delivery, TaskSigner};
use gpuaas_nodeagent_protocol::{
    Inventory, InventorySource, NonceCache, ProvisionUserParams, RefusalCode, RevokeUserParams, SignedTask,
    TaskOutcome, TaskResult, TaskVerifier,
};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const ED25519_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@laptop";

/// Records every host call, and every nonce save made through [`Harness::persist`],
/// in one log so tests can check both what ran and in which order.
#[derive(Default)]
struct CountingDriver {
    inner: NoopDriver,
    log: Mutex<Vec<&'static str>>,
}

impl CountingDriver {
    fn record(&self, event: &'static str) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }

    fn log(&self) -> Vec<&'static str> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn host_calls(&self) -> usize {
        self.log().iter().filter(|event| **event != "persist").count()
    }
}

impl HostDriver for CountingDriver {
    fn provision_user(&self, params: &ProvisionUserParams) -> Result<Value, HostError> {
        self.record("provision_user");
        self.inner.provision_user(params)
    }

    fn revoke_user(&self, params: &RevokeUserParams) -> Result<Value, HostError> {
        self.record("revoke_user");
        self.inner.revoke_user(params)
    }

    fn allocation_users(&self) -> Result<Vec<String>, HostError> {
        self.record("allocation_users");
        self.inner.allocation_users()
    }
}

fn signer() -> TaskSigner {
    TaskSigner::new(SigningKey::from_bytes(&[7; 32]))
}

fn sign(signer: &TaskSigner, node: &str, task_type: &str, params: Value, not_before: Timestamp) -> SignedTask {
    signer.sign(&Delivery {
        task_id: "0193a5c4-5e2b-7c1d-9f0e-3b6a2d8c4e11",
        node_id: node,
        task_type,
        params: &params,
        not_before,
        expires_at: not_before.saturating_add(Duration::from_secs(300)),
    })
}

fn provision_params() -> Value {
    json!({
        "allocation_id": "a-1",
        "username": "ga_a1",
        "authorized_keys": [ED25519_KEY],
        "gpu_indices": [0, 1],
        "cpu_millicores": 4000,
        "memory_bytes": 8u64 << 30,
    })
}

fn agent_state(signer: &TaskSigner) -> AgentState {
    AgentState {
        node_id: NODE.into(),
        server_url: "https://cp.example".into(),
        internal_url: "https://cp.example:8443".into(),
        task_signing_public_key: signer.public_key_base64(),
        certificate_expires_at: Timestamp::now().saturating_add(Duration::from_secs(86_400)),
        certificate_issued_at: Timestamp::now(),
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    options: InventoryOptions,
    driver: CountingDriver,
    verifier: TaskVerifier,
}

impl Harness {
    fn new(signer: &TaskSigner) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let declared = dir.path().join("inventory.json");
        std::fs::write(&declared, r#"{"gpu_model":"Test GPU 80GB","gpu_memory_mib":81920,"gpu_count":2}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let options = InventoryOptions { declared_file: Some(declared), hostname: Some("test-node".into()) };
        let verifier = verifier_for(&agent_state(signer), NonceCache::default()).unwrap_or_else(|e| panic!("{e}"));
        Self { _dir: dir, options, driver: CountingDriver::default(), verifier }
    }

    fn deliver(&mut self, task: &SignedTask, now: Timestamp) -> TaskResult {
        let driver = &self.driver;
        let mut persist = |_: &NonceCache| {
            driver.record("persist");
            Ok(())
        };
        handle_delivery(&mut self.verifier, task, now, &mut persist, &self.driver, &self.options)
    }
}

fn refusal_code(result: &TaskResult) -> Option<RefusalCode> {
    assert_eq!(result.outcome, TaskOutcome::Refused, "{result:?}");
    result.refusal.as_ref().map(|refusal| refusal.code)
}

#[test]
fn a_valid_inventory_delivery_reports_the_declared_inventory() {
    let signer = signer();
    let mut harness = Harness::new(&signer);
    let now = Timestamp::now();
    let result = harness.deliver(&sign(&signer, NODE, "node.inventory", json!({}), now), now);
    assert_eq!(result.outcome, TaskOutcome::Succeeded, "{result:?}");
    let inventory: Inventory = serde_json::from_value(result.output).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inventory.source, InventorySource::Declared);
    assert_eq!(inventory.hostname, "test-node");
    assert_eq!(inventory.gpus.len(), 2);
    assert!(inventory.gpus.iter().all(|gpu| gpu.model == "Test GPU 80GB" && gpu.memory_mib == 81920));
    assert_eq!(harness.driver.log().first(), Some(&"persist"), "the nonce is saved before the task runs");
}

#[test]
fn a_valid_provisioning_saves_the_nonce_then_calls_the_driver_once() {
    let signer = signer();
    let mut harness = Harness::new(&signer);
    let now = Timestamp::now();
    let result = harness.deliver(&sign(&signer, NODE, "allocation.provision_user", provision_params(), now), now);
    assert_eq!(result.outcome, TaskOutcome::Succeeded, "{result:?}");
    assert_eq!(result.output["username"], "ga_a1");
    assert_eq!(harness.driver.log(), vec!["persist", "provision_user"]);
}

#[test]
fn every_bad_delivery_is_refused_without_touching_the_host() {
    let signer = signer();
    let now = Timestamp::now();
    let provision =
        |node: &str, at: Timestamp| sign(&signer, node, "allocation.provision_user", provision_params(), at);

    let mut tampered = provision(NODE, now);
    tampered.params["gpu_indices"] = json!([0, 1, 2, 3]);
    let mut forged_by_another_key = sign(
        &TaskSigner::new(SigningKey::from_bytes(&[8; 32])),
        NODE,
        "allocation.provision_user",
        provision_params(),
        now,
    );
    forged_by_another_key.task_id = "t-2".into();
    let mut invalid_params = provision_params();
    invalid_params["username"] = json!("root");

    let cases: Vec<(&str, SignedTask, Timestamp, RefusalCode)> = vec![
        ("tampered params", tampered, now, RefusalCode::BadSignature),
        ("another key", forged_by_another_key, now, RefusalCode::BadSignature),
        ("another node", provision("node-b", now), now, RefusalCode::WrongNode),
        ("expired window", provision(NODE, now.saturating_sub(Duration::from_secs(3600))), now, RefusalCode::Expired),
        (
            "not yet valid",
            provision(NODE, now.saturating_add(Duration::from_secs(3600))),
            now,
            RefusalCode::NotYetValid,
        ),
        (
            "unknown type",
            sign(&signer, NODE, "node.exec", json!({"command": "id"}), now),
            now,
            RefusalCode::UnknownType,
        ),
        (
            "invalid params",
            sign(&signer, NODE, "allocation.provision_user", invalid_params, now),
            now,
            RefusalCode::InvalidParams,
        ),
    ];
    for (name, task, at, expected) in cases {
        let mut harness = Harness::new(&signer);
        let result = harness.deliver(&task, at);
        assert_eq!(refusal_code(&result), Some(expected), "{name}");
        assert_eq!(harness.driver.host_calls(), 0, "{name}: the host was touched");
        assert_eq!(result.output, json!({}), "{name}");
    }
}

#[test]
fn a_replayed_delivery_is_refused_and_the_driver_runs_once() {
    let signer = signer();
    let mut harness = Harness::new(&signer);
    let now = Timestamp::now();
    let task = sign(&signer, NODE, "allocation.provision_user", provision_params(), now);
    assert_eq!(harness.deliver(&task, now).outcome, TaskOutcome::Succeeded);
    let again = harness.deliver(&task, now);
    assert_eq!(refusal_code(&again), Some(RefusalCode::Replayed));
    assert_eq!(harness.driver.host_calls(), 1);
}

#[test]
fn a_delivery_whose_nonce_cannot_be_saved_is_not_run() {
    let signer = signer();
    let mut harness = Harness::new(&signer);
    let now = Timestamp::now();
    let task = sign(&signer, NODE, "allocation.provision_user", provision_params(), now);
    let mut persist = |_: &NonceCache| Err("disk full".to_owned());
    let result = handle_delivery(&mut harness.verifier, &task, now, &mut persist, &harness.driver, &harness.options);
    assert_eq!(result.outcome, TaskOutcome::Failed);
    assert!(result.error.as_deref().unwrap_or_default().contains("disk full"), "{result:?}");
    assert_eq!(harness.driver.host_calls(), 0);
}

#[test]
fn the_nonce_cache_survives_a_restart() {
    let signer = signer();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = StateDir::new(dir.path().join("state"));
    state.create().unwrap_or_else(|e| panic!("{e}"));
    let agent = agent_state(&signer);
    let driver = CountingDriver::default();
    let options = InventoryOptions { declared_file: None, hostname: Some("n".into()) };
    let now = Timestamp::now();
    let task = sign(
        &signer,
        NODE,
        "allocation.revoke_user",
        json!({"allocation_id": "a-1", "username": "ga_a1", "remove_home": false}),
        now,
    );

    let mut persist = |nonces: &NonceCache| state.save_nonces(nonces).map_err(|e| e.to_string());
    let mut verifier =
        verifier_for(&agent, state.load_nonces().unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
    let first = handle_delivery(&mut verifier, &task, now, &mut persist, &driver, &options);
    assert_eq!(first.outcome, TaskOutcome::Succeeded, "{first:?}");
    drop(verifier);

    // A restarted agent: a new verifier from what is on disk.
    let reloaded = state.load_nonces().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reloaded.len(), 1);
    let mut restarted = verifier_for(&agent, reloaded).unwrap_or_else(|e| panic!("{e}"));
    let replay = handle_delivery(&mut restarted, &task, now, &mut persist, &driver, &options);
    assert_eq!(refusal_code(&replay), Some(RefusalCode::Replayed));
    assert_eq!(driver.log(), vec!["revoke_user"]);
    assert_eq!(mode(&state.file("nonces.json")), 0o600);

    // A fresh verifier without the saved cache would have run it again.
    let mut amnesiac = verifier_for(&agent, NonceCache::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(amnesiac.verify(&task, now).is_ok());
}

#[test]
fn a_corrupt_nonce_cache_is_an_error_not_an_empty_cache() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state = StateDir::new(dir.path());
    std::fs::write(state.file("nonces.json"), "{not json").unwrap_or_else(|e| panic!("{e}"));
    assert!(state.load_nonces().is_err());
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn state_files_are_private_and_agent_json_round_trips() {
    let signer = signer();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path().join("var/lib/gpuaas-agent");
    let state = StateDir::new(&root);
    assert!(!state.is_enrolled());
    let agent = agent_state(&signer);
    let credentials = Credentials {
        key_pem: "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n".into(),
        cert_pem: "cert".into(),
        ca_pem: "ca".into(),
    };
    state.save_enrollment(&credentials, &agent).unwrap_or_else(|e| panic!("{e}"));
    assert!(state.is_enrolled());
    assert_eq!(mode(&root), 0o700);
    for name in ["node.key", "node.crt", "ca.crt", "agent.json"] {
        assert_eq!(mode(&root.join(name)), 0o600, "{name}");
    }
    let loaded = state.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.agent, agent);
    assert_eq!(loaded.credentials.key_pem, credentials.key_pem);
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"), "Debug must not print the key");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(root.join("agent.json")).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    for field in [
        "node_id",
        "server_url",
        "internal_url",
        "task_signing_public_key",
        "certificate_expires_at",
        "certificate_issued_at",
    ] {
        assert!(json.get(field).is_some(), "agent.json lacks {field}");
    }

    // A renewal replaces key and certificate and keeps them private.
    let mut renewed = agent.clone();
    renewed.certificate_expires_at = agent.certificate_expires_at.saturating_add(Duration::from_secs(60));
    state.save_renewal("new key", "new cert", &renewed).unwrap_or_else(|e| panic!("{e}"));
    let loaded = state.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((loaded.credentials.key_pem.as_str(), loaded.credentials.cert_pem.as_str()), ("new key", "new cert"));
    assert_eq!(loaded.agent, renewed);
    assert_eq!(mode(&root.join("node.key")), 0o600);
    assert_eq!(mode(&root.join("node.crt")), 0o600);
}

fn agent_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gpuaas-agent"));
    command.env_remove("GPUAAS_ENROLL_TOKEN").env("GPUAAS_AGENT_LOG", "warn");
    command
}

#[test]
fn version_prints_the_crate_version() {
    for argument in ["version", "--version"] {
        let output = agent_binary().arg(argument).output().unwrap_or_else(|e| panic!("{e}"));
        assert!(output.status.success());
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(stdout.trim(), format!("gpuaas-agent {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn usage_errors_exit_2() {
    for arguments in
        [&["frobnicate"][..], &[][..], &["enroll", "--server", "http://x"][..], &["run", "--driver", "magic"][..]]
    {
        let output = agent_binary().args(arguments).output().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(output.status.code(), Some(2), "{arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

#[test]
fn enrolling_against_an_unreachable_server_fails_clearly_without_printing_the_token() {
    // A port that was just free: nothing listens there, so the connection is refused.
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(9);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = "gpuaas-enroll-SECRET-3f9a";
    let output = agent_binary()
        .args(["enroll", "--server", &format!("http://127.0.0.1:{port}"), "--hostname", "gpu-01"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("GPUAAS_ENROLL_TOKEN", token)
        .env("GPUAAS_AGENT_LOG", "trace")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("enrollment failed: could not reach"), "{stderr}");
    assert!(!stderr.contains(token) && !String::from_utf8_lossy(&output.stdout).contains(token));
    assert!(!dir.path().join("state/agent.json").exists());
}

#[test]
fn run_without_an_enrollment_exits_1() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let output = agent_binary()
        .args(["run", "--driver", "noop", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("gpuaas-agent enroll"));
}

/// Serves one HTTP request with what `answer` makes of its body, and hands back the
/// request line and body.
fn serve_once<F>(answer: F) -> (String, std::thread::JoinHandle<String>)
where
    F: FnOnce(&str) -> (&'static str, String) + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let handle = std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else { return String::new() };
        let mut reader = BufReader::new(stream);
        let mut length = 0usize;
        let mut request_line = String::new();
        let _ = reader.read_line(&mut request_line);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut request = vec![0; length];
        let _ = reader.read_exact(&mut request);
        let request = String::from_utf8_lossy(&request).into_owned();
        let (status, body) = answer(&request);
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = reader.get_mut().write_all(response.as_bytes());
        format!("{} {request}", request_line.trim())
    });
    (url, handle)
}

#[test]
fn a_refused_enrollment_prints_the_code_and_message() {
    let body = json!({"error": {"code": "token_invalid", "message": "the enrollment token was not accepted", "correlation_id": "c-1", "details": {}}});
    let (url, server) = serve_once(move |_| ("401 Unauthorized", body.to_string()));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let output = agent_binary()
        .args(["enroll", "--server", &url, "--token", "tok-1", "--hostname", "gpu-01", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("enrollment refused: token_invalid: the enrollment token was not accepted"), "{stderr}");
    let request = server.join().unwrap_or_default();
    assert!(request.starts_with("POST /api/v1/nodes/enroll "), "{request}");
}

#[test]
fn a_successful_enrollment_stores_the_node_identity() {
    let signer = signer();
    let ca_key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap_or_else(|e| panic!("{e}"));
    let expires = Timestamp::now().saturating_add(Duration::from_secs(30 * 86_400));
    let public_key = signer.public_key_base64();
    let issued = std::sync::Arc::new(Mutex::new(String::new()));
    let issued_by_server = issued.clone();
    // Like the control plane: a certificate for the CSR's key, whatever names it asked for.
    let (url, server) = serve_once(move |request| {
        let sent: Value = serde_json::from_str(request).unwrap_or_default();
        let csr = rcgen::CertificateSigningRequestParams::from_pem(sent["csr_pem"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        let certificate =
            csr.signed_by(&rcgen::Issuer::new(ca_params, &ca_key)).unwrap_or_else(|e| panic!("{e}")).pem();
        *issued_by_server.lock().unwrap_or_else(|e| e.into_inner()) = certificate.clone();
        let body = json!({
            "node_id": "0193a5c4-aaaa-7c1d-9f0e-3b6a2d8c4e11",
            "certificate_pem": certificate,
            "certificate_expires_at": expires,
            "ca_certificate_pem": ca.pem(),
            "internal_url": "https://cp.example:8443/",
            "task_signing_public_key": public_key,
            "heartbeat_interval_seconds": 15,
            "protocol_version": 1,
        });
        ("201 Created", body.to_string())
    });
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = dir.path().join("state");
    let output = agent_binary()
        .args(["enroll", "--server", &format!("{url}/"), "--hostname", "gpu-01", "--state-dir"])
        .arg(&state_dir)
        .env("GPUAAS_ENROLL_TOKEN", "tok-2")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        stdout.trim(),
        "enrolled as node 0193a5c4-aaaa-7c1d-9f0e-3b6a2d8c4e11; the agent will connect to https://cp.example:8443"
    );

    let request = server.join().unwrap_or_default();
    let (line, body) = request.split_once(' ').unwrap_or_default();
    assert_eq!(line, "POST");
    let json_start = body.find('{').unwrap_or(0);
    let sent: Value = serde_json::from_str(&body[json_start..]).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(sent["token"], "tok-2");
    assert_eq!(sent["hostname"], "gpu-01");
    assert_eq!(sent["protocol_version"], 1);
    assert!(sent["csr_pem"].as_str().unwrap_or_default().starts_with("-----BEGIN CERTIFICATE REQUEST-----"));

    let state = StateDir::new(&state_dir);
    let loaded = state.load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.agent.node_id, "0193a5c4-aaaa-7c1d-9f0e-3b6a2d8c4e11");
    assert_eq!(loaded.agent.internal_url, "https://cp.example:8443");
    assert_eq!(loaded.agent.server_url, url);
    assert_eq!(loaded.agent.certificate_expires_at, expires);
    assert_eq!(loaded.credentials.cert_pem, *issued.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(loaded.credentials.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(mode(&state_dir), 0o700);
    assert_eq!(mode(&state_dir.join("node.key")), 0o600);
    // The stored material builds the mTLS client `run` uses.
    assert!(gpuaas_agent::http::internal_client(&loaded.credentials).is_ok());

    // A second enrollment into the same directory is refused before any request.
    let again = agent_binary()
        .args(["enroll", "--server", &url, "--token", "tok-3", "--state-dir"])
        .arg(&state_dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

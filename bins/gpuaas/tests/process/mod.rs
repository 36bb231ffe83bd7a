//! The real `gpuaas` binary as a process, shared by the end-to-end test binaries:
//! a clean command, starting it and waiting until it serves, stopping it by SIGTERM,
//! and its log kept for a failing test to show.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gpuaas_testkit::free_port;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_gpuaas");

/// The agent binary sits beside `gpuaas` in the target dir; `cargo test --workspace`
/// builds it, and a run of this package alone builds it here.
pub fn agent_binary() -> std::path::PathBuf {
    let gpuaas = std::path::PathBuf::from(BINARY);
    let agent = gpuaas.with_file_name("gpuaas-agent");
    if !agent.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "gpuaas-agent"])
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "building gpuaas-agent failed");
    }
    agent
}

/// `gpuaas` with none of the developer's settings leaking in, and its own internal
/// (mTLS) port, since tests run side by side.
pub fn gpuaas() -> Command {
    let mut command = Command::new(BINARY);
    for name in [
        "DATABASE_URL",
        "GPUAAS_DATABASE_URL",
        "NATS_URL",
        "GPUAAS_NATS_URL",
        "GPUAAS_LISTEN",
        "GPUAAS_INTERNAL_URL",
        "RUST_LOG",
        "GPUAAS_ADMIN_EMAIL",
        "GPUAAS_ADMIN_PASSWORD",
        "GPUAAS_URL",
        "GPUAAS_PASSWORD",
        "GPUAAS_STRIPE_SECRET_KEY",
        "GPUAAS_STRIPE_WEBHOOK_SECRET",
        "GPUAAS_STRIPE_API_BASE",
    ] {
        command.env_remove(name);
    }
    command.env("GPUAAS_INTERNAL_LISTEN", format!("127.0.0.1:{}", free_port()));
    command.stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// A started platform and the listeners it announced.
pub struct Running {
    pub child: Child,
    /// The public API, from `gpuaas is serving on …`.
    pub url: String,
    /// Where agents connect, from `node agents connect to …`.
    pub internal_url: String,
    /// Its stderr: the platform's log.
    pub log: ProcessLog,
}

/// A process's stderr kept in a file, so a failing test can say what the process saw
/// (on a slow CI host a timing failure is otherwise left unexplained).
pub struct ProcessLog {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Default for ProcessLog {
    fn default() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("stderr.log");
        Self { _dir: dir, path }
    }
}

impl ProcessLog {
    /// A handle that appends, so processes started one after another share the log.
    pub fn stdio(&self) -> Stdio {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap_or_else(|e| panic!("{}: {e}", self.path.display()));
        Stdio::from(file)
    }

    /// The last `lines` lines written.
    pub fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Starts the command and waits for the line announcing the URL it serves. Its
/// stdout keeps being drained afterwards, so nothing it prints later can block.
pub async fn start(mut command: Command) -> Running {
    let log = ProcessLog::default();
    let mut child = command.stdout(Stdio::piped()).stderr(log.stdio()).spawn().unwrap_or_else(|e| panic!("{e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    let (url, internal_url) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut internal = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("node agents connect to ") {
                internal = rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
            if let Some(url) = line.strip_prefix("gpuaas is serving on ") {
                return (url.to_owned(), internal);
            }
        }
        panic!("gpuaas exited before serving")
    })
    .await
    .unwrap_or_else(|_| panic!("gpuaas did not announce its URL"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Running { child, url, internal_url, log }
}

/// Sends SIGTERM and waits (at most 15 s) for the exit; returns it and how long it took.
pub async fn terminate(mut child: Child) -> (ExitStatus, Duration) {
    let pid = child.id().unwrap_or_else(|| panic!("no pid"));
    let started = Instant::now();
    let status =
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap_or_else(|_| panic!("process did not stop within 15 s of SIGTERM"))
        .unwrap_or_else(|e| panic!("{e}"));
    (exit, started.elapsed())
}

/// Runs a client verb of the real binary with its own config dir; returns whether it
/// succeeded, its stdout and its stderr.
pub async fn cli(
    config_dir: &std::path::Path,
    url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut command = gpuaas();
    command.args(args).env("GPUAAS_CONFIG_DIR", config_dir).env("GPUAAS_URL", url);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.unwrap_or_else(|e| panic!("{e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

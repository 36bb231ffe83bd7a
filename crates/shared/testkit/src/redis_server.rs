//! A throwaway `redis-server` for tests.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{REDIS_SERVER_BIN_ENV, SpawnError, free_port, kill_and_wait, log_tail, server_bin};

/// How long a `redis-server` gets to start answering or to exit.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A real `redis-server` listening on a free loopback port, without persistence
/// (`--save "" --appendonly no`): a restart comes back empty, as a Redis used as a
/// cache does after a crash. Its working dir and log live in a temp dir owned by
/// this value. Dropping the value kills the process.
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    port: u16,
    /// `None` while stopped.
    child: Option<Child>,
    /// Declared after `child` so the process is killed before its dir goes.
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits (at most ~10 s) until
    /// it answers `PING`.
    ///
    /// The binary comes from `GPUAAS_REDIS_SERVER_BIN`, else `redis-server` on PATH.
    pub async fn start() -> RedisServer {
        let bin = server_bin(REDIS_SERVER_BIN_ENV, "redis-server");
        let dir = tempfile::Builder::new()
            .prefix("gpuaas-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("testkit: cannot create a temp dir for redis-server: {e}"));

        // The port from free_port() can be taken before redis-server binds it; try a
        // few fresh ports before giving up.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_redis(&bin, port, dir.path()).await {
                Ok(child) => return RedisServer { bin, port, child: Some(child), dir },
                Err(SpawnError::Exited(message)) => last_error = message,
                Err(SpawnError::Fatal(message)) => panic!("testkit: {message}"),
            }
        }
        panic!("testkit: redis-server did not start after 5 tries; last error: {last_error}")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port this server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server (`SHUTDOWN NOSAVE`, then SIGKILL if it has not exited within
    /// ~10 s) and waits until the process is gone, so its port refuses connections
    /// when this returns. A no-op when stopped.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let shutdown = async {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            stream.write_all(b"SHUTDOWN NOSAVE\r\n").await.ok()?;
            // The server closes the connection as it exits; any reply means it refused.
            let mut buf = [0_u8; 64];
            let _ = stream.read(&mut buf).await;
            Some(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), shutdown).await;
        if tokio::time::timeout(REDIS_READY_TIMEOUT, child.wait()).await.is_ok() {
            return;
        }
        kill_and_wait(&mut child).await;
    }

    /// Kills the server with SIGKILL and waits until the process is gone. A no-op
    /// when stopped.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child).await;
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted),
    /// stopping it first if it is running. Waits (bounded) until it answers `PING`.
    pub async fn restart(&mut self) {
        self.stop().await;
        // The port is ours by convention only; if something grabbed it while the
        // server was down, keep trying for a while.
        let (bin, port, dir) = (&self.bin, self.port, self.dir.path());
        self.child =
            Some(crate::respawn("redis-server", port, REDIS_READY_TIMEOUT, || spawn_redis(bin, port, dir)).await);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        crate::kill_before_drop(&mut self.child);
    }
}

/// Spawns redis-server and waits until it answers `PING`, or exits, or the bounded
/// wait runs out.
async fn spawn_redis(bin: &Path, port: u16, dir: &Path) -> Result<Child, SpawnError> {
    let log_path = dir.join("redis-server.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| SpawnError::Fatal(format!("cannot open {}: {e}", log_path.display())))?;
    let log_err = log.try_clone().map_err(|e| SpawnError::Fatal(format!("cannot clone log file handle: {e}")))?;
    let mut child = Command::new(bin)
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--dir")
        .arg(dir)
        .arg("--daemonize")
        .arg("no")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SpawnError::Fatal(format!("cannot run {}: {e}", bin.display())))?;

    let deadline = Instant::now() + REDIS_READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(SpawnError::Exited(format!(
                    "redis-server on port {port} exited with {status} before answering; log:\n{}",
                    log_tail(&log_path)
                )));
            }
            Ok(None) => {}
            Err(e) => {
                kill_and_wait(&mut child).await;
                return Err(SpawnError::Fatal(format!("cannot poll redis-server: {e}")));
            }
        }
        if answers_ping(port).await {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            kill_and_wait(&mut child).await;
            return Err(SpawnError::Fatal(format!(
                "redis-server did not answer PING on 127.0.0.1:{port} within {REDIS_READY_TIMEOUT:?}; log:\n{}",
                log_tail(&log_path)
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True when 127.0.0.1:`port` answers `PING` with `+PONG` (not, say, `-LOADING`).
async fn answers_ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0_u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Some(true)))
}

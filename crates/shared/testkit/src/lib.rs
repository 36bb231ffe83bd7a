//! Test support for gpuaas: throwaway databases, `nats-server` and `redis-server`
//! processes.
//!
//! What this crate owns:
//! - [`TestDatabase`]: a fresh, empty database per test, either a SQLite file in
//!   a temp dir or a new database on the throwaway PostgreSQL server that
//!   `./scripts/test` starts (found through `GPUAAS_TEST_POSTGRES_URL`).
//! - [`NatsServer`]: a real `nats-server` with JetStream on a free loopback
//!   port, its store in a temp dir, that a test can stop and restart.
//! - [`RedisServer`]: a real `redis-server` without persistence on a free
//!   loopback port, that a test can stop and restart.
//! - [`stripe::FakeStripe`]: a local fake of the Stripe API on a loopback port, and
//!   [`stripe::sign_webhook`] to sign webhook payloads as Stripe does.
//! - [`both_backends!`]: runs one async test body against SQLite and PostgreSQL.
//!
//! What it must never do:
//! - be a normal (non-dev) dependency of a production crate: it panics on
//!   purpose and spawns processes;
//! - touch anything outside its own temp dirs and 127.0.0.1: no fixed ports,
//!   no shared paths, no databases other than the ones it creates.

// This crate is test-only: a panic with a clear message is the right way to
// fail a test whose environment is broken.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tempfile::TempDir;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

mod redis_server;
pub use redis_server::RedisServer;
pub mod stripe;

/// Environment variable holding the admin URL of the throwaway PostgreSQL server.
pub const POSTGRES_URL_ENV: &str = "GPUAAS_TEST_POSTGRES_URL";
/// Environment variable holding the absolute path of the `nats-server` binary.
pub const NATS_SERVER_BIN_ENV: &str = "GPUAAS_NATS_SERVER_BIN";
/// Environment variable holding the absolute path of the `redis-server` binary.
pub const REDIS_SERVER_BIN_ENV: &str = "GPUAAS_REDIS_SERVER_BIN";

/// How long a `nats-server` gets to start accepting connections or to exit.
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the PostgreSQL server may take.
const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The SQL backends the store supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Lower-case name, as used in test names and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A fresh, empty database for one test.
///
/// SQLite databases live in a temp dir that is removed when this value is
/// dropped. PostgreSQL databases are left on the throwaway server, which
/// `./scripts/test` removes as a whole.
#[derive(Debug)]
pub struct TestDatabase {
    /// URL to hand to sqlx (`sqlite://...` or `postgres://...`).
    pub url: String,
    pub backend: Backend,
    /// Keeps the SQLite temp dir alive as long as the database is in use.
    _dir: Option<TempDir>,
}

impl TestDatabase {
    /// Creates a new, empty database on `backend`.
    ///
    /// Panics with a clear message when the environment lacks what the backend
    /// needs (for PostgreSQL: `GPUAAS_TEST_POSTGRES_URL`, set by `./scripts/test`).
    pub async fn create(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => Self::create_sqlite(),
            Backend::Postgres => Self::create_postgres().await,
        }
    }

    fn create_sqlite() -> TestDatabase {
        let dir = tempfile::Builder::new()
            .prefix("gpuaas-sqlite-")
            .tempdir()
            .unwrap_or_else(|e| panic!("testkit: cannot create a temp dir for SQLite: {e}"));
        let path = dir.path().join("test.db");
        TestDatabase { url: format!("sqlite://{}?mode=rwc", path.display()), backend: Backend::Sqlite, _dir: Some(dir) }
    }

    async fn create_postgres() -> TestDatabase {
        let admin_url = match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => panic!(
                "testkit: {POSTGRES_URL_ENV} is not set, so there is no PostgreSQL server to \
                 create a test database on. Run the tests through `./scripts/test` (it starts a \
                 throwaway PostgreSQL and sets {POSTGRES_URL_ENV}), e.g. \
                 `./scripts/test -p gpuaas-store`."
            ),
        };
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());

        let mut conn =
            tokio::time::timeout(POSTGRES_CONNECT_TIMEOUT, sqlx::postgres::PgConnection::connect(&admin_url))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "testkit: timed out after {POSTGRES_CONNECT_TIMEOUT:?} connecting to \
                 {POSTGRES_URL_ENV}={admin_url}"
                    )
                })
                .unwrap_or_else(|e| panic!("testkit: cannot connect to {POSTGRES_URL_ENV}={admin_url}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("testkit: CREATE DATABASE {name} failed: {e}"));
        // The database exists now; failing to say goodbye politely is harmless.
        let _ = conn.close().await;

        TestDatabase { url: with_database(&admin_url, &name), backend: Backend::Postgres, _dir: None }
    }
}

/// Replaces the database (the path) of a `postgres://` URL, keeping any query.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Returns a port on 127.0.0.1 that was free a moment ago.
///
/// Another process may take it before the caller binds it; callers that
/// spawn servers retry on a fresh port when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|e| panic!("testkit: cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("testkit: cannot read the address of a bound socket: {e}")).port()
}

/// A real `nats-server` with JetStream, listening on a free loopback port.
///
/// The JetStream store lives in a temp dir owned by this value, so data
/// survives [`NatsServer::stop`] + [`NatsServer::restart`] and is removed on
/// drop. Dropping the value kills the process.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    /// `None` while stopped.
    child: Option<Child>,
    /// Declared after `child` so the process is killed before its dir goes.
    dir: TempDir,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p PORT -js -sd DIR` on a free port and
    /// waits (at most ~10 s) until it accepts connections.
    ///
    /// The binary comes from `GPUAAS_NATS_SERVER_BIN`, else `nats-server` on PATH.
    pub async fn start() -> NatsServer {
        let bin = nats_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("gpuaas-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("testkit: cannot create a temp dir for nats-server: {e}"));

        // The port from free_port() can be taken by someone else before
        // nats-server binds it; try a few fresh ports before giving up.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_nats(&bin, port, dir.path()).await {
                Ok(child) => {
                    return NatsServer { bin, port, child: Some(child), dir };
                }
                Err(SpawnError::Exited(message)) => last_error = message,
                Err(SpawnError::Fatal(message)) => panic!("testkit: {message}"),
            }
        }
        panic!("testkit: nats-server did not start after 5 tries; last error: {last_error}")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The loopback port this server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store dir (the same across restarts).
    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server and waits until the process is gone, so its port
    /// refuses connections when this returns.
    ///
    /// The server is asked to shut down cleanly first (SIGINT, through
    /// `nats-server --signal quit=PID`) so that JetStream flushes its store;
    /// if it has not exited within ~10 s it is killed. Use
    /// [`NatsServer::kill`] to simulate a crash instead. A no-op when stopped.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = Command::new(&self.bin)
                .arg("--signal")
                .arg(format!("quit={pid}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            if tokio::time::timeout(NATS_READY_TIMEOUT, child.wait()).await.is_ok() {
                return;
            }
        }
        kill_and_wait(&mut child).await;
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits until the
    /// process is gone. JetStream data not yet written out may be lost, as in
    /// a real crash. A no-op when stopped.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child).await;
        }
    }

    /// Starts the server again on the same port with the same JetStream store,
    /// stopping it first if it is running. Waits (bounded) until it accepts
    /// connections.
    pub async fn restart(&mut self) {
        self.stop().await;
        // The port is ours by convention only; if something grabbed it while
        // the server was down, keep trying for a while.
        let (bin, port, dir) = (&self.bin, self.port, self.dir.path());
        self.child = Some(respawn("nats-server", port, NATS_READY_TIMEOUT, || spawn_nats(bin, port, dir)).await);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        kill_before_drop(&mut self.child);
    }
}

pub(crate) enum SpawnError {
    /// The process exited before accepting connections (e.g. port taken).
    Exited(String),
    /// Retrying will not help.
    Fatal(String),
}

/// Spawns nats-server and waits until it accepts TCP connections and greets
/// with `INFO`, or exits, or the bounded wait runs out.
async fn spawn_nats(bin: &Path, port: u16, store_dir: &Path) -> Result<Child, SpawnError> {
    let log_path = store_dir.join("nats-server.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| SpawnError::Fatal(format!("cannot open {}: {e}", log_path.display())))?;
    let log_err = log.try_clone().map_err(|e| SpawnError::Fatal(format!("cannot clone log file handle: {e}")))?;
    let mut child = Command::new(bin)
        .arg("-a")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .arg("-js")
        .arg("-sd")
        .arg(store_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SpawnError::Fatal(format!("cannot run {}: {e}", bin.display())))?;

    let deadline = Instant::now() + NATS_READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(SpawnError::Exited(format!(
                    "nats-server on port {port} exited with {status} before accepting \
                     connections; log:\n{}",
                    log_tail(&log_path)
                )));
            }
            Ok(None) => {}
            Err(e) => {
                kill_and_wait(&mut child).await;
                return Err(SpawnError::Fatal(format!("cannot poll nats-server: {e}")));
            }
        }
        if greets_with_info(port).await {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            kill_and_wait(&mut child).await;
            return Err(SpawnError::Fatal(format!(
                "nats-server did not accept connections on 127.0.0.1:{port} within \
                 {NATS_READY_TIMEOUT:?}; log:\n{}",
                log_tail(&log_path)
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True when 127.0.0.1:`port` accepts a connection and speaks NATS (`INFO ...`).
async fn greets_with_info(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut buf = [0_u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"INFO")
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Some(true)))
}

async fn kill_and_wait(child: &mut Child) {
    // kill() sends SIGKILL and reaps the process; an error means it is
    // already gone.
    let _ = child.kill().await;
}

/// The last few KiB of a log file, for panic messages.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let start = text.len().saturating_sub(4096);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    text[start..].to_string()
}

/// Finds the `nats-server` binary: `GPUAAS_NATS_SERVER_BIN`, else PATH.
fn nats_server_bin() -> PathBuf {
    server_bin(NATS_SERVER_BIN_ENV, "nats-server")
}

/// Finds a server binary: the path in `env`, else `name` on PATH.
fn server_bin(env: &str, name: &str) -> PathBuf {
    if let Some(value) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if !path.is_file() {
            panic!(
                "testkit: {env}={} is not a file. Run the tests through \
                 `./scripts/test`, which installs {name} and sets {env}.",
                path.display()
            );
        }
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "testkit: no {name} binary: {env} is unset and {name} is \
             not on PATH. Run the tests through `./scripts/test`, which installs {name} \
             and sets {env}."
        )
    })
}

/// The error of a call that must fail; panics with the value when it succeeded.
pub fn err<T: std::fmt::Debug, E>(result: Result<T, E>) -> E {
    match result {
        Ok(value) => panic!("expected an error, got Ok({value:?})"),
        Err(error) => error,
    }
}

/// Asserts that an expression fails with an error matching the pattern (matched
/// against a reference, optionally with a guard) and evaluates to the error.
///
/// ```ignore
/// let error = assert_err!(service.call().await, MyError::NotFound(_));
/// ```
#[macro_export]
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {{
        let error = $crate::err($result);
        assert!(
            matches!(&error, $pattern $(if $guard)?),
            "expected {}, got {error:?}",
            stringify!($pattern $(if $guard)?)
        );
        error
    }};
}

/// Runs an async test body `fn(Backend)` once on SQLite and once on PostgreSQL.
///
/// ```ignore
/// async fn relay_publishes_committed_events(backend: Backend) { /* ... */ }
/// gpuaas_testkit::both_backends!(relay_publishes_committed_events, another_test);
/// ```
///
/// For each function `name` this expands to a module of the same name
/// (modules and functions live in different namespaces) holding two
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` tests, so
/// the tests are named `name::sqlite` and `name::postgres`. The crate using
/// it needs `tokio` (with the `macros` and `rt-multi-thread` features) among
/// its dev-dependencies.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await
                }
            }
        )+
    };
}

/// Spawns a server again until it starts or `timeout` passes. The port is ours by
/// convention only; something may hold it briefly while the server was down.
pub(crate) async fn respawn<F, Fut>(name: &str, port: u16, timeout: Duration, mut spawn: F) -> Child
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Child, SpawnError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match spawn().await {
            Ok(child) => return child,
            Err(SpawnError::Exited(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(SpawnError::Exited(message) | SpawnError::Fatal(message)) => {
                panic!("testkit: {name} did not restart on port {port}: {message}")
            }
        }
    }
}

/// Kills a server from `Drop` and waits a moment, so the process is gone before its
/// temp dir is removed (kill_on_drop alone would not wait).
pub(crate) fn kill_before_drop(child: &mut Option<Child>) {
    if let Some(child) = child.as_mut() {
        let _ = child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Ok(Some(_)) | Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t_1"),
            "postgres://postgres@127.0.0.1:5432/t_1"
        );
        assert_eq!(
            with_database("postgres://u:p@localhost:1/postgres?sslmode=disable", "t_2"),
            "postgres://u:p@localhost:1/t_2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432", "t_3"),
            "postgres://postgres@127.0.0.1:5432/t_3"
        );
    }

    #[test]
    fn backend_names() {
        assert_eq!(Backend::Sqlite.name(), "sqlite");
        assert_eq!(Backend::Postgres.name(), "postgres");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}

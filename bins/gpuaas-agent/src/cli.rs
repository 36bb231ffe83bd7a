//! The command line: `version`, `enroll`, `run` and `sim`.
//!
//! Exit statuses: 0 success or a requested shutdown, 1 failure, 2 usage error,
//! 3 the control plane no longer accepts this node (enroll it again).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::enroll::{self, EnrollOptions};
use crate::host::inventory::InventoryOptions;
use crate::host::linux::{LinuxHostConfig, LinuxHostDriver};
use crate::host::{HostDriver, NoopDriver};
use crate::runtime::{self, AgentOptions};
use crate::sim::{self, SimOptions};
use crate::state::{DEFAULT_STATE_DIR, StateDir};

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REENROLL: u8 = 3;

/// Environment variable holding the log filter (`RUST_LOG` syntax).
pub const LOG_ENV: &str = "GPUAAS_AGENT_LOG";

#[derive(Debug, Parser)]
#[command(name = "gpuaas-agent", version, about = "The gpuaas node agent", arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the agent's version.
    Version,
    /// Exchange a one-time enrollment token for this node's certificate.
    Enroll(EnrollArgs),
    /// Connect to the control plane and carry out its tasks until stopped.
    Run(RunArgs),
    /// Simulate a fleet of agents in one process (load tests; changes nothing on the host).
    Sim(SimArgs),
}

#[derive(Args)]
pub struct EnrollArgs {
    /// The control plane's public URL, e.g. https://gpuaas.example.com.
    #[arg(long)]
    pub server: String,
    /// The one-time enrollment token (prefer the environment variable: a command line
    /// is visible to every user of the host).
    #[arg(long, env = "GPUAAS_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Name reported for this host (default: the system's host name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// PEM file of an extra CA to trust for the public URL.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Enroll even though the state directory already holds an enrollment.
    #[arg(long)]
    pub force: bool,
}

impl std::fmt::Debug for EnrollArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollArgs")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("state_dir", &self.state_dir)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverKind {
    /// Real host changes: users, keys, GPU access, limits.
    Linux,
    /// In memory only, for demos on a laptop.
    Noop,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Declared GPU inventory (JSON) for a host without NVIDIA drivers.
    #[arg(long)]
    pub inventory_file: Option<PathBuf>,
    /// Name reported for this host (default: the system's host name).
    #[arg(long)]
    pub hostname: Option<String>,
    #[arg(long, value_enum, default_value_t = DriverKind::Linux)]
    pub driver: DriverKind,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// How many agents to simulate.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// The control plane's public URL.
    #[arg(long)]
    pub server: String,
    /// File of enrollment tokens, one a line.
    #[arg(long)]
    pub token_file: PathBuf,
    #[arg(long, default_value = sim::DEFAULT_SIM_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Declared inventory for every simulated agent (default: 8 × Simulated H100 80GB).
    #[arg(long)]
    pub inventory_file: Option<PathBuf>,
    /// PEM file of an extra CA to trust for the public URL.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Parses `args` (program name first) and runs the command.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            let code = if error.use_stderr() { EXIT_USAGE } else { 0 };
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Version => {
            println!("gpuaas-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Enroll(args) => with_runtime(|| enroll_command(args)),
        Command::Run(args) => with_runtime(|| run_command(args)),
        Command::Sim(args) => with_runtime(|| sim_command(args)),
    }
}

fn with_runtime<F, Fut>(command: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = u8>,
{
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gpuaas-agent: could not start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    ExitCode::from(runtime.block_on(command()))
}

/// Logs go to stderr, filtered by `GPUAAS_AGENT_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

fn read_ca_file(path: Option<&PathBuf>) -> Result<Option<Vec<u8>>, String> {
    path.map(|path| std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))).transpose()
}

async fn enroll_command(args: EnrollArgs) -> u8 {
    let ca = match read_ca_file(args.ca_file.as_ref()) {
        Ok(ca) => ca,
        Err(error) => {
            eprintln!("enrollment failed: {error}");
            return EXIT_FAILURE;
        }
    };
    let client = match crate::http::public_client(ca.as_deref()) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("enrollment failed: {error}");
            return EXIT_FAILURE;
        }
    };
    let options = EnrollOptions {
        server_url: args.server,
        token: args.token,
        hostname: args.hostname.unwrap_or_else(enroll::detect_hostname),
        force: args.force,
    };
    match enroll::enroll(&client, &StateDir::new(&args.state_dir), &options).await {
        Ok(agent) => {
            println!("enrolled as node {}; the agent will connect to {}", agent.node_id, agent.internal_url);
            0
        }
        Err(error) => {
            eprintln!("{error}");
            EXIT_FAILURE
        }
    }
}

async fn run_command(args: RunArgs) -> u8 {
    // A bad declaration would otherwise only show as a warning on every heartbeat.
    if let Some(path) = &args.inventory_file {
        let checked = std::fs::read_to_string(path)
            .map_err(|error| error.to_string())
            .and_then(|text| gpuaas_nodeagent_protocol::DeclaredInventory::parse(&text));
        if let Err(error) = checked {
            tracing::error!(file = %path.display(), %error, "the inventory file is not usable");
            return EXIT_FAILURE;
        }
    }
    let driver: Arc<dyn HostDriver> = match args.driver {
        DriverKind::Linux => Arc::new(LinuxHostDriver::new(LinuxHostConfig::for_host_with_state(&args.state_dir))),
        DriverKind::Noop => Arc::new(NoopDriver::default()),
    };
    let common_name = args.hostname.clone().unwrap_or_else(enroll::detect_hostname);
    let options = AgentOptions {
        state_dir: StateDir::new(&args.state_dir),
        driver,
        inventory: Arc::new(InventoryOptions { declared_file: args.inventory_file, hostname: args.hostname }),
        common_name,
        start_delay: std::time::Duration::ZERO,
    };
    let shutdown = shutdown_on_signal();
    tokio::spawn(runtime::enforce_grants_loop(options.driver.clone(), shutdown.clone()));
    match runtime::run_agent(options, shutdown).await {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!(%error, "agent stopped");
            error.exit_code()
        }
    }
}

async fn sim_command(args: SimArgs) -> u8 {
    let ca_pem = match read_ca_file(args.ca_file.as_ref()) {
        Ok(ca) => ca,
        Err(error) => {
            eprintln!("sim: {error}");
            return EXIT_FAILURE;
        }
    };
    let options = SimOptions {
        count: args.count as usize,
        server_url: args.server,
        token_file: args.token_file,
        state_dir: args.state_dir,
        inventory_file: args.inventory_file,
        ca_pem,
    };
    match sim::run_sim(options, shutdown_on_signal()).await {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("sim: {error:#}");
            EXIT_FAILURE
        }
    }
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        let interrupt = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = interrupt => {}
            () = terminate => {}
        }
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}

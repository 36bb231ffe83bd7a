//! The `gpuaas` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gpuaas_telemetry::LogFormat;
use tokio_util::sync::CancellationToken;

use crate::config::{CliOverrides, Config, LogFormatSetting, Mode, Role};
use crate::runtime::{Platform, run, shutdown_signal};

#[derive(Debug, Parser)]
#[command(name = "gpuaas", version, about = "GPU-as-a-service control plane")]
pub struct Cli {
    /// TOML configuration file (overridden by environment and flags).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process on the embedded engines (SQLite, embedded bus).
    Up {
        /// Where the embedded database and keys live.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address of the public API.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// Address of the mTLS listener node agents connect to (default 127.0.0.1:8443).
        #[arg(long, value_name = "HOST:PORT")]
        internal_listen: Option<String>,
        /// The built web portal served at `/` (default web/dist).
        #[arg(long, value_name = "DIR")]
        portal_dir: Option<PathBuf>,
    },
    /// Run in production mode: DATABASE_URL (PostgreSQL), NATS_URL (JetStream).
    Serve {
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
        /// Address of the mTLS listener node agents connect to (default 127.0.0.1:8443).
        #[arg(long, value_name = "HOST:PORT")]
        internal_listen: Option<String>,
        /// What this process runs; repeat for several. Default: all.
        #[arg(long = "role", value_enum)]
        roles: Vec<Role>,
        /// The built web portal served at `/` (default web/dist).
        #[arg(long, value_name = "DIR")]
        portal_dir: Option<PathBuf>,
    },
    /// Apply pending database migrations (idempotent).
    Migrate {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Sign in to a platform and keep the session in the user's config dir.
    Login {
        /// Platform URL.
        #[arg(long, env = "GPUAAS_URL", default_value = crate::client::DEFAULT_URL)]
        url: String,
        /// Email of a local account (the password comes from GPUAAS_PASSWORD or stdin).
        #[arg(long)]
        email: Option<String>,
        /// Sign in through the platform's external OIDC provider instead.
        #[arg(long)]
        oidc: bool,
    },
    /// End the saved session (its refresh token is revoked).
    Logout,
    /// Show the signed-in user, their tenant, projects and roles.
    Whoami,
    /// Operator commands.
    #[command(subcommand)]
    Admin(crate::client::AdminCommand),
    /// Manage and use service accounts.
    #[command(subcommand, name = "service-accounts")]
    ServiceAccounts(crate::client::ServiceAccountCommand),
    /// Manage your SSH public keys (installed on the nodes of your allocations).
    #[command(subcommand, name = "ssh-key")]
    SshKey(crate::client::SshKeyCommand),
    /// Create, list, show and release GPU allocations.
    #[command(subcommand)]
    Alloc(crate::client::AllocCommand),
    /// The ledger: `gpuaas ledger verify` recomputes every balance and checkpoint.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Recompute every account from its first entry; report any checkpoint or
    /// numbering mismatch (exit 1). Uses DATABASE_URL, else the embedded database.
    Verify {
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Post ledger entries in batches, then time balance reads.
    Ledger {
        /// A throwaway database to fill (PostgreSQL or sqlite:); default a new SQLite
        /// file in a temp dir. Never point it at a real installation.
        #[arg(long, env = "GPUAAS_BENCH_DATABASE_URL")]
        database_url: Option<String>,
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        #[arg(long, default_value_t = 10_000)]
        accounts: u64,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent writers, each owning a disjoint share of the accounts.
        #[arg(long, default_value_t = 2)]
        writers: usize,
        #[arg(long, default_value_t = 10_000)]
        reads: usize,
        #[arg(long, default_value_t = 100)]
        checkpoint_every: i64,
    },
    /// Create and release allocations from concurrent clients over a registered fleet
    /// (service layer, in process), then time one accrual cycle.
    Allocations {
        /// A throwaway database (PostgreSQL or sqlite:); default a new SQLite file in a
        /// temp dir. Never point it at a real installation.
        #[arg(long, env = "GPUAAS_BENCH_DATABASE_URL")]
        database_url: Option<String>,
        #[arg(long, default_value_t = 1000)]
        nodes: u32,
        #[arg(long, default_value_t = 8)]
        gpus_per_node: u32,
        #[arg(long, default_value_t = 64)]
        clients: u32,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seconds of load before the measured ones; PostgreSQL's planner statistics
        /// are taken when it ends, as autovacuum keeps them in service.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
        warmup_seconds: u64,
        /// Live allocations each client keeps before releasing its oldest.
        #[arg(long, default_value_t = 4)]
        per_client: usize,
        #[arg(long, default_value_t = 10_000)]
        accrual_records: u32,
        /// Database connections (default: the pool `gpuaas up` opens).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000))]
        pool_size: Option<u32>,
    },
}

pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gpuaas: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    // Client verbs talk to a running platform; they need no server configuration.
    let outcome = match cli.command {
        Command::Login { url, email, oidc } => crate::client::login(url, email, oidc).await,
        Command::Logout => crate::client::logout().await,
        Command::Whoami => crate::client::whoami().await,
        Command::Admin(command) => crate::client::admin(command).await,
        Command::ServiceAccounts(command) => crate::client::service_accounts(command).await,
        Command::SshKey(command) => crate::client::ssh_keys(command).await,
        Command::Alloc(command) => crate::client::allocations(command).await,
        Command::Bench(BenchCommand::Ledger {
            database_url,
            entries,
            accounts,
            batch,
            writers,
            reads,
            checkpoint_every,
        }) => {
            bench_ledger(
                database_url,
                crate::ledger::LedgerBench { entries, accounts, batch, writers, reads, checkpoint_every },
            )
            .await
        }
        Command::Bench(BenchCommand::Allocations {
            database_url,
            nodes,
            gpus_per_node,
            clients,
            seconds,
            warmup_seconds,
            per_client,
            accrual_records,
            pool_size,
        }) => {
            let settings = crate::alloc_bench::AllocationBench {
                nodes,
                gpus_per_node,
                clients,
                seconds,
                warmup: std::time::Duration::from_secs(warmup_seconds),
                per_client,
                accrual_records,
                pool_size: pool_size.unwrap_or(gpuaas_store::PoolSettings::default().max_connections),
            };
            bench_allocations(database_url, settings).await
        }
        command => return dispatch_platform(Cli { config: cli.config, command }).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gpuaas: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch_platform(cli: Cli) -> ExitCode {
    let (mode, overrides) = match &cli.command {
        Command::Openapi => {
            print!("{}", crate::openapi::document_json());
            return ExitCode::SUCCESS;
        }
        Command::Up { data_dir, listen, internal_listen, portal_dir } => (
            Mode::Embedded,
            CliOverrides {
                config_file: cli.config.clone(),
                listen: listen.clone(),
                data_dir: data_dir.clone(),
                roles: vec![],
                internal_listen: internal_listen.clone(),
                portal_dir: portal_dir.clone(),
            },
        ),
        Command::Serve { listen, internal_listen, roles, portal_dir } => (
            Mode::Production,
            CliOverrides {
                config_file: cli.config.clone(),
                listen: listen.clone(),
                data_dir: None,
                roles: roles.clone(),
                internal_listen: internal_listen.clone(),
                portal_dir: portal_dir.clone(),
            },
        ),
        // Handled by `dispatch` before any server configuration is read.
        Command::Login { .. }
        | Command::Logout
        | Command::Whoami
        | Command::Admin(_)
        | Command::ServiceAccounts(_)
        | Command::SshKey(_)
        | Command::Alloc(_) => {
            return ExitCode::FAILURE;
        }
        Command::Bench(_) => return ExitCode::FAILURE,
        Command::Migrate { data_dir } | Command::Ledger(LedgerCommand::Verify { data_dir }) => {
            // Without a database URL, migrate acts on the embedded database in the data dir.
            let configured = |name: &str| std::env::var(name).is_ok_and(|value| !value.is_empty());
            let mode = if configured("DATABASE_URL") || configured("GPUAAS_DATABASE_URL") {
                Mode::Production
            } else {
                Mode::Embedded
            };
            (
                mode,
                CliOverrides {
                    config_file: cli.config.clone(),
                    listen: None,
                    data_dir: data_dir.clone(),
                    roles: vec![],
                    internal_listen: None,
                    portal_dir: None,
                },
            )
        }
    };
    let config = match Config::load(mode, &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gpuaas: {error}");
            return ExitCode::from(2);
        }
    };
    let format = match config.log_format {
        LogFormatSetting::Json => LogFormat::Json,
        LogFormatSetting::Text => LogFormat::Text,
    };
    gpuaas_telemetry::init_logging(format, &config.log_filter);

    let outcome = match cli.command {
        Command::Migrate { .. } => migrate(config).await,
        Command::Ledger(LedgerCommand::Verify { .. }) => match verify_ledger(config).await {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        _ => serve(config).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let text = gpuaas_telemetry::sanitize::scrub_text(&format!("{error:#}"));
            tracing::error!(error = %text, "gpuaas failed");
            eprintln!("gpuaas: {text}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let platform = Platform::connect(config).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        trigger.cancel();
    });
    run(platform, shutdown).await
}

async fn verify_ledger(config: Config) -> anyhow::Result<bool> {
    let store = gpuaas_store::Store::connect(&config.database_url, &gpuaas_store::PoolSettings::default()).await?;
    store.ensure_schema_current(&crate::migrations()).await?;
    let clean = crate::ledger::verify(&store).await;
    store.close().await;
    clean
}

async fn bench_ledger(database_url: Option<String>, settings: crate::ledger::LedgerBench) -> anyhow::Result<()> {
    let scratch = tempfile_dir()?;
    let url = database_url.unwrap_or_else(|| format!("sqlite://{}?mode=rwc", scratch.join("bench.db").display()));
    let outcome = crate::ledger::bench(&url, &settings).await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

async fn bench_allocations(
    database_url: Option<String>,
    settings: crate::alloc_bench::AllocationBench,
) -> anyhow::Result<()> {
    let scratch = tempfile_dir()?;
    let url = database_url.unwrap_or_else(|| format!("sqlite://{}?mode=rwc", scratch.join("bench.db").display()));
    let outcome = crate::alloc_bench::bench(&url, &settings, &scratch.join("pki")).await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

/// A fresh directory under the system temp dir for a benchmark's SQLite file.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("gpuaas-bench-{}", gpuaas_kernel::new_id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    if config.mode == Mode::Embedded {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let store = gpuaas_store::Store::connect(&config.database_url, &gpuaas_store::PoolSettings::default()).await?;
    let applied = store.migrate(&crate::migrations()).await?;
    println!("database {}: applied {} migrations {:?}", store.dialect().name(), applied.len(), applied);
    store.close().await;
    Ok(())
}

//! Starting and stopping the platform: engines, roles, supervised background loops and
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gpuaas_events::{EmbeddedBus, EventBus, NatsBus};
use gpuaas_outbox::{Relay, RelaySettings};
use gpuaas_policy::{PolicyClient, PolicyError, keys};
use gpuaas_store::{PoolSettings, Store};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, router};
use crate::config::{Config, Mode, Role, redact_url};
use gpuaas_http::ratelimit::{InProcessLimiter, RateLimiter, RedisLimiter};
use gpuaas_iam::{Iam, IamConfig, OidcConfig};

/// Connected engines, before any role runs.
pub struct Platform {
    pub config: Config,
    pub store: Store,
    pub bus: Arc<dyn EventBus>,
    pub policy: PolicyClient,
    pub iam: Iam,
    pub rate_limiter: Arc<dyn RateLimiter>,
    pub nodes: gpuaas_inventory::NodePlane,
    pub payments: gpuaas_payments::Payments,
    pub allocations: gpuaas_allocations::Allocations,
}

/// Card payments through Stripe when configured; without it every payment route
/// answers 503 `payments_not_configured` and operators still credit accounts.
pub fn payments(config: &Config, store: &Store, policy: &PolicyClient) -> anyhow::Result<gpuaas_payments::Payments> {
    let Some(settings) = &config.stripe else {
        return Ok(gpuaas_payments::Payments::new(store.clone(), policy.clone(), None, None));
    };
    let base = config.public_url.trim_end_matches('/');
    let stripe = gpuaas_payments::StripeConfig {
        secret_key: settings.secret_key.clone(),
        webhook_secrets: settings.webhook_secrets.clone(),
        api_base: settings.api_base.clone(),
        success_url: format!("{base}/billing/top-up/success?session_id={{CHECKOUT_SESSION_ID}}"),
        cancel_url: format!("{base}/billing/top-up/cancelled"),
        portal_return_url: format!("{base}/billing"),
    };
    let client = gpuaas_payments::HttpStripeClient::new(&stripe).context("Stripe client")?;
    Ok(gpuaas_payments::Payments::new(store.clone(), policy.clone(), Some(Arc::new(client)), Some(stripe)))
}

/// File of the control plane's task-signing key, inside the PKI dir.
pub const TASK_SIGNING_KEY_FILE: &str = "task-signing.key";
/// Lifetime of the internal listener's own certificate; a new one is issued per start.
const INTERNAL_CERTIFICATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The node plane over `store`: the built-in CA and the task-signing key from the PKI
/// dir (created on first start; never stored in the database).
pub fn node_plane(
    config: &Config,
    store: &Store,
    policy: &PolicyClient,
) -> anyhow::Result<gpuaas_inventory::NodePlane> {
    let ca = gpuaas_pki::BuiltinCa::load_or_create(&config.pki_dir)
        .with_context(|| format!("node CA in {}", config.pki_dir.display()))?;
    let signing_key = gpuaas_pki::load_or_create_signing_key(&config.pki_dir.join(TASK_SIGNING_KEY_FILE))
        .context("task-signing key")?;
    Ok(gpuaas_inventory::NodePlane::new(
        store.clone(),
        policy.clone(),
        Arc::new(ca),
        gpuaas_nodeagent_protocol::TaskSigner::new(signing_key),
        gpuaas_inventory::NodePlaneConfig {
            internal_url: config.internal_url.clone(),
            resource_ids: config.resource_ids.clone(),
        },
    ))
}

/// Names the internal listener's certificate must carry: the advertised URL's host,
/// and loopback for agents on the same machine.
fn internal_server_names(config: &Config) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Some(host) = url::Url::parse(&config.internal_url).ok().and_then(|url| url.host_str().map(str::to_owned)) {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

impl Platform {
    /// Connects the database (migrating it in embedded mode, checking it in production
    /// mode) and the event bus.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        if config.mode == Mode::Embedded {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        }
        let store = Store::connect(&config.database_url, &PoolSettings::default())
            .await
            .with_context(|| format!("database {}", redact_url(&config.database_url)))?;
        let migrations = crate::migrations();
        match config.mode {
            // One process owns the embedded database: keep it current automatically
            // (this still refuses a schema newer than the binary).
            Mode::Embedded => {
                store.migrate(&migrations).await?;
            }
            // Several processes share a production database: schema changes are an
            // explicit `gpuaas migrate` step, never a side effect of starting.
            Mode::Production => store.ensure_schema_current(&migrations).await?,
        }
        let bus: Arc<dyn EventBus> = match &config.nats_url {
            Some(url) => {
                Arc::new(NatsBus::connect(url).await.with_context(|| format!("event bus {}", redact_url(url)))?)
            }
            None => Arc::new(EmbeddedBus::new(store.clone())),
        };
        let policy = PolicyClient::new(store.clone(), PolicyClient::DEFAULT_CACHE_TTL);
        let iam = Iam::new(store.clone(), policy.clone(), iam_config(&config), reqwest::Client::new());
        let rate_limiter: Arc<dyn RateLimiter> = match (&config.mode, &config.redis_url) {
            (Mode::Production, Some(url)) => Arc::new(
                RedisLimiter::connect(url).await.with_context(|| format!("rate-limit store {}", redact_url(url)))?,
            ),
            _ => Arc::new(InProcessLimiter::new()),
        };
        let nodes = node_plane(&config, &store, &policy)?;
        let payments = payments(&config, &store, &policy)?;
        let allocations = gpuaas_allocations::Allocations::new(
            store.clone(),
            policy.clone(),
            nodes.clone(),
            config.resource_ids.clone(),
        );
        Ok(Self { config, store, bus, policy, iam, rate_limiter, nodes, payments, allocations })
    }
}

/// Runs the configured roles until `shutdown` fires, then drains and returns.
pub async fn run(platform: Platform, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Platform { config, store, bus, policy, iam, rate_limiter, nodes, payments, allocations } = platform;
    let mut tasks = JoinSet::new();
    let stop = shutdown.child_token();

    if config.runs(Role::Api) {
        bootstrap_admin(&config, &iam).await?;
        let state = AppState {
            store: store.clone(),
            bus: bus.clone(),
            policy: policy.clone(),
            metrics: gpuaas_telemetry::metrics_handle(),
            iam: iam.clone(),
            rate_limiter,
            nodes: nodes.clone(),
            payments,
            allocations: allocations.clone(),
            portal: crate::api::portal::Portal::new(&config.portal_dir),
            secure_cookies: config.public_url.starts_with("https://"),
        };
        let portal_dir = std::path::absolute(&config.portal_dir).unwrap_or_else(|_| config.portal_dir.clone());
        if state.portal.is_built() {
            tracing::info!(dir = %portal_dir.display(), "serving the web portal");
        } else {
            tracing::info!(dir = %portal_dir.display(), "web portal not built (no index.html); `/` says how to build it");
        }
        let app = router(state.clone(), axum::Router::new()).await?;
        let internal_app = crate::api::internal::router(state, crate::api::max_body_bytes(&policy).await?);
        let identity = nodes
            .ca()
            .issue_server_certificate(&internal_server_names(&config), INTERNAL_CERTIFICATE_VALIDITY)
            .await
            .context("internal listener certificate")?;
        let tls = gpuaas_pki::mtls_server_config(&nodes.ca_certificate_pem(), &identity)?;
        let internal = TcpListener::bind(config.internal_listen)
            .await
            .with_context(|| format!("cannot listen on {} (internal, mTLS)", config.internal_listen))?;
        let internal_address = internal.local_addr()?;
        // Printed before the public line: scripts and tests wait for that one as the
        // sign that the platform is up, and may stop reading there.
        println!("node agents connect to {} (mTLS, listening on {internal_address})", config.internal_url);
        tracing::info!(address = %internal_address, url = %config.internal_url, "internal mTLS listener");
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        println!("gpuaas is serving on http://{address}");
        tracing::info!(%address, mode = ?config.mode, database = store.dialect().name(), bus = bus.name(), "api listening");
        let http_stop = stop.clone();
        tasks.spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .with_graceful_shutdown(async move { http_stop.cancelled().await })
                .await
                .context("http server")
        });

        tasks.spawn(crate::api::internal::serve(internal, tls, internal_app, stop.clone()));
        tasks.spawn(node_wake_loop(nodes.clone(), stop.clone()));
    }
    if config.runs(Role::Relay) {
        let relay = Relay::new(store.clone(), bus.clone());
        tasks.spawn(relay_loop(relay, policy.clone(), stop.clone()));
    }
    if config.runs(Role::Workers) {
        tasks.spawn(housekeeping_loop(store.clone(), policy.clone(), stop.clone()));
        tasks.spawn(node_plane_loop(nodes.clone(), stop.clone()));
        tasks.spawn(workflow_loop(allocations.clone(), stop.clone()));
        tasks.spawn(reconcile_loop(allocations.clone(), stop.clone()));
        tasks.spawn(accrual_loop(store.clone(), policy.clone(), stop.clone()));
        for (name, filter) in
            [gpuaas_allocations::workflow::PROVISIONING_CONSUMER, gpuaas_allocations::workflow::DEPLETION_CONSUMER]
        {
            let spec = gpuaas_events::ConsumerSpec::new(name, filter);
            tasks.spawn(allocation_events_loop(allocations.clone(), bus.clone(), spec, stop.clone()));
        }
    }
    tracing::info!(roles = ?config.roles, "gpuaas started");

    // Supervision rule: a role that stops on its own (error or panic) takes the process
    // down, so an orchestrator restarts it whole instead of it running half-alive.
    let mut failure = None;
    tokio::select! {
        biased;
        () = shutdown.cancelled() => {}
        Some(result) = tasks.join_next() => {
            failure = match result {
                // Stopping because shutdown began is not a failure.
                Ok(Ok(())) if shutdown.is_cancelled() => None,
                Ok(Ok(())) => Some(anyhow::anyhow!("a role stopped unexpectedly")),
                Ok(Err(error)) => Some(error),
                Err(join_error) => Some(anyhow::anyhow!("a role panicked: {join_error}")),
            };
            stop.cancel();
        }
    }
    stop.cancel();
    // Long polls answer now instead of holding the HTTP server's drain.
    allocations.end_waits();
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let drained = tokio::time::timeout(grace, async {
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(error)) = result {
                tracing::warn!(%error, "role ended with an error during shutdown");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace_seconds = grace.as_secs(), "shutdown grace period over; abandoning unfinished work");
        tasks.abort_all();
    }
    store.close().await;
    tracing::info!("gpuaas stopped");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

pub fn iam_config(config: &Config) -> IamConfig {
    IamConfig {
        issuer_url: config.public_url.clone(),
        audience: IAM_AUDIENCE.to_owned(),
        oidc: config.oidc.as_ref().map(|oidc| OidcConfig {
            issuer_url: oidc.issuer_url.clone(),
            client_id: oidc.client_id.clone(),
            client_secret: oidc.client_secret.clone(),
            redirect_uri: oidc.redirect_uri.clone(),
            roles_claim: oidc.roles_claim.clone(),
            scopes: oidc.scopes.clone(),
        }),
        resource_ids: config.resource_ids.clone(),
    }
}

/// `aud` of the platform's own access tokens.
pub const IAM_AUDIENCE: &str = "gpuaas";
/// Where a generated first-admin password is written, inside the data dir.
pub const ADMIN_CREDENTIALS_FILE: &str = "admin-credentials";
const GENERATED_ADMIN_EMAIL: &str = "admin@gpuaas.local";

/// Makes sure an administrator exists. The operator's GPUAAS_ADMIN_EMAIL and
/// GPUAAS_ADMIN_PASSWORD are used when set; otherwise a password is generated, printed
/// once and written to `<data-dir>/admin-credentials` (mode 0600).
async fn bootstrap_admin(config: &Config, iam: &Iam) -> anyhow::Result<()> {
    let (email, password, generated) = match &config.admin {
        Some(admin) => (admin.email.clone(), admin.password.clone(), false),
        None => (GENERATED_ADMIN_EMAIL.to_owned(), generate_password(), true),
    };
    let Some(user) = iam.bootstrap_admin(&email, &password).await.context("creating the first administrator")? else {
        return Ok(());
    };
    if generated {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let path = config.data_dir.join(ADMIN_CREDENTIALS_FILE);
        write_private_file(&path, &format!("email={email}\npassword={password}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("created administrator {email} with password {password}");
        println!("(shown once; also saved to {} with mode 0600)", path.display());
    } else {
        println!("created administrator {email}");
    }
    tracing::info!(user_id = %user.id, email = %user.email, "first administrator created");
    Ok(())
}

fn generate_password() -> String {
    use rand::distr::{Alphanumeric, SampleString as _};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// Writes `contents` to a file only its owner can read (0600 on Unix).
pub fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())
}

pub async fn relay_settings(policy: &PolicyClient) -> Result<RelaySettings, PolicyError> {
    Ok(RelaySettings {
        batch_size: policy.get(keys::OUTBOX_RELAY_BATCH_SIZE).await?,
        lease: policy.get_duration_secs(keys::OUTBOX_RELAY_LEASE_SECONDS).await?,
        max_attempts: policy.get(keys::OUTBOX_MAX_ATTEMPTS).await?,
        retry_base: policy.get_duration_ms(keys::OUTBOX_RETRY_BASE_MS).await?,
        retry_max: policy.get_duration_ms(keys::OUTBOX_RETRY_MAX_MS).await?,
    })
}

/// Publishes outbox rows until stopped. Errors are logged and retried after a pause:
/// the relay must outlive database and bus hiccups.
async fn relay_loop(relay: Relay, policy: PolicyClient, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        let pause = match relay_pass(&relay, &policy).await {
            Ok(true) => Duration::ZERO,
            Ok(false) => idle_pause(&policy).await,
            Err(error) => {
                tracing::error!(error = %error, "outbox relay pass failed");
                idle_pause(&policy).await
            }
        };
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One relay pass; true when it did work (so the loop goes again at once).
async fn relay_pass(relay: &Relay, policy: &PolicyClient) -> anyhow::Result<bool> {
    let settings = relay_settings(policy).await?;
    let report = relay.run_once(&settings).await?;
    let counts = relay.counts().await?;
    metrics::gauge!("outbox_pending").set(counts.pending as f64);
    metrics::gauge!("outbox_failed").set(counts.failed as f64);
    Ok(report.published > 0 || report.dead_lettered > 0)
}

async fn idle_pause(policy: &PolicyClient) -> Duration {
    let interval = policy.get_duration_ms(keys::OUTBOX_RELAY_INTERVAL_MS).await.unwrap_or(Duration::from_secs(2));
    let jitter = policy.get_duration_ms(keys::OUTBOX_RELAY_JITTER_MS).await.unwrap_or(Duration::ZERO);
    let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(0);
    interval + Duration::from_millis(if jitter_ms == 0 { 0 } else { rand::rng().random_range(0..=jitter_ms) })
}

const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// Periodic clean-up owned by the workers role.
async fn housekeeping_loop(store: Store, policy: PolicyClient, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        match gpuaas_http::idempotency::purge_expired(&store).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
            Err(error) => tracing::error!(%error, "idempotency purge failed"),
        }
        if let Err(error) = purge_old_events(&store, &policy).await {
            tracing::error!(%error, "event retention purge failed");
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(HOUSEKEEPING_INTERVAL) => {}
        }
    }
}

/// Deletes what the events retention policy (`events.retention_hours`, at least one
/// hour) lets go: published outbox rows, the embedded bus's log entries every consumer
/// has read, and consumers' processed-event records. Without it every allocation's
/// life would leave about a dozen rows behind for good.
async fn purge_old_events(store: &Store, policy: &PolicyClient) -> anyhow::Result<()> {
    let hours = policy.get(keys::EVENTS_RETENTION_HOURS).await?;
    let cutoff = gpuaas_kernel::Timestamp::now().saturating_sub(event_retention(hours));
    let outbox = gpuaas_outbox::purge_published(store, cutoff).await?;
    let (log, processed) = gpuaas_events::purge_before(store, cutoff).await?;
    if outbox + log + processed > 0 {
        tracing::info!(outbox, log, processed, hours, "events past retention purged");
    }
    Ok(())
}

/// The retention window `events.retention_hours` names: at least an hour, so a value
/// of zero or less cannot delete the records that deduplicate redeliveries as they are
/// written.
fn event_retention(hours: i64) -> Duration {
    Duration::from_secs(u64::try_from(hours).unwrap_or(0).max(1).saturating_mul(3600))
}

const NODE_PLANE_INTERVAL: Duration = Duration::from_secs(5);
const NODE_WAKE_INTERVAL: Duration = Duration::from_secs(1);

/// Offline detection and the node task sweep, owned by the workers role. Failures are
/// logged and retried on the next tick: a database hiccup must not stop detection.
async fn node_plane_loop(nodes: gpuaas_inventory::NodePlane, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        if let Err(error) = nodes.mark_offline().await {
            tracing::error!(%error, "offline detection failed");
        }
        match nodes.sweep_tasks().await {
            Ok(report) if report != Default::default() => tracing::info!(?report, "node tasks swept"),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "node task sweep failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(NODE_PLANE_INTERVAL) => {}
        }
    }
}

/// Wakes this process's parked pulls for tasks another process queued (an enqueue in
/// this process wakes them at once).
async fn node_wake_loop(nodes: gpuaas_inventory::NodePlane, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        if let Err(error) = nodes.wake_waiting_nodes().await {
            tracing::warn!(%error, "waking node pulls failed");
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(NODE_WAKE_INTERVAL) => {}
        }
    }
}

/// Claims due allocations and takes their next workflow step; sleeps until woken (a
/// create or release in this process) or the poll interval passes when idle.
pub async fn workflow_loop(
    allocations: gpuaas_allocations::Allocations,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // Several runners side by side: a pass waits for its slowest group of steps (a
    // lock wait, a long step), and meanwhile the others keep claiming what comes due.
    // Claims never overlap (each takes a lease, skipping rows another holds).
    let mut runners = tokio::task::JoinSet::new();
    for _ in 0..WORKFLOW_RUNNERS {
        runners.spawn(workflow_runner(allocations.clone(), stop.clone()));
    }
    while let Some(joined) = runners.join_next().await {
        joined??;
    }
    Ok(())
}

/// Runners of one process; see [`workflow_loop`].
const WORKFLOW_RUNNERS: usize = 4;

async fn workflow_runner(allocations: gpuaas_allocations::Allocations, stop: CancellationToken) -> anyhow::Result<()> {
    const BATCH: usize = 64;
    // One group per pass: a group's statements cost the same for 5 allocations as for
    // 60, and the other runners give the parallelism (ADR 023).
    const PARALLEL: usize = 1;
    loop {
        // Any work found means more may have come due while it ran (a pass takes as
        // long as its slowest steps): look again at once, and sleep only on an empty pass.
        let busy = match allocations.run_due(BATCH, PARALLEL).await {
            Ok(report) => report.claimed > 0,
            Err(error) => {
                tracing::error!(%error, "allocation workflow pass failed");
                false
            }
        };
        if busy {
            if stop.is_cancelled() {
                return Ok(());
            }
            continue;
        }
        let idle = allocations.poll_interval().await;
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = allocations.wait_for_work(idle) => {}
        }
    }
}

const RECONCILE_INTERVAL: Duration = Duration::from_secs(15);

/// Compares nodes' reported users with what is billed and stops billing allocations
/// their node no longer has. Failures are logged and retried on the next tick: one bad
/// pass must not end reconciliation for good.
async fn reconcile_loop(allocations: gpuaas_allocations::Allocations, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        match allocations.reconcile().await {
            Ok(report) if report.missing + report.orphans + report.resolved > 0 => {
                tracing::info!(?report, "reconciliation pass changed findings");
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "reconciliation pass failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
}

/// Debits open usage every cycle and announces balance crossings; the depletion event
/// is what force-releases a tenant's allocations. Ticks at least every 5 s so a
/// depleted tenant is noticed soon after its last whole window.
async fn accrual_loop(store: Store, policy: PolicyClient, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        let window: i64 = policy.get(keys::BILLING_WINDOW_SECONDS).await.unwrap_or(60);
        if let Err(error) = accrual_cycle(&store, &policy, window).await {
            tracing::error!(%error, "usage accrual failed");
        }
        let tick = Duration::from_secs(u64::try_from(window.clamp(1, 5)).unwrap_or(5));
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(tick) => {}
        }
    }
}

/// Usage records debited per transaction: large batches keep the per-transaction
/// round trips few (posting is set-based), small enough to hold account locks briefly.
const ACCRUAL_BATCH: usize = 2500;

/// Shares of tenants an accrual cycle debits side by side on PostgreSQL, a connection
/// each (ADR 024): two use both cores of a small database host and leave the pool's
/// other connections to the requests and the workflow.
const ACCRUAL_WORKERS: usize = 2;

/// One accrual cycle and the balance check after it.
pub async fn accrual_cycle(
    store: &Store,
    policy: &PolicyClient,
    window_seconds: i64,
) -> anyhow::Result<gpuaas_billing::accrual::AccrualReport> {
    let settings = gpuaas_billing::accrual::AccrualSettings {
        window_seconds,
        checkpoint_every: policy.get(keys::BILLING_CHECKPOINT_EVERY).await?,
        batch: ACCRUAL_BATCH,
        workers: ACCRUAL_WORKERS,
    };
    let now = gpuaas_kernel::Timestamp::now();
    let report = gpuaas_billing::accrual::accrue(store, now, &settings).await?;
    let threshold: i64 = policy.get(keys::BILLING_LOW_BALANCE_THRESHOLD_MINOR).await?;
    let correlation_id = format!("accrual-{}", now.as_micros());
    for alert in gpuaas_billing::accrual::check_balances(store, &report.tenants, threshold, &correlation_id).await? {
        tracing::info!(tenant_id = %alert.tenant_id, from = ?alert.from, to = ?alert.to, balance_minor = alert.balance_minor, "balance crossed a threshold");
    }
    if report.entries > 0 {
        metrics::counter!("billing_usage_debits_total").increment(report.entries as u64);
    }
    Ok(report)
}

/// Feeds one durable consumer's events to the allocations service, acknowledging each
/// once handled (handlers are idempotent, so a crash before the ack only repeats one).
async fn allocation_events_loop(
    allocations: gpuaas_allocations::Allocations,
    bus: Arc<dyn EventBus>,
    spec: gpuaas_events::ConsumerSpec,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    const WAIT: Duration = Duration::from_secs(1);
    loop {
        let fetched = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            fetched = bus.fetch(&spec, 64, WAIT) => fetched,
        };
        let deliveries = match fetched {
            Ok(deliveries) => deliveries,
            Err(error) => {
                tracing::warn!(consumer = %spec.name, %error, "event fetch failed");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(WAIT) => {}
                }
                continue;
            }
        };
        let mut failed = false;
        for delivery in deliveries {
            let subject = delivery.event.subject.clone();
            let outcome = match allocations.handle_event(&delivery.event).await {
                Ok(()) => delivery.ack().await.map_err(anyhow::Error::from),
                Err(error) => Err(error.into()),
            };
            if let Err(error) = outcome {
                // Not acknowledged: it (and those after it) come again after a pause.
                tracing::error!(consumer = %spec.name, %subject, %error, "event handling failed");
                failed = true;
                break;
            }
        }
        if failed {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(WAIT) => {}
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; draining");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_retention_is_the_policy_s_hours_and_never_under_one() {
        assert_eq!(event_retention(72), Duration::from_secs(72 * 3600));
        assert_eq!(event_retention(1), Duration::from_secs(3600));
        assert_eq!(event_retention(0), Duration::from_secs(3600));
        assert_eq!(event_retention(-5), Duration::from_secs(3600));
        assert!(event_retention(i64::MAX) > event_retention(72), "a huge value saturates, never overflows");
    }
}

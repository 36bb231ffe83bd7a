//! Shared fixtures for the node-plane tests: a database with every migration the
//! service needs, a node plane over a built-in CA and task-signing key in a temp dir,
//! and helpers that play the operator and the node agent (CSRs, enrollment,
//! heartbeats, verified task pulls).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use gpuaas_audit::{ActorType, AuditFilter, AuditLog};
use gpuaas_inventory::nodes::{NewNode, RegisteredNode};
use gpuaas_inventory::{Actor, NewSku, NodePlane, NodePlaneConfig, Sku};
use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::signing::verifying_key_from_base64;
use gpuaas_nodeagent_protocol::wire::{EnrollRequest, EnrollResponse, HeartbeatRequest};
use gpuaas_nodeagent_protocol::{
    GpuHealth, GpuInfo, Inventory, InventorySource, NonceCache, PROTOCOL_VERSION, TaskSigner, TaskVerifier,
};
use gpuaas_pki::rustls::pki_types::CertificateDer;
use gpuaas_pki::rustls::pki_types::pem::PemObject;
use gpuaas_pki::{BuiltinCa, PeerCertificate, load_or_create_signing_key, peer_certificate};
use gpuaas_policy::PolicyClient;
use gpuaas_store::sqlx::{self, Row as _};
use gpuaas_store::{Migration, PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};
use tempfile::TempDir;

pub const CORR: &str = "corr-test";
pub const AGENT_VERSION: &str = "0.1.0-test";
pub const INTERNAL_URL: &str = "https://127.0.0.1:8443";
pub const GPU_MODEL: &str = "NVIDIA H100 80GB HBM3";

// Not every test binary calls it directly; assert_err! and assert_invalid! do.
#[allow(unused_imports)]
pub use gpuaas_testkit::err;

/// Asserts a validation error about `field`.
macro_rules! assert_invalid {
    ($result:expr, $field:expr $(,)?) => {{
        let error = $crate::support::err($result);
        match &error {
            gpuaas_inventory::InventoryError::Invalid { field, .. } => {
                assert_eq!(field, $field, "wrong field in {error:?}")
            }
            other => panic!("expected Invalid {{ field: {:?} }}, got {other:?}", $field),
        }
        error
    }};
}

pub fn migrations() -> Vec<Migration> {
    [
        gpuaas_policy::MIGRATIONS,
        gpuaas_outbox::MIGRATIONS,
        gpuaas_events::MIGRATIONS,
        gpuaas_audit::MIGRATIONS,
        gpuaas_inventory::MIGRATIONS,
    ]
    .concat()
}

/// A migrated test database and a node plane on it.
pub struct Env {
    pub db: TestDatabase,
    pub store: Store,
    pub policy: PolicyClient,
    pub plane: NodePlane,
    /// The CA's key and the task-signing key live here for the test's lifetime.
    pub keys: TempDir,
}

pub async fn env(backend: Backend) -> Env {
    let db = TestDatabase::create(backend).await;
    let settings = PoolSettings { max_connections: 16, ..PoolSettings::default() };
    let store = Store::connect(&db.url, &settings).await.expect("connect");
    store.migrate(&migrations()).await.expect("migrate");
    // No cache: a policy change in a test takes effect on the next call.
    let policy = PolicyClient::new(store.clone(), Duration::ZERO);
    let keys = tempfile::tempdir().expect("temp dir for keys");
    let ca = BuiltinCa::load_or_create(&keys.path().join("ca")).expect("built-in CA");
    let signing_key = load_or_create_signing_key(&keys.path().join("task-signing.key")).expect("signing key");
    let plane = NodePlane::new(
        store.clone(),
        policy.clone(),
        Arc::new(ca),
        TaskSigner::new(signing_key),
        NodePlaneConfig { internal_url: INTERNAL_URL.into(), resource_ids: Default::default() },
    );
    Env { db, store, policy, plane, keys }
}

/// The platform operator as the HTTP layer would name them.
pub fn operator() -> Actor {
    Actor {
        id: "operator-1".into(),
        actor_type: ActorType::User,
        role: "admin".into(),
        tenant_id: None,
        correlation_id: CORR.into(),
    }
}

pub fn new_sku(name: &str, gpus_per_node: i64) -> NewSku {
    NewSku {
        name: name.into(),
        display_name: None,
        gpu_model: GPU_MODEL.into(),
        gpus_per_node,
        gpu_memory_mib: 81_559,
        vcpus_per_node: 192,
        memory_bytes_per_node: 2 << 40,
        price_per_gpu_hour_minor: 249,
        currency: "USD".into(),
    }
}

pub async fn sku(env: &Env, name: &str, gpus_per_node: i64) -> Sku {
    env.plane.create_sku(&operator(), &new_sku(name, gpus_per_node)).await.expect("create SKU")
}

pub fn new_node(hostname: &str, sku: &str) -> NewNode {
    NewNode { hostname: hostname.into(), sku: sku.into(), onboarding_mode: None }
}

pub async fn register(env: &Env, hostname: &str, sku: &str) -> RegisteredNode {
    env.plane.register_node(&operator(), &new_node(hostname, sku)).await.expect("register node")
}

/// A fresh P-256 key and a PKCS#10 request for it, as the agent makes at enrollment.
pub fn csr() -> String {
    let key = rcgen::KeyPair::generate().expect("key pair");
    rcgen::CertificateParams::default().serialize_request(&key).expect("CSR").pem().expect("CSR PEM")
}

pub fn enroll_request(token: &str, hostname: &str) -> EnrollRequest {
    EnrollRequest {
        token: token.into(),
        csr_pem: csr(),
        hostname: hostname.into(),
        agent_version: AGENT_VERSION.into(),
        protocol_version: PROTOCOL_VERSION,
    }
}

/// What the TLS layer hands the service for a client certificate (PEM in, identity out).
pub fn peer_of(certificate_pem: &str) -> PeerCertificate {
    let der = CertificateDer::from_pem_slice(certificate_pem.as_bytes()).expect("a PEM certificate");
    peer_certificate(&der).expect("a node certificate")
}

/// A node that registered and enrolled: it is active and holds a certificate.
pub struct EnrolledNode {
    pub id: String,
    pub hostname: String,
    pub enrollment: EnrollResponse,
    pub peer: PeerCertificate,
}

pub async fn enrolled(env: &Env, hostname: &str, sku: &str) -> EnrolledNode {
    let registered = register(env, hostname, sku).await;
    let enrollment =
        env.plane.enroll(&enroll_request(&registered.enrollment.token, hostname), CORR).await.expect("enroll");
    assert_eq!(enrollment.node_id, registered.node.id);
    let peer = peer_of(&enrollment.certificate_pem);
    EnrolledNode { id: registered.node.id, hostname: hostname.into(), enrollment, peer }
}

pub fn gpus(count: u32) -> Vec<GpuInfo> {
    (0..count)
        .map(|index| GpuInfo {
            index,
            uuid: Some(format!("GPU-0000000{index}-test")),
            model: GPU_MODEL.into(),
            memory_mib: 81_559,
            driver_version: Some("550.54.15".into()),
            cuda_version: Some("12.4".into()),
            health: GpuHealth::Ok,
        })
        .collect()
}

pub fn inventory(hostname: &str, source: InventorySource, gpu_count: u32) -> Inventory {
    Inventory {
        source,
        hostname: hostname.into(),
        cpu_cores: 192,
        memory_bytes: 2 << 40,
        disk_bytes: 30 << 40,
        gpus: gpus(gpu_count),
        allocation_users: Vec::new(),
    }
}

pub fn heartbeat(inventory: Option<Inventory>) -> HeartbeatRequest {
    HeartbeatRequest { agent_version: AGENT_VERSION.into(), protocol_version: PROTOCOL_VERSION, inventory }
}

/// The verifier an agent builds at enrollment: the plane's pinned key, its own node id.
pub fn verifier(env: &Env, node_id: &str) -> TaskVerifier {
    let key = verifying_key_from_base64(&env.plane.task_signing_public_key()).expect("task-signing key");
    TaskVerifier::new(key, node_id, NonceCache::default())
}

/// The definitions (`CREATE INDEX ...`) of `table`'s indexes, both engines: what a
/// test of which columns an update may change in place reads.
pub async fn index_definitions(store: &Store, table: &str) -> Vec<String> {
    let sql = match store.dialect() {
        gpuaas_store::Dialect::Postgres => "SELECT indexdef FROM pg_indexes WHERE tablename = $1",
        gpuaas_store::Dialect::Sqlite => {
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL"
        }
    };
    sqlx::query_scalar(sql).bind(table).fetch_all(store.pool()).await.expect("index definitions")
}

/// Payloads of the outbox events with `subject`, oldest first.
pub async fn outbox_payloads(store: &Store, subject: &str) -> Vec<serde_json::Value> {
    let rows = sqlx::query("SELECT envelope FROM outbox_events WHERE subject = $1 ORDER BY seq")
        .bind(subject)
        .fetch_all(store.pool())
        .await
        .expect("outbox query");
    rows.iter()
        .map(|row| {
            let text: String = row.try_get("envelope").expect("envelope column");
            let envelope: serde_json::Value = serde_json::from_str(&text).expect("envelope JSON");
            envelope["payload"].clone()
        })
        .collect()
}

/// Outbox events with `subject` about `node_id`.
pub async fn node_events(store: &Store, subject: &str, node_id: &str) -> usize {
    outbox_payloads(store, subject).await.iter().filter(|payload| payload["node_id"] == node_id).count()
}

/// Audit rows with `action`, newest first.
pub async fn audit_rows(store: &Store, action: &str) -> Vec<AuditLog> {
    let filter = AuditFilter { action: Some(action.to_owned()), ..AuditFilter::default() };
    gpuaas_audit::list(store, &filter, None, 200).await.expect("audit list").items
}

/// Sleeps just long enough for the microsecond clock to move past `since`.
pub async fn let_time_pass(since: Timestamp) {
    while Timestamp::now().as_micros() <= since.as_micros() + 1_000 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Another node-plane instance on the same database and keys: another control-plane
/// process, in effect, with its own waiting pulls.
pub fn second_plane(env: &Env) -> NodePlane {
    let ca = BuiltinCa::load_or_create(&env.keys.path().join("ca")).expect("built-in CA");
    let signing_key = load_or_create_signing_key(&env.keys.path().join("task-signing.key")).expect("signing key");
    NodePlane::new(
        env.store.clone(),
        env.policy.clone(),
        Arc::new(ca),
        TaskSigner::new(signing_key),
        NodePlaneConfig { internal_url: INTERNAL_URL.into(), resource_ids: Default::default() },
    )
}

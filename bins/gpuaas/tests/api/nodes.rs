//! The node plane over HTTP: the SKU catalog, node registration and enrollment on the
//! public API, and the internal mTLS API agents call (heartbeats, the signed task queue,
//! results), with the operator's lifecycle controls and what users may see.

use std::time::Duration;

use gpuaas::api::route_table;
use gpuaas_inventory::Actor;
use gpuaas_inventory::slots::{self, PlacementStrategy};
use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::signing::verifying_key_from_base64;
use gpuaas_nodeagent_protocol::wire::{EnrollResponse, PullResponse};
use gpuaas_nodeagent_protocol::{
    GpuHealth, GpuInfo, Inventory, InventorySource, NonceCache, Refusal, RefusalCode, SignedTask, Task, TaskOutcome,
    TaskResult, TaskVerifier, paths,
};
use gpuaas_pki::CaClient as _;
use gpuaas_policy::keys;
use gpuaas_testkit::Backend;
use reqwest::Method;

use crate::helpers::{TestApp, envelope, json};

const AGENT_VERSION: &str = "1.4.0";

// ------------------------------------------------------------------ helpers

pub(crate) fn sku_body(name: &str, gpus: i64) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "gpu_model": "NVIDIA H100 80GB HBM3",
        "gpus_per_node": gpus,
        "gpu_memory_mib": 81_559,
        "vcpus_per_node": 96,
        "memory_bytes_per_node": 1_i64 << 40,
        "price_per_gpu_hour_minor": 250,
        "currency": "USD",
    })
}

/// Adds a SKU as the operator; returns it.
pub(crate) async fn create_sku(app: &TestApp, admin: &str, name: &str, gpus: i64) -> serde_json::Value {
    json(app.post("/api/v1/admin/skus", admin, sku_body(name, gpus)).await, 201).await
}

/// Registers a node as the operator; returns its id and its one-time enrollment token.
pub(crate) async fn register(app: &TestApp, admin: &str, hostname: &str, sku: &str) -> (String, String) {
    let body =
        json(app.post("/api/v1/admin/nodes", admin, serde_json::json!({"hostname": hostname, "sku": sku})).await, 201)
            .await;
    let id = body["node"]["id"].as_str().unwrap_or_else(|| panic!("no node id in {body}")).to_owned();
    let token = body["enrollment"]["token"].as_str().unwrap_or_else(|| panic!("no token in {body}")).to_owned();
    (id, token)
}

/// A fresh key pair (PKCS#8 PEM) and a CSR for it, as an agent makes them.
fn key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let csr = rcgen::CertificateParams::new(vec!["agent.invalid".into()])
        .unwrap_or_else(|e| panic!("{e}"))
        .serialize_request(&key)
        .unwrap_or_else(|e| panic!("{e}"))
        .pem()
        .unwrap_or_else(|e| panic!("{e}"));
    (key.serialize_pem(), csr)
}

fn enroll_body(token: &str, csr_pem: &str) -> serde_json::Value {
    serde_json::json!({
        "token": token,
        "csr_pem": csr_pem,
        "hostname": "gpu-host.dc1.example",
        "agent_version": AGENT_VERSION,
        "protocol_version": 1,
    })
}

/// `POST /api/v1/nodes/enroll` without credentials, as an agent calls it.
async fn post_enroll(app: &TestApp, body: serde_json::Value) -> reqwest::Response {
    app.client.post(app.url(paths::ENROLL)).json(&body).send().await.unwrap_or_else(|e| panic!("{e}"))
}

/// An HTTPS client for the internal listener that trusts only `ca_pem`; with
/// `identity` (certificate PEM, key PEM) it presents that client certificate.
fn internal_client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(20));
    if let Some((certificate_pem, key_pem)) = identity {
        let pem = format!("{certificate_pem}\n{key_pem}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}")));
    }
    builder.build().unwrap_or_else(|e| panic!("{e}"))
}

/// A node that enrolled over HTTP, with an mTLS client holding its certificate.
#[derive(Clone)]
pub(crate) struct Agent {
    pub(crate) id: String,
    enrollment: EnrollResponse,
    client: reqwest::Client,
}

impl Agent {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.enrollment.internal_url)
    }

    async fn heartbeat(&self, body: serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(paths::HEARTBEAT)).json(&body).send().await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn beat(&self) -> reqwest::Response {
        self.heartbeat(serde_json::json!({"agent_version": AGENT_VERSION, "protocol_version": 1})).await
    }

    async fn pull_raw(&self, query: &str) -> reqwest::Response {
        let url = format!("{}?{query}", self.url(paths::TASKS));
        self.client.get(url).send().await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn pull(&self, wait_seconds: u64) -> Vec<SignedTask> {
        let response = self.pull_raw(&format!("wait_seconds={wait_seconds}")).await;
        assert_eq!(response.status().as_u16(), 200, "pull of {}", self.id);
        let body: PullResponse = response.json().await.unwrap_or_else(|e| panic!("{e}"));
        body.tasks
    }

    async fn report(&self, task_id: &str, result: &TaskResult) -> reqwest::Response {
        self.client
            .post(self.url(&paths::task_result(task_id)))
            .json(result)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// What the agent checks every delivery with: the key it pinned at enrollment.
    fn verifier(&self) -> TaskVerifier {
        let key = verifying_key_from_base64(&self.enrollment.task_signing_public_key).unwrap_or_else(|e| panic!("{e}"));
        TaskVerifier::new(key, self.id.clone(), NonceCache::default())
    }
}

/// Spends `token` on a certificate for a fresh key and builds the node's mTLS client.
pub(crate) async fn enroll(app: &TestApp, token: &str) -> Agent {
    let (key_pem, csr_pem) = key_and_csr();
    let response = post_enroll(app, enroll_body(token, &csr_pem)).await;
    assert_eq!(response.status().as_u16(), 201, "enrollment");
    let enrollment: EnrollResponse = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    let client =
        internal_client(&enrollment.ca_certificate_pem, Some((enrollment.certificate_pem.as_str(), key_pem.as_str())));
    Agent { id: enrollment.node_id.clone(), enrollment, client }
}

/// Registers and enrolls a node of `sku`.
pub(crate) async fn enrolled(app: &TestApp, admin: &str, hostname: &str, sku: &str) -> Agent {
    let (id, token) = register(app, admin, hostname, sku).await;
    let agent = enroll(app, &token).await;
    assert_eq!(agent.id, id);
    agent
}

fn gpus(count: u32, model: &str, health: GpuHealth, uuids: bool) -> Vec<GpuInfo> {
    (0..count)
        .map(|index| GpuInfo {
            index,
            uuid: uuids.then(|| format!("GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd")),
            model: model.into(),
            memory_mib: 81_559,
            driver_version: Some("550.54.15".into()),
            cuda_version: Some("12.4".into()),
            health,
        })
        .collect()
}

/// What a host without NVIDIA drivers reports from its inventory file.
fn declared_inventory(count: u32) -> Inventory {
    Inventory {
        source: InventorySource::Declared,
        hostname: "gpu-host.dc1.example".into(),
        cpu_cores: 96,
        memory_bytes: 1 << 40,
        disk_bytes: 1 << 42,
        gpus: gpus(count, "NVIDIA H100 80GB HBM3", GpuHealth::Unknown, false),
        allocation_users: Vec::new(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_else(|e| panic!("{e}"))
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap_or_else(|e| panic!("{e}"))
}

async fn node_view(app: &TestApp, admin: &str, id: &str) -> serde_json::Value {
    json(app.get(&format!("/api/v1/admin/nodes/{id}"), admin).await, 200).await
}

async fn node_action(app: &TestApp, admin: &str, id: &str, action: &str) -> reqwest::Response {
    app.post(&format!("/api/v1/admin/nodes/{id}/{action}"), admin, serde_json::json!({})).await
}

async fn audit_rows(app: &TestApp, admin: &str, action: &str) -> Vec<serde_json::Value> {
    let page = json(app.get(&format!("/api/v1/admin/audit-logs?action={action}"), admin).await, 200).await;
    page["items"].as_array().cloned().unwrap_or_default()
}

fn field(body: &serde_json::Value) -> &serde_json::Value {
    &body["error"]["details"]["field"]
}

fn item<'a>(page: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    page["items"].as_array().into_iter().flatten().find(|item| item["id"] == id)
}

// ------------------------------------------------------------------ tests

async fn sku_catalog_is_managed_by_operators_and_read_by_users(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    let user = app.token_for("alice").await;

    let h100 = create_sku(&app, &admin, "h100-80gb-x8", 8).await;
    let h100_id = h100["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(h100["display_name"], "h100-80gb-x8", "the display name defaults to the name: {h100}");
    assert_eq!(h100["active"], true);
    let mut a100 = sku_body("a100-40gb-x4", 4);
    a100["display_name"] = "A100 40GB x4".into();
    a100["price_per_gpu_hour_minor"] = 120.into();
    a100["currency"] = "EUR".into();
    let a100 = json(app.post("/api/v1/admin/skus", &admin, a100).await, 201).await;
    let a100_id = a100["id"].as_str().unwrap_or_default().to_owned();

    let listed = json(app.get("/api/v1/skus", &user).await, 200).await;
    let names: Vec<&str> =
        listed["items"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["a100-40gb-x4", "h100-80gb-x8"], "{listed}");
    let seen = item(&listed, &h100_id).unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(seen["price_per_gpu_hour_minor"], 250);
    assert_eq!(seen["currency"], "USD");
    assert_eq!(seen["gpus_per_node"], 8);
    assert_eq!(seen["gpu_model"], "NVIDIA H100 80GB HBM3");
    let seen = item(&listed, &a100_id).unwrap_or_else(|| panic!("{listed}"));
    assert_eq!((&seen["price_per_gpu_hour_minor"], &seen["currency"]), (&120.into(), &"EUR".into()));

    // Deactivating hides the SKU from users; operators still see it, unchanged otherwise.
    let path = format!("/api/v1/admin/skus/{h100_id}");
    let patched =
        json(send(&app, Method::PATCH, &path, &admin, Some(serde_json::json!({"active": false}))).await, 200).await;
    assert_eq!(patched["active"], false);
    assert_eq!(patched["price_per_gpu_hour_minor"], 250);
    let listed = json(app.get("/api/v1/skus", &user).await, 200).await;
    assert!(item(&listed, &h100_id).is_none(), "a deactivated SKU is not offered: {listed}");
    assert!(item(&listed, &a100_id).is_some(), "{listed}");
    let all = json(app.get("/api/v1/admin/skus", &admin).await, 200).await;
    assert_eq!(item(&all, &h100_id).map(|s| s["active"].clone()), Some(false.into()), "{all}");
    assert_eq!(audit_rows(&app, &admin, "sku.deactivate").await.len(), 1);
    // Nodes cannot be registered on it either.
    let refused =
        app.post("/api/v1/admin/nodes", &admin, serde_json::json!({"hostname": "gpu-01", "sku": "h100-80gb-x8"})).await;
    assert_eq!(field(&envelope(refused, 400, "validation_error").await), "sku");
    // Reactivated with a new price, users see the new price.
    let body = serde_json::json!({"active": true, "price_per_gpu_hour_minor": 199});
    json(send(&app, Method::PATCH, &path, &admin, Some(body)).await, 200).await;
    let listed = json(app.get("/api/v1/skus", &user).await, 200).await;
    assert_eq!(item(&listed, &h100_id).map(|s| s["price_per_gpu_hour_minor"].clone()), Some(199.into()), "{listed}");

    // Bad input names the field and changes nothing.
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("currency", "usd".into(), "currency"),
        ("gpus_per_node", 0.into(), "gpus_per_node"),
        ("gpus_per_node", 65.into(), "gpus_per_node"),
        ("name", "H100 x8".into(), "name"),
        ("price_per_gpu_hour_minor", (-1).into(), "price_per_gpu_hour_minor"),
    ];
    for (key, value, expected) in cases {
        let mut body = sku_body("bad-sku", 8);
        body[key] = value;
        let response = app.post("/api/v1/admin/skus", &admin, body).await;
        assert_eq!(field(&envelope(response, 400, "validation_error").await), expected, "{key}");
    }
    let mut unknown = sku_body("bad-sku", 8);
    unknown["colour"] = "green".into();
    let response = app.post("/api/v1/admin/skus", &admin, unknown).await;
    assert_eq!(field(&envelope(response, 400, "unknown_field").await), "colour");
    envelope(app.post("/api/v1/admin/skus", &admin, sku_body("h100-80gb-x8", 8)).await, 409, "conflict").await;
    let response = send(&app, Method::PATCH, &path, &admin, Some(serde_json::json!({"currency": "EURO"}))).await;
    assert_eq!(field(&envelope(response, 400, "validation_error").await), "currency");
    // The GPU count is fixed once set: slots were cut from it.
    let response = send(&app, Method::PATCH, &path, &admin, Some(serde_json::json!({"gpus_per_node": 4}))).await;
    assert_eq!(field(&envelope(response, 400, "unknown_field").await), "gpus_per_node");
    let missing = format!("/api/v1/admin/skus/{}", gpuaas_kernel::new_id());
    envelope(
        send(&app, Method::PATCH, &missing, &admin, Some(serde_json::json!({"active": false}))).await,
        404,
        "not_found",
    )
    .await;
    let all = json(app.get("/api/v1/admin/skus", &admin).await, 200).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2), "{all}");

    // Only operators manage the catalog; everyone signed in reads it.
    envelope(app.post("/api/v1/admin/skus", &user, sku_body("user-sku", 1)).await, 403, "forbidden").await;
    let body = Some(serde_json::json!({"price_per_gpu_hour_minor": 1}));
    envelope(send(&app, Method::PATCH, &path, &user, body).await, 403, "forbidden").await;
    envelope(app.get("/api/v1/admin/skus", &user).await, 403, "forbidden").await;
    let anonymous = app.client.post(app.url("/api/v1/admin/skus")).json(&sku_body("anon-sku", 1)).send().await;
    envelope(anonymous.unwrap_or_else(|e| panic!("{e}")), 401, "token_missing").await;
    let anonymous = app.client.get(app.url("/api/v1/skus")).send().await;
    envelope(anonymous.unwrap_or_else(|e| panic!("{e}")), 401, "token_missing").await;
    let listed = json(app.get("/api/v1/skus", &user).await, 200).await;
    assert_eq!(item(&listed, &h100_id).map(|s| s["price_per_gpu_hour_minor"].clone()), Some(199.into()), "{listed}");
}

async fn enrollment_tokens_are_one_time_and_expire(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    create_sku(&app, &admin, "h100-x2", 2).await;
    let registered = json(
        app.post("/api/v1/admin/nodes", &admin, serde_json::json!({"hostname": "gpu-01", "sku": "h100-x2"})).await,
        201,
    )
    .await;
    let node_id = registered["node"]["id"].as_str().unwrap_or_default().to_owned();
    let token = registered["enrollment"]["token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(registered["node"]["status"], "pending_enrollment", "{registered}");
    assert_eq!(registered["node"]["occupancy"]["gpus_total"], 2, "one slot per GPU of the SKU: {registered}");
    assert!(token.starts_with("gpe_"), "{registered}");
    let duplicate =
        app.post("/api/v1/admin/nodes", &admin, serde_json::json!({"hostname": "gpu-01", "sku": "h100-x2"})).await;
    envelope(duplicate, 409, "conflict").await;
    let bad_host =
        app.post("/api/v1/admin/nodes", &admin, serde_json::json!({"hostname": "gpu_01!", "sku": "h100-x2"})).await;
    assert_eq!(field(&envelope(bad_host, 400, "validation_error").await), "hostname");

    // Requests the CA or the protocol refuse leave the token unspent.
    let (key_pem, csr_pem) = key_and_csr();
    let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n";
    let response = post_enroll(&app, enroll_body(&token, garbage)).await;
    assert_eq!(field(&envelope(response, 400, "validation_error").await), "csr_pem");
    let mut version = enroll_body(&token, &csr_pem);
    version["protocol_version"] = 2.into();
    let response = post_enroll(&app, version).await;
    assert_eq!(field(&envelope(response, 400, "validation_error").await), "protocol_version");
    let mut unknown = enroll_body(&token, &csr_pem);
    unknown["node_id"] = node_id.clone().into();
    assert_eq!(field(&envelope(post_enroll(&app, unknown).await, 400, "unknown_field").await), "node_id");
    assert_eq!(node_view(&app, &admin, &node_id).await["status"], "pending_enrollment");

    let response = post_enroll(&app, enroll_body(&token, &csr_pem)).await;
    assert_eq!(response.status().as_u16(), 201);
    let enrollment: EnrollResponse = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(enrollment.node_id, node_id);
    assert_eq!(enrollment.internal_url, app.internal_base, "the agent is told where the mTLS API is");
    assert_eq!(enrollment.ca_certificate_pem, app.ca_pem);
    assert_eq!(enrollment.protocol_version, 1);
    assert_eq!(enrollment.heartbeat_interval_seconds, 15);
    assert!(enrollment.certificate_expires_at > Timestamp::now());
    assert!(verifying_key_from_base64(&enrollment.task_signing_public_key).is_ok(), "{enrollment:?}");
    assert_eq!(enrollment.task_signing_public_key, app.nodes.task_signing_public_key());
    // The certificate names the node the token was issued for, whatever the CSR asked.
    let der = {
        use gpuaas_pki::rustls::pki_types::CertificateDer;
        use gpuaas_pki::rustls::pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(enrollment.certificate_pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    };
    let peer = gpuaas_pki::peer_certificate(der.as_ref()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(peer.node_id, node_id);
    // The certificate works for the key the node kept.
    let agent = Agent {
        id: node_id.clone(),
        client: internal_client(&app.ca_pem, Some((enrollment.certificate_pem.as_str(), key_pem.as_str()))),
        enrollment,
    };
    assert_eq!(agent.beat().await.status().as_u16(), 200);

    let (_, fresh_csr) = key_and_csr();
    envelope(post_enroll(&app, enroll_body(&token, &fresh_csr)).await, 401, "enrollment_token_used").await;
    let unknown = format!("gpe_{}", "A".repeat(43));
    envelope(post_enroll(&app, enroll_body(&unknown, &fresh_csr)).await, 401, "enrollment_token_invalid").await;
    envelope(post_enroll(&app, enroll_body("", &fresh_csr)).await, 401, "enrollment_token_invalid").await;

    let view = node_view(&app, &admin, &node_id).await;
    assert_eq!(view["status"], "active", "{view}");
    assert!(view["enrolled_at"].is_string(), "{view}");
    assert_eq!(view["agent_version"], AGENT_VERSION, "{view}");
    let audit = audit_rows(&app, &admin, "node.enroll").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["actor_id"], node_id.as_str());
    assert!(!audit[0].to_string().contains(token.trim_start_matches("gpe_")), "the token is never recorded");

    // An expired token is refused by name.
    app.policy.set(keys::NODES_ENROLLMENT_TOKEN_TTL_SECONDS, &1).await.unwrap_or_else(|e| panic!("{e}"));
    let (late_id, late_token) = register(&app, &admin, "gpu-02", "h100-x2").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    envelope(post_enroll(&app, enroll_body(&late_token, &fresh_csr)).await, 401, "enrollment_token_expired").await;
    assert_eq!(node_view(&app, &admin, &late_id).await["status"], "pending_enrollment");
    // A new token from the operator works, and withdraws the unused one.
    app.policy.set(keys::NODES_ENROLLMENT_TOKEN_TTL_SECONDS, &3600).await.unwrap_or_else(|e| panic!("{e}"));
    let ticket = json(node_action(&app, &admin, &late_id, "enrollment-token").await, 201).await;
    let new_token = ticket["token"].as_str().unwrap_or_default().to_owned();
    assert!(new_token.starts_with("gpe_") && new_token != late_token, "{ticket}");
    envelope(post_enroll(&app, enroll_body(&late_token, &fresh_csr)).await, 401, "enrollment_token_invalid").await;
    let late = enroll(&app, &new_token).await;
    assert_eq!(late.id, late_id);
    envelope(
        node_action(&app, &admin, &gpuaas_kernel::new_id().to_string(), "enrollment-token").await,
        404,
        "not_found",
    )
    .await;
}

async fn nodes_heartbeat_over_mtls_and_other_certificates_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    create_sku(&app, &admin, "h100-x2", 2).await;
    let node = enrolled(&app, &admin, "gpu-01", "h100-x2").await;

    let first = json(node.beat().await, 200).await;
    assert_eq!(first["node_id"], node.id.as_str());
    assert_eq!(first["status"], "active");
    assert_eq!(first["inventory_wanted"], true, "nothing is known about the host yet: {first}");
    let body = serde_json::json!({"agent_version": "1.4.1", "protocol_version": 1, "inventory": declared_inventory(2)});
    let second = json(node.heartbeat(body).await, 200).await;
    assert_eq!(second["inventory_wanted"], false, "{second}");

    let page = json(app.get("/api/v1/admin/nodes", &admin).await, 200).await;
    let view = item(&page, &node.id).unwrap_or_else(|| panic!("{page}"));
    assert_eq!(view["status"], "active");
    assert_eq!(view["agent_version"], "1.4.1", "{view}");
    assert!(view["last_heartbeat_at"].is_string(), "{view}");
    assert_eq!(view["host"]["source"], "declared", "{view}");
    assert_eq!(view["host"]["cpu_cores"], 96, "{view}");
    let reported = view["gpus"].as_array().cloned().unwrap_or_default();
    assert_eq!(reported.len(), 2, "{view}");
    for (index, gpu) in reported.iter().enumerate() {
        assert_eq!(gpu["index"], index);
        assert_eq!(gpu["source"], "declared", "declared GPUs are never shown as detected: {gpu}");
        assert_eq!(gpu["model"], "NVIDIA H100 80GB HBM3");
        assert_eq!(gpu["health"], "unknown");
    }
    let active = json(app.get("/api/v1/admin/nodes?status=active", &admin).await, 200).await;
    assert!(item(&active, &node.id).is_some(), "{active}");
    let pending = json(app.get("/api/v1/admin/nodes?status=pending_enrollment", &admin).await, 200).await;
    assert!(item(&pending, &node.id).is_none(), "{pending}");
    let bad = app.get("/api/v1/admin/nodes?status=zombie", &admin).await;
    assert_eq!(field(&envelope(bad, 400, "validation_error").await), "status");

    let url = node.url(paths::HEARTBEAT);
    let beat = serde_json::json!({"agent_version": AGENT_VERSION, "protocol_version": 1});
    // No client certificate: the TLS layer refuses the connection.
    let anonymous = internal_client(&app.ca_pem, None).post(&url).json(&beat).send().await;
    assert!(anonymous.is_err(), "a client without a certificate got an answer: {anonymous:?}");
    // A certificate naming this node from another CA: refused the same way.
    let other_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let other_ca = gpuaas_pki::BuiltinCa::load_or_create(other_dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let (key_pem, csr_pem) = key_and_csr();
    let foreign =
        other_ca.sign_node_csr(&node.id, &csr_pem, Duration::from_secs(3600)).await.unwrap_or_else(|e| panic!("{e}"));
    let client = internal_client(&app.ca_pem, Some((foreign.certificate_pem.as_str(), key_pem.as_str())));
    let refused = client.post(&url).json(&beat).send().await;
    assert!(refused.is_err(), "a certificate from another CA got an answer: {refused:?}");
    // A certificate from our own CA that enrollment never issued: TLS passes, the
    // node plane does not know its fingerprint.
    let own_ca = gpuaas_pki::BuiltinCa::load_or_create(app.pki_dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let (key_pem, csr_pem) = key_and_csr();
    let stray =
        own_ca.sign_node_csr(&node.id, &csr_pem, Duration::from_secs(3600)).await.unwrap_or_else(|e| panic!("{e}"));
    let client = internal_client(&app.ca_pem, Some((stray.certificate_pem.as_str(), key_pem.as_str())));
    let response = client.post(&url).json(&beat).send().await.unwrap_or_else(|e| panic!("{e}"));
    envelope(response, 401, "node_certificate_invalid").await;
    // None of that touched the node: its own certificate still works and its
    // agent version is the one it reported.
    assert_eq!(
        node.heartbeat(serde_json::json!({"agent_version": "1.4.1", "protocol_version": 1})).await.status(),
        200
    );
    assert_eq!(node_view(&app, &admin, &node.id).await["agent_version"], "1.4.1");
}

async fn nodes_only_receive_and_answer_their_own_tasks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    create_sku(&app, &admin, "h100-x2", 2).await;
    let a = enrolled(&app, &admin, "gpu-a", "h100-x2").await;
    let b = enrolled(&app, &admin, "gpu-b", "h100-x2").await;

    let queued =
        app.nodes.enqueue_task(&Actor::system(), &a.id, &Task::NodeHealth).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(b.pull(0).await.is_empty(), "B must not see A's task");
    let delivered = a.pull(0).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let delivery = &delivered[0];
    assert_eq!(delivery.task_id, queued.id);
    assert_eq!(delivery.node_id, a.id, "signed for A");
    assert_eq!(delivery.task_type, "node.health");
    let verified = a.verifier().verify(delivery, Timestamp::now()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((verified.task_id.as_str(), verified.task), (queued.id.as_str(), Task::NodeHealth));
    let refusal = b.verifier().verify(delivery, Timestamp::now()).err().map(|refusal| refusal.code);
    assert_eq!(refusal, Some(RefusalCode::WrongNode), "B's agent refuses a delivery bound to A");
    assert!(a.pull(0).await.is_empty(), "a leased task is not handed out twice");

    // B cannot answer for A's task: it looks like no task at all.
    let answered = b.report(&queued.id, &TaskResult::succeeded(serde_json::json!({}))).await;
    envelope(answered, 404, "not_found").await;
    let answered = b.report(&queued.id, &TaskResult::failed("not mine")).await;
    envelope(answered, 404, "not_found").await;
    let tasks = json(app.get(&format!("/api/v1/admin/nodes/{}/tasks", a.id), &admin).await, 200).await;
    assert_eq!(tasks["items"][0]["id"], queued.id.as_str());
    assert_eq!(tasks["items"][0]["status"], "leased", "B's answer changed nothing: {tasks}");
    assert_eq!(tasks["items"][0]["attempts"], 1);
    let b_tasks = json(app.get(&format!("/api/v1/admin/nodes/{}/tasks", b.id), &admin).await, 200).await;
    assert_eq!(b_tasks["items"].as_array().map(Vec::len), Some(0), "{b_tasks}");

    let output = serde_json::json!({"gpus": [{"index": 0, "health": "ok"}]});
    let done = json(a.report(&queued.id, &TaskResult::succeeded(output.clone())).await, 200).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], output);
    // A retried report gets the recorded state, not a second outcome.
    let again = json(a.report(&queued.id, &TaskResult::failed("late duplicate")).await, 200).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    envelope(b.report(&queued.id, &TaskResult::succeeded(serde_json::json!({}))).await, 404, "not_found").await;
    let unknown = gpuaas_kernel::new_id().to_string();
    envelope(a.report(&unknown, &TaskResult::succeeded(serde_json::json!({}))).await, 404, "not_found").await;
}

async fn nodes_with_revoked_certificates_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    create_sku(&app, &admin, "h100-x2", 2).await;
    let node = enrolled(&app, &admin, "gpu-01", "h100-x2").await;
    assert_eq!(node.beat().await.status(), 200);

    // Renewal: a new certificate for a new key; the current one stays valid until it
    // expires so the agent can switch without a gap.
    let renew_url = node.url(paths::CERTIFICATE);
    let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n";
    let response = node.client.post(&renew_url).json(&serde_json::json!({"csr_pem": garbage})).send().await;
    let body = envelope(response.unwrap_or_else(|e| panic!("{e}")), 400, "validation_error").await;
    assert_eq!(field(&body), "csr_pem");
    let (key_pem, csr_pem) = key_and_csr();
    let response = node.client.post(&renew_url).json(&serde_json::json!({"csr_pem": csr_pem})).send().await;
    let renewal = json(response.unwrap_or_else(|e| panic!("{e}")), 200).await;
    let certificate_pem = renewal["certificate_pem"].as_str().unwrap_or_else(|| panic!("{renewal}"));
    let renewed =
        Agent { client: internal_client(&app.ca_pem, Some((certificate_pem, key_pem.as_str()))), ..node.clone() };
    assert_eq!(renewed.beat().await.status(), 200, "the renewed certificate works");
    assert_eq!(node.beat().await.status(), 200, "and the previous one still does");
    assert_eq!(audit_rows(&app, &admin, "node.certificate.renew").await.len(), 1);

    let path = format!("/api/v1/admin/nodes/{}/revoke-certificates", node.id);
    let empty = app.post(&path, &admin, serde_json::json!({"reason": " "})).await;
    assert_eq!(field(&envelope(empty, 400, "validation_error").await), "reason");
    let unknown = app.post(&path, &admin, serde_json::json!({"reason": "x", "force": true})).await;
    assert_eq!(field(&envelope(unknown, 400, "unknown_field").await), "force");
    let missing = format!("/api/v1/admin/nodes/{}/revoke-certificates", gpuaas_kernel::new_id());
    envelope(app.post(&missing, &admin, serde_json::json!({"reason": "x"})).await, 404, "not_found").await;
    assert_eq!(node.beat().await.status(), 200, "refused revocations revoke nothing");

    let revoked = json(app.post(&path, &admin, serde_json::json!({"reason": "host compromised"})).await, 200).await;
    assert_eq!(revoked["certificates_revoked"], 2, "the enrolled and the renewed certificate: {revoked}");
    envelope(node.beat().await, 401, "certificate_revoked").await;
    envelope(node.pull_raw("wait_seconds=0").await, 401, "certificate_revoked").await;
    envelope(renewed.beat().await, 401, "certificate_revoked").await;
    let (_, csr_pem) = key_and_csr();
    let response = renewed.client.post(&renew_url).json(&serde_json::json!({"csr_pem": csr_pem})).send().await;
    envelope(response.unwrap_or_else(|e| panic!("{e}")), 401, "certificate_revoked").await;
    let rows = audit_rows(&app, &admin, "node.certificate.revoke").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["details"]["reason"], "host compromised");
    assert_eq!(rows[0]["actor_role"], "admin");
    assert!(rows[0]["target"].as_str().is_some_and(|target| target.ends_with(&node.id)), "{}", rows[0]);

    // The way back is a new enrollment; the old certificates stay revoked.
    let ticket = json(node_action(&app, &admin, &node.id, "enrollment-token").await, 201).await;
    let reenrolled = enroll(&app, ticket["token"].as_str().unwrap_or_default()).await;
    assert_eq!(reenrolled.id, node.id);
    assert_eq!(reenrolled.beat().await.status(), 200);
    envelope(node.beat().await, 401, "certificate_revoked").await;
    let revoked = json(app.post(&path, &admin, serde_json::json!({"reason": "again"})).await, 200).await;
    assert_eq!(revoked["certificates_revoked"], 1, "only the current certificate was still live: {revoked}");
    envelope(reenrolled.beat().await, 401, "certificate_revoked").await;
}

async fn nodes_answer_probes_with_their_inventory(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    create_sku(&app, &admin, "h100-x2", 2).await;
    let node = enrolled(&app, &admin, "gpu-01", "h100-x2").await;
    let body =
        serde_json::json!({"agent_version": AGENT_VERSION, "protocol_version": 1, "inventory": declared_inventory(2)});
    assert_eq!(node.heartbeat(body).await.status(), 200);

    let detected = Inventory {
        source: InventorySource::Detected,
        gpus: gpus(2, "NVIDIA H100 80GB HBM3 (probed)", GpuHealth::Ok, true),
        cpu_cores: 128,
        ..declared_inventory(0)
    };
    let agent = node.clone();
    let answer = to_json(&detected);
    let worker = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut verifier = agent.verifier();
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no probe reached the agent");
            let Some(delivery) = agent.pull(10).await.into_iter().next() else { continue };
            let verified = verifier.verify(&delivery, Timestamp::now()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(verified.task, Task::NodeInventory);
            let response = agent.report(&delivery.task_id, &TaskResult::succeeded(answer.clone())).await;
            return response.status().as_u16();
        }
    });
    let probed = json(node_action(&app, &admin, &node.id, "probe").await, 200).await;
    assert_eq!(probed["status"], "succeeded", "{probed}");
    assert_eq!(probed["task_type"], "node.inventory");
    assert_eq!(probed["node_id"], node.id.as_str());
    assert_eq!(worker.await.unwrap_or_else(|e| panic!("{e}")), 200);
    let view = node_view(&app, &admin, &node.id).await;
    assert_eq!(view["host"]["source"], "detected", "the probe's answer replaced the declared facts: {view}");
    assert_eq!(view["host"]["cpu_cores"], 128);
    let reported = view["gpus"].as_array().cloned().unwrap_or_default();
    assert_eq!(reported.len(), 2, "{view}");
    assert!(
        reported.iter().all(|gpu| gpu["source"] == "detected"
            && gpu["health"] == "ok"
            && gpu["model"] == "NVIDIA H100 80GB HBM3 (probed)"
            && gpu["uuid"].is_string()),
        "{view}"
    );
    assert_eq!(audit_rows(&app, &admin, "node.probe").await.len(), 1);

    // Nobody answers: the probe returns the pending task after the policy's wait.
    app.policy.set(keys::NODES_PROBE_WAIT_SECONDS, &1).await.unwrap_or_else(|e| panic!("{e}"));
    let pending = json(node_action(&app, &admin, &node.id, "probe").await, 202).await;
    assert_eq!(pending["status"], "queued", "{pending}");
    assert_eq!(pending["task_type"], "node.inventory");
    // A node that never enrolled cannot be probed; an unknown one is not found.
    let (fresh, _) = register(&app, &admin, "gpu-02", "h100-x2").await;
    envelope(node_action(&app, &admin, &fresh, "probe").await, 409, "conflict").await;
    let unknown = gpuaas_kernel::new_id().to_string();
    envelope(node_action(&app, &admin, &unknown, "probe").await, 404, "not_found").await;
}

async fn nodes_task_refusals_are_recorded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    create_sku(&app, &admin, "h100-x2", 2).await;
    let node = enrolled(&app, &admin, "gpu-01", "h100-x2").await;

    let queued =
        app.nodes.enqueue_task(&Actor::system(), &node.id, &Task::NodeHealth).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node.pull(0).await.len(), 1);
    // A refusal must say what was refused.
    let nameless =
        TaskResult { outcome: TaskOutcome::Refused, output: serde_json::json!({}), error: None, refusal: None };
    assert_eq!(field(&envelope(node.report(&queued.id, &nameless).await, 400, "validation_error").await), "refusal");
    let refusal = Refusal::new(RefusalCode::BadSignature, "signature does not verify with the pinned key");
    let reported = json(node.report(&queued.id, &TaskResult::refused(refusal)).await, 200).await;
    assert_eq!(reported["status"], "failed", "{reported}");
    assert_eq!(reported["refusal_code"], "bad_signature");

    let tasks = json(app.get(&format!("/api/v1/admin/nodes/{}/tasks", node.id), &admin).await, 200).await;
    let task = item(&tasks, &queued.id).unwrap_or_else(|| panic!("{tasks}"));
    assert_eq!(task["status"], "failed");
    assert_eq!(task["refusal_code"], "bad_signature");
    assert_eq!(task["error"], "signature does not verify with the pinned key");
    let rows = audit_rows(&app, &admin, "node.task.refused").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["result"], "denied");
    assert_eq!(rows[0]["actor_id"], node.id.as_str());
    assert_eq!(rows[0]["actor_role"], "node");
    assert_eq!(rows[0]["details"]["task_id"], queued.id.as_str());
    assert_eq!(rows[0]["details"]["refusal_code"], "bad_signature");

    // An ordinary failure is recorded on the task but is no security event.
    let second =
        app.nodes.enqueue_task(&Actor::system(), &node.id, &Task::NodeHealth).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node.pull(0).await.len(), 1);
    let failed = json(node.report(&second.id, &TaskResult::failed("nvidia-smi timed out")).await, 200).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["refusal_code"].is_null(), "{failed}");
    assert_eq!(audit_rows(&app, &admin, "node.task.refused").await.len(), 1);
    let bad = app.get(&format!("/api/v1/admin/nodes/{}/tasks?limit=0", node.id), &admin).await;
    assert_eq!(field(&envelope(bad, 400, "validation_error").await), "limit");
    let missing = format!("/api/v1/admin/nodes/{}/tasks", gpuaas_kernel::new_id());
    envelope(app.get(&missing, &admin).await, 404, "not_found").await;
}

async fn nodes_drain_go_offline_and_retire(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    let user = app.token_for("alice").await;
    let h100 = create_sku(&app, &admin, "h100-x2", 2).await;
    create_sku(&app, &admin, "a100-x2", 2).await;
    let a = enrolled(&app, &admin, "gpu-a", "h100-x2").await;
    let b = enrolled(&app, &admin, "gpu-b", "a100-x2").await;

    let drained = json(node_action(&app, &admin, &a.id, "drain").await, 200).await;
    assert_eq!((&drained["status"], &drained["drain_requested"]), (&"draining".into(), &true.into()), "{drained}");
    let resumed = json(node_action(&app, &admin, &a.id, "resume").await, 200).await;
    assert_eq!((&resumed["status"], &resumed["drain_requested"]), (&"active".into(), &false.into()), "{resumed}");
    assert_eq!(json(node_action(&app, &admin, &b.id, "drain").await, 200).await["status"], "draining");

    // Missed heartbeats make both offline; a heartbeat brings each back to what the
    // operator last asked for.
    app.policy.set(keys::NODES_OFFLINE_AFTER_SECONDS, &1).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut offline = app.nodes.mark_offline().await.unwrap_or_else(|e| panic!("{e}"));
    offline.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(offline, expected);
    app.policy.set(keys::NODES_OFFLINE_AFTER_SECONDS, &60).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(node_view(&app, &admin, &a.id).await["status"], "offline");
    assert_eq!(node_view(&app, &admin, &b.id).await["status"], "offline");
    let public = json(app.get("/api/v1/nodes", &user).await, 200).await;
    assert_eq!(item(&public, &a.id).map(|n| n["status"].clone()), Some("offline".into()), "{public}");
    assert_eq!(json(a.beat().await, 200).await["status"], "active");
    assert_eq!(node_view(&app, &admin, &a.id).await["status"], "active");
    assert_eq!(json(b.beat().await, 200).await["status"], "draining", "the drain survives going offline");
    assert_eq!(json(node_action(&app, &admin, &b.id, "resume").await, 200).await["status"], "active");

    // A node whose GPUs are allocated cannot be retired.
    let sku_id = h100["id"].as_str().unwrap_or_default().to_owned();
    let allocation = gpuaas_kernel::new_id().to_string();
    let mut tx = app.store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let reservation = slots::reserve(&mut tx, app.store.dialect(), &sku_id, 1, &allocation, PlacementStrategy::BestFit)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no room on {}", a.id));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reservation.node_id, a.id);
    let view = node_view(&app, &admin, &a.id).await;
    assert_eq!((&view["occupancy"]["gpus_allocated"], &view["occupancy"]["gpus_free"]), (&1.into(), &1.into()));
    let node_path = format!("/api/v1/admin/nodes/{}", a.id);
    let in_use = envelope(send(&app, Method::DELETE, &node_path, &admin, None).await, 409, "node_in_use").await;
    assert!(in_use["error"]["message"].as_str().is_some_and(|m| m.contains('1')), "{in_use}");
    assert_eq!(node_view(&app, &admin, &a.id).await["status"], "active");
    assert_eq!(a.beat().await.status(), 200, "a refused retirement revokes nothing");

    let mut tx = app.store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let held =
        slots::Held { allocation_id: allocation, node_id: reservation.node_id, gpu_indices: reservation.gpu_indices };
    assert_eq!(slots::release(&mut tx, &held).await.unwrap_or_else(|e| panic!("{e}")), 1);
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let retired = json(send(&app, Method::DELETE, &node_path, &admin, None).await, 200).await;
    assert_eq!(retired["status"], "retired", "{retired}");
    assert!(retired["retired_at"].is_string(), "{retired}");
    // Retiring revokes the node's certificates in the same transaction, so its agent
    // is refused by its certificate (401 certificate_revoked) before the retired
    // status (403 node_retired) is ever looked at.
    envelope(a.beat().await, 401, "certificate_revoked").await;
    envelope(a.pull_raw("wait_seconds=0").await, 401, "certificate_revoked").await;
    // Nor can it come back: no new token, no lifecycle change, no tasks.
    envelope(node_action(&app, &admin, &a.id, "enrollment-token").await, 403, "node_retired").await;
    envelope(node_action(&app, &admin, &a.id, "drain").await, 403, "node_retired").await;
    envelope(node_action(&app, &admin, &a.id, "resume").await, 403, "node_retired").await;
    let queued = app.nodes.enqueue_task(&Actor::system(), &a.id, &Task::NodeHealth).await;
    assert!(matches!(queued, Err(gpuaas_inventory::InventoryError::NodeRetired)), "{queued:?}");
    assert_eq!(json(send(&app, Method::DELETE, &node_path, &admin, None).await, 200).await["status"], "retired");
    let public = json(app.get("/api/v1/nodes", &user).await, 200).await;
    assert!(item(&public, &a.id).is_none(), "retired nodes are not offered: {public}");
    assert!(item(&public, &b.id).is_some(), "{public}");
    assert_eq!(audit_rows(&app, &admin, "node.retire").await.len(), 1);
    let missing = format!("/api/v1/admin/nodes/{}", gpuaas_kernel::new_id());
    envelope(send(&app, Method::DELETE, &missing, &admin, None).await, 404, "not_found").await;

    // Retiring a node that never enrolled withdraws its enrollment token.
    let (never, token) = register(&app, &admin, "gpu-c", "h100-x2").await;
    let path = format!("/api/v1/admin/nodes/{never}");
    assert_eq!(json(send(&app, Method::DELETE, &path, &admin, None).await, 200).await["status"], "retired");
    let (_, csr_pem) = key_and_csr();
    envelope(post_enroll(&app, enroll_body(&token, &csr_pem)).await, 401, "enrollment_token_invalid").await;
}

async fn nodes_are_shown_to_users_without_hostnames(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    let user = app.token_for("alice").await;
    create_sku(&app, &admin, "h100-x2", 2).await;
    let (pending, _) = register(&app, &admin, "rack7-pending", "h100-x2").await;
    let node = enrolled(&app, &admin, "rack7-secret-host", "h100-x2").await;

    let listed = json(app.get("/api/v1/nodes", &user).await, 200).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "a node not yet enrolled is not offered: {listed}");
    let summary = item(&listed, &node.id).unwrap_or_else(|| panic!("{listed}"));
    assert!(item(&listed, &pending).is_none());
    assert_eq!(summary["sku_name"], "h100-x2");
    assert_eq!(summary["gpu_model"], "NVIDIA H100 80GB HBM3");
    assert_eq!(summary["status"], "active");
    assert_eq!(summary["occupancy"], serde_json::json!({"gpus_total": 2, "gpus_allocated": 0, "gpus_free": 2}));
    assert!(summary.get("hostname").is_none(), "{summary}");
    let text = listed.to_string();
    assert!(!text.contains("rack7") && !text.contains("gpu-host"), "no hostname anywhere: {listed}");

    app.policy.set(keys::NODES_EXPOSE_HOSTNAMES, &true).await.unwrap_or_else(|e| panic!("{e}"));
    let listed = json(app.get("/api/v1/nodes", &user).await, 200).await;
    let summary = item(&listed, &node.id).unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(summary["hostname"], "rack7-secret-host", "{summary}");

    // Every operator route of the node plane refuses a plain user, and none of them
    // changed anything.
    let mut checked = 0;
    for spec in route_table().specs() {
        if !(spec.path.starts_with("/api/v1/admin/nodes") || spec.path.starts_with("/api/v1/admin/skus")) {
            continue;
        }
        let path = spec.path.replace("{node_id}", &node.id).replace("{sku_id}", &gpuaas_kernel::new_id().to_string());
        let body = (spec.method != Method::GET && spec.method != Method::DELETE)
            .then(|| serde_json::json!({"reason": "x", "hostname": "user-node", "sku": "h100-x2"}));
        let response = send(&app, spec.method.clone(), &path, &user, body).await;
        assert_eq!(response.status().as_u16(), 403, "{} {path} as a plain user", spec.method);
        envelope(response, 403, "forbidden").await;
        checked += 1;
    }
    assert!(checked >= 13, "only {checked} operator node routes found");
    let view = node_view(&app, &admin, &node.id).await;
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(node.beat().await.status(), 200);
    let all = json(app.get("/api/v1/admin/nodes", &admin).await, 200).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2), "{all}");
}

async fn nodes_internal_api_refuses_bad_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    create_sku(&app, &admin, "h100-x2", 2).await;
    let node = enrolled(&app, &admin, "gpu-01", "h100-x2").await;

    let response = node.pull_raw("wait_seconds=31").await;
    assert_eq!(field(&envelope(response, 400, "validation_error").await), "wait_seconds");
    envelope(node.pull_raw("wait_seconds=soon").await, 400, "validation_error").await;
    envelope(node.pull_raw("wait=1").await, 400, "validation_error").await;

    let unknown = serde_json::json!({"agent_version": AGENT_VERSION, "protocol_version": 1, "node_id": "someone-else"});
    assert_eq!(field(&envelope(node.heartbeat(unknown).await, 400, "unknown_field").await), "node_id");
    let version = serde_json::json!({"agent_version": AGENT_VERSION, "protocol_version": 2});
    assert_eq!(field(&envelope(node.heartbeat(version).await, 400, "validation_error").await), "protocol_version");
    let mut inventory = declared_inventory(2);
    inventory.gpus[1].index = 0;
    let duplicate = serde_json::json!({"agent_version": AGENT_VERSION, "protocol_version": 1, "inventory": inventory});
    assert_eq!(field(&envelope(node.heartbeat(duplicate).await, 400, "validation_error").await), "inventory");
    let blank = serde_json::json!({"agent_version": "", "protocol_version": 1});
    assert_eq!(field(&envelope(node.heartbeat(blank).await, 400, "validation_error").await), "agent_version");
    let malformed = node
        .client
        .post(node.url(paths::HEARTBEAT))
        .header("content-type", "application/json")
        .body("{\"agent_version\":")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    envelope(malformed, 400, "malformed_json").await;
    // None of it was recorded as a heartbeat.
    let view = node_view(&app, &admin, &node.id).await;
    assert!(view["host"].is_null(), "{view}");
    assert_eq!(node.beat().await.status(), 200);

    let bad_id = node.report("task_1", &TaskResult::succeeded(serde_json::json!({}))).await;
    envelope(bad_id, 404, "not_found").await;
    let unrouted = node.client.get(node.url("/internal/v1/nodes/secrets")).send().await;
    envelope(unrouted.unwrap_or_else(|e| panic!("{e}")), 404, "route_not_found").await;
    // Each listener serves only its own API.
    let public_on_internal = node.client.get(node.url("/api/v1/skus")).send().await;
    envelope(public_on_internal.unwrap_or_else(|e| panic!("{e}")), 404, "route_not_found").await;
    let internal_on_public = app
        .client
        .post(app.url(paths::HEARTBEAT))
        .json(&serde_json::json!({"agent_version": AGENT_VERSION, "protocol_version": 1}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    envelope(internal_on_public, 404, "route_not_found").await;
}

async fn nodes_admin_list_pages_and_filters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.token_for("admin").await;
    let big = create_sku(&app, &admin, "page-big", 8).await;
    create_sku(&app, &admin, "page-small", 1).await;
    let mut registered = Vec::new();
    for index in 0..5 {
        let sku = if index % 2 == 0 { "page-big" } else { "page-small" };
        registered.push(register(&app, &admin, &format!("page-{index}"), sku).await.0);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/admin/nodes?limit=2&cursor={cursor}"),
            None => "/api/v1/admin/nodes?limit=2".to_owned(),
        };
        let page = json(app.get(&path, &admin).await, 200).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 2, "{page}");
        seen.extend(items.iter().map(|item| item["id"].as_str().unwrap_or_default().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    // Newest first, each node exactly once.
    registered.reverse();
    assert_eq!(seen, registered);

    let sku_id = big["id"].as_str().unwrap_or_default();
    let filtered = json(app.get(&format!("/api/v1/admin/nodes?sku_id={sku_id}"), &admin).await, 200).await;
    let names: Vec<&str> =
        filtered["items"].as_array().into_iter().flatten().filter_map(|item| item["hostname"].as_str()).collect();
    assert_eq!(names, ["page-4", "page-2", "page-0"]);
    let pending = json(app.get("/api/v1/admin/nodes?status=pending_enrollment&limit=200", &admin).await, 200).await;
    assert_eq!(pending["items"].as_array().map(Vec::len), Some(5));
    envelope(app.get("/api/v1/admin/nodes?cursor=bogus", &admin).await, 400, "validation_error").await;
    envelope(app.get("/api/v1/admin/nodes?limit=0", &admin).await, 400, "validation_error").await;
}

gpuaas_testkit::both_backends!(
    nodes_admin_list_pages_and_filters,
    sku_catalog_is_managed_by_operators_and_read_by_users,
    enrollment_tokens_are_one_time_and_expire,
    nodes_heartbeat_over_mtls_and_other_certificates_are_refused,
    nodes_only_receive_and_answer_their_own_tasks,
    nodes_with_revoked_certificates_are_refused,
    nodes_answer_probes_with_their_inventory,
    nodes_task_refusals_are_recorded,
    nodes_drain_go_offline_and_retire,
    nodes_are_shown_to_users_without_hostnames,
    nodes_internal_api_refuses_bad_input,
);

//! Reconciliation over the real heartbeat path: a node that no longer has an
//! allocation's user stops its billing, an unknown allocation user is flagged and left
//! alone, findings resolve once the node's report agrees again, each finding is
//! announced once, and operators (only) can list them.

use gpuaas_allocations::reconcile::ReconcileReport;
use gpuaas_nodeagent_protocol::wire::HeartbeatRequest;
use gpuaas_nodeagent_protocol::{Inventory, InventorySource, PROTOCOL_VERSION};
use gpuaas_policy::keys;
use gpuaas_testkit::Backend;
use serde_json::json;

use crate::allocations::{World, answer, show, step, text};
use crate::helpers::{TestApp, envelope, json};

const FINDINGS: &str = "/api/v1/admin/reconciliation";
const ORPHAN: &str = "ga_0123456789abcdef0123456789abc";

/// The allocation tests' world, with reports counting from the moment they are sent.
async fn world(app: &TestApp) -> World {
    let world = crate::allocations::world(app, 100_000).await;
    app.policy.set(keys::ALLOCATIONS_RECONCILE_GRACE_SECONDS, &0).await.unwrap_or_else(|e| panic!("{e}"));
    world
}

/// Creates a one-GPU allocation and drives it to `active`; returns it.
async fn active_allocation(app: &TestApp, world: &World) -> serde_json::Value {
    let body = json!({"sku": "h100-x8", "gpu_count": 1, "project_id": world.project, "ssh_key_ids": [world.key]});
    let created = json(app.post("/api/v1/allocations", &world.user, body).await, 201).await;
    let id = text(&created["id"]);
    step(app).await;
    assert_eq!(answer(app, &world.node, None).await, ["allocation.provision_user"]);
    step(app).await;
    let active = show(app, &world.user, &id).await;
    assert_eq!(active["status"], "active", "{active}");
    active
}

/// The node's agent heartbeats with an inventory listing `users`.
async fn report(app: &TestApp, world: &World, users: &[&str]) {
    let inventory = Inventory {
        source: InventorySource::Declared,
        hostname: "gpu-node-1.test".into(),
        cpu_cores: 64,
        memory_bytes: 1 << 39,
        disk_bytes: 1 << 41,
        gpus: Vec::new(),
        allocation_users: users.iter().map(|user| (*user).to_owned()).collect(),
    };
    let request = HeartbeatRequest {
        agent_version: "0.1.0".into(),
        protocol_version: PROTOCOL_VERSION,
        inventory: Some(inventory),
    };
    app.nodes.heartbeat(&world.node, &request, "test").await.unwrap_or_else(|e| panic!("{e}"));
}

async fn reconcile(app: &TestApp) -> ReconcileReport {
    app.allocations.reconcile().await.unwrap_or_else(|e| panic!("{e}"))
}

fn counts(nodes: usize, missing: usize, orphans: usize, resolved: usize) -> ReconcileReport {
    ReconcileReport { nodes, missing, orphans, resolved }
}

async fn events(app: &TestApp, subject: &str) -> i64 {
    gpuaas_store::sqlx::query_scalar("SELECT COUNT(*) FROM outbox_events WHERE subject = $1")
        .bind(subject)
        .fetch_one(app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn findings(app: &TestApp, world: &World, query: &str) -> Vec<serde_json::Value> {
    let page = json(app.get(&format!("{FINDINGS}{query}"), &world.admin).await, 200).await;
    page["items"].as_array().cloned().unwrap_or_default()
}

/// The allocation's usage record as its owner sees it.
async fn usage(app: &TestApp, world: &World, id: &str) -> serde_json::Value {
    let page = json(app.get("/api/v1/billing/usage", &world.user).await, 200).await;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    items.into_iter().find(|record| record["allocation_id"] == id).unwrap_or_else(|| panic!("no usage for {id}"))
}

gpuaas_testkit::both_backends!(a_node_without_the_users_stops_billing_and_flags_orphans_until_it_agrees);
async fn a_node_without_the_users_stops_billing_and_flags_orphans_until_it_agrees(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = world(&app).await;
    let allocation = active_allocation(&app, &world).await;
    let id = text(&allocation["id"]);
    let username = text(&allocation["ssh"]["username"]);
    assert!(usage(&app, &world, &id).await["ended_at"].is_null(), "billing runs while active");

    // The node has exactly what is billed: nothing to say.
    report(&app, &world, &[&username]).await;
    assert_eq!(reconcile(&app).await, counts(1, 0, 0, 0));
    assert!(findings(&app, &world, "").await.is_empty());

    // An allocation user nobody pays for: flagged, and nothing else is touched.
    report(&app, &world, &[&username, ORPHAN, "researcher"]).await;
    assert_eq!(reconcile(&app).await, counts(1, 0, 1, 0));
    let open = findings(&app, &world, "").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["kind"], "orphan_node_user");
    assert_eq!(open[0]["username"], ORPHAN);
    assert_eq!(open[0]["node_id"], world.node.as_str());
    assert!(open[0]["allocation_id"].is_null() && open[0]["resolved_at"].is_null(), "{open:?}");
    assert_eq!(show(&app, &world.user, &id).await["status"], "active");
    assert!(usage(&app, &world, &id).await["ended_at"].is_null());

    // The allocation's user is gone from the node: billing stops now.
    report(&app, &world, &[ORPHAN]).await;
    assert_eq!(reconcile(&app).await, counts(1, 1, 0, 0));
    let released = show(&app, &world.user, &id).await;
    assert_eq!(released["status"], "releasing", "{released}");
    let last = released["transitions"].as_array().and_then(|list| list.last().cloned()).unwrap_or_default();
    assert_eq!(last["actor"], "system");
    assert!(text(&last["reason"]).starts_with("reconciliation:"), "{last}");
    assert!(usage(&app, &world, &id).await["ended_at"].is_string(), "the usage record is closed");
    let audit =
        json(app.get("/api/v1/admin/audit-logs?action=allocation.force_release", &world.admin).await, 200).await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(1), "{audit}");

    // Passes repeat every few seconds; each finding is announced once.
    assert_eq!(reconcile(&app).await, counts(1, 0, 0, 0));
    assert_eq!(reconcile(&app).await, counts(1, 0, 0, 0));
    assert_eq!(events(&app, gpuaas_allocations::events::RECONCILE_ALLOCATION_MISSING).await, 1);
    assert_eq!(events(&app, gpuaas_allocations::events::RECONCILE_ORPHAN_USER).await, 1);
    assert_eq!(events(&app, gpuaas_allocations::events::FORCE_RELEASE_REQUESTED).await, 1);

    // Operators see both while the release is under way; users may not look.
    let open = findings(&app, &world, "?open=true").await;
    let kinds: Vec<String> = open.iter().map(|finding| text(&finding["kind"])).collect();
    assert_eq!(kinds.len(), 2, "{open:?}");
    assert!(kinds.contains(&"allocation_missing_on_node".to_owned()) && kinds.contains(&"orphan_node_user".to_owned()));
    let missing =
        open.iter().find(|finding| finding["kind"] == "allocation_missing_on_node").cloned().unwrap_or_default();
    assert_eq!(missing["allocation_id"], id.as_str());
    assert_eq!(missing["username"], username.as_str());
    let first = findings(&app, &world, "?limit=1").await;
    assert_eq!(first.len(), 1);
    envelope(app.get(FINDINGS, &world.user).await, 403, "forbidden").await;
    envelope(app.get(&format!("{FINDINGS}?limit=0"), &world.admin).await, 400, "validation_error").await;

    // The release completes; the node's next report has neither problem.
    step(&app).await;
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.revoke_user"]);
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "released");
    report(&app, &world, &["researcher"]).await;
    assert_eq!(reconcile(&app).await, counts(1, 0, 0, 2));
    assert!(findings(&app, &world, "").await.is_empty());
    let all = findings(&app, &world, "?open=false").await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|finding| finding["resolved_at"].is_string()), "{all:?}");
    assert_eq!(reconcile(&app).await, counts(1, 0, 0, 0));
}

gpuaas_testkit::both_backends!(a_report_older_than_a_release_is_no_orphan_but_a_newer_one_is);
async fn a_report_older_than_a_release_is_no_orphan_but_a_newer_one_is(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = world(&app).await;
    let allocation = active_allocation(&app, &world).await;
    let id = text(&allocation["id"]);
    let username = text(&allocation["ssh"]["username"]);
    // Within the grace period a list without the user may just predate its creation.
    app.policy.set(keys::ALLOCATIONS_RECONCILE_GRACE_SECONDS, &3_600).await.unwrap_or_else(|e| panic!("{e}"));
    report(&app, &world, &[]).await;
    assert_eq!(reconcile(&app).await, counts(1, 0, 0, 0));
    assert_eq!(show(&app, &world.user, &id).await["status"], "active");
    app.policy.set(keys::ALLOCATIONS_RECONCILE_GRACE_SECONDS, &0).await.unwrap_or_else(|e| panic!("{e}"));
    report(&app, &world, &[&username]).await;

    // Released after the node's last report: the listed user is on its way out.
    json(app.post(&format!("/api/v1/allocations/{id}/release"), &world.user, json!({})).await, 200).await;
    step(&app).await;
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.revoke_user"]);
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "released");
    assert_eq!(reconcile(&app).await, counts(1, 0, 0, 0));

    // A report sent after the release still lists it: the removal did not happen.
    report(&app, &world, &[&username]).await;
    assert_eq!(reconcile(&app).await, counts(1, 0, 1, 0));
    let open = findings(&app, &world, "").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["kind"], "orphan_node_user");
    assert_eq!(open[0]["allocation_id"], id.as_str(), "points at the allocation it was made for");

    // It goes, then comes back: reopened and announced again.
    report(&app, &world, &[]).await;
    assert_eq!(reconcile(&app).await, counts(1, 0, 0, 1));
    report(&app, &world, &[&username]).await;
    assert_eq!(reconcile(&app).await, counts(1, 0, 1, 0));
    assert_eq!(events(&app, gpuaas_allocations::events::RECONCILE_ORPHAN_USER).await, 2);
    assert_eq!(findings(&app, &world, "?open=false").await.len(), 1, "one row per node, kind and user");
}

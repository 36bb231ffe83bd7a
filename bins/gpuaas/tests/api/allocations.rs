//! Allocations over HTTP: create with placement, money and caps checks, the workflow
//! driven step by step against the real node task queue, release, force-release,
//! metering, scoping and the concurrency claim (no GPU ever held twice).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use gpuaas_nodeagent_protocol::{TaskResult, TaskType};
use gpuaas_policy::keys;
use gpuaas_testkit::Backend;
use serde_json::json;

use crate::helpers::{ADMIN_EMAIL, PASSWORD, TestApp, envelope, json};
use crate::nodes::{create_sku, enrolled, register};

pub(crate) const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKPvtWANiUEyI5Bec7Kq7kXQjbukv2J9T2+pusBj/hiE alloc-test";
const ALLOCATIONS: &str = "/api/v1/allocations";

pub(crate) fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_owned()
}

/// Everything one test needs: an operator, a user with a project, an SSH key and
/// credit, and an enrolled node of an 8-GPU SKU.
pub(crate) struct World {
    pub(crate) admin: String,
    pub(crate) user: String,
    pub(crate) project: String,
    pub(crate) key: String,
    pub(crate) node: String,
    pub(crate) sku: String,
}

async fn admin_token(app: &TestApp) -> String {
    let login = json(app.login(ADMIN_EMAIL, PASSWORD).await, 200).await;
    text(&login["access_token"])
}

pub(crate) async fn world(app: &TestApp, credit_minor: i64) -> World {
    // Steps run when the test says, not after a poll interval.
    set_policy(app, keys::ALLOCATIONS_WORKFLOW_POLL_INTERVAL_MS, 0).await;
    let admin = admin_token(app).await;
    let sku = create_sku(app, &admin, "h100-x8", 8).await;
    let sku = text(&sku["id"]);
    let node = enrolled(app, &admin, "gpu-node-1.test", "h100-x8").await.id;
    let user = app.token_for("alice").await;
    let me = json(app.get("/api/v1/users/me", &user).await, 200).await;
    let project = text(&me["projects"][0]["id"]);
    let key =
        json(app.post("/api/v1/ssh-keys", &user, json!({"name": "laptop", "public_key": SSH_KEY})).await, 201).await;
    if credit_minor > 0 {
        let user_id = app.user_id("alice").await;
        let body = json!({"amount_minor": credit_minor, "currency": "USD", "reason": "trial credit"});
        json(app.post(&format!("/api/v1/admin/users/{user_id}/balance"), &admin, body).await, 201).await;
    }
    World { admin, user, project, key: text(&key["id"]), node, sku }
}

fn create_body(world: &World, gpus: i64) -> serde_json::Value {
    json!({"sku": "h100-x8", "gpu_count": gpus, "project_id": world.project, "ssh_key_ids": [world.key], "name": "train"})
}

async fn create(app: &TestApp, world: &World, gpus: i64) -> serde_json::Value {
    json(app.post(ALLOCATIONS, &world.user, create_body(world, gpus)).await, 201).await
}

pub(crate) async fn show(app: &TestApp, token: &str, id: &str) -> serde_json::Value {
    json(app.get(&format!("{ALLOCATIONS}/{id}"), token).await, 200).await
}

/// One workflow pass, as the workers role runs it.
pub(crate) async fn step(app: &TestApp) {
    let report = app.allocations.run_due(256, 8).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.failed_steps, 0, "{report:?}");
}

/// Answers every queued task of the node the way a host would: `outcome` for the
/// given task type, success for the others. Returns the task types answered.
pub(crate) async fn answer(app: &TestApp, node: &str, failing: Option<TaskType>) -> Vec<String> {
    let deliveries = app.nodes.pull_tasks(node, Duration::ZERO).await.unwrap_or_else(|e| panic!("{e}"));
    let mut answered = Vec::new();
    for delivery in deliveries {
        let result = if Some(delivery.task_type.as_str()) == failing.map(TaskType::as_str) {
            TaskResult::failed("useradd: exit status 9")
        } else {
            TaskResult::succeeded(json!({"username": delivery.params["username"]}))
        };
        app.nodes.complete_task(node, &delivery.task_id, &result, "test").await.unwrap_or_else(|e| panic!("{e}"));
        answered.push(delivery.task_type.clone());
    }
    answered
}

async fn held_slots(app: &TestApp, allocation_id: &str) -> i64 {
    gpuaas_store::sqlx::query_scalar("SELECT COUNT(*) FROM node_resource_slots WHERE allocation_id = $1")
        .bind(allocation_id)
        .fetch_one(app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Nodes whose free-GPU count disagrees with their free slots.
async fn free_count_drift(app: &TestApp) -> i64 {
    gpuaas_store::sqlx::query_scalar(
        "SELECT COUNT(*) FROM nodes n WHERE n.free_gpus <> \
         (SELECT COUNT(*) FROM node_resource_slots r WHERE r.node_id = n.id AND r.allocation_id IS NULL)",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// (tenant, project, user) whose kept live count (what the caps read) disagrees with
/// their allocations that are live.
async fn live_count_drift(app: &TestApp) -> i64 {
    let live = gpuaas_allocations::AllocationStatus::LIVE
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT COUNT(*) FROM (SELECT tenant_id, project_id, user_id, SUM(n) AS off FROM ( \
         SELECT tenant_id, project_id, user_id, COUNT(*) AS n FROM allocations WHERE status IN ({live}) \
         GROUP BY tenant_id, project_id, user_id \
         UNION ALL SELECT tenant_id, project_id, user_id, -live AS n FROM allocation_live_counts) AS both_sides \
         GROUP BY tenant_id, project_id, user_id) AS sums WHERE off <> 0"
    );
    gpuaas_store::sqlx::query_scalar(gpuaas_store::sqlx::AssertSqlSafe(sql))
        .fetch_one(app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The counts kept beside the rows agree with the rows: the nodes' free GPUs with
/// their free slots, the live counts with the live allocations.
async fn assert_counts_agree(app: &TestApp) {
    assert_eq!(free_count_drift(app).await, 0, "the nodes' free counts agree with their slots");
    assert_eq!(live_count_drift(app).await, 0, "the live counts agree with the live allocations");
}

/// How many `revoke_user` tasks were ever queued for the allocation `id`.
async fn revoke_tasks(app: &TestApp, id: &str) -> i64 {
    gpuaas_store::sqlx::query_scalar("SELECT COUNT(*) FROM node_tasks WHERE task_type = $1 AND params LIKE $2")
        .bind(TaskType::RevokeUser.as_str())
        .bind(format!("%{id}%"))
        .fetch_one(app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn set_policy(app: &TestApp, key: gpuaas_policy::PolicyKey<i64>, value: i64) {
    app.policy.set(key, &value).await.unwrap_or_else(|e| panic!("{e}"));
}

fn statuses(allocation: &serde_json::Value) -> Vec<String> {
    allocation["transitions"].as_array().map_or_else(Vec::new, |list| list.iter().map(|t| text(&t["to"])).collect())
}

gpuaas_testkit::both_backends!(an_allocation_is_provisioned_reached_billed_and_released);
async fn an_allocation_is_provisioned_reached_billed_and_released(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    set_policy(&app, keys::BILLING_WINDOW_SECONDS, 1).await;
    let world = world(&app, 100_000).await;
    // 36,000 per GPU-hour is 10 per GPU-second: easy to check by hand.
    let body = json!({"price_per_gpu_hour_minor": 36_000});
    json(
        app.client
            .patch(app.url(&format!("/api/v1/admin/skus/{}", world.sku)))
            .bearer_auth(&world.admin)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        200,
    )
    .await;

    let created = create(&app, &world, 2).await;
    let id = text(&created["id"]);
    assert_eq!(created["status"], "requested");
    assert_eq!(created["node_id"], world.node.as_str());
    assert_eq!(created["gpu_indices"].as_array().map(Vec::len), Some(2));
    assert_eq!(created["hourly_cost_minor"], 72_000);
    assert!(created["ssh"].is_null(), "no SSH access before active: {created}");
    assert_eq!(held_slots(&app, &id).await, 2);

    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "provisioning");
    // A duplicate kick (a redelivered event) queues nothing new.
    app.allocations.kick(&id).await.unwrap_or_else(|e| panic!("{e}"));
    step(&app).await;
    let provision = app.nodes.pull_tasks(&world.node, Duration::ZERO).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(provision.len(), 1, "exactly one provisioning task");
    assert_eq!(provision[0].task_type, "allocation.provision_user");
    assert_eq!(provision[0].params["authorized_keys"], json!([SSH_KEY]));
    assert_eq!(provision[0].params["gpu_indices"], created["gpu_indices"]);
    let result = TaskResult::succeeded(json!({}));
    app.nodes
        .complete_task(&world.node, &provision[0].task_id, &result, "test")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    step(&app).await;

    let active = show(&app, &world.user, &id).await;
    assert_eq!(active["status"], "active");
    let username = text(&active["ssh"]["username"]);
    assert_eq!(provision[0].params["username"], username.as_str());
    assert_eq!(active["ssh"]["host"], "gpu-node-1.test");
    assert_eq!(active["ssh"]["command"], format!("ssh -p 22 {username}@gpu-node-1.test"));
    assert_eq!(statuses(&active), ["requested", "provisioning", "active"]);

    // Held for a little over two seconds, then billed window by window.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let report = gpuaas::runtime::accrual_cycle(&app.store, &app.policy, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.entries >= 2, "two whole windows billed: {report:?}");

    let released = json(app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await, 200).await;
    assert_eq!(released["status"], "releasing");
    envelope(
        app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await,
        409,
        "allocation_invalid_transition",
    )
    .await;
    step(&app).await;
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.revoke_user"]);
    step(&app).await;
    let done = show(&app, &world.user, &id).await;
    assert_eq!(done["status"], "released");
    assert_eq!(statuses(&done), ["requested", "provisioning", "active", "releasing", "released"]);
    assert_eq!(held_slots(&app, &id).await, 0, "GPUs free once released");

    // Debits equal the held seconds at the price, exactly.
    let usage = json(app.get("/api/v1/billing/usage", &world.user).await, 200).await;
    let record = &usage["items"][0];
    assert_eq!(record["allocation_id"], id.as_str());
    assert!(record["ended_at"].is_string());
    let seconds = record["billed_seconds"].as_i64().unwrap_or_default();
    assert!((2..=4).contains(&seconds), "held about 2 s: {record}");
    assert_eq!(record["billed_minor"].as_i64(), Some(seconds * 20));
    assert_eq!(done["accrued_cost_minor"].as_i64(), Some(seconds * 20));
    let ledger = json(app.get("/api/v1/billing/ledger?type=usage_debit", &world.user).await, 200).await;
    let debited: i64 = ledger["items"]
        .as_array()
        .map_or(0, |items| items.iter().map(|e| e["amount_minor"].as_i64().unwrap_or_default()).sum());
    assert_eq!(debited, -seconds * 20);
    let balance = json(app.get("/api/v1/billing/balance", &world.user).await, 200).await;
    assert_eq!(balance["amount_minor"].as_i64(), Some(100_000 - seconds * 20));
    // A replayed accrual cycle posts nothing more.
    let again = gpuaas::runtime::accrual_cycle(&app.store, &app.policy, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.entries, 0);
}

gpuaas_testkit::both_backends!(creating_refuses_what_cannot_be_served);
async fn creating_refuses_what_cannot_be_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = world(&app, 0).await;
    // No money yet.
    envelope(app.post(ALLOCATIONS, &world.user, create_body(&world, 1)).await, 402, "insufficient_balance").await;
    let user_id = app.user_id("alice").await;
    let credit = json!({"amount_minor": 5_000, "currency": "USD", "reason": "trial credit"});
    json(app.post(&format!("/api/v1/admin/users/{user_id}/balance"), &world.admin, credit).await, 201).await;

    let field = |body: serde_json::Value| body["error"]["details"]["field"].as_str().unwrap_or_default().to_owned();
    for (patch, expected) in [
        (json!({"gpu_count": 0}), "gpu_count"),
        (json!({"gpu_count": 9}), "gpu_count"),
        (json!({"sku": "no-such-sku"}), "sku"),
        (json!({"ssh_key_ids": []}), "ssh_key_ids"),
        (json!({"ssh_key_ids": ["not-a-key"]}), "ssh_key_ids"),
        (json!({"name": "x".repeat(65)}), "name"),
    ] {
        let mut body = create_body(&world, 1);
        for (key, value) in patch.as_object().into_iter().flatten() {
            body[key] = value.clone();
        }
        let error = envelope(app.post(ALLOCATIONS, &world.user, body).await, 400, "validation_error").await;
        assert_eq!(field(error), expected, "{patch}");
    }
    let mut unknown = create_body(&world, 1);
    unknown["colour"] = json!("blue");
    envelope(app.post(ALLOCATIONS, &world.user, unknown).await, 400, "unknown_field").await;
    // Another user's key is not usable.
    let bob = app.token_for("bob").await;
    let bobs_key =
        json(app.post("/api/v1/ssh-keys", &bob, json!({"name": "b", "public_key": SSH_KEY})).await, 201).await;
    let mut body = create_body(&world, 1);
    body["ssh_key_ids"] = json!([bobs_key["id"]]);
    assert_eq!(
        field(envelope(app.post(ALLOCATIONS, &world.user, body).await, 400, "validation_error").await),
        "ssh_key_ids"
    );
    // Another tenant's project is not found.
    let bob_me = json(app.get("/api/v1/users/me", &bob).await, 200).await;
    let mut body = create_body(&world, 1);
    body["project_id"] = bob_me["projects"][0]["id"].clone();
    envelope(app.post(ALLOCATIONS, &world.user, body).await, 404, "not_found").await;

    // Capacity: 8 GPUs on the only node.
    let first = create(&app, &world, 6).await;
    envelope(app.post(ALLOCATIONS, &world.user, create_body(&world, 3)).await, 409, "sku_unavailable").await;
    // Caps from policy.
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_USER, 2).await;
    create(&app, &world, 1).await;
    envelope(app.post(ALLOCATIONS, &world.user, create_body(&world, 1)).await, 429, "allocation_limit_reached").await;
    // Each cap stands on its own: the project's, then the tenant's.
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_USER, 100).await;
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_PROJECT, 2).await;
    let limited =
        envelope(app.post(ALLOCATIONS, &world.user, create_body(&world, 1)).await, 429, "allocation_limit_reached")
            .await;
    assert!(text(&limited["error"]["message"]).contains("project"), "{limited}");
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_PROJECT, 100).await;
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_TENANT, 2).await;
    let limited =
        envelope(app.post(ALLOCATIONS, &world.user, create_body(&world, 1)).await, 429, "allocation_limit_reached")
            .await;
    assert!(text(&limited["error"]["message"]).contains("tenant"), "{limited}");

    // Scoping: bob sees nothing of alice's.
    let id = text(&first["id"]);
    envelope(app.get(&format!("{ALLOCATIONS}/{id}"), &bob).await, 404, "not_found").await;
    envelope(app.post(&format!("{ALLOCATIONS}/{id}/release"), &bob, json!({})).await, 404, "not_found").await;
    let bobs = json(app.get(ALLOCATIONS, &bob).await, 200).await;
    assert_eq!(bobs["items"].as_array().map(Vec::len), Some(0));
    let alices = json(app.get(&format!("{ALLOCATIONS}?status=requested"), &world.user).await, 200).await;
    assert_eq!(alices["items"].as_array().map(Vec::len), Some(2));
    envelope(app.get(&format!("{ALLOCATIONS}?status=sleeping"), &world.user).await, 400, "validation_error").await;
    // Releasing before it is active is not a transition the machine has.
    envelope(
        app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await,
        409,
        "allocation_invalid_transition",
    )
    .await;
    // Only operators force-release, with a reason.
    let force = format!("/api/v1/admin/allocations/{id}/force-release");
    envelope(app.post(&force, &world.user, json!({"reason": "mine"})).await, 403, "forbidden").await;
    envelope(app.post(&force, &world.admin, json!({"reason": ""})).await, 400, "validation_error").await;
    let forced = json(app.post(&force, &world.admin, json!({"reason": "customer asked by phone"})).await, 200).await;
    assert_eq!(forced["status"], "failed");
    assert_eq!(forced["failure_reason"], "customer asked by phone");
    assert_eq!(held_slots(&app, &id).await, 0);
    envelope(app.post(&force, &world.admin, json!({"reason": "again"})).await, 409, "allocation_invalid_transition")
        .await;
    let audit =
        json(app.get("/api/v1/admin/audit-logs?action=allocation.force_release", &world.admin).await, 200).await;
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(1), "{audit}");
    assert_counts_agree(&app).await;
}

gpuaas_testkit::both_backends!(failed_provisioning_frees_gpus_and_failed_releases_can_be_retried);
async fn failed_provisioning_frees_gpus_and_failed_releases_can_be_retried(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    set_policy(&app, keys::ALLOCATIONS_WORKFLOW_MAX_ATTEMPTS, 2).await;
    set_policy(&app, keys::ALLOCATIONS_WORKFLOW_RETRY_BASE_MS, 0).await;
    let world = world(&app, 50_000).await;

    // Provisioning fails on every attempt: failed, GPUs freed, nothing billed.
    let doomed = text(&create(&app, &world, 4).await["id"]);
    step(&app).await;
    for _ in 0..2 {
        assert_eq!(answer(&app, &world.node, Some(TaskType::ProvisionUser)).await, ["allocation.provision_user"]);
        // One step notes the failure and backs off; the next queues the retry (or,
        // with no attempts left, fails the allocation).
        step(&app).await;
        step(&app).await;
    }
    let failed = show(&app, &world.user, &doomed).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(text(&failed["failure_reason"]).contains("useradd"), "{failed}");
    assert_eq!(held_slots(&app, &doomed).await, 0);
    assert_eq!(failed["accrued_cost_minor"], 0);
    // The node is told to remove whatever it may have created.
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.revoke_user"]);

    // A release whose task never comes back: release_failed, GPUs held.
    let id = text(&create(&app, &world, 2).await["id"]);
    step(&app).await;
    answer(&app, &world.node, None).await;
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "active");
    set_policy(&app, keys::ALLOCATIONS_RELEASE_TIMEOUT_SECONDS, 0).await;
    json(app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await, 200).await;
    step(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    step(&app).await;
    let stuck = show(&app, &world.user, &id).await;
    assert_eq!(stuck["status"], "release_failed", "{stuck}");
    assert!(text(&stuck["failure_reason"]).contains("timed out"));
    assert_eq!(held_slots(&app, &id).await, 2, "GPUs stay reserved until the release completes");
    let listed = json(app.get("/api/v1/admin/allocations?status=release_failed", &world.admin).await, 200).await;
    assert_eq!(listed["items"][0]["id"], id.as_str());

    // The user retries (the retry's commit queues a new revoke task, before any
    // workflow pass); it fails again; the operator force-releases and it completes.
    let revokes_before = revoke_tasks(&app, &id).await;
    json(app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await, 200).await;
    assert_eq!(revoke_tasks(&app, &id).await, revokes_before + 1);
    step(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "release_failed");
    set_policy(&app, keys::ALLOCATIONS_RELEASE_TIMEOUT_SECONDS, 300).await;
    let force = format!("/api/v1/admin/allocations/{id}/force-release");
    let forced = json(app.post(&force, &world.admin, json!({"reason": "node rebooted"})).await, 200).await;
    assert_eq!(forced["status"], "releasing");
    step(&app).await;
    // Earlier revoke tasks were never answered; answer them all now.
    answer(&app, &world.node, None).await;
    step(&app).await;
    let done = show(&app, &world.user, &id).await;
    assert_eq!(done["status"], "released", "{done}");
    assert_eq!(held_slots(&app, &id).await, 0);
    let reasons: Vec<String> = done["transitions"]
        .as_array()
        .map_or_else(Vec::new, |list| list.iter().filter_map(|t| t["reason"].as_str().map(str::to_owned)).collect());
    assert!(reasons.iter().any(|reason| reason == "node rebooted"), "{reasons:?}");
}

gpuaas_testkit::both_backends!(one_broken_step_does_not_hold_back_the_others_of_its_pass);
/// The runner takes a pass's steps in groups, one transaction each: a step that fails
/// undoes its group's writes, and the others of the group are then taken one by one.
async fn one_broken_step_does_not_hold_back_the_others_of_its_pass(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = world(&app, 50_000).await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(text(&create(&app, &world, 1).await["id"]));
        }
        ids
    };
    step(&app).await;
    assert_eq!(answer(&app, &world.node, None).await.len(), 4);
    // One row now names a task that does not exist: its step cannot go on.
    gpuaas_store::sqlx::query("UPDATE allocations SET provision_task_id = 'no-such-task' WHERE id = $1")
        .bind(&ids[1])
        .execute(app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = app.allocations.run_due(256, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.claimed, report.failed_steps), (4, 1), "{report:?}");
    for (index, id) in ids.iter().enumerate() {
        let allocation = show(&app, &world.user, id).await;
        let expected = if index == 1 { "provisioning" } else { "active" };
        assert_eq!(allocation["status"], expected, "{allocation}");
        let transitions = statuses(&allocation);
        assert_eq!(transitions.iter().filter(|to| *to == "active").count(), usize::from(index != 1), "{transitions:?}");
    }
    // Exactly one lifecycle event per transition made, none from the undone group.
    let active_events: i64 = gpuaas_store::sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox_events WHERE subject = 'gpuaas.provisioning.active'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(active_events, 3);
    assert_counts_agree(&app).await;
    // The broken row is postponed, not retried (and failed) on every pass.
    let again = app.allocations.run_due(256, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((again.claimed, again.failed_steps), (0, 0), "{again:?}");
}

gpuaas_testkit::both_backends!(a_row_due_long_before_the_runners_look_is_still_taken);
/// Passes look for due rows from a floor near the last complete look, not from the
/// start of time; a row that came due below it (a process whose clock is behind, a
/// late commit) is taken by the full look the runner makes once a second.
async fn a_row_due_long_before_the_runners_look_is_still_taken(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = world(&app, 50_000).await;
    let id = text(&create(&app, &world, 1).await["id"]);
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "provisioning");
    gpuaas_store::sqlx::query("UPDATE allocations SET workflow_due_at = workflow_due_at - 3600000000 WHERE id = $1")
        .bind(&id)
        .execute(app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = app.allocations.run_due(256, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.claimed, report.failed_steps), (1, 0), "{report:?}");
}

gpuaas_testkit::both_backends!(a_node_result_moves_its_allocation_on_without_a_poll);
async fn a_node_result_moves_its_allocation_on_without_a_poll(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = world(&app, 50_000).await;
    // A row waiting on its task is due again only after a minute: only the node
    // plane's word that the task finished can move it on sooner.
    set_policy(&app, keys::ALLOCATIONS_WORKFLOW_POLL_INTERVAL_MS, 60_000).await;
    let id = text(&create(&app, &world, 1).await["id"]);
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "provisioning");
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "provisioning", "nothing is due before the result");
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.provision_user"]);
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "active");

    // The release's own commit queues the revoke task: the node has it before any
    // workflow pass.
    json(app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await, 200).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "releasing");
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.revoke_user"]);
    step(&app).await;
    let released = show(&app, &world.user, &id).await;
    assert_eq!(released["status"], "released", "{released}");
    assert_counts_agree(&app).await;
}

/// A long poll sent in the background.
fn long_poll(app: &TestApp, path: &str, token: &str) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let (client, url, token) = (app.client.clone(), app.url(path), token.to_owned());
    tokio::spawn(async move { client.get(url).bearer_auth(token).send().await })
}

/// The long poll's response, which must come within 10 s (`missing` says why it should).
async fn answered(
    waiting: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    missing: &str,
) -> reqwest::Response {
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap_or_else(|_| panic!("{missing}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

gpuaas_testkit::both_backends!(a_long_poll_answers_when_the_status_moves_on);
async fn a_long_poll_answers_when_the_status_moves_on(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = world(&app, 50_000).await;
    let id = text(&create(&app, &world, 1).await["id"]);
    let at = |query: &str| format!("{ALLOCATIONS}/{id}?{query}");

    // A status it is not in is not waited for.
    let now = json(app.get(&at("while_status=active&wait_seconds=30"), &world.user).await, 200).await;
    assert_eq!(now["status"], "requested");
    // A wait that runs out answers with the status there is.
    let started = std::time::Instant::now();
    let still = json(app.get(&at("while_status=requested&wait_seconds=1"), &world.user).await, 200).await;
    assert_eq!(still["status"], "requested");
    assert!(started.elapsed() >= Duration::from_secs(1), "waited the second asked for");
    // Another tenant's allocation is not found, waiting or not.
    let bob = app.token_for("bob").await;
    envelope(app.get(&at("while_status=requested&wait_seconds=5"), &bob).await, 404, "not_found").await;
    // Bad parameters name themselves.
    for (query, field) in [
        ("while_status=asleep", "while_status"),
        ("while_status=requested,", "while_status"),
        ("while_status=requested&wait_seconds=0", "wait_seconds"),
        ("while_status=requested&wait_seconds=61", "wait_seconds"),
        ("while_status=requested&wait_seconds=soon", "wait_seconds"),
        ("wait_seconds=5", "wait_seconds"),
    ] {
        let error = envelope(app.get(&at(query), &world.user).await, 400, "validation_error").await;
        assert_eq!(error["error"]["details"]["field"], field, "{query}: {error}");
    }

    // Waiting through provisioning: answered once the workflow makes it active.
    let waiting = long_poll(&app, &at("while_status=requested,provisioning"), &world.user);
    step(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "still provisioning: the answer waits");
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.provision_user"]);
    step(&app).await;
    let response = answered(waiting, "no answer once active").await;
    let active = json(response, 200).await;
    assert_eq!(active["status"], "active", "{active}");
    assert_eq!(statuses(&active), ["requested", "provisioning", "active"]);

    // A change committed by another process (here another service on the same
    // database, whose commits this API's waiters are not told of) is found by the
    // waiters' own reads.
    json(app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await, 200).await;
    let waiting = long_poll(&app, &at("while_status=releasing"), &world.user);
    let elsewhere = gpuaas_allocations::Allocations::new(
        app.store.clone(),
        app.policy.clone(),
        app.nodes.clone(),
        Default::default(),
    );
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.revoke_user"]);
    let report = elsewhere.run_due(256, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.claimed, report.failed_steps), (1, 0), "{report:?}");
    let response = answered(waiting, "no answer once released elsewhere").await;
    assert_eq!(json(response, 200).await["status"], "released");

    // A process that stops ends the waits it holds (they answer with the status
    // there is), and any later one at once, so they do not hold up its drain.
    let waiting = long_poll(&app, &at("while_status=released"), &world.user);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "released: the answer waits");
    app.allocations.end_waits();
    let response = answered(waiting, "a wait went on after the waits were ended").await;
    assert_eq!(json(response, 200).await["status"], "released");
    let later = tokio::time::timeout(Duration::from_secs(10), app.get(&at("while_status=released"), &world.user))
        .await
        .unwrap_or_else(|_| panic!("a wait began after the waits were ended"));
    assert_eq!(json(later, 200).await["status"], "released");
}

gpuaas_testkit::both_backends!(concurrent_status_reads_are_each_answered_with_their_own);
async fn concurrent_status_reads_are_each_answered_with_their_own(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = world(&app, 50_000).await;
    let first = text(&create(&app, &world, 1).await["id"]);
    step(&app).await;
    let second = text(&create(&app, &world, 1).await["id"]);
    let expected = [(first.as_str(), Some("provisioning")), (second.as_str(), Some("requested")), ("no-such", None)];
    // Reads queued together share statements; each still gets its own allocation's
    // status, and an unknown one is not found.
    let mut reads = tokio::task::JoinSet::new();
    for round in 0..60 {
        let (id, want) = expected[round % expected.len()];
        let (allocations, id) = (app.allocations.clone(), id.to_owned());
        reads.spawn(async move {
            let read = allocations.status_of(&id).await;
            (id, want, read.map(|status| status.as_str().to_owned()).map_err(|e| e.to_string()))
        });
    }
    while let Some(joined) = reads.join_next().await {
        let (id, want, read) = joined.unwrap_or_else(|e| panic!("{e}"));
        match want {
            Some(status) => assert_eq!(read.as_deref(), Ok(status), "{id}"),
            None => assert!(read.is_err(), "{id}: {read:?}"),
        }
    }
}

gpuaas_testkit::both_backends!(racing_creates_never_share_a_gpu);
async fn racing_creates_never_share_a_gpu(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 200 writes at once from one user: lift the write rate limit before its bucket exists.
    set_policy(&app, keys::RATELIMIT_WRITE_BURST, 10_000).await;
    let world = world(&app, 1_000_000).await;
    for cap in [
        keys::ALLOCATIONS_MAX_CONCURRENT_PER_USER,
        keys::ALLOCATIONS_MAX_CONCURRENT_PER_PROJECT,
        keys::ALLOCATIONS_MAX_CONCURRENT_PER_TENANT,
    ] {
        set_policy(&app, cap, 1_000).await;
    }
    // 1 node already; 7 more: 64 GPUs for 200 racing requests of 1 or 2 GPUs.
    for index in 2..=8 {
        let (_, token) = register(&app, &world.admin, &format!("gpu-node-{index}.test"), "h100-x8").await;
        crate::nodes::enroll(&app, &token).await;
    }
    let (app_ref, user) = (&app, world.user.as_str());
    let requests = (0..200).map(|index| {
        let body = create_body(&world, 1 + index % 2);
        async move { app_ref.post(ALLOCATIONS, user, body).await }
    });
    let responses = futures::future::join_all(requests).await;
    let mut created = 0;
    let mut gpus = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => {
                let body: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
                created += 1;
                gpus += body["gpu_count"].as_i64().unwrap_or_default();
            }
            409 => {}
            other => panic!("unexpected {other}: {}", response.text().await.unwrap_or_default()),
        }
    }
    assert!(created > 0);
    let rows: Vec<(String, i64, String)> = gpuaas_store::sqlx::query_as(
        "SELECT node_id, gpu_index, allocation_id FROM node_resource_slots WHERE allocation_id IS NOT NULL",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len() as i64, gpus, "every reserved GPU belongs to exactly one created allocation");
    let distinct: HashSet<(String, i64)> = rows.iter().map(|(node, index, _)| (node.clone(), *index)).collect();
    assert_eq!(distinct.len(), rows.len());
    // Each allocation's GPUs are on one node and match what it was given.
    let page = json(app.get(&format!("{ALLOCATIONS}?limit=200"), &world.user).await, 200).await;
    for allocation in page["items"].as_array().into_iter().flatten() {
        let held: Vec<&(String, i64, String)> = rows.iter().filter(|row| allocation["id"] == row.2.as_str()).collect();
        assert_eq!(held.len() as i64, allocation["gpu_count"].as_i64().unwrap_or_default());
        assert!(held.iter().all(|row| allocation["node_id"] == row.0.as_str()));
    }
    assert!((62..=64).contains(&gpus), "placement fills the fleet: {gpus}");
    assert_counts_agree(&app).await;
}

gpuaas_testkit::both_backends!(racing_creates_are_each_answered_as_if_alone);
async fn racing_creates_are_each_answered_as_if_alone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    set_policy(&app, keys::RATELIMIT_WRITE_BURST, 10_000).await;
    let world = world(&app, 1_000_000).await;
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_USER, 5).await;
    // Concurrent creates share transactions: good requests, bad keys and requests over
    // the cap arrive together, and each gets its own answer.
    let (app_ref, user) = (&app, world.user.as_str());
    let requests = (0..60).map(|index| {
        let mut body = create_body(&world, 1);
        if index % 3 == 0 {
            body["ssh_key_ids"] = json!(["not-a-key-of-mine"]);
        }
        async move { (index, app_ref.post(ALLOCATIONS, user, body).await) }
    });
    let mut created = Vec::new();
    let mut over_cap = 0;
    for (index, response) in futures::future::join_all(requests).await {
        if index % 3 == 0 {
            let body = envelope(response, 400, "validation_error").await;
            assert_eq!(body["error"]["details"]["field"], "ssh_key_ids", "{body}");
            continue;
        }
        match response.status().as_u16() {
            201 => created.push(response.json::<serde_json::Value>().await.unwrap_or_else(|e| panic!("{e}"))),
            429 => {
                envelope(response, 429, "allocation_limit_reached").await;
                over_cap += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap_or_default()),
        }
    }
    assert_eq!(created.len(), 5, "exactly the cap is created");
    assert_eq!(over_cap, 35);
    let mut gpus: Vec<i64> = created
        .iter()
        .flat_map(|body| body["gpu_indices"].as_array().cloned().unwrap_or_default())
        .map(|index| index.as_i64().unwrap_or(-1))
        .collect();
    gpus.sort_unstable();
    assert_eq!(gpus, [0, 1, 2, 3, 4], "best fit packs the one node, lowest GPUs first");
    for body in &created {
        assert_eq!(body["status"], "requested");
        let shown = show(&app, &world.user, body["id"].as_str().unwrap_or_default()).await;
        assert_eq!(shown["transitions"].as_array().map(Vec::len), Some(1), "{shown}");
    }
    let audited: i64 =
        gpuaas_store::sqlx::query_scalar("SELECT COUNT(*) FROM audit_logs WHERE action = 'allocation.create'")
            .fetch_one(app.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(audited, 5);
    assert_counts_agree(&app).await;
}

gpuaas_testkit::both_backends!(racing_releases_are_each_answered_as_if_alone);
async fn racing_releases_are_each_answered_as_if_alone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    set_policy(&app, keys::RATELIMIT_WRITE_BURST, 10_000).await;
    let world = world(&app, 1_000_000).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(text(&create(&app, &world, 1).await["id"]));
    }
    step(&app).await;
    assert_eq!(answer(&app, &world.node, None).await.len(), 6);
    step(&app).await;
    let bob = app.token_for("bob").await;
    // Each allocation released twice by its owner and once by a stranger, plus one
    // that does not exist, all at once: the releases share transactions.
    let mut requests = Vec::new();
    for id in &ids {
        requests.push((id.clone(), world.user.clone()));
        requests.push((id.clone(), bob.clone()));
        requests.push((id.clone(), world.user.clone()));
    }
    requests.push(("no-such-allocation".to_owned(), world.user.clone()));
    let app_ref = &app;
    let responses = futures::future::join_all(requests.into_iter().map(|(id, token)| async move {
        let response = app_ref.post(&format!("{ALLOCATIONS}/{id}/release"), &token, json!({})).await;
        (id, token, response)
    }))
    .await;
    let mut released: HashMap<String, usize> = HashMap::new();
    for (id, token, response) in responses {
        match (response.status().as_u16(), token == bob || id == "no-such-allocation") {
            (200, false) => {
                let body: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(body["status"], "releasing", "{body}");
                assert!(body["releasing_at"].is_string(), "{body}");
                assert_eq!(statuses(&body), ["requested", "provisioning", "active", "releasing"], "{body}");
                *released.entry(id).or_default() += 1;
            }
            (409, false) => {
                envelope(response, 409, "allocation_invalid_transition").await;
            }
            (404, true) => {
                envelope(response, 404, "not_found").await;
            }
            (status, _) => panic!("unexpected {status} for {id}: {}", response.text().await.unwrap_or_default()),
        }
    }
    assert_eq!(released.len(), 6, "every allocation was released: {released:?}");
    assert!(released.values().all(|count| *count == 1), "exactly once each: {released:?}");
    for (table, condition, expected) in [
        ("audit_logs", "action = 'allocation.release'", 6),
        ("outbox_events", "subject = 'gpuaas.provisioning.releasing.requested'", 6),
        ("allocations", "status = 'releasing' AND transitions LIKE '%\"to\":\"releasing\"%'", 6),
    ] {
        let count: i64 = gpuaas_store::sqlx::query_scalar(gpuaas_store::sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {table} WHERE {condition}"
        )))
        .fetch_one(app.store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count, expected, "{table}");
    }
    // The workflow takes it from there.
    step(&app).await;
    answer(&app, &world.node, None).await;
    step(&app).await;
    for id in &ids {
        assert_eq!(show(&app, &world.user, id).await["status"], "released");
    }
    assert_counts_agree(&app).await;
}

/// What the world may do to an allocation next.
#[derive(Debug, Clone, Copy)]
enum Move {
    Step,
    NodeSucceeds,
    NodeFails,
    UserReleases,
    OperatorForceReleases,
}

fn moves() -> impl proptest::strategy::Strategy<Value = Vec<Move>> {
    use proptest::prelude::*;
    proptest::collection::vec(
        prop_oneof![
            3 => Just(Move::Step),
            2 => Just(Move::NodeSucceeds),
            1 => Just(Move::NodeFails),
            1 => Just(Move::UserReleases),
            1 => Just(Move::OperatorForceReleases),
        ],
        1..16,
    )
}

gpuaas_testkit::both_backends!(any_sequence_of_moves_keeps_the_machine_legal_and_slots_held_iff_live);
/// Property: whatever the node, the user and the operator do, in any order, every
/// recorded transition is one the machine allows, and the allocation holds exactly its
/// GPUs while live and none once terminal (and the nodes' free counts agree).
async fn any_sequence_of_moves_keeps_the_machine_legal_and_slots_held_iff_live(backend: Backend) {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRunner};
    let app = TestApp::spawn(backend).await;
    set_policy(&app, keys::ALLOCATIONS_WORKFLOW_RETRY_BASE_MS, 0).await;
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_USER, 1_000).await;
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_PROJECT, 1_000).await;
    set_policy(&app, keys::ALLOCATIONS_MAX_CONCURRENT_PER_TENANT, 1_000).await;
    // Hundreds of reads and writes from one user in a few seconds: lift the rate limits
    // before their buckets exist.
    set_policy(&app, keys::RATELIMIT_WRITE_BURST, 10_000).await;
    set_policy(&app, keys::RATELIMIT_READ_BURST, 10_000).await;
    let world = world(&app, 10_000_000).await;
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    for _ in 0..24 {
        let sequence = moves().new_tree(&mut runner).unwrap_or_else(|e| panic!("{e}")).current();
        // Earlier cases may leave GPUs held (release_failed); force them free first.
        let created = app.post(ALLOCATIONS, &world.user, create_body(&world, 2)).await;
        if created.status().as_u16() == 409 {
            break;
        }
        let created: serde_json::Value = created.json().await.unwrap_or_else(|e| panic!("{e}"));
        let id = text(&created["id"]);
        for movement in &sequence {
            match movement {
                Move::Step => step(&app).await,
                Move::NodeSucceeds => {
                    answer(&app, &world.node, None).await;
                }
                Move::NodeFails => {
                    let deliveries =
                        app.nodes.pull_tasks(&world.node, Duration::ZERO).await.unwrap_or_else(|e| panic!("{e}"));
                    for delivery in deliveries {
                        let result = TaskResult::failed("host said no");
                        app.nodes
                            .complete_task(&world.node, &delivery.task_id, &result, "test")
                            .await
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                }
                Move::UserReleases => {
                    let status = app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await;
                    assert!(matches!(status.status().as_u16(), 200 | 409), "{sequence:?}");
                }
                Move::OperatorForceReleases => {
                    let path = format!("/api/v1/admin/allocations/{id}/force-release");
                    let status = app.post(&path, &world.admin, json!({"reason": "property test"})).await;
                    assert!(matches!(status.status().as_u16(), 200 | 409), "{sequence:?}");
                }
            }
            let current = show(&app, &world.user, &id).await;
            let status = gpuaas_allocations::AllocationStatus::parse(current["status"].as_str().unwrap_or_default())
                .unwrap_or_else(|| panic!("{current}"));
            let held = held_slots(&app, &id).await;
            assert_eq!(held, if status.is_terminal() { 0 } else { 2 }, "{status} after {sequence:?}");
            assert_eq!(live_count_drift(&app).await, 0, "{status} after {sequence:?}");
            let path: Vec<gpuaas_allocations::AllocationStatus> = statuses(&current)
                .iter()
                .filter_map(|text| gpuaas_allocations::AllocationStatus::parse(text))
                .collect();
            assert!(path.windows(2).all(|pair| pair[0].can_become(pair[1])), "{path:?} after {sequence:?}");
        }
        // Leave no GPUs behind for the next case.
        let path = format!("/api/v1/admin/allocations/{id}/force-release");
        app.post(&path, &world.admin, json!({"reason": "next case"})).await;
        for _ in 0..4 {
            step(&app).await;
            answer(&app, &world.node, None).await;
        }
        step(&app).await;
    }
    assert_counts_agree(&app).await;
}

/// A fresh database with every migration before `version` applied, as an installation
/// that has not yet taken it (the database lives as long as the first value).
async fn migrated_before(backend: Backend, version: i64) -> (gpuaas_testkit::TestDatabase, gpuaas_store::Store) {
    let database = gpuaas_testkit::TestDatabase::create(backend).await;
    let store = gpuaas_store::Store::connect(&database.url, &gpuaas_store::PoolSettings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before: Vec<_> = gpuaas::migrations().into_iter().filter(|migration| migration.version < version).collect();
    store.migrate(&before).await.unwrap_or_else(|e| panic!("{e}"));
    (database, store)
}

gpuaas_testkit::both_backends!(transitions_kept_in_their_own_table_move_into_their_rows);
/// An installation with transitions in their own table keeps them, in order and with
/// who and why, when they move into their allocations' rows.
async fn transitions_kept_in_their_own_table_move_into_their_rows(backend: Backend) {
    let (_database, store) = migrated_before(backend, 2026120220).await;
    for id in ["a-moved", "a-untouched"] {
        gpuaas_store::sqlx::query(
            "INSERT INTO allocations (id, tenant_id, project_id, user_id, sku_id, gpu_count, status, node_id, \
             gpu_indices, ssh_host, ssh_username, authorized_keys, ssh_key_ids, cpu_millicores, memory_bytes, \
             price_per_gpu_hour_minor, currency, correlation_id, created_at, updated_at) \
             VALUES ($1, 't', 'p', 'u', 's', 1, 'provisioning', 'n', '[0]', 'h', 'ga_x', '[]', '[]', 1000, 1, 1, \
             'USD', 'c', 1, 2)",
        )
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // Written out of order: the move orders them by time.
    for (id, from, to, reason, at) in
        [("t2", Some("requested"), "provisioning", Some("started"), 20_i64), ("t1", None, "requested", None, 10)]
    {
        gpuaas_store::sqlx::query(
            "INSERT INTO allocation_transitions (id, allocation_id, from_status, to_status, actor, reason, \
             correlation_id, at) VALUES ($1, 'a-moved', $2, $3, 'alice', $4, 'corr', $5)",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(reason)
        .bind(at)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    store.migrate(&gpuaas::migrations()).await.unwrap_or_else(|e| panic!("{e}"));
    let stored = |id: &'static str| {
        let store = store.clone();
        async move {
            let text: String = gpuaas_store::sqlx::query_scalar("SELECT transitions FROM allocations WHERE id = $1")
                .bind(id)
                .fetch_one(store.pool())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
        }
    };
    assert_eq!(
        stored("a-moved").await,
        json!([
            {"from": null, "to": "requested", "actor": "alice", "reason": null, "correlation_id": "corr", "at": 10},
            {"from": "requested", "to": "provisioning", "actor": "alice", "reason": "started",
             "correlation_id": "corr", "at": 20},
        ])
    );
    assert_eq!(stored("a-untouched").await, json!([]));
    let table_left: Result<i64, _> =
        gpuaas_store::sqlx::query_scalar("SELECT COUNT(*) FROM allocation_transitions").fetch_one(store.pool()).await;
    assert!(table_left.is_err(), "the old table is gone");
}

gpuaas_testkit::both_backends!(an_installation_s_live_allocations_are_counted_when_the_counts_are_made);
/// The caps read kept counts; an installation that had only its rows gets counts of
/// its live allocations, per tenant, project and user, and none of its ended ones.
async fn an_installation_s_live_allocations_are_counted_when_the_counts_are_made(backend: Backend) {
    let (_database, store) = migrated_before(backend, 2026120260).await;
    for (id, user, status) in [
        ("a1", "u1", "active"),
        ("a2", "u1", "release_failed"),
        ("a3", "u1", "released"),
        ("a4", "u2", "requested"),
        ("a5", "u2", "failed"),
        ("a6", "u3", "released"),
    ] {
        gpuaas_store::sqlx::query(
            "INSERT INTO allocations (id, tenant_id, project_id, user_id, sku_id, gpu_count, status, node_id, \
             gpu_indices, ssh_host, ssh_username, authorized_keys, ssh_key_ids, cpu_millicores, memory_bytes, \
             price_per_gpu_hour_minor, currency, correlation_id, created_at, updated_at, transitions) \
             VALUES ($1, 't', 'p', $2, 's', 1, $3, 'n', '[0]', 'h', 'ga_x', '[]', '[]', 1000, 1, 1, \
             'USD', 'c', 1, 2, '[]')",
        )
        .bind(id)
        .bind(user)
        .bind(status)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    store.migrate(&gpuaas::migrations()).await.unwrap_or_else(|e| panic!("{e}"));
    let counts: Vec<(String, i64)> =
        gpuaas_store::sqlx::query_as("SELECT user_id, live FROM allocation_live_counts ORDER BY user_id")
            .fetch_all(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counts, [("u1".to_owned(), 2), ("u2".to_owned(), 1)]);
}

gpuaas_testkit::both_backends!(a_whole_life_runs_on_a_pool_of_one_connection);
/// No step of an allocation's life holds a connection while it waits for another: on a
/// pool of one (and policy read on every use, as the test app does), a step that did
/// would wait for itself until the acquire timeout and fail.
async fn a_whole_life_runs_on_a_pool_of_one_connection(backend: Backend) {
    let pool = gpuaas_store::PoolSettings { max_connections: 1, acquire_timeout: Duration::from_secs(3) };
    let app = TestApp::spawn_with_pool(backend, pool).await;
    let world = world(&app, 50_000).await;
    let id = text(&create(&app, &world, 2).await["id"]);
    step(&app).await;
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.provision_user"]);
    step(&app).await;
    assert_eq!(show(&app, &world.user, &id).await["status"], "active");
    json(app.post(&format!("{ALLOCATIONS}/{id}/release"), &world.user, json!({})).await, 200).await;
    assert_eq!(answer(&app, &world.node, None).await, ["allocation.revoke_user"]);
    step(&app).await;
    let released = show(&app, &world.user, &id).await;
    assert_eq!(released["status"], "released", "{released}");
    assert_counts_agree(&app).await;
}

//! The SKU catalog, node registration, heartbeats and offline detection, drain and
//! retire, and GPU slot placement, on both databases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use gpuaas_testkit::assert_err;

use std::collections::HashSet;
use std::time::Duration;

use gpuaas_inventory::nodes::{NODE_OFFLINE_SUBJECT, NODE_ONLINE_SUBJECT, NODE_RETIRED_SUBJECT};
use gpuaas_inventory::slots::{self, PlacementStrategy};
use gpuaas_inventory::{InventoryError, NodeStatus, SkuUpdate, nodes, skus};
use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::InventorySource;
use gpuaas_store::sqlx;
use gpuaas_testkit::{Backend, both_backends};
use support::{
    CORR, Env, enrolled, env, heartbeat, inventory, let_time_pass, new_node, new_sku, node_events, operator, register,
    sku,
};

// ------------------------------------------------------------------ SKUs

async fn sku_catalog_validates_and_audits(backend: Backend) {
    let env = env(backend).await;
    let admin = operator();

    let mut bad = new_sku("H100_X8", 8);
    assert_invalid!(env.plane.create_sku(&admin, &bad).await, "name");
    bad = new_sku("h100-x8", 8);
    bad.currency = "usd".into();
    assert_invalid!(env.plane.create_sku(&admin, &bad).await, "currency");
    bad = new_sku("h100-x8", 8);
    bad.price_per_gpu_hour_minor = -1;
    assert_invalid!(env.plane.create_sku(&admin, &bad).await, "price_per_gpu_hour_minor");
    bad = new_sku("h100-x8", 0);
    assert_invalid!(env.plane.create_sku(&admin, &bad).await, "gpus_per_node");
    assert!(skus::list_all(&env.store).await.unwrap().is_empty(), "nothing invalid was stored");

    let created = env.plane.create_sku(&admin, &new_sku("h100-x8", 8)).await.unwrap();
    assert_eq!(created.name, "h100-x8");
    assert_eq!(created.display_name, "h100-x8", "the display name defaults to the name");
    assert_eq!(created.gpus_per_node, 8);
    assert_eq!(created.price_per_gpu_hour_minor, 249);
    assert_eq!(created.currency, "USD");
    assert!(created.active);
    assert_eq!(skus::get(&env.store, &created.id).await.unwrap(), created);

    assert_err!(env.plane.create_sku(&admin, &new_sku("h100-x8", 4)).await, InventoryError::Conflict(_));

    let cheaper = env
        .plane
        .update_sku(&admin, &created.id, &SkuUpdate { price_per_gpu_hour_minor: Some(199), ..SkuUpdate::default() })
        .await
        .unwrap();
    assert_eq!(cheaper.price_per_gpu_hour_minor, 199);
    assert_eq!(skus::get(&env.store, &created.id).await.unwrap().price_per_gpu_hour_minor, 199);
    assert_invalid!(
        env.plane
            .update_sku(&admin, &created.id, &SkuUpdate { currency: Some("usd".into()), ..SkuUpdate::default() })
            .await,
        "currency"
    );
    assert_invalid!(
        env.plane
            .update_sku(&admin, &created.id, &SkuUpdate { price_per_gpu_hour_minor: Some(-5), ..SkuUpdate::default() })
            .await,
        "price_per_gpu_hour_minor"
    );
    assert_err!(
        env.plane.update_sku(&admin, "no-such-sku", &SkuUpdate::default()).await,
        InventoryError::NotFound("sku")
    );

    let other = sku(&env, "a100-x4", 4).await;
    let names = |list: Vec<gpuaas_inventory::Sku>| list.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(names(skus::list_active(&env.store).await.unwrap()), ["a100-x4", "h100-x8"]);
    let deactivated = env
        .plane
        .update_sku(&admin, &created.id, &SkuUpdate { active: Some(false), ..SkuUpdate::default() })
        .await
        .unwrap();
    assert!(!deactivated.active);
    assert_eq!(names(skus::list_active(&env.store).await.unwrap()), ["a100-x4"]);
    assert_eq!(names(skus::list_all(&env.store).await.unwrap()), ["a100-x4", "h100-x8"]);

    let created_rows = support::audit_rows(&env.store, "sku.create").await;
    assert_eq!(created_rows.len(), 2);
    let row = created_rows.iter().find(|row| row.target.ends_with(&created.id)).expect("sku.create row");
    assert_eq!(row.actor_id, admin.id);
    assert_eq!(row.correlation_id, CORR);
    assert_eq!(row.details["price_per_gpu_hour_minor"], 249);
    assert!(created_rows.iter().any(|row| row.target.ends_with(&other.id)));
    let update_rows = support::audit_rows(&env.store, "sku.update").await;
    assert_eq!(update_rows.len(), 1, "only the successful price change is audited");
    assert_eq!(update_rows[0].details["before"]["price_per_gpu_hour_minor"], 249);
    assert_eq!(update_rows[0].details["after"]["price_per_gpu_hour_minor"], 199);
    let deactivate_rows = support::audit_rows(&env.store, "sku.deactivate").await;
    assert_eq!(deactivate_rows.len(), 1);
    assert!(deactivate_rows[0].target.ends_with(&created.id));
    assert_eq!(deactivate_rows[0].details["after"]["active"], false);
}

// ------------------------------------------------------------------ registration

async fn registration_returns_a_one_time_token_stored_hashed(backend: Backend) {
    let env = env(backend).await;
    let h100 = sku(&env, "h100-x8", 8).await;

    // By name or by id.
    let registered = register(&env, "gpu-01.dc1.example", "h100-x8").await;
    let node = &registered.node;
    assert_eq!(node.status, NodeStatus::PendingEnrollment);
    assert_eq!(node.hostname, "gpu-01.dc1.example");
    assert_eq!(node.sku_id, h100.id);
    assert_eq!(node.sku_name, "h100-x8");
    assert_eq!(node.occupancy.gpus_total, 8);
    assert_eq!(node.occupancy.gpus_free, 8);
    assert_eq!(node.occupancy.gpus_allocated, 0);
    assert!(node.gpus.is_empty() && node.host.is_none() && node.enrolled_at.is_none());
    let token = &registered.enrollment.token;
    assert!(token.starts_with("gpe_"), "{token}");
    assert!(token.len() >= 4 + 43, "256 bits of secret");
    assert!(registered.enrollment.expires_at > Timestamp::now());
    let slots: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM node_resource_slots WHERE node_id = $1")
        .bind(&node.id)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(slots, 8, "one slot per GPU of the SKU");
    let by_id = register(&env, "gpu-02", &h100.id).await;
    assert_ne!(by_id.enrollment.token, *token);

    // Only a hash of the token is stored: no column of any token row holds it.
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, node_id, token_hash FROM node_enrollment_tokens")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    let secret = token.trim_start_matches("gpe_");
    for (id, node_id, hash) in &rows {
        for column in [id, node_id, hash] {
            assert!(!column.contains(secret), "a token row holds the token in clear");
        }
    }
    use sha2::Digest as _;
    let expected = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    assert!(rows.iter().any(|(_, id, hash)| *id == node.id && *hash == expected), "the SHA-256 is stored");

    let audit = support::audit_rows(&env.store, "node.register").await;
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|row| !row.details.to_string().contains(secret)), "the audit trail has no token");

    // Refusals.
    assert_invalid!(env.plane.register_node(&operator(), &new_node("gpu-03", "no-such-sku")).await, "sku");
    env.plane
        .update_sku(&operator(), &h100.id, &SkuUpdate { active: Some(false), ..SkuUpdate::default() })
        .await
        .unwrap();
    assert_invalid!(env.plane.register_node(&operator(), &new_node("gpu-03", "h100-x8")).await, "sku");
    sku(&env, "a100-x4", 4).await;
    assert_err!(
        env.plane.register_node(&operator(), &new_node("gpu-01.dc1.example", "a100-x4")).await,
        InventoryError::Conflict(_)
    );
    let long_label = "a".repeat(64);
    for hostname in ["", "-gpu", "gpu_01", "gpu..dc1", "gpu 01", long_label.as_str()] {
        assert_invalid!(env.plane.register_node(&operator(), &new_node(hostname, "a100-x4")).await, "hostname");
    }
    let mut maas = new_node("gpu-03", "a100-x4");
    maas.onboarding_mode = Some("pxe".into());
    assert_invalid!(env.plane.register_node(&operator(), &maas).await, "onboarding_mode");
    let page = nodes::list(&env.store, &Default::default(), None, 50).await.unwrap();
    assert_eq!(page.items.len(), 2, "no refused registration left a node behind");
}

// ------------------------------------------------------------------ heartbeats

async fn heartbeat_stores_inventory_and_asks_for_it_once(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;

    let response = env.plane.heartbeat(&node.id, &heartbeat(None), CORR).await.unwrap();
    assert_eq!(response.node_id, node.id);
    assert_eq!(response.status, "active");
    assert_eq!(response.heartbeat_interval_seconds, 15);
    assert!(response.inventory_wanted, "no inventory stored and none sent");

    let report = inventory("gpu-01.dc1.example", InventorySource::Detected, 8);
    let response = env.plane.heartbeat(&node.id, &heartbeat(Some(report.clone())), CORR).await.unwrap();
    assert!(!response.inventory_wanted);
    let view = nodes::get(&env.store, &node.id).await.unwrap();
    assert_eq!(view.gpus.len(), 8);
    assert!(view.gpus.iter().all(|gpu| gpu.source == "detected" && gpu.model == support::GPU_MODEL));
    assert_eq!(view.gpus[3].index, 3);
    assert_eq!(view.gpus[3].uuid.as_deref(), Some("GPU-00000003-test"));
    assert_eq!(view.gpus[3].health, "ok");
    let host = view.host.expect("host facts");
    assert_eq!(host.source, "detected");
    assert_eq!(host.reported_hostname.as_deref(), Some("gpu-01.dc1.example"));
    assert_eq!(host.cpu_cores, Some(192));
    assert_eq!(view.agent_version.as_deref(), Some(support::AGENT_VERSION));

    let response = env.plane.heartbeat(&node.id, &heartbeat(None), CORR).await.unwrap();
    assert!(!response.inventory_wanted, "an inventory is stored");

    // A new report replaces the old one, GPUs and source included.
    let declared = inventory("gpu-01.dc1.example", InventorySource::Declared, 2);
    env.plane.heartbeat(&node.id, &heartbeat(Some(declared)), CORR).await.unwrap();
    let view = nodes::get(&env.store, &node.id).await.unwrap();
    assert_eq!(view.gpus.len(), 2);
    assert!(view.gpus.iter().all(|gpu| gpu.source == "declared"));

    // Refusals leave the stored state alone.
    let mut wrong_version = heartbeat(None);
    wrong_version.protocol_version = gpuaas_nodeagent_protocol::PROTOCOL_VERSION + 1;
    assert_invalid!(env.plane.heartbeat(&node.id, &wrong_version, CORR).await, "protocol_version");
    let mut bad_inventory = inventory("gpu-01", InventorySource::Detected, 2);
    bad_inventory.gpus[1].index = 0;
    assert_invalid!(env.plane.heartbeat(&node.id, &heartbeat(Some(bad_inventory)), CORR).await, "inventory");
    let mut bad_agent = heartbeat(None);
    bad_agent.agent_version = String::new();
    assert_invalid!(env.plane.heartbeat(&node.id, &bad_agent, CORR).await, "agent_version");
    assert_eq!(nodes::get(&env.store, &node.id).await.unwrap().gpus.len(), 2);
    assert_err!(env.plane.heartbeat("no-such-node", &heartbeat(None), CORR).await, InventoryError::NotFound(_));
}

async fn missed_heartbeats_mark_nodes_offline_until_they_return(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let first = enrolled(&env, "gpu-01", "h100-x8").await;
    let second = enrolled(&env, "gpu-02", "h100-x8").await;
    let pending = register(&env, "gpu-03", "h100-x8").await;

    // A generous window marks nobody.
    assert!(env.plane.mark_offline_older_than(Duration::from_secs(60)).await.unwrap().is_empty());
    assert!(env.plane.mark_offline().await.unwrap().is_empty(), "the policy window is 60 s");

    env.plane.drain(&operator(), &second.id).await.unwrap();
    let_time_pass(Timestamp::now()).await;
    let mut marked = env.plane.mark_offline_older_than(Duration::ZERO).await.unwrap();
    marked.sort();
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(marked, expected, "active and draining nodes go offline; a pending one does not");
    let first_view = nodes::get(&env.store, &first.id).await.unwrap();
    assert_eq!(first_view.status, NodeStatus::Offline);
    let second_view = nodes::get(&env.store, &second.id).await.unwrap();
    assert_eq!(second_view.status, NodeStatus::Offline);
    assert!(second_view.drain_requested, "the operator's intent survives");
    assert_eq!(nodes::get(&env.store, &pending.node.id).await.unwrap().status, NodeStatus::PendingEnrollment);
    assert_eq!(node_events(&env.store, NODE_OFFLINE_SUBJECT, &first.id).await, 1);
    assert_eq!(node_events(&env.store, NODE_OFFLINE_SUBJECT, &second.id).await, 1);
    assert_eq!(support::outbox_payloads(&env.store, NODE_OFFLINE_SUBJECT).await.len(), 2);

    // Already offline: not marked (or announced) again.
    assert!(env.plane.mark_offline_older_than(Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(support::outbox_payloads(&env.store, NODE_OFFLINE_SUBJECT).await.len(), 2);

    assert!(support::outbox_payloads(&env.store, NODE_ONLINE_SUBJECT).await.is_empty());
    let back = env.plane.heartbeat(&first.id, &heartbeat(None), CORR).await.unwrap();
    assert_eq!(back.status, "active");
    assert_eq!(nodes::get(&env.store, &first.id).await.unwrap().status, NodeStatus::Active);
    assert_eq!(node_events(&env.store, NODE_ONLINE_SUBJECT, &first.id).await, 1);

    let back = env.plane.heartbeat(&second.id, &heartbeat(None), CORR).await.unwrap();
    assert_eq!(back.status, "draining", "a draining node comes back draining");
    assert_eq!(nodes::get(&env.store, &second.id).await.unwrap().status, NodeStatus::Draining);
    assert_eq!(node_events(&env.store, NODE_ONLINE_SUBJECT, &second.id).await, 1);

    // A heartbeat from a node that was online announces nothing.
    env.plane.heartbeat(&first.id, &heartbeat(None), CORR).await.unwrap();
    assert_eq!(support::outbox_payloads(&env.store, NODE_ONLINE_SUBJECT).await.len(), 2);

    // A retired node's heartbeat is refused and does not revive it.
    env.plane.retire(&operator(), &first.id).await.unwrap();
    assert_err!(env.plane.heartbeat(&first.id, &heartbeat(None), CORR).await, InventoryError::NodeRetired);
    assert_eq!(nodes::get(&env.store, &first.id).await.unwrap().status, NodeStatus::Retired);
    let_time_pass(Timestamp::now()).await;
    let marked = env.plane.mark_offline_older_than(Duration::ZERO).await.unwrap();
    assert_eq!(marked, vec![second.id.clone()], "a retired node is never marked offline");
}

/// A heartbeat that keeps the node's status changes its time, the agent's versions and
/// `updated_at`: no index may hold them, so PostgreSQL writes the row in place (a HOT
/// update) instead of an entry in every index, and the offline sweep still finds the
/// silent nodes without one (ADR 033).
async fn no_node_index_holds_what_a_heartbeat_changes(backend: Backend) {
    let env = env(backend).await;
    let indexes = support::index_definitions(&env.store, "nodes").await;
    assert!(indexes.iter().any(|index| index.contains("ix_nodes_placement_order")), "{indexes:?}");
    for index in &indexes {
        for changed in ["last_heartbeat_at", "agent_version", "protocol_version", "updated_at"] {
            assert!(!index.contains(changed), "{index} holds {changed}, which a heartbeat changes");
        }
    }
}

/// Holds the node's row (PostgreSQL) or the write lock (SQLite) until the returned
/// transaction ends, so the test can line up calls behind it.
async fn hold_node(env: &Env, node_id: &str) -> gpuaas_store::Tx {
    let mut tx = env.store.begin().await.unwrap();
    if env.store.dialect() == gpuaas_store::Dialect::Postgres {
        sqlx::query("SELECT status FROM nodes WHERE id = $1 FOR UPDATE")
            .bind(node_id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    }
    tx
}

/// Waits until `count` sessions wait on a lock (PostgreSQL), or a moment (SQLite, where
/// waiting writers cannot be observed and whole transactions run one at a time anyway).
async fn until_waiting(env: &Env, count: i64) {
    if env.store.dialect() == gpuaas_store::Dialect::Sqlite {
        tokio::time::sleep(Duration::from_millis(150)).await;
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(env.store.pool())
        .await
        .unwrap();
        if waiting >= count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{waiting} of {count} sessions waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn heartbeats_racing_lifecycle_changes_never_undo_them(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;
    let_time_pass(Timestamp::now()).await;

    // Offline detection first, the heartbeat right behind it: whichever order they
    // commit in, an active node has been announced online as often as offline.
    let held = hold_node(&env, &node.id).await;
    let plane = env.plane.clone();
    let offline = tokio::spawn(async move { plane.mark_offline_older_than(Duration::ZERO).await.unwrap() });
    until_waiting(&env, 1).await;
    let plane = env.plane.clone();
    let node_id = node.id.clone();
    let beat = tokio::spawn(async move { plane.heartbeat(&node_id, &heartbeat(None), CORR).await });
    until_waiting(&env, 2).await;
    held.rollback().await.unwrap();
    offline.await.unwrap();
    beat.await.unwrap().unwrap();
    assert_eq!(nodes::get(&env.store, &node.id).await.unwrap().status, NodeStatus::Active);
    assert_eq!(
        node_events(&env.store, NODE_ONLINE_SUBJECT, &node.id).await,
        node_events(&env.store, NODE_OFFLINE_SUBJECT, &node.id).await,
        "every offline announcement of a node that is back is followed by an online one"
    );

    // Retire first, the heartbeat right behind it: the node stays retired.
    let held = hold_node(&env, &node.id).await;
    let plane = env.plane.clone();
    let node_id = node.id.clone();
    let retire = tokio::spawn(async move { plane.retire(&operator(), &node_id).await.unwrap() });
    until_waiting(&env, 1).await;
    let plane = env.plane.clone();
    let node_id = node.id.clone();
    let beat = tokio::spawn(async move { plane.heartbeat(&node_id, &heartbeat(None), CORR).await });
    until_waiting(&env, 2).await;
    held.rollback().await.unwrap();
    retire.await.unwrap();
    let beat = beat.await.unwrap();
    assert_eq!(nodes::get(&env.store, &node.id).await.unwrap().status, NodeStatus::Retired, "{beat:?}");
    if backend == Backend::Postgres {
        assert!(matches!(beat, Err(InventoryError::NodeRetired)), "{beat:?}");
    }
}

// ------------------------------------------------------------------ drain, retire, placement

async fn reserve(env: &Env, sku_id: &str, gpus: i64, allocation_id: &str) -> Option<slots::Reservation> {
    let mut tx = env.store.begin().await.unwrap();
    let reservation =
        slots::reserve(&mut tx, env.store.dialect(), sku_id, gpus, allocation_id, PlacementStrategy::BestFit)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    reservation
}

/// The slots `allocation_id` holds, as its record would name them (one node).
async fn held(env: &Env, allocation_id: &str) -> slots::Held {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT node_id, gpu_index FROM node_resource_slots WHERE allocation_id = $1 ORDER BY gpu_index",
    )
    .bind(allocation_id)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    slots::Held {
        allocation_id: allocation_id.to_owned(),
        node_id: rows.first().map(|(node, _)| node.clone()).unwrap_or_default(),
        gpu_indices: rows.iter().map(|(_, index)| *index).collect(),
    }
}

async fn release(env: &Env, allocation_id: &str) -> u64 {
    release_held(env, &held(env, allocation_id).await).await
}

async fn release_held(env: &Env, held: &slots::Held) -> u64 {
    let mut tx = env.store.begin().await.unwrap();
    let freed = slots::release(&mut tx, held).await.unwrap();
    tx.commit().await.unwrap();
    freed
}

async fn drain_blocks_placement_and_retire_waits_for_release(backend: Backend) {
    let env = env(backend).await;
    let h100 = sku(&env, "h100-x8", 8).await;
    let pending = register(&env, "gpu-00", "h100-x8").await;
    assert!(reserve(&env, &h100.id, 1, "alloc-0").await.is_none(), "a node that has not enrolled is never chosen");
    let node = enrolled(&env, "gpu-01", "h100-x8").await;

    let first = reserve(&env, &h100.id, 2, "alloc-1").await.expect("an active node has room");
    assert_eq!(first.node_id, node.id);
    assert_eq!(first.gpu_indices, [0, 1]);
    assert!(reserve(&env, &h100.id, 7, "alloc-big").await.is_none(), "6 GPUs are free, not 7");
    assert_invalid!(
        async {
            let mut tx = env.store.begin().await.unwrap();
            slots::reserve(&mut tx, env.store.dialect(), &h100.id, 0, "alloc-x", PlacementStrategy::Spread).await
        }
        .await,
        "gpu_count"
    );

    let drained = env.plane.drain(&operator(), &node.id).await.unwrap();
    assert_eq!(drained.status, NodeStatus::Draining);
    assert!(drained.drain_requested);
    assert!(reserve(&env, &h100.id, 1, "alloc-2").await.is_none(), "a draining node takes no placement");
    assert_eq!(nodes::get(&env.store, &node.id).await.unwrap().occupancy.gpus_allocated, 2, "allocations stay");

    let resumed = env.plane.resume(&operator(), &node.id).await.unwrap();
    assert_eq!(resumed.status, NodeStatus::Active);
    assert!(!resumed.drain_requested);
    let second = reserve(&env, &h100.id, 1, "alloc-2").await.expect("schedulable again");
    assert_eq!(second.gpu_indices, [2]);
    let audit: Vec<String> = support::audit_rows(&env.store, "node.drain")
        .await
        .into_iter()
        .chain(support::audit_rows(&env.store, "node.resume").await)
        .map(|row| row.action)
        .collect();
    assert_eq!(audit, ["node.drain", "node.resume"]);

    // Retire is refused while anything is allocated, and changes nothing.
    let in_use = assert_err!(env.plane.retire(&operator(), &node.id).await, InventoryError::NodeInUse(3));
    assert_eq!(in_use.code(), gpuaas_kernel::ErrCode::NodeInUse);
    assert_eq!(nodes::get(&env.store, &node.id).await.unwrap().status, NodeStatus::Active);
    env.plane.authenticate_node(&node.peer).await.expect("the certificate still works");
    assert_eq!(release(&env, "alloc-1").await, 2);
    assert_err!(env.plane.retire(&operator(), &node.id).await, InventoryError::NodeInUse(1));
    let second_held = held(&env, "alloc-2").await;
    assert_eq!(release_held(&env, &second_held).await, 1);
    assert_eq!(release_held(&env, &second_held).await, 0, "release is idempotent");
    // A record naming slots its allocation does not hold frees none of them.
    let other = reserve(&env, &h100.id, 1, "alloc-3").await.expect("room on the node");
    let stale = slots::Held { allocation_id: "alloc-2".into(), node_id: other.node_id, gpu_indices: other.gpu_indices };
    assert_eq!(release_held(&env, &stale).await, 0);
    assert_eq!(release(&env, "alloc-3").await, 1);

    let retired = env.plane.retire(&operator(), &node.id).await.unwrap();
    assert_eq!(retired.status, NodeStatus::Retired);
    assert!(retired.retired_at.is_some());
    assert_eq!(node_events(&env.store, NODE_RETIRED_SUBJECT, &node.id).await, 1);
    assert_err!(env.plane.authenticate_node(&node.peer).await, InventoryError::CertificateRevoked);
    let live: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM node_certificates WHERE node_id = $1 AND revoked_at IS NULL")
            .bind(&node.id)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(live, 0, "every certificate of a retired node is revoked");
    assert!(reserve(&env, &h100.id, 1, "alloc-3").await.is_none(), "a retired node takes no placement");
    assert_err!(env.plane.drain(&operator(), &node.id).await, InventoryError::NodeRetired);
    assert_err!(env.plane.resume(&operator(), &node.id).await, InventoryError::NodeRetired);
    assert_err!(env.plane.issue_enrollment_token(&operator(), &node.id).await, InventoryError::NodeRetired);
    // Retiring again is a no-op: no second event.
    assert_eq!(env.plane.retire(&operator(), &node.id).await.unwrap().status, NodeStatus::Retired);
    assert_eq!(node_events(&env.store, NODE_RETIRED_SUBJECT, &node.id).await, 1);
    // The host name is free for a new registration once its node is retired.
    register(&env, "gpu-01", "h100-x8").await;

    // A never-enrolled node retires too, and its token dies with it.
    env.plane.retire(&operator(), &pending.node.id).await.unwrap();
    assert_err!(
        env.plane.enroll(&support::enroll_request(&pending.enrollment.token, "gpu-00"), CORR).await,
        InventoryError::EnrollmentTokenInvalid
    );
}

async fn draining_before_enrollment_stays_draining(backend: Backend) {
    let env = env(backend).await;
    let h100 = sku(&env, "h100-x8", 8).await;
    let registered = register(&env, "gpu-01", "h100-x8").await;
    let drained = env.plane.drain(&operator(), &registered.node.id).await.unwrap();
    assert_eq!(drained.status, NodeStatus::PendingEnrollment);
    assert!(drained.drain_requested);

    env.plane.enroll(&support::enroll_request(&registered.enrollment.token, "gpu-01"), CORR).await.unwrap();
    let view = nodes::get(&env.store, &registered.node.id).await.unwrap();
    assert_eq!(view.status, NodeStatus::Draining, "the operator asked for no placements on this node");
    assert!(reserve(&env, &h100.id, 1, "alloc-1").await.is_none());
    env.plane.resume(&operator(), &registered.node.id).await.unwrap();
    assert!(reserve(&env, &h100.id, 1, "alloc-1").await.is_some());
}

async fn concurrent_reservations_never_share_a_gpu(backend: Backend) {
    let env = env(backend).await;
    let h100 = sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;

    let mut handles = Vec::new();
    for i in 0..20 {
        let store = env.store.clone();
        let sku_id = h100.id.clone();
        handles.push(tokio::spawn(async move {
            let allocation = format!("alloc-{i}");
            let mut tx = store.begin().await.unwrap();
            let reservation =
                slots::reserve(&mut tx, store.dialect(), &sku_id, 1, &allocation, PlacementStrategy::Spread)
                    .await
                    .unwrap();
            tx.commit().await.unwrap();
            reservation.map(|reservation| (allocation, reservation))
        }));
    }
    let mut won = Vec::new();
    for handle in handles {
        if let Some(reservation) = handle.await.unwrap() {
            won.push(reservation);
        }
    }
    assert_eq!(won.len(), 8, "exactly one winner per GPU");
    let claimed: HashSet<(String, i64)> = won
        .iter()
        .map(|(_, reservation)| {
            assert_eq!(reservation.node_id, node.id);
            assert_eq!(reservation.gpu_indices.len(), 1);
            (reservation.node_id.clone(), reservation.gpu_indices[0])
        })
        .collect();
    assert_eq!(claimed.len(), 8, "no GPU was handed to two allocations");

    let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT gpu_index, allocation_id FROM node_resource_slots WHERE node_id = $1 ORDER BY gpu_index",
    )
    .bind(&node.id)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 8);
    for (index, allocation) in &rows {
        let allocation = allocation.as_deref().expect("every slot is taken");
        let (_, reservation) = won.iter().find(|(id, _)| id == allocation).expect("held by a winner");
        assert_eq!(reservation.gpu_indices, [*index]);
    }
    let view = nodes::get(&env.store, &node.id).await.unwrap();
    assert_eq!((view.occupancy.gpus_allocated, view.occupancy.gpus_free), (8, 0));
}

async fn placement_strategies_pick_by_free_gpus(backend: Backend) {
    let env = env(backend).await;
    let h100 = sku(&env, "h100-x8", 8).await;
    let a = enrolled(&env, "gpu-a", "h100-x8").await;
    let b = enrolled(&env, "gpu-b", "h100-x8").await;
    // Leave a with 2 free GPUs, b with 8.
    let mut tx = env.store.begin().await.unwrap();
    let six = slots::reserve(&mut tx, env.store.dialect(), &h100.id, 6, "big", PlacementStrategy::BestFit)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let (tight, roomy) = if six.node_id == a.id { (&a.id, &b.id) } else { (&b.id, &a.id) };

    let mut tx = env.store.begin().await.unwrap();
    let best = slots::reserve(&mut tx, env.store.dialect(), &h100.id, 1, "best", PlacementStrategy::BestFit)
        .await
        .unwrap()
        .unwrap();
    let spread = slots::reserve(&mut tx, env.store.dialect(), &h100.id, 1, "spread", PlacementStrategy::Spread)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(&best.node_id, tight, "best fit keeps the large block free");
    assert_eq!(&spread.node_id, roomy, "spread takes the emptiest node");
}

both_backends!(
    no_node_index_holds_what_a_heartbeat_changes,
    sku_catalog_validates_and_audits,
    registration_returns_a_one_time_token_stored_hashed,
    heartbeat_stores_inventory_and_asks_for_it_once,
    missed_heartbeats_mark_nodes_offline_until_they_return,
    heartbeats_racing_lifecycle_changes_never_undo_them,
    drain_blocks_placement_and_retire_waits_for_release,
    draining_before_enrollment_stays_draining,
    concurrent_reservations_never_share_a_gpu,
    placement_strategies_pick_by_free_gpus,
    a_credit_waits_for_a_node_holding_no_other,
);

/// Freeing slots on two nodes while another transaction holds the later one (in id
/// order): the credit waits for it holding neither, so a placement can take the other
/// meanwhile. (A credit that held the first while it waited could close a cycle with a
/// placement batch: `SKIP LOCKED` still waits when it follows a row's update chain.)
async fn a_credit_waits_for_a_node_holding_no_other(backend: Backend) {
    let env = env(backend).await;
    let h100 = sku(&env, "h100-x8", 8).await;
    enrolled(&env, "gpu-01", "h100-x8").await;
    enrolled(&env, "gpu-02", "h100-x8").await;
    let one = reserve(&env, &h100.id, 8, "alloc-1").await.expect("room");
    let two = reserve(&env, &h100.id, 8, "alloc-2").await.expect("room");
    assert_ne!(one.node_id, two.node_id);
    let (first, last) = if one.node_id < two.node_id { (one.node_id, two.node_id) } else { (two.node_id, one.node_id) };
    if backend == Backend::Sqlite {
        // One writer: nothing is held while another waits.
        assert_eq!(release(&env, "alloc-1").await + release(&env, "alloc-2").await, 16);
        return;
    }

    let (first_held, second_held) = (held(&env, "alloc-1").await, held(&env, "alloc-2").await);
    let mut holding = env.store.begin().await.unwrap();
    sqlx::query("SELECT id FROM nodes WHERE id = $1 FOR NO KEY UPDATE")
        .bind(&last)
        .fetch_one(&mut *holding)
        .await
        .unwrap();
    let store = env.store.clone();

    let credit = tokio::spawn(async move {
        let mut tx = store.begin().await?;
        let freed = slots::FreedSlots::default();
        slots::release_into(&first_held, &freed);
        slots::release_into(&second_held, &freed);
        let count = freed.credit(&mut tx).await?;
        tx.commit().await?;
        Ok::<u64, InventoryError>(count)
    });
    until_waiting(&env, 1).await;
    let mut placement = env.store.begin().await.unwrap();
    let taken: Option<String> = sqlx::query_scalar("SELECT id FROM nodes WHERE id = $1 FOR NO KEY UPDATE NOWAIT")
        .bind(&first)
        .fetch_optional(&mut *placement)
        .await
        .unwrap_or_else(|error| panic!("the waiting credit holds the other node: {error}"));
    assert_eq!(taken.as_deref(), Some(first.as_str()));
    placement.rollback().await.unwrap();
    holding.rollback().await.unwrap();
    assert_eq!(credit.await.unwrap().unwrap(), 16);
    for node in [&first, &last] {
        assert_eq!(nodes::get(&env.store, node).await.unwrap().occupancy.gpus_allocated, 0);
    }
}

//! The node task queue on both databases: only validated tasks for enrolled nodes are
//! queued, each delivery is signed for its node alone, results are accepted only from
//! that node, and leases, attempts and time limits move tasks on without an agent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod support;

use gpuaas_testkit::assert_err;

use std::time::{Duration, Instant};

use gpuaas_audit::AuditResult;
use gpuaas_inventory::{InventoryError, NodePlane, TaskStatus, nodes, tasks};
use gpuaas_kernel::Timestamp;
use gpuaas_nodeagent_protocol::{
    InventorySource, ProvisionUserParams, Refusal, RefusalCode, RevokeUserParams, Task, TaskResult,
};
use gpuaas_policy::keys;
use gpuaas_testkit::{Backend, both_backends};
use support::{CORR, enrolled, env, inventory, operator, register, sku, verifier};

const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@laptop";

fn provision(username: &str) -> Task {
    Task::ProvisionUser(ProvisionUserParams {
        allocation_id: "alloc-1".into(),
        username: username.into(),
        authorized_keys: vec![SSH_KEY.into()],
        gpu_indices: vec![0, 1],
        cpu_millicores: 8000,
        memory_bytes: 64 << 30,
    })
}

async fn queued_count(env: &support::Env, node_id: &str) -> usize {
    tasks::list_for_node(&env.store, node_id, None, 100).await.unwrap().items.len()
}

/// A task is open (no `completed_at`) exactly while it is queued or leased: pulls and
/// the sweep find tasks through the index of open tasks alone (ADR 032), so a finished
/// task left open would be looked at forever, and an unfinished one closed never again.
async fn assert_open_means_unfinished(env: &support::Env) {
    let wrong: Vec<(String, String)> = gpuaas_store::sqlx::query_as(
        "SELECT id, status FROM node_tasks WHERE (completed_at IS NULL) <> (status IN ('queued', 'leased'))",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert!(wrong.is_empty(), "open and finished disagree: {wrong:?}");
}

async fn only_valid_tasks_for_enrolled_nodes_are_queued(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let pending = register(&env, "gpu-00", "h100-x8").await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;
    let admin = operator();

    assert_err!(
        env.plane.enqueue_task(&admin, &pending.node.id, &Task::NodeInventory).await,
        InventoryError::Conflict(_)
    );
    assert_err!(
        env.plane.enqueue_task(&admin, "no-such-node", &Task::NodeInventory).await,
        InventoryError::NotFound(_)
    );
    let error = assert_invalid!(env.plane.enqueue_task(&admin, &node.id, &provision("root")).await, "params");
    assert!(error.to_string().contains("username"), "{error}");
    let mut bad_key = provision("ga_alloc1");
    if let Task::ProvisionUser(params) = &mut bad_key {
        params.authorized_keys = vec!["ssh-ed25519 AAAA command=\"rm -rf /\"".into()];
    }
    assert_invalid!(env.plane.enqueue_task(&admin, &node.id, &bad_key).await, "params");
    let bad_revoke = Task::RevokeUser(RevokeUserParams {
        allocation_id: "alloc/../1".into(),
        username: "ga_alloc1".into(),
        remove_home: false,
    });
    assert_invalid!(env.plane.enqueue_task(&admin, &node.id, &bad_revoke).await, "params");
    assert_eq!(queued_count(&env, &node.id).await, 0);
    assert_eq!(queued_count(&env, &pending.node.id).await, 0);

    let task = env.plane.enqueue_task(&admin, &node.id, &provision("ga_alloc1")).await.unwrap();
    assert_eq!(task.status, TaskStatus::Queued);
    assert_eq!(task.node_id, node.id);
    assert_eq!(task.task_type, "allocation.provision_user");
    assert_eq!(task.params, provision("ga_alloc1").params());
    assert_eq!(task.attempts, 0);
    assert_eq!(task.max_attempts, 3);
    assert_eq!(task.correlation_id, CORR);
    assert!(task.expires_at > Timestamp::now());

    // Draining and offline nodes still take tasks (revocations must reach them).
    env.plane.drain(&admin, &node.id).await.unwrap();
    env.plane.enqueue_task(&admin, &node.id, &Task::NodeHealth).await.unwrap();

    // Retiring a node expires what it had queued; a retired node takes nothing new.
    env.plane.retire(&admin, &node.id).await.unwrap();
    let page = tasks::list_for_node(&env.store, &node.id, None, 100).await.unwrap();
    assert_eq!(page.items.len(), 2);
    assert!(page.items.iter().all(|task| task.status == TaskStatus::Expired), "{:?}", page.items);
    assert_err!(env.plane.enqueue_task(&admin, &node.id, &Task::NodeHealth).await, InventoryError::NodeRetired);
    assert_open_means_unfinished(&env).await;
}

async fn deliveries_are_signed_for_their_node_alone(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let a = enrolled(&env, "gpu-a", "h100-x8").await;
    let b = enrolled(&env, "gpu-b", "h100-x8").await;
    let queued = env.plane.enqueue_task(&operator(), &a.id, &provision("ga_alloc1")).await.unwrap();

    assert!(env.plane.pull_tasks(&b.id, Duration::ZERO).await.unwrap().is_empty(), "B cannot fetch A's tasks");
    let before = Timestamp::now();
    let deliveries = env.plane.pull_tasks(&a.id, Duration::ZERO).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(delivery.task_id, queued.id);
    assert_eq!(delivery.node_id, a.id);
    assert!(delivery.not_before >= before.saturating_sub(Duration::from_secs(1)));
    assert!(
        delivery.expires_at <= Timestamp::now().saturating_add(Duration::from_secs(120)),
        "a delivery is good for one lease at most"
    );

    let mut agent_a = verifier(&env, &a.id);
    let verified = agent_a.verify(delivery, Timestamp::now()).expect("A's agent accepts its delivery");
    assert_eq!(verified.task_id, queued.id);
    assert_eq!(verified.task, provision("ga_alloc1"));
    assert_eq!(agent_a.verify(delivery, Timestamp::now()).unwrap_err().code, RefusalCode::Replayed);
    let mut agent_b = verifier(&env, &b.id);
    assert_eq!(agent_b.verify(delivery, Timestamp::now()).unwrap_err().code, RefusalCode::WrongNode);
    let mut forged = delivery.clone();
    forged.node_id = b.id.clone();
    assert_eq!(agent_b.verify(&forged, Timestamp::now()).unwrap_err().code, RefusalCode::BadSignature);

    let leased = tasks::get(&env.store, &queued.id).await.unwrap();
    assert_eq!(leased.status, TaskStatus::Leased);
    assert_eq!(leased.attempts, 1);
    assert!(leased.leased_at.is_some());
    assert!(
        env.plane.pull_tasks(&a.id, Duration::ZERO).await.unwrap().is_empty(),
        "a leased task is not handed out twice"
    );

    // Only the node the task is for may report on it; to others it does not exist.
    let ok = TaskResult::succeeded(serde_json::json!({}));
    assert_err!(env.plane.complete_task(&b.id, &queued.id, &ok, CORR).await, InventoryError::NotFound("task"));
    assert_err!(env.plane.complete_task(&a.id, "no-such-task", &ok, CORR).await, InventoryError::NotFound("task"));
    assert_eq!(tasks::get(&env.store, &queued.id).await.unwrap().status, TaskStatus::Leased);

    let done = env.plane.complete_task(&a.id, &queued.id, &ok, CORR).await.unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    assert!(done.completed_at.is_some());
    assert_eq!(done.result, Some(serde_json::json!({})));
    // A repeated report (the agent retrying) is answered with the state, changing nothing.
    let failed_late = TaskResult::failed("too late");
    let again = env.plane.complete_task(&a.id, &queued.id, &failed_late, CORR).await.unwrap();
    assert_eq!(again.status, TaskStatus::Succeeded);
    assert_eq!(again.error, None);
}

async fn inventory_results_update_the_node(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;
    let queued = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeInventory).await.unwrap();
    let deliveries = env.plane.pull_tasks(&node.id, Duration::ZERO).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(verifier(&env, &node.id).verify(&deliveries[0], Timestamp::now()).unwrap().task, Task::NodeInventory);

    let mut broken = inventory("gpu-01", InventorySource::Detected, 2);
    broken.gpus[1].index = 0;
    let refused = TaskResult::succeeded(serde_json::to_value(&broken).unwrap());
    assert_invalid!(env.plane.complete_task(&node.id, &queued.id, &refused, CORR).await, "output");
    let not_inventory = TaskResult::succeeded(serde_json::json!({"gpus": "many"}));
    assert_invalid!(env.plane.complete_task(&node.id, &queued.id, &not_inventory, CORR).await, "output");
    assert_eq!(tasks::get(&env.store, &queued.id).await.unwrap().status, TaskStatus::Leased, "still open");
    assert!(nodes::get(&env.store, &node.id).await.unwrap().gpus.is_empty());

    let report = inventory("gpu-01.dc1.example", InventorySource::Declared, 8);
    let result = TaskResult::succeeded(serde_json::to_value(&report).unwrap());
    let done = env.plane.complete_task(&node.id, &queued.id, &result, CORR).await.unwrap();
    assert_eq!(done.status, TaskStatus::Succeeded);
    let view = nodes::get(&env.store, &node.id).await.unwrap();
    assert_eq!(view.gpus.len(), 8);
    assert!(view.gpus.iter().all(|gpu| gpu.source == "declared"));
    assert_eq!(view.host.unwrap().reported_hostname.as_deref(), Some("gpu-01.dc1.example"));
}

async fn refusals_and_failures_are_recorded(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;
    let refused_task = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeHealth).await.unwrap();
    let failed_task = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeInventory).await.unwrap();
    assert_eq!(env.plane.pull_tasks(&node.id, Duration::ZERO).await.unwrap().len(), 2);

    let no_reason = TaskResult { refusal: None, ..TaskResult::refused(Refusal::new(RefusalCode::Expired, "x")) };
    assert_invalid!(env.plane.complete_task(&node.id, &refused_task.id, &no_reason, CORR).await, "refusal");
    let refusal = TaskResult::refused(Refusal::new(RefusalCode::BadSignature, "signature does not verify"));
    let refused = env.plane.complete_task(&node.id, &refused_task.id, &refusal, "corr-refusal").await.unwrap();
    assert_eq!(refused.status, TaskStatus::Failed);
    assert_eq!(refused.refusal_code.as_deref(), Some("bad_signature"));
    assert_eq!(refused.error.as_deref(), Some("signature does not verify"));
    let audit = support::audit_rows(&env.store, "node.task.refused").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].result, AuditResult::Denied);
    assert_eq!(audit[0].actor_id, node.id);
    assert_eq!(audit[0].correlation_id, "corr-refusal");
    assert_eq!(audit[0].details["task_id"], refused_task.id);
    assert_eq!(audit[0].details["refusal_code"], "bad_signature");

    let failure = TaskResult::failed("nvidia-smi: \u{1b}[31mcommand not found\u{7}");
    let failed = env.plane.complete_task(&node.id, &failed_task.id, &failure, CORR).await.unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.refusal_code, None);
    assert_eq!(failed.error.as_deref(), Some("nvidia-smi: [31mcommand not found"), "control characters dropped");
    assert!(nodes::get(&env.store, &node.id).await.unwrap().gpus.is_empty(), "a failed probe stores nothing");
    assert_eq!(support::audit_rows(&env.store, "node.task.refused").await.len(), 1, "a failure is no refusal");
    assert_open_means_unfinished(&env).await;
}

async fn a_waiting_pull_gets_a_new_task_at_once(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;

    // Nothing queued: the pull waits its time out and returns empty.
    let started = Instant::now();
    assert!(env.plane.pull_tasks(&node.id, Duration::from_millis(200)).await.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));

    let plane = env.plane.clone();
    let node_id = node.id.clone();
    let pull = tokio::spawn(async move {
        let tasks = plane.pull_tasks(&node_id, Duration::from_secs(20)).await.unwrap();
        (tasks, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pull.is_finished(), "the pull waits for work");
    let queued = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeHealth).await.unwrap();
    let enqueued_at = Instant::now();
    let (tasks, returned_at) =
        tokio::time::timeout(Duration::from_secs(5), pull).await.expect("pull returned").unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task_id, queued.id);
    let delay = returned_at.saturating_duration_since(enqueued_at);
    assert!(delay < Duration::from_secs(2), "delivered {delay:?} after the enqueue, not at the end of the wait");
}

async fn a_parked_pull_of_a_revoked_node_gets_no_task(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;

    // Still trusted: the authenticated pull gets its work.
    let authenticated = env.plane.authenticate_node(&node.peer).await.unwrap();
    let first = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeHealth).await.unwrap();
    let delivered = env.plane.pull_tasks_as(&authenticated, Duration::from_secs(5)).await.unwrap();
    assert_eq!(delivered.iter().map(|task| task.task_id.as_str()).collect::<Vec<_>>(), [first.id.as_str()]);

    let plane = env.plane.clone();
    let parked = tokio::spawn(async move { plane.pull_tasks_as(&authenticated, Duration::from_secs(20)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!parked.is_finished());
    env.plane.revoke_certificates(&operator(), &node.id, "host compromised").await.unwrap();
    let queued = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeInventory).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), parked).await.expect("woken by the enqueue").unwrap();
    assert!(matches!(woken, Err(InventoryError::CertificateRevoked)), "{woken:?}");
    let untouched = tasks::get(&env.store, &queued.id).await.unwrap();
    assert_eq!((untouched.status, untouched.attempts), (TaskStatus::Queued, 0), "nothing was handed out");
}

async fn another_process_wakes_its_own_waiting_pulls(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;
    let other = support::second_plane(&env);
    assert_eq!(other.wake_waiting_nodes().await.unwrap(), 0, "nobody waits");

    let waiting: NodePlane = other.clone();
    let node_id = node.id.clone();
    let pull = tokio::spawn(async move { waiting.pull_tasks(&node_id, Duration::from_secs(20)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Queued through this process; the pull waits in the other one.
    let queued = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeHealth).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pull.is_finished(), "an enqueue elsewhere does not reach this process by itself");
    assert_eq!(other.wake_waiting_nodes().await.unwrap(), 1);
    let tasks = tokio::time::timeout(Duration::from_secs(5), pull).await.expect("woken").unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task_id, queued.id);
    // Deliveries from either process verify with the one pinned key.
    verifier(&env, &node.id).verify(&tasks[0], Timestamp::now()).unwrap();
}

async fn expired_leases_redeliver_until_attempts_run_out(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;
    env.policy.set(keys::NODES_TASK_LEASE_SECONDS, &1).await.unwrap();
    env.policy.set(keys::NODES_TASK_MAX_ATTEMPTS, &2).await.unwrap();
    let queued = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeHealth).await.unwrap();
    assert_eq!(queued.max_attempts, 2);
    let mut agent = verifier(&env, &node.id);

    let first = env.plane.pull_tasks(&node.id, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    agent.verify(&first[0], Timestamp::now()).unwrap();
    assert_eq!(env.plane.sweep_tasks().await.unwrap(), tasks::SweepReport::default(), "the lease still runs");
    wait_past(first[0].expires_at).await;

    let report = env.plane.sweep_tasks().await.unwrap();
    assert_eq!(report, tasks::SweepReport { requeued: 1, failed: 0, expired: 0 });
    assert_eq!(tasks::get(&env.store, &queued.id).await.unwrap().status, TaskStatus::Queued);
    // A result for the lapsed lease is refused now that the task waits for a new one.
    assert_err!(
        env.plane.complete_task(&node.id, &queued.id, &TaskResult::succeeded(serde_json::json!({})), CORR).await,
        InventoryError::Conflict(_)
    );

    let second = env.plane.pull_tasks(&node.id, Duration::ZERO).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].task_id, queued.id);
    assert_ne!(second[0].nonce, first[0].nonce, "a re-delivery is not a replay");
    agent.verify(&second[0], Timestamp::now()).expect("the agent accepts the re-delivery");
    assert_eq!(tasks::get(&env.store, &queued.id).await.unwrap().attempts, 2);
    wait_past(second[0].expires_at).await;

    let report = env.plane.sweep_tasks().await.unwrap();
    assert_eq!(report, tasks::SweepReport { requeued: 0, failed: 1, expired: 0 });
    let failed = tasks::get(&env.store, &queued.id).await.unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    assert!(failed.error.unwrap().contains("lease"));
    assert!(env.plane.pull_tasks(&node.id, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(env.plane.sweep_tasks().await.unwrap(), tasks::SweepReport::default());
    assert_open_means_unfinished(&env).await;
}

/// Sleeps until the clock is past `instant`, a lease end that must be at most a few
/// seconds away (a delivery that outlives its lease fails here instead of hanging).
async fn wait_past(instant: Timestamp) {
    assert!(instant <= Timestamp::now().saturating_add(Duration::from_secs(2)), "{instant} is not a 1 s lease end");
    while Timestamp::now() <= instant {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn unpulled_tasks_expire(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;
    env.policy.set(keys::NODES_TASK_TTL_SECONDS, &0).await.unwrap();
    let stale = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeHealth).await.unwrap();
    support::let_time_pass(stale.created_at).await;
    env.policy.set(keys::NODES_TASK_TTL_SECONDS, &900).await.unwrap();
    let fresh = env.plane.enqueue_task(&operator(), &node.id, &Task::NodeInventory).await.unwrap();

    let delivered = env.plane.pull_tasks(&node.id, Duration::ZERO).await.unwrap();
    assert_eq!(delivered.iter().map(|task| task.task_id.as_str()).collect::<Vec<_>>(), [fresh.id.as_str()]);
    let report = env.plane.sweep_tasks().await.unwrap();
    assert_eq!(report, tasks::SweepReport { requeued: 0, failed: 0, expired: 1 });
    let expired = tasks::get(&env.store, &stale.id).await.unwrap();
    assert_eq!(expired.status, TaskStatus::Expired);
    assert!(expired.completed_at.is_some());
    assert_eq!(tasks::get(&env.store, &fresh.id).await.unwrap().status, TaskStatus::Leased);
    assert_open_means_unfinished(&env).await;
}

async fn probe_waits_for_the_agent(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let node = enrolled(&env, "gpu-01", "h100-x8").await;

    // An agent: pulls, verifies with the pinned key, reports its inventory.
    let plane = env.plane.clone();
    let node_id = node.id.clone();
    let mut agent = verifier(&env, &node.id);
    let agent_task = tokio::spawn(async move {
        let delivery = loop {
            let mut deliveries = plane.pull_tasks(&node_id, Duration::from_secs(5)).await.unwrap();
            if let Some(delivery) = deliveries.pop() {
                assert!(deliveries.is_empty(), "one probe, one task");
                break delivery;
            }
        };
        let verified = agent.verify(&delivery, Timestamp::now()).expect("a delivery that verifies");
        assert_eq!(verified.task, Task::NodeInventory);
        let report = inventory("gpu-01.dc1.example", InventorySource::Detected, 8);
        let result = TaskResult::succeeded(serde_json::to_value(&report).unwrap());
        plane.complete_task(&node_id, &verified.task_id, &result, CORR).await.unwrap();
    });

    let started = Instant::now();
    let probed = env.plane.probe(&operator(), &node.id).await.unwrap();
    assert_eq!(probed.status, TaskStatus::Succeeded, "{probed:?}");
    assert_eq!(probed.task_type, "node.inventory");
    assert!(started.elapsed() < Duration::from_secs(5), "the probe returns when the agent answers");
    agent_task.await.unwrap();
    let view = nodes::get(&env.store, &node.id).await.unwrap();
    assert_eq!(view.gpus.len(), 8);
    assert!(view.gpus.iter().all(|gpu| gpu.source == "detected"));
    assert_eq!(support::audit_rows(&env.store, "node.probe").await.len(), 1);

    // Nobody answers: the probe gives up after the policy's wait with the task open.
    env.policy.set(keys::NODES_PROBE_WAIT_SECONDS, &0).await.unwrap();
    let unanswered = env.plane.probe(&operator(), &node.id).await.unwrap();
    assert_eq!(unanswered.status, TaskStatus::Queued);
    assert_err!(env.plane.probe(&operator(), "no-such-node").await, InventoryError::NotFound("node"));
}

async fn gathered_tasks_are_written_together_or_not_at_all(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let first = enrolled(&env, "gpu-01", "h100-x8").await;
    let second = enrolled(&env, "gpu-02", "h100-x8").await;
    let admin = operator();
    let gathered = tasks::QueuedTasks::default();
    // Checked when gathered, like a task queued at once.
    assert_invalid!(gathered.push(&admin, &first.id, &provision("root"), "t-0"), "params");
    gathered.push(&admin, &first.id, &provision("ga_one"), "t-1").unwrap();
    gathered.push(&admin, &second.id, &Task::NodeInventory, "t-2").unwrap();
    gathered.push(&admin, &first.id, &Task::NodeInventory, "t-3").unwrap();
    let mut tx = env.store.begin().await.unwrap();
    env.plane.enqueue_queued_in(&mut tx, &gathered).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((queued_count(&env, &first.id).await, queued_count(&env, &second.id).await), (2, 1));
    let delivered = env.plane.pull_tasks(&first.id, Duration::ZERO).await.unwrap();
    let mut delivered: Vec<&str> = delivered.iter().map(|task| task.task_id.as_str()).collect();
    delivered.sort_unstable();
    assert_eq!(delivered, ["t-1", "t-3"]);

    // One node no longer takes tasks: nothing of the batch is written.
    env.plane.retire(&admin, &second.id).await.unwrap();
    gathered.push(&admin, &first.id, &Task::NodeInventory, "t-4").unwrap();
    gathered.push(&admin, &second.id, &Task::NodeInventory, "t-5").unwrap();
    let mut tx = env.store.begin().await.unwrap();
    assert_err!(env.plane.enqueue_queued_in(&mut tx, &gathered).await, InventoryError::Conflict(_));
    drop(tx);
    assert_eq!(queued_count(&env, &first.id).await, 2, "t-4 was not written");
}

/// Reports in flight together share a statement; each is still answered as it would
/// be alone: the reporting node's task finished with its own result, a repeat answered
/// with the state, another node's report refused as not found.
async fn reports_arriving_together_are_each_answered_as_alone(backend: Backend) {
    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let nodes = [enrolled(&env, "gpu-a", "h100-x8").await, enrolled(&env, "gpu-b", "h100-x8").await];
    let mut leased = Vec::new();
    for node in &nodes {
        for _ in 0..12 {
            env.plane.enqueue_task(&operator(), &node.id, &Task::NodeHealth).await.unwrap();
        }
        let mut pulled = Vec::new();
        while pulled.len() < 12 {
            pulled.extend(env.plane.pull_tasks(&node.id, Duration::ZERO).await.unwrap());
        }
        leased.extend(pulled.into_iter().map(|delivery| (node.id.clone(), delivery.task_id)));
    }
    let outcome = |index: usize| {
        if index.is_multiple_of(3) {
            TaskResult::failed(format!("disk {index} full"))
        } else {
            TaskResult::succeeded(serde_json::json!({ "index": index }))
        }
    };
    let mut reports = tokio::task::JoinSet::new();
    for (index, (node_id, task_id)) in leased.iter().enumerate() {
        let other = if *node_id == nodes[0].id { nodes[1].id.clone() } else { nodes[0].id.clone() };
        for (reporter, kind) in [(node_id.clone(), "own"), (node_id.clone(), "repeat"), (other, "other")] {
            let (plane, task_id, result) = (env.plane.clone(), task_id.clone(), outcome(index));
            reports.spawn(async move { (index, kind, plane.complete_task(&reporter, &task_id, &result, CORR).await) });
        }
    }
    while let Some(joined) = reports.join_next().await {
        let (index, kind, answer) = joined.unwrap();
        match kind {
            "other" => {
                assert_err!(answer, InventoryError::NotFound("task"));
            }
            _ => {
                let task = answer.unwrap();
                assert_eq!(task.id, leased[index].1);
                if index.is_multiple_of(3) {
                    assert_eq!(task.status, TaskStatus::Failed);
                    assert_eq!(task.error, Some(format!("disk {index} full")));
                } else {
                    assert_eq!(task.status, TaskStatus::Succeeded);
                    assert_eq!(task.result, Some(serde_json::json!({ "index": index })));
                }
            }
        }
    }
    for (index, (node_id, task_id)) in leased.iter().enumerate() {
        let stored = tasks::get(&env.store, task_id).await.unwrap();
        assert_eq!(&stored.node_id, node_id);
        let expected = if index.is_multiple_of(3) { TaskStatus::Failed } else { TaskStatus::Succeeded };
        assert_eq!(stored.status, expected, "task {index}");
        assert!(stored.completed_at.is_some());
    }
    assert_open_means_unfinished(&env).await;
}

/// Pulls that look at once share one lease statement: each still gets only its own
/// node's tasks, oldest first and at most a pull's worth, and no task goes to two
/// pulls, even when one node pulls twice at once.
async fn pulls_leasing_together_each_get_their_own_node_s_tasks(backend: Backend) {
    use gpuaas_nodeagent_protocol::wire::MAX_TASKS_PER_PULL;

    let env = env(backend).await;
    sku(&env, "h100-x8", 8).await;
    let mut queued: std::collections::HashMap<String, Vec<String>> = Default::default();
    for index in 0..5 {
        let node = enrolled(&env, &format!("gpu-{index:02}"), "h100-x8").await;
        // One node more than a pull's worth, one node none at all.
        let count = [MAX_TASKS_PER_PULL + 3, 1, 2, 0, 4][index];
        let mut ids = Vec::new();
        for _ in 0..count {
            ids.push(env.plane.enqueue_task(&operator(), &node.id, &Task::NodeHealth).await.unwrap().id);
        }
        queued.insert(node.id, ids);
    }

    let mut pulls = tokio::task::JoinSet::new();
    for node in queued.keys() {
        for _ in 0..2 {
            let (plane, node) = (env.plane.clone(), node.clone());
            pulls.spawn(async move { (node.clone(), plane.pull_tasks(&node, Duration::ZERO).await.unwrap()) });
        }
    }
    let mut delivered: std::collections::HashMap<String, Vec<String>> = Default::default();
    while let Some(joined) = pulls.join_next().await {
        let (node, deliveries) = joined.unwrap();
        assert!(deliveries.len() <= MAX_TASKS_PER_PULL, "a pull gets a pull's worth at most");
        let order: Vec<usize> = deliveries
            .iter()
            .map(|delivery| {
                assert_eq!(delivery.node_id, node, "a pull gets its own node's tasks only");
                queued[&node].iter().position(|id| *id == delivery.task_id).expect("one of the node's tasks")
            })
            .collect();
        assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "oldest first: {order:?}");
        delivered.entry(node).or_default().extend(deliveries.into_iter().map(|delivery| delivery.task_id));
    }
    // Whatever the two concurrent pulls left, a last pull of each node takes.
    for (node, ids) in &queued {
        let mut got = delivered.remove(node).unwrap_or_default();
        got.extend(env.plane.pull_tasks(node, Duration::ZERO).await.unwrap().into_iter().map(|d| d.task_id));
        got.extend(env.plane.pull_tasks(node, Duration::ZERO).await.unwrap().into_iter().map(|d| d.task_id));
        let mut expected = ids.clone();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "every task of the node is delivered exactly once");
        for id in ids {
            let task = tasks::get(&env.store, id).await.unwrap();
            assert_eq!((task.status, task.attempts), (TaskStatus::Leased, 1));
        }
    }
}

/// A lease changes a task's status and lease columns only: no index may hold them, or
/// name them in its condition, so PostgreSQL can write the leased row in place (a HOT
/// update) instead of adding an entry to every index (ADR 032).
async fn no_task_index_holds_what_a_lease_changes(backend: Backend) {
    let env = env(backend).await;
    let indexes = support::index_definitions(&env.store, "node_tasks").await;
    assert!(indexes.iter().any(|index| index.contains("node_tasks_open")), "{indexes:?}");
    for index in &indexes {
        for changed in ["status", "attempts", "leased_at", "lease_expires_at", "first_leased_at"] {
            assert!(!index.contains(changed), "{index} holds {changed}, which a lease changes");
        }
    }
}

both_backends!(
    no_task_index_holds_what_a_lease_changes,
    only_valid_tasks_for_enrolled_nodes_are_queued,
    deliveries_are_signed_for_their_node_alone,
    inventory_results_update_the_node,
    refusals_and_failures_are_recorded,
    a_waiting_pull_gets_a_new_task_at_once,
    a_parked_pull_of_a_revoked_node_gets_no_task,
    another_process_wakes_its_own_waiting_pulls,
    expired_leases_redeliver_until_attempts_run_out,
    unpulled_tasks_expire,
    probe_waits_for_the_agent,
    gathered_tasks_are_written_together_or_not_at_all,
    reports_arriving_together_are_each_answered_as_alone,
    pulls_leasing_together_each_get_their_own_node_s_tasks,
);

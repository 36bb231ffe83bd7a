//! Outbox + relay behaviour on both databases, against the embedded bus and a real
//! nats-server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gpuaas_events::consumer::{Outcome, process_once};
use gpuaas_events::{BusError, ConsumerSpec, Delivery, EmbeddedBus, EventBus, EventEnvelope, NatsBus};
use gpuaas_kernel::Timestamp;
use gpuaas_outbox::{Relay, RelaySettings, enqueue};
use gpuaas_store::sqlx::{self, Row};
use gpuaas_store::{PoolSettings, Store, StoreError};
use gpuaas_testkit::{Backend, NatsServer, TestDatabase};

async fn setup(backend: Backend) -> (TestDatabase, Store) {
    let database = TestDatabase::create(backend).await;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let migrations: Vec<_> =
        [gpuaas_events::MIGRATIONS, gpuaas_outbox::MIGRATIONS].into_iter().flatten().copied().collect();
    store.migrate(&migrations).await.unwrap_or_else(|e| panic!("{e}"));
    (database, store)
}

fn settings() -> RelaySettings {
    RelaySettings {
        batch_size: 50,
        lease: Duration::from_secs(30),
        max_attempts: 3,
        retry_base: Duration::ZERO,
        retry_max: Duration::ZERO,
    }
}

fn event(n: usize) -> EventEnvelope {
    EventEnvelope::new("gpuaas.provisioning.requested", 1, format!("corr-{n}"), serde_json::json!({ "n": n }))
}

async fn write_events(store: &Store, count: usize, commit: bool) -> Vec<EventEnvelope> {
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let events: Vec<_> = (0..count).map(event).collect();
    for event in &events {
        enqueue(&mut tx, event).await.unwrap_or_else(|e| panic!("{e}"));
    }
    if commit {
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    } else {
        tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    }
    events
}

/// Fetches and acknowledges everything available to `consumer`.
async fn drain(bus: &dyn EventBus, consumer: &ConsumerSpec, wait: Duration) -> Vec<EventEnvelope> {
    let mut all = Vec::new();
    loop {
        let batch = bus.fetch(consumer, 100, wait).await.unwrap_or_else(|e| panic!("{e}"));
        if batch.is_empty() {
            return all;
        }
        for delivery in batch {
            all.push(delivery.event.clone());
            delivery.ack().await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

async fn status_counts(store: &Store) -> HashMap<String, i64> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM outbox_events GROUP BY status")
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    rows.into_iter()
        .map(|row| (row.try_get("status").unwrap_or_default(), row.try_get("n").unwrap_or_default()))
        .collect()
}

async fn relay_publishes_exactly_the_committed_events(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let committed = write_events(&store, 3, true).await;
    let rolled_back = write_events(&store, 2, false).await;
    let bus = Arc::new(EmbeddedBus::new(store.clone()));
    let relay = Relay::new(store.clone(), bus.clone());

    let report = relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.published, 3);
    assert_eq!(relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}")).claimed, 0);

    let consumer = ConsumerSpec::new("test", "gpuaas.provisioning.>");
    let delivered = drain(bus.as_ref(), &consumer, Duration::from_millis(50)).await;
    let ids: Vec<_> = delivered.iter().map(|e| e.id).collect();
    assert_eq!(ids, committed.iter().map(|e| e.id).collect::<Vec<_>>());
    assert!(rolled_back.iter().all(|e| !ids.contains(&e.id)));
    assert_eq!(delivered[0], committed[0], "envelope travels unchanged");
    assert_eq!(relay.counts().await.unwrap_or_else(|e| panic!("{e}")).pending, 0);
}

/// Delegates to the real embedded bus and records how often each event id was published;
/// refuses the publish numbered `fail_at` (from 0), when set, once.
struct RecordingBus {
    inner: EmbeddedBus,
    published: Mutex<HashMap<uuid::Uuid, usize>>,
    fail_at: Option<usize>,
    calls: Mutex<usize>,
}

impl RecordingBus {
    fn new(store: &Store, fail_at: Option<usize>) -> Self {
        Self { inner: EmbeddedBus::new(store.clone()), published: Mutex::default(), fail_at, calls: Mutex::default() }
    }
}

#[async_trait]
impl EventBus for RecordingBus {
    async fn publish(&self, event: &EventEnvelope) -> Result<(), BusError> {
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            *calls += 1;
            *calls - 1
        };
        if Some(call) == self.fail_at {
            return Err(BusError::Unavailable("connection reset".into()));
        }
        self.inner.publish(event).await?;
        *self.published.lock().unwrap_or_else(|e| e.into_inner()).entry(event.id).or_default() += 1;
        Ok(())
    }
    async fn fetch(&self, c: &ConsumerSpec, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        self.inner.fetch(c, max, wait).await
    }
    async fn health(&self) -> Result<(), BusError> {
        self.inner.health().await
    }
    fn name(&self) -> &'static str {
        "recording"
    }
}

async fn concurrent_relays_never_publish_a_row_twice(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let events = write_events(&store, 300, true).await;
    let bus = Arc::new(RecordingBus::new(&store, None));
    let small_batches = RelaySettings { batch_size: 7, ..settings() };
    let mut relays = Vec::new();
    for _ in 0..4 {
        let relay = Relay::new(store.clone(), bus.clone());
        let settings = small_batches.clone();
        relays.push(tokio::spawn(async move {
            loop {
                let report = relay.run_once(&settings).await.unwrap_or_else(|e| panic!("{e}"));
                if report.claimed == 0 {
                    return;
                }
            }
        }));
    }
    for relay in relays {
        relay.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let published = bus.published.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(published.len(), events.len(), "every committed event published");
    assert!(published.values().all(|count| *count == 1), "an event was published twice");
    assert_eq!(status_counts(&store).await.get("published"), Some(&300));
}

/// A bus that is down.
struct DownBus;

#[async_trait]
impl EventBus for DownBus {
    async fn publish(&self, _: &EventEnvelope) -> Result<(), BusError> {
        Err(BusError::Unavailable("connection refused".into()))
    }
    async fn fetch(&self, _: &ConsumerSpec, _: usize, _: Duration) -> Result<Vec<Delivery>, BusError> {
        Err(BusError::Unavailable("connection refused".into()))
    }
    async fn health(&self) -> Result<(), BusError> {
        Err(BusError::Unavailable("connection refused".into()))
    }
    fn name(&self) -> &'static str {
        "down"
    }
}

async fn exhausted_retries_mark_failed_and_dead_letter(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let events = write_events(&store, 2, true).await;
    let down = Relay::new(store.clone(), Arc::new(DownBus));
    let mut dead = 0;
    for _ in 0..10 {
        let report = down.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(report.failed_attempts <= 1, "a down bus costs one attempt per pass, not one per row");
        dead += report.dead_lettered;
    }
    assert_eq!(dead, 2);
    assert_eq!(status_counts(&store).await.get("failed"), Some(&2));
    let row = sqlx::query("SELECT attempts, last_error FROM outbox_events WHERE event_id = $1")
        .bind(events[0].id.to_string())
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(row.try_get::<i64, _>("attempts").unwrap_or_default(), 3);
    assert!(row.try_get::<String, _>("last_error").unwrap_or_default().contains("connection refused"));

    // Once a bus is back, the dead letters are forwarded to dlq.<subject>, once.
    let bus = Arc::new(EmbeddedBus::new(store.clone()));
    let relay = Relay::new(store.clone(), bus.clone());
    assert_eq!(relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}")).dead_letters_forwarded, 2);
    assert_eq!(relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}")).dead_letters_forwarded, 0);
    let dlq = drain(bus.as_ref(), &ConsumerSpec::new("ops", "dlq.>"), Duration::from_millis(50)).await;
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].subject, "dlq.gpuaas.provisioning.requested");
    assert_eq!(dlq[0].payload["event"]["id"], events[0].id.to_string());
    assert_eq!(dlq[0].payload["attempts"], 3);
    // Failed rows are never picked up again.
    assert_eq!(relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}")).claimed, 0);
}

/// A pass marks the rows it published together: a failure part way marks those
/// before it, records the attempt on the failed row and hands the rest back untouched;
/// the next pass publishes the rest, each event once and in order.
async fn a_failure_part_way_keeps_what_was_published(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let events = write_events(&store, 6, true).await;
    let bus = Arc::new(RecordingBus::new(&store, Some(3)));
    let relay = Relay::new(store.clone(), bus.clone());

    let report = relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.claimed, report.published, report.failed_attempts), (6, 3, 1));
    let rows = sqlx::query("SELECT status, attempts, lease_owner FROM outbox_events ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rows: Vec<(String, i64, Option<String>)> =
        rows.iter().map(|row| (row.get("status"), row.get("attempts"), row.get("lease_owner"))).collect();
    let published = ("published".to_owned(), 1, None);
    let handed_back = ("pending".to_owned(), 0, None);
    assert_eq!(
        rows,
        vec![
            published.clone(),
            published.clone(),
            published,
            ("pending".to_owned(), 1, None),
            handed_back.clone(),
            handed_back
        ]
    );

    let report = relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.claimed, report.published, report.failed_attempts), (3, 3, 0));
    assert_eq!(status_counts(&store).await.get("published"), Some(&6));
    let delivered = drain(bus.as_ref(), &ConsumerSpec::new("test", "gpuaas.provisioning.>"), Duration::ZERO).await;
    let ids: Vec<_> = delivered.iter().map(|e| e.id).collect();
    assert_eq!(ids, events.iter().map(|e| e.id).collect::<Vec<_>>());
}

/// A pass larger than one statement's list of rows marks every row it published.
async fn a_large_pass_marks_every_row(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let count = gpuaas_store::LIST_PADDING_MOST + 100;
    write_events(&store, count, true).await;
    let relay = Relay::new(store.clone(), Arc::new(EmbeddedBus::new(store.clone())));
    let settings = RelaySettings { batch_size: 2 * count as i64, ..settings() };
    let report = relay.run_once(&settings).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.claimed, report.published), (count, count));
    assert_eq!(status_counts(&store).await.get("published"), Some(&(count as i64)));
    assert_eq!(relay.run_once(&settings).await.unwrap_or_else(|e| panic!("{e}")).claimed, 0);
}

/// Retention deletes published rows older than the cutoff, however many, and keeps
/// recent published rows and every pending or failed one, whatever its age.
async fn published_rows_past_retention_are_purged(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let relay = Relay::new(store.clone(), Arc::new(EmbeddedBus::new(store.clone())));
    let count = gpuaas_store::PURGE_BATCH as usize + 100;
    write_events(&store, count, true).await;
    let settings = RelaySettings { batch_size: count as i64, ..settings() };
    assert_eq!(relay.run_once(&settings).await.unwrap_or_else(|e| panic!("{e}")).published, count);
    let recent = write_events(&store, 2, true).await;
    relay.run_once(&settings).await.unwrap_or_else(|e| panic!("{e}"));
    let pending = write_events(&store, 2, true).await;
    let now = Timestamp::now();
    let old = now.saturating_sub(Duration::from_secs(100 * 3600)).as_micros();
    let cutoff = now.saturating_sub(Duration::from_secs(72 * 3600));
    // Everything but the two recent rows was published long ago; the two pending rows
    // occurred long ago.
    for (statement, ids) in [
        (
            "UPDATE outbox_events SET occurred_at = $1, next_attempt_at = $1, published_at = $1 \
             WHERE event_id NOT IN ($2, $3)",
            &recent,
        ),
        ("UPDATE outbox_events SET occurred_at = $1, next_attempt_at = $1 WHERE event_id IN ($2, $3)", &pending),
    ] {
        sqlx::query(statement)
            .bind(old)
            .bind(ids[0].id.to_string())
            .bind(ids[1].id.to_string())
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    sqlx::query("UPDATE outbox_events SET status = 'failed' WHERE event_id = $1")
        .bind(pending[1].id.to_string())
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let purged = gpuaas_outbox::purge_published(&store, cutoff).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(purged, count as u64);
    let left: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox_events ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let kept: Vec<String> = recent.iter().chain(&pending).map(|event| event.id.to_string()).collect();
    assert_eq!(left, kept);
    assert_eq!(gpuaas_outbox::purge_published(&store, cutoff).await.unwrap_or_else(|e| panic!("{e}")), 0);
}

/// Retention of the embedded bus: log entries go only once every consumer has read
/// past them, and processed-event records once they are older than the cutoff.
async fn the_embedded_log_keeps_what_a_consumer_has_not_read(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let bus = EmbeddedBus::new(store.clone());
    for n in 0..5 {
        bus.publish(&event(n)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let ahead = ConsumerSpec::new("ahead", "gpuaas.provisioning.>");
    assert_eq!(drain(&bus, &ahead, Duration::ZERO).await.len(), 5);
    let behind = ConsumerSpec::new("behind", "gpuaas.provisioning.>");
    for delivery in bus.fetch(&behind, 2, Duration::ZERO).await.unwrap_or_else(|e| panic!("{e}")) {
        delivery.ack().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let now = Timestamp::now();
    let old = now.saturating_sub(Duration::from_secs(100 * 3600)).as_micros();
    let cutoff = now.saturating_sub(Duration::from_secs(72 * 3600));
    sqlx::query("UPDATE event_log SET appended_at = $1")
        .bind(old)
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for (consumer, id, at) in [("ahead", "e-1", old), ("ahead", "e-2", old), ("behind", "e-3", now.as_micros())] {
        sqlx::query("INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3)")
            .bind(consumer)
            .bind(id)
            .bind(at)
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    let purged = gpuaas_events::purge_before(&store, cutoff).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(purged, (2, 2), "the two entries both consumers read, and the two old records");
    let rest = drain(&bus, &behind, Duration::ZERO).await;
    assert_eq!(rest.iter().map(|e| e.payload["n"].clone()).collect::<Vec<_>>(), [2, 3, 4].map(serde_json::Value::from));
    // A recent entry stays, read by every consumer or not.
    bus.publish(&event(5)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(drain(&bus, &ahead, Duration::ZERO).await.len(), 1);
    assert_eq!(drain(&bus, &behind, Duration::ZERO).await.len(), 1);
    assert_eq!(gpuaas_events::purge_before(&store, cutoff).await.unwrap_or_else(|e| panic!("{e}")), (3, 0));
    let logged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_log")
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logged, 1);
    let processed: Vec<String> = sqlx::query_scalar("SELECT event_id FROM processed_events")
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(processed, ["e-3"]);
}

async fn embedded_consumer_position_survives_restart(backend: Backend) {
    let (db, store) = setup(backend).await;
    let events = write_events(&store, 3, true).await;
    let bus = EmbeddedBus::new(store.clone());
    Relay::new(store.clone(), Arc::new(bus.clone())).run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}"));
    let consumer = ConsumerSpec::new("billing-worker", "gpuaas.>");
    let mut first = bus.fetch(&consumer, 2, Duration::from_millis(50)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.len(), 2);
    first.remove(0).ack().await.unwrap_or_else(|e| panic!("{e}"));
    store.close().await;

    // A new process on the same database resumes after the last acknowledged event.
    let store = Store::connect(&db.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let bus = EmbeddedBus::new(store.clone());
    let rest = drain(&bus, &consumer, Duration::from_millis(50)).await;
    let ids: Vec<_> = rest.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![events[1].id, events[2].id]);
}

/// Many events in one call (more than one INSERT's worth) arrive in order, as one
/// call at a time would; one bad subject among them writes none.
async fn enqueue_many_keeps_order_and_refuses_all_for_one_bad_event(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let events: Vec<_> = (0..450).map(event).collect();
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let mut bad_batch = vec![event(1000), EventEnvelope::new("not.in.catalog", 1, "c", serde_json::json!({}))];
    bad_batch.push(event(1001));
    assert!(gpuaas_outbox::enqueue_many(&mut tx, &bad_batch).await.is_err());
    gpuaas_outbox::enqueue_many(&mut tx, &events).await.unwrap_or_else(|e| panic!("{e}"));
    gpuaas_outbox::enqueue_many(&mut tx, &[]).await.unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status_counts(&store).await.get("pending").copied(), Some(450));

    let bus = Arc::new(EmbeddedBus::new(store.clone()));
    let relay = Relay::new(store.clone(), bus.clone());
    while relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}")).claimed > 0 {}
    let delivered =
        drain(bus.as_ref(), &ConsumerSpec::new("many", "gpuaas.provisioning.>"), Duration::from_millis(50)).await;
    assert_eq!(delivered, events);
}

/// Events written before the migration that drops `event_id`'s unique index (a table
/// rebuild on SQLite) are still there after it, in order, and relayed; new events
/// number on after them.
async fn events_written_before_the_event_id_migration_survive_it(backend: Backend) {
    let database = TestDatabase::create(backend).await;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    let first: Vec<_> = gpuaas_events::MIGRATIONS.iter().chain(&gpuaas_outbox::MIGRATIONS[..1]).copied().collect();
    store.migrate(&first).await.unwrap_or_else(|e| panic!("{e}"));
    let before = write_events(&store, 3, true).await;
    let all: Vec<_> = [gpuaas_events::MIGRATIONS, gpuaas_outbox::MIGRATIONS].into_iter().flatten().copied().collect();
    let applied = store.migrate(&all).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(applied, [2026120300]);
    // What is left: the pending index, and the primary key where it is an index.
    let indexes = match backend {
        Backend::Postgres => "SELECT COUNT(*) FROM pg_indexes WHERE tablename = 'outbox_events'",
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox_events'",
    };
    let indexes: i64 = sqlx::query_scalar(indexes).fetch_one(store.pool()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(indexes, if backend == Backend::Postgres { 2 } else { 1 });
    let after = write_events(&store, 2, true).await;
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM outbox_events ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seqs.len(), 5);
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    let bus = Arc::new(EmbeddedBus::new(store.clone()));
    let relay = Relay::new(store.clone(), bus.clone());
    assert_eq!(relay.run_once(&settings()).await.unwrap_or_else(|e| panic!("{e}")).published, 5);
    let delivered =
        drain(bus.as_ref(), &ConsumerSpec::new("test", "gpuaas.provisioning.>"), Duration::from_millis(50)).await;
    let expected: Vec<_> = before.iter().chain(&after).map(|event| event.id).collect();
    assert_eq!(delivered.iter().map(|event| event.id).collect::<Vec<_>>(), expected);
}

gpuaas_testkit::both_backends!(
    enqueue_many_keeps_order_and_refuses_all_for_one_bad_event,
    events_written_before_the_event_id_migration_survive_it,
    relay_publishes_exactly_the_committed_events,
    concurrent_relays_never_publish_a_row_twice,
    exhausted_retries_mark_failed_and_dead_letter,
    a_failure_part_way_keeps_what_was_published,
    a_large_pass_marks_every_row,
    published_rows_past_retention_are_purged,
    the_embedded_log_keeps_what_a_consumer_has_not_read,
    embedded_consumer_position_survives_restart,
);

#[derive(Debug)]
struct TestError(#[allow(dead_code)] String);

impl From<StoreError> for TestError {
    fn from(error: StoreError) -> Self {
        TestError(error.to_string())
    }
}

/// Consumes everything available through `process_once`, returning how many events
/// were handled for the first time.
async fn consume_deduplicated(store: &Store, bus: &dyn EventBus, consumer: &ConsumerSpec) -> (usize, usize) {
    let (mut handled, mut duplicates) = (0, 0);
    loop {
        let batch = bus.fetch(consumer, 100, Duration::from_millis(500)).await.unwrap_or_else(|e| panic!("{e}"));
        if batch.is_empty() {
            return (handled, duplicates);
        }
        for delivery in batch {
            let outcome = process_once(store, &consumer.name, &delivery.event, |tx, event| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO consumed (event_id) VALUES ($1)")
                        .bind(event.id.to_string())
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| TestError(e.to_string()))?;
                    Ok::<_, TestError>(())
                })
            })
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
            match outcome {
                Outcome::Handled => handled += 1,
                Outcome::AlreadyHandled => duplicates += 1,
            }
            delivery.ack().await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// Stop nats-server, keep writing, start it again: every event arrives, and a
/// deduplicating consumer handles each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_delays_but_loses_nothing() {
    let (_db, store) = setup(Backend::Postgres).await;
    sqlx::query("CREATE TABLE consumed (event_id TEXT PRIMARY KEY)")
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut nats = NatsServer::start().await;
    let bus = Arc::new(NatsBus::connect(&nats.url()).await.unwrap_or_else(|e| panic!("{e}")));
    let relay = Relay::new(store.clone(), bus.clone());
    let patient = RelaySettings { max_attempts: 1000, retry_base: Duration::from_millis(100), ..settings() };

    let mut expected = write_events(&store, 5, true).await;
    assert_eq!(relay.run_once(&patient).await.unwrap_or_else(|e| panic!("{e}")).published, 5);

    nats.stop().await;
    expected.extend(write_events(&store, 5, true).await);
    let during_outage = relay.run_once(&patient).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(during_outage.published, 0);
    assert_eq!(during_outage.failed_attempts, 1);
    assert!(bus.health().await.is_err(), "health reports the outage");

    nats.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while relay.counts().await.unwrap_or_else(|e| panic!("{e}")).pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "relay did not catch up after the outage");
        relay.run_once(&patient).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let consumer = ConsumerSpec::new("dedupe-test", "gpuaas.provisioning.>");
    let (handled, _) = consume_deduplicated(&store, bus.as_ref(), &consumer).await;
    assert_eq!(handled, expected.len());
    // Redeliver everything again (as after a consumer crash before ack): nothing is
    // handled twice.
    for event in &expected {
        let outcome = process_once(&store, &consumer.name, event, |_, _| Box::pin(async { Ok::<_, TestError>(()) }))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(outcome, Outcome::AlreadyHandled);
    }
    let consumed: i64 = sqlx::query("SELECT COUNT(*) AS n FROM consumed")
        .fetch_one(store.pool())
        .await
        .and_then(|row| row.try_get("n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(consumed, 10);
    let readiness = bus.health().await;
    assert!(readiness.is_ok(), "{readiness:?}");
}

/// A publish repeated with the same event id (a relay that crashed after publishing but
/// before marking the row) is stored once by JetStream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_drops_a_republished_event_id() {
    let nats = NatsServer::start().await;
    let bus = NatsBus::connect(&nats.url()).await.unwrap_or_else(|e| panic!("{e}"));
    let event = event(1);
    bus.publish(&event).await.unwrap_or_else(|e| panic!("{e}"));
    bus.publish(&event).await.unwrap_or_else(|e| panic!("{e}"));
    let delivered = drain(&bus, &ConsumerSpec::new("once", "gpuaas.>"), Duration::from_millis(500)).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0], event);
}

#[tokio::test]
async fn subjects_outside_the_catalog_are_refused_before_writing() {
    let (_db, store) = setup(Backend::Sqlite).await;
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let bad = EventEnvelope::new("somewhere.else.happened", 1, "c", serde_json::json!({}));
    assert!(enqueue(&mut tx, &bad).await.is_err());
}

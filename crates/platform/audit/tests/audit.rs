//! The audit trail on both databases: transactional recording, filters, keyset paging,
//! the database-enforced append-only rule, CSV export and secret scrubbing.

use std::collections::HashSet;

use futures::StreamExt;
use gpuaas_audit::{
    ActorType, AuditError, AuditFilter, AuditLog, AuditResult, CSV_HEADER, EXPORT_PAGE_SIZE, NewAuditLog, export_csv,
    list, record, record_standalone,
};
use gpuaas_kernel::{Cursor, Timestamp, new_id};
use gpuaas_store::sqlx::{self, Row};
use gpuaas_store::{PoolSettings, Store};
use gpuaas_testkit::{Backend, TestDatabase};
use serde_json::json;

async fn setup(backend: Backend) -> (TestDatabase, Store) {
    let database = TestDatabase::create(backend).await;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.unwrap_or_else(|e| panic!("{e}"));
    store.migrate(gpuaas_audit::MIGRATIONS).await.unwrap_or_else(|e| panic!("{e}"));
    (database, store)
}

fn entry(actor_id: &str, action: &str, target: &str) -> NewAuditLog {
    NewAuditLog {
        actor_id: actor_id.to_owned(),
        actor_type: ActorType::User,
        actor_role: "tenant_admin".to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        tenant_id: Some("t1".to_owned()),
        result: AuditResult::Success,
        correlation_id: "corr-1".to_owned(),
        details: json!({"reason": "test"}),
    }
}

/// Inserts a row with a chosen timestamp, which `record` (always "now") cannot do.
async fn insert_at(store: &Store, at: i64, actor_id: &str, action: &str, target: &str) -> String {
    let id = new_id().to_string();
    sqlx::query(
        "INSERT INTO audit_logs (id, at, actor_id, actor_type, actor_role, action, target, tenant_id, result, \
         correlation_id, details) VALUES ($1, $2, $3, 'system', 'system', $4, $5, NULL, 'success', 'c', '{}')",
    )
    .bind(&id)
    .bind(at)
    .bind(actor_id)
    .bind(action)
    .bind(target)
    .execute(store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    id
}

async fn list_all(store: &Store, filter: &AuditFilter) -> Vec<AuditLog> {
    list(store, filter, None, 200).await.unwrap_or_else(|e| panic!("{e}")).items
}

async fn count_rows(store: &Store) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM audit_logs")
        .fetch_one(store.pool())
        .await
        .and_then(|row| row.try_get::<i64, _>("n"))
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn record_follows_the_callers_transaction(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    record(&mut tx, &entry("u1", "user.create", "rolled-back")).await.unwrap_or_else(|e| panic!("{e}"));
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count_rows(&store).await, 0, "a rolled-back change leaves no audit entry");

    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let recorded = record(&mut tx, &entry("u1", "user.create", "committed")).await.unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list_all(&store, &AuditFilter::default()).await, vec![recorded]);

    let refused = record_standalone(&store, &entry("u1", "User Create", "x")).await;
    assert!(matches!(refused, Err(AuditError::InvalidEntry(_))), "{refused:?}");
    assert_eq!(count_rows(&store).await, 1);
}

async fn list_filters_by_actor_target_action_and_dates(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let a = record_standalone(&store, &entry("alice", "user.create", "gpuaas:local:t1:-:user:bob"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut failed_login = entry("", "auth.login", "mallory@example.com");
    failed_login.actor_type = ActorType::Anonymous;
    failed_login.result = AuditResult::Failure;
    failed_login.tenant_id = None;
    let b = record_standalone(&store, &failed_login).await.unwrap_or_else(|e| panic!("{e}"));
    let c = record_standalone(&store, &entry("alice", "auth.login", "alice")).await.unwrap_or_else(|e| panic!("{e}"));

    let everything = list_all(&store, &AuditFilter::default()).await;
    let ids: Vec<_> = everything.iter().map(|log| log.id.as_str()).collect();
    assert_eq!(ids, [c.id.as_str(), b.id.as_str(), a.id.as_str()], "newest first");
    assert_eq!(everything[1], b, "every field reads back as recorded");
    assert_eq!(everything[1].tenant_id, None);
    assert_eq!(everything[1].actor_type, ActorType::Anonymous);

    let by_actor = AuditFilter { actor_id: Some("alice".into()), ..AuditFilter::default() };
    assert_eq!(list_all(&store, &by_actor).await, vec![c.clone(), a.clone()]);
    let by_target = AuditFilter { target: Some("gpuaas:local:t1:-:user:bob".into()), ..AuditFilter::default() };
    assert_eq!(list_all(&store, &by_target).await, vec![a.clone()]);
    let by_action = AuditFilter { action: Some("auth.login".into()), ..AuditFilter::default() };
    assert_eq!(list_all(&store, &by_action).await, vec![c.clone(), b.clone()]);
    let combined = AuditFilter { actor_id: Some("alice".into()), action: Some("auth.login".into()), ..by_action };
    assert_eq!(list_all(&store, &combined).await, vec![c.clone()]);
    let nobody = AuditFilter { actor_id: Some("nobody".into()), ..AuditFilter::default() };
    assert!(list_all(&store, &nobody).await.is_empty());

    // Date ranges, on rows with chosen timestamps; both ends are inclusive.
    let early = insert_at(&store, 1_000, "sys", "node.drain", "n1").await;
    let middle = insert_at(&store, 2_000, "sys", "node.drain", "n1").await;
    let late = insert_at(&store, 3_000, "sys", "node.drain", "n1").await;
    let window = |from: Option<i64>, to: Option<i64>| AuditFilter {
        action: Some("node.drain".into()),
        from: from.map(Timestamp::from_micros),
        to: to.map(Timestamp::from_micros),
        ..AuditFilter::default()
    };
    let ids_in = |logs: Vec<AuditLog>| logs.into_iter().map(|log| log.id).collect::<Vec<_>>();
    assert_eq!(ids_in(list_all(&store, &window(Some(2_000), Some(3_000))).await), [late.clone(), middle.clone()]);
    assert_eq!(ids_in(list_all(&store, &window(None, Some(1_999))).await), [early]);
    assert_eq!(ids_in(list_all(&store, &window(Some(2_000), Some(2_000))).await), [middle]);
    assert_eq!(ids_in(list_all(&store, &window(Some(2_001), None)).await), [late]);
    let recent = AuditFilter { from: Some(a.at), ..AuditFilter::default() };
    assert_eq!(list_all(&store, &recent).await.len(), 3, "only the recorded (current) rows");

    // Refused filters.
    for (filter, what) in [
        (window(Some(3_000), Some(1_000)), "from > to"),
        (AuditFilter { actor_id: Some(String::new()), ..AuditFilter::default() }, "empty"),
        (AuditFilter { target: Some("x".repeat(257)), ..AuditFilter::default() }, "too long"),
        (AuditFilter { action: Some("é".repeat(257)), ..AuditFilter::default() }, "too long in chars"),
    ] {
        let result = list(&store, &filter, None, 10).await;
        assert!(matches!(result, Err(AuditError::InvalidFilter(_))), "{what}: {result:?}");
    }
    let at_limit = AuditFilter { target: Some("x".repeat(256)), ..AuditFilter::default() };
    assert!(list(&store, &at_limit, None, 10).await.is_ok());
    for limit in [0, 201] {
        assert!(matches!(list(&store, &AuditFilter::default(), None, limit).await, Err(AuditError::InvalidLimit)));
    }
}

async fn cursor_pages_visit_every_row_once(backend: Backend) {
    let (_db, store) = setup(backend).await;
    // 23 rows sharing 5 timestamps, so many page boundaries fall inside a tie.
    let mut expected = Vec::new();
    for n in 0..23 {
        let at = 1_000 + (n % 5);
        let id = insert_at(&store, at, "sys", "node.heartbeat", "n").await;
        expected.push((at, id));
    }
    insert_at(&store, 1_002, "sys", "other.action", "n").await;
    expected.sort();
    expected.reverse();
    let expected_ids: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let filter = AuditFilter { action: Some("node.heartbeat".into()), ..AuditFilter::default() };
    for limit in [1, 3, 5, 22, 23, 200] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = list(&store, &filter, cursor.as_deref(), limit).await.unwrap_or_else(|e| panic!("{e}"));
            pages += 1;
            assert!(page.items.len() <= limit as usize);
            seen.extend(page.items.into_iter().map(|log| log.id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
            assert!(pages <= 30, "paging does not terminate");
        }
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "limit {limit}: a row was repeated");
        assert_eq!(seen, expected_ids, "limit {limit}: every row exactly once, newest first");
        assert_eq!(pages, 23usize.div_ceil(limit as usize), "limit {limit}: no empty trailing page");
    }
}

async fn invalid_cursors_are_refused(backend: Backend) {
    let (_db, store) = setup(backend).await;
    insert_at(&store, 1, "sys", "a.b", "t").await;
    let filter = AuditFilter::default();
    for cursor in ["", "garbage!", "bm90LWEtY3Vyc29y", &"A".repeat(600)] {
        let result = list(&store, &filter, Some(cursor), 10).await;
        assert!(matches!(result, Err(AuditError::InvalidCursor)), "{cursor:?}: {result:?}");
    }
    // A well-formed cursor past every row is a valid, empty page.
    let past = Cursor::new(0, "00000000-0000-0000-0000-000000000000").encode();
    let page = list(&store, &filter, Some(&past), 10).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(page.items.is_empty() && page.next_cursor.is_none());
}

async fn the_database_refuses_updates_and_deletes(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let original =
        record_standalone(&store, &entry("u1", "user.delete", "victim")).await.unwrap_or_else(|e| panic!("{e}"));
    let mut statements = vec![
        "UPDATE audit_logs SET action = 'user.create' WHERE id = $1".to_owned(),
        "UPDATE audit_logs SET details = '{}'".to_owned(),
        "DELETE FROM audit_logs WHERE id = $1".to_owned(),
        "DELETE FROM audit_logs".to_owned(),
    ];
    if backend == Backend::Postgres {
        statements.push("TRUNCATE audit_logs".to_owned());
        statements.push("TRUNCATE audit_logs CASCADE".to_owned());
    }
    for statement in statements {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(statement.clone()));
        if statement.contains("$1") {
            query = query.bind(original.id.clone());
        }
        let error = match query.execute(store.pool()).await {
            Ok(done) => panic!("{statement} was accepted ({} rows)", done.rows_affected()),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("audit_logs is append-only"), "{statement}: {error}");
    }
    // Also inside a transaction a caller might try to commit.
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let refused = sqlx::query("DELETE FROM audit_logs").execute(&mut *tx).await;
    assert!(refused.is_err());
    drop(tx);

    assert_eq!(list_all(&store, &AuditFilter::default()).await, vec![original], "the row is unchanged");
}

fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => {
                assert!(c != '"' && c != '\n' && c != '\r', "bare {c:?} outside quotes");
                cell.push(c);
            }
        }
    }
    assert!(!quoted && cell.is_empty() && row.is_empty(), "CSV must end with CRLF");
    rows
}

async fn collect_export(store: &Store, filter: AuditFilter) -> Vec<bytes::Bytes> {
    let stream = export_csv(store.clone(), filter);
    let chunks: Vec<_> = stream.collect().await;
    chunks.into_iter().map(|chunk| chunk.unwrap_or_else(|e| panic!("{e}"))).collect()
}

async fn csv_export_escapes_and_streams(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let hostile = [
        "plain",
        "with,comma",
        "with \"quotes\"",
        "two\nlines\r\nand crlf",
        "=HYPERLINK(\"http://evil\",\"click\")",
        "+1",
        "-1+2",
        "@SUM(A1:A2)",
        "\tTabbed",
    ];
    let mut recorded = Vec::new();
    for target in hostile {
        let mut new = entry("=cmd|' /C calc'!A0", "user.update", target);
        new.details = json!({"note": target});
        recorded.push(record_standalone(&store, &new).await.unwrap_or_else(|e| panic!("{e}")));
    }
    let chunks =
        collect_export(&store, AuditFilter { action: Some("user.update".into()), ..AuditFilter::default() }).await;
    assert_eq!(chunks[0].as_ref(), CSV_HEADER.as_bytes());
    let text = String::from_utf8(chunks.concat()).unwrap_or_else(|e| panic!("{e}"));
    let rows = parse_csv(&text);
    assert_eq!(rows[0][0], "id");
    assert_eq!(rows.len(), 1 + hostile.len());
    for (row, log) in rows[1..].iter().zip(recorded.iter().rev()) {
        assert_eq!(row.len(), 11);
        assert_eq!(row[0], log.id);
        assert_eq!(row[1], log.at.to_rfc3339());
        assert_eq!(row[2], "'=cmd|' /C calc'!A0", "formula in actor id neutralized");
        let expected_target = if log.target.starts_with(['=', '+', '-', '@', '\t']) {
            format!("'{}", log.target)
        } else {
            log.target.clone()
        };
        assert_eq!(row[6], expected_target);
        assert_eq!(row[7], "t1");
        assert_eq!(row[10], log.details.to_string());
    }
    assert!(text.contains("\"with,comma\""));
    assert!(text.contains("\"with \"\"quotes\"\"\""));

    // More rows than one internal page: several chunks, every row once.
    let total = EXPORT_PAGE_SIZE as usize * 2 + 7;
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    for n in 0..total {
        sqlx::query(
            "INSERT INTO audit_logs (id, at, actor_id, actor_type, actor_role, action, target, tenant_id, result, \
             correlation_id, details) VALUES ($1, $2, 'sys', 'system', 'system', 'bulk.row', $3, NULL, 'success', \
             'c', '{}')",
        )
        .bind(new_id().to_string())
        .bind(i64::try_from(n / 3).unwrap_or_default())
        .bind(format!("row-{n}"))
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    let chunks =
        collect_export(&store, AuditFilter { action: Some("bulk.row".into()), ..AuditFilter::default() }).await;
    assert_eq!(chunks.len(), 1 + total.div_ceil(EXPORT_PAGE_SIZE as usize), "header + one chunk per page");
    let rows = parse_csv(&String::from_utf8(chunks.concat()).unwrap_or_else(|e| panic!("{e}")));
    let targets: HashSet<_> = rows[1..].iter().map(|row| row[6].clone()).collect();
    assert_eq!(rows.len() - 1, total);
    assert_eq!(targets.len(), total, "no row repeated or skipped across pages");

    // An empty result is just the header; a bad filter is an error item.
    let empty = collect_export(&store, AuditFilter { actor_id: Some("nobody".into()), ..AuditFilter::default() }).await;
    assert_eq!(empty, vec![bytes::Bytes::from_static(CSV_HEADER.as_bytes())]);
    let bad = AuditFilter {
        from: Some(Timestamp::from_micros(2)),
        to: Some(Timestamp::from_micros(1)),
        ..AuditFilter::default()
    };
    let items: Vec<_> = export_csv(store.clone(), bad).collect().await;
    assert!(matches!(items.as_slice(), [Err(AuditError::InvalidFilter(_))]), "{items:?}");
}

async fn secrets_never_reach_the_table(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let mut new = entry("u1", "auth.login", "login password=hunter2-target");
    new.details = json!({
        "password": "hunter2-details",
        "nested": {"refresh_token": "rt-secret-value", "list": [{"api_key": "key-secret-value"}]},
        "header": "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload",
        "email": "a@example.com",
    });
    let returned = record_standalone(&store, &new).await.unwrap_or_else(|e| panic!("{e}"));
    let row = sqlx::query("SELECT target, details FROM audit_logs")
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stored = format!(
        "{} {}",
        row.try_get::<String, _>("target").unwrap_or_else(|e| panic!("{e}")),
        row.try_get::<String, _>("details").unwrap_or_else(|e| panic!("{e}"))
    );
    for secret in ["hunter2", "rt-secret-value", "key-secret-value", "eyJhbGciOiJIUzI1NiJ9"] {
        assert!(!stored.contains(secret), "{secret} leaked: {stored}");
        assert!(!serde_json::to_string(&returned).unwrap_or_default().contains(secret));
    }
    assert!(stored.contains("a@example.com"), "harmless fields stay: {stored}");
    assert_eq!(returned.details["password"], "[REDACTED]");
}

gpuaas_testkit::both_backends!(
    record_follows_the_callers_transaction,
    list_filters_by_actor_target_action_and_dates,
    cursor_pages_visit_every_row_once,
    invalid_cursors_are_refused,
    the_database_refuses_updates_and_deletes,
    csv_export_escapes_and_streams,
    secrets_never_reach_the_table,
);

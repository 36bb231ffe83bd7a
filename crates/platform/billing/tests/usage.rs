//! Usage records on both databases: storing, listing newest first with keyset pages,
//! and the streamed CSV export.

mod common;

use std::collections::HashSet;

use common::setup;
use futures::StreamExt;
use gpuaas_billing::{
    BillingError, NewUsageRecord, USAGE_CSV_HEADER, USAGE_EXPORT_PAGE_SIZE, UsageRecord, export_usage_csv,
    insert_usage_record, list_usage,
};
use gpuaas_kernel::Timestamp;
use gpuaas_store::Store;
use gpuaas_testkit::{Backend, assert_err};

const HOUR: i64 = 3_600_000_000;

fn record(tenant_id: &str, started_hour: i64) -> NewUsageRecord<'_> {
    NewUsageRecord {
        tenant_id,
        project_id: "proj-1",
        allocation_id: "alloc-1",
        sku_id: "h100-80g",
        gpu_count: 2,
        price_per_gpu_hour_minor: 250,
        currency: "EUR",
        started_at: Timestamp::from_micros(1_700_000_000_000_000 + started_hour * HOUR),
        ended_at: Some(Timestamp::from_micros(1_700_000_000_000_000 + (started_hour + 1) * HOUR)),
        billed_seconds: 3_600,
        billed_minor: 500,
    }
}

async fn insert(store: &Store, record: &NewUsageRecord<'_>) -> UsageRecord {
    let mut connection = store.pool().acquire().await.unwrap_or_else(|e| panic!("{e}"));
    insert_usage_record(&mut connection, record).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn export(store: &Store, tenant_id: &str) -> Vec<bytes::Bytes> {
    let mut stream = std::pin::pin!(export_usage_csv(store.clone(), tenant_id.to_owned()));
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.unwrap_or_else(|e| panic!("{e}")));
    }
    chunks
}

async fn usage_lists_and_exports(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let mut stored = Vec::new();
    for hour in 0..7 {
        stored.push(insert(&store, &record("t1", hour)).await);
    }
    let running = NewUsageRecord { ended_at: None, billed_seconds: 0, billed_minor: 0, ..record("t1", 7) };
    stored.push(insert(&store, &running).await);
    let hostile = NewUsageRecord { project_id: "=HYPERLINK(\"x\")", sku_id: "a,b", ..record("t1", 8) };
    stored.push(insert(&store, &hostile).await);
    insert(&store, &record("t2", 3)).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = list_usage(&store, "t1", cursor.as_deref(), 2).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(page.items.len() <= 2);
        seen.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let newest_first: Vec<UsageRecord> = stored.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "newest start first, no gaps or repeats");
    assert_eq!(seen[1].ended_at, None);

    let chunks = export(&store, "t1").await;
    assert_eq!(chunks[0], USAGE_CSV_HEADER.as_bytes());
    let text: String = chunks.iter().map(|chunk| String::from_utf8_lossy(chunk).into_owned()).collect();
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 1 + stored.len());
    let first = &stored[8];
    assert_eq!(
        lines[1],
        format!(
            "{},t1,\"'=HYPERLINK(\"\"x\"\")\",alloc-1,\"a,b\",2,250,EUR,{},{},3600,500,{}",
            first.id,
            first.started_at.to_rfc3339(),
            first.ended_at.map(Timestamp::to_rfc3339).unwrap_or_default(),
            first.created_at.to_rfc3339()
        )
    );
    assert!(
        lines[2].starts_with(&stored[7].id) && lines[2].contains(",,0,0,"),
        "an open record has no end: {}",
        lines[2]
    );
    assert!(!text.contains("t2"));

    let nobody = export(&store, "nobody").await;
    assert_eq!(nobody, vec![bytes::Bytes::from_static(USAGE_CSV_HEADER.as_bytes())]);
    let mut invalid = std::pin::pin!(export_usage_csv(store.clone(), String::new()));
    assert!(matches!(invalid.next().await, Some(Err(BillingError::Invalid { .. }))));
    assert!(invalid.next().await.is_none());

    assert_err!(list_usage(&store, "t1", Some("%%%"), 10).await, BillingError::Invalid { field, .. } if field == "cursor");
    assert_err!(list_usage(&store, "t1", None, 0).await, BillingError::Invalid { field, .. } if field == "limit");
    let mut connection = store.pool().acquire().await.unwrap_or_else(|e| panic!("{e}"));
    for (bad, field) in [
        (NewUsageRecord { gpu_count: 0, ..record("t1", 1) }, "gpu_count"),
        (NewUsageRecord { currency: "Eur", ..record("t1", 1) }, "currency"),
        (NewUsageRecord { billed_minor: -1, ..record("t1", 1) }, "billed_minor"),
        (NewUsageRecord { ended_at: Some(Timestamp::from_micros(0)), ..record("t1", 1) }, "ended_at"),
        (NewUsageRecord { sku_id: "", ..record("t1", 1) }, "sku_id"),
    ] {
        assert_err!(
            insert_usage_record(&mut connection, &bad).await,
            BillingError::Invalid { field: got, .. } if got == field
        );
    }
}

async fn large_exports_stream_in_pages(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let rows = 5 * USAGE_EXPORT_PAGE_SIZE as i64;
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    // Several records share a start time, so paging must break ties by id.
    for i in 0..rows {
        insert_usage_record(&mut tx, &record("t1", i / 3)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));

    let chunks = export(&store, "t1").await;
    assert_eq!(chunks.len(), 1 + 5, "the header, then one chunk per page");
    let mut ids = HashSet::new();
    for chunk in &chunks[1..] {
        let text = std::str::from_utf8(chunk).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), USAGE_EXPORT_PAGE_SIZE as usize);
        for line in lines {
            let id = line.split(',').next().unwrap_or_default().to_owned();
            assert!(ids.insert(id), "a row was exported twice");
        }
    }
    assert_eq!(ids.len() as i64, rows);
}

gpuaas_testkit::both_backends!(usage_lists_and_exports, large_exports_stream_in_pages);

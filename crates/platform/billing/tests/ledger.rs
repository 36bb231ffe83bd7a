//! The ledger on both databases: append-only enforcement, balances with checkpoints,
//! idempotent replays, refusals, batches, concurrency, verification and listing.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use gpuaas_billing::{
    BillingError, EntryType, LedgerFilter, NewEntry, Posted, REFERENCE_LEDGER_ENTRY, balance, balance_in, entry,
    list_ledger, post, post_many, refunded_against, verify,
};
use gpuaas_kernel::{ErrCode, Timestamp};
use gpuaas_store::sqlx;
use gpuaas_testkit::{Backend, assert_err};

async fn append_only_is_enforced_by_the_database(backend: Backend) {
    let (_db, store) = setup(backend).await;
    for (index, amount) in [500, -200, 300].into_iter().enumerate() {
        let key = format!("k{index}");
        let kind = if amount > 0 { EntryType::CreditPurchase } else { EntryType::UsageDebit };
        post_ok(&store, &new_entry("t1", kind, amount, &key), 1).await;
    }
    assert_eq!(count(&store, "ledger_checkpoints").await, 3);

    let mut statements = vec![
        "UPDATE ledger_entries SET amount_minor = 1",
        "UPDATE ledger_entries SET description = 'x' WHERE entry_no = 2",
        "DELETE FROM ledger_entries WHERE entry_no = 3",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_checkpoints SET balance_minor = 0",
        "DELETE FROM ledger_checkpoints WHERE entry_no = 1",
        "DELETE FROM ledger_checkpoints",
    ];
    if backend == Backend::Postgres {
        statements.extend([
            "TRUNCATE ledger_entries CASCADE",
            "TRUNCATE ledger_checkpoints",
            "TRUNCATE ledger_entries",
        ]);
    }
    for statement in statements {
        let refused = sqlx::query(statement).execute(store.pool()).await;
        assert!(refused.is_err(), "{statement} was accepted");
    }
    assert_eq!(count(&store, "ledger_entries").await, 3);
    assert_eq!(count(&store, "ledger_checkpoints").await, 3);
    assert_eq!(balance_of(&store, "t1").await, 600);

    // A posting follows the caller's transaction: rolled back, it leaves nothing.
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let posted = post(&mut tx, store.dialect(), &new_entry("t2", EntryType::AdminCredit, 50, "r1"), 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(posted.is_new());
    let inside = balance_in(&mut tx, "t2").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((inside.amount_minor, inside.currency.as_deref()), (50, Some("EUR")));
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&store, "ledger_entries").await, 3);
    assert_eq!(count(&store, "ledger_checkpoints").await, 3);
    assert_eq!(count(&store, "billing_accounts").await, 1);
    assert_err!(entry(&store, &posted.entry().id).await, BillingError::NotFound(_));
}

async fn balances_replays_and_refusals(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let empty = balance(&store, "t1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((empty.tenant_id.as_str(), empty.amount_minor, empty.currency), ("t1", 0, None));

    let credit = post_ok(&store, &new_entry("t1", EntryType::CreditPurchase, 1_000, "buy-1"), 100).await;
    let Posted::New(credit) = credit else { panic!("first post replayed") };
    assert_eq!((credit.entry_no, credit.amount_minor, credit.currency.as_str()), (1, 1_000, "EUR"));
    post_ok(&store, &new_entry("t1", EntryType::UsageDebit, -1_300, "use-1"), 100).await;
    let now = balance(&store, "t1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((now.amount_minor, now.currency.as_deref()), (-300, Some("EUR")), "debits may go below zero");

    // Replays return the stored entry and change nothing.
    let replay = post_ok(&store, &new_entry("t1", EntryType::CreditPurchase, 1_000, "buy-1"), 100).await;
    assert_eq!(replay, Posted::Replayed(credit.clone()));
    assert!(!replay.is_new());
    assert_eq!(count(&store, "ledger_entries").await, 2);
    assert_eq!(balance_of(&store, "t1").await, -300);

    // The same key with another amount, type or currency is a conflict.
    for conflicting in [
        new_entry("t1", EntryType::CreditPurchase, 999, "buy-1"),
        new_entry("t1", EntryType::AdminCredit, 1_000, "buy-1"),
        NewEntry { currency: "USD", ..new_entry("t1", EntryType::CreditPurchase, 1_000, "buy-1") },
    ] {
        let error = assert_err!(post_one(&store, &conflicting, 100).await, BillingError::IdempotencyConflict(_));
        assert_eq!(error.code(), ErrCode::Conflict);
    }

    // The account keeps the currency of its first posting.
    let mismatch = NewEntry { currency: "USD", ..new_entry("t1", EntryType::AdminCredit, 5, "usd-1") };
    let error = assert_err!(
        post_one(&store, &mismatch, 100).await,
        BillingError::CurrencyMismatch { account, given } if account == "EUR" && given == "USD"
    );
    assert_eq!(error.code(), ErrCode::CurrencyMismatch);

    // Sign rules and bounds.
    for (kind, amount) in [
        (EntryType::CreditPurchase, -5),
        (EntryType::AdminCredit, -5),
        (EntryType::UsageDebit, 5),
        (EntryType::AdminDebit, 5),
        (EntryType::Refund, 5),
        (EntryType::Reversal, 0),
        (EntryType::CreditPurchase, 1_000_000_000_000_001),
    ] {
        let error = assert_err!(
            post_one(&store, &new_entry("t1", kind, amount, "sign"), 100).await,
            BillingError::Invalid { field, .. } if field == "amount_minor"
        );
        assert_eq!(error.code(), ErrCode::ValidationError);
    }
    assert_err!(
        post_one(&store, &NewEntry { currency: "eur", ..new_entry("t2", EntryType::AdminCredit, 5, "c") }, 100).await,
        BillingError::Invalid { field, .. } if field == "currency"
    );
    assert_err!(
        post_one(&store, &new_entry("t1", EntryType::AdminCredit, 5, ""), 100).await,
        BillingError::Invalid { field, .. } if field == "idempotency_key"
    );
    assert_err!(
        post_one(&store, &new_entry("t1", EntryType::AdminCredit, 5, "ok"), 0).await,
        BillingError::Invalid { field, .. } if field == "checkpoint_every"
    );
    assert_eq!(count(&store, "ledger_entries").await, 2);
    assert_eq!(count(&store, "billing_accounts").await, 1, "a refused first posting creates no account");

    // A reversal may go either way; refunds reference the credit they return.
    post_ok(&store, &new_entry("t1", EntryType::Reversal, 1_300, "rev-1"), 100).await;
    post_ok(&store, &new_entry("t1", EntryType::Reversal, -1, "rev-2"), 100).await;
    for (key, amount) in [("refund-1", -200), ("refund-2", -50)] {
        let refund = NewEntry {
            reference_type: REFERENCE_LEDGER_ENTRY,
            reference_id: &credit.id,
            ..new_entry("t1", EntryType::Refund, amount, key)
        };
        post_ok(&store, &refund, 100).await;
    }
    let mut connection = store.pool().acquire().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refunded_against(&mut connection, &credit.id).await.unwrap_or_else(|e| panic!("{e}")), 250);
    assert_eq!(refunded_against(&mut connection, "other").await.unwrap_or_else(|e| panic!("{e}")), 0);
    drop(connection);
    assert_eq!(balance_of(&store, "t1").await, 1_000 - 1_300 + 1_300 - 1 - 250);
    assert_eq!(entry_nos(&store, "t1").await, vec![1, 2, 3, 4, 5, 6]);

    assert_eq!(entry(&store, &credit.id).await.unwrap_or_else(|e| panic!("{e}")), credit);
    let missing = assert_err!(entry(&store, "no-such-entry").await, BillingError::NotFound(_));
    assert_eq!(missing.code(), ErrCode::NotFound);
}

async fn checkpoints_keep_balances_exact(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let every = 3;
    let amounts: Vec<i64> = (1..=20_i64).map(|i| if i % 4 == 0 { -(i * 37) } else { i * 11 }).collect();
    for (index, amount) in amounts.iter().enumerate() {
        let key = format!("k{index}");
        let kind = if *amount > 0 { EntryType::AdminCredit } else { EntryType::AdminDebit };
        let posted = post_ok(&store, &new_entry("t1", kind, *amount, &key), every).await;
        assert_eq!(posted.entry().entry_no, index as i64 + 1);
        assert_eq!(balance_of(&store, "t1").await, full_sum(&store, "t1").await, "after entry {}", index + 1);
        assert_eq!(balance_of(&store, "t1").await, amounts[..=index].iter().sum::<i64>());
        // Another tenant's ledger never leaks into this one.
        if index == 9 {
            post_ok(&store, &new_entry("t2", EntryType::AdminCredit, 7, "other"), every).await;
        }
    }
    assert_eq!(entry_nos(&store, "t1").await, (1..=20).collect::<Vec<_>>());
    assert_eq!(checkpoints(&store, "t1").await, expected_checkpoints(&amounts, every));
    assert_eq!(checkpoints(&store, "t1").await.len(), 6);
    assert_eq!(balance_of(&store, "t2").await, 7);
    let report = verify(&store).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.mismatches, Vec::<String>::new());
    assert_eq!((report.accounts, report.entries, report.checkpoints), (2, 21, 6));
}

async fn batches_follow_the_same_rules(backend: Backend) {
    let (_db, store) = setup(backend).await;
    post_ok(&store, &new_entry("t1", EntryType::CreditPurchase, 100, "old"), 4).await;
    let keys: Vec<String> = (0..300).map(|i| format!("b{i}")).collect();
    let mut batch: Vec<NewEntry<'_>> = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let tenant = if index % 3 == 0 { "t2" } else { "t1" };
        batch.push(new_entry(tenant, EntryType::UsageDebit, -(index as i64 + 1), key));
    }
    // An earlier key and a key repeated inside the batch are replays.
    batch.push(new_entry("t1", EntryType::CreditPurchase, 100, "old"));
    batch.push(new_entry("t1", EntryType::UsageDebit, -2, "b1"));

    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let posted = post_many(&mut tx, store.dialect(), &batch, 4).await.unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(posted.len(), batch.len());
    for (new, result) in batch.iter().zip(&posted) {
        assert_eq!(
            (result.entry().idempotency_key.as_str(), result.entry().tenant_id.as_str()),
            (new.idempotency_key, new.tenant_id)
        );
    }
    assert_eq!(posted.iter().filter(|p| p.is_new()).count(), 300);
    assert!(!posted[300].is_new() && posted[300].entry().entry_no == 1);
    assert_eq!(posted[301], Posted::Replayed(posted[1].entry().clone()));

    let t1: Vec<i64> = (0..300_i64).filter(|i| i % 3 != 0).map(|i| -(i + 1)).collect();
    let t2: Vec<i64> = (0..300_i64).filter(|i| i % 3 == 0).map(|i| -(i + 1)).collect();
    let t1_amounts: Vec<i64> = std::iter::once(100).chain(t1.iter().copied()).collect();
    assert_eq!(entry_nos(&store, "t1").await, (1..=201).collect::<Vec<_>>());
    assert_eq!(entry_nos(&store, "t2").await, (1..=100).collect::<Vec<_>>());
    assert_eq!(checkpoints(&store, "t1").await, expected_checkpoints(&t1_amounts, 4));
    assert_eq!(checkpoints(&store, "t2").await, expected_checkpoints(&t2, 4));
    assert_eq!(balance_of(&store, "t1").await, t1_amounts.iter().sum::<i64>());
    assert_eq!(balance_of(&store, "t2").await, t2.iter().sum::<i64>());

    // A refusal anywhere in a batch is found before anything is written.
    let before = count(&store, "ledger_entries").await;
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let bad = [
        new_entry("t3", EntryType::AdminCredit, 5, "fine"),
        NewEntry { currency: "USD", ..new_entry("t1", EntryType::AdminCredit, 5, "usd") },
    ];
    assert_err!(post_many(&mut tx, store.dialect(), &bad, 4).await, BillingError::CurrencyMismatch { .. });
    tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&store, "ledger_entries").await, before);
    let mut tx = store.begin().await.unwrap_or_else(|e| panic!("{e}"));
    let empty = post_many(&mut tx, store.dialect(), &[], 4).await.unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.is_empty());
    assert!(verify(&store).await.unwrap_or_else(|e| panic!("{e}")).mismatches.is_empty());
}

async fn concurrent_postings_stay_gap_free(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let every = 7;
    let mut tasks = Vec::new();
    for task in 0..8_i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut sum = 0;
            for i in 0..25_i64 {
                let key = format!("task{task}-{i}");
                let amount = if i % 5 == 4 { -(task * 100 + i) } else { task * 1_000 + i + 1 };
                let kind = if amount > 0 { EntryType::CreditPurchase } else { EntryType::UsageDebit };
                let posted = post_ok(&store, &new_entry("t1", kind, amount, &key), every).await;
                assert!(posted.is_new());
                sum += amount;
            }
            sum
        }));
    }
    let mut expected = 0;
    for task in tasks {
        expected += task.await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(balance_of(&store, "t1").await, expected);
    assert_eq!(full_sum(&store, "t1").await, expected);
    assert_eq!(entry_nos(&store, "t1").await, (1..=200).collect::<Vec<_>>());
    let amounts: Vec<i64> = sqlx::query_scalar("SELECT amount_minor FROM ledger_entries ORDER BY entry_no")
        .fetch_all(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checkpoints(&store, "t1").await, expected_checkpoints(&amounts, every));
    assert_eq!(checkpoints(&store, "t1").await.len(), 28);
    let report = verify(&store).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);

    // Twenty racing posts with one key (on a new account, so creation races too):
    // exactly one is new, the others replay it.
    let mut racers = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        racers.push(tokio::spawn(async move {
            post_ok(&store, &new_entry("t2", EntryType::CreditPurchase, 4_200, "same-key"), every).await
        }));
    }
    let mut results = Vec::new();
    for racer in racers {
        results.push(racer.await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(results.iter().filter(|posted| posted.is_new()).count(), 1);
    let ids: HashSet<&str> = results.iter().map(|posted| posted.entry().id.as_str()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(balance_of(&store, "t2").await, 4_200);
    assert_eq!(entry_nos(&store, "t2").await, vec![1]);
    assert_eq!(count(&store, "billing_accounts").await, 2);
}

async fn verify_finds_tampering(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let clean = verify(&store).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((clean.accounts, clean.entries, clean.checkpoints, clean.mismatches.len()), (0, 0, 0, 0));
    for i in 0..7_i64 {
        let key = format!("k{i}");
        post_ok(&store, &new_entry("t1", EntryType::AdminCredit, 10 + i, &key), 3).await;
        post_ok(&store, &new_entry("t2", EntryType::AdminCredit, 1, &key), 3).await;
    }
    let clean = verify(&store).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(clean.mismatches, Vec::<String>::new());
    assert_eq!((clean.accounts, clean.entries, clean.checkpoints), (2, 14, 4));
    let account: String = sqlx::query_scalar("SELECT id FROM billing_accounts WHERE tenant_id = 't1'")
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Someone with database access removes the guard and rewrites a checkpoint.
    let drop_guard = match backend {
        Backend::Sqlite => "DROP TRIGGER ledger_checkpoints_no_update",
        Backend::Postgres => "DROP TRIGGER ledger_checkpoints_no_update_delete ON ledger_checkpoints",
    };
    sqlx::query(drop_guard).execute(store.pool()).await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(
        "UPDATE ledger_checkpoints SET balance_minor = balance_minor + 1000 WHERE account_id = $1 AND entry_no = 3",
    )
    .bind(account.as_str())
    .execute(store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let report = verify(&store).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.mismatches.len(), 1, "{:?}", report.mismatches);
    assert!(
        report.mismatches[0].contains(&account) && report.mismatches[0].contains("entry 3"),
        "{:?}",
        report.mismatches
    );

    // A bogus checkpoint inserted directly, and one for an entry that does not exist.
    sqlx::query("INSERT INTO ledger_checkpoints (account_id, entry_no, balance_minor, created_at) VALUES ($1, 5, 1, 0), ($1, 50, 1, 0)")
        .bind(account.as_str())
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let report = verify(&store).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.mismatches.len(), 3, "{:?}", report.mismatches);
    assert!(report.mismatches.iter().all(|m| m.contains(&account) && m.contains("t1")), "{:?}", report.mismatches);
    assert!(report.mismatches.iter().any(|m| m.contains("entry 50 has no entry")), "{:?}", report.mismatches);

    // An entry slipped in past the end leaves a gap in the numbering.
    sqlx::query(
        "INSERT INTO ledger_entries (id, account_id, tenant_id, entry_no, entry_type, amount_minor, currency, \
         idempotency_key, reference_type, reference_id, correlation_id, description, created_by, created_at) \
         SELECT 'forged', id, tenant_id, 9, 'admin_credit', 1, currency, 'forged', 'x', 'x', 'x', NULL, 'x', 0 \
         FROM billing_accounts WHERE tenant_id = 't2'",
    )
    .execute(store.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let report = verify(&store).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.mismatches.iter().any(|m| m.contains("t2") && m.contains("expected entry 8, found entry 9")),
        "{:?}",
        report.mismatches
    );
}

async fn ledger_lists_filter_and_page(backend: Backend) {
    let (_db, store) = setup(backend).await;
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(post_ok(&store, &new_entry("t1", EntryType::CreditPurchase, 100 + i, &format!("c{i}")), 3).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let middle = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(2)).await;
    for i in 0..6 {
        keys.push(post_ok(&store, &new_entry("t1", EntryType::UsageDebit, -(10 + i), &format!("d{i}")), 3).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    post_ok(&store, &new_entry("t2", EntryType::UsageDebit, -1, "elsewhere"), 3).await;

    let list = |filter: LedgerFilter, cursor: Option<String>, limit: u32| {
        let store = store.clone();
        async move { list_ledger(&store, "t1", &filter, cursor.as_deref(), limit).await }
    };
    let all = |filter: LedgerFilter, limit: u32| {
        let list = &list;
        async move {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = list(filter.clone(), cursor, limit).await.unwrap_or_else(|e| panic!("{e}"));
                assert!(page.items.len() <= limit as usize);
                seen.extend(page.items.into_iter().map(|entry| entry.entry_no));
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => return seen,
                }
            }
        }
    };
    assert_eq!(all(LedgerFilter::default(), 3).await, (1..=11).rev().collect::<Vec<_>>(), "newest first");
    assert_eq!(all(LedgerFilter::default(), 200).await, (1..=11).rev().collect::<Vec<_>>());
    let debits = LedgerFilter { entry_type: Some(EntryType::UsageDebit), ..LedgerFilter::default() };
    assert_eq!(all(debits, 4).await, (6..=11).rev().collect::<Vec<_>>());
    let credits = LedgerFilter { entry_type: Some(EntryType::CreditPurchase), ..LedgerFilter::default() };
    assert_eq!(all(credits, 2).await, (1..=5).rev().collect::<Vec<_>>());
    let after = LedgerFilter { from: Some(middle), ..LedgerFilter::default() };
    assert_eq!(all(after, 2).await, (6..=11).rev().collect::<Vec<_>>());
    let before = LedgerFilter { to: Some(middle), ..LedgerFilter::default() };
    assert_eq!(all(before, 2).await, (1..=5).rev().collect::<Vec<_>>());
    let window = LedgerFilter {
        from: Some(keys[2].entry().created_at),
        to: Some(keys[7].entry().created_at),
        entry_type: Some(EntryType::UsageDebit),
    };
    assert_eq!(all(window, 1).await, vec![8, 7, 6]);

    let first = list(LedgerFilter::default(), None, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.items, vec![keys[10].entry().clone()]);
    let unknown =
        list_ledger(&store, "nobody", &LedgerFilter::default(), None, 10).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(unknown.items.is_empty() && unknown.next_cursor.is_none());
    assert_err!(list(LedgerFilter::default(), Some("bogus!".into()), 10).await, BillingError::Invalid { field, .. } if field == "cursor");
    assert_err!(list(LedgerFilter::default(), None, 0).await, BillingError::Invalid { field, .. } if field == "limit");
    assert_err!(list(LedgerFilter::default(), None, 201).await, BillingError::Invalid { field, .. } if field == "limit");
    let inverted =
        LedgerFilter { from: Some(Timestamp::from_micros(10)), to: Some(Timestamp::from_micros(5)), entry_type: None };
    assert_err!(list(inverted, None, 10).await, BillingError::Invalid { field, .. } if field == "from");
}

gpuaas_testkit::both_backends!(
    append_only_is_enforced_by_the_database,
    balances_replays_and_refusals,
    checkpoints_keep_balances_exact,
    batches_follow_the_same_rules,
    concurrent_postings_stay_gap_free,
    verify_finds_tampering,
    ledger_lists_filter_and_page,
);

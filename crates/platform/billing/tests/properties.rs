//! Property: whatever sequence of credits, debits and replays is posted, the balance
//! equals the sum of the accepted amounts and `verify` finds nothing wrong.

mod common;

use common::{checkpoints, entry_nos, expected_checkpoints, new_entry, post_one, setup};
use gpuaas_billing::{BillingError, EntryType, balance, verify};
use gpuaas_testkit::Backend;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Credit(i64),
    Debit(i64),
    /// Posts the n-th earlier operation's key again with the same amount.
    Replay(usize),
    /// Posts the n-th earlier operation's key again with another amount.
    Conflict(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..1_000_000_i64).prop_map(Op::Credit),
        4 => (1..1_000_000_i64).prop_map(Op::Debit),
        1 => any::<usize>().prop_map(Op::Replay),
        1 => any::<usize>().prop_map(Op::Conflict),
    ]
}

async fn run(ops: Vec<Op>, every: i64) {
    let (_db, store) = setup(Backend::Sqlite).await;
    let mut accepted: Vec<(String, EntryType, i64)> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let (key, kind, amount, new) = match *op {
            Op::Credit(amount) => (format!("k{index}"), EntryType::CreditPurchase, amount, true),
            Op::Debit(amount) => (format!("k{index}"), EntryType::UsageDebit, -amount, true),
            Op::Replay(_) | Op::Conflict(_) if accepted.is_empty() => continue,
            Op::Replay(n) => {
                let (key, kind, amount) = accepted[n % accepted.len()].clone();
                (key, kind, amount, false)
            }
            Op::Conflict(n) => {
                let (key, kind, amount) = accepted[n % accepted.len()].clone();
                let result = post_one(&store, &new_entry("t1", kind, amount * 2, &key), every).await;
                assert!(matches!(result, Err(BillingError::IdempotencyConflict(_))), "{result:?}");
                continue;
            }
        };
        let posted =
            post_one(&store, &new_entry("t1", kind, amount, &key), every).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(posted.is_new(), new);
        assert_eq!((posted.entry().amount_minor, posted.entry().entry_type), (amount, kind));
        if new {
            accepted.push((key, kind, amount));
        }
    }
    let amounts: Vec<i64> = accepted.iter().map(|(_, _, amount)| *amount).collect();
    let got = balance(&store, "t1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.amount_minor, amounts.iter().sum::<i64>());
    assert_eq!(entry_nos(&store, "t1").await, (1..=amounts.len() as i64).collect::<Vec<_>>());
    assert_eq!(checkpoints(&store, "t1").await, expected_checkpoints(&amounts, every));
    let report = verify(&store).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert_eq!(report.entries, amounts.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn balance_is_the_sum_of_accepted_postings(ops in prop::collection::vec(op(), 0..40), every in 1..6_i64) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(run(ops, every));
    }
}

//! Billing: one billing account per tenant, the append-only money ledger, balances,
//! usage records and per-second metering of them.
//!
//! Money is always an `i64` amount in minor units with a three-letter upper-case
//! currency; never a float. Other crates post through [`post`] / [`post_many`] inside
//! their own transaction (payments posts a purchase, updates its payment row and
//! queues its event atomically); balances come from [`balance`] / [`balance_in`].
//!
//! This crate owns `billing_accounts`, `ledger_entries`, `ledger_checkpoints` and
//! `usage_records` and `billing_balance_alerts`. The ledger and its checkpoints are append-only: the database
//! itself refuses UPDATE, DELETE and TRUNCATE on them, and corrections are new entries
//! (reversal, refund, admin credit or debit). It must never store a balance as a
//! mutable column, never change or remove an entry or a checkpoint, and never post
//! an entry in another currency than its account's. A balance is the account's latest
//! immutable checkpoint plus the few entries after it, so reading it costs the same
//! however long the ledger; [`verify`] recomputes every balance from entry 1 to prove
//! the checkpoints right.

pub mod accrual;
mod error;
mod ledger;
mod query;
mod usage;
mod verify;

use gpuaas_store::Migration;

pub use error::BillingError;
pub use ledger::{
    Balance, DEFAULT_CHECKPOINT_EVERY, EntryType, LedgerEntry, MAX_AMOUNT_MINOR, MAX_IDEMPOTENCY_KEY_LEN, MAX_TEXT_LEN,
    NewEntry, Posted, REFERENCE_LEDGER_ENTRY, balance, balance_in, balances_in, entry, post, post_many,
    refunded_against, validate_currency,
};
pub use query::{LedgerFilter, LedgerPage, list_ledger};
pub use usage::{
    NewUsageRecord, USAGE_CSV_HEADER, USAGE_EXPORT_PAGE_SIZE, UsagePage, UsageRecord, export_usage_csv,
    insert_usage_record, insert_usage_records, list_usage, usage_for_allocations,
};
pub use verify::{VerifyReport, verify};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112350,
        name: "billing",
        sqlite: include_str!("../migrations/2026112350_billing.sqlite.sql"),
        postgres: include_str!("../migrations/2026112350_billing.postgres.sql"),
    },
    Migration {
        version: 2026112361,
        name: "metering",
        sqlite: include_str!("../migrations/2026112361_metering.sql"),
        postgres: include_str!("../migrations/2026112361_metering.sql"),
    },
];

//! Recomputing every balance from the ledger and checking the checkpoints against it.

use gpuaas_store::Store;
use gpuaas_store::sqlx::{self, Row as _};
use serde::Serialize;
use utoipa::ToSchema;

use crate::BillingError;

/// Accounts read per query.
const ACCOUNT_PAGE: i64 = 500;
/// Entries read per query; one account's ledger is walked in pages of this size.
const ENTRY_PAGE: i64 = 1000;
/// Mismatches listed before the report only counts the rest, so a badly damaged
/// ledger still yields a report of bounded size.
const MAX_LISTED_MISMATCHES: usize = 1000;

/// What [`verify`] checked and what did not add up. `mismatches` is empty on a sound
/// ledger; each message names the account and tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct VerifyReport {
    pub accounts: u64,
    pub entries: u64,
    pub checkpoints: u64,
    pub mismatches: Vec<String>,
}

impl VerifyReport {
    fn mismatch(&mut self, omitted: &mut u64, message: String) {
        if self.mismatches.len() < MAX_LISTED_MISMATCHES {
            self.mismatches.push(message);
        } else {
            *omitted += 1;
        }
    }
}

struct AccountRow {
    id: String,
    tenant_id: String,
    currency: String,
}

/// Walks every account's ledger from entry 1, recomputing the running balance, and
/// reports: gaps or repeats in the `entry_no` sequence, entries whose tenant or
/// currency differs from their account's, checkpoints that disagree with the running
/// balance, and checkpoints for entries that do not exist. Reads page by page (one
/// account, one page of entries at a time), so memory stays bounded however large
/// the ledger. Safe while postings go on: an entry and its checkpoint commit together.
pub async fn verify(store: &Store) -> Result<VerifyReport, BillingError> {
    let mut report = VerifyReport::default();
    let mut omitted = 0_u64;
    let mut after = String::new();
    loop {
        let rows =
            sqlx::query("SELECT id, tenant_id, currency FROM billing_accounts WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after.as_str())
                .bind(ACCOUNT_PAGE)
                .persistent(false)
                .persistent(false)
                .fetch_all(store.pool())
                .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get("id")?;
        for row in &rows {
            let account = AccountRow {
                id: row.try_get("id")?,
                tenant_id: row.try_get("tenant_id")?,
                currency: row.try_get("currency")?,
            };
            report.accounts += 1;
            verify_account(store, &account, &mut report, &mut omitted).await?;
        }
    }
    if omitted > 0 {
        report.mismatches.push(format!("… and {omitted} more mismatches not listed"));
    }
    Ok(report)
}

async fn verify_account(
    store: &Store,
    account: &AccountRow,
    report: &mut VerifyReport,
    omitted: &mut u64,
) -> Result<(), BillingError> {
    let name = format!("account {} (tenant {})", account.id, account.tenant_id);
    let mut expected_no = 1_i64;
    let mut running = 0_i64;
    let mut last_no = 0_i64;
    loop {
        let rows = sqlx::query(
            "SELECT e.entry_no, e.amount_minor, e.currency, e.tenant_id, c.balance_minor AS checkpoint \
             FROM ledger_entries e LEFT JOIN ledger_checkpoints c \
             ON c.account_id = e.account_id AND c.entry_no = e.entry_no \
             WHERE e.account_id = $1 AND e.entry_no > $2 ORDER BY e.entry_no LIMIT $3",
        )
        .bind(account.id.as_str())
        .bind(last_no)
        .bind(ENTRY_PAGE)
        .persistent(false)
        .persistent(false)
        .fetch_all(store.pool())
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let entry_no: i64 = row.try_get("entry_no")?;
            let amount: i64 = row.try_get("amount_minor")?;
            let currency: String = row.try_get("currency")?;
            let tenant_id: String = row.try_get("tenant_id")?;
            let checkpoint: Option<i64> = row.try_get("checkpoint")?;
            report.entries += 1;
            last_no = entry_no;
            if entry_no != expected_no {
                report.mismatch(omitted, format!("{name}: expected entry {expected_no}, found entry {entry_no}"));
            }
            expected_no = entry_no.saturating_add(1);
            if currency != account.currency {
                report.mismatch(
                    omitted,
                    format!("{name}: entry {entry_no} is in {currency}, the account in {}", account.currency),
                );
            }
            if tenant_id != account.tenant_id {
                report.mismatch(omitted, format!("{name}: entry {entry_no} names tenant {tenant_id}"));
            }
            running = match running.checked_add(amount) {
                Some(sum) => sum,
                None => {
                    report.mismatch(omitted, format!("{name}: the balance overflows at entry {entry_no}"));
                    return Ok(());
                }
            };
            if let Some(stored) = checkpoint {
                report.checkpoints += 1;
                if stored != running {
                    report.mismatch(
                        omitted,
                        format!("{name}: checkpoint at entry {entry_no} says {stored}, the entries sum to {running}"),
                    );
                }
            }
        }
    }
    let orphans = sqlx::query(
        "SELECT c.entry_no FROM ledger_checkpoints c WHERE c.account_id = $1 AND NOT EXISTS \
         (SELECT 1 FROM ledger_entries e WHERE e.account_id = c.account_id AND e.entry_no = c.entry_no) \
         ORDER BY c.entry_no LIMIT $2",
    )
    .bind(account.id.as_str())
    .bind(ENTRY_PAGE)
    .persistent(false)
    .fetch_all(store.pool())
    .await?;
    for row in &orphans {
        let entry_no: i64 = row.try_get("entry_no")?;
        report.checkpoints += 1;
        report.mismatch(omitted, format!("{name}: checkpoint at entry {entry_no} has no entry"));
    }
    Ok(())
}

use std::sync::Arc;
use std::time::Duration;

use gpuaas_events::catalog::dead_letter_subject;
use gpuaas_events::{EventBus, EventEnvelope};
use gpuaas_kernel::{Timestamp, new_id};
use gpuaas_store::Store;
use gpuaas_store::sqlx::{self, Row};
use rand::Rng;

use crate::OutboxError;

/// Relay knobs, read from policy by the caller on every pass.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub batch_size: i64,
    pub lease: Duration,
    pub max_attempts: i64,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayReport {
    pub claimed: usize,
    pub published: usize,
    pub failed_attempts: usize,
    pub dead_lettered: usize,
    pub dead_letters_forwarded: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: i64,
    pub failed: i64,
}

struct Claimed {
    seq: i64,
    event_id: String,
    subject: String,
    envelope: String,
    attempts: i64,
}

pub struct Relay {
    store: Store,
    bus: Arc<dyn EventBus>,
    /// Fences this relay's updates: a row whose lease passed to another relay is no
    /// longer ours to mark.
    owner: String,
}

impl Relay {
    pub fn new(store: Store, bus: Arc<dyn EventBus>) -> Self {
        Self { store, bus, owner: new_id().to_string() }
    }

    /// One pass: claim a batch, publish it in order, record the outcomes, then forward
    /// any dead letters not yet on the bus. Tests call this instead of sleeping. The
    /// rows published are marked with one statement per pass (and before a failure is
    /// recorded), not one each: a relay keeping up with 1,000 allocations a second
    /// would otherwise spend some 4,000 round trips a second on its marks. Delivery is
    /// at least once either way: a relay that stops between publishing and marking
    /// leaves the rows to be published again once their lease runs out.
    pub async fn run_once(&self, settings: &RelaySettings) -> Result<RelayReport, OutboxError> {
        let mut report = RelayReport::default();
        let claimed = self.claim(settings).await?;
        report.claimed = claimed.len();
        let mut published: Vec<i64> = Vec::with_capacity(claimed.len());
        let mut rows = claimed.into_iter();
        while let Some(row) = rows.next() {
            let publish = match EventEnvelope::from_json(row.envelope.as_bytes()) {
                Ok(event) => self.bus.publish(&event).await.map_err(|e| e.to_string()),
                Err(error) => Err(format!("stored envelope does not decode: {error}")),
            };
            match publish {
                Ok(()) => published.push(row.seq),
                Err(error) => {
                    report.published += self.mark_published(&std::mem::take(&mut published)).await?;
                    metrics::counter!("outbox_publish_failures_total", "bus" => self.bus.name()).increment(1);
                    report.failed_attempts += 1;
                    if self.record_failure(&row, &error, settings).await? {
                        metrics::counter!("outbox_dead_lettered_total").increment(1);
                        report.dead_lettered += 1;
                    }
                    // The bus is most likely down: hand the rest of the batch back
                    // untouched instead of spending an attempt on each of them.
                    let rest: Vec<i64> = rows.by_ref().map(|row| row.seq).collect();
                    self.release(&rest).await?;
                    break;
                }
            }
        }
        report.published += self.mark_published(&published).await?;
        report.dead_letters_forwarded = self.forward_dead_letters(settings).await?;
        Ok(report)
    }

    pub async fn counts(&self) -> Result<OutboxCounts, OutboxError> {
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
               COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS failed \
             FROM outbox_events WHERE status <> 'published'",
        )
        .fetch_one(self.store.pool())
        .await?;
        Ok(OutboxCounts { pending: row.try_get("pending")?, failed: row.try_get("failed")? })
    }

    async fn claim(&self, settings: &RelaySettings) -> Result<Vec<Claimed>, OutboxError> {
        let now = Timestamp::now();
        let lease_until = now.saturating_add(settings.lease);
        let sql = format!(
            "UPDATE outbox_events SET lease_owner = $1, lease_until = $2 \
             WHERE seq IN (SELECT seq FROM outbox_events \
                 WHERE status = 'pending' AND next_attempt_at <= $3 \
                   AND (lease_until IS NULL OR lease_until < $3) \
                 ORDER BY seq LIMIT $4{}) \
             RETURNING seq, event_id, subject, envelope, attempts",
            self.store.dialect().skip_locked()
        );
        let mut tx = self.store.begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&self.owner)
            .bind(lease_until.as_micros())
            .bind(now.as_micros())
            .bind(settings.batch_size.max(1))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut claimed = rows
            .into_iter()
            .map(|row| {
                Ok(Claimed {
                    seq: row.try_get("seq")?,
                    event_id: row.try_get("event_id")?,
                    subject: row.try_get("subject")?,
                    envelope: row.try_get("envelope")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        claimed.sort_by_key(|row| row.seq);
        Ok(claimed)
    }

    /// Hands claimed rows back without spending an attempt.
    async fn release(&self, seqs: &[i64]) -> Result<(), OutboxError> {
        self.update_claimed(seqs, "lease_owner = NULL, lease_until = NULL", None).await?;
        Ok(())
    }

    /// Marks claimed rows published; returns how many were published.
    async fn mark_published(&self, seqs: &[i64]) -> Result<usize, OutboxError> {
        self.update_claimed(
            seqs,
            "status = 'published', published_at = $2, lease_owner = NULL, lease_until = NULL, \
             attempts = attempts + 1, last_error = NULL",
            Some(Timestamp::now()),
        )
        .await?;
        metrics::counter!("outbox_published_total", "bus" => self.bus.name()).increment(seqs.len() as u64);
        Ok(seqs.len())
    }

    /// Applies `assignments` to the rows of `seqs` this relay still holds (`$1` is the
    /// owner, `$2` the time when given), a statement per list of up to
    /// [`gpuaas_store::LIST_PADDING_MOST`] rows.
    async fn update_claimed(&self, seqs: &[i64], assignments: &str, now: Option<Timestamp>) -> Result<(), OutboxError> {
        let first = if now.is_some() { 3 } else { 2 };
        for chunk in seqs.chunks(gpuaas_store::LIST_PADDING_MOST) {
            let batch = gpuaas_store::Padded::new(chunk, gpuaas_store::LIST_PADDING_MOST);
            let sql = format!(
                "UPDATE outbox_events SET {assignments} WHERE lease_owner = $1 AND seq IN ({})",
                batch.placeholders(first)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&self.owner);
            if let Some(now) = now {
                query = query.bind(now.as_micros());
            }
            for (seq, _) in batch.rows() {
                query = query.bind(*seq);
            }
            query.execute(self.store.pool()).await?;
        }
        Ok(())
    }

    /// Records a failed attempt; returns true when it was the last one allowed and the
    /// row went to the dead-letter queue.
    async fn record_failure(&self, row: &Claimed, error: &str, settings: &RelaySettings) -> Result<bool, OutboxError> {
        let attempts = row.attempts + 1;
        let now = Timestamp::now();
        let error = truncate(error, 1000);
        let mut tx = self.store.begin().await?;
        let exhausted = attempts >= settings.max_attempts;
        if exhausted {
            let updated = sqlx::query(
                "UPDATE outbox_events SET status = 'failed', attempts = $1, last_error = $2, \
                 lease_owner = NULL, lease_until = NULL WHERE seq = $3 AND lease_owner = $4",
            )
            .bind(attempts)
            .bind(&error)
            .bind(row.seq)
            .bind(&self.owner)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 1 {
                let original: serde_json::Value =
                    serde_json::from_str(&row.envelope).unwrap_or(serde_json::Value::String(row.envelope.clone()));
                let correlation_id =
                    original.get("correlation_id").and_then(|c| c.as_str()).unwrap_or_default().to_owned();
                let dead_letter = EventEnvelope::new(
                    dead_letter_subject(&row.subject),
                    1,
                    correlation_id,
                    serde_json::json!({"event": original, "reason": error, "attempts": attempts}),
                );
                let dead_letter_text = dead_letter.to_json().map_err(|e| OutboxError::InvalidEvent(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO outbox_dead_letters \
                     (event_id, subject, dead_letter_envelope, reason, attempts, failed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(&row.event_id)
                .bind(&row.subject)
                .bind(dead_letter_text)
                .bind(&error)
                .bind(attempts)
                .bind(now.as_micros())
                .execute(&mut *tx)
                .await?;
                tracing::error!(event_id = %row.event_id, subject = %row.subject, attempts, %error,
                    "outbox event dead-lettered");
            }
        } else {
            let delay = backoff(attempts, settings);
            sqlx::query(
                "UPDATE outbox_events SET attempts = $1, last_error = $2, next_attempt_at = $3, \
                 lease_owner = NULL, lease_until = NULL WHERE seq = $4 AND lease_owner = $5",
            )
            .bind(attempts)
            .bind(&error)
            .bind(now.saturating_add(delay).as_micros())
            .bind(row.seq)
            .bind(&self.owner)
            .execute(&mut *tx)
            .await?;
            tracing::warn!(event_id = %row.event_id, subject = %row.subject, attempts, %error,
                retry_in_ms = delay.as_millis() as u64, "outbox publish failed; will retry");
        }
        tx.commit().await?;
        Ok(exhausted)
    }

    async fn forward_dead_letters(&self, settings: &RelaySettings) -> Result<usize, OutboxError> {
        let rows = sqlx::query(
            "SELECT event_id, dead_letter_envelope FROM outbox_dead_letters \
             WHERE forwarded_at IS NULL ORDER BY failed_at LIMIT $1",
        )
        .bind(settings.batch_size.max(1))
        .fetch_all(self.store.pool())
        .await?;
        let mut forwarded = 0;
        for row in rows {
            let event_id: String = row.try_get("event_id")?;
            let text: String = row.try_get("dead_letter_envelope")?;
            let Ok(envelope) = EventEnvelope::from_json(text.as_bytes()) else {
                continue;
            };
            if self.bus.publish(&envelope).await.is_err() {
                // The bus is still down; the row stays and the next pass tries again.
                break;
            }
            sqlx::query("UPDATE outbox_dead_letters SET forwarded_at = $1 WHERE event_id = $2")
                .bind(Timestamp::now().as_micros())
                .bind(event_id)
                .execute(self.store.pool())
                .await?;
            forwarded += 1;
        }
        Ok(forwarded)
    }
}

/// Exponential backoff from `retry_base`, capped at `retry_max`, plus up to 25% jitter so
/// many rows failing together do not retry in lockstep.
fn backoff(attempts: i64, settings: &RelaySettings) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let base = settings.retry_base.saturating_mul(2u32.saturating_pow(exponent)).min(settings.retry_max);
    let jitter_cap = u64::try_from(base.as_millis() / 4).unwrap_or(u64::MAX);
    let jitter = if jitter_cap == 0 { 0 } else { rand::rng().random_range(0..=jitter_cap) };
    base + Duration::from_millis(jitter)
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let settings = RelaySettings {
            batch_size: 10,
            lease: Duration::from_secs(30),
            max_attempts: 10,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
        };
        let first = backoff(1, &settings);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        let third = backoff(3, &settings);
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(500));
        let late = backoff(40, &settings);
        assert!(late >= Duration::from_millis(1000) && late <= Duration::from_millis(1250));
    }
}

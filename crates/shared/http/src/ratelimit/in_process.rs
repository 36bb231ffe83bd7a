//! Buckets in this process's memory, for a single `gpuaas up` process.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::bucket;
use super::{BucketLimit, Decision, RateLimitError, RateLimiter};

/// Buckets kept before the map is cleaned on insert.
const DEFAULT_MAX_KEYS: usize = 100_000;
/// How often full buckets are dropped even when the map is below its cap.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

struct Bucket {
    level: u64,
    updated: Instant,
    /// The limit of the last check, to tell whether the bucket has refilled while idle.
    limit: BucketLimit,
}

impl Bucket {
    fn level_at(&self, now: Instant) -> u64 {
        bucket::refill(self.limit, self.level, micros(now.saturating_duration_since(self.updated)))
    }

    /// A full bucket is indistinguishable from a missing one, so dropping it loses nothing.
    fn is_full_at(&self, now: Instant) -> bool {
        self.level_at(now) >= bucket::capacity(self.limit)
    }
}

struct Buckets {
    map: HashMap<String, Bucket>,
    last_sweep: Instant,
}

/// Token buckets in a `Mutex<HashMap>`. Memory stays bounded: full buckets are dropped
/// every minute, and at `max_keys` the least recently used buckets go too (which can
/// only forgive a caller some debt, never refuse one).
pub struct InProcessLimiter {
    max_keys: usize,
    buckets: Mutex<Buckets>,
}

impl Default for InProcessLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessLimiter {
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// Keeps at most `max_keys` buckets (at least one).
    pub fn with_max_keys(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        Self { max_keys, buckets: Mutex::new(Buckets { map: HashMap::new(), last_sweep: Instant::now() }) }
    }

    /// Buckets held right now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        // Every update leaves the map consistent, so a panic elsewhere does not spoil it.
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self, key: &str, limit: BucketLimit, now: Instant) -> Decision {
        let mut buckets = self.lock();
        if now.saturating_duration_since(buckets.last_sweep) >= SWEEP_INTERVAL {
            buckets.map.retain(|_, bucket| !bucket.is_full_at(now));
            buckets.last_sweep = now;
        }
        if !buckets.map.contains_key(key) && buckets.map.len() >= self.max_keys {
            self.make_room(&mut buckets.map, now);
        }
        // The current limit applies: a lowered burst caps a fuller bucket at once.
        let (allowed, level) = match buckets.map.get_mut(key) {
            Some(existing) => {
                let elapsed = micros(now.saturating_duration_since(existing.updated));
                let (allowed, level) = bucket::take(bucket::refill(limit, existing.level, elapsed));
                // `now` was read before the lock; a racing check may already have a later one.
                *existing = Bucket { level, updated: existing.updated.max(now), limit };
                (allowed, level)
            }
            None => {
                let (allowed, level) = bucket::take(bucket::capacity(limit));
                buckets.map.insert(key.to_owned(), Bucket { level, updated: now, limit });
                (allowed, level)
            }
        };
        bucket::decision(limit, allowed, level)
    }

    /// Drops full buckets; if that is not enough, the least recently used ones down to
    /// 90 % of the cap, so a flood of new keys does not sort the map on every request.
    fn make_room(&self, map: &mut HashMap<String, Bucket>, now: Instant) {
        map.retain(|_, bucket| !bucket.is_full_at(now));
        if map.len() < self.max_keys {
            return;
        }
        let keep = self.max_keys - self.max_keys.div_ceil(10);
        let mut by_age: Vec<(Instant, String)> = map.iter().map(|(key, b)| (b.updated, key.clone())).collect();
        by_age.sort_unstable();
        let excess = map.len().saturating_sub(keep);
        for (_, key) in by_age.into_iter().take(excess) {
            map.remove(&key);
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[async_trait]
impl RateLimiter for InProcessLimiter {
    async fn check(&self, key: &str, limit: BucketLimit) -> Result<Decision, RateLimitError> {
        Ok(self.take(key, limit, Instant::now()))
    }

    fn backend(&self) -> &'static str {
        "in_process"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: BucketLimit = BucketLimit { burst: 3, per_minute: 60 };

    #[test]
    fn refills_with_time() {
        let limiter = InProcessLimiter::new();
        let start = Instant::now();
        let allowed: Vec<bool> = (0..4).map(|_| limiter.take("k", LIMIT, start).allowed).collect();
        assert_eq!(allowed, [true, true, true, false]);
        let refused = limiter.take("k", LIMIT, start);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(refused.reset_after, Duration::from_secs(3));
        let later = limiter.take("k", LIMIT, start + Duration::from_secs(1));
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
        let much_later = limiter.take("k", LIMIT, start + Duration::from_secs(60));
        assert_eq!((much_later.allowed, much_later.remaining), (true, 2), "refill stops at burst");
    }

    #[test]
    fn a_lowered_burst_applies_at_once() {
        let limiter = InProcessLimiter::new();
        let now = Instant::now();
        assert_eq!(limiter.take("k", BucketLimit { burst: 100, per_minute: 0 }, now).remaining, 99);
        let lowered = limiter.take("k", BucketLimit { burst: 2, per_minute: 0 }, now);
        assert_eq!((lowered.allowed, lowered.limit, lowered.remaining), (true, 2, 1));
    }

    #[test]
    fn full_buckets_are_swept_and_the_map_is_capped() {
        let limiter = InProcessLimiter::with_max_keys(10);
        let start = Instant::now();
        for i in 0..10 {
            limiter.take(&format!("idle-{i}"), LIMIT, start);
        }
        assert_eq!(limiter.len(), 10);
        // Five seconds on, the idle buckets are full again: a new key evicts them all.
        assert!(limiter.take("new", LIMIT, start + Duration::from_secs(5)).allowed);
        assert_eq!(limiter.len(), 1);

        // Buckets that are still draining: the oldest go, the cap holds.
        let busy = BucketLimit { burst: 1, per_minute: 0 };
        for i in 0..100 {
            limiter.take(&format!("busy-{i}"), busy, start + Duration::from_millis(5_000 + i));
            assert!(limiter.len() <= 10);
        }
        assert!(!limiter.take("busy-99", busy, start + Duration::from_secs(6)).allowed, "newest kept");

        // The periodic sweep drops full buckets even below the cap.
        let limiter = InProcessLimiter::new();
        let created = Instant::now();
        limiter.take("a", LIMIT, created);
        limiter.take("b", LIMIT, created + SWEEP_INTERVAL);
        assert_eq!(limiter.len(), 1);
    }
}

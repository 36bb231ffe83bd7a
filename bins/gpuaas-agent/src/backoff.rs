//! Retry pacing with jitter, so that a fleet that lost the control plane at the same
//! moment does not come back to it in lock-step.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A number in `[0, 1)`. Jitter needs spread, not secrecy; `RandomState` is seeded
/// from the OS and mixing in a counter and the clock separates successive calls.
pub fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` scaled by a random factor in `[1 - spread, 1 + spread)`.
pub fn jitter(base: Duration, spread: f64) -> Duration {
    let factor = 1.0 + spread * (2.0 * random_unit() - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// Exponential back-off: 1 s, 2 s, 4 s … capped at 30 s, each ±20 %, back to 1 s
/// after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    pub const SPREAD: f64 = 0.2;

    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, initial, max }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(base, Self::SPREAD)
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        let bases = [1, 2, 4, 8, 16, 30, 30, 30];
        for (delay, base) in delays.iter().zip(bases) {
            let base = Duration::from_secs(base);
            assert!(*delay >= base.mul_f64(0.8) && *delay <= base.mul_f64(1.2), "{delay:?} vs {base:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn jitter_spreads() {
        let samples: Vec<Duration> = (0..64).map(|_| jitter(Duration::from_secs(15), 0.1)).collect();
        assert!(samples.iter().all(|d| *d >= Duration::from_millis(13_500) && *d <= Duration::from_millis(16_500)));
        assert!(samples.iter().any(|d| *d != samples[0]));
    }
}

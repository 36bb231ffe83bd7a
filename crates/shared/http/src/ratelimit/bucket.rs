//! Token-bucket arithmetic, shared by both adapters so they answer alike.
//!
//! The level is kept in integer units: one token is [`UNITS_PER_TOKEN`] units and a bucket
//! gains `per_minute` units per microsecond. That makes refill exact (no float drift that
//! could let one request too many through) and is the same arithmetic the Redis Lua
//! script does with its integer-valued doubles.

use std::time::Duration;

use super::{BucketLimit, Decision};

/// Microseconds per minute: a bucket refilling `per_minute` tokens a minute gains
/// `per_minute` units per microsecond when a token is this many units.
pub(crate) const UNITS_PER_TOKEN: u64 = 60_000_000;

/// Longest wait ever reported. A bucket that never refills (`per_minute` = 0) would
/// otherwise report an infinite wait; idle buckets are forgotten long before this anyway.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The level of a full bucket.
pub(crate) fn capacity(limit: BucketLimit) -> u64 {
    u64::from(limit.burst) * UNITS_PER_TOKEN
}

/// The level of a bucket that held `level` units `elapsed_micros` ago.
pub(crate) fn refill(limit: BucketLimit, level: u64, elapsed_micros: u64) -> u64 {
    let gained = elapsed_micros.saturating_mul(u64::from(limit.per_minute));
    // A lowered burst takes effect at once, even on a bucket that was fuller.
    level.saturating_add(gained).min(capacity(limit))
}

/// Takes one token when the bucket holds one: `(allowed, level after)`.
pub(crate) fn take(level: u64) -> (bool, u64) {
    if level >= UNITS_PER_TOKEN { (true, level - UNITS_PER_TOKEN) } else { (false, level) }
}

/// What the caller is told, given the level right after the check.
pub(crate) fn decision(limit: BucketLimit, allowed: bool, level: u64) -> Decision {
    let level = level.min(capacity(limit));
    let remaining = u32::try_from(level / UNITS_PER_TOKEN).unwrap_or(limit.burst);
    let reset_after = wait(limit, capacity(limit) - level);
    let retry_after = if allowed {
        None
    } else if limit.burst == 0 {
        // An empty bucket that can never hold a token: nothing to wait for.
        Some(MAX_WAIT)
    } else {
        Some(wait(limit, UNITS_PER_TOKEN.saturating_sub(level)))
    };
    Decision { allowed, limit: limit.burst, remaining, reset_after, retry_after }
}

/// Time until the bucket has gained `missing` units.
fn wait(limit: BucketLimit, missing: u64) -> Duration {
    if missing == 0 {
        return Duration::ZERO;
    }
    if limit.per_minute == 0 {
        return MAX_WAIT;
    }
    Duration::from_micros(missing.div_ceil(u64::from(limit.per_minute))).min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Replays requests at the given offsets (µs after the first) on one bucket that
    /// starts full, returning how many were allowed.
    fn replay(limit: BucketLimit, offsets: &[u64]) -> u64 {
        let mut level = capacity(limit);
        let mut last = 0;
        let mut allowed = 0;
        for &at in offsets {
            level = refill(limit, level, at - last);
            last = at;
            let (ok, after) = take(level);
            level = after;
            allowed += u64::from(ok);
        }
        allowed
    }

    fn limits() -> impl Strategy<Value = BucketLimit> {
        (0_u32..200, 0_u32..100_000).prop_map(|(burst, per_minute)| BucketLimit { burst, per_minute })
    }

    proptest! {
        #[test]
        fn never_allows_more_than_burst_plus_refill(
            limit in limits(),
            mut offsets in prop::collection::vec(0_u64..120_000_000, 1..300),
        ) {
            offsets.sort_unstable();
            let allowed = replay(limit, &offsets);
            let elapsed = offsets.last().copied().unwrap_or(0) - offsets.first().copied().unwrap_or(0);
            // allowed <= burst + per_minute * elapsed / 60 s, multiplied out to stay exact.
            let bound = u128::from(limit.burst) * u128::from(UNITS_PER_TOKEN)
                + u128::from(limit.per_minute) * u128::from(elapsed);
            prop_assert!(u128::from(allowed) * u128::from(UNITS_PER_TOKEN) <= bound,
                "{allowed} allowed in {elapsed} µs under {limit:?}");
        }

        #[test]
        fn a_full_bucket_allows_exactly_burst_at_once(limit in limits(), extra in 1_usize..50) {
            let offsets = vec![0_u64; limit.burst as usize + extra];
            prop_assert_eq!(replay(limit, &offsets), u64::from(limit.burst));
        }

        #[test]
        fn decisions_are_consistent(limit in limits(), level in 0_u64..u64::MAX) {
            let (allowed, after) = take(level.min(capacity(limit)));
            let decision = decision(limit, allowed, after);
            prop_assert!(decision.remaining <= decision.limit);
            prop_assert_eq!(decision.allowed, decision.retry_after.is_none());
            if let Some(retry) = decision.retry_after {
                prop_assert!(retry > Duration::ZERO && retry <= MAX_WAIT);
            }
            prop_assert!(decision.reset_after <= MAX_WAIT);
        }
    }

    #[test]
    fn refill_is_per_minute_over_sixty_seconds() {
        let limit = BucketLimit { burst: 10, per_minute: 60 };
        // Empty bucket, one second later: exactly one token.
        assert_eq!(refill(limit, 0, 1_000_000), UNITS_PER_TOKEN);
        assert_eq!(refill(limit, 0, 999_999) / UNITS_PER_TOKEN, 0);
        // Never above burst.
        assert_eq!(refill(limit, 0, u64::MAX), capacity(limit));
    }

    #[test]
    fn waits_are_reported_for_the_missing_units() {
        let limit = BucketLimit { burst: 2, per_minute: 60 };
        let refused = decision(limit, false, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(refused.reset_after, Duration::from_secs(2));
        assert_eq!(refused.remaining, 0);
        let full = decision(limit, true, capacity(limit));
        assert_eq!((full.remaining, full.reset_after, full.retry_after), (2, Duration::ZERO, None));
        let frozen = decision(BucketLimit { burst: 2, per_minute: 0 }, false, 0);
        assert_eq!(frozen.retry_after, Some(MAX_WAIT));
    }
}

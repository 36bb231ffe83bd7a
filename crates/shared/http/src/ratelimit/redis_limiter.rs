//! Buckets in Redis, shared by every `gpuaas serve` process.
//!
//! One Lua script reads, refills, takes and writes a bucket atomically, using the Redis
//! server's clock so that processes with skewed clocks still agree. Each bucket key
//! expires once it would be full again, so idle callers cost no memory. Every call is
//! bounded by a short timeout, and after a failure Redis is not asked again for a short
//! cool-down, so an outage costs requests at most one timeout, not one each.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::bucket::{self, MAX_WAIT, UNITS_PER_TOKEN};
use super::{BucketLimit, Decision, RateLimitError, RateLimiter};

/// Prefix of every bucket key in Redis.
pub const KEY_PREFIX: &str = "gpuaas:ratelimit:";

/// Longest a request waits for Redis before it is let through unlimited.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, checks fail at once for this long instead of each waiting for Redis.
const COOL_DOWN: Duration = Duration::from_millis(500);
/// How long `connect` may take, reconnect attempts included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle buckets expire this long after they would be full again (never later than
/// `MAX_WAIT` plus this); the margin only guards against rounding.
const EXPIRY_MARGIN_MS: u64 = 1_000;

/// KEYS[1]: bucket; ARGV: burst, per_minute, units per token, max TTL in ms.
/// Returns `{allowed (0/1), level after}`. Levels are integers below 2^53, so Lua's
/// doubles hold them exactly; they are written with `%.0f` because `tostring` would
/// round them to 14 digits.
const SCRIPT: &str = r"
local burst = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
local unit = tonumber(ARGV[3])
local max_ttl = tonumber(ARGV[4])
local capacity = burst * unit
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1])
local at = tonumber(state[2])
if level == nil or at == nil then
  level = capacity
  at = now
elseif now > at then
  level = level + (now - at) * per_minute
  at = now
end
if level > capacity then
  level = capacity
end
local allowed = 0
if level >= unit then
  level = level - unit
  allowed = 1
end
local ttl = max_ttl
if per_minute > 0 then
  ttl = math.min(max_ttl, math.ceil((capacity - level) / per_minute / 1000) + 1000)
end
redis.call('HSET', KEYS[1], 'level', string.format('%.0f', level), 'at', string.format('%.0f', at))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl))
return {allowed, level}
";

/// Token buckets in Redis through a self-reconnecting [`ConnectionManager`].
pub struct RedisLimiter {
    connection: ConnectionManager,
    script: redis::Script,
    /// When the last failure happened; checks fail fast until [`COOL_DOWN`] has passed.
    failed_at: Mutex<Option<Instant>>,
}

impl RedisLimiter {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`); fails when Redis
    /// cannot be reached within a few seconds.
    pub async fn connect(url: &str) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            // Reconnects keep trying in the background; a short cap on the back-off means
            // limiting resumes soon after Redis is back.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| RateLimitError::Timeout(CONNECT_TIMEOUT))??;
        Ok(Self { connection, script: redis::Script::new(SCRIPT), failed_at: Mutex::new(None) })
    }

    /// The Redis key of bucket `key`.
    pub fn redis_key(key: &str) -> String {
        format!("{KEY_PREFIX}{key}")
    }

    fn cooling_down(&self) -> bool {
        let failed_at = self.failed_at.lock().unwrap_or_else(PoisonError::into_inner);
        failed_at.is_some_and(|at| at.elapsed() < COOL_DOWN)
    }

    fn record(&self, failed: bool) {
        let mut failed_at = self.failed_at.lock().unwrap_or_else(PoisonError::into_inner);
        *failed_at = if failed { Some(Instant::now()) } else { None };
    }

    async fn invoke(&self, key: &str, limit: BucketLimit) -> Result<(i64, i64), RateLimitError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(Self::redis_key(key));
        invocation
            .arg(limit.burst)
            .arg(limit.per_minute)
            .arg(UNITS_PER_TOKEN)
            .arg(u64::try_from(MAX_WAIT.as_millis()).unwrap_or(u64::MAX) + EXPIRY_MARGIN_MS);
        // invoke_async sends EVALSHA and falls back to loading the script on NOSCRIPT
        // (a restarted or flushed Redis).
        match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut connection)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RateLimitError::Timeout(CALL_TIMEOUT)),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, key: &str, limit: BucketLimit) -> Result<Decision, RateLimitError> {
        if self.cooling_down() {
            return Err(RateLimitError::CoolingDown);
        }
        let result = self.invoke(key, limit).await;
        self.record(result.is_err());
        let (allowed, level) = result?;
        let level = u64::try_from(level).map_err(|_| RateLimitError::Protocol(format!("negative level {level}")))?;
        Ok(bucket::decision(limit, allowed == 1, level))
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

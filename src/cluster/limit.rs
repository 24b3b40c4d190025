//! Rate limits shared by every instance (`scope: cluster`): one atomic step in Redis per
//! request, a GCRA script that keeps the same `rate`/`burst` meaning as the in-process bucket.
//!
//! The bucket is stored as its theoretical arrival time (TAT, microseconds on Redis's clock, so
//! instances with skewed clocks agree): `burst - (TAT - now) / T` tokens are left, `T = 1/rate`.
//! A request is admitted when at least one token is left, and then moves TAT by `T`. The key
//! expires when the bucket would be full again. One key per script call, so it is valid on
//! Redis Cluster as it is.
//!
//! With `sync: D` the request path does not call Redis at all: the in-process bucket admits,
//! and every D a background round pushes what was admitted per key (`PUSH`, which moves TAT
//! unconditionally — the requests were already served) and reads back the shared level.
//! Both modes store the same TAT, so an exact and a synced instance can share a limit.

use super::redis::{Failure, Redis};
use crate::limit::Decision;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The start both scripts share: Redis's clock in microseconds (`now`), the step (`ARGV[1]`),
/// and the key's TAT, never in the past (`tat`). A line of Lua per variable, so the two
/// scripts read the stored state the same way.
macro_rules! tat_script {
    ($args:literal, $body:literal) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n",
            "local step = tonumber(ARGV[1])\n",
            $args,
            "local tat = tonumber(redis.call('GET', KEYS[1]) or now)\n",
            "if tat < now then tat = now end\n",
            $body
        )
    };
}

static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(tat_script!(
        "local burst = tonumber(ARGV[2])\n",
        r#"
local over = tat - now - (burst - 1) * step
if over > 0 then
  return {0, math.floor(burst - (tat - now) / step), math.ceil(over), math.ceil(tat - now)}
end
tat = tat + step
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {1, math.floor(burst - (tat - now) / step), 0, math.ceil(tat - now)}
"#
    ))
});

static PUSH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(tat_script!(
        "local used = tonumber(ARGV[2])\n",
        r#"
if used > 0 then
  tat = tat + used * step
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
return math.ceil(tat - now)
"#
    ))
});

/// Keys longer than this are stored as their SHA-256 (hex), so a huge claim cannot make a huge
/// Redis key.
const MAX_RAW_KEY: usize = 128;

/// One limit's shared side.
#[derive(Debug)]
pub struct SharedLimit {
    pub redis: Arc<Redis>,
    /// `PREFIX` `rl:` `NAME` `:`.
    prefix: Vec<u8>,
    /// Microseconds per token.
    step_us: f64,
    burst: u32,
    /// `sync: D`: admit locally, share every D.
    pub sync: Option<Duration>,
    /// One background round loop per limit, however many reloads keep it.
    syncing: AtomicBool,
}

impl SharedLimit {
    pub fn new(
        redis: Arc<Redis>,
        key_prefix: &str,
        name: &str,
        (rate, burst): (f64, u32),
        sync: Option<Duration>,
    ) -> Self {
        SharedLimit {
            redis,
            prefix: format!("{key_prefix}rl:{name}:").into_bytes(),
            step_us: 1e6 / rate,
            burst,
            sync,
            syncing: AtomicBool::new(false),
        }
    }

    /// True for the first caller only: it runs the `sync:` rounds.
    pub fn claim_sync_loop(&self) -> bool {
        self.sync.is_some() && !self.syncing.swap(true, Ordering::AcqRel)
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        if key.len() <= MAX_RAW_KEY {
            k.extend_from_slice(key);
        } else {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
            k.extend_from_slice(b"sha256:");
            for b in d.as_ref() {
                k.extend_from_slice(format!("{b:02x}").as_bytes());
            }
        }
        k
    }

    /// `sync:`: add `used` requests to the shared bucket of `key`; the tokens left in it (below
    /// zero when the instances together spent more than was there).
    pub async fn push(&self, key: &[u8], used: u32) -> Result<f64, Failure> {
        let k = self.key(key);
        let step = self.step_us;
        let backlog: i64 = self
            .redis
            .call(|mut c| async move { PUSH.key(k).arg(step).arg(used).invoke_async(&mut c).await })
            .await?;
        Ok(f64::from(self.burst) - backlog as f64 / step)
    }

    /// Take one token for `key` from the shared bucket.
    pub async fn check(&self, key: &[u8]) -> Result<Decision, Failure> {
        let k = self.key(key);
        let (step, burst) = (self.step_us, self.burst);
        let r: Vec<i64> = self
            .redis
            .call(
                |mut c| async move { GCRA.key(k).arg(step).arg(burst).invoke_async(&mut c).await },
            )
            .await?;
        match r.as_slice() {
            [allowed, remaining, retry_us, reset_us] => Ok(Decision {
                allowed: *allowed == 1,
                remaining: (*remaining).max(0) as u32,
                retry_after: *retry_us as f64 / 1e6,
                reset: *reset_us as f64 / 1e6,
            }),
            _ => Err(Failure::Reply),
        }
    }
}

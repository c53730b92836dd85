//! Rate limits shared by many hosts: the same GCRA as the local buckets
//! (governor's), run as one Redis script per check (one round trip, atomic
//! on the server, Redis's own clock), so N hosts behind a load balancer
//! admit a limit's worth in total, not N times it. `Retry-After` comes from
//! the script. While Redis cannot be reached, checks follow
//! `rate_limit_on_store_error`: this host's own buckets (the default), deny,
//! or allow.
//!
//! A bucket's key names its scope and its quota, so a changed limit starts
//! a fresh bucket; keys expire once their bucket has refilled, so Redis
//! holds state only for clients that are being limited. The host keeps
//! nothing per client beyond its local fallback buckets, which are evicted
//! as before.

use super::Rejection;
use super::rate_limit::{ClientLimiter, Limiter};
use crate::manifest::{OnStoreError, RateLimitSpec};
use crate::shared::redis::SharedRedis;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// GCRA: KEYS[1] holds the theoretical arrival time (µs, Redis's clock);
/// ARGV[1] is the emission interval, ARGV[2] the tolerance (interval times
/// burst - 1), both µs. Returns {1, 0} when allowed, {0, wait_us} when not.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local interval = tonumber(ARGV[1])
        local tolerance = tonumber(ARGV[2])
        local time = redis.call('TIME')
        local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
        local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
        if tat < now then tat = now end
        local wait = tat - now - tolerance
        if wait > 0 then return {0, wait} end
        local next_tat = tat + interval
        redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
        return {1, 0}
        ",
    )
});

/// The shared store and what to do when it is away.
pub struct SharedBuckets {
    redis: Arc<SharedRedis>,
    on_error: OnStoreError,
}

impl SharedBuckets {
    /// Buckets in `redis`, falling back as `on_error` says.
    pub fn new(redis: Arc<SharedRedis>, on_error: OnStoreError) -> Arc<Self> {
        Arc::new(Self { redis, on_error })
    }
}

/// One quota in the shared store.
struct SharedQuota {
    buckets: Arc<SharedBuckets>,
    key: String,
    interval_us: u64,
    tolerance_us: u64,
    scope: &'static str,
}

impl SharedQuota {
    fn new(buckets: &Arc<SharedBuckets>, spec: &RateLimitSpec, scope: &'static str, name: &str) -> Self {
        // Redis's Lua numbers are doubles: keep both where they are exact.
        const EXACT_IN_LUA: u64 = 1 << 52;
        let interval_us = u64::try_from((spec.window.as_micros() / u128::from(spec.requests)).max(1))
            .unwrap_or(EXACT_IN_LUA)
            .min(EXACT_IN_LUA);
        let tolerance_us =
            interval_us.saturating_mul(u64::from(spec.burst.saturating_sub(1))).min(EXACT_IN_LUA);
        let key =
            format!("wharf:rl:{scope}:{name}:{}/{}us/{}", spec.requests, spec.window.as_micros(), spec.burst);
        Self { buckets: buckets.clone(), key, interval_us, tolerance_us, scope }
    }

    /// The store's verdict for the bucket `key_suffix` names, or `None` if
    /// the store could not be asked.
    async fn check(&self, key_suffix: &str) -> Option<Result<(), Rejection>> {
        let key = if key_suffix.is_empty() { self.key.clone() } else { format!("{}:{key_suffix}", self.key) };
        let (interval, tolerance) = (self.interval_us, self.tolerance_us);
        let verdict = self
            .buckets
            .redis
            .run(|mut connection| async move {
                GCRA.key(key).arg(interval).arg(tolerance).invoke_async::<(u8, u64)>(&mut connection).await
            })
            .await
            .ok()?;
        Some(match verdict {
            (1, _) => Ok(()),
            (_, wait_us) => {
                Err(Rejection::RateLimited { scope: self.scope, retry_after: Duration::from_micros(wait_us) })
            }
        })
    }

    fn fallback(&self, local: impl FnOnce() -> Result<(), Rejection>) -> Result<(), Rejection> {
        match self.buckets.on_error {
            OnStoreError::Local => local(),
            OnStoreError::Allow => Ok(()),
            OnStoreError::Deny => {
                Err(Rejection::RateLimited { scope: self.scope, retry_after: Duration::from_secs(1) })
            }
        }
    }
}

/// A bucket shared by every request it covers (the server's, a route's):
/// in Redis when the buckets are shared, else (or as the fallback) local.
pub struct Bucket {
    local: Limiter,
    shared: Option<SharedQuota>,
}

impl Bucket {
    /// A bucket for `spec` named `name` within `scope`.
    pub fn new(
        spec: &RateLimitSpec,
        scope: &'static str,
        name: &str,
        shared: Option<&Arc<SharedBuckets>>,
    ) -> Self {
        Self {
            local: Limiter::new(spec, scope),
            shared: shared.map(|b| SharedQuota::new(b, spec, scope, name)),
        }
    }

    /// Takes a token, or says how long until one is free.
    pub async fn check(&self) -> Result<(), Rejection> {
        match &self.shared {
            None => self.local.check(),
            Some(shared) => match shared.check("").await {
                Some(verdict) => verdict,
                None => shared.fallback(|| self.local.check()),
            },
        }
    }
}

/// A bucket per client address, shared or local like [`Bucket`].
pub struct ClientBuckets {
    /// The local buckets (the fallback when shared).
    pub local: Arc<ClientLimiter>,
    shared: Option<SharedQuota>,
}

impl ClientBuckets {
    /// Buckets for `spec`.
    pub fn new(spec: &RateLimitSpec, local: Arc<ClientLimiter>, shared: Option<&Arc<SharedBuckets>>) -> Self {
        Self { local, shared: shared.map(|b| SharedQuota::new(b, spec, "client", "")) }
    }

    /// Takes a token for `client`, or says how long until one is free.
    pub async fn check(&self, client: IpAddr) -> Result<(), Rejection> {
        match &self.shared {
            None => self.local.check(client),
            Some(shared) => match shared.check(&client.to_string()).await {
                Some(verdict) => verdict,
                None => shared.fallback(|| self.local.check(client)),
            },
        }
    }
}

//! Token buckets (governor's GCRA): one shared by every request it covers
//! (the server's, a route's), and one per client address whose memory stays
//! bounded.

use super::Rejection;
use crate::manifest::RateLimitSpec;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

fn quota(spec: &RateLimitSpec) -> Quota {
    let period = spec.window / spec.requests;
    let burst = NonZeroU32::new(spec.burst).expect("validated: burst >= 1");
    Quota::with_period(period.max(Duration::from_nanos(1))).expect("non-zero period").allow_burst(burst)
}

/// One token bucket shared by every request it covers.
pub struct Limiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    scope: &'static str,
}

impl Limiter {
    /// A bucket for `spec`, reporting rejections as `scope`.
    pub fn new(spec: &RateLimitSpec, scope: &'static str) -> Self {
        let clock = DefaultClock::default();
        Self { limiter: RateLimiter::direct_with_clock(quota(spec), clock.clone()), clock, scope }
    }
}

impl<C: Clock> Limiter<C> {
    /// Takes a token, or says how long until one is free.
    pub fn check(&self) -> Result<(), Rejection> {
        self.limiter.check().map_err(|not_until| Rejection::RateLimited {
            scope: self.scope,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}

/// A token bucket per client address, whose memory stays bounded: keys
/// whose bucket has refilled are evicted by [`ClientLimiter::evict_idle`].
pub struct ClientLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl ClientLimiter {
    /// A limiter giving each client address the quota `spec`.
    pub fn new(spec: &RateLimitSpec) -> Self {
        Self::with_clock(spec, DefaultClock::default())
    }
}

impl<C: Clock + Clone> ClientLimiter<C> {
    /// Like [`ClientLimiter::new`] with a given clock (tests use a fake one).
    pub fn with_clock(spec: &RateLimitSpec, clock: C) -> Self {
        Self { limiter: RateLimiter::dashmap_with_clock(quota(spec), clock.clone()), clock }
    }

    /// Takes a token for `client`, or says how long until one is free.
    pub fn check(&self, client: IpAddr) -> Result<(), Rejection> {
        self.limiter.check_key(&client).map_err(|not_until| Rejection::RateLimited {
            scope: "client",
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Forgets clients whose bucket is full again (they are
    /// indistinguishable from new ones) and frees the memory.
    pub fn evict_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Client addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn per_minute(requests: u32) -> RateLimitSpec {
        RateLimitSpec { requests, window: Duration::from_secs(60), burst: requests }
    }
    #[test]
    fn client_limiter_allows_the_quota_then_says_when_to_retry() {
        let clock = FakeRelativeClock::default();
        let limiter = ClientLimiter::with_clock(&per_minute(100), clock.clone());
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            limiter.check(client).unwrap();
        }
        let Err(Rejection::RateLimited { retry_after, .. }) = limiter.check(client) else { panic!() };
        assert_eq!(retry_after, Duration::from_millis(600), "one token every 60 s / 100");
        assert!(limiter.check("10.0.0.2".parse().unwrap()).is_ok(), "other clients are unaffected");
        clock.advance(Duration::from_millis(600));
        assert!(limiter.check(client).is_ok());
    }

    #[test]
    fn client_limiter_memory_stays_bounded_under_many_addresses() {
        let clock = FakeRelativeClock::default();
        let limiter = ClientLimiter::with_clock(&per_minute(100), clock.clone());
        for i in 0..100_000u32 {
            limiter.check(IpAddr::from(i.to_be_bytes())).unwrap();
        }
        assert_eq!(limiter.tracked(), 100_000);
        // Once every bucket has refilled, the keys carry no information.
        clock.advance(Duration::from_secs(60));
        limiter.evict_idle();
        assert_eq!(limiter.tracked(), 0);
    }
}

//! Admission control: every check a request passes before it may
//! instantiate, and the one status code each rejection gets.
//!
//! The order (see `service.rs`): request id, logging, the global token
//! bucket, the per-client limiter, routing, the route's own bucket, auth,
//! the request-size check, the server's concurrency limit, the route's
//! worker pool. The checks are plain functions over shared state rather
//! than tower layers: they share the request's record and route, and
//! tower's `RateLimit`/`ConcurrencyLimit` have exactly the traps we must
//! avoid (state per clone, permit freed when headers are sent).

use crate::manifest::{AuthSpec, RateLimitSpec, RouteSpec, WorkerPoolSpec};
use crate::response::{self, ResponseBody};
use anyhow::{Context, Result, bail};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was turned away before reaching its component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A token bucket is empty: the server's, the client's or the route's.
    #[error("rate limited ({scope})")]
    RateLimited {
        /// Which limiter: `global`, `client` or `route`.
        scope: &'static str,
        /// When a request would next be allowed.
        retry_after: Duration,
    },
    /// Missing or wrong bearer token.
    #[error("unauthorized")]
    Unauthorized,
    /// The server is serving `max_concurrent_requests` already.
    #[error("overloaded: max_concurrent_requests reached")]
    Overloaded,
    /// The route's workers are busy and its queue is full.
    #[error("overloaded: worker queue full")]
    QueueFull,
    /// The request body is larger than the route allows.
    #[error("request body over {limit} bytes")]
    BodyTooLarge {
        /// The route's limit, in bytes.
        limit: u64,
    },
}

impl Rejection {
    /// The status code; the one place rejections are mapped.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Overloaded | Self::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RateLimited { scope: "global", .. } => "rate_limited_global",
            Self::RateLimited { scope: "client", .. } => "rate_limited_client",
            Self::RateLimited { .. } => "rate_limited_route",
            Self::Unauthorized => "unauthorized",
            Self::Overloaded => "overloaded",
            Self::QueueFull => "queue_full",
            Self::BodyTooLarge { .. } => "body_too_large",
        }
    }

    /// The response the client gets.
    pub fn response(&self) -> http::Response<ResponseBody> {
        let status = self.status();
        match self {
            Self::Overloaded | Self::QueueFull => response::overloaded(1),
            Self::RateLimited { retry_after, .. } => {
                let mut response = response::plain(status, "Too Many Requests: slow down and retry later");
                let wait = HeaderValue::from(retry_after_secs(*retry_after));
                response.headers_mut().insert(header::RETRY_AFTER, wait);
                response
            }
            Self::Unauthorized => {
                let mut response = response::plain(status, "Unauthorized: a valid bearer token is required");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Self::BodyTooLarge { .. } => {
                let mut response = response::plain(status, "Payload Too Large");
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

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

/// The client address of a request: the socket peer, or the right-most
/// address in the trusted proxy header when one is configured.
pub fn client_addr(headers: &HeaderMap, peer: IpAddr, trusted_header: Option<&http::HeaderName>) -> IpAddr {
    let Some(name) = trusted_header else { return peer };
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .next_back()
        .unwrap_or(peer)
}

/// At most `workers` instances of a route at once, at most `queue` more
/// waiting in arrival order (tokio's semaphore is fair). A waiting request
/// whose client leaves drops its future and so its place in the queue.
pub struct WorkerPool {
    permits: Arc<Semaphore>,
    queue_limit: usize,
    queued: AtomicUsize,
    spec: WorkerPoolSpec,
}

impl WorkerPool {
    /// A pool for `spec`.
    pub fn new(spec: WorkerPoolSpec) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(spec.workers)),
            queue_limit: spec.queue,
            queued: AtomicUsize::new(0),
            spec,
        }
    }

    /// A worker slot, at once, after waiting in the queue, or `QueueFull`.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Rejection> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.queue_limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::QueueFull);
        }
        let _in_queue = QueuePlace(&self.queued);
        Ok(self.permits.clone().acquire_owned().await.expect("worker semaphore is never closed"))
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The pool's configuration.
    pub fn spec(&self) -> WorkerPoolSpec {
        self.spec
    }
}

struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bearer token, kept only as its digest and compared in constant time.
pub struct BearerAuth {
    digest: [u8; 32],
}

impl BearerAuth {
    /// Reads the token from where `spec` says.
    pub fn load(spec: &AuthSpec) -> Result<Self> {
        let token = match spec {
            AuthSpec::BearerTokenEnv(var) => std::env::var(var)
                .with_context(|| format!("auth: environment variable {var} (bearer_token_env) is not set"))?,
            AuthSpec::BearerTokenFile(path) => std::fs::read_to_string(path)
                .with_context(|| format!("auth: cannot read bearer_token_file {}", path.display()))?,
        };
        let token = token.trim();
        if token.is_empty() {
            bail!("auth: the bearer token is empty");
        }
        Ok(Self { digest: Sha256::digest(token.as_bytes()).into() })
    }

    /// Accepts `Authorization: Bearer <token>` with the right token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(Rejection::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(&self.digest)) { Ok(()) } else { Err(Rejection::Unauthorized) }
    }
}

/// A route's own policies, built when the route is loaded.
pub struct RoutePolicy {
    /// The route's token bucket.
    pub rate_limit: Option<Limiter>,
    /// The route's worker pool.
    pub workers: Option<WorkerPool>,
    /// The route's bearer token.
    pub auth: Option<BearerAuth>,
}

impl RoutePolicy {
    /// Builds the policies `spec` asks for (reading the token, if any).
    pub fn from_spec(spec: &RouteSpec) -> Result<Self> {
        Ok(Self {
            rate_limit: spec.rate_limit.as_ref().map(|r| Limiter::new(r, "route")),
            workers: spec.workers.map(WorkerPool::new),
            auth: spec.auth.as_ref().map(BearerAuth::load).transpose()?,
        })
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

    #[test]
    fn trusted_proxy_header_gives_the_right_most_address() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1, 2.2.2.2"));
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let name = http::HeaderName::from_static("x-forwarded-for");
        assert_eq!(client_addr(&headers, peer, Some(&name)), "2.2.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(client_addr(&headers, peer, None), peer, "ignored unless configured");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(600)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}

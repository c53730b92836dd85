//! Admission control: every check a request passes before it may
//! instantiate, and the one status code each rejection gets.
//!
//! The order (see `http/service.rs`): request id, logging, the global token
//! bucket, the per-client limiter, routing, the route's own bucket, auth,
//! the request-size check, the server's concurrency limit, the route's
//! worker pool. The checks are plain functions over shared state rather
//! than tower layers: they share the request's record and route, and
//! tower's `RateLimit`/`ConcurrencyLimit` have exactly the traps we must
//! avoid (state per clone, permit freed when headers are sent).

pub mod auth;
pub mod body_buffers;
pub mod client;
pub mod queue_delay;
pub mod rate_limit;
pub mod shared_rate_limit;
pub mod workers;

pub use auth::BearerAuth;
pub use body_buffers::BodyBuffers;
pub use client::{ClientIdentity, ClientSlot, PerClient};
pub use rate_limit::{ClientLimiter, Limiter};
pub use shared_rate_limit::{Bucket, ClientBuckets, SharedBuckets};
pub use workers::WorkerPool;

use crate::manifest::{RouteSpec, ServerSettings};
use anyhow::Result;
use http::StatusCode;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    /// This runtime thread's queue has stood above `queue_delay`'s target.
    #[error("overloaded: requests wait longer than queue_delay's target")]
    QueueDelay,
    /// This client has `max_requests_in_flight_per_client` in flight.
    #[error("overloaded: max_requests_in_flight_per_client reached")]
    ClientOverloaded,
    /// The route's workers are busy and its queue is full.
    #[error("overloaded: worker queue full")]
    QueueFull,
    /// The client sent its request body too slowly (between reads, or on
    /// average).
    #[error("request body too slow")]
    BodyTimeout,
    /// The request body is larger than the route allows.
    #[error("request body over {limit} bytes")]
    BodyTooLarge {
        /// The route's limit, in bytes.
        limit: u64,
    },
    /// The request is malformed in a way Wharf will not pass on (an
    /// ambiguous path, say).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A chain of `http://self` requests went past the hop limit.
    #[error("loop detected: more than {limit} self-requests deep")]
    LoopDetected {
        /// The hop limit.
        limit: u32,
    },
}

impl Rejection {
    /// The status code; the one place rejections are mapped.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Overloaded | Self::QueueDelay | Self::ClientOverloaded | Self::QueueFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::LoopDetected { .. } => StatusCode::LOOP_DETECTED,
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
            Self::QueueDelay => "queue_delay",
            Self::ClientOverloaded => "client_overloaded",
            Self::QueueFull => "queue_full",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BadRequest(_) => "bad_request",
            Self::LoopDetected { .. } => "loop_detected",
        }
    }

    /// How long the client should wait before retrying, for `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::Overloaded | Self::QueueDelay | Self::ClientOverloaded | Self::QueueFull => {
                Some(Duration::from_secs(1))
            }
            Self::Unauthorized
            | Self::BodyTooLarge { .. }
            | Self::BodyTimeout
            | Self::BadRequest(_)
            | Self::LoopDetected { .. } => None,
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1 (for `Retry-After`).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

/// The server-wide admission state: who a request is from, the
/// concurrency limit and each client's share of it, the global and
/// per-client buckets, and the connection caps.
pub struct Admission {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    connections: Arc<Semaphore>,
    connections_per_client: PerClient,
    in_flight_per_client: PerClient,
    /// How the client address of a request is found.
    pub identity: ClientIdentity,
    /// The server's token bucket.
    pub global_limit: Option<Bucket>,
    /// The per-client-address buckets.
    pub client_limit: Option<ClientBuckets>,
    /// The shared store, when buckets live in Redis.
    pub shared_buckets: Option<Arc<SharedBuckets>>,
    /// The budget of request bodies read ahead of admission.
    pub body_buffers: Arc<BodyBuffers>,
    /// Admission by queueing delay, when on.
    queue_delay: Option<queue_delay::QueueDelaySpec>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// `max_connections` are open.
    ServerFull,
    /// This peer has `max_connections_per_client` open.
    ClientFull,
}

impl ConnectionRefusal {
    /// Short label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ServerFull => "max_connections",
            Self::ClientFull => "max_connections_per_client",
        }
    }
}

/// What an open connection holds: a slot under both connection caps.
pub struct ConnectionSlots {
    _server: OwnedSemaphorePermit,
    _client: ClientSlot,
}

/// What a request in flight holds: a slot under the concurrency limit and
/// one of its client's. They live as long as the instance.
pub struct RequestSlots {
    _server: OwnedSemaphorePermit,
    _client: ClientSlot,
    queued: Option<queue_delay::Queued>,
}

impl RequestSlots {
    /// The request's instance would start now (its wait in the queue is
    /// over); `false` if admission by delay refuses it instead.
    pub fn started(&mut self) -> bool {
        self.queued.as_mut().is_none_or(queue_delay::Queued::started)
    }
}

impl Admission {
    /// The admission state `settings` describe; buckets live in
    /// `shared_buckets` when given; read-ahead bodies are counted in
    /// `metrics`.
    pub fn new(
        settings: &ServerSettings,
        shared_buckets: Option<Arc<SharedBuckets>>,
        metrics: &crate::telemetry::metrics::Metrics,
    ) -> Self {
        let client_limit = settings.client_rate_limit.as_ref().map(|spec| {
            let limiter = Arc::new(ClientLimiter::new(spec));
            start_client_limiter_eviction(&limiter, spec.window);
            ClientBuckets::new(spec, limiter, shared_buckets.as_ref())
        });
        Self {
            permits: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            max_in_flight: settings.max_concurrent_requests,
            connections: Arc::new(Semaphore::new(settings.connections.max_connections)),
            connections_per_client: PerClient::new(settings.connections.max_connections_per_client),
            in_flight_per_client: PerClient::new(settings.clients.max_requests_in_flight_per_client),
            identity: ClientIdentity::new(&settings.clients),
            global_limit: settings
                .rate_limit
                .as_ref()
                .map(|spec| Bucket::new(spec, "global", "", shared_buckets.as_ref())),
            client_limit,
            shared_buckets,
            queue_delay: settings
                .queue_delay
                .map(|(target, interval)| queue_delay::QueueDelaySpec { target, interval }),
            body_buffers: Arc::new(BodyBuffers::new(
                settings.request_body.max_memory_bytes,
                settings.data_dir.join("tmp"),
                metrics.bodies_reading_gauge().clone(),
                metrics.body_spills_counter().clone(),
            )),
        }
    }

    /// The global and per-client buckets, in that order.
    pub async fn check_rates(&self, client: IpAddr) -> Result<(), Rejection> {
        if let Some(bucket) = &self.global_limit {
            bucket.check().await?;
        }
        if let Some(buckets) = &self.client_limit {
            buckets.check(client).await?;
        }
        Ok(())
    }

    /// A slot under `max_requests_in_flight_per_client` for `client` and
    /// one under `max_concurrent_requests`, without waiting; `reached` is
    /// when the request reached the machine, if known (its wait for
    /// admission by delay starts there, else now).
    pub fn try_admit(&self, client: IpAddr, reached: Option<Instant>) -> Result<RequestSlots, Rejection> {
        let queued = match self.queue_delay {
            None => None,
            Some(spec) => Some(queue_delay::admit(spec, reached).ok_or(Rejection::QueueDelay)?),
        };
        let client = self.in_flight_per_client.try_acquire(client).ok_or(Rejection::ClientOverloaded)?;
        let server = self.permits.clone().try_acquire_owned().map_err(|_| Rejection::Overloaded)?;
        Ok(RequestSlots { _server: server, _client: client, queued })
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }

    /// A connection slot for `peer` under `max_connections` and
    /// `max_connections_per_client`, or why not.
    pub fn try_connection(&self, peer: IpAddr) -> Result<ConnectionSlots, ConnectionRefusal> {
        let client = self.connections_per_client.try_acquire(peer).ok_or(ConnectionRefusal::ClientFull)?;
        let server =
            self.connections.clone().try_acquire_owned().map_err(|_| ConnectionRefusal::ServerFull)?;
        Ok(ConnectionSlots { _server: server, _client: client })
    }

    /// Requests `client` has in flight now.
    pub fn in_flight_of(&self, client: IpAddr) -> usize {
        self.in_flight_per_client.held_by(client)
    }
}

/// Evicts idle clients from the per-client limiter once per window, from a
/// thread that ends when the limiter is dropped.
fn start_client_limiter_eviction(limiter: &Arc<ClientLimiter>, window: Duration) {
    let weak = Arc::downgrade(limiter);
    let period = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let _ = std::thread::Builder::new().name("wharf-limiter-eviction".into()).spawn(move || {
        loop {
            std::thread::sleep(period);
            let Some(limiter) = weak.upgrade() else { return };
            limiter.evict_idle();
        }
    });
}

/// A route's own policies, built when the route is loaded.
pub struct RoutePolicy {
    /// The route's token bucket.
    pub rate_limit: Option<Arc<Bucket>>,
    /// The route's worker pool.
    pub workers: Option<Arc<WorkerPool>>,
    /// The route's bearer token.
    pub auth: Option<BearerAuth>,
}

impl RoutePolicy {
    /// Builds the policies `spec` asks for (reading the token, if any).
    /// State that `previous` (the same route before a reload) already has
    /// under the same settings carries over: its bucket keeps its tokens,
    /// its worker pool its running and queued requests.
    pub fn from_spec(
        spec: &RouteSpec,
        previous: Option<(&RouteSpec, &RoutePolicy)>,
        shared: Option<&Arc<SharedBuckets>>,
    ) -> Result<Self> {
        let same_rate = previous.filter(|(old, _)| old.rate_limit == spec.rate_limit);
        let same_workers = previous.filter(|(old, _)| old.workers == spec.workers);
        Ok(Self {
            rate_limit: match same_rate {
                Some((_, old)) => old.rate_limit.clone(),
                None => {
                    spec.rate_limit.as_ref().map(|r| Arc::new(Bucket::new(r, "route", &spec.path, shared)))
                }
            },
            workers: match same_workers {
                Some((_, old)) => old.workers.clone(),
                None => spec.workers.map(|w| Arc::new(WorkerPool::new(w))),
            },
            auth: spec.auth.as_ref().map(BearerAuth::load).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(600)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}

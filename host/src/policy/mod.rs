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
pub mod client;
pub mod rate_limit;
pub mod workers;

pub use auth::BearerAuth;
pub use client::client_addr;
pub use rate_limit::{ClientLimiter, Limiter};
pub use workers::WorkerPool;

use crate::manifest::{RouteSpec, ServerSettings};
use anyhow::Result;
use http::StatusCode;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
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

    /// How long the client should wait before retrying, for `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::Overloaded | Self::QueueFull => Some(Duration::from_secs(1)),
            Self::Unauthorized | Self::BodyTooLarge { .. } => None,
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1 (for `Retry-After`).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

/// The server-wide admission state: the concurrency limit, the global and
/// per-client buckets, and the connection cap.
pub struct Admission {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    connections: Arc<Semaphore>,
    /// The server's token bucket.
    pub global_limit: Option<Limiter>,
    /// The per-client-address limiter.
    pub client_limit: Option<Arc<ClientLimiter>>,
}

impl Admission {
    /// The admission state `settings` describe.
    pub fn new(settings: &ServerSettings) -> Self {
        let client_limit = settings.client_rate_limit.as_ref().map(|spec| {
            let limiter = Arc::new(ClientLimiter::new(spec));
            start_client_limiter_eviction(&limiter, spec.window);
            limiter
        });
        Self {
            permits: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            max_in_flight: settings.max_concurrent_requests,
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            global_limit: settings.rate_limit.as_ref().map(|spec| Limiter::new(spec, "global")),
            client_limit,
        }
    }

    /// The global and per-client buckets, in that order.
    pub fn check_rates(&self, client: IpAddr) -> Result<(), Rejection> {
        if let Some(limiter) = &self.global_limit {
            limiter.check()?;
        }
        if let Some(limiter) = &self.client_limit {
            limiter.check(client)?;
        }
        Ok(())
    }

    /// A slot under `max_concurrent_requests`, without waiting.
    pub fn try_admit(&self) -> Result<OwnedSemaphorePermit, Rejection> {
        self.permits.clone().try_acquire_owned().map_err(|_| Rejection::Overloaded)
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }

    /// A connection slot under `max_connections`, if one is free.
    pub fn try_connection(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
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

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(600)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}

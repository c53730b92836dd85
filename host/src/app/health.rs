//! What orchestrators read on the admin listener: liveness (every server
//! thread still turns its event loop) and readiness (send traffic here:
//! not draining, and Redis reachable when the app needs it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A server thread not heard from for this long is stalled: `/livez` says
/// 503. (Each beats once a second; a guest yields at least every 10 ms.)
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

/// A heartbeat's value once its thread has ended on purpose.
const ENDED: u64 = u64::MAX;

/// The heartbeats of the server threads.
pub struct Heartbeats {
    since: Instant,
    beats: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self { since: Instant::now(), beats: Mutex::default() }
    }
}

/// One server thread's heartbeat; it stops counting when dropped (the
/// thread ended on purpose).
pub struct Heartbeat {
    since: Instant,
    last: Arc<AtomicU64>,
}

impl Heartbeats {
    /// A heartbeat for the calling thread, beating from now.
    pub fn register(&self) -> Heartbeat {
        let last = Arc::new(AtomicU64::new(self.since.elapsed().as_millis() as u64));
        self.beats.lock().unwrap_or_else(|e| e.into_inner()).push(last.clone());
        Heartbeat { since: self.since, last }
    }

    /// How many registered threads have not beaten within
    /// [`STALLED_AFTER`].
    pub fn stalled(&self) -> usize {
        let now = self.since.elapsed().as_millis() as u64;
        let limit = STALLED_AFTER.as_millis() as u64;
        let beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats
            .iter()
            .map(|beat| beat.load(Ordering::Relaxed))
            .filter(|&last| last != ENDED && now.saturating_sub(last) > limit)
            .count()
    }
}

impl Heartbeat {
    /// The thread is turning now.
    pub fn beat(&self) {
        self.last.store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.last.store(ENDED, Ordering::Relaxed);
    }
}

/// Why the host is not ready for traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// A graceful shutdown has begun.
    Draining,
    /// Redis is away and the app needs it (`readiness_requires_redis`).
    RedisDown,
}

impl NotReady {
    /// The word `/readyz` and `/healthz` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::RedisDown => "redis_down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_stops_beating_is_stalled_one_that_ended_is_not() {
        let heartbeats = Heartbeats { since: Instant::now() - Duration::from_secs(60), ..Default::default() };
        let quiet = heartbeats.register();
        let ended = heartbeats.register();
        assert_eq!(heartbeats.stalled(), 0);
        quiet.last.store(0, Ordering::Relaxed);
        ended.last.store(0, Ordering::Relaxed);
        drop(ended);
        assert_eq!(heartbeats.stalled(), 1);
        quiet.beat();
        assert_eq!(heartbeats.stalled(), 0);
    }
}

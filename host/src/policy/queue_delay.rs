//! Admission by queueing delay (opt-in, `[server] queue_delay`): sheds load
//! by how long requests wait, not by how many there are, so that under a
//! load far beyond capacity the requests that are served keep a latency
//! near the target and the rest are refused at once.
//!
//! A request waits between being admitted and its instance starting (on
//! its runtime thread's run queue, behind the others). Each runtime thread
//! measures that wait (the sojourn) for every request it starts and, as
//! CoDel does, looks at the smallest sojourn of each interval: above the
//! target for a whole interval means a standing queue, not a burst. Then
//! the thread is overloaded: it admits a request only while fewer than an
//! allowance wait on it, refusing the rest with 503 at once (reason
//! `queue_delay`). The allowance adapts each interval, down by a quarter
//! while the queue stands, up by an eighth (at least one) while it does
//! not; an interval that ends below the target with nothing refused ends
//! the overload. Per thread, because each thread's queue is its own.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The settings (`queue_delay = { target_ms, interval_ms }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDelaySpec {
    /// The wait a served request should stay near. Default 10 ms.
    pub target: Duration,
    /// How long the wait must stand above the target before shedding
    /// starts, and how often the allowance adapts. Default 100 ms.
    pub interval: Duration,
}

/// The allowance never goes below this many waiting requests.
const MIN_ALLOWANCE: f64 = 4.0;

struct Controller {
    spec: QueueDelaySpec,
    waiting: usize,
    window_start: Instant,
    window_min: Option<Duration>,
    refused_in_window: bool,
    overloaded: bool,
    allowance: f64,
}

thread_local! {
    static CONTROLLER: RefCell<Option<Controller>> = const { RefCell::new(None) };
}

/// A request admitted on this thread whose instance has not started yet.
#[derive(Debug)]
pub struct Queued {
    admitted: Instant,
    /// Still counted as waiting.
    waiting: bool,
}

impl Queued {
    /// Its instance starts now: the wait is over and measured.
    pub fn started(&mut self) {
        if std::mem::take(&mut self.waiting) {
            let now = Instant::now();
            with(|c| {
                c.waiting = c.waiting.saturating_sub(1);
                c.sample(now.saturating_duration_since(self.admitted), now);
            });
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.waiting {
            with(|c| c.waiting = c.waiting.saturating_sub(1));
        }
    }
}

fn with<T>(f: impl FnOnce(&mut Controller) -> T) -> Option<T> {
    CONTROLLER.with(|cell| cell.borrow_mut().as_mut().map(f))
}

/// Admits a request on this thread under `spec`, or refuses it (`None`)
/// because the thread is overloaded.
pub fn admit(spec: QueueDelaySpec) -> Option<Queued> {
    let now = Instant::now();
    CONTROLLER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let controller = cell.get_or_insert_with(|| Controller {
            spec,
            waiting: 0,
            window_start: now,
            window_min: None,
            refused_in_window: false,
            overloaded: false,
            allowance: f64::INFINITY,
        });
        controller.spec = spec;
        controller.roll(now);
        if controller.overloaded && controller.waiting as f64 >= controller.allowance {
            controller.refused_in_window = true;
            return None;
        }
        controller.waiting += 1;
        Some(Queued { admitted: now, waiting: true })
    })
}

/// Whether this thread sheds by delay now (for `/healthz` and tests).
pub fn overloaded_here() -> bool {
    with(|c| c.overloaded).unwrap_or(false)
}

impl Controller {
    fn sample(&mut self, sojourn: Duration, now: Instant) {
        self.roll(now);
        self.window_min = Some(self.window_min.map_or(sojourn, |m| m.min(sojourn)));
    }

    /// Closes the interval if it is over, and adapts.
    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_start) < self.spec.interval {
            return;
        }
        match self.window_min {
            Some(min) if min > self.spec.target => {
                if !self.overloaded {
                    self.overloaded = true;
                    // Start from what is waiting now: that queue is too long.
                    self.allowance = (self.waiting as f64).max(MIN_ALLOWANCE);
                }
                self.allowance = (self.allowance * 0.75).max(MIN_ALLOWANCE);
            }
            // No request started in the interval: no standing queue to see.
            None => self.overloaded = false,
            Some(_) if self.overloaded => {
                if self.refused_in_window {
                    self.allowance += (self.allowance / 8.0).max(1.0);
                } else {
                    self.overloaded = false;
                    self.allowance = f64::INFINITY;
                }
            }
            Some(_) => {}
        }
        self.window_start = now;
        self.window_min = None;
        self.refused_in_window = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: QueueDelaySpec =
        QueueDelaySpec { target: Duration::from_millis(10), interval: Duration::from_millis(100) };

    #[test]
    fn a_burst_passes_a_standing_queue_is_shed_and_shedding_ends_when_it_drains() {
        // A fresh thread: its own controller.
        std::thread::spawn(|| {
            let mut queue: Vec<Queued> = (0..50).map(|_| admit(SPEC).expect("not overloaded")).collect();
            // A burst: requests wait 20 ms, but not for a whole interval.
            std::thread::sleep(Duration::from_millis(20));
            for ticket in queue.iter_mut().take(5) {
                ticket.started();
            }
            assert!(!overloaded_here());
            // The queue stands above the target for a whole interval.
            std::thread::sleep(Duration::from_millis(100));
            for ticket in queue.iter_mut().skip(5).take(5) {
                ticket.started();
            }
            let mut extra = (0..10).filter_map(|_| admit(SPEC)).collect::<Vec<_>>();
            assert!(overloaded_here(), "a standing queue for an interval");
            assert!(extra.is_empty(), "40 wait, over the allowance: new ones are refused at once");
            // The queue drains; the next interval's requests wait little.
            for ticket in queue.iter_mut() {
                ticket.started();
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut fresh = admit(SPEC).expect("under the allowance: admitted");
            fresh.started();
            std::thread::sleep(Duration::from_millis(100));
            extra.extend(admit(SPEC));
            assert!(!overloaded_here(), "an interval below the target with nothing refused ends it");
        })
        .join()
        .unwrap();
    }
}

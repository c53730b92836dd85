//! Admission by queueing delay (opt-in, `[server] queue_delay`): sheds load
//! by how long requests wait, not by how many there are, so that under a
//! load far beyond capacity the requests that are served keep a latency
//! near the target and the rest are refused at once.
//!
//! A request waits from the moment its bytes reach the machine (the
//! kernel's receive timestamp, see [`arrival`](crate::http::arrival); the
//! moment of admission where there is none) until its instance starts: on
//! its runtime thread's run queue, twice, once to be read and once to
//! start. Each runtime thread measures that wait (the sojourn) for every
//! request it starts and, as CoDel does, looks at the smallest sojourn of
//! each interval: above the target for a whole interval means a standing
//! queue, not a burst. Then the thread is overloaded, and sheds:
//!
//! - at admission, a request that has already waited past the target, and
//!   any while an allowance of requests wait on the thread (the allowance
//!   adapts each interval, down by a quarter while the queue stands, up by
//!   an eighth, at least one, while it does not);
//! - at the head of the queue, as CoDel drops there: a request whose
//!   instance is about to start after waiting past the target (and on any
//!   thread, one that waited a whole interval) is refused instead, before
//!   any instance state is made.
//!
//! Refused requests get 503 with `Retry-After` (reason `queue_delay`). An
//! interval that ends below the target with nothing refused ends the
//! overload. A thread whose instances are cheap does not shed at all (see
//! `worth_shedding`). Per thread, because each thread's queue is its own.

use crate::runtime::instance_time;
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

/// Refusing a request frees what serving it would cost beyond refusing it:
/// where instances typically run less than [`instance_time::LONG`],
/// serving costs about what reading, refusing and answering a request does,
/// so shedding cannot shorten the queue and only loses the work already
/// spent on the requests: the thread does not shed, and its wait is left
/// to the other bounds (a closed loop of clients that re-send at once keeps
/// its mean latency at clients over rate whatever is refused).
fn worth_shedding() -> bool {
    instance_time::long_here()
}

thread_local! {
    static CONTROLLER: RefCell<Option<Controller>> = const { RefCell::new(None) };
}

/// A request admitted on this thread whose instance has not started yet.
#[derive(Debug)]
pub struct Queued {
    /// When the request reached the machine (or was admitted, if unknown).
    reached: Instant,
    /// Still counted as waiting.
    waiting: bool,
}

impl Queued {
    /// Its instance would start now: the wait is over and measured.
    /// `false` if the request is to be refused instead, as CoDel drops at
    /// the head of its queue: the thread is overloaded and this request
    /// has already waited past the target, so serving it would only add a
    /// late response to a standing queue.
    pub fn started(&mut self) -> bool {
        if !std::mem::take(&mut self.waiting) {
            return true;
        }
        let now = Instant::now();
        let sojourn = now.saturating_duration_since(self.reached);
        with(|c| {
            c.waiting = c.waiting.saturating_sub(1);
            c.sample(sojourn, now);
            let late =
                sojourn > c.spec.target && (c.overloaded || sojourn > c.spec.interval) && worth_shedding();
            c.refused_in_window |= late;
            !late
        })
        .unwrap_or(true)
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
/// because the thread is overloaded; `reached` is when the request reached
/// the machine, if known.
pub fn admit(spec: QueueDelaySpec, reached: Option<Instant>) -> Option<Queued> {
    let now = Instant::now();
    let reached = reached.map_or(now, |reached| reached.min(now));
    let waited = now.duration_since(reached);
    CONTROLLER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let controller = cell.get_or_insert_with(|| {
            instance_time::measure_here();
            Controller {
                spec,
                waiting: 0,
                window_start: now,
                window_min: None,
                refused_in_window: false,
                overloaded: false,
                allowance: f64::INFINITY,
            }
        });
        controller.spec = spec;
        controller.roll(now);
        let over = waited > spec.target || controller.waiting as f64 >= controller.allowance;
        if controller.overloaded && over && worth_shedding() {
            controller.refused_in_window = true;
            return None;
        }
        controller.waiting += 1;
        Some(Queued { reached, waiting: true })
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
            // Instances that cost enough for refusing late ones to free time.
            instance_time::assume_typical_here(Duration::from_millis(1));
            let mut queue: Vec<Queued> =
                (0..50).map(|_| admit(SPEC, None).expect("not overloaded")).collect();
            // A burst: requests wait 20 ms, but not for a whole interval.
            std::thread::sleep(Duration::from_millis(20));
            for ticket in queue.iter_mut().take(5) {
                assert!(ticket.started(), "a burst is served");
            }
            assert!(!overloaded_here());
            // The queue stands above the target for a whole interval: the
            // requests at its head are late, refused rather than started.
            std::thread::sleep(Duration::from_millis(100));
            for ticket in queue.iter_mut().skip(5).take(5) {
                assert!(!ticket.started(), "late at the head of a standing queue");
            }
            let mut extra = (0..10).filter_map(|_| admit(SPEC, None)).collect::<Vec<_>>();
            assert!(overloaded_here(), "a standing queue for an interval");
            assert!(extra.is_empty(), "40 wait, over the allowance: new ones are refused at once");
            // A request that reached the machine a while before it was
            // admitted is late already: refused at admission.
            std::thread::sleep(Duration::from_millis(100));
            for ticket in queue.iter_mut().skip(10) {
                assert!(!ticket.started());
            }
            let reached = Instant::now() - Duration::from_millis(50);
            assert!(admit(SPEC, Some(reached)).is_none(), "waited 50 ms before admission");
            // The queue has drained; the next interval's requests wait little.
            let mut fresh = admit(SPEC, None).expect("under the allowance: admitted");
            assert!(fresh.started());
            // That interval still refused some: shedding goes on.
            std::thread::sleep(Duration::from_millis(100));
            let mut next = admit(SPEC, None).expect("under the allowance: admitted");
            assert!(next.started());
            assert!(overloaded_here(), "the last interval refused requests");
            std::thread::sleep(Duration::from_millis(100));
            extra.extend(admit(SPEC, None));
            assert!(!overloaded_here(), "an interval below the target with nothing refused ends it");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_request_that_waited_a_whole_interval_is_refused_where_instances_cost_more_than_refusing() {
        std::thread::spawn(|| {
            instance_time::assume_typical_here(Duration::from_millis(1));
            let reached = Instant::now() - Duration::from_millis(150);
            let mut stale = admit(SPEC, Some(reached)).expect("not overloaded: admitted");
            assert!(!stale.started(), "150 ms in the queue, past the 100 ms interval");
            let reached = Instant::now() - Duration::from_millis(30);
            let mut burst = admit(SPEC, Some(reached)).expect("not overloaded: admitted");
            assert!(burst.started(), "30 ms: past the target, within a burst");
            // Where instances cost about what refusing them does, refusing
            // late ones frees nothing: they are served.
            instance_time::assume_typical_here(Duration::from_micros(40));
            let reached = Instant::now() - Duration::from_millis(150);
            let mut cheap = admit(SPEC, Some(reached)).expect("admitted");
            assert!(cheap.started(), "a 40 us instance is worth serving however late");
        })
        .join()
        .unwrap();
    }
}

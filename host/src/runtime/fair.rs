//! Fair CPU between the guests of one runtime thread. Every running guest
//! yields at each epoch tick, except a fresh instance at its first tick when
//! it started less than half a tick before: where the ticker's phase falls
//! is not the guest's doing, and a request that met a tick 0.1 ms after it
//! started would wait its whole run queue again (under a standing queue of
//! 1 ms requests, that tail was half the served requests' p99). So a
//! first slice lasts half a tick to a tick and a half, and a request
//! shorter than half a tick is never interrupted. At a first yield an
//! instance goes to the back of the thread's run queue like any task: a
//! request that merely ran into a tick loses a turn, nothing more. From
//! its second tick in a row on (it has computed for more than a tick, far
//! beyond what answering a request takes) it is parked in this thread's
//! idle queue and woken only when the thread has nothing else to run, one
//! at a time, with the network polled in between. So a guest that computes
//! for a long time gets the thread's spare time, and a request arriving
//! meanwhile waits at most the slice already running (a tick and a half at
//! most), not the runtime's 61-poll event interval times the tick.
//!
//! (Parking from the first tick measured badly: under saturation a thread
//! seldom idles, and, with the deadline then counted from when a request
//! was read, every request that waited a tick in the run queue was parked
//! at its first instruction: one in ten waited up to a second.)
//!
//! The server's runtime threads install the queue and wake it from their
//! park hook; on any other thread a tick is a plain yield.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

thread_local! {
    static IDLE: RefCell<Option<VecDeque<Waker>>> = const { RefCell::new(None) };
}

/// Gives this thread an idle queue; its runtime must call [`on_park`] from
/// its `on_thread_park` hook.
pub fn install_on_this_thread() {
    IDLE.with(|idle| *idle.borrow_mut() = Some(VecDeque::new()));
}

/// The thread is about to park, having nothing to run: the guest that has
/// waited longest may run again, once the network has been polled and
/// whatever it woke has run (a task that yields with tokio's `yield_now`
/// is rescheduled only after the driver is polled).
pub fn on_park() {
    let next = IDLE.with(|idle| idle.borrow_mut().as_mut().and_then(VecDeque::pop_front));
    if let Some(waker) = next {
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            waker.wake();
        });
    }
}

/// Ticks in a row an instance may run into before it counts as computing
/// for long.
const FREE_TICKS: u32 = 1;

/// Ticks closer together than this are in a row: the instance computed
/// from one to the next (a reused instance that computes now and then
/// starts again from one).
const IN_A_ROW: std::time::Duration = std::time::Duration::from_millis(25);

/// How long before its first tick a fresh instance must have started for
/// that tick to interrupt it.
const FIRST_SLICE_AT_LEAST: std::time::Duration = super::ticker::EPOCH_TICK.checked_div(2).unwrap();

/// One instance's recent ticks.
#[derive(Debug)]
pub struct Ticks {
    /// When a fresh instance started, until its first tick.
    started: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
    in_a_row: u32,
    /// Never parked: a reused instance serving request after request
    /// computes in a row by design, and parking it would stall every
    /// request it holds. It yields at each tick like any task.
    reused: bool,
}

impl Ticks {
    /// The ticks of a fresh instance starting now.
    pub fn fresh() -> Self {
        Self::fresh_since(std::time::Instant::now())
    }

    fn fresh_since(started: std::time::Instant) -> Self {
        Self { started: Some(started), last: None, in_a_row: 0, reused: false }
    }

    /// The ticks of an instance reused across requests.
    pub fn reused() -> Self {
        Self { started: None, last: None, in_a_row: 0, reused: true }
    }
}

/// What an instance does at an epoch tick.
pub fn at_tick(ticks: &mut Ticks) -> wasmtime::UpdateDeadline {
    let now = std::time::Instant::now();
    if let Some(started) = ticks.started.take()
        && now.duration_since(started) < FIRST_SLICE_AT_LEAST
    {
        return wasmtime::UpdateDeadline::Continue(1);
    }
    ticks.in_a_row = match ticks.last {
        Some(last) if now.duration_since(last) < IN_A_ROW => ticks.in_a_row + 1,
        _ => 1,
    };
    ticks.last = Some(now);
    if ticks.in_a_row <= FREE_TICKS || ticks.reused {
        wasmtime::UpdateDeadline::Yield(1)
    } else {
        wasmtime::UpdateDeadline::YieldCustom(1, Box::pin(YieldToOthers { parked: false }))
    }
}

/// Counts what an instance does at a tick (`wharf_epoch_ticks_total`).
pub fn counted(
    update: wasmtime::UpdateDeadline,
    ticks: &crate::telemetry::metrics::EpochTicks,
) -> wasmtime::UpdateDeadline {
    match &update {
        wasmtime::UpdateDeadline::Continue(_) => ticks.ran_on.inc(),
        wasmtime::UpdateDeadline::YieldCustom(..) => ticks.parked.inc(),
        _ => ticks.yielded.inc(),
    };
    update
}

struct YieldToOthers {
    parked: bool,
}

impl Future for YieldToOthers {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.parked {
            return Poll::Ready(());
        }
        self.parked = true;
        let queued = IDLE.with(|idle| match idle.borrow_mut().as_mut() {
            Some(queue) => {
                queue.push_back(cx.waker().clone());
                true
            }
            None => false,
        });
        if !queued {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use wasmtime::UpdateDeadline;

    fn is_yield(deadline: &UpdateDeadline) -> bool {
        matches!(deadline, UpdateDeadline::Yield(1))
    }

    fn is_park(deadline: &UpdateDeadline) -> bool {
        matches!(deadline, UpdateDeadline::YieldCustom(1, _))
    }

    #[test]
    fn a_fresh_instance_that_just_started_runs_through_its_first_tick_then_yields_then_is_parked() {
        let mut ticks = Ticks::fresh();
        assert!(matches!(at_tick(&mut ticks), UpdateDeadline::Continue(1)), "started just now");
        assert!(is_yield(&at_tick(&mut ticks)), "a tick later: back of the run queue");
        assert!(is_park(&at_tick(&mut ticks)), "computing for long: the idle queue");
    }

    #[test]
    fn a_fresh_instance_that_started_half_a_tick_before_yields_at_its_first_tick() {
        let mut ticks = Ticks::fresh_since(Instant::now() - FIRST_SLICE_AT_LEAST - Duration::from_millis(1));
        assert!(is_yield(&at_tick(&mut ticks)));
        assert!(is_park(&at_tick(&mut ticks)));
    }

    #[test]
    fn a_reused_instance_yields_at_every_tick_and_is_never_parked() {
        let mut ticks = Ticks::reused();
        for _ in 0..3 {
            assert!(is_yield(&at_tick(&mut ticks)));
        }
    }
}

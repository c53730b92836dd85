//! Fair CPU between the guests of one runtime thread. Every running guest
//! yields at each epoch tick. At a first tick an instance goes to the back
//! of the thread's run queue like any task: a request that merely ran into
//! a tick loses a turn, nothing more. From its second tick in a row on (it
//! has computed for more than a tick, far beyond what answering a request
//! takes) it is parked in this thread's idle queue and woken only when the
//! thread has nothing else to run, one at a time, with the network polled
//! in between. So a guest that computes for a long time gets the thread's
//! spare time, and a request arriving meanwhile waits at most the slice
//! already running (one tick), not the runtime's 61-poll event interval
//! times the tick.
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

/// One instance's recent ticks.
#[derive(Debug, Default)]
pub struct Ticks {
    last: Option<std::time::Instant>,
    in_a_row: u32,
    /// Never parked: a reused instance serving request after request
    /// computes in a row by design, and parking it would stall every
    /// request it holds. It yields at each tick like any task.
    reused: bool,
}

impl Ticks {
    /// The ticks of an instance reused across requests.
    pub fn reused() -> Self {
        Self { reused: true, ..Self::default() }
    }
}

/// What an instance does at an epoch tick.
pub fn at_tick(ticks: &mut Ticks) -> wasmtime::UpdateDeadline {
    let now = std::time::Instant::now();
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

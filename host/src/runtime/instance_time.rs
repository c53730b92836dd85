//! How long this thread's instances typically run on it: the time their
//! tasks are polled (not the time they wait), tracked as a moving median,
//! once something on the thread asks for it ([`measure_here`]; admission
//! by delay does). Elsewhere a [`Timed`] task only polls, with no clock
//! reads.
//!
//! A median, not a mean: a poll the kernel preempts for milliseconds on a
//! busy machine would move a mean of 20 us instances past any threshold.
//! Each instance moves the estimate a sixteenth of itself towards its own
//! time (multiplying or dividing), so it follows a change of workload
//! within a few hundred instances and ignores rare outliers.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// This thread's estimate: not measured, measured with no instance yet,
/// or the typical time in seconds.
#[derive(Clone, Copy)]
enum Estimate {
    Off,
    NoneYet,
    Typical(f64),
}

thread_local! {
    static ESTIMATE: Cell<Estimate> = const { Cell::new(Estimate::Off) };
}

/// How far one instance moves the estimate (a factor).
const STEP: f64 = 1.0 + 1.0 / 16.0;

/// Measures this thread's instances from now on.
pub fn measure_here() {
    ESTIMATE.with(|estimate| {
        if let Estimate::Off = estimate.get() {
            estimate.set(Estimate::NoneYet);
        }
    });
}

/// How long an instance of this thread typically runs, once one has.
pub fn typical_here() -> Option<Duration> {
    match ESTIMATE.with(Cell::get) {
        Estimate::Typical(secs) => Some(Duration::from_secs_f64(secs)),
        Estimate::Off | Estimate::NoneYet => None,
    }
}

/// Instances this long or longer run long beside what a thread spends
/// around each request (reading, admitting, answering: tens of
/// microseconds here): refusing one frees time, and batching their
/// responses saves nothing worth a trip round the run queue.
pub const LONG: Duration = Duration::from_micros(200);

/// Whether this thread's instances typically run [`LONG`] or longer (never
/// where they are not measured).
pub fn long_here() -> bool {
    typical_here().is_some_and(|typical| typical >= LONG)
}

/// Sets this thread's estimate, as if its instances typically ran
/// `typical` (for tests of what reads it).
#[cfg(test)]
pub(crate) fn assume_typical_here(typical: Duration) {
    ESTIMATE.with(|estimate| estimate.set(Estimate::Typical(typical.as_secs_f64())));
}

/// Moves this thread's estimate towards an instance that ran `busy`.
fn note(busy: Duration) {
    let busy = busy.as_secs_f64();
    ESTIMATE.with(|estimate| {
        let next = match estimate.get() {
            Estimate::Off => return,
            Estimate::NoneYet => busy,
            Estimate::Typical(was) if busy > was => (was * STEP).min(busy),
            Estimate::Typical(was) => (was / STEP).max(busy),
        };
        estimate.set(Estimate::Typical(next));
    });
}

pin_project_lite::pin_project! {
    /// An instance's task, its polls summed into this thread's estimate
    /// when it ends, if measured here.
    pub struct Timed<F> {
        #[pin]
        inner: F,
        busy: Option<Duration>,
    }

    impl<F> PinnedDrop for Timed<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(busy) = *this.project().busy {
                note(busy);
            }
        }
    }
}

impl<F> Timed<F> {
    /// Times `inner` if this thread measures its instances.
    pub fn new(inner: F) -> Self {
        let measured = !matches!(ESTIMATE.with(Cell::get), Estimate::Off);
        Self { inner, busy: measured.then_some(Duration::ZERO) }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(busy) = this.busy else { return this.inner.poll(cx) };
        let polled = Instant::now();
        let result = this.inner.poll(cx);
        *busy += polled.elapsed();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_an_instance_runs_counts_not_the_time_it_waits_and_outliers_barely_move_it() {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(Timed::new(async {}));
            assert_eq!(typical_here(), None, "not measured on this thread");
            measure_here();
            runtime.block_on(Timed::new(async {
                // Runs 2 ms, waits 50 ms, runs 2 ms.
                std::thread::sleep(Duration::from_millis(2));
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::thread::sleep(Duration::from_millis(2));
            }));
            let typical = typical_here().expect("measured");
            assert!(typical >= Duration::from_millis(4), "{typical:?}");
            assert!(typical < Duration::from_millis(10), "the 50 ms wait is not counted: {typical:?}");
            // Many short instances bring it down; one long one barely moves it.
            for _ in 0..200 {
                note(Duration::from_micros(20));
            }
            assert_eq!(typical_here(), Some(Duration::from_micros(20)));
            note(Duration::from_millis(30));
            let after = typical_here().unwrap();
            assert!(after < Duration::from_micros(22), "{after:?}");
        })
        .join()
        .unwrap();
    }
}

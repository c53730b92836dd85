//! The epoch ticker: the one thread per host that advances every engine's
//! epoch (WASI 0.2's and 0.3's) every [`EPOCH_TICK`], so running guests
//! yield and CPU-bound ones can be stopped, and that sleeps once no
//! instance has been alive for [`LINGER`], so an idle server costs no
//! wake-ups at all.
//!
//! It lingers rather than sleeping the moment the last instance ends: a
//! server whose instances come and go (one thread answering a few
//! connections, instances done before the next arrives) would otherwise
//! wake it at nearly every request, only for it to find the instance gone
//! and wait again: measured pinned to one core with a ticker per engine,
//! 2 `futex` calls and two context switches a request.

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use wasmtime::{Engine, EngineWeak};

/// How often the ticker advances the epoch. A running guest yields to its
/// runtime at each tick, so no guest can starve others for longer than
/// this.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How long the ticker goes on ticking after the last instance it saw:
/// instances that start meanwhile wake no one.
pub const LINGER: Duration = Duration::from_secs(1);

/// How many instances are alive (the live-instance gauge itself), and
/// whether one started since the ticker last looked; the ticker waits for
/// one to start.
#[derive(Debug)]
pub struct Activity {
    alive: Gauge,
    /// Set by every instance that starts, cleared by the ticker's look.
    started: AtomicBool,
    /// Set while the ticker waits, so creating an instance costs a wake-up
    /// only when there is someone to wake.
    waiting: AtomicBool,
    /// Times an instance woke the ticker.
    wakeups: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
    /// The engines the ticker advances, and whether its thread runs.
    ticked: Mutex<Ticked>,
}

#[derive(Default)]
struct Ticked {
    engines: Vec<EngineWeak>,
    running: bool,
}

impl std::fmt::Debug for Ticked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticked")
            .field("engines", &self.engines.len())
            .field("running", &self.running)
            .finish()
    }
}

impl Activity {
    /// Activity counted by `alive`.
    pub fn new(alive: Gauge) -> Self {
        Self {
            alive,
            started: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            ticked: Mutex::new(Ticked::default()),
        }
    }

    /// Counts an instance in (it is counted out by `alive.dec()`).
    pub fn enter(&self) {
        self.alive.inc();
        // Read first: the flag is written once a tick, not at every
        // instance (its cache line stays shared between threads).
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Relaxed);
        }
        // Pairs with the fence in `wait_for_instances`: either the ticker
        // sees the instance, or this sees the ticker waiting.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) {
            // Taken so the wake-up cannot fall between the ticker's check
            // and its wait.
            let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_all();
        }
    }

    /// Whether an instance is alive or started since the last look.
    fn look(&self) -> bool {
        self.started.swap(false, Ordering::Relaxed) || self.alive.get() > 0
    }

    /// Blocks until an instance is alive or has started since the last look.
    fn wait_for_instances(&self) {
        let mut lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        while !self.look() {
            lock = self.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// Advances every engine's epoch; `false` once every engine is gone
    /// (the thread then ends, and says so).
    fn tick(&self) -> bool {
        let mut ticked = self.ticked.lock().unwrap_or_else(|e| e.into_inner());
        ticked.engines.retain(|weak| weak.upgrade().map(|engine| engine.increment_epoch()).is_some());
        ticked.running = !ticked.engines.is_empty();
        ticked.running
    }

    /// Times an instance woke the ticker.
    #[cfg(test)]
    fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}

/// Has the host's ticker advance `engine`'s epoch, starting the ticker
/// if it is not running; it ends by itself once every engine it advances
/// is dropped (at the latest one tick after an instance next appears).
pub fn start(engine: &Engine, activity: Arc<Activity>) {
    {
        let mut ticked = activity.ticked.lock().unwrap_or_else(|e| e.into_inner());
        ticked.engines.push(engine.weak());
        if std::mem::replace(&mut ticked.running, true) {
            return;
        }
    }
    let linger_ticks = LINGER.as_millis().div_ceil(EPOCH_TICK.as_millis());
    std::thread::Builder::new()
        .name("wharf-epoch".into())
        .spawn(move || {
            loop {
                activity.wait_for_instances();
                // Ticks until `LINGER` has passed with no instance seen:
                // a whole tick first for the instance that woke it.
                let mut quiet = 0;
                while quiet < linger_ticks {
                    std::thread::sleep(EPOCH_TICK);
                    if !activity.tick() {
                        return;
                    }
                    quiet = if activity.look() { 0 } else { quiet + 1 };
                }
            }
        })
        .expect("spawn the epoch ticker thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// A store of `engine` whose deadline is the next tick, and a function
    /// in it that traps once the epoch has moved (the engine's epoch is
    /// only observable through a store).
    fn epoch_probe(engine: &Engine) -> (wasmtime::Store<()>, wasmtime::TypedFunc<(), ()>) {
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(1);
        let module = wasmtime::Module::new(engine, "(module (func (export \"f\")))").unwrap();
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance.get_typed_func::<(), ()>(&mut store, "f").unwrap();
        (store, f)
    }

    /// Waits (at most until `deadline`) for the probe's epoch to move.
    fn until_epoch_moves(
        (mut store, f): (wasmtime::Store<()>, wasmtime::TypedFunc<(), ()>),
        deadline: std::time::Instant,
    ) {
        while f.call(&mut store, ()).is_ok() {
            assert!(std::time::Instant::now() < deadline, "the epoch never moved with an instance alive");
            std::thread::sleep(EPOCH_TICK);
        }
    }

    #[test]
    fn the_ticker_waits_while_nothing_is_alive_and_ticks_while_something_is() {
        let engine = epoch_engine();
        let activity = Arc::new(Activity::new(Gauge::default()));
        start(&engine, activity.clone());
        // An idle ticker leaves the epoch alone; a live instance starts it.
        let (mut store, f) = epoch_probe(&engine);
        std::thread::sleep(EPOCH_TICK * 5);
        assert!(f.call(&mut store, ()).is_ok(), "the epoch moved while no instance was alive");
        activity.enter();
        until_epoch_moves((store, f), std::time::Instant::now() + Duration::from_secs(30));
        activity.alive.dec();
    }

    /// Waits (at most 30 s) until the ticker is waiting, or is not.
    fn until_ticker_waits(activity: &Activity, waits: bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while activity.waiting.load(Ordering::Relaxed) != waits {
            assert!(std::time::Instant::now() < deadline, "the ticker never got to waiting == {waits}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn instances_that_come_while_the_ticker_lingers_wake_no_one() {
        let engine = epoch_engine();
        let activity = Arc::new(Activity::new(Gauge::default()));
        start(&engine, activity.clone());
        until_ticker_waits(&activity, true);
        // An instance that comes and goes before the ticker runs wakes it
        // once, and it stays up although nothing is alive when it looks.
        activity.enter();
        activity.alive.dec();
        assert_eq!(activity.wakeups(), 1);
        until_ticker_waits(&activity, false);
        // Instances that come and go while it lingers wake no one.
        let lingering_since = std::time::Instant::now();
        for _ in 0..1000 {
            activity.enter();
            activity.alive.dec();
        }
        assert_eq!(activity.wakeups(), 1, "an instance woke a lingering ticker");
        // With nothing more, it waits again once LINGER has passed.
        until_ticker_waits(&activity, true);
        assert!(lingering_since.elapsed() >= LINGER, "the ticker stopped lingering early");
        activity.enter();
        activity.alive.dec();
        assert_eq!(activity.wakeups(), 2, "the waiting ticker was not woken");
    }

    #[test]
    fn one_thread_ticks_every_engine_and_ends_with_them() {
        let (first, second) = (epoch_engine(), epoch_engine());
        let activity = Arc::new(Activity::new(Gauge::default()));
        start(&first, activity.clone());
        start(&second, activity.clone());
        // Both engines' guests meet ticks from the one thread.
        let probes = [epoch_probe(&first), epoch_probe(&second)];
        activity.enter();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for probe in probes {
            until_epoch_moves(probe, deadline);
        }
        assert!(activity.ticked.lock().unwrap().running);
        // With both engines gone, the thread ends at its next tick.
        drop((first, second));
        while activity.ticked.lock().unwrap().running {
            assert!(std::time::Instant::now() < deadline, "the ticker outlived its engines");
            std::thread::sleep(Duration::from_millis(1));
        }
        activity.alive.dec();
    }
}

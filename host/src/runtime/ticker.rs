//! The epoch ticker: the thread that advances each engine's epoch every
//! [`EPOCH_TICK`], so running guests yield and CPU-bound ones can be
//! stopped, and that sleeps while no instance is alive, so an idle server
//! costs no wake-ups at all.

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use wasmtime::Engine;

/// How often the ticker advances the epoch. A running guest yields to its
/// runtime at each tick, so no guest can starve others for longer than
/// this.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How many instances are alive (the live-instance gauge itself); the
/// ticker waits for it to leave zero.
#[derive(Debug)]
pub struct Activity {
    alive: Gauge,
    /// Set while the ticker waits, so creating an instance costs a wake-up
    /// only when there is someone to wake.
    waiting: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Activity {
    /// Activity counted by `alive`.
    pub fn new(alive: Gauge) -> Self {
        Self { alive, waiting: AtomicBool::new(false), lock: Mutex::new(()), wake: Condvar::new() }
    }

    /// Counts an instance in (it is counted out by `alive.dec()`).
    pub fn enter(&self) {
        let before = self.alive.inc();
        // Pairs with the fence in `wait_for_instances`: either the ticker
        // sees the instance, or this sees the ticker waiting.
        fence(Ordering::SeqCst);
        if before == 0 && self.waiting.load(Ordering::Relaxed) {
            // Taken so the wake-up cannot fall between the ticker's check
            // and its wait.
            let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
    }

    /// Blocks while no instance is alive.
    fn wait_for_instances(&self) {
        let mut lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        while self.alive.get() <= 0 {
            lock = self.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.store(false, Ordering::Relaxed);
    }
}

/// Starts the ticker for `engine`; it stops by itself once the engine is
/// dropped (at the latest one tick after an instance next appears).
pub fn start(engine: &Engine, activity: Arc<Activity>) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wharf-epoch".into())
        .spawn(move || {
            loop {
                activity.wait_for_instances();
                // A whole tick for the instance that woke the ticker.
                std::thread::sleep(EPOCH_TICK);
                let Some(engine) = weak.upgrade() else { return };
                engine.increment_epoch();
            }
        })
        .expect("spawn the epoch ticker thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_waits_while_nothing_is_alive_and_ticks_while_something_is() {
        let engine = {
            let mut config = wasmtime::Config::new();
            config.epoch_interruption(true);
            Engine::new(&config).unwrap()
        };
        let activity = Arc::new(Activity::new(Gauge::default()));
        start(&engine, activity.clone());
        // An idle ticker leaves the epoch alone; a live instance starts it.
        // (The engine's epoch is only observable through a store.)
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(1);
        std::thread::sleep(EPOCH_TICK * 5);
        let idle = wasmtime::Module::new(&engine, "(module (func (export \"f\")))").unwrap();
        let instance = wasmtime::Instance::new(&mut store, &idle, &[]).unwrap();
        let f = instance.get_typed_func::<(), ()>(&mut store, "f").unwrap();
        assert!(f.call(&mut store, ()).is_ok(), "the epoch moved while no instance was alive");
        activity.enter();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while f.call(&mut store, ()).is_ok() {
            assert!(std::time::Instant::now() < deadline, "the epoch never moved with an instance alive");
            std::thread::sleep(EPOCH_TICK);
        }
        activity.alive.dec();
    }
}

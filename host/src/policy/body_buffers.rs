//! The server-wide budget of request bodies read ahead of admission (see
//! `http/request_body.rs`): the bytes they may hold in memory, where the
//! rest goes, and how many are being read now.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Memory held by read-ahead bodies, bounded; the rest spills to files.
pub struct BodyBuffers {
    memory_budget: u64,
    in_memory: AtomicU64,
    spill_dir: PathBuf,
    reading: Gauge,
    spills: Counter,
}

impl BodyBuffers {
    /// Read-ahead bodies hold at most `memory_budget` bytes in memory, the
    /// rest in unlinked files in `spill_dir`; `reading` counts the bodies
    /// being read ahead, `spills` those that went to a file.
    pub fn new(memory_budget: u64, spill_dir: PathBuf, reading: Gauge, spills: Counter) -> Self {
        Self { memory_budget, in_memory: AtomicU64::new(0), spill_dir, reading, spills }
    }

    /// Bytes of read-ahead bodies held in memory now.
    pub fn in_memory(&self) -> u64 {
        self.in_memory.load(Ordering::Relaxed)
    }

    /// Where bodies past the memory budget are written.
    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// The gauge of bodies being read ahead now.
    pub fn reading_gauge(&self) -> &Gauge {
        &self.reading
    }

    /// Counts a body that went to a file.
    pub fn spilled(&self) {
        self.spills.inc();
    }

    /// Takes `bytes` from the memory budget, if they fit.
    pub fn reserve_memory(&self, bytes: u64) -> bool {
        self.in_memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.memory_budget)
            })
            .is_ok()
    }

    /// Gives `bytes` back to the memory budget.
    pub fn release_memory(&self, bytes: u64) {
        self.in_memory.fetch_sub(bytes, Ordering::Relaxed);
    }
}

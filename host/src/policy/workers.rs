//! Worker pools: a route's bound on instances running at once, with a
//! queue in arrival order.

use super::Rejection;
use crate::manifest::WorkerPoolSpec;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `workers` instances of a route at once, at most `queue` more
/// waiting in arrival order (tokio's semaphore is fair). A waiting request
/// whose client leaves drops its future and so its place in the queue.
pub struct WorkerPool {
    permits: Arc<Semaphore>,
    queue_limit: usize,
    queued: AtomicUsize,
    spec: WorkerPoolSpec,
}

impl WorkerPool {
    /// A pool for `spec`.
    pub fn new(spec: WorkerPoolSpec) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(spec.workers)),
            queue_limit: spec.queue,
            queued: AtomicUsize::new(0),
            spec,
        }
    }

    /// A worker slot, at once, after waiting in the queue, or `QueueFull`.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Rejection> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.queue_limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::QueueFull);
        }
        let _in_queue = QueuePlace(&self.queued);
        Ok(self.permits.clone().acquire_owned().await.expect("worker semaphore is never closed"))
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The pool's configuration.
    pub fn spec(&self) -> WorkerPoolSpec {
        self.spec
    }
}

struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

//! Which server thread this is: each worker thread marks itself with its
//! index when it starts. Reuse keeps a handler per worker; the access log
//! names the worker that served a request (admission by delay decides per
//! worker, so a refusal is read beside its worker's other requests).

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Marks this thread as server worker `index`.
pub fn mark_this_thread(index: usize) {
    INDEX.with(|thread| thread.set(index));
}

/// This thread's worker index, if it is a server worker.
pub fn this_thread() -> Option<usize> {
    Some(INDEX.with(Cell::get)).filter(|&index| index != usize::MAX)
}

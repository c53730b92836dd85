//! Request lines gathered per runtime thread: each thread appends its lines
//! to a buffer of its own and writes the buffer to stderr in one `write`
//! when it runs out of work (from its park hook) or the buffer fills.
//! Handing each line to a writer thread instead (as `tracing-appender`
//! does) measured a wake-up, a `sched_yield` and a `write` per request.
//!
//! Lines wait at most until their thread next has nothing to do; threads
//! that never installed a batch write each line at once.

use std::cell::RefCell;
use std::io::Write as _;

thread_local! {
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// A batch is written once it holds this many bytes, busy or not.
const FLUSH_AT: usize = 32 << 10;

/// Gathers this thread's lines; its runtime must call [`flush_this_thread`]
/// when it parks and before the thread ends.
pub fn install_on_this_thread() {
    BATCH.with_borrow_mut(|batch| *batch = Some(Vec::with_capacity(FLUSH_AT * 2)));
}

/// Appends one whole line (or writes it now on a thread without a batch).
pub fn append(line: &[u8]) {
    let gathered = BATCH.with_borrow_mut(|batch| match batch {
        Some(batch) => {
            batch.extend_from_slice(line);
            if batch.len() >= FLUSH_AT {
                write_out(batch);
            }
            true
        }
        None => false,
    });
    if !gathered {
        write_to_stderr(line);
    }
}

/// Writes whatever this thread has gathered.
pub fn flush_this_thread() {
    BATCH.with_borrow_mut(|batch| {
        if let Some(batch) = batch {
            write_out(batch);
        }
    });
}

fn write_out(batch: &mut Vec<u8>) {
    if !batch.is_empty() {
        write_to_stderr(batch);
        batch.clear();
    }
}

/// One `write_all` under stderr's lock: batches from different threads (and
/// the rest of the log) never interleave within a line.
fn write_to_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

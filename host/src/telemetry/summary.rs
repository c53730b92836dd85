//! Log lines for events that can come in floods (refused connections,
//! denied outbound calls): every event is counted, but a line is written at
//! most once a second, carrying the count since the last one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shortest gap between two lines about the same kind of event.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Counts events of one kind and says when a line about them is due.
#[derive(Default)]
pub struct LogSummary {
    since_last_line: AtomicU64,
    last_line: Mutex<Option<Instant>>,
}

impl LogSummary {
    /// Counts one event; `Some(n)` when a line is due now, `n` being the
    /// events since the last line (this one included).
    pub fn note(&self) -> Option<u64> {
        self.since_last_line.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < LOG_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.since_last_line.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gives_one_line_with_the_count_after() {
        let summary = LogSummary::default();
        assert_eq!(summary.note(), Some(1), "the first event is logged at once");
        for _ in 0..999 {
            assert_eq!(summary.note(), None);
        }
        *summary.last_line.lock().unwrap() = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(summary.note(), Some(1000), "the next line carries the count");
    }
}

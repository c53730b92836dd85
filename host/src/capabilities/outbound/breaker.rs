//! A circuit breaker per upstream host, the defence Go services reach for
//! against failing downstreams (sony/gobreaker's states): after
//! `breaker_failures` consecutive failures (transport errors, timeouts, 5xx
//! answers) a host's breaker opens and calls to it fail at once instead of
//! each waiting out a connect timeout; after `breaker_open_secs` one call
//! goes through as a probe (half-open): if it succeeds the breaker closes,
//! if it fails the breaker opens again.
//!
//! Only hosts with something to remember (a failure, an open breaker) are
//! tracked, at most [`MAX_TRACKED`] of them, so guests choosing hosts under
//! a wildcard cannot grow the table without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hosts tracked at most; past this, new hosts are not tracked (their
/// calls pass) until some close.
pub const MAX_TRACKED: usize = 1024;

/// One host's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls pass; this many consecutive failures so far.
    Closed(u32),
    /// Calls fail at once until then.
    Open(Instant),
    /// One probe is in flight; other calls fail at once.
    Probing,
}

/// The breakers of every upstream host.
pub struct Breakers {
    hosts: Mutex<HashMap<String, State>>,
    failures_to_open: u32,
    open_for: Duration,
    trips: std::sync::atomic::AtomicU64,
}

/// Why a call may not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open;

/// Permission for one call; report how it went with [`Call::done`]. A
/// probe dropped without a report (its guest was aborted) lets the next
/// call probe instead.
pub struct Call {
    breakers: Option<Arc<Breakers>>,
    host: String,
    probe: bool,
}

/// How a host's breaker stands, for `/healthz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerReport {
    /// `host:port`.
    pub host: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// Consecutive failures (closed), or seconds until a probe may go (open).
    pub failures: u32,
    /// Seconds until a probe may go, while open.
    pub open_for_secs: f64,
}

impl Breakers {
    /// Breakers opening after `failures_to_open` failures (0: never) for
    /// `open_for`.
    pub fn new(failures_to_open: u32, open_for: Duration) -> Arc<Self> {
        Arc::new(Self { hosts: Mutex::default(), failures_to_open, open_for, trips: Default::default() })
    }

    /// May a call to `host` go out now?
    pub fn admit(self: &Arc<Self>, host: &str) -> Result<Call, Open> {
        if self.failures_to_open == 0 {
            return Ok(Call { breakers: None, host: String::new(), probe: false });
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let probe = match hosts.get(host).copied() {
            None | Some(State::Closed(_)) => false,
            Some(State::Open(until)) if Instant::now() < until => return Err(Open),
            Some(State::Open(_)) => {
                hosts.insert(host.to_string(), State::Probing);
                true
            }
            Some(State::Probing) => return Err(Open),
        };
        Ok(Call { breakers: Some(self.clone()), host: host.to_string(), probe })
    }

    /// Times a breaker has opened.
    pub fn trips(&self) -> u64 {
        self.trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Breakers open or half-open now.
    pub fn open_count(&self) -> usize {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.values().filter(|s| !matches!(s, State::Closed(_))).count()
    }

    /// Every tracked host's breaker.
    pub fn report(&self) -> Vec<BreakerReport> {
        let now = Instant::now();
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut report: Vec<BreakerReport> = hosts
            .iter()
            .map(|(host, state)| {
                let (state, failures, open_for_secs) = match *state {
                    State::Closed(failures) => ("closed", failures, 0.0),
                    State::Open(until) if until > now => ("open", 0, (until - now).as_secs_f64()),
                    State::Open(_) | State::Probing => ("half_open", 0, 0.0),
                };
                BreakerReport { host: host.clone(), state, failures, open_for_secs }
            })
            .collect();
        report.sort_by(|a, b| a.host.cmp(&b.host));
        report
    }

    fn record(&self, host: &str, success: bool, probe: bool) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if success {
            hosts.remove(host);
            return;
        }
        let current = hosts.get(host).copied();
        let next = match current {
            _ if probe => self.open(),
            None | Some(State::Closed(_)) if hosts.len() >= MAX_TRACKED && current.is_none() => return,
            None => self.after_failure(0),
            Some(State::Closed(failures)) => self.after_failure(failures),
            // A call admitted before the breaker opened: it stays open.
            Some(state) => state,
        };
        hosts.insert(host.to_string(), next);
    }

    fn after_failure(&self, failures: u32) -> State {
        if failures + 1 >= self.failures_to_open { self.open() } else { State::Closed(failures + 1) }
    }

    fn open(&self) -> State {
        self.trips.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        State::Open(Instant::now() + self.open_for)
    }
}

impl Call {
    /// Reports how the call went.
    pub fn done(mut self, success: bool) {
        if let Some(breakers) = self.breakers.take() {
            breakers.record(&self.host, success, self.probe);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(breakers) = self.breakers.take()
            && self.probe
        {
            let mut hosts = breakers.hosts.lock().unwrap_or_else(|e| e.into_inner());
            hosts.insert(std::mem::take(&mut self.host), State::Open(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let breakers = Breakers::new(3, Duration::ZERO);
        for _ in 0..2 {
            breakers.admit("a:80").unwrap().done(false);
        }
        breakers.admit("a:80").unwrap().done(true);
        assert_eq!(breakers.report().len(), 0, "a success forgets the failures");
        for _ in 0..3 {
            breakers.admit("a:80").unwrap().done(false);
        }
        assert_eq!(breakers.trips(), 1);
        // Open for zero seconds: the next call is the probe, others wait.
        let probe = breakers.admit("a:80").unwrap();
        assert!(breakers.admit("a:80").is_err(), "one probe at a time");
        assert!(breakers.admit("b:80").is_ok(), "other hosts are unaffected");
        probe.done(true);
        assert!(breakers.admit("a:80").is_ok());
        assert_eq!(breakers.open_count(), 0);
    }

    #[test]
    fn a_failed_probe_reopens_and_an_abandoned_one_lets_another_try() {
        let breakers = Breakers::new(1, Duration::from_secs(3600));
        breakers.admit("a:80").unwrap().done(false);
        assert!(breakers.admit("a:80").is_err(), "open for an hour");
        let breakers = Breakers::new(1, Duration::ZERO);
        breakers.admit("a:80").unwrap().done(false);
        drop(breakers.admit("a:80").unwrap());
        let probe = breakers.admit("a:80").expect("an abandoned probe frees the way");
        probe.done(false);
        assert_eq!(breakers.trips(), 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let breakers = Breakers::new(5, Duration::from_secs(1));
        for i in 0..(MAX_TRACKED + 100) {
            breakers.admit(&format!("h{i}:80")).unwrap().done(false);
        }
        assert_eq!(breakers.report().len(), MAX_TRACKED);
    }
}

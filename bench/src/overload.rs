//! The load generators for the overload cells, recording every response's
//! status and latency so the latency of the served can be told from that of
//! the refused (wrk reports them together):
//!
//! - closed loop: `concurrency` connections, each sending its next request
//!   as soon as the last is answered (what wrk does);
//! - open loop: requests offered at a fixed rate whatever the server does
//!   (as users arrive), over a pool of `concurrency` keep-alive connections;
//!   a request waits for an idle connection when none is free, and its
//!   latency counts from when it was offered, so a server that falls behind
//!   is charged for the queue it builds (no coordinated omission). The pool
//!   is connected, and the server done accepting it, before the first
//!   offer: overload that arrives on open connections, not a connection
//!   storm (measured: the storm of 1,000 connects put the cell's p99 in its
//!   first 100 ms, 60-100 ms, against about 20 ms after it).

use crate::load::{cpu_seconds, machine_ticks, status_kib};
use crate::servers::Server;
use crate::workload::{Cell, Workload};
use anyhow::Result;
use http_body_util::{BodyExt, Empty};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The rate the open-loop cells offer: about twice what two cores serve of
/// a guest that burns 1 ms of CPU a request (a refusal costs a few dozen
/// microseconds, so refusing the excess leaves most of the cores to the
/// served).
pub const OFFERED_PER_SEC: u64 = 4_000;

#[derive(Default)]
struct Outcome {
    ok_us: Vec<u32>,
    refused_us: Vec<u32>,
    errors: u64,
}

impl Outcome {
    fn record(&mut self, status: http::StatusCode, took: Duration) {
        let us = took.as_micros().min(u32::MAX as u128) as u32;
        if status.is_success() { self.ok_us.push(us) } else { self.refused_us.push(us) }
    }
}

/// 99th percentile of sorted microseconds, in milliseconds.
fn p99_ms(sorted_us: &[u32]) -> f64 {
    sorted_us
        .get(((sorted_us.len() as f64 * 0.99) as usize).min(sorted_us.len().saturating_sub(1)))
        .map_or(0.0, |us| *us as f64 / 1000.0)
}

pub fn measure(
    server: &Server,
    workload: Workload,
    concurrency: usize,
    seconds: u64,
    rep: usize,
) -> Result<Cell> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let pid = server.child.id();
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let idle_rss = status_kib(pid, "VmRSS:")?;
    let url: http::Uri = format!("http://{}{}", server.addr, server.path(workload)).parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    // The open loop's pool is connected (and the server done accepting it)
    // before the first offer: a keep-alive pool, not a connection storm.
    let pool: Vec<Option<Sender>> = if workload == Workload::OverloadCpu {
        local.block_on(&runtime, async {
            let connecting: Vec<_> =
                (0..concurrency).map(|_| tokio::task::spawn_local(connect(server.addr))).collect();
            let mut pool = Vec::with_capacity(concurrency);
            for connection in connecting {
                pool.push(connection.await.ok().flatten());
            }
            wait_until_quiet(pid).await;
            pool
        })
    } else {
        Vec::new()
    };
    let cpu_before = cpu_seconds(pid)?;
    let machine_before = machine_ticks()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let outcomes = local.block_on(&runtime, async {
        let clients: Vec<_> = if workload == Workload::OverloadCpu {
            let offered = Rc::new(Offered::default());
            let clients = pool
                .into_iter()
                .map(|sender| {
                    let (url, offered) = (url.clone(), offered.clone());
                    tokio::task::spawn_local(open_client(server.addr, url, deadline, offered, sender))
                })
                .collect();
            offer(&offered, OFFERED_PER_SEC, started, deadline).await;
            clients
        } else {
            (0..concurrency)
                .map(|_| tokio::task::spawn_local(client(server.addr, url.clone(), deadline)))
                .collect()
        };
        let mut all = Vec::new();
        for client in clients {
            all.push(client.await.unwrap_or(Outcome { errors: 1, ..Outcome::default() }));
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let machine_after = machine_ticks()?;
    let (steal, total) = (machine_after.0 - machine_before.0, machine_after.1 - machine_before.1);
    let mut ok_us: Vec<u32> = outcomes.iter().flat_map(|o| o.ok_us.iter().copied()).collect();
    ok_us.sort_unstable();
    let mut refused_us: Vec<u32> = outcomes.iter().flat_map(|o| o.refused_us.iter().copied()).collect();
    refused_us.sort_unstable();
    let refused = refused_us.len() as u64;
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    let ok = ok_us.len() as u64;
    Ok(Cell {
        server: server.name.clone(),
        rep,
        steal_pct: if total > 0 { steal as f64 * 100.0 / total as f64 } else { 0.0 },
        pinned: server.pinned,
        workload,
        concurrency,
        ok_per_sec: ok as f64 / elapsed,
        p50_ms: ok_us.get(ok_us.len() / 2).map_or(0.0, |us| *us as f64 / 1000.0),
        p99_ms: p99_ms(&ok_us),
        errors: refused + errors,
        cpu_us_per_req: if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 },
        cpu_cores: cpu / elapsed,
        peak_rss_mib: status_kib(pid, "VmHWM:")? / 1024.0,
        idle_rss_mib: idle_rss / 1024.0,
        refused_share: if ok + refused > 0 { refused as f64 / (ok + refused) as f64 } else { 0.0 },
        ok_p99_ms: p99_ms(&ok_us),
        refused_p99_ms: p99_ms(&refused_us),
    })
}

/// Waits (up to 5 s) until the server process has used at most a tenth
/// of a core over 100 ms.
async fn wait_until_quiet(pid: u32) {
    let give_up = Instant::now() + Duration::from_secs(5);
    let Ok(mut before) = cpu_seconds(pid) else { return };
    while Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(now) = cpu_seconds(pid) else { return };
        if now - before <= 0.01 {
            return;
        }
        before = now;
    }
}

/// A keep-alive connection to `addr` (its driver spawned on this thread),
/// or `None` after a short pause if the server does not take it.
async fn connect(addr: std::net::SocketAddr) -> Option<Sender> {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        tokio::time::sleep(Duration::from_millis(10)).await;
        return None;
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
    tokio::task::spawn_local(connection);
    Some(sender)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>;

/// One GET of `url` on `sender`, its body read: the status, or `None` if
/// the connection failed.
async fn exchange(sender: &mut Sender, url: &http::Uri) -> Option<http::StatusCode> {
    let request = http::Request::get(url.clone()).header("host", "bench").body(Empty::new()).ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status();
    response.into_body().collect().await.ok()?;
    Some(status)
}

/// One connection's loop until `deadline` (reconnecting if the server
/// closes it).
async fn client(addr: std::net::SocketAddr, url: http::Uri, deadline: Instant) -> Outcome {
    let mut outcome = Outcome::default();
    'connect: while Instant::now() < deadline {
        let Some(mut sender) = connect(addr).await else {
            outcome.errors += 1;
            continue;
        };
        while Instant::now() < deadline {
            let sent = Instant::now();
            let Some(status) = exchange(&mut sender, &url).await else {
                outcome.errors += 1;
                continue 'connect;
            };
            outcome.record(status, sent.elapsed());
        }
    }
    outcome
}

/// The open loop's requests offered and not yet sent (their offer times),
/// shared by the connections of one single-threaded client.
#[derive(Default)]
struct Offered {
    waiting: RefCell<VecDeque<Instant>>,
    ready: Notify,
}

/// Offers `per_sec` requests a second from `started` until `deadline`.
async fn offer(offered: &Offered, per_sec: u64, started: Instant, deadline: Instant) {
    let mut count = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while Instant::now() < deadline {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * per_sec as f64) as u64;
        while count < due {
            let at = started + Duration::from_secs_f64(count as f64 / per_sec as f64);
            offered.waiting.borrow_mut().push_back(at);
            offered.ready.notify_one();
            count += 1;
        }
    }
}

/// One connection of the open loop: sends offered requests until
/// `deadline`; what is still unsent then counts as errors.
async fn open_client(
    addr: std::net::SocketAddr,
    url: http::Uri,
    deadline: Instant,
    offered: Rc<Offered>,
    mut connected: Option<Sender>,
) -> Outcome {
    let mut outcome = Outcome::default();
    'connect: while Instant::now() < deadline {
        let sender = match connected.take() {
            Some(sender) => Some(sender),
            None => connect(addr).await,
        };
        let Some(mut sender) = sender else {
            outcome.errors += 1;
            continue;
        };
        loop {
            let next = offered.waiting.borrow_mut().pop_front();
            let Some(at) = next else {
                if Instant::now() >= deadline {
                    break 'connect;
                }
                tokio::select! {
                    () = offered.ready.notified() => continue,
                    () = tokio::time::sleep_until(deadline.into()) => break 'connect,
                }
            };
            if Instant::now() >= deadline {
                // Offered, never sent: the server fell this far behind.
                outcome.errors += 1 + offered.waiting.borrow_mut().drain(..).count() as u64;
                break 'connect;
            }
            let Some(status) = exchange(&mut sender, &url).await else {
                outcome.errors += 1;
                continue 'connect;
            };
            outcome.record(status, at.elapsed());
        }
    }
    outcome
}

//! The load generator for the overload cells: `concurrency` connections,
//! each sending its next request as soon as the last is answered (what wrk
//! does), recording every response's status and latency, so the latency of
//! the served can be told from that of the refused (wrk reports them
//! together).

use crate::load::{cpu_seconds, machine_ticks, status_kib};
use crate::servers::Server;
use crate::workload::{Cell, Workload};
use anyhow::Result;
use http_body_util::{BodyExt, Empty};
use std::time::{Duration, Instant};

struct Outcome {
    ok_us: Vec<u32>,
    refused: u64,
    errors: u64,
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
    let cpu_before = cpu_seconds(pid)?;
    let machine_before = machine_ticks()?;
    let url: http::Uri = format!("http://{}{}", server.addr, server.path(workload)).parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let outcomes = runtime.block_on(async {
        let clients: Vec<_> =
            (0..concurrency).map(|_| tokio::spawn(client(server.addr, url.clone(), deadline))).collect();
        let mut all = Vec::new();
        for client in clients {
            all.push(client.await.unwrap_or(Outcome { ok_us: Vec::new(), refused: 0, errors: 1 }));
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let machine_after = machine_ticks()?;
    let (steal, total) = (machine_after.0 - machine_before.0, machine_after.1 - machine_before.1);
    let mut ok_us: Vec<u32> = outcomes.iter().flat_map(|o| o.ok_us.iter().copied()).collect();
    ok_us.sort_unstable();
    let refused: u64 = outcomes.iter().map(|o| o.refused).sum();
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    let ok = ok_us.len() as u64;
    let percentile = |p: f64| {
        ok_us
            .get(((ok_us.len() as f64 * p) as usize).min(ok_us.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    Ok(Cell {
        server: server.name.clone(),
        rep,
        steal_pct: if total > 0 { steal as f64 * 100.0 / total as f64 } else { 0.0 },
        pinned: server.pinned,
        workload,
        concurrency,
        ok_per_sec: ok as f64 / elapsed,
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
        errors: refused + errors,
        cpu_us_per_req: if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 },
        cpu_cores: cpu / elapsed,
        peak_rss_mib: status_kib(pid, "VmHWM:")? / 1024.0,
        idle_rss_mib: idle_rss / 1024.0,
        refused_share: if ok + refused > 0 { refused as f64 / (ok + refused) as f64 } else { 0.0 },
        ok_p99_ms: percentile(0.99),
    })
}

/// One connection's loop until `deadline` (reconnecting if the server
/// closes it).
async fn client(addr: std::net::SocketAddr, url: http::Uri, deadline: Instant) -> Outcome {
    let mut outcome = Outcome { ok_us: Vec::new(), refused: 0, errors: 0 };
    'connect: while Instant::now() < deadline {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            outcome.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            outcome.errors += 1;
            continue;
        };
        tokio::spawn(connection);
        while Instant::now() < deadline {
            let request =
                http::Request::get(url.clone()).header("host", "bench").body(Empty::<bytes::Bytes>::new());
            let Ok(request) = request else { return outcome };
            let sent = Instant::now();
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(_) => {
                    outcome.errors += 1;
                    continue 'connect;
                }
            };
            let status = response.status();
            if response.into_body().collect().await.is_err() {
                outcome.errors += 1;
                continue 'connect;
            }
            let took = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
            if status.is_success() {
                outcome.ok_us.push(took);
            } else {
                outcome.refused += 1;
            }
        }
    }
    outcome
}

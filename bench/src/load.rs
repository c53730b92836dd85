//! One cell: `wrk` against one server at one concurrency, with the
//! server's CPU time and memory read from `/proc` around it.

use crate::servers::Server;
use crate::workload::{Cell, Workload};
use anyhow::{Context, Result};
use std::process::Command;

/// CPU seconds (user + system) the process has used.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("stat format")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

pub(crate) fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// The machine's CPU time so far, all cores, from `/proc/stat`: (steal,
/// total), in ticks.
pub(crate) fn machine_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let total = ticks.iter().take(8).sum();
    Ok((ticks.get(7).copied().unwrap_or(0), total))
}

pub fn measure(
    server: &Server,
    workload: Workload,
    concurrency: usize,
    seconds: u64,
    rep: usize,
) -> Result<Cell> {
    let pid = server.child.id();
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5"); // reset peak RSS
    let idle_rss = status_kib(pid, "VmRSS:")?;
    let cpu_before = cpu_seconds(pid)?;
    let machine_before = machine_ticks()?;
    let path = server.path(workload);
    // Pinned: the server has core 0, the load generator core 1. wrk needs a
    // descriptor per connection.
    let (pin, threads) = if server.pinned { ("taskset -c 1 ", 1) } else { ("", concurrency.clamp(1, 2)) };
    let script = format!(
        "ulimit -n 65536 2>/dev/null; exec {pin}wrk --latency -t {threads} -c {concurrency} -d {seconds}s --timeout 10s http://{}{path}",
        server.addr
    );
    let output = Command::new("sh").arg("-c").arg(script).env_remove("RUST_BACKTRACE").output()?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let machine_after = machine_ticks()?;
    let (steal, total) = (machine_after.0 - machine_before.0, machine_after.1 - machine_before.1);
    let peak_rss = status_kib(pid, "VmHWM:")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(output.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    let wrk = parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))?;
    let ok = wrk.requests.saturating_sub(wrk.non_2xx);
    Ok(Cell {
        server: server.name.clone(),
        rep,
        steal_pct: if total > 0 { steal as f64 * 100.0 / total as f64 } else { 0.0 },
        pinned: server.pinned,
        workload,
        concurrency,
        ok_per_sec: ok as f64 / wrk.seconds,
        p50_ms: wrk.p50_ms,
        p99_ms: wrk.p99_ms,
        errors: wrk.non_2xx + wrk.socket_errors,
        cpu_us_per_req: if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 },
        cpu_cores: cpu / wrk.seconds,
        peak_rss_mib: peak_rss / 1024.0,
        idle_rss_mib: idle_rss / 1024.0,
        refused_share: if wrk.requests > 0 { wrk.non_2xx as f64 / wrk.requests as f64 } else { 0.0 },
        ok_p99_ms: wrk.p99_ms,
        refused_p99_ms: 0.0,
    })
}

struct Wrk {
    requests: u64,
    seconds: f64,
    non_2xx: u64,
    socket_errors: u64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_wrk(text: &str) -> Option<Wrk> {
    let duration_ms = |value: &str| -> Option<f64> {
        let value = value.trim();
        if let Some(v) = value.strip_suffix("us") {
            v.parse::<f64>().ok().map(|v| v / 1000.0)
        } else if let Some(v) = value.strip_suffix("ms") {
            v.parse().ok()
        } else if let Some(v) = value.strip_suffix('m') {
            v.parse::<f64>().ok().map(|v| v * 60_000.0)
        } else {
            value.strip_suffix('s')?.parse::<f64>().ok().map(|v| v * 1000.0)
        }
    };
    let mut wrk = Wrk { requests: 0, seconds: 0.0, non_2xx: 0, socket_errors: 0, p50_ms: 0.0, p99_ms: 0.0 };
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("50%") {
            wrk.p50_ms = duration_ms(rest)?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            wrk.p99_ms = duration_ms(rest)?;
        } else if line.contains("requests in") {
            let mut words = line.split_whitespace();
            wrk.requests = words.next()?.parse().ok()?;
            let seconds = words.nth(2)?.trim_end_matches(',');
            wrk.seconds = duration_ms(seconds)? / 1000.0;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.non_2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            wrk.socket_errors =
                rest.split(',').filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok()).sum();
        }
    }
    (wrk.seconds > 0.0).then_some(wrk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 3s test @ http://127.0.0.1:1/hello\n  2 threads and 100 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.51ms  300.00us   9.00ms   90.00%\n  Latency Distribution\n     50%    1.40ms\n     75%    1.60ms\n     90%    1.90ms\n     99%  850.00us\n  123456 requests in 3.00s, 10.00MB read\n  Non-2xx or 3xx responses: 12\n  Socket errors: connect 0, read 1, write 0, timeout 2\nRequests/sec:  41152.00\n";
        let wrk = parse_wrk(text).unwrap();
        assert_eq!((wrk.requests, wrk.non_2xx, wrk.socket_errors), (123456, 12, 3));
        assert_eq!((wrk.p50_ms, wrk.p99_ms, wrk.seconds), (1.4, 0.85, 3.0));
    }
}

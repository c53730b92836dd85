//! `wharf-bench`: Wharf beside the physical limit of the machine (a native
//! hyper server answering the same handlers) and its nearest peer
//! (`wasmtime serve`, when a `wasmtime` binary is on PATH), in the same run,
//! under the same load generator (`wrk`), reported as ratios because the
//! machines we run on are shared and noisy.
//!
//! `cargo run --release -p wharf-bench -- --quick` (3 s a cell) or `--full`
//! (10 s a cell). It builds the components and the `wharf` binary in release
//! mode, starts each server as its own process, measures hello, counter and
//! sleep-100 ms at concurrency 1, 10, 100 and 1,000 (successful requests/s,
//! p50, p99, errors, server CPU per request, peak RSS), prints a Markdown
//! table, saves it under `bench/results/` with an SVG plot.
//!
//! `wharf-bench native --port N` is the native baseline on its own.

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod native;
mod plot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Benchmark Wharf against a native hyper server and wasmtime serve")]
struct Cli {
    /// 3 seconds a cell.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// 10 seconds a cell.
    #[arg(long)]
    full: bool,
    /// Seconds a cell (overrides --quick/--full).
    #[arg(long)]
    seconds: Option<u64>,
    /// Only these workloads (hello, counter, sleep), comma-separated.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Only these concurrencies, comma-separated.
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Only these servers (native, wharf, wasmtime, wasmtime-tuned).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Extra arguments for `wharf up` (for experiments).
    #[arg(long, allow_hyphen_values = true)]
    wharf_args: Vec<String>,
    /// Write results under bench/results/ (default: print only for --quick).
    #[arg(long)]
    save: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Run only the native baseline server.
    Native {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Hello,
    Counter,
    Sleep,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Counter => "counter",
            Self::Sleep => "sleep-100ms",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Hello => "/hello",
            Self::Counter => "/api/count",
            Self::Sleep => "/sleep",
        }
    }
}

/// One server under test, as a running process.
struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    workloads: Vec<Workload>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one cell measured.
#[derive(Clone, Debug)]
struct Cell {
    server: &'static str,
    workload: Workload,
    concurrency: usize,
    ok_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    cpu_us_per_req: f64,
    cpu_cores: f64,
    peak_rss_mib: f64,
    idle_rss_mib: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::Native { port }) = cli.command {
        return native::serve(port);
    }
    // Servers are started without RUST_BACKTRACE (it cost wasmtime ~10%).
    let seconds = cli.seconds.unwrap_or(if cli.full { 10 } else { 3 });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
    ensure_wrk()?;
    build(&root)?;

    let workloads: Vec<Workload> = [Workload::Hello, Workload::Counter, Workload::Sleep]
        .into_iter()
        .filter(|w| {
            cli.workloads.is_empty() || cli.workloads.iter().any(|n| w.name().starts_with(n.as_str()))
        })
        .collect();
    let concurrency: Vec<usize> =
        if cli.concurrency.is_empty() { vec![1, 10, 100, 1000] } else { cli.concurrency.clone() };
    let wanted = |name: &str| cli.servers.is_empty() || cli.servers.iter().any(|s| s == name);

    let mut cells = Vec::new();
    let mut notes = Vec::new();
    let mut servers: Vec<Box<dyn Fn() -> Result<Server>>> = Vec::new();
    if wanted("native") {
        servers.push(Box::new(start_native));
    }
    if wanted("wharf") {
        let (root, extra) = (root.clone(), cli.wharf_args.clone());
        servers.push(Box::new(move || start_wharf(&root, &extra)));
    }
    match which("wasmtime") {
        Some(wasmtime) => {
            let version = Command::new(&wasmtime).arg("--version").output().ok();
            let version = version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
            notes.push(format!("wasmtime serve: {version}"));
            let hello = root.join("target/components/wasm32-wasip2/release/hello.wasm");
            if wanted("wasmtime") {
                let (w, h) = (wasmtime.clone(), hello.clone());
                servers.push(Box::new(move || start_wasmtime(&w, &h, false)));
            }
            if wanted("wasmtime-tuned") {
                servers.push(Box::new(move || start_wasmtime(&wasmtime, &hello, true)));
            }
        }
        None => notes.push("wasmtime serve: not measured (no `wasmtime` on PATH; `cargo install wasmtime-cli --version 48.0.8`)".into()),
    }

    for start in &servers {
        let server = start()?;
        eprintln!("== {} on {}", server.name, server.addr);
        for &workload in &workloads {
            if !server.workloads.contains(&workload) {
                continue;
            }
            for &c in &concurrency {
                let cell = measure(&server, workload, c, seconds)?;
                eprintln!(
                    "   {:<12} c={:<5} {:>9.0} ok/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:>6}  cpu {:>6.1} us/req  peak rss {:>6.1} MiB",
                    workload.name(),
                    c,
                    cell.ok_per_sec,
                    cell.p50_ms,
                    cell.p99_ms,
                    cell.errors,
                    cell.cpu_us_per_req,
                    cell.peak_rss_mib
                );
                cells.push(cell);
            }
        }
    }

    let report = report(&cells, &notes, seconds, &root)?;
    println!("{report}");
    if cli.save || cli.full {
        let stamp = format!("{}-{}", today(), commit(&root));
        let dir = root.join("bench/results");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{stamp}.md")), &report)?;
        plot::write(&cells, &dir.join(format!("{stamp}.svg")))?;
        std::fs::write(dir.join("latest.md"), &report)?;
        plot::write(&cells, &dir.join("latest.svg"))?;
        eprintln!("saved bench/results/{stamp}.md and .svg (and latest.*)");
    }
    Ok(())
}

fn ensure_wrk() -> Result<()> {
    if which("wrk").is_some() {
        return Ok(());
    }
    eprintln!("wrk is missing; installing it with apt-get (Debian package `wrk`)");
    let sudo = if std::env::var("USER").as_deref() == Ok("root") { "" } else { "sudo " };
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{sudo}apt-get update -qq && {sudo}apt-get install -y -qq wrk"))
        .status()?;
    if !status.success() || which("wrk").is_none() {
        bail!("could not install wrk; install it (apt-get install wrk) and run again");
    }
    Ok(())
}

fn build(root: &Path) -> Result<()> {
    eprintln!("building the components and wharf (release)...");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = clean_cargo(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(root.join("components"))
        .status()?;
    anyhow::ensure!(status.success(), "building the components failed");
    let status =
        clean_cargo(&cargo).args(["build", "--release", "-p", "wharf"]).current_dir(root).status()?;
    anyhow::ensure!(status.success(), "building wharf failed");
    Ok(())
}

fn clean_cargo(cargo: &str) -> Command {
    let mut command = Command::new(cargo);
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME" || key.starts_with("RUSTFLAGS") {
            command.env_remove(key);
        }
    }
    command
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_until_serving(addr: SocketAddr, path: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("server exited with {status} before serving");
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = write!(stream, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut reply = String::new();
            let _ = stream.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "server on {addr} did not answer 200 on {path}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn quiet_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_remove("RUST_BACKTRACE").stdin(Stdio::null()).stdout(Stdio::null());
    command
}

fn start_native() -> Result<Server> {
    let port = free_port()?;
    let mut child = quiet_command(std::env::current_exe()?)
        .args(["native", "--port", &port.to_string()])
        .stderr(Stdio::null())
        .spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_serving(addr, "/hello", &mut child)?;
    Ok(Server {
        name: "native",
        child,
        addr,
        workloads: vec![Workload::Hello, Workload::Counter, Workload::Sleep],
    })
}

fn start_wharf(root: &Path, extra: &[String]) -> Result<Server> {
    let port = free_port()?;
    let log = std::fs::File::create(root.join("target/bench-wharf.log"))?;
    let mut child = quiet_command(root.join("target/release/wharf"))
        .args(["up", "--manifest"])
        .arg(root.join("bench/wharf-bench.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stderr(log)
        .spawn()
        .context("start target/release/wharf")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_serving(addr, "/hello", &mut child)?;
    Ok(Server {
        name: "wharf",
        child,
        addr,
        workloads: vec![Workload::Hello, Workload::Counter, Workload::Sleep],
    })
}

fn start_wasmtime(wasmtime: &Path, hello: &Path, tuned: bool) -> Result<Server> {
    let port = free_port()?;
    let mut command = quiet_command(wasmtime);
    command.args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")]);
    if tuned {
        command.args([
            "-O",
            "pooling-allocator=y,pooling-pagemap-scan=y,pooling-decommit-batch-size=100,\
             pooling-memory-keep-resident=10485760,pooling-table-keep-resident=1048576,\
             pooling-total-component-instances=2000,pooling-total-core-instances=20000,\
             pooling-total-memories=4000,pooling-total-tables=8000,pooling-total-stacks=2000",
        ]);
    }
    let mut child = command.arg(hello).stderr(Stdio::null()).spawn()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_serving(addr, "/", &mut child)?;
    let name = if tuned { "wasmtime-tuned" } else { "wasmtime" };
    Ok(Server { name, child, addr, workloads: vec![Workload::Hello] })
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("stat format")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn status_kib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

fn measure(server: &Server, workload: Workload, concurrency: usize, seconds: u64) -> Result<Cell> {
    let pid = server.child.id();
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5"); // reset peak RSS
    let idle_rss = status_kib(pid, "VmRSS:")?;
    let cpu_before = cpu_seconds(pid)?;
    let path = if server.name.starts_with("wasmtime") { "/" } else { workload.path() };
    let threads = concurrency.clamp(1, 2);
    let output = Command::new("wrk")
        .args(["--latency", "-t", &threads.to_string(), "-c", &concurrency.to_string()])
        .args(["-d", &format!("{seconds}s"), "--timeout", "10s"])
        .arg(format!("http://{}{}", server.addr, path))
        .env_remove("RUST_BACKTRACE")
        .output()?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let peak_rss = status_kib(pid, "VmHWM:")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(output.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    let wrk = parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))?;
    let ok = wrk.requests.saturating_sub(wrk.non_2xx);
    Ok(Cell {
        server: server.name,
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

fn report(cells: &[Cell], notes: &[String], seconds: u64, root: &Path) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "# Wharf benchmark, {} ({})\n", today(), commit(root))?;
    writeln!(out, "- machine: {} cores, {}, kernel {}", cores(), cpu_model(), kernel())?;
    writeln!(
        out,
        "- load: wrk 4.1 on the same cores, {seconds} s a cell, keep-alive; a fresh instance per request for every wasm server"
    )?;
    for note in notes {
        writeln!(out, "- {note}")?;
    }
    writeln!(
        out,
        "- ok/s counts successful responses only; errors = non-2xx + socket errors; CPU is the server process's user+system time\n"
    )?;
    writeln!(
        out,
        "| workload | c | server | ok/s | p50 ms | p99 ms | errors | server CPU us/req | CPU cores | peak RSS MiB | vs native | vs wasmtime serve |"
    )?;
    writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for cell in cells {
        let find = |server: &str| {
            cells.iter().find(|c| {
                c.server == server && c.workload == cell.workload && c.concurrency == cell.concurrency
            })
        };
        let ratio = |other: Option<&Cell>| {
            other
                .filter(|o| o.ok_per_sec > 0.0 && cell.server == "wharf")
                .map_or(String::new(), |o| format!("{:.2}x", cell.ok_per_sec / o.ok_per_sec))
        };
        writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.2} | {:.1} | {} | {} |",
            cell.workload.name(),
            cell.concurrency,
            cell.server,
            cell.ok_per_sec,
            cell.p50_ms,
            cell.p99_ms,
            cell.errors,
            cell.cpu_us_per_req,
            cell.cpu_cores,
            cell.peak_rss_mib,
            ratio(find("native")),
            ratio(find("wasmtime-tuned").or(find("wasmtime"))),
        )?;
    }
    let in_flight = |server: &str| {
        cells
            .iter()
            .find(|c| c.server == server && c.workload == Workload::Sleep && c.concurrency == 1000)
            .map(|c| (c.peak_rss_mib - c.idle_rss_mib) * 1024.0 / 1000.0)
    };
    writeln!(
        out,
        "\nMemory per request in flight (peak RSS at c=1000 on sleep-100ms minus idle RSS, over 1000):"
    )?;
    for server in ["native", "wharf"] {
        if let Some(kib) = in_flight(server) {
            writeln!(out, "- {server}: {kib:.1} KiB")?;
        }
    }
    Ok(out)
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn commit(root: &Path) -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
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

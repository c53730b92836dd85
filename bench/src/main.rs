//! `wharf-bench`: Wharf beside the physical limit of the machine (a native
//! hyper server answering the same handlers) and its nearest peer
//! (`wasmtime serve`, when a `wasmtime` binary is on PATH), in the same run,
//! under the same load generator (`wrk`), reported as ratios because the
//! machines we run on are shared and noisy.
//!
//! `cargo run --release -p wharf-bench -- --quick` (3 s a cell, once) or
//! `--full` (5 s a cell, three times). It builds the components, the
//! interpreted guests it can (Python, JavaScript) and the `wharf` binary in
//! release mode, starts every server as its own process, and measures each
//! cell (a workload at a concurrency on a server) `--repeats` times,
//! interleaved: every server's repetition i before any server's i+1, so
//! that drift in the machine moves all servers alike. Hello, the counter on
//! each store (memory, redb, and Redis when `redis-server` is on PATH),
//! sleep-100 ms, a WASI 0.3 hello (fresh and reused), a Spin app's hello,
//! overload (admission by count and by queueing delay), Python and
//! JavaScript hellos, and a pinned one-core comparison: successful
//! requests/s, p50, p99, errors, server CPU per request, peak RSS, the
//! machine's steal time. It prints a Markdown report (medians and spreads,
//! the performance targets) and saves it under `bench/results/` with an SVG
//! plot. `--before PATH` runs an earlier `wharf` binary beside this one.
//!
//! `wharf-bench native --port N` is the native baseline on its own.

use anyhow::{Result, bail};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::Command;

mod guests;
mod load;
mod native;
mod otlp_sink;
mod overload;
mod plot;
mod report;
mod servers;
mod workload;

use servers::{Launch, which};
use workload::{Cell, Workload};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Benchmark Wharf against a native hyper server and wasmtime serve")]
struct Cli {
    /// 3 seconds a cell, once.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// 5 seconds a cell, three times.
    #[arg(long)]
    full: bool,
    /// Seconds a cell (overrides --quick/--full).
    #[arg(long)]
    seconds: Option<u64>,
    /// Times each cell is measured (overrides --quick/--full).
    #[arg(long)]
    repeats: Option<usize>,
    /// Only workloads whose name starts with one of these, comma-separated
    /// (hello, counter, sleep, hello-p3, ...).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Only these concurrencies, comma-separated (default: per workload).
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Only these servers, by exact name (native, wharf, wharf-redb,
    /// wharf-redis, wharf-before, ..., wasmtime, wasmtime-tuned, wasmtime-p3).
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// An earlier `wharf` binary to measure beside this one ("wharf-before").
    #[arg(long)]
    before: Option<PathBuf>,
    /// Skip the pinned one-core comparison.
    #[arg(long)]
    no_pinned: bool,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::Native { port }) = cli.command {
        return native::serve(port);
    }
    let seconds = cli.seconds.unwrap_or(if cli.full { 5 } else { 3 });
    let repeats = cli.repeats.unwrap_or(if cli.full { 3 } else { 1 }).max(1);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
    ensure_wrk()?;
    build(&root)?;

    let wanted_workload = |w: Workload| {
        cli.workloads.is_empty() || cli.workloads.iter().any(|n| w.name().starts_with(n.as_str()))
    };
    let wanted_server = |name: &str| cli.servers.is_empty() || cli.servers.iter().any(|s| name == s);
    let concurrency = |w: Workload| -> Vec<usize> {
        if cli.concurrency.is_empty() { w.default_concurrency().to_vec() } else { cli.concurrency.clone() }
    };

    let mut notes = Vec::new();
    let redis = servers::Redis::start()?;
    match &redis {
        Some(redis) => {
            notes.push(format!("redis: redis-server {} on loopback, no persistence", redis.version))
        }
        None => notes.push("redis: not measured (no `redis-server` on PATH)".into()),
    }
    let wharf_bin = root.join("target/release/wharf");
    let before_bin = match &cli.before {
        Some(path) => {
            let copy = root.join("target/bench-wharf-before");
            std::fs::copy(path, &copy)?;
            let name = path.file_name().map_or("?".into(), |n| n.to_string_lossy().into_owned());
            notes.push(format!("wharf-before: an earlier build ({name}) on the same manifests"));
            Some(copy)
        }
        None => None,
    };
    let mut launches: Vec<Launch> = Vec::new();
    launches.push(servers::native(false)?);
    let wharf_builds: Vec<(&str, &Path)> = std::iter::once(("wharf", wharf_bin.as_path()))
        .chain(before_bin.as_deref().map(|b| ("wharf-before", b)))
        .collect();
    // Wharf `binary` as `name` on `manifest`, with `extra` arguments.
    let wharf = |name: &str, binary: &Path, manifest: &str, extra: &[&str], workloads, pinned| {
        let mut args = cli.wharf_args.clone();
        args.extend(extra.iter().map(|a| a.to_string()));
        servers::wharf(name, binary, &root, manifest, &args, workloads, pinned)
    };
    let guests = guests::build(&root, &mut notes);
    for (name, binary) in &wharf_builds {
        let mut workloads = vec![
            Workload::Hello,
            Workload::CounterMemory,
            Workload::Sleep,
            Workload::Overload,
            Workload::OverloadCpu,
        ];
        if *name == "wharf" {
            workloads.extend([Workload::HelloP3, Workload::HelloP3Reuse, Workload::SpinHello]);
        }
        launches.push(wharf(name, binary, "wharf-bench.toml", &[], workloads, false)?);
        if *name == "wharf" {
            // Admission by queueing delay (an earlier build may not have it).
            launches.push(wharf(
                "wharf-delay",
                binary,
                "wharf-bench-delay.toml",
                &[],
                vec![Workload::Overload, Workload::OverloadCpu],
                false,
            )?);
            launches.push(wharf(
                "wharf-spin",
                binary,
                "spin-app/spin.toml",
                &[],
                vec![Workload::SpinHello],
                false,
            )?);
            if let Some(manifest) = &guests.manifest {
                let manifest = manifest.display().to_string();
                launches.push(wharf(
                    "wharf-guests",
                    binary,
                    &manifest,
                    &[],
                    guests.wharf_workloads(),
                    false,
                )?);
            }
        }
        // What tracing costs: every request traced, and one in a hundred,
        // exporting to a collector on loopback.
        if *name == "wharf" && wanted_workload(Workload::Hello) {
            let sink = format!("http://{}", otlp_sink::start()?);
            for (traced, ratio) in [("wharf-traced-100", "1.0"), ("wharf-traced-1", "0.01")] {
                let env = [
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.as_str()),
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", ratio),
                ];
                let launch = wharf(traced, binary, "wharf-bench.toml", &[], vec![Workload::Hello], false)?;
                let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                launches.push(Launch { env, ..launch });
            }
            notes.push("wharf-traced-N: tracing on, N% of traces sampled, exported over OTLP/HTTP to a sink on loopback".into());
        }
        // The stores: this build only (every server runs at once, and two
        // cannot open one redb file).
        if *name != "wharf" {
            continue;
        }
        let redb = vec![Workload::CounterRedb];
        launches.push(wharf("wharf-redb", binary, "wharf-bench.toml", &["--kv", "redb"], redb, false)?);
        if let Some(redis) = &redis {
            let workloads = vec![Workload::CounterRedis, Workload::HelloRedisRateLimit];
            let args = ["--redis-url", redis.url.as_str()];
            launches.push(wharf("wharf-redis", binary, "wharf-bench-redis.toml", &args, workloads, false)?);
        }
    }
    let wasmtime = which("wasmtime");
    match &wasmtime {
        Some(wasmtime) => {
            let version = Command::new(wasmtime).arg("--version").output().ok();
            let version = version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
            notes.push(format!("wasmtime serve: {version} (`wasmtime-p3`: its defaults for WASI 0.3, instances reused)"));
            let components = root.join("target/components/wasm32-wasip2/release");
            let (hello, hello_p3) = (components.join("hello.wasm"), components.join("hello_p3.wasm"));
            launches.push(servers::wasmtime("wasmtime", wasmtime, &hello, false, false, false));
            launches.push(servers::wasmtime("wasmtime-tuned", wasmtime, &hello, true, false, false));
            launches.push(servers::wasmtime("wasmtime-p3", wasmtime, &hello_p3, false, true, false));
            for (name, component, workload) in guests.wasmtime_targets() {
                launches.push(Launch {
                    workloads: vec![workload],
                    ..servers::wasmtime(&name, wasmtime, &component, false, false, false)
                });
                launches.push(Launch {
                    workloads: vec![workload],
                    ..servers::wasmtime(&format!("{name}-tuned"), wasmtime, &component, true, false, false)
                });
            }
        }
        None => notes.push(
            "wasmtime serve: not measured (no `wasmtime` on PATH; `cargo install wasmtime-cli --version 48.0.8`)".into(),
        ),
    }
    // One core each for the server and the load generator.
    if !cli.no_pinned && report_cores() >= 2 {
        launches.push(Launch { workloads: vec![Workload::Hello], ..servers::native(true)? });
        for (name, binary) in &wharf_builds {
            launches.push(wharf(name, binary, "wharf-bench.toml", &[], vec![Workload::Hello], true)?);
        }
        // What the pool's fast paths are worth here (see the README).
        for (name, flag) in
            [("wharf-no-pagemap-scan", "--no-pagemap-scan"), ("wharf-no-pool", "--no-pooling")]
        {
            launches.push(wharf(name, &wharf_bin, "wharf-bench.toml", &[flag], vec![Workload::Hello], true)?);
        }
        if let Some(wasmtime) = &wasmtime {
            let hello = root.join("target/components/wasm32-wasip2/release/hello.wasm");
            launches.push(servers::wasmtime("wasmtime-tuned", wasmtime, &hello, true, false, true));
        }
    }

    // Every server runs at once (idle while another is measured), so that
    // each cell's repetitions can be interleaved with the other servers'.
    let mut servers = Vec::new();
    for launch in launches.iter().filter(|l| wanted_server(&l.name)) {
        let workloads: Vec<Workload> =
            launch.workloads.iter().copied().filter(|w| wanted_workload(*w)).collect();
        if workloads.is_empty() {
            continue;
        }
        let server = launch.start()?;
        eprintln!("== {}{} on {}", server.name, if server.pinned { " (pinned)" } else { "" }, server.addr);
        if let Some(pool) = server.admin.and_then(servers::pool_mechanisms)
            && server.name == "wharf"
            && !server.pinned
        {
            notes.push(format!("wharf's instance pool (from /healthz): {pool}"));
        }
        servers.push((server, workloads));
    }
    // The cells in measuring order: by workload and concurrency, every
    // server's at that point side by side.
    let mut plan: Vec<(usize, Workload, usize)> = Vec::new();
    for workload in Workload::ALL {
        for pinned in [false, true] {
            let mut levels: Vec<usize> = servers
                .iter()
                .filter(|(s, w)| s.pinned == pinned && w.contains(&workload))
                .flat_map(|(s, _)| if s.pinned { vec![100] } else { concurrency(workload) })
                .collect();
            levels.sort_unstable();
            levels.dedup();
            for c in levels {
                for (index, (server, workloads)) in servers.iter().enumerate() {
                    if server.pinned == pinned && workloads.contains(&workload) {
                        plan.push((index, workload, c));
                    }
                }
            }
        }
    }
    let mut cells: Vec<Cell> = Vec::new();
    for rep in 0..repeats {
        eprintln!("-- repetition {} of {repeats}", rep + 1);
        for &(index, workload, c) in &plan {
            let server = &servers[index].0;
            let cell = if matches!(workload, Workload::Overload | Workload::OverloadCpu) {
                overload::measure(server, workload, c, seconds, rep)?
            } else {
                load::measure(server, workload, c, seconds, rep)?
            };
            eprintln!(
                "   {:<24} c={:<5} {:<28} {:>9.0} ok/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {:>6}  cpu {:>6.1} us/req  rss {:>6.1} MiB  steal {:>4.1}%",
                workload.name(),
                c,
                format!("{}{}", server.name, if server.pinned { " (pinned)" } else { "" }),
                cell.ok_per_sec,
                cell.p50_ms,
                cell.p99_ms,
                cell.errors,
                cell.cpu_us_per_req,
                cell.peak_rss_mib,
                cell.steal_pct
            );
            cells.push(cell);
        }
    }
    drop(servers);
    drop(redis);

    let info = report::RunInfo {
        title: format!("Wharf benchmark, {} ({})", today(), commit(&root)),
        seconds,
        repeats,
        notes,
    };
    let report = report::render(&cells, &info);
    println!("{report}");
    if cli.save || cli.full {
        let stamp = format!("{}-{}", today(), commit(&root));
        let dir = root.join("bench/results");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{stamp}.md")), &report)?;
        let medians = report::medians(&cells);
        plot::write(&medians, &dir.join(format!("{stamp}.svg")))?;
        std::fs::write(dir.join("latest.md"), &report)?;
        plot::write(&medians, &dir.join("latest.svg"))?;
        eprintln!("saved bench/results/{stamp}.md and .svg (and latest.*)");
    }
    Ok(())
}

fn report_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

//! The Markdown report: the machine and what it offered, every cell, and
//! the performance targets computed from the cells (before and after, when
//! an earlier build ran beside this one).

use crate::workload::{Cell, Workload};
use std::fmt::Write as _;

/// What the report says about the run besides the cells.
pub struct RunInfo {
    pub title: String,
    pub seconds: u64,
    pub notes: Vec<String>,
}

pub fn render(cells: &[Cell], info: &RunInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", info.title);
    let _ = writeln!(out, "- machine: {} cores, {}, kernel {}", cores(), cpu_model(), kernel());
    let _ = writeln!(
        out,
        "- load: wrk on the same cores, {} s a cell, keep-alive; `pinned` rows: server on core 0, wrk on core 1",
        info.seconds
    );
    for note in &info.notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(
        out,
        "- ok/s counts successful responses only; errors = non-2xx + socket errors; CPU is the server process's user+system time\n"
    );
    table(&mut out, cells);
    targets(&mut out, cells);
    out
}

fn table(out: &mut String, cells: &[Cell]) {
    let _ = writeln!(
        out,
        "| workload | c | server | ok/s | p50 ms | p99 ms | errors | server CPU us/req | CPU cores | peak RSS MiB | vs native | vs wasmtime serve |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for cell in cells {
        let find = |prefix: &str| {
            cells.iter().find(|c| {
                c.server.starts_with(prefix)
                    && c.pinned == cell.pinned
                    && cell.workload.comparable(c.workload)
                    && c.concurrency == cell.concurrency
            })
        };
        let ratio = |other: Option<&Cell>| {
            other
                .filter(|o| o.ok_per_sec > 0.0 && cell.server.starts_with("wharf"))
                .map_or(String::new(), |o| format!("{:.2}x", cell.ok_per_sec / o.ok_per_sec))
        };
        let peer = find("wasmtime-tuned").or_else(|| find("wasmtime"));
        let _ = writeln!(
            out,
            "| {} | {} | {}{} | {:.0} | {:.2} | {:.2} | {} | {:.1} | {:.2} | {:.1} | {} | {} |",
            cell.workload.name(),
            cell.concurrency,
            cell.server,
            if cell.pinned { " (pinned)" } else { "" },
            cell.ok_per_sec,
            cell.p50_ms,
            cell.p99_ms,
            cell.errors,
            cell.cpu_us_per_req,
            cell.cpu_cores,
            cell.peak_rss_mib,
            ratio(find("native")),
            ratio(peer),
        );
    }
}

/// One target: what it compares, the goal, and how to compute it for a
/// Wharf build from the cells.
struct Target {
    what: &'static str,
    goal: &'static str,
    value: fn(&[Cell], &str) -> Option<f64>,
    unit: &'static str,
}

fn cell<'a>(cells: &'a [Cell], server: &str, workload: Workload, c: usize, pinned: bool) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|x| x.server == server && x.workload == workload && x.concurrency == c && x.pinned == pinned)
}

fn redb_server(server: &str) -> String {
    format!("{server}-redb")
}

const TARGETS: [Target; 10] = [
    Target {
        what: "counter c=100: redb rate / in-memory rate",
        goal: ">= 0.50",
        value: |cells, s| {
            let redb = cell(cells, &redb_server(s), Workload::CounterRedb, 100, false)?;
            let memory = cell(cells, s, Workload::CounterMemory, 100, false)?;
            Some(redb.ok_per_sec / memory.ok_per_sec)
        },
        unit: "x",
    },
    Target {
        what: "counter c=100: redb p99 / in-memory p99",
        goal: "<= 2.0",
        value: |cells, s| {
            let redb = cell(cells, &redb_server(s), Workload::CounterRedb, 100, false)?;
            let memory = cell(cells, s, Workload::CounterMemory, 100, false)?;
            Some(redb.p99_ms / memory.p99_ms)
        },
        unit: "x",
    },
    Target {
        what: "hello: rate at c=1000 / rate at c=100",
        goal: ">= 0.90",
        value: |cells, s| {
            Some(
                cell(cells, s, Workload::Hello, 1000, false)?.ok_per_sec
                    / cell(cells, s, Workload::Hello, 100, false)?.ok_per_sec,
            )
        },
        unit: "x",
    },
    Target {
        what: "hello c=1000: p99 / native p99",
        goal: "<= 2.0",
        value: |cells, s| {
            Some(
                cell(cells, s, Workload::Hello, 1000, false)?.p99_ms
                    / cell(cells, "native", Workload::Hello, 1000, false)?.p99_ms,
            )
        },
        unit: "x",
    },
    Target {
        what: "pinned hello c=100: CPU per request",
        goal: "<= 25 us",
        value: |cells, s| Some(cell(cells, s, Workload::Hello, 100, true)?.cpu_us_per_req),
        unit: " us",
    },
    Target {
        what: "pinned hello c=100: rate / tuned wasmtime serve",
        goal: ">= 2.0",
        value: |cells, s| {
            Some(
                cell(cells, s, Workload::Hello, 100, true)?.ok_per_sec
                    / cell(cells, "wasmtime-tuned", Workload::Hello, 100, true)?.ok_per_sec,
            )
        },
        unit: "x",
    },
    Target {
        what: "sleep c=2000: rate / native",
        goal: ">= 0.98",
        value: |cells, s| {
            Some(
                cell(cells, s, Workload::Sleep, 2000, false)?.ok_per_sec
                    / cell(cells, "native", Workload::Sleep, 2000, false)?.ok_per_sec,
            )
        },
        unit: "x",
    },
    Target {
        what: "sleep c=2000: p99 / native p99",
        goal: "<= 1.2",
        value: |cells, s| {
            Some(
                cell(cells, s, Workload::Sleep, 2000, false)?.p99_ms
                    / cell(cells, "native", Workload::Sleep, 2000, false)?.p99_ms,
            )
        },
        unit: "x",
    },
    Target {
        what: "sleep c=2000: CPU per request / hello's (c=1000)",
        goal: "<= 1.5",
        value: |cells, s| {
            Some(
                cell(cells, s, Workload::Sleep, 2000, false)?.cpu_us_per_req
                    / cell(cells, s, Workload::Hello, 1000, false)?.cpu_us_per_req,
            )
        },
        unit: "x",
    },
    Target {
        what: "sleep c=2000: memory per request in flight",
        goal: "<= 48 KiB",
        value: |cells, s| Some(cell(cells, s, Workload::Sleep, 2000, false)?.kib_per_request_in_flight()),
        unit: " KiB",
    },
];

fn targets(out: &mut String, cells: &[Cell]) {
    let builds: Vec<&str> =
        ["wharf-before", "wharf"].into_iter().filter(|b| cells.iter().any(|c| c.server == *b)).collect();
    if builds.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Targets\n");
    let _ = write!(out, "| target | goal |");
    for build in &builds {
        let _ = write!(out, " {build} |");
    }
    let _ = write!(out, "\n|---|---|");
    for _ in &builds {
        let _ = write!(out, "---:|");
    }
    let _ = writeln!(out);
    for target in &TARGETS {
        let _ = write!(out, "| {} | {} |", target.what, target.goal);
        for build in &builds {
            match (target.value)(cells, build) {
                Some(value) => {
                    let _ = write!(out, " {value:.2}{} |", target.unit);
                }
                None => {
                    let _ = write!(out, " not measured |");
                }
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "\nMemory per request in flight is (peak RSS - idle RSS) / concurrency; native at sleep c=2000: {}.",
        cell(cells, "native", Workload::Sleep, 2000, false)
            .map_or("not measured".into(), |c| format!("{:.1} KiB", c.kib_per_request_in_flight()))
    );
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

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

/// Which server a target reads, relative to the Wharf build it is for.
#[derive(Clone, Copy)]
enum Who {
    /// The build itself (`wharf` or `wharf-before`).
    Build,
    /// The build on redb (`<build>-redb`).
    BuildRedb,
    Native,
    WasmtimeTuned,
}

/// What a target reads from a cell.
#[derive(Clone, Copy)]
enum Measure {
    Rate,
    P99,
    Cpu,
    KibInFlight,
}

/// One cell's figure: whose, which workload, at what concurrency, pinned
/// or not, and which measure.
#[derive(Clone, Copy)]
struct Figure(Who, Workload, usize, bool, Measure);

impl Figure {
    fn read(self, cells: &[Cell], build: &str) -> Option<f64> {
        let Figure(who, workload, c, pinned, measure) = self;
        let server = match who {
            Who::Build => build.to_string(),
            Who::BuildRedb => format!("{build}-redb"),
            Who::Native => "native".into(),
            Who::WasmtimeTuned => "wasmtime-tuned".into(),
        };
        let cell = cells.iter().find(|x| {
            x.server == server && x.workload == workload && x.concurrency == c && x.pinned == pinned
        })?;
        Some(match measure {
            Measure::Rate => cell.ok_per_sec,
            Measure::P99 => cell.p99_ms,
            Measure::Cpu => cell.cpu_us_per_req,
            Measure::KibInFlight => cell.kib_per_request_in_flight(),
        })
    }
}

/// One target: a figure, or the ratio of two, against a goal.
struct Target {
    what: &'static str,
    goal: &'static str,
    figure: Figure,
    over: Option<Figure>,
    unit: &'static str,
}

impl Target {
    fn value(&self, cells: &[Cell], build: &str) -> Option<f64> {
        let value = self.figure.read(cells, build)?;
        match self.over {
            Some(over) => Some(value / over.read(cells, build)?),
            None => Some(value),
        }
    }
}

use Measure::{Cpu, KibInFlight, P99, Rate};
use Who::{Build, BuildRedb, Native, WasmtimeTuned};
use Workload::{CounterMemory, CounterRedb, Hello, Sleep};

const TARGETS: [Target; 10] = [
    Target {
        what: "counter c=100: redb rate / in-memory rate",
        goal: ">= 0.50",
        figure: Figure(BuildRedb, CounterRedb, 100, false, Rate),
        over: Some(Figure(Build, CounterMemory, 100, false, Rate)),
        unit: "x",
    },
    Target {
        what: "counter c=100: redb p99 / in-memory p99",
        goal: "<= 2.0",
        figure: Figure(BuildRedb, CounterRedb, 100, false, P99),
        over: Some(Figure(Build, CounterMemory, 100, false, P99)),
        unit: "x",
    },
    Target {
        what: "hello: rate at c=1000 / rate at c=100",
        goal: ">= 0.90",
        figure: Figure(Build, Hello, 1000, false, Rate),
        over: Some(Figure(Build, Hello, 100, false, Rate)),
        unit: "x",
    },
    Target {
        what: "hello c=1000: p99 / native p99",
        goal: "<= 2.0",
        figure: Figure(Build, Hello, 1000, false, P99),
        over: Some(Figure(Native, Hello, 1000, false, P99)),
        unit: "x",
    },
    Target {
        what: "pinned hello c=100: CPU per request",
        goal: "<= 25 us",
        figure: Figure(Build, Hello, 100, true, Cpu),
        over: None,
        unit: " us",
    },
    Target {
        what: "pinned hello c=100: rate / tuned wasmtime serve",
        goal: ">= 2.0",
        figure: Figure(Build, Hello, 100, true, Rate),
        over: Some(Figure(WasmtimeTuned, Hello, 100, true, Rate)),
        unit: "x",
    },
    Target {
        what: "sleep c=2000: rate / native",
        goal: ">= 0.98",
        figure: Figure(Build, Sleep, 2000, false, Rate),
        over: Some(Figure(Native, Sleep, 2000, false, Rate)),
        unit: "x",
    },
    Target {
        what: "sleep c=2000: p99 / native p99",
        goal: "<= 1.2",
        figure: Figure(Build, Sleep, 2000, false, P99),
        over: Some(Figure(Native, Sleep, 2000, false, P99)),
        unit: "x",
    },
    Target {
        what: "sleep c=2000: CPU per request / hello's (c=1000)",
        goal: "<= 1.5",
        figure: Figure(Build, Sleep, 2000, false, Cpu),
        over: Some(Figure(Build, Hello, 1000, false, Cpu)),
        unit: "x",
    },
    Target {
        what: "sleep c=2000: memory per request in flight",
        goal: "<= 48 KiB",
        figure: Figure(Build, Sleep, 2000, false, KibInFlight),
        over: None,
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
            match target.value(cells, build) {
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
        Figure(Native, Sleep, 2000, false, KibInFlight)
            .read(cells, "native")
            .map_or("not measured".into(), |kib| format!("{kib:.1} KiB"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(server: &str, workload: Workload, concurrency: usize, ok_per_sec: f64, p99_ms: f64) -> Cell {
        Cell {
            server: server.into(),
            pinned: false,
            workload,
            concurrency,
            ok_per_sec,
            p50_ms: 1.0,
            p99_ms,
            errors: 0,
            cpu_us_per_req: 10.0,
            cpu_cores: 1.0,
            peak_rss_mib: 10.0,
            idle_rss_mib: 5.0,
        }
    }

    #[test]
    fn targets_read_the_cells_of_each_build() {
        let cells = [
            cell("wharf", CounterMemory, 100, 1000.0, 4.0),
            cell("wharf-redb", CounterRedb, 100, 600.0, 6.0),
            cell("wharf-before-redb", CounterRedb, 100, 300.0, 6.0),
        ];
        assert_eq!(TARGETS[0].value(&cells, "wharf"), Some(0.6));
        assert_eq!(TARGETS[1].value(&cells, "wharf"), Some(1.5));
        assert_eq!(TARGETS[0].value(&cells, "wharf-before"), None, "no in-memory cell for that build");
        let report = render(&cells, &RunInfo { title: "t".into(), seconds: 1, notes: vec![] });
        assert!(
            report.contains("| counter c=100: redb rate / in-memory rate | >= 0.50 | 0.60x |"),
            "{report}"
        );
    }
}

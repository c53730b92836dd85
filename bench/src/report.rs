//! The Markdown report: the machine and what it offered, every cell as the
//! median of its repetitions with their spread, and the performance
//! targets computed from the cells (before and after, when an earlier build
//! ran beside this one). Ratios pair the repetitions of two servers that
//! ran side by side in time, so their spread says how far the machine's
//! noise moved them.

use crate::workload::{Cell, Workload};
use std::fmt::Write as _;

/// What the report says about the run besides the cells.
pub struct RunInfo {
    pub title: String,
    pub seconds: u64,
    pub repeats: usize,
    pub notes: Vec<String>,
}

/// A steal share above this marks a cell: the machine took CPU away.
const STEAL_MARK_PCT: f64 = 2.0;

/// The repetitions of one (server, pinned, workload, concurrency).
pub struct Row<'a> {
    pub reps: Vec<&'a Cell>,
}

impl Row<'_> {
    fn first(&self) -> &Cell {
        self.reps[0]
    }

    fn values(&self, f: impl Fn(&Cell) -> f64) -> Vec<f64> {
        self.reps.iter().map(|c| f(c)).collect()
    }

    /// The median cell: each figure the median of its repetitions.
    pub fn median(&self) -> Cell {
        let mut cell = self.first().clone();
        cell.ok_per_sec = median(&self.values(|c| c.ok_per_sec));
        cell.p50_ms = median(&self.values(|c| c.p50_ms));
        cell.p99_ms = median(&self.values(|c| c.p99_ms));
        cell.cpu_us_per_req = median(&self.values(|c| c.cpu_us_per_req));
        cell.cpu_cores = median(&self.values(|c| c.cpu_cores));
        cell.peak_rss_mib = self.values(|c| c.peak_rss_mib).into_iter().fold(0.0, f64::max);
        cell.idle_rss_mib = median(&self.values(|c| c.idle_rss_mib));
        cell.steal_pct = self.values(|c| c.steal_pct).into_iter().fold(0.0, f64::max);
        cell.errors = self.reps.iter().map(|c| c.errors).sum();
        cell.refused_share = median(&self.values(|c| c.refused_share));
        cell.ok_p99_ms = median(&self.values(|c| c.ok_p99_ms));
        cell.refused_p99_ms = median(&self.values(|c| c.refused_p99_ms));
        cell
    }
}

/// The cells grouped by what they measured, in the order first measured.
pub fn rows(cells: &[Cell]) -> Vec<Row<'_>> {
    let mut rows: Vec<Row> = Vec::new();
    for cell in cells {
        let same = |r: &&mut Row| {
            let f = r.first();
            f.server == cell.server
                && f.pinned == cell.pinned
                && f.workload == cell.workload
                && f.concurrency == cell.concurrency
        };
        match rows.iter_mut().find(|r| same(r)) {
            Some(row) => row.reps.push(cell),
            None => rows.push(Row { reps: vec![cell] }),
        }
    }
    rows
}

/// Each row's median cell (what the plot shows).
pub fn medians(cells: &[Cell]) -> Vec<Cell> {
    rows(cells).iter().map(Row::median).collect()
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn spread(values: &[f64], decimals: usize) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let (min, max) =
        values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    format!(" ({min:.decimals$}-{max:.decimals$})")
}

pub fn render(cells: &[Cell], info: &RunInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", info.title);
    let _ = writeln!(out, "- machine: {} cores, {}, kernel {}", cores(), cpu_model(), kernel());
    let _ = writeln!(
        out,
        "- load: wrk on the same cores, {} s a cell, keep-alive; each cell {} times, interleaved across servers \
         (every server's repetition i ran before any server's i+1); `pinned` rows: server on core 0, wrk on core 1",
        info.seconds, info.repeats
    );
    for note in &info.notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(
        out,
        "- figures are medians of the repetitions, (min-max) beside them; ratios pair repetitions that ran side by \
         side; ok/s counts successful responses only; errors = non-2xx + socket errors (all repetitions); CPU is \
         the server process's user+system time; steal is the machine's, {STEAL_MARK_PCT}% or more marked !\n"
    );
    table(&mut out, cells);
    overload(&mut out, cells);
    targets(&mut out, cells);
    out
}

/// Paired ratios of `row` over `other`, repetition by repetition.
fn paired(row: &Row, other: &Row, f: impl Fn(&Cell) -> f64) -> Vec<f64> {
    row.reps
        .iter()
        .filter_map(|a| {
            let b = other.reps.iter().find(|b| b.rep == a.rep)?;
            (f(b) > 0.0).then(|| f(a) / f(b))
        })
        .collect()
}

fn table(out: &mut String, cells: &[Cell]) {
    let rows = rows(cells);
    let _ = writeln!(
        out,
        "| workload | c | server | ok/s | p50 ms | p99 ms | errors | server CPU us/req | CPU cores | peak RSS MiB | steal % | vs native | vs wasmtime serve |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let cell = row.median();
        let find = |prefix: &str| {
            rows.iter().find(|r| {
                let c = r.first();
                c.server.starts_with(prefix)
                    && c.pinned == cell.pinned
                    && cell.workload.comparable(c.workload)
                    && c.concurrency == cell.concurrency
            })
        };
        let ratio = |other: Option<&Row>| match other {
            Some(other) if cell.server.starts_with("wharf") => {
                let ratios = paired(row, other, |c| c.ok_per_sec);
                if ratios.is_empty() {
                    String::new()
                } else {
                    format!("{:.2}x{}", median(&ratios), spread(&ratios, 2))
                }
            }
            _ => String::new(),
        };
        let peer = find("wasmtime-tuned").or_else(|| find("wasmtime"));
        let _ = writeln!(
            out,
            "| {} | {} | {}{} | {:.0}{} | {:.2} | {:.2}{} | {} | {:.1}{} | {:.2} | {:.1} | {:.1}{} | {} | {} |",
            cell.workload.name(),
            cell.concurrency,
            cell.server,
            if cell.pinned { " (pinned)" } else { "" },
            cell.ok_per_sec,
            spread(&row.values(|c| c.ok_per_sec), 0),
            cell.p50_ms,
            cell.p99_ms,
            spread(&row.values(|c| c.p99_ms), 2),
            cell.errors,
            cell.cpu_us_per_req,
            spread(&row.values(|c| c.cpu_us_per_req), 1),
            cell.cpu_cores,
            cell.peak_rss_mib,
            cell.steal_pct,
            if cell.steal_pct >= STEAL_MARK_PCT { " !" } else { "" },
            ratio(find("native")),
            ratio(peer),
        );
    }
}

/// The overload cells: what was served, how fast, and what was refused.
fn overload(out: &mut String, cells: &[Cell]) {
    let rows: Vec<Row> = rows(cells)
        .into_iter()
        .filter(|r| matches!(r.first().workload, Workload::Overload | Workload::OverloadCpu))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Overload\n\nFar past capacity, by a client of ours (wrk cannot tell the latency of the served from \
         the refused). Closed loop (hello): each of c connections sends its next request when the last is \
         answered, so c requests are always outstanding and their mean latency is c over the rate answered, \
         whatever the server does. Open loop (a guest burning 1 ms of CPU): {} requests a second offered \
         whatever the server does, over a pool of c connections opened (and accepted) before the first offer; \
         a request's latency counts from when it was offered, including any wait for an idle connection.\n",
        crate::overload::OFFERED_PER_SEC
    );
    let _ = writeln!(
        out,
        "| load | c | server | served/s | p99 of served ms | refused | refused/s | p99 of refused ms |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        let cell = row.median();
        let refused_per_sec = cell.ok_per_sec * cell.refused_share / (1.0 - cell.refused_share).max(1e-9);
        let load = if cell.workload == Workload::OverloadCpu { "open" } else { "closed" };
        let _ = writeln!(
            out,
            "| {load} | {} | {} | {:.0}{} | {:.2}{} | {:.1}% | {:.0} | {:.2} |",
            cell.concurrency,
            cell.server,
            cell.ok_per_sec,
            spread(&row.values(|c| c.ok_per_sec), 0),
            cell.ok_p99_ms,
            spread(&row.values(|c| c.ok_p99_ms), 2),
            cell.refused_share * 100.0,
            refused_per_sec,
            cell.refused_p99_ms,
        );
    }
}

/// What a target reads from a cell.
#[derive(Clone, Copy)]
enum Measure {
    Rate,
    P99,
    OkP99,
    Cpu,
    KibInFlight,
}

/// One figure: whose (a server name, `{build}` standing for the Wharf build
/// the column is for), which workload, at what concurrency, pinned or not,
/// and which measure.
#[derive(Clone, Copy)]
struct Figure(&'static str, Workload, usize, bool, Measure);

impl Figure {
    /// The figure in each repetition: (rep, value).
    fn read(self, cells: &[Cell], build: &str) -> Vec<(usize, f64)> {
        let Figure(who, workload, c, pinned, measure) = self;
        let server = who.replace("{build}", build);
        cells
            .iter()
            .filter(|x| {
                x.server == server && x.workload == workload && x.concurrency == c && x.pinned == pinned
            })
            .map(|cell| {
                let value = match measure {
                    Measure::Rate => cell.ok_per_sec,
                    Measure::P99 => cell.p99_ms,
                    Measure::OkP99 => cell.ok_p99_ms,
                    Measure::Cpu => cell.cpu_us_per_req,
                    Measure::KibInFlight => cell.kib_per_request_in_flight(),
                };
                (cell.rep, value)
            })
            .collect()
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
    /// The value in each repetition (ratios paired by repetition).
    fn values(&self, cells: &[Cell], build: &str) -> Vec<f64> {
        let values = self.figure.read(cells, build);
        match self.over {
            None => values.into_iter().map(|(_, v)| v).collect(),
            Some(over) => {
                let over = over.read(cells, build);
                values
                    .into_iter()
                    .filter_map(|(rep, v)| {
                        let o = over.iter().find(|(r, _)| *r == rep)?.1;
                        (o > 0.0).then(|| v / o)
                    })
                    .collect()
            }
        }
    }

    fn value(&self, cells: &[Cell], build: &str) -> Option<f64> {
        let values = self.values(cells, build);
        (!values.is_empty()).then(|| median(&values))
    }
}

use Measure::{Cpu, KibInFlight, OkP99, P99, Rate};
use Workload::{
    CounterMemory, CounterRedb, Hello, HelloP3, HelloP3Reuse, JsHello, Overload, OverloadCpu, PythonHello,
    PythonHelloReuse, Sleep, SpinHello,
};

const TARGETS: [Target; 21] = [
    Target {
        what: "counter c=100: redb rate / in-memory rate",
        goal: ">= 0.50",
        figure: Figure("{build}-redb", CounterRedb, 100, false, Rate),
        over: Some(Figure("{build}", CounterMemory, 100, false, Rate)),
        unit: "x",
    },
    Target {
        what: "counter c=100: redb p99 / in-memory p99",
        goal: "<= 2.0",
        figure: Figure("{build}-redb", CounterRedb, 100, false, P99),
        over: Some(Figure("{build}", CounterMemory, 100, false, P99)),
        unit: "x",
    },
    Target {
        what: "hello: rate at c=1000 / rate at c=100",
        goal: ">= 0.90",
        figure: Figure("{build}", Hello, 1000, false, Rate),
        over: Some(Figure("{build}", Hello, 100, false, Rate)),
        unit: "x",
    },
    Target {
        what: "hello c=1000: p99 / native p99",
        goal: "<= 2.0",
        figure: Figure("{build}", Hello, 1000, false, P99),
        over: Some(Figure("native", Hello, 1000, false, P99)),
        unit: "x",
    },
    Target {
        what: "pinned hello c=100: CPU per request",
        goal: "<= 30 us",
        figure: Figure("{build}", Hello, 100, true, Cpu),
        over: None,
        unit: " us",
    },
    Target {
        what: "pinned hello c=100: rate / tuned wasmtime serve",
        goal: ">= 2.0",
        figure: Figure("{build}", Hello, 100, true, Rate),
        over: Some(Figure("wasmtime-tuned", Hello, 100, true, Rate)),
        unit: "x",
    },
    Target {
        what: "WASI 0.3 hello c=100, reused: rate / wasmtime serve (its defaults)",
        goal: ">= 1.5",
        figure: Figure("{build}", HelloP3Reuse, 100, false, Rate),
        over: Some(Figure("wasmtime-p3", HelloP3, 100, false, Rate)),
        unit: "x",
    },
    Target {
        what: "WASI 0.3 hello c=100, fresh: rate / wasmtime serve (its defaults)",
        goal: ">= 1.0",
        figure: Figure("{build}", HelloP3, 100, false, Rate),
        over: Some(Figure("wasmtime-p3", HelloP3, 100, false, Rate)),
        unit: "x",
    },
    Target {
        what: "sleep c=2000: rate / native",
        goal: ">= 0.95",
        figure: Figure("{build}", Sleep, 2000, false, Rate),
        over: Some(Figure("native", Sleep, 2000, false, Rate)),
        unit: "x",
    },
    Target {
        what: "sleep c=2000: p99 / native p99",
        goal: "<= 1.5",
        figure: Figure("{build}", Sleep, 2000, false, P99),
        over: Some(Figure("native", Sleep, 2000, false, P99)),
        unit: "x",
    },
    Target {
        what: "sleep c=2000: CPU per request / hello's (c=1000)",
        goal: "<= 1.5",
        figure: Figure("{build}", Sleep, 2000, false, Cpu),
        over: Some(Figure("{build}", Hello, 1000, false, Cpu)),
        unit: "x",
    },
    Target {
        what: "sleep c=2000: memory per request in flight",
        goal: "<= 48 KiB",
        figure: Figure("{build}", Sleep, 2000, false, KibInFlight),
        over: None,
        unit: " KiB",
    },
    Target {
        what: "overload, cpu 1 ms open loop: p99 of served by delay",
        goal: "near the 10 ms target",
        figure: Figure("{build}-delay", OverloadCpu, 1000, false, OkP99),
        over: None,
        unit: " ms",
    },
    Target {
        what: "overload, cpu 1 ms open loop: served rate by delay / by count",
        goal: ">= 0.9",
        figure: Figure("{build}-delay", OverloadCpu, 1000, false, Rate),
        over: Some(Figure("{build}", OverloadCpu, 1000, false, Rate)),
        unit: "x",
    },
    Target {
        what: "overload c=5000, by delay: p99 of served",
        goal: "near the 10 ms target",
        figure: Figure("{build}-delay", Overload, 5000, false, OkP99),
        over: None,
        unit: " ms",
    },
    Target {
        what: "overload c=5000: served rate by delay / by count",
        goal: ">= 0.9",
        figure: Figure("{build}-delay", Overload, 5000, false, Rate),
        over: Some(Figure("{build}", Overload, 5000, false, Rate)),
        unit: "x",
    },
    Target {
        what: "Spin hello c=100: rate from spin.toml / from wharf.toml",
        goal: ">= 0.95",
        figure: Figure("{build}-spin", SpinHello, 100, false, Rate),
        over: Some(Figure("{build}", SpinHello, 100, false, Rate)),
        unit: "x",
    },
    Target {
        what: "Python hello c=10, fresh: rate / wasmtime serve (tuned)",
        goal: ">= 1.0",
        figure: Figure("{build}-guests", PythonHello, 10, false, Rate),
        over: Some(Figure("wasmtime-python-tuned", PythonHello, 10, false, Rate)),
        unit: "x",
    },
    Target {
        what: "Python hello c=10, reused: rate / wasmtime serve (tuned)",
        goal: "(what reuse buys)",
        figure: Figure("{build}-guests", PythonHelloReuse, 10, false, Rate),
        over: Some(Figure("wasmtime-python-tuned", PythonHello, 10, false, Rate)),
        unit: "x",
    },
    Target {
        what: "JavaScript hello c=10, fresh: rate / wasmtime serve (tuned)",
        goal: ">= 1.0",
        figure: Figure("{build}-guests", JsHello, 10, false, Rate),
        over: Some(Figure("wasmtime-js-tuned", JsHello, 10, false, Rate)),
        unit: "x",
    },
    Target {
        what: "WASI 0.3 hello c=100: CPU per request, fresh / reused",
        goal: "(what reuse saves)",
        figure: Figure("{build}", HelloP3, 100, false, Cpu),
        over: Some(Figure("{build}", HelloP3Reuse, 100, false, Cpu)),
        unit: "x",
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
            let values = target.values(cells, build);
            match target.value(cells, build) {
                Some(value) => {
                    let _ = write!(out, " {value:.2}{}{} |", target.unit, spread(&values, 2));
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
        Target {
            what: "",
            goal: "",
            figure: Figure("native", Sleep, 2000, false, KibInFlight),
            over: None,
            unit: ""
        }
        .value(cells, "native")
        .map_or("not measured".into(), |kib| format!("{kib:.1} KiB"))
    );
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn cpu_model() -> String {
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

    fn cell(
        server: &str,
        workload: Workload,
        concurrency: usize,
        rep: usize,
        ok_per_sec: f64,
        p99_ms: f64,
    ) -> Cell {
        Cell {
            server: server.into(),
            rep,
            steal_pct: 0.0,
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
            refused_share: 0.0,
            ok_p99_ms: p99_ms,
            refused_p99_ms: 0.0,
        }
    }

    #[test]
    fn targets_pair_the_repetitions_of_each_build_and_take_the_median() {
        let cells = [
            cell("wharf", CounterMemory, 100, 0, 1000.0, 4.0),
            cell("wharf-redb", CounterRedb, 100, 0, 600.0, 6.0),
            cell("wharf", CounterMemory, 100, 1, 2000.0, 4.0),
            cell("wharf-redb", CounterRedb, 100, 1, 1000.0, 6.0),
            cell("wharf", CounterMemory, 100, 2, 1000.0, 4.0),
            cell("wharf-redb", CounterRedb, 100, 2, 700.0, 6.0),
            cell("wharf-before-redb", CounterRedb, 100, 0, 300.0, 6.0),
        ];
        // Paired: 0.6, 0.5, 0.7; median 0.6 (unpaired medians would say 0.7).
        assert_eq!(TARGETS[0].value(&cells, "wharf"), Some(0.6));
        assert_eq!(TARGETS[1].value(&cells, "wharf"), Some(1.5));
        assert_eq!(TARGETS[0].value(&cells, "wharf-before"), None, "no in-memory cell for that build");
        let report = render(&cells, &RunInfo { title: "t".into(), seconds: 1, repeats: 3, notes: vec![] });
        assert!(
            report.contains("| counter c=100: redb rate / in-memory rate | >= 0.50 | 0.60x (0.50-0.70) |"),
            "{report}"
        );
        assert!(report.contains("| counter (memory) | 100 | wharf | 1000 (1000-2000) |"), "{report}");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_middle_pair_s_mean() {
        assert_eq!(median(&[1.0, 4.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[5.0]), 5.0);
    }
}

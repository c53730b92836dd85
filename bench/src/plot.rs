//! The SVG plot: requests/s and p99 latency against concurrency, one line
//! per server, one column per workload.

use crate::workload::{Cell, Workload};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Writes the plot of `cells` to `path`.
pub fn write(cells: &[Cell], path: &Path) -> Result<()> {
    // Workloads measured at more than one concurrency, without the pinned
    // comparison.
    let cells: Vec<&Cell> = cells.iter().filter(|c| !c.pinned).collect();
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| {
            cells
                .iter()
                .filter(|c| c.workload == *w)
                .map(|c| c.concurrency)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 1
        })
        .collect();
    let mut servers: Vec<&str> = Vec::new();
    for cell in &cells {
        if !servers.contains(&cell.server.as_str()) {
            servers.push(&cell.server);
        }
    }
    let width = 420 * workloads.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let columns = root.split_evenly((2, workloads.len().max(1)));
    for (index, workload) in workloads.iter().enumerate() {
        for (row, metric) in ["requests/s", "p99 ms"].iter().enumerate() {
            let area = &columns[row * workloads.len() + index];
            let value = |c: &Cell| if row == 0 { c.ok_per_sec } else { c.p99_ms };
            let series: Vec<&Cell> = cells.iter().copied().filter(|c| c.workload == *workload).collect();
            let max = series.iter().map(|c| value(c)).fold(1.0, f64::max) * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{} - {metric}", workload.name()), ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d((1f64..6000f64).log_scale(), 0f64..max)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart.configure_mesh().x_desc("concurrency").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
            for (i, server) in servers.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                let points: Vec<(f64, f64)> = series
                    .iter()
                    .filter(|c| c.server == *server)
                    .map(|c| (c.concurrency as f64, value(c)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .label(*server)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 15, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

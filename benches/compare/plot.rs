//! SVG plot of the scale sweep: one panel per throughput metric, ops/s
//! against devices on log-log axes, one line per system.

use std::path::Path;

use plotters::prelude::*;

use crate::report::METRICS;
use crate::SizeRun;

const COLORS: [RGBColor; 4] = [
    RGBColor(200, 30, 30),
    RGBColor(30, 90, 200),
    RGBColor(20, 140, 60),
    RGBColor(120, 120, 120),
];

pub fn sweep(runs: &[SizeRun], path: &Path) {
    let panels: Vec<_> = METRICS.iter().filter(|m| m.3).collect();
    let root = SVGBackend::new(path, (1500, 1100)).into_drawing_area();
    root.fill(&WHITE).expect("drawing");
    let (lo_n, hi_n) = (runs[0].n as f64, runs[runs.len() - 1].n as f64);
    let cols = 4;
    let rows = panels.len().div_ceil(cols);
    for (area, &&(key, label, unit, _)) in root.split_evenly((rows, cols)).iter().zip(&panels) {
        let values: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.systems.iter().filter_map(|(_, m)| m.get(key).copied()))
            .filter(|v| *v > 0.0)
            .collect();
        let lo = values.iter().copied().fold(f64::MAX, f64::min) / 2.0;
        let hi = values.iter().copied().fold(0.0, f64::max) * 2.0;
        if values.is_empty() {
            continue;
        }
        let mut chart = ChartBuilder::on(area)
            .caption(label, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d((lo_n * 0.8..hi_n * 1.25).log_scale(), (lo..hi).log_scale())
            .expect("chart");
        chart
            .configure_mesh()
            .x_desc("devices")
            .y_desc(unit)
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .expect("mesh");
        for (i, (name, _)) in runs[0].systems.iter().enumerate() {
            let pts: Vec<(f64, f64)> = runs
                .iter()
                .filter_map(|r| {
                    let m = &r.systems.iter().find(|(n, _)| n == name)?.1;
                    m.get(key).map(|v| (r.n as f64, *v))
                })
                .collect();
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .expect("series")
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .expect("legend");
    }
    root.present().expect("writing the SVG");
}

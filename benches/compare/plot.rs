//! SVG plot of the scale sweep, log-log against devices, one line per
//! system: a panel per throughput metric, then the footprint (peak RSS per
//! device, disk per device after registers and after updates) and the open
//! time (devreg's open of N devices beside a plain sled scan of its store).
//! Each line joins the medians over the rounds; a bar at each point spans
//! the rounds' min–max (the systems' bars a little apart, so they do not
//! hide each other).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::METRICS;
use crate::rounds::SizeRun;
use crate::stats::Spread;

const COLORS: [RGBColor; 4] = [
    RGBColor(200, 30, 30),
    RGBColor(30, 90, 200),
    RGBColor(20, 140, 60),
    RGBColor(120, 120, 120),
];

/// One line of a panel: (label, points as (devices, spread)).
type Line = (String, Vec<(f64, Spread)>);

fn scaled(s: Spread, k: f64) -> Spread {
    Spread {
        median: s.median * k,
        min: s.min * k,
        max: s.max * k,
        rounds: s.rounds,
    }
}

/// `key` of `group` (see `Round::value`) at every size, scaled by `per(n)`.
fn series(
    runs: &[SizeRun],
    group: &str,
    key: &str,
    per: &dyn Fn(f64) -> f64,
) -> Vec<(f64, Spread)> {
    runs.iter()
        .filter_map(|r| {
            let n = r.n as f64;
            r.spread(group, key).map(|s| (n, scaled(s, per(n))))
        })
        .collect()
}

/// A metric of every system at every size, scaled by `per(n)`.
fn per_system(runs: &[SizeRun], key: &str, per: &dyn Fn(f64) -> f64) -> Vec<Line> {
    runs[0]
        .names()
        .iter()
        .map(|name| (name.to_string(), series(runs, name, key, per)))
        .collect()
}

pub fn sweep(runs: &[SizeRun], path: &Path) {
    let one = |_: f64| 1.0;
    let mut panels: Vec<(String, &str, Vec<Line>)> = METRICS
        .iter()
        .filter(|m| m.3 || m.2 == "B/dev")
        .map(|&(key, label, unit, _)| (label.to_owned(), unit, per_system(runs, key, &one)))
        .collect();
    panels.push((
        "peak RSS per device (less the data set)".into(),
        "B/dev",
        per_system(runs, "peak_rss_mb", &|n| 1_048_576.0 / n),
    ));
    panels.push((
        "open: devreg vs a plain sled scan".into(),
        "ms",
        vec![
            ("devreg open".into(), series(runs, "open", "open_ms", &one)),
            (
                "sled scan of its store".into(),
                series(runs, "scan", "scan_ms", &one),
            ),
        ],
    ));
    let rounds = runs.iter().map(|r| r.rounds.len()).max().unwrap_or(0);
    let root = SVGBackend::new(path, (1500, 1440)).into_drawing_area();
    root.fill(&WHITE).expect("drawing");
    let root = root
        .titled(
            &format!("lines: median of {rounds} round(s); bars: min–max over the rounds"),
            ("sans-serif", 18),
        )
        .expect("title");
    let ns = (runs[0].n as f64, runs[runs.len() - 1].n as f64);
    let cols = 4;
    let rows = panels.len().div_ceil(cols);
    for (area, (label, unit, lines)) in root.split_evenly((rows, cols)).iter().zip(&panels) {
        panel(area, label, unit, lines, ns);
    }
    root.present().expect("writing the SVG");
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    label: &str,
    unit: &str,
    lines: &[Line],
    ns: (f64, f64),
) {
    let values: Vec<f64> = lines
        .iter()
        .flat_map(|(_, pts)| pts.iter().flat_map(|p| [p.1.min, p.1.max]))
        .filter(|v| *v > 0.0)
        .collect();
    if values.is_empty() {
        return;
    }
    let lo = values.iter().copied().fold(f64::MAX, f64::min) / 2.0;
    let hi = values.iter().copied().fold(0.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(label, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d((ns.0 * 0.8..ns.1 * 1.25).log_scale(), (lo..hi).log_scale())
        .expect("chart");
    chart
        .configure_mesh()
        .x_desc("devices")
        .y_desc(unit)
        .x_label_formatter(&|v| format!("{v:.0e}"))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .expect("mesh");
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // Side by side: each system's points a few percent apart in x.
        let dx = 1.0 + 0.04 * (i as f64 - (lines.len() as f64 - 1.0) / 2.0);
        let pts: Vec<(f64, Spread)> = pts
            .iter()
            .filter(|p| p.1.min > 0.0)
            .map(|&(n, s)| (n * dx, s))
            .collect();
        let medians = pts.iter().map(|(x, s)| (*x, s.median));
        chart
            .draw_series(LineSeries::new(medians, color.stroke_width(2)))
            .expect("series")
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        chart
            .draw_series(pts.iter().flat_map(|&(x, s)| error_bar(x, s, color)))
            .expect("error bars");
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .expect("legend");
}

/// A vertical bar from min to max at `x` with short caps (plotters'
/// ErrorBar needs a feature this crate does not enable).
fn error_bar(x: f64, s: Spread, color: RGBColor) -> Vec<PathElement<(f64, f64)>> {
    if s.min == s.max {
        return Vec::new();
    }
    let (l, r) = (x / 1.03, x * 1.03);
    let style = color.stroke_width(1);
    vec![
        PathElement::new(vec![(x, s.min), (x, s.max)], style),
        PathElement::new(vec![(l, s.min), (r, s.min)], style),
        PathElement::new(vec![(l, s.max), (r, s.max)], style),
    ]
}

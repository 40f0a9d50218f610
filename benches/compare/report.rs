//! The table, the ratio lines, the targets of issue 6 and the JSON file,
//! all from the medians and spreads over the rounds (see `stats`).

use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::env::Env;
use crate::rounds::SizeRun;
use crate::stats::{self, Spread};

/// (key, label, unit, higher is better)
pub const METRICS: &[(&str, &str, &str, bool)] = &[
    (
        "import_ops_s",
        "bulk import, durable, 10k/batch",
        "dev/s",
        true,
    ),
    ("update_ops_s", "bulk update of N, eventual", "dev/s", true),
    (
        "durable_1t_ops_s",
        "durable register, 1 thread",
        "ops/s",
        true,
    ),
    (
        "durable_8t_ops_s",
        "durable register, 8 threads",
        "ops/s",
        true,
    ),
    (
        "eventual_1t_ops_s",
        "eventual register, 1 thread",
        "ops/s",
        true,
    ),
    (
        "mixed_4t_ops_s",
        "mixed 90% get/10% reg, 4 thr",
        "ops/s",
        true,
    ),
    ("rw_reads_s", "2 readers + 1 writer: reads", "ops/s", true),
    ("rw_writes_s", "2 readers + 1 writer: writes", "ops/s", true),
    ("get_ops_s", "point read by token", "ops/s", true),
    ("most_recent_ops_s", "most_recent(person)", "ops/s", true),
    ("active30_ops_s", "30-day active count", "q/s", true),
    ("merge_ops_s", "merge of persons", "ops/s", true),
    (
        "disk_insert_b_per_dev",
        "disk after N registers",
        "B/dev",
        false,
    ),
    (
        "disk_update_b_per_dev",
        "disk after N updates",
        "B/dev",
        false,
    ),
    ("peak_rss_mb", "peak RSS (less the data set)", "MiB", false),
];

/// (metric, against, minimum ratio, what issue 6 asks)
const TARGETS: &[(&str, &str, f64, &str)] = &[
    (
        "durable_8t_ops_s",
        "sqlite",
        5.0,
        "durable registers, 8 threads >= 5x SQLite",
    ),
    (
        "durable_1t_ops_s",
        "sqlite",
        1.0,
        "durable register, 1 thread >= 1x SQLite",
    ),
    (
        "durable_1t_ops_s",
        "floor",
        1.0 / 1.2,
        "durable 1 thread within 1.2x the fsync floor",
    ),
    ("import_ops_s", "sqlite", 1.5, "bulk import >= 1.5x SQLite"),
    (
        "eventual_1t_ops_s",
        "sqlite",
        5.0,
        "non-durable single op >= 5x SQLite",
    ),
    ("get_ops_s", "sqlite", 3.0, "point read >= 3x SQLite"),
    (
        "get_ops_s",
        "memory",
        1.0 / 1.5,
        "point read within 1.5x memory maps",
    ),
    (
        "most_recent_ops_s",
        "sqlite",
        3.0,
        "most_recent >= 3x SQLite",
    ),
    (
        "most_recent_ops_s",
        "memory",
        1.0 / 1.5,
        "most_recent within 1.5x memory maps",
    ),
    (
        "active30_ops_s",
        "sqlite",
        10.0,
        "30-day count >= 10x SQLite (at 10^6)",
    ),
    ("rw_reads_s", "sqlite", 3.0, "2R+1W reads/s >= 3x SQLite"),
    ("rw_writes_s", "sqlite", 3.0, "2R+1W writes/s >= 3x SQLite"),
    (
        "disk_insert_b_per_dev",
        "sqlite",
        1.0 / 1.5,
        "disk after N registers <= 1.5x SQLite",
    ),
    (
        "disk_update_b_per_dev",
        "sqlite",
        1.0 / 1.5,
        "disk after N updates <= 1.5x SQLite",
    ),
    (
        "open",
        "scan",
        1.0 / 1.5,
        "open <= 1.5x a plain sled scan (at 10^6)",
    ),
];

/// The two values `ratio` compares: (group, key) of devreg's side, of the
/// other side, and whether higher is better. Groups as in `Round::value`.
type Sides<'a> = ((&'a str, &'a str), (&'a str, &'a str), bool);

fn sides<'a>(key: &'a str, other: &'a str) -> Option<Sides<'a>> {
    match (key, other) {
        // devreg's open against the plain scan of its store: time, lower is better.
        ("open", _) => Some((("open", "open_ms"), ("scan", "scan_ms"), false)),
        // Only durable_1t has a floor: the bare fsync loop's rate.
        (_, "floor") => Some((("devreg", key), ("floor", "ops_s"), true)),
        _ => {
            let higher = METRICS.iter().find(|m| m.0 == key)?.3;
            Some((("devreg", key), (other, key), higher))
        }
    }
}

fn oriented(d: f64, o: f64, higher: bool) -> Option<f64> {
    let (num, den) = if higher { (d, o) } else { (o, d) };
    (num > 0.0 && den > 0.0).then(|| num / den)
}

/// devreg's advantage over `other` on `key` (above 1 = devreg better): the
/// ratio of the medians, with min–max of the ratios within each round.
pub fn ratio(r: &SizeRun, key: &str, other: &str) -> Option<Spread> {
    let ((dg, dk), (og, ok), higher) = sides(key, other)?;
    let median = oriented(r.spread(dg, dk)?.median, r.spread(og, ok)?.median, higher)?;
    let per_round: Vec<f64> = r
        .rounds
        .iter()
        .filter_map(|x| oriented(x.value(dg, dk)?, x.value(og, ok)?, higher))
        .collect();
    let s = stats::spread(&per_round)?;
    Some(Spread { median, ..s })
}

pub fn fmt(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v > 0.0 && v < 0.01 {
        format!("{v:.1e}")
    } else {
        format!("{v:.2}")
    }
}

/// "median (min–max)", or the median alone when the rounds agree as
/// written (or one round measured it).
pub fn cell(s: Option<Spread>, f: fn(f64) -> String) -> String {
    let Some(s) = s else {
        return "n/a".into();
    };
    let (min, max) = (f(s.min), f(s.max));
    if min == max {
        f(s.median)
    } else {
        format!("{} ({min}–{max})", f(s.median))
    }
}

fn two(v: f64) -> String {
    format!("{v:.2}")
}

fn about(r: &SizeRun) -> String {
    let mut s = match crate::child_glibc_tunables() {
        Some(t) => format!("Every system ran in its own process with GLIBC_TUNABLES={t}.\n\n"),
        None => "Every system ran in its own process on glibc's malloc defaults \
                 (no GLIBC_TUNABLES).\n\n"
            .to_string(),
    };
    let rounds = r.rounds.len();
    if rounds > 1 {
        let orders: Vec<String> = r.rounds.iter().map(|x| x.order.join(" ")).collect();
        let _ = writeln!(
            s,
            "{rounds} rounds, each running every system once, in an order rotated each round \
             ({}). Each cell: median over the rounds (min–max). Ratios: ratio of the medians \
             (min–max of the ratio within each round).\n",
            orders.join("; ")
        );
    } else {
        let _ = writeln!(s, "One round: single measurements, no spread.\n");
    }
    for why in &r.skipped {
        let _ = writeln!(s, "Not run: {why}.\n");
    }
    s
}

fn main_table(r: &SizeRun) -> String {
    let names = r.names();
    let mut s = String::from("| metric | unit |");
    for n in &names {
        let _ = write!(s, " {n} |");
    }
    let _ = writeln!(s, " devreg/sqlite | devreg/sled | devreg/memory |");
    let _ = writeln!(s, "|---|---|{}---|---|---|", "---|".repeat(names.len()));
    for &(key, label, unit, _) in METRICS {
        let _ = write!(s, "| {label} | {unit} |");
        for n in &names {
            let _ = write!(s, " {} |", cell(r.spread(n, key), fmt));
        }
        for o in ["sqlite", "sled", "memory"] {
            let _ = write!(s, " {} |", cell(ratio(r, key, o), fmt));
        }
        let _ = writeln!(s);
    }
    s + "\n"
}

/// A rate's spread as nanoseconds per operation (the slowest round's is the max).
fn per_op_ns(rate: Spread) -> Spread {
    Spread {
        median: 1e9 / rate.median,
        min: 1e9 / rate.max,
        max: 1e9 / rate.min,
        rounds: rate.rounds,
    }
}

fn notes(r: &SizeRun) -> String {
    let c = |g: &str, k: &str| cell(r.spread(g, k), fmt);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fsync floor (4 KiB pwrite + fdatasync, preallocated): {} ops/s, p50 {} us",
        c("floor", "ops_s"),
        c("floor", "p50_us")
    );
    let _ = writeln!(
        s,
        "devreg open (fresh process): {} ms; plain sled scan of its tree: {} ms ({} keys); \
         devreg RAM after open: {} B/device",
        c("open", "open_ms"),
        c("scan", "scan_ms"),
        c("scan", "keys"),
        c("open", "ram_b_per_dev")
    );
    let _ = writeln!(
        s,
        "devreg disk, sled store only (the rest is its preallocated log): {} B/device after \
         registers, {} B/device after updates",
        c("devreg", "disk_insert_store_b_per_dev"),
        c("devreg", "disk_update_store_b_per_dev")
    );
    let _ = writeln!(
        s,
        "the harness's own cost of one point read (taking the next key of its read list, \
         {} tokens drawn at random and laid out in order, and reading it; no call into the \
         system): {} ns; the devreg row's whole operation: {} ns",
        crate::workload::READ_KEYS,
        c("devreg", "harness_pick_ns"),
        cell(r.spread("devreg", "get_ops_s").map(per_op_ns), fmt)
    );
    let counts: Vec<String> = r
        .names()
        .iter()
        .map(|&n| format!("{n}={}", c(n, "active30_count")))
        .collect();
    let _ = writeln!(
        s,
        "30-day active devices counted (same data in every system and round, asserted; \
         expected {}): {}\n",
        c("devreg", "active30_expected"),
        counts.join(" ")
    );
    s
}

/// One `ratio <metric> devreg/<other>=<ratio of medians> (<min>–<max>)`
/// line per metric.
fn ratio_lines(r: &SizeRun) -> String {
    let mut s = String::new();
    for &(key, ..) in METRICS {
        let _ = write!(s, "ratio {key}");
        let mut others = vec!["sqlite", "sled", "memory"];
        if key == "durable_1t_ops_s" {
            others.push("floor");
        }
        for o in others {
            let _ = write!(s, " devreg/{o}={}", cell(ratio(r, key, o), two));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "ratio open devreg/sqlite=n/a devreg/sled_scan={} devreg/memory=n/a",
        cell(ratio(r, "open", "scan"), two)
    );
    s
}

pub fn table(r: &SizeRun, quick: bool) -> String {
    format!(
        "## n = {} devices\n\n{}{}{}{}{}",
        r.n,
        about(r),
        main_table(r),
        notes(r),
        ratio_lines(r),
        targets(r, quick)
    )
}

/// A target of issue 6 and what was measured for it.
struct Judged {
    what: String,
    spread: Option<Spread>,
    threshold: f64,
    /// Met at or above the threshold (else at or below).
    higher: bool,
    /// How its values are written.
    f: fn(f64) -> String,
    /// False when the target is set for another size (shown, not judged).
    at_this_size: bool,
}

impl Judged {
    fn verdict(&self, quick: bool) -> &'static str {
        match &self.spread {
            None => "not measured",
            Some(_) if quick => "not judged",
            Some(_) if !self.at_this_size => "not judged at this size",
            Some(s) => stats::verdict(s, self.threshold, self.higher).as_str(),
        }
    }
}

/// The smallest registry at which RAM per device is judged.
const RAM_TARGET_FROM_DEVICES: usize = 1_000_000;

/// Every target of issue 6 with what was measured for it.
fn judged(r: &SizeRun) -> Vec<Judged> {
    let mut out: Vec<Judged> = TARGETS
        .iter()
        .map(|&(key, other, threshold, what)| Judged {
            what: format!("{what}: devreg/{other}"),
            spread: ratio(r, key, other),
            threshold,
            higher: true,
            f: two,
            at_this_size: true,
        })
        .collect();
    // The target is set at 10^6 devices: below that, fixed costs (sled's
    // cache, the log buffer) dominate the per-device figure, which the
    // footprint rows still show; it is judged only from 10^6.
    out.push(Judged {
        what: "RAM per device <= 300 B (judged from 10^6): B/device after open".into(),
        spread: r.spread("open", "ram_b_per_dev"),
        threshold: 300.0,
        higher: false,
        f: fmt,
        at_this_size: r.n >= RAM_TARGET_FROM_DEVICES,
    });
    out.push(Judged {
        what: "export drain >= 1,000,000 ops/min (100 ops per batch, export + ack): ops/min".into(),
        spread: r.spread("devreg", "export_ops_min"),
        threshold: 1e6,
        higher: true,
        f: fmt,
        at_this_size: true,
    });
    out
}

fn targets(r: &SizeRun, quick: bool) -> String {
    let mut s = format!("\n### targets (issue 6) at n = {}\n\n", r.n);
    if quick {
        s += "quick run: not judged (values shown; only full runs judge the targets)\n\n";
    } else if r.rounds.len() == 1 {
        s += "One round: judged on single values; nothing can show as within noise.\n\n";
    } else {
        s += "Judged on the median (for a ratio: the ratio of the medians); \"within noise\" \
              when the rounds lie on both sides of the threshold.\n\n";
    }
    for t in judged(r) {
        let needs = if t.higher { ">=" } else { "<=" };
        let _ = writeln!(
            s,
            "- {} = {} (needs {needs} {}): {}",
            t.what,
            cell(t.spread, t.f),
            (t.f)(t.threshold),
            t.verdict(quick)
        );
    }
    s + "\n"
}

/// How each throughput's median falls from the smallest to the largest size.
pub fn growth(runs: &[SizeRun]) -> String {
    let (first, last) = (&runs[0], &runs[runs.len() - 1]);
    let mut s = format!(
        "## growth: median throughput at n = {} / at n = {} (target for devreg: >= 0.5; \
         medians of {} and {} rounds; in brackets the min–max of each n = {} round over the \
         n = {} round run nearest it, the sizes' rounds being interleaved; these ratios \
         follow the host's memory latency, in the header's `memory:` line)\n\n\
         | metric |",
        last.n,
        first.n,
        last.rounds.len(),
        first.rounds.len(),
        last.n,
        first.n
    );
    let names = first.names();
    for n in &names {
        let _ = write!(s, " {n} |");
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(names.len()));
    for &(key, label, _, higher) in METRICS {
        if !higher {
            continue;
        }
        let _ = write!(s, "| {label} |");
        for n in &names {
            let g = last
                .spread(n, key)
                .zip(first.spread(n, key))
                .map(|(a, b)| a.median / b.median);
            let paired = stats::spread(&paired_growth(first, last, n, key));
            let cell = match (g, paired) {
                (Some(g), Some(p)) if p.min != p.max => {
                    format!("{} ({}–{})", two(g), two(p.min), two(p.max))
                }
                (g, _) => g.map_or("n/a".into(), two),
            };
            let _ = write!(s, " {cell} |");
        }
        let _ = writeln!(s);
    }
    s + "\n"
}

/// `key` of `system` in each round of `last` over the same in the round of
/// `first` that ran nearest it in the run (`Round::seq`; the earlier of two
/// as near): growth ratios of measurements minutes apart.
fn paired_growth(first: &SizeRun, last: &SizeRun, system: &str, key: &str) -> Vec<f64> {
    last.rounds
        .iter()
        .filter_map(|r| {
            let near = first
                .rounds
                .iter()
                .min_by_key(|f| (f.seq.abs_diff(r.seq), f.seq))?;
            Some(r.value(system, key)? / near.value(system, key)?)
        })
        .collect()
}

/// The groups of the JSON file: (its name there, the group in `Round::value`).
pub const GROUPS: [(&str, &str); 3] = [
    ("fsync_floor", "floor"),
    ("devreg_open", "open"),
    ("sled_scan", "scan"),
];

/// Medians, minima and maxima of every metric of `group`.
fn summary(r: &SizeRun, group: &str) -> [Map<String, Value>; 3] {
    let mut out: [Map<String, Value>; 3] = Default::default();
    for key in r.keys(group) {
        if let Some(s) = r.spread(group, &key) {
            out[0].insert(key.clone(), json!(s.median));
            out[1].insert(key.clone(), json!(s.min));
            out[2].insert(key, json!(s.max));
        }
    }
    out
}

/// Ratios of the medians, and the min–max of the per-round ratios.
fn ratios_json(r: &SizeRun) -> (Map<String, Value>, Map<String, Value>) {
    let (mut medians, mut ranges) = (Map::new(), Map::new());
    for &(key, ..) in METRICS {
        let (mut per, mut range) = (Map::new(), Map::new());
        for o in ["sqlite", "sled", "memory", "floor"] {
            if o == "floor" && key != "durable_1t_ops_s" {
                continue;
            }
            if let Some(v) = ratio(r, key, o) {
                per.insert(o.into(), json!(v.median));
                range.insert(o.into(), json!([v.min, v.max]));
            }
        }
        medians.insert(key.into(), Value::Object(per));
        ranges.insert(key.into(), Value::Object(range));
    }
    let open = ratio(r, "open", "scan");
    medians.insert("open_vs_scan".into(), json!(open.map(|v| v.median)));
    ranges.insert("open_vs_scan".into(), json!(open.map(|v| [v.min, v.max])));
    (medians, ranges)
}

fn round_json(x: &crate::rounds::Round) -> Value {
    let systems: Map<String, Value> = x
        .systems
        .iter()
        .map(|(n, m)| (n.clone(), json!(m)))
        .collect();
    json!({
        "seq": x.seq,
        "order": x.order,
        "systems": systems,
        "fsync_floor": x.floor,
        "devreg_open": x.open,
        "sled_scan": x.scan,
    })
}

fn run_json(r: &SizeRun, quick: bool) -> Value {
    let (mut systems, mut min, mut max) = (Map::new(), Map::new(), Map::new());
    let groups = r.names().into_iter().map(|n| (n, n));
    for (name, group) in groups.chain(GROUPS) {
        let [med, lo, hi] = summary(r, group);
        min.insert(name.into(), Value::Object(lo));
        max.insert(name.into(), Value::Object(hi));
        systems.insert(name.into(), Value::Object(med));
    }
    let mut out = json!({
        "n": r.n,
        "rounds": r.rounds.len(),
        "skipped": r.skipped,
        "min": min,
        "max": max,
        "per_round": r.rounds.iter().map(round_json).collect::<Vec<_>>(),
    });
    // The floor, open and scan medians sit beside "systems", as before rounds.
    for (name, _) in GROUPS {
        out[name] = systems.remove(name).unwrap_or_default();
    }
    out["systems"] = Value::Object(systems);
    let (ratios, ranges) = ratios_json(r);
    out["ratios"] = Value::Object(ratios);
    out["ratio_ranges"] = Value::Object(ranges);
    out["targets"] = judged(r)
        .iter()
        .map(|t| {
            json!({
                "target": t.what,
                "median": t.spread.map(|s| s.median),
                "range": t.spread.map(|s| [s.min, s.max]),
                "threshold": t.threshold,
                "verdict": t.verdict(quick),
            })
        })
        .collect();
    out
}

pub fn json(runs: &[SizeRun], env: &Env, quick: bool) -> String {
    let runs: Vec<Value> = runs.iter().map(|r| run_json(r, quick)).collect();
    serde_json::to_string_pretty(&json!({
        "command": env.command,
        "environment": env.json(),
        "glibc_tunables": crate::child_glibc_tunables(),
        "note": "ratios: above 1 means devreg is better (throughput ratio, or inverse ratio for \
                 bytes and time); every value is the median over the rounds, \"min\" and \"max\" \
                 hold the extremes, \"per_round\" every round, \"ratio_ranges\" the min and max \
                 of the ratios within each round",
        "runs": runs,
    }))
    .expect("results serialize")
}

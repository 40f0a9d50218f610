//! The table, the ratio lines, the targets of issue 6 and the JSON file.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::SizeRun;

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

fn get(r: &SizeRun, system: &str, key: &str) -> Option<f64> {
    r.systems
        .iter()
        .find(|(s, _)| s == system)
        .and_then(|(_, m)| m.get(key).copied())
}

/// devreg's advantage over `other` on `key` (above 1 = devreg better).
pub fn ratio(r: &SizeRun, key: &str, other: &str) -> Option<f64> {
    if key == "open" {
        let (open, scan) = (r.open.get("open_ms")?, r.scan.get("scan_ms")?);
        return Some(scan / open);
    }
    let d = get(r, "devreg", key)?;
    let higher = METRICS.iter().find(|m| m.0 == key)?.3;
    let o = if other == "floor" {
        // Only durable_1t has a floor: the bare fsync loop's rate.
        *r.floor.get("ops_s")?
    } else {
        get(r, other, key)?
    };
    let (num, den) = if higher { (d, o) } else { (o, d) };
    (num > 0.0 && den > 0.0).then(|| num / den)
}

fn fmt(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), fmt)
}

pub fn table(r: &SizeRun) -> String {
    let mut s = String::new();
    let names: Vec<&str> = r.systems.iter().map(|(n, _)| n.as_str()).collect();
    let _ = writeln!(s, "## n = {} devices\n", r.n);
    let _ = writeln!(
        s,
        "Every system ran in its own process with GLIBC_TUNABLES={}.\n",
        crate::CHILD_GLIBC_TUNABLES
    );
    let _ = write!(s, "| metric | unit |");
    for n in &names {
        let _ = write!(s, " {n} |");
    }
    let _ = writeln!(s, " devreg/sqlite | devreg/sled | devreg/memory |");
    let _ = writeln!(s, "|---|---|{}---|---|---|", "---|".repeat(names.len()));
    for &(key, label, unit, _) in METRICS {
        let _ = write!(s, "| {label} | {unit} |");
        for n in &names {
            let _ = write!(s, " {} |", opt(get(r, n, key)));
        }
        for o in ["sqlite", "sled", "memory"] {
            let _ = write!(s, " {} |", opt(ratio(r, key, o)));
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s);
    let f = &r.floor;
    let _ = writeln!(
        s,
        "fsync floor (4 KiB pwrite + fdatasync, preallocated): {} ops/s, p50 {} us",
        opt(f.get("ops_s").copied()),
        opt(f.get("p50_us").copied())
    );
    let _ = writeln!(
        s,
        "devreg open (fresh process): {} ms; plain sled scan of its tree: {} ms ({} keys); \
         devreg RAM after open: {} B/device",
        opt(r.open.get("open_ms").copied()),
        opt(r.scan.get("scan_ms").copied()),
        opt(r.scan.get("keys").copied()),
        opt(r.open.get("ram_b_per_dev").copied())
    );
    let _ = writeln!(
        s,
        "devreg disk, sled store only (the rest is its preallocated log): {} B/device after \
         registers, {} B/device after updates",
        opt(get(r, "devreg", "disk_insert_store_b_per_dev")),
        opt(get(r, "devreg", "disk_update_store_b_per_dev"))
    );
    let _ = writeln!(
        s,
        "30-day active devices counted (same data in every system, expected {}): {}",
        opt(get(r, "devreg", "active30_expected")),
        names
            .iter()
            .map(|n| format!("{n}={}", opt(get(r, n, "active30_count"))))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(s);
    for &(key, ..) in METRICS {
        let _ = write!(s, "ratio {key}");
        for o in ["sqlite", "sled", "memory"] {
            let _ = write!(
                s,
                " devreg/{o}={}",
                ratio(r, key, o).map_or("n/a".into(), |v| format!("{v:.2}"))
            );
        }
        if key == "durable_1t_ops_s" {
            let _ = write!(
                s,
                " devreg/floor={}",
                ratio(r, key, "floor").map_or("n/a".into(), |v| format!("{v:.2}"))
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "ratio open devreg/sqlite=n/a devreg/sled_scan={} devreg/memory=n/a",
        ratio(r, "open", "scan").map_or("n/a".into(), |v| format!("{v:.2}"))
    );
    let _ = writeln!(s, "\n### targets (issue 6) at n = {}\n", r.n);
    for &(key, other, min, what) in TARGETS {
        let v = ratio(r, key, other);
        let verdict = match v {
            Some(v) if v >= min => "met",
            Some(_) => "MISSED",
            None => "not measured",
        };
        let _ = writeln!(
            s,
            "- {what}: devreg/{other} = {} (needs >= {min:.2}): {verdict}",
            v.map_or("n/a".into(), |v| format!("{v:.2}"))
        );
    }
    if let Some(ram) = r.open.get("ram_b_per_dev") {
        let verdict = if *ram <= 300.0 { "met" } else { "MISSED" };
        let _ = writeln!(
            s,
            "- RAM per device <= 300 B (at 10^6): {ram:.0} B: {verdict}"
        );
    }
    match get(r, "devreg", "export_ops_min") {
        Some(v) => {
            let verdict = if v >= 1e6 { "met" } else { "MISSED" };
            let _ = writeln!(
                s,
                "- export drain >= 1,000,000 ops/min: {v:.0} ops/min (100 ops per batch, export + ack): {verdict}\n"
            );
        }
        None => {
            let _ = writeln!(s, "- export drain >= 1,000,000 ops/min: not measured\n");
        }
    }
    s
}

/// How each throughput falls from the smallest to the largest size.
pub fn growth(runs: &[SizeRun]) -> String {
    let (first, last) = (&runs[0], &runs[runs.len() - 1]);
    let mut s = format!(
        "## growth: throughput at n = {} / at n = {} (target for devreg: >= 0.5)\n\n| metric |",
        last.n, first.n
    );
    for (n, _) in &first.systems {
        let _ = write!(s, " {n} |");
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(first.systems.len()));
    for &(key, label, _, higher) in METRICS {
        if !higher {
            continue;
        }
        let _ = write!(s, "| {label} |");
        for (n, _) in &first.systems {
            let g = get(last, n, key)
                .zip(get(first, n, key))
                .map(|(a, b)| a / b);
            let _ = write!(s, " {} |", g.map_or("n/a".into(), |g| format!("{g:.2}")));
        }
        let _ = writeln!(s);
    }
    s + "\n"
}

pub fn json(runs: &[SizeRun], cmd: &str) -> String {
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut ratios = Map::new();
            for &(key, ..) in METRICS {
                let mut per = Map::new();
                for o in ["sqlite", "sled", "memory", "floor"] {
                    if o == "floor" && key != "durable_1t_ops_s" {
                        continue;
                    }
                    if let Some(v) = ratio(r, key, o) {
                        per.insert(o.into(), json!(v));
                    }
                }
                ratios.insert(key.into(), Value::Object(per));
            }
            ratios.insert("open_vs_scan".into(), json!(ratio(r, "open", "scan")));
            let systems: Map<String, Value> = r
                .systems
                .iter()
                .map(|(n, m)| (n.clone(), json!(m)))
                .collect();
            json!({
                "n": r.n,
                "systems": systems,
                "fsync_floor": r.floor,
                "devreg_open": r.open,
                "sled_scan": r.scan,
                "ratios": ratios,
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({
        "command": format!("cargo bench --bench compare -- {cmd}"),
        "note": "ratios: above 1 means devreg is better (throughput ratio, or inverse ratio for bytes and time)",
        "runs": runs,
    }))
    .expect("results serialize")
}

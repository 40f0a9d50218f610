//! The results history and `--diff`.
//!
//! Every full run (not `--quick`, not a `--systems` subset) also writes its
//! files as `bench-results/history/<YYYY-MM-DD>-<commit>-<stem>.{json,txt}`
//! (UTC date of the start, the commit with "-dirty" if tracked files
//! differed; "-2", "-3", ... after the stem when that name is taken).
//!
//! `--diff A.json B.json` compares two results files and runs nothing. For
//! every size in both, every group in both (each system, the fsync floor,
//! devreg's open, the sled scan, and every devreg/<other> ratio) and every
//! metric in both, it prints the values that moved beyond their spread:
//! B's median outside A's min–max AND A's median outside B's min–max, so
//! that neither run's own rounds cover the other's typical value, and the
//! medians at least 1% apart (values that barely vary, such as bytes on
//! disk, have no spread to speak of). A file from before rounds (or of one
//! round) has no spread: any change of 1% or more counts. With few rounds
//! the ranges are narrow and more values "move": compare runs of as many
//! rounds (default 7) with the same phase length.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::env::Env;
use crate::report::{cell, fmt, GROUPS};
use crate::stats::{self, Spread};

/// Writes `json` and `text` into `out_dir/history/`; returns the JSON's path.
pub fn write(out_dir: &Path, env: &Env, stem: &str, json: &str, text: &str) -> PathBuf {
    let dir = out_dir.join("history");
    std::fs::create_dir_all(&dir).expect("creating bench-results/history/");
    let date = env.date_utc.get(..10).unwrap_or("unknown-date");
    let base = format!("{date}-{}-{stem}", env.commit);
    let name = (1..)
        .map(|k| match k {
            1 => base.clone(),
            k => format!("{base}-{k}"),
        })
        .find(|name| !dir.join(format!("{name}.json")).exists())
        .expect("a free name");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, json).expect("writing the history JSON");
    std::fs::write(dir.join(format!("{name}.txt")), text).expect("writing the history text");
    path
}

fn load(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn describe(v: &Value) -> String {
    let e = &v["environment"];
    let s = |x: &Value| x.as_str().unwrap_or("?").to_owned();
    format!(
        "commit {}, started {}: {}",
        s(&e["commit"]),
        s(&e["date_utc"]),
        s(&v["command"])
    )
}

/// Every group of a run with its medians, minima and maxima (empty maps
/// when the file has no spread).
fn groups(run: &Value) -> Vec<(String, [Map<String, Value>; 3])> {
    let obj = |v: &Value| v.as_object().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (name, med) in obj(&run["systems"]) {
        let (lo, hi) = (obj(&run["min"][&name]), obj(&run["max"][&name]));
        out.push((name, [obj(&med), lo, hi]));
    }
    for (name, _) in GROUPS {
        let (lo, hi) = (obj(&run["min"][name]), obj(&run["max"][name]));
        out.push((name.to_owned(), [obj(&run[name]), lo, hi]));
    }
    // Ratios: "ratios" holds the medians, "ratio_ranges" [min, max], per
    // metric and other side ("open_vs_scan": a number, devreg/sled_scan).
    let mut ratios: BTreeMap<String, [Map<String, Value>; 3]> = BTreeMap::new();
    for (key, per) in obj(&run["ratios"]) {
        let per: Vec<(String, Value)> = match per {
            Value::Object(o) => o.into_iter().collect(),
            v => vec![("sled_scan".to_owned(), v)],
        };
        for (other, median) in per {
            let range = match &run["ratio_ranges"][&key] {
                Value::Array(r) => r.clone(),
                r => r[&other].as_array().cloned().unwrap_or_default(),
            };
            let m = ratios.entry(format!("devreg/{other}")).or_default();
            m[0].insert(key.clone(), median);
            for (i, v) in range.into_iter().take(2).enumerate() {
                m[i + 1].insert(key.clone(), v);
            }
        }
    }
    out.extend(ratios);
    out
}

/// Changes smaller than this are not reported even outside both spreads:
/// values that barely vary (bytes on disk, counts) have no spread to speak
/// of, and a 0.1% change of them is not news.
const MIN_CHANGE_PCT: f64 = 1.0;

fn spread_of(m: &[Map<String, Value>; 3], key: &str, rounds: usize) -> Option<Spread> {
    let median = m[0].get(key)?.as_f64()?;
    let at = |i: usize| m[i].get(key).and_then(Value::as_f64).unwrap_or(median);
    Some(Spread {
        median,
        min: at(1),
        max: at(2),
        rounds,
    })
}

/// The values of one size that moved; (how many were compared, lines).
fn diff_run(a: &Value, b: &Value) -> (usize, Vec<String>) {
    let rounds = |r: &Value| r["rounds"].as_u64().unwrap_or(1) as usize;
    let (ga, gb) = (groups(a), groups(b));
    let mut compared = 0;
    let mut lines = Vec::new();
    for (name, ma) in &ga {
        let Some((_, mb)) = gb.iter().find(|(n, _)| n == name) else {
            continue;
        };
        for key in ma[0].keys().filter(|k| mb[0].contains_key(*k)) {
            let sa = spread_of(ma, key, rounds(a));
            let (Some(sa), Some(sb)) = (sa, spread_of(mb, key, rounds(b))) else {
                continue;
            };
            compared += 1;
            let pct = (sb.median / sa.median - 1.0) * 100.0;
            // NaN (0 -> 0) is no move.
            if stats::moved(&sa, &sb) && pct.abs() >= MIN_CHANGE_PCT {
                lines.push(format!(
                    "  {name} {key}: {} -> {} ({pct:+.1}%)",
                    cell(Some(sa), fmt),
                    cell(Some(sb), fmt)
                ));
            }
        }
    }
    (compared, lines)
}

/// `--diff A.json B.json`: prints what moved beyond its spread.
pub fn diff(a_path: &Path, b_path: &Path) {
    let (a, b) = (load(a_path), load(b_path));
    println!("A = {}: {}", a_path.display(), describe(&a));
    println!("B = {}: {}", b_path.display(), describe(&b));
    println!(
        "moved beyond their spread: B's median outside A's min–max and A's median outside \
         B's min–max; shown as median (min–max), A -> B\n"
    );
    let empty = Vec::new();
    let runs = |v: &Value| v["runs"].as_array().unwrap_or(&empty).clone();
    for rb in runs(&b) {
        let n = &rb["n"];
        let Some(ra) = runs(&a).into_iter().find(|r| &r["n"] == n) else {
            println!("## n = {n}: only in B\n");
            continue;
        };
        let (compared, lines) = diff_run(&ra, &rb);
        println!(
            "## n = {n}: {} of {compared} values moved beyond their spread",
            lines.len()
        );
        for l in lines {
            println!("{l}");
        }
        println!();
    }
}

//! Measuring one size in interleaved rounds. Each round runs every system's
//! child process (the whole workload) in an order rotated by one from the
//! round before (devreg sled sqlite memory, then sled sqlite memory devreg,
//! ...), after the fsync floor and before devreg's open and the plain sled
//! scan of devreg's store (always in that order: the scan opens the same
//! sled files, and an open that found them already recovered by the other
//! would be another measurement). A slow minute of the shared machine then
//! lands on a different system in each round instead of on one system's
//! whole result. Each round starts from empty directories, removed after it.
//!
//! A run of several sizes interleaves them (`measure_all`): each size's
//! rounds are spread over the run, so that a growth ratio (10^7 against
//! 10^4) compares rounds measured minutes apart rather than a size
//! measured in the run's first minutes against one measured half an hour
//! later, on a shared machine whose speed drifts (DESIGN.md 13 step 45).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::run::{self, Metrics};
use crate::stats::{self, Spread};

/// Everything measured in one round at one size.
pub struct Round {
    /// Where this round ran in the whole run: 0 for the first round of
    /// any size (`measure_all` interleaves the sizes).
    pub seq: usize,
    /// The systems in the order they ran.
    pub order: Vec<String>,
    pub floor: Metrics,
    /// Each system that gave a result this round, in table order.
    pub systems: Vec<(String, Metrics)>,
    pub open: Metrics,
    pub scan: Metrics,
}

impl Round {
    /// `key` of `group`: a system's name, or "floor", "open" or "scan".
    pub fn value(&self, group: &str, key: &str) -> Option<f64> {
        let m = match group {
            "floor" => &self.floor,
            "open" => &self.open,
            "scan" => &self.scan,
            s => &self.systems.iter().find(|(n, _)| n == s)?.1,
        };
        m.get(key).copied()
    }

    fn metrics(&self, group: &str) -> Option<&Metrics> {
        match group {
            "floor" => Some(&self.floor),
            "open" => Some(&self.open),
            "scan" => Some(&self.scan),
            s => self.systems.iter().find(|(n, _)| n == s).map(|(_, m)| m),
        }
    }
}

/// Everything measured at one size.
pub struct SizeRun {
    pub n: usize,
    /// The systems asked for, in table order.
    pub asked: Vec<String>,
    pub rounds: Vec<Round>,
    /// Why a system was not run at this size, or failed in a round.
    pub skipped: Vec<String>,
}

impl SizeRun {
    /// The systems with a result in at least one round, in table order.
    pub fn names(&self) -> Vec<&str> {
        self.asked
            .iter()
            .map(String::as_str)
            .filter(|s| self.rounds.iter().any(|r| r.metrics(s).is_some()))
            .collect()
    }

    /// Median and min–max of `key` of `group` (see `Round::value`).
    pub fn spread(&self, group: &str, key: &str) -> Option<Spread> {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|r| r.value(group, key))
            .collect();
        stats::spread(&v)
    }

    /// Every metric `group` has in some round.
    pub fn keys(&self, group: &str) -> BTreeSet<String> {
        self.rounds
            .iter()
            .filter_map(|r| r.metrics(group))
            .flat_map(|m| m.keys().cloned())
            .collect()
    }
}

/// The largest size raw sled (a key per record) is run at: at 10^6 it
/// already peaks near 6 GiB (issue 12's measurement).
const SLED_MAX_DEVICES: usize = 1_000_000;

/// A child's result; above `SLED_MAX_DEVICES` a failure (killed for memory,
/// say) is recorded in `skipped` instead of ending the run.
fn attempt(
    kind: &str,
    system: &str,
    dir: &Path,
    (n, phase): (usize, Duration),
    skipped: &mut Vec<String>,
) -> Option<Metrics> {
    match crate::try_child(kind, system, dir, n, phase) {
        Ok(m) => Some(m),
        Err(why) if n > SLED_MAX_DEVICES => {
            eprintln!("  {why}");
            skipped.push(why);
            None
        }
        Err(why) => panic!("{why}"),
    }
}

/// Round `k` (from 0) of `systems` at `n` devices, in `dir`; `seq` is its
/// place in the whole run.
fn round(
    (k, seq): (usize, usize),
    systems: &[String],
    dir: &Path,
    np: (usize, Duration),
) -> (Round, Vec<String>) {
    let mut order = systems.to_vec();
    let by = k % order.len().max(1);
    order.rotate_left(by);
    std::fs::create_dir_all(dir).expect("creating the round's directory");
    let floor = run::fsync_floor(dir, np.1);
    let mut skipped = Vec::new();
    let mut results = Vec::new();
    for s in &order {
        let t = Instant::now();
        if let Some(m) = attempt("run", s, &dir.join(s), np, &mut skipped) {
            results.push((s.clone(), m));
        }
        eprintln!("  {s}: {:.1} s", t.elapsed().as_secs_f64());
    }
    let (mut open, mut scan) = (Metrics::new(), Metrics::new());
    if results.iter().any(|(s, _)| s == "devreg") {
        let db = dir.join("devreg");
        open = attempt("open-devreg", "devreg", &db, np, &mut skipped).unwrap_or_default();
        let store = db.join("store");
        scan = attempt("scan-sled", "devreg", &store, np, &mut skipped).unwrap_or_default();
    }
    let _ = std::fs::remove_dir_all(dir);
    // Table order, whatever order they ran in.
    results.sort_by_key(|(s, _)| systems.iter().position(|x| x == s));
    let r = Round {
        seq,
        order,
        floor,
        systems: results,
        open,
        scan,
    };
    (r, skipped)
}

/// One size's rounds, measured one at a time (`next_round`) so that the
/// sizes of a run can take turns.
struct SizeRunner {
    phase: Duration,
    /// The systems run at this size (raw sled is left out above its limit).
    run_these: Vec<String>,
    tmp: tempfile::TempDir,
    /// Rounds asked for.
    rounds: usize,
    run: SizeRun,
}

impl SizeRunner {
    fn new(n: usize, phase: Duration, systems: &[String], rounds: usize) -> SizeRunner {
        // Same filesystem as the project (one disk on this machine).
        let tmp = tempfile::Builder::new()
            .prefix("devreg-compare-")
            .tempdir()
            .expect("creating a temporary directory");
        let mut skipped = Vec::new();
        let mut run_these = Vec::new();
        for s in systems {
            if s == "sled" && n > SLED_MAX_DEVICES {
                let why = format!(
                    "raw sled skipped at n = {n}: a sled key per record needs about 6 GiB of \
                     RAM per 10^6 keys (issue 12), so it cannot hold more than \
                     {SLED_MAX_DEVICES} here"
                );
                eprintln!("  {why}");
                skipped.push(why);
            } else {
                run_these.push(s.clone());
            }
        }
        let run = SizeRun {
            n,
            asked: systems.to_vec(),
            rounds: Vec::new(),
            skipped,
        };
        SizeRunner {
            phase,
            run_these,
            tmp,
            rounds,
            run,
        }
    }

    /// Runs this size's next round as round `seq` of the whole run.
    fn next_round(&mut self, seq: usize) {
        let k = self.run.rounds.len();
        let (n, rounds) = (self.run.n, self.rounds);
        eprintln!(
            "-- n = {n}, round {}/{rounds}, {} ms per timed phase",
            k + 1,
            self.phase.as_millis()
        );
        let dir = self.tmp.path().join(format!("round-{}", k + 1));
        let (r, why) = round((k, seq), &self.run_these, &dir, (n, self.phase));
        let skipped = why.into_iter().map(|w| format!("{w} (round {})", k + 1));
        self.run.skipped.extend(skipped);
        self.run.rounds.push(r);
    }
}

/// Every `(n, rounds)` of `sizes`, its rounds interleaved with the other
/// sizes' (`schedule`), each round running `systems` in rotated order.
pub fn measure_all(sizes: &[(usize, usize)], phase: Duration, systems: &[String]) -> Vec<SizeRun> {
    let mut runners: Vec<SizeRunner> = sizes
        .iter()
        .map(|&(n, rounds)| SizeRunner::new(n, phase, systems, rounds))
        .collect();
    let rounds: Vec<usize> = sizes.iter().map(|&(_, r)| r).collect();
    for (seq, i) in crate::schedule::schedule(&rounds).into_iter().enumerate() {
        if let Some(r) = runners.get_mut(i) {
            r.next_round(seq);
        }
    }
    runners.into_iter().map(|r| r.run).collect()
}

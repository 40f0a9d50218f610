//! Engine metrics, recorded lock-free: counters and fixed-bucket histograms
//! of atomics that the registry (operations), the writer (group commits),
//! the log (fdatasyncs, bytes) and the checkpointer update as they work,
//! and the plain [`Histogram`] snapshot they are read as.
//! `Registry::metrics` (`registry/metrics.rs`) assembles the whole snapshot.
//!
//! Recording is a relaxed `fetch_add` per counter (a histogram: a binary
//! search of its few bounds, then two): no lock, no allocation. A low
//! layer: it knows the model's operations and outcomes and nothing above.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::limits::{CHECKPOINT_BUCKETS_MS, GROUP_COMMIT_RECORDS_BUCKETS, LOG_FSYNC_BUCKETS_US};
use crate::model::{Op, Outcome};

/// The operation kinds counted (`Metrics::ops`' `kind`): one per [`Op`] variant.
pub const OP_KINDS: [&str; 9] = [
    "register",
    "touch",
    "rotate",
    "logout",
    "merge",
    "remove",
    "invalidate",
    "prune",
    "feedback",
];

/// The outcomes counted (`Metrics::ops`' `outcome`): one per [`Outcome`]
/// variant (`applied`, `not_found`, `skipped`), then `rejected` (the call
/// returned [`Error::Invalid`]: refused before or while applying) and
/// `failed` (any other error: the registry failed, closed or is read-only).
pub const OP_OUTCOMES: [&str; 5] = ["applied", "not_found", "skipped", "rejected", "failed"];

/// Index of an operation's kind in [`OP_KINDS`].
pub(crate) fn kind_index(op: &Op) -> usize {
    match op {
        Op::Register(_) => 0,
        Op::Touch { .. } => 1,
        Op::Rotate { .. } => 2,
        Op::Logout { .. } => 3,
        Op::Merge { .. } => 4,
        Op::Remove { .. } => 5,
        Op::Invalidate { .. } => 6,
        Op::Prune { .. } => 7,
        Op::Feedback { .. } => 8,
    }
}

/// Index of what a call returned in [`OP_OUTCOMES`].
fn outcome_index(r: std::result::Result<&Outcome, &Error>) -> usize {
    match r {
        Ok(Outcome::Applied { .. }) => 0,
        Ok(Outcome::NotFound) => 1,
        Ok(Outcome::Skipped) => 2,
        Err(Error::Invalid { .. }) => 3,
        Err(_) => 4,
    }
}

/// Operations of one kind that ended with one outcome (a counter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OpCount {
    /// One of [`OP_KINDS`].
    pub kind: &'static str,
    /// One of [`OP_OUTCOMES`].
    pub outcome: &'static str,
    /// Operations since the registry was opened.
    pub count: u64,
}

/// A fixed-bucket histogram recorded with atomics: what the engine records
/// into, and what a service may use for its own (say, HTTP latency by
/// route) to render them all alike. [`snapshot`](Self::snapshot) reads it.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [u64],
    /// One per bound, then the overflow bucket; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these inclusive upper bounds, strictly ascending
    /// (values above the last go to an overflow bucket, `+Inf`).
    pub fn new(bounds: &'static [u64]) -> AtomicHistogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        AtomicHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation: the first bucket whose bound is at least
    /// `value` counts it, and `value` is added to the sum.
    pub fn record(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(value, Relaxed);
    }

    /// The counts now. Taken while others record, `sum` may lack (or hold)
    /// an observation the counts hold (or lack); `count` is always the sum
    /// of `counts`.
    pub fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        Histogram {
            bounds: self.bounds,
            count: counts.iter().sum(),
            counts,
            sum: self.sum.load(Relaxed),
        }
    }
}

/// A histogram's counts at one moment, in the unit its field's name says.
///
/// `counts` are **per bucket, not cumulative**: `counts[i]` counts the
/// values `v` with `bounds[i - 1] < v <= bounds[i]` (`v <= bounds[0]` for
/// the first), and the last entry (`counts.len() == bounds.len() + 1`)
/// counts those above every bound. For Prometheus' cumulative `_bucket`
/// lines use [`cumulative`](Self::cumulative), with `_sum` = `sum` and
/// `_count` = `count`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Histogram {
    /// Inclusive upper bounds of the finite buckets, ascending (`le`).
    pub bounds: &'static [u64],
    /// Observations per bucket (not cumulative), the overflow bucket last.
    pub counts: Vec<u64>,
    /// Observations in all (the sum of `counts`).
    pub count: u64,
    /// Sum of the observed values.
    pub sum: u64,
}

impl Histogram {
    /// Prometheus' `_bucket` series: `(le, observations <= le)` for every
    /// bound in order, then `(None, count)` for `le="+Inf"`. Cumulative.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let les = self.bounds.iter().map(|&b| Some(b)).chain([None]);
        les.zip(self.counts.iter().scan(0u64, |acc, &c| {
            *acc += c;
            Some(*acc)
        }))
    }
}

/// Everything the engine counts; the registry owns one in an `Arc` and
/// hands it to the writer, the log and the checkpointer.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// By kind, then outcome (`OP_KINDS` x `OP_OUTCOMES`).
    ops: [[AtomicU64; OP_OUTCOMES.len()]; OP_KINDS.len()],
    group_commit_records: AtomicHistogram,
    log_fsync_us: AtomicHistogram,
    log_bytes_written: AtomicU64,
    /// The log's bound now, in bytes (a gauge the writer sets).
    log_bound_bytes: AtomicU64,
    checkpoint_ms: AtomicHistogram,
    checkpoint_failures: AtomicU64,
    checkpoints_beside_merges: AtomicU64,
    compactions: AtomicU64,
    compactions_abandoned: AtomicU64,
    compaction_freed_bytes: AtomicU64,
    compaction_passes: AtomicU64,
    heap_trims: AtomicU64,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            ops: Default::default(),
            group_commit_records: AtomicHistogram::new(&GROUP_COMMIT_RECORDS_BUCKETS),
            log_fsync_us: AtomicHistogram::new(&LOG_FSYNC_BUCKETS_US),
            log_bytes_written: AtomicU64::new(0),
            log_bound_bytes: AtomicU64::new(0),
            checkpoint_ms: AtomicHistogram::new(&CHECKPOINT_BUCKETS_MS),
            checkpoint_failures: AtomicU64::new(0),
            checkpoints_beside_merges: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            compactions_abandoned: AtomicU64::new(0),
            compaction_freed_bytes: AtomicU64::new(0),
            compaction_passes: AtomicU64::new(0),
            heap_trims: AtomicU64::new(0),
        }
    }

    /// An operation of kind `kind` (an index from `kind_index`) returned `r`.
    pub(crate) fn op(&self, kind: usize, r: std::result::Result<&Outcome, &Error>) {
        if let Some(c) = self.ops.get(kind).and_then(|k| k.get(outcome_index(r))) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// A group commit appended `records` log records.
    pub(crate) fn group_commit(&self, records: usize) {
        self.group_commit_records.record(records as u64);
    }

    /// One fdatasync of the log took `took`.
    pub(crate) fn log_fsync(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.log_fsync_us.record(us);
    }

    /// `bytes` were written to the log.
    pub(crate) fn log_written(&self, bytes: usize) {
        self.log_bytes_written.fetch_add(bytes as u64, Relaxed);
    }

    /// A checkpoint was written in `took`, or failed (`None`).
    pub(crate) fn checkpoint(&self, took: Option<Duration>) {
        match took {
            Some(t) => self
                .checkpoint_ms
                .record(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            None => {
                self.checkpoint_failures.fetch_add(1, Relaxed);
            }
        }
    }

    /// Every kind and outcome pair, zeros included, kinds in `OP_KINDS` order.
    pub(crate) fn ops(&self) -> Vec<OpCount> {
        let mut out = Vec::with_capacity(OP_KINDS.len() * OP_OUTCOMES.len());
        for (kind, row) in OP_KINDS.iter().zip(&self.ops) {
            for (outcome, c) in OP_OUTCOMES.iter().zip(row) {
                out.push(OpCount {
                    kind,
                    outcome,
                    count: c.load(Relaxed),
                });
            }
        }
        out
    }

    pub(crate) fn group_commit_records(&self) -> Histogram {
        self.group_commit_records.snapshot()
    }

    pub(crate) fn log_fsync_us(&self) -> Histogram {
        self.log_fsync_us.snapshot()
    }

    pub(crate) fn log_bytes_written(&self) -> u64 {
        self.log_bytes_written.load(Relaxed)
    }

    /// The log may now hold `bytes` before writers wait.
    pub(crate) fn set_log_bound(&self, bytes: u64) {
        self.log_bound_bytes.store(bytes, Relaxed);
    }

    pub(crate) fn log_bound_bytes(&self) -> u64 {
        self.log_bound_bytes.load(Relaxed)
    }

    pub(crate) fn checkpoint_ms(&self) -> Histogram {
        self.checkpoint_ms.snapshot()
    }

    pub(crate) fn checkpoint_failures(&self) -> u64 {
        self.checkpoint_failures.load(Relaxed)
    }

    /// A checkpoint is being written between two batches of a page merge.
    pub(crate) fn checkpoint_beside_merge(&self) {
        self.checkpoints_beside_merges.fetch_add(1, Relaxed);
    }

    pub(crate) fn checkpoints_beside_merges(&self) -> u64 {
        self.checkpoints_beside_merges.load(Relaxed)
    }

    /// A store compaction finished (`Some`), or was abandoned with the
    /// store left as it was (`None`).
    pub(crate) fn compaction(&self, done: Option<crate::kv::Compaction>) {
        match done {
            Some(c) => {
                self.compactions.fetch_add(1, Relaxed);
                let freed = c.before_bytes.saturating_sub(c.after_bytes);
                self.compaction_freed_bytes.fetch_add(freed, Relaxed);
                self.compaction_passes
                    .fetch_add(u64::from(c.passes), Relaxed);
            }
            None => {
                self.compactions_abandoned.fetch_add(1, Relaxed);
            }
        }
    }

    /// The checkpointer handed the heap's free pages back after a merge or
    /// a compaction (`heap::release_free_pages`).
    pub(crate) fn heap_trimmed(&self) {
        self.heap_trims.fetch_add(1, Relaxed);
    }

    pub(crate) fn heap_trims(&self) -> u64 {
        self.heap_trims.load(Relaxed)
    }

    /// (compactions done, abandoned, bytes of disk they gave back, passes
    /// of the done ones).
    pub(crate) fn compactions(&self) -> (u64, u64, u64, u64) {
        (
            self.compactions.load(Relaxed),
            self.compactions_abandoned.load(Relaxed),
            self.compaction_freed_bytes.load(Relaxed),
            self.compaction_passes.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [u64; 3] = [10, 20, 40];

    #[test]
    fn a_value_on_a_bound_goes_to_that_bucket_and_one_above_to_the_next() {
        let h = AtomicHistogram::new(&BOUNDS);
        for v in [0, 10, 11, 20, 21, 40, 41, u64::MAX / 2] {
            h.record(v);
        }
        let s = h.snapshot();
        // (..=10]: 0, 10; (10..=20]: 11, 20; (20..=40]: 21, 40; above: 41, MAX/2.
        assert_eq!(s.counts, vec![2, 2, 2, 2]);
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, 10 + 11 + 20 + 21 + 40 + 41 + u64::MAX / 2);
        assert_eq!(s.bounds, &BOUNDS[..]);
    }

    #[test]
    fn cumulative_counts_end_with_the_total_at_infinity() {
        let h = AtomicHistogram::new(&BOUNDS);
        for v in [5, 15, 15, 100] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![1, 2, 0, 1]);
        let cum: Vec<_> = s.cumulative().collect();
        assert_eq!(
            cum,
            vec![(Some(10), 1), (Some(20), 3), (Some(40), 3), (None, 4)]
        );
        assert_eq!(s.sum, 135);
    }

    #[test]
    fn an_empty_histogram_has_zero_everywhere() {
        let s = AtomicHistogram::new(&LOG_FSYNC_BUCKETS_US).snapshot();
        assert_eq!(s.counts.len(), LOG_FSYNC_BUCKETS_US.len() + 1);
        assert!(s.counts.iter().all(|&c| c == 0));
        assert_eq!((s.count, s.sum), (0, 0));
        assert_eq!(s.cumulative().last(), Some((None, 0)));
    }

    #[test]
    fn durations_are_recorded_in_the_unit_of_the_name() {
        let r = Recorder::new();
        r.log_fsync(Duration::from_micros(16));
        r.log_fsync(Duration::from_micros(17));
        r.log_fsync(Duration::from_secs(2));
        let f = r.log_fsync_us();
        assert_eq!(f.counts.first(), Some(&1)); // 16 us: le=16
        assert_eq!(f.counts.get(1), Some(&1)); // 17 us: le=32
        assert_eq!(f.counts.last(), Some(&1)); // 2 s: +Inf
        assert_eq!(f.sum, 16 + 17 + 2_000_000);
        r.checkpoint(Some(Duration::from_millis(3)));
        r.checkpoint(None);
        let c = r.checkpoint_ms();
        assert_eq!((c.count, c.sum, r.checkpoint_failures()), (1, 3, 1));
        assert_eq!(c.counts.get(2), Some(&1)); // 3 ms: le=5
    }

    #[test]
    fn ops_are_counted_by_kind_and_outcome() {
        let r = Recorder::new();
        let touch = kind_index(&Op::Touch {
            token: "t".into(),
            seen_ms: 1,
        });
        r.op(touch, Ok(&Outcome::NotFound));
        r.op(touch, Ok(&Outcome::NotFound));
        r.op(touch, Err(&Error::invalid("token", "is empty")));
        r.op(touch, Err(&Error::Closed));
        let count = |outcome: &str| {
            r.ops()
                .iter()
                .find(|c| c.kind == "touch" && c.outcome == outcome)
                .map(|c| c.count)
        };
        assert_eq!(count("not_found"), Some(2));
        assert_eq!(count("rejected"), Some(1));
        assert_eq!(count("failed"), Some(1));
        assert_eq!(count("applied"), Some(0));
        assert_eq!(r.ops().len(), OP_KINDS.len() * OP_OUTCOMES.len());
        assert_eq!(r.ops().iter().map(|c| c.count).sum::<u64>(), 4);
    }
}

//! `Registry::metrics`: one snapshot of the engine's counters and
//! histograms (`crate::metrics`) with the gauges read from the state (the
//! devices, each sink's lag), for a service to render (say, as Prometheus
//! text). Counters count since this open.

use serde::Serialize;

use super::Registry;
use crate::feed::SinkInfo;
use crate::metrics::{Histogram, OpCount};
use crate::state::Stats;

/// The engine's metrics at one moment; see [`Registry::metrics`]. Every
/// counter counts since the registry was opened (it starts at 0 on each
/// open, as a process restart would); units are in the field names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Metrics {
    /// Operations by kind and outcome (counters): every pair of
    /// [`OP_KINDS`](crate::OP_KINDS) and [`OP_OUTCOMES`](crate::OP_OUTCOMES),
    /// zeros included, kinds in that order. Counted when the call returns,
    /// as the caller saw it; each operation of an `apply_batch` counts
    /// alone (a batch refused or failed as a whole: each with that error).
    pub ops: Vec<OpCount>,
    /// Group commits that appended to the log (a counter; the
    /// histogram's `count`).
    pub group_commits: u64,
    /// Log records appended per group commit (one per request; in
    /// `Eventual` mode a request that changed nothing is not logged).
    pub group_commit_records: Histogram,
    /// Latency of each fdatasync of the log (group commits in
    /// `Immediate` mode, the timer in `Eventual`, segment ends), in µs.
    pub log_fsync_us: Histogram,
    /// Bytes written to the log (records and padding; a counter).
    pub log_bytes_written: u64,
    /// Bytes the log's files take on disk now (preallocated segments
    /// count whole; a gauge, from one listing of `log/`).
    pub log_disk_bytes: u64,
    /// Bytes the log may hold before writers wait for a checkpoint (a
    /// gauge: `Config::max_log_segments`, or more in a large registry,
    /// `Config::log_bytes_per_device`; 0 on etcd, which has no log).
    pub log_bound_bytes: u64,
    /// Checkpoints written (a counter; the histogram's `count`).
    pub checkpoints: u64,
    /// Checkpoints that failed, or were refused because the registry had
    /// failed (a counter; the first failure stops the registry's writes).
    pub checkpoint_failures: u64,
    /// Checkpoints written while a page merge ran, between two of its
    /// batches of pages (a counter; DESIGN.md 4.3): before, writers
    /// waited for the merge once the log was full.
    pub checkpoints_beside_merges: u64,
    /// Duration of each checkpoint written, in ms (store writes, flush
    /// and fsyncs).
    pub checkpoint_ms: Histogram,
    /// Bytes of keys and values checkpoints handed to the store (a
    /// counter; [`Registry::store_bytes_written`]).
    pub store_bytes_written: u64,
    /// Store compactions done (a counter; DESIGN.md 4.6).
    pub compactions: u64,
    /// Compactions abandoned with the store left as it was (a counter; a
    /// full disk, for example).
    pub compactions_abandoned: u64,
    /// Bytes of disk compactions gave back (a counter).
    pub compaction_freed_bytes: u64,
    /// Passes of the compactions done, each a copy of about
    /// `Config::compact_pass_bytes` between two reopens of the store (a
    /// counter).
    pub compaction_passes: u64,
    /// Page merges committed (a counter; DESIGN.md 4.3): each folds the
    /// delta records (a history merge: the history's records held in
    /// memory alone) into new versions of the pages they touch.
    pub page_merges: u64,
    /// Bytes of page versions (keys and values) merges handed to sled (a
    /// counter; part of `store_bytes_written`): what a merge costs, and
    /// with `page_merges`, how often the store is rewritten.
    pub page_merge_bytes_written: u64,
    /// Times the checkpointer handed the C heap's free pages back to the
    /// kernel, after each page merge and each compaction (a counter;
    /// glibc's `malloc_trim`, a no-op on other C libraries; DESIGN.md 6,
    /// "The heap after a merge").
    pub heap_trims: u64,
    /// The registry's counts now ([`Registry::stats`]): `devices` and more.
    pub stats: Stats,
    /// Every sink's position ([`Registry::sinks`]): `pending` is its lag
    /// in items not yet exported.
    pub sinks: Vec<SinkInfo>,
    /// Whether the registry has failed and refuses writes until reopened.
    pub failed: bool,
}

impl Registry {
    /// The engine's metrics now: operations by kind and outcome, group
    /// commits, log fdatasync latency, checkpoints, log and store bytes,
    /// devices and each sink's lag. Cheap (atomic loads, one short read
    /// lock of the state, one listing of `log/`); recording them costs
    /// the write path a few relaxed atomic additions. DESIGN.md, "Metrics".
    ///
    /// ```
    /// use devreg::{Registry, Durability, Config};
    /// let dir = tempfile::tempdir().unwrap();
    /// let reg = Registry::open_with(
    ///     Config::new(dir.path().join("db")).durability(Durability::Immediate),
    /// )
    /// .unwrap();
    /// let _ = reg.touch("nosuch", 1).unwrap();
    /// let m = reg.metrics();
    /// assert_eq!(m.op_count("touch", "not_found"), 1);
    /// assert!(m.log_fsync_us.count >= 1);
    /// // Prometheus buckets: cumulative, `None` is le="+Inf".
    /// assert_eq!(m.log_fsync_us.cumulative().last(), Some((None, m.log_fsync_us.count)));
    /// ```
    pub fn metrics(&self) -> Metrics {
        let m = &self.inner.metrics;
        let (stats, sinks) = {
            let st = self.inner.state.read();
            (st.stats(), st.feed.infos())
        };
        let group_commit_records = m.group_commit_records();
        let checkpoint_ms = m.checkpoint_ms();
        let (compactions, compactions_abandoned, compaction_freed_bytes, compaction_passes) =
            m.compactions();
        let (page_merges, page_merge_bytes_written) = self.inner.store.merges();
        Metrics {
            ops: m.ops(),
            group_commits: group_commit_records.count,
            group_commit_records,
            log_fsync_us: m.log_fsync_us(),
            log_bytes_written: m.log_bytes_written(),
            log_disk_bytes: self.log_disk_bytes(),
            log_bound_bytes: m.log_bound_bytes(),
            checkpoints: checkpoint_ms.count,
            checkpoint_failures: m.checkpoint_failures(),
            checkpoints_beside_merges: m.checkpoints_beside_merges(),
            checkpoint_ms,
            store_bytes_written: self.store_bytes_written(),
            compactions,
            compactions_abandoned,
            compaction_freed_bytes,
            compaction_passes,
            page_merges,
            page_merge_bytes_written,
            heap_trims: m.heap_trims(),
            stats,
            sinks,
            failed: self.inner.failed.get().is_some(),
        }
    }
}

impl Metrics {
    /// The count of operations of `kind` that ended with `outcome` (names
    /// from [`OP_KINDS`](crate::OP_KINDS) and
    /// [`OP_OUTCOMES`](crate::OP_OUTCOMES)); 0 for a pair not counted.
    pub fn op_count(&self, kind: &str, outcome: &str) -> u64 {
        self.ops
            .iter()
            .find(|c| c.kind == kind && c.outcome == outcome)
            .map_or(0, |c| c.count)
    }
}

//! The checkpointer thread: writes the writer's snapshots to the store,
//! releases the log behind them, and then does the store's own work (a
//! page merge, a compaction) with the next checkpoints going on beside a
//! merge (DESIGN.md 4.3, "Checkpoints beside a merge").
//!
//! Two flags tell the writer where it stands: `busy` while a snapshot it
//! handed is not yet written (it takes no other meanwhile), `merging`
//! while the work after one runs. A merge can take seconds at 10^7
//! devices, and with one flag the writer waited for all of it once the
//! log was full (13 step 33: 28% of the importing thread's time). Now a
//! snapshot handed during a merge is written between two of its batches
//! of pages, on this thread, so every store call is still made by one
//! thread, in an order one thread chose.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

use super::{CheckpointJob, FailFlag, Reply};
use crate::error::{Error, Result};
use crate::kv::CompactOutcome;
use crate::metrics::Recorder;
use crate::state::StateLock;
use crate::store::KvStore;

/// What the checkpointer thread shares with the writer.
pub(crate) struct CheckpointerCtx {
    /// The state, for `History::release_flushing` after a checkpoint.
    pub(crate) state: Arc<StateLock>,
    pub(crate) store: Arc<dyn KvStore>,
    pub(crate) pool: Arc<crate::log::segments::SegmentPool>,
    pub(crate) failed: Arc<FailFlag>,
    /// A snapshot was handed and is not written yet.
    pub(crate) busy: Arc<AtomicBool>,
    /// The store's work after a checkpoint (merge, compaction) is running.
    pub(crate) merging: Arc<AtomicBool>,
    pub(crate) carry: Arc<Mutex<Vec<crate::store::Write>>>,
    /// Where checkpoints and their durations are counted.
    pub(crate) metrics: Arc<Recorder>,
}

impl CheckpointerCtx {
    /// Fails the registry stop on `e`: nothing more is written, and the
    /// store is marked so that the next open checks it.
    fn fail_stop(&self, e: &Error) {
        self.failed.set(e);
        self.store.mark_troubled();
    }

    /// The failure that stopped the registry, as an error.
    fn failure(&self) -> Error {
        Error::Failed(self.failed.get().unwrap_or_default())
    }
}

/// The checkpointer: writes snapshots to the store and releases log segments.
/// Once the registry has failed it writes nothing more: a job that arrives
/// then is dropped (its writes kept in `carry`) and answered with the failure.
pub(crate) fn run_checkpointer(rx: Receiver<CheckpointJob>, ctx: CheckpointerCtx) {
    while let Ok(job) = rx.recv() {
        // Set before `busy` clears, so that a writer waiting for both never
        // sees the checkpointer idle in between.
        ctx.merging.store(true, Ordering::Release);
        let (r, done) = write_job(&ctx, job);
        let r = r.and_then(|lsn| {
            let mut beside = || write_jobs_beside(&ctx, &rx);
            merge_after_checkpoint(&ctx, &mut beside)
                .and_then(|()| compact_after_checkpoint(&ctx))
                .map(|()| lsn)
        });
        ctx.merging.store(false, Ordering::Release);
        if let Some(done) = done {
            let _ = done.send(r.map(|_| ()));
        }
    }
}

/// Writes one snapshot, then frees what it held: the log up to its LSN,
/// its writes, its history entries. Clears `busy` either way; a failure
/// fails the registry and keeps the writes in `carry`.
fn write_job(ctx: &CheckpointerCtx, mut job: CheckpointJob) -> (Result<u64>, Option<Reply<()>>) {
    let start = Instant::now();
    let r = match ctx.failed.get() {
        Some(why) => Err(Error::Failed(why)),
        None => job.snapshot.write(&*ctx.store),
    };
    ctx.metrics
        .checkpoint(r.as_ref().ok().map(|_| start.elapsed()));
    match &r {
        Ok(lsn) => {
            // The log up to `lsn` and the snapshot's writes are free
            // before a merge (at 10^6 devices the writes held during a
            // merge raised the harness's peak RSS by 110-270 MB).
            ctx.pool.checkpointed(*lsn);
            drop(std::mem::take(&mut job.snapshot.writes));
            // Its history entries are in the store now; freed outside
            // the lock, which is held for one `mem::take`.
            let stored = ctx
                .state
                .write()
                .history
                .release_flushing(job.snapshot.history_drain);
            drop(stored);
        }
        Err(e) => {
            ctx.fail_stop(e);
            *ctx.carry.lock() = std::mem::take(&mut job.snapshot.writes);
        }
    }
    ctx.busy.store(false, Ordering::Release);
    (r, job.done)
}

/// Between two batches of a merge's pages: writes every snapshot the
/// writer handed meanwhile and answers it. A failed one stops the merge
/// (the registry has failed).
fn write_jobs_beside(ctx: &CheckpointerCtx, rx: &Receiver<CheckpointJob>) -> Result<()> {
    while let Ok(job) = rx.try_recv() {
        ctx.metrics.checkpoint_beside_merge();
        let (r, done) = write_job(ctx, job);
        let failed = r.is_err();
        if let Some(done) = done {
            let _ = done.send(r.map(|_| ()));
        }
        if failed {
            return Err(ctx.failure());
        }
    }
    Ok(())
}

/// After a checkpoint, before the next: compacts the store when its garbage
/// is worth it (`store/compact.rs`). A failed compaction that left the
/// store as it was is counted; one that failed mid-swap fails the registry
/// (the next open finishes the swap).
fn compact_after_checkpoint(ctx: &CheckpointerCtx) -> Result<()> {
    match ctx.store.compact_if_worth() {
        Ok(CompactOutcome::Skipped) => Ok(()),
        Ok(CompactOutcome::Done(c)) => {
            ctx.metrics.compaction(Some(c));
            // The copy's buffers and the old store's cache are freed.
            release_free_pages(ctx);
            Ok(())
        }
        Ok(CompactOutcome::Abandoned) => {
            ctx.metrics.compaction(None);
            Ok(())
        }
        Err(e) => {
            ctx.fail_stop(&e);
            Err(e)
        }
    }
}

/// After a checkpoint's commit, with its snapshot freed: merges the store's
/// deltas into its pages if they passed a bound (`store/paged/merge.rs`),
/// writing the snapshots handed meanwhile between its batches (`beside`).
/// A failure fails the registry; the store reads the same either way.
fn merge_after_checkpoint(ctx: &CheckpointerCtx, beside: crate::kv::Between<'_>) -> Result<()> {
    let (merges_before, _) = ctx.store.merges();
    ctx.store
        .merge_if_due_beside(beside)
        .inspect_err(|e| ctx.fail_stop(e))?;
    if ctx.store.merges().0 != merges_before {
        // A merge frees what it read back and rewrote (hundreds of MB at
        // 10^7 devices).
        release_free_pages(ctx);
    }
    Ok(())
}

/// Hands the C heap's free pages back to the kernel after a merge or a
/// compaction, and counts it: glibc keeps what they freed in its arenas
/// (DESIGN.md 6, "The heap after a merge"). A few tens of ms at 10^7
/// devices, a few times per million devices imported.
fn release_free_pages(ctx: &CheckpointerCtx) {
    crate::heap::release_free_pages();
    ctx.metrics.heap_trimmed();
}

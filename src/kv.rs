//! The ordered key-value interface devreg's storage is written against:
//! get, atomic batch, prefix scan, durable flush. A low layer: the feed and
//! the history load and save themselves through it, the store's page layout
//! (`store/paged.rs`) implements it over another one, and sled implements it
//! at the bottom (`store/kv.rs`); another ordered transactional store (the
//! etcd issue) would implement it too.

use crate::error::Result;

/// Visits one key and value of a scan.
pub(crate) type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<()>;

/// A scan's callback that returns whether to go on.
pub(crate) type VisitWhile<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<bool>;

/// One write of an atomic batch: a value to store, or `None` to delete.
pub(crate) type Write = (Vec<u8>, Option<Vec<u8>>);

/// What one compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compaction {
    /// Bytes of sled's files before.
    pub before_bytes: u64,
    /// Bytes of sled's files after.
    pub after_bytes: u64,
    /// Bytes of the live keys and values copied.
    pub live_bytes: u64,
    /// Passes the copy took (the store was reopened between two).
    pub passes: u32,
}

/// What `KvStore::compact_if_worth` did.
#[derive(Debug)]
pub(crate) enum CompactOutcome {
    /// Not worth it (or not a sled store).
    Skipped,
    /// Compacted.
    Done(Compaction),
    /// Failed before the store was touched: it is as it was, the partial
    /// copy removed (for example a full disk). Not a registry failure: it
    /// is counted (`Metrics::compactions_abandoned`) and tried again after
    /// a later checkpoint.
    Abandoned,
}

/// Work a long store operation lets run between its steps
/// (`KvStore::merge_if_due_beside`).
pub(crate) type Between<'a> = &'a mut dyn FnMut() -> Result<()>;

/// What devreg needs from an ordered key-value store.
pub(crate) trait KvStore: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Applies every write or none.
    fn apply(&self, writes: &[Write]) -> Result<()>;
    /// `apply`, leaving work the writes make due to `merge_if_due`, so that
    /// a checkpointer can free its snapshot's writes and the log in between
    /// (`PagedStore`: the merge of the deltas into the pages).
    fn apply_deferred(&self, writes: &[Write]) -> Result<()> {
        self.apply(writes)
    }
    /// Does what `apply_deferred` left, if anything (`PagedStore`: a merge
    /// in place once the deltas pass a bound). An error: fail stop.
    fn merge_if_due(&self) -> Result<()> {
        self.merge_if_due_beside(&mut || Ok(()))
    }
    /// `merge_if_due`, calling `between` from time to time while it works,
    /// on the same thread, with no lock of the store held: `between` may
    /// `apply_deferred` (the checkpoints that go on beside a merge), never
    /// start another merge. An error from `between` stops the merge, which
    /// returns it (the store reads the same either way).
    fn merge_if_due_beside(&self, between: Between<'_>) -> Result<()> {
        let _ = between;
        Ok(())
    }
    /// Whether a merge in progress leaves room for another checkpoint
    /// beside it (`PagedStore`: the deltas held in memory within their
    /// bound, those on disk within theirs and
    /// `DELTA_DISK_SLACK_BESIDE_MERGE_PCT` more). Lock-free: the writer
    /// asks.
    fn room_beside_merge(&self) -> bool {
        true
    }
    /// Calls `f` for each entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8], f: Visit<'_>) -> Result<()>;
    /// `scan_prefix` for a scan of a whole keyspace that keeps nothing it
    /// read and needs no order (the open's load): the store may drop what
    /// it keeps in memory of what was read along the way
    /// (`RawKv::shed_cache`), and a paged store visits the records only in
    /// its deltas last, in the order they were written, not in key order.
    fn scan_prefix_shedding(&self, prefix: &[u8], f: Visit<'_>) -> Result<()> {
        self.scan_prefix(prefix, f)
    }
    /// Drops what the store keeps in memory of what it read, once, when
    /// nothing else uses it (after the open's load,
    /// `Config::reopen_store_after_devices`); true if it did. A paged
    /// store sheds the raw store's cache (`RawKv::shed_cache`) and keeps
    /// its own state (the deltas it read at open). Nothing by default.
    fn shed_reads(&self) -> Result<bool> {
        Ok(false)
    }
    /// Makes every applied batch durable against power loss.
    fn sync(&self) -> Result<()>;
    /// Bytes the store's files take on disk.
    fn disk_bytes(&self) -> u64;
    /// Bytes of keys and values handed to `apply` since the store was opened.
    fn bytes_written(&self) -> u64;
    /// (page merges committed, bytes of page versions they handed to the
    /// store below) since the store was opened: `PagedStore`'s; (0, 0) for
    /// a store without pages.
    fn merges(&self) -> (u64, u64) {
        (0, 0)
    }
    /// The registry stopped after a failed write: do no more than needed
    /// when closing (no settling, see `Drop for SledStore`).
    fn mark_troubled(&self);
    /// The registry holds `devices` devices now: a layout may size what it
    /// keeps in memory by it (`PagedStore`: the delta bound). No-op here.
    fn plan_for_devices(&self, _devices: u64) {}
    /// Calls `f` for every entry as the store keeps it, below any layout
    /// (for `PagedStore`: pages, delta chunks and metadata), in key order:
    /// what a backup copies.
    fn scan_stored(&self, f: Visit<'_>) -> Result<()>;
    /// `scan_stored` from the key `from` on, until `f` returns false: a
    /// copy in passes (`store::copy_store`) starts each pass where the one
    /// before stopped. By default a whole `scan_stored` that skips the
    /// keys below `from` and visits nothing more once `f` said stop.
    fn scan_stored_from(&self, from: &[u8], f: VisitWhile<'_>) -> Result<()> {
        let mut going = true;
        self.scan_stored(&mut |k, v| {
            if going && k >= from {
                going = f(k, v)?;
            }
            Ok(())
        })
    }
    /// Gives the store's garbage back if there is enough of it (sled:
    /// `store/compact.rs`), with no write in progress. An error leaves the
    /// store to be finished by the next open: fail stop.
    fn compact_if_worth(&self) -> Result<CompactOutcome> {
        Ok(CompactOutcome::Skipped)
    }
}

/// What the page layout (`store/paged.rs`) needs from the store below it
/// beyond `KvStore`: range scans. sled implements it (`store/kv.rs`), and
/// so does etcd (`etcd/kv.rs`).
pub(crate) trait RawKv: KvStore {
    /// Calls `f` for each entry with a key in `[from, to)`, in key order.
    fn scan_range(&self, from: &[u8], to: &[u8], f: Visit<'_>) -> Result<()>;
    /// The first entries whose keys start with `prefix`, in key order,
    /// until they hold `max_bytes` of keys and values (at least one entry
    /// if there is any).
    fn scan_chunk(&self, prefix: &[u8], max_bytes: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Most writes one `apply` may carry (etcd's `--max-txn-ops`, less
    /// what the store adds); the page layout cuts its chunks to fit.
    fn max_batch_writes(&self) -> usize {
        usize::MAX
    }
    /// Bytes a long scan reads before `shed_cache` is worth calling
    /// (`None`: never; a registry's sled store: `Config::load_shed_bytes`).
    fn shed_after_bytes(&self) -> Option<u64> {
        None
    }
    /// Drops what the store keeps in memory of what was read, if that can
    /// be done within `limits::SHED_WAIT_MS` (nothing else may be using the
    /// store meanwhile); true if it was. sled keeps the
    /// nodes a scan read until it is closed (DESIGN.md 6, "The open's
    /// scan sheds sled's nodes"). An error: the store is closed (fail stop).
    fn shed_cache(&self) -> Result<bool> {
        Ok(false)
    }
    /// Reads each of `keys` again, `limits::SLED_LRU_TOUCHES` times, and
    /// drops what it read: on sled the accesses make its LRU evict the
    /// nodes a merge left behind sooner (DESIGN.md 6). Nothing by default.
    fn touch(&self, keys: &mut dyn Iterator<Item = &[u8]>) -> Result<()> {
        let _ = keys;
        Ok(())
    }
}

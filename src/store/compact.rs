//! Store compaction: sled 0.34.7 reclaims a segment of its file only when
//! every node in it was rewritten, and cleans partly live segments only on
//! its flusher thread, which devreg does not run (it fsyncs its own way). A
//! page merge rewrites every page (before 2026-12-02 under a new
//! generation, since then in place), so the file keeps the old values'
//! bytes beside the new: measured at 2×10^5 devices
//! after the comparison harness's phases, 238 MB of file for 38 MB of live
//! entries. Compaction copies the live entries into a new sled database
//! beside the store and swaps the two directories (DESIGN.md 4.6).
//!
//! The swap, with the directory fsynced after each step:
//! 1. `store.compact/` is written whole, in passes of bounded bytes with
//!    both stores closed and opened again between two (sled keeps what a
//!    scan read resident until then), with `Mstore_live_bytes` set; every
//!    file fsynced, sled closed and settled;
//! 2. `store/` is renamed `store.old/`;
//! 3. `store.compact/` is renamed `store/`, and the open handle is replaced;
//! 4. `store.old/` is removed.
//!
//! An open finishes an interrupted swap (`finish_interrupted`): with both
//! `store/` and `store.compact/`, the copy may be partial and is removed;
//! with only `store.compact/` (a crash between 2 and 3), the copy is
//! complete and becomes `store/`; `store.old/` is removed once `store/`
//! exists. The copy holds exactly the entries of the store (the caller
//! writes nothing meanwhile), so either directory is the same database.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::kv::{copy_pass, open_sled, visit_tree, Copied, SledStore};
use crate::error::{Error, Result};
use crate::fault::{check, Faults, IoOp};
use crate::kv::{CompactOutcome, Compaction, KvStore};
use crate::limits::{
    COMPACT_CHUNK_BYTES, COMPACT_LIVE_SCALE_MAX, COMPACT_SPACE_FACTOR, TOOL_SLED_CACHE_BYTES,
};
use crate::log::segments::sync_dir;

/// Live bytes (keys and values) the last compaction copied, u64 big-endian:
/// the measure `worth_compacting` compares the file with. Absent until the
/// first compaction; after a copy that passed the live bound, the bytes it
/// had copied (a lower bound, so none is tried again under that bound).
pub(crate) const META_STORE_LIVE_BYTES: &[u8] = b"Mstore_live_bytes";

/// The registry's device count when `Mstore_live_bytes` was recorded, u64
/// big-endian (`KvStore::plan_for_devices`). The live bytes are scaled by
/// the growth since (`scaled_live`): during a bulk import the files grow
/// with what is imported, not with garbage, and taking the last copy's
/// live bytes as today's compacted the store for its growth alone (at
/// 10^7 devices, 8 copies in an import, 22 s; DESIGN.md 4.6). Absent in
/// stores compacted before it: no scaling. Older builds ignore the key.
pub(crate) const META_STORE_LIVE_DEVICES: &[u8] = b"Mstore_live_devices";

/// The live bytes now, estimated from `live` bytes recorded at
/// `devices_then` devices: scaled by the growth to `devices_now`, at most
/// `COMPACT_LIVE_SCALE_MAX` times (fixed costs do not grow), never down (a
/// registry that shrank may hold as many bytes of history and feed), and
/// not at all without a record of the devices then.
pub(crate) fn scaled_live(live: u64, devices_then: Option<u64>, devices_now: u64) -> u64 {
    match devices_then {
        Some(then) if devices_now > then => {
            let scaled = u128::from(live) * u128::from(devices_now) / u128::from(then.max(1));
            let most = u128::from(live) * u128::from(COMPACT_LIVE_SCALE_MAX);
            u64::try_from(scaled.min(most)).unwrap_or(u64::MAX)
        }
        _ => live,
    }
}

/// The directory a compaction builds its copy in, beside `store/`.
pub(crate) const COMPACT_DIR: &str = "store.compact";
/// Where `store/` goes while the copy takes its place.
pub(crate) const OLD_DIR: &str = "store.old";

/// Whether a store of `disk_bytes` on disk whose last compaction found
/// `live_bytes` (`None`: never compacted, taken as 0) is worth compacting
/// now: files of at least `min_bytes` (`u64::MAX`: never;
/// `Config::compact_min_store_bytes`) and at least `COMPACT_SPACE_FACTOR`
/// times those live bytes, which are at most `max_live_bytes`
/// (`Config::compact_max_live_bytes`).
pub(crate) fn worth_compacting(disk_bytes: u64, live_bytes: Option<u64>, limits: Limits) -> bool {
    let live = live_bytes.unwrap_or(0);
    limits.min_bytes != u64::MAX
        && disk_bytes >= limits.min_bytes
        && live <= limits.max_live_bytes
        && disk_bytes >= live.saturating_mul(COMPACT_SPACE_FACTOR)
}

/// When to compact (see `worth_compacting`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) min_bytes: u64,
    pub(crate) max_live_bytes: u64,
}

/// How a copy ended short: over the live bound or failed before anything
/// of `store/` changed (the compaction is skipped or abandoned), or with
/// the store closed and not opened again (the registry fails stop).
enum CopyFailure {
    /// The live bytes passed `Config::compact_max_live_bytes` (checked
    /// after each pass, so by at most one pass): stopped there, nothing
    /// renamed. Holds the bytes copied so far: a lower bound of the live
    /// bytes.
    Over(u64),
    /// A failure with the store as it was (a full disk, say).
    Abandon,
    /// The store failed to open again between two passes.
    Fatal(Error),
}

fn sibling(store: &Path, name: &str) -> Result<PathBuf> {
    store
        .parent()
        .map(|p| p.join(name))
        .ok_or_else(|| Error::corrupt(format!("store {}", store.display()), "has no parent"))
}

fn rename(from: &Path, to: &Path, faults: &Faults) -> Result<()> {
    check(faults, IoOp::Rename)
        .and_then(|()| std::fs::rename(from, to))
        .map_err(|e| {
            Error::io(
                format!("renaming {} to {}", from.display(), to.display()),
                e,
            )
        })
}

fn remove_dir(dir: &Path, faults: &Faults) -> Result<()> {
    check(faults, IoOp::Unlink)
        .and_then(|()| std::fs::remove_dir_all(dir))
        .map_err(|e| Error::io(format!("removing {}", dir.display()), e))
}

/// Finishes a compaction that a crash interrupted (see the module doc),
/// before the store at `store` is opened for writing.
pub(crate) fn finish_interrupted(store: &Path, faults: &Faults) -> Result<()> {
    let (copy, old) = (sibling(store, COMPACT_DIR)?, sibling(store, OLD_DIR)?);
    let parent = store.parent().unwrap_or(Path::new("."));
    if copy.exists() {
        if store.exists() {
            remove_dir(&copy, faults)?;
        } else {
            rename(&copy, store, faults)?;
        }
        sync_dir(parent, faults)?;
    }
    if old.exists() && store.exists() {
        remove_dir(&old, faults)?;
        sync_dir(parent, faults)?;
    }
    Ok(())
}

/// Whether a read-only open would find the store mid-swap (it may not
/// finish it: a read writes nothing).
pub(crate) fn interrupted(store: &Path) -> bool {
    !store.exists() && sibling(store, COMPACT_DIR).is_ok_and(|c| c.exists())
}

impl SledStore {
    /// The live bytes the last compaction recorded, if any, scaled by the
    /// device count's growth since (`scaled_live`).
    fn live_bytes_now(&self) -> Result<Option<u64>> {
        let Some(live) = self.recorded_u64(META_STORE_LIVE_BYTES)? else {
            return Ok(None);
        };
        let then = self.recorded_u64(META_STORE_LIVE_DEVICES)?;
        let now = self.devices.load(Ordering::Relaxed);
        Ok(Some(scaled_live(live, then, now)))
    }

    fn recorded_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        let v = self.get(key)?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// The records a copy or a live bound writes: `bytes` of live keys and
    /// values, at the current device count.
    fn live_records(&self, bytes: u64) -> Vec<crate::store::Write> {
        let devices = self.devices.load(Ordering::Relaxed);
        vec![
            (
                META_STORE_LIVE_BYTES.to_vec(),
                Some(bytes.to_be_bytes().to_vec()),
            ),
            (
                META_STORE_LIVE_DEVICES.to_vec(),
                Some(devices.to_be_bytes().to_vec()),
            ),
        ]
    }

    /// Records that the store holds at least `bytes` of live keys and
    /// values (`Mstore_live_bytes`), and makes it durable. A failure is
    /// the store's own (a checkpoint's write would fail alike): the
    /// caller fails stop.
    fn record_live_at_least(&self, bytes: u64) -> Result<()> {
        self.apply(&self.live_records(bytes))?;
        self.sync()
    }

    /// Compacts the store if `worth_compacting` says so. The caller writes
    /// nothing to the store meanwhile; reads go on (on the old database
    /// until the swap). An error is from after `store/` was renamed (the
    /// next open finishes the swap) or a failed write of the live bytes'
    /// record: the caller fails stop.
    pub(crate) fn compact_if_worth(&self) -> Result<CompactOutcome> {
        let before_bytes = self.disk_bytes();
        if before_bytes < self.compact_retry_at_bytes.load(Ordering::Relaxed) {
            return Ok(CompactOutcome::Skipped);
        }
        let limits = Limits {
            min_bytes: self.compact_min_bytes.load(Ordering::Relaxed),
            max_live_bytes: self.compact_max_live.load(Ordering::Relaxed),
        };
        if !worth_compacting(before_bytes, self.live_bytes_now()?, limits) {
            return Ok(CompactOutcome::Skipped);
        }
        let copy = sibling(&self.path, COMPACT_DIR)?;
        let old = sibling(&self.path, OLD_DIR)?;
        let copied = match self.prepare_copy(&copy, &old) {
            Ok(copied) => copied,
            Err(CopyFailure::Over(at_least)) => {
                // A store never compacted (or grown since) whose live bytes
                // exceed the bound. Not again in this process, nor in the
                // next: what was copied is recorded as its live bytes (a
                // lower bound, over the bound). Without the record every
                // open tried again, and each pass's reopen rewrote the
                // store's free segments (gigabytes at 10^7 devices).
                let _ = std::fs::remove_dir_all(&copy);
                self.compact_retry_at_bytes
                    .store(u64::MAX, Ordering::Relaxed);
                self.record_live_at_least(at_least)?;
                return Ok(CompactOutcome::Skipped);
            }
            Err(CopyFailure::Abandon) => {
                let _ = std::fs::remove_dir_all(&copy);
                // Not again at every checkpoint (a full disk would churn).
                let retry_at = before_bytes.saturating_add(before_bytes / 2);
                self.compact_retry_at_bytes
                    .store(retry_at, Ordering::Relaxed);
                return Ok(CompactOutcome::Abandoned);
            }
            // The store is closed: the next open removes the copy.
            Err(CopyFailure::Fatal(e)) => return Err(e),
        };
        // From here on a failure leaves the swap to the next open: no
        // settling of `path` at close (it may not exist).
        self.mark_troubled();
        self.swap_in(&copy, &old)?;
        Ok(CompactOutcome::Done(Compaction {
            before_bytes,
            after_bytes: self.disk_bytes(),
            live_bytes: copied.bytes,
            passes: copied.passes,
        }))
    }

    /// Steps 1 and 2 (module doc): the complete copy, then `store/` renamed
    /// out of the way.
    fn prepare_copy(&self, copy: &Path, old: &Path) -> std::result::Result<Copied, CopyFailure> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        let abandon = |_: Error| CopyFailure::Abandon;
        if copy.exists() {
            remove_dir(copy, &self.faults).map_err(abandon)?;
        }
        if old.exists() {
            remove_dir(old, &self.faults).map_err(abandon)?;
        }
        let copied = self.copy_in_passes(copy)?;
        sync_dir(parent, &self.faults).map_err(abandon)?;
        rename(&self.path, old, &self.faults).map_err(abandon)?;
        Ok(copied)
    }

    /// Step 1: copies every entry into a new store at `copy` in passes of
    /// about `compact_pass_bytes`, closing and reopening both stores
    /// between two passes (sled keeps what a scan read resident until its
    /// store is closed), then writes `Mstore_live_bytes` and makes the copy
    /// durable (flushed, closed and settled, every file and directory
    /// fsynced).
    fn copy_in_passes(&self, copy: &Path) -> std::result::Result<Copied, CopyFailure> {
        let abandon = |_: Error| CopyFailure::Abandon;
        let pass_bytes = self.compact_pass_bytes.load(Ordering::Relaxed).max(1);
        let max_live = self.compact_max_live.load(Ordering::Relaxed);
        let mut copied = Copied::default();
        let mut from = Vec::new();
        // `Mstore_live_bytes` and `Mstore_live_devices` are left out: the
        // copy writes its own.
        let keep = |k: &[u8]| k != META_STORE_LIVE_BYTES && k != META_STORE_LIVE_DEVICES;
        loop {
            let out = SledStore::open(copy, None, TOOL_SLED_CACHE_BYTES, true).map_err(abandon)?;
            copied.passes += 1;
            let pass = (COMPACT_CHUNK_BYTES, pass_bytes);
            let next = copy_pass(self, &out, &from, pass, &mut copied, &keep).map_err(abandon)?;
            if copied.bytes > max_live {
                out.mark_troubled();
                return Err(CopyFailure::Over(copied.bytes));
            }
            let Some(next) = next else {
                out.apply(&self.live_records(copied.bytes))
                    .and_then(|()| out.sync())
                    .map_err(abandon)?;
                drop(out);
                visit_tree(copy, true, &None).map_err(abandon)?;
                return Ok(copied);
            };
            out.sync().map_err(abandon)?;
            // The next pass opens the copy again: only the last close
            // settles it.
            out.close_for_reopen();
            self.reopen_db().map_err(CopyFailure::Fatal)?;
            from = next;
        }
    }

    /// Closes sled and opens it again at `path` (the same files, or the
    /// copy a swap renamed there), under the write lock: no operation uses
    /// the old database meanwhile. If the open fails the store stays
    /// closed (operations fail with `Closed`) and the caller fails stop.
    fn reopen_db(&self) -> Result<()> {
        let mut waker = self.waker.lock();
        let mut slot = self.db.write();
        self.reopen_locked(&mut waker, &mut slot)
    }

    /// `reopen_db` once nothing uses the database (no scan, read or batch
    /// holds its lock), waiting at most `SHED_WAIT_MS` for that; false,
    /// with nothing done, if it is still in use then. The open's loads
    /// call it between slices of their scans to drop the nodes sled kept
    /// of the pages read (`RawKv::shed_cache`); a slice of the other
    /// load's scan is the longest wait.
    pub(super) fn try_reopen_db(&self) -> Result<bool> {
        let mut waker = self.waker.lock();
        let wait = std::time::Duration::from_millis(crate::limits::SHED_WAIT_MS);
        let Some(mut slot) = self.db.try_write_for(wait) else {
            return Ok(false);
        };
        self.reopen_locked(&mut waker, &mut slot).map(|()| true)
    }

    fn reopen_locked(
        &self,
        waker: &mut super::sled_waker::SledWaker,
        slot: &mut Option<sled::Db>,
    ) -> Result<()> {
        waker.stop();
        if let Some(previous) = slot.take() {
            // sled may panic closing it (see `Drop for SledStore`): counted.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(previous))).is_err() {
                super::kv::count_sled_drop_panic();
            }
        }
        check(&self.faults, IoOp::StoreOpen)
            .map_err(|e| Error::io(format!("opening {} again", self.path.display()), e))?;
        let db = open_sled(&self.path, self.cache_bytes)?;
        *waker = super::sled_waker::SledWaker::start(&db);
        *slot = Some(db);
        Ok(())
    }

    /// Steps 3 and 4: the copy becomes `store/` and the open database.
    fn swap_in(&self, copy: &Path, old: &Path) -> Result<()> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        rename(copy, &self.path, &self.faults)?;
        sync_dir(parent, &self.faults)?;
        // The old database's files are already renamed: nothing of it is
        // settled.
        self.reopen_db()?;
        self.clear_troubled();
        // The swap is complete: a leftover `store.old/` is removed by the
        // next compaction or open.
        if remove_dir(old, &self.faults).is_ok() {
            sync_dir(parent, &self.faults)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::kv::SETTLES_STARTED;

    /// A compaction in many passes settles its copy once, at the end: the
    /// copy is opened again after every other pass, and that open does
    /// sled's housekeeping itself (each settle was one more sled open,
    /// which rewrites the free segments).
    #[test]
    fn a_copy_in_passes_is_settled_once() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("store");
        let store = SledStore::open(&path, None, TOOL_SLED_CACHE_BYTES, true)?;
        let writes: Vec<_> = (0u32..400)
            .map(|i| (i.to_be_bytes().to_vec(), Some(vec![i as u8; 1024])))
            .collect();
        store.apply(&writes)?;
        store.sync()?;
        // Every size is worth it; passes of 32 KiB: about 13 of them.
        store.set_compact_limits(0, u64::MAX, 32 << 10);
        let before = SETTLES_STARTED.with(std::cell::Cell::get);
        let CompactOutcome::Done(done) = store.compact_if_worth()? else {
            return Err(Error::Closed);
        };
        let settles = SETTLES_STARTED.with(std::cell::Cell::get) - before;
        assert!(done.passes >= 10, "{} passes", done.passes);
        assert_eq!(
            settles, 1,
            "{} passes settled the copy {settles} times",
            done.passes
        );
        // Nothing was lost on the way.
        for (k, v) in &writes {
            assert_eq!(store.get(k)?.as_ref(), v.as_ref());
        }
        Ok(())
    }

    fn entries(from: u32, to: u32, fill: u8) -> Vec<crate::store::Write> {
        (from..to)
            .map(|i| (i.to_be_bytes().to_vec(), Some(vec![fill; 1024])))
            .collect()
    }

    /// A store that grew with its registry is judged by its live bytes
    /// scaled by the growth (up to `COMPACT_LIVE_SCALE_MAX`): a copy
    /// records the device count, and a later count scales what it
    /// recorded. Garbage at a steady count is still copied.
    #[test]
    fn a_grown_store_is_judged_by_its_live_bytes_scaled_by_its_growth() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let store = SledStore::open(&dir.path().join("store"), None, TOOL_SLED_CACHE_BYTES, true)?;
        store.set_compact_limits(0, u64::MAX, u64::MAX);
        store.plan_for_devices(100);
        store.apply(&entries(0, 512, 1))?;
        store.sync()?;
        let CompactOutcome::Done(first) = store.compact_if_worth()? else {
            panic!("a store never compacted is worth a first copy");
        };
        assert_eq!(store.recorded_u64(META_STORE_LIVE_DEVICES)?, Some(100));
        let live = first.live_bytes;
        assert_eq!(store.live_bytes_now()?, Some(live), "no growth yet");
        store.plan_for_devices(150);
        assert_eq!(store.live_bytes_now()?, Some(live * 3 / 2), "grown by half");
        store.plan_for_devices(800);
        assert_eq!(
            store.live_bytes_now()?,
            Some(live * COMPACT_LIVE_SCALE_MAX),
            "grown eightfold: scaled at most twice"
        );
        // The same entries rewritten again and again at 800 devices: garbage.
        let mut done = None;
        for round in 0..40u8 {
            store.apply(&entries(0, 512, round))?;
            store.sync()?;
            if let CompactOutcome::Done(c) = store.compact_if_worth()? {
                done = Some(c);
                break;
            }
        }
        let done = done.ok_or_else(|| Error::corrupt("test", "garbage never compacted"))?;
        assert!(
            done.before_bytes >= COMPACT_SPACE_FACTOR * COMPACT_LIVE_SCALE_MAX * live,
            "copied at {} bytes on disk for {live} live scaled twice",
            done.before_bytes
        );
        assert_eq!(store.recorded_u64(META_STORE_LIVE_DEVICES)?, Some(800));
        assert_eq!(
            store.live_bytes_now()?,
            Some(done.live_bytes),
            "a new record"
        );
        Ok(())
    }

    #[test]
    fn live_bytes_scale_up_with_the_devices_only() {
        assert_eq!(scaled_live(1000, Some(10), 15), 1500);
        assert_eq!(
            scaled_live(1000, Some(10), 30),
            1000 * COMPACT_LIVE_SCALE_MAX,
            "at most COMPACT_LIVE_SCALE_MAX"
        );
        assert_eq!(scaled_live(1000, Some(10), 5), 1000, "never down");
        assert_eq!(scaled_live(1000, None, 30), 1000, "no record: as recorded");
        assert_eq!(
            scaled_live(1000, Some(0), 3),
            2000,
            "from an empty registry"
        );
        assert_eq!(scaled_live(u64::MAX, Some(1), 2), u64::MAX, "saturates");
    }
}

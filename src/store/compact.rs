//! Store compaction: sled 0.34.7 reclaims a segment of its file only when
//! every node in it was rewritten, and cleans partly live segments only on
//! its flusher thread, which devreg does not run (it fsyncs its own way). A
//! page merge rewrites every page under a new generation, so the file keeps
//! the old generation's bytes beside the new: measured at 2×10^5 devices
//! after the comparison harness's phases, 238 MB of file for 38 MB of live
//! entries. Compaction copies the live entries into a new sled database
//! beside the store and swaps the two directories (DESIGN.md 4.6).
//!
//! The swap, with the directory fsynced after each step:
//! 1. `store.compact/` is written whole (`copy_store`: every file fsynced,
//!    sled closed and settled), with `Mstore_live_bytes` set;
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

use super::kv::{copy_store, open_sled, SledStore};
use crate::error::{Error, Result};
use crate::fault::{check, Faults, IoOp};
use crate::kv::{CompactOutcome, Compaction, KvStore};
use crate::limits::{COMPACT_CHUNK_BYTES, COMPACT_SPACE_FACTOR};
use crate::log::segments::sync_dir;

/// Live bytes (keys and values) the last compaction copied, u64 big-endian:
/// the measure `worth_compacting` compares the file with. Absent until the
/// first compaction.
pub(crate) const META_STORE_LIVE_BYTES: &[u8] = b"Mstore_live_bytes";

/// The directory a compaction builds its copy in, beside `store/`.
pub(crate) const COMPACT_DIR: &str = "store.compact";
/// Where `store/` goes while the copy takes its place.
pub(crate) const OLD_DIR: &str = "store.old";

/// When to compact: files of at least `min_bytes` (`u64::MAX`: never;
/// `Config::compact_min_store_bytes`), whose last compaction's live bytes
/// were at most `max_live_bytes` (`Config::compact_max_live_bytes`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) min_bytes: u64,
    pub(crate) max_live_bytes: u64,
}

/// Whether a store of `disk_bytes` on disk whose last compaction found
/// `live_bytes` (`None`: never compacted, taken as 0) is worth compacting
/// now: at least `COMPACT_SPACE_FACTOR` times those live bytes.
pub(crate) fn worth_compacting(disk_bytes: u64, live_bytes: Option<u64>, limits: Limits) -> bool {
    let live = live_bytes.unwrap_or(0);
    limits.min_bytes != u64::MAX
        && disk_bytes >= limits.min_bytes
        && live <= limits.max_live_bytes
        && disk_bytes >= live.saturating_mul(COMPACT_SPACE_FACTOR)
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
    /// The live bytes the last compaction recorded, if any.
    fn recorded_live_bytes(&self) -> Result<Option<u64>> {
        let v = self.get(META_STORE_LIVE_BYTES)?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// Compacts the store if `worth_compacting` says so. The caller writes
    /// nothing to the store meanwhile; reads go on (on the old database
    /// until the swap). An error is from after `store/` was renamed: the
    /// caller fails stop (the next open finishes the swap).
    pub(crate) fn compact_if_worth(&self) -> Result<CompactOutcome> {
        let before_bytes = self.disk_bytes();
        if before_bytes < self.compact_retry_at_bytes.load(Ordering::Relaxed) {
            return Ok(CompactOutcome::Skipped);
        }
        let limits = Limits {
            min_bytes: self.compact_min_bytes.load(Ordering::Relaxed),
            max_live_bytes: self.compact_max_live.load(Ordering::Relaxed),
        };
        if !worth_compacting(before_bytes, self.recorded_live_bytes()?, limits) {
            return Ok(CompactOutcome::Skipped);
        }
        let copy = sibling(&self.path, COMPACT_DIR)?;
        let old = sibling(&self.path, OLD_DIR)?;
        let live_bytes = match self.prepare_copy(&copy, &old, limits.max_live_bytes) {
            Ok(Some(live)) => live,
            Ok(None) => {
                // Over the bound: a store never compacted (or grown since)
                // whose live bytes exceed it. Not again in this process.
                let _ = std::fs::remove_dir_all(&copy);
                self.compact_retry_at_bytes
                    .store(u64::MAX, Ordering::Relaxed);
                return Ok(CompactOutcome::Skipped);
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&copy);
                // Not again at every checkpoint (a full disk would churn).
                let retry_at = before_bytes.saturating_add(before_bytes / 2);
                self.compact_retry_at_bytes
                    .store(retry_at, Ordering::Relaxed);
                return Ok(CompactOutcome::Abandoned);
            }
        };
        // From here on a failure leaves the swap to the next open: no
        // settling of `path` at close (it may not exist).
        self.mark_troubled();
        self.swap_in(&copy, &old)?;
        Ok(CompactOutcome::Done(Compaction {
            before_bytes,
            after_bytes: self.disk_bytes(),
            live_bytes,
        }))
    }

    /// Steps 1 and 2 (module doc): the complete copy, then `store/` renamed
    /// out of the way. Returns the live bytes copied, or `None` (nothing
    /// renamed) when they are over `max_live_bytes`.
    fn prepare_copy(&self, copy: &Path, old: &Path, max_live_bytes: u64) -> Result<Option<u64>> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        if copy.exists() {
            remove_dir(copy, &self.faults)?;
        }
        if old.exists() {
            remove_dir(old, &self.faults)?;
        }
        let live = Some(META_STORE_LIVE_BYTES);
        let Some(copied) = copy_store(self, copy, COMPACT_CHUNK_BYTES, live, max_live_bytes)?
        else {
            return Ok(None);
        };
        sync_dir(parent, &self.faults)?;
        rename(&self.path, old, &self.faults)?;
        Ok(Some(copied.bytes))
    }

    /// Steps 3 and 4: the copy becomes `store/` and the open database.
    fn swap_in(&self, copy: &Path, old: &Path) -> Result<()> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        rename(copy, &self.path, &self.faults)?;
        sync_dir(parent, &self.faults)?;
        let db = open_sled(&self.path, self.cache_bytes)?;
        let mut waker = self.waker.lock();
        waker.stop();
        *waker = super::sled_waker::SledWaker::start(&db);
        // No operation uses the old database once the write lock is held;
        // its files are already renamed, so nothing of it is settled. sled
        // may panic closing it (see `Drop for SledStore`): counted.
        let previous = self.db.write().replace(db);
        drop(waker);
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(previous))).is_err() {
            super::kv::count_sled_drop_panic();
        }
        self.clear_troubled();
        // The swap is complete: a leftover `store.old/` is removed by the
        // next compaction or open.
        if remove_dir(old, &self.faults).is_ok() {
            sync_dir(parent, &self.faults)?;
        }
        Ok(())
    }
}

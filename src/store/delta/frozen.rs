//! The deltas a merge in progress folds into the pages, set apart so that
//! checkpoints can go on beside the merge (DESIGN.md 4.3, "Checkpoints
//! beside a merge").
//!
//! `Deltas::freeze` marks every current delta as the merge's: the chunks
//! written so far, their counts, and the append keyspace's records held in
//! memory, which move into a shared map the merge reads while it runs.
//! A checkpoint committed meanwhile adds its chunks after the frozen ones
//! and its append records to a fresh map. Readers join the two maps (the
//! frozen one first), so every read is the same as with one map. At the
//! merge's commit `retire_frozen` takes off exactly what was frozen; the
//! records of the checkpoints beside it stay current. The merge writes the
//! history's pages first and then lets the frozen map go
//! (`release_frozen_map`): the pages hold those records from then on. A
//! merge that fails joins the maps back (`unfreeze`; a released map joins
//! as empty, its records being in their pages), and nothing is lost.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Chunk, Deltas};
use crate::error::{Error, Result};
use crate::store::overlay::DiskOverlay;
use crate::store::paged::combine;

/// What a merge in progress took as its own (`Deltas::freeze`).
pub(crate) struct Frozen {
    /// The append keyspace's records as they were at the freeze.
    pub(crate) map: Arc<DiskOverlay>,
    /// How many of `Deltas::chunks`, from the first, are the merge's.
    pub(crate) chunks: usize,
    bytes: usize,
    memory_bytes: usize,
    disk_bytes_by_prefix: BTreeMap<u8, usize>,
}

impl Frozen {
    /// Bytes of the frozen records kept only on disk (sizes the passes).
    pub(crate) fn disk_only_bytes(&self) -> usize {
        self.disk_bytes_by_prefix.values().sum()
    }
}

impl Deltas {
    /// Sets every current delta apart for a merge and returns what it
    /// took. Merges never overlap (`PagedStore::merge_if_due_beside` skips
    /// while one runs), so a freeze in place is a bug, refused.
    pub(crate) fn freeze(&mut self) -> Result<&Frozen> {
        self.freeze_with(true)
    }

    /// `freeze` for a history merge (DESIGN.md 4.3, "History merges"): only
    /// the append records held in memory, and their bytes. No chunk is
    /// the merge's (its commit retires none: they still hold the other
    /// keyspaces' records), and the disk-only counts stay.
    pub(crate) fn freeze_history(&mut self) -> Result<&Frozen> {
        self.freeze_with(false)
    }

    fn freeze_with(&mut self, every: bool) -> Result<&Frozen> {
        if self.frozen.is_some() {
            return Err(Error::corrupt(
                "page merge",
                "a merge began while another was in progress",
            ));
        }
        let mut map = std::mem::take(&mut self.map);
        map.shrink_to_fit();
        // A history merge takes no chunk and only the append bytes, which
        // are all in the map; the disk-only counts stay.
        let (chunks, bytes, disk_bytes_by_prefix) = match every {
            true => (
                self.chunks.len(),
                self.bytes,
                self.disk_bytes_by_prefix.clone(),
            ),
            false => (0, self.memory_bytes, BTreeMap::new()),
        };
        let frozen = Frozen {
            map: Arc::new(map),
            chunks,
            bytes,
            memory_bytes: self.memory_bytes,
            disk_bytes_by_prefix,
        };
        Ok(self.frozen.insert(frozen))
    }

    /// Once the merge has written the frozen map's records into their
    /// pages: lets the map go (a read finds them in the pages, and after a
    /// crash the chunks still hold them), and its bytes with it. The
    /// memory bound then counts only the records held beside the merge, so
    /// a full merge leaves room for checkpoints beside its disk-only
    /// passes (`PagedStore::room_beside_merge`; DESIGN.md 4.3, "The
    /// released map"). The disk counts keep the frozen bytes until the
    /// commit.
    pub(crate) fn release_frozen_map(&mut self) {
        if let Some(f) = &mut self.frozen {
            f.map = Arc::new(DiskOverlay::default());
            self.memory_bytes = self.memory_bytes.saturating_sub(f.memory_bytes);
            f.memory_bytes = 0;
        }
    }

    /// Bytes of the deltas a merge in progress froze (0 when none runs):
    /// they leave at its commit.
    pub(crate) fn frozen_bytes(&self) -> usize {
        self.frozen.as_ref().map_or(0, |f| f.bytes)
    }

    /// After the merge's commit: forgets what it froze (its counts, its
    /// map) and returns its chunks, now garbage. The deltas recorded
    /// beside the merge stay, with their counts.
    pub(crate) fn retire_frozen(&mut self) -> Vec<Chunk> {
        let Some(f) = self.frozen.take() else {
            return Vec::new();
        };
        self.bytes = self.bytes.saturating_sub(f.bytes);
        self.memory_bytes = self.memory_bytes.saturating_sub(f.memory_bytes);
        for (prefix, n) in f.disk_bytes_by_prefix {
            if let Some(left) = self.disk_bytes_by_prefix.get_mut(&prefix) {
                *left = left.saturating_sub(n);
                if *left == 0 {
                    self.disk_bytes_by_prefix.remove(&prefix);
                }
            }
        }
        let n = f.chunks.min(self.chunks.len());
        self.chunks.drain(..n).collect()
    }

    /// After a merge that failed: the records recorded beside it joined
    /// onto the frozen ones, in one map again (the counts never moved, but
    /// for a released map's memory bytes, gone with its records into the
    /// pages).
    pub(crate) fn unfreeze(&mut self) -> Result<()> {
        let Some(f) = self.frozen.take() else {
            return Ok(());
        };
        let mut map = Arc::try_unwrap(f.map).unwrap_or_else(|shared| copy(&shared));
        for (k, v) in self.map.iter() {
            join_into(&mut map, k, v)?;
        }
        self.map = map;
        Ok(())
    }

    /// The append record of `key` in memory: the frozen one joined with
    /// the one recorded beside the merge (`None`: neither holds it).
    pub(crate) fn append_get(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        let old = self.frozen.as_ref().and_then(|f| f.map.get(key));
        let new = self.map.get(key);
        Ok(match (old, new) {
            (None, None) => None,
            (Some((_, v)), None) | (None, Some((_, v))) => Some(v.map(<[u8]>::to_vec)),
            (Some((_, Some(old))), Some((_, Some(new)))) => {
                Some(Some(combine(key, Some(old), new)?))
            }
            (Some(_), Some((_, new))) => Some(new.map(<[u8]>::to_vec)),
        })
    }

    /// The append records in memory as one map: a copy joining the two
    /// while a merge runs (a scan of the history then; rare), else `None`
    /// (read `map` itself).
    pub(crate) fn joined_map(&self) -> Result<Option<DiskOverlay>> {
        let Some(f) = &self.frozen else {
            return Ok(None);
        };
        let mut map = copy(&f.map);
        for (k, v) in self.map.iter() {
            join_into(&mut map, k, v)?;
        }
        Ok(Some(map))
    }
}

fn copy(map: &DiskOverlay) -> DiskOverlay {
    let mut out = DiskOverlay::default();
    for (k, v) in map.iter() {
        out.insert(k, v);
    }
    out
}

/// Records `value` of `key` over `map`'s, as `Deltas::record` does.
fn join_into(map: &mut DiskOverlay, key: &[u8], value: Option<&[u8]>) -> Result<()> {
    let joined = match (value, map.get(key)) {
        (Some(v), Some((_, Some(old)))) => Some(combine(key, Some(old), v)?),
        (Some(v), _) => Some(v.to_vec()),
        (None, _) => None,
    };
    match joined {
        Some(v) => map.insert(key, Some(&v)),
        None => map.insert(key, None),
    }
    map.compact_if_wasteful();
    Ok(())
}

//! Merging the deltas into the pages, in place, after the commit of the
//! checkpoint that passed a delta bound (DESIGN.md 4.3, "Merges in place").
//!
//! Each page the deltas touch is rewritten as its current version joined
//! with every current delta record of it (`page_merge::rewrite`), and
//! written over that version under the same sled key; a page with no
//! version, or an empty one, is written under the committed generation.
//! Once every page is durable, one small commit sets `Mdelta_merged`, and
//! the chunks are garbage from then on. A group of pages is rewritten and
//! compressed on two threads; every store call stays on the caller's.
//! A history merge (past the memory bound alone) writes only the pages of
//! the history's records held in memory, then `Mhist_merged`; the chunks
//! stay current.
//!
//! Why a crash in the middle loses nothing: until that commit every chunk
//! is still current, and a read lays it over the page again. For a record
//! that replaces (every keyspace but the history) the newest delta decides
//! the value whether the page already holds it or not; for the history's
//! lists the join keeps each seq once and the newest 64, so joining the
//! same entries twice gives the same list. So every page, merged or not,
//! reads the same records, and the next merge after the open does the
//! work again. Overwriting in place instead of writing a new generation
//! and deleting the old one halves what sled writes per merge
//! (`examples/sled_generations.rs`: 3.0–3.8 against 7.5–9.3 bytes dirtied
//! per byte handed).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{
    is_empty_page, key_pass, page_key, page_of_key, PagedStore, META_DELTA_MERGED,
    META_HIST_ATTEMPT, META_HIST_MERGED, META_MERGE_ATTEMPT,
};
use crate::beside::{beside, Helper};
use crate::error::{Error, Result};
use crate::kv::Between;
use crate::store::delta::Chunk;
use crate::store::overlay::DiskOverlay;
use crate::store::page_merge::{self, Change, Scratch};
use crate::store::{RawKv, Write};

/// The changes of one merge pass, by page (keyspace prefix, page number).
type PageChanges<'a> = BTreeMap<(u8, u32), Vec<Change<'a>>>;

/// The delta records of `overlay` that `want` selects, by page: those
/// read back from disk in a pass, or the frozen append records in memory
/// (the disk overlay holds no append record and the map nothing else).
pub(super) fn changes_by_page<'a>(
    overlay: &'a DiskOverlay,
    want: &dyn Fn(&[u8]) -> bool,
) -> PageChanges<'a> {
    let mut changes: PageChanges<'a> = BTreeMap::new();
    for (k, v) in overlay.iter() {
        if let (true, Some(page)) = (want(k), page_of_key(k)) {
            changes.entry(page).or_default().push((k, v));
        }
    }
    changes
}

impl<R: RawKv> PagedStore<R> {
    /// Folds every current delta into the pages, then commits
    /// `Mdelta_merged = gen` (`gen`: the generation just committed) and
    /// queues the chunks as garbage. The disk-only deltas are read back a
    /// slice of the pages at a time (`delta_passes`), so a pass holds at
    /// most about `pass_bytes` of them.
    ///
    /// The deltas are frozen first (`Deltas::freeze`) and the lock let go:
    /// `between` runs after each batch of pages, and the checkpoints it
    /// applies add chunks above `gen` and append records to a fresh map,
    /// which this merge neither reads nor retires. Only what was frozen is
    /// retired at the commit; after a failure it is joined back, so every
    /// read still lays the deltas over the pages, merged or not.
    pub(super) fn merge_in_place(&self, gen: u64, between: Between<'_>) -> Result<()> {
        self.merge_deltas(gen, Fold::Every, between)
    }

    /// A history merge (DESIGN.md 4.3, "History merges"): the append
    /// records held in memory written into their pages, then
    /// `Mhist_merged = gen`. The chunks stay current (they hold the other
    /// keyspaces' records, and their append records again, which a read
    /// joins with the pages to the same lists), so nothing is retired but
    /// the map and its bytes.
    pub(super) fn merge_history_in_place(&self, gen: u64, between: Between<'_>) -> Result<()> {
        self.merge_deltas(gen, Fold::History, between)
    }

    fn merge_deltas(&self, gen: u64, fold: Fold, between: Between<'_>) -> Result<()> {
        let (map, chunks, (bytes, passes)) = {
            let mut deltas = self.deltas.write();
            if deltas.frozen.is_some() {
                return Ok(());
            }
            let frozen = match fold {
                Fold::Every => deltas.freeze()?,
                Fold::History => deltas.freeze_history()?,
            };
            let (map, n) = (Arc::clone(&frozen.map), frozen.chunks);
            let bytes = frozen.disk_only_bytes();
            let passes = (bytes, self.delta_passes(bytes));
            self.publish_sizes(&deltas);
            (
                map,
                deltas.chunks.get(..n).unwrap_or_default().to_vec(),
                passes,
            )
        };
        let devices = self.planned_devices();
        let merged = match fold {
            Fold::Every => self.merge_frozen(gen, map, &chunks, (bytes, passes), between),
            Fold::History => self.merge_frozen_history(gen, map, between),
        };
        let mut deltas = self.deltas.write();
        match merged {
            Ok(()) => {
                self.merges.fetch_add(1, Ordering::Relaxed);
                let retired = deltas.retire_frozen();
                self.publish_sizes(&deltas);
                if matches!(fold, Fold::Every) {
                    self.full_merge_committed(devices);
                }
                debug_assert_eq!(retired, chunks, "the merge retires what it froze");
                self.garbage
                    .lock()
                    .extend(retired.into_iter().map(|c| c.key));
                Ok(())
            }
            Err(e) => {
                deltas.unfreeze()?;
                self.publish_sizes(&deltas);
                Err(e)
            }
        }
    }

    /// The frozen deltas written into the pages, then the commit that
    /// retires them. The history's pages go first, from the frozen map
    /// alone (the disk overlay holds no append record), and the map is
    /// let go once they are written (`Deltas::release_frozen_map`), so it
    /// is not held beside the passes' read-back. The disk-only deltas
    /// follow in `passes` slices of the pages.
    fn merge_frozen(
        &self,
        gen: u64,
        map: Arc<DiskOverlay>,
        chunks: &[Chunk],
        (bytes, passes): (usize, u32),
        between: Between<'_>,
    ) -> Result<()> {
        self.write_frozen_map(gen, (META_MERGE_ATTEMPT, map), between)?;
        // With no disk-only record there is nothing to read back.
        let passes = if bytes == 0 { 0 } else { passes };
        // One overlay for every pass, emptied between them.
        let mut on_disk = DiskOverlay::default();
        for pass in 0..passes {
            let in_pass = |k: &[u8]| key_pass(k, passes) == Some(pass);
            let selection = (None, pass);
            let sizes = (bytes, passes);
            let _read =
                self.disk_overlay_pass(&mut on_disk, chunks, selection, &|k| in_pass(k), sizes)?;
            let changes = changes_by_page(&on_disk, &in_pass);
            self.write_pages_in_place(gen, changes, between)?;
        }
        // The pages are durable before the commit that retires the chunks.
        self.raw.sync()?;
        let merged = gen.to_be_bytes().to_vec();
        self.raw
            .apply(&[(META_DELTA_MERGED.to_vec(), Some(merged))])
    }

    /// The frozen append records written into their pages, durably, then
    /// `Mhist_merged = gen`: from then on the open skips the append
    /// records of the chunks up to `gen` (they are in the pages).
    fn merge_frozen_history(
        &self,
        gen: u64,
        map: Arc<DiskOverlay>,
        between: Between<'_>,
    ) -> Result<()> {
        self.write_frozen_map(gen, (META_HIST_ATTEMPT, map), between)?;
        // The pages are durable before the mark that lets the open skip
        // their records in the chunks.
        self.raw.sync()?;
        let merged = gen.to_be_bytes().to_vec();
        self.raw.apply(&[(META_HIST_MERGED.to_vec(), Some(merged))])
    }

    /// A merge's first steps: its attempt recorded under `attempt_key`
    /// (for the crash test), then the frozen append records written into
    /// their pages and the map let go (`Deltas::release_frozen_map`), so it
    /// is not held beside what follows.
    fn write_frozen_map(
        &self,
        gen: u64,
        (attempt_key, map): (&[u8], Arc<DiskOverlay>),
        between: Between<'_>,
    ) -> Result<()> {
        let attempt = gen.to_be_bytes().to_vec();
        self.raw.apply(&[(attempt_key.to_vec(), Some(attempt))])?;
        self.write_pages_in_place(gen, changes_by_page(&map, &|_| true), between)?;
        drop(map);
        let mut deltas = self.deltas.write();
        deltas.release_frozen_map();
        self.publish_sizes(&deltas);
        Ok(())
    }

    /// Writes each page of `changes` joined with its current version, over
    /// that version, in sled batches of about `chunk_bytes`. A page with no
    /// version or an empty one gets a new version under `gen`: an empty
    /// version with nothing below it may have been queued for deletion by
    /// a read, so nothing is ever written into one.
    ///
    /// Pages go in groups of `MERGE_GROUP_PAGES`: this thread reads a
    /// group's current versions, two threads rewrite and compress them
    /// (`rewrite_group`), and this thread writes them. Every store call is
    /// made here, in page order, as by one thread.
    pub(super) fn write_pages_in_place(
        &self,
        gen: u64,
        changes: PageChanges<'_>,
        between: Between<'_>,
    ) -> Result<()> {
        let mut pages: Vec<PageWork<'_>> = changes
            .into_iter()
            .map(|((prefix, page), list)| PageWork {
                prefix,
                page,
                list,
                current: None,
            })
            .collect();
        let (mut batch, mut batch_bytes) = (Vec::<Write>::new(), 0usize);
        let mut scratch = [Scratch::default(), Scratch::default()];
        for group in pages.chunks_mut(MERGE_GROUP_PAGES) {
            for work in group.iter_mut() {
                work.current = self.current_version(work.prefix, work.page)?;
            }
            for (key, value) in rewrite_group(gen, group, &mut scratch)?
                .into_iter()
                .flatten()
            {
                batch_bytes += value.len();
                self.merge_bytes
                    .fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
                batch.push((key, Some(value)));
                // One page more must still fit in the store's batch.
                if batch_bytes >= self.chunk_bytes || batch.len() + 1 >= self.raw.max_batch_writes()
                {
                    self.write_and_touch(&std::mem::take(&mut batch))?;
                    batch_bytes = 0;
                    between()?;
                }
            }
        }
        if !batch.is_empty() {
            self.write_and_touch(&batch)?;
        }
        between()
    }

    /// One batch of merged pages, each then read back (`RawKv::touch`).
    fn write_and_touch(&self, batch: &[Write]) -> Result<()> {
        self.raw.apply(batch)?;
        self.raw.touch(&mut batch.iter().map(|(k, _)| k.as_slice()))
    }
}

/// Which deltas a merge folds into the pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fold {
    /// Every current delta; the chunks are garbage after its commit.
    Every,
    /// The append records held in memory only (`merge_history_in_place`).
    History,
}

/// Pages of one merge group: read, rewritten and compressed together
/// (`write_pages_in_place`). 64 pages of a 10^7-device store are about 5
/// MB of stored versions, 9 MB of blocks and 5 MB sealed: about 18 MB
/// held during a merge, where one page at a time held 0.3 MB.
const MERGE_GROUP_PAGES: usize = 64;

/// One page to merge: its changes and, once read, its current version.
struct PageWork<'a> {
    prefix: u8,
    page: u32,
    list: Vec<Change<'a>>,
    current: Option<(u64, Vec<u8>)>,
}

/// Each page of `group` rewritten and sealed, in order (`None`: nothing to
/// write). The second half is done on a second thread: the rewrite and
/// LZ4 were most of a merge's own CPU before its buffers were kept
/// (DESIGN.md 4.3, 13 steps 30 and 33). A thread
/// that cannot start fails the merge, as a failed store write does. Each
/// thread keeps its own `scratch` across the groups.
fn rewrite_group(
    gen: u64,
    group: &mut [PageWork<'_>],
    scratch: &mut [Scratch; 2],
) -> Result<Vec<Option<Sealed>>> {
    let half = group.len() / 2;
    let (first, second) = group.split_at_mut(half);
    let [mine, theirs] = scratch;
    if first.is_empty() {
        return rewrite_all(gen, second, mine);
    }
    let rewriting = Helper {
        thread: "devreg-merge",
        what: "a page merge",
        doing: "rewriting pages",
    };
    let (mine, theirs) = beside(
        &rewriting,
        move || rewrite_all(gen, second, theirs),
        || rewrite_all(gen, first, mine),
    );
    let mut out = mine?;
    out.extend(theirs??);
    Ok(out)
}

/// A merged page: its sled key and sealed value.
type Sealed = (Vec<u8>, Vec<u8>);

fn rewrite_all(
    gen: u64,
    pages: &mut [PageWork<'_>],
    scratch: &mut Scratch,
) -> Result<Vec<Option<Sealed>>> {
    pages
        .iter_mut()
        .map(|w| rewrite_page(gen, w, scratch))
        .collect()
}

/// One page joined with its changes (`page_merge::rewrite`), sealed, and
/// the key it goes under: over its current version, or under `gen` when it
/// has none or an empty one (`None`: nothing to keep, nothing to write).
fn rewrite_page(gen: u64, w: &mut PageWork<'_>, scratch: &mut Scratch) -> Result<Option<Sealed>> {
    let (prefix, page) = (w.prefix, w.page);
    let current = w.current.take();
    let old = current.as_ref().map(|(g, _)| *g);
    let location = || format!("page {} {page} generation {old:?}", char::from(prefix));
    let stored = current.as_ref().map(|(_, v)| v.as_slice());
    let (sealed, count) = page_merge::rewrite(&location, stored, &mut w.list, scratch)?;
    let key = match current {
        Some((g, v)) if !is_empty_page(&v) => page_key(prefix, page, g),
        Some((g, _)) if g >= gen => {
            return Err(Error::corrupt(
                location(),
                format!("an empty version at or above the merge's generation {gen}"),
            ))
        }
        // Nothing to keep, and nothing to write over.
        _ if count == 0 => return Ok(None),
        _ => page_key(prefix, page, gen),
    };
    Ok(Some((key, sealed)))
}

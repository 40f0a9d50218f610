//! Pages: many logical records to one sled value; the changes of each
//! checkpoint written as delta chunks in bounded batches and made current by
//! one small commit, then merged into the pages in place.
//!
//! sled 0.34's memory and time grow per key (the scale issue measured 5.8
//! GiB of peak RSS for 10^6 keys of 143 bytes, and 152 MiB for the same
//! bytes as 15,625 values). So the per-record keyspaces (`'D'` devices,
//! `'H'` history, `'Y'` daily counters, `'F'` feed items, `'K'` known
//! persons, `'X'` dead letters) are hashed into a fixed number of pages
//! each, and only the metadata (`'M'`, `'S'`) keeps a key per record.
//!
//! ```text
//! physical key   b'P' prefix page(u32 BE) generation(u64 BE)
//! page value     PAGE_VERSION(1) count(varint), then per record, by key:
//!                key length(varint) key(with its prefix byte)
//!                value length(varint) value
//! Mpage_gen      the committed generation (u64 BE)
//! ```
//!
//! A checkpoint (`apply`) works at generation `G = committed + 1`: it
//! writes its changed records as delta chunks under `G` (`delta.rs`), in
//! sled batches of at most `CHECKPOINT_CHUNK_BYTES` (the first also records
//! `Mpage_attempt = G`), flushes sled (the chunks are durable first) and
//! writes one commit batch: the metadata writes and `Mpage_gen = G`.
//! Recovery reads the chunks of generations up to `Mpage_gen` over the
//! pages: a crash before the commit leaves only chunks above it, which are
//! ignored (the open finds them) and deleted by the next commit. So a
//! checkpoint of any size is atomic at recovery, and its memory is one
//! chunk plus its change list. When the deltas then pass a bound, they are
//! merged into the pages in place (`merge.rs`), which a crash may cut
//! short without loss.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};

#[cfg(test)]
mod beside_tests;
#[cfg(test)]
mod history_merge_tests;
mod merge;
#[cfg(test)]
mod span_tests;

use super::delta::{
    delta_gen, delta_key, for_each_chunk, visit_chunk, Chunk, Deltas, HashSpan, DELTA_PREFIX,
};
use super::overlay::DiskOverlay;
use super::{frame, KvStore, RawKv, SledStore, Visit, Write};
use crate::codec::{META_FORMAT, STORE_FORMAT};
use crate::error::{Error, Result};

/// Version byte of a page value.
pub(crate) const PAGE_VERSION: u8 = 1;
/// Prefix byte of physical page keys.
const PAGE_PREFIX: u8 = b'P';
/// The committed generation.
pub(crate) const META_PAGE_GEN: &[u8] = b"Mpage_gen";
/// The generation a checkpoint started writing (in its first chunk). Above
/// the committed one at open: a checkpoint died before its commit, and its
/// versions are found and queued for deletion before anything else.
const META_PAGE_ATTEMPT: &[u8] = b"Mpage_attempt";
/// The generation of the last merge: delta chunks of this generation or
/// below are in the pages (deleted after that commit, a few at a time).
const META_DELTA_MERGED: &[u8] = b"Mdelta_merged";
/// The generation of the last merge started (written before its first
/// page): above `Mdelta_merged`, a merge was cut short (harmless: its
/// chunks are still current, DESIGN.md 4.3). Read only by tests.
pub(crate) const META_MERGE_ATTEMPT: &[u8] = b"Mmerge_attempt";
/// The generation of the last history merge (DESIGN.md 4.3, "History
/// merges"): the append keyspace's records of the current chunks of this
/// generation or below are in the pages, so the open does not hold them in
/// memory again. Absent or at most `Mdelta_merged`, it says nothing. A
/// build that does not know it loads those records again, which joins
/// them with the pages that hold them already: the same lists.
const META_HIST_MERGED: &[u8] = b"Mhist_merged";
/// The generation of the last history merge started: above
/// `Mhist_merged`, one was cut short (harmless, as a merge's). Read only
/// by tests.
pub(crate) const META_HIST_ATTEMPT: &[u8] = b"Mhist_attempt";
/// Most keys one garbage-collection batch deletes. sled pins one epoch for
/// a whole batch, so every node it pages in and out meanwhile stays
/// allocated until the batch ends: deleting the superseded version of
/// every page in the commit batch (as format 2 did) held the whole store's
/// nodes at once (a 2.4 GB peak at 10^6 devices).
const GC_BATCH_KEYS: usize = 32;
/// Least bytes of disk-only deltas one pass of a scan or merge reads back.
const MIN_DELTA_PASS_BYTES: usize = 1 << 20;
/// A pass of a scan or merge reads back at most this fraction of the
/// memory bound (16 MiB of the default 64 MiB). A pass's overlay and the
/// chunks it reads cost about two and a half times its bytes (+161 MB for
/// a 64 MB pass in the 10^7 import's last merge): with chunks in hash
/// order a pass reads only its slice's chunks, so more, smaller passes
/// cost little more than one reading of them (DESIGN.md 4.3).
const DELTA_PASS_DIVISOR: usize = 4;
/// Most passes one scan or merge makes (each reads the current chunks that
/// meet its slice, `chunk_meets_pass`).
const MAX_DELTA_PASSES: u32 = 64;

/// The paged keyspaces and their page counts (as powers of two). Chosen by
/// measurement (DESIGN.md, pages): about 16k values for the big keyspaces
/// keeps sled's per-key cost small up to 10^7 devices, while a changed
/// record rewrites one page of (devices / 16k) records.
const PAGED: [(u8, u32); 7] = [
    (b'D', 14),
    (b'H', 14),
    (b'F', 12),
    (b'K', 12),
    (b'Q', 12),
    (b'X', 8),
    (b'Y', 4),
];

/// The append keyspace: a write to one of its records adds entries to the
/// stored ones (`combine`) instead of replacing them. The history's `'H'`
/// records are written this way, so a checkpoint carries only each token's
/// new entries and never reads the old ones (history on demand).
const APPEND_PREFIX: u8 = b'H';

/// Whether a logical key is in the append keyspace.
pub(crate) fn is_append(key: &[u8]) -> bool {
    key.first() == Some(&APPEND_PREFIX)
}

/// The record after writing `new` over `old`: `new` itself, or in the
/// append keyspace the two joined by the history's merge.
pub(crate) fn combine(key: &[u8], old: Option<&[u8]>, new: &[u8]) -> Result<Vec<u8>> {
    match (is_append(key), old) {
        (true, Some(old)) => crate::history::merge_encoded(key, Some(old), new),
        _ => Ok(new.to_vec()),
    }
}

fn page_bits(prefix: u8) -> Option<u32> {
    PAGED.iter().find(|(p, _)| *p == prefix).map(|(_, b)| *b)
}

/// The page of a logical key of a paged keyspace.
fn page_of(key: &[u8], bits: u32) -> u32 {
    crc32fast::hash(key) >> (32 - bits)
}

/// The keyspace prefix and page of a logical key of a paged keyspace.
fn page_of_key(key: &[u8]) -> Option<(u8, u32)> {
    let prefix = *key.first()?;
    Some((prefix, page_of(key, page_bits(prefix)?)))
}

/// Which of `passes` slices of the pages a page falls in: slice `i` holds
/// the pages `[ceil(i * 2^bits / passes), ceil((i+1) * 2^bits / passes))`,
/// in page order, the same slices of the hash space in every keyspace.
fn page_pass(page: u32, bits: u32, passes: u32) -> u32 {
    u32::try_from((u64::from(page) * u64::from(passes)) >> bits).unwrap_or(u32::MAX)
}

/// The pages of slice `pass` (see `page_pass`).
fn pass_pages(bits: u32, pass: u32, passes: u32) -> std::ops::Range<u32> {
    let first = |i: u32| {
        let v = (u64::from(i) << bits).div_ceil(u64::from(passes.max(1)));
        u32::try_from(v).unwrap_or(u32::MAX)
    };
    first(pass)..first(pass + 1)
}

/// Whether `chunk` may hold a key of slice `pass` of `passes` (of the
/// keyspace `prefix`, when given): whether, in a keyspace it holds, the
/// hashes of that slice's pages meet its span. A page is the top bits of
/// a key's CRC-32, so slice `pass` of a keyspace of `bits` is the hashes
/// from its first page's to its last page's end.
fn chunk_meets_pass(chunk: &Chunk, prefix: Option<u8>, pass: u32, passes: u32) -> bool {
    PAGED
        .iter()
        .filter(|(p, _)| prefix.is_none_or(|want| want == *p) && chunk.prefixes.has(*p))
        .any(|&(_, bits)| {
            let pages = pass_pages(bits, pass, passes);
            if pages.is_empty() {
                return false;
            }
            let shift = 32 - bits;
            let lo = u64::from(pages.start) << shift;
            let hi = (u64::from(pages.end) << shift).saturating_sub(1);
            let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
            chunk.span.meets(clamp(lo), clamp(hi))
        })
}

/// A record as a chunk holds it: a key and its value (`None`: deleted).
type Record<'a> = (&'a [u8], Option<&'a [u8]>);

/// A checkpoint's records in the order of their keys' CRC-32 (stable: two
/// writes of one key keep their order, the later one winning), so each
/// chunk holds a narrow slice of the pages (`delta::HashSpan`); and those
/// CRC-32s, ascending, from which each chunk's span is read.
fn in_hash_order<'a>(paged: &[&'a Write]) -> (Vec<Record<'a>>, Vec<u32>) {
    let mut order: Vec<(u32, usize)> = paged
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (crc32fast::hash(k), i))
        .collect();
    // The index breaks ties: as stable as a stable sort, without its buffer.
    order.sort_unstable();
    let records = order
        .iter()
        .filter_map(|&(_, i)| paged.get(i))
        .map(|(k, v)| (k.as_slice(), v.as_deref()))
        .collect();
    (records, order.into_iter().map(|(h, _)| h).collect())
}

/// The slice of a logical key's page; `None` outside the paged keyspaces.
fn key_pass(key: &[u8], passes: u32) -> Option<u32> {
    let bits = page_bits(*key.first()?)?;
    Some(page_pass(page_of(key, bits), bits, passes))
}

/// A scan of one keyspace's page versions (`PagedStore::scan_pages`): the
/// current version of each page goes to the visitor once its page ends.
struct PageScan {
    committed: u64,
    /// The newest version so far of the page being read (page, key,
    /// value), and whether it has versions below it.
    best: Option<(u32, Vec<u8>, Vec<u8>, bool)>,
    /// Versions above the committed generation.
    orphans: Vec<Vec<u8>>,
    /// Versions below a page's current one, and current empty pages.
    garbage: Vec<Vec<u8>>,
}

impl PageScan {
    /// One stored page version, in key order.
    fn visit(
        &mut self,
        k: &[u8],
        v: &[u8],
        f: &mut dyn FnMut(u32, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let (_, page, gen) = parse_page_key(k)
            .ok_or_else(|| Error::corrupt(format!("page key {k:02x?}"), "malformed"))?;
        if gen > self.committed {
            self.orphans.push(k.to_vec());
            return Ok(());
        }
        let mut below = false;
        match self.best.take() {
            // Versions of a page come in generation order: the last wins,
            // and the ones below it are unreachable.
            Some((p, key, _, _)) if p == page => {
                self.garbage.push(key);
                below = true;
            }
            other => {
                self.best = other;
                self.finish(f)?;
            }
        }
        self.best = Some((page, k.to_vec(), v.to_vec(), below));
        Ok(())
    }

    /// Hands the page read last to `f` (or notes it as garbage: an empty
    /// page with no version below it).
    fn finish(&mut self, f: &mut dyn FnMut(u32, &[u8]) -> Result<()>) -> Result<()> {
        match self.best.take() {
            Some((_, key, value, false)) if is_empty_page(&value) => self.garbage.push(key),
            Some((p, _, value, _)) => f(p, &value)?,
            None => {}
        }
        Ok(())
    }
}

fn page_key(prefix: u8, page: u32, gen: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(14);
    k.push(PAGE_PREFIX);
    k.push(prefix);
    k.extend_from_slice(&page.to_be_bytes());
    k.extend_from_slice(&gen.to_be_bytes());
    k
}

/// Splits a physical key into (prefix, page, generation).
fn parse_page_key(k: &[u8]) -> Option<(u8, u32, u64)> {
    match k {
        [PAGE_PREFIX, prefix, p @ ..] if p.len() == 12 => {
            let (page, gen) = p.split_at(4);
            Some((
                *prefix,
                u32::from_be_bytes(page.try_into().ok()?),
                u64::from_be_bytes(gen.try_into().ok()?),
            ))
        }
        _ => None,
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A page's records, by key.
type Records = BTreeMap<Vec<u8>, Vec<u8>>;

/// Visits one delta record read back from disk (a deletion is `None`).
type DeltaRecordVisit<'a> = &'a mut dyn FnMut(&[u8], Option<&[u8]>);
/// Visits one record of a page.
type RecordVisit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<()>;

/// Encodes a page's records (sorted by key), in a frame (`frame.rs`).
fn encode_page(records: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(bytes + 8);
    out.push(PAGE_VERSION);
    put_varint(&mut out, records.len() as u64);
    for (k, v) in records {
        put_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k);
        put_varint(&mut out, v.len() as u64);
        out.extend_from_slice(v);
    }
    frame::seal(out)
}

/// Whether a page value holds no record (the version written when a
/// checkpoint empties a page; see `merge::write_pages_in_place`).
fn is_empty_page(value: &[u8]) -> bool {
    value == [PAGE_VERSION, 0]
}

/// Reads a LEB128 length, then that many bytes.
pub(crate) fn get_field<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(get_varint(b, at)?).ok()?;
    let s = b.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some(s)
}

/// Checks the version byte of a page or delta chunk (`what`) and reads its
/// record count: (count, position of the first record).
pub(crate) fn open_block(
    location: &dyn Fn() -> String,
    b: &[u8],
    version: u8,
    what: &str,
) -> Result<(u64, usize)> {
    match b.first() {
        Some(&v) if v == version => {}
        Some(&v) => {
            return Err(Error::UnsupportedFormat {
                location: location(),
                found: u32::from(v),
                supported: u32::from(version),
            })
        }
        None => return Err(Error::corrupt(location(), format!("empty {what}"))),
    }
    let mut at = 1usize;
    let count =
        get_varint(b, &mut at).ok_or_else(|| Error::corrupt(location(), "bad record count"))?;
    Ok((count, at))
}

/// Calls `f` for each record of a page value; errors name the page.
fn decode_page(location: &dyn Fn() -> String, value: &[u8], f: RecordVisit<'_>) -> Result<()> {
    frame::with_open(location, value, |page| {
        visit_block(location, page, &mut |k, v| f(k, v))
    })
}

/// Calls `f` for each record of a page block (unframed), borrowed from it;
/// a block cut short, with bytes after its last record or with records
/// out of key order is `Corrupt` naming `location`.
pub(crate) fn visit_block<'a>(
    location: &dyn Fn() -> String,
    page: &'a [u8],
    f: &mut dyn FnMut(&'a [u8], &'a [u8]) -> Result<()>,
) -> Result<()> {
    let bad = |why: &str| Error::corrupt(location(), why.to_owned());
    let (count, mut at) = open_block(location, page, PAGE_VERSION, "page")?;
    let mut last: Option<&[u8]> = None;
    for _ in 0..count {
        let key = get_field(page, &mut at).ok_or_else(|| bad("record key runs past the page"))?;
        let value =
            get_field(page, &mut at).ok_or_else(|| bad("record value runs past the page"))?;
        // Pages are written in key order, each key once: scans and the
        // merge join (`page_merge.rs`) rely on it.
        if last.is_some_and(|l| l >= key) {
            return Err(bad("records out of key order"));
        }
        last = Some(key);
        f(key, value)?;
    }
    if at != page.len() {
        return Err(bad("bytes after the last record"));
    }
    Ok(())
}

/// The records of one page value, in stored order (`store::page_records`).
pub(crate) fn page_records(value: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    decode_page(&|| "page".to_owned(), value, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    Ok(out)
}

/// The value of a page holding `records` (`store::page_value`).
pub(crate) fn page_value(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    encode_page(&records.iter().cloned().collect())
}

/// Most bytes of legacy records one conversion step moves into pages.
const LEGACY_CHUNK_BYTES: usize = 1 << 20;

/// Logical records over sled: pages for the per-record keyspaces, plain
/// keys for the rest.
pub(crate) struct PagedStore<R: RawKv = SledStore> {
    raw: R,
    /// Most bytes of pages per sled batch (`Config::checkpoint_chunk_bytes`).
    chunk_bytes: usize,
    /// Most bytes of delta records before a merge, at most: the bound is
    /// `DELTA_BYTES_PER_DEVICE` per device, between a quarter of this and
    /// this (`Config::page_delta_bytes`).
    delta_max: usize,
    /// The bound in force on the deltas held in memory (the append
    /// keyspace's; `plan_for_devices`; `delta_max` until then).
    delta_bound: AtomicUsize,
    /// The bound in force on every delta record, on disk: at least the
    /// memory bound, and `disk_bytes_per_device` per device.
    delta_disk_bound: AtomicUsize,
    /// Bytes of deltas per device the disk bound allows
    /// (`Config::delta_disk_bytes_per_device`).
    disk_bytes_per_device: u64,
    /// The devices of the last `plan_for_devices` (`u64::MAX` before it).
    devices: AtomicU64,
    /// The devices when the last full merge began, or at the first plan
    /// after the open (`u64::MAX` before it): the devices added since earn
    /// the disk bound its growth credit (`delta_disk_bound`).
    devices_at_merge: AtomicU64,
    /// Most bytes of disk-only delta records one pass of a scan or a merge
    /// reads back into memory: `1 / DELTA_PASS_DIVISOR` of the memory
    /// bound in force (at least `MIN_DELTA_PASS_BYTES`), at most this;
    /// more make several passes, each over a slice of the pages.
    pass_bytes: usize,
    /// The current delta records (`delta.rs`).
    deltas: RwLock<Deltas>,
    /// `deltas`' sizes, kept beside it for lock-free reads
    /// (`room_beside_merge`).
    delta_sizes: DeltaSizes,
    committed: AtomicU64,
    /// Versions above the committed generation seen by reads: left by a
    /// checkpoint that crashed before its commit; the next commit deletes them.
    orphans: Mutex<Vec<Vec<u8>>>,
    /// Keys no read can reach any more (page versions below a current one,
    /// merged delta chunks), deleted after the next commit in batches of
    /// `GC_BATCH_KEYS`.
    garbage: Mutex<Vec<Vec<u8>>>,
    /// Merges committed since the store was opened (`KvStore::merges`).
    merges: AtomicU64,
    /// Bytes of page versions (keys and values) merges handed to the
    /// store below since it was opened, a failed merge's included.
    merge_bytes: AtomicU64,
}

impl<R: RawKv> PagedStore<R> {
    /// Wraps `raw`, reading the committed generation from it.
    pub(crate) fn open(raw: R, chunk_bytes: usize, delta_bytes: usize) -> Result<PagedStore<R>> {
        let committed = match raw.get(META_PAGE_GEN)? {
            None => 0,
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::corrupt("metadata key Mpage_gen", "expected 8 bytes"))?,
        };
        let attempt = match raw.get(META_PAGE_ATTEMPT)? {
            None => 0,
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::corrupt("metadata key Mpage_attempt", "expected 8 bytes"))?,
        };
        let store = PagedStore {
            raw,
            chunk_bytes: chunk_bytes.max(1),
            delta_max: delta_bytes,
            delta_bound: AtomicUsize::new(delta_bytes),
            delta_disk_bound: AtomicUsize::new(delta_bytes),
            disk_bytes_per_device: crate::limits::DELTA_DISK_BYTES_PER_DEVICE,
            devices: AtomicU64::new(u64::MAX),
            devices_at_merge: AtomicU64::new(u64::MAX),
            delta_sizes: DeltaSizes::default(),
            pass_bytes: delta_bytes.max(MIN_DELTA_PASS_BYTES),
            deltas: RwLock::new(Deltas::default()),
            committed: AtomicU64::new(committed),
            orphans: Mutex::new(Vec::new()),
            garbage: Mutex::new(Vec::new()),
            merges: AtomicU64::new(0),
            merge_bytes: AtomicU64::new(0),
        };
        if attempt > committed {
            store.list_orphans()?;
        }
        store.load_deltas()?;
        Ok(store)
    }

    /// Reads the committed delta chunks into memory, in generation order;
    /// chunks above the committed generation are orphans.
    fn load_deltas(&self) -> Result<()> {
        let committed = self.committed();
        let merged = self.meta_gen(META_DELTA_MERGED, "Mdelta_merged")?;
        let history_merged = self.meta_gen(META_HIST_MERGED, "Mhist_merged")?;
        let mut deltas = self.deltas.write();
        let mut orphans = Vec::new();
        let mut garbage = Vec::new();
        let mut read_bytes = 0u64;
        self.raw.scan_prefix(&[DELTA_PREFIX], &mut |k, v| {
            read_bytes = read_bytes.saturating_add(v.len() as u64);
            match delta_gen(k) {
                Some(gen) if gen <= merged => garbage.push(k.to_vec()),
                Some(gen) if gen <= committed => deltas.load(k, v, gen <= history_merged)?,
                Some(_) => orphans.push(k.to_vec()),
                None => return Err(Error::corrupt(format!("delta key {k:02x?}"), "malformed")),
            }
            Ok(())
        })?;
        self.publish_sizes(&deltas);
        drop(deltas);
        self.orphans.lock().extend(orphans);
        self.garbage.lock().extend(garbage);
        self.shed_remainder(read_bytes)
    }

    /// Sheds the raw store's cache after the open read `read_bytes` since
    /// the last shed without reaching `RawKv::shed_after_bytes`, if they
    /// are at least a `SHED_REMAINDER_DIVISOR`th of it: sled keeps what it
    /// read. Called after the delta chunks the open reads first (at 10^7
    /// devices after a `devreg import`, 719 MB of chunks were 890 MB of
    /// RSS before the first device was loaded) and at the end of a
    /// shedding scan, before the load builds its indexes (DESIGN.md 6,
    /// "The open's delta read and its last slices").
    fn shed_remainder(&self, read_bytes: u64) -> Result<()> {
        let Some(shed_after) = self.raw.shed_after_bytes() else {
            return Ok(());
        };
        let divisor = crate::limits::SHED_REMAINDER_DIVISOR;
        if read_bytes > 0 && read_bytes >= shed_after / divisor {
            self.raw.shed_cache()?;
        }
        Ok(())
    }

    /// Sets the bytes of deltas per device the disk bound allows (from the
    /// next `plan_for_devices`).
    pub(crate) fn set_delta_disk_bytes_per_device(&mut self, bytes: u64) {
        self.disk_bytes_per_device = bytes;
    }

    /// A generation kept in the metadata key `key` (0 when absent).
    fn meta_gen(&self, key: &[u8], name: &str) -> Result<u64> {
        match self.raw.get(key)? {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::corrupt(format!("metadata key {name}"), "expected 8 bytes")),
        }
    }

    /// Queues every page version above the committed generation for
    /// deletion by the next commit (after a checkpoint died uncommitted).
    fn list_orphans(&self) -> Result<()> {
        let committed = self.committed();
        let mut orphans = Vec::new();
        self.raw.scan_prefix(&[PAGE_PREFIX], &mut |k, _| {
            if parse_page_key(k).is_some_and(|(_, _, gen)| gen > committed) {
                orphans.push(k.to_vec());
            }
            Ok(())
        })?;
        self.orphans.lock().extend(orphans);
        Ok(())
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Copies the deltas' sizes where `room_beside_merge` reads them.
    fn publish_sizes(&self, deltas: &Deltas) {
        let sizes = &self.delta_sizes;
        sizes.bytes.store(deltas.bytes, Ordering::SeqCst);
        sizes.memory.store(deltas.memory_bytes, Ordering::SeqCst);
        sizes.frozen.store(deltas.frozen_bytes(), Ordering::SeqCst);
    }

    /// Visits every current page of `prefix` (the highest version at most
    /// the committed generation), noting the versions above it. With
    /// `shed` (the bytes of pages read since the last shed, kept across
    /// the calls of one scan), in slices of `LOAD_SCAN_SLICE_PAGES` pages,
    /// shedding the raw store's cache between two once at least
    /// `RawKv::shed_after_bytes` were read since the last shed (the open's
    /// load: DESIGN.md 6, "The open's scan sheds sled's nodes").
    fn scan_pages(
        &self,
        prefix: u8,
        pages: std::ops::Range<u32>,
        mut shed: Option<&mut u64>,
        f: &mut dyn FnMut(u32, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut scan = PageScan {
            committed: self.committed(),
            best: None,
            orphans: Vec::new(),
            garbage: Vec::new(),
        };
        let shed_after = shed.as_ref().and(self.raw.shed_after_bytes());
        // Sliced wherever the store can shed (the other load's scan too,
        // though it may not reach the bound itself: between two slices it
        // holds no lock, so a shed need not wait long); whole on a store
        // that never sheds (etcd), where a slice is one more request.
        let slice_pages = match shed_after {
            Some(_) => crate::limits::LOAD_SCAN_SLICE_PAGES,
            None => u32::MAX,
        };
        let mut start = pages.start;
        while start < pages.end {
            let end = start.saturating_add(slice_pages).min(pages.end);
            let (from, to) = (page_key(prefix, start, 0), page_key(prefix, end, 0));
            let mut read_bytes = 0u64;
            self.raw.scan_range(&from, &to, &mut |k, v| {
                read_bytes = read_bytes.saturating_add(v.len() as u64);
                scan.visit(k, v, f)
            })?;
            // A slice ends between two pages: its last page is complete.
            scan.finish(f)?;
            if let Some(since) = shed.as_deref_mut() {
                *since = since.saturating_add(read_bytes);
                if shed_after.is_some_and(|limit| *since >= limit) && self.raw.shed_cache()? {
                    *since = 0;
                }
            }
            start = end;
        }
        self.orphans.lock().extend(scan.orphans);
        self.garbage.lock().extend(scan.garbage);
        Ok(())
    }

    /// The current version of one page: its generation and records.
    fn read_page(&self, prefix: u8, page: u32) -> Result<(Option<u64>, Records)> {
        let mut records = BTreeMap::new();
        let Some((gen, value)) = self.current_version(prefix, page)? else {
            return Ok((None, records));
        };
        let location = || format!("page {} {page} generation {gen}", char::from(prefix));
        decode_page(&location, &value, &mut |k, v| {
            records.insert(k.to_vec(), v.to_vec());
            Ok(())
        })?;
        Ok((Some(gen), records))
    }

    /// The current version of one page (the highest generation at most the
    /// committed one) as stored, noting the versions above it (orphans) and
    /// below it (garbage).
    fn current_version(&self, prefix: u8, page: u32) -> Result<Option<(u64, Vec<u8>)>> {
        let committed = self.committed();
        let mut found: Option<(u64, Vec<u8>)> = None;
        let mut head = vec![PAGE_PREFIX, prefix];
        head.extend_from_slice(&page.to_be_bytes());
        let (mut orphans, mut garbage) = (Vec::new(), Vec::new());
        let mut below = false;
        self.raw.scan_prefix(&head, &mut |k, v| {
            match parse_page_key(k) {
                Some((_, _, gen)) if gen <= committed => {
                    if let Some((lower, _)) = found.replace((gen, v.to_vec())) {
                        garbage.push(page_key(prefix, page, lower));
                        below = true;
                    }
                }
                Some(_) => orphans.push(k.to_vec()),
                None => {}
            }
            Ok(())
        })?;
        // An empty version with nothing below it can go: deleting it
        // cannot expose an older one (see `merge::write_pages_in_place`).
        if let Some((gen, value)) = &found {
            if !below && is_empty_page(value) {
                garbage.push(page_key(prefix, page, *gen));
            }
        }
        self.orphans.lock().extend(orphans);
        self.garbage.lock().extend(garbage);
        Ok(found)
    }
}

impl<R: RawKv> PagedStore<R> {
    /// `apply`, whose commit also deletes `raw_deletes` (legacy keys moved
    /// into pages by the same commit). The changes are written as delta
    /// chunks and committed; a merge they make due is left to
    /// `merge_if_due` (`merge.rs`), after that commit.
    fn apply_with(&self, writes: &[Write], raw_deletes: Vec<Vec<u8>>) -> Result<()> {
        let gen = self.committed() + 1;
        let mut paged: Vec<&Write> = Vec::new();
        let mut commit: Vec<Write> = raw_deletes.iter().map(|k| (k.clone(), None)).collect();
        for w in writes {
            if is_append(&w.0) && w.1.is_none() {
                // A deletion there would have to cancel the appends before
                // it; nothing deletes history records (the merge trims them).
                return Err(Error::Encode(format!(
                    "{}: a record of the append keyspace cannot be deleted",
                    crate::codec::describe_key(&w.0)
                )));
            }
            match w.0.first().is_some_and(|&p| page_bits(p).is_some()) {
                true => paged.push(w),
                false => commit.push(w.clone()),
            }
        }
        if paged.is_empty() {
            // Metadata only: one batch, no generation needed.
            self.raw.apply(&commit)?;
            return self.collect_garbage();
        }
        let mut deltas = self.deltas.write();
        let new_chunks = self.write_delta(gen, &paged)?;
        // What was written is durable before the commit that makes it current.
        self.raw.sync()?;
        {
            let rewritten: hashbrown::HashSet<&[u8]> =
                new_chunks.iter().map(|c| c.key.as_slice()).collect();
            let orphans = std::mem::take(&mut *self.orphans.lock());
            for k in orphans {
                if !rewritten.contains(k.as_slice()) {
                    commit.push((k, None));
                }
            }
        }
        commit.push((META_PAGE_GEN.to_vec(), Some(gen.to_be_bytes().to_vec())));
        self.raw.apply(&commit)?;
        self.committed.store(gen, Ordering::SeqCst);
        // In the order written: a scan or merge reads them in this
        // order, a later record of a key over an earlier one.
        deltas.chunks.extend(new_chunks);
        for (k, v) in &paged {
            deltas.record(k, v.as_deref())?;
        }
        self.publish_sizes(&deltas);
        drop(deltas);
        self.collect_garbage()
    }

    /// Deletes the unreachable keys, `GC_BATCH_KEYS` per sled batch. Not
    /// synced: a crash loses only deletions, and the readers find those
    /// keys unreachable again (lower versions, merged chunks).
    fn collect_garbage(&self) -> Result<()> {
        let garbage = std::mem::take(&mut *self.garbage.lock());
        for batch in garbage.chunks(GC_BATCH_KEYS) {
            let deletes: Vec<Write> = batch.iter().map(|k| (k.clone(), None)).collect();
            self.raw.apply(&deletes)?;
        }
        Ok(())
    }

    /// Writes the changed records as delta chunks of generation `gen` (the
    /// first also records the attempt); returns their keys.
    fn write_delta(&self, gen: u64, paged: &[&Write]) -> Result<Vec<Chunk>> {
        let (records, hashes) = in_hash_order(paged);
        let mut written = Vec::new();
        for_each_chunk(&records, self.chunk_bytes, &mut |chunk, prefixes, range| {
            let span = HashSpan::of_sorted(hashes.get(range).unwrap_or_default());
            let i = u32::try_from(written.len()).unwrap_or(u32::MAX);
            let key = delta_key(gen, i);
            let mut batch = vec![(key.clone(), Some(chunk))];
            if i == 0 {
                batch.push((META_PAGE_ATTEMPT.to_vec(), Some(gen.to_be_bytes().to_vec())));
            }
            self.raw.apply(&batch)?;
            written.push(Chunk {
                key,
                prefixes,
                span,
            });
            Ok(())
        })?;
        Ok(written)
    }

    /// Passes needed to read `bytes` of disk-only deltas back, at most
    /// `1 / DELTA_PASS_DIVISOR` of the memory bound each (`pass_bytes`; at
    /// least 1 pass, at most `MAX_DELTA_PASSES`).
    fn delta_passes(&self, bytes: usize) -> u32 {
        let bound = self.delta_bound.load(Ordering::SeqCst) / DELTA_PASS_DIVISOR;
        let per_pass = self.pass_bytes.min(bound.max(MIN_DELTA_PASS_BYTES)).max(1);
        let passes = bytes.div_ceil(per_pass).max(1);
        u32::try_from(passes)
            .unwrap_or(u32::MAX)
            .min(MAX_DELTA_PASSES)
    }

    /// The disk-only delta records of `chunks` (those holding records of
    /// `prefix`, when given) whose key `want` selects, each key's latest (a
    /// deletion is `None`), read back in the order the chunks were written.
    fn disk_overlay<C>(
        &self,
        chunks: &[Chunk],
        prefix: Option<u8>,
        want: &dyn Fn(&[u8]) -> bool,
    ) -> Result<C>
    where
        C: Default + Extend<(Vec<u8>, Option<Vec<u8>>)>,
    {
        let mut out = C::default();
        self.visit_disk_deltas(chunks, (prefix, None), want, &mut |k, v| {
            // A later record of the same key replaces the earlier.
            out.extend(std::iter::once((k.to_vec(), v.map(<[u8]>::to_vec))));
        })?;
        Ok(out)
    }

    /// `disk_overlay` into one arena (`overlay.rs`), grown as it fills (the
    /// tests' cut-short merges; a pass sizes it, `disk_overlay_pass`).
    #[cfg(test)]
    pub(super) fn disk_overlay_hashed(
        &self,
        chunks: &[Chunk],
        prefix: Option<u8>,
        want: &dyn Fn(&[u8]) -> bool,
    ) -> Result<DiskOverlay> {
        let mut out = DiskOverlay::default();
        self.visit_disk_deltas(chunks, (prefix, None), want, &mut |k, v| out.insert(k, v))?;
        Ok(out)
    }

    /// `disk_overlay_hashed` for one of `passes` slices of `bytes` of
    /// disk-only deltas, into `out`: emptied (`DiskOverlay::reset`, which
    /// keeps its memory from the pass before) and its arena grown once to
    /// about a slice's share, with a sixteenth more for the slices' spread.
    pub(super) fn disk_overlay_pass(
        &self,
        out: &mut DiskOverlay,
        chunks: &[Chunk],
        (prefix, pass): (Option<u8>, u32),
        want: &dyn Fn(&[u8]) -> bool,
        (bytes, passes): (usize, u32),
    ) -> Result<u64> {
        let share = bytes / passes.max(1) as usize;
        out.reset(share + share / 16);
        let selection = (prefix, Some((pass, passes)));
        self.visit_disk_deltas(chunks, selection, want, &mut |k, v| out.insert(k, v))
    }

    /// Calls `f` for each disk-only delta record of `chunks` whose key
    /// `want` selects, in the order the chunks were written. With a
    /// `prefix`, the chunks that hold no record of it are not read; with a
    /// `pass` (`(pass, passes)`, and `want` selecting within it), nor
    /// those whose keys' hashes miss its slice (`chunk_meets_pass`).
    /// Returns the bytes of chunks read (as stored).
    fn visit_disk_deltas(
        &self,
        chunks: &[Chunk],
        (prefix, pass): (Option<u8>, Option<(u32, u32)>),
        want: &dyn Fn(&[u8]) -> bool,
        f: DeltaRecordVisit<'_>,
    ) -> Result<u64> {
        let mut read_bytes = 0u64;
        for chunk in chunks {
            if prefix.is_some_and(|p| !chunk.prefixes.has(p)) {
                continue;
            }
            if pass.is_some_and(|(pass, passes)| !chunk_meets_pass(chunk, prefix, pass, passes)) {
                continue;
            }
            let key = &chunk.key;
            let value = self.raw.get(key)?.ok_or_else(|| {
                Error::corrupt(
                    format!("delta chunk {key:02x?}"),
                    "missing (it is current: at most the committed generation)",
                )
            })?;
            self.raw.touch(&mut std::iter::once(key.as_slice()))?;
            read_bytes = read_bytes.saturating_add(value.len() as u64);
            visit_chunk(key, &value, &mut |k, v| {
                if !is_append(k) && want(k) {
                    f(k, v);
                }
                Ok(())
            })?;
        }
        Ok(read_bytes)
    }

    /// `KvStore::scan_prefix`, and with `shed` its `scan_prefix_shedding`
    /// (`scan_pages`).
    fn scan_keyspace(&self, prefix: &[u8], shed: bool, f: Visit<'_>) -> Result<()> {
        // Bytes of pages read since the last shed, across the passes.
        let mut read_since_shed = 0u64;
        let mut shed = shed.then_some(&mut read_since_shed);
        let Some((first, bits)) = prefix.first().and_then(|&p| Some((p, page_bits(p)?))) else {
            return self.raw.scan_prefix(prefix, f);
        };
        let deltas = self.deltas.read();
        if first == APPEND_PREFIX {
            let joined = deltas.joined_map()?;
            let map = joined.as_ref().unwrap_or(&deltas.map);
            return self.scan_overlaid(prefix, (0..1 << bits, shed), map, f);
        }
        let on_disk = deltas
            .disk_bytes_by_prefix
            .get(&first)
            .copied()
            .unwrap_or(0);
        let passes = self.delta_passes(on_disk);
        // One overlay for every pass, emptied between them.
        let mut overlay = DiskOverlay::default();
        for pass in 0..passes {
            if on_disk > 0 {
                let read = self.disk_overlay_pass(
                    &mut overlay,
                    &deltas.chunks,
                    (Some(first), pass),
                    &|k| k.starts_with(prefix) && key_pass(k, passes) == Some(pass),
                    (on_disk, passes),
                )?;
                // The chunks a pass reads fill sled's cache as pages do:
                // they count toward the open's next shed (DESIGN.md 6).
                if let Some(since) = shed.as_deref_mut() {
                    *since = since.saturating_add(read);
                }
            }
            let pages = pass_pages(bits, pass, passes);
            self.scan_overlaid(prefix, (pages, shed.as_deref_mut()), &overlay, f)?;
        }
        match shed {
            Some(since) => self.shed_remainder(*since),
            None => Ok(()),
        }
    }

    /// Visits the records of `prefix` in `pages` with the delta records of
    /// those pages (`overlay`) over them: a record with a delta is visited
    /// with the delta's value, or not at all when the delta deleted it.
    /// Records that exist only in the deltas come last, in key order; in a
    /// shedding scan (the open's loads, which keep no order), in the order
    /// they were written (`DiskOverlay::in_written_order`).
    fn scan_overlaid(
        &self,
        prefix: &[u8],
        (pages, shed): (std::ops::Range<u32>, Option<&mut u64>),
        overlay: &DiskOverlay,
        f: Visit<'_>,
    ) -> Result<()> {
        let key_order = shed.is_none();
        let first = prefix.first().copied().unwrap_or_default();
        let mut overlaid: hashbrown::HashSet<&[u8]> = hashbrown::HashSet::new();
        // Records of one page come in key order; pages in page order.
        self.scan_pages(first, pages, shed, &mut |page, value| {
            let location = || format!("page {} {page}", char::from(first));
            decode_page(&location, value, &mut |k, v| {
                if !k.starts_with(prefix) {
                    return Ok(());
                }
                match overlay.get(k) {
                    None => f(k, v),
                    Some((key, Some(d))) if is_append(k) => {
                        overlaid.insert(key);
                        f(k, &combine(k, Some(v), d)?)
                    }
                    Some((key, d)) => {
                        overlaid.insert(key);
                        d.map_or(Ok(()), |d| f(k, d))
                    }
                }
            })
        })?;
        let only_in_deltas = match key_order {
            true => overlay.in_key_order(prefix),
            false => overlay.in_written_order(prefix),
        };
        for (k, v) in only_in_deltas {
            if let (Some(v), false) = (v, overlaid.contains(k)) {
                f(k, v)?;
            }
        }
        Ok(())
    }

    /// Moves every record of the key-per-record layout (store format 1)
    /// into pages, a bounded step at a time: each step's commit writes its
    /// pages and deletes the keys it moved, so a crash in the middle leaves
    /// every record in exactly one place and the next open goes on. The
    /// format key becomes the current one at the end. Formats 2 to 6 are
    /// relabelled. Returns whether anything was converted.
    pub(crate) fn convert_legacy(&self) -> Result<bool> {
        let format = self.raw.get(META_FORMAT)?;
        let relabel = [2u32, 3, 4, 5, 6].map(|f| Some(f.to_be_bytes().to_vec()));
        if relabel.contains(&format) {
            // Format 2 is format 3 without `Mdelta_merged` (absent reads as
            // 0: every delta chunk is current, as format 2 deleted merged
            // ones in the commit), format 3 is format 4 whose blocks are
            // all plain frames, format 4 is format 5 without a sink
            // backfill, format 5 is format 6 whose sinks are all
            // track-v2 by id (sink metadata layout 3), and format 6 is
            // format 7 without deliverability records. Marked 7 before this
            // build writes anything an older build would misread (merged
            // chunks waiting for their deletion, compressed frames, a
            // backfill cursor, sink metadata layout 4, `'Q'` records,
            // longer day counters).
            let format = STORE_FORMAT.to_be_bytes().to_vec();
            self.raw.apply(&[(META_FORMAT.to_vec(), Some(format))])?;
            self.raw.sync()?;
            return Ok(true);
        }
        if format != Some(1u32.to_be_bytes().to_vec()) {
            return Ok(false);
        }
        // Format 1 had no `'Q'` records (deliverability came with format
        // 7), and raw keys under `'Q'` are this layout's delta chunks,
        // which the conversion's own checkpoints write: not legacy records.
        for (prefix, _) in PAGED.iter().filter(|(p, _)| *p != DELTA_PREFIX) {
            loop {
                let chunk = self.raw.scan_chunk(&[*prefix], LEGACY_CHUNK_BYTES)?;
                if chunk.is_empty() {
                    break;
                }
                let deletes = chunk.iter().map(|(k, _)| k.clone()).collect();
                let writes: Vec<Write> = chunk.into_iter().map(|(k, v)| (k, Some(v))).collect();
                self.apply_with(&writes, deletes)?;
                self.merge_if_due()?;
            }
        }
        let format = STORE_FORMAT.to_be_bytes().to_vec();
        self.raw.apply(&[(META_FORMAT.to_vec(), Some(format))])?;
        self.raw.sync()?;
        Ok(true)
    }
}

/// A copy of `Deltas`' sizes (`PagedStore::publish_sizes`) that the
/// writer reads without the deltas' lock (`room_beside_merge`).
#[derive(Default)]
struct DeltaSizes {
    /// Every delta's bytes (`Deltas::bytes`).
    bytes: AtomicUsize,
    /// The bytes of the records held in memory (`Deltas::memory_bytes`).
    memory: AtomicUsize,
    /// The bytes a merge in progress froze (0 when none runs).
    frozen: AtomicUsize,
}

impl<R: RawKv> PagedStore<R> {
    /// The bounds in force for `devices` devices (`plan_for_devices`, and
    /// again after a full merge, which ends the growth credit).
    fn set_bounds(&self, devices: u64) {
        let memory = delta_bound(devices, self.delta_max);
        self.delta_bound.store(memory, Ordering::SeqCst);
        let at_merge = self.devices_at_merge.load(Ordering::SeqCst);
        let grown = devices.saturating_sub(at_merge);
        self.delta_disk_bound.store(
            delta_disk_bound((devices, grown), memory, self.disk_bytes_per_device),
            Ordering::SeqCst,
        );
    }

    /// The devices planned (`None` before the first plan).
    fn planned_devices(&self) -> Option<u64> {
        Some(self.devices.load(Ordering::SeqCst)).filter(|&d| d != u64::MAX)
    }

    /// A full merge that began at `devices` (as planned then) committed:
    /// what grew before it is in the pages, so the credit starts again.
    fn full_merge_committed(&self, devices: Option<u64>) {
        if let Some(at_start) = devices {
            self.devices_at_merge.store(at_start, Ordering::SeqCst);
        }
        if let Some(now) = self.planned_devices() {
            self.set_bounds(now);
        }
    }
}

/// The delta bound for a registry of `devices` devices: deltas are held in
/// memory, so a small registry keeps few (its RAM per device), a large one
/// up to `max` (fewer merges, each of which rewrites every page it touches).
fn delta_bound(devices: u64, max: usize) -> usize {
    let per_device = devices.saturating_mul(crate::limits::DELTA_BYTES_PER_DEVICE);
    usize::try_from(per_device)
        .unwrap_or(usize::MAX)
        .clamp(max / 4, max)
}

/// The bound on every delta record, on disk, for `devices` devices: the
/// memory bound, or `bytes_per_device` per device (`Config::delta_disk_bytes_per_device`) if more (0
/// when deltas are off: every checkpoint merges). Merging costs a rewrite
/// of about every page, so a store that may gather more deltas merges less
/// often: at 10^7 devices 320 MB of deltas instead of 64 MiB.
///
/// Plus a growth credit: `DELTA_DISK_BYTES_PER_NEW_DEVICE` for each of the
/// `grown` devices added since the last full merge, at most
/// `DELTA_DISK_GROWTH_MAX_FACTOR` times the per-device bytes. A new
/// device's delta records are inserts: on disk they cost about what their
/// page copy will, and merging them sooner only rewrites every page more
/// often (DESIGN.md 4.3, "The growth credit"). Updates earn none.
fn delta_disk_bound(
    (devices, grown): (u64, u64),
    memory_bound: usize,
    bytes_per_device: u64,
) -> usize {
    use crate::limits::{DELTA_DISK_BYTES_PER_NEW_DEVICE, DELTA_DISK_GROWTH_MAX_FACTOR};
    if memory_bound == 0 {
        return 0;
    }
    let per_device = devices.saturating_mul(bytes_per_device);
    let credit = grown
        .saturating_mul(DELTA_DISK_BYTES_PER_NEW_DEVICE)
        .min(per_device.saturating_mul(DELTA_DISK_GROWTH_MAX_FACTOR));
    usize::try_from(per_device.saturating_add(credit))
        .unwrap_or(usize::MAX)
        .max(memory_bound)
}

impl<R: RawKv> KvStore for PagedStore<R> {
    fn shed_reads(&self) -> Result<bool> {
        self.raw.shed_cache()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some((&prefix, _)) = key.split_first() else {
            return self.raw.get(key);
        };
        let Some(bits) = page_bits(prefix) else {
            return self.raw.get(key);
        };
        let delta = {
            let deltas = self.deltas.read();
            match (is_append(key), deltas.disk_bytes_by_prefix.get(&prefix)) {
                (true, _) => deltas.append_get(key)?,
                (false, Some(&n)) if n > 0 => self
                    .disk_overlay::<BTreeMap<_, _>>(&deltas.chunks, Some(prefix), &|k| k == key)?
                    .remove(key),
                (false, _) => None,
            }
        };
        match delta {
            Some(Some(d)) if is_append(key) => {
                let (_, records) = self.read_page(prefix, page_of(key, bits))?;
                combine(key, records.get(key).map(Vec::as_slice), &d).map(Some)
            }
            Some(d) => Ok(d),
            None => {
                let (_, mut records) = self.read_page(prefix, page_of(key, bits))?;
                Ok(records.remove(key))
            }
        }
    }

    /// Atomic at recovery (see the module doc), in bounded memory per chunk.
    fn apply(&self, writes: &[Write]) -> Result<()> {
        self.apply_with(writes, Vec::new())?;
        self.merge_if_due()
    }

    fn apply_deferred(&self, writes: &[Write]) -> Result<()> {
        self.apply_with(writes, Vec::new())
    }

    /// The slack is a share of the bound, or of what the merge froze if
    /// that is more (a store reopened with the deltas its growth credit
    /// allowed, which the open does not give back; DESIGN.md 4.3, "Room
    /// beside a merge"): a merge's time follows the bytes it folds, and
    /// the checkpoints beside it need room for that long.
    fn room_beside_merge(&self) -> bool {
        let sizes = &self.delta_sizes;
        let base = self
            .delta_disk_bound
            .load(Ordering::SeqCst)
            .max(sizes.frozen.load(Ordering::SeqCst));
        let disk_room =
            base.saturating_add(base / 100 * crate::limits::DELTA_DISK_SLACK_BESIDE_MERGE_PCT);
        sizes.memory.load(Ordering::SeqCst) <= self.delta_bound.load(Ordering::SeqCst)
            && sizes.bytes.load(Ordering::SeqCst) <= disk_room
    }

    /// A merge runs without the deltas' lock between its steps, so reads
    /// and the checkpoints `between` applies go on meanwhile (`merge.rs`).
    /// One already in progress (`between` asked for another) is left to
    /// finish: merges never overlap (`merge_in_place` checks, under the
    /// deltas' lock).
    fn merge_if_due_beside(&self, between: crate::kv::Between<'_>) -> Result<()> {
        let (over_memory, over_disk) = {
            let deltas = self.deltas.read();
            (
                deltas.memory_bytes > self.delta_bound.load(Ordering::SeqCst),
                deltas.bytes > self.delta_disk_bound.load(Ordering::SeqCst),
            )
        };
        // The disk bound folds every delta in; the memory bound alone, the
        // history's only (DESIGN.md 4.3, "History merges").
        if over_disk {
            self.merge_in_place(self.committed(), between)?;
        } else if over_memory {
            self.merge_history_in_place(self.committed(), between)?;
        }
        self.collect_garbage()
    }

    fn scan_prefix(&self, prefix: &[u8], f: Visit<'_>) -> Result<()> {
        self.scan_keyspace(prefix, false, f)
    }

    fn scan_prefix_shedding(&self, prefix: &[u8], f: Visit<'_>) -> Result<()> {
        self.scan_keyspace(prefix, true, f)
    }

    fn sync(&self) -> Result<()> {
        self.raw.sync()
    }

    fn disk_bytes(&self) -> u64 {
        self.raw.disk_bytes()
    }

    fn bytes_written(&self) -> u64 {
        self.raw.bytes_written()
    }

    fn merges(&self) -> (u64, u64) {
        (
            self.merges.load(Ordering::Relaxed),
            self.merge_bytes.load(Ordering::Relaxed),
        )
    }

    fn plan_for_devices(&self, devices: u64) {
        // The store below scales the live bytes its compactions recorded.
        self.raw.plan_for_devices(devices);
        self.devices.store(devices, Ordering::SeqCst);
        // The first plan after the open starts the growth credit at zero.
        let _first = self.devices_at_merge.compare_exchange(
            u64::MAX,
            devices,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.set_bounds(devices);
    }

    fn mark_troubled(&self) {
        self.raw.mark_troubled();
    }

    fn scan_stored(&self, f: Visit<'_>) -> Result<()> {
        self.raw.scan_stored(f)
    }

    fn scan_stored_from(&self, from: &[u8], f: crate::kv::VisitWhile<'_>) -> Result<()> {
        self.raw.scan_stored_from(from, f)
    }

    fn compact_if_worth(&self) -> Result<crate::kv::CompactOutcome> {
        // The checkpointer calls this between checkpoints: nothing writes
        // the pages or deltas meanwhile, and the copy keeps every entry.
        self.raw.compact_if_worth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path, chunk: usize) -> PagedStore {
        open_with_deltas(dir, chunk, 0)
    }

    /// Records one ownership change of `token` (between owners "a" and
    /// "b", by the parity of `i`) at `now_ms` in `h`, and its seq in
    /// `model`, which keeps the newest `MAX_HISTORY_PER_TOKEN` per key.
    pub(super) fn record_owner_change(
        h: &mut crate::history::History,
        model: &mut BTreeMap<Vec<u8>, Vec<u64>>,
        token: &[u8],
        i: u64,
        now_ms: u64,
    ) {
        use crate::history::{Cause, MAX_HISTORY_PER_TOKEN};
        let owners: [Option<std::sync::Arc<str>>; 2] = [Some("a".into()), Some("b".into())];
        let (before, after) = (&owners[(i % 2) as usize], &owners[1 - (i % 2) as usize]);
        let seq = h.next_seq;
        let cause = Cause::Register { seen_ms: 1 };
        let platform = crate::model::Platform::Ios;
        h.record(
            now_ms,
            &cause,
            token,
            before.as_ref(),
            after.as_ref(),
            true,
            platform,
        );
        let list = model.entry([b"H", token].concat()).or_default();
        list.push(seq);
        if list.len() > MAX_HISTORY_PER_TOKEN {
            list.remove(0);
        }
    }

    /// Every history list of `s`, by `get` and by a scan, as its seqs
    /// against `model`'s.
    pub(super) fn check_history(s: &PagedStore, model: &BTreeMap<Vec<u8>, Vec<u64>>, at: &str) {
        let seqs = |v: &[u8]| -> Vec<u64> {
            let list = crate::history::decode_list(b"H", v).unwrap();
            list.iter().map(|r| r.seq).collect()
        };
        for (key, want) in model {
            let got = s.get(key).unwrap().map(|v| seqs(&v));
            assert_eq!(got.as_ref(), Some(want), "{at}: history get");
        }
        let mut scanned = BTreeMap::new();
        s.scan_prefix(b"H", &mut |k, v| {
            scanned.insert(k.to_vec(), seqs(v));
            Ok(())
        })
        .unwrap();
        assert_eq!(&scanned, model, "{at}: history scan");
    }

    pub(super) fn open_with_deltas(
        dir: &std::path::Path,
        chunk: usize,
        delta: usize,
    ) -> PagedStore {
        PagedStore::open(
            SledStore::open(dir, None, 8 << 20, true).unwrap(),
            chunk,
            delta,
        )
        .unwrap()
    }

    pub(super) fn all(s: &PagedStore, prefix: u8) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = BTreeMap::new();
        s.scan_prefix(&[prefix], &mut |k, v| {
            out.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    /// `all`, through the open's shedding scan.
    fn all_shedding(s: &PagedStore, prefix: u8) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = BTreeMap::new();
        s.scan_prefix_shedding(&[prefix], &mut |k, v| {
            out.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    /// A merge cut short by a crash: every other page the current deltas
    /// touch is written in place (durably), and the merge never commits.
    fn merge_cut_short(s: &PagedStore) {
        let deltas = s.deltas.read();
        let on_disk = s
            .disk_overlay_hashed(&deltas.chunks, None, &|_| true)
            .unwrap();
        let mut changes = merge::changes_by_page(&on_disk, &|_| true);
        for (page, list) in merge::changes_by_page(&deltas.map, &|_| true) {
            changes.entry(page).or_default().extend(list);
        }
        let half = changes.into_iter().step_by(2).collect();
        s.write_pages_in_place(s.committed(), half, &mut || Ok(()))
            .unwrap();
        s.raw.sync().unwrap();
    }

    /// A store on sled with a 1 MiB cache that sheds it after 1 MiB read,
    /// chunks of `chunk_bytes` and a 1 MiB memory bound for deltas.
    fn shedding_store(dir: &std::path::Path, chunk_bytes: usize) -> PagedStore {
        let raw = SledStore::open(dir, None, 1 << 20, true).unwrap();
        raw.set_shed_after_bytes(1 << 20);
        PagedStore::open(raw, chunk_bytes, 1 << 20).unwrap()
    }

    /// 1,024 device records of 1 KiB of incompressible bytes (LZ4 keeps
    /// them whole), keyed `D` and six digits from `round * 1024`; `x` is
    /// the xorshift state, carried from one round to the next.
    fn noise_devices(x: &mut u64, round: u32) -> Vec<Write> {
        (0..1024u32)
            .map(|i| {
                let value = (0..1024)
                    .map(|_| {
                        *x ^= *x << 13;
                        *x ^= *x >> 7;
                        *x ^= *x << 17;
                        *x as u8
                    })
                    .collect();
                (
                    format!("D{:06}", round * 1024 + i).into_bytes(),
                    Some(value),
                )
            })
            .collect()
    }

    /// The open reads every delta chunk (`load_deltas`) and sled keeps
    /// what it read: on a store that sheds, the open sheds once it read at
    /// least `1 / SHED_REMAINDER_DIVISOR` of the shed bound (256 KiB of 1
    /// MiB here) in chunks, and not for fewer.
    #[test]
    fn the_open_sheds_after_reading_a_quarter_of_the_bound_in_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let records = noise_devices(&mut x, 0);
        let (few, more) = records.split_at(128);
        let s = shedding_store(dir.path(), 64 << 10);
        s.apply(few).unwrap();
        drop(s);
        let s = shedding_store(dir.path(), 64 << 10);
        let on_disk = s.deltas.read().disk_only_bytes();
        assert!((128 << 10..256 << 10).contains(&on_disk), "{on_disk}");
        assert_eq!(s.raw.sheds(), 0, "the open shed after {on_disk} bytes");
        s.apply(&more[..256]).unwrap();
        drop(s);
        let s = shedding_store(dir.path(), 64 << 10);
        let on_disk = s.deltas.read().disk_only_bytes();
        assert!(on_disk >= 384 << 10, "the deltas were merged: {on_disk}");
        assert_eq!(s.raw.sheds(), 1, "no shed after {on_disk} bytes");
        assert_eq!(all(&s, b'D').len(), 384);
        // A store that never sheds reads them and keeps them.
        drop(s);
        let raw = SledStore::open(dir.path(), None, 1 << 20, true).unwrap();
        let s = PagedStore::open(raw, 64 << 10, 1 << 20).unwrap();
        assert_eq!(s.raw.sheds(), 0);
    }

    /// A shedding scan that read less than the shed bound since its last
    /// shed sheds once more at its end if that was at least a quarter of
    /// the bound (the open then builds its indexes without sled's nodes of
    /// the last slices), and not for less.
    #[test]
    fn a_shedding_scan_sheds_its_last_slices_from_a_quarter_of_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let records = noise_devices(&mut x, 0);
        let s = shedding_store(dir.path(), 64 << 10);
        s.apply(&records[..128]).unwrap();
        assert_eq!(all_shedding(&s, b'D').len(), 128);
        assert_eq!(s.raw.sheds(), 0, "shed after 128 KiB read of 1 MiB");
        s.apply(&records[128..512]).unwrap();
        assert_eq!(all_shedding(&s, b'D').len(), 512);
        assert_eq!(s.raw.sheds(), 1, "no shed after 512 KiB read of 1 MiB");
        assert_eq!(all(&s, b'D').len(), 512);
        assert_eq!(s.raw.sheds(), 1, "a plain scan shed");
    }

    /// A backup's copy goes in passes of about `pass_bytes`: the copy is
    /// opened again and the source sheds what it read between two passes
    /// (sled keeps both until closed), and the copy holds every stored
    /// entry, pages, delta chunks and metadata alike.
    #[test]
    fn a_copy_in_passes_sheds_the_source_between_them_and_copies_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = 0x1234_5678_9abc_def1u64;
        let s = shedding_store(&dir.path().join("src"), 64 << 10);
        s.apply(&noise_devices(&mut x, 0)).unwrap();
        s.apply(&[(b"D000007".to_vec(), None)]).unwrap();
        let mut stored = Vec::new();
        s.scan_stored(&mut |k, v| {
            stored.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        let dest = dir.path().join("copy");
        let copied = crate::store::copy_store(&s, &dest, (16 << 10, 128 << 10)).unwrap();
        assert!(copied.passes >= 6, "{} passes for 1 MiB", copied.passes);
        assert_eq!(s.raw.sheds(), u64::from(copied.passes) - 1);
        assert_eq!(copied.keys, stored.len() as u64);
        drop(s);
        let copy = SledStore::open(&dest, None, 1 << 20, false).unwrap();
        let mut back = Vec::new();
        copy.scan_stored(&mut |k, v| {
            back.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(back, stored);
        let reopened = PagedStore::open(copy, 64 << 10, 1 << 20).unwrap();
        assert_eq!(all(&reopened, b'D').len(), 1023);
    }

    pub(super) fn put(i: u32, v: &str) -> Write {
        (format!("D{i:05}").into_bytes(), Some(v.as_bytes().to_vec()))
    }

    #[test]
    fn pages_round_trip_and_reject_damage() {
        let mut recs = BTreeMap::new();
        recs.insert(b"Dab".to_vec(), vec![1u8; 300]);
        recs.insert(b"Dcd".to_vec(), Vec::new());
        let page = encode_page(&recs);
        let mut back = BTreeMap::new();
        decode_page(&|| "p".into(), &page, &mut |k, v| {
            back.insert(k.to_vec(), v.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(back, recs);
        for cut in 0..page.len() {
            let r = decode_page(&|| "p".into(), &page[..cut], &mut |_, _| Ok(()));
            assert!(r.is_err(), "a page cut at {cut} decoded");
        }
    }

    /// The open's scan sheds sled's nodes along the way: with a cache of
    /// 1 MiB, a shedding scan of about 6 MiB of pages closes and opens sled
    /// several times and visits exactly what a plain scan visits (deltas
    /// on disk included). A shed waits a bounded time: inside another scan
    /// of the same store it gives up and does nothing.
    #[test]
    fn a_shedding_scan_reopens_sled_between_slices_and_sees_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = shedding_store(dir.path(), 4 << 20);
        // Incompressible values (LZ4 keeps them whole): about 6 MiB of pages.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..6u32 {
            s.apply(&noise_devices(&mut x, round)).unwrap();
        }
        // A change left in the deltas, over a page record.
        s.apply(&[(b"D000007".to_vec(), Some(b"changed".to_vec()))])
            .unwrap();
        let plain = all(&s, b'D');
        assert_eq!(plain.len(), 6 * 1024);
        assert_eq!(s.raw.sheds(), 0, "a plain scan never sheds");
        let mut without = s.raw.shed_after_bytes();
        s.raw.set_shed_after_bytes(u64::MAX);
        s.scan_prefix_shedding(b"D", &mut |_, _| Ok(())).unwrap();
        assert_eq!(s.raw.sheds(), 0, "a store without a bound shed");
        s.raw.set_shed_after_bytes(without.take().unwrap());
        let shed = all_shedding(&s, b'D');
        assert_eq!(shed, plain);
        assert_eq!(
            shed.get(&b"D000007"[..]).map(Vec::as_slice),
            Some(&b"changed"[..])
        );
        let sheds = s.raw.sheds();
        assert!(
            (3..=64).contains(&sheds),
            "{sheds} sheds for 6 MiB read at 1 MiB"
        );
        // With many deltas on disk the pages are read in passes (64 here,
        // each far under the bound): the bytes count across the passes.
        let again: Vec<Write> = (0..64u32)
            .map(|i| {
                (
                    format!("D{:06}", i * 96).into_bytes(),
                    Some(b"again".to_vec()),
                )
            })
            .collect();
        s.apply(&again).unwrap();
        s.pass_bytes = 1;
        assert_eq!(
            s.delta_passes(s.deltas.read().disk_only_bytes()),
            MAX_DELTA_PASSES
        );
        let plain = all(&s, b'D');
        let shed = all_shedding(&s, b'D');
        assert_eq!(shed, plain);
        assert_eq!(
            shed.get(&b"D000096"[..]).map(Vec::as_slice),
            Some(&b"again"[..])
        );
        let in_passes = s.raw.sheds() - sheds;
        assert!(in_passes >= 3, "{in_passes} sheds over 64 passes of 6 MiB");
        let sheds = s.raw.sheds();
        // Inside a scan the store is in use: the shed waits its time and
        // gives up (here, on the scan's own thread, waiting could never end).
        let mut tried = false;
        s.raw
            .scan_range(&[], &[0xff], &mut |_, _| {
                if !tried {
                    assert!(!s.raw.shed_cache()?);
                    tried = true;
                }
                Ok(())
            })
            .unwrap();
        assert!(tried);
        assert_eq!(s.raw.sheds(), sheds);
        drop(s);
        // sled cannot be opened again at a shed: the scan fails with the
        // error, the store is closed (fail stop), and the next open reads
        // everything.
        let plan = crate::fault::FaultPlan::new();
        let raw = SledStore::open(dir.path(), Some(plan.clone()), 1 << 20, true).unwrap();
        raw.set_shed_after_bytes(1 << 20);
        let s = PagedStore::open(raw, 4 << 20, 1 << 20).unwrap();
        plan.arm(&[crate::fault::IoOp::StoreOpen], 1, libc::EIO, false);
        let e = s
            .scan_prefix_shedding(b"D", &mut |_, _| Ok(()))
            .unwrap_err();
        assert!(e.to_string().contains("opening"), "{e}");
        assert!(matches!(
            s.get(b"D000007"),
            Err(crate::error::Error::Closed)
        ));
        drop(s);
        assert_eq!(all(&open(dir.path(), 64), b'D'), plain);
    }

    /// A checkpoint that dies after some chunks and before its commit
    /// leaves nothing visible, and its versions are never picked up later
    /// (even by a commit of the same generation that does not touch them).
    /// A merge reads back each page it wrote and each delta chunk it read
    /// (`RawKv::touch`, for sled's LRU: DESIGN.md 6); a checkpoint that
    /// merges nothing reads nothing back.
    #[test]
    fn a_merge_reads_back_each_page_it_wrote_and_each_chunk_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_deltas(dir.path(), 1 << 20, 1 << 20);
        let writes: Vec<Write> = (0..200).map(|i| put(i, "a")).collect();
        s.apply(&writes).unwrap();
        assert_eq!((s.merges().0, s.raw.touches()), (0, 0), "under the bound");
        let chunks = s.deltas.read().chunks.len() as u64;
        assert!(chunks > 0);
        s.merge_in_place(s.committed(), &mut || Ok(())).unwrap();
        let pages: std::collections::BTreeSet<u32> = (0..200u32)
            .map(|i| page_of(format!("D{i:05}").as_bytes(), 14))
            .collect();
        assert_eq!(s.merges().0, 1);
        assert_eq!(s.raw.touches(), pages.len() as u64 + chunks);
        assert_eq!(all(&s, b'D').len(), 200);
    }

    #[test]
    fn an_uncommitted_generation_is_invisible_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 64);
        let first: Vec<Write> = (0..200).map(|i| put(i, "a")).collect();
        s.apply(&first).unwrap();
        assert_eq!(s.committed(), 1);
        // Generation 2's page versions (what builds before merges in
        // place wrote, copy-on-write) are written, then the "crash".
        let mut pages: BTreeMap<u32, Records> = BTreeMap::new();
        for i in 0..200 {
            let (k, v) = put(i, "b");
            pages
                .entry(page_of(&k, 14))
                .or_default()
                .insert(k, v.unwrap());
        }
        let mut orphans = vec![(
            META_PAGE_ATTEMPT.to_vec(),
            Some(2u64.to_be_bytes().to_vec()),
        )];
        for (page, records) in &pages {
            orphans.push((page_key(b'D', *page, 2), Some(encode_page(records))));
        }
        s.raw.apply(&orphans).unwrap();
        drop(s);
        // The next checkpoint (generation 2 again, before any read) touches
        // one record only.
        let s = open(dir.path(), 64);
        s.apply(&[put(7, "c")]).unwrap();
        s.apply(&[put(8, "d")]).unwrap();
        drop(s);
        let s = open(dir.path(), 64);
        let seen = all(&s, b'D');
        assert_eq!(seen.len(), 200);
        drop(s);
        let s = open(dir.path(), 64);
        let seen = all(&s, b'D');
        let changed: Vec<_> = seen.iter().filter(|(_, v)| v.as_slice() != b"a").collect();
        assert_eq!(changed.len(), 2, "stale generation-2 pages came back");
        assert_eq!(seen.get(&b"D00007"[..]).map(Vec::as_slice), Some(&b"c"[..]));
        assert_eq!(seen.get(&b"D00008"[..]).map(Vec::as_slice), Some(&b"d"[..]));
        // One version per page is left.
        let mut versions = 0;
        s.raw
            .scan_prefix(&[PAGE_PREFIX], &mut |_, _| {
                versions += 1;
                Ok(())
            })
            .unwrap();
        let pages: std::collections::BTreeSet<u32> = (0..200u32)
            .map(|i| page_of(format!("D{i:05}").as_bytes(), 14))
            .collect();
        assert_eq!(versions, pages.len());
    }

    /// Two reads of the store run side by side (the deltas' lock is
    /// shared by reads since DESIGN.md 13 step 18: an open reads the
    /// known persons beside the devices): each scan, inside its first
    /// record, waits for the other to be inside one too. Under an
    /// exclusive lock the second scan could not start, and both waits
    /// time out.
    #[test]
    fn two_scans_run_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_deltas(dir.path(), 64, 1 << 20);
        let writes: Vec<Write> = (0..50)
            .map(|i| put(i, "a"))
            .chain((0..50).map(|i| (format!("K{i:05}").into_bytes(), Some(b"k".to_vec()))))
            .collect();
        s.apply(&writes).unwrap();
        assert!(
            !s.deltas.read().chunks.is_empty(),
            "the records are deltas on disk"
        );
        let (d_in, d_seen) = std::sync::mpsc::channel::<()>();
        let (k_in, k_seen) = std::sync::mpsc::channel::<()>();
        let wait = std::time::Duration::from_secs(10);
        let scan = |prefix: u8,
                    signal: std::sync::mpsc::Sender<()>,
                    other: std::sync::mpsc::Receiver<()>| {
            let mut met = None;
            let mut count = 0;
            s.scan_prefix(&[prefix], &mut |_, _| {
                if met.is_none() {
                    let _ = signal.send(());
                    met = Some(other.recv_timeout(wait).is_ok());
                }
                count += 1;
                Ok(())
            })
            .unwrap();
            (met, count)
        };
        let (d, k) = std::thread::scope(|t| {
            let d = t.spawn(|| scan(b'D', d_in, k_seen));
            let k = t.spawn(|| scan(b'K', k_in, d_seen));
            (d.join().unwrap(), k.join().unwrap())
        });
        assert_eq!(
            d,
            (Some(true), 50),
            "the device scan met the other inside it"
        );
        assert_eq!(
            k,
            (Some(true), 50),
            "the known-person scan met the other inside it"
        );
    }

    #[test]
    fn deletes_empty_pages_and_keeps_metadata_unpaged() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        s.apply(&[put(1, "x"), (b"Mthing".to_vec(), Some(vec![9]))])
            .unwrap();
        assert_eq!(s.get(b"D00001").unwrap(), Some(b"x".to_vec()));
        assert_eq!(s.raw.get(b"Mthing").unwrap(), Some(vec![9]));
        s.apply(&[(b"D00001".to_vec(), None)]).unwrap();
        assert_eq!(s.get(b"D00001").unwrap(), None);
        let versions = |s: &PagedStore| {
            let mut n = 0;
            s.raw
                .scan_prefix(&[PAGE_PREFIX], &mut |_, _| {
                    n += 1;
                    Ok(())
                })
                .unwrap();
            n
        };
        // The emptied page has an empty version; the next read finds it
        // alone and the next commit deletes it.
        assert_eq!(versions(&s), 1);
        assert!(all(&s, b'D').is_empty());
        s.apply(&[(b"Mthing".to_vec(), Some(vec![8]))]).unwrap();
        assert_eq!(versions(&s), 0, "an emptied page is removed");
    }

    /// Regression (crash test, format 3): a checkpoint that emptied a page
    /// wrote no version of it, and its old version was deleted only after
    /// the commit; a crash in between made the old version the newest
    /// again, and deleted feed items came back (a "duplicate feed item" at
    /// the next open). Since merges write in place, the crash to fear is
    /// one before the merge's commit that lost its page writes: the
    /// deletions are then still in their delta chunk, which is current.
    #[test]
    fn an_emptied_page_stays_empty_when_its_old_version_outlives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        s.apply(&[put(1, "x"), put(2, "y")]).unwrap();
        let mut old = Vec::new();
        s.raw
            .scan_prefix(&[PAGE_PREFIX], &mut |k, v| {
                old.push((k.to_vec(), Some(v.to_vec())));
                Ok(())
            })
            .unwrap();
        // Empty every page the records were in, but keep the chunk that
        // says so: the crash comes before the merge's commit.
        let deletes = [(b"D00001".to_vec(), None), (b"D00002".to_vec(), None)];
        let paged: Vec<&Write> = deletes.iter().collect();
        let gen = s.committed() + 1;
        s.write_delta(gen, &paged).unwrap();
        s.raw
            .apply(&[(META_PAGE_GEN.to_vec(), Some(gen.to_be_bytes().to_vec()))])
            .unwrap();
        // The crash: the pages as they were (`Mdelta_merged` was never
        // moved past the chunk).
        s.raw.apply(&old).unwrap();
        drop(s);
        let s = open(dir.path(), 1 << 20);
        assert_eq!(s.deltas.read().chunks.len(), 1, "the chunk is current");
        assert!(all(&s, b'D').is_empty(), "deleted records came back");
        assert_eq!(s.get(b"D00001").unwrap(), None);
    }

    /// Pages plus deltas read back exactly what was written, across merges,
    /// reopens and a checkpoint that died before its commit.
    #[test]
    fn deltas_and_merges_match_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let reopen = |delta: usize| {
            let mut s = open_with_deltas(dir.path(), 256, delta);
            // Deltas up to 2,000 bytes read back in up to 8 passes.
            s.pass_bytes = 256;
            s
        };
        let mut s = reopen(2_000);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
        let mut rnd = |n: u64| next() % n;
        for round in 0..120 {
            let mut batch = Vec::new();
            for _ in 0..1 + rnd(40) {
                let key =
                    format!("{}{:04}", ["D", "K", "F"][rnd(3) as usize], rnd(300)).into_bytes();
                let value = (rnd(5) > 0).then(|| vec![b'v'; rnd(60) as usize]);
                batch.push((key, value));
            }
            if round % 13 == 7 && !s.deltas.read().chunks.is_empty() {
                // A merge that dies before its commit: half its pages
                // hold the deltas, which a read lays over them again.
                merge_cut_short(&s);
                drop(s);
                s = reopen(2_000);
            }
            if round % 17 == 5 {
                // A checkpoint that dies after its chunks: nothing changes.
                let paged: Vec<&Write> = batch.iter().collect();
                s.write_delta(s.committed() + 1, &paged).unwrap();
                drop(s);
                s = reopen(2_000);
                continue;
            }
            s.apply(&batch).unwrap();
            for (k, v) in batch {
                match v {
                    Some(v) => model.insert(k, v),
                    None => model.remove(&k),
                };
            }
            if round % 11 == 0 {
                drop(s);
                s = reopen(2_000);
            }
            let mut seen = BTreeMap::new();
            for p in [b'D', b'K', b'F'] {
                s.scan_prefix(&[p], &mut |k, v| {
                    assert!(
                        seen.insert(k.to_vec(), v.to_vec()).is_none(),
                        "visited twice"
                    );
                    Ok(())
                })
                .unwrap();
            }
            // Name the keys that differ (the maps are too long to print).
            let differ: Vec<String> = seen
                .keys()
                .chain(model.keys())
                .filter(|k| seen.get(*k) != model.get(*k))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            assert!(differ.is_empty(), "round {round}: {differ:?} differ");
            let probe = format!("D{:04}", rnd(300)).into_bytes();
            assert_eq!(s.get(&probe).unwrap(), model.get(&probe).cloned());
        }
    }

    /// History records are appended to, through deltas, merges and
    /// reopens: each read returns every entry once, the newest 64.
    #[test]
    fn history_records_append_across_deltas_merges_and_reopens() {
        use crate::history::History;
        let dir = tempfile::tempdir().unwrap();
        let reopen = || open_with_deltas(dir.path(), 512, 4_000);
        let mut s = reopen();
        let mut h = History::new(u64::MAX);
        let mut model: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
        for round in 0..80u64 {
            for i in 0..1 + round % 9 {
                let token = format!("t{}", (round * 7 + i) % 13).into_bytes();
                record_owner_change(&mut h, &mut model, &token, i, round * 100 + i);
            }
            s.apply(&h.take_writes(round * 100 + 99).unwrap()).unwrap();
            if round % 7 == 3 && !s.deltas.read().map.is_empty() {
                // A merge cut short: the history lists it wrote are joined
                // with the same entries again, and read the same.
                merge_cut_short(&s);
                drop(s);
                s = reopen();
            }
            if round % 9 == 4 {
                drop(s);
                s = reopen();
            }
            check_history(&s, &model, &format!("round {round}"));
        }
        // Deleting a history record is refused (it could not cancel the
        // appends before it), and nothing is written.
        let key = model.keys().next().unwrap().clone();
        let before = s.get(&key).unwrap();
        assert!(matches!(
            s.apply(&[(key.clone(), None)]),
            Err(Error::Encode(_))
        ));
        assert_eq!(s.get(&key).unwrap(), before);
    }

    /// Superseded page versions and merged delta chunks are deleted after
    /// the commit; ones a crash left behind are unreachable (reads ignore
    /// them) and are deleted after the next commit.
    #[test]
    fn garbage_left_by_a_crash_is_ignored_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let reopen = || open_with_deltas(dir.path(), 256, 300);
        let raw_keys = |s: &PagedStore, prefix: u8| {
            let mut keys = Vec::new();
            s.raw
                .scan_prefix(&[prefix], &mut |k, _| {
                    keys.push(k.to_vec());
                    Ok(())
                })
                .unwrap();
            keys
        };
        let s = reopen();
        let first: Vec<Write> = (0..50).map(|i| put(i, "a")).collect();
        s.apply(&first).unwrap();
        let pages = raw_keys(&s, PAGE_PREFIX);
        // A version below the current one (a copy-on-write build left them
        // until the commit after a merge).
        let (_, page, gen) = parse_page_key(&pages[0]).unwrap();
        assert_eq!(gen, 1);
        let old_page = page_key(b'D', page, 0);
        let old_value = s.raw.get(&pages[0]).unwrap().unwrap();
        // Deltas, then a merge (the bound is 300 bytes).
        s.apply(&[put(1, "b")]).unwrap();
        let chunk = raw_keys(&s, DELTA_PREFIX)[0].clone();
        let chunk_value = s.raw.get(&chunk).unwrap().unwrap();
        let second: Vec<Write> = (0..50).map(|i| put(i, "c")).collect();
        s.apply(&second).unwrap();
        assert_eq!(
            raw_keys(&s, PAGE_PREFIX),
            pages,
            "one version per page, written in place"
        );
        assert!(
            raw_keys(&s, DELTA_PREFIX).is_empty(),
            "merged chunks are deleted"
        );
        // A crash between the commit and the deletions: put them back.
        s.raw
            .apply(&[
                (old_page.clone(), Some(old_value)),
                (chunk.clone(), Some(chunk_value)),
            ])
            .unwrap();
        drop(s);
        let s = reopen();
        let seen = all(&s, b'D');
        assert_eq!(seen.len(), 50);
        assert!(
            seen.values().all(|v| v == b"c"),
            "a leftover came back: {seen:?}"
        );
        s.apply(&[put(7, "d")]).unwrap();
        assert!(
            s.raw.get(&chunk).unwrap().is_none(),
            "the merged chunk stayed"
        );
        assert!(
            s.raw.get(&old_page).unwrap().is_none(),
            "the old page version stayed"
        );
        assert_eq!(s.get(b"D00007").unwrap(), Some(b"d".to_vec()));
    }

    /// Deltas outside the history are kept on disk only: a store gathers
    /// them up to `DELTA_DISK_BYTES_PER_DEVICE` per device before a merge,
    /// beyond the memory bound, and holds none of them in memory; the
    /// history's are held in memory and bounded there.
    #[test]
    fn device_deltas_gather_on_disk_beyond_the_memory_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_deltas(dir.path(), 1 << 20, 4_000);
        // Memory bound clamp(100 x 16, 1,000, 4,000) = 1,600; disk bound
        // max(1,600, 100 x 32) = 3,200.
        s.plan_for_devices(100);
        let devices = |round: u32| -> Vec<Write> {
            (0..10).map(|i| put(i, &format!("{round:0>150}"))).collect()
        };
        // 10 records of 156 bytes: 1,560 bytes a round.
        s.apply(&devices(1)).unwrap();
        s.apply(&devices(2)).unwrap();
        {
            let d = s.deltas.read();
            assert_eq!(d.bytes, 3_120, "past the memory bound, still deltas");
            assert!(d.map.is_empty(), "device deltas are not held in memory");
            assert_eq!(d.memory_bytes, 0);
            assert_eq!(d.disk_only_bytes(), 3_120);
        }
        assert!(all(&s, b'D').values().all(|v| v.ends_with(b"2")));
        assert_eq!(s.get(b"D00003").unwrap().unwrap().last(), Some(&b'2'));
        s.apply(&devices(3)).unwrap();
        assert_eq!(s.deltas.read().bytes, 0, "4,680 > 3,200: merged");
        // History deltas: 156 bytes each, held in memory up to 1,600.
        let history = |from: u32, to: u32| -> Vec<Write> {
            (from..to)
                .map(|i| (format!("H{i:05}").into_bytes(), Some(vec![b'h'; 150])))
                .collect()
        };
        s.apply(&history(0, 5)).unwrap();
        assert_eq!(s.deltas.read().map.len(), 5, "history deltas in memory");
        assert_eq!(s.deltas.read().memory_bytes, 780);
        s.apply(&history(5, 11)).unwrap();
        assert_eq!(s.deltas.read().bytes, 0, "1,716 > 1,600: merged");
        assert_eq!(all(&s, b'H').len(), 11);
        assert_eq!(all(&s, b'D').len(), 10);
    }

    /// A scan or read of one keyspace reads only the delta chunks holding
    /// records of it: with the device chunk gone from sled, the known
    /// persons' deltas still scan and read, while devices fail as missing.
    /// (Before chunks carried their prefixes, every scan read every chunk.)
    #[test]
    fn a_keyspace_reads_only_the_chunks_that_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_deltas(dir.path(), 1 << 20, 1 << 20);
        s.plan_for_devices(1_000_000);
        s.apply(&[put(1, "one")]).unwrap();
        let known: Vec<Write> = (0..3)
            .map(|i| (format!("Kcio\0p{i}").into_bytes(), Some(Vec::new())))
            .collect();
        s.apply(&known).unwrap();
        let chunks = s.deltas.read().chunks.clone();
        assert_eq!(chunks.len(), 2, "one chunk a checkpoint");
        let (device_chunk, known_chunk) = (&chunks[0], &chunks[1]);
        assert!(device_chunk.prefixes.has(b'D') && !device_chunk.prefixes.has(b'K'));
        assert!(known_chunk.prefixes.has(b'K') && !known_chunk.prefixes.has(b'D'));
        s.raw.apply(&[(device_chunk.key.clone(), None)]).unwrap();
        assert_eq!(all(&s, b'K').len(), 3, "the known persons' chunk alone");
        assert!(s.get(b"Kcio\0p1").unwrap().is_some());
        let err = s.scan_prefix(b"D", &mut |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(s.get(b"D00001").is_err(), "a device read needs its chunk");
    }

    /// The delta bound follows the registry's size: a quarter of the
    /// maximum for a small one, `DELTA_BYTES_PER_DEVICE` per device above.
    #[test]
    fn the_delta_bound_follows_the_device_count() {
        assert_eq!(delta_bound(0, 4000), 1000);
        assert_eq!(delta_bound(100, 4000), 1600);
        assert_eq!(delta_bound(1_000_000, 4000), 4000);
        assert_eq!(delta_bound(u64::MAX, 4000), 4000);
        assert_eq!(delta_bound(1_000_000, 0), 0);
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_deltas(dir.path(), 1 << 20, 10_000);
        let writes = |round: u32| -> Vec<Write> {
            (0..10).map(|i| put(i, &format!("{round:0>150}"))).collect()
        };
        // 10 records of 156 bytes: 1,560 bytes a round.
        s.plan_for_devices(200); // bound 3,200: two rounds stay deltas
        s.apply(&writes(1)).unwrap();
        s.apply(&writes(2)).unwrap();
        assert_eq!(s.deltas.read().bytes, 3120);
        s.plan_for_devices(10); // bound 2,500 (not 10,000): the next round merges
        s.apply(&writes(3)).unwrap();
        assert_eq!(s.deltas.read().bytes, 0, "merged");
        assert!(all(&s, b'D').values().all(|v| v.ends_with(b"3")));
    }

    /// The growth credit: `DELTA_DISK_BYTES_PER_NEW_DEVICE` for each device
    /// added since the last full merge, at most
    /// `DELTA_DISK_GROWTH_MAX_FACTOR` times the per-device bound; nothing
    /// without growth, and nothing when deltas are off.
    #[test]
    fn the_disk_bound_credits_the_devices_added_since_the_last_full_merge() {
        use crate::limits::{DELTA_DISK_BYTES_PER_NEW_DEVICE, DELTA_DISK_GROWTH_MAX_FACTOR};
        let per = DELTA_DISK_BYTES_PER_NEW_DEVICE as usize;
        assert_eq!(delta_disk_bound((1_000, 0), 10, 32), 32_000);
        assert_eq!(delta_disk_bound((1_000, 100), 10, 32), 32_000 + 100 * per);
        let cap = 32_000 * DELTA_DISK_GROWTH_MAX_FACTOR as usize;
        assert_eq!(delta_disk_bound((1_000, 1_000), 10, 32), 32_000 + cap);
        assert_eq!(delta_disk_bound((1_000, 100), 1 << 20, 32), 1 << 20);
        assert_eq!(delta_disk_bound((1_000, 100), 0, 32), 0, "deltas off");
        assert_eq!(delta_disk_bound((u64::MAX, u64::MAX), 10, 32), usize::MAX);

        // In a store: records of new devices stay deltas past the
        // per-device bound, a full merge ends the credit, and the same
        // bytes then merge.
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_deltas(dir.path(), 1 << 20, 4_000);
        let writes = |from: u32, round: u32| -> Vec<Write> {
            (from..from + 10)
                .map(|i| put(i, &format!("{round:0>150}")))
                .collect()
        };
        s.plan_for_devices(100); // the first plan: no credit
        assert_eq!(s.delta_disk_bound.load(Ordering::SeqCst), 3_200);
        s.plan_for_devices(150); // 4,800 + 50 new devices' credit
        let bound = 4_800 + 50 * per;
        assert_eq!(s.delta_disk_bound.load(Ordering::SeqCst), bound);
        // 10 records of 156 bytes a round: 4 rounds, 6,240 > 4,800 bytes.
        for round in 0..4 {
            s.apply(&writes(round * 10, round)).unwrap();
        }
        assert_eq!(s.deltas.read().bytes, 6_240, "credited: still deltas");
        s.merge_in_place(s.committed(), &mut || Ok(())).unwrap();
        assert_eq!(s.deltas.read().bytes, 0);
        assert_eq!(
            s.delta_disk_bound.load(Ordering::SeqCst),
            4_800,
            "credit ended"
        );
        for round in 0..4 {
            s.apply(&writes(round * 10, round + 4)).unwrap();
        }
        assert!(s.deltas.read().bytes < 6_240, "the same bytes merged");
        assert_eq!(all(&s, b'D').len(), 40);
        assert!(all(&s, b'D').values().all(|v| v.ends_with(b"4")
            || v.ends_with(b"5")
            || v.ends_with(b"6")
            || v.ends_with(b"7")));
    }

    /// The chunks an open's scan reads back count toward its sheds as the
    /// pages do: a keyspace held all in deltas (no page yet), about 6 MiB
    /// of them, sheds sled's cache of 1 MiB several times. (Before, only
    /// pages counted, and such a scan never shed: the open after a 10^7
    /// import peaked 700 MiB higher, DESIGN.md 13 step 41.)
    #[test]
    fn a_shedding_scan_counts_the_chunks_it_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = shedding_store(dir.path(), 256 << 10);
        s.plan_for_devices(1_000_000); // a disk bound of 32 MB: no merge
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..6u32 {
            s.apply(&noise_devices(&mut x, round)).unwrap();
        }
        assert_eq!(s.merges().0, 0, "every record is a delta");
        s.pass_bytes = 1 << 20;
        let plain = all(&s, b'D');
        assert_eq!(plain.len(), 6 * 1024);
        assert_eq!(s.raw.sheds(), 0);
        let shed = all_shedding(&s, b'D');
        assert_eq!(shed, plain);
        let sheds = s.raw.sheds();
        assert!(
            (3..=64).contains(&sheds),
            "{sheds} sheds for 6 MiB of chunks at 1 MiB"
        );
    }

    /// A merge of more pages than one group (`merge::MERGE_GROUP_PAGES`),
    /// each group rewritten on two threads, writes every page as one
    /// thread would: the records read back equal a model's, before and
    /// after a reopen, and each merge empties the deltas.
    #[test]
    fn a_merge_of_many_groups_on_two_threads_matches_a_model() {
        let dir = tempfile::tempdir().unwrap();
        // No deltas kept: every apply merges.
        let s = open_with_deltas(dir.path(), 1 << 20, 0);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for round in 0..3u32 {
            // 1,000 keys over 2^14 pages: about 970 pages, 16 groups.
            let batch: Vec<Write> = (0..1_000u32)
                .map(|i| put(i * 7 + round, &format!("{round}-{i}")))
                .collect();
            s.apply(&batch).unwrap();
            assert_eq!(s.deltas.read().chunks.len(), 0, "round {round} merged");
            for (k, v) in batch {
                model.insert(k, v.unwrap());
            }
            assert_eq!(all(&s, b'D'), model, "round {round}");
        }
        let (merges, _) = s.merges();
        assert!(merges >= 3, "{merges} merges");
        drop(s);
        let s = open_with_deltas(dir.path(), 1 << 20, 0);
        assert_eq!(all(&s, b'D'), model, "after a reopen");
    }

    /// A page that fails to decode in the half of a group the second
    /// thread rewrites fails the merge with that page named; nothing is
    /// committed, and the deltas stay current for every other page.
    #[test]
    fn damage_met_by_the_second_thread_fails_the_merge() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_with_deltas(dir.path(), 1 << 20, 0);
        let first: Vec<Write> = (0..100u32).map(|i| put(i, "a")).collect();
        s.apply(&first).unwrap();
        // The last page with a change is in the second half of its group.
        let mut pages: Vec<(u8, u32)> = first.iter().filter_map(|(k, _)| page_of_key(k)).collect();
        pages.sort_unstable();
        pages.dedup();
        let &(prefix, last) = pages.last().unwrap();
        let key = s.current_version(prefix, last).unwrap().map(|(g, _)| g);
        let damaged = page_key(prefix, last, key.unwrap());
        // A compressed frame whose data does not decode.
        s.raw
            .apply(&[(damaged, Some(vec![0xF4, 0x20, 0xFF, 0xFF]))])
            .unwrap();
        let second: Vec<Write> = (0..100u32).map(|i| put(i, "b")).collect();
        let err = s.apply(&second).unwrap_err();
        assert!(
            err.to_string().contains(&format!("page D {last} ")),
            "{err}"
        );
        assert!(!s.deltas.read().chunks.is_empty(), "nothing committed");
        let other = second
            .iter()
            .find(|(k, _)| page_of_key(k) != Some((prefix, last)))
            .unwrap();
        assert_eq!(s.get(&other.0).unwrap(), Some(b"b".to_vec()));
    }
}

//! Delta pages: what a checkpoint changed, appended as a few sled values
//! instead of rewriting every page it touches.
//!
//! A checkpoint of `c` changed records would rewrite up to `c` whole pages
//! (pages hold tens to hundreds of records). While the deltas stay under
//! their bounds, a checkpoint writes only its changed records, in chunks,
//! under its generation; after the commit of the checkpoint that passes the
//! disk bound, every delta is merged into the pages in place (one page
//! rewrite per page touched since the last merge, `paged/merge.rs`), and
//! the chunks are garbage after the merge's own commit. Past the memory
//! bound alone, only the history's records held in memory are (a history
//! merge): the chunks stay current, and the open skips the history
//! records of those up to `Mhist_merged`. The bounds (`paged.rs`): the
//! history's deltas, held in memory, within `Config::page_delta_bytes`;
//! all of them not yet in pages, on disk, within
//! `DELTA_DISK_BYTES_PER_DEVICE` per device, if that is more.
//!
//! ```text
//! sled key    'Q' (1) | generation (u64 BE) | chunk number (u32 BE)
//! sled value  DELTA_VERSION (1) | record count (LEB128)
//!             then per record: key length (LEB128) | key
//!                              kind (1: 0 deleted, 1 value) [| value length (LEB128) | value]
//! ```
//!
//! Deltas of generations up to the committed one are current, applied in
//! generation and chunk order over the pages. Those of the append keyspace
//! (history) are also held in memory, so a history read never searches the
//! chunks; the others are read back from the chunks by a scan or a merge.

use std::collections::BTreeMap;

use super::frame;
use super::overlay::DiskOverlay;
use super::paged::{combine, get_field, is_append, open_block, put_varint};
use crate::error::{Error, Result};

mod frozen;
pub(crate) use frozen::Frozen;

/// Prefix byte of delta chunk keys.
pub(crate) const DELTA_PREFIX: u8 = b'Q';
const DELTA_VERSION: u8 = 1;

pub(crate) fn delta_key(gen: u64, chunk: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(DELTA_PREFIX);
    k.extend_from_slice(&gen.to_be_bytes());
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// The generation of a delta chunk key.
pub(crate) fn delta_gen(k: &[u8]) -> Option<u64> {
    match k {
        [DELTA_PREFIX, rest @ ..] if rest.len() == 12 => {
            Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
        }
        _ => None,
    }
}

/// The current deltas: every record changed since the last merge is in its
/// chunk on disk; only the append keyspace's (history, which `get` reads
/// on demand) is also held in memory. The rest is read back from the
/// chunks when it is needed: by a scan (at open) and by the merge, in
/// passes over slices of the pages (`paged.rs`), so the deltas a store may
/// gather before a merge are bounded by disk, not by memory.
#[derive(Default)]
pub(crate) struct Deltas {
    /// The latest value of each append-keyspace key changed since the
    /// last merge (joined with the earlier ones), in one arena: a bulk
    /// import records one per new device, and a map of owned keys and
    /// values cost the checkpointer two allocations and a B-tree insert
    /// each (DESIGN.md 13, step 15).
    pub(super) map: DiskOverlay,
    /// Bytes of keys and values recorded, every keyspace, less the append
    /// records a history merge has written into the pages (the disk
    /// bound: the bytes a full merge would fold in).
    pub(crate) bytes: usize,
    /// Bytes of the append records among them (the memory bound).
    pub(crate) memory_bytes: usize,
    /// Bytes of the other records, by keyspace prefix: the bytes a scan
    /// of that keyspace reads back from the chunks.
    pub(crate) disk_bytes_by_prefix: BTreeMap<u8, usize>,
    /// The chunks, in the order written, deleted by the next merge.
    pub(crate) chunks: Vec<Chunk>,
    /// While a merge runs: what it folds in (`frozen.rs`). `map` then
    /// holds only the append records of checkpoints beside it.
    pub(crate) frozen: Option<Frozen>,
}

/// One current delta chunk: its sled key and the keyspaces it holds
/// records of, so a scan or a read of one keyspace reads only the chunks
/// that hold some of it (at 10^7 devices of the harness's data, a scan of
/// the 506 bytes of `'Y'` deltas read all 272 chunks; DESIGN.md 13, step 7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) key: Vec<u8>,
    pub(crate) prefixes: Prefixes,
    /// The CRC-32s of its keys, lowest to highest: a pass over a slice of
    /// the pages reads only the chunks whose span meets it.
    pub(crate) span: HashSpan,
}

/// The lowest and highest CRC-32 of a chunk's keys (a key's page is the
/// top bits of its CRC-32, `paged::page_of`). A checkpoint writes its
/// records in CRC-32 order (`paged::write_delta`), so each of its chunks
/// spans a narrow slice of every keyspace's pages, and a merge's or a
/// scan's pass reads only the chunks of its slice (DESIGN.md 4.3, "Chunks
/// in hash order"). Kept in memory only: filled when a checkpoint encodes
/// the chunk and when the open loads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashSpan {
    pub(crate) lo: u32,
    pub(crate) hi: u32,
}

impl Default for HashSpan {
    /// The empty span (meets nothing).
    fn default() -> Self {
        HashSpan {
            lo: u32::MAX,
            hi: 0,
        }
    }
}

impl HashSpan {
    /// The span of records whose CRC-32s are `sorted`, in ascending order
    /// (a checkpoint's chunk, `paged::in_hash_order`): its first and last.
    pub(crate) fn of_sorted(sorted: &[u32]) -> HashSpan {
        match (sorted.first(), sorted.last()) {
            (Some(&lo), Some(&hi)) => HashSpan { lo, hi },
            _ => HashSpan::default(),
        }
    }

    /// Widens the span to hold `key` (a chunk read at open, in any order).
    pub(crate) fn add(&mut self, key: &[u8]) {
        let h = crc32fast::hash(key);
        self.lo = self.lo.min(h);
        self.hi = self.hi.max(h);
    }

    /// Whether a key whose CRC-32 is in `[lo, hi]` (as `lo` and `hi`
    /// given) may be in the span.
    pub(crate) fn meets(&self, lo: u32, hi: u32) -> bool {
        self.lo <= self.hi && self.lo <= hi && lo <= self.hi
    }
}

/// A set of keyspace prefixes (first key bytes): one bit per byte value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Prefixes([u64; 4]);

impl Prefixes {
    /// Adds the prefix of `key` (the empty key has none).
    pub(crate) fn add(&mut self, key: &[u8]) {
        if let Some(&p) = key.first() {
            if let Some(word) = self.0.get_mut(usize::from(p >> 6)) {
                *word |= 1 << (p & 63);
            }
        }
    }

    /// Whether a key of prefix `p` was added.
    pub(crate) fn has(&self, p: u8) -> bool {
        self.0
            .get(usize::from(p >> 6))
            .is_some_and(|word| word & (1 << (p & 63)) != 0)
    }
}

impl Deltas {
    /// Records a change: in the append keyspace (`paged::is_append`) it
    /// joins the earlier one in memory; elsewhere only its size is kept.
    pub(crate) fn record(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let size = key.len() + value.map_or(0, <[u8]>::len);
        self.bytes += size;
        if !is_append(key) {
            let prefix = key.first().copied().unwrap_or_default();
            *self.disk_bytes_by_prefix.entry(prefix).or_default() += size;
            return Ok(());
        }
        self.memory_bytes += size;
        match (value, self.map.get(key)) {
            (Some(v), Some((_, Some(old)))) => {
                let joined = combine(key, Some(old), v)?;
                self.map.insert(key, Some(&joined));
                self.map.compact_if_wasteful();
            }
            (v, _) => self.map.insert(key, v),
        }
        Ok(())
    }

    /// Bytes of the records kept only on disk.
    #[cfg(test)]
    pub(crate) fn disk_only_bytes(&self) -> usize {
        self.disk_bytes_by_prefix.values().sum()
    }

    /// Loads one chunk read from sled. With `append_merged` (a history
    /// merge has written its append records into the pages, `Mhist_merged`)
    /// those records are skipped: neither held nor counted.
    pub(crate) fn load(&mut self, key: &[u8], value: &[u8], append_merged: bool) -> Result<()> {
        let mut prefixes = Prefixes::default();
        let mut span = HashSpan::default();
        visit_chunk(key, value, &mut |k, v| {
            prefixes.add(k);
            span.add(k);
            if append_merged && is_append(k) {
                return Ok(());
            }
            self.record(k, v)
        })?;
        self.chunks.push(Chunk {
            key: key.to_vec(),
            prefixes,
            span,
        });
        Ok(())
    }
}

/// Calls `f` for each record of the chunk stored under `key`; errors name it.
pub(crate) fn visit_chunk(key: &[u8], value: &[u8], f: DeltaVisit<'_>) -> Result<()> {
    let location = || format!("delta chunk {key:02x?}");
    decode_chunk(&location, value, f)
}

/// Encodes records into delta chunks of about `chunk_bytes` each, each
/// with the prefixes of its records.
#[cfg(test)]
pub(crate) fn encode_chunks(
    records: &[(&[u8], Option<&[u8]>)],
    chunk_bytes: usize,
) -> Vec<(Vec<u8>, Prefixes)> {
    let mut out = Vec::new();
    let _ = for_each_chunk(records, chunk_bytes, &mut |chunk, prefixes, _| {
        out.push((chunk, prefixes));
        Ok(())
    });
    out
}

/// `encode_chunks`, handing each chunk to `f` as soon as it is encoded, so
/// that a checkpoint holds one encoded chunk at a time, not all of them.
pub(crate) fn for_each_chunk(
    records: &[(&[u8], Option<&[u8]>)],
    chunk_bytes: usize,
    f: &mut dyn FnMut(Vec<u8>, Prefixes, std::ops::Range<usize>) -> Result<()>,
) -> Result<()> {
    // One block and one LZ4 buffer for every chunk of the checkpoint: a
    // chunk is over glibc's mmap threshold, so a fresh buffer each time
    // maps and faults in new memory (DESIGN.md 4.3, "Buffers").
    let (mut block, mut packed) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < records.len() {
        let mut bytes = 0usize;
        let mut end = start;
        let mut prefixes = Prefixes::default();
        while let Some((k, v)) = records.get(end) {
            let next = k.len() + v.map_or(0, <[u8]>::len) + 8;
            if end > start && bytes + next > chunk_bytes {
                break;
            }
            prefixes.add(k);
            bytes += next;
            end += 1;
        }
        encode_chunk(records.get(start..end).unwrap_or_default(), &mut block);
        f(frame::seal_from(&block, &mut packed), prefixes, start..end)?;
        start = end;
    }
    Ok(())
}

/// Encodes `records` as a chunk's block into `out` (cleared first).
fn encode_chunk(records: &[(&[u8], Option<&[u8]>)], out: &mut Vec<u8>) {
    out.clear();
    out.push(DELTA_VERSION);
    put_varint(out, records.len() as u64);
    for (k, v) in records {
        put_varint(out, k.len() as u64);
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_varint(out, v.len() as u64);
                out.extend_from_slice(v);
            }
        }
    }
}

pub(crate) type DeltaVisit<'a> = &'a mut dyn FnMut(&[u8], Option<&[u8]>) -> Result<()>;

fn decode_chunk(location: &dyn Fn() -> String, value: &[u8], f: DeltaVisit<'_>) -> Result<()> {
    // Decompressed into the buffer this thread keeps (a merge reads back
    // hundreds of chunks, each over glibc's mmap threshold).
    frame::with_open(location, value, |b| decode_block(location, b, f))
}

fn decode_block(location: &dyn Fn() -> String, b: &[u8], f: DeltaVisit<'_>) -> Result<()> {
    let bad = |why: &str| Error::corrupt(location(), why.to_owned());
    let (count, mut at) = open_block(location, b, DELTA_VERSION, "delta chunk")?;
    for _ in 0..count {
        let key = get_field(b, &mut at).ok_or_else(|| bad("record key runs past the chunk"))?;
        let kind = *b.get(at).ok_or_else(|| bad("record kind missing"))?;
        at += 1;
        let value = match kind {
            0 => None,
            1 => {
                Some(get_field(b, &mut at).ok_or_else(|| bad("record value runs past the chunk"))?)
            }
            _ => return Err(bad("unknown record kind")),
        };
        f(key, value)?;
    }
    if at != b.len() {
        return Err(bad("bytes after the last record"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_split_and_reject_damage() {
        let v = vec![7u8; 100];
        let recs: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"Da", Some(&v)),
            (b"Db", None),
            (b"Dc", Some(b"")),
            (b"Dd", Some(&v)),
        ];
        let chunks = encode_chunks(&recs, 150);
        assert_eq!(chunks.len(), 2, "split by size");
        let mut d = Deltas::default();
        let mut back = Vec::new();
        for (i, (c, prefixes)) in chunks.iter().enumerate() {
            assert!(prefixes.has(b'D') && !prefixes.has(b'K'), "chunk {i}");
            let key = delta_key(3, i as u32);
            d.load(&key, c, false).unwrap();
            visit_chunk(&key, c, &mut |k, v| {
                back.push((k.to_vec(), v.map(<[u8]>::to_vec)));
                Ok(())
            })
            .unwrap();
        }
        let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = recs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(back, want, "every record, in order");
        // Device records are kept on disk only: counted, not held.
        assert!(d.map.is_empty());
        assert_eq!(d.bytes, 2 * 102 + 2 + 2);
        assert_eq!(d.disk_only_bytes(), d.bytes);
        assert_eq!(d.memory_bytes, 0);
        assert_eq!(d.chunks.len(), 2);
        assert_eq!(delta_gen(&delta_key(3, 1)), Some(3));
        let (one, _) = chunks.first().unwrap();
        for cut in 0..one.len() {
            let r = Deltas::default().load(b"Q", &one[..cut], false);
            assert!(r.is_err(), "a chunk cut at {cut} decoded");
        }
    }
}

//! Delta pages: what a checkpoint changed, appended as a few sled values
//! instead of rewriting every page it touches.
//!
//! A checkpoint of `c` changed records would rewrite up to `c` whole pages
//! (pages hold tens to hundreds of records). While the deltas stay under
//! `Config::page_delta_bytes`, a checkpoint writes only its changed records,
//! in chunks, under its generation; a later checkpoint that would pass the
//! bound merges every delta into the pages instead (one page rewrite per
//! page touched since the last merge) and deletes them in its commit.
//!
//! ```text
//! sled key    'Q' (1) | generation (u64 BE) | chunk number (u32 BE)
//! sled value  DELTA_VERSION (1) | record count (LEB128)
//!             then per record: key length (LEB128) | key
//!                              kind (1: 0 deleted, 1 value) [| value length (LEB128) | value]
//! ```
//!
//! Deltas of generations up to the committed one are current, applied in
//! generation and chunk order over the pages; they are also held in memory
//! (bounded by the same setting), so reads never search them on disk.

use std::collections::BTreeMap;

use super::frame;
use super::paged::{combine, get_field, is_append, open_block, put_varint};
use crate::error::{Error, Result};

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

/// The current deltas: the latest value (or deletion) of each logical key
/// changed since the last merge, and the chunks that hold them.
#[derive(Default)]
pub(crate) struct Deltas {
    pub(crate) map: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of keys and values recorded (what the bound counts).
    pub(crate) bytes: usize,
    /// sled keys of the chunks, deleted by the next merge.
    pub(crate) chunks: Vec<Vec<u8>>,
}

impl Deltas {
    /// Records a change: a later one of the same key wins, except in an
    /// append keyspace (`paged::is_append`), where it joins the earlier one.
    pub(crate) fn record(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        self.bytes += key.len() + value.map_or(0, <[u8]>::len);
        let value = match (value, self.map.get(key)) {
            (Some(v), Some(Some(old))) if is_append(key) => Some(combine(key, Some(old), v)?),
            (v, _) => v.map(<[u8]>::to_vec),
        };
        self.map.insert(key.to_vec(), value);
        Ok(())
    }

    /// Loads one chunk read from sled.
    pub(crate) fn load(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let location = || format!("delta chunk {key:02x?}");
        decode_chunk(&location, value, &mut |k, v| self.record(k, v))?;
        self.chunks.push(key.to_vec());
        Ok(())
    }
}

/// Encodes records into delta chunks of about `chunk_bytes` each.
pub(crate) fn encode_chunks(
    records: &[(&[u8], Option<&[u8]>)],
    chunk_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut bytes = 0usize;
        let mut end = start;
        while let Some((k, v)) = records.get(end) {
            let next = k.len() + v.map_or(0, <[u8]>::len) + 8;
            if end > start && bytes + next > chunk_bytes {
                break;
            }
            bytes += next;
            end += 1;
        }
        out.push(frame::seal(encode_chunk(
            records.get(start..end).unwrap_or_default(),
        )));
        start = end;
    }
    out
}

fn encode_chunk(records: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
    let mut out = vec![DELTA_VERSION];
    put_varint(&mut out, records.len() as u64);
    for (k, v) in records {
        put_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_varint(&mut out, v.len() as u64);
                out.extend_from_slice(v);
            }
        }
    }
    out
}

type DeltaVisit<'a> = &'a mut dyn FnMut(&[u8], Option<&[u8]>) -> Result<()>;

fn decode_chunk(location: &dyn Fn() -> String, value: &[u8], f: DeltaVisit<'_>) -> Result<()> {
    let bad = |why: &str| Error::corrupt(location(), why.to_owned());
    let b = frame::open(location, value)?;
    let b: &[u8] = &b;
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
        for (i, c) in chunks.iter().enumerate() {
            d.load(&delta_key(3, i as u32), c).unwrap();
        }
        assert_eq!(d.map.len(), 4);
        assert_eq!(d.map.get(&b"Db"[..]), Some(&None));
        assert_eq!(d.map.get(&b"Dd"[..]), Some(&Some(v.clone())));
        assert_eq!(delta_gen(&delta_key(3, 1)), Some(3));
        let one = chunks.first().unwrap();
        for cut in 0..one.len() {
            let r = Deltas::default().load(b"Q", &one[..cut]);
            assert!(r.is_err(), "a chunk cut at {cut} decoded");
        }
    }
}

//! The append keyspace's records held in memory, in slices of the hash
//! space (DESIGN.md 4.3, "History merges in slices").
//!
//! A key's slice is the top `HISTORY_SLICE_BITS` of its CRC-32, the bits
//! its page number starts with, so slice `i` holds the records of a run of
//! pages and the slices in order follow the pages in order. A merge
//! writes the pages of one slice, then lets that slice go with its bytes
//! (`Deltas::release_frozen_slice`): the memory the bound counts falls as
//! the merge goes, and checkpoints go on beside it once there is room.
//! With one map, the whole of it was held, and counted, until the last
//! page was written, and the writers waited for all of a history merge
//! (up to 4 s at 10^7 devices, 13 step 44).

use std::sync::Arc;

use crate::limits::HISTORY_SLICE_BITS;
use crate::store::overlay::{DiskOverlay, Overlaid};

/// Slices of the append records in memory.
pub(crate) const SLICES: usize = 1 << HISTORY_SLICE_BITS;

/// The slice of a key: the top bits of its CRC-32, which its page number
/// (`paged::page_of`) begins with.
pub(crate) fn slice_of(key: &[u8]) -> usize {
    (crc32fast::hash(key) >> (32 - HISTORY_SLICE_BITS)) as usize
}

/// The append records in memory, a `DiskOverlay` per slice, with the bytes
/// recorded into each (the memory bound's count: every record's key and
/// value as recorded, joins included).
pub(crate) struct Sliced {
    parts: Vec<DiskOverlay>,
    bytes: Vec<usize>,
}

impl Default for Sliced {
    fn default() -> Self {
        Sliced {
            parts: (0..SLICES).map(|_| DiskOverlay::default()).collect(),
            bytes: vec![0; SLICES],
        }
    }
}

impl Sliced {
    /// The latest record of `key`, with the map's own copy of the key.
    pub(crate) fn get(&self, key: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
        self.parts.get(slice_of(key))?.get(key)
    }

    /// Records `key`'s value over any earlier one.
    pub(crate) fn insert(&mut self, key: &[u8], value: Option<&[u8]>) {
        if let Some(part) = self.parts.get_mut(slice_of(key)) {
            part.insert(key, value);
        }
    }

    /// Counts `bytes` recorded for `key` in its slice.
    pub(crate) fn count(&mut self, key: &[u8], bytes: usize) {
        if let Some(n) = self.bytes.get_mut(slice_of(key)) {
            *n += bytes;
        }
    }

    /// Adds the bytes `other` counted, slice by slice, to this map's.
    pub(crate) fn add_counts(&mut self, other: &Sliced) {
        for (n, more) in self.bytes.iter_mut().zip(&other.bytes) {
            *n += more;
        }
    }

    /// `DiskOverlay::compact_if_wasteful` on `key`'s slice.
    pub(crate) fn compact_if_wasteful(&mut self, key: &[u8]) {
        if let Some(part) = self.parts.get_mut(slice_of(key)) {
            part.compact_if_wasteful();
        }
    }

    /// Every key's latest record, slice by slice.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.parts.iter().flat_map(DiskOverlay::iter)
    }

    /// Whether no key is recorded.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.iter().all(DiskOverlay::is_empty)
    }

    /// Keys recorded.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.parts.iter().map(DiskOverlay::len).sum()
    }

    /// Every record of a key under `prefix`, in key order.
    pub(crate) fn in_key_order(&self, prefix: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut all: Vec<_> = self
            .parts
            .iter()
            .flat_map(|p| p.in_key_order(prefix))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// Every record of a key under `prefix`, slice by slice, each in the
    /// order it was written.
    pub(crate) fn in_written_order(&self, prefix: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
        self.parts
            .iter()
            .flat_map(|p| p.in_written_order(prefix))
            .collect()
    }

    /// The slices, shrunk to their records (they will not grow again), as
    /// a merge shares them, with their counted bytes.
    pub(crate) fn into_frozen(self) -> (Vec<Arc<DiskOverlay>>, Vec<usize>) {
        let parts = self
            .parts
            .into_iter()
            .map(|mut p| {
                p.shrink_to_fit();
                Arc::new(p)
            })
            .collect();
        (parts, self.bytes)
    }

    /// A map of `parts` (a merge's slices, in order) and their counted
    /// bytes; a missing slice is empty.
    pub(crate) fn from_parts(parts: Vec<DiskOverlay>, bytes: Vec<usize>) -> Sliced {
        let mut out = Sliced::default();
        for (slot, part) in out.parts.iter_mut().zip(parts) {
            *slot = part;
        }
        for (slot, n) in out.bytes.iter_mut().zip(bytes) {
            *slot = n;
        }
        out
    }
}

impl Overlaid for Sliced {
    fn record(&self, key: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
        self.get(key)
    }

    fn by_key(&self, prefix: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
        self.in_key_order(prefix)
    }

    fn by_place(&self, prefix: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
        self.in_written_order(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_in_the_slice_its_page_begins_with() {
        // 2^14 pages (the history's): the page's top bits are the slice.
        for i in 0..1_000u32 {
            let key = format!("H{i:05}").into_bytes();
            let page = crc32fast::hash(&key) >> (32 - 14);
            assert_eq!(slice_of(&key), (page >> (14 - HISTORY_SLICE_BITS)) as usize);
        }
    }

    #[test]
    fn records_read_back_across_slices_in_key_order_and_counted_by_slice() {
        let mut m = Sliced::default();
        assert!(m.is_empty());
        let keys: Vec<Vec<u8>> = (0..200u32)
            .map(|i| format!("H{i:05}").into_bytes())
            .collect();
        for k in &keys {
            m.insert(k, Some(b"v1"));
            m.count(k, k.len() + 2);
        }
        m.insert(&keys[7], None);
        assert_eq!(m.len(), 200);
        assert_eq!(m.get(&keys[7]), Some((&keys[7][..], None)));
        assert_eq!(m.get(&keys[8]), Some((&keys[8][..], Some(&b"v1"[..]))));
        assert_eq!(m.get(b"H99999"), None);
        let ordered: Vec<&[u8]> = m.in_key_order(b"H").into_iter().map(|r| r.0).collect();
        let want: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        assert_eq!(ordered, want);
        assert_eq!(m.in_written_order(b"H").len(), 200);
        assert_eq!(m.iter().count(), 200);
        let (parts, bytes) = m.into_frozen();
        assert_eq!(bytes.iter().sum::<usize>(), 200 * 8);
        assert!(parts.iter().filter(|p| !p.is_empty()).count() > SLICES / 2);
        for (i, p) in parts.iter().enumerate() {
            assert!(p.iter().all(|(k, _)| slice_of(k) == i), "slice {i}");
        }
    }
}

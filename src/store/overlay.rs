//! Delta records held in one arena: each record's key and value are
//! appended to a single buffer and a hash table over it finds a key's
//! latest record. Used for the records a scan or a merge reads back from
//! disk (`paged.rs`, `paged/merge.rs`) and for the append keyspace's
//! deltas the store holds in memory (`delta.rs`).
//!
//! A map of owned keys and values cost two allocations and two frees per
//! record: at 10^6 devices the open read 417,402 known-person records back
//! this way, and glibc's malloc and free were about a third of that step.
//! A record that replaces an earlier one of the same key leaves the
//! earlier bytes in the arena until the overlay is dropped, so the arena
//! holds at most the bytes of every wanted record read: the same bound a
//! scan pass already keeps (`PagedStore::delta_passes`).

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Where one record lies in the arena: its key, then its value (absent for
/// a deletion).
#[derive(Clone, Copy)]
struct Span {
    at: usize,
    key_len: usize,
    value_len: Option<usize>,
}

/// Delta records: each key's latest value (a deletion is `None`).
#[derive(Default)]
pub(super) struct DiskOverlay {
    arena: Vec<u8>,
    table: HashTable<Span>,
    hasher: DefaultHashBuilder,
    /// Bytes of the arena that some key's latest record holds; the rest
    /// is replaced records (`compact_if_wasteful`).
    live_bytes: usize,
}

/// An arena is rewritten once its replaced records pass its live ones and
/// this many bytes: at most about twice the live bytes stay held.
const OVERLAY_COMPACT_MIN_BYTES: usize = 1 << 20;

impl DiskOverlay {
    fn key_of(&self, s: Span) -> &[u8] {
        self.arena.get(s.at..s.at + s.key_len).unwrap_or_default()
    }

    fn value_of(&self, s: Span) -> Option<&[u8]> {
        let start = s.at + s.key_len;
        s.value_len
            .map(|n| self.arena.get(start..start + n).unwrap_or_default())
    }

    /// Records `key`'s value; a later record of a key replaces the earlier.
    pub(super) fn insert(&mut self, key: &[u8], value: Option<&[u8]>) {
        let span = Span {
            at: self.arena.len(),
            key_len: key.len(),
            value_len: value.map(<[u8]>::len),
        };
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value.unwrap_or_default());
        self.live_bytes += span_bytes(span);
        let h = self.hasher.hash_one(key);
        let (arena, hasher) = (&self.arena, &self.hasher);
        let key_at = |s: &Span| arena.get(s.at..s.at + s.key_len).unwrap_or_default();
        match self.table.find_mut(h, |s| key_at(s) == key) {
            Some(old) => {
                self.live_bytes -= span_bytes(*old);
                *old = span;
            }
            None => {
                self.table
                    .insert_unique(h, span, |s| hasher.hash_one(key_at(s)));
            }
        }
    }

    /// Rewrites the arena with only the latest records when the replaced
    /// ones take more than the live ones (and `OVERLAY_COMPACT_MIN_BYTES`):
    /// a key recorded many times (the history of a token changed at every
    /// checkpoint) then holds one copy, not one per record.
    pub(super) fn compact_if_wasteful(&mut self) {
        let waste = self.arena.len().saturating_sub(self.live_bytes);
        if waste <= self.live_bytes.max(OVERLAY_COMPACT_MIN_BYTES) {
            return;
        }
        let mut fresh = DiskOverlay::default();
        fresh.arena.reserve(self.live_bytes);
        for (k, v) in self.iter() {
            fresh.insert(k, v);
        }
        *self = fresh;
    }

    /// An empty overlay whose arena holds `bytes` before it grows: a pass
    /// that knows about how much it reads back sizes it once, instead of
    /// doubling it (each doubling held the old arena and one twice its
    /// size at once: 192 MiB for a 64 MiB pass, DESIGN.md 4.3). The
    /// passes themselves `reset` one overlay.
    #[cfg(test)]
    pub(super) fn with_arena_bytes(bytes: usize) -> DiskOverlay {
        DiskOverlay {
            arena: Vec::with_capacity(bytes),
            ..DiskOverlay::default()
        }
    }

    /// Empties the overlay for the next pass, keeping its arena (grown to
    /// hold `bytes`) and its table: a merge's or a scan's passes each read
    /// back about the same bytes, and memory that is kept is not mapped
    /// and faulted in again (glibc serves these sizes from mmap under the
    /// harness's threshold; DESIGN.md 4.3, "Buffers").
    pub(super) fn reset(&mut self, bytes: usize) {
        self.arena.clear();
        self.arena.reserve(bytes);
        self.table.clear();
        self.live_bytes = 0;
    }

    /// Gives back the arena's and the table's room for growth (an overlay
    /// that will not grow again: a merge's frozen map, whose arena was
    /// up to twice its bytes after the last doubling).
    pub(super) fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table.shrink_to_fit(|s| {
            hasher.hash_one(arena.get(s.at..s.at + s.key_len).unwrap_or_default())
        });
    }

    /// Whether no key is recorded.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Every key's latest record, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.table
            .iter()
            .map(|&s| (self.key_of(s), self.value_of(s)))
    }

    /// The latest record of `key`, with the overlay's own copy of the key.
    pub(super) fn get(&self, key: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
        let h = self.hasher.hash_one(key);
        let s = *self.table.find(h, |s| self.key_of(*s) == key)?;
        Some((self.key_of(s), self.value_of(s)))
    }

    /// Keys recorded.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// The latest record of every key under `prefix`, in no set order.
    fn under(&self, prefix: &[u8]) -> Vec<Span> {
        let under = |s: &&Span| self.key_of(**s).starts_with(prefix);
        self.table.iter().filter(under).copied().collect()
    }

    fn records(&self, spans: Vec<Span>) -> Vec<(&[u8], Option<&[u8]>)> {
        let record = |s: Span| (self.key_of(s), self.value_of(s));
        spans.into_iter().map(record).collect()
    }

    /// Every record of a key under `prefix`, in key order.
    pub(super) fn in_key_order(&self, prefix: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut spans = self.under(prefix);
        spans.sort_unstable_by(|a, b| self.key_of(*a).cmp(self.key_of(*b)));
        self.records(spans)
    }

    /// Every record of a key under `prefix`, in the order of their places
    /// in the arena: the order the latest records were read in (the
    /// chunks' order) for an overlay never compacted, as a scan's passes
    /// are (`compact_if_wasteful` serves the history's map only). For a
    /// scan that does not need key order (the open's loads). Sorting by
    /// place in the arena compares integers; sorting by key compared the
    /// keys' bytes, spread over the arena: 1.2 s of the known persons' load
    /// at 10^7 (DESIGN.md 6, "The load reads ahead").
    pub(super) fn in_written_order(&self, prefix: &[u8]) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut spans = self.under(prefix);
        spans.sort_unstable_by_key(|s| s.at);
        self.records(spans)
    }
}

fn span_bytes(s: Span) -> usize {
    s.key_len + s.value_len.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The open's loads take the records in the order their latest
    /// versions were read, the same set as in key order.
    #[test]
    fn written_order_is_the_order_of_the_latest_records() {
        let mut o = DiskOverlay::default();
        o.insert(b"Kc", Some(b"1"));
        o.insert(b"Ka", None);
        o.insert(b"Fz", Some(b""));
        o.insert(b"Kb", Some(b"2"));
        o.insert(b"Kc", Some(b"3"));
        let written = o.in_written_order(b"K");
        assert_eq!(
            written,
            vec![
                (&b"Ka"[..], None),
                (&b"Kb"[..], Some(&b"2"[..])),
                (&b"Kc"[..], Some(&b"3"[..])),
            ]
        );
        o.insert(b"Ka", Some(b"4"));
        let keys: Vec<_> = o.in_written_order(b"K").into_iter().map(|r| r.0).collect();
        assert_eq!(keys, vec![&b"Kb"[..], &b"Kc"[..], &b"Ka"[..]]);
        let mut sorted = o.in_written_order(&[]);
        sorted.sort_unstable();
        assert_eq!(sorted, o.in_key_order(&[]));
    }

    #[test]
    fn the_latest_record_of_a_key_wins_and_scans_in_key_order() {
        let mut o = DiskOverlay::default();
        o.insert(b"Kb", Some(b"1"));
        o.insert(b"Ka", None);
        o.insert(b"Kb", Some(b"22"));
        o.insert(b"Fz", Some(b""));
        o.insert(b"Ka", Some(b"3"));
        assert_eq!(o.len(), 3);
        assert_eq!(o.get(b"Kb"), Some((&b"Kb"[..], Some(&b"22"[..]))));
        assert_eq!(o.get(b"Fz"), Some((&b"Fz"[..], Some(&b""[..]))));
        assert_eq!(o.get(b"Kc"), None);
        let k: Vec<_> = o.in_key_order(b"K");
        assert_eq!(
            k,
            vec![
                (&b"Ka"[..], Some(&b"3"[..])),
                (&b"Kb"[..], Some(&b"22"[..]))
            ]
        );
        o.insert(b"Kb", None);
        assert_eq!(o.get(b"Kb"), Some((&b"Kb"[..], None)));
        assert_eq!(o.in_key_order(b"F"), vec![(&b"Fz"[..], Some(&b""[..]))]);
    }

    /// A key recorded again and again (a token's history joined at every
    /// checkpoint) holds its latest record only, once the replaced ones
    /// pass the live ones: the arena stays within about twice the live
    /// bytes, and every key keeps its latest value.
    #[test]
    fn replaced_records_are_dropped_once_they_outweigh_the_live_ones() {
        let mut o = DiskOverlay::default();
        let value = vec![7u8; 4096];
        let mut most = 0;
        for round in 0..2_000u32 {
            let v = &value[..(round as usize % 4096) + 1];
            o.insert(b"Ha", Some(v));
            o.insert(&round.to_be_bytes(), Some(b"x"));
            o.compact_if_wasteful();
            most = most.max(o.arena.len());
            assert_eq!(o.get(b"Ha"), Some((&b"Ha"[..], Some(v))), "round {round}");
        }
        // Without the rewrite the arena would hold every value: about 4 MB.
        let live = o.live_bytes;
        assert!(
            most <= 2 * live.max(OVERLAY_COMPACT_MIN_BYTES) + 4096 + 8,
            "{most} > 2 x {live}"
        );
        assert_eq!(o.len(), 2_001);
        for round in 0..2_000u32 {
            assert_eq!(
                o.get(&round.to_be_bytes()).map(|(_, v)| v),
                Some(Some(&b"x"[..]))
            );
        }
        let summed: usize = o
            .iter()
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
            .sum();
        assert_eq!(summed, live, "live bytes are the latest records' bytes");
    }

    /// `reset` empties the overlay but keeps its arena and table: the
    /// next pass's records land in the same allocation, and none of the
    /// records before is found again.
    #[test]
    fn a_reset_overlay_keeps_its_memory_and_forgets_its_records() {
        let mut o = DiskOverlay::default();
        o.reset(20_000);
        for i in 0..1_000u32 {
            o.insert(&i.to_be_bytes(), Some(&i.to_le_bytes()));
        }
        let (arena, table) = (o.arena.as_ptr(), o.table.capacity());
        assert!(table >= 1_000);
        o.reset(20_000);
        assert!(o.is_empty());
        assert_eq!(o.live_bytes, 0);
        for i in 1_000..1_500u32 {
            o.insert(&i.to_be_bytes(), None);
        }
        assert_eq!(o.arena.as_ptr(), arena, "the arena was kept");
        assert_eq!(o.table.capacity(), table, "the table was kept");
        assert_eq!(o.len(), 500);
        assert_eq!(
            o.get(&7u32.to_be_bytes()),
            None,
            "a record before the reset"
        );
        let k = 1_200u32.to_be_bytes();
        assert_eq!(o.get(&k), Some((&k[..], None)));
        // Asked for more than it holds, the arena grows to hold it.
        o.reset(1 << 20);
        assert!(o.arena.capacity() >= 1 << 20);
        assert!(o.is_empty());
    }

    /// A pass's arena sized for its share is never reallocated while its
    /// records fit (one buffer, not an old and a new one at once), grows
    /// like any other past it, and `shrink_to_fit` keeps every record.
    #[test]
    fn a_sized_arena_is_allocated_once_and_shrinks_keeping_every_record() {
        let mut o = DiskOverlay::with_arena_bytes(10_000);
        let first = o.arena.as_ptr();
        for i in 0..1_000u32 {
            o.insert(&i.to_be_bytes(), Some(&i.to_le_bytes()[..2]));
        }
        assert_eq!(o.arena.len(), 6_000);
        assert_eq!((o.arena.as_ptr(), o.arena.capacity()), (first, 10_000));
        for i in 1_000..3_000u32 {
            o.insert(&i.to_be_bytes(), Some(&i.to_le_bytes()[..2]));
        }
        assert!(o.arena.capacity() >= 18_000);
        o.shrink_to_fit();
        assert_eq!(o.arena.capacity(), 18_000);
        for i in 0..3_000u32 {
            let want = i.to_le_bytes();
            assert_eq!(
                o.get(&i.to_be_bytes()).map(|(_, v)| v),
                Some(Some(&want[..2]))
            );
        }
    }

    /// Enough keys to grow the table many times: every key keeps its
    /// latest record through the rehashes.
    #[test]
    fn growth_keeps_every_key() {
        let mut o = DiskOverlay::default();
        for round in 0..2u32 {
            for i in 0..20_000u32 {
                let v = (i + round).to_be_bytes();
                o.insert(
                    &i.to_be_bytes(),
                    (i % 7 != 0 || round == 0).then_some(&v[..]),
                );
            }
        }
        assert_eq!(o.len(), 20_000);
        for i in 0..20_000u32 {
            let want = (i % 7 != 0).then(|| (i + 1).to_be_bytes());
            let (k, v) = o.get(&i.to_be_bytes()).expect("a recorded key");
            assert_eq!(k, i.to_be_bytes());
            assert_eq!(v, want.as_ref().map(|w| &w[..]));
        }
        assert_eq!(o.in_key_order(&[]).len(), 20_000);
    }
}

//! An open-addressing index from a 64-bit hash to a `u32` id (a slot or
//! person id), where each entry holds a 32-bit tag of the hash beside the
//! id: a lookup reads one entry array, and touches the record only when the
//! tag matches (DESIGN.md 6).
//!
//! hashbrown's `HashTable<u32>` keeps its control bytes and its buckets in
//! two regions of one allocation: at 10^7 devices, a point read missed the
//! cache (and the TLB) in both before it reached the slot. Here an entry is
//! `tag (u32) << 32 | (id + 1)`, 0 is an empty entry, and probing is linear,
//! so a lookup is one cache line in the common case.
//!
//! The tag is the hash's top 32 bits, and an entry's home is the tag's top
//! `bits` bits: the table grows without hashing any key again (it never
//! reads a slot), and a tag match with another id is a true hash collision
//! of at least `bits` bits, which the caller's `eq` settles. Removal shifts
//! the following run back (no tombstones), so a lookup's probe ends at the
//! first empty entry.
//!
//! An index made `with_hints` keeps a `u32` beside each entry, in a second
//! array of the same length, moved with its entry. The person index keeps
//! there the id of the person's newest device, so `most_recent` can ask
//! for that device's slot while it still compares the person's name: the
//! two loads overlap instead of following each other. A hint is advice
//! only: a stale one costs a wasted prefetch, never a wrong answer
//! (DESIGN.md 6, "A person's entry hints at their newest device").

/// The fullest the table gets, as `len / capacity <= MAX_LOAD_NUM /
/// MAX_LOAD_DEN`: linear probing then takes about 1.9 probes to find a
/// present key and 5.4 to miss, mostly in one cache line (8 entries).
const MAX_LOAD_NUM: usize = 7;
const MAX_LOAD_DEN: usize = 10;
/// Smallest table (entries).
const MIN_BITS: u32 = 4;
/// Largest table: 2^32 entries (32 GiB) on 64-bit targets. The home
/// position must fit in the 32-bit tag; and since ids are distinct and
/// below `u32::MAX`, a table of 2^32 entries always has an empty one, so a
/// probe always ends (past the load bound it only gets slower).
const MAX_BITS: u32 = if usize::BITS >= 64 {
    32
} else {
    usize::BITS - 4
};

/// How many entries ahead `set_all_hints` asks for what it will read.
const SET_ALL_AHEAD: usize = 16;

/// What an entry's hint reads before anything set it.
pub(crate) const NO_HINT: u32 = u32::MAX;

/// A hash-to-id index; the caller keeps the keys (in its slots) and
/// passes each key's hash, always from the same hasher.
#[derive(Default)]
pub(crate) struct IdIndex {
    /// `tag << 32 | (id + 1)`, or 0 when empty; the length is 0 or
    /// `1 << bits`.
    entries: Vec<u64>,
    /// `hints[i]` is the hint of `entries[i]` (`NO_HINT` when none) when
    /// the index was made `with_hints`; empty otherwise.
    hints: Vec<u32>,
    hinted: bool,
    bits: u32,
    len: usize,
}

fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

fn pack(tag: u32, id: u32) -> u64 {
    (u64::from(tag) << 32) | (u64::from(id) + 1)
}

/// `(tag, id)` of a full entry.
fn unpack(e: u64) -> (u32, u32) {
    ((e >> 32) as u32, (e as u32).wrapping_sub(1))
}

impl IdIndex {
    /// An empty index that keeps a hint beside each entry.
    pub(crate) fn with_hints() -> IdIndex {
        IdIndex {
            hinted: true,
            ..IdIndex::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.entries.len().wrapping_sub(1)
    }

    /// Where an entry of `tag` belongs.
    fn home(&self, tag: u32) -> usize {
        match self.bits {
            0 => 0,
            b => (tag >> (32 - b)) as usize,
        }
    }

    /// The id whose entry has `hash`'s tag and for which `eq` is true.
    pub(crate) fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.find_hinted(hash, |_| (), eq)
    }

    /// `find`, handing each candidate's hint (`NO_HINT` when it has none)
    /// to `hinted` before `eq` compares the candidate, so that the caller
    /// can start loading what the hint names while `eq` reads its key.
    pub(crate) fn find_hinted(
        &self,
        hash: u64,
        mut hinted: impl FnMut(u32),
        mut eq: impl FnMut(u32) -> bool,
    ) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let tag = tag_of(hash);
        let mask = self.mask();
        let mut i = self.home(tag);
        // The table is never full, so the probe meets an empty entry.
        for _ in 0..self.entries.len() {
            let e = *self.entries.get(i)?;
            if e == 0 {
                return None;
            }
            let (t, id) = unpack(e);
            if t == tag {
                hinted(self.hints.get(i).copied().unwrap_or(NO_HINT));
                if eq(id) {
                    return Some(id);
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Where the entry of `id` under `hash` is, if there is one.
    fn position(&self, hash: u64, id: u32) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let want = pack(tag_of(hash), id);
        let mask = self.mask();
        let mut i = self.home(tag_of(hash));
        for _ in 0..self.entries.len() {
            match self.entries.get(i).copied() {
                Some(e) if e == want => return Some(i),
                Some(0) | None => return None,
                Some(_) => i = (i + 1) & mask,
            }
        }
        None
    }

    /// Sets the hint of `id`'s entry under `hash`; false if the index keeps
    /// no hints or has no such entry.
    pub(crate) fn set_hint(&mut self, hash: u64, id: u32, hint: u32) -> bool {
        let Some(i) = self.position(hash, id) else {
            return false;
        };
        match self.hints.get_mut(i) {
            Some(h) => {
                *h = hint;
                true
            }
            None => false,
        }
    }

    /// Sets every entry's hint to `hint_of` its id, in entry order, so the
    /// hints are written in one pass (the open calls it once); `ahead` is
    /// handed each id `SET_ALL_AHEAD` entries before `hint_of` is, to start
    /// loading what `hint_of` will read.
    pub(crate) fn set_all_hints(
        &mut self,
        mut ahead: impl FnMut(u32),
        mut hint_of: impl FnMut(u32) -> u32,
    ) {
        // `later` keeps the same distance: one place ahead per place done
        // (a filter on full entries would run further ahead at every empty
        // one, and end its prefetches long before the pass).
        let mut later = self.entries.iter().skip(SET_ALL_AHEAD);
        for (&e, h) in self.entries.iter().zip(self.hints.iter_mut()) {
            if let Some(&next) = later.next().filter(|&&next| next != 0) {
                ahead(unpack(next).1);
            }
            if e != 0 {
                *h = hint_of(unpack(e).1);
            }
        }
    }

    /// The ids in entry order with their hints (for the integrity check
    /// and tests).
    pub(crate) fn hinted_ids(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.entries
            .iter()
            .zip(self.hints.iter())
            .filter(|(e, _)| **e != 0)
            .map(|(&e, &h)| (unpack(e).1, h))
    }

    /// Starts loading the entry where a lookup of `hash` begins
    /// (`prefetch`: the open's load asks a few records ahead).
    pub(crate) fn prefetch(&self, hash: u64) {
        if let Some(e) = self.entries.get(self.home(tag_of(hash))) {
            crate::prefetch::prefetch(e);
        }
    }

    /// The first id whose entry has `hash`'s tag: the record a lookup of
    /// `hash` will most likely compare (a hint only; `find` decides).
    pub(crate) fn first_with_tag(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// Adds `id` under `hash`; the caller knows no equal key is present.
    /// `id` must be below `u32::MAX`.
    pub(crate) fn insert_unique(&mut self, hash: u64, id: u32) {
        debug_assert!(id != u32::MAX, "u32::MAX is no id");
        self.reserve(1);
        self.place(pack(tag_of(hash), id), NO_HINT);
        self.len += 1;
    }

    /// Puts a full entry (and its hint, when the index keeps hints) in the
    /// first empty place of its probe.
    fn place(&mut self, e: u64, hint: u32) {
        let mask = self.mask();
        let mut i = self.home(unpack(e).0);
        for _ in 0..self.entries.len() {
            match self.entries.get_mut(i) {
                Some(slot) if *slot == 0 => {
                    *slot = e;
                    // An empty entry's hint is already `NO_HINT` (a new
                    // array's, or reset by `shift_back`): a new entry
                    // writes no second line.
                    if hint != NO_HINT {
                        if let Some(h) = self.hints.get_mut(i) {
                            *h = hint;
                        }
                    }
                    debug_assert!(self.hints.get(i).is_none_or(|&h| h == hint));
                    return;
                }
                Some(_) => i = (i + 1) & mask,
                None => break,
            }
        }
        debug_assert!(false, "an index with no empty entry");
    }

    /// Removes the entry of `id` under `hash`; false if there is none.
    pub(crate) fn remove(&mut self, hash: u64, id: u32) -> bool {
        let Some(i) = self.position(hash, id) else {
            return false;
        };
        self.shift_back(i);
        self.len -= 1;
        true
    }

    /// Empties entry `hole` and moves back each later entry of its run
    /// that may live there, so that no probe crosses an empty entry before
    /// its key.
    fn shift_back(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        // A run ends at an empty entry, and the table always has one.
        for _ in 0..self.entries.len() {
            j = (j + 1) & mask;
            let e = self.entries.get(j).copied().unwrap_or(0);
            if e == 0 {
                break;
            }
            let home = self.home(unpack(e).0);
            // The entry at j may move to the hole when its home is not
            // cyclically within (hole, j].
            let within = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !within {
                if let Some(h) = self.entries.get_mut(hole) {
                    *h = e;
                }
                if let Some(&moved) = self.hints.get(j) {
                    if let Some(h) = self.hints.get_mut(hole) {
                        *h = moved;
                    }
                }
                hole = j;
            }
        }
        if let Some(h) = self.entries.get_mut(hole) {
            *h = 0;
        }
        if let Some(h) = self.hints.get_mut(hole) {
            *h = NO_HINT;
        }
    }

    /// Makes room for `more` entries beyond the current ones.
    pub(crate) fn reserve(&mut self, more: usize) {
        let need = self.len.saturating_add(more);
        if need.saturating_mul(MAX_LOAD_DEN) <= self.entries.len().saturating_mul(MAX_LOAD_NUM) {
            return;
        }
        let mut bits = self.bits.max(MIN_BITS);
        while bits < MAX_BITS
            && need.saturating_mul(MAX_LOAD_DEN) > (1usize << bits).saturating_mul(MAX_LOAD_NUM)
        {
            bits += 1;
        }
        // At `MAX_BITS` the table only fills further (it cannot be full).
        if bits != self.bits {
            self.rebuild(bits);
        }
    }

    /// Moves every entry into a table of `1 << bits` entries.
    fn rebuild(&mut self, bits: u32) {
        let old = std::mem::replace(&mut self.entries, vec![0; 1usize << bits]);
        let old_hints = if self.hinted {
            std::mem::replace(&mut self.hints, vec![NO_HINT; 1usize << bits])
        } else {
            Vec::new()
        };
        // Before the first write, so the entries fault in as huge pages.
        super::huge::advise(&self.entries);
        super::huge::advise(&self.hints);
        self.bits = bits;
        let hints = old_hints.into_iter().chain(std::iter::repeat(NO_HINT));
        for (e, hint) in old.into_iter().zip(hints).filter(|&(e, _)| e != 0) {
            self.place(e, hint);
        }
    }

    /// Bytes of the entry and hint arrays (for the memory report).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<u64>()
            + self.hints.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Every entry sits at its home or after a run of full entries from it.
    fn assert_probe_invariant(ix: &IdIndex) {
        let n = ix.entries.len();
        let mut full = 0;
        for (i, &e) in ix.entries.iter().enumerate() {
            if e == 0 {
                continue;
            }
            full += 1;
            let mut k = ix.home(unpack(e).0);
            while k != i {
                assert_ne!(ix.entries[k], 0, "empty entry between home {k} and {i}");
                k = (k + 1) % n;
            }
        }
        assert_eq!(full, ix.len);
    }

    #[test]
    fn find_insert_remove() {
        let mut ix = IdIndex::default();
        assert_eq!(ix.find(7, |_| true), None);
        ix.insert_unique(0xdead_beef_0000_0001, 3);
        ix.insert_unique(0x1234_5678_0000_0002, 4);
        assert_eq!(ix.find(0xdead_beef_0000_0001, |id| id == 3), Some(3));
        // The tag is the hash's top half: the same top half finds the
        // entry, and `eq` decides.
        assert_eq!(ix.find(0xdead_beef_ffff_ffff, |_| true), Some(3));
        assert_eq!(ix.find(0xdead_beef_0000_0001, |_| false), None);
        assert!(ix.remove(0xdead_beef_0000_0001, 3));
        assert!(!ix.remove(0xdead_beef_0000_0001, 3));
        assert_eq!(ix.find(0xdead_beef_0000_0001, |_| true), None);
        assert_eq!(ix.find(0x1234_5678_0000_0002, |id| id == 4), Some(4));
        assert_eq!(ix.len(), 1);
    }

    /// The load's read-ahead hint names the id a lookup would compare
    /// first (the earliest of a tag's entries in probe order), and nothing
    /// for a tag no entry has; asking ahead changes nothing.
    #[test]
    fn the_hint_names_the_first_entry_of_a_tag() {
        let mut ix = IdIndex::default();
        assert_eq!(ix.first_with_tag(0xdead_beef_0000_0001), None);
        ix.prefetch(0xdead_beef_0000_0001);
        ix.insert_unique(0xdead_beef_0000_0001, 3);
        ix.insert_unique(0xdead_beef_0000_0002, 5);
        ix.insert_unique(0x1234_5678_0000_0002, 4);
        assert_eq!(ix.first_with_tag(0xdead_beef_ffff_ffff), Some(3));
        assert_eq!(ix.first_with_tag(0x1234_5678_0000_0000), Some(4));
        assert_eq!(ix.first_with_tag(0x0bad_cafe_0000_0000), None);
        ix.prefetch(0xdead_beef_0000_0001);
        assert_eq!(ix.find(0xdead_beef_0000_0002, |id| id == 5), Some(5));
        assert!(ix.remove(0xdead_beef_0000_0001, 3));
        assert_eq!(ix.first_with_tag(0xdead_beef_0000_0001), Some(5));
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn id_zero_and_the_largest_id_are_not_empty_entries() {
        let mut ix = IdIndex::default();
        ix.insert_unique(0, 0);
        ix.insert_unique(u64::MAX, u32::MAX - 1);
        assert_eq!(ix.find(0, |id| id == 0), Some(0));
        assert_eq!(ix.find(u64::MAX, |_| true), Some(u32::MAX - 1));
        assert_probe_invariant(&ix);
    }

    #[test]
    fn colliding_homes_survive_removal_from_the_middle_of_a_run() {
        let mut ix = IdIndex::default();
        ix.reserve(8);
        // Eight entries with one home; removing each in turn keeps the rest.
        let h = |k: u64| (0xabcd_0000u64 << 32) | k;
        for k in 0..8u32 {
            ix.insert_unique(h(u64::from(k)) ^ (u64::from(k) << 32), k);
        }
        let mut removed = Vec::new();
        for gone in [3u32, 0, 7, 5] {
            assert!(ix.remove(h(u64::from(gone)) ^ (u64::from(gone) << 32), gone));
            removed.push(gone);
            assert_probe_invariant(&ix);
            for k in 0..8u32 {
                let found = ix.find(h(u64::from(k)) ^ (u64::from(k) << 32), |id| id == k);
                assert_eq!(
                    found.is_some(),
                    !removed.contains(&k),
                    "id {k} after removing {gone}"
                );
            }
        }
    }

    #[test]
    fn growth_keeps_every_entry_and_the_load_bound() {
        let mut ix = IdIndex::default();
        for id in 0..10_000u32 {
            let h = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            ix.insert_unique(h, id);
            assert!(ix.len() * MAX_LOAD_DEN <= ix.entries.len() * MAX_LOAD_NUM);
        }
        assert_probe_invariant(&ix);
        for id in 0..10_000u32 {
            let h = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(ix.find(h, |x| x == id), Some(id));
        }
        assert_eq!(ix.heap_bytes(), 16_384 * 8);
    }

    proptest! {
        /// Any sequence of inserts and removes agrees with a map, with
        /// hashes drawn from a small set so that tags and homes collide;
        /// each entry's hint moves with it through removals' shifts and
        /// growth.
        #[test]
        fn agrees_with_a_map(ops in proptest::collection::vec((any::<bool>(), 0u32..64, 0u64..24), 0..400)) {
            let mut ix = IdIndex::with_hints();
            let mut model: HashMap<u32, (u64, u32)> = HashMap::new();
            for (step, (insert, id, h)) in (0u32..).zip(ops) {
                // Spread the small hash over the top bits (tags and homes).
                let hash = h.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_f000_0000_0000;
                match (insert, model.get(&id).copied()) {
                    (true, None) => {
                        ix.insert_unique(hash, id);
                        prop_assert!(ix.set_hint(hash, id, step));
                        model.insert(id, (hash, step));
                    }
                    (false, Some((old, _))) => {
                        prop_assert!(ix.remove(old, id));
                        prop_assert!(!ix.set_hint(old, id, step));
                        model.remove(&id);
                    }
                    (false, None) => prop_assert!(!ix.remove(hash, id)),
                    (true, Some((old, _))) => {
                        prop_assert!(ix.set_hint(old, id, step));
                        model.insert(id, (old, step));
                    }
                }
                prop_assert_eq!(ix.len(), model.len());
            }
            assert_probe_invariant(&ix);
            for id in 0..64u32 {
                let want = model.get(&id).map(|_| id);
                let (hash, hint) = model.get(&id).copied().unwrap_or((0, NO_HINT));
                let mut seen = NO_HINT;
                let found = ix.find_hinted(hash, |h| seen = h, |x| x == id);
                prop_assert_eq!(found, want);
                if found.is_some() {
                    // The last candidate handed over is the one found.
                    prop_assert_eq!(seen, hint);
                }
            }
            let mut hinted: Vec<(u32, u32)> = ix.hinted_ids().collect();
            hinted.sort_unstable();
            let mut expected: Vec<(u32, u32)> = model.iter().map(|(&id, &(_, h))| (id, h)).collect();
            expected.sort_unstable();
            prop_assert_eq!(hinted, expected);
        }
    }

    /// `set_all_hints` sets every entry's hint, and hands each id to
    /// `ahead` at most `SET_ALL_AHEAD` hints before its own, at every load
    /// (it once drifted ahead at each empty place and stopped early).
    #[test]
    fn set_all_hints_reads_ahead_at_a_fixed_distance() {
        let mut ix = IdIndex::with_hints();
        for id in 0..1_000u32 {
            ix.insert_unique(u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15), id);
        }
        let mut asked: HashMap<u32, usize> = HashMap::new();
        let mut done = 0usize;
        let mut gaps = Vec::new();
        let log = std::cell::RefCell::new(Vec::new());
        ix.set_all_hints(
            |id| log.borrow_mut().push((true, id)),
            |id| {
                log.borrow_mut().push((false, id));
                id + 7
            },
        );
        for (is_ahead, id) in log.into_inner() {
            if is_ahead {
                asked.insert(id, done);
            } else {
                gaps.push(asked.get(&id).map(|&at| done - at));
                done += 1;
            }
        }
        assert_eq!(done, 1_000);
        assert!(ix.hinted_ids().all(|(id, hint)| hint == id + 7));
        // Entries in the first places are not asked for ahead; the others
        // are, at most SET_ALL_AHEAD hints before their own.
        let asked_gaps: Vec<usize> = gaps.iter().flatten().copied().collect();
        assert!(
            asked_gaps.len() >= 1_000 - SET_ALL_AHEAD,
            "{}",
            asked_gaps.len()
        );
        assert!(
            asked_gaps.iter().all(|&g| g <= SET_ALL_AHEAD),
            "{asked_gaps:?}"
        );
    }

    /// An index made without hints keeps none and sets none.
    #[test]
    fn an_index_without_hints_keeps_none() {
        let mut ix = IdIndex::default();
        ix.insert_unique(0xdead_beef_0000_0001, 3);
        assert!(!ix.set_hint(0xdead_beef_0000_0001, 3, 9));
        let mut seen = 0;
        assert_eq!(
            ix.find_hinted(0xdead_beef_0000_0001, |h| seen = h, |_| true),
            Some(3)
        );
        assert_eq!(seen, NO_HINT);
        assert_eq!(ix.hinted_ids().count(), 0);
    }
}

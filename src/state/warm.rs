//! The writer's read-only pass over a group before it takes the write
//! lock: it reads what applying the group will read (each token's index
//! entry and slot, its owner's slot, the owner named by a register, the
//! device's last-seen index path, the dirty set), so the cache misses of a
//! large registry are taken while readers still run, and the write lock is
//! held for the applying alone (DESIGN.md 7).
//!
//! It changes nothing: the pass returns a count only so that the reads are
//! not optimised away.

use super::{Entry, State, NO_PERSON};
use crate::codec::with_packed;
use crate::limits::{APPLY_PREFETCH_OPS, WARM_MAX_OPS};
use crate::model::Op;

/// Slots of the apply's read-ahead ring: a power of two above
/// `2 × APPLY_PREFETCH_OPS`, so an entry's hashes stay until it is applied.
const AHEAD_RING: usize = (2 * APPLY_PREFETCH_OPS + 1).next_power_of_two();

/// The apply's read-ahead (`State::apply_ahead`): the token and person
/// hashes of the entries a few places ahead of the one being applied.
pub(crate) struct ReadAhead {
    ring: [(Option<u64>, Option<u64>); AHEAD_RING],
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead {
            ring: [(None, None); AHEAD_RING],
        }
    }
}

impl State {
    /// `warm` over the first [`WARM_MAX_OPS`] entries of a write group (its
    /// requests' entries in order): a larger group holds the write lock
    /// for milliseconds whatever is read ahead, and at 10^7 devices a pass
    /// over all of it cost more than the apply gained from it (DESIGN.md
    /// 7). Returns how many devices it found.
    pub(crate) fn warm_ahead<'a>(&self, group: impl IntoIterator<Item = &'a [Entry]>) -> usize {
        let mut budget = WARM_MAX_OPS;
        let mut found = 0;
        for entries in group {
            if budget == 0 {
                break;
            }
            let ahead = entries.len().min(budget);
            found += self.warm(entries.get(..ahead).unwrap_or_default());
            budget -= ahead;
        }
        found
    }

    /// Reads what applying `entries` will read; returns how many devices
    /// it found (a value for `std::hint::black_box`, not a result).
    pub(crate) fn warm(&self, entries: &[Entry]) -> usize {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Op(op) => Some(op),
                _ => None,
            })
            .map(|op| self.warm_op(op))
            .sum()
    }

    /// Asks for the cache lines applying `entries` will read a few places
    /// after entry `i` (call it for every `i`, in order, on one
    /// `ReadAhead`): the index entries of the entry `2 × APPLY_PREFETCH_OPS`
    /// ahead, then the device and person slots of the one
    /// `APPLY_PREFETCH_OPS` ahead, found from those entries. At 10^7
    /// devices each register's token and person lookups were misses taken
    /// one after another. A hint: it reads, changes nothing.
    pub(crate) fn apply_ahead(&self, ahead: &mut ReadAhead, entries: &[Entry], i: usize) {
        let start = if i == 0 {
            0
        } else {
            i + 2 * APPLY_PREFETCH_OPS
        };
        for j in start..=i + 2 * APPLY_PREFETCH_OPS {
            let Some(e) = entries.get(j) else { break };
            let hashes = self.op_hashes(e);
            if let Some(h) = hashes.0 {
                self.by_token.prefetch(h);
            }
            if let Some(h) = hashes.1 {
                self.by_person.prefetch(h);
            }
            if let Some(slot) = ahead.ring.get_mut(j % AHEAD_RING) {
                *slot = hashes;
            }
        }
        let near = i + APPLY_PREFETCH_OPS;
        if near >= entries.len() {
            return;
        }
        if let Some(&(token, person)) = ahead.ring.get(near % AHEAD_RING) {
            if let Some(id) = token.and_then(|h| self.by_token.first_with_tag(h)) {
                self.slots.prefetch(id);
            }
            if let Some(pid) = person.and_then(|h| self.by_person.first_with_tag(h)) {
                self.persons.prefetch(pid);
            }
        }
    }

    /// The token hash and person hash an entry's apply looks up.
    fn op_hashes(&self, e: &Entry) -> (Option<u64>, Option<u64>) {
        let Entry::Op(op) = e else {
            return (None, None);
        };
        let (token, person) = match op {
            Op::Register(r) => (&r.token, r.person.as_deref()),
            Op::Touch { token, .. }
            | Op::Logout { token, .. }
            | Op::Remove { token }
            | Op::Invalidate { token, .. }
            | Op::Feedback { token, .. } => (token, None),
            Op::Rotate { old_token, .. } => (old_token, None),
            Op::Merge { .. } | Op::Prune { .. } => return (None, None),
        };
        let token_hash = with_packed(token, |packed| self.hash_bytes(packed));
        let person_hash = person.map(|p| self.hash_bytes(p.as_bytes()));
        (Some(token_hash), person_hash)
    }

    fn warm_op(&self, op: &Op) -> usize {
        let token = match op {
            Op::Register(r) => {
                if let Some(name) = &r.person {
                    std::hint::black_box(self.person_id(name));
                }
                &r.token
            }
            Op::Touch { token, .. }
            | Op::Logout { token, .. }
            | Op::Remove { token }
            | Op::Invalidate { token, .. }
            | Op::Feedback { token, .. } => token,
            Op::Rotate { old_token, .. } => old_token,
            Op::Merge { .. } | Op::Prune { .. } => return 0,
        };
        with_packed(token, |packed| self.warm_token(packed))
    }

    fn warm_token(&self, packed: &[u8]) -> usize {
        std::hint::black_box(self.dirty.find(packed));
        let Some((id, slot)) = self
            .lookup(packed)
            .and_then(|id| self.slot(id).map(|s| (id, s)))
        else {
            return 0;
        };
        std::hint::black_box(self.by_seen.contains(slot.platform, slot.last_seen_ms, id));
        if slot.person != NO_PERSON {
            std::hint::black_box(self.person(slot.person).map(|p| p.devices.len()));
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Platform, Register};

    fn register(token: &str, person: Option<&str>) -> Entry {
        Entry::Op(Op::Register(Register {
            token: token.into(),
            platform: Platform::Ios,
            person: person.map(str::to_owned),
            seen_ms: 5,
            attributes: None,
        }))
    }

    #[test]
    fn warming_finds_known_devices_and_changes_nothing() {
        let mut st = State::new(20);
        st.apply(&register("aa01", Some("p1")));
        let known = [register("aa01", Some("p1")), register("aa02", Some("p2"))];
        let dump = st.dump();
        let dirty = st.dirty.len();
        assert_eq!(st.warm(&known), 1);
        assert_eq!(st.warm(&[Entry::Clock(9)]), 0);
        assert_eq!(st.dump(), dump);
        assert_eq!(st.dirty.len(), dirty);
        assert_eq!(st.len(), 1);
    }

    /// The read-ahead hashes each entry as its apply will look it up (the
    /// packed token, the person's name), so what it asks for is the index
    /// entry the apply reads; and it changes nothing.
    #[test]
    fn the_read_ahead_hashes_what_the_apply_looks_up_and_changes_nothing() {
        let mut st = State::new(20);
        let mut group = vec![Entry::Clock(3)];
        group.extend((0..60).map(|i| register(&format!("{i:08x}"), Some(&format!("p{}", i % 7)))));
        group.insert(25, Entry::Clock(4));
        for e in group.get(..40).unwrap() {
            st.apply(e);
        }
        let (dump, dirty) = (st.dump(), st.dirty.len());
        let mut ahead = ReadAhead::default();
        let mut known = 0;
        for i in 0..group.len() {
            st.apply_ahead(&mut ahead, &group, i);
            let j = i + 2 * APPLY_PREFETCH_OPS;
            let Some(e) = group.get(j) else { continue };
            let (token, person) = ahead.ring[j % AHEAD_RING];
            let Entry::Op(Op::Register(r)) = e else {
                assert_eq!((token, person), (None, None), "entry {j}");
                continue;
            };
            let packed_hash = with_packed(&r.token, |b| st.hash_bytes(b));
            assert_eq!(token, Some(packed_hash), "entry {j}");
            let name = r.person.as_deref().map(|n| st.hash_bytes(n.as_bytes()));
            assert_eq!(person, name, "entry {j}");
            if let Some(id) = with_packed(&r.token, |b| st.lookup(b)) {
                assert_eq!(st.by_token.first_with_tag(packed_hash), Some(id));
                known += 1;
            }
        }
        assert!(known >= 20, "{known} known devices read ahead");
        assert_eq!(st.dump(), dump);
        assert_eq!(st.dirty.len(), dirty);
    }

    #[test]
    fn a_large_group_is_warmed_only_as_far_as_the_bound() {
        let mut st = State::new(20);
        let known: Vec<Entry> = (0..WARM_MAX_OPS + 100)
            .map(|i| register(&format!("{i:08x}"), None))
            .collect();
        for e in &known {
            st.apply(e);
        }
        // Split over requests, as a group is; every device is known.
        let (first, rest) = known.split_at(WARM_MAX_OPS - 10);
        assert_eq!(st.warm_ahead([first, rest]), WARM_MAX_OPS);
        assert_eq!(st.warm_ahead([rest]), rest.len().min(WARM_MAX_OPS));
        assert_eq!(st.warm_ahead([&known[..3], &known[3..5]]), 5);
        // A group within the bound is read whole, however it is split.
        assert_eq!(st.warm_ahead([&[][..], &known[..7]]), 7);
        assert_eq!(st.warm_ahead(std::iter::empty()), 0);
    }
}

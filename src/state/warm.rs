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
use crate::limits::WARM_MAX_OPS;
use crate::model::Op;

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

    /// On a large state the operation's lines are first asked for chain
    /// by chain side by side (`read_ahead_one`), so the reads that follow
    /// find them in the cache instead of taking each miss in turn.
    fn warm_op(&self, op: &Op) -> usize {
        self.read_ahead_one(op);
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
pub(super) mod tests {
    use super::*;
    use crate::model::{Platform, Register};

    /// A register of `token` (iOS, seen at 5) for `person`; also the
    /// read-ahead's tests' (`ahead.rs`).
    pub(in crate::state) fn register(token: &str, person: Option<&str>) -> Entry {
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

//! A sink's known persons: who Customer.io holds. Held in memory as
//! 128-bit keyed hashes of the names, not as names.
//!
//! The set is only ever asked "is this person known", so it needs no name.
//! Holding names meant, at open, looking every name of the `'K'` records
//! up in the state's people table to share its allocation: 4,172,492
//! random probes at 10^7 devices of the comparison harness's data, 8.4 to
//! 10.6 s of a 24 to 30 s open (DESIGN.md 13, step 7). A fingerprint is
//! computed from the bytes of the record alone.
//!
//! The fingerprint is two SipHash-1-3 outputs (std's `DefaultHasher`)
//! under the keys of two `RandomState`s, concatenated: 128 bits. (std
//! draws a random key per thread and gives each later `RandomState` of
//! that thread the same key plus one; SipHash's outputs under two
//! different keys are independent as far as anyone knows.) Two distinct names
//! share one with probability 2^-128 per pair (about 2^-84 over 10^7
//! names), and nobody outside the process knows the keys to aim at one. A
//! collision would take a person Customer.io never saw for present: a
//! merge naming it would be sent instead of waiting or being dropped.
//! The keys are the same for every set of the process, so two sets holding
//! the same names compare equal; nothing hashed is ever written: the store
//! keeps the names (`'K'` keys), so the on-disk format does not change.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::OnceLock;

use hashbrown::HashTable;

/// The process's two SipHash keys (drawn once, on first use).
fn keys() -> &'static [RandomState; 2] {
    static KEYS: OnceLock<[RandomState; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [RandomState::new(), RandomState::new()])
}

/// The 128-bit fingerprint of `person`.
fn fingerprint(person: &str) -> u128 {
    let [a, b] = keys();
    let half = |s: &RandomState| {
        let mut h = s.build_hasher();
        h.write(person.as_bytes());
        h.finish()
    };
    (u128::from(half(a)) << 64) | u128::from(half(b))
}

/// The table's own hash of a fingerprint: its low half, already uniform.
fn slot_hash(f: &u128) -> u64 {
    // Truncation is the point: the low 64 bits are one SipHash output.
    *f as u64
}

/// The known persons of one sink.
#[derive(Clone, Default)]
pub(crate) struct Known {
    table: HashTable<u128>,
}

impl Known {
    /// Whether `person` is known.
    pub(crate) fn contains(&self, person: &str) -> bool {
        let f = fingerprint(person);
        self.table.find(slot_hash(&f), |x| *x == f).is_some()
    }

    /// Adds `person`; false if it was known already.
    pub(crate) fn insert(&mut self, person: &str) -> bool {
        let f = fingerprint(person);
        match self.table.entry(slot_hash(&f), |x| *x == f, slot_hash) {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(f);
                true
            }
        }
    }

    /// Removes `person`; false if it was not known.
    pub(crate) fn remove(&mut self, person: &str) -> bool {
        let f = fingerprint(person);
        match self.table.find_entry(slot_hash(&f), |x| *x == f) {
            Ok(e) => {
                e.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// How many persons are known.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

impl PartialEq for Known {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .table
                .iter()
                .all(|f| other.table.find(slot_hash(f), |x| x == f).is_some())
    }
}

impl Eq for Known {}

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Known({} persons)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_the_names_inserted_and_not_removed() {
        let mut k = Known::default();
        for i in 0..1_000 {
            assert!(k.insert(&format!("person-{i}")), "person-{i} is new");
        }
        assert!(!k.insert("person-7"), "a second insert adds nothing");
        for i in (0..1_000).step_by(2) {
            assert!(k.remove(&format!("person-{i}")), "person-{i} was known");
        }
        assert!(!k.remove("person-0"), "removed already");
        assert!(!k.remove("nobody"), "never known");
        assert_eq!(k.len(), 500);
        for i in 0..1_000 {
            assert_eq!(k.contains(&format!("person-{i}")), i % 2 == 1, "person-{i}");
        }
        assert!(!k.contains(""), "the empty name was never inserted");
    }

    #[test]
    fn sets_of_the_same_names_compare_equal_in_any_order() {
        let (mut a, mut b) = (Known::default(), Known::default());
        for i in 0..100 {
            a.insert(&format!("p{i}"));
            b.insert(&format!("p{}", 99 - i));
        }
        assert_eq!(a, b);
        b.remove("p3");
        assert_ne!(a, b, "one name fewer");
        b.insert("p100");
        assert_ne!(a, b, "same size, another name");
    }
}

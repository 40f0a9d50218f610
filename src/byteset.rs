//! `ByteSet`: an insertion-ordered set of byte strings kept in one buffer.
//!
//! The write path notes every changed token between two checkpoints (the
//! state's dirty set, the history's pending entries). Held as one boxed
//! key per token, a checkpoint of 2×10^5 new devices freed 2×10^5 small
//! heap chunks on the writer's thread at each snapshot; under glibc's
//! malloc those freed chunks scattered the writer's next allocations and
//! tripled the importing thread's CPU per device at 10^6 devices (DESIGN.md
//! 13, step 15). Here the keys are appended to one `Vec<u8>` and the set
//! is three vectors, whatever its size: filling it allocates only when a
//! vector grows, and dropping it frees three buffers.
//!
//! Indices are dense (`0..len()`, in insertion order), so a caller can keep
//! per-key values in a plain `Vec` beside the set.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

/// An insertion-ordered set of byte strings (see the module doc).
#[derive(Default, Clone)]
pub(crate) struct ByteSet {
    hasher: DefaultHashBuilder,
    /// Indices into `ends`, hashed by their key's bytes.
    table: HashTable<usize>,
    /// Every key's bytes, one after the other.
    bytes: Vec<u8>,
    /// Where each key ends in `bytes` (it starts where the one before ends).
    ends: Vec<usize>,
}

impl ByteSet {
    /// Keys in the set.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the set holds no key.
    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The key of index `i` (empty when `i` is out of range).
    pub(crate) fn key(&self, i: usize) -> &[u8] {
        key_at(&self.bytes, &self.ends, i)
    }

    /// The index of `key`, if it is in the set.
    pub(crate) fn find(&self, key: &[u8]) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        let (bytes, ends) = (&self.bytes, &self.ends);
        self.table
            .find(hash, |&i| key_at(bytes, ends, i) == key)
            .copied()
    }

    /// Adds `key`; returns its index and whether it was new.
    pub(crate) fn insert(&mut self, key: &[u8]) -> (usize, bool) {
        if let Some(i) = self.find(key) {
            return (i, false);
        }
        let i = self.ends.len();
        let hash = self.hasher.hash_one(key);
        let (hasher, bytes, ends) = (&self.hasher, &self.bytes, &self.ends);
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(key_at(bytes, ends, j)));
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
        (i, true)
    }

    /// Every key, in insertion order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.key(i))
    }

    /// Empties the set, keeping its buffers.
    pub(crate) fn clear(&mut self) {
        self.table.clear();
        self.bytes.clear();
        self.ends.clear();
    }
}

fn key_at<'a>(bytes: &'a [u8], ends: &[usize], i: usize) -> &'a [u8] {
    let start = match i.checked_sub(1) {
        Some(prev) => ends.get(prev).copied().unwrap_or(0),
        None => 0,
    };
    let end = ends.get(i).copied().unwrap_or(start);
    bytes.get(start..end).unwrap_or_default()
}

impl std::fmt::Debug for ByteSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn keeps_insertion_order_and_finds_every_key() {
        let mut s = ByteSet::default();
        assert!(s.is_empty());
        assert_eq!(s.insert(b"b"), (0, true));
        assert_eq!(s.insert(b""), (1, true), "the empty key is a key");
        assert_eq!(s.insert(b"a"), (2, true));
        assert_eq!(s.insert(b"b"), (0, false), "a second insert finds it");
        assert_eq!(s.len(), 3);
        let keys: Vec<&[u8]> = s.iter().collect();
        assert_eq!(keys, vec![&b"b"[..], b"", b"a"]);
        assert_eq!(s.find(b"a"), Some(2));
        assert_eq!(s.find(b""), Some(1));
        assert_eq!(s.find(b"c"), None);
        assert_eq!(s.key(7), b"", "out of range reads empty");
        s.clear();
        assert!(s.is_empty() && s.find(b"b").is_none());
        assert_eq!(s.insert(b"c"), (0, true), "indices restart");
    }

    proptest! {
        /// The same answers as a `HashSet` of owned keys, through growth
        /// (rehashing reads the keys back from the buffer).
        #[test]
        fn matches_a_hash_set(keys in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..5), 0..300)) {
            let mut s = ByteSet::default();
            let mut model: HashSet<Vec<u8>> = HashSet::new();
            let mut order: Vec<Vec<u8>> = Vec::new();
            for k in &keys {
                let (i, new) = s.insert(k);
                prop_assert_eq!(new, model.insert(k.clone()));
                if new {
                    order.push(k.clone());
                }
                prop_assert_eq!(s.key(i), &k[..]);
            }
            prop_assert_eq!(s.len(), model.len());
            for k in &order {
                prop_assert!(s.find(k).is_some());
            }
            let back: Vec<Vec<u8>> = s.iter().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(back, order);
        }
    }
}

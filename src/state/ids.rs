//! A person's device ids as its slot holds them: inline up to three (most
//! people have one to three devices), in a vector beyond.
//!
//! Inline, the list is in the person's own slot: "the most recent device
//! of this person" reads no second allocation, and a person costs no heap
//! chunk for its list (DESIGN.md section 6).

use std::ops::{Deref, DerefMut};

/// The most ids held inline. Three ids and the length fit beside the
/// vector's niche, so the type is the size of a `Vec<u32>` (24 bytes).
pub(crate) const INLINE_IDS: usize = 3;

/// A list that went to the heap comes back inline once it holds this many
/// ids or fewer: one below the inline capacity, so that a person whose
/// device count swings between 3 and 4 does not allocate at every swing.
const BACK_INLINE_AT: usize = INLINE_IDS - 1;

/// Device ids, in the order the caller keeps (newest first for persons).
#[derive(Clone, Debug)]
pub(crate) enum DeviceIds {
    /// `len` ids of `ids` are the list; `len <= INLINE_IDS`.
    Inline { len: u8, ids: [u32; INLINE_IDS] },
    /// More than `BACK_INLINE_AT` ids, once it grew past `INLINE_IDS`.
    Heap(Vec<u32>),
}

// The person slot's size depends on it (DESIGN.md section 6).
const _: () = assert!(std::mem::size_of::<DeviceIds>() == 24);

impl Default for DeviceIds {
    fn default() -> DeviceIds {
        DeviceIds::Inline {
            len: 0,
            ids: [0; INLINE_IDS],
        }
    }
}

impl DeviceIds {
    /// Inserts `id` at `pos` (clamped to the length), as `Vec::insert`.
    pub(crate) fn insert(&mut self, pos: usize, id: u32) {
        match self {
            DeviceIds::Inline { len, ids } if usize::from(*len) < INLINE_IDS => {
                let n = usize::from(*len);
                let pos = pos.min(n);
                if let Some(tail) = ids.get_mut(pos..=n) {
                    tail.rotate_right(1);
                    if let Some(first) = tail.first_mut() {
                        *first = id;
                    }
                    *len += 1;
                }
            }
            DeviceIds::Inline { .. } => {
                let mut v = Vec::with_capacity(INLINE_IDS * 2);
                v.extend_from_slice(self);
                v.insert(pos.min(v.len()), id);
                *self = DeviceIds::Heap(v);
            }
            DeviceIds::Heap(v) => v.insert(pos.min(v.len()), id),
        }
    }

    /// Appends `id`.
    pub(crate) fn push(&mut self, id: u32) {
        self.insert(usize::MAX, id);
    }

    /// Removes the id at `pos`; nothing if `pos` is past the end.
    pub(crate) fn remove(&mut self, pos: usize) {
        match self {
            DeviceIds::Inline { len, ids } => {
                let n = usize::from(*len);
                if pos >= n {
                    return;
                }
                if let Some(tail) = ids.get_mut(pos..n) {
                    tail.rotate_left(1);
                    *len -= 1;
                }
            }
            DeviceIds::Heap(v) => {
                if pos < v.len() {
                    v.remove(pos);
                }
                if v.len() <= BACK_INLINE_AT {
                    let mut ids = [0; INLINE_IDS];
                    if let Some(head) = ids.get_mut(..v.len()) {
                        head.copy_from_slice(v);
                        // At most BACK_INLINE_AT < 256 ids.
                        let len = u8::try_from(v.len()).unwrap_or(0);
                        *self = DeviceIds::Inline { len, ids };
                    }
                }
            }
        }
    }

    /// Empties the list (frees a heap list).
    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        *self = DeviceIds::default();
    }

    /// Whether the list is held inline.
    #[cfg(test)]
    fn is_inline(&self) -> bool {
        matches!(self, DeviceIds::Inline { .. })
    }
}

impl Deref for DeviceIds {
    type Target = [u32];

    fn deref(&self) -> &[u32] {
        match self {
            // `len` is at most the array's length by construction.
            DeviceIds::Inline { len, ids } => ids.get(..usize::from(*len)).unwrap_or_default(),
            DeviceIds::Heap(v) => v,
        }
    }
}

impl DerefMut for DeviceIds {
    fn deref_mut(&mut self) -> &mut [u32] {
        match self {
            DeviceIds::Inline { len, ids } => ids.get_mut(..usize::from(*len)).unwrap_or_default(),
            DeviceIds::Heap(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Edit {
        Insert(usize, u32),
        Push(u32),
        Remove(usize),
        Clear,
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            4 => (0usize..8, any::<u32>()).prop_map(|(p, x)| Edit::Insert(p, x)),
            2 => any::<u32>().prop_map(Edit::Push),
            4 => (0usize..8).prop_map(Edit::Remove),
            1 => Just(Edit::Clear),
        ]
    }

    proptest! {
        /// Every edit leaves the same ids in the same order as a `Vec`.
        #[test]
        fn edits_match_a_vec(edits in proptest::collection::vec(edit(), 0..64)) {
            let (mut ids, mut model) = (DeviceIds::default(), Vec::<u32>::new());
            for e in edits {
                match e {
                    Edit::Insert(p, x) => {
                        ids.insert(p, x);
                        model.insert(p.min(model.len()), x);
                    }
                    Edit::Push(x) => {
                        ids.push(x);
                        model.push(x);
                    }
                    Edit::Remove(p) => {
                        ids.remove(p);
                        if p < model.len() {
                            model.remove(p);
                        }
                    }
                    Edit::Clear => {
                        ids.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(&*ids, &model[..]);
                if model.len() > INLINE_IDS {
                    prop_assert!(!ids.is_inline(), "{} ids inline", model.len());
                }
                if model.len() <= BACK_INLINE_AT {
                    prop_assert!(ids.is_inline(), "{} ids on the heap", model.len());
                }
            }
        }
    }

    #[test]
    fn three_ids_stay_inline_a_fourth_spills_and_two_come_back() {
        let mut ids = DeviceIds::default();
        for x in [10, 20, 30] {
            ids.push(x);
        }
        assert!(ids.is_inline());
        ids.insert(0, 5);
        assert!(!ids.is_inline());
        assert_eq!(&*ids, &[5, 10, 20, 30]);
        ids.remove(3);
        assert!(!ids.is_inline(), "3 ids stay on the heap (hysteresis)");
        ids.remove(0);
        assert!(ids.is_inline());
        assert_eq!(&*ids, &[10, 20]);
    }

    #[test]
    fn sorting_through_the_slice_orders_inline_ids() {
        let mut ids = DeviceIds::default();
        for x in [3, 1, 2] {
            ids.push(x);
        }
        ids.sort_unstable();
        assert_eq!(&*ids, &[1, 2, 3]);
    }
}

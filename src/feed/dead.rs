//! A sink's dead letters: operations Customer.io rejected, one store key each.
//!
//! Every change goes through these methods, which record the touched slots,
//! so a checkpoint writes (or deletes) exactly the letters that changed, each
//! under its own key (`persist::dead_key`). No value grows with the number of
//! letters: a single value holding them all once outgrew the codec's size
//! limit and made the database impossible to open (reliability finding 1).
//!
//! The list is bounded by [`MAX_DEAD_LETTERS_PER_SINK`]. When a new letter
//! would exceed it, the letter with the lowest slot (export-time rejections
//! first, then the oldest batch) is discarded and counted in `discarded`, so
//! the list keeps the newest failures and the loss is visible in `sinks`.

use std::collections::{BTreeMap, BTreeSet};

use super::{DeadLetter, ItemKey};

pub use crate::limits::MAX_DEAD_LETTERS_PER_SINK;

/// Where a letter sits: (batch number, index in the batch, sub); batch 0
/// holds operations rejected at export time.
pub(crate) type Slot = (u64, u32, u32);

/// The dead letters of one sink, with the slots changed since the last checkpoint.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeadLetters {
    map: BTreeMap<Slot, DeadLetter>,
    /// Letters discarded by the cap, ever.
    pub(crate) discarded: u64,
    dirty: BTreeSet<Slot>,
}

/// Two lists are equal when they hold the same letters (what is still to be
/// checkpointed is not part of the value).
impl PartialEq for DeadLetters {
    fn eq(&self, other: &DeadLetters) -> bool {
        self.map == other.map && self.discarded == other.discarded
    }
}

impl Eq for DeadLetters {}

impl DeadLetters {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &DeadLetter> {
        self.map.values()
    }

    /// The slot and base of `item`'s letter (at most one per item).
    pub(crate) fn find(&self, item: &ItemKey) -> Option<(Slot, bool)> {
        self.map
            .iter()
            .find(|(_, d)| &d.item == item)
            .map(|(&k, d)| (k, d.base))
    }

    pub(crate) fn remove(&mut self, slot: Slot) -> Option<DeadLetter> {
        let d = self.map.remove(&slot)?;
        self.dirty.insert(slot);
        Some(d)
    }

    /// Removes `item`'s letters; whether there were any.
    pub(crate) fn remove_item(&mut self, item: &ItemKey) -> bool {
        let slots: Vec<Slot> = self
            .map
            .iter()
            .filter(|(_, d)| &d.item == item)
            .map(|(&k, _)| k)
            .collect();
        for s in &slots {
            self.remove(*s);
        }
        !slots.is_empty()
    }

    /// The slot for a new letter of batch `number` at `index`.
    pub(crate) fn next_slot(&self, number: u64, index: u32) -> Slot {
        if number == 0 {
            let last = self.map.range((0, 0, 0)..(1, 0, 0)).next_back();
            (0, last.map_or(0, |(&(_, i, _), _)| i.saturating_add(1)), 0)
        } else {
            let sub = self
                .map
                .range((number, index, 0)..=(number, index, u32::MAX))
                .next_back()
                .map_or(0, |(&(_, _, s), _)| s.saturating_add(1));
            (number, index, sub)
        }
    }

    /// Adds a letter, discarding the lowest slots beyond the cap.
    pub(crate) fn insert(&mut self, slot: Slot, letter: DeadLetter) {
        self.map.insert(slot, letter);
        self.dirty.insert(slot);
        while self.map.len() > MAX_DEAD_LETTERS_PER_SINK {
            let Some((&lowest, _)) = self.map.iter().next() else {
                break;
            };
            self.remove(lowest);
            self.discarded += 1;
        }
        debug_assert!(self.map.len() <= MAX_DEAD_LETTERS_PER_SINK);
    }

    /// Sets `base` on every letter `which` selects; whether any changed.
    pub(crate) fn set_base_where(&mut self, which: impl Fn(&ItemKey) -> bool, base: bool) -> bool {
        let mut any = false;
        for (slot, d) in self.map.iter_mut() {
            if which(&d.item) && d.base != base {
                d.base = base;
                self.dirty.insert(*slot);
                any = true;
            }
        }
        any
    }

    /// Takes every letter out (requeue).
    pub(crate) fn take_all(&mut self) -> Vec<DeadLetter> {
        let map = std::mem::take(&mut self.map);
        self.dirty.extend(map.keys().copied());
        map.into_values().collect()
    }

    /// Loads a letter from the store (not a change).
    pub(crate) fn load(&mut self, slot: Slot, letter: DeadLetter) {
        self.map.insert(slot, letter);
    }

    /// Marks every letter changed (a legacy layout is rewritten as keys).
    pub(crate) fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.map.keys().copied());
    }

    /// Drains the changed slots with their letters now (`None`: deleted).
    #[cfg(test)]
    pub(crate) fn take_dirty(&mut self) -> Vec<(Slot, Option<&DeadLetter>)> {
        let dirty = self.take_dirty_slots();
        dirty.into_iter().map(|s| (s, self.map.get(&s))).collect()
    }

    /// Drains the slots changed since the last checkpoint (their letters
    /// are read later with `letter`, while nothing changes them).
    pub(crate) fn take_dirty_slots(&mut self) -> BTreeSet<Slot> {
        std::mem::take(&mut self.dirty)
    }

    /// The dead letter in `slot`, if any.
    pub(crate) fn letter(&self, slot: &Slot) -> Option<&DeadLetter> {
        self.map.get(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn letter(i: u32) -> DeadLetter {
        DeadLetter {
            batch_id: "b".into(),
            index: i,
            reason: "r".into(),
            operation: "{}".into(),
            item: ItemKey::Device {
                person: Arc::from("p"),
                token: Box::from(i.to_be_bytes().as_slice()),
            },
            base: false,
        }
    }

    #[test]
    fn cap_discards_lowest_slots_and_counts_them() {
        let mut d = DeadLetters::default();
        let extra = 5u32;
        for i in 0..MAX_DEAD_LETTERS_PER_SINK as u32 + extra {
            let slot = d.next_slot(1 + u64::from(i), 0);
            d.insert(slot, letter(i));
        }
        assert_eq!(d.len(), MAX_DEAD_LETTERS_PER_SINK);
        assert_eq!(d.discarded, u64::from(extra));
        // The oldest batches went; the newest stay.
        assert!(d.find(&letter(0).item).is_none());
        assert!(d.find(&letter(extra - 1).item).is_none());
        assert!(d.find(&letter(extra).item).is_some());
        // Every touched slot is written (or deleted) at the next checkpoint.
        let dirty = d.take_dirty();
        assert_eq!(dirty.len(), MAX_DEAD_LETTERS_PER_SINK + extra as usize);
        assert_eq!(dirty.iter().filter(|(_, v)| v.is_none()).count(), 5);
        assert!(d.take_dirty().is_empty());
    }
}

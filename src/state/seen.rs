//! The last-seen index: every device's `(platform, last_seen_ms, id)` in
//! order, for the 30-day counts, `page` and `prune` (DESIGN.md 6, "The
//! last-seen index is leaves of sorted entries").
//!
//! Per platform, leaves: each leaf a vector of at most [`LEAF_CAP`]
//! sorted 12-byte entries, filed under a key that is at most its first
//! entry and above every entry of the leaf before it. The leaves sit in
//! groups of at most [`GROUP_CAP`], each group's keys in a vector beside
//! its leaves and each group's first key in one vector for the platform,
//! so a leaf is found by two binary searches of contiguous keys (a
//! `BTreeMap` of leaves took a descent of five or six nodes). A
//! `BTreeSet<(Platform, u64, u32)>` held 16 bytes an entry (the tuple is
//! padded) in nodes that an insert at the end splits at 6 of 11, so a bulk
//! import left them about half full: at 10^7 devices it held 341 MB
//! (heaptrack) against about 190 MB after an open, which builds it from a
//! sorted run. Here an insert past the end of the last leaf starts a new
//! leaf, so appends (a touch, a register with a recent time) fill leaves
//! whole; any other insert into a full leaf splits it in half; a removal
//! that leaves a leaf under half full joins it with the next leaf (or
//! shares the two out evenly). So every leaf but the last is at least half
//! full: at most 24 bytes an entry plus a few bytes a leaf, 12 after a load.
//! Groups split and join the same way (a full group splits in half; one
//! under half full joins the next), so every group but the last holds at
//! least [`GROUP_CAP`]` / 2` leaves.

use crate::model::Platform;

/// Most entries a leaf holds: 1.5 KiB of entries, so an insert or removal
/// in the middle moves at most that many bytes. (256 moved twice as much:
/// `seen_update_probe` took 1,759 ns a move with 256, 1,504 with 128 and
/// 1,627 with 64, whose directory is twice as large; DESIGN.md 13 step 47.)
pub(crate) const LEAF_CAP: usize = 128;
/// Fewest entries a leaf holds unless it is its platform's last.
const LEAF_MIN: usize = LEAF_CAP / 2;

/// One device: its last-seen time (as two halves, so the entry is 12
/// bytes with 4-byte alignment) and its slot id, ordered as `(ms, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    ms_hi: u32,
    ms_lo: u32,
    id: u32,
}

/// `(ms, id)` order as one 96-bit number: the searches compare it without
/// a branch (the derived order compared three fields one after another, and
/// each binary search step's outcome is a coin toss the branch predictor
/// misses half the time).
impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Entry {
    fn new(ms: u64, id: u32) -> Entry {
        Entry {
            ms_hi: (ms >> 32) as u32,
            ms_lo: ms as u32,
            id,
        }
    }

    fn ms(self) -> u64 {
        (u64::from(self.ms_hi) << 32) | u64::from(self.ms_lo)
    }

    fn key(self) -> u128 {
        (u128::from(self.ms()) << 32) | u128::from(self.id)
    }
}

/// Entries between two of the heads `search` reads first: 192 bytes, three
/// cache lines.
const STRIDE: usize = 16;

/// Where `e` is in the sorted `leaf`, as `binary_search` answers. A binary
/// search of a 1.5 KiB leaf makes seven reads, each depending on the last,
/// and each a cache miss when the leaf is cold; this reads every
/// `STRIDE`-th entry first (loads that
/// do not depend on each other, so the misses overlap), then searches the
/// one run of `STRIDE` entries that can hold `e` (DESIGN.md 6).
fn search(leaf: &[Entry], e: Entry) -> Result<usize, usize> {
    let below = leaf
        .iter()
        .step_by(STRIDE)
        .map(|&head| usize::from(head <= e))
        .sum::<usize>();
    let start = below.saturating_sub(1) * STRIDE;
    let run = leaf
        .get(start..leaf.len().min(start + STRIDE))
        .unwrap_or_default();
    match run.binary_search(&e) {
        Ok(i) => Ok(start + i),
        Err(i) => Err(start + i),
    }
}

fn new_leaf() -> Vec<Entry> {
    Vec::with_capacity(LEAF_CAP)
}

/// Most leaves a group holds: its keys are 768 bytes, and filing or
/// unfiling a leaf moves at most 2.3 KiB inside it.
pub(crate) const GROUP_CAP: usize = 64;
/// Fewest leaves a group holds unless it is its platform's last.
const GROUP_MIN: usize = GROUP_CAP / 2;

/// A run of consecutive leaves and their keys (`keys[j]` is `leaves[j]`'s).
#[derive(Default)]
struct Group {
    keys: Vec<Entry>,
    leaves: Vec<Vec<Entry>>,
}

impl Group {
    fn split_off(&mut self, at: usize) -> Group {
        Group {
            keys: self.keys.split_off(at),
            leaves: self.leaves.split_off(at),
        }
    }

    fn append(&mut self, other: &mut Group) {
        self.keys.append(&mut other.keys);
        self.leaves.append(&mut other.leaves);
    }
}

/// Where a leaf is: its group, and its place in the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct At {
    g: usize,
    j: usize,
}

/// The leaf at `at` (a function of the groups alone, so the caller may
/// still change the other fields).
fn leaf_in(groups: &mut [Group], at: At) -> Option<&mut Vec<Entry>> {
    groups.get_mut(at.g)?.leaves.get_mut(at.j)
}

/// One platform's entries: the leaves in order, in groups, and each
/// group's first key (`heads[g]` is `groups[g].keys[0]`), so finding a
/// leaf is two binary searches of contiguous keys (DESIGN.md 6).
#[derive(Default)]
struct Leaves {
    heads: Vec<Entry>,
    groups: Vec<Group>,
    len: usize,
}

impl Leaves {
    /// The group whose head is at or below `e`, else the first (0 also
    /// when there is no group).
    fn group_of(&self, e: Entry) -> usize {
        self.heads.partition_point(|h| *h <= e).saturating_sub(1)
    }

    /// The leaf filed at or below `e`, else the first; `None` when there
    /// is no leaf.
    fn find(&self, e: Entry) -> Option<At> {
        let g = self.group_of(e);
        let keys = &self.groups.get(g)?.keys;
        let j = keys.partition_point(|k| *k <= e).saturating_sub(1);
        Some(At { g, j })
    }

    fn leaf(&self, at: At) -> Option<&Vec<Entry>> {
        self.groups.get(at.g)?.leaves.get(at.j)
    }

    fn leaf_mut(&mut self, at: At) -> Option<&mut Vec<Entry>> {
        leaf_in(&mut self.groups, at)
    }

    fn key(&self, at: At) -> Option<Entry> {
        self.groups.get(at.g)?.keys.get(at.j).copied()
    }

    /// Files the leaf at `at` under `key` (its group's head too, if first).
    fn rekey(&mut self, at: At, key: Entry) {
        if let Some(k) = self.groups.get_mut(at.g).and_then(|g| g.keys.get_mut(at.j)) {
            *k = key;
        }
        if at.j == 0 {
            if let Some(h) = self.heads.get_mut(at.g) {
                *h = key;
            }
        }
    }

    /// The leaf after the one at `at`, if any.
    fn next(&self, at: At) -> Option<At> {
        let group = self.groups.get(at.g)?;
        if at.j + 1 < group.leaves.len() {
            return Some(At {
                g: at.g,
                j: at.j + 1,
            });
        }
        (at.g + 1 < self.groups.len()).then_some(At { g: at.g + 1, j: 0 })
    }

    /// Files a new, non-empty `leaf` under `key` right after the one at
    /// `after`, or as the first leaf of an index without one.
    fn file_after(&mut self, after: Option<At>, key: Entry, leaf: Vec<Entry>) {
        let Some(at) = after else {
            debug_assert!(
                self.groups.is_empty(),
                "only an empty index has no leaf to file after"
            );
            self.heads.push(key);
            self.groups.push(Group {
                keys: vec![key],
                leaves: vec![leaf],
            });
            return;
        };
        let Some(group) = self.groups.get_mut(at.g) else {
            return;
        };
        let j = (at.j + 1).min(group.keys.len());
        group.keys.insert(j, key);
        group.leaves.insert(j, leaf);
        if group.keys.len() > GROUP_CAP {
            let right = group.split_off(GROUP_MIN);
            if let Some(&head) = right.keys.first() {
                self.heads.insert(at.g + 1, head);
                self.groups.insert(at.g + 1, right);
            }
        }
    }

    /// Takes the leaf at `at` out; a group left empty goes, one left
    /// under half full joins the next.
    fn unfile(&mut self, at: At) {
        let Some(group) = self.groups.get_mut(at.g) else {
            return;
        };
        if at.j >= group.keys.len() {
            return;
        }
        group.keys.remove(at.j);
        group.leaves.remove(at.j);
        let (left, first) = (group.keys.len(), group.keys.first().copied());
        match first {
            None => {
                self.heads.remove(at.g);
                self.groups.remove(at.g);
            }
            Some(first) => {
                self.rekey(At { g: at.g, j: 0 }, first);
                if left < GROUP_MIN && at.g + 1 < self.groups.len() {
                    self.join_groups(at.g);
                }
            }
        }
    }

    /// Joins group `g`, under half full, with the next: into one if they
    /// fit, else shared out evenly.
    fn join_groups(&mut self, g: usize) {
        let Some([group, right]) = self.groups.get_mut(g..g + 2) else {
            return;
        };
        let total = group.keys.len() + right.keys.len();
        if total <= GROUP_CAP {
            group.append(right);
            self.heads.remove(g + 1);
            self.groups.remove(g + 1);
            return;
        }
        let take = total / 2 - group.keys.len();
        let rest = right.split_off(take);
        group.append(right);
        *right = rest;
        if let (Some(head), Some(&first)) = (self.heads.get_mut(g + 1), right.keys.first()) {
            *head = first;
        }
    }

    fn contains(&self, e: Entry) -> bool {
        self.find(e)
            .and_then(|at| self.leaf(at))
            .is_some_and(|leaf| search(leaf, e).is_ok())
    }

    /// Starts loading the keys of the group that holds (or would hold)
    /// `e`, which finding its leaf will search; the heads this reads are
    /// a few KiB, in the cache already.
    fn prefetch_group(&self, e: Entry) {
        if let Some(group) = self.groups.get(self.group_of(e)) {
            crate::prefetch::prefetch_lines(group.keys.as_slice());
        }
    }

    /// Starts loading the vector header of the leaf that holds (or would
    /// hold) `e`: the line `prefetch` then reads to find the leaf's
    /// entries (a group's 64 headers take 24 lines, too many to ask for
    /// with its keys). Its keys should be in the cache (`prefetch_group`).
    fn prefetch_leaf_header(&self, e: Entry) {
        if let Some(header) = self.find(e).and_then(|at| self.leaf(at)) {
            crate::prefetch::prefetch(header);
        }
    }

    /// Starts loading every line of the leaf that holds (or would hold)
    /// `e`: the search reads its heads and a run, and the insert or
    /// removal that follows moves the entries after its place. Finding it
    /// now puts the directory's lines in the cache too.
    fn prefetch(&self, e: Entry) {
        if let Some(leaf) = self.find(e).and_then(|at| self.leaf(at)) {
            crate::prefetch::prefetch_lines(leaf.as_slice());
        }
    }

    fn insert(&mut self, e: Entry) -> bool {
        // The leaf filed at or below `e`, else the first.
        let Some(at) = self.find(e) else {
            let mut leaf = new_leaf();
            leaf.push(e);
            self.file_after(None, e, leaf);
            self.len += 1;
            return true;
        };
        let is_last = self.next(at).is_none();
        let (Some(key), Some(leaf)) = (self.key(at), leaf_in(&mut self.groups, at)) else {
            return false;
        };
        let Err(pos) = search(leaf, e) else {
            return false;
        };
        self.len += 1;
        if leaf.len() < LEAF_CAP {
            leaf.insert(pos, e);
        } else {
            self.split_insert(at, is_last, pos, e);
        }
        if e < key {
            // A new first entry of the first leaf: file the leaf under it.
            self.rekey(at, e);
        }
        true
    }

    /// Inserts `e` at `pos` of the full leaf at `at`: an append to the
    /// last leaf starts a new leaf, anything else splits the leaf in half.
    fn split_insert(&mut self, at: At, is_last: bool, pos: usize, e: Entry) {
        let Some(leaf) = self.leaf_mut(at) else {
            return;
        };
        let mut right = new_leaf();
        if is_last && pos == leaf.len() {
            right.push(e);
        } else {
            right.extend(leaf.drain(LEAF_MIN..));
            match pos.checked_sub(LEAF_MIN) {
                Some(r) if r > 0 => right.insert(r, e),
                _ => leaf.insert(pos, e),
            }
        }
        if let Some(&first) = right.first() {
            self.file_after(Some(at), first, right);
        }
    }

    fn remove(&mut self, e: Entry) -> bool {
        let Some(at) = self.find(e) else {
            return false;
        };
        let Some(leaf) = leaf_in(&mut self.groups, at) else {
            return false;
        };
        let Ok(pos) = search(leaf, e) else {
            return false;
        };
        leaf.remove(pos);
        self.len -= 1;
        let (left, empty) = (leaf.len(), leaf.is_empty());
        if left >= LEAF_MIN {
            return true;
        }
        match self.next(at) {
            Some(next) => self.join(at, next),
            // The last leaf may be small, but not empty.
            None if empty => self.unfile(at),
            None => {}
        }
        true
    }

    /// Joins the leaf at `at`, under half full, with the next one (at
    /// `next`): into one if they fit, else shared out evenly.
    fn join(&mut self, at: At, next: At) {
        if self.leaf(at).is_none() {
            return;
        }
        let Some(mut right) = self.leaf_mut(next).map(std::mem::take) else {
            return;
        };
        let Some(leaf) = self.leaf_mut(at) else {
            return;
        };
        let total = leaf.len() + right.len();
        if total <= LEAF_CAP {
            leaf.append(&mut right);
            self.unfile(next);
            return;
        }
        let take = total / 2 - leaf.len();
        leaf.extend(right.drain(..take));
        if let Some(&first) = right.first() {
            self.rekey(next, first);
        }
        if let Some(slot) = self.leaf_mut(next) {
            *slot = right;
        }
    }

    /// Entries from `start` on, in order.
    fn iter_from(&self, start: Entry) -> impl Iterator<Item = Entry> + '_ {
        let at = self.find(start).unwrap_or(At { g: 0, j: 0 });
        let groups = self.groups.get(at.g..).unwrap_or_default();
        groups
            .iter()
            .enumerate()
            .flat_map(move |(n, group)| {
                let skip = if n == 0 { at.j } else { 0 };
                group.leaves.get(skip..).unwrap_or_default()
            })
            .flat_map(move |leaf| {
                let from = leaf.partition_point(|x| *x < start);
                leaf.get(from..).unwrap_or_default().iter().copied()
            })
    }

    /// Leaves filled whole from `entries`, sorted and without repeats, in
    /// groups filled whole.
    fn from_sorted(entries: impl Iterator<Item = Entry>) -> Leaves {
        let mut out = Leaves::default();
        let mut leaf = new_leaf();
        for e in entries {
            if leaf.len() == LEAF_CAP {
                out.push_leaf(std::mem::replace(&mut leaf, new_leaf()));
            }
            leaf.push(e);
        }
        out.push_leaf(leaf);
        out
    }

    /// Files `leaf` after every other, in a new group if the last is full.
    fn push_leaf(&mut self, leaf: Vec<Entry>) {
        let Some(&first) = leaf.first() else {
            return;
        };
        self.len += leaf.len();
        match self.groups.last_mut() {
            Some(group) if group.keys.len() < GROUP_CAP => {
                group.keys.push(first);
                group.leaves.push(leaf);
            }
            _ => {
                self.heads.push(first);
                self.groups.push(Group {
                    keys: vec![first],
                    leaves: vec![leaf],
                });
            }
        }
    }

    /// Every leaf's key and entries, in order.
    fn all_leaves(&self) -> impl Iterator<Item = (Entry, &Vec<Entry>)> + '_ {
        self.groups
            .iter()
            .flat_map(|g| g.keys.iter().copied().zip(g.leaves.iter()))
    }

    /// What breaks the groups' invariants: each group holds as many keys
    /// as leaves, at least one, at most `GROUP_CAP`, at least `GROUP_MIN`
    /// unless last, and is headed by its first key.
    fn group_problems(&self, platform: Platform) -> Vec<String> {
        let mut out = Vec::new();
        if self.heads.len() != self.groups.len() {
            out.push(format!(
                "{platform:?}: {} heads for {} groups",
                self.heads.len(),
                self.groups.len()
            ));
        }
        let last = self.groups.len().saturating_sub(1);
        for (g, (group, head)) in self.groups.iter().zip(&self.heads).enumerate() {
            let n = group.keys.len();
            let small = n < GROUP_MIN && g != last;
            if n != group.leaves.len() || n == 0 || n > GROUP_CAP || small {
                out.push(format!(
                    "{platform:?} group {g}: {n} keys, {} leaves",
                    group.leaves.len()
                ));
            }
            if group.keys.first() != Some(head) {
                out.push(format!("{platform:?} group {g} headed {head:?}"));
            }
        }
        out
    }

    /// What breaks the invariants in the module doc, if anything.
    fn problems(&self, platform: Platform) -> Vec<String> {
        let mut out = self.group_problems(platform);
        let mut before: Option<Entry> = None;
        let mut count = 0;
        let leaves = self.groups.iter().map(|g| g.leaves.len()).sum::<usize>();
        for (n, (key, leaf)) in self.all_leaves().enumerate() {
            let (Some(&first), Some(&end)) = (leaf.first(), leaf.last()) else {
                out.push(format!("{platform:?} leaf at {key:?} is empty"));
                continue;
            };
            let small = leaf.len() < LEAF_MIN && n + 1 != leaves;
            let unsorted = leaf.windows(2).any(|w| matches!(w, [a, b] if a >= b));
            if key > first || before.is_some_and(|b| b >= key) || small || unsorted {
                out.push(format!(
                    "{platform:?} leaf at {key:?}: {} entries, first {first:?}, \
                     previous leaf's last {before:?}",
                    leaf.len()
                ));
            }
            before = Some(end);
            count += leaf.len();
        }
        if count != self.len {
            out.push(format!(
                "{platform:?}: {count} entries, counted {}",
                self.len
            ));
        }
        out
    }
}

/// The index (see the module doc).
#[derive(Default)]
pub(crate) struct SeenIndex {
    ios: Leaves,
    android: Leaves,
}

impl SeenIndex {
    fn of(&self, p: Platform) -> &Leaves {
        match p {
            Platform::Ios => &self.ios,
            Platform::Android => &self.android,
        }
    }

    fn of_mut(&mut self, p: Platform) -> &mut Leaves {
        match p {
            Platform::Ios => &mut self.ios,
            Platform::Android => &mut self.android,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ios.len + self.android.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds an entry; false if it was there already.
    pub(crate) fn insert(&mut self, p: Platform, ms: u64, id: u32) -> bool {
        self.of_mut(p).insert(Entry::new(ms, id))
    }

    /// Removes an entry; false if it was not there.
    pub(crate) fn remove(&mut self, p: Platform, ms: u64, id: u32) -> bool {
        self.of_mut(p).remove(Entry::new(ms, id))
    }

    /// Starts loading what an insert or removal of this entry will read
    /// first (a hint; `state/ahead.rs`).
    pub(crate) fn prefetch(&self, p: Platform, ms: u64, id: u32) {
        self.of(p).prefetch(Entry::new(ms, id));
    }

    /// Starts loading the header `prefetch` of this entry will read: a
    /// stage after `prefetch_group`, a stage before `prefetch`.
    pub(crate) fn prefetch_leaf_header(&self, p: Platform, ms: u64, id: u32) {
        self.of(p).prefetch_leaf_header(Entry::new(ms, id));
    }

    /// Starts loading what `prefetch` of this entry will search: its
    /// group's keys (a hint, a stage before `prefetch`; `state/ahead.rs`).
    pub(crate) fn prefetch_group(&self, p: Platform, ms: u64, id: u32) {
        self.of(p).prefetch_group(Entry::new(ms, id));
    }

    pub(crate) fn contains(&self, p: Platform, ms: u64, id: u32) -> bool {
        self.of(p).contains(Entry::new(ms, id))
    }

    /// `(last_seen_ms, id)` of `p`'s devices seen at or after `since_ms`,
    /// in order.
    pub(crate) fn since(
        &self,
        p: Platform,
        since_ms: u64,
    ) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.of(p)
            .iter_from(Entry::new(since_ms, 0))
            .map(|e| (e.ms(), e.id))
    }

    /// `(last_seen_ms, id)` of `p`'s devices seen in `from_ms..to_ms`.
    pub(crate) fn between(
        &self,
        p: Platform,
        from_ms: u64,
        to_ms: u64,
    ) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.since(p, from_ms)
            .take_while(move |&(ms, _)| ms < to_ms)
    }

    /// Every entry, in `(platform, ms, id)` order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Platform, u64, u32)> + '_ {
        Platform::ALL
            .into_iter()
            .flat_map(move |p| self.since(p, 0).map(move |(ms, id)| (p, ms, id)))
    }

    /// The index of `entries`, sorted and without repeats, in whole leaves.
    pub(crate) fn from_sorted(entries: &[(Platform, u64, u32)]) -> SeenIndex {
        let of = |p: Platform| {
            Leaves::from_sorted(
                entries
                    .iter()
                    .filter(move |e| e.0 == p)
                    .map(|&(_, ms, id)| Entry::new(ms, id)),
            )
        };
        SeenIndex {
            ios: of(Platform::Ios),
            android: of(Platform::Android),
        }
    }

    /// What breaks the index's invariants (the integrity checker's).
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = self.ios.problems(Platform::Ios);
        out.extend(self.android.problems(Platform::Android));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    type Model = BTreeSet<(Platform, u64, u32)>;

    fn assert_agrees(ix: &SeenIndex, model: &Model) {
        assert_eq!(ix.problems(), Vec::<String>::new());
        assert_eq!(ix.len(), model.len());
        assert!(ix.entries().eq(model.iter().copied()));
    }

    fn leaves(ix: &SeenIndex, p: Platform) -> Vec<usize> {
        ix.of(p).all_leaves().map(|(_, leaf)| leaf.len()).collect()
    }

    /// Appends fill leaves whole, as a load does; inserts in the middle
    /// split them in half; removals keep every leaf but the last at least
    /// half full, and an emptied index holds no leaf.
    #[test]
    fn appends_fill_leaves_and_removals_keep_them_half_full() {
        let mut ix = SeenIndex::default();
        let n = 10 * LEAF_CAP as u64;
        for ms in 0..n {
            assert!(ix.insert(Platform::Ios, ms * 2, 7));
        }
        assert_eq!(leaves(&ix, Platform::Ios), vec![LEAF_CAP; 10]);
        assert!(leaves(&ix, Platform::Android).is_empty());
        assert!(ix.insert(Platform::Ios, 1, 7), "odd times go between");
        assert_eq!(leaves(&ix, Platform::Ios).len(), 11);
        assert!(!ix.insert(Platform::Ios, 1, 7), "already there");
        for ms in (0..n).filter(|ms| ms % 3 != 0) {
            assert!(ix.remove(Platform::Ios, ms * 2, 7));
        }
        assert!(!ix.remove(Platform::Ios, 4, 7), "removed already");
        let sizes = leaves(&ix, Platform::Ios);
        let (last, rest) = sizes.split_last().expect("leaves");
        assert!(
            *last > 0 && rest.iter().all(|&s| s >= LEAF_MIN),
            "{sizes:?}"
        );
        assert_eq!(ix.problems(), Vec::<String>::new());
        let left: Vec<_> = ix.entries().collect();
        for (p, ms, id) in left {
            assert!(ix.remove(p, ms, id));
        }
        assert!(ix.is_empty());
        assert!(leaves(&ix, Platform::Ios).is_empty());
    }

    /// Enough entries for many groups: inserts at random places split
    /// leaves and then groups, removals in random order join them, and
    /// the index agrees with a `BTreeSet` and keeps its invariants all
    /// along; a bulk build fills whole groups.
    #[test]
    fn many_leaves_split_and_join_groups() {
        let mut rnd = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
        let (mut ix, mut model) = (SeenIndex::default(), Model::new());
        let p = Platform::Android;
        for id in 0..(3 * GROUP_CAP * LEAF_CAP) as u32 {
            let ms = rnd() % 1_000_000;
            assert_eq!(ix.insert(p, ms, id), model.insert((p, ms, id)));
            if id % 4096 == 0 {
                assert_eq!(ix.problems(), Vec::<String>::new());
            }
        }
        assert_agrees(&ix, &model);
        let groups = ix.android.groups.len();
        assert!(groups >= 4, "inserts split groups: {groups}");
        let all: Vec<_> = model.iter().copied().collect();
        let built = SeenIndex::from_sorted(&all);
        assert_agrees(&built, &model);
        let sizes: Vec<usize> = built
            .android
            .groups
            .iter()
            .map(|g| g.leaves.len())
            .collect();
        let (_, whole) = sizes.split_last().expect("groups");
        assert!(whole.iter().all(|&n| n == GROUP_CAP), "{sizes:?}");
        let mut order = all;
        for i in (1..order.len()).rev() {
            order.swap(i, (rnd() % (i as u64 + 1)) as usize);
        }
        for (k, &(p, ms, id)) in order.iter().enumerate() {
            if k % 10 != 0 {
                assert!(ix.remove(p, ms, id));
                model.remove(&(p, ms, id));
            }
            if k % 4096 == 0 {
                assert_eq!(ix.problems(), Vec::<String>::new());
            }
        }
        assert_agrees(&ix, &model);
        assert!(ix.android.groups.len() < groups, "removals joined groups");
        for (p, ms, id) in model.iter().copied() {
            assert!(ix.remove(p, ms, id));
        }
        assert!(ix.is_empty());
        assert!(ix.android.groups.is_empty() && ix.android.heads.is_empty());
    }

    /// The strided search answers as a binary search does, at every length
    /// of a leaf and for every probe: below, between and on the entries,
    /// at the heads of runs and past the end.
    #[test]
    fn search_answers_as_binary_search_does() {
        for len in 0..=LEAF_CAP {
            let leaf: Vec<Entry> = (0..len as u64).map(|i| Entry::new(i * 2 + 1, 7)).collect();
            for ms in 0..=(len as u64 * 2 + 2) {
                for id in [6, 7, 8] {
                    let e = Entry::new(ms, id);
                    assert_eq!(search(&leaf, e), leaf.binary_search(&e), "len {len}, {e:?}");
                }
            }
        }
    }

    /// Times above 2^32 order by both halves, and ranges stop where asked.
    #[test]
    fn ranges_cross_the_halves_of_a_time() {
        let mut ix = SeenIndex::default();
        let times = [
            u64::MAX,
            1 << 32,
            (1 << 32) - 1,
            0,
            5 << 40,
            1_700_000_000_000,
        ];
        for (id, &ms) in times.iter().enumerate() {
            ix.insert(Platform::Android, ms, id as u32);
        }
        let mut sorted = times.to_vec();
        sorted.sort_unstable();
        let got: Vec<u64> = ix.since(Platform::Android, 0).map(|(ms, _)| ms).collect();
        assert_eq!(got, sorted);
        let got: Vec<u64> = ix
            .between(Platform::Android, (1 << 32) - 1, 5 << 40)
            .map(|(ms, _)| ms)
            .collect();
        assert_eq!(got, vec![(1 << 32) - 1, 1 << 32, 1_700_000_000_000]);
        assert!(ix.contains(Platform::Android, u64::MAX, 0));
        assert!(!ix.contains(Platform::Ios, u64::MAX, 0));
    }

    /// A timing probe, not run by default (`cargo test --release --lib
    /// seen_update_probe -- --ignored --nocapture`): 5×10^6 entries of one
    /// platform over 60 days, then rounds of 10^6 moves of a random entry
    /// half a day later (the harness's bulk update), each checked; prints
    /// the best round's time per move (DESIGN.md 13 step 29).
    #[test]
    #[ignore]
    fn seen_update_probe() {
        let n: u64 = 5_000_000;
        let day_ms = 86_400_000u64;
        let mut rnd = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut ms: Vec<u64> = (0..n)
            .map(|_| 1_700_000_000_000 + rnd() % (60 * day_ms))
            .collect();
        let mut all: Vec<(Platform, u64, u32)> = ms
            .iter()
            .enumerate()
            .map(|(i, &m)| (Platform::Ios, m, i as u32))
            .collect();
        all.sort_unstable();
        let mut ix = SeenIndex::from_sorted(&all);
        drop(all);
        let moves = 1_000_000u64;
        let mut best_ns = f64::MAX;
        for _ in 0..6 {
            let t = std::time::Instant::now();
            for _ in 0..moves {
                let id = (rnd() % n) as usize;
                let old = ms[id];
                assert!(ix.remove(Platform::Ios, old, id as u32));
                assert!(ix.insert(Platform::Ios, old + day_ms / 2, id as u32));
                ms[id] = old + day_ms / 2;
            }
            best_ns = best_ns.min(t.elapsed().as_nanos() as f64 / moves as f64);
        }
        assert_eq!(ix.len(), n as usize);
        assert_eq!(ix.problems(), Vec::<String>::new());
        eprintln!(
            "{best_ns:.0} ns per move (best of 6 rounds), {} leaves",
            ix.ios.all_leaves().count()
        );
    }

    proptest! {
        /// An entry orders as its `(ms, id)` pair, across the halves of
        /// `ms` (the small values make equal halves and ids common).
        #[test]
        fn entries_order_as_time_then_id(
            a in (0u64..4, 0u64..4, 0u32..3),
            b in (0u64..4, 0u64..4, 0u32..3),
            spread in prop_oneof![Just(0u64), Just(u64::from(u32::MAX) - 2), Just(1u64 << 40)],
        ) {
            let ms = |(hi, lo, _): (u64, u64, u32)| (hi << 32).wrapping_add(lo.wrapping_add(spread));
            let (x, y) = ((ms(a), a.2), (ms(b), b.2));
            prop_assert_eq!(Entry::new(x.0, x.1).cmp(&Entry::new(y.0, y.1)), x.cmp(&y));
            prop_assert_eq!(Entry::new(x.0, x.1) <= Entry::new(y.0, y.1), x <= y);
        }

        /// Any sequence of inserts, appends and removes agrees with a
        /// `BTreeSet`, in every range, and keeps the leaves' invariants;
        /// a bulk build of the same entries agrees too.
        #[test]
        fn agrees_with_a_btreeset(
            ops in proptest::collection::vec((0u8..3, any::<bool>(), 0u64..1500, 0u32..3), 0..2500),
            from in 0u64..1600,
            len in 0u64..400,
        ) {
            let mut ix = SeenIndex::default();
            let mut model = Model::new();
            let mut next = [1500u64; 2];
            for (i, (kind, android, ms, id)) in ops.into_iter().enumerate() {
                let p = if android { Platform::Android } else { Platform::Ios };
                match kind {
                    0 => prop_assert_eq!(ix.insert(p, ms, id), model.insert((p, ms, id))),
                    1 => {
                        let slot = &mut next[p.index()];
                        *slot += 1;
                        prop_assert_eq!(ix.insert(p, *slot, id), model.insert((p, *slot, id)));
                    }
                    _ => prop_assert_eq!(ix.remove(p, ms, id), model.remove(&(p, ms, id))),
                }
                if i % 97 == 0 {
                    prop_assert_eq!(ix.problems(), Vec::<String>::new());
                }
            }
            assert_agrees(&ix, &model);
            for p in Platform::ALL {
                let want: Vec<(u64, u32)> = model
                    .range((p, from, 0)..(p, from + len, 0))
                    .map(|&(_, ms, id)| (ms, id))
                    .collect();
                prop_assert_eq!(ix.between(p, from, from + len).collect::<Vec<_>>(), want);
            }
            let all: Vec<_> = model.iter().copied().collect();
            assert_agrees(&SeenIndex::from_sorted(&all), &model);
        }
    }
}

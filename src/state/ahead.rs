//! Read-ahead for a batch: while one operation is applied, the cache lines
//! that operations a few places later will read are asked for, so that
//! their misses overlap instead of coming one after another (DESIGN.md 6,
//! "A batch reads ahead").
//!
//! At 10^7 devices every register of a known device misses the cache in
//! the token index's entry, then in the device's slot, then in the slots
//! of its owner's other devices (the owner's list is kept in recency
//! order), then in the last-seen index's leaves it leaves and enters,
//! each miss waiting for the one before. The stages here follow the same
//! chain, each [`APPLY_PREFETCH_OPS`] operations behind the one before it:
//! the index entries; then the slots they name and the last-seen group
//! keys of a register's new time; then the owner's devices, the new
//! time's leaf header and the old time's group keys (the old time is in
//! the slot); half a stage later the new time's whole leaf and the old
//! time's leaf header; and a quarter stage later the old time's whole
//! leaf. The writer's warming pass walks the same stages for one entry
//! back to back (`read_ahead_one`). Nothing here changes the state, and a
//! wrong guess (a tag shared by another token, an operation earlier in
//! the batch that moves the device) costs a wasted load, never a wrong
//! answer.

use super::{Entry, State, NO_PERSON};
use crate::codec::with_packed;
use crate::model::{Op, Platform};

/// How many operations separate two stages of the read-ahead: far enough
/// for a miss to DRAM (about 100 ns) to land while the operations between
/// are applied (each at least several hundred nanoseconds at 10^7).
pub(crate) const APPLY_PREFETCH_OPS: usize = 8;
/// How far ahead of the entry being applied each stage of the read-ahead
/// works (`read_ahead_stage`): a stage, a stage, a stage, then a half and
/// a quarter of one for the last-seen leaves.
const STAGE_DISTANCES: [usize; 5] = [
    3 * APPLY_PREFETCH_OPS,
    2 * APPLY_PREFETCH_OPS,
    APPLY_PREFETCH_OPS,
    APPLY_PREFETCH_OPS / 2,
    APPLY_PREFETCH_OPS / 4,
];
/// Batches with fewer operations than this apply without read-ahead (its
/// hashes would cost more than the misses it saves).
pub(crate) const APPLY_PREFETCH_MIN_OPS: usize = 4 * APPLY_PREFETCH_OPS;
/// Nor does a state of fewer devices read ahead: its tables (16 MiB of
/// slots, 4 MiB of token index at this size) are mostly in the cache, and
/// the read-ahead's second hash and descents would then be all cost. (At
/// 10^4 devices `scale_probe`'s runs spread from 150k to 378k devices/s
/// with and without it alike, so that cost was too small to measure
/// there; DESIGN.md 13 step 46.)
pub(crate) const APPLY_PREFETCH_MIN_DEVICES: u64 = 1 << 18;

/// Most hashes the state keeps room for between batches (768 KiB): a
/// larger batch's vector is freed after it, not kept.
const AHEAD_KEEP_MAX: usize = 16_384;

/// A last-seen entry's place: `(platform, ms, id)`.
type SeenAt = (Platform, u64, u32);

/// What a stage of the read-ahead asks for of a last-seen entry's place,
/// in the order the stages come: each finds the one before in the cache.
#[derive(Clone, Copy)]
enum SeenLines {
    /// Its group's keys (found from the platform's heads).
    GroupKeys,
    /// Its leaf's vector header, in the group's leaves.
    LeafHeader,
    /// Every line of its leaf.
    Leaf,
}

/// Whether applying `ops` operations to `state` reads ahead.
fn reads_ahead(state: &State, ops: usize) -> bool {
    ops >= APPLY_PREFETCH_MIN_OPS && state.len() >= APPLY_PREFETCH_MIN_DEVICES
}

/// What the read-ahead knows of an entry before applying it: its token's
/// hash (packed) and its person's, in the state's hasher, and where its
/// last-seen time goes; each None when the entry names none.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct AheadHashes {
    token: Option<u64>,
    person: Option<u64>,
    /// The platform a register names and the time it (or a touch) was
    /// seen: where the device's last-seen entry goes.
    seen: Option<(Option<Platform>, u64)>,
}

impl State {
    /// The hashes `read_ahead` needs for `entries`, in the vector the
    /// state keeps for them (one allocated and freed per bulk batch would
    /// be another large free, each of which sets off glibc's consolidation
    /// of the batch's small frees); empty when the batch does not read
    /// ahead. Hand it back with `keep_ahead`.
    pub(crate) fn ahead_of(&mut self, entries: &[Entry]) -> Vec<AheadHashes> {
        let mut ahead = std::mem::take(&mut self.ahead_scratch);
        ahead.clear();
        if reads_ahead(self, entries.len()) {
            ahead.extend(entries.iter().map(|e| self.ahead_hashes(e)));
        }
        ahead
    }

    /// Takes back the vector of `ahead_of`, unless it grew past
    /// [`AHEAD_KEEP_MAX`].
    pub(crate) fn keep_ahead(&mut self, ahead: Vec<AheadHashes>) {
        if ahead.capacity() <= AHEAD_KEEP_MAX {
            self.ahead_scratch = ahead;
        }
    }

    /// The hashes `read_ahead` needs for `entry` (`op_hashes`; none for
    /// an entry that is not an operation).
    pub(crate) fn ahead_hashes(&self, entry: &Entry) -> AheadHashes {
        match entry {
            Entry::Op(op) => self.op_hashes(op),
            _ => AheadHashes::default(),
        }
    }

    /// The hashes of `op`: only registers and the operations on one token
    /// name what a later stage can find.
    fn op_hashes(&self, op: &Op) -> AheadHashes {
        let (token, person, seen) = match op {
            Op::Register(r) => (
                &r.token,
                r.person.as_deref(),
                Some((Some(r.platform), r.seen_ms)),
            ),
            Op::Touch { token, seen_ms } => (token, None, Some((None, *seen_ms))),
            Op::Logout { token, .. }
            | Op::Remove { token }
            | Op::Invalidate { token, .. }
            | Op::Feedback { token, .. } => (token, None, None),
            _ => return AheadHashes::default(),
        };
        AheadHashes {
            token: Some(with_packed(token, |packed| self.hash_bytes(packed))),
            person: person.map(|p| self.hash_bytes(p.as_bytes())),
            seen,
        }
    }

    /// Before applying entry `i` of a batch whose hashes are `ahead`: asks
    /// for the index entries of entry `i + 3d`, the slots of entry `i + 2d`
    /// and the owner's device slots of entry `i + d` (`d` being
    /// [`APPLY_PREFETCH_OPS`]), and the last-seen index's lines from
    /// `i + 2d` to `i + d/4` (`seen_moves`), each stage finding what the
    /// one before asked for in the cache.
    pub(crate) fn read_ahead(&self, ahead: &[AheadHashes], i: usize) {
        for (stage, distance) in STAGE_DISTANCES.into_iter().enumerate() {
            if let Some(h) = ahead.get(i + distance) {
                self.read_ahead_stage(h, stage);
            }
        }
    }

    /// Stage `stage` of the read-ahead for the entry hashed as `h` (each
    /// finds what the one before asked for in the cache): 0 its index
    /// entries; 1 the slots they name and the new time's group keys; 2 the
    /// owner's devices, the old time's group keys and the new leaf's
    /// header; 3 the old leaf's header and the new leaf; 4 the old leaf.
    fn read_ahead_stage(&self, h: &AheadHashes, stage: usize) {
        match stage {
            0 => {
                // A person is named only beside a token (a register).
                if let Some(t) = h.token {
                    self.prefetch_index_entries(t, h.person);
                }
            }
            1 => {
                if let Some(t) = h.token {
                    self.prefetch_device_slot(t);
                }
                if let Some(p) = h.person {
                    self.prefetch_person_slot(p);
                }
                // Where a register's new time goes needs no slot.
                if let Some((Some(p), seen_ms)) = h.seen {
                    self.by_seen.prefetch_group(p, seen_ms, u32::MAX);
                }
            }
            2 => {
                self.prefetch_owner_devices(h);
                self.prefetch_seen_moves(
                    h,
                    Some(SeenLines::GroupKeys),
                    Some(SeenLines::LeafHeader),
                );
            }
            3 => self.prefetch_seen_moves(h, Some(SeenLines::LeafHeader), Some(SeenLines::Leaf)),
            _ => self.prefetch_seen_moves(h, Some(SeenLines::Leaf), None),
        }
    }

    /// Before a write group's warming reads `op` (`warm.rs`), on a state
    /// of [`APPLY_PREFETCH_MIN_DEVICES`] or more: the read-ahead's stages
    /// for this one entry, back to back. Read as is, a register of a known
    /// device at 10^7 waits for about eleven misses one after another
    /// (the token's index entry and slot, the person's entry and slot,
    /// the owner's devices, then each last-seen place's group keys, leaf
    /// header and leaf). Three of those chains need nothing from each
    /// other: the token's, the person's and the new time's place. Here
    /// each stage asks for the next line of every chain at once, so their
    /// misses overlap, and only the old place (its time is in the slot)
    /// waits for the token's chain. Each stage reads what the one before
    /// asked for, so it waits about one miss: five stages instead of
    /// eleven misses. Nothing here changes the state (DESIGN.md 7, "The
    /// warming asks for an entry's chains side by side").
    pub(crate) fn read_ahead_one(&self, op: &Op) {
        if self.len() < APPLY_PREFETCH_MIN_DEVICES {
            return;
        }
        let h = self.op_hashes(op);
        if h.token.is_none() {
            return;
        }
        for stage in 0..STAGE_DISTANCES.len() {
            self.read_ahead_stage(&h, stage);
        }
    }

    /// Asks for `old`'s lines of the last-seen entry the entry moves out
    /// of, and `new`'s of the one it moves into (`seen_moves`; none where
    /// None).
    fn prefetch_seen_moves(&self, h: &AheadHashes, old: Option<SeenLines>, new: Option<SeenLines>) {
        let Some((from, to)) = self.seen_moves(h) else {
            return;
        };
        if let (Some(lines), Some(at)) = (old, from) {
            self.prefetch_seen_lines(lines, at);
        }
        if let Some(lines) = new {
            self.prefetch_seen_lines(lines, to);
        }
    }

    fn prefetch_seen_lines(&self, lines: SeenLines, (p, ms, id): SeenAt) {
        match lines {
            SeenLines::GroupKeys => self.by_seen.prefetch_group(p, ms, id),
            SeenLines::LeafHeader => self.by_seen.prefetch_leaf_header(p, ms, id),
            SeenLines::Leaf => self.by_seen.prefetch(p, ms, id),
        }
    }

    /// Where the entry moves the device's last-seen entry: out of `old`
    /// (a known device's, from its slot; none for a new device) and into
    /// `new`, each as `(platform, ms, id)`. A new device's id is not known
    /// yet, and only breaks ties: `u32::MAX` stands in. None when the
    /// entry sets no time. The read-ahead asks for each's group keys, then
    /// its leaf's header, then its leaf, a stage apart; the old leaf's
    /// stages trail the new one's, since its time is in the slot.
    fn seen_moves(&self, h: &AheadHashes) -> Option<(Option<SeenAt>, SeenAt)> {
        let (platform, seen_ms) = h.seen?;
        match h.token.and_then(|t| self.likely_slot(t)) {
            Some((id, s)) => {
                let to = platform.unwrap_or(s.platform);
                let old = (s.platform, s.last_seen_ms, id);
                Some((Some(old), (to, s.last_seen_ms.max(seen_ms), id)))
            }
            None => platform.map(|p| (None, (p, seen_ms, u32::MAX))),
        }
    }

    /// For a walk that looks up packed tokens one after another (`key(j)`
    /// the `j`-th, empty past the end), before token `i`: asks for the
    /// index entry of token `i + 2d` and the slot of token `i + d`. The
    /// checkpoint's snapshot walks the changed tokens so.
    /// Nothing on a state under [`APPLY_PREFETCH_MIN_DEVICES`].
    pub(crate) fn read_ahead_tokens<'k>(&self, key: impl Fn(usize) -> &'k [u8], i: usize) {
        if self.len() < APPLY_PREFETCH_MIN_DEVICES {
            return;
        }
        let d = APPLY_PREFETCH_OPS;
        let far = key(i + 2 * d);
        if !far.is_empty() {
            self.by_token.prefetch(self.hash_bytes(far));
        }
        let near = key(i + d);
        if !near.is_empty() {
            self.prefetch_device_slot(self.hash_bytes(near));
        }
    }

    /// The id and slot of the device the token index's entries for
    /// `token_hash` most likely name (the first with its tag: a guess
    /// that a lookup still checks).
    fn likely_slot(&self, token_hash: u64) -> Option<(u32, &super::Slot)> {
        let id = self.by_token.first_with_tag(token_hash)?;
        self.slot(id).map(|s| (id, s))
    }

    /// Starts loading the slot `likely_slot` would read.
    fn prefetch_device_slot(&self, token_hash: u64) {
        if let Some(id) = self.by_token.first_with_tag(token_hash) {
            self.slots.prefetch(id);
        }
    }

    /// The slots of the devices of the person entry `h` most likely names,
    /// else of its device's current owner: a register that moves the
    /// device in its owner's list compares it with them.
    fn prefetch_owner_devices(&self, h: &AheadHashes) {
        let named = h.person.and_then(|p| self.by_person.first_with_tag(p));
        let pid = named.or_else(|| {
            h.token
                .and_then(|t| self.likely_slot(t))
                .map(|(_, s)| s.person)
        });
        let Some(p) = pid.filter(|&p| p != NO_PERSON).and_then(|p| self.person(p)) else {
            return;
        };
        for &id in p.devices.iter().take(super::ids::INLINE_IDS) {
            self.slots.prefetch(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::warm::tests::register;

    /// The hashes are the ones the state's own lookups compute: the
    /// read-ahead's first stage lands on the entry `find` starts at, and
    /// its second names the device's and the person's ids.
    #[test]
    fn hashes_name_what_the_lookups_find() {
        let mut st = State::new(20);
        st.apply(&register("aa01", Some("p1")));
        let h = st.ahead_hashes(&register("aa01", Some("p1")));
        let token = h.token.and_then(|t| st.by_token.first_with_tag(t));
        assert_eq!(token, with_packed("aa01", |p| st.lookup(p)));
        assert!(token.is_some());
        let person = h.person.and_then(|p| st.by_person.first_with_tag(p));
        assert_eq!(person, st.person_id("p1"));
        assert!(person.is_some());
        let clock = st.ahead_hashes(&Entry::Clock(5));
        assert!(clock.token.is_none() && clock.person.is_none());
        let anonymous = st.ahead_hashes(&register("aa02", None));
        assert!(anonymous.token.is_some() && anonymous.person.is_none());
    }

    /// Only a bulk batch on a state of `APPLY_PREFETCH_MIN_DEVICES` reads
    /// ahead; reading ahead over every stage, past the batch's end too,
    /// and one entry at a time, changes nothing that applying it gives.
    #[test]
    fn a_bulk_batch_on_a_large_state_reads_ahead_and_applies_alike() {
        let n = APPLY_PREFETCH_MIN_DEVICES as usize;
        let mut plain = State::new(20);
        let batch = |from: usize, person: &str| -> Vec<Entry> {
            (from..from + APPLY_PREFETCH_MIN_OPS)
                .map(|i| register(&format!("{i:08x}"), Some(person)))
                .collect()
        };
        assert!(!reads_ahead(&plain, APPLY_PREFETCH_MIN_OPS));
        for i in 0..n - 1 {
            plain.apply(&register(&format!("{i:08x}"), Some(&format!("p{}", i / 2))));
        }
        assert!(!reads_ahead(&plain, APPLY_PREFETCH_MIN_OPS), "one short");
        plain.apply(&register(&format!("{:08x}", n - 1), None));
        assert!(reads_ahead(&plain, APPLY_PREFETCH_MIN_OPS));
        assert!(!reads_ahead(&plain, APPLY_PREFETCH_MIN_OPS - 1));
        // Known devices moving to one person, then new ones.
        let entries: Vec<Entry> = [batch(n - 20, "q"), batch(n + 5, "p1")].concat();
        assert!(plain
            .ahead_of(&entries[..APPLY_PREFETCH_MIN_OPS - 1])
            .is_empty());
        let hashes = plain.ahead_of(&entries);
        assert_eq!(hashes.len(), entries.len());
        let dump = plain.dump();
        for i in 0..entries.len() + 4 * APPLY_PREFETCH_OPS {
            plain.read_ahead(&hashes, i);
            plain.read_ahead_tokens(|j| plain.dirty.key(j), i);
        }
        // The one-entry read-ahead of the warming pass, on every
        // operation the batch holds (and one naming no token).
        let merge = Op::Merge {
            primary: "p1".into(),
            secondary: "q".into(),
        };
        for e in &entries {
            if let Entry::Op(op) = e {
                plain.read_ahead_one(op);
            }
        }
        plain.read_ahead_one(&merge);
        assert!(plain.dump() == dump, "reading ahead changed the state");
        let mut ahead = State::new(20);
        for e in plain.dump() {
            let mut r = register(&e.token, e.person.as_deref());
            if let Entry::Op(Op::Register(r)) = &mut r {
                r.seen_ms = e.last_seen_ms;
            }
            ahead.apply(&r);
        }
        plain.keep_ahead(hashes);
        let hashes = ahead.ahead_of(&entries);
        assert!(hashes.iter().all(|h| h.token.is_some() && h.seen.is_some()));
        let mut got = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            ahead.read_ahead(&hashes, i);
            got.push(format!("{:?}", ahead.apply(e)));
        }
        let want: Vec<String> = entries
            .iter()
            .map(|e| format!("{:?}", plain.apply(e)))
            .collect();
        assert_eq!(got, want);
        assert!(ahead.dump() == plain.dump());
    }
}

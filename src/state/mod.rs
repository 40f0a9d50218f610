//! The in-memory state: every device and every secondary index.
//!
//! Devices live in a slab (`slots`) addressed by `u32` ids; tokens are kept
//! packed (see `codec::pack_token`), people are interned, and identical
//! attribute sets share one blob. Ids are process-local and never persisted.

mod ahead;
mod apply;
mod check;
mod huge;
mod ids;
mod index;
mod lock;
mod name;
mod query;
mod seen;
mod slab;
mod token;
mod warm;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap, HashSet};

use crate::codec::cmp_packed;
use crate::feed::Feed;
use crate::history::{Cause, History, DEFAULT_HISTORY_RETENTION_MS};
use crate::model::{Deliverability, Platform};

pub(crate) use crate::log::entry::Entry;
pub(crate) use ahead::AheadHashes;
pub(crate) use apply::Applied;
pub(crate) use ids::DeviceIds;
use index::{IdIndex, NO_HINT};
pub(crate) use lock::{StateLock, StateRead, StateWrite};
use name::ShortName;
#[cfg(test)]
pub(crate) use name::SHORT_NAME_BYTES;
pub use query::{Cursor, Page, Stats};
use seen::SeenIndex;
use slab::Slab;
pub(crate) use token::SlotToken;

/// `Slot::person` value of an anonymous device.
pub(crate) const NO_PERSON: u32 = u32::MAX;

const HOUR_MS: u64 = 3_600_000;
/// Largest load-size hint honoured (a damaged hint must not reserve
/// terabytes): 2^28 devices or people.
const MAX_LOAD_HINT: usize = 1 << 28;

pub(crate) struct Slot {
    pub(crate) token: SlotToken,
    pub(crate) attrs: Arc<[u8]>,
    pub(crate) last_seen_ms: u64,
    pub(crate) person: u32,
    pub(crate) platform: Platform,
    /// The owner's name when it is short, a copy of its person slot's
    /// (`ShortName::NONE` for an anonymous device): a read of the device
    /// then makes no random read of the person (DESIGN.md 6). Set with
    /// `person`, always from the person's own slot.
    pub(crate) owner: ShortName,
}

/// Aligned to its line: a person slot is read whole (its name to match a
/// lookup, its device ids after), and unaligned (a chunk's buffer starts
/// 16 bytes into a line) every one spanned two lines.
#[repr(align(64))]
pub(crate) struct PersonSlot {
    pub(crate) name: Arc<str>,
    /// Device ids ordered by `last_seen_ms` descending, then token ascending.
    pub(crate) devices: DeviceIds,
    /// `name` again, inline when short: lookups by name and a device's
    /// owner read no second allocation (`state/name.rs`).
    short: ShortName,
}

// A cache line's worth (DESIGN.md section 6), and no more in the slab.
const _: () = assert!(std::mem::size_of::<PersonSlot>() == 64);
const _: () = assert!(std::mem::size_of::<Option<PersonSlot>>() == 64);
const _: () = assert!(std::mem::align_of::<Option<PersonSlot>>() == 64);

impl PersonSlot {
    fn new(name: &str) -> PersonSlot {
        PersonSlot {
            name: Arc::from(name),
            devices: DeviceIds::default(),
            short: ShortName::of(name),
        }
    }

    /// Whether this person is `name`.
    pub(crate) fn is(&self, name: &str) -> bool {
        self.short
            .matches(name)
            .unwrap_or_else(|| &*self.name == name)
    }

    /// The name, from the slot when it is short.
    pub(crate) fn name_str(&self) -> &str {
        self.short.as_str().unwrap_or(&self.name)
    }
}

/// The id of person `pid`'s newest device in `persons`, `NO_HINT` when
/// they have none (`State::newest_device`; a function of the slab alone,
/// so the open can call it while it writes the person index).
fn newest_in(persons: &Slab<PersonSlot>, pid: u32) -> u32 {
    persons
        .get(pid)
        .and_then(|p| p.devices.first().copied())
        .unwrap_or(NO_HINT)
}

pub(crate) struct State {
    hasher: DefaultHashBuilder,
    slots: Slab<Slot>,
    free_slots: Vec<u32>,
    by_token: IdIndex,
    persons: Slab<PersonSlot>,
    free_persons: Vec<u32>,
    by_person: IdIndex,
    /// (platform, last_seen_ms, id) for every device (`seen.rs`).
    by_seen: SeenIndex,
    /// Devices per (hour of last_seen_ms, platform).
    hour_counts: BTreeMap<u64, [u32; 2]>,
    attr_pool: HashSet<Arc<[u8]>>,
    /// A register's attribute blob is encoded here first: most blobs are in
    /// `attr_pool` already, and a hit then allocates nothing.
    attr_scratch: Vec<u8>,
    /// The hashes of the batch being applied, for its read-ahead; kept
    /// between batches (`state/ahead.rs`).
    ahead_scratch: Vec<AheadHashes>,
    live: u64,
    identified: u64,
    per_platform: [u64; 2],
    pub(crate) cap: u32,
    /// Packed tokens changed since the last checkpoint snapshot.
    pub(crate) dirty: crate::byteset::ByteSet,
    /// Deliverability of the devices that had delivery feedback, by slot
    /// id: a sparse side table, so a device without feedback costs nothing
    /// (DESIGN.md 20). An entry's device always exists.
    pub(crate) deliv: HashMap<u32, Deliverability>,
    /// Packed tokens whose deliverability changed or went away since the
    /// last checkpoint snapshot (`'Q'` keys to write or delete).
    pub(crate) deliv_dirty: HashSet<Box<[u8]>>,
    /// `'Q'` records found at open for tokens without a device (reported
    /// by `check`, dropped by the next checkpoint).
    pub(crate) deliv_orphans: Vec<String>,
    /// The change feed, changed by the same operations.
    pub(crate) feed: Feed,
    /// Ownership history and daily counters, changed by the same operations.
    pub(crate) history: History,
    /// Commit time of the entries being applied (the last `Entry::Clock`).
    pub(crate) now_ms: u64,
    /// The operation being applied, for the history (`Cause::None` between operations).
    pub(crate) cause: Cause,
    /// While loading at open, last-seen entries are collected here and the
    /// index is built once, sorted (much cheaper than one insert each).
    loading: Option<Vec<(Platform, u64, u32)>>,
}

impl State {
    pub(crate) fn new(cap: u32) -> State {
        State {
            hasher: DefaultHashBuilder::default(),
            slots: Slab::default(),
            free_slots: Vec::new(),
            by_token: IdIndex::default(),
            persons: Slab::default(),
            free_persons: Vec::new(),
            by_person: IdIndex::with_hints(),
            by_seen: SeenIndex::default(),
            hour_counts: BTreeMap::new(),
            attr_pool: HashSet::new(),
            attr_scratch: Vec::new(),
            ahead_scratch: Vec::new(),
            live: 0,
            identified: 0,
            per_platform: [0; 2],
            cap,
            dirty: crate::byteset::ByteSet::default(),
            deliv: HashMap::new(),
            deliv_dirty: HashSet::new(),
            deliv_orphans: Vec::new(),
            feed: Feed::default(),
            history: History::new(DEFAULT_HISTORY_RETENTION_MS),
            now_ms: 0,
            cause: Cause::None,
            loading: None,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.live
    }

    /// Changed records the next snapshot will write: devices, feed
    /// entries (items, known persons) and deliverability entries
    /// (`limits::CHECKPOINT_PENDING_RECORDS`).
    pub(crate) fn pending_records(&self) -> usize {
        self.dirty.len() + self.feed.dirty.len() + self.deliv_dirty.len()
    }

    pub(crate) fn slot(&self, id: u32) -> Option<&Slot> {
        self.slots.get(id)
    }

    fn slot_mut(&mut self, id: u32) -> Option<&mut Slot> {
        self.slots.get_mut(id)
    }

    pub(crate) fn person(&self, pid: u32) -> Option<&PersonSlot> {
        self.persons.get(pid)
    }

    /// What a device owned by `pid` keeps of its owner's name.
    fn owner_copy(&self, pid: u32) -> ShortName {
        self.person(pid).map_or(ShortName::NONE, |p| p.short)
    }

    fn hash_bytes(&self, b: &[u8]) -> u64 {
        self.hasher.hash_one(b)
    }

    pub(crate) fn lookup(&self, packed: &[u8]) -> Option<u32> {
        let h = self.hash_bytes(packed);
        self.by_token
            .find(h, |id| self.slot(id).is_some_and(|s| &*s.token == packed))
    }

    pub(crate) fn person_id(&self, name: &str) -> Option<u32> {
        self.person_id_hashed(name, self.hash_bytes(name.as_bytes()))
    }

    /// The person named `name`, asking for the slot of their newest device
    /// (the person index's hint) while their name is compared: a query
    /// that goes on to read that device waits for one load, not two.
    pub(crate) fn person_named(&self, name: &str) -> Option<&PersonSlot> {
        let h = self.hash_bytes(name.as_bytes());
        let pid = self.by_person.find_hinted(
            h,
            |newest| self.slots.prefetch(newest),
            |pid| self.person(pid).is_some_and(|p| p.is(name)),
        )?;
        self.person(pid)
    }

    fn person_id_hashed(&self, name: &str, h: u64) -> Option<u32> {
        self.by_person
            .find(h, |pid| self.person(pid).is_some_and(|p| p.is(name)))
    }

    /// Number of people (for the load-size hint).
    pub(crate) fn person_count(&self) -> usize {
        self.by_person.len()
    }

    fn intern_person(&mut self, name: &str) -> u32 {
        self.intern_person_hashed(name, self.hash_bytes(name.as_bytes()))
    }

    /// `intern_person` with the name's hash already computed (by `hasher`).
    fn intern_person_hashed(&mut self, name: &str, h: u64) -> u32 {
        if let Some(pid) = self.person_id_hashed(name, h) {
            return pid;
        }
        let slot = PersonSlot::new(name);
        let pid = match self.free_persons.pop() {
            Some(pid) => {
                // A free id was handed out before, so it has a place.
                let stored = self.persons.put(pid, slot);
                debug_assert!(stored, "free person id {pid} has no place");
                pid
            }
            None => self.persons.push(slot),
        };
        self.by_person.insert_unique(h, pid);
        pid
    }

    /// Drops a person that has no devices left.
    fn release_person_if_empty(&mut self, pid: u32) {
        let Some(p) = self.person(pid) else { return };
        if !p.devices.is_empty() {
            return;
        }
        let h = self.hash_bytes(p.name.as_bytes());
        self.by_person.remove(h, pid);
        self.persons.take(pid);
        self.free_persons.push(pid);
    }

    /// `person_name`, read only when `recorded` (a register reads its
    /// owners' names only when the history or a sink records them).
    fn name_if(&self, recorded: bool, pid: u32) -> Option<Arc<str>> {
        recorded.then(|| self.person_name(pid)).flatten()
    }

    pub(crate) fn person_name(&self, pid: u32) -> Option<Arc<str>> {
        if pid == NO_PERSON {
            return None;
        }
        self.person(pid).map(|p| p.name.clone())
    }

    pub(crate) fn intern_attrs(&mut self, blob: &[u8]) -> Arc<[u8]> {
        if let Some(a) = self.attr_pool.get(blob) {
            return a.clone();
        }
        let a: Arc<[u8]> = Arc::from(blob);
        self.attr_pool.insert(a.clone());
        a
    }

    pub(crate) fn attrs_interned(&self, blob: &[u8]) -> bool {
        self.attr_pool.contains(blob)
    }

    /// Drops a pooled blob no device references any more.
    fn release_attrs(&mut self, a: Arc<[u8]>) {
        // The pool holds one reference and `a` another.
        if Arc::strong_count(&a) == 2 {
            self.attr_pool.remove(&*a);
        }
    }

    /// Orders two devices the way person lists are kept: newest first, then token.
    fn recency_cmp(&self, a: u32, b: u32) -> std::cmp::Ordering {
        match (self.slot(a), self.slot(b)) {
            (Some(x), Some(y)) => y
                .last_seen_ms
                .cmp(&x.last_seen_ms)
                .then_with(|| cmp_packed(&x.token, &y.token)),
            _ => a.cmp(&b),
        }
    }

    fn person_list_insert(&mut self, pid: u32, id: u32) {
        let newest = self.newest_device(pid);
        self.person_list_insert_unhinted(pid, id);
        self.hint_newest_device(pid, newest);
    }

    fn person_list_remove(&mut self, pid: u32, id: u32) {
        let newest = self.newest_device(pid);
        self.person_list_remove_unhinted(pid, id);
        self.hint_newest_device(pid, newest);
    }

    fn person_list_insert_unhinted(&mut self, pid: u32, id: u32) {
        let Some(p) = self.persons.get(pid) else {
            return;
        };
        let pos = p
            .devices
            .binary_search_by(|&x| self.recency_cmp(x, id))
            .unwrap_or_else(|e| e);
        if let Some(p) = self.persons.get_mut(pid) {
            p.devices.insert(pos, id);
        }
    }

    fn person_list_remove_unhinted(&mut self, pid: u32, id: u32) {
        if let Some(p) = self.persons.get_mut(pid) {
            if let Some(pos) = p.devices.iter().position(|&x| x == id) {
                p.devices.remove(pos);
            }
        }
    }

    /// The id of `pid`'s newest device, `NO_HINT` when they have none.
    fn newest_device(&self, pid: u32) -> u32 {
        newest_in(&self.persons, pid)
    }

    /// Points the person index's hint of `pid` at their newest device when
    /// it is no longer `before` (the hint is advice only: `index.rs`).
    /// Hashing the name costs a few nanoseconds; the entry is in the cache
    /// whenever the change came by name (a register).
    fn hint_newest_device(&mut self, pid: u32, before: u32) {
        let newest = self.newest_device(pid);
        if newest == before {
            return;
        }
        if let Some(p) = self.person(pid) {
            let h = self.hash_bytes(p.name_str().as_bytes());
            let hinted = self.by_person.set_hint(h, pid, newest);
            debug_assert!(hinted, "person {pid} has no hinted index entry");
        }
    }

    fn hour_add(&mut self, ms: u64, platform: Platform, delta: i32) {
        let e = self.hour_counts.entry(ms / HOUR_MS).or_insert([0, 0]);
        let c = &mut e[platform.index()];
        *c = c.saturating_add_signed(delta);
        if *e == [0, 0] {
            self.hour_counts.remove(&(ms / HOUR_MS));
        }
    }

    /// Inserts a new device; the token must not be registered.
    pub(crate) fn insert_device(
        &mut self,
        token: SlotToken,
        platform: Platform,
        person: u32,
        last_seen_ms: u64,
        attrs: Arc<[u8]>,
    ) -> u32 {
        let h = self.hash_bytes(&token);
        self.insert_device_hashed(token, h, platform, person, last_seen_ms, attrs)
    }

    /// `insert_device` with the token's hash already computed (by `hasher`).
    fn insert_device_hashed(
        &mut self,
        token: SlotToken,
        h: u64,
        platform: Platform,
        person: u32,
        last_seen_ms: u64,
        attrs: Arc<[u8]>,
    ) -> u32 {
        debug_assert!(self.lookup(&token).is_none(), "insert of an existing token");
        debug_assert_eq!(
            h,
            self.hash_bytes(&token),
            "a token hashed with another hasher"
        );
        let slot = Slot {
            token,
            attrs,
            last_seen_ms,
            person,
            platform,
            owner: self.owner_copy(person),
        };
        let id = match self.free_slots.pop() {
            Some(id) => {
                let stored = self.slots.put(id, slot);
                debug_assert!(stored, "free slot id {id} has no place");
                id
            }
            None => self.slots.push(slot),
        };
        self.by_token.insert_unique(h, id);
        match &mut self.loading {
            // Index and hour counters are built in bulk by finish_load.
            Some(seen) => seen.push((platform, last_seen_ms, id)),
            None => {
                self.by_seen.insert(platform, last_seen_ms, id);
                self.hour_add(last_seen_ms, platform, 1);
            }
        }
        self.live += 1;
        self.per_platform[platform.index()] += 1;
        if person != NO_PERSON {
            self.identified += 1;
            if self.loading.is_some() {
                if let Some(p) = self.persons.get_mut(person) {
                    p.devices.push(id);
                }
            } else {
                self.person_list_insert(person, id);
            }
        }
        id
    }

    /// Starts a bulk load: indexes are finished by `finish_load`.
    /// Starts a bulk load of about `devices` devices of `persons` people
    /// (the hint the last checkpoint stored; 0 when unknown): reserving
    /// the tables up front spares the rehash of every token at each growth.
    pub(crate) fn begin_load(&mut self, devices: usize, persons: usize) {
        let (devices, persons) = (devices.min(MAX_LOAD_HINT), persons.min(MAX_LOAD_HINT));
        self.loading = Some(Vec::with_capacity(devices));
        // The slabs need no reserve: their chunks never move.
        self.by_token.reserve(devices);
        self.by_person.reserve(persons);
    }

    /// Builds the last-seen index and orders person lists after a bulk
    /// load, the index on a second thread (at 10^6 devices each took
    /// about a tenth of the open). `Corrupt` only if that thread panicked
    /// (a bug in devreg, not damage).
    pub(crate) fn finish_load(&mut self) -> crate::error::Result<()> {
        let Some(seen) = self.loading.take() else {
            self.order_person_lists();
            return Ok(());
        };
        let earlier = std::mem::take(&mut self.by_seen);
        let hours = std::mem::take(&mut self.hour_counts);
        let indexing = crate::beside::Helper {
            thread: "devreg-index",
            what: "the last-seen index",
            doing: "building the last-seen index",
        };
        let ((), built) = crate::beside::beside(
            &indexing,
            move || seen_index(seen, earlier, hours),
            || self.order_person_lists(),
        );
        let (by_seen, hours) = built?;
        self.by_seen = by_seen;
        self.hour_counts = hours;
        Ok(())
    }

    /// Orders every person's device list newest first.
    fn order_person_lists(&mut self) {
        for pid in 0..self.persons.len() as u32 {
            let mut devices = match self.persons.get_mut(pid) {
                Some(p) => std::mem::take(&mut p.devices),
                None => continue,
            };
            devices.sort_by(|&a, &b| self.recency_cmp(a, b));
            if let Some(p) = self.persons.get_mut(pid) {
                p.devices = devices;
            }
        }
        // One pass over the person index's entries, in their order.
        let persons = &self.persons;
        self.by_person
            .set_all_hints(|pid| persons.prefetch(pid), |pid| newest_in(persons, pid));
    }

    /// Deletes a device and returns its slot.
    pub(crate) fn remove_device(&mut self, id: u32) -> Option<Slot> {
        let slot = self.slots.take(id)?;
        if self.deliv.remove(&id).is_some() {
            self.deliv_dirty.insert(slot.token.to_boxed());
        }
        let h = self.hash_bytes(&slot.token);
        self.by_token.remove(h, id);
        self.by_seen.remove(slot.platform, slot.last_seen_ms, id);
        self.hour_add(slot.last_seen_ms, slot.platform, -1);
        self.live -= 1;
        self.per_platform[slot.platform.index()] -= 1;
        if slot.person != NO_PERSON {
            self.identified -= 1;
            self.person_list_remove(slot.person, id);
            self.release_person_if_empty(slot.person);
        }
        self.free_slots.push(id);
        Some(slot)
    }

    pub(crate) fn set_last_seen(&mut self, id: u32, ms: u64) -> bool {
        let Some(s) = self.slot(id) else { return false };
        let (old, platform, person) = (s.last_seen_ms, s.platform, s.person);
        if old == ms {
            return false;
        }
        // The list is re-sorted by one removal and one insertion; the hint
        // is set once, for the order they leave (a refresh of the newest
        // device changes nothing).
        let newest = self.newest_device(person);
        if person != NO_PERSON {
            self.person_list_remove_unhinted(person, id);
        }
        self.by_seen.remove(platform, old, id);
        self.hour_add(old, platform, -1);
        if let Some(s) = self.slot_mut(id) {
            s.last_seen_ms = ms;
        }
        self.by_seen.insert(platform, ms, id);
        self.hour_add(ms, platform, 1);
        if person != NO_PERSON {
            self.person_list_insert_unhinted(person, id);
            self.hint_newest_device(person, newest);
        }
        true
    }

    pub(crate) fn set_platform(&mut self, id: u32, platform: Platform) -> bool {
        let Some(s) = self.slot(id) else { return false };
        let (old, ms) = (s.platform, s.last_seen_ms);
        if old == platform {
            return false;
        }
        self.by_seen.remove(old, ms, id);
        self.hour_add(ms, old, -1);
        self.per_platform[old.index()] -= 1;
        if let Some(s) = self.slot_mut(id) {
            s.platform = platform;
        }
        self.by_seen.insert(platform, ms, id);
        self.hour_add(ms, platform, 1);
        self.per_platform[platform.index()] += 1;
        true
    }

    pub(crate) fn set_person(&mut self, id: u32, person: u32) -> bool {
        let Some(s) = self.slot(id) else { return false };
        let old = s.person;
        if old == person {
            return false;
        }
        if old != NO_PERSON {
            self.identified -= 1;
            self.person_list_remove(old, id);
        }
        let owner = self.owner_copy(person);
        if let Some(s) = self.slot_mut(id) {
            s.person = person;
            s.owner = owner;
        }
        if person != NO_PERSON {
            self.identified += 1;
            self.person_list_insert(person, id);
        }
        if old != NO_PERSON {
            self.release_person_if_empty(old);
        }
        true
    }

    pub(crate) fn set_attrs(&mut self, id: u32, blob: &[u8]) -> bool {
        let Some(s) = self.slot(id) else { return false };
        if &*s.attrs == blob {
            return false;
        }
        let new = self.intern_attrs(blob);
        let old = match self.slot_mut(id) {
            Some(s) => std::mem::replace(&mut s.attrs, new),
            None => return false,
        };
        self.release_attrs(old);
        true
    }

    /// Releases what a removed slot held in shared pools.
    pub(crate) fn drop_slot(&mut self, slot: Slot) {
        self.release_attrs(slot.attrs);
    }
}

/// The last-seen index and hour counters of a bulk load: the `loaded`
/// entries' counts are added to `hours` (which already counts `earlier`)
/// by runs of the sorted entries, one map lookup per (platform, hour)
/// instead of one per device; the sorted run builds the tree in bulk.
type SeenAndHours = (SeenIndex, BTreeMap<u64, [u32; 2]>);

fn seen_index(
    mut loaded: Vec<(Platform, u64, u32)>,
    earlier: SeenIndex,
    mut hours: BTreeMap<u64, [u32; 2]>,
) -> SeenAndHours {
    loaded.sort_unstable();
    let mut run: Option<(Platform, u64, u32)> = None;
    for &(platform, ms, _) in &loaded {
        let hour = ms / HOUR_MS;
        match &mut run {
            Some((p, h, n)) if *p == platform && *h == hour => *n += 1,
            _ => {
                if let Some((p, h, n)) = run.replace((platform, hour, 1)) {
                    hours.entry(h).or_insert([0, 0])[p.index()] += n;
                }
            }
        }
    }
    if let Some((p, h, n)) = run {
        hours.entry(h).or_insert([0, 0])[p.index()] += n;
    }
    if !earlier.is_empty() {
        loaded.extend(earlier.entries());
        loaded.sort_unstable();
    }
    loaded.dedup();
    (SeenIndex::from_sorted(&loaded), hours)
}

/// A device read from the store at open, its token hashed by the state's
/// `hasher` and its attributes interned (on the thread that scans the
/// store, `store/load.rs`).
pub(crate) struct LoadedDevice {
    /// The packed token.
    pub(crate) token: SlotToken,
    /// Its hash with the state's hasher.
    pub(crate) token_hash: u64,
    pub(crate) platform: Platform,
    /// The person's id (`NO_PERSON` for an anonymous device), from
    /// `load_person`.
    pub(crate) person: u32,
    pub(crate) last_seen_ms: u64,
    /// The interned attribute set (`adopt_interned` adopts the pool).
    pub(crate) attrs: Arc<[u8]>,
}

impl State {
    /// The hasher of the state's tables: a clone hashes the same, so the
    /// loading thread can hash tokens and names ahead of the inserts.
    pub(crate) fn hasher(&self) -> &DefaultHashBuilder {
        &self.hasher
    }

    /// The id of a person read from the store at open, interned with the
    /// name's hash already computed (by a clone of `hasher`).
    pub(crate) fn load_person(&mut self, name: &str, h: u64) -> u32 {
        debug_assert!(self.loading.is_some(), "load_person outside a load");
        self.intern_person_hashed(name, h)
    }

    /// For a device inserted or changed a few records later (by the open's
    /// load, or by a bulk batch's read-ahead, `ahead.rs`): starts loading
    /// the token index's entry and the person index's entry its lookups
    /// begin at.
    pub(crate) fn prefetch_index_entries(&self, token_hash: u64, person_hash: Option<u64>) {
        self.by_token.prefetch(token_hash);
        if let Some(h) = person_hash {
            self.by_person.prefetch(h);
        }
    }

    /// For a device inserted or changed a little later (its person index's
    /// entry loaded by `prefetch_index_entries`): starts loading the slot
    /// of the person it most likely names.
    pub(crate) fn prefetch_person_slot(&self, person_hash: u64) {
        if let Some(pid) = self.by_person.first_with_tag(person_hash) {
            self.persons.prefetch(pid);
        }
    }

    /// Inserts a device read from the store at open.
    pub(crate) fn load_device(&mut self, d: LoadedDevice) {
        debug_assert!(
            d.person == NO_PERSON || (d.person as usize) < self.persons.len(),
            "a loaded device of a person not loaded"
        );
        self.insert_device_hashed(
            d.token,
            d.token_hash,
            d.platform,
            d.person,
            d.last_seen_ms,
            d.attrs,
        );
    }

    /// Takes over the attribute pool of the loaded devices, built by the
    /// loading thread. `Corrupt` (a bug, not damage) when the state had
    /// its own.
    pub(crate) fn adopt_attr_pool(
        &mut self,
        attr_pool: HashSet<Arc<[u8]>>,
    ) -> crate::error::Result<()> {
        if !self.attr_pool.is_empty() {
            return Err(crate::error::Error::corrupt(
                "the attribute sets of the store",
                "loaded into a state that had its own (a bug in devreg, not damage)",
            ));
        }
        self.attr_pool = attr_pool;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot holds an APNs token and a short owner name inline: 96
    /// bytes, where a boxed token cost 48 bytes of slot plus a 48-byte
    /// allocation and the owner's name a read of the person (DESIGN.md 6).
    #[test]
    fn a_slot_is_96_bytes_with_its_token_and_owner_inline() {
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 96);
    }

    /// The run-length hour counts equal one count per entry, and entries
    /// already indexed keep their counts.
    #[test]
    fn seen_index_counts_every_entry_once() {
        let (ios, android) = (Platform::Ios, Platform::Android);
        let hour = |h: u64, m: u64| h * HOUR_MS + m;
        // Unsorted, with runs broken by platform and by hour.
        let loaded = vec![
            (android, hour(3, 5), 0),
            (ios, hour(3, 1), 1),
            (ios, hour(3, 7), 2),
            (android, hour(2, 0), 3),
            (ios, hour(5, 0), 4),
            (android, hour(3, 9), 5),
            (ios, hour(2, 59), 6),
        ];
        let earlier_entries = [(ios, hour(5, 2), 7)];
        let earlier = SeenIndex::from_sorted(&earlier_entries);
        let mut earlier_hours: BTreeMap<u64, [u32; 2]> = BTreeMap::new();
        earlier_hours.entry(5).or_insert([0, 0])[ios.index()] += 1;
        let (by_seen, hours) = seen_index(loaded.clone(), earlier, earlier_hours);
        let mut expected: BTreeMap<u64, [u32; 2]> = BTreeMap::new();
        for &(p, ms, _) in loaded.iter().chain(&earlier_entries) {
            expected.entry(ms / HOUR_MS).or_insert([0, 0])[p.index()] += 1;
        }
        assert_eq!(hours, expected);
        assert_eq!(by_seen.len(), loaded.len() + earlier_entries.len());
        assert!(loaded
            .iter()
            .chain(&earlier_entries)
            .all(|&(p, ms, id)| by_seen.contains(p, ms, id)));
        assert_eq!(by_seen.problems(), Vec::<String>::new());
    }
}

//! Reads: every query is a walk of an index, never a scan of all devices
//! (except `dump` and `check`, which exist to see everything).

use serde::Serialize;

use super::{Slot, State, HOUR_MS, NO_PERSON};
use crate::codec::{cmp_packed, pack_token, unpack_token};
use crate::format::DeviceView;
use crate::model::{Deliverability, Device, Platform};

/// Registry counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// All devices.
    pub devices: u64,
    /// Devices with an owner.
    pub identified: u64,
    /// Devices without an owner.
    pub anonymous: u64,
    /// iOS devices.
    pub ios: u64,
    /// Android devices.
    pub android: u64,
    /// People with at least one device.
    pub persons: u64,
    /// The per-person device cap in effect.
    pub max_devices_per_person: u32,
}

/// Where a paged walk in `(last_seen_ms, token)` order resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The platform being walked.
    pub platform: Platform,
    /// `last_seen_ms` of the last device returned.
    pub last_seen_ms: u64,
    /// Token of the last device returned.
    pub token: String,
}

/// One page of a walk, and where the next page starts (`None` at the end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The devices, in `(last_seen_ms, token)` order.
    pub devices: Vec<Device>,
    /// Pass this back to continue; `None` when the walk is done.
    pub next: Option<Cursor>,
}

impl State {
    pub(crate) fn to_device(&self, s: &Slot) -> Device {
        Device {
            token: unpack_token(&s.token).unwrap_or_default(),
            platform: s.platform,
            // Copied from the slot's copy, or from the person's name when
            // it is long: no reference count touched.
            person: self.owner_name(s).map(String::from),
            last_seen_ms: s.last_seen_ms,
            // Blobs are checked when they enter the pool.
            attributes: crate::codec::decode_attributes_trusted(&s.attrs),
        }
    }

    /// The owner's name of the device in `s`: the slot's copy when it is
    /// short, else the person's own (no reference count touched).
    pub(crate) fn owner_name<'a>(&'a self, s: &'a Slot) -> Option<&'a str> {
        if s.person == NO_PERSON {
            return None;
        }
        s.owner
            .as_str()
            .or_else(|| self.person(s.person).map(|p| p.name_str()))
    }

    pub(crate) fn device(&self, token: &str) -> Option<Device> {
        let id = crate::codec::with_packed(token, |p| self.lookup(p))?;
        self.slot(id).map(|s| self.to_device(s))
    }

    pub(crate) fn devices_of(&self, person: &str) -> Vec<Device> {
        let Some(p) = self.person_named(person) else {
            return Vec::new();
        };
        p.devices
            .iter()
            .filter_map(|&id| self.slot(id))
            .map(|s| self.to_device(s))
            .collect()
    }

    /// `devices_of` with each device's deliverability and whether it is
    /// suppressed (with `soft_limit`).
    pub(crate) fn devices_of_deliverability(
        &self,
        person: &str,
        soft_limit: u32,
    ) -> Vec<(Device, Deliverability, bool)> {
        let Some(p) = self.person_named(person) else {
            return Vec::new();
        };
        p.devices
            .iter()
            .filter_map(|&id| self.slot(id).map(|s| (id, s)))
            .map(|(id, s)| {
                let d = self.deliv.get(&id).copied().unwrap_or_default();
                let suppressed = d.suppressed(s.last_seen_ms, soft_limit);
                (self.to_device(s), d, suppressed)
            })
            .collect()
    }

    pub(crate) fn most_recent(&self, person: &str, platform: Option<Platform>) -> Option<Device> {
        let p = self.person_named(person)?;
        p.devices
            .iter()
            .filter_map(|&id| self.slot(id))
            .find(|s| platform.is_none_or(|want| s.platform == want))
            .map(|s| self.to_device(s))
    }

    /// The person's most recent device (of `platform`) that is not
    /// suppressed (`Deliverability::suppressed` with `soft_limit`): the
    /// same walk as `most_recent`, skipping suppressed devices.
    pub(crate) fn most_recent_deliverable(
        &self,
        person: &str,
        platform: Option<Platform>,
        soft_limit: u32,
    ) -> Option<Device> {
        let p = self.person_named(person)?;
        p.devices
            .iter()
            .filter_map(|&id| self.slot(id).map(|s| (id, s)))
            .filter(|(_, s)| platform.is_none_or(|want| s.platform == want))
            .find(|&(id, s)| !self.suppressed(id, s.last_seen_ms, soft_limit))
            .map(|(_, s)| self.to_device(s))
    }

    fn suppressed(&self, id: u32, last_seen_ms: u64, soft_limit: u32) -> bool {
        self.deliv
            .get(&id)
            .is_some_and(|d| d.suppressed(last_seen_ms, soft_limit))
    }

    /// A device's deliverability (the default when it had no feedback);
    /// `None` when the token is not registered.
    pub(crate) fn deliverability(&self, token: &str) -> Option<(Deliverability, u64)> {
        let id = crate::codec::with_packed(token, |p| self.lookup(p))?;
        let s = self.slot(id)?;
        Some((
            self.deliv.get(&id).copied().unwrap_or_default(),
            s.last_seen_ms,
        ))
    }

    fn active_count_one(&self, since_ms: u64, platform: Platform) -> u64 {
        // Whole hours from the counters, the partial first hour from the index.
        let first_full_hour = since_ms.div_ceil(HOUR_MS);
        let partial_end = first_full_hour.saturating_mul(HOUR_MS);
        let partial = self
            .by_seen
            .between(platform, since_ms, partial_end)
            .count() as u64;
        let full: u64 = self
            .hour_counts
            .range(first_full_hour..)
            .map(|(_, c)| u64::from(c[platform.index()]))
            .sum();
        partial + full
    }

    pub(crate) fn active_count(&self, since_ms: u64, platform: Option<Platform>) -> u64 {
        match platform {
            Some(p) => self.active_count_one(since_ms, p),
            None => Platform::ALL
                .iter()
                .map(|&p| self.active_count_one(since_ms, p))
                .sum(),
        }
    }

    /// Devices of `platform` with `last_seen_ms >= since_ms`, in
    /// `(last_seen_ms, token)` order, after `after` (exclusive), at most `limit`.
    pub(crate) fn page(
        &self,
        platform: Platform,
        since_ms: u64,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Page {
        let after_packed = after.map(|c| (c.last_seen_ms, pack_token(&c.token)));
        let start = after_packed
            .as_ref()
            .map_or(since_ms, |(ms, _)| (*ms).max(since_ms));
        let mut out: Vec<&Slot> = Vec::new();
        let mut group: Vec<&Slot> = Vec::new();
        let mut group_ms = None;
        let mut more = false;
        fn flush<'s>(group: &mut Vec<&'s Slot>, out: &mut Vec<&'s Slot>) {
            group.sort_by(|a, b| cmp_packed(&a.token, &b.token));
            out.append(group);
        }
        for (ms, id) in self.by_seen.since(platform, start) {
            let Some(s) = self.slot(id) else { continue };
            if let Some((a_ms, a_tok)) = &after_packed {
                if ms == *a_ms && cmp_packed(&s.token, a_tok).is_le() {
                    continue;
                }
            }
            if group_ms != Some(ms) {
                if out.len() + group.len() >= limit {
                    more = true;
                    break;
                }
                flush(&mut group, &mut out);
                group_ms = Some(ms);
            }
            group.push(s);
        }
        flush(&mut group, &mut out);
        if out.len() > limit {
            out.truncate(limit);
            more = true;
        }
        let next = if more {
            out.last().map(|s| Cursor {
                platform,
                last_seen_ms: s.last_seen_ms,
                token: unpack_token(&s.token).unwrap_or_default(),
            })
        } else {
            None
        };
        Page {
            devices: out.into_iter().map(|s| self.to_device(s)).collect(),
            next,
        }
    }

    /// How many devices a cap of `cap` would evict: every person's devices
    /// beyond it (what `set_cap` removes).
    pub(crate) fn evictions_at_cap(&self, cap: u32) -> u64 {
        self.persons
            .values()
            .map(|p| p.devices.len().saturating_sub(cap as usize) as u64)
            .sum()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            devices: self.live,
            identified: self.identified,
            anonymous: self.live - self.identified,
            ios: self.per_platform[0],
            android: self.per_platform[1],
            persons: (self.persons.len() - self.free_persons.len()) as u64,
            max_devices_per_person: self.cap,
        }
    }

    /// Every device ordered by token.
    pub(crate) fn dump(&self) -> Vec<Device> {
        let mut all: Vec<Device> = Vec::with_capacity(self.live as usize);
        let done: std::result::Result<(), std::convert::Infallible> = self.dump_each(|d| {
            all.push(d);
            Ok(())
        });
        match done {
            Ok(()) => all,
        }
    }

    /// Calls `f` with every device in token order, one at a time: the
    /// memory is a sorted reference per device (8 bytes), not the devices.
    /// Stops at `f`'s first error.
    pub(crate) fn dump_each<E>(
        &self,
        mut f: impl FnMut(Device) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.devices_by_token().try_for_each(&mut f)
    }

    /// Every device in token order, made one at a time as the iterator
    /// is advanced (the memory is a sorted reference per device, 8 bytes):
    /// the integrity check walks two states side by side with it.
    pub(crate) fn devices_by_token(&self) -> impl Iterator<Item = Device> + '_ {
        let mut all: Vec<&Slot> = self.slots.values().collect();
        all.sort_unstable_by(|a, b| cmp_packed(&a.token, &b.token));
        all.into_iter().map(|s| self.to_device(s))
    }

    /// The first `limit` devices in dump order (by token) after the token
    /// `after` (packed), in O(limit) memory: one pass over the slots keeps
    /// the `limit` smallest tokens in a max-heap, O(n log limit) time.
    pub(crate) fn dump_page(&self, after: Option<&[u8]>, limit: usize) -> Vec<Device> {
        /// Orders heap entries by packed token.
        struct ByToken<'a>(&'a Slot);
        impl PartialEq for ByToken<'_> {
            fn eq(&self, o: &Self) -> bool {
                cmp_packed(&self.0.token, &o.0.token).is_eq()
            }
        }
        impl Eq for ByToken<'_> {}
        impl PartialOrd for ByToken<'_> {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for ByToken<'_> {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                cmp_packed(&self.0.token, &o.0.token)
            }
        }
        let mut heap = std::collections::BinaryHeap::with_capacity(limit.saturating_add(1));
        for (_, s) in self.live_slots() {
            if after.is_some_and(|a| cmp_packed(&s.token, a).is_le()) {
                continue;
            }
            if heap.len() < limit {
                heap.push(ByToken(s));
            } else if heap
                .peek()
                .is_some_and(|top| cmp_packed(&s.token, &top.0.token).is_lt())
            {
                heap.pop();
                heap.push(ByToken(s));
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|b| self.to_device(b.0))
            .collect()
    }

    /// Packed tokens of every live device (for checks and checkpoints).
    pub(crate) fn live_slots(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.slots.iter()
    }

    pub(crate) fn owner_of(&self, s: &Slot) -> Option<std::sync::Arc<str>> {
        if s.person == NO_PERSON {
            None
        } else {
            self.person_name(s.person)
        }
    }
    /// Up to `n` identified persons, the same ones for the same persons
    /// whatever the order they arrived in: those with the smallest CRC-32
    /// of their name (ties by name), in that order. One pass, a heap of `n`.
    pub(crate) fn sample_persons(&self, n: usize) -> Vec<String> {
        let mut heap: std::collections::BinaryHeap<(u32, &str)> =
            std::collections::BinaryHeap::with_capacity(n.min(1 << 16) + 1);
        if n == 0 {
            return Vec::new();
        }
        for p in self.persons.values() {
            let key = (crc32fast::hash(p.name.as_bytes()), &*p.name);
            if heap.len() < n {
                heap.push(key);
            } else if heap.peek().is_some_and(|top| key < *top) {
                heap.pop();
                heap.push(key);
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|(_, name)| name.to_owned())
            .collect()
    }
}

impl crate::feed::Truth for State {
    fn owned(&self, person: &str, token: &[u8]) -> Option<DeviceView> {
        let s = self.lookup(token).and_then(|id| self.slot(id))?;
        let owner = self.owner_of(s)?;
        if &*owner != person {
            return None;
        }
        Some(device_view(s))
    }

    fn newest(&self, person: &str) -> Option<(Box<[u8]>, DeviceView)> {
        let p = self.person_named(person)?;
        let s = p.devices.first().and_then(|&id| self.slot(id))?;
        Some((s.token.to_boxed(), device_view(s)))
    }

    fn each_token(&self, f: &mut dyn FnMut(&[u8])) {
        for (_, s) in self.live_slots() {
            f(&s.token);
        }
    }

    fn device_count(&self) -> u64 {
        self.live
    }

    fn owner(&self, token: &[u8]) -> Option<std::sync::Arc<str>> {
        let s = self.lookup(token).and_then(|id| self.slot(id))?;
        self.owner_of(s)
    }
}

/// A device as the feed hands it to a sink format (never as JSON).
fn device_view(s: &Slot) -> DeviceView {
    DeviceView {
        token: unpack_token(&s.token).unwrap_or_default(),
        platform: s.platform,
        last_seen_ms: s.last_seen_ms,
        // Blobs are checked when they enter the pool.
        attributes: crate::codec::decode_attributes_trusted(&s.attrs),
    }
}

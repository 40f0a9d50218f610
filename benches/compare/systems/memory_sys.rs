//! The upper bound: a HashMap of devices with BTreeSet indexes under one
//! RwLock, no durability and no per-person cap.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use devreg::Device;
use parking_lot::RwLock;

use super::{System, Worker};
use crate::workload::Dev;

#[derive(Default)]
struct Maps {
    devices: HashMap<String, Device>,
    /// person -> (newest first, then token)
    by_person: HashMap<String, BTreeSet<(Reverse<u64>, String)>>,
    by_platform: BTreeSet<(u8, u64, String)>,
    by_seen: BTreeSet<(u64, String)>,
}

impl Maps {
    fn unindex(&mut self, d: &Device) {
        if let Some(p) = &d.person {
            if let Some(set) = self.by_person.get_mut(p) {
                set.remove(&(Reverse(d.last_seen_ms), d.token.clone()));
                if set.is_empty() {
                    self.by_person.remove(p);
                }
            }
        }
        self.by_platform
            .remove(&(d.platform as u8, d.last_seen_ms, d.token.clone()));
        self.by_seen.remove(&(d.last_seen_ms, d.token.clone()));
    }

    fn index(&mut self, d: &Device) {
        if let Some(p) = &d.person {
            self.by_person
                .entry(p.clone())
                .or_default()
                .insert((Reverse(d.last_seen_ms), d.token.clone()));
        }
        self.by_platform
            .insert((d.platform as u8, d.last_seen_ms, d.token.clone()));
        self.by_seen.insert((d.last_seen_ms, d.token.clone()));
    }

    fn upsert(&mut self, d: &Dev, seen_ms: u64) {
        let mut new = d.to_device(seen_ms);
        if let Some(old) = self.devices.remove(&d.token) {
            self.unindex(&old);
            new.last_seen_ms = new.last_seen_ms.max(old.last_seen_ms);
            if new.person.is_none() {
                new.person = old.person;
            }
        }
        self.index(&new);
        self.devices.insert(new.token.clone(), new);
    }
}

#[derive(Default)]
pub struct MemorySys {
    maps: RwLock<Maps>,
}

struct W<'a>(&'a MemorySys);

impl Worker for W<'_> {
    fn import(&mut self, batch: &[Dev]) {
        let mut m = self.0.maps.write();
        for d in batch {
            m.upsert(d, d.seen_ms);
        }
    }

    fn register(&mut self, d: &Dev, seen_ms: u64) {
        self.0.maps.write().upsert(d, seen_ms);
    }

    fn get(&mut self, token: &str) -> Option<Device> {
        self.0.maps.read().devices.get(token).cloned()
    }

    fn most_recent(&mut self, person: &str) -> Option<Device> {
        let m = self.0.maps.read();
        let (_, token) = m.by_person.get(person)?.first()?;
        m.devices.get(token).cloned()
    }

    fn active_count(&mut self, since_ms: u64) -> u64 {
        let m = self.0.maps.read();
        m.by_seen.range((since_ms, String::new())..).count() as u64
    }

    fn merge(&mut self, primary: &str, secondary: &str) {
        let mut m = self.0.maps.write();
        let Some(set) = m.by_person.remove(secondary) else {
            return;
        };
        for (_, token) in &set {
            if let Some(d) = m.devices.get_mut(token) {
                d.person = Some(primary.to_owned());
            }
        }
        m.by_person
            .entry(primary.to_owned())
            .or_default()
            .extend(set);
    }
}

impl System for MemorySys {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(W(self))
    }

    fn disk_bytes(&self) -> u64 {
        0
    }
}

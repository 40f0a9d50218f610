//! A plain reference model of the registry, written from the operation
//! semantics in issue 3 (not from `src/state`), shared by the model test and
//! the crash test; plus small helpers (a seeded RNG, directory copies).
#![allow(dead_code)]

pub mod workload;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use devreg::{Deliverability, Device, FeedbackOutcome, LogoutPolicy, Op, Outcome, Platform, Stats};

/// Consecutive soft failures that suppress a device (the default setting).
pub const SOFT_LIMIT: u32 = 3;

/// Every device by token; the per-person cap; what delivery feedback said
/// about each device that had some (issue 15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    pub devices: BTreeMap<String, Device>,
    pub cap: u32,
    pub deliv: BTreeMap<String, Deliverability>,
}

impl Model {
    pub fn new(cap: u32) -> Model {
        Model {
            devices: BTreeMap::new(),
            cap,
            deliv: BTreeMap::new(),
        }
    }

    /// A model holding exactly these devices (e.g. a registry's `dump()`).
    pub fn from_devices(cap: u32, devices: Vec<Device>) -> Model {
        Model {
            devices: devices.into_iter().map(|d| (d.token.clone(), d)).collect(),
            cap,
            deliv: BTreeMap::new(),
        }
    }

    /// Applies one operation; a deleted device forgets its feedback, and
    /// a rotation's new token starts with none.
    pub fn apply(&mut self, op: &Op) -> Outcome {
        if let Op::Rotate {
            old_token,
            new_token,
            ..
        } = op
        {
            if self.devices.contains_key(old_token) {
                self.deliv.remove(old_token);
                self.deliv.remove(new_token);
            }
        }
        let outcome = self.apply_op(op);
        let devices = &self.devices;
        self.deliv.retain(|t, _| devices.contains_key(t));
        outcome
    }

    /// Delivery feedback, from issue 15: `delivered` sets the last delivery
    /// and ends the run of soft failures before it; a soft failure older
    /// than the last delivery is ignored, else it extends the run (a run
    /// whose last failure the device was seen after starts again); a hard
    /// failure keeps the latest; `unregistered` is invalidate.
    fn feedback(&mut self, token: &str, outcome: FeedbackOutcome, at: u64) -> Outcome {
        if outcome == FeedbackOutcome::Unregistered {
            return self.apply_op(&Op::Invalidate {
                token: token.into(),
                provider_ms: at,
            });
        }
        let Some(seen) = self.devices.get(token).map(|d| d.last_seen_ms) else {
            return Outcome::NotFound;
        };
        let old = self.deliv.get(token).copied().unwrap_or_default();
        let mut d = old;
        match outcome {
            FeedbackOutcome::Delivered => {
                d.last_delivered_ms = Some(d.last_delivered_ms.unwrap_or(0).max(at));
                if d.last_soft_failure_ms.unwrap_or(0) <= at {
                    d.soft_failures = 0;
                }
            }
            FeedbackOutcome::SoftFailure => {
                // A replay (or an older failure) counts once.
                if d.last_delivered_ms.is_some_and(|x| x >= at)
                    || d.last_soft_failure_ms.is_some_and(|x| at <= x)
                {
                    return Outcome::Skipped;
                }
                let run_goes_on = d.last_soft_failure_ms.is_some_and(|x| x > seen);
                d.soft_failures = if run_goes_on { d.soft_failures + 1 } else { 1 };
                d.last_soft_failure_ms = Some(d.last_soft_failure_ms.unwrap_or(0).max(at));
            }
            _ => d.last_hard_failure_ms = Some(d.last_hard_failure_ms.unwrap_or(0).max(at)),
        }
        if d == old {
            return Outcome::Skipped;
        }
        self.deliv.insert(token.to_owned(), d);
        Outcome::Applied {
            devices: 1,
            evicted: 0,
        }
    }

    /// Whether a device is suppressed: a hard failure after it was last
    /// seen, or `SOFT_LIMIT` soft failures in a row, the last after it was
    /// last seen.
    pub fn suppressed(&self, token: &str) -> bool {
        let (Some(dev), Some(d)) = (self.devices.get(token), self.deliv.get(token)) else {
            return false;
        };
        let seen = dev.last_seen_ms;
        d.last_hard_failure_ms.is_some_and(|h| h > seen)
            || (d.soft_failures >= SOFT_LIMIT && d.last_soft_failure_ms.is_some_and(|s| s > seen))
    }

    /// A device's deliverability and whether it is suppressed.
    pub fn deliverability(&self, token: &str) -> Option<(Deliverability, bool)> {
        self.devices.get(token)?;
        let d = self.deliv.get(token).copied().unwrap_or_default();
        Some((d, self.suppressed(token)))
    }

    /// The most recent device of the person (and platform) not suppressed.
    pub fn most_recent_deliverable(
        &self,
        person: &str,
        platform: Option<Platform>,
    ) -> Option<Device> {
        self.devices_of(person)
            .into_iter()
            .filter(|d| platform.is_none_or(|p| d.platform == p))
            .find(|d| !self.suppressed(&d.token))
    }

    /// Applies one operation with the semantics of issue 3, literally.
    fn apply_op(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Register(r) => {
                let changed = match self.devices.get_mut(&r.token) {
                    Some(d) => {
                        let before = d.clone();
                        // An existing token gets the new platform.
                        d.platform = r.platform;
                        // last_seen never moves backwards.
                        d.last_seen_ms = d.last_seen_ms.max(r.seen_ms);
                        // Attributes replaced when given, kept when not.
                        if let Some(a) = &r.attributes {
                            d.attributes = a.clone();
                        }
                        // Person set when given (moves the token), kept when not.
                        if let Some(p) = &r.person {
                            d.person = Some(p.clone());
                        }
                        *d != before
                    }
                    None => {
                        self.devices.insert(
                            r.token.clone(),
                            Device {
                                token: r.token.clone(),
                                platform: r.platform,
                                person: r.person.clone(),
                                last_seen_ms: r.seen_ms,
                                attributes: r.attributes.clone().unwrap_or_default(),
                            },
                        );
                        true
                    }
                };
                let owner = self.devices[&r.token].person.clone();
                let evicted = match owner {
                    Some(p) => self.enforce_cap(&p, Some(&r.token)),
                    None => 0,
                };
                Outcome::Applied {
                    devices: u32::from(changed),
                    evicted,
                }
            }
            Op::Touch { token, seen_ms } => match self.devices.get_mut(token) {
                None => Outcome::NotFound,
                Some(d) => {
                    let new = d.last_seen_ms.max(*seen_ms);
                    let changed = new != d.last_seen_ms;
                    d.last_seen_ms = new;
                    Outcome::Applied {
                        devices: u32::from(changed),
                        evicted: 0,
                    }
                }
            },
            Op::Rotate {
                old_token,
                new_token,
                seen_ms,
            } => {
                let Some(mut d) = self.devices.remove(old_token) else {
                    return Outcome::NotFound;
                };
                let mut devices = 1;
                if self.devices.remove(new_token).is_some() {
                    devices += 1;
                }
                d.token = new_token.clone();
                d.last_seen_ms = d.last_seen_ms.max(*seen_ms);
                self.devices.insert(new_token.clone(), d);
                Outcome::Applied {
                    devices,
                    evicted: 0,
                }
            }
            Op::Logout { token, policy } => match policy {
                LogoutPolicy::Keep => match self.devices.get_mut(token) {
                    None => Outcome::NotFound,
                    Some(d) => {
                        let changed = d.person.take().is_some();
                        Outcome::Applied {
                            devices: u32::from(changed),
                            evicted: 0,
                        }
                    }
                },
                LogoutPolicy::Remove => self.delete(token),
            },
            Op::Merge { primary, secondary } => {
                assert_ne!(primary, secondary, "the model only sees valid operations");
                let mut moved = 0;
                for d in self.devices.values_mut() {
                    if d.person.as_deref() == Some(secondary.as_str()) {
                        d.person = Some(primary.clone());
                        moved += 1;
                    }
                }
                let evicted = self.enforce_cap(primary, None);
                Outcome::Applied {
                    devices: moved,
                    evicted,
                }
            }
            Op::Remove { token } => self.delete(token),
            Op::Invalidate { token, provider_ms } => match self.devices.get(token) {
                None => Outcome::NotFound,
                Some(d) if d.last_seen_ms <= *provider_ms => self.delete(token),
                Some(_) => Outcome::Skipped,
            },
            Op::Feedback {
                token,
                outcome,
                at_ms,
                ..
            } => self.feedback(token, *outcome, *at_ms),
            Op::Prune { before_ms } => {
                let before = self.devices.len();
                self.devices.retain(|_, d| d.last_seen_ms >= *before_ms);
                Outcome::Applied {
                    devices: (before - self.devices.len()) as u32,
                    evicted: 0,
                }
            }
        }
    }

    fn delete(&mut self, token: &str) -> Outcome {
        match self.devices.remove(token) {
            Some(_) => Outcome::Applied {
                devices: 1,
                evicted: 0,
            },
            None => Outcome::NotFound,
        }
    }

    /// Deletes `person`'s least recently seen devices, oldest
    /// `(last_seen_ms, token)` first, never `protect`, until the cap holds.
    fn enforce_cap(&mut self, person: &str, protect: Option<&str>) -> u32 {
        let owned: Vec<&Device> = self
            .devices
            .values()
            .filter(|d| d.person.as_deref() == Some(person))
            .collect();
        let excess = owned.len().saturating_sub(self.cap as usize);
        let mut candidates: Vec<(u64, String)> = owned
            .iter()
            .filter(|d| Some(d.token.as_str()) != protect)
            .map(|d| (d.last_seen_ms, d.token.clone()))
            .collect();
        candidates.sort();
        let mut evicted = 0;
        for (_, token) in candidates.into_iter().take(excess) {
            self.devices.remove(&token);
            evicted += 1;
        }
        evicted
    }

    /// Every device, ordered by token.
    pub fn dump(&self) -> Vec<Device> {
        self.devices.values().cloned().collect()
    }

    /// A person's devices: `last_seen_ms` descending, then token ascending.
    pub fn devices_of(&self, person: &str) -> Vec<Device> {
        let mut v: Vec<Device> = self
            .devices
            .values()
            .filter(|d| d.person.as_deref() == Some(person))
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            (Reverse(a.last_seen_ms), &a.token).cmp(&(Reverse(b.last_seen_ms), &b.token))
        });
        v
    }

    pub fn most_recent(&self, person: &str, platform: Option<Platform>) -> Option<Device> {
        self.devices_of(person)
            .into_iter()
            .find(|d| platform.is_none_or(|p| d.platform == p))
    }

    pub fn active_since(&self, since_ms: u64, platform: Option<Platform>) -> u64 {
        self.devices
            .values()
            .filter(|d| d.last_seen_ms >= since_ms && platform.is_none_or(|p| d.platform == p))
            .count() as u64
    }

    /// A platform's devices in `(last_seen_ms, token)` order, from `since_ms`.
    pub fn by_platform(&self, platform: Platform, since_ms: u64) -> Vec<Device> {
        let mut v: Vec<Device> = self
            .devices
            .values()
            .filter(|d| d.platform == platform && d.last_seen_ms >= since_ms)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.last_seen_ms, &a.token).cmp(&(b.last_seen_ms, &b.token)));
        v
    }

    pub fn stats(&self) -> Stats {
        let identified = self.devices.values().filter(|d| d.person.is_some()).count() as u64;
        let persons: BTreeSet<&str> = self
            .devices
            .values()
            .filter_map(|d| d.person.as_deref())
            .collect();
        let count = |p| self.devices.values().filter(|d| d.platform == p).count() as u64;
        Stats {
            devices: self.devices.len() as u64,
            identified,
            anonymous: self.devices.len() as u64 - identified,
            ios: count(Platform::Ios),
            android: count(Platform::Android),
            persons: persons.len() as u64,
            max_devices_per_person: self.cap,
        }
    }
}

/// splitmix64: a tiny deterministic RNG for generating workloads from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// Copies a directory tree (files and subdirectories).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for ent in std::fs::read_dir(from).unwrap() {
        let ent = ent.unwrap();
        let target = to.join(ent.file_name());
        if ent.file_type().unwrap().is_dir() {
            copy_dir(&ent.path(), &target);
        } else {
            std::fs::copy(ent.path(), &target).unwrap();
        }
    }
}

/// Asserts that a registry's check is clean, with the problems on failure.
pub fn assert_clean(reg: &devreg::Registry, context: &str) {
    let report = reg.check().expect("check runs");
    assert!(
        report.is_clean(),
        "{context}: check found problems: {:#?}",
        report.problems
    );
}

//! The integrity checker: recomputes every index from the slots and reports
//! each disagreement in words (tokens abbreviated, see `token_label`).

use std::collections::{BTreeMap, BTreeSet};

use super::{ShortName, State, HOUR_MS, NO_PERSON};
use crate::codec::{decode_attributes, unpack_token};
use crate::model::{token_bytes_label, token_label};

impl State {
    /// Verifies every index and counter against the device slots.
    pub(crate) fn check_indexes(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut live = 0u64;
        let mut identified = 0u64;
        let mut per_platform = [0u64; 2];
        let mut seen = BTreeSet::new();
        let mut hours: BTreeMap<u64, [u32; 2]> = BTreeMap::new();
        let mut person_members: BTreeMap<u32, usize> = BTreeMap::new();
        for (id, s) in self.live_slots() {
            let name = unpack_token(&s.token);
            let label = match &name {
                Some(token) => token_label(token),
                None => token_bytes_label(&s.token),
            };
            if name.is_none() {
                problems.push(format!(
                    "device {label}: token bytes are not a packed token"
                ));
            }
            live += 1;
            per_platform[s.platform.index()] += 1;
            seen.insert((s.platform, s.last_seen_ms, id));
            hours.entry(s.last_seen_ms / HOUR_MS).or_insert([0, 0])[s.platform.index()] += 1;
            if self.lookup(&s.token) != Some(id) {
                problems.push(format!("device {label}: token index does not point at it"));
            }
            if !self.attrs_interned(&s.attrs) {
                problems.push(format!("device {label}: attributes are not in the pool"));
            }
            if let Err(e) = decode_attributes(&label, &s.attrs) {
                problems.push(format!("device {label}: {e}"));
            }
            if s.person != NO_PERSON {
                identified += 1;
                *person_members.entry(s.person).or_default() += 1;
                match self.person(s.person) {
                    None => problems.push(format!("device {label}: owner id {} is free", s.person)),
                    Some(p) if !p.devices.contains(&id) => {
                        problems.push(format!("device {label}: missing from {:?}'s list", p.name))
                    }
                    Some(p) if s.owner != p.short => problems.push(format!(
                        "device {label}: its copy of the owner's name differs from {:?}",
                        p.name
                    )),
                    Some(_) => {}
                }
            } else if s.owner != ShortName::NONE {
                problems.push(format!(
                    "device {label}: anonymous, but holds an owner's name"
                ));
            }
        }
        if self.by_token.len() as u64 != live {
            problems.push(format!(
                "token index has {} entries for {live} devices",
                self.by_token.len()
            ));
        }
        problems.extend(self.by_seen.problems());
        if !seen.iter().copied().eq(self.by_seen.entries()) {
            problems.push(format!(
                "last-seen index differs from the devices ({} entries, expected {})",
                self.by_seen.len(),
                seen.len()
            ));
        }
        if hours != self.hour_counts {
            problems.push("hourly activity counters differ from the devices".into());
        }
        if (live, identified, per_platform) != (self.live, self.identified, self.per_platform) {
            problems.push(format!(
                "counters say {} devices ({} identified, {:?} per platform); found {live} ({identified}, {per_platform:?})",
                self.live, self.identified, self.per_platform
            ));
        }
        let mut persons = 0;
        for (pid, p) in self.persons.iter() {
            persons += 1;
            if p.devices.is_empty() {
                problems.push(format!("person {:?} has no devices but is kept", p.name));
            }
            if self.person_id(&p.name) != Some(pid) {
                problems.push(format!(
                    "person {:?}: name index does not point at it",
                    p.name
                ));
            }
            if person_members.get(&pid).copied().unwrap_or(0) != p.devices.len() {
                problems.push(format!(
                    "person {:?}: device list length differs from owners",
                    p.name
                ));
            }
            if p.devices.len() > self.cap as usize {
                problems.push(format!(
                    "person {:?} has {} devices, over the cap of {}",
                    p.name,
                    p.devices.len(),
                    self.cap
                ));
            }
            for w in p.devices.windows(2) {
                if let [a, b] = w {
                    if self.recency_cmp(*a, *b).is_gt() {
                        problems.push(format!("person {:?}: device list out of order", p.name));
                    }
                }
            }
        }
        if self.by_person.len() != persons {
            problems.push(format!(
                "person index has {} entries for {persons} persons",
                self.by_person.len()
            ));
        }
        problems.extend(self.check_person_hints());
        problems.extend(self.check_deliverability());
        problems
    }

    /// Every person index entry hints at its person's newest device. A
    /// stale hint gives no wrong answer (it is only prefetched), but every
    /// change to a device list keeps it, so a stale one is a bug in that
    /// upkeep.
    fn check_person_hints(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (pid, hint) in self.by_person.hinted_ids() {
            let newest = self.newest_device(pid);
            if hint != newest {
                let name = self.person(pid).map_or("", |p| p.name_str());
                problems.push(format!(
                    "person {name:?}: index hints at device {hint}, the newest is {newest}"
                ));
            }
        }
        problems
    }

    /// Verifies the deliverability side table: every entry belongs to a
    /// live device, holds something (an empty entry is never made), and
    /// its soft-failure count has a time; records loaded for absent
    /// devices are reported.
    fn check_deliverability(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .deliv_orphans
            .iter()
            .map(|k| format!("{k} has no device"))
            .collect();
        for (&id, d) in &self.deliv {
            let Some(s) = self.slot(id) else {
                problems.push(format!("deliverability entry of free slot {id}"));
                continue;
            };
            let label = unpack_token(&s.token)
                .map_or_else(|| token_bytes_label(&s.token), |t| token_label(&t));
            if *d == crate::model::Deliverability::default() {
                problems.push(format!("device {label}: empty deliverability entry"));
            }
            if d.soft_failures > 0 && d.last_soft_failure_ms.is_none() {
                problems.push(format!(
                    "device {label}: {} soft failures without a time",
                    d.soft_failures
                ));
            }
        }
        problems
    }

    /// The deliverability side table by packed token, sorted (to compare
    /// memory with store+log).
    pub(crate) fn deliverability_by_token(&self) -> Vec<(Box<[u8]>, crate::model::Deliverability)> {
        let mut out: Vec<_> = self
            .deliv
            .iter()
            .filter_map(|(&id, d)| self.slot(id).map(|s| (s.token.to_boxed(), *d)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl State {
    /// The device's (owner, platform), `None` when it does not exist (what
    /// the history's newest entry of the token must say).
    pub(crate) fn device_status(
        &self,
        token: &[u8],
    ) -> Option<(Option<std::sync::Arc<str>>, crate::model::Platform)> {
        self.lookup(token)
            .and_then(|id| self.slot(id))
            .map(|s| (self.person_name(s.person), s.platform))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Entry;
    use super::*;
    use crate::model::{Op, Platform, Register};

    #[test]
    fn problems_abbreviate_tokens() {
        let token = "f4c2a9b1".to_string() + &"7".repeat(56);
        let mut st = State::new(5);
        st.apply(&Entry::Op(Op::Register(Register {
            token: token.clone(),
            platform: Platform::Ios,
            person: Some("ann".into()),
            seen_ms: 5_000,
            attributes: None,
        })));
        assert_eq!(st.check_indexes(), Vec::<String>::new());
        // Damage: the person's device list loses the device.
        for p in st.persons.iter_mut() {
            p.devices.clear();
        }
        let problems = assert_reported(&st, "device f4c2a9b1…(64 bytes): missing from");
        assert!(problems.iter().all(|p| !p.contains(&token)), "{problems:?}");
    }

    /// The person index's hint names the newest device through a register
    /// of a newer device, a refresh of an older one, a move to another
    /// owner, an older device added and the newest removed; the checker
    /// reports a hint that does not.
    #[test]
    fn the_person_hint_follows_the_newest_device() {
        let mut st = State::new(5);
        let hint_of = |st: &State, name: &str| {
            let pid = st.person_id(name).expect("a person");
            let hints: Vec<u32> = st
                .by_person
                .hinted_ids()
                .filter(|&(id, _)| id == pid)
                .map(|(_, hint)| hint)
                .collect();
            assert_eq!(hints.len(), 1, "one entry for {name}");
            hints
                .first()
                .and_then(|&id| st.slot(id))
                .map(|s| s.token.to_boxed())
        };
        let packed = |t: &str| Some(crate::codec::pack_token(t));
        register_at(&mut st, "aa01", Some("ann"), 5_000);
        assert_eq!(hint_of(&st, "ann"), packed("aa01"));
        register_at(&mut st, "aa02", Some("ann"), 6_000);
        assert_eq!(hint_of(&st, "ann"), packed("aa02"));
        register_at(&mut st, "aa01", Some("ann"), 7_000);
        assert_eq!(hint_of(&st, "ann"), packed("aa01"));
        register_at(&mut st, "aa01", Some("bob"), 7_000);
        assert_eq!(hint_of(&st, "ann"), packed("aa02"));
        assert_eq!(hint_of(&st, "bob"), packed("aa01"));
        register_at(&mut st, "aa03", Some("ann"), 4_000);
        assert_eq!(hint_of(&st, "ann"), packed("aa02"));
        let _ = st.apply(&Entry::Op(Op::Remove {
            token: "aa02".into(),
        }));
        assert_eq!(hint_of(&st, "ann"), packed("aa03"));
        assert_eq!(st.check_indexes(), Vec::<String>::new());
        // Damage: ann's entry hints at bob's device.
        let ann = st.person_id("ann").expect("ann");
        let bobs = st.lookup(&crate::codec::pack_token("aa01")).expect("aa01");
        let h = st.hash_bytes(b"ann");
        assert!(st.by_person.set_hint(h, ann, bobs));
        assert_reported(&st, &format!("\"ann\": index hints at device {bobs}"));
    }

    /// The checker's problems, which must include one containing `what`.
    fn assert_reported(st: &State, what: &str) -> Vec<String> {
        let problems = st.check_indexes();
        assert!(problems.iter().any(|p| p.contains(what)), "{problems:?}");
        problems
    }

    fn register(st: &mut State, token: &str, person: Option<&str>) {
        register_at(st, token, person, 5_000);
    }

    fn register_at(st: &mut State, token: &str, person: Option<&str>, seen_ms: u64) {
        st.apply(&Entry::Op(Op::Register(Register {
            token: token.into(),
            platform: Platform::Android,
            person: person.map(String::from),
            seen_ms,
            attributes: None,
        })));
    }

    /// A device's copy of its owner's name follows every change of owner,
    /// a freed person id reused by another name, and names too long to
    /// copy; the checker reports a copy that differs.
    #[test]
    fn a_devices_copy_of_its_owners_name_follows_its_owner() {
        let long = "l".repeat(super::super::name::SHORT_NAME_BYTES + 1);
        let mut st = State::new(5);
        register(&mut st, "aa01", Some("ann"));
        register(&mut st, "aa01", Some("bob"));
        // ann's id is free now, and "carol" may take it.
        register(&mut st, "aa02", Some("carol"));
        register(&mut st, "aa03", Some(&long));
        register(&mut st, "aa04", None);
        assert_eq!(st.check_indexes(), Vec::<String>::new());
        let owner = |st: &State, t: &str| st.device(t).and_then(|d| d.person);
        assert_eq!(owner(&st, "aa01").as_deref(), Some("bob"));
        assert_eq!(owner(&st, "aa02").as_deref(), Some("carol"));
        assert_eq!(owner(&st, "aa03"), Some(long));
        assert_eq!(owner(&st, "aa04"), None);
        // Damage: one device's copy names someone else.
        for s in st.slots.iter_mut() {
            if s.person != NO_PERSON && s.owner.as_str() == Some("carol") {
                s.owner = ShortName::of("bob");
            }
        }
        assert_reported(&st, "copy of the owner's name differs from \"carol\"");
    }

    /// The checker reports a last-seen entry that is missing, one that
    /// names a time the device does not have, and an extra one.
    #[test]
    fn a_damaged_last_seen_index_is_reported() {
        let mut st = State::new(5);
        register(&mut st, "aa01", Some("ann"));
        register(&mut st, "aa02", None);
        assert_eq!(st.check_indexes(), Vec::<String>::new());
        let id = st
            .lookup(&crate::codec::pack_token("aa01"))
            .expect("registered");
        assert!(st.by_seen.remove(Platform::Android, 5_000, id));
        assert_reported(
            &st,
            "last-seen index differs from the devices (1 entries, expected 2)",
        );
        assert!(st.by_seen.insert(Platform::Android, 5_001, id));
        assert_reported(
            &st,
            "last-seen index differs from the devices (2 entries, expected 2)",
        );
        assert!(st.by_seen.remove(Platform::Android, 5_001, id));
        assert!(st.by_seen.insert(Platform::Android, 5_000, id));
        assert_eq!(st.check_indexes(), Vec::<String>::new());
        assert!(st.by_seen.insert(Platform::Ios, 5_000, id));
        assert_reported(
            &st,
            "last-seen index differs from the devices (3 entries, expected 2)",
        );
    }
}

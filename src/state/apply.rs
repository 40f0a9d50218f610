//! Operations on the state. Each is deterministic in the state and the
//! operation alone, so replaying the log rebuilds exactly the state that was
//! acknowledged.

use std::sync::Arc;

use super::{Entry, SlotToken, State, NO_PERSON};
use crate::codec::{cmp_packed, encode_attributes_into, pack_token, with_packed};
use crate::feed::{AckResult, Batch};
use crate::format::{EventKind, TokenEvent};
use crate::history::Cause;
use crate::model::{FeedbackOutcome, LogoutPolicy, Op, Outcome, Platform, Register};

/// What applying an entry returned.
#[derive(Debug)]
pub(crate) enum Applied {
    Op(Outcome),
    Batch(Option<Arc<Batch>>),
    Count(u64),
    /// Nothing changed: the entry was refused for this reason.
    Rejected(&'static str, String),
}

impl State {
    /// Applies one validated log entry; also says whether the state changed
    /// (an entry that changed nothing need not be logged).
    pub(crate) fn apply(&mut self, entry: &Entry) -> (Applied, bool) {
        match entry {
            Entry::Op(op) => {
                let o = self.apply_op(op);
                let changed = matches!(o, Outcome::Applied { devices, evicted } if devices > 0 || evicted > 0);
                (Applied::Op(o), changed)
            }
            Entry::Clock(ms) => {
                self.now_ms = self.now_ms.max(*ms);
                (Applied::Count(0), false)
            }
            Entry::SetCap(cap) => {
                self.cause = Cause::EvictByCap;
                let o = self.set_cap(*cap);
                self.cause = Cause::None;
                (Applied::Op(o), true)
            }
            Entry::AddSink(name) => self.add_sink(name, Default::default()),
            Entry::AddSinkWith { sink, settings } => self.add_sink(sink, *settings),
            Entry::Export {
                sink,
                max_ops,
                max_bytes,
            } => {
                let mut feed = std::mem::take(&mut self.feed);
                let (batch, changed) =
                    feed.export(sink, self, *max_ops as usize, *max_bytes as usize);
                self.feed = feed;
                (Applied::Batch(batch), changed)
            }
            Entry::Ack {
                sink,
                batch_id,
                failed,
            } => {
                let failed = failed.iter().cloned().collect();
                match self.feed.deliver(sink, batch_id, &failed) {
                    AckResult::Delivered(merged) => {
                        for person in merged {
                            let tokens: Vec<Box<[u8]>> = self
                                .person_id(&person)
                                .and_then(|pid| self.person(pid))
                                .map(|p| {
                                    p.devices
                                        .iter()
                                        .filter_map(|&id| self.slot(id))
                                        .map(|s| s.token.to_boxed())
                                        .collect()
                                })
                                .unwrap_or_default();
                            self.feed.readd(sink, &person, &tokens);
                        }
                        (Applied::Count(1), true)
                    }
                    AckResult::AlreadyAcked => (Applied::Count(0), false),
                    AckResult::Unknown(why) => (Applied::Rejected("batch_id", why), false),
                }
            }
            Entry::Requeue(sink) => {
                let n = self.feed.requeue(sink);
                (Applied::Count(n as u64), n > 0)
            }
            Entry::Remark { sink, pairs } => self.remark(sink, pairs),
        }
    }

    /// Re-marks each pair in `sink`'s feed (a person devreg knows keeps its
    /// interned name); counts the pairs marked.
    fn remark(&mut self, sink: &str, pairs: &[crate::model::RemarkPair]) -> (Applied, bool) {
        let mut n = 0u64;
        for p in pairs {
            let person = self
                .person_id(&p.person)
                .and_then(|pid| self.person_name(pid))
                .unwrap_or_else(|| Arc::from(p.person.as_str()));
            if self
                .feed
                .remark(sink, &person, &pack_token(&p.token), p.held)
            {
                n += 1;
            }
        }
        (Applied::Count(n), n > 0)
    }

    fn add_sink(&mut self, name: &str, settings: crate::format::SinkSettings) -> (Applied, bool) {
        let added = self.feed.add_sink(name, self.identified, settings);
        (Applied::Count(u64::from(added)), added)
    }

    fn apply_op(&mut self, op: &Op) -> Outcome {
        // What `note` records in the history (rotate sets its own, with the tokens).
        self.cause = match op {
            Op::Register(r) => Cause::Register { seen_ms: r.seen_ms },
            Op::Touch { .. } => Cause::Touch,
            Op::Rotate { .. } => Cause::None,
            Op::Logout { policy, .. } => Cause::Logout(*policy),
            Op::Merge { .. } => Cause::Merge,
            Op::Remove { .. } => Cause::Remove,
            Op::Invalidate { provider_ms, .. } => Cause::Invalidate {
                provider_ms: *provider_ms,
            },
            Op::Prune { .. } => Cause::Prune,
            Op::Feedback {
                outcome: FeedbackOutcome::Unregistered,
                at_ms,
                ..
            } => Cause::Invalidate {
                provider_ms: *at_ms,
            },
            Op::Feedback { .. } => Cause::HardFailure,
        };
        let outcome = match op {
            Op::Register(r) => self.register(r),
            Op::Touch { token, seen_ms } => self.touch(token, *seen_ms),
            Op::Rotate {
                old_token,
                new_token,
                seen_ms,
            } => self.rotate(old_token, new_token, *seen_ms),
            Op::Logout { token, policy } => self.logout(token, *policy),
            Op::Merge { primary, secondary } => self.merge(primary, secondary),
            Op::Remove { token } => self.remove_token(token),
            Op::Invalidate { token, provider_ms } => self.invalidate(token, *provider_ms),
            Op::Prune { before_ms } => self.prune(*before_ms),
            Op::Feedback {
                token,
                outcome: FeedbackOutcome::Unregistered,
                at_ms,
                ..
            } => self.invalidate(token, *at_ms),
            Op::Feedback {
                token,
                outcome,
                at_ms,
                ..
            } => self.feedback(token, *outcome, *at_ms),
        };
        self.cause = Cause::None;
        outcome
    }

    /// Records a change for the checkpointer, the history (as caused by
    /// `self.cause`) and, if an owner is involved, the feed.
    fn note(
        &mut self,
        token: &[u8],
        before: Option<Arc<str>>,
        after: Option<Arc<str>>,
        exists: bool,
        platform: Platform,
    ) {
        self.dirty.insert(token);
        let after = if exists { after } else { None };
        self.history.record(
            self.now_ms,
            &self.cause,
            token,
            before.as_ref(),
            after.as_ref(),
            exists,
            platform,
        );
        self.feed.on_device(token, before.as_ref(), after.as_ref());
    }

    fn register(&mut self, r: &Register) -> Outcome {
        // The token is packed on the stack (a known device needs no copy of
        // it, a new one exactly one: the table's), and the attribute blob
        // encoded into the state's reused buffer.
        let mut scratch = std::mem::take(&mut self.attr_scratch);
        let outcome = with_packed(&r.token, |packed| {
            self.register_with(r, packed, &mut scratch)
        });
        self.attr_scratch = scratch;
        outcome
    }

    fn register_with(&mut self, r: &Register, packed: &[u8], scratch: &mut Vec<u8>) -> Outcome {
        let person = r.person.as_ref().map(|p| self.intern_person(p));
        let blob = r.attributes.as_ref().map(|a| {
            encode_attributes_into(a, scratch);
            &scratch[..]
        });
        // The owners' names are read only when something records them: the
        // history a move, a sink's feed every change. (An `Arc`'s count is
        // a write to the name's own line, cold at 10^7 devices: reading the
        // names cost a refresh 6% of the bulk update's time, DESIGN.md 13
        // step 48.)
        let sinks = !self.feed.sinks.is_empty();
        let (id, before, changed, moved) = match self.lookup(packed) {
            Some(id) => {
                let Some((old_pid, old_seen, old_platform)) = self
                    .slot(id)
                    .map(|s| (s.person, s.last_seen_ms, s.platform))
                else {
                    return Outcome::Applied {
                        devices: 0,
                        evicted: 0,
                    };
                };
                // A refresh (same owner, same platform) is not an
                // ownership change: the history records nothing.
                let moved = old_platform != r.platform || person.is_some_and(|p| p != old_pid);
                let before = self.name_if(moved || sinks, old_pid);
                let mut changed = self.set_platform(id, r.platform);
                changed |= self.set_last_seen(id, old_seen.max(r.seen_ms));
                if let Some(b) = blob {
                    changed |= self.set_attrs(id, b);
                }
                if let Some(p) = person {
                    changed |= self.set_person(id, p);
                }
                (id, before, changed, moved)
            }
            None => {
                let attrs = self.intern_attrs(blob.unwrap_or(&EMPTY_ATTRS));
                let owner = person.unwrap_or(NO_PERSON);
                let id =
                    self.insert_device(SlotToken::new(packed), r.platform, owner, r.seen_ms, attrs);
                (id, None, true, true)
            }
        };
        let owner = self.slot(id).map_or(NO_PERSON, |s| s.person);
        if changed {
            if !moved {
                self.cause = Cause::Touch;
            }
            let after = self.name_if(moved || sinks, owner);
            self.note(packed, before, after, true, r.platform);
        }
        let evicted = if owner != NO_PERSON {
            self.enforce_cap(owner, Some(id))
        } else {
            0
        };
        Outcome::Applied {
            devices: u32::from(changed),
            evicted,
        }
    }

    fn touch(&mut self, token: &str, seen_ms: u64) -> Outcome {
        with_packed(token, |packed| self.touch_packed(packed, seen_ms))
    }

    fn touch_packed(&mut self, packed: &[u8], seen_ms: u64) -> Outcome {
        let Some(id) = self.lookup(packed) else {
            return Outcome::NotFound;
        };
        let (old, owner) = self
            .slot(id)
            .map_or((0, NO_PERSON), |s| (s.last_seen_ms, s.person));
        let changed = self.set_last_seen(id, old.max(seen_ms));
        if changed {
            let name = self.person_name(owner);
            let platform = self.slot(id).map_or(Platform::Ios, |s| s.platform);
            self.note(packed, name.clone(), name, true, platform);
        }
        Outcome::applied(u32::from(changed))
    }

    fn rotate(&mut self, old_token: &str, new_token: &str, seen_ms: u64) -> Outcome {
        let old_packed = pack_token(old_token);
        let new_packed = pack_token(new_token);
        let Some(old_id) = self.lookup(&old_packed) else {
            return Outcome::NotFound;
        };
        self.cause = Cause::Rotate {
            old: old_packed.clone(),
            new: new_packed.clone(),
            seen_ms,
        };
        let mut devices = 1;
        if let Some(new_id) = self.lookup(&new_packed) {
            if matches!(self.delete(new_id, &new_packed), Outcome::Applied { .. }) {
                devices += 1;
            }
        }
        // Read the owner's name first: removing its last device releases the person.
        let owner_name = self.slot(old_id).and_then(|s| self.person_name(s.person));
        let Some(slot) = self.remove_device(old_id) else {
            return Outcome::NotFound;
        };
        self.note(&old_packed, owner_name.clone(), None, false, slot.platform);
        let owner = match &owner_name {
            Some(name) => self.intern_person(name),
            None => NO_PERSON,
        };
        let seen = slot.last_seen_ms.max(seen_ms);
        let (platform, attrs) = (slot.platform, slot.attrs.clone());
        self.insert_device(SlotToken::new(&new_packed), platform, owner, seen, attrs);
        self.drop_slot(slot);
        self.note(&new_packed, None, owner_name.clone(), true, platform);
        if let Some(person) = &owner_name {
            let event = TokenEvent {
                kind: EventKind::TokenRotated,
                token: old_token.to_owned(),
                new_token: Some(new_token.to_owned()),
                platform,
                at_ms: seen,
            };
            self.feed.on_token_event(person, event);
        }
        Outcome::applied(devices)
    }

    fn logout(&mut self, token: &str, policy: LogoutPolicy) -> Outcome {
        let packed = pack_token(token);
        let Some(id) = self.lookup(&packed) else {
            return Outcome::NotFound;
        };
        let owner_name = self.slot(id).and_then(|s| self.person_name(s.person));
        match policy {
            LogoutPolicy::Keep => {
                let changed = self.set_person(id, NO_PERSON);
                if changed {
                    let platform = self.slot(id).map_or(Platform::Ios, |s| s.platform);
                    self.note(&packed, owner_name, None, true, platform);
                }
                Outcome::applied(u32::from(changed))
            }
            LogoutPolicy::Remove => self.delete(id, &packed),
        }
    }

    fn merge(&mut self, primary: &str, secondary: &str) -> Outcome {
        let Some(sec) = self.person_id(secondary) else {
            return Outcome::applied(0);
        };
        let ids: Vec<u32> = self
            .person(sec)
            .map(|p| p.devices.to_vec())
            .unwrap_or_default();
        let sec_name = self.person_name(sec);
        let prim = self.intern_person(primary);
        for &id in &ids {
            self.set_person(id, prim);
        }
        let prim_name = self.person_name(prim);
        let moved: Vec<(Box<[u8]>, Platform)> = ids
            .iter()
            .filter_map(|&id| self.slot(id).map(|s| (s.token.to_boxed(), s.platform)))
            .collect();
        for (t, platform) in &moved {
            self.dirty.insert(t);
            if sec_name != prim_name {
                let (before, after) = (sec_name.as_ref(), prim_name.as_ref());
                let (now, cause) = (self.now_ms, &self.cause);
                self.history
                    .record(now, cause, t, before, after, true, *platform);
            }
        }
        let tokens: Vec<Box<[u8]>> = moved.into_iter().map(|(t, _)| t).collect();
        if let (Some(p), Some(s)) = (&prim_name, &sec_name) {
            self.feed.on_merge(p, s, &tokens);
        }
        let evicted = self.enforce_cap(prim, None);
        Outcome::Applied {
            devices: ids.len() as u32,
            evicted,
        }
    }

    fn remove_token(&mut self, token: &str) -> Outcome {
        let packed = pack_token(token);
        match self.lookup(&packed) {
            Some(id) => self.delete(id, &packed),
            None => Outcome::NotFound,
        }
    }

    fn invalidate(&mut self, token: &str, provider_ms: u64) -> Outcome {
        let packed = pack_token(token);
        let Some(id) = self.lookup(&packed) else {
            return Outcome::NotFound;
        };
        let (owner, platform) = match self.slot(id) {
            Some(s) if s.last_seen_ms <= provider_ms => (self.owner_of(s), s.platform),
            _ => return Outcome::Skipped,
        };
        let outcome = self.delete(id, &packed);
        if let Some(person) = owner {
            let event = TokenEvent {
                kind: EventKind::TokenInvalidated,
                token: token.to_owned(),
                new_token: None,
                platform,
                at_ms: provider_ms,
            };
            self.feed.on_token_event(&person, event);
        }
        outcome
    }

    /// A `delivered`, `soft_failure` or `hard_failure` feedback: updates the
    /// device's entry in the side table (created on first feedback). A
    /// change counts as one device written, so the entry is logged; the
    /// device record, the feed and the owner are untouched.
    fn feedback(&mut self, token: &str, outcome: FeedbackOutcome, at_ms: u64) -> Outcome {
        let packed = pack_token(token);
        let Some(id) = self.lookup(&packed) else {
            return Outcome::NotFound;
        };
        let Some((last_seen, platform, person)) = self
            .slot(id)
            .map(|s| (s.last_seen_ms, s.platform, s.person))
        else {
            return Outcome::NotFound;
        };
        let mut d = self.deliv.get(&id).copied().unwrap_or_default();
        if !d.record(outcome, at_ms, last_seen) {
            return Outcome::Skipped;
        }
        self.deliv.insert(id, d);
        self.deliv_dirty.insert(packed.clone());
        let now = self.now_ms;
        match outcome {
            FeedbackOutcome::HardFailure => {
                let owner = self.person_name(person);
                self.history.record(
                    now,
                    &Cause::HardFailure,
                    &packed,
                    owner.as_ref(),
                    owner.as_ref(),
                    true,
                    platform,
                );
            }
            o => self
                .history
                .count_feedback(now, platform, o == FeedbackOutcome::Delivered),
        }
        Outcome::applied(1)
    }

    fn prune(&mut self, before_ms: u64) -> Outcome {
        let mut victims: Vec<(u64, Box<[u8]>)> = Vec::new();
        for p in Platform::ALL {
            victims.extend(
                self.by_seen
                    .between(p, 0, before_ms)
                    .filter_map(|(ms, id)| self.slot(id).map(|s| (ms, s.token.to_boxed()))),
            );
        }
        // Slot ids differ between a run and its replay: delete (and feed)
        // in an order that depends on the data alone.
        victims.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| cmp_packed(&a.1, &b.1)));
        let mut n = 0;
        for (_, token) in victims {
            if let Some(id) = self.lookup(&token) {
                if matches!(self.delete(id, &token), Outcome::Applied { .. }) {
                    n += 1;
                }
            }
        }
        Outcome::applied(n)
    }

    fn set_cap(&mut self, cap: u32) -> Outcome {
        self.cap = cap;
        let mut over: Vec<(std::sync::Arc<str>, u32)> = self
            .persons
            .iter()
            .filter(|(_, p)| p.devices.len() > cap as usize)
            .map(|(pid, p)| (p.name.clone(), pid))
            .collect();
        // Person ids differ between a run and its replay: go by name.
        over.sort();
        let over: Vec<u32> = over.into_iter().map(|(_, pid)| pid).collect();
        let mut evicted = 0;
        for pid in over {
            evicted += self.enforce_cap(pid, None);
        }
        Outcome::Applied {
            devices: evicted,
            evicted,
        }
    }

    fn delete(&mut self, id: u32, packed: &[u8]) -> Outcome {
        let owner_name = self.slot(id).and_then(|s| self.person_name(s.person));
        let Some(slot) = self.remove_device(id) else {
            return Outcome::NotFound;
        };
        let platform = slot.platform;
        self.drop_slot(slot);
        self.note(packed, owner_name, None, false, platform);
        Outcome::applied(1)
    }

    /// Evicts the person's oldest devices, `(last_seen_ms, token)` ascending,
    /// until the cap holds; never evicts `protect`.
    fn enforce_cap(&mut self, pid: u32, protect: Option<u32>) -> u32 {
        let cause = std::mem::replace(&mut self.cause, Cause::EvictByCap);
        let evicted = self.evict_over_cap(pid, protect);
        self.cause = cause;
        evicted
    }

    fn evict_over_cap(&mut self, pid: u32, protect: Option<u32>) -> u32 {
        let mut evicted = 0;
        while let Some(p) = self.person(pid) {
            if p.devices.len() <= self.cap as usize {
                break;
            }
            let victim = p
                .devices
                .iter()
                .copied()
                .filter(|&id| Some(id) != protect)
                .min_by(|&a, &b| match (self.slot(a), self.slot(b)) {
                    (Some(x), Some(y)) => x
                        .last_seen_ms
                        .cmp(&y.last_seen_ms)
                        .then_with(|| cmp_packed(&x.token, &y.token)),
                    _ => a.cmp(&b),
                });
            let Some(victim) = victim else { break };
            let Some(token) = self.slot(victim).map(|s| s.token.to_boxed()) else {
                break;
            };
            // The victim exists: its deletion is always applied.
            let _ = self.delete(victim, &token);
            evicted += 1;
        }
        evicted
    }
}

const EMPTY_ATTRS: [u8; 1] = [0];

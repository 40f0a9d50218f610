//! Building batches, and what acknowledgement does to the feed.

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::HashSet;

use super::backfill::Step;
use super::{batch_id, persist, Batch, BatchOp, DeadLetter, Effect, Feed, ItemKey, Pending};
use crate::codec::unpack_token;
use crate::format::{body_growth, Change, DeviceView, OpSlot, SinkFormat, EMPTY_BODY_BYTES};

/// The registry's current truth, as the exporter needs it: typed views of
/// devices, which the sink's format renders.
pub(crate) trait Truth {
    /// The device if `person` owns `token` now.
    fn owned(&self, person: &str, token: &[u8]) -> Option<DeviceView>;
    /// The person's most recently seen device: its packed token and view.
    fn newest(&self, person: &str) -> Option<(Box<[u8]>, DeviceView)>;
    /// Calls `f` with every device's packed token (for the backfill).
    fn each_token(&self, f: &mut dyn FnMut(&[u8]));
    /// Number of devices.
    fn device_count(&self) -> u64;
    /// The person owning `token` now, if any.
    fn owner(&self, token: &[u8]) -> Option<Arc<str>>;
}

/// What building a batch decided for one pending item.
enum Plan {
    /// Send these; `true` ends the batch after them.
    Send(Vec<BatchOp>, bool),
    /// Nothing to send (e.g. registered and removed before any export).
    Drop,
    /// The operation can never be sent (over the format's limit, or a
    /// person that is not a valid value of the sink's identifier kind):
    /// the operation as rendered and why.
    Reject(String, String),
    /// Stop the batch here; the item goes in the next one.
    Stop,
}

/// Result of an ack or nack.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckResult {
    /// Delivered; these secondaries were merged away on the Customer.io side.
    Delivered(Vec<Arc<str>>),
    AlreadyAcked,
    Unknown(String),
}

/// What the backfill's part of an export decided.
enum BackfillExport {
    /// This batch goes out (it is in flight now).
    Send(Arc<Batch>),
    /// Nothing can be sent now; `changed`: the cursor moved or dead letters
    /// were added (the export is logged).
    Wait { changed: bool },
    /// The backfill is over (and removed): regular items go on.
    Over,
}

struct Building<'k> {
    /// The sink's format, and where its operations go.
    format: &'k dyn SinkFormat,
    sink: &'k str,
    number: u64,
    ops: Vec<BatchOp>,
    body_bytes: usize,
    deleted_tokens: HashSet<Box<[u8]>>,
    /// Persons Customer.io holds before this batch (not copied: an overlay
    /// of `added` and `merged_away` records what the batch changes).
    known: &'k super::known::Known,
    added: HashSet<Arc<str>>,
    /// Persons named by device operations in this batch.
    touched: HashSet<Arc<str>>,
    /// Secondaries merged away in this batch.
    merged_away: HashSet<Arc<str>>,
}

impl Feed {
    /// Builds the next batch of `sink`, or returns the one in flight.
    /// Returns `(batch, changed)`.
    pub(crate) fn export(
        &mut self,
        sink_name: &str,
        truth: &dyn Truth,
        max_ops: usize,
        max_bytes: usize,
    ) -> (Option<Arc<Batch>>, bool) {
        let Some(sink) = self.sinks.get(sink_name) else {
            return (None, false);
        };
        if let Some(b) = &sink.in_flight {
            return (Some(b.clone()), false);
        }
        let mut changed = false;
        if sink.backfill.is_some() {
            match self.export_backfill(sink_name, truth, max_ops, max_bytes) {
                BackfillExport::Send(batch) => return (Some(batch), true),
                BackfillExport::Wait { changed } => return (None, changed),
                BackfillExport::Over => changed = true,
            }
        }
        let Some(sink) = self.sinks.get(sink_name) else {
            return (None, changed);
        };
        let format = sink.settings.renderer();
        let max_ops = max_ops.min(format.max_operations());
        let mut b = Building {
            format: &*format,
            sink: sink_name,
            number: sink.next_batch,
            ops: Vec::new(),
            body_bytes: EMPTY_BODY_BYTES,
            deleted_tokens: HashSet::new(),
            known: &sink.known,
            added: HashSet::new(),
            touched: HashSet::new(),
            merged_away: HashSet::new(),
        };
        let mut dropped = Vec::new();
        let mut rejected = Vec::new();
        for (&seq, key) in &sink.pending {
            if b.ops.len() >= max_ops {
                break;
            }
            let base = sink.items.get(key).is_some_and(|s| s.base);
            match plan(key, seq, base, truth, &b) {
                Plan::Drop => dropped.push(key.clone()),
                Plan::Reject(op, reason) => rejected.push((key.clone(), base, op, reason)),
                Plan::Stop => break,
                Plan::Send(ops, stop_after) => {
                    let grow: usize = ops
                        .iter()
                        .enumerate()
                        .map(|(i, o)| body_growth(b.ops.len() + i, o.json.len()))
                        .sum();
                    if b.ops.len() + ops.len() > max_ops || b.body_bytes + grow > max_bytes {
                        break;
                    }
                    b.body_bytes += grow;
                    for op in ops {
                        match (&op.effect, &op.item) {
                            (Effect::Deleted, Some((ItemKey::Device { token, person }, _))) => {
                                b.deleted_tokens.insert(token.clone());
                                b.touched.insert(person.clone());
                            }
                            (Effect::Added(p), _) => {
                                b.added.insert(p.clone());
                                b.merged_away.remove(p);
                                b.touched.insert(p.clone());
                            }
                            (Effect::Noted, Some((ItemKey::Event { person, .. }, _))) => {
                                b.touched.insert(person.clone());
                            }
                            (Effect::Merged(s), Some((ItemKey::Merge { primary, .. }, _))) => {
                                b.added.remove(s);
                                b.merged_away.insert(s.clone());
                                b.touched.insert(primary.clone());
                            }
                            _ => {}
                        }
                        b.ops.push(op);
                    }
                    if stop_after {
                        break;
                    }
                }
            }
        }
        let ops = b.ops;
        let changed = changed || !dropped.is_empty() || !rejected.is_empty() || !ops.is_empty();
        for key in dropped {
            self.forget(sink_name, &key);
        }
        for (key, base, op, reason) in rejected {
            self.forget(sink_name, &key);
            self.dead_letter(sink_name, 0, 0, key, base, op, reason);
        }
        if ops.is_empty() {
            return (None, changed);
        }
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return (None, changed);
        };
        let batch = Arc::new(Batch::new(sink_name, sink.next_batch, ops));
        debug_assert!(batch.body().len() <= max_bytes);
        sink.next_batch += 1;
        sink.in_flight = Some(batch.clone());
        self.meta_dirty.insert(sink_name.to_owned());
        (Some(batch), true)
    }

    /// The backfill's part of an export (the backfill is active).
    fn export_backfill(
        &mut self,
        sink_name: &str,
        truth: &dyn Truth,
        max_ops: usize,
        max_bytes: usize,
    ) -> BackfillExport {
        let mut changed = false;
        loop {
            let (step, rejected) = self.plan_backfill(sink_name, truth, max_ops, max_bytes);
            for r in rejected {
                changed = true;
                let reason = r.reason;
                self.dead_letter(sink_name, 0, 0, r.item, false, r.operation, reason);
            }
            let Some(sink) = self.sinks.get_mut(sink_name) else {
                return BackfillExport::Wait { changed };
            };
            let Some(bf) = sink.backfill.as_mut() else {
                return BackfillExport::Over;
            };
            match step {
                Step::Done => {
                    sink.backfill = None;
                    self.meta_dirty.insert(sink_name.to_owned());
                    return BackfillExport::Over;
                }
                Step::Stalled(end) => {
                    if let Some(end) = end {
                        bf.acked = Some(end);
                        changed = true;
                        self.meta_dirty.insert(sink_name.to_owned());
                    }
                    return BackfillExport::Wait { changed };
                }
                // Only skipped or rejected devices: move on past them.
                Step::Batch(ops, end) if ops.is_empty() => {
                    bf.acked = Some(end);
                    changed = true;
                    self.meta_dirty.insert(sink_name.to_owned());
                }
                Step::Batch(ops, end) => {
                    bf.in_flight_end = Some(end);
                    let batch = Arc::new(Batch::new(sink_name, sink.next_batch, ops));
                    debug_assert!(batch.body().len() <= max_bytes);
                    sink.next_batch += 1;
                    sink.in_flight = Some(batch.clone());
                    self.meta_dirty.insert(sink_name.to_owned());
                    return BackfillExport::Send(batch);
                }
            }
        }
    }

    /// Removes an item from a sink's pending set.
    fn forget(&mut self, sink_name: &str, key: &ItemKey) {
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return;
        };
        if let Some(st) = sink.items.remove(key) {
            sink.pending.remove(&st.seq);
            self.dirty
                .insert(persist::item_key(sink_name, st.seq), Pending::Gone);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dead_letter(
        &mut self,
        sink_name: &str,
        number: u64,
        index: u32,
        item: ItemKey,
        base: bool,
        operation: String,
        reason: String,
    ) {
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return;
        };
        // One dead letter per item: a newer failure replaces an older one.
        sink.dead.remove_item(&item);
        // Letters of one operation (a merge's failed add and the merges that
        // needed it) share (batch, index); `sub` keeps them apart. Batch 0
        // holds rejections at export, numbered after the last one.
        let slot = sink.dead.next_slot(number, index);
        sink.dead.insert(
            slot,
            DeadLetter {
                batch_id: if number == 0 {
                    "export".into()
                } else {
                    batch_id(sink_name, number)
                },
                // The slot's index, as a load from the store reads it back
                // (for batch 0 it numbers the rejections: until 2026-12 it
                // was 0 in memory and the number after a reopen, so a live
                // server and the CLI listed different indices).
                index: slot.1,
                reason,
                operation,
                item,
                base,
            },
        );
        self.meta_dirty.insert(sink_name.to_owned());
    }

    /// Acknowledges batch `id`: operations at `failed` indices go to the
    /// dead-letter list, the rest count as delivered.
    pub(crate) fn deliver(
        &mut self,
        sink_name: &str,
        id: &str,
        failed: &BTreeMap<u32, String>,
    ) -> AckResult {
        let Some(sink) = self.sinks.get(sink_name) else {
            return AckResult::Unknown(format!("no sink named {sink_name:?}"));
        };
        let number = id
            .strip_prefix(sink_name)
            .and_then(|r| r.strip_prefix('-'))
            .filter(|n| {
                n.len() == crate::limits::BATCH_NUMBER_DIGITS
                    && n.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|n| n.parse::<u64>().ok());
        let Some(number) = number else {
            return AckResult::Unknown(format!("{id:?} is not a batch id of sink {sink_name:?}"));
        };
        let batch = match &sink.in_flight {
            Some(b) if b.number == number => b.clone(),
            _ if number >= 1 && number < sink.next_batch => return AckResult::AlreadyAcked,
            _ => return AckResult::Unknown(format!("batch {id} was never exported")),
        };
        if let Some((&bad, _)) = failed.range(batch.ops.len() as u32..).next() {
            return AckResult::Unknown(format!(
                "index {bad} is outside batch {id} ({} operations)",
                batch.ops.len()
            ));
        }
        let mut merged = Vec::new();
        for (i, op) in batch.ops.iter().enumerate() {
            let i = i as u32;
            if let Some(reason) = failed.get(&i) {
                self.fail_op(sink_name, number, i, op, reason);
                continue;
            }
            if let Effect::Merged(s) = &op.effect {
                merged.push(s.clone());
            }
            self.apply_effect(sink_name, &op.effect);
            match (&op.item, &op.effect) {
                (Some((key, seq)), _) => {
                    self.settle(sink_name, key, *seq, matches!(op.effect, Effect::Added(_)))
                }
                // A backfill add: a pending item for the pair (it changed
                // while the batch was in flight) now has Customer.io's copy.
                (None, Effect::Backfilled(p)) => {
                    if let Some(t) = &op.token {
                        let key = super::device_item(p, t);
                        self.set_base(sink_name, &key, true);
                        self.drop_dead_letter(sink_name, &key);
                    }
                }
                // A merge's prerequisite add: Customer.io now holds that pair.
                (None, Effect::Added(p)) => {
                    if let Some(t) = &op.token {
                        let key = super::device_item(p, t);
                        self.set_base(sink_name, &key, true);
                    }
                }
                _ => {}
            }
        }
        if let Some(sink) = self.sinks.get_mut(sink_name) {
            sink.in_flight = None;
            if let Some(bf) = sink.backfill.as_mut() {
                if let Some(end) = bf.in_flight_end.take() {
                    let sent = batch
                        .ops
                        .iter()
                        .filter(|o| matches!(o.effect, Effect::Backfilled(_)))
                        .count();
                    bf.remaining = bf.remaining.saturating_sub(sent as u64);
                    bf.acked = Some(end);
                }
            }
        }
        self.meta_dirty.insert(sink_name.to_owned());
        AckResult::Delivered(merged)
    }

    /// After Customer.io merged `person` away, it holds none of its devices:
    /// the ones devreg has for it now (registered since) must be added again.
    pub(crate) fn readd(&mut self, sink_name: &str, person: &Arc<str>, tokens: &[Box<[u8]>]) {
        for t in tokens {
            let key = super::device_item(person, t);
            self.set_base(sink_name, &key, false);
            self.mark(sink_name, key, false);
        }
    }

    fn fail_op(&mut self, sink_name: &str, number: u64, index: u32, op: &BatchOp, reason: &str) {
        let (item, seq) = match &op.item {
            Some((key, seq)) => (key.clone(), Some(*seq)),
            // A prerequisite add for a merge: its pair is the one to resend.
            None => match (&op.effect, &op.token) {
                (Effect::Backfilled(p), Some(t)) => (super::device_item(p, t), None),
                (Effect::Added(p), Some(t)) => {
                    self.fail_merges_into(sink_name, number, index, p, reason);
                    (super::device_item(p, t), None)
                }
                _ => return,
            },
        };
        let sink = self.sinks.get(sink_name);
        let state = sink.and_then(|s| s.items.get(&item)).copied();
        let base = state.is_some_and(|s| s.base);
        // Still the same change: it leaves the pending set for the dead letters.
        if state.is_some() && state.map(|s| s.seq) == seq {
            self.forget(sink_name, &item);
        }
        self.dead_letter(
            sink_name,
            number,
            index,
            item,
            base,
            op.json.clone(),
            reason.to_owned(),
        );
    }

    /// The primary could not be created: its pending merges cannot be sent.
    fn fail_merges_into(
        &mut self,
        sink_name: &str,
        number: u64,
        index: u32,
        primary: &Arc<str>,
        reason: &str,
    ) {
        let Some(sink) = self.sinks.get(sink_name) else {
            return;
        };
        let mut merges: Vec<ItemKey> = sink
            .items
            .keys()
            .filter(|k| matches!(k, ItemKey::Merge { primary: p, .. } if p == primary))
            .cloned()
            .collect();
        // Hash order is not replayed identically: go by key.
        merges.sort();
        let format = sink.settings.renderer();
        let at = OpSlot {
            sink: sink_name,
            batch: number,
            index: index as usize,
        };
        for key in merges {
            self.forget(sink_name, &key);
            let (p, s) = match &key {
                ItemKey::Merge { primary, secondary } => (primary.clone(), secondary.clone()),
                ItemKey::Device { .. } | ItemKey::Event { .. } => continue,
            };
            let why = format!("primary {p:?} could not be created: {reason}");
            self.dead_letter(
                sink_name,
                number,
                index,
                key,
                false,
                format.render(
                    &Change::Merged {
                        primary: &p,
                        secondary: &s,
                    },
                    &at,
                ),
                why,
            );
        }
    }

    fn apply_effect(&mut self, sink_name: &str, effect: &Effect) {
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return;
        };
        match effect {
            Effect::Added(p) | Effect::Backfilled(p) => {
                if sink.known.insert(p) {
                    self.dirty
                        .insert(persist::known_key(sink_name, p), Pending::Known);
                }
            }
            Effect::Merged(s) => {
                if sink.known.remove(s) {
                    self.dirty
                        .insert(persist::known_key(sink_name, s), Pending::Gone);
                }
                // The merge deleted the secondary's devices on Customer.io.
                sink.dead.set_base_where(
                    |item| matches!(item, ItemKey::Device { person, .. } if person == s),
                    false,
                );
                self.meta_dirty.insert(sink_name.to_owned());
                for (key, st) in sink.items.iter_mut() {
                    if matches!(key, ItemKey::Device { person, .. } if person == s) && st.base {
                        st.base = false;
                        self.dirty.insert(
                            persist::item_key(sink_name, st.seq),
                            Pending::Item(key.clone(), false),
                        );
                    }
                }
            }
            Effect::Deleted | Effect::Noted => {}
        }
    }

    /// Records what Customer.io holds for a pair that stays pending.
    fn set_base(&mut self, sink_name: &str, key: &ItemKey, base: bool) {
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return;
        };
        if let Some(st) = sink.items.get_mut(key) {
            st.base = base;
            self.dirty.insert(
                persist::item_key(sink_name, st.seq),
                Pending::Item(key.clone(), base),
            );
        }
        if sink.dead.set_base_where(|item| item == key, base) {
            self.meta_dirty.insert(sink_name.to_owned());
        }
    }

    /// The pair was delivered since any earlier failure: that letter is moot.
    fn drop_dead_letter(&mut self, sink_name: &str, key: &ItemKey) {
        if let Some(sink) = self.sinks.get_mut(sink_name) {
            if sink.dead.remove_item(key) {
                self.meta_dirty.insert(sink_name.to_owned());
            }
        }
    }

    /// A delivered item is done unless it changed since the export; then its
    /// base becomes what was delivered.
    fn settle(&mut self, sink_name: &str, key: &ItemKey, seq: u64, delivered_present: bool) {
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return;
        };
        // The pair was delivered since any earlier failure: that letter is moot.
        if sink.dead.remove_item(key) {
            self.meta_dirty.insert(sink_name.to_owned());
        }
        match self.sinks.get(sink_name).and_then(|s| s.items.get(key)) {
            Some(st) if st.seq == seq => self.forget(sink_name, key),
            Some(_) => self.set_base(sink_name, key, delivered_present),
            None => {}
        }
    }

    /// Puts every dead letter's item back in the feed (its current truth will
    /// be sent). Returns how many were requeued.
    pub(crate) fn requeue(&mut self, sink_name: &str) -> usize {
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return 0;
        };
        let dead = sink.dead.take_all();
        let n = dead.len();
        for d in dead {
            // A pending item keeps its base; a new one starts from the dead letter's.
            self.mark(sink_name, d.item, d.base);
        }
        if n > 0 {
            self.meta_dirty.insert(sink_name.to_owned());
        }
        n
    }

    /// The drift audit's repair (DESIGN.md 20.8): marks (`person`,
    /// `token`) changed in the sink, so its next export sends the pair's
    /// current truth. When Customer.io `held` the pair, its base becomes
    /// true: a pair devreg does not hold is then sent as a delete. False
    /// when there is no such sink, or when a `held` pair is in the batch in
    /// flight: the audit may have read Customer.io before or after that
    /// batch, and its acknowledgement would reset the base anyway (deferred:
    /// audit again after the sync).
    pub(crate) fn remark(
        &mut self,
        sink_name: &str,
        person: &Arc<str>,
        token: &[u8],
        held: bool,
    ) -> bool {
        let Some(sink) = self.sinks.get(sink_name) else {
            return false;
        };
        let key = super::device_item(person, token);
        let in_flight = sink.in_flight.as_ref().is_some_and(|b| {
            b.ops
                .iter()
                .any(|o| o.item.as_ref().is_some_and(|(k, _)| *k == key))
        });
        if held && in_flight {
            return false;
        }
        self.mark(sink_name, key.clone(), held);
        if held {
            self.set_base(sink_name, &key, true);
        }
        true
    }

    pub(crate) fn dead_letters(&self, sink_name: &str) -> Vec<DeadLetter> {
        self.sinks
            .get(sink_name)
            .map(|s| s.dead.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Building<'_> {
    /// Whether Customer.io holds `person` once the batch so far is applied.
    fn present(&self, person: &Arc<str>) -> bool {
        self.added.contains(person)
            || (self.known.contains(person) && !self.merged_away.contains(person))
    }
}

/// Renders `change` as the operation at index `index` of batch `b`, or
/// says why it can never be sent: (operation, reason).
pub(crate) fn render_checked(
    format: &dyn SinkFormat,
    change: &Change<'_>,
    at: &OpSlot<'_>,
) -> Result<String, (String, String)> {
    let json = format.render(change, at);
    if let Some(reason) = format.refusal(change) {
        return Err((json, reason));
    }
    let max = format.max_operation_bytes();
    if json.len() > max {
        let reason = format!(
            "operation is {} bytes, over Customer.io's limit of {max} ({} format)",
            json.len(),
            format.kind()
        );
        return Err((json, reason));
    }
    Ok(json)
}

impl Building<'_> {
    fn render(&self, change: &Change<'_>) -> Result<String, (String, String)> {
        let at = OpSlot {
            sink: self.sink,
            batch: self.number,
            index: self.ops.len(),
        };
        render_checked(self.format, change, &at)
    }
}

fn plan(key: &ItemKey, seq: u64, base: bool, truth: &dyn Truth, b: &Building<'_>) -> Plan {
    match key {
        ItemKey::Device { person, token } => plan_device(person, token, key, seq, base, truth, b),
        ItemKey::Event { person, event } => {
            // Nothing may name a person after its merge in one batch.
            if b.merged_away.contains(person) {
                return Plan::Stop;
            }
            match b.render(&Change::Event { person, event }) {
                Ok(json) => Plan::Send(
                    vec![BatchOp {
                        item: Some((key.clone(), seq)),
                        effect: Effect::Noted,
                        token: None,
                        json,
                    }],
                    false,
                ),
                Err((op, reason)) => Plan::Reject(op, reason),
            }
        }
        ItemKey::Merge { primary, secondary } => {
            // A format without merges sends a merge as the device moves
            // the feed holds already (deletes from the secondary, adds to
            // the primary): the merge itself is nothing to send.
            if !b.format.merges() {
                return Plan::Drop;
            }
            // Customer.io has nothing to merge from a secondary it never saw.
            if !b.present(secondary) {
                return Plan::Drop;
            }
            // A resent batch must not touch the secondary after merging it
            // away (that could re-create it): merge in a batch of its own.
            if b.touched.contains(secondary) {
                return Plan::Stop;
            }
            if !b.present(primary) {
                return plan_primary(primary, truth, b);
            }
            let change = Change::Merged { primary, secondary };
            match b.render(&change) {
                Ok(json) => Plan::Send(
                    vec![BatchOp {
                        item: Some((key.clone(), seq)),
                        effect: Effect::Merged(secondary.clone()),
                        token: None,
                        json,
                    }],
                    false,
                ),
                Err((op, reason)) => Plan::Reject(op, reason),
            }
        }
    }
}

fn plan_device(
    person: &Arc<str>,
    token: &[u8],
    key: &ItemKey,
    seq: u64,
    base: bool,
    truth: &dyn Truth,
    b: &Building<'_>,
) -> Plan {
    // Customer.io deleted a merged-away person with its devices; the
    // ack of the merge resets what devreg assumes it holds.
    if b.merged_away.contains(person) {
        return Plan::Stop;
    }
    let rendered = match truth.owned(person, token) {
        Some(device) => {
            // Never add a token in the batch that deletes it from someone
            // else: the delete must be delivered first.
            if b.deleted_tokens.contains(token) {
                return Plan::Stop;
            }
            let change = Change::Added {
                person,
                device: &device,
            };
            (b.render(&change), Effect::Added(person.clone()))
        }
        None if base => {
            let t = unpack_token(token).unwrap_or_default();
            let change = Change::Deleted { person, token: &t };
            (b.render(&change), Effect::Deleted)
        }
        None => return Plan::Drop,
    };
    match rendered {
        (Ok(json), effect) => Plan::Send(
            vec![BatchOp {
                item: Some((key.clone(), seq)),
                effect,
                token: None,
                json,
            }],
            false,
        ),
        (Err((op, reason)), _) => Plan::Reject(op, reason),
    }
}

/// Customer.io's merge silently fails without the primary: create it with
/// its newest device, and merge only once that add is delivered (the merge
/// stays pending until then).
fn plan_primary(primary: &Arc<str>, truth: &dyn Truth, b: &Building<'_>) -> Plan {
    let Some((token, device)) = truth.newest(primary) else {
        return Plan::Drop;
    };
    if b.deleted_tokens.contains(&token) {
        return Plan::Stop;
    }
    let change = Change::Added {
        person: primary,
        device: &device,
    };
    match b.render(&change) {
        Ok(json) => {
            let op = BatchOp {
                item: None,
                effect: Effect::Added(primary.clone()),
                token: Some(token),
                json,
            };
            Plan::Send(vec![op], true)
        }
        // The primary can never be created: neither can the merge.
        Err((op, reason)) => Plan::Reject(
            op,
            format!("primary {primary:?} cannot be created: {reason}"),
        ),
    }
}

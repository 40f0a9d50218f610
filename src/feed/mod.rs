//! The change feed: per sink, the set of (person, token) pairs and merges
//! whose Customer.io view is out of date, in the order they changed.
//!
//! The feed is state-based: an item says "look at this pair again", and the
//! export sends the pair's current truth (add_device if the person owns the
//! token now, delete_device if it did before and no longer does). Many
//! changes to one pair collapse into one item; re-marking moves the item to
//! the end, which is what orders a move's delete (old owner) before its add
//! (new owner). The feed lives in the in-memory state, changes with it in the
//! same atomic write, and is checkpointed with it.

mod backfill;
mod dead;
mod export;
mod known;
mod persist;
pub(crate) use persist::FeedDrain;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hashbrown::HashMap;
use serde::Serialize;

use crate::format::SinkSettings;

pub use dead::MAX_DEAD_LETTERS_PER_SINK;
pub(crate) use export::{AckResult, Truth};
pub(crate) use persist::{load_feed, load_known, KnownSets};

/// The default sink. It is created by its first `export`, with a snapshot
/// of every identified device: until a database syncs, its feed costs nothing.
pub const DEFAULT_SINK: &str = "customerio";
pub use crate::limits::{DEFAULT_MAX_OPS, MAX_OPS_LIMIT, MAX_SINKS};
pub use crate::model::validate_sink;

/// What needs sending for one sink.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ItemKey {
    Device {
        person: Arc<str>,
        token: Box<[u8]>,
    },
    Merge {
        primary: Arc<str>,
        secondary: Arc<str>,
    },
    /// A diagnostic event to send once (sinks with `diagnostics`).
    Event {
        person: Arc<str>,
        event: Box<crate::format::TokenEvent>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ItemState {
    pub(crate) seq: u64,
    /// For a device item: whether Customer.io holds the pair, as far as
    /// devreg knows (the last delivered truth).
    pub(crate) base: bool,
}

/// What a delivered operation did on the Customer.io side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Added(Arc<str>),
    Deleted,
    Merged(Arc<str>),
    /// A backfill add (`backfill.rs`): the pair is not a pending item.
    Backfilled(Arc<str>),
    /// A diagnostic event was sent: nothing held changes.
    Noted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BatchOp {
    /// The item this operation brings up to date, and its seq at export.
    pub(crate) item: Option<(ItemKey, u64)>,
    pub(crate) effect: Effect,
    /// The packed token of an add without an item (a backfill add, a
    /// merge's prerequisite add): what its acknowledgement settles. Kept
    /// beside the operation so nothing reads the rendered operation back.
    pub(crate) token: Option<Box<[u8]>>,
    /// The operation as the sink's format rendered it.
    pub(crate) json: String,
}

/// One export batch: a ready-to-send body, `{"batch":[...]}`, for the
/// sink format's batch endpoint (`POST /api/v2/batch` or `/v1/batch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    id: String,
    body: String,
    pub(crate) number: u64,
    pub(crate) ops: Vec<BatchOp>,
}

impl Batch {
    pub(crate) fn new(sink: &str, number: u64, ops: Vec<BatchOp>) -> Batch {
        let body =
            crate::format::batch_body(&ops.iter().map(|o| o.json.as_str()).collect::<Vec<_>>());
        Batch {
            id: batch_id(sink, number),
            body,
            number,
            ops,
        }
    }

    /// The batch id to pass to `ack` or `nack`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The request body: `{"batch":[...]}`.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations (never true for an exported batch).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, each one JSON object.
    pub fn operations(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(|o| o.json.as_str())
    }
}

pub(crate) fn batch_id(sink: &str, number: u64) -> String {
    format!(
        "{sink}-{number:0width$}",
        width = crate::limits::BATCH_NUMBER_DIGITS
    )
}

/// An operation Customer.io rejected, kept with its reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The batch it was sent in.
    pub batch_id: String,
    /// Its index in that batch.
    pub index: u32,
    /// Customer.io's reason.
    pub reason: String,
    /// The operation as sent.
    pub operation: String,
    #[serde(skip)]
    pub(crate) item: ItemKey,
    #[serde(skip)]
    pub(crate) base: bool,
}

/// What acknowledging a batch did (`Registry::acknowledge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// It was the sink's batch in flight: delivered now, its failures (if
    /// any) moved to the dead letters.
    Delivered,
    /// It had been acknowledged before: nothing changed (its failures, if
    /// any, were recorded the first time).
    AlreadyAcked,
}

impl AckOutcome {
    /// The `already_acked` of the CLI's and the server's answer.
    pub fn already_acked(self) -> bool {
        self == AckOutcome::AlreadyAcked
    }
}

/// A sink's position, for `sinks()`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SinkInfo {
    /// The sink's name.
    pub name: String,
    /// Items (pairs or merges) waiting to be sent.
    pub pending: u64,
    /// The batch exported and not yet acknowledged.
    pub in_flight: Option<String>,
    /// Batches exported so far (the cursor).
    pub batches_exported: u64,
    /// Operations in the dead-letter list.
    pub dead_letters: u64,
    /// Dead letters discarded because the list was full
    /// (`MAX_DEAD_LETTERS_PER_SINK`, oldest first); printed only when not 0,
    /// so the `sinks` output keeps its shape.
    #[serde(skip_serializing_if = "is_zero")]
    pub dead_letters_discarded: u64,
    /// The sink's format and identifier kind.
    #[serde(skip)]
    pub settings: SinkSettings,
    /// `settings.format` (`track-v2`, `pipelines`), printed only when the
    /// settings are not `track-v2` with `id`, so the `sinks` output of a
    /// sink made before formats keeps its shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<&'static str>,
    /// `settings.identifier` (`id`, `email`, `cio_id`), printed like `format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<&'static str>,
    /// `true` when the sink sends diagnostic events (printed only then).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub diagnostics: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sink {
    pub(crate) next_seq: u64,
    pub(crate) pending: BTreeMap<u64, ItemKey>,
    pub(crate) items: HashMap<ItemKey, ItemState>,
    pub(crate) in_flight: Option<Arc<Batch>>,
    /// Number of the next batch; batches below it were exported.
    pub(crate) next_batch: u64,
    /// Persons known to exist on the Customer.io side.
    pub(crate) known: known::Known,
    /// Keyed (batch number, index in the batch, sub) in failure order.
    pub(crate) dead: dead::DeadLetters,
    /// The snapshot still owed to a new sink (`backfill.rs`).
    pub(crate) backfill: Option<backfill::Backfill>,
    /// Its format and identifier kind (fixed at creation).
    pub(crate) settings: SinkSettings,
}

/// What a changed feed key holds now.
#[derive(Clone, Debug)]
pub(crate) enum Pending {
    /// A pending item and its base.
    Item(ItemKey, bool),
    /// A known person (empty value).
    Known,
    /// Deleted.
    Gone,
}

#[derive(Default)]
pub(crate) struct Feed {
    pub(crate) sinks: BTreeMap<String, Sink>,
    /// Store keys changed since the last checkpoint, encoded at the checkpoint.
    pub(crate) dirty: HashMap<Vec<u8>, Pending>,
    /// Sinks whose metadata record must be rewritten at the next checkpoint.
    pub(crate) meta_dirty: BTreeSet<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Feed {
    /// Marks an item changed in one sink; a new item starts with `base_if_new`.
    fn mark(&mut self, sink_name: &str, key: ItemKey, base_if_new: bool) {
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return;
        };
        let seq = sink.next_seq;
        sink.next_seq += 1;
        let base = match sink.items.get_mut(&key) {
            Some(st) => {
                sink.pending.remove(&st.seq);
                self.dirty
                    .insert(persist::item_key(sink_name, st.seq), Pending::Gone);
                st.seq = seq;
                st.base
            }
            None => {
                // A new change supersedes the pair's dead letter (it will send
                // the current truth); what Customer.io holds is the letter's base.
                let base = match sink.dead.find(&key) {
                    Some((slot, base)) => {
                        sink.dead.remove(slot);
                        base
                    }
                    None => base_if_new,
                };
                sink.items.insert(key.clone(), ItemState { seq, base });
                base
            }
        };
        self.dirty.insert(
            persist::item_key(sink_name, seq),
            Pending::Item(key.clone(), base),
        );
        sink.pending.insert(seq, key);
        self.meta_dirty.insert(sink_name.to_owned());
    }

    fn sink_names(&self) -> Vec<String> {
        self.sinks.keys().cloned().collect()
    }

    /// Whether Customer.io may hold a pair on `token` that has no pending
    /// item: yes, unless the sink's backfill has not delivered it yet.
    fn may_hold(&self, sink_name: &str, token: &[u8]) -> bool {
        self.sinks
            .get(sink_name)
            .and_then(|s| s.backfill.as_ref())
            .is_none_or(|bf| bf.passed(token))
    }

    /// A device changed owner or content.
    pub(crate) fn on_device(
        &mut self,
        token: &[u8],
        before: Option<&Arc<str>>,
        after: Option<&Arc<str>>,
    ) {
        for sink in self.sink_names() {
            if let Some(bf) = self.sinks.get_mut(&sink).and_then(|s| s.backfill.as_mut()) {
                bf.saw(token);
            }
            if let Some(b) = before {
                let base = self.may_hold(&sink, token);
                self.mark(&sink, device_item(b, token), base);
            }
            if let Some(a) = after {
                if before != Some(a) {
                    self.mark(&sink, device_item(a, token), false);
                }
            }
        }
    }

    /// A diagnostic event about `person`'s token, for the sinks that send them.
    pub(crate) fn on_token_event(&mut self, person: &Arc<str>, event: crate::format::TokenEvent) {
        let names: Vec<String> = self
            .sinks
            .iter()
            .filter(|(_, s)| s.settings.diagnostics)
            .map(|(n, _)| n.clone())
            .collect();
        for sink in names {
            let key = ItemKey::Event {
                person: person.clone(),
                event: Box::new(event.clone()),
            };
            self.mark(&sink, key, false);
        }
    }

    /// `secondary`'s devices (`tokens`) moved to `primary`.
    pub(crate) fn on_merge(
        &mut self,
        primary: &Arc<str>,
        secondary: &Arc<str>,
        tokens: &[Box<[u8]>],
    ) {
        for sink in self.sink_names() {
            for t in tokens {
                let base = self.may_hold(&sink, t);
                self.mark(&sink, device_item(secondary, t), base);
            }
            let merge = ItemKey::Merge {
                primary: primary.clone(),
                secondary: secondary.clone(),
            };
            self.mark(&sink, merge, false);
            for t in tokens {
                self.mark(&sink, device_item(primary, t), false);
            }
        }
    }

    /// Adds a sink of `settings` that owes Customer.io every identified
    /// device (there are `identified` now), sent by its backfill.
    pub(crate) fn add_sink(&mut self, name: &str, identified: u64, settings: SinkSettings) -> bool {
        if self.sinks.contains_key(name) || self.sinks.len() >= MAX_SINKS {
            return false;
        }
        self.sinks.insert(
            name.to_owned(),
            Sink {
                next_batch: 1,
                backfill: (identified > 0).then(|| backfill::Backfill::new(identified)),
                settings,
                ..Sink::default()
            },
        );
        self.meta_dirty.insert(name.to_owned());
        true
    }

    pub(crate) fn infos(&self) -> Vec<SinkInfo> {
        self.sinks
            .iter()
            .map(|(name, s)| SinkInfo {
                name: name.clone(),
                pending: s.pending.len() as u64 + s.backfill.as_ref().map_or(0, |b| b.remaining),
                in_flight: s.in_flight.as_ref().map(|b| b.id.clone()),
                batches_exported: s.next_batch.saturating_sub(1),
                dead_letters: s.dead.len() as u64,
                dead_letters_discarded: s.dead.discarded,
                settings: s.settings,
                format: (!s.settings.is_default()).then_some(s.settings.format.as_str()),
                identifier: (!s.settings.is_default()).then_some(s.settings.identifier.as_str()),
                diagnostics: s.settings.diagnostics,
            })
            .collect()
    }

    /// Verifies each sink's order index against its items.
    pub(crate) fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, s) in &self.sinks {
            if s.pending.len() != s.items.len() {
                problems.push(format!(
                    "sink {name}: {} pending entries for {} items",
                    s.pending.len(),
                    s.items.len()
                ));
            }
            for (seq, key) in &s.pending {
                if s.items.get(key).map(|st| st.seq) != Some(*seq) {
                    problems.push(format!(
                        "sink {name}: pending entry {seq} does not match its item"
                    ));
                }
                if *seq >= s.next_seq {
                    problems.push(format!(
                        "sink {name}: entry {seq} is beyond the next seq {}",
                        s.next_seq
                    ));
                }
            }
            let backfill_end = s.backfill.as_ref().and_then(|b| b.in_flight_end.as_ref());
            let backfill_ops = s.in_flight.as_ref().is_some_and(|b| {
                b.ops
                    .iter()
                    .any(|o| matches!(o.effect, Effect::Backfilled(_)))
            });
            if backfill_ops != backfill_end.is_some() {
                problems.push(format!(
                    "sink {name}: backfill adds in flight: {backfill_ops}, a backfill end: {}",
                    backfill_end.is_some()
                ));
            }
            if let Some(b) = &s.in_flight {
                if b.number >= s.next_batch || b.ops.is_empty() {
                    problems.push(format!(
                        "sink {name}: in-flight batch {} is inconsistent",
                        b.id
                    ));
                }
                if b.ops.len() > s.settings.renderer().max_operations() {
                    problems.push(format!(
                        "sink {name}: in-flight batch {} holds more operations than its format allows",
                        b.id
                    ));
                }
                if b.body.len() >= crate::customerio::MAX_BATCH_BODY_BYTES {
                    problems.push(format!(
                        "sink {name}: in-flight batch {} is over the body limit",
                        b.id
                    ));
                }
            }
        }
        problems
    }

    /// Whether two feeds hold the same sinks (for the store-against-memory check).
    pub(crate) fn same_as(&self, other: &Feed) -> bool {
        self.sinks == other.sinks
    }
}

pub(crate) fn device_item(person: &Arc<str>, token: &[u8]) -> ItemKey {
    ItemKey::Device {
        person: person.clone(),
        token: Box::from(token),
    }
}

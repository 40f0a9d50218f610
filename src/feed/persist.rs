//! The feed's keys in the store.
//!
//! ```text
//! b'S' sink                      -> sink metadata (version byte 1 + bincode SinkMeta)
//! b'F' sink 0x00 seq(u64 BE)     -> pending item (version byte 1 + bincode ItemRec, base)
//! b'K' sink 0x00 person          -> empty: the person exists on the Customer.io side
//! b'X' sink 0x00 number(u64 BE) index(u32 BE) sub(u32 BE)
//!                                -> dead letter (version byte 1 + bincode DeadVal)
//! ```
//!
//! Sink metadata (layout 4, store format 6, adds the sink's format and
//! identifier kind, and the token of an in-flight add without an item;
//! layout 3, store format 5, added the backfill cursor) is bounded: its
//! in-flight batch is at most one batch, and dead letters have a key each
//! (format history: until 2026-11 they were a `Vec` inside the metadata,
//! which is still read and rewritten as keys). Metadata of layouts 1 to 3
//! loads as a `track-v2` sink naming persons by `id`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use super::backfill::Backfill;
use super::dead::Slot;
use super::known::Known;
use super::{Batch, BatchOp, DeadLetter, Effect, Feed, ItemKey, ItemState, Pending, Sink};
use crate::codec::{decode_versioned, describe_key, encode_versioned};
use crate::error::{Error, Result};
use crate::format::{EventKind, SinkSettings, TokenEvent};
use crate::kv::{KvStore, Write};
use crate::model::Platform;

/// Append-only: a variant's position is its tag on disk.
#[derive(Serialize, Deserialize)]
enum ItemRec {
    Device {
        person: String,
        token: Vec<u8>,
    },
    Merge {
        primary: String,
        secondary: String,
    },
    /// Store format 6: a diagnostic event.
    Event {
        person: String,
        kind: EventKind,
        token: String,
        new_token: Option<String>,
        platform: Platform,
        at_ms: u64,
    },
}

/// Append-only: a variant's position is its tag on disk.
#[derive(Serialize, Deserialize)]
enum EffectRec {
    Added(String),
    Deleted,
    Merged(String),
    /// Store format 5.
    Backfilled(String),
    /// Store format 6.
    Noted,
}

/// An in-flight operation until store format 5 (sink metadata layouts 1
/// to 3).
#[derive(Serialize, Deserialize)]
struct OpRec {
    item: Option<(ItemRec, u64)>,
    effect: EffectRec,
    json: String,
}

/// An in-flight operation since store format 6: `OpRec` with the packed
/// token of an add without an item (`BatchOp::token`).
#[derive(Serialize, Deserialize)]
struct OpRecV2 {
    item: Option<(ItemRec, u64)>,
    effect: EffectRec,
    token: Option<Vec<u8>>,
    json: String,
}

#[derive(Serialize, Deserialize)]
struct DeadRec {
    number: u64,
    index: u32,
    sub: u32,
    batch_id: String,
    reason: String,
    operation: String,
    item: ItemRec,
    base: bool,
}

/// A dead letter's value; its slot is in the key.
#[derive(Serialize, Deserialize)]
struct DeadVal {
    batch_id: String,
    reason: String,
    operation: String,
    item: ItemRec,
    base: bool,
}

/// Sink metadata as written before dead letters had keys of their own.
#[derive(Serialize, Deserialize)]
struct SinkMetaV1 {
    next_seq: u64,
    next_batch: u64,
    in_flight: Option<(u64, Vec<OpRec>)>,
    dead: Vec<DeadRec>,
}

/// Sink metadata until store format 4: `SinkMeta` without the backfill.
#[derive(Serialize, Deserialize)]
struct SinkMetaV2 {
    next_seq: u64,
    next_batch: u64,
    in_flight: Option<(u64, Vec<OpRec>)>,
    legacy_dead: Vec<DeadRec>,
    dead_discarded: u64,
}

/// A sink's backfill (`backfill.rs`); positions as (hash, packed token).
#[derive(Serialize, Deserialize)]
struct BackfillRec {
    acked: Option<(u32, Vec<u8>)>,
    in_flight_end: Option<(u32, Vec<u8>)>,
    remaining: u64,
}

/// Sink metadata of store format 5 (layout 3): `SinkMetaV2` plus the backfill.
#[derive(Serialize, Deserialize)]
struct SinkMetaV3 {
    next_seq: u64,
    next_batch: u64,
    in_flight: Option<(u64, Vec<OpRec>)>,
    legacy_dead: Vec<DeadRec>,
    dead_discarded: u64,
    backfill: Option<BackfillRec>,
}

/// Sink metadata (layout 4, store format 6). `legacy_dead` is always
/// written empty; it keeps the layout a superset of `SinkMetaV1`.
#[derive(Serialize, Deserialize)]
struct SinkMeta {
    next_seq: u64,
    next_batch: u64,
    in_flight: Option<(u64, Vec<OpRecV2>)>,
    legacy_dead: Vec<DeadRec>,
    dead_discarded: u64,
    backfill: Option<BackfillRec>,
    /// Store format 6: the sink's format and identifier kind.
    settings: SinkSettings,
}

/// Decodes sink metadata in the current layout or the three before it.
/// bincode rejects trailing bytes and a value cut short, so each layout
/// decodes only as itself (an older layout's in-flight operation, read as
/// `OpRecV2`, meets its JSON's length where an `Option` tag must be 0 or 1:
/// every operation is longer than one byte). Older layouts are `track-v2`
/// sinks naming persons by `id`.
fn decode_meta(key: &[u8], value: &[u8]) -> Result<SinkMeta> {
    match decode_versioned::<SinkMeta>(key, value) {
        Ok(m) => return Ok(m),
        Err(Error::Corrupt { .. }) => {}
        Err(e) => return Err(e),
    }
    let old = match decode_versioned::<SinkMetaV3>(key, value) {
        Ok(m) => m,
        Err(Error::Corrupt { .. }) => decode_meta_v2_or_v1(key, value)?,
        Err(e) => return Err(e),
    };
    Ok(SinkMeta {
        next_seq: old.next_seq,
        next_batch: old.next_batch,
        in_flight: old
            .in_flight
            .map(|(n, ops)| (n, ops.into_iter().map(upgrade_op).collect())),
        legacy_dead: old.legacy_dead,
        dead_discarded: old.dead_discarded,
        backfill: old.backfill,
        settings: SinkSettings::default(),
    })
}

fn decode_meta_v2_or_v1(key: &[u8], value: &[u8]) -> Result<SinkMetaV3> {
    match decode_versioned::<SinkMetaV2>(key, value) {
        Ok(m) => Ok(SinkMetaV3 {
            next_seq: m.next_seq,
            next_batch: m.next_batch,
            in_flight: m.in_flight,
            legacy_dead: m.legacy_dead,
            dead_discarded: m.dead_discarded,
            backfill: None,
        }),
        Err(Error::Corrupt { .. }) => {
            let m: SinkMetaV1 = decode_versioned(key, value)?;
            Ok(SinkMetaV3 {
                next_seq: m.next_seq,
                next_batch: m.next_batch,
                in_flight: m.in_flight,
                legacy_dead: m.dead,
                dead_discarded: 0,
                backfill: None,
            })
        }
        Err(e) => Err(e),
    }
}

/// An in-flight operation of an older layout, which did not keep the token
/// of an add without an item: the only record of it is the Track v2
/// operation itself (`"device":{"token":..}`), read once here, at load. A
/// current batch never needs this: the token is stored beside it.
fn upgrade_op(o: OpRec) -> OpRecV2 {
    let token = match (&o.item, &o.effect) {
        (None, EffectRec::Added(_) | EffectRec::Backfilled(_)) => legacy_token(&o.json),
        _ => None,
    };
    OpRecV2 {
        item: o.item,
        effect: o.effect,
        token,
        json: o.json,
    }
}

fn legacy_token(json: &str) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let token = v.get("device")?.get("token")?.as_str()?;
    Some(crate::codec::pack_token(token).into_vec())
}

fn backfill_rec(b: &Backfill) -> BackfillRec {
    let pos = |p: &Option<super::backfill::Position>| p.as_ref().map(|(h, t)| (*h, t.to_vec()));
    BackfillRec {
        acked: pos(&b.acked),
        in_flight_end: pos(&b.in_flight_end),
        remaining: b.remaining,
    }
}

fn load_backfill(r: BackfillRec) -> Backfill {
    let pos = |p: Option<(u32, Vec<u8>)>| p.map(|(h, t)| (h, t.into_boxed_slice()));
    let mut b = Backfill::new(r.remaining);
    b.acked = pos(r.acked);
    b.in_flight_end = pos(r.in_flight_end);
    b
}

fn rec(key: &ItemKey) -> ItemRec {
    match key {
        ItemKey::Device { person, token } => ItemRec::Device {
            person: person.to_string(),
            token: token.to_vec(),
        },
        ItemKey::Merge { primary, secondary } => ItemRec::Merge {
            primary: primary.to_string(),
            secondary: secondary.to_string(),
        },
        ItemKey::Event { person, event } => ItemRec::Event {
            person: person.to_string(),
            kind: event.kind,
            token: event.token.clone(),
            new_token: event.new_token.clone(),
            platform: event.platform,
            at_ms: event.at_ms,
        },
    }
}

/// Turns records back into keys, sharing person strings.
/// Person names seen while loading, each allocated once: taken from the
/// state's own names (`shared`) where the person has devices, so a name
/// the state holds is not held twice (feed items and dead letters name
/// persons; known persons are fingerprints, `known.rs`).
struct Interner<'a> {
    names: hashbrown::HashSet<Arc<str>>,
    shared: SharedNames<'a>,
}

/// Looks a person's name up among the names the state already holds.
pub(crate) type SharedNames<'a> = &'a dyn Fn(&str) -> Option<Arc<str>>;

impl Interner<'_> {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = (self.shared)(s).unwrap_or_else(|| Arc::from(s));
        self.names.insert(a.clone());
        a
    }

    fn key(&mut self, r: ItemRec) -> ItemKey {
        match r {
            ItemRec::Device { person, token } => ItemKey::Device {
                person: self.get(&person),
                token: token.into_boxed_slice(),
            },
            ItemRec::Merge { primary, secondary } => ItemKey::Merge {
                primary: self.get(&primary),
                secondary: self.get(&secondary),
            },
            ItemRec::Event {
                person,
                kind,
                token,
                new_token,
                platform,
                at_ms,
            } => ItemKey::Event {
                person: self.get(&person),
                event: Box::new(TokenEvent {
                    kind,
                    token,
                    new_token,
                    platform,
                    at_ms,
                }),
            },
        }
    }
}

pub(crate) fn item_key(sink: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + sink.len());
    k.push(b'F');
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn item_value(key: &ItemKey, base: bool) -> Result<Vec<u8>> {
    encode_versioned(&(rec(key), base))
}

pub(crate) fn dead_key(sink: &str, slot: Slot) -> Vec<u8> {
    let (number, index, sub) = slot;
    let mut k = Vec::with_capacity(18 + sink.len());
    k.push(b'X');
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k.extend_from_slice(&number.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

fn dead_value(d: &DeadLetter) -> Result<Vec<u8>> {
    encode_versioned(&DeadVal {
        batch_id: d.batch_id.clone(),
        reason: d.reason.clone(),
        operation: d.operation.clone(),
        item: rec(&d.item),
        base: d.base,
    })
}

pub(crate) fn known_key(sink: &str, person: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + sink.len() + person.len());
    k.push(b'K');
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k.extend_from_slice(person.as_bytes());
    k
}

fn meta_key(sink: &str) -> Vec<u8> {
    let mut k = vec![b'S'];
    k.extend_from_slice(sink.as_bytes());
    k
}

fn effect_rec(e: &Effect) -> EffectRec {
    match e {
        Effect::Added(p) => EffectRec::Added(p.to_string()),
        Effect::Deleted => EffectRec::Deleted,
        Effect::Merged(s) => EffectRec::Merged(s.to_string()),
        Effect::Backfilled(p) => EffectRec::Backfilled(p.to_string()),
        Effect::Noted => EffectRec::Noted,
    }
}

/// The feed's changes since the last checkpoint, drained under the state's
/// write lock and encoded into store writes under its read lock
/// ([`Feed::encode_drain`]), so that reads go on while a snapshot encodes.
pub(crate) struct FeedDrain {
    items: HashMap<Vec<u8>, Pending>,
    dead: Vec<(String, BTreeSet<Slot>)>,
    meta: BTreeSet<String>,
}

impl Feed {
    /// Moves out what changed since the last checkpoint (no encoding).
    pub(crate) fn drain_dirty(&mut self) -> FeedDrain {
        let items = std::mem::take(&mut self.dirty);
        let dead = self
            .sinks
            .iter_mut()
            .map(|(name, s)| (name.clone(), s.dead.take_dirty_slots()))
            .filter(|(_, slots)| !slots.is_empty())
            .collect();
        let meta = std::mem::take(&mut self.meta_dirty);
        FeedDrain { items, dead, meta }
    }

    /// Encodes a drain into store writes; the feed must not have changed
    /// since `drain_dirty` (the caller holds the state, at least for reading).
    /// An encode error fails the checkpoint: nothing may be written short.
    pub(crate) fn encode_drain(&self, drain: FeedDrain) -> Result<Vec<Write>> {
        let FeedDrain { items, dead, meta } = drain;
        let mut writes = Vec::with_capacity(items.len() + meta.len());
        for (key, p) in items {
            let value = match p {
                Pending::Item(item, base) => Some(item_value(&item, base)?),
                Pending::Known => Some(Vec::new()),
                Pending::Gone => None,
            };
            writes.push((key, value));
        }
        for (name, slots) in dead {
            let letters = self.sinks.get(&name).map(|s| &s.dead);
            for slot in slots {
                let letter = letters.and_then(|d| d.letter(&slot));
                let value = letter.map(dead_value).transpose()?;
                writes.push((dead_key(&name, slot), value));
            }
        }
        for name in meta {
            let Some(s) = self.sinks.get(&name) else {
                continue;
            };
            writes.push((meta_key(&name), Some(encode_versioned(&sink_meta(s))?)));
        }
        Ok(writes)
    }
}

fn sink_meta(s: &Sink) -> SinkMeta {
    SinkMeta {
        next_seq: s.next_seq,
        next_batch: s.next_batch,
        in_flight: s.in_flight.as_ref().map(|b| {
            let ops = b
                .ops
                .iter()
                .map(|o| OpRecV2 {
                    item: o.item.as_ref().map(|(k, seq)| (rec(k), *seq)),
                    effect: effect_rec(&o.effect),
                    token: o.token.as_ref().map(|t| t.to_vec()),
                    json: o.json.clone(),
                })
                .collect();
            (b.number, ops)
        }),
        legacy_dead: Vec::new(),
        dead_discarded: s.dead.discarded,
        backfill: s.backfill.as_ref().map(backfill_rec),
        settings: s.settings,
    }
}

fn split_sink_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let body = key.get(1..)?;
    let zero = body.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(body.get(..zero)?).ok()?;
    Some((name, body.get(zero + 1..)?))
}

fn load_dead(feed: &mut Feed, names: &mut Interner, key: &[u8], value: &[u8]) -> Result<()> {
    let bad = || Error::corrupt(describe_key(key), "malformed dead-letter key");
    let (name, rest) = split_sink_key(key).ok_or_else(bad)?;
    let slot = <[u8; 16]>::try_from(rest).map_err(|_| bad())?;
    let (number, tail) = slot.split_at(8);
    let (index, sub) = tail.split_at(4);
    let number = u64::from_be_bytes(number.try_into().map_err(|_| bad())?);
    let index = u32::from_be_bytes(index.try_into().map_err(|_| bad())?);
    let sub = u32::from_be_bytes(sub.try_into().map_err(|_| bad())?);
    let v: DeadVal = decode_versioned(key, value)?;
    let sink = feed.sinks.get_mut(name).ok_or_else(|| {
        Error::corrupt(
            describe_key(key),
            format!("dead letter of unknown sink {name:?}"),
        )
    })?;
    let letter = DeadLetter {
        batch_id: v.batch_id,
        index,
        reason: v.reason,
        operation: v.operation,
        item: names.key(v.item),
        base: v.base,
    };
    sink.dead.load((number, index, sub), letter);
    Ok(())
}

/// Every sink's known persons, read by `load_known` and attached to the
/// loaded sinks by `load_feed`. They need nothing from the state, so an
/// open reads them on a thread of their own beside the devices
/// (`store/checkpoint.rs`).
#[derive(Default)]
pub(crate) struct KnownSets {
    /// By sink name: its set, and its first key in key order (the one an
    /// error names when no such sink is stored; the scan visits some
    /// records in the order they were written, `scan_prefix_shedding`).
    by_sink: BTreeMap<String, (Known, Vec<u8>)>,
}

/// Loads every sink's known persons (`'K'` records). Each sink's set
/// holds fingerprints of the names (`known.rs`), computed from the
/// record's bytes alone: no name is allocated or looked up in the state.
/// (The set grows as it fills: a rehash moves fingerprints without
/// hashing a name again.) Open calls it beside the devices' load, and
/// like it, it lets the store shed what it read (`scan_prefix_shedding`):
/// a scan that does not would hold sled's lock and keep the other's sheds
/// from happening.
pub(crate) fn load_known(store: &dyn KvStore) -> Result<KnownSets> {
    let mut sets = KnownSets::default();
    store.scan_prefix_shedding(b"K", &mut |key, _| {
        let (name, person) = split_sink_key(key)
            .ok_or_else(|| Error::corrupt(describe_key(key), "malformed known-person key"))?;
        let person = std::str::from_utf8(person)
            .map_err(|_| Error::corrupt(describe_key(key), "person is not UTF-8"))?;
        let (known, first_key) = match sets.by_sink.get_mut(name) {
            Some(set) => set,
            None => sets
                .by_sink
                .entry(name.to_owned())
                .or_insert_with(|| (Known::default(), key.to_vec())),
        };
        if key < first_key.as_slice() {
            key.clone_into(first_key);
        }
        if !known.insert(person) {
            return Err(Error::corrupt(describe_key(key), "duplicate known person"));
        }
        Ok(())
    })?;
    Ok(sets)
}

/// Gives each loaded sink its known persons; a set of a sink the store
/// does not hold is damage, named by its first key.
fn attach_known(feed: &mut Feed, known: KnownSets) -> Result<()> {
    for (name, (set, first_key)) in known.by_sink {
        let sink = feed.sinks.get_mut(&name).ok_or_else(|| {
            Error::corrupt(
                describe_key(&first_key),
                format!("entry of unknown sink {name:?}"),
            )
        })?;
        sink.known = set;
    }
    Ok(())
}

/// Loads every sink from the store. A database without the default sink
/// gets one whose feed starts with `identified` (every identified device).
/// Person names the state holds are shared (`shared`), not copied; the
/// known persons come read already (`load_known`).
pub(crate) fn load_feed(
    store: &dyn KvStore,
    shared: SharedNames<'_>,
    known: KnownSets,
) -> Result<Feed> {
    let mut feed = Feed::default();
    let mut names = Interner {
        names: hashbrown::HashSet::new(),
        shared,
    };
    store.scan_prefix(b"S", &mut |key, value| {
        let name = std::str::from_utf8(key.get(1..).unwrap_or_default())
            .map_err(|_| Error::corrupt(describe_key(key), "sink name is not UTF-8"))?
            .to_owned();
        let meta = decode_meta(key, value)?;
        let in_flight = meta.in_flight.map(|(number, ops)| {
            let ops = ops
                .into_iter()
                .map(|o| BatchOp {
                    item: o.item.map(|(k, seq)| (names.key(k), seq)),
                    effect: match o.effect {
                        EffectRec::Added(p) => Effect::Added(names.get(&p)),
                        EffectRec::Deleted => Effect::Deleted,
                        EffectRec::Merged(s) => Effect::Merged(names.get(&s)),
                        EffectRec::Backfilled(p) => Effect::Backfilled(names.get(&p)),
                        EffectRec::Noted => Effect::Noted,
                    },
                    token: o.token.map(Vec::into_boxed_slice),
                    json: o.json,
                })
                .collect();
            Arc::new(Batch::new(&name, number, ops))
        });
        let mut dead = super::dead::DeadLetters::default();
        dead.discarded = meta.dead_discarded;
        let legacy = !meta.legacy_dead.is_empty();
        for d in meta.legacy_dead {
            let letter = DeadLetter {
                batch_id: d.batch_id,
                index: d.index,
                reason: d.reason,
                operation: d.operation,
                item: names.key(d.item),
                base: d.base,
            };
            dead.load((d.number, d.index, d.sub), letter);
        }
        if legacy {
            // Rewritten as one key each (and dropped from the metadata) at
            // the next checkpoint.
            dead.mark_all_dirty();
            feed.meta_dirty.insert(name.clone());
        }
        feed.sinks.insert(
            name,
            Sink {
                next_seq: meta.next_seq,
                next_batch: meta.next_batch,
                in_flight,
                dead,
                backfill: meta.backfill.map(load_backfill),
                settings: meta.settings,
                ..Sink::default()
            },
        );
        Ok(())
    })?;
    store.scan_prefix(b"F", &mut |key, value| {
        let (name, seq) = split_sink_key(key)
            .ok_or_else(|| Error::corrupt(describe_key(key), "malformed feed key"))?;
        let seq = <[u8; 8]>::try_from(seq)
            .map(u64::from_be_bytes)
            .map_err(|_| Error::corrupt(describe_key(key), "malformed feed key"))?;
        let (r, base): (ItemRec, bool) = decode_versioned(key, value)?;
        let item = names.key(r);
        let sink = feed.sinks.get_mut(name).ok_or_else(|| {
            Error::corrupt(describe_key(key), format!("entry of unknown sink {name:?}"))
        })?;
        if sink
            .items
            .insert(item.clone(), ItemState { seq, base })
            .is_some()
        {
            return Err(Error::corrupt(describe_key(key), "duplicate feed item"));
        }
        sink.pending.insert(seq, item);
        Ok(())
    })?;
    store.scan_prefix(b"X", &mut |key, value| {
        load_dead(&mut feed, &mut names, key, value)
    })?;
    attach_known(&mut feed, known)?;
    Ok(feed)
}

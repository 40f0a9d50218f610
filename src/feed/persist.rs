//! The feed's keys in the store.
//!
//! ```text
//! b'S' sink                      -> sink metadata (version byte 1 + bincode SinkMeta)
//! b'F' sink 0x00 seq(u64 BE)     -> pending item (version byte 1 + bincode ItemRec, base)
//! b'K' sink 0x00 person          -> empty: the person exists on the Customer.io side
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Batch, BatchOp, DeadLetter, Effect, Feed, ItemKey, ItemState, Sink};
use crate::codec::{decode_versioned, describe_key, encode_versioned};
use crate::error::{Error, Result};
use crate::store::{KvStore, Write};

#[derive(Serialize, Deserialize)]
enum ItemRec {
    Device { person: String, token: Vec<u8> },
    Merge { primary: String, secondary: String },
}

#[derive(Serialize, Deserialize)]
enum EffectRec {
    Added(String),
    Deleted,
    Merged(String),
}

#[derive(Serialize, Deserialize)]
struct OpRec {
    item: Option<(ItemRec, u64)>,
    effect: EffectRec,
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

#[derive(Serialize, Deserialize)]
struct SinkMeta {
    next_seq: u64,
    next_batch: u64,
    in_flight: Option<(u64, Vec<OpRec>)>,
    dead: Vec<DeadRec>,
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
    }
}

/// Turns records back into keys, sharing person strings.
struct Interner(hashbrown::HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, s: String) -> Arc<str> {
        if let Some(a) = self.0.get(s.as_str()) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }

    fn key(&mut self, r: ItemRec) -> ItemKey {
        match r {
            ItemRec::Device { person, token } => ItemKey::Device {
                person: self.get(person),
                token: token.into_boxed_slice(),
            },
            ItemRec::Merge { primary, secondary } => ItemKey::Merge {
                primary: self.get(primary),
                secondary: self.get(secondary),
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

pub(crate) fn item_value(key: &ItemKey, base: bool) -> Vec<u8> {
    encode_versioned(&(rec(key), base))
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
    }
}

impl Feed {
    /// Drains the feed's changes since the last checkpoint into store writes.
    pub(crate) fn take_writes(&mut self) -> Vec<Write> {
        let mut writes: Vec<Write> = self.dirty.drain().collect();
        for name in std::mem::take(&mut self.meta_dirty) {
            let Some(s) = self.sinks.get(&name) else {
                continue;
            };
            let meta = SinkMeta {
                next_seq: s.next_seq,
                next_batch: s.next_batch,
                in_flight: s.in_flight.as_ref().map(|b| {
                    let ops = b
                        .ops
                        .iter()
                        .map(|o| OpRec {
                            item: o.item.as_ref().map(|(k, seq)| (rec(k), *seq)),
                            effect: effect_rec(&o.effect),
                            json: o.json.clone(),
                        })
                        .collect();
                    (b.number, ops)
                }),
                dead: s
                    .dead
                    .iter()
                    .map(|(&(number, index, sub), d)| DeadRec {
                        number,
                        index,
                        sub,
                        batch_id: d.batch_id.clone(),
                        reason: d.reason.clone(),
                        operation: d.operation.clone(),
                        item: rec(&d.item),
                        base: d.base,
                    })
                    .collect(),
            };
            writes.push((meta_key(&name), Some(encode_versioned(&meta))));
        }
        writes
    }
}

fn split_sink_key(key: &[u8]) -> Option<(String, &[u8])> {
    let body = key.get(1..)?;
    let zero = body.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(body.get(..zero)?).ok()?.to_owned();
    Some((name, body.get(zero + 1..)?))
}

/// Loads every sink from the store. A database without the default sink
/// gets one whose feed starts with `identified` (every identified device).
pub(crate) fn load_feed(store: &dyn KvStore) -> Result<Feed> {
    let mut feed = Feed::default();
    let mut names = Interner(hashbrown::HashSet::new());
    store.scan_prefix(b"S", &mut |key, value| {
        let name = std::str::from_utf8(key.get(1..).unwrap_or_default())
            .map_err(|_| Error::corrupt(describe_key(key), "sink name is not UTF-8"))?
            .to_owned();
        let meta: SinkMeta = decode_versioned(key, value)?;
        let in_flight = meta.in_flight.map(|(number, ops)| {
            let ops = ops
                .into_iter()
                .map(|o| BatchOp {
                    item: o.item.map(|(k, seq)| (names.key(k), seq)),
                    effect: match o.effect {
                        EffectRec::Added(p) => Effect::Added(names.get(p)),
                        EffectRec::Deleted => Effect::Deleted,
                        EffectRec::Merged(s) => Effect::Merged(names.get(s)),
                    },
                    json: o.json,
                })
                .collect();
            Arc::new(Batch::new(&name, number, ops))
        });
        let mut dead = BTreeMap::new();
        for d in meta.dead {
            dead.insert(
                (d.number, d.index, d.sub),
                DeadLetter {
                    batch_id: d.batch_id,
                    index: d.index,
                    reason: d.reason,
                    operation: d.operation,
                    item: names.key(d.item),
                    base: d.base,
                },
            );
        }
        feed.sinks.insert(
            name,
            Sink {
                next_seq: meta.next_seq,
                next_batch: meta.next_batch,
                in_flight,
                dead,
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
        let sink = feed.sinks.get_mut(&name).ok_or_else(|| {
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
    store.scan_prefix(b"K", &mut |key, _| {
        let (name, person) = split_sink_key(key)
            .ok_or_else(|| Error::corrupt(describe_key(key), "malformed known-person key"))?;
        let person = std::str::from_utf8(person)
            .map_err(|_| Error::corrupt(describe_key(key), "person is not UTF-8"))?
            .to_owned();
        let person = names.get(person);
        let sink = feed.sinks.get_mut(&name).ok_or_else(|| {
            Error::corrupt(describe_key(key), format!("entry of unknown sink {name:?}"))
        })?;
        sink.known.insert(person);
        Ok(())
    })?;
    Ok(feed)
}

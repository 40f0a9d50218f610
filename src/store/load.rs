//! Loading the devices at open on both cores: a scanning thread reads the
//! `'D'` pages (sled, page decoding, delta overlay), checks and decodes each
//! record, hashes its token and person with the state's hasher and interns
//! the attribute set; the opening thread interns the people, boxes the
//! tokens too long for a slot (FCM's) and inserts into the tables (measured
//! at 10^7: the random probes into tables of millions of entries are most
//! of the open).
//!
//! Nothing the state keeps is allocated on the scanning thread but the
//! attribute sets (a few): glibc gives that thread its own arena, which the
//! load's transient memory (decoded pages, sled's reads) fills and frees,
//! and a box left among the freed chunks keeps their pages resident after
//! `heap::release_free_pages` (DESIGN.md 6, "The heap after open").

use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use hashbrown::{DefaultHashBuilder, HashSet};

use super::KvStore;
use crate::beside::{beside, Helper};
use crate::codec::*;
use crate::error::{Error, Result};
use crate::state::{LoadedDevice, SlotToken, State, NO_PERSON};

/// Records per batch handed from the scanning thread to the opening one.
const LOAD_BATCH_RECORDS: usize = 4096;
/// Batches in flight between the two (bounds the memory of the pipeline).
const LOAD_BATCHES_IN_FLIGHT: usize = 4;
/// How many records ahead of its insert the opening thread asks for a
/// record's person slot; its index entries are asked for twice as far
/// ahead, so the slot's address is known by then (`load_into`).
const LOAD_PREFETCH_RECORDS: usize = 8;

/// One decoded device; its person (`NO_PERSON` until the opening thread
/// interns it) is named by a range of the batch's `names` and its hash.
struct Rec {
    device: LoadedDevice,
    person: Option<(Range<usize>, u64)>,
    /// A token too long for the slot, in the batch's `long_tokens`: the
    /// opening thread allocates its box (see `load_into`).
    long_token: Option<Range<usize>>,
}

#[derive(Default)]
struct Batch {
    names: Vec<u8>,
    long_tokens: Vec<u8>,
    recs: Vec<Rec>,
    /// Each record's token hash and person hash, for `prefetch_ahead`.
    ahead: Vec<(u64, Option<u64>)>,
}

/// The scanning thread's share of each record: decoding, hashing and the
/// attribute sets, interned into a pool the
/// state adopts after the load (`State::adopt_attr_pool`). People are
/// interned by the opening thread: at 10^7 devices, with them here, this
/// thread did four fifths of the load's work while the other waited
/// (their names are random probes into a table of millions).
struct Decoder {
    hasher: DefaultHashBuilder,
    attrs: HashSet<Arc<[u8]>>,
}

impl Decoder {
    /// The shared blob of `blob`, checked once per distinct blob.
    fn attrs(&mut self, key: &[u8], blob: &[u8]) -> Result<Arc<[u8]>> {
        if let Some(a) = self.attrs.get(blob) {
            return Ok(a.clone());
        }
        decode_attributes(&describe_key(key), blob)?;
        let a: Arc<[u8]> = Arc::from(blob);
        self.attrs.insert(a.clone());
        Ok(a)
    }

    /// Checks and decodes one `'D'` record into `batch` (errors name the key).
    fn decode(&mut self, batch: &mut Batch, key: &[u8], value: &[u8]) -> Result<()> {
        let packed = key.get(1..).unwrap_or_default();
        if !is_packed_token(packed) {
            return Err(Error::corrupt(
                describe_key(key),
                "key is not a valid packed token",
            ));
        }
        // Open decodes every record: name the key only when something is wrong.
        let r = decode_record("", value).map_err(|_| {
            decode_record(&describe_key(key), value)
                .err()
                .unwrap_or_else(|| Error::corrupt(describe_key(key), "undecodable record"))
        })?;
        let person = r.person.map(|p| {
            let start = batch.names.len();
            batch.names.extend_from_slice(p.as_bytes());
            (start..batch.names.len(), self.hasher.hash_one(p.as_bytes()))
        });
        let (token, long_token) = if SlotToken::fits_inline(packed) {
            (SlotToken::new(packed), None)
        } else {
            let start = batch.long_tokens.len();
            batch.long_tokens.extend_from_slice(packed);
            (SlotToken::new(&[]), Some(start..batch.long_tokens.len()))
        };
        let device = LoadedDevice {
            token_hash: self.hasher.hash_one(packed),
            token,
            platform: r.platform,
            person: NO_PERSON,
            last_seen_ms: r.last_seen_ms,
            attrs: self.attrs(key, r.attributes_blob)?,
        };
        batch.recs.push(Rec {
            device,
            person,
            long_token,
        });
        Ok(())
    }
}

/// Inserts a batch's devices, interning their people.
fn load_into(batch: &mut Batch, state: &mut State) -> Result<()> {
    batch.ahead.clear();
    let hashes = batch
        .recs
        .iter()
        .map(|r| (r.device.token_hash, r.person.as_ref().map(|p| p.1)));
    batch.ahead.extend(hashes);
    for (i, mut r) in batch.recs.drain(..).enumerate() {
        prefetch_ahead(state, &batch.ahead, i);
        if let Some((range, h)) = r.person {
            // Decoded from a record, so UTF-8: checked again, not trusted.
            let name = batch
                .names
                .get(range)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| Error::corrupt("a person of the store", "not UTF-8"))?;
            r.device.person = state.load_person(name, h);
        }
        if let Some(range) = r.long_token {
            let packed = batch
                .long_tokens
                .get(range)
                .ok_or_else(|| Error::corrupt("a token of the store", "out of its batch"))?;
            r.device.token = SlotToken::new(packed);
        }
        // sled keys are unique and packing is canonical: no duplicate tokens.
        state.load_device(r.device);
    }
    batch.names.clear();
    batch.long_tokens.clear();
    Ok(())
}

/// Asks for the cache lines of the records a few places after record `i`:
/// the index entries of the one `2 × LOAD_PREFETCH_RECORDS` ahead, the
/// person slot of the one `LOAD_PREFETCH_RECORDS` ahead (whose entries were
/// asked for before). At 10^7 devices each record's person lookup and token
/// insert were two or three misses in a row.
fn prefetch_ahead(state: &State, ahead: &[(u64, Option<u64>)], i: usize) {
    if let Some(&(token_hash, person_hash)) = ahead.get(i + 2 * LOAD_PREFETCH_RECORDS) {
        state.prefetch_index_entries(token_hash, person_hash);
    }
    if let Some(&(_, Some(person_hash))) = ahead.get(i + LOAD_PREFETCH_RECORDS) {
        state.prefetch_person_slot(person_hash);
    }
}

/// The scanning thread: decodes every `'D'` record into batches, reusing
/// the ones the opening thread hands back (`spent`): a fresh batch for
/// every 4,096 records grew its buffers from nothing each time, and the
/// page faults of that memory were most of this thread's time at 10^6.
/// Stops early (with `Error::Closed`) when the opening thread has gone.
fn scan(
    store: &dyn KvStore,
    decoder: &mut Decoder,
    tx: &Sender<Batch>,
    spent: &Receiver<Batch>,
) -> Result<()> {
    let mut batch = Batch::default();
    store.scan_prefix_shedding(&[DEVICE_PREFIX], &mut |key, value| {
        decoder.decode(&mut batch, key, value)?;
        if batch.recs.len() >= LOAD_BATCH_RECORDS {
            let next = spent.try_recv().unwrap_or_default();
            tx.send(std::mem::replace(&mut batch, next))
                .map_err(|_| Error::Closed)?;
        }
        Ok(())
    })?;
    if !batch.recs.is_empty() {
        tx.send(batch).map_err(|_| Error::Closed)?;
    }
    Ok(())
}

/// Inserts batches until the scanner is done or an insert fails, handing
/// each one back emptied (its buffers keep their capacity).
fn insert_all(state: &mut State, rx: Receiver<Batch>, spent: &Sender<Batch>) -> Result<()> {
    for mut batch in rx {
        load_into(&mut batch, state)?;
        // Full only when the scanner has enough spare batches: drop it.
        let _ = spent.try_send(batch);
    }
    Ok(())
}

/// Loads every device of the store into `state` (between `begin_load` and
/// `finish_load`, into a state with no devices yet), scanning on a second
/// thread.
pub(crate) fn load_devices(store: &dyn KvStore, state: &mut State) -> Result<()> {
    let mut decoder = Decoder {
        hasher: *state.hasher(),
        attrs: HashSet::new(),
    };
    let (tx, rx) = bounded::<Batch>(LOAD_BATCHES_IN_FLIGHT);
    let (spent_tx, spent_rx) = bounded::<Batch>(LOAD_BATCHES_IN_FLIGHT + 1);
    let scanning = Helper {
        thread: "devreg-load",
        what: "the devices of the store",
        doing: "scanning the store's devices",
    };
    let decoder_ref = &mut decoder;
    // `tx` moves into the thread: the inserts end when it is dropped (or
    // at once, if the thread never started). On an insert error, `rx` is
    // dropped and the scanner stops.
    let (inserted, scanned) = beside(
        &scanning,
        move || scan(store, decoder_ref, &tx, &spent_rx),
        || insert_all(state, rx, &spent_tx),
    );
    inserted?;
    scanned??;
    state.adopt_attr_pool(decoder.attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(person: Option<&str>) -> Vec<u8> {
        let mut attrs = Vec::new();
        encode_attributes_into(&std::collections::BTreeMap::new(), &mut attrs);
        encode_record(&RecordRef {
            platform: crate::model::Platform::Android,
            last_seen_ms: 7,
            person,
            attributes_blob: &attrs,
        })
    }

    /// The scanner hands an FCM token over as bytes and leaves its slot
    /// token empty; the opening thread boxes it and the device reads back
    /// whole. An APNs token stays inline on the scanner's side (no box).
    #[test]
    fn a_long_token_is_boxed_by_the_opening_thread_not_the_scanner() {
        let fcm = format!("cXk1:APA91b{}", "Q".repeat(140));
        let apns = "ab".repeat(32);
        let mut state = State::new(u32::MAX);
        let mut decoder = Decoder {
            hasher: *state.hasher(),
            attrs: HashSet::new(),
        };
        let mut batch = Batch::default();
        for (token, person) in [(&fcm, Some("ann")), (&apns, None)] {
            let key = device_key(&pack_token(token));
            decoder.decode(&mut batch, &key, &record(person)).unwrap();
        }
        let [long, short] = &batch.recs[..] else {
            panic!("two records decoded");
        };
        assert!(long.device.token.is_empty(), "the scanner boxed the token");
        let range = long.long_token.clone().unwrap();
        assert_eq!(&batch.long_tokens[range], &*pack_token(&fcm));
        assert!(short.long_token.is_none());
        assert!(short.device.token.is_inline());
        assert_eq!(&*short.device.token, &*pack_token(&apns));

        state.begin_load(2, 1);
        load_into(&mut batch, &mut state).unwrap();
        state.finish_load().unwrap();
        assert!(batch.long_tokens.is_empty() && batch.recs.is_empty());
        let d = state.device(&fcm).unwrap();
        assert_eq!(
            (d.token.as_str(), d.person.as_deref()),
            (fcm.as_str(), Some("ann"))
        );
        assert_eq!(state.device(&apns).unwrap().last_seen_ms, 7);
    }
}

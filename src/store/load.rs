//! Loading the devices at open on both cores: a scanning thread reads the
//! `'D'` pages (sled, page decoding, delta overlay), checks and decodes each
//! record and hashes its token and person with the state's hasher; the
//! opening thread only inserts into the tables (measured at 10^7: the
//! inserts' random probes are most of the open).

use std::hash::BuildHasher;
use std::ops::Range;

use crossbeam_channel::{bounded, Receiver, Sender};
use hashbrown::DefaultHashBuilder;

use super::KvStore;
use crate::codec::*;
use crate::error::{Error, Result};
use crate::model::Platform;
use crate::state::{LoadedDevice, State};

/// Records per batch handed from the scanning thread to the opening one.
const LOAD_BATCH_RECORDS: usize = 4096;
/// Batches in flight between the two (bounds the memory of the pipeline).
const LOAD_BATCHES_IN_FLIGHT: usize = 4;

/// One decoded record; ranges index the batch's bytes.
struct Rec {
    key: Range<usize>,
    token_hash: u64,
    platform: Platform,
    person: Option<(Range<usize>, u64)>,
    last_seen_ms: u64,
    attrs: Range<usize>,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    recs: Vec<Rec>,
}

impl Batch {
    fn put(&mut self, b: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        start..self.bytes.len()
    }

    /// Checks and decodes one `'D'` record (errors name the key).
    fn push(&mut self, hasher: &DefaultHashBuilder, key: &[u8], value: &[u8]) -> Result<()> {
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
        let person = r
            .person
            .map(|p| (self.put(p.as_bytes()), hasher.hash_one(p.as_bytes())));
        let rec = Rec {
            key: self.put(key),
            token_hash: hasher.hash_one(packed),
            platform: r.platform,
            person,
            last_seen_ms: r.last_seen_ms,
            attrs: self.put(r.attributes_blob),
        };
        self.recs.push(rec);
        Ok(())
    }

    /// Inserts the batch's devices.
    fn load_into(&self, state: &mut State) -> Result<()> {
        let bytes = |r: &Range<usize>| self.bytes.get(r.clone()).unwrap_or_default();
        for r in &self.recs {
            let key = bytes(&r.key);
            let attrs_blob = bytes(&r.attrs);
            // Each distinct attribute blob is verified once.
            if !state.attrs_interned(attrs_blob) {
                decode_attributes(&describe_key(key), attrs_blob)?;
            }
            let person = match &r.person {
                Some((range, h)) => Some((
                    std::str::from_utf8(bytes(range))
                        .map_err(|_| Error::corrupt(describe_key(key), "person is not UTF-8"))?,
                    *h,
                )),
                None => None,
            };
            // sled keys are unique and packing is canonical: no duplicate tokens.
            state.load_device(&LoadedDevice {
                packed: key.get(1..).unwrap_or_default(),
                token_hash: r.token_hash,
                platform: r.platform,
                person,
                last_seen_ms: r.last_seen_ms,
                attrs_blob,
            });
        }
        Ok(())
    }
}

/// The scanning thread: decodes every `'D'` record into batches, reusing
/// the ones the opening thread hands back (`spent`): a fresh batch for
/// every 4,096 records grew its buffers from nothing each time, and the
/// page faults of that memory were most of this thread's time at 10^6.
/// Stops early (with `Error::Closed`) when the opening thread has gone.
fn scan(
    store: &dyn KvStore,
    hasher: &DefaultHashBuilder,
    tx: &Sender<Batch>,
    spent: &Receiver<Batch>,
) -> Result<()> {
    let mut batch = Batch::default();
    store.scan_prefix(&[DEVICE_PREFIX], &mut |key, value| {
        batch.push(hasher, key, value)?;
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
        batch.load_into(state)?;
        batch.bytes.clear();
        batch.recs.clear();
        // Full only when the scanner has enough spare batches: drop it.
        let _ = spent.try_send(batch);
    }
    Ok(())
}

/// Loads every device of the store into `state` (between `begin_load` and
/// `finish_load`), scanning on a second thread.
pub(crate) fn load_devices(store: &dyn KvStore, state: &mut State) -> Result<()> {
    let hasher = *state.hasher();
    let (tx, rx) = bounded::<Batch>(LOAD_BATCHES_IN_FLIGHT);
    let (spent_tx, spent_rx) = bounded::<Batch>(LOAD_BATCHES_IN_FLIGHT + 1);
    std::thread::scope(|scope| {
        let scanner = std::thread::Builder::new()
            .name("devreg-load".into())
            .spawn_scoped(scope, move || scan(store, &hasher, &tx, &spent_rx))
            .map_err(|e| Error::io("starting the loading thread", e))?;
        // On an insert error, `rx` is dropped here and the scanner stops.
        let inserted = insert_all(state, rx, &spent_tx);
        let scanned = scanner.join().unwrap_or_else(|_| {
            Err(Error::corrupt(
                "the devices of the store",
                "the thread scanning them panicked (a bug in devreg, not damage)",
            ))
        });
        match (inserted, scanned) {
            (Err(e), _) => Err(e),
            (Ok(()), r) => r,
        }
    })
}

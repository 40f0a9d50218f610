//! Checkpoints: the net changes since the last one, written to the store in
//! one atomic batch together with the log position they reflect; and the
//! reverse, loading the state from the store at open.

use hashbrown::HashSet;

use super::{KvStore, Write};
use crate::codec::*;
use crate::error::{Error, Result};
use crate::feed::{FeedDrain, KnownSets};
use crate::history::HistoryDrain;
use crate::state::{State, StateLock, StateWrite};

/// Metadata key: the log segment size the LSNs are laid out with (u64 big-endian).
pub(crate) const META_SEGMENT_BYTES: &[u8] = b"Mlog_segment_bytes";

/// The net changes up to log position `lsn`, ready for the store.
pub(crate) struct Snapshot {
    pub(crate) lsn: u64,
    pub(crate) writes: Vec<Write>,
    /// Devices in the state when it was taken (sizes the store's deltas).
    pub(crate) devices: u64,
    /// Which snapshot of the history this is (`History::drains`): once it
    /// is in the store, `History::release_flushing` frees its entries.
    pub(crate) history_drain: u64,
}

impl Snapshot {
    /// Drains the state's dirty set; the state must be at log position `lsn`.
    /// `extra` goes first (a failed checkpoint's writes, which later ones
    /// override). An encode error fails the whole snapshot: the caller must
    /// fail stop, as the changes it drained are then only in the log.
    ///
    /// The write lock is held only to move the changed sets out; it is then
    /// downgraded (atomically: no write comes between) and the records are
    /// encoded under the read lock, so reads go on meanwhile. At 10^6
    /// devices that encoding took about 90 ms with every reader waiting.
    pub(crate) fn take(mut state: StateWrite<'_>, lsn: u64, extra: Vec<Write>) -> Result<Snapshot> {
        let drain = Drain::take(&mut state);
        let state = StateLock::downgrade(state);
        #[cfg(test)]
        tests::AFTER_DRAIN.with(|hook| {
            if let Some(f) = hook.borrow_mut().as_mut() {
                f();
            }
        });
        drain.encode(&state, lsn, extra)
    }

    /// Writes the snapshot atomically and makes it durable. A merge the
    /// writes make due is left to `KvStore::merge_if_due`, which the caller
    /// runs once it has freed the snapshot (and the log up to `lsn`).
    pub(crate) fn write(&self, store: &dyn KvStore) -> Result<u64> {
        store.plan_for_devices(self.devices);
        store.apply_deferred(&self.writes)?;
        store.sync()?;
        Ok(self.lsn)
    }
}

/// What changed since the last snapshot, moved out of the state under its
/// write lock (no encoding there).
struct Drain {
    devices: crate::byteset::ByteSet,
    deliv: HashSet<Box<[u8]>>,
    feed: FeedDrain,
    history: HistoryDrain,
}

impl Drain {
    fn take(state: &mut State) -> Drain {
        // An orphan found at open is deleted by this snapshot: its token is
        // in `deliv_dirty` already.
        state.deliv_orphans.clear();
        let now = state.now_ms;
        Drain {
            devices: std::mem::take(&mut state.dirty),
            deliv: std::mem::take(&mut state.deliv_dirty),
            feed: state.feed.drain_dirty(),
            history: state.history.drain_dirty(now),
        }
    }

    /// The store writes of the drained changes, read from `state` (which
    /// has not changed since `take`).
    fn encode(self, state: &State, lsn: u64, extra: Vec<Write>) -> Result<Snapshot> {
        let mut writes = Vec::with_capacity(self.devices.len() + extra.len() + 2);
        writes.extend(extra);
        encode_devices(state, &self.devices, &mut writes)?;
        for token in self.deliv {
            let entry = state.lookup(&token).and_then(|id| state.deliv.get(&id));
            let value = entry.map(encode_versioned).transpose()?;
            writes.push((deliv_key(&token), value));
        }
        writes.extend(state.feed.encode_drain(self.feed)?);
        writes.extend(state.history.encode_drain(self.history)?);
        writes.push((
            META_CHECKPOINT_LSN.to_vec(),
            Some(lsn.to_be_bytes().to_vec()),
        ));
        writes.push((META_CAP.to_vec(), Some(state.cap.to_be_bytes().to_vec())));
        let mut hint = state.len().to_be_bytes().to_vec();
        hint.extend_from_slice(&(state.person_count() as u64).to_be_bytes());
        writes.push((META_LOAD_HINT.to_vec(), Some(hint)));
        Ok(Snapshot {
            lsn,
            writes,
            devices: state.len(),
            history_drain: state.history.drains(),
        })
    }
}

/// Appends the device writes of the changed `tokens` to `out`, in their
/// set's order. A large set is encoded half on a second thread (the state
/// is only read: the lock is held for reading until both halves are done),
/// as each record costs its lookups' cache misses at 10^7 devices (13 step
/// 32). The set's indices are dense, so each half reads its own range of
/// them and no list of the tokens is built; the first half goes straight
/// into `out`.
fn encode_devices(
    state: &State,
    tokens: &crate::byteset::ByteSet,
    out: &mut Vec<Write>,
) -> Result<()> {
    let write = |i: usize| {
        state.read_ahead_tokens(|j| tokens.key(j), i);
        let t = tokens.key(i);
        (device_key(t), device_value(state, t))
    };
    let n = tokens.len();
    if n < crate::limits::SNAPSHOT_SPLIT_DEVICES {
        out.extend((0..n).map(write));
        return Ok(());
    }
    let half = n / 2;
    let encoding = crate::beside::Helper {
        thread: "devreg-snapshot",
        what: "the checkpoint's snapshot",
        doing: "encoding its second half",
    };
    let ((), rest) = crate::beside::beside_or_here(
        &encoding,
        || (half..n).map(write).collect::<Vec<Write>>(),
        || out.extend((0..half).map(write)),
    );
    out.extend(rest?);
    Ok(())
}

/// The record of the device with packed `token`, or None if it is gone.
/// The owner's name comes from the slot's copy when it is short, so the
/// person's slot is read only for a long name (DESIGN.md 6).
fn device_value(state: &State, token: &[u8]) -> Option<Vec<u8>> {
    let s = state.lookup(token).and_then(|id| state.slot(id))?;
    Some(encode_record(&RecordRef {
        platform: s.platform,
        last_seen_ms: s.last_seen_ms,
        person: state.owner_name(s),
        attributes_blob: &s.attrs,
    }))
}

/// Loads the `'Q'` records into the side table; one whose device is
/// absent is kept aside for `check` and deleted by the next checkpoint.
fn load_deliverability(store: &dyn KvStore, state: &mut State) -> Result<()> {
    store.scan_prefix(&[DELIV_PREFIX], &mut |key, value| {
        let packed = key.get(1..).unwrap_or_default();
        if !is_packed_token(packed) {
            return Err(Error::corrupt(
                describe_key(key),
                "key is not a valid packed token",
            ));
        }
        let d: crate::model::Deliverability = decode_versioned(key, value)?;
        match state.lookup(packed) {
            Some(id) => {
                state.deliv.insert(id, d);
            }
            None => {
                state.deliv_orphans.push(describe_key(key));
                state.deliv_dirty.insert(Box::from(packed));
            }
        }
        Ok(())
    })
}

fn be_u64(location: &[u8], v: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(v).map(u64::from_be_bytes).map_err(|_| {
        Error::corrupt(
            describe_key(location),
            format!("{} bytes, expected 8", v.len()),
        )
    })
}

fn be_u32(location: &[u8], v: &[u8]) -> Result<u32> {
    <[u8; 4]>::try_from(v).map(u32::from_be_bytes).map_err(|_| {
        Error::corrupt(
            describe_key(location),
            format!("{} bytes, expected 4", v.len()),
        )
    })
}

/// Metadata key: devices and people at the last checkpoint (u64 BE each),
/// only a hint for sizing the tables at open.
pub(crate) const META_LOAD_HINT: &[u8] = b"Mload_hint";

/// (devices, people) from `Mload_hint`; (0, 0) when absent or malformed
/// (it only sizes tables, so damage there costs time, not correctness).
fn load_hint(store: &dyn KvStore) -> Result<(usize, usize)> {
    let Some(v) = store.get(META_LOAD_HINT)? else {
        return Ok((0, 0));
    };
    let field = |r: std::ops::Range<usize>| {
        v.get(r)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, |b| usize::try_from(u64::from_be_bytes(b)).unwrap_or(0))
    };
    Ok((field(0..8), field(8..16)))
}

/// The checkpoint's log position and the log's segment size, as stored.
pub(crate) fn log_position(store: &dyn KvStore) -> Result<(u64, u64)> {
    let get = |k: &[u8]| -> Result<Vec<u8>> {
        store
            .get(k)?
            .ok_or_else(|| Error::corrupt(describe_key(k), "missing"))
    };
    let lsn = be_u64(META_CHECKPOINT_LSN, &get(META_CHECKPOINT_LSN)?)?;
    let segment_bytes = be_u64(META_SEGMENT_BYTES, &get(META_SEGMENT_BYTES)?)?;
    if segment_bytes < 4096 {
        return Err(Error::corrupt(
            "metadata key Mlog_segment_bytes",
            format!("{segment_bytes} is too small"),
        ));
    }
    Ok((lsn, segment_bytes))
}

/// What the store said at open.
pub(crate) struct Loaded {
    pub(crate) state: State,
    pub(crate) checkpoint_lsn: u64,
    pub(crate) segment_bytes: u64,
}

/// Loads the devices (`load.rs`, on two threads) and, on a third, every
/// sink's known persons, which need nothing from the state. On the
/// comparison harness's database at 10^7 devices (DESIGN.md 13, step 18)
/// the 4.2M known-person records took 4.5 s after the devices' 8 to 10 s;
/// side by side, the open took 15.6 s on average against 17.2 s, and its
/// peak RSS fell by 170 MB (their delta records are read back and dropped
/// while the state is still growing, not beside the whole of it).
fn load_devices_and_known(store: &dyn KvStore, state: &mut State) -> Result<KnownSets> {
    let loading = crate::beside::Helper {
        thread: "devreg-known",
        what: "the known persons of the store",
        doing: "loading the known persons",
    };
    // With no thread to be had, the known persons are read here, after
    // the devices.
    let (devices, known) = crate::beside::beside_or_here(
        &loading,
        || crate::feed::load_known(store),
        || super::load::load_devices(store, state).and_then(|()| state.finish_load()),
    );
    devices?;
    known?
}

/// Loads every device from the store into a fresh state. A new store is
/// initialised with `cap` and `segment_bytes`.
pub(crate) fn load_state(
    store: &dyn KvStore,
    cap: u32,
    segment_bytes: u64,
    history_retention_ms: u64,
) -> Result<Loaded> {
    let Some(format) = store.get(META_FORMAT)? else {
        let mut any = false;
        store.scan_prefix(&[DEVICE_PREFIX], &mut |_, _| {
            any = true;
            Ok(())
        })?;
        if any {
            return Err(Error::corrupt(
                "metadata",
                "device records exist but the format version key is missing",
            ));
        }
        store.apply(&[
            (
                META_FORMAT.to_vec(),
                Some(STORE_FORMAT.to_be_bytes().to_vec()),
            ),
            (META_CAP.to_vec(), Some(cap.to_be_bytes().to_vec())),
            (
                META_SEGMENT_BYTES.to_vec(),
                Some(segment_bytes.to_be_bytes().to_vec()),
            ),
            (
                META_CHECKPOINT_LSN.to_vec(),
                Some(0u64.to_be_bytes().to_vec()),
            ),
        ])?;
        store.sync()?;
        let mut state = State::new(cap);
        state.history.retention_ms = history_retention_ms;
        return Ok(Loaded {
            state,
            checkpoint_lsn: 0,
            segment_bytes,
        });
    };
    let version = be_u32(META_FORMAT, &format)?;
    // Format 1 was converted to pages before the load (`convert_legacy`),
    // except by a read-only open, which converts nothing: formats 2 to 4
    // read as they are (DESIGN.md 4.3, format history), format 1 does not.
    if version == 1 {
        return Err(Error::UnsupportedFormat {
            location: "metadata key Mformat (format 1, a key per record, is converted to \
                       pages by the first open that may write: open it once without read-only)"
                .into(),
            found: version,
            supported: STORE_FORMAT,
        });
    }
    if !(2..=STORE_FORMAT).contains(&version) {
        return Err(Error::UnsupportedFormat {
            location: "metadata key Mformat (the database was written by a newer devreg: \
                       open it with that version)"
                .into(),
            found: version,
            supported: STORE_FORMAT,
        });
    }
    let cap = store
        .get(META_CAP)?
        .ok_or_else(|| Error::corrupt(describe_key(META_CAP), "missing"))?;
    let stored_cap = be_u32(META_CAP, &cap)?;
    let (checkpoint_lsn, segment_bytes) = log_position(store)?;
    let mut state = State::new(stored_cap);
    let (devices, persons) = load_hint(store)?;
    state.begin_load(devices, persons);
    let known = load_devices_and_known(store, &mut state)?;
    state.dirty.clear();
    load_deliverability(store, &mut state)?;
    // The feed's person names are the state's where it holds them.
    let shared = |name: &str| state.person_name(state.person_id(name)?);
    let feed = crate::feed::load_feed(store, &shared, known)?;
    state.feed = feed;
    let (history, now_ms) = crate::history::load_history(store, history_retention_ms)?;
    state.history = history;
    state.now_ms = now_ms;
    Ok(Loaded {
        state,
        checkpoint_lsn,
        segment_bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::Arc;

    use super::*;
    use crate::log::entry::Entry;
    use crate::model::{Op, Platform, Register};

    thread_local! {
        /// Called by `Snapshot::take` between draining and encoding.
        pub(super) static AFTER_DRAIN: RefCell<Option<Box<dyn FnMut()>>> = RefCell::new(None);
    }

    fn register(i: u32) -> Entry {
        Entry::Op(Op::Register(Register {
            token: format!("{i:064x}"),
            platform: Platform::Android,
            person: Some(format!("p{i}")),
            seen_ms: 5_000 + u64::from(i),
            attributes: None,
        }))
    }

    /// A device's record names its owner whether the name is short (read
    /// from the slot's copy) or long (from the person's slot), and an
    /// anonymous device's names none.
    #[test]
    fn device_records_name_short_long_and_no_owners() {
        let mut state = State::new(20);
        let long = "l".repeat(crate::state::SHORT_NAME_BYTES + 1);
        let names = [Some("p7".to_string()), Some(long), None];
        for (i, name) in names.iter().enumerate() {
            let mut e = register(i as u32);
            if let Entry::Op(Op::Register(r)) = &mut e {
                r.person = name.clone();
            }
            state.apply(&e);
        }
        for (i, name) in names.iter().enumerate() {
            let packed = crate::codec::pack_token(&format!("{i:064x}"));
            let value = device_value(&state, &packed).expect("registered");
            let record = crate::codec::decode_record("test", &value).unwrap();
            assert_eq!(record.person, name.as_deref(), "device {i}");
            assert_eq!(record.last_seen_ms, 5_000 + i as u64);
        }
    }

    /// Known persons of a sink the store does not hold are damage: the
    /// open fails naming the first such record, after reading them beside
    /// the devices.
    #[test]
    fn known_persons_of_a_sink_not_stored_are_damage_naming_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let raw = super::super::SledStore::open(dir.path(), None, 8 << 20, true).unwrap();
        let store = super::super::PagedStore::open(raw, 1 << 16, 1 << 20).unwrap();
        let key = |person: &str| [&b"Kghost\0"[..], person.as_bytes()].concat();
        store
            .apply(&[(key("p2"), Some(Vec::new())), (key("p1"), Some(Vec::new()))])
            .unwrap();
        let mut state = State::new(1);
        state.begin_load(0, 0);
        let known = load_devices_and_known(&store, &mut state).unwrap();
        let err = crate::feed::load_feed(&store, &|_| None, known)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("entry of unknown sink \"ghost\""), "{err}");
        assert!(err.contains(&describe_key(&key("p1"))), "{err}");
    }

    /// While a snapshot encodes, another thread can read the state but not
    /// write it: reads are not held up by a checkpoint, and no write comes
    /// between the drain and the encoding.
    #[test]
    fn a_snapshot_encodes_under_the_read_lock_only() {
        let lock = Arc::new(StateLock::new(State::new(100)));
        for i in 0..10 {
            lock.write().apply(&register(i));
        }
        let probe = Arc::clone(&lock);
        let seen: Arc<parking_lot::Mutex<Vec<(bool, bool)>>> = Arc::default();
        let record = Arc::clone(&seen);
        AFTER_DRAIN.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                let p = Arc::clone(&probe);
                let tried = std::thread::spawn(move || {
                    let read = p.try_read().map(|st| st.len());
                    (read == Some(10), p.try_write().is_some())
                })
                .join()
                .unwrap();
                record.lock().push(tried);
            }));
        });
        let snapshot = Snapshot::take(lock.write(), 77, Vec::new()).unwrap();
        AFTER_DRAIN.with(|hook| hook.borrow_mut().take());
        assert_eq!(
            *seen.lock(),
            vec![(true, false)],
            "(read, write) while encoding"
        );
        let devices = snapshot
            .writes
            .iter()
            .filter(|(k, v)| k.first() == Some(&DEVICE_PREFIX) && v.is_some())
            .count();
        assert_eq!(devices, 10, "every dirty device is in the snapshot");
        assert_eq!(snapshot.lsn, 77);
        assert!(lock.read().dirty.is_empty(), "the dirty set is drained");
    }

    /// A set of changed devices large enough to be encoded on two threads
    /// gives the writes one thread gives, in the set's order, a removed
    /// device's deletion among them.
    #[test]
    fn a_large_snapshot_encodes_on_two_threads_as_on_one() {
        let n = crate::limits::SNAPSHOT_SPLIT_DEVICES as u32 + 5;
        let mut state = State::new(20);
        for i in 0..n {
            state.apply(&register(i));
        }
        state.apply(&Entry::Op(Op::Remove {
            token: format!("{:064x}", n - 1),
        }));
        let dirty = std::mem::take(&mut state.dirty);
        assert_eq!(dirty.len(), n as usize);
        let one: Vec<Write> = dirty
            .iter()
            .map(|t| (device_key(t), device_value(&state, t)))
            .collect();
        let mut two = Vec::new();
        encode_devices(&state, &dirty, &mut two).unwrap();
        assert_eq!(two.len(), one.len());
        assert!(two == one, "the two threads' writes differ from one's");
        assert_eq!(two.iter().filter(|(_, v)| v.is_none()).count(), 1);
    }

    /// Timing probe, not a check (`--ignored --nocapture`, release): the
    /// encoding of 250k changed devices of a 4×10^6-device state in random
    /// order, on one thread and on two, alternated; prints ns per device
    /// (DESIGN.md 13 step 32).
    #[test]
    #[ignore]
    fn snapshot_encode_probe() {
        let n = 4_000_000u32;
        let mut state = State::new(20);
        for i in 0..n {
            let mut e = register(i.wrapping_mul(2_654_435_761));
            if let Entry::Op(Op::Register(r)) = &mut e {
                r.person = Some(format!("p{}", i / 2));
                r.attributes = Some(
                    [("app_version", "4.2.1"), ("device_os", "17.4")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), format!("{v}.{}", i % 7)))
                        .collect(),
                );
            }
            state.apply(&e);
        }
        state.dirty = Default::default();
        for i in (0..n).step_by(16) {
            let token = format!("{:064x}", i.wrapping_mul(2_654_435_761));
            crate::codec::with_packed(&token, |p| state.dirty.insert(p));
        }
        let dirty = std::mem::take(&mut state.dirty);
        for round in 0..6 {
            let t = std::time::Instant::now();
            let w = if round % 2 == 0 {
                dirty
                    .iter()
                    .map(|t| (device_key(t), device_value(&state, t)))
                    .collect()
            } else {
                let mut w = Vec::new();
                encode_devices(&state, &dirty, &mut w).unwrap();
                w
            };
            let ns = t.elapsed().as_nanos() as f64 / dirty.len() as f64;
            let how = if round % 2 == 0 { "one" } else { "two" };
            eprintln!("{how} thread(s): {ns:.0} ns/device ({} writes)", w.len());
        }
    }
}

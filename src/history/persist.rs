//! The history's keys in the store.
//!
//! ```text
//! b'H' packed-token                -> the token's entries, oldest first
//!                                     (version byte 1 + bincode Vec<RecOut>)
//! b'Y' day(u32 BE) platform(u8)    -> that day's counters (version byte 1 + bincode DayCounts)
//! b"Mhistory"                      -> next seq (u64 BE) + last commit time (u64 BE)
//! ```

use std::sync::Arc;

use bincode::Options;
use hashbrown::HashSet;
use serde::{Deserialize, Serialize};

use super::{DayCounts, History, HistoryOp, Rec, MAX_HISTORY_PER_TOKEN};
use crate::codec::{
    bincode_opts, decode_versioned, describe_key, encode_versioned, encode_versioned_with_capacity,
};
use crate::error::{Error, Result};
use crate::kv::{KvStore, Write};
use crate::model::Platform;

/// Metadata key: the history's next sequence number and the last commit time.
pub(crate) const META_HISTORY: &[u8] = b"Mhistory";

#[derive(Clone, Serialize, Deserialize)]
struct RecOut {
    seq: u64,
    commit_ms: u64,
    event_ms: Option<u64>,
    op: u8,
    link: Option<Vec<u8>>,
    before: Option<String>,
    after: Option<String>,
    present: bool,
    platform: u8,
}

/// The store key of a token's history.
pub(crate) fn history_key(token: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + token.len());
    k.push(b'H');
    k.extend_from_slice(token);
    k
}

fn day_key(day: u32, platform: Platform) -> Vec<u8> {
    let mut k = Vec::with_capacity(6);
    k.push(b'Y');
    k.extend_from_slice(&day.to_be_bytes());
    k.push(platform.index() as u8);
    k
}

/// `RecOut` borrowed from a [`Rec`], for encoding: the same fields in the
/// same order with the same serde shapes (`&[u8]` and `Vec<u8>` are both a
/// sequence of bytes, `&str` and `String` both a string), so bincode writes
/// the same bytes (unit test `a_borrowed_entry_encodes_as_the_owned_one`)
/// without copying the names and link of every entry of every checkpoint.
#[derive(Serialize)]
struct RecRef<'a> {
    seq: u64,
    commit_ms: u64,
    event_ms: Option<u64>,
    op: u8,
    link: Option<&'a [u8]>,
    before: Option<&'a str>,
    after: Option<&'a str>,
    present: bool,
    platform: u8,
}

fn out(r: &Rec) -> RecRef<'_> {
    RecRef {
        seq: r.seq,
        commit_ms: r.commit_ms,
        event_ms: r.event_ms,
        op: r.op.code(),
        link: r.link.as_deref(),
        before: r.before.as_deref(),
        after: r.after.as_deref(),
        present: r.present,
        platform: r.platform.index() as u8,
    }
}

/// A token's entries as the stored `Vec<RecOut>`, serialized from the
/// entries in place.
struct RecsOut<'a>(&'a [Rec]);

impl Serialize for RecsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(out))
    }
}

/// Typical encoded bytes of one entry (two person names of about 16
/// bytes): the first guess of a token's value size.
const ENTRY_BYTES_GUESS: usize = 64;

/// The history's changes since the last snapshot, drained under the
/// state's write lock and encoded under its read lock
/// ([`History::encode_drain`]).
pub(crate) struct HistoryDrain {
    days: HashSet<(u32, Platform)>,
    now_ms: u64,
    /// The previous snapshot's entries, freed outside the write lock.
    done: super::pending::PendingRecs,
}

impl History {
    /// Drains the entries recorded since the last snapshot into store
    /// writes (`drain_dirty`, then `encode_drain`).
    #[cfg(test)]
    pub(crate) fn take_writes(&mut self, now_ms: u64) -> Result<Vec<Write>> {
        let drain = self.drain_dirty(now_ms);
        self.encode_drain(drain)
    }

    /// Moves the entries recorded since the last snapshot to `flushing`
    /// (still readable there until the next snapshot) and takes the
    /// changed days; nothing is encoded.
    pub(crate) fn drain_dirty(&mut self, now_ms: u64) -> HistoryDrain {
        let done = std::mem::replace(&mut self.flushing, std::mem::take(&mut self.pending));
        self.drains += 1;
        let days = std::mem::take(&mut self.dirty_days);
        HistoryDrain { days, now_ms, done }
    }

    /// Encodes a drain into store writes; the history must not have changed
    /// since `drain_dirty`. A write to an `'H'` key **appends** its entries
    /// to the stored ones (the store joins them with `merge_encoded`).
    pub(crate) fn encode_drain(&self, drain: HistoryDrain) -> Result<Vec<Write>> {
        let HistoryDrain { days, now_ms, done } = drain;
        // Freed here, under the read lock at most: it can be large.
        drop(done);
        let mut writes = Vec::with_capacity(self.flushing.len() + days.len() + 1);
        for (token, list) in self.flushing.iter() {
            let value = encode_versioned_with_capacity(
                &RecsOut(list),
                1 + ENTRY_BYTES_GUESS.saturating_mul(list.len()),
            )?;
            writes.push((history_key(token), Some(value)));
        }
        for (day, platform) in days {
            let value = match self.daily.get(&(day, platform)) {
                Some(v) => Some(encode_versioned(v)?),
                None => None,
            };
            writes.push((day_key(day, platform), value));
        }
        let mut meta = self.next_seq.to_be_bytes().to_vec();
        meta.extend_from_slice(&now_ms.to_be_bytes());
        writes.push((META_HISTORY.to_vec(), Some(meta)));
        Ok(writes)
    }
}

/// Decodes a token's stored entries (`key` names it in errors).
pub(crate) fn decode_list(key: &[u8], value: &[u8]) -> Result<Vec<Rec>> {
    let bad = |why: &str| Error::corrupt(describe_key(key), why.to_owned());
    let recs: Vec<RecOut> = decode_versioned(key, value)?;
    let mut list = Vec::with_capacity(recs.len());
    for r in recs {
        let op = HistoryOp::from_code(r.op).ok_or_else(|| bad("unknown operation"))?;
        let platform = Platform::from_index(r.platform).ok_or_else(|| bad("bad platform"))?;
        list.push(Rec {
            seq: r.seq,
            commit_ms: r.commit_ms,
            event_ms: r.event_ms,
            op,
            link: r.link.map(Arc::from),
            before: r.before.map(Arc::from),
            after: r.after.map(Arc::from),
            present: r.present,
            platform,
        });
    }
    Ok(list)
}

/// The store's merge of an `'H'` record: the `appended` entries after the
/// `old` ones, by seq, each seq once, the newest [`MAX_HISTORY_PER_TOKEN`]
/// kept. Expired entries are dropped by the readers (`view::join`).
pub(crate) fn merge_encoded(key: &[u8], old: Option<&[u8]>, appended: &[u8]) -> Result<Vec<u8>> {
    let mut list: Vec<RecOut> = match old {
        Some(old) => decode_versioned(key, old)?,
        None => Vec::new(),
    };
    list.extend(decode_versioned::<Vec<RecOut>>(key, appended)?);
    list.sort_by_key(|r| r.seq);
    list.dedup_by_key(|r| r.seq);
    if list.len() > MAX_HISTORY_PER_TOKEN {
        let extra = list.len() - MAX_HISTORY_PER_TOKEN;
        list.drain(..extra);
    }
    encode_versioned(&list)
}

/// Encoded size of a token's stored entries (for the measurements).
pub(crate) fn encoded_len(list: &[Rec]) -> usize {
    list.iter()
        .map(|r| {
            bincode_opts()
                .serialized_size(&out(r))
                .map_or(0, |n| n as usize)
        })
        .sum()
}

/// Loads the history's counters, its next seq and the last commit time.
/// The entries stay in the store (read on demand).
pub(crate) fn load_history(store: &dyn KvStore, retention_ms: u64) -> Result<(History, u64)> {
    let mut h = History::new(retention_ms);
    let mut now_ms = 0;
    if let Some(meta) = store.get(META_HISTORY)? {
        let (a, b) = meta
            .split_at_checked(8)
            .filter(|(_, b)| b.len() == 8)
            .ok_or_else(|| Error::corrupt(describe_key(META_HISTORY), "expected 16 bytes"))?;
        h.next_seq = u64::from_be_bytes(a.try_into().unwrap_or_default());
        now_ms = u64::from_be_bytes(b.try_into().unwrap_or_default());
    }
    store.scan_prefix(b"Y", &mut |key, value| {
        let bad = || Error::corrupt(describe_key(key), "malformed counter key");
        let (day, platform) = match key {
            [b'Y', a, b, c, d, p] => (
                u32::from_be_bytes([*a, *b, *c, *d]),
                Platform::from_index(*p).ok_or_else(bad)?,
            ),
            _ => return Err(bad()),
        };
        // Format 7 added the feedback counters: an older value is shorter
        // (bincode rejects a short value and trailing bytes alike).
        let counts: DayCounts = decode_versioned(key, value).or_else(|e| {
            decode_versioned::<super::DayCountsV1>(key, value)
                .map(DayCounts::from)
                .map_err(|_| e)
        })?;
        h.daily.insert((day, platform), counts);
        Ok(())
    })?;
    Ok((h, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(r: &Rec) -> RecOut {
        RecOut {
            seq: r.seq,
            commit_ms: r.commit_ms,
            event_ms: r.event_ms,
            op: r.op.code(),
            link: r.link.as_deref().map(<[u8]>::to_vec),
            before: r.before.as_deref().map(str::to_owned),
            after: r.after.as_deref().map(str::to_owned),
            present: r.present,
            platform: r.platform.index() as u8,
        }
    }

    #[test]
    fn a_borrowed_entry_encodes_as_the_owned_one() {
        let mut list = Vec::new();
        for (i, op) in [
            HistoryOp::Register,
            HistoryOp::RotateTo,
            HistoryOp::Invalidate,
        ]
        .into_iter()
        .enumerate()
        {
            let i = i as u64;
            list.push(Rec {
                seq: 250 + i,
                commit_ms: u64::MAX - i,
                event_ms: (i > 0).then_some(1_700_000_000_000 + i),
                op,
                link: (i == 1).then(|| Arc::from(vec![0xab; 300])),
                before: (i != 1).then(|| Arc::from("person-00000001")),
                after: (i == 0).then(|| Arc::from("é".repeat(200))),
                present: i != 2,
                platform: if i == 0 {
                    Platform::Ios
                } else {
                    Platform::Android
                },
            });
        }
        for n in 0..=list.len() {
            let part = list.get(..n).unwrap_or_default();
            let borrowed = encode_versioned_with_capacity(&RecsOut(part), 1);
            let expected = encode_versioned(&part.iter().map(owned).collect::<Vec<_>>());
            assert_eq!(borrowed.ok(), expected.ok(), "{n} entries");
            let sized: usize = part
                .iter()
                .filter_map(|r| bincode_opts().serialized_size(&owned(r)).ok())
                .map(|x| x as usize)
                .sum();
            assert_eq!(encoded_len(part), sized);
        }
    }
}

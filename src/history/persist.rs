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
use serde::{Deserialize, Serialize};

use super::{DayCounts, History, HistoryOp, Rec};
use crate::codec::{bincode_opts, decode_versioned, describe_key, encode_versioned, unpack_token};
use crate::error::{Error, Result};
use crate::model::Platform;
use crate::store::{KvStore, Write};

/// Metadata key: the history's next sequence number and the last commit time.
pub(crate) const META_HISTORY: &[u8] = b"Mhistory";

#[derive(Serialize, Deserialize)]
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

fn token_key(token: &[u8]) -> Vec<u8> {
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

fn out(r: &Rec) -> RecOut {
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

/// Encoded size of one entry (for the measurements).
pub(crate) fn encoded_len(r: &Rec) -> usize {
    bincode_opts()
        .serialized_size(&out(r))
        .map_or(0, |n| n as usize)
}

impl History {
    /// Drops expired entries, then drains the changes since the last
    /// checkpoint into store writes.
    pub(crate) fn take_writes(&mut self, now_ms: u64) -> Result<Vec<Write>> {
        self.sweep(now_ms);
        let mut writes = Vec::with_capacity(self.dirty_tokens.len() + self.dirty_days.len() + 1);
        for token in std::mem::take(&mut self.dirty_tokens) {
            let value = match self.tokens.get(&token).filter(|l| !l.is_empty()) {
                Some(l) => Some(encode_versioned(
                    &l.iter().map(out).collect::<Vec<RecOut>>(),
                )?),
                None => None,
            };
            writes.push((token_key(&token), value));
        }
        for (day, platform) in std::mem::take(&mut self.dirty_days) {
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

/// Loads the history and the last commit time from the store.
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
    let mut names: hashbrown::HashSet<Arc<str>> = hashbrown::HashSet::new();
    let mut name = |s: String| -> Arc<str> {
        if let Some(a) = names.get(s.as_str()) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        names.insert(a.clone());
        a
    };
    let mut links: Vec<(Arc<[u8]>, usize, Vec<u8>)> = Vec::new();
    store.scan_prefix(b"H", &mut |key, value| {
        let token = key.get(1..).unwrap_or_default();
        let bad = |why: &str| Error::corrupt(describe_key(key), why.to_owned());
        if unpack_token(token).is_none() {
            return Err(bad("key is not a valid packed token"));
        }
        let recs: Vec<RecOut> = decode_versioned(key, value)?;
        let token: Arc<[u8]> = Arc::from(token);
        let mut list = std::collections::VecDeque::with_capacity(recs.len());
        for (i, r) in recs.into_iter().enumerate() {
            let op = HistoryOp::from_code(r.op).ok_or_else(|| bad("unknown operation"))?;
            let platform = Platform::from_index(r.platform).ok_or_else(|| bad("bad platform"))?;
            if r.seq >= h.next_seq {
                return Err(bad("sequence number past Mhistory"));
            }
            if let Some(l) = r.link {
                links.push((token.clone(), i, l));
            }
            h.by_commit.insert((r.commit_ms, r.seq), token.clone());
            list.push_back(Rec {
                seq: r.seq,
                commit_ms: r.commit_ms,
                event_ms: r.event_ms,
                op,
                link: None,
                before: r.before.map(&mut name),
                after: r.after.map(&mut name),
                present: r.present,
                platform,
            });
        }
        if list.is_empty() || list.len() > super::MAX_HISTORY_PER_TOKEN {
            return Err(bad("history length out of bounds"));
        }
        h.tokens.insert(token, list);
        Ok(())
    })?;
    // Links share the linked token's key when it has a history.
    for (token, i, link) in links {
        let shared = h.key(&link);
        if let Some(r) = h.tokens.get_mut(&token).and_then(|l| l.get_mut(i)) {
            r.link = Some(shared);
        }
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
        let counts: DayCounts = decode_versioned(key, value)?;
        h.daily.insert((day, platform), counts);
        Ok(())
    })?;
    Ok((h, now_ms))
}

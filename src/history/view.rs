//! Reading the history: a token's entries in the store joined with the ones
//! still in memory, then the queries over one token's list (`history`,
//! `owner_at` by commit or event time), over every token (`changes_since`), and its checks.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ChangesPage, DeviceStatus, HistoryCursor, HistoryEntry, Rec, MAX_HISTORY_PER_TOKEN};
use crate::codec::unpack_token;
use crate::model::{token_bytes_label, token_label};

/// The token's history as the queries see it: the union (by seq) of the
/// stored and the in-memory entries, oldest first, none committed before
/// `cutoff_ms`, at most [`MAX_HISTORY_PER_TOKEN`] (the newest).
pub(crate) fn join(mut stored: Vec<Rec>, memory: Vec<Rec>, cutoff_ms: u64) -> Vec<Rec> {
    stored.extend(memory);
    // Seqs grow with commit times (the writer's clock never goes back), so
    // seq order is (commit_ms, seq) order.
    stored.sort_by_key(|r| r.seq);
    stored.dedup_by_key(|r| r.seq);
    stored.retain(|r| r.commit_ms >= cutoff_ms);
    if stored.len() > MAX_HISTORY_PER_TOKEN {
        let extra = stored.len() - MAX_HISTORY_PER_TOKEN;
        stored.drain(..extra);
    }
    stored
}

fn entry(token: &[u8], r: &Rec) -> HistoryEntry {
    let text = |t: &[u8]| unpack_token(t).unwrap_or_default();
    HistoryEntry {
        token: text(token),
        seq: r.seq,
        commit_ms: r.commit_ms,
        event_ms: r.event_ms,
        op: r.op,
        linked_token: r.link.as_deref().map(text),
        owner_before: r.before.as_deref().map(str::to_owned),
        owner_after: r.after.as_deref().map(str::to_owned),
        present: r.present,
        platform: r.platform,
    }
}

/// A joined list as the query returns it, newest first.
pub(crate) fn entries(token: &[u8], list: &[Rec]) -> Vec<HistoryEntry> {
    list.iter().rev().map(|r| entry(token, r)).collect()
}

/// Who owned the token at commit time `t` by a joined list: the owner
/// after the last change committed at or before `t`.
pub(crate) fn owner_at(list: &[Rec], t: u64) -> Option<Arc<str>> {
    let n = list.partition_point(|r| r.commit_ms <= t);
    list.get(n.checked_sub(1)?)?.after.clone()
}

/// Who owned the token at event time `t` by a joined list (oldest first):
/// the owner after the entry with the latest (time, seq) at or before `t`,
/// where an entry's time is its `event_ms`, else its commit time but no
/// later than the next entry's time (a change without a time of its own
/// happened before the token's next change). Event times need not be in
/// seq order, so every entry is looked at.
pub(crate) fn owner_at_by_event(list: &[Rec], t: u64) -> Option<Arc<str>> {
    let mut next_ms = u64::MAX;
    let mut best: Option<(u64, u64, &Rec)> = None;
    for r in list.iter().rev() {
        let ms = r.event_ms.unwrap_or(r.commit_ms.min(next_ms));
        next_ms = ms;
        if ms <= t && best.is_none_or(|(b_ms, b_seq, _)| (ms, r.seq) > (b_ms, b_seq)) {
            best = Some((ms, r.seq, r));
        }
    }
    best?.2.after.clone()
}

/// Collects one page of `changes_since` from joined lists offered in any
/// order, in memory bounded by the page size.
pub(crate) struct Changes {
    /// Entries must come after this (commit_ms, seq) ...
    after: Option<(u64, u64)>,
    /// The cursor given, returned again when the page is empty.
    cursor: Option<HistoryCursor>,
    /// ... and at or after this one.
    from: (u64, u64),
    limit: usize,
    /// The smallest `limit + 1` entries offered so far.
    found: BTreeMap<(u64, u64), HistoryEntry>,
}

impl Changes {
    pub(crate) fn new(since_ms: u64, cursor: Option<HistoryCursor>, limit: usize) -> Changes {
        Changes {
            after: cursor
                .map(|c| (c.commit_ms, c.seq))
                .filter(|&c| c >= (since_ms, 0)),
            cursor,
            from: (since_ms, 0),
            limit: limit.max(1),
            found: BTreeMap::new(),
        }
    }

    pub(crate) fn offer(&mut self, token: &[u8], list: &[Rec]) {
        for r in list {
            let key = (r.commit_ms, r.seq);
            if key < self.from || self.after.is_some_and(|a| key <= a) {
                continue;
            }
            if self.found.len() > self.limit {
                match self.found.last_key_value() {
                    Some((&last, _)) if key < last => {
                        self.found.pop_last();
                    }
                    _ => continue,
                }
            }
            self.found.insert(key, entry(token, r));
        }
    }

    pub(crate) fn finish(mut self) -> ChangesPage {
        let more = self.found.len() > self.limit;
        if more {
            self.found.pop_last();
        }
        let last = self
            .found
            .keys()
            .next_back()
            .map(|&(commit_ms, seq)| HistoryCursor { commit_ms, seq });
        ChangesPage {
            changes: self.found.into_values().collect(),
            cursor: last.or(self.cursor),
            more,
        }
    }
}

/// A joined list's invariants, and that its newest entry agrees with the
/// device (`status`: exists, owner, platform).
pub(crate) fn check_list(
    token: &[u8],
    list: &[Rec],
    next_seq: u64,
    status: &DeviceStatus<'_>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let name = unpack_token(token).map_or_else(|| token_bytes_label(token), |t| token_label(&t));
    if list.len() > MAX_HISTORY_PER_TOKEN {
        problems.push(format!("history of {name} has {} entries", list.len()));
    }
    if list
        .iter()
        .zip(list.iter().skip(1))
        .any(|(a, b)| (a.commit_ms, a.seq) >= (b.commit_ms, b.seq))
    {
        problems.push(format!("history of {name} is out of order"));
    }
    if let Some(r) = list.iter().find(|r| r.seq >= next_seq) {
        problems.push(format!(
            "history entry {} of {name} is past the next seq",
            r.seq
        ));
    }
    if let Some(last) = list.last() {
        let want = status(token);
        let have = last.present.then(|| (last.after.clone(), last.platform));
        if want != have {
            problems.push(format!(
                "history of {name} ends with {have:?}, the device is {want:?}"
            ));
        }
    }
    problems
}

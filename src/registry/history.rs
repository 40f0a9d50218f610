//! History queries: the token's `'H'` record read from the store on demand,
//! joined with the entries not yet checkpointed (`history::view`).
//!
//! Memory is read before the store: an entry that a checkpoint moves from
//! memory to the store in between is then seen at least once (the join
//! counts it once), never missed.

use hashbrown::HashMap;
use std::sync::Arc;

use super::Registry;
use crate::codec::pack_token;
use crate::error::Result;
use crate::history::{
    check_list, decode_list, encoded_len, entries, history_key, join, owner_at, owner_at_by_event,
    Changes, ChangesPage, DailyStats, HistoryCursor, HistoryEntry, HistoryTime, Rec,
};
use crate::state::State;
use crate::store::KvStore;

/// A token's stored entries, oldest first.
fn stored(store: &dyn KvStore, packed: &[u8]) -> Result<Vec<Rec>> {
    let key = history_key(packed);
    match store.get(&key)? {
        Some(v) => decode_list(&key, &v),
        None => Ok(Vec::new()),
    }
}

/// Visits one token's (stored, in-memory) entries.
type ListVisit<'a> = &'a mut dyn FnMut(&[u8], Vec<Rec>, Vec<Rec>);

/// Visits every token's entries: the stored ones, then those only in
/// `memory` (which this drains).
fn each_list(
    store: &dyn KvStore,
    memory: &mut HashMap<Arc<[u8]>, Vec<Rec>>,
    f: ListVisit<'_>,
) -> Result<()> {
    store.scan_prefix(b"H", &mut |key, value| {
        let token = key.get(1..).unwrap_or_default();
        let list = decode_list(key, value)?;
        let mem = memory.remove(token).unwrap_or_default();
        f(token, list, mem);
        Ok(())
    })?;
    for (token, mem) in memory.drain() {
        f(&token, Vec::new(), mem);
    }
    Ok(())
}

impl Registry {
    /// The token's entries as the queries see them, oldest first.
    fn joined(&self, packed: &[u8]) -> Result<Vec<Rec>> {
        let (memory, cutoff) = {
            let st = self.inner.state.read();
            (st.history.in_memory(packed), st.history.cutoff(st.now_ms))
        };
        Ok(join(stored(&*self.inner.store, packed)?, memory, cutoff))
    }

    /// The token's ownership history, newest first (at most
    /// [`MAX_HISTORY_PER_TOKEN`](crate::MAX_HISTORY_PER_TOKEN) entries, none
    /// older than the retention). Read from the store: fails on an I/O
    /// error or a damaged record.
    pub fn history(&self, token: &str) -> Result<Vec<HistoryEntry>> {
        let packed = pack_token(token);
        Ok(entries(&packed, &self.joined(&packed)?))
    }

    /// Who owned the token at `time_ms`, by **commit time**: the owner after
    /// the last change committed at or before `time_ms`. `None` when it had
    /// no owner, did not exist, or `time_ms` is before the oldest entry kept.
    pub fn owner_at(&self, token: &str, time_ms: u64) -> Result<Option<String>> {
        self.owner_at_by(token, time_ms, HistoryTime::Commit)
    }

    /// Who owned the token at `time_ms`, by commit time
    /// ([`HistoryTime::Commit`], as [`owner_at`](Registry::owner_at)) or by
    /// each change's own time ([`HistoryTime::Event`]): for history that
    /// was imported after the fact, where every entry of an import batch
    /// shares one commit time. `None` when it had no owner, did not exist,
    /// or `time_ms` is before every entry kept.
    ///
    /// ```
    /// use devreg::{HistoryTime, Platform, Register, Registry};
    /// let dir = tempfile::tempdir().unwrap();
    /// let reg = Registry::open(dir.path().join("db")).unwrap();
    /// let reg_at = |person: &str, seen_ms| devreg::Op::Register(Register {
    ///     token: "a1b2".into(), platform: Platform::Ios,
    ///     person: Some(person.into()), seen_ms, attributes: None,
    /// });
    /// // A backfill: one atomic batch, so one commit time for both entries.
    /// let _ = reg.apply_batch(vec![reg_at("ann", 1_000), reg_at("bob", 2_000)]).unwrap();
    /// assert_eq!(reg.owner_at_by("a1b2", 1_500, HistoryTime::Event).unwrap().as_deref(), Some("ann"));
    /// assert_eq!(reg.owner_at_by("a1b2", 2_500, HistoryTime::Event).unwrap().as_deref(), Some("bob"));
    /// assert_eq!(reg.owner_at("a1b2", 1_500).unwrap(), None); // committed later
    /// ```
    pub fn owner_at_by(
        &self,
        token: &str,
        time_ms: u64,
        by: HistoryTime,
    ) -> Result<Option<String>> {
        let list = self.joined(&pack_token(token))?;
        let owner = match by {
            HistoryTime::Commit => owner_at(&list, time_ms),
            HistoryTime::Event => owner_at_by_event(&list, time_ms),
        };
        Ok(owner.map(|p| p.to_string()))
    }

    /// Changes of every token committed at or after `since_ms`, in
    /// `(commit_ms, seq)` order, at most `limit`, resuming after `cursor`
    /// (the page's `cursor` from the previous call). Reads every token's
    /// history from the store (time proportional to the history's size,
    /// memory to `limit`).
    pub fn changes_since(
        &self,
        since_ms: u64,
        cursor: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<ChangesPage> {
        let (mut memory, cutoff) = {
            let st = self.inner.state.read();
            (st.history.all_in_memory(), st.history.cutoff(st.now_ms))
        };
        let mut page = Changes::new(since_ms, cursor, limit);
        each_list(&*self.inner.store, &mut memory, &mut |token, s, m| {
            page.offer(token, &join(s, m, cutoff));
        })?;
        Ok(page.finish())
    }

    /// (entries, encoded bytes) of the history, for measurements.
    #[doc(hidden)]
    pub fn history_footprint(&self) -> Result<(u64, u64)> {
        let (mut memory, cutoff) = {
            let st = self.inner.state.read();
            (st.history.all_in_memory(), st.history.cutoff(st.now_ms))
        };
        let (mut n, mut bytes) = (0u64, 0u64);
        each_list(&*self.inner.store, &mut memory, &mut |_, s, m| {
            let list = join(s, m, cutoff);
            n += list.len() as u64;
            bytes += encoded_len(&list) as u64;
        })?;
        Ok((n, bytes))
    }

    /// Token-change counters per (UTC day of the commit, platform), oldest day first.
    pub fn daily_stats(&self) -> Vec<DailyStats> {
        self.inner.state.read().history.daily()
    }
}

/// The history's checks for `check`: each joined list's invariants and
/// agreement with the live devices, and the same lists and counters from
/// memory (`live`) and from the store plus a replay of the log (`disk`).
pub(super) fn history_problems(
    store: &dyn KvStore,
    live: &State,
    disk: &State,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    if !live.history.same_counters(&disk.history) {
        problems.push("history counters in store+log differ from the ones in memory".into());
    }
    let cutoff = live.history.cutoff(live.now_ms);
    let mut live_mem = live.history.all_in_memory();
    let mut disk_mem = disk.history.all_in_memory();
    let status = |t: &[u8]| live.device_status(t);
    let next_seq = live.history.next_seq;
    let mut differ = 0usize;
    each_list(store, &mut live_mem, &mut |token, s, m| {
        let from_disk = join(
            s.clone(),
            disk_mem.remove(token).unwrap_or_default(),
            cutoff,
        );
        let list = join(s, m, cutoff);
        if list != from_disk {
            differ += 1;
        }
        problems.extend(check_list(token, &list, next_seq, &status));
    })?;
    // Tokens the replay has in memory and the live state has nowhere.
    differ += disk_mem
        .values()
        .filter(|m| !join(Vec::new(), (*m).clone(), cutoff).is_empty())
        .count();
    if differ > 0 {
        problems.push(format!(
            "history of {differ} tokens in store+log differs from the history in memory"
        ));
    }
    Ok(problems)
}

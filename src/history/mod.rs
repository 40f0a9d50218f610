//! Ownership history and daily token-change counters.
//!
//! Derived state, like the feed: changed by the same deterministic apply as
//! the devices (so a change and its history entry are in one log record).
//! Times are commit times stamped into the log by the writer
//! (`Entry::Clock`), never read from the clock during apply, so a replay
//! rebuilds exactly the same history.
//!
//! On demand (the scale issue): memory holds only the entries the store
//! does not have yet (`pending`, then `flushing` while their checkpoint is
//! written) and the daily counters. A checkpoint appends each token's new
//! entries to its `'H'` record; the queries join the stored entries with
//! the ones in memory (`view.rs`).
//!
//! Bounds: at most [`MAX_HISTORY_PER_TOKEN`] entries per token (the store's
//! merge keeps the newest), and no entry committed before `now - retention`
//! is returned (`now` is the last commit time).

mod pending;
mod persist;
pub(crate) use persist::HistoryDrain;
mod view;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use serde::Serialize;

use crate::model::{LogoutPolicy, Platform};

pub(crate) use persist::{decode_list, encoded_len, history_key, load_history, merge_encoded};
pub(crate) use view::{check_list, entries, join, owner_at, owner_at_by_event, Changes};

pub use crate::limits::MAX_HISTORY_PER_TOKEN;
/// Default history retention: 90 days.
pub const DEFAULT_HISTORY_RETENTION_MS: u64 = 90 * DAY_MS;
const DAY_MS: u64 = 86_400_000;

/// What the operation being applied is (set by `State::apply_op`, read when
/// a device change is noted).
#[derive(Clone, Debug, Default)]
pub(crate) enum Cause {
    /// Not a user operation (nothing is recorded).
    #[default]
    None,
    Register {
        seen_ms: u64,
    },
    Touch,
    Rotate {
        old: Box<[u8]>,
        new: Box<[u8]>,
        seen_ms: u64,
    },
    Logout(LogoutPolicy),
    Merge,
    Remove,
    Invalidate {
        provider_ms: u64,
    },
    Prune,
    EvictByCap,
    /// A `hard_failure` feedback (the device and its owner stay).
    HardFailure,
}

/// The kind of change a history entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryOp {
    /// The device was created, got an owner while anonymous, or changed platform.
    Register,
    /// A register moved the device from one person to another.
    Move,
    /// The token was rotated away; `linked_token` is its successor.
    RotateFrom,
    /// The token replaced `linked_token` (its predecessor).
    RotateTo,
    /// The owner logged out; the device stays, anonymous.
    LogoutKeep,
    /// The owner logged out; the device was deleted.
    LogoutRemove,
    /// A merge moved the device from the secondary to the primary.
    Merge,
    /// The per-person cap evicted the device.
    EvictByCap,
    /// The provider reported the token dead (`event_ms` is its timestamp).
    Invalidate,
    /// Deleted by a prune.
    Prune,
    /// Deleted by a remove.
    Remove,
    /// A push to the device failed for good (`hard_failure` feedback); the
    /// owner is unchanged (store format 7).
    HardFailure,
}

impl HistoryOp {
    const ALL: [HistoryOp; 12] = [
        HistoryOp::Register,
        HistoryOp::Move,
        HistoryOp::RotateFrom,
        HistoryOp::RotateTo,
        HistoryOp::LogoutKeep,
        HistoryOp::LogoutRemove,
        HistoryOp::Merge,
        HistoryOp::EvictByCap,
        HistoryOp::Invalidate,
        HistoryOp::Prune,
        HistoryOp::Remove,
        HistoryOp::HardFailure,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<HistoryOp> {
        HistoryOp::ALL.get(c as usize).copied()
    }
}

/// Which time `owner_at` orders a token's history by
/// ([`Registry::owner_at_by`](crate::Registry::owner_at_by)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HistoryTime {
    /// When devreg committed each change (monotonic; the default). Every
    /// entry of one import batch shares it.
    #[default]
    Commit,
    /// Each change's own time where it has one (`event_ms`: the `seen_ms`
    /// of a register or move, of both entries of a rotation, the
    /// provider's time of an invalidate). An entry without one (logouts,
    /// merges, removes, prunes, cap evictions) is placed at its commit
    /// time, or at the next entry's time if that is earlier: it happened
    /// before the token's next change. For backfilled history.
    Event,
}

/// One entry in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rec {
    pub(crate) seq: u64,
    pub(crate) commit_ms: u64,
    pub(crate) event_ms: Option<u64>,
    pub(crate) op: HistoryOp,
    /// The other token of a rotation (packed).
    pub(crate) link: Option<Arc<[u8]>>,
    pub(crate) before: Option<Arc<str>>,
    pub(crate) after: Option<Arc<str>>,
    /// Whether the device exists after the change.
    pub(crate) present: bool,
    pub(crate) platform: Platform,
}

/// One change of a token, as the queries return it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The token.
    pub token: String,
    /// Global sequence number (increases with every entry).
    pub seq: u64,
    /// When the change was committed (Unix ms, the writer's clock).
    pub commit_ms: u64,
    /// The operation's own time: `seen_ms` of a register or rotate, the
    /// provider's timestamp of an invalidate; `None` for the others.
    pub event_ms: Option<u64>,
    /// What happened.
    pub op: HistoryOp,
    /// Rotations: the successor (`rotate_from`) or predecessor (`rotate_to`).
    pub linked_token: Option<String>,
    /// Owner before the change.
    pub owner_before: Option<String>,
    /// Owner after the change (`None` if anonymous or deleted).
    pub owner_after: Option<String>,
    /// Whether the device exists after the change.
    pub present: bool,
    /// The device's platform.
    pub platform: Platform,
}

/// Where a `changes_since` walk resumes: `commit_ms.seq` of the last change returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryCursor {
    /// Commit time of the last change returned.
    pub commit_ms: u64,
    /// Its sequence number.
    pub seq: u64,
}

impl fmt::Display for HistoryCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.commit_ms, self.seq)
    }
}

impl FromStr for HistoryCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a cursor (COMMIT_MS.SEQ)");
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        Ok(HistoryCursor {
            commit_ms: a.parse().map_err(|_| bad())?,
            seq: b.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for HistoryCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One page of `changes_since`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangesPage {
    /// Changes in `(commit_ms, seq)` order.
    pub changes: Vec<HistoryEntry>,
    /// Pass this back to continue after the last change returned (also
    /// later, to see newer changes). `None` only when nothing was returned
    /// and no cursor was given.
    pub cursor: Option<HistoryCursor>,
    /// Whether more changes were already there when this page was cut.
    pub more: bool,
}

/// Counters of one (day, platform); the day is that of the commit time (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DayCounts {
    /// `register` entries (new device, anonymous device identified, platform change).
    pub registrations: u64,
    /// Rotations (one per rotate operation).
    pub rotations: u64,
    /// Ownership moves: `move` and `merge` entries.
    pub moves: u64,
    /// Logouts (keep and remove).
    pub logouts: u64,
    /// Invalidations that deleted a device.
    pub invalidations: u64,
    /// Devices evicted by the per-person cap.
    pub evictions: u64,
    /// Devices deleted by remove or prune.
    pub removals: u64,
    /// `delivered` feedback applied (store format 7; 0 in older counters).
    pub deliveries: u64,
    /// `soft_failure` feedback applied (store format 7).
    pub soft_failures: u64,
    /// `hard_failure` feedback applied (store format 7).
    pub hard_failures: u64,
}

/// The counters as formats 6 and older stored them (version byte 1).
#[derive(serde::Deserialize)]
pub(crate) struct DayCountsV1 {
    registrations: u64,
    rotations: u64,
    moves: u64,
    logouts: u64,
    invalidations: u64,
    evictions: u64,
    removals: u64,
}

impl From<DayCountsV1> for DayCounts {
    fn from(v: DayCountsV1) -> DayCounts {
        DayCounts {
            registrations: v.registrations,
            rotations: v.rotations,
            moves: v.moves,
            logouts: v.logouts,
            invalidations: v.invalidations,
            evictions: v.evictions,
            removals: v.removals,
            ..DayCounts::default()
        }
    }
}

/// The counters of one day and platform, as `daily_stats` returns them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DailyStats {
    /// The UTC date, `YYYY-MM-DD`.
    pub day: String,
    /// The day's start, Unix ms.
    pub day_start_ms: u64,
    /// The platform.
    pub platform: Platform,
    /// The counters.
    #[serde(flatten)]
    pub counts: DayCounts,
}

/// The history kept in memory: only what the store does not have yet, and
/// the daily counters. Every older entry is read from the store on demand
/// (`view.rs`); nothing is loaded at open but the counters.
#[derive(Default)]
pub(crate) struct History {
    /// Entries recorded since the last snapshot, per token, oldest first
    /// (at most [`MAX_HISTORY_PER_TOKEN`] each).
    pending: pending::PendingRecs,
    /// The entries of the last snapshot: kept readable until its
    /// checkpoint is in the store (`release_flushing`), or the next
    /// snapshot if that checkpoint failed.
    flushing: pending::PendingRecs,
    /// Snapshots drained so far (`drain_dirty`): a checkpoint releases
    /// `flushing` only if its snapshot is still the last one.
    drains: u64,
    daily: BTreeMap<(u32, Platform), DayCounts>,
    pub(crate) next_seq: u64,
    pub(crate) retention_ms: u64,
    dirty_days: HashSet<(u32, Platform)>,
}

/// A device's (owner, platform) now, `None` if it does not exist.
pub(crate) type DeviceStatus<'a> = dyn Fn(&[u8]) -> Option<(Option<Arc<str>>, Platform)> + 'a;

impl History {
    pub(crate) fn new(retention_ms: u64) -> History {
        History {
            retention_ms,
            ..History::default()
        }
    }

    /// The oldest commit time kept when the newest commit is `now_ms`.
    pub(crate) fn cutoff(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.retention_ms)
    }

    /// Records one device change caused by `cause`, at commit time `now_ms`.
    /// A register that changes neither owner nor platform is a refresh: the
    /// caller passes `Cause::Touch` for it (nothing is recorded).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        now_ms: u64,
        cause: &Cause,
        token: &[u8],
        before: Option<&Arc<str>>,
        after: Option<&Arc<str>>,
        present: bool,
        platform: Platform,
    ) {
        let (op, event_ms, link): (HistoryOp, Option<u64>, Option<&[u8]>) = match cause {
            Cause::None | Cause::Touch => return,
            Cause::Register { seen_ms } => {
                let moved = before.is_some() && before != after;
                let op = if moved {
                    HistoryOp::Move
                } else {
                    HistoryOp::Register
                };
                (op, Some(*seen_ms), None)
            }
            Cause::Rotate { old, new, seen_ms } => {
                if token == &**old {
                    (HistoryOp::RotateFrom, Some(*seen_ms), Some(&**new))
                } else {
                    (HistoryOp::RotateTo, Some(*seen_ms), Some(&**old))
                }
            }
            Cause::Logout(LogoutPolicy::Keep) => (HistoryOp::LogoutKeep, None, None),
            Cause::Logout(LogoutPolicy::Remove) => (HistoryOp::LogoutRemove, None, None),
            Cause::Merge => (HistoryOp::Merge, None, None),
            Cause::Remove => (HistoryOp::Remove, None, None),
            Cause::Invalidate { provider_ms } => (HistoryOp::Invalidate, Some(*provider_ms), None),
            Cause::Prune => (HistoryOp::Prune, None, None),
            Cause::EvictByCap => (HistoryOp::EvictByCap, None, None),
            // No event time: the entry says who owned the device when the
            // failure was committed, and a provider's time could order it
            // before an ownership change it came after (owner_at_by_event).
            Cause::HardFailure => (HistoryOp::HardFailure, None, None),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let rec = Rec {
            seq,
            commit_ms: now_ms,
            event_ms,
            op,
            link: link.map(Arc::from),
            before: before.cloned(),
            after: after.cloned(),
            present,
            platform,
        };
        self.count(now_ms, platform, op);
        self.pending.push(token, rec);
    }

    fn count(&mut self, now_ms: u64, platform: Platform, op: HistoryOp) {
        let day = (now_ms / DAY_MS) as u32;
        let c = self.daily.entry((day, platform)).or_default();
        let field = match op {
            HistoryOp::Register => &mut c.registrations,
            HistoryOp::Move | HistoryOp::Merge => &mut c.moves,
            HistoryOp::RotateFrom => &mut c.rotations,
            HistoryOp::RotateTo => return,
            HistoryOp::LogoutKeep | HistoryOp::LogoutRemove => &mut c.logouts,
            HistoryOp::Invalidate => &mut c.invalidations,
            HistoryOp::EvictByCap => &mut c.evictions,
            HistoryOp::Prune | HistoryOp::Remove => &mut c.removals,
            HistoryOp::HardFailure => &mut c.hard_failures,
        };
        *field += 1;
        self.dirty_days.insert((day, platform));
    }

    /// Counts a `delivered` or `soft_failure` feedback applied at commit
    /// time `now_ms` (no history entry: one per push would push the
    /// ownership changes out of a token's bounded list).
    pub(crate) fn count_feedback(&mut self, now_ms: u64, platform: Platform, delivered: bool) {
        let day = (now_ms / DAY_MS) as u32;
        let c = self.daily.entry((day, platform)).or_default();
        if delivered {
            c.deliveries += 1;
        } else {
            c.soft_failures += 1;
        }
        self.dirty_days.insert((day, platform));
    }

    /// The token's entries held in memory (not yet known to be in the
    /// store), oldest first.
    pub(crate) fn in_memory(&self, token: &[u8]) -> Vec<Rec> {
        let mut out: Vec<Rec> = self.flushing.get(token).to_vec();
        out.extend_from_slice(self.pending.get(token));
        out
    }

    /// Every token's entries held in memory, oldest first.
    pub(crate) fn all_in_memory(&self) -> HashMap<Arc<[u8]>, Vec<Rec>> {
        let mut out: HashMap<Arc<[u8]>, Vec<Rec>> = HashMap::new();
        self.flushing.extend_map(&mut out);
        self.pending.extend_map(&mut out);
        out
    }

    /// The number of the last snapshot drained (its `Snapshot::history_drain`).
    pub(crate) fn drains(&self) -> u64 {
        self.drains
    }

    /// Takes `flushing` out once snapshot number `drain`'s checkpoint is
    /// in the store, for the caller to free outside the state's lock: a
    /// reader takes the entries in memory before it reads the store, so
    /// it finds each one in one place or both. Takes nothing if another
    /// snapshot came since (its entries are in `flushing` then, not yet
    /// stored). Without this, a merge's whole run held two snapshots'
    /// entries: at 10^7 devices about 50 MB more at the import's peak.
    pub(crate) fn release_flushing(&mut self, drain: u64) -> pending::PendingRecs {
        match drain == self.drains {
            true => std::mem::take(&mut self.flushing),
            false => pending::PendingRecs::default(),
        }
    }

    /// Entries held in memory.
    #[cfg(test)]
    pub(crate) fn memory_entries(&self) -> usize {
        self.pending.entries() + self.flushing.entries()
    }

    /// Every day's counters, oldest day first.
    pub(crate) fn daily(&self) -> Vec<DailyStats> {
        self.daily
            .iter()
            .map(|(&(day, platform), &counts)| DailyStats {
                day: civil_date(day),
                day_start_ms: u64::from(day) * DAY_MS,
                platform,
                counts,
            })
            .collect()
    }

    /// Same counters and sequence (for `check`; the entries are compared
    /// token by token through `view`).
    pub(crate) fn same_counters(&self, other: &History) -> bool {
        self.daily == other.daily && self.next_seq == other.next_seq
    }
}

/// `YYYY-MM-DD` of a day number since 1970-01-01.
fn civil_date(day: u32) -> String {
    let (y, m, d) = crate::model::civil_from_days(u64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Arc<str>> {
        Some(Arc::from(s))
    }

    fn joined(h: &History, token: &[u8], now_ms: u64) -> Vec<Rec> {
        join(Vec::new(), h.in_memory(token), h.cutoff(now_ms))
    }

    #[test]
    fn check_messages_abbreviate_tokens() {
        let token = "f4c2a9b1".to_string() + &"7".repeat(56);
        let mut h = History::new(1000);
        let owner = p("ann");
        let reg = Cause::Register { seen_ms: 1 };
        let packed = crate::codec::pack_token(&token);
        h.record(1, &reg, &packed, None, owner.as_ref(), true, Platform::Ios);
        // The history says the device is there; the status says it is gone.
        let list = joined(&h, &packed, 1);
        let problems = check_list(&packed, &list, h.next_seq, &|_| None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("history of f4c2a9b1…(64 bytes) ends with"),
            "{problems:?}"
        );
        assert!(!problems[0].contains(&token), "{problems:?}");
    }

    /// `release_flushing` takes the entries of the snapshot it names and
    /// nothing once another snapshot has come since.
    #[test]
    fn release_takes_only_the_last_snapshots_entries() {
        let mut h = History::new(1000);
        let reg = Cause::Register { seen_ms: 1 };
        let owner = p("ann");
        h.record(1, &reg, b"a", None, owner.as_ref(), true, Platform::Ios);
        let _ = h.drain_dirty(1);
        let first = h.drains();
        h.record(2, &reg, b"b", None, owner.as_ref(), true, Platform::Ios);
        let _ = h.drain_dirty(2);
        assert_eq!(h.memory_entries(), 1, "the first drain's entries are freed");
        assert_eq!(
            h.release_flushing(first).entries(),
            0,
            "another snapshot came since"
        );
        assert_eq!(h.in_memory(b"b").len(), 1);
        assert_eq!(h.release_flushing(h.drains()).entries(), 1);
        assert_eq!(h.memory_entries(), 0);
        assert!(h.in_memory(b"b").is_empty());
    }

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_675), "2023-11-14");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }

    #[test]
    fn bounded_per_token_and_by_age() {
        let mut h = History::new(1000);
        let reg = Cause::Register { seen_ms: 1 };
        for i in 0..200u64 {
            let owner = p(if i % 2 == 0 { "a" } else { "b" });
            let before = p(if i % 2 == 0 { "b" } else { "a" });
            h.record(
                i,
                &reg,
                b"t",
                before.as_ref(),
                owner.as_ref(),
                true,
                Platform::Ios,
            );
        }
        assert_eq!(h.memory_entries(), MAX_HISTORY_PER_TOKEN);
        let list = joined(&h, b"t", 199);
        assert_eq!(list.len(), MAX_HISTORY_PER_TOKEN);
        assert_eq!(entries(b"t", &list)[0].seq, 199);
        // Age: at 5000 everything before 4000 is gone.
        h.record(
            5000,
            &Cause::Remove,
            b"t",
            p("a").as_ref(),
            None,
            false,
            Platform::Ios,
        );
        assert_eq!(joined(&h, b"t", 5000).len(), 1);
        h.record(5000, &Cause::Remove, b"u", None, None, false, Platform::Ios);
        assert!(joined(&h, b"t", 6500).is_empty() && joined(&h, b"u", 6500).is_empty());
        assert_eq!(owner_at(&joined(&h, b"t", 6500), 100), None);
    }

    /// The store's merge and the readers' join agree, and both are
    /// idempotent (a record appended twice is kept once).
    #[test]
    fn store_merge_keeps_the_newest_once() {
        let mut h = History::new(u64::MAX);
        let reg = Cause::Register { seen_ms: 1 };
        let mut stored: Option<Vec<u8>> = None;
        for round in 0..5u64 {
            for i in 0..30u64 {
                let who = p(if i % 2 == 0 { "a" } else { "b" });
                h.record(
                    round * 100 + i,
                    &reg,
                    b"t",
                    None,
                    who.as_ref(),
                    true,
                    Platform::Ios,
                );
            }
            let writes = h.take_writes(round * 100 + 99).unwrap();
            let (_, appended) = writes
                .iter()
                .find(|(k, _)| k == &history_key(b"t"))
                .unwrap();
            let appended = appended.as_deref().unwrap();
            let once = merge_encoded(b"Ht", stored.as_deref(), appended).unwrap();
            let twice = merge_encoded(b"Ht", Some(&once), appended).unwrap();
            assert_eq!(once, twice, "round {round}");
            stored = Some(once);
        }
        let list = decode_list(b"Ht", stored.as_deref().unwrap()).unwrap();
        assert_eq!(list.len(), MAX_HISTORY_PER_TOKEN);
        assert_eq!(list.last().unwrap().seq, 149);
        assert_eq!(
            list.first().unwrap().seq,
            150 - MAX_HISTORY_PER_TOKEN as u64
        );
        // The last snapshot's entries are still in memory; the join counts them once.
        let view = join(list.clone(), h.in_memory(b"t"), 0);
        assert_eq!(view, list);
    }

    #[test]
    fn owner_at_by_event_orders_by_event_time() {
        let mut h = History::new(u64::MAX);
        let r = |s| Cause::Register { seen_ms: s };
        // Applied in this order: at commit time 10,000 an event of 3000,
        // then one of 1000 (out of order); at 10,010 a logout (no time).
        h.record(
            10_000,
            &r(3000),
            b"t",
            None,
            p("a").as_ref(),
            true,
            Platform::Ios,
        );
        let (a, b) = (p("a"), p("b"));
        h.record(
            10_000,
            &r(1000),
            b"t",
            a.as_ref(),
            b.as_ref(),
            true,
            Platform::Ios,
        );
        let logout = Cause::Logout(LogoutPolicy::Keep);
        h.record(10_010, &logout, b"t", b.as_ref(), None, true, Platform::Ios);
        let list = joined(&h, b"t", 10_010);
        assert_eq!(owner_at_by_event(&list, 999), None);
        assert_eq!(owner_at_by_event(&list, 1000).as_deref(), Some("b"));
        assert_eq!(owner_at_by_event(&list, 2999).as_deref(), Some("b"));
        assert_eq!(owner_at_by_event(&list, 3000).as_deref(), Some("a"));
        // The logout is the last entry: at its commit time.
        assert_eq!(owner_at_by_event(&list, 10_009).as_deref(), Some("a"));
        assert_eq!(owner_at_by_event(&list, 10_010), None);
        // By commit time only the commits count.
        assert_eq!(owner_at(&list, 3000), None);
        assert_eq!(owner_at(&list, 10_000).as_deref(), Some("b"));
        assert_eq!(owner_at_by_event(&[], 10), None);
    }

    #[test]
    fn owner_at_uses_commit_time() {
        let mut h = History::new(u64::MAX);
        let r = |s| Cause::Register { seen_ms: s };
        h.record(
            10,
            &r(999),
            b"t",
            None,
            p("a").as_ref(),
            true,
            Platform::Ios,
        );
        h.record(
            20,
            &r(5),
            b"t",
            p("a").as_ref(),
            p("b").as_ref(),
            true,
            Platform::Ios,
        );
        h.record(
            20,
            &Cause::Logout(LogoutPolicy::Keep),
            b"t",
            p("b").as_ref(),
            None,
            true,
            Platform::Ios,
        );
        h.record(30, &r(5), b"t", None, p("c").as_ref(), true, Platform::Ios);
        let list = joined(&h, b"t", 30);
        assert_eq!(owner_at(&list, 9), None);
        assert_eq!(owner_at(&list, 10).as_deref(), Some("a"));
        assert_eq!(owner_at(&list, 19).as_deref(), Some("a"));
        assert_eq!(owner_at(&list, 20), None);
        assert_eq!(owner_at(&list, 30).as_deref(), Some("c"));
        let ops: Vec<HistoryOp> = entries(b"t", &list).iter().map(|e| e.op).collect();
        use HistoryOp::*;
        assert_eq!(ops, [Register, LogoutKeep, Move, Register]);
        // Paging by (commit, seq).
        let mut c = Changes::new(20, None, 1);
        c.offer(b"t", &list);
        let page = c.finish();
        assert_eq!(page.changes[0].seq, 1);
        assert!(page.more);
        let mut c = Changes::new(20, page.cursor, 10);
        c.offer(b"t", &list);
        let page = c.finish();
        assert_eq!(
            page.changes.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        assert!(!page.more);
        assert_eq!(page.cursor.unwrap().to_string(), "30.3");
        assert_eq!("30.3".parse::<HistoryCursor>(), Ok(page.cursor.unwrap()));
    }
}

//! Ownership history and daily token-change counters.
//!
//! Derived state, like the feed: changed by the same deterministic apply as
//! the devices (so a change and its history entry are in one log record),
//! checkpointed through dirty keys, loaded at open. Times are commit times
//! stamped into the log by the writer (`Entry::Clock`), never read from the
//! clock during apply, so a replay rebuilds exactly the same history.
//!
//! Bounds: at most [`MAX_HISTORY_PER_TOKEN`] entries per token (oldest
//! dropped), and no entry older than `now - retention` survives the next
//! change of its token or the next checkpoint.

mod persist;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use serde::Serialize;

use crate::codec::unpack_token;
use crate::model::{token_bytes_label, token_label, LogoutPolicy, Platform};

pub(crate) use persist::load_history;

/// Most history entries kept per token; older ones are dropped.
pub const MAX_HISTORY_PER_TOKEN: usize = 64;
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
}

impl HistoryOp {
    const ALL: [HistoryOp; 11] = [
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
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<HistoryOp> {
        HistoryOp::ALL.get(c as usize).copied()
    }
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

/// The history of every token and the daily counters.
#[derive(Default)]
pub(crate) struct History {
    tokens: HashMap<Arc<[u8]>, VecDeque<Rec>>,
    /// (commit_ms, seq) -> token, for `changes_since` and the retention sweep.
    by_commit: BTreeMap<(u64, u64), Arc<[u8]>>,
    daily: BTreeMap<(u32, Platform), DayCounts>,
    pub(crate) next_seq: u64,
    pub(crate) retention_ms: u64,
    dirty_tokens: HashSet<Arc<[u8]>>,
    dirty_days: HashSet<(u32, Platform)>,
}

/// A device's (owner, platform) now, `None` if it does not exist.
pub(crate) type DeviceStatus<'a> = dyn Fn(&[u8]) -> Option<(Option<Arc<str>>, Platform)> + 'a;

/// The device's state as of one change: (present, owner, platform).
type Status<'a> = (bool, Option<&'a str>, Platform);

impl History {
    pub(crate) fn new(retention_ms: u64) -> History {
        History {
            retention_ms,
            ..History::default()
        }
    }

    fn key(&self, token: &[u8]) -> Arc<[u8]> {
        match self.tokens.get_key_value(token) {
            Some((k, _)) => k.clone(),
            None => Arc::from(token),
        }
    }

    fn last_status(&self, token: &[u8]) -> Option<Status<'_>> {
        self.tokens
            .get(token)
            .and_then(|d| d.back())
            .map(|r| (r.present, r.after.as_deref(), r.platform))
    }

    /// Records one device change caused by `cause`, at commit time `now_ms`.
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
                // A refresh (same owner, same platform) is not an ownership change.
                if self.last_status(token) == Some((present, after.map(|a| &**a), platform)) {
                    return;
                }
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
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let rec = Rec {
            seq,
            commit_ms: now_ms,
            event_ms,
            op,
            link: link.map(|l| self.key(l)),
            before: before.cloned(),
            after: after.cloned(),
            present,
            platform,
        };
        self.count(now_ms, platform, op);
        let key = self.key(token);
        self.by_commit.insert((now_ms, seq), key.clone());
        let list = self.tokens.entry(key.clone()).or_default();
        list.push_back(rec);
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        while list.len() > MAX_HISTORY_PER_TOKEN
            || list.front().is_some_and(|r| r.commit_ms < cutoff)
        {
            if let Some(r) = list.pop_front() {
                self.by_commit.remove(&(r.commit_ms, r.seq));
            }
        }
        self.dirty_tokens.insert(key);
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
        };
        *field += 1;
        self.dirty_days.insert((day, platform));
    }

    /// Drops every entry older than `now_ms - retention` (at checkpoints).
    pub(crate) fn sweep(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.retention_ms);
        while let Some(entry) = self.by_commit.first_entry() {
            if entry.key().0 >= cutoff {
                break;
            }
            let token = entry.remove();
            if let Some(list) = self.tokens.get_mut(&token) {
                while list.front().is_some_and(|r| r.commit_ms < cutoff) {
                    list.pop_front();
                }
                if list.is_empty() {
                    self.tokens.remove(&token);
                }
            }
            self.dirty_tokens.insert(token);
        }
    }

    fn entry(&self, token: &[u8], r: &Rec) -> HistoryEntry {
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

    /// The token's history, newest first.
    pub(crate) fn of(&self, token: &[u8]) -> Vec<HistoryEntry> {
        self.tokens
            .get(token)
            .map(|l| l.iter().rev().map(|r| self.entry(token, r)).collect())
            .unwrap_or_default()
    }

    /// Who owned the token at commit time `t`: the owner after the last
    /// change committed at or before `t`. `None` when it had no owner, did
    /// not exist, or `t` is before the oldest entry kept.
    pub(crate) fn owner_at(&self, token: &[u8], t: u64) -> Option<Arc<str>> {
        let list = self.tokens.get(token)?;
        let n = list.partition_point(|r| r.commit_ms <= t);
        let r = list.get(n.checked_sub(1)?)?;
        r.after.clone()
    }

    /// Changes committed at or after `since_ms` (and after `cursor`), oldest first.
    pub(crate) fn changes_since(
        &self,
        since_ms: u64,
        cursor: Option<HistoryCursor>,
        limit: usize,
    ) -> ChangesPage {
        let start = match cursor {
            Some(c) if (c.commit_ms, c.seq) >= (since_ms, 0) => {
                std::ops::Bound::Excluded((c.commit_ms, c.seq))
            }
            _ => std::ops::Bound::Included((since_ms, 0)),
        };
        let mut it = self.by_commit.range((start, std::ops::Bound::Unbounded));
        let mut changes = Vec::new();
        let mut last = cursor;
        for (&(commit_ms, seq), token) in it.by_ref().take(limit) {
            let Some(r) = self.tokens.get(token).and_then(|l| {
                let i = l.binary_search_by_key(&seq, |r| r.seq).ok()?;
                l.get(i)
            }) else {
                continue;
            };
            changes.push(self.entry(token, r));
            last = Some(HistoryCursor { commit_ms, seq });
        }
        ChangesPage {
            changes,
            cursor: last,
            more: it.next().is_some(),
        }
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

    /// Entries kept in total, and their encoded size in the store.
    pub(crate) fn footprint(&self) -> (u64, u64) {
        let bytes: usize = self
            .tokens
            .values()
            .flatten()
            .map(persist::encoded_len)
            .sum();
        (self.by_commit.len() as u64, bytes as u64)
    }

    /// Internal consistency, and agreement with the devices: `status(token)`
    /// says whether the token exists now, its owner and platform.
    pub(crate) fn check(&self, status: &DeviceStatus<'_>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut total = 0;
        for (token, list) in &self.tokens {
            let name =
                unpack_token(token).map_or_else(|| token_bytes_label(token), |t| token_label(&t));
            total += list.len();
            if list.is_empty() {
                problems.push(format!("history of {name} is empty but kept"));
            }
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
            for r in list {
                if self.by_commit.get(&(r.commit_ms, r.seq)) != Some(token) {
                    problems.push(format!("history entry {} of {name} is not indexed", r.seq));
                }
                if r.seq >= self.next_seq {
                    problems.push(format!(
                        "history entry {} of {name} is past the next seq",
                        r.seq
                    ));
                }
            }
            if let Some(last) = list.back() {
                let now = status(token);
                let want = now.as_ref().map(|(p, pl)| (p.as_deref(), *pl));
                let have = last
                    .present
                    .then_some((last.after.as_deref(), last.platform));
                if want != have {
                    problems.push(format!(
                        "history of {name} ends with {have:?}, the device is {want:?}"
                    ));
                }
            }
        }
        if total != self.by_commit.len() {
            problems.push(format!(
                "history holds {total} entries, its commit index {}",
                self.by_commit.len()
            ));
        }
        problems
    }

    /// Same entries, counters and sequence (for `check`).
    pub(crate) fn same_as(&self, other: &History) -> bool {
        self.tokens == other.tokens && self.daily == other.daily && self.next_seq == other.next_seq
    }
}

/// `YYYY-MM-DD` of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(day: u32) -> String {
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Arc<str>> {
        Some(Arc::from(s))
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
        let problems = h.check(&|_| None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("history of f4c2a9b1…(64 bytes) ends with"),
            "{problems:?}"
        );
        assert!(!problems[0].contains(&token), "{problems:?}");
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
        assert_eq!(h.of(b"t").len(), MAX_HISTORY_PER_TOKEN);
        assert_eq!(h.footprint().0, MAX_HISTORY_PER_TOKEN as u64);
        assert_eq!(h.of(b"t")[0].seq, 199);
        // Age: an entry at 5000 drops everything before 4000.
        h.record(
            5000,
            &Cause::Remove,
            b"t",
            p("a").as_ref(),
            None,
            false,
            Platform::Ios,
        );
        assert_eq!(h.of(b"t").len(), 1);
        h.record(5000, &Cause::Remove, b"u", None, None, false, Platform::Ios);
        h.sweep(6500);
        assert!(h.of(b"t").is_empty() && h.of(b"u").is_empty());
        assert_eq!(h.footprint().0, 0);
        assert_eq!(h.owner_at(b"t", 100), None);
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
        assert_eq!(h.owner_at(b"t", 9), None);
        assert_eq!(h.owner_at(b"t", 10).as_deref(), Some("a"));
        assert_eq!(h.owner_at(b"t", 19).as_deref(), Some("a"));
        assert_eq!(h.owner_at(b"t", 20), None);
        assert_eq!(h.owner_at(b"t", 30).as_deref(), Some("c"));
        let ops: Vec<HistoryOp> = h.of(b"t").iter().map(|e| e.op).collect();
        use HistoryOp::*;
        assert_eq!(ops, [Register, LogoutKeep, Move, Register]);
        // Paging by (commit, seq).
        let page = h.changes_since(20, None, 1);
        assert_eq!(page.changes[0].seq, 1);
        assert!(page.more);
        let page = h.changes_since(20, page.cursor, 10);
        assert_eq!(
            page.changes.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        assert!(!page.more);
        assert_eq!(page.cursor.unwrap().to_string(), "30.3");
        assert_eq!("30.3".parse::<HistoryCursor>(), Ok(page.cursor.unwrap()));
    }
}

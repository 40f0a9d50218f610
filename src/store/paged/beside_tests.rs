//! Checkpoints beside a merge (DESIGN.md 4.3): checkpoints applied between
//! a merge's batches of pages, merges that fail midway, and reopens, all
//! against a model of every record.

use std::collections::BTreeMap;

use super::tests::{all, check_history, open_with_deltas, put, record_owner_change};
use super::*;
use crate::history::History;

pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the store must read as: replaced records by key, history lists
/// as their seqs (newest `MAX_HISTORY_PER_TOKEN`).
#[derive(Default)]
pub(super) struct Model {
    records: BTreeMap<Vec<u8>, Vec<u8>>,
    history: BTreeMap<Vec<u8>, Vec<u64>>,
    h: Option<History>,
    now_ms: u64,
}

impl Model {
    /// One checkpoint's writes: replaced or deleted `'D'`/`'K'` records and
    /// a few history entries, recorded in the model.
    pub(super) fn batch(&mut self, rng: &mut Rng) -> Vec<Write> {
        let mut batch = Vec::new();
        for _ in 0..1 + rng.below(30) {
            let key = format!("{}{:04}", ["D", "K"][rng.below(2) as usize], rng.below(200));
            let value = (rng.below(5) > 0).then(|| vec![b'v'; rng.below(60) as usize]);
            match &value {
                Some(v) => self.records.insert(key.clone().into_bytes(), v.clone()),
                None => self.records.remove(key.as_bytes()),
            };
            batch.push((key.into_bytes(), value));
        }
        let h = self.h.get_or_insert_with(|| History::new(u64::MAX));
        for i in 0..rng.below(4) {
            self.now_ms += 1;
            let token = format!("t{}", rng.below(11)).into_bytes();
            record_owner_change(h, &mut self.history, &token, i, self.now_ms);
        }
        batch.extend(h.take_writes(self.now_ms).unwrap());
        batch
    }

    /// Every record and list of `s` against the model, by scans and gets.
    pub(super) fn check(&self, s: &PagedStore, rng: &mut Rng, at: &str) {
        let mut seen = BTreeMap::new();
        for p in [b'D', b'K'] {
            s.scan_prefix(&[p], &mut |k, v| {
                seen.insert(k.to_vec(), v.to_vec());
                Ok(())
            })
            .unwrap();
        }
        let differ: Vec<String> = (seen.keys().chain(self.records.keys()))
            .filter(|k| seen.get(*k) != self.records.get(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert!(differ.is_empty(), "{at}: {differ:?} differ");
        let probe = format!("D{:04}", rng.below(200)).into_bytes();
        assert_eq!(
            s.get(&probe).unwrap(),
            self.records.get(&probe).cloned(),
            "{at}"
        );
        check_history(s, &self.history, at);
    }
}

/// Merges run with checkpoints applied between their batches (each read
/// checked against the model while the merge is half done), some merges
/// fail midway on purpose, and the store is reopened now and then: every
/// read answers as the model, a merge retires exactly what it froze (the
/// chunks written beside it stay current), and a failed merge leaves
/// every delta readable and the next merge does the work.
#[test]
fn checkpoints_beside_a_merge_match_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let reopen = || {
        let mut s = open_with_deltas(dir.path(), 256, 2_000);
        // Deltas read back in several passes, pages written a few at a time.
        s.pass_bytes = 256;
        s
    };
    let mut s = reopen();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut model = Model::default();
    let (mut merged_beside, mut failed_midway) = (0, 0);
    for round in 0..60 {
        let first = model.batch(&mut rng);
        s.apply_deferred(&first).unwrap();
        let merges = s.merges().0;
        let fail_at = (round % 5 == 2).then(|| 1 + rng.below(6));
        let (mut calls, mut beside_chunks) = (0u64, 0usize);
        let r = s.merge_if_due_beside(&mut || {
            calls += 1;
            if Some(calls) == fail_at {
                return Err(Error::Closed);
            }
            if rng.below(3) == 0 {
                let before = s.deltas.read().chunks.len();
                s.apply_deferred(&model.batch(&mut rng))?;
                beside_chunks += s.deltas.read().chunks.len() - before;
                model.check(&s, &mut rng, &format!("round {round}, call {calls}"));
            }
            Ok(())
        });
        let deltas = s.deltas.read();
        assert!(deltas.frozen.is_none(), "round {round}: left frozen");
        match r {
            Ok(()) if s.merges().0 > merges => {
                assert_eq!(deltas.chunks.len(), beside_chunks, "round {round}");
                merged_beside += usize::from(beside_chunks > 0);
            }
            Ok(()) => assert_eq!(calls, 0, "round {round}: no merge, no call"),
            Err(e) => {
                assert!(matches!(e, Error::Closed), "round {round}: {e}");
                assert_eq!(
                    s.merges().0,
                    merges,
                    "round {round}: a failed merge counted"
                );
                failed_midway += 1;
            }
        }
        drop(deltas);
        model.check(&s, &mut rng, &format!("round {round}"));
        if round % 7 == 3 {
            drop(s);
            s = reopen();
            model.check(&s, &mut rng, &format!("round {round}, reopened"));
        }
    }
    assert!(
        merged_beside >= 5,
        "{merged_beside} merges with checkpoints beside"
    );
    assert!(failed_midway >= 5, "{failed_midway} merges failed midway");
}

/// A store planned for 100 devices: memory bound 1,600 (100 x 16), disk
/// bound 3,200 (100 x 32); the slack beside a merge is half the disk
/// bound, or half what the merge froze if that is more. Passes of 256
/// bytes, so a merge calls `between` between many of them.
fn planned_for_100(dir: &std::path::Path) -> PagedStore {
    let mut s = open_with_deltas(dir, 1 << 20, 4_000);
    s.pass_bytes = 256;
    s.plan_for_devices(100);
    s
}

/// A full merge set off while the history held in memory is over its
/// bound leaves no room beside it until the history's pages are written;
/// then the frozen map is let go with its bytes, and the disk-only passes
/// that follow leave room for checkpoints beside them (DESIGN.md 4.3,
/// "The released map"). Until 2026-12-07 the bytes were counted until the
/// commit, and the writers waited through the whole merge.
#[test]
fn a_full_merge_leaves_room_once_the_history_is_in_its_pages() {
    let dir = tempfile::tempdir().unwrap();
    let s = planned_for_100(dir.path());
    let devices: Vec<Write> = (0..10).map(|i| put(i, &"d".repeat(150))).collect();
    s.apply_deferred(&devices).unwrap();
    let history: Vec<Write> = (0..11)
        .map(|i| (format!("H{i:05}").into_bytes(), Some(vec![b'h'; 150])))
        .collect();
    s.apply_deferred(&history).unwrap();
    {
        let d = s.deltas.read();
        assert_eq!((d.bytes, d.memory_bytes), (3_276, 1_716));
    }
    assert!(!s.room_beside_merge(), "over the memory bound: no room");
    let mut rooms = Vec::new();
    s.merge_if_due_beside(&mut || {
        rooms.push((s.room_beside_merge(), s.deltas.read().memory_bytes));
        Ok(())
    })
    .unwrap();
    assert_eq!(s.merges().0, 1, "one full merge");
    assert!(
        rooms.len() >= 3,
        "the history's pages, then passes: {rooms:?}"
    );
    assert_eq!(rooms.first(), Some(&(false, 1_716)), "{rooms:?}");
    assert!(
        rooms.iter().skip(1).all(|&r| r == (true, 0)),
        "room once the history is in its pages: {rooms:?}"
    );
    let d = s.deltas.read();
    assert_eq!((d.bytes, d.memory_bytes, d.map.len()), (0, 0, 0));
    drop(d);
    assert_eq!(all(&s, b'H').len(), 11);
    assert_eq!(all(&s, b'D').len(), 10);
}

/// A merge of more deltas than the disk bound and its slack (a store
/// reopened with what its growth credit allowed: the open starts the
/// credit at zero) leaves room for checkpoints beside it up to the slack
/// share of what it froze, and no more (DESIGN.md 4.3, "Room beside a
/// merge"). Until 2026-12-07 the room was counted from the bound alone, so
/// the first merge after such an open stopped the writers throughout: 18
/// s of a 10^7 bulk update.
#[test]
fn a_merge_of_more_than_the_bound_leaves_the_slack_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = planned_for_100(dir.path());
    let devices = |round: usize| -> Vec<Write> {
        (0..10).map(|i| put(i, &format!("{round:0>150}"))).collect()
    };
    // 10 records of 156 bytes: 1,560 bytes a round, 7,800 in five.
    for round in 0..5 {
        s.apply_deferred(&devices(round)).unwrap();
    }
    assert_eq!(s.deltas.read().bytes, 7_800);
    let mut rooms = Vec::new();
    let mut round = 5;
    s.merge_if_due_beside(&mut || {
        let room = s.room_beside_merge();
        rooms.push((room, s.deltas.read().bytes));
        if room {
            s.apply_deferred(&devices(round))?;
            round += 1;
        }
        Ok(())
    })
    .unwrap();
    // 7,800 frozen, half of it as slack: room up to 11,700. Room is asked
    // before a checkpoint is handed, so three go beside it (to 9,360,
    // 10,920 and 12,480) and none after.
    let expect = [(true, 7_800), (true, 9_360), (true, 10_920)];
    assert_eq!(rooms.get(..3), Some(&expect[..]), "{rooms:?}");
    assert!(
        rooms.iter().skip(3).all(|&r| r == (false, 12_480)),
        "{rooms:?}"
    );
    assert_eq!(s.merges().0, 1);
    assert_eq!(s.deltas.read().bytes, 4_680, "the three beside it stay");
    assert!(s.room_beside_merge(), "no merge: nothing frozen");
    assert_eq!(s.get(b"D00003").unwrap().unwrap().last(), Some(&b'7'));
}

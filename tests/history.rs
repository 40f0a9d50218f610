//! Ownership history: random operation sequences (with checkpoints and
//! reopens) applied to devreg and to the reference model in `common`.
//!
//! Each operation is applied alone, between two wall-clock readings, with a
//! pause after it, so the commit time of every history entry falls in the
//! window of exactly one operation. Then `owner_at` must agree with the
//! model's owner after that operation, at every recorded time and at the end
//! of every window; the bounds hold; rotations link both ways; the daily
//! counters match the operations' outcomes.
//!
//! `PROPTEST_CASES=N` sets the number of cases (default 24).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{assert_clean, Model};
use devreg::*;
use proptest::prelude::*;

const CAP: u32 = 2;
const H0: u64 = 1_700_000_000_000;

const TOKENS: [&str; 6] = ["aa", "0f0f", "bb", "f:APA91b", "e1:APA91", "cc"];
const PERSONS: [&str; 3] = ["ann", "bob", "cy"];

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn token() -> impl Strategy<Value = String> {
    (0..TOKENS.len()).prop_map(|i| TOKENS[i].to_owned())
}

fn person() -> impl Strategy<Value = String> {
    (0..PERSONS.len()).prop_map(|i| PERSONS[i].to_owned())
}

fn time() -> impl Strategy<Value = u64> {
    (0..6u64).prop_map(|i| H0 + i * 1000)
}

fn platform() -> impl Strategy<Value = Platform> {
    prop_oneof![Just(Platform::Ios), Just(Platform::Android)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (token(), platform(), proptest::option::weighted(0.8, person()), time())
            .prop_map(|(token, platform, person, seen_ms)| Op::Register(Register {
                token, platform, person, seen_ms, attributes: None,
            })),
        1 => (token(), time()).prop_map(|(token, seen_ms)| Op::Touch { token, seen_ms }),
        3 => (0..TOKENS.len(), 1..TOKENS.len(), time()).prop_map(|(a, d, seen_ms)| Op::Rotate {
            old_token: TOKENS[a].into(),
            new_token: TOKENS[(a + d) % TOKENS.len()].into(),
            seen_ms,
        }),
        2 => (token(), prop_oneof![Just(LogoutPolicy::Keep), Just(LogoutPolicy::Remove)])
            .prop_map(|(token, policy)| Op::Logout { token, policy }),
        2 => (0..PERSONS.len(), 1..PERSONS.len()).prop_map(|(a, d)| Op::Merge {
            primary: PERSONS[a].into(),
            secondary: PERSONS[(a + d) % PERSONS.len()].into(),
        }),
        1 => token().prop_map(|token| Op::Remove { token }),
        2 => (token(), time()).prop_map(|(token, provider_ms)| Op::Invalidate { token, provider_ms }),
        1 => time().prop_map(|before_ms| Op::Prune { before_ms }),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Op(Op),
    Checkpoint,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => op().prop_map(Step::Op),
        1 => Just(Step::Checkpoint),
        2 => Just(Step::Reopen),
    ]
}

/// One applied operation: its commit window and every token's owner after it.
struct Window {
    from_ms: u64,
    to_ms: u64,
    owners: BTreeMap<&'static str, Option<String>>,
}

fn owners(m: &Model) -> BTreeMap<&'static str, Option<String>> {
    TOKENS
        .iter()
        .map(|&t| (t, m.devices.get(t).and_then(|d| d.person.clone())))
        .collect()
}

fn open(db: &std::path::Path) -> Registry {
    Registry::open_with(Config::new(db).max_devices_per_person(CAP)).unwrap()
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Expected {
    rotations: u64,
    logouts: u64,
    invalidations: u64,
    evictions: u64,
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut reg = open(&db);
    let mut model = Model::new(CAP);
    let mut windows: Vec<Window> = Vec::new();
    let mut want = Expected::default();
    for step in steps {
        match step {
            Step::Checkpoint => reg.checkpoint().unwrap(),
            Step::Reopen => {
                drop(reg);
                reg = open(&db);
            }
            Step::Op(op) => {
                let from_ms = wall_ms();
                let got = reg.apply(op.clone()).unwrap();
                let to_ms = wall_ms();
                let expect = model.apply(&op);
                prop_assert_eq!(got, expect, "outcome of {:?}", op);
                if let Outcome::Applied { devices, evicted } = got {
                    want.evictions += u64::from(evicted);
                    match &op {
                        Op::Rotate { .. } => want.rotations += 1,
                        Op::Logout { .. } if devices > 0 => want.logouts += 1,
                        Op::Invalidate { .. } if devices > 0 => want.invalidations += 1,
                        _ => {}
                    }
                    if let Op::Rotate {
                        old_token,
                        new_token,
                        ..
                    } = &op
                    {
                        if old_token != new_token {
                            let old = reg.history(old_token).unwrap();
                            let new = reg.history(new_token).unwrap();
                            prop_assert_eq!(old[0].op, HistoryOp::RotateFrom);
                            prop_assert_eq!(old[0].linked_token.as_ref(), Some(new_token));
                            prop_assert_eq!(new[0].op, HistoryOp::RotateTo);
                            prop_assert_eq!(new[0].linked_token.as_ref(), Some(old_token));
                            prop_assert_eq!(old[0].commit_ms, new[0].commit_ms);
                            prop_assert_eq!(&old[0].owner_before, &new[0].owner_after);
                        }
                    }
                }
                windows.push(Window {
                    from_ms,
                    to_ms,
                    owners: owners(&model),
                });
                // The next operation's window starts strictly later.
                while wall_ms() <= to_ms {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    // Once more after a reopen, so part of the history comes from the store.
    reg.checkpoint().unwrap();
    drop(reg);
    let reg = open(&db);
    assert_clean(&reg, "after the sequence");

    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0;
    for &t in &TOKENS {
        let h = reg.history(t).unwrap();
        total += h.len();
        prop_assert!(h.len() <= MAX_HISTORY_PER_TOKEN);
        for pair in h.windows(2) {
            prop_assert!((pair[0].commit_ms, pair[0].seq) > (pair[1].commit_ms, pair[1].seq));
        }
        for e in &h {
            *by_kind.entry(format!("{:?}", e.op)).or_default() += 1;
            prop_assert_eq!(&e.token, t);
            // The window this entry was committed in.
            let w = windows
                .iter()
                .find(|w| w.from_ms <= e.commit_ms && e.commit_ms <= w.to_ms);
            prop_assert!(w.is_some(), "entry {:?} outside every window", e);
            let w = w.unwrap();
            prop_assert_eq!(
                reg.owner_at(t, e.commit_ms).unwrap(),
                w.owners[t].clone(),
                "owner_at({}, {}) at entry {:?}",
                t,
                e.commit_ms,
                e
            );
        }
        // At the end of every window since the first entry, too.
        if let Some(first) = h.last() {
            for w in windows.iter().filter(|w| w.to_ms >= first.commit_ms) {
                prop_assert_eq!(
                    reg.owner_at(t, w.to_ms).unwrap(),
                    w.owners[t].clone(),
                    "owner_at({}, {})",
                    t,
                    w.to_ms
                );
            }
            prop_assert_eq!(reg.owner_at(t, first.commit_ms - 1).unwrap(), None);
        }
    }

    // Daily counters: the operations' outcomes, and the entries by kind.
    let mut got = Expected::default();
    let mut days = DayCounts::default();
    for d in reg.daily_stats() {
        got.rotations += d.counts.rotations;
        got.logouts += d.counts.logouts;
        got.invalidations += d.counts.invalidations;
        got.evictions += d.counts.evictions;
        days.registrations += d.counts.registrations;
        days.moves += d.counts.moves;
        days.removals += d.counts.removals;
    }
    prop_assert_eq!(&got, &want);
    let kind = |k: &str| by_kind.get(k).copied().unwrap_or(0);
    prop_assert_eq!(days.registrations, kind("Register"));
    prop_assert_eq!(days.moves, kind("Move") + kind("Merge"));
    prop_assert_eq!(days.removals, kind("Remove") + kind("Prune"));
    prop_assert_eq!(got.rotations, kind("RotateFrom"));

    // changes_since, paged, sees every entry once, in (commit, seq) order.
    let mut cursor = None;
    let mut seen = Vec::new();
    loop {
        let page = reg.changes_since(0, cursor, 3).unwrap();
        if page.changes.is_empty() {
            prop_assert!(!page.more);
            break;
        }
        seen.extend(page.changes.iter().map(|e| (e.commit_ms, e.seq)));
        cursor = page.cursor;
    }
    prop_assert_eq!(seen.len(), total);
    prop_assert!(seen.windows(2).all(|p| p[0] < p[1]));
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 500,
        ..ProptestConfig::default()
    })]

    #[test]
    fn history_matches_model(steps in proptest::collection::vec(step(), 1..30)) {
        run(steps)?;
    }
}

fn reg_op(token: &str, person: &str, seen_ms: u64) -> Op {
    Op::Register(Register {
        token: token.into(),
        platform: Platform::Android,
        person: Some(person.into()),
        seen_ms,
        attributes: None,
    })
}

#[test]
fn bounded_per_token_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = open(&db);
    let ops: Vec<Op> = (0..100)
        .map(|i| reg_op("aa", PERSONS[i % 2], H0 + i as u64))
        .collect();
    reg.apply_batch(ops).unwrap();
    drop(reg);
    let reg = open(&db);
    let h = reg.history("aa").unwrap();
    assert_eq!(h.len(), MAX_HISTORY_PER_TOKEN);
    assert_eq!(h[0].op, HistoryOp::Move);
    assert_eq!(h[0].owner_after.as_deref(), Some("bob"));
    assert_eq!(h[0].seq, 99);
    // Refreshes (same owner, same platform) are not ownership changes.
    let _ = reg.apply(reg_op("aa", "bob", H0 + 500)).unwrap();
    assert_eq!(reg.history("aa").unwrap()[0].seq, 99);
    let (entries, bytes) = reg.history_footprint().unwrap();
    assert_eq!(entries, MAX_HISTORY_PER_TOKEN as u64);
    eprintln!(
        "history: {entries} entries, {bytes} bytes encoded, {:.1} bytes per change",
        bytes as f64 / entries as f64
    );
    assert_clean(&reg, "after 100 moves");
}

#[test]
fn retention_drops_old_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let config = || Config::new(&db).history_retention_ms(300);
    let reg = Registry::open_with(config()).unwrap();
    let _ = reg.apply(reg_op("aa", "ann", H0)).unwrap();
    let _ = reg.apply(reg_op("bb", "ann", H0)).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // Before any newer commit, both entries are within the retention.
    assert_eq!(reg.history("bb").unwrap().len(), 1);
    // A new commit moves "now": every entry older than the retention is
    // gone from the queries at once, checkpointed or not.
    let _ = reg.apply(reg_op("aa", "bob", H0)).unwrap();
    assert_eq!(reg.history("aa").unwrap().len(), 1);
    assert!(reg.history("bb").unwrap().is_empty());
    reg.checkpoint().unwrap();
    assert!(reg.history("bb").unwrap().is_empty());
    assert_clean(&reg, "after the sweep");
    drop(reg);
    let reg = Registry::open_with(config()).unwrap();
    assert!(reg.history("bb").unwrap().is_empty());
    assert_eq!(reg.history("aa").unwrap().len(), 1);
    // Counters are kept (they are per day, not per change).
    let regs: u64 = reg
        .daily_stats()
        .iter()
        .map(|d| d.counts.registrations)
        .sum();
    assert_eq!(regs, 2);
}

fn logout_keep(token: &str) -> Op {
    Op::Logout {
        token: token.into(),
        policy: LogoutPolicy::Keep,
    }
}

/// A backfill: past events imported in one atomic batch share one commit
/// time, so by commit time nobody owned any token before the import. By
/// event time the answer follows the events, between them too; a change
/// without a time of its own (a logout) counts at the commit time, or just
/// before the token's next change when that one is earlier.
#[test]
fn owner_at_by_event_answers_for_a_backfilled_batch() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("db")).unwrap();
    let before = wall_ms();
    let outcomes = reg
        .apply_batch(vec![
            reg_op("t1", "ann", 1000),
            reg_op("t1", "bob", 2000), // a move
            logout_keep("t1"),         // no time: before cy's register
            reg_op("t1", "cy", 3000),
            Op::Rotate {
                old_token: "t1".into(),
                new_token: "t2".into(),
                seen_ms: 4000,
            },
            Op::Invalidate {
                token: "t2".into(),
                provider_ms: 5000,
            },
            reg_op("t3", "dan", 1000),
            logout_keep("t3"), // no time, and nothing after it: at commit time
        ])
        .unwrap();
    assert!(outcomes.iter().all(Outcome::is_applied), "{outcomes:?}");
    let history = reg.history("t1").unwrap();
    let commit = history[0].commit_ms;
    assert!(commit >= before);
    assert!(history.iter().all(|e| e.commit_ms == commit), "{history:?}");
    let by = |token: &str, t: u64, by: HistoryTime| reg.owner_at_by(token, t, by).unwrap();
    let cases: &[(&str, u64, Option<&str>)] = &[
        ("t1", 999, None),
        ("t1", 1000, Some("ann")),
        ("t1", 1999, Some("ann")),
        ("t1", 2000, Some("bob")),
        ("t1", 2999, Some("bob")),
        ("t1", 3000, Some("cy")),
        ("t1", 3999, Some("cy")),
        ("t1", 4000, None), // rotated away
        ("t2", 3999, None),
        ("t2", 4000, Some("cy")),
        ("t2", 4999, Some("cy")),
        ("t2", 5000, None), // invalidated at the provider's time
        ("t3", 1000, Some("dan")),
        ("t3", commit - 1, Some("dan")),
        ("t3", commit, None), // the logout, at its commit time
    ];
    for &(token, t, want) in cases {
        assert_eq!(
            by(token, t, HistoryTime::Event).as_deref(),
            want,
            "{token} at {t} by event"
        );
        // By commit time the import happened after all of these (but t3's last).
        if t < commit {
            assert_eq!(by(token, t, HistoryTime::Commit), None, "{token} at {t}");
            assert_eq!(reg.owner_at(token, t).unwrap(), None);
        }
    }
    // After every event, both agree with the devices as they are now.
    for token in ["t1", "t2", "t3"] {
        let now = reg.device(token).and_then(|d| d.person);
        for basis in [HistoryTime::Commit, HistoryTime::Event] {
            assert_eq!(by(token, commit, basis), now, "{token} by {basis:?}");
            assert_eq!(by(token, u64::MAX, basis), now, "{token} by {basis:?}");
        }
    }
}

/// The middle logout matters: a device owned again after it is owned now,
/// by event time as by commit time (placed at its commit time, the logout
/// would be the newest entry and the answer anonymous).
#[test]
fn owner_at_by_event_places_an_untimed_change_before_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("db")).unwrap();
    let _ = reg
        .apply_batch(vec![
            reg_op("aa", "ann", 1000),
            logout_keep("aa"),
            reg_op("aa", "bob", 2000),
        ])
        .unwrap();
    let at = |t| reg.owner_at_by("aa", t, HistoryTime::Event).unwrap();
    assert_eq!(at(1500).as_deref(), Some("ann"));
    assert_eq!(at(2000).as_deref(), Some("bob"));
    assert_eq!(at(u64::MAX).as_deref(), Some("bob"));
    // Across a checkpoint and a reopen (entries read from the store).
    reg.checkpoint().unwrap();
    drop(reg);
    let reg = Registry::open_read_only(dir.path().join("db")).unwrap();
    assert_eq!(
        reg.owner_at_by("aa", 1500, HistoryTime::Event)
            .unwrap()
            .as_deref(),
        Some("ann")
    );
    assert_eq!(
        reg.owner_at_by("aa", u64::MAX, HistoryTime::Event)
            .unwrap()
            .as_deref(),
        Some("bob")
    );
}

/// Delivery feedback (issue 15) in the history: a hard failure is an entry
/// (owner unchanged), deliveries and soft failures are only counted, an
/// `unregistered` that deletes is an invalidation; the counters and the
/// entry survive a reopen, and stale or unknown feedback counts nothing.
#[test]
fn feedback_is_recorded_and_counted_per_day() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = open(&db);
    let _ = reg.apply(reg_op("aa", "ann", H0)).unwrap();
    let _ = reg.apply(reg_op("bb", "ann", H0)).unwrap();
    let fb = |token: &str, outcome, at_ms| Op::Feedback {
        token: token.into(),
        outcome,
        at_ms,
        reason: Some("why".into()),
    };
    let ops = vec![
        fb("aa", FeedbackOutcome::Delivered, H0 + 1),
        fb("aa", FeedbackOutcome::SoftFailure, H0 + 2),
        fb("aa", FeedbackOutcome::SoftFailure, H0 + 1),
        fb("aa", FeedbackOutcome::HardFailure, H0 + 3),
        fb("aa", FeedbackOutcome::HardFailure, H0 + 2),
        fb("zz", FeedbackOutcome::Delivered, H0),
        fb("bb", FeedbackOutcome::Unregistered, H0),
    ];
    let outcomes = reg.apply_batch(ops).unwrap();
    assert_eq!(outcomes[2], Outcome::Skipped, "older than the delivery");
    assert_eq!(outcomes[4], Outcome::Skipped, "older than the hard failure");
    assert_eq!(outcomes[5], Outcome::NotFound);
    drop(reg);
    let reg = open(&db);
    let h = reg.history("aa").unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].op, HistoryOp::HardFailure);
    assert_eq!(h[0].owner_before.as_deref(), Some("ann"));
    assert_eq!(h[0].owner_after.as_deref(), Some("ann"));
    assert!(h[0].present);
    assert_eq!(reg.history("bb").unwrap()[0].op, HistoryOp::Invalidate);
    let day = reg.daily_stats();
    let sum = |f: fn(&DayCounts) -> u64| day.iter().map(|d| f(&d.counts)).sum::<u64>();
    assert_eq!(sum(|c| c.deliveries), 1);
    assert_eq!(sum(|c| c.soft_failures), 1);
    assert_eq!(sum(|c| c.hard_failures), 1);
    assert_eq!(sum(|c| c.invalidations), 1);
    assert_clean(&reg, "after feedback");
}

/// The owners' names of a register are read only when something records
/// them (`state/apply.rs`): a move, or any change while a sink exists.
/// Each case here reads them at the right moment: a move of a person's
/// only device names that person (released by the move) as the owner
/// before; a refresh with no sink records nothing; a refresh once a sink
/// exists still reaches the sink's feed under its owner.
const CHANGED: Outcome = Outcome::Applied {
    devices: 1,
    evicted: 0,
};

#[test]
fn a_register_names_its_owners_only_when_they_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    assert_eq!(reg.apply(reg_op("aa", "ann", H0)).unwrap(), CHANGED);
    assert_eq!(reg.apply(reg_op("aa", "bob", H0 + 1)).unwrap(), CHANGED);
    let h = reg.history("aa").unwrap();
    assert_eq!(h[0].op, HistoryOp::Move);
    assert_eq!(h[0].owner_before.as_deref(), Some("ann"));
    assert_eq!(h[0].owner_after.as_deref(), Some("bob"));
    assert!(reg.devices_of("ann").is_empty(), "ann was released");
    let moved_seq = h[0].seq;
    assert_eq!(reg.apply(reg_op("aa", "bob", H0 + 2)).unwrap(), CHANGED);
    assert_eq!(reg.history("aa").unwrap()[0].seq, moved_seq, "a refresh");
    reg.add_sink(DEFAULT_SINK).unwrap();
    while let Some(b) = reg.export(DEFAULT_SINK, 100, 499_999).unwrap() {
        reg.ack(DEFAULT_SINK, b.id()).unwrap();
    }
    assert_eq!(reg.apply(reg_op("aa", "bob", H0 + 3)).unwrap(), CHANGED);
    let b = reg.export(DEFAULT_SINK, 100, 499_999).unwrap();
    let body = b.map(|b| b.body().to_owned()).unwrap_or_default();
    assert!(
        body.contains("\"bob\"") && body.contains("\"aa\""),
        "the refresh reached the sink under bob: {body}"
    );
    assert_eq!(reg.history("aa").unwrap()[0].seq, moved_seq, "a refresh");
}

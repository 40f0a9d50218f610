//! Crash tests. The test binary re-executes itself as a child process (the
//! `#[ignore]`d `*_child` tests, which do nothing unless their environment
//! variable is set):
//!
//! - `crash_kill_recover`: a child applies a seeded mix of operations with
//!   `Durability::Immediate` (every fourth run `Eventual`, which also promises
//!   to survive a process crash), tiny log segments and constant checkpoints,
//!   printing `B <ops>` before and `A <outcomes>` after each acknowledged
//!   write. The parent SIGKILLs it after 20..300 ms, reopens the database,
//!   requires a clean `check()` and a `dump()` equal to the reference model
//!   after the acknowledged prefix (optionally plus the one write in flight),
//!   and goes on with the next child on the same database. Half of the
//!   verifications reopen a copy, so the next child itself recovers from the
//!   raw crash. `DEVREG_CRASH_KILLS=N` sets the number of kills (default 60),
//!   `DEVREG_CRASH_SEED=S` replays a run; `crash_soak` (ignored) does 2000
//!   (`DEVREG_CRASH_KILLS=1000 cargo test --test crash crash_soak -- --ignored`).
//!   One step in twelve is a feed step instead of a write: export the next
//!   batch of the default sink and, two times in three, ack it. The parent
//!   checks that an exported, unacknowledged batch is in flight again after
//!   the kill with the identical body, that an acknowledged batch never comes
//!   back, and that a batch id always carries the same body.
//! - `log_tail_cut_at_every_offset`: the log's last record is zeroed, filled
//!   with 0xFF from every byte offset inside it: recovery must cut exactly
//!   that record; the file truncated there must fail the open as Corrupt.
//! - `log_damage_before_tail_is_corrupt`: any damaged byte in an earlier
//!   record must fail the open with `Error::Corrupt`.
//!
//! Regression tests for library bugs this file found (all fixed):
//! - a log record ending exactly at a segment's end made the writer put the
//!   next records at offset 0 of the same file (`segment_filled_exactly_*`);
//! - a damaged length field before the tail was taken for a torn tail
//!   (`log_damaged_length_before_tail_is_corrupt`);
//! - an unfinished sled snapshot left by a kill blocked the open
//!   (`unfinished_sled_snapshot_does_not_block_open`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::workload::*;
use common::{assert_clean, copy_dir, Model, Rng};
use devreg::*;

const CRASH_ENV: &str = "DEVREG_CRASH_CHILD";
const TAIL_ENV: &str = "DEVREG_TAIL_CHILD";
const SEGMENT: u64 = 64 << 10;

/// Whether a killed child left a page merge cut short: one started
/// (`Mmerge_attempt`) above the last one committed (`Mdelta_merged`);
/// whether checkpoints had committed beside it (`Mpage_gen` above
/// the merge's generation, DESIGN.md 4.3); and whether it left a history
/// merge cut short (`Mhist_attempt` above `Mhist_merged`). A cut merge
/// needs nothing done at the open, so its mark stays until the next merge
/// of its kind commits: only an attempt above the one found after the
/// run before (`seen`, updated here) is this run's, else one kill would
/// be counted again at every later kill. A merge cut again under the same
/// generation (no checkpoint committed between) is not counted again: the
/// counts are at least what they say.
fn merge_cut_short(db: &Path, seen: &mut (u64, u64)) -> (bool, bool, bool) {
    let gen = |key: &[u8]| {
        devreg::internals::peek_record(db, key)
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes)
    };
    let attempt = gen(b"Mmerge_attempt");
    let cut = attempt > gen(b"Mdelta_merged") && attempt > seen.0;
    let hist_attempt = gen(b"Mhist_attempt");
    let history_cut = hist_attempt > gen(b"Mhist_merged") && hist_attempt > seen.1;
    *seen = (attempt, hist_attempt);
    (cut, cut && gen(b"Mpage_gen") > attempt, history_cut)
}

fn crash_config(db: &Path, eventual: bool) -> Config {
    Config::new(db)
        .durability(if eventual {
            Durability::Eventual
        } else {
            Durability::Immediate
        })
        .max_devices_per_person(CAP)
        .log_segment_bytes(SEGMENT)
        .max_log_segments(3)
        .checkpoint_interval_ms(2)
        // Every checkpoint is written in several chunks before its commit,
        // so kills land between chunks too.
        .checkpoint_chunk_bytes(2048)
        // Deltas pile up and merge into pages every few checkpoints.
        .page_delta_bytes(16 << 10)
        // A checkpoint is followed by a store compaction whenever sled's
        // files hold 3 times the live bytes: kills land inside them too,
        // and between their passes (the store closed and opened again).
        .compact_min_store_bytes(0)
        .compact_pass_bytes(16 << 10)
}

// ------------------------------------------------------------ crash child --

/// How long each store write sleeps in the runs that gather history merges.
const SLOW_STORE_WRITE_US: u64 = 2_000;

#[test]
#[ignore = "child process of the crash tests; does nothing unless DEVREG_CRASH_CHILD is set"]
fn crash_child() {
    let Ok(db) = std::env::var(CRASH_ENV) else {
        return;
    };
    let var = |k: &str| -> u64 { std::env::var(k).unwrap().parse().unwrap() };
    let (seed, run, eventual) = (
        var("DEVREG_CRASH_SEED"),
        var("DEVREG_CRASH_RUN"),
        var("DEVREG_CRASH_EVENTUAL") == 1,
    );
    // Every third run lets the log grow with the registry (DESIGN.md 5.2):
    // kills then land in a log longer than `max_log_segments`, and the
    // next open replays it.
    let mut config = crash_config(Path::new(&db), eventual);
    if run % 3 == 1 {
        config = config.log_bytes_per_device(512);
    }
    // Every third run, another: no compactions and deltas four times as
    // large, so that one checkpoint's deltas are a small part of their
    // bound. Merges then come from the disk bound with room for
    // checkpoints beside them (DESIGN.md 4.3), and kills land after such
    // a checkpoint, before the merge's commit (`Mpage_gen` above
    // `Mmerge_attempt`). With compactions after every checkpoint, a
    // checkpoint took a few hundred milliseconds and each one's deltas
    // passed the bounds alone: no merge ever left room beside it.
    if run % 3 == 2 {
        config = config
            .page_delta_bytes(256 << 10)
            .compact_min_store_bytes(u64::MAX);
    }
    // Every fifth run, deltas may gather on disk 32 times longer than
    // usual, far past the memory bound: merges set off by the history's
    // records in memory then fold those alone (DESIGN.md 4.3, "History
    // merges"), and kills land inside them (`Mhist_attempt` above
    // `Mhist_merged`).
    // Such a merge at this size lasts well under a millisecond, so these
    // runs also make every store write slow (`FaultPlan::slow`, a slow
    // disk): the kills then land inside history merges too.
    if run % 5 == 4 {
        config = config.delta_disk_bytes_per_device(1024);
        let plan = devreg::FaultPlan::new();
        plan.slow(&[devreg::IoOp::StoreWrite], SLOW_STORE_WRITE_US);
        config.faults = Some(plan);
    }
    let reg = Registry::open_with(config).unwrap();
    run_workload(&reg, seed, run, 0);
}

#[derive(Default, Debug)]
struct Tally {
    kills: u64,
    acked_writes: u64,
    acked_ops: u64,
    in_flight_applied: u64,
    in_flight_lost: u64,
    killed_before_open: u64,
    eventual_runs: u64,
    /// Kills that left `store.compact/` or `store.old/` (a compaction was running).
    mid_compaction: u64,
    mid_merge: u64,
    /// Of those, kills after a checkpoint had committed beside the merge.
    mid_merge_beside: u64,
    /// Kills inside a history merge (DESIGN.md 4.3).
    mid_history_merge: u64,
}

fn crash_loop(kills: u64) {
    let seed: u64 = std::env::var("DEVREG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash test seed {seed} (DEVREG_CRASH_SEED={seed} replays the workload)");
    let dir = KeepOnPanic(tempfile::tempdir().unwrap().keep());
    let db = dir.path().join("db");
    let mut rng = Rng::new(seed);
    let mut model = Model::new(CAP);
    let mut tally = Tally::default();
    let mut attempts_seen = (0u64, 0u64);
    let mut ledger = FeedLedger::default();
    let started = Instant::now();
    for run in 0..kills {
        let eventual = run % 4 == 3;
        tally.eventual_runs += u64::from(eventual);
        let child_seed = rng.next_u64();
        let mut child = spawn_child(
            "crash_child",
            &[
                (CRASH_ENV, db.display().to_string()),
                ("DEVREG_CRASH_SEED", child_seed.to_string()),
                ("DEVREG_CRASH_RUN", run.to_string()),
                ("DEVREG_CRASH_EVENTUAL", u64::from(eventual).to_string()),
            ],
        );
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let life = Duration::from_millis(20 + rng.below(281));
        let t0 = Instant::now();
        while t0.elapsed() < life {
            if let Some(status) = child.try_wait().unwrap() {
                let out = out_reader.join().unwrap();
                let err = err_reader.join().unwrap();
                panic!(
                    "run {run} (seed {seed}): the child exited by itself with {status}\n\
                     stderr:\n{err}\nstdout tail:\n{}",
                    &out[out.len().saturating_sub(3000)..]
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        tally.kills += 1;
        tally.mid_compaction +=
            u64::from(db.join("store.compact").exists() || db.join("store.old").exists());
        let out = out_reader.join().unwrap();
        let _ = err_reader.join().unwrap();
        let (opened, writes) = parse_child_output(&out);
        tally.killed_before_open += u64::from(!opened);

        let ctx = format!("run {run} (seed {seed})");
        let acked = acked_prefix(&ctx, &model, &writes);
        tally.acked_writes += acked.writes;
        tally.acked_ops += acked.ops;

        // Keep the raw crash state until this run is verified (kept on failure).
        let raw = dir.path().join("raw-crash");
        let _ = std::fs::remove_dir_all(&raw);
        copy_dir(&db, &raw);
        // Counted on the copy: sled's own recovery may rewrite its files
        // (not what they hold), and the next child must meet the raw crash.
        let (cut, beside, history_cut) = merge_cut_short(&raw, &mut attempts_seen);
        tally.mid_merge += u64::from(cut);
        tally.mid_merge_beside += u64::from(beside);
        tally.mid_history_merge += u64::from(history_cut);
        // Reopen (in place, or a copy so the next child recovers the raw crash).
        let verify_dir = if run % 2 == 1 {
            let copy = dir.path().join(format!("verify-{run}"));
            copy_dir(&db, &copy);
            copy
        } else {
            db.clone()
        };
        let reg = Registry::open_with(crash_config(&verify_dir, false))
            .unwrap_or_else(|e| panic!("{ctx}: reopen after SIGKILL: {e}"));
        assert_clean(&reg, &format!("{ctx} after SIGKILL"));
        let (next, in_flight) =
            match_recovered(&reg.dump(), &acked).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        model = next;
        match in_flight {
            InFlight::Applied => tally.in_flight_applied += 1,
            InFlight::Lost => tally.in_flight_lost += 1,
            InFlight::None => {}
        }
        assert_eq!(reg.stats(), model.stats(), "run {run}: stats");
        ledger.verify(
            &format!("run {run} (seed {seed})"),
            &parse_feed_events(&out),
            &reg,
        );
        drop(reg);
        if verify_dir != db {
            std::fs::remove_dir_all(&verify_dir).unwrap();
        }
    }
    // A last clean open of the database the children left behind.
    let reg = Registry::open_with(crash_config(&db, false)).unwrap();
    assert_clean(&reg, "the final reopen");
    assert_eq!(reg.dump(), model.dump(), "the final reopen");
    println!(
        "crash test: {} kills survived in {:.1?} ({} writes / {} ops acknowledged, \
         in-flight write applied {} / lost {}, {} kills before the open finished, \
         {} runs in Eventual mode, {} kills inside a store compaction, {} inside a page \
         merge ({} after a checkpoint beside it), {} inside a history merge, {} devices at the \
         end; feed: {} exports, {} acks, {} in-flight batches re-exported identical after \
         a kill)",
        tally.kills,
        started.elapsed(),
        tally.acked_writes,
        tally.acked_ops,
        tally.in_flight_applied,
        tally.in_flight_lost,
        tally.killed_before_open,
        tally.eventual_runs,
        tally.mid_compaction,
        tally.mid_merge,
        tally.mid_merge_beside,
        tally.mid_history_merge,
        model.devices.len(),
        ledger.exports,
        ledger.acks,
        ledger.reexported_identical
    );
    assert_eq!(tally.kills, kills);
    // About one kill in ten lands there (18 of 150 in the first soak,
    // DESIGN.md 17: the runs of `crash_child` that leave room beside a
    // merge); a soak that never did tested less than it says.
    if kills >= 150 {
        assert!(
            tally.mid_merge_beside > 0,
            "no kill landed after a checkpoint beside a merge: {tally:?}"
        );
    }
    assert!(
        tally.acked_writes > kills,
        "the children acknowledged too little work to mean anything: {tally:?}"
    );
}

#[test]
fn crash_kill_recover() {
    let kills = std::env::var("DEVREG_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    crash_loop(kills);
}

#[test]
#[ignore = "long: thousands of kills; run with --ignored"]
fn crash_soak() {
    let kills = std::env::var("DEVREG_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    crash_loop(kills);
}

// -------------------------------------------------------------- log tail --

fn tail_config(db: &Path) -> Config {
    Config::new(db)
        .max_devices_per_person(CAP)
        .log_segment_bytes(SEGMENT)
        .max_log_segments(3)
        // No checkpoint may cover the records: the log alone holds them.
        .checkpoint_interval_ms(3_600_000)
}

fn reg_op(token: &str, person: Option<&str>, seen_ms: u64) -> Op {
    Op::Register(Register {
        token: token.into(),
        platform: Platform::Android,
        person: person.map(Into::into),
        seen_ms,
        attributes: None,
    })
}

/// K operations, each changing the registry (so each is one log record).
fn tail_ops() -> Vec<Op> {
    let mut attrs = Attributes::new();
    attrs.insert("app_version".into(), "2.0".into());
    vec![
        reg_op(&"ab".repeat(32), Some("ann"), H0),
        reg_op("f1:APA91b-one", Some("ann"), H0 + 1),
        Op::Register(Register {
            token: "f2:APA91b-two".into(),
            platform: Platform::Ios,
            person: Some("bob".into()),
            seen_ms: H0 + 2,
            attributes: Some(attrs),
        }),
        Op::Touch {
            token: "f1:APA91b-one".into(),
            seen_ms: H0 + HOUR,
        },
        Op::Merge {
            primary: "bob".into(),
            secondary: "ann".into(),
        },
        Op::Rotate {
            old_token: "f2:APA91b-two".into(),
            new_token: "f3:APA91b-three".into(),
            seen_ms: H0 + 5,
        },
        Op::Logout {
            token: "ab".repeat(32),
            policy: LogoutPolicy::Keep,
        },
        reg_op("t8", Some("cy"), H0 + 8),
        reg_op("t9", None, H0 + 9),
    ]
}

#[test]
#[ignore = "child process of the log tail tests; does nothing unless DEVREG_TAIL_CHILD is set"]
fn tail_child() {
    let Ok(db) = std::env::var(TAIL_ENV) else {
        return;
    };
    let reg = Registry::open_with(tail_config(Path::new(&db))).unwrap();
    for op in tail_ops() {
        let _ = reg.apply(op).unwrap();
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{MARK}done").unwrap();
    out.flush().unwrap();
    // Wait to be killed: dropping the registry would write a checkpoint.
    std::thread::sleep(Duration::from_secs(120));
    panic!("tail_child was not killed");
}

/// Runs the tail child into `db` and SIGKILLs it once its writes are acknowledged.
fn killed_db(db: &Path) {
    let mut child = spawn_child("tail_child", &[(TAIL_ENV, db.display().to_string())]);
    let stdout = child.stdout.take().unwrap();
    let mut done = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains(&format!("{MARK}done")) {
            done = true;
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    if !done {
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("tail child ended without finishing ({status}):\n{err}");
    }
}

fn first_segment(db: &Path) -> PathBuf {
    db.join("log").join(format!("{:020}.wal", 0))
}

/// Walks the record headers of segment 0 from offset 0: `(offset, length)`
/// of each record, header included (see src/log/record.rs).
fn records(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 24 <= segment.len() {
        let len = u32::from_le_bytes(segment[off..off + 4].try_into().unwrap()) as usize;
        let lsn = u64::from_le_bytes(segment[off + 8..off + 16].try_into().unwrap());
        let (version, kind) = (segment[off + 16], segment[off + 17]);
        if len == 0 || lsn != off as u64 || version != 1 || kind != 1 {
            break;
        }
        out.push((off, 24 + len));
        off += 24 + len;
    }
    out
}

fn model_of(ops: &[Op]) -> Model {
    let mut m = Model::new(CAP);
    for op in ops {
        let _ = m.apply(op);
    }
    m
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    Zero,
    Ones,
    Truncate,
}

#[test]
fn log_tail_cut_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    killed_db(&db);
    let ops = tail_ops();
    let k = ops.len();
    let seg = std::fs::read(first_segment(&db)).unwrap();
    let recs = records(&seg);
    assert_eq!(recs.len(), k, "one log record per operation: {recs:?}");
    let (start, len) = recs[k - 1];
    let full = model_of(&ops);
    let cut = model_of(&ops[..k - 1]);
    {
        // Sanity: the intact copy recovers all K operations from the log.
        let case = dir.path().join("intact");
        copy_dir(&db, &case);
        let reg = Registry::open_with(tail_config(&case)).unwrap();
        assert_eq!(reg.dump(), full.dump());
        assert_clean(&reg, "intact log");
    }
    let mut opens = 0;
    for off in start..start + len {
        for mode in [Cut::Zero, Cut::Ones, Cut::Truncate] {
            let ctx = format!(
                "last record at {start}..{}, {mode:?} from {off}",
                start + len
            );
            let case = dir.path().join(format!("cut-{off}-{mode:?}"));
            copy_dir(&db, &case);
            let path = first_segment(&case);
            let mut bytes = std::fs::read(&path).unwrap();
            let changed = match mode {
                Cut::Zero | Cut::Ones => {
                    let fill = if matches!(mode, Cut::Zero) { 0 } else { 0xFF };
                    let before = bytes.clone();
                    bytes[off..start + len].fill(fill);
                    std::fs::write(&path, &bytes).unwrap();
                    before != bytes
                }
                Cut::Truncate => {
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.set_len(off as u64).unwrap();
                    true
                }
            };
            let want = if changed { &cut } else { &full };
            if matches!(mode, Cut::Truncate) {
                // Segments are created full length: a short file is damage,
                // never a torn write (reliability finding 7).
                match Registry::open_with(tail_config(&case)) {
                    Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("truncated")),
                    Err(e) => panic!("{ctx}: unexpected error {e}"),
                    Ok(_) => panic!("{ctx}: a truncated segment opened"),
                }
                opens += 1;
                std::fs::remove_dir_all(&case).unwrap();
                continue;
            }
            let reg = Registry::open_with(tail_config(&case))
                .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
            opens += 1;
            assert_eq!(reg.dump(), want.dump(), "{ctx}");
            assert_clean(&reg, &ctx);
            if off % 4 == 0 {
                // The log goes on after the cut: a new write lands and survives.
                let extra = reg_op("after-cut", Some("dee"), H0 + 50);
                let mut want = want.clone();
                let _ = want.apply(&extra);
                let _ = reg.apply(extra).unwrap();
                drop(reg);
                let reg = Registry::open_with(tail_config(&case))
                    .unwrap_or_else(|e| panic!("{ctx}: second open failed: {e}"));
                assert_eq!(reg.dump(), want.dump(), "{ctx}, after a new write");
                assert_clean(&reg, &ctx);
            }
            std::fs::remove_dir_all(&case).unwrap();
        }
    }
    println!("log tail: cut the last record ({len} bytes) at every offset, {opens} recoveries");
}

/// Flips each chosen byte (offset within the record) of the first record and
/// of one in the middle, in turn; returns every case that did not fail the
/// open with `Error::Corrupt`, and how many were tried.
fn damage_before_tail(bytes_in_record: impl Fn(usize) -> bool) -> (Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    killed_db(&db);
    let seg = std::fs::read(first_segment(&db)).unwrap();
    let recs = records(&seg);
    assert_eq!(recs.len(), tail_ops().len());
    let mut bad = Vec::new();
    let mut tried = 0;
    for &(start, len) in [recs[0], recs[recs.len() / 2]].iter() {
        for off in (start..start + len).filter(|off| bytes_in_record(off - start)) {
            let case = dir.path().join(format!("flip-{off}"));
            copy_dir(&db, &case);
            let mut bytes = seg.clone();
            bytes[off] ^= 0xFF;
            std::fs::write(first_segment(&case), &bytes).unwrap();
            tried += 1;
            match Registry::open_with(tail_config(&case)) {
                Err(Error::Corrupt { .. }) => {}
                Err(e) => bad.push(format!(
                    "record {start}..{}, byte {} of it: wrong error {e:?}",
                    start + len,
                    off - start
                )),
                Ok(reg) => bad.push(format!(
                    "record {start}..{}, byte {} of it: opened with {} of {} devices \
                     instead of failing",
                    start + len,
                    off - start,
                    reg.dump().len(),
                    model_of(&tail_ops()).devices.len()
                )),
            }
            std::fs::remove_dir_all(&case).unwrap();
        }
    }
    (bad, tried)
}

/// Damage to any byte but the length field of an earlier record: Corrupt.
#[test]
fn log_damage_before_tail_is_corrupt() {
    let (bad, tried) = damage_before_tail(|i| i >= 4);
    assert!(
        bad.is_empty(),
        "{} of {tried} single-byte damages before the log's tail did not give Error::Corrupt:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// BUG: damage to the 4-byte length field of a record that is not the last
/// one silently cuts the log there (open succeeds, every later acknowledged
/// record is dropped) instead of failing with `Error::Corrupt`. Recovery
/// only looks for a valid record at the damaged header's claimed next
/// position and at the next segment's start; with a damaged length neither
/// is valid, so it takes the damage for a torn tail. Records carry their own
/// LSN, so a scan of the rest of the segment for any valid record at its
/// own position would tell damage from a torn tail.
#[test]
fn log_damaged_length_before_tail_is_corrupt() {
    let (bad, tried) = damage_before_tail(|i| i < 4);
    assert!(
        bad.is_empty(),
        "{} of {tried} single-byte damages to a length field before the log's tail did not \
         give Error::Corrupt:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

// ------------------------------------- a record ending exactly at a segment end --

const FILL_ENV: &str = "DEVREG_FILL_CHILD";

fn fill_config(db: &Path) -> Config {
    Config::new(db)
        .max_devices_per_person(CAP)
        .log_segment_bytes(SEGMENT)
        .max_log_segments(3)
        .checkpoint_interval_ms(3_600_000)
}

/// Where the valid records of segment 0 end.
fn segment0_end(db: &Path) -> u64 {
    let seg = std::fs::read(first_segment(db)).unwrap();
    records(&seg)
        .last()
        .map_or(0, |&(off, len)| (off + len) as u64)
}

/// Registers new tokens sized so that the last record ends exactly at the
/// end of log segment 0. Returns the operations applied.
fn fill_segment_exactly(reg: &Registry, db: &Path) -> Vec<Op> {
    let op = |i: usize, len: usize| {
        let mut token = format!("fill{i:05}-");
        while token.len() < len {
            token.push('x');
        }
        reg_op(&token, None, 5)
    };
    let mut ops = Vec::new();
    // Measure the record size of a register with an `len`-byte token.
    ops.push(op(0, 100));
    let _ = reg.apply(ops[0].clone()).unwrap();
    let overhead = segment0_end(db) - 100;
    loop {
        let room = SEGMENT - segment0_end(db);
        let last = room - overhead <= 200;
        let len = if last {
            room - overhead
        } else {
            (room - overhead - 60).min(200)
        };
        let next = op(ops.len(), len as usize);
        let _ = reg.apply(next.clone()).unwrap();
        ops.push(next);
        if last {
            break;
        }
    }
    assert_eq!(
        segment0_end(db),
        SEGMENT,
        "the last record ends exactly at the end of segment 0"
    );
    ops
}

fn after_fill_ops(n: usize) -> Vec<Op> {
    (0..n)
        .map(|i| reg_op(&format!("after-{i}"), None, H0 + i as u64))
        .collect()
}

#[test]
#[ignore = "child process of segment_filled_exactly_then_killed; does nothing unless DEVREG_FILL_CHILD is set"]
fn fill_child() {
    let Ok(db) = std::env::var(FILL_ENV) else {
        return;
    };
    let db = PathBuf::from(db);
    let reg = Registry::open_with(fill_config(&db)).unwrap();
    let mut ops = fill_segment_exactly(&reg, &db);
    for op in after_fill_ops(10) {
        let _ = reg.apply(op.clone()).unwrap();
        ops.push(op);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{MARK}ops {}", serde_json::to_string(&ops).unwrap()).unwrap();
    writeln!(out, "{MARK}done").unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
    panic!("fill_child was not killed");
}

/// BUG (found by `crash_kill_recover`): when a log record ends exactly at the
/// end of a segment, `LogWriter::append` does not roll (it rolls only when
/// `offset + need > segment_bytes`), so the next records are written at
/// offset 0 of the *same* file with LSNs of the next segment, overwriting the
/// segment's start. Recovery reads the next segment's file, which does not
/// have them: every write acknowledged after that point is lost on a crash.
#[test]
fn segment_filled_exactly_then_killed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut child = spawn_child("fill_child", &[(FILL_ENV, db.display().to_string())]);
    let stdout = child.stdout.take().unwrap();
    let mut ops: Option<Vec<Op>> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(json) = line.strip_prefix(&format!("{MARK}ops ")) {
            ops = Some(serde_json::from_str(json).unwrap());
        }
        if line.contains(&format!("{MARK}done")) {
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let ops = ops.unwrap_or_else(|| {
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("fill child ended without finishing ({status}):\n{err}")
    });
    let reg = Registry::open_with(fill_config(&db)).unwrap();
    let want = model_of(&ops);
    let got = reg.dump();
    assert!(
        got == want.dump(),
        "{} acknowledged operations, {} devices expected, {} recovered; lost or wrong:\n{}",
        ops.len(),
        want.devices.len(),
        got.len(),
        describe_diff(&got, &want.dump())
    );
    assert_clean(&reg, "after the kill");
}

/// The same bug without a crash: after the exact fill, keep writing until the
/// log rolls. The writer's end position then moves backwards (to the start
/// of the segment it already used), and later writes fail or go missing.
#[test]
fn segment_filled_exactly_then_rolled() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open_with(fill_config(&db)).unwrap();
    let mut ops = fill_segment_exactly(&reg, &db);
    for op in after_fill_ops(3000) {
        let _ = reg
            .apply(op.clone())
            .unwrap_or_else(|e| panic!("write {} after the exact fill: {e}", ops.len()));
        ops.push(op);
    }
    let want = model_of(&ops);
    assert_eq!(reg.dump(), want.dump());
    assert_clean(&reg, "after the writes");
    drop(reg);
    let reg = Registry::open_with(fill_config(&db)).unwrap();
    assert_eq!(reg.dump(), want.dump(), "after a reopen");
    assert_clean(&reg, "after a reopen");
}

/// BUG (found by `crash_kill_recover`, with the segment bug patched out): a
/// SIGKILL while sled 0.34.7 writes a snapshot leaves an empty
/// `store/snap.<lsn>.generating` file. sled takes it for the newest snapshot
/// and refuses to open ("Read corrupted data at file offset None", as
/// `Error::Store`), so the registry cannot be opened at all after that
/// crash. (sled issues #1527 and #1533; deleting the leftover `.generating`
/// file, which is by definition an unfinished snapshot, makes it open.)
/// This test recreates the file the kill leaves behind.
#[test]
fn unfinished_sled_snapshot_does_not_block_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let ops = tail_ops();
    {
        let reg = Registry::open_with(tail_config(&db)).unwrap();
        for op in &ops {
            let _ = reg.apply(op.clone()).unwrap();
        }
        reg.checkpoint().unwrap();
    }
    let store = db.join("store");
    let newest = std::fs::read_dir(&store)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let hex = name.strip_prefix("snap.")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .max()
        .unwrap_or(0);
    let leftover = store.join(format!("snap.{:016X}.generating", newest + 100));
    std::fs::File::create(&leftover).unwrap();
    let reg = Registry::open_with(tail_config(&db))
        .unwrap_or_else(|e| panic!("open with an unfinished sled snapshot present: {e:?}"));
    assert_eq!(reg.dump(), model_of(&ops).dump());
    assert_clean(&reg, "after the unfinished snapshot");
}

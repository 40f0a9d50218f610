//! Regression tests for the reliability audit (issue 11): each test here
//! failed before its fix. Findings that need a fault-injecting filesystem or
//! a child process live in `tests/faults.rs`, `tests/crash.rs` and the I/O
//! fault sweep; the ones that a public API call can provoke are here.

mod common;

use std::collections::BTreeMap;

use common::{assert_clean, copy_dir};
use devreg::*;

const T0: u64 = 1_700_000_000_000;

/// About 20 KB of attributes as JSON: 20 values of 1,000 bytes.
fn big_attributes(i: usize) -> Attributes {
    let mut a = BTreeMap::new();
    for k in 0..20 {
        a.insert(format!("a{k:02}"), format!("{i:06}{}", "x".repeat(994)));
    }
    a.into_iter().collect()
}

/// Finding 1: a sink's dead letters were one value, checkpointed as a lone
/// version byte once it outgrew the codec's 32 MiB limit, and the database
/// never opened again. 1,800 letters of ~21 KB each are ~38 MB.
#[test]
fn many_large_dead_letters_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let n = 1_800;
    {
        let reg = Registry::open_with(Config::new(&path).durability(Durability::Eventual)).unwrap();
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let ops = chunk
                .iter()
                .map(|&i| {
                    Op::Register(Register {
                        token: format!("{i:064x}"),
                        platform: Platform::Ios,
                        person: Some(format!("p{i}")),
                        seen_ms: T0 + i as u64,
                        attributes: Some(big_attributes(i)),
                    })
                })
                .collect();
            reg.apply_batch(ops).unwrap();
        }
        // Customer.io rejects every operation (a 207 naming all of them).
        while let Some(b) = reg.export(DEFAULT_SINK, 1000, 499_999).unwrap() {
            let failed: Vec<(u32, String)> = (0..b.len() as u32)
                .map(|i| (i, "rejected".to_owned()))
                .collect();
            reg.nack(DEFAULT_SINK, b.id(), &failed).unwrap();
        }
        assert_eq!(reg.dead_letters(DEFAULT_SINK).unwrap().len(), n);
        reg.checkpoint().unwrap();
    }
    let reg = Registry::open(&path).unwrap();
    let dead = reg.dead_letters(DEFAULT_SINK).unwrap();
    assert_eq!(dead.len(), n);
    assert!(dead.iter().all(|d| d.reason == "rejected"));
    assert_clean(&reg, "after reopen with many dead letters");
    // Requeue empties the list, durably.
    assert_eq!(reg.requeue(DEFAULT_SINK).unwrap(), n as u64);
    reg.checkpoint().unwrap();
    drop(reg);
    let reg = Registry::open(&path).unwrap();
    assert!(reg.dead_letters(DEFAULT_SINK).unwrap().is_empty());
    assert_eq!(reg.sinks()[0].pending, n as u64);
    assert_clean(&reg, "after requeue and reopen");
}

const EIO: i32 = 5;

/// An `Eventual` registry whose I/O asks a fresh fault plan.
fn open_eventual_with_plan(path: &std::path::Path) -> (Registry, std::sync::Arc<FaultPlan>) {
    let plan = FaultPlan::new();
    let config = Config::new(path)
        .durability(Durability::Eventual)
        .fault_plan(plan.clone());
    (Registry::open_with(config).unwrap(), plan)
}

fn reg_op(i: usize) -> Op {
    Op::Register(Register {
        token: format!("tok{i:05}"),
        platform: Platform::Android,
        person: Some(format!("p{}", i % 7)),
        seen_ms: T0 + i as u64,
        attributes: None,
    })
}

/// Opens a database, applies `n` registers, and closes it with every
/// checkpoint failing, so all `n` stay in the log only.
fn db_with_log_only(path: &std::path::Path, n: usize) -> Vec<Device> {
    let plan = FaultPlan::new();
    let reg = Registry::open_with(Config::new(path).fault_plan(plan.clone())).unwrap();
    plan.arm(&[IoOp::StoreWrite], 1, EIO, true);
    for i in 0..n {
        let _ = reg.apply(reg_op(i)).unwrap();
    }
    let devices = reg.dump();
    drop(reg);
    assert!(
        plan.fired() > 0,
        "the final checkpoint was attempted and failed"
    );
    devices
}

/// Finding 2: an EIO while recovery reads the log was taken for the end of
/// the log: acknowledged writes after it were cut, `check` was clean, and
/// the next write overwrote them. Now every read error fails the open.
#[test]
fn read_error_during_recovery_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let want = db_with_log_only(&path, 300);
    let mut failed_opens = 0;
    for nth in [1, 2, 3, 50, 299, 598] {
        // A verifying open checkpoints at close: work on a copy each time.
        let case = dir.path().join(format!("case{nth}"));
        copy_dir(&path, &case);
        let plan = FaultPlan::new();
        plan.arm(&[IoOp::Pread], nth, EIO, false);
        match Registry::open_with(Config::new(&case).fault_plan(plan.clone())) {
            Err(Error::Io { context, source }) => {
                assert_eq!(source.raw_os_error(), Some(EIO));
                assert!(context.contains("log segment"), "{context}");
                failed_opens += 1;
            }
            Err(e) => panic!("read {nth}: unexpected error {e}"),
            Ok(reg) => {
                // Only possible when the fault hit no read at all.
                assert_eq!(
                    plan.fired(),
                    0,
                    "read {nth} of {} failed but the open went on",
                    plan.calls()
                );
                drop(reg);
            }
        }
        // Nothing was lost or cut by the failed open.
        let reg = Registry::open(&case).unwrap();
        assert_eq!(reg.dump(), want, "after failing read {nth}");
        drop(reg);
    }
    assert_eq!(failed_opens, 6);
}

/// Finding 4: `shutdown` looked at the failure flag before it waited for
/// the checkpoint in flight, then took a new snapshot (whose dirty set the
/// failed one had already drained) and freed the log: an acknowledged
/// write was lost. The failed checkpoint is slowed down to make the race
/// certain.
#[test]
fn no_checkpoint_after_a_failed_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let plan = FaultPlan::new();
    let config = Config::new(&path)
        .checkpoint_log_bytes(1)
        .fault_plan(plan.clone());
    let reg = Registry::open_with(config).unwrap();
    // The next checkpoint write fails once, after 300 ms; later ones succeed
    // (as a second fsync does on Linux after the first reported an error).
    plan.set_delay_ms(300);
    plan.arm(&[IoOp::StoreWrite], 1, EIO, false);
    let _ = reg.apply(reg_op(1)).unwrap();
    let want = reg.dump();
    // Close while that checkpoint is still running.
    drop(reg);
    assert_eq!(plan.fired(), 1);
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.dump(), want, "the acknowledged write survives");
    assert_clean(&reg, "after a failed checkpoint");
}

/// Finding 5: `check` wrote the kept log buffer out after fail-stop, which
/// could bring back a write whose caller was told it failed.
#[test]
fn check_after_fail_stop_does_no_io() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (reg, plan) = open_eventual_with_plan(&path);
    let _ = reg.apply(reg_op(0)).unwrap();
    plan.arm(&[IoOp::Pwrite], 1, EIO, false);
    assert!(reg.apply(reg_op(1)).is_err(), "the write fails");
    assert!(matches!(reg.check(), Err(Error::Failed(_))));
    drop(reg);
    let reg = Registry::open(&path).unwrap();
    let tokens: Vec<String> = reg.dump().into_iter().map(|d| d.token).collect();
    assert_eq!(tokens, ["tok00000"], "the failed write never comes back");
}

fn only_segment(path: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(path.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().unwrap()
}

/// Finding 7: a missing or zero-length segment where the checkpoint says
/// the log continues made the writes since the checkpoint vanish, and
/// `check` was clean. Now the open fails with Corrupt.
#[test]
fn missing_or_empty_log_segment_is_corrupt() {
    for damage in ["remove", "empty", "shorten"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        db_with_log_only(&path, 20);
        let seg = only_segment(&path);
        match damage {
            "remove" => std::fs::remove_file(&seg).unwrap(),
            "empty" => std::fs::write(&seg, b"").unwrap(),
            _ => {
                let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
                f.set_len(f.metadata().unwrap().len() / 2).unwrap();
            }
        }
        match Registry::open(&path) {
            Err(Error::Corrupt { location, .. }) => assert!(location.contains("log segment")),
            Err(e) => panic!("{damage}: unexpected error {e}"),
            Ok(reg) => panic!("{damage}: opened with {} devices", reg.dump().len()),
        }
    }
}

/// Finding 8: a record with a valid checksum at its own position but a
/// newer log version (or an unknown kind) was cut as a torn tail and then
/// overwritten. Now the open says UnsupportedFormat and changes nothing.
#[test]
fn record_from_a_newer_version_is_unsupported_not_cut() {
    for (at, value) in [(16usize, 2u8), (17, 9)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        db_with_log_only(&path, 3);
        let seg = only_segment(&path);
        let mut bytes = std::fs::read(&seg).unwrap();
        let (last, _) = *record_spans(&bytes).last().unwrap();
        bytes[last + at] = value;
        let len = u32::from_le_bytes(bytes[last..last + 4].try_into().unwrap()) as usize;
        let crc = crc32fast::hash(&bytes[last + 8..last + 24 + len]);
        bytes[last + 4..last + 8].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&seg, &bytes).unwrap();
        match Registry::open(&path) {
            Err(Error::UnsupportedFormat { found, .. }) => assert_eq!(found, u32::from(value)),
            Err(e) => panic!("byte {at} = {value}: unexpected error {e}"),
            Ok(reg) => panic!(
                "byte {at} = {value}: opened with {} devices",
                reg.dump().len()
            ),
        }
        assert_eq!(std::fs::read(&seg).unwrap(), bytes, "the log is untouched");
    }
}

/// Finding 3: import batched 10,000 lines per atomic write whatever their
/// size; 1,000 lines of ~21 KB (valid) outgrew a 16 MiB log record and the
/// whole import failed with nothing applied. Batches are now bounded by
/// encoded bytes too.
#[test]
fn import_of_large_lines_is_batched_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let file = dir.path().join("events.jsonl");
    let n = 1_000;
    let mut text = String::new();
    for i in 0..n {
        let line = serde_json::json!({
            "op": "register", "token": format!("{i:064x}"), "platform": "ios",
            "person": format!("p{i}"), "seen_ms": T0 + i as u64,
            "attributes": big_attributes(i),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    assert!(text.len() > 16 << 20, "{} bytes", text.len());
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(&db)
        .args(["import", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["imported"], n);
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.stats().devices, n as u64);
    assert_eq!(
        reg.device(&format!("{:064x}", n - 1)).unwrap().attributes,
        big_attributes(n - 1)
    );
}

/// Finding 6: in eventual mode the final fdatasync at close failed after the
/// CLI had printed its success, and the exit code was 0. `close` returns it.
#[test]
fn close_reports_a_failed_final_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (reg, plan) = open_eventual_with_plan(&path);
    let _ = reg.apply(reg_op(0)).unwrap();
    plan.arm(&[IoOp::Fdatasync], 1, EIO, false);
    let other = reg.clone();
    match reg.close() {
        Err(Error::Failed(why)) => assert!(why.contains("syncing log segment"), "{why}"),
        r => panic!("close gave {r:?}"),
    }
    assert_eq!(plan.fired(), 1);
    // Every clone is closed too.
    assert!(other.apply(reg_op(1)).is_err());
    drop(other);
    // A clean close is Ok.
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.dump().len(), 1);
    reg.close().unwrap();
}

/// Finding 14: a panic in the writer leader left the state half-applied
/// and the failure flag unset. Now the registry fails stop.
#[test]
fn a_panic_in_the_writer_fails_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let plan = FaultPlan::new();
    let reg = Registry::open_with(Config::new(&path).fault_plan(plan.clone())).unwrap();
    let _ = reg.apply(reg_op(0)).unwrap();
    plan.panic_in_apply();
    let batch = vec![reg_op(1), reg_op(2)];
    assert!(matches!(reg.apply_batch(batch), Err(Error::Failed(_))));
    assert!(matches!(reg.apply(reg_op(3)), Err(Error::Failed(_))));
    assert!(reg.close().is_err());
    // The panicked group was logged (Immediate) but never acknowledged:
    // either outcome is allowed; what was acknowledged is there.
    let reg = Registry::open(&path).unwrap();
    let tokens: Vec<String> = reg.dump().into_iter().map(|d| d.token).collect();
    assert!(tokens.starts_with(&["tok00000".to_owned()]), "{tokens:?}");
    assert!(!tokens.contains(&"tok00003".to_owned()));
    assert_clean(&reg, "after a panic");
}

/// Finding 16: the state was applied before the log write, so a reader
/// could see a write that a crash would take back. In Immediate mode a
/// write is visible only after its fdatasync: when that fails, no reader
/// ever saw it.
#[test]
fn immediate_writes_are_invisible_until_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let plan = FaultPlan::new();
    let reg = Registry::open_with(Config::new(&path).fault_plan(plan.clone())).unwrap();
    let _ = reg.apply(reg_op(0)).unwrap();
    // The next fdatasync stalls 300 ms, then fails.
    plan.set_delay_ms(300);
    plan.arm(&[IoOp::Fdatasync], 1, EIO, false);
    let writer = {
        let reg = reg.clone();
        std::thread::spawn(move || reg.apply(reg_op(1)))
    };
    let mut seen = false;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(250) {
        seen |= reg.device("tok00001").is_some();
    }
    assert!(writer.join().unwrap().is_err(), "the write failed");
    assert_eq!(plan.fired(), 1);
    assert!(!seen, "a reader saw a write before it was durable");
    assert!(reg.device("tok00001").is_none());
}

/// Finding 9: `--db` made whatever it named owner-only before checking it:
/// a shared 1777 directory lost its sticky bit, a regular file became 0700.
#[test]
fn a_path_that_is_no_database_is_refused_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("someone-else"), b"x").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"x").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (path, mode) in [(&shared, 0o1777), (&file, 0o644)] {
        match Registry::open(path) {
            Err(Error::Invalid { field, reason }) => {
                assert_eq!(field, "path");
                assert!(reason.contains(&path.display().to_string()), "{reason}");
            }
            other => panic!("{}: {:?}", path.display(), other.map(|_| ())),
        }
        let now = std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(now, mode, "{} was changed", path.display());
    }
    assert!(!shared.join("store").exists() && !shared.join("log").exists());
    // An empty directory and an absent path are fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Registry::open(&empty).unwrap().close().unwrap();
    Registry::open(dir.path().join("new/nested/db"))
        .unwrap()
        .close()
        .unwrap();
    // And an existing database opens again.
    Registry::open(&empty).unwrap().close().unwrap();
}

/// Finding 12: new directories (the database, log/, and the parent of a
/// new database) were never fsynced, so a power cut could lose them.
#[test]
fn new_directories_are_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    plan.arm(&[IoOp::Fsync], 0, EIO, false);
    let path = dir.path().join("a/db");
    let reg = Registry::open_with(Config::new(&path).fault_plan(plan.clone())).unwrap();
    // a/ and its parent, db/ and a/, log/ and db/, db/ after sled made
    // store/, the first segment's file and log/.
    assert!(plan.calls() >= 8, "{} fsyncs", plan.calls());
    drop(reg);
    // The first fsyncs of a new database are of the directories it creates
    // and of their parents; each one's failure fails the open.
    let mut synced = Vec::new();
    for nth in 1..=4 {
        let path = dir.path().join(format!("b{nth}/db"));
        let plan = FaultPlan::new();
        plan.arm(&[IoOp::Fsync], nth, EIO, false);
        match Registry::open_with(Config::new(&path).fault_plan(plan.clone())) {
            Err(Error::Io { source, context }) => {
                assert_eq!(source.raw_os_error(), Some(EIO));
                let b = dir.path().join(format!("b{nth}"));
                let named = [
                    dir.path().to_owned(),
                    b.clone(),
                    b.join("db"),
                    b.join("db/log"),
                ]
                .into_iter()
                .position(|d| context == format!("syncing directory {}", d.display()));
                synced.push(named);
            }
            other => panic!("fsync {nth}: {:?}", other.map(|_| ())),
        }
    }
    // parent, b, b, db; then the new store's files (`store.new/`, before it
    // is renamed into place), db, db and log (`tests/engine.rs` and
    // `powerloss_cut_while_the_store_is_created` cover those).
    assert_eq!(
        synced,
        [Some(0), Some(1), Some(1), Some(2)],
        "which directory each fsync was of"
    );
}

/// Finding 15: a second open got sled's raw lock text (and could delete the
/// first one's unfinished sled snapshot before failing to lock).
#[test]
fn a_second_open_is_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let reg = Registry::open(&path).unwrap();
    let fake = path.join("store").join("snap.0000000000000001.generating");
    std::fs::write(&fake, b"in progress").unwrap();
    match Registry::open(&path) {
        Err(Error::Locked { path: p }) => assert_eq!(p, path),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(
        fake.exists(),
        "the holder's unfinished snapshot was deleted"
    );
    std::fs::remove_file(&fake).unwrap();
    drop(reg);
    Registry::open(&path).unwrap();
}

/// Offsets and lengths of the records in a segment, by walking the lengths.
fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 24 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((off, 24 + len));
        off += 24 + len;
    }
    out
}

/// Finding 11: one group is one write of several records; a power cut can
/// keep a later page and lose an earlier one. None of those records was
/// acknowledged as durable, yet the open failed with Corrupt. Records now
/// carry a sync mark: only a record written after everything before it was
/// durable proves damage; otherwise the torn write is cut, and its stale
/// records are cleared so a later recovery never replays them after newer
/// records.
#[test]
fn torn_unsynced_write_is_cut_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let plan = FaultPlan::new();
    let config = |plan: &std::sync::Arc<FaultPlan>| {
        Config::new(&path)
            .durability(Durability::Eventual)
            .eventual_sync_interval_ms(3_600_000)
            .fault_plan(plan.clone())
    };
    {
        let reg = Registry::open_with(config(&plan)).unwrap();
        plan.arm(&[IoOp::StoreWrite], 1, EIO, true);
        for i in 0..4 {
            let _ = reg.apply(reg_op(i)).unwrap();
        }
    }
    // The power cut lost the page of record 1 but kept records 2 and 3.
    let seg = only_segment(&path);
    let mut bytes = std::fs::read(&seg).unwrap();
    let spans = record_spans(&bytes);
    assert_eq!(spans.len(), 4, "{spans:?}");
    let (r1, len1) = spans[1];
    bytes[r1..r1 + len1].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let tokens =
        |reg: &Registry| -> Vec<String> { reg.dump().into_iter().map(|d| d.token).collect() };
    {
        let plan = FaultPlan::new();
        let reg = Registry::open_with(config(&plan)).expect("a torn unsynced write recovers");
        assert_eq!(tokens(&reg), ["tok00000"]);
        // A new record of the same size ends where the stale record 2 was.
        plan.arm(&[IoOp::StoreWrite], 1, EIO, true);
        let op = Op::Register(Register {
            token: "tok00009".into(),
            platform: Platform::Android,
            person: Some("p1".into()),
            seen_ms: T0 + 1,
            attributes: None,
        });
        let _ = reg.apply(op).unwrap();
    }
    let after = record_spans(&std::fs::read(&seg).unwrap());
    assert_eq!(after.len(), 2, "the stale records were cleared: {after:?}");
    assert_eq!(
        after[1], spans[1],
        "the new record took the torn one's place"
    );
    let reg = Registry::open(&path).unwrap();
    assert_eq!(
        tokens(&reg),
        ["tok00000", "tok00009"],
        "no stale record came back"
    );
    assert_clean(&reg, "after a torn write");
}

/// The other side of finding 11: damage before a record that was written
/// after a sync (everything before it was durable) is still corruption.
#[test]
fn damage_before_a_synced_record_is_still_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    db_with_log_only(&path, 4);
    let seg = only_segment(&path);
    let mut bytes = std::fs::read(&seg).unwrap();
    let spans = record_spans(&bytes);
    let (r1, len1) = spans[1];
    bytes[r1..r1 + len1].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(Registry::open(&path), Err(Error::Corrupt { .. })));
}

/// Finding 11's tool: `repair` cuts the log at its first damaged record when
/// the damage is before the durable end (the open refuses it with Corrupt),
/// and says what it dropped; the database then opens with what came before.
#[test]
fn repair_cuts_the_log_at_the_first_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let all = db_with_log_only(&path, 6);
    // Nothing to repair in an intact log.
    let report = Registry::repair(&path).unwrap();
    assert_eq!(report.cut_at_lsn, None);
    let seg = only_segment(&path);
    let mut bytes = std::fs::read(&seg).unwrap();
    let spans = record_spans(&bytes);
    let (r2, _) = spans[2];
    bytes[r2 + 30] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(Registry::open(&path), Err(Error::Corrupt { .. })));
    let report = Registry::repair(&path).unwrap();
    assert_eq!(report.cut_at_lsn, Some(r2 as u64), "{spans:?} {report:?}");
    assert_eq!(report.records_dropped, 3, "{report:?}");
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.dump(), all[..2].to_vec());
    assert_clean(&reg, "after repair");
}

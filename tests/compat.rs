//! A database written by an older devreg opens with this one: the fixture
//! in `tests/fixtures/v1/` is store format 1 (a sled key per record), made
//! by the build before pages (commit f16c22f) from `events.jsonl`, with one
//! nacked batch (two dead letters) and one batch in flight. The open
//! converts it to pages (format 3); every query answers as the old build's
//! did (`dump.jsonl`, `dead.json`, `hist3.json`, `sinks.json`, `stats.json`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_of(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(version)
}

fn unpack(into: &Path) -> PathBuf {
    unpack_version(into, "v1")
}

fn unpack_version(into: &Path, version: &str) -> PathBuf {
    let status = Command::new("tar")
        .arg("xzf")
        .arg(fixture_of(version).join(format!("{version}-db.tar.gz")))
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar runs");
    assert!(status.success());
    into.join("db")
}

fn devreg(db: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "devreg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Twice (the first open converts or relabels, the second reads what it
/// wrote): every answer is the old build's, from `version`'s fixture, and
/// `check` is clean. `histories` are (token, answer file) pairs.
fn answers_as_before(db: &Path, version: &str, histories: &[(String, &str)]) {
    let want = |name: &str| std::fs::read_to_string(fixture_of(version).join(name)).unwrap();
    for round in 0..2 {
        assert_eq!(devreg(db, &["dump"]), want("dump.jsonl"), "round {round}");
        assert_eq!(devreg(db, &["dead-letters"]), want("dead.json"));
        for (token, file) in histories {
            assert_eq!(devreg(db, &["history", token]), want(file), "{token}");
        }
        assert_eq!(devreg(db, &["sinks"]), want("sinks.json"));
        assert_eq!(devreg(db, &["stats"]), want("stats.json"));
        let check = devreg(db, &["check"]);
        assert!(check.contains(r#""problems":[]"#), "{check}");
    }
}

/// The batch in flight is the same one after the open, and acknowledging
/// it leaves `pending` items.
fn in_flight_batch_goes_on(db: &Path, pending: u64) -> devreg::Registry {
    let reg = devreg::Registry::open(db).unwrap();
    let b = reg
        .export(devreg::DEFAULT_SINK, 20, 499_999)
        .unwrap()
        .unwrap();
    assert_eq!(b.id(), "customerio-000000000002");
    reg.ack(devreg::DEFAULT_SINK, b.id()).unwrap();
    assert_eq!(reg.sinks()[0].pending, pending);
    reg
}

/// Store format 2 (pages, with `'H'` deltas holding whole lists, merged
/// chunks deleted in the commit), made by the last format-2 build (commit
/// 6f199df) from `events1.jsonl` then `events2.jsonl` (moves, a merge,
/// touches, a remove, a rotation), then one nacked batch (two dead letters)
/// and one batch in flight. Its deltas were never merged: the history of a
/// moved token is in two delta generations, the second a whole list, which
/// the append keyspace must join into the same list.
#[test]
fn a_format_2_database_opens_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let db = unpack_version(dir.path(), "v2");
    let (token4, token5) = (format!("{:064x}", 4), format!("{:064x}", 5));
    answers_as_before(
        &db,
        "v2",
        &[(token4.clone(), "hist4.json"), (token5, "hist5.json")],
    );
    let format = devreg::internals::peek_record(&db, b"Mformat").unwrap();
    assert_eq!(
        format,
        Some(devreg::internals::STORE_FORMAT.to_be_bytes().to_vec())
    );
    let reg = in_flight_batch_goes_on(&db, 149 - 20);
    // A new move appends to the history read from the old deltas.
    let mv = devreg::Op::Register(devreg::Register {
        token: token4.clone(),
        platform: devreg::Platform::Ios,
        person: Some("z9".into()),
        seen_ms: 1_700_009_000_000,
        attributes: None,
    });
    reg.apply(mv).unwrap();
    reg.checkpoint().unwrap();
    let h = reg.history(&token4).unwrap();
    let ops: Vec<_> = h.iter().map(|e| (e.op, e.owner_after.clone())).collect();
    use devreg::HistoryOp::{Move, Register};
    assert_eq!(
        ops,
        [
            (Move, Some("z9".to_string())),
            (Move, Some("q4".to_string())),
            (Register, Some("p4".to_string()))
        ]
    );
}

#[test]
fn a_format_1_database_opens_converted_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let db = unpack(dir.path());
    let token3 = format!("{:064x}", 3);
    answers_as_before(&db, "v1", &[(token3, "hist3.json")]);
    // The in-flight batch is the same one, and the feed goes on.
    let reg = in_flight_batch_goes_on(&db, 190 - 20);
    assert_eq!(reg.dump().len(), 300);
}

#[test]
fn a_newer_format_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    devreg::Registry::open(&db).unwrap().close().unwrap();
    // Pretend a future build wrote it: Mformat 4.
    {
        let sled = sled::Config::new()
            .path(db.join("store"))
            .segment_size(8 << 20)
            .open()
            .unwrap();
        sled.insert("Mformat", &4u32.to_be_bytes()).unwrap();
        sled.flush().unwrap();
    }
    match devreg::Registry::open(&db) {
        Err(e @ devreg::Error::UnsupportedFormat { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("version 4, this build reads version 3"),
                "{msg}"
            );
            assert!(msg.contains("newer devreg"), "{msg}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

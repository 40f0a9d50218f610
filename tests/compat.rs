//! A database written by an older devreg opens with this one: the fixture
//! in `tests/fixtures/v1/` is store format 1 (a sled key per record), made
//! by the build before pages (commit f16c22f) from `events.jsonl`, with one
//! nacked batch (two dead letters) and one batch in flight. The open
//! converts it to pages (format 5); every query answers as the old build's
//! did (`dump.jsonl`, `dead.json`, `hist3.json`, `sinks.json`, `stats.json`).
//! The fixtures in `tests/fixtures/v2/` (store format 2, made by commit
//! 6f199df) and `tests/fixtures/v3/` (store format 3, made by commit
//! 7dbb89f, the last build before compressed pages) and
//! `tests/fixtures/v4/` (store format 4, made by commit 3cef5fa, the last
//! build whose new sink stored its snapshot as an item per device) hold the
//! same events and feed state; their open relabels them format 5 and every
//! query answers as the build that made them did. The fixture in
//! `tests/fixtures/v6/` (store format 6, made by commit 8cbb9e9, the last
//! build without deliverability records) is relabelled 7 and answers the
//! same; delivery feedback then persists in it.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/raw_store.rs"]
mod raw_store;

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

/// The read commands open read-only, which converts nothing: a format-2
/// or -3 database answers as it is and keeps its format; a format-1 one is
/// refused with what to do. Then one write open converts or relabels it,
/// and twice more every answer is the old build's, from `version`'s
/// fixture, and `check` is clean. `histories` are (token, answer file) pairs.
fn answers_as_before(db: &Path, version: &str, histories: &[(String, &str)]) {
    let format = || devreg::internals::peek_record(db, b"Mformat").unwrap();
    let old_format = format();
    if version == "v1" {
        let out = Command::new(env!("CARGO_BIN_EXE_devreg"))
            .arg("--db")
            .arg(db)
            .arg("dump")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("open it once without read-only"), "{err}");
    } else {
        answers(db, version, histories, "read-only, unconverted");
    }
    assert_eq!(format(), old_format, "a read converted nothing");
    devreg::Registry::open(db).unwrap().close().unwrap();
    assert_eq!(
        format(),
        Some(devreg::internals::STORE_FORMAT.to_be_bytes().to_vec())
    );
    for round in 0..2 {
        answers(db, version, histories, &format!("round {round}"));
    }
}

/// Every read command's answer is the one in `version`'s fixture.
fn answers(db: &Path, version: &str, histories: &[(String, &str)], round: &str) {
    let want = |name: &str| std::fs::read_to_string(fixture_of(version).join(name)).unwrap();
    {
        // Since the dump became import lines, each starts with "op"; the
        // rest of the line is as the old build printed it.
        let dump = devreg(db, &["dump"]).replace(r#"{"op":"register","#, "{");
        assert_eq!(dump, want("dump.jsonl"), "round {round}");
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
    let sinks = reg.sinks();
    let default = sinks.iter().find(|s| s.name == devreg::DEFAULT_SINK);
    assert_eq!(default.map(|s| s.pending), Some(pending));
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
    let _ = reg.apply(mv).unwrap();
    reg.checkpoint().unwrap();
    assert_token4_moved_to_z9(&reg, &token4);
}

/// Store format 3 (pages and delta chunks in plain, uncompressed frames,
/// `Mdelta_merged` naming the last merged generation), made by the last
/// format-3 build (commit 7dbb89f): `events1.jsonl` imported by a program
/// built against that commit with `page_delta_bytes` 0, so its checkpoint
/// merged everything into pages (generation 1, `Mdelta_merged` 1); then,
/// by that build's `devreg` with its default bound, `events2.jsonl`
/// imported, `export --max-ops 20`, `nack customerio-000000000001 --failed
/// "2:invalid token" "5:bad device"` and `export --max-ops 20` again, each
/// checkpoint appending delta chunks (generations 2 to 4) over the pages.
/// The answer files were recorded by that `devreg` before the database was
/// packed; they are v2's except the history's commit times. A moved
/// token's history is in a merged page (its register) and a delta (its
/// move); the new build's write and its merge (whose pages may be LZ4
/// frames) go on top of both.
#[test]
fn a_format_3_database_opens_relabelled_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let db = unpack_version(dir.path(), "v3");
    let peek = |key: &[u8]| devreg::internals::peek_record(&db, key).unwrap();
    // What the fixture is (these peeks only read).
    assert_eq!(peek(b"Mformat"), Some(3u32.to_be_bytes().to_vec()));
    assert_eq!(peek(b"Mdelta_merged"), Some(1u64.to_be_bytes().to_vec()));
    let (token4, token5) = (format!("{:064x}", 4), format!("{:064x}", 5));
    answers_as_before(
        &db,
        "v3",
        &[(token4.clone(), "hist4.json"), (token5, "hist5.json")],
    );
    assert_eq!(
        peek(b"Mformat"),
        Some(devreg::internals::STORE_FORMAT.to_be_bytes().to_vec())
    );
    let reg = in_flight_batch_goes_on(&db, 149 - 20);
    reg.close().unwrap();
    // A write, then a checkpoint that merges every delta (the old plain
    // ones with the new) into pages.
    let reg = devreg::Registry::open_with(devreg::Config::new(&db).page_delta_bytes(0)).unwrap();
    let new_token = format!("{:064x}", 0xfeed);
    for (token, person, seen_ms) in [
        (&new_token, "n1", 1_700_009_000_000),
        (&token4, "z9", 1_700_009_000_001),
    ] {
        let _ = reg
            .apply(devreg::Op::Register(devreg::Register {
                token: token.clone(),
                platform: devreg::Platform::Ios,
                person: Some(person.into()),
                seen_ms,
                attributes: None,
            }))
            .unwrap();
    }
    reg.checkpoint().unwrap();
    reg.close().unwrap();
    // Reopened, it answers with the write.
    let reg = devreg::Registry::open(&db).unwrap();
    let dump = reg.dump();
    assert_eq!(dump.len(), 200);
    let new = reg.device(&new_token).expect("the new device");
    assert_eq!(new.person.as_deref(), Some("n1"));
    assert_eq!(
        dump.iter().filter(|d| d.token == new_token).count(),
        1,
        "the new device is in the dump"
    );
    assert_token4_moved_to_z9(&reg, &token4);
    assert!(
        reg.sinks()[0].pending > 149 - 20,
        "the writes are in the feed"
    );
    let check = reg.check().unwrap();
    assert!(check.is_clean(), "{:?}", check.problems);
    reg.close().unwrap();
    let dump = devreg(&db, &["dump"]);
    assert!(
        dump.contains(&new_token),
        "the CLI's dump shows the new device"
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
    // Pretend a future build wrote it: Mformat 8.
    {
        let sled = raw_store::open_raw_store(&db);
        sled.insert("Mformat", &8u32.to_be_bytes()).unwrap();
        sled.flush().unwrap();
    }
    match devreg::Registry::open(&db) {
        Err(e @ devreg::Error::UnsupportedFormat { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("version 8, this build reads version 7"),
                "{msg}"
            );
            assert!(msg.contains("newer devreg"), "{msg}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Token 4's history after the test's move: registered to p4 by the
/// fixture, moved to q4 by the fixture, moved to z9 by this build.
fn assert_token4_moved_to_z9(reg: &devreg::Registry, token4: &str) {
    use devreg::HistoryOp::{Move, Register};
    let h = reg.history(token4).unwrap();
    let ops: Vec<_> = h.iter().map(|e| (e.op, e.owner_after.clone())).collect();
    assert_eq!(
        ops,
        [
            (Move, Some("z9".to_string())),
            (Move, Some("q4".to_string())),
            (Register, Some("p4".to_string()))
        ]
    );
}

/// Store format 4 (pages in LZ4 frames; a new sink's snapshot an item per
/// device), made by the last format-4 build (commit 3cef5fa) with its
/// `devreg`: `events1.jsonl` and `events2.jsonl` (v3's) imported, `export
/// --max-ops 20`, `nack customerio-000000000001 --failed "2:invalid token"
/// "5:bad device"`, `export --max-ops 20`, then `export --sink audit
/// --max-ops 30`, which created sink `audit` with its snapshot as 169
/// items and left its first batch in flight (`audit-inflight.json`). The
/// open relabels it format 5; the old snapshot's items go on as they were,
/// and a sink added now sends its snapshot by a backfill.
#[test]
fn a_format_4_database_opens_relabelled_and_its_item_snapshot_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = unpack_version(dir.path(), "v4");
    let peek = |key: &[u8]| devreg::internals::peek_record(&db, key).unwrap();
    assert_eq!(peek(b"Mformat"), Some(4u32.to_be_bytes().to_vec()));
    assert_eq!(
        devreg::internals::count_records(&db, b"F").unwrap(),
        149 + 169
    );
    let (token4, token5) = (format!("{:064x}", 4), format!("{:064x}", 5));
    answers_as_before(&db, "v4", &[(token4, "hist4.json"), (token5, "hist5.json")]);
    let reg = in_flight_batch_goes_on(&db, 149 - 20);
    let b = reg.export("audit", 30, 499_999).unwrap().unwrap();
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_of("v4").join("audit-inflight.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(b.id(), recorded["batch_id"]);
    let body: serde_json::Value = serde_json::from_str(b.body()).unwrap();
    assert_eq!(
        body, recorded["body"],
        "the batch in flight is the old build's"
    );
    reg.ack("audit", b.id()).unwrap();
    let drain = |sink: &str| {
        let mut ops = 0;
        while let Some(b) = reg.export(sink, 50, 499_999).unwrap() {
            ops += b.len();
            reg.ack(sink, b.id()).unwrap();
        }
        ops
    };
    assert_eq!(drain("audit"), 169 - 30, "the old snapshot's items go on");
    assert!(reg.add_sink("later").unwrap());
    assert_eq!(
        drain("later"),
        169,
        "a new sink's backfill sends every pair"
    );
    let check = reg.check().unwrap();
    assert!(check.is_clean(), "{:?}", check.problems);
}

/// Store format 5 (sink metadata layout 3: no format or identifier kind;
/// a backfill add in flight kept without its token), made by the last
/// format-5 build (commit f2b0041) with its `devreg`: v3's `events1.jsonl`
/// and `events2.jsonl` imported, `export --max-ops 20`, `nack
/// customerio-000000000001 --failed "2:invalid token" "5:bad device"`,
/// `export --max-ops 20`, then `export --sink audit --max-ops 30`, which
/// left the backfill's first batch in flight (`audit-inflight.json`;
/// `customerio-inflight.json` is the default sink's). The open relabels it
/// format 6; both sinks are `track-v2` by `id`, their batches in flight are
/// the old build's, and a backfill add in flight still settles its pair
/// when acknowledged (its token is recovered at load).
#[test]
fn a_format_5_database_opens_as_track_v2_by_id_and_its_backfill_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = unpack_version(dir.path(), "v5");
    let peek = |key: &[u8]| devreg::internals::peek_record(&db, key).unwrap();
    assert_eq!(peek(b"Mformat"), Some(5u32.to_be_bytes().to_vec()));
    let (token4, token5) = (format!("{:064x}", 4), format!("{:064x}", 5));
    answers_as_before(&db, "v5", &[(token4, "hist4.json"), (token5, "hist5.json")]);
    let reg = devreg::Registry::open(&db).unwrap();
    for s in reg.sinks() {
        assert_eq!(
            s.settings,
            devreg::format::SinkSettings::default(),
            "{}",
            s.name
        );
    }
    let recorded = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixture_of("v5").join(file)).unwrap())
            .unwrap()
    };
    let c = reg
        .export(devreg::DEFAULT_SINK, 20, 499_999)
        .unwrap()
        .unwrap();
    let want = recorded("customerio-inflight.json");
    assert_eq!(c.id(), want["batch_id"]);
    let body: serde_json::Value = serde_json::from_str(c.body()).unwrap();
    assert_eq!(body, want["body"]);
    let b = reg.export("audit", 30, 499_999).unwrap().unwrap();
    let want = recorded("audit-inflight.json");
    assert_eq!(b.id(), want["batch_id"]);
    let body: serde_json::Value = serde_json::from_str(b.body()).unwrap();
    assert_eq!(body, want["body"], "the batch in flight is the old build's");
    // A device of the backfill batch in flight moves before the ack: the
    // ack says Customer.io holds the old pair, so it must be deleted.
    let first = &body["batch"][0];
    let (owner, token) = (
        first["identifiers"]["id"].as_str().unwrap().to_owned(),
        first["device"]["token"].as_str().unwrap().to_owned(),
    );
    let _ = reg
        .apply(devreg::Op::Register(devreg::Register {
            token: token.clone(),
            platform: devreg::Platform::Ios,
            person: Some("mover".into()),
            seen_ms: 1_700_009_000_000,
            attributes: None,
        }))
        .unwrap();
    reg.ack("audit", b.id()).unwrap();
    let mut ops = Vec::new();
    while let Some(b) = reg.export("audit", 100, 499_999).unwrap() {
        ops.extend(b.operations().map(str::to_owned));
        reg.ack("audit", b.id()).unwrap();
    }
    let delete = format!(
        r#"{{"type":"person","identifiers":{{"id":"{owner}"}},"action":"delete_device","device":{{"token":"{token}"}}}}"#
    );
    assert!(ops.contains(&delete), "no {delete} in {} ops", ops.len());
    let check = reg.check().unwrap();
    assert!(check.is_clean(), "{:?}", check.problems);
}

/// Store format 6 (sinks with formats and identifier kinds, diagnostic
/// events; no deliverability records, day counters without the feedback
/// counts), made by the last format-6 build (commit 8cbb9e9) with its
/// `devreg`: `sinks add pipes --format pipelines --identifier id
/// --diagnostics`, v3's `events1.jsonl` and `events2.jsonl` imported,
/// `export --max-ops 20`, `nack customerio-000000000001 --failed "2:invalid
/// token" "5:bad device"`, `export --max-ops 20`, `export --sink pipes
/// --max-ops 30` (the batches in flight are `customerio-inflight.json` and
/// `pipes-inflight.json`; `daily.json` is `stats --daily`). The open
/// relabels it format 7; every answer is the old build's, the old day
/// counters read with zero feedback counts, and feedback given after the
/// open survives a reopen.
#[test]
fn a_format_6_database_opens_and_keeps_feedback_after() {
    let dir = tempfile::tempdir().unwrap();
    let db = unpack_version(dir.path(), "v6");
    let peek = |key: &[u8]| devreg::internals::peek_record(&db, key).unwrap();
    assert_eq!(peek(b"Mformat"), Some(6u32.to_be_bytes().to_vec()));
    let (token4, token5) = (format!("{:064x}", 4), format!("{:064x}", 5));
    answers_as_before(
        &db,
        "v6",
        &[(token4.clone(), "hist4.json"), (token5, "hist5.json")],
    );
    let recorded = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixture_of("v6").join(file)).unwrap())
            .unwrap()
    };
    let daily: serde_json::Value =
        serde_json::from_str(&devreg(&db, &["stats", "--daily"])).unwrap();
    let old = recorded("daily.json");
    let (daily, old) = (daily.as_array().unwrap(), old.as_array().unwrap());
    assert_eq!(daily.len(), old.len());
    for (new, old) in daily.iter().zip(old) {
        for (k, v) in old.as_object().unwrap() {
            assert_eq!(&new[k], v, "{k}");
        }
        for k in ["deliveries", "soft_failures", "hard_failures"] {
            assert_eq!(new[k], 0, "{k}");
        }
    }
    let reg = devreg::Registry::open(&db).unwrap();
    for (sink, file) in [
        ("customerio", "customerio-inflight.json"),
        ("pipes", "pipes-inflight.json"),
    ] {
        let b = reg.export(sink, 20, 499_999).unwrap().unwrap();
        let want = recorded(file);
        assert_eq!(b.id(), want["batch_id"]);
        let body: serde_json::Value = serde_json::from_str(b.body()).unwrap();
        assert_eq!(
            body, want["body"],
            "{sink}: the batch in flight is the old build's"
        );
    }
    assert_eq!(reg.deliverability(&token4).map(|(_, s)| s), Some(false));
    let hard = devreg::FeedbackOutcome::HardFailure;
    assert!(reg
        .feedback(&token4, hard, 32_000_000_000_000, None)
        .unwrap()
        .is_applied());
    reg.close().unwrap();
    assert_eq!(peek(b"Mformat"), Some(7u32.to_be_bytes().to_vec()));
    let reg = devreg::Registry::open(&db).unwrap();
    let (d, suppressed) = reg.deliverability(&token4).unwrap();
    assert_eq!(d.last_hard_failure_ms, Some(32_000_000_000_000));
    assert!(suppressed);
    let check = reg.check().unwrap();
    assert!(check.is_clean(), "{:?}", check.problems);
}

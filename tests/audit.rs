//! The drift audit (issue 15 item 4) end to end, against the Customer.io
//! emulator (`support/emu.rs` over the one model, `support/cio.rs`): a
//! sync then an audit finds no drift; each kind of tampering with the
//! emulator's state is reported as its drift kind; `repair` re-marks the
//! pairs durably (a reopen and a checkpoint keep them) and the next sync
//! makes the audit clean; the App API's 429s and 5xx are waited out; and
//! the `devreg audit` command's output shape and exit codes. Only loopback
//! is contacted; every wait is bounded.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[path = "support/cio.rs"]
mod cio;

#[path = "support/emu.rs"]
mod emu;
use emu::*;

use devreg::sync::audit::{self, AppApiClient, AuditReport, Drift, Selection};
use devreg::sync::{Credentials, SyncConfig, SyncWorker};
use devreg::*;
use serde_json::Value;

const PERSONS: usize = 12;
/// 2024-01-01T00:00:00Z in ms.
const T0: u64 = 1_704_067_200_000;

/// Immediate durability; no timed checkpoint (the tests take their own).
fn open(path: &Path) -> Registry {
    let config = Config::new(path)
        .durability(Durability::Immediate)
        .checkpoint_interval_ms(3_600_000);
    Registry::open_with(config).unwrap()
}

/// Copies a database while it is open: what a crash leaves on disk (every
/// acknowledged `Immediate` write is in the log).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn person(i: usize) -> String {
    format!("person-{i:02}")
}

fn token(i: usize, j: usize) -> String {
    format!("tok-{i:02}-{j}")
}

/// Persons 0..PERSONS with two devices each, seen at distinct times.
fn populate(reg: &Registry) {
    for i in 0..PERSONS {
        for j in 0..2 {
            let _ = reg
                .register(Register {
                    token: token(i, j),
                    platform: if j == 0 {
                        Platform::Ios
                    } else {
                        Platform::Android
                    },
                    person: Some(person(i)),
                    seen_ms: T0 + (i as u64) * 60_000 + (j as u64) * 1_500,
                    attributes: None,
                })
                .unwrap();
        }
    }
}

fn sync_once(reg: &Registry, emu: &Emu) {
    let config = SyncConfig::new(Credentials::new(SITE, KEY).unwrap())
        .endpoint(emu.url())
        .max_ops(7)
        .max_rps(100.0)
        .timeout(Duration::from_millis(2_000))
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .max_attempts(Some(10));
    let mut worker = SyncWorker::new(reg.clone(), config).unwrap();
    worker.run_once().unwrap();
    let pending: u64 = reg.sinks().iter().map(|s| s.pending).sum();
    assert_eq!(pending, 0, "{:?}", reg.sinks());
    assert!(
        emu.with(|s| s.violations.is_empty()),
        "{:?}",
        emu.with(|s| s.violations.clone())
    );
}

fn client(emu: &Emu) -> AppApiClient {
    AppApiClient::new(&emu.url(), cio::APP_API_KEY).unwrap()
}

fn run_audit(reg: &Registry, emu: &Emu, selection: Selection) -> AuditReport {
    audit::audit(reg, &mut client(emu), &selection, DEFAULT_SINK).unwrap()
}

/// At most `per_second` App API requests were admitted in any second.
fn assert_rate(emu: &Emu, per_second: usize) {
    let admitted = emu.with(|s| s.app.admitted.clone());
    for (i, t) in admitted.iter().enumerate() {
        let in_window = admitted[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(in_window <= per_second, "{in_window} requests within 1 s");
    }
}

#[test]
fn sync_then_audit_finds_no_drift_and_keeps_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    populate(&reg);
    let emu = Emu::start(Vec::new());
    sync_once(&reg, &emu);
    let started = Instant::now();
    let report = run_audit(&reg, &emu, Selection::Sample(100));
    assert_eq!(report.audited, PERSONS as u64);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.summary, Default::default());
    // 12 requests at most 10 a second: more than one second.
    assert!(started.elapsed() > Duration::from_millis(1_000));
    assert_eq!(emu.with(|s| s.app.count(200)), PERSONS);
    assert_eq!(
        emu.with(|s| s.app.count(429)),
        0,
        "the client kept under 10/s"
    );
    assert_rate(&emu, 10);
    // A sample is deterministic and a read: the same persons again, nothing written.
    let sample = reg.sample_persons(5);
    assert_eq!(sample.len(), 5);
    assert_eq!(sample, reg.sample_persons(5));
    let before = reg.sinks();
    let again = run_audit(&reg, &emu, Selection::Sample(5));
    assert_eq!(again.audited, 5);
    assert_eq!(reg.sinks(), before);
    // One person, known to neither side: nothing to report.
    let nobody = run_audit(&reg, &emu, Selection::Person("nobody".into()));
    assert!(nobody.is_clean() && nobody.audited == 1);
}

/// Tampers with the emulator's state; returns what each drift should be.
fn tamper(emu: &Emu) {
    emu.with(|s| {
        let c = &mut s.cio;
        // Customer.io lost a device of person 1: missing.
        assert!(c
            .persons
            .get_mut(&person(1))
            .unwrap()
            .remove(&token(1, 0))
            .is_some());
        // It holds person 2's device on person 3: wrong person on 3, missing on 2.
        assert!(c.move_device(&person(2), &token(2, 1), &person(3)));
        // It holds a device devreg never had on person 4: stale.
        let stale = ("ios".to_string(), 5, serde_json::json!({}));
        c.persons
            .get_mut(&person(4))
            .unwrap()
            .insert("tok-ghost".into(), stale);
        // Its last_used of person 5's device is old: behind.
        c.persons
            .get_mut(&person(5))
            .unwrap()
            .get_mut(&token(5, 0))
            .unwrap()
            .1 = 17;
    });
}

fn kinds(report: &AuditReport) -> Vec<(String, Drift)> {
    let mut out: Vec<(String, Drift)> = report
        .persons
        .iter()
        .flat_map(|p| p.drift.iter().map(|d| (p.person.clone(), d.clone())))
        .collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

#[test]
fn tampering_shows_each_drift_kind_and_repair_survives_reopen_and_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let reg = open(&path);
    populate(&reg);
    let emu = Emu::start(Vec::new());
    sync_once(&reg, &emu);
    tamper(&emu);
    let mut report = run_audit(&reg, &emu, Selection::Sample(100));
    let five_seen = (T0 + 5 * 60_000) / 1000;
    let want = vec![
        (person(1), Drift::Missing { token: token(1, 0) }),
        (person(2), Drift::Missing { token: token(2, 1) }),
        (
            person(3),
            Drift::WrongPerson {
                token: token(2, 1),
                owner: person(2),
            },
        ),
        (
            person(4),
            Drift::Stale {
                token: "tok-ghost".into(),
            },
        ),
        (
            person(5),
            Drift::LastUsedBehind {
                token: token(5, 0),
                cio_last_used: 17,
                devreg_last_seen: five_seen,
            },
        ),
    ];
    let mut sorted = want.clone();
    sorted.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    assert_eq!(kinds(&report), sorted);
    let s = &report.summary;
    assert_eq!(
        (s.missing, s.stale, s.wrong_person, s.last_used_behind),
        (2, 1, 1, 1)
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["summary"]["wrong_person"], 1);
    assert_eq!(json["persons"].as_array().unwrap().len(), 5);
    assert!(json.get("repaired").is_none());

    // The repair is a logged write: it survives a crash (the log replayed
    // over the last checkpoint), a reopen, then a checkpoint and a reopen.
    reg.checkpoint().unwrap();
    assert_eq!(audit::repair(&reg, DEFAULT_SINK, &mut report).unwrap(), 5);
    assert_eq!(report.repaired, Some(5));
    let pending = reg.sinks()[0].pending;
    assert_eq!(pending, 5);
    let image = dir.path().join("crashed");
    copy_dir(&path, &image);
    {
        let crashed = open(&image);
        assert_eq!(
            crashed.sinks()[0].pending,
            pending,
            "re-marks lost by a crash"
        );
        assert!(crashed.check().unwrap().is_clean());
        let a = crashed.export(DEFAULT_SINK, 100, 499_999).unwrap().unwrap();
        let b = reg.export(DEFAULT_SINK, 100, 499_999).unwrap().unwrap();
        assert_eq!(
            a.body(),
            b.body(),
            "the replayed feed exports the same batch"
        );
        crashed.close().unwrap();
    }
    drop(reg);
    let reg = open(&path);
    assert_eq!(reg.sinks()[0].pending, pending, "re-marks lost by a reopen");
    reg.checkpoint().unwrap();
    reg.close().unwrap();
    let reg = open(&path);
    assert_eq!(
        reg.sinks()[0].pending,
        pending,
        "re-marks lost by a checkpoint"
    );
    assert!(
        reg.check().unwrap().is_clean(),
        "{:?}",
        reg.check().unwrap()
    );

    // The next sync sends them: the audit is clean, the models agree.
    sync_once(&reg, &emu);
    let after = run_audit(&reg, &emu, Selection::Sample(100));
    assert!(after.is_clean(), "{after:?}");
    assert!(emu.with(|s| s.cio.notes.is_empty()));
    reg.close().unwrap();
}

#[test]
fn app_api_429s_and_server_errors_are_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    populate(&reg);
    let emu = Emu::start(Vec::new());
    sync_once(&reg, &emu);
    // A stricter limit than the client's 10/s, and faults on top.
    emu.with(|s| {
        s.app.per_second = 4;
        s.app.faults.extend([503, 429, 500]);
    });
    let report = run_audit(&reg, &emu, Selection::Sample(100));
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.audited, PERSONS as u64);
    let (n429, n5xx, n200) = emu.with(|s| {
        (
            s.app.count(429),
            s.app.count(500) + s.app.count(503),
            s.app.count(200),
        )
    });
    assert!(n429 >= 2, "the emulator's limit answered no 429 ({n429})");
    assert_eq!(n5xx, 2);
    assert_eq!(n200, PERSONS);
    assert_rate(&emu, 4);
    // A wrong key is refused, naming the key's variable.
    let mut bad = AppApiClient::new(&emu.url(), "wrong").unwrap();
    match audit::audit(&reg, &mut bad, &Selection::Sample(1), DEFAULT_SINK) {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, audit::APP_API_KEY_ENV),
        other => panic!("{other:?}"),
    }
    // Faults past the attempts are an error, not a hang.
    emu.with(|s| s.app.faults.extend([500; 8]));
    match audit::audit(&reg, &mut client(&emu), &Selection::Sample(1), DEFAULT_SINK) {
        Err(Error::Http { status, .. }) => assert_eq!(status, 500),
        other => panic!("{other:?}"),
    }
}

#[test]
fn remark_is_validated_and_needs_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    // No devices: the new sink owes no backfill, its feed is the re-marks alone.
    let reg = open(&dir.path().join("db"));
    let pair = |t: &str| RemarkPair {
        person: person(0),
        token: t.into(),
        held: true,
    };
    match reg.remark("nope", &[pair("tok-x")]) {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "sink"),
        other => panic!("{other:?}"),
    }
    reg.add_sink("s").unwrap();
    match reg.remark("s", &[pair("tok-x"), pair("bad token")]) {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "pairs[1]"),
        other => panic!("{other:?}"),
    }
    // More pairs than one entry holds are written in chunks.
    let many: Vec<RemarkPair> = (0..2_500).map(|i| pair(&format!("tok-many-{i}"))).collect();
    assert_eq!(reg.remark("s", &many).unwrap(), 2_500);
    assert_eq!(reg.sinks()[0].pending, 2_500);
    // A held pair devreg does not hold goes out as a delete.
    let batch = reg.export("s", 1000, 499_999).unwrap().unwrap();
    assert!(
        batch.body().contains(r#""action":"delete_device""#),
        "{}",
        &batch.body()[..300]
    );
    for bad in [
        Selection::Sample(0),
        Selection::Sample(devreg::limits::MAX_AUDIT_SAMPLE + 1),
    ] {
        struct Never;
        impl audit::CioView for Never {
            fn profile(&mut self, _: &str) -> Result<Option<Vec<audit::CioDevice>>> {
                panic!("no request expected")
            }
        }
        match audit::audit(&reg, &mut Never, &bad, "s") {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "sample"),
            other => panic!("{other:?}"),
        }
    }
}

fn devreg_audit(db: &Path, emu: &Emu, args: &[&str], key: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_devreg"));
    c.arg("--db")
        .arg(db)
        .args(["audit", "--endpoint", &emu.url()])
        .args(args);
    c.env_remove(audit::APP_API_KEY_ENV);
    if let Some(k) = key {
        c.env(audit::APP_API_KEY_ENV, k);
    }
    c.output().unwrap()
}

#[test]
fn cli_prints_the_drift_and_exits_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let emu = Emu::start(Vec::new());
    {
        let reg = open(&db);
        populate(&reg);
        sync_once(&reg, &emu);
        reg.close().unwrap();
    }
    let key = Some(cio::APP_API_KEY);
    let out = devreg_audit(&db, &emu, &["--sample", "50"], key);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sink"], DEFAULT_SINK);
    assert_eq!(v["audited"], PERSONS);
    assert_eq!(v["persons"], serde_json::json!([]));
    assert_eq!(
        v["summary"],
        serde_json::json!({"missing":0,"stale":0,"wrong_person":0,"last_used_behind":0})
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("12 person(s) read, 0 with drift"),
        "{stderr}"
    );

    tamper(&emu);
    let out = devreg_audit(&db, &emu, &["--person", &person(3)], key);
    assert_eq!(out.status.code(), Some(1), "drift left: exit 1");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["audited"], 1);
    assert_eq!(
        v["persons"],
        serde_json::json!([{"person": person(3), "in_customerio": true,
            "drift": [{"kind": "wrong_person", "token": token(2, 1), "owner": person(2)}]}])
    );

    let out = devreg_audit(&db, &emu, &["--repair"], key);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "every pair re-marked: exit 0; {stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repaired"], 5);
    assert!(stderr.contains("5 pair(s) re-marked"), "{stderr}");
    {
        let reg = open(&db);
        assert_eq!(reg.sinks()[0].pending, 5);
        sync_once(&reg, &emu);
        reg.close().unwrap();
    }
    // Nothing to repair: "repaired":0, exit 0, nothing opened for writing.
    let out = devreg_audit(&db, &emu, &["--repair"], key);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["repaired"].clone(), v["persons"].clone()),
        (0.into(), serde_json::json!([]))
    );
    // A missing database is an error, never created, even with --repair.
    let missing = dir.path().join("missing");
    let out = devreg_audit(&missing, &emu, &["--repair"], key);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no devreg database"));
    assert!(!missing.exists());
    let out = devreg_audit(&db, &emu, &[], key);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No key: exit 1 naming the variable, nothing on stdout, no request.
    let requests = emu.with(|s| s.app.seen.len());
    let out = devreg_audit(&db, &emu, &[], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.starts_with("error: ") && stderr.contains("CUSTOMERIO_APP_API_KEY"),
        "{stderr}"
    );
    assert_eq!(emu.with(|s| s.app.seen.len()), requests);
    // --sample and --person together are a usage error.
    let out = devreg_audit(&db, &emu, &["--sample", "2", "--person", "x"], key);
    assert_eq!(out.status.code(), Some(2));
    // An unknown sink is an error naming it.
    let out = devreg_audit(&db, &emu, &["--sink", "other"], key);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("other"));
}

/// A pair Customer.io holds that is in the sink's batch in flight is
/// deferred, not re-marked (the audit cannot tell whether it read
/// Customer.io before or after that batch); the rest is re-marked, and
/// after the sync the audit is clean.
#[test]
fn a_held_pair_in_the_batch_in_flight_is_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    populate(&reg);
    let emu = Emu::start(Vec::new());
    sync_once(&reg, &emu);
    // The device moves from person 6 to 7: the delete from 6 is exported
    // (in flight, not sent yet), the add to 7 pending.
    let _ = reg
        .register(Register {
            token: token(6, 0),
            platform: Platform::Ios,
            person: Some(person(7)),
            seen_ms: T0 + 3_600_000,
            attributes: None,
        })
        .unwrap();
    let batch = reg.export(DEFAULT_SINK, 1, 499_999).unwrap().unwrap();
    assert!(batch.body().contains("delete_device"), "{}", batch.body());
    let mut report = run_audit(&reg, &emu, Selection::Sample(100));
    assert_eq!(report.summary.wrong_person, 1, "{report:?}");
    assert_eq!(report.summary.missing, 1, "{report:?}");
    assert_eq!(audit::repair(&reg, DEFAULT_SINK, &mut report).unwrap(), 1);
    assert_eq!((report.repaired, report.deferred), (Some(1), 1));
    assert!(report.summary_line().contains("1 in the batch in flight"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["deferred"], 1);
    // The batch in flight is unchanged by the repair.
    let again = reg.export(DEFAULT_SINK, 1, 499_999).unwrap().unwrap();
    assert_eq!((again.id(), again.body()), (batch.id(), batch.body()));
    sync_once(&reg, &emu);
    assert!(run_audit(&reg, &emu, Selection::Sample(100)).is_clean());
    reg.close().unwrap();
}

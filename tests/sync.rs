//! The sync worker end to end, against a Customer.io emulator on 127.0.0.1
//! that the tests start themselves: Track's `POST /api/v2/batch` and Data
//! Pipelines' `POST /v1/batch`, each with its Basic auth, the request and
//! operation size limits, the one test model of Customer.io
//! (`support/cio.rs`: per person a set of devices; `add_device` and
//! `Device Created or Updated` upsert, `delete_device` and `Device Deleted`
//! remove, `merge` drops the secondary and is an error without the primary;
//! tokens never move by themselves), and faults injected on a schedule; plus TLS failures (an
//! untrusted certificate, a server that does not speak TLS) that must stop
//! the worker rather than be retried. Every loop is bounded in count and
//! time, and only loopback is ever contacted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[cfg(feature = "server")]
#[path = "support/server.rs"]
mod served;

#[path = "support/cio.rs"]
mod cio;

#[path = "support/emu.rs"]
mod emu;
use emu::*;

use devreg::sync::{Credentials, SyncConfig, SyncStats, SyncWorker};
use devreg::*;
use serde_json::Value;

// ---------------------------------------------------------------- helpers

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn open(path: &Path) -> Registry {
    Registry::open_with(
        Config::new(path)
            .max_devices_per_person(4)
            .durability(Durability::Eventual),
    )
    .unwrap()
}

fn creds() -> Credentials {
    Credentials::new(SITE, KEY).unwrap()
}

fn config(emu: &Emu) -> SyncConfig {
    SyncConfig::new(creds())
        .endpoint(emu.url())
        .max_ops(5)
        .max_rps(20.0)
        .timeout(Duration::from_millis(400))
        .backoff(Duration::from_millis(5), Duration::from_millis(60))
        .poll_interval(Duration::from_millis(20))
        .max_attempts(Some(50))
}

/// Random register/move/logout/merge/rotate/remove operations.
fn workload(reg: &Registry, rng: &mut Rng, n: usize, clock: &mut u64) {
    let token = |rng: &mut Rng| format!("tok{:02}", rng.below(60));
    let person = |rng: &mut Rng| format!("person-{}", rng.below(16));
    for _ in 0..n {
        *clock += 1 + rng.below(3000);
        let _ = match rng.below(16) {
            0..=8 => {
                let attributes = match rng.below(4) {
                    0 => None,
                    1 => Some(
                        (0..12)
                            .map(|i| (format!("attr_{i}"), "x".repeat(1000)))
                            .collect::<Attributes>(),
                    ),
                    _ => Some(
                        [("app_version".to_string(), format!("1.{}", rng.below(5)))]
                            .into_iter()
                            .collect(),
                    ),
                };
                reg.register(Register {
                    token: token(rng),
                    platform: if rng.below(2) == 0 {
                        Platform::Ios
                    } else {
                        Platform::Android
                    },
                    person: (rng.below(6) != 0).then(|| person(rng)),
                    seen_ms: *clock,
                    attributes,
                })
            }
            9 => reg.logout(
                &token(rng),
                if rng.below(2) == 0 {
                    LogoutPolicy::Keep
                } else {
                    LogoutPolicy::Remove
                },
            ),
            10 => {
                let (a, b) = (person(rng), person(rng));
                if a == b {
                    continue;
                }
                reg.merge(&a, &b)
            }
            11 => reg.rotate(&token(rng), &token(rng), *clock),
            12 => reg.remove(&token(rng)),
            13 | 14 => reg.touch(&token(rng), *clock),
            _ => reg.invalidate(&token(rng), clock.saturating_sub(5000)),
        };
    }
}

/// Asserts the emulator holds exactly devreg's identified devices, apart
/// from the pairs (and, for merges, the persons) of dead-lettered operations.
fn assert_converged(reg: &Registry, emu: &Emu) {
    assert_sink_converged(reg, emu, DEFAULT_SINK);
}

fn assert_sink_converged(reg: &Registry, emu: &Emu, sink: &str) {
    let dead = reg.dead_letters(sink).unwrap();
    let (mut pairs, mut persons) = (BTreeSet::new(), BTreeSet::new());
    for d in &dead {
        let op: Value = serde_json::from_str(&d.operation).unwrap();
        match op["action"].as_str() {
            Some("merge") => {
                persons.insert(op["primary"]["id"].as_str().unwrap().to_owned());
                persons.insert(op["secondary"]["id"].as_str().unwrap().to_owned());
            }
            None => {
                pairs.insert((
                    op["userId"].as_str().unwrap().to_owned(),
                    op["context"]["device"]["token"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                ));
            }
            _ => {
                pairs.insert((
                    op["identifiers"]["id"].as_str().unwrap().to_owned(),
                    op["device"]["token"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    let excluded = |k: &(String, String)| pairs.contains(k) || persons.contains(&k.0);
    let mut want = BTreeMap::new();
    for d in reg.dump() {
        if let Some(p) = d.person {
            let attrs: serde_json::Map<String, Value> = d
                .attributes
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            want.insert(
                (p, d.token),
                (
                    d.platform.as_str().to_owned(),
                    d.last_seen_ms / 1000,
                    Value::Object(attrs),
                ),
            );
        }
    }
    let have = emu.with(|s| s.pairs());
    let keys: BTreeSet<_> = want.keys().chain(have.keys()).cloned().collect();
    let mut diffs = Vec::new();
    for k in keys.iter().filter(|k| !excluded(k)) {
        if want.get(k) != have.get(k) {
            diffs.push(format!(
                "{k:?}: devreg {:?}, Customer.io {:?}",
                want.get(k).map(|w| (&w.0, w.1)),
                have.get(k).map(|h| (&h.0, h.1))
            ));
        }
    }
    let listed: Vec<String> = dead
        .iter()
        .map(|d| {
            format!(
                "{} #{}: {} ({:.120})",
                d.batch_id, d.index, d.reason, d.operation
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "Customer.io differs from devreg on {} pairs:\n{}\ndead letters ({}):\n{}",
        diffs.len(),
        diffs.join("\n"),
        listed.len(),
        listed.join("\n")
    );
    let violations = emu.with(|s| s.violations.clone());
    assert!(
        violations.is_empty(),
        "emulator violations: {violations:#?}\ndead letters:\n{}",
        listed.join("\n")
    );
}

/// No window of one second saw more than `max` request starts; returns
/// the most any second saw.
fn assert_rate(emu: &Emu, max: usize) -> usize {
    let starts = emu.with(|s| s.starts.clone());
    let mut busiest = 0;
    for (i, &t) in starts.iter().enumerate() {
        let n = starts[i..]
            .iter()
            .take_while(|&&u| u.duration_since(t) < Duration::from_secs(1))
            .count();
        assert!(
            n <= max,
            "{n} requests in the second after request {i} (limit {max})"
        );
        busiest = busiest.max(n);
    }
    busiest
}

fn wait_drained(reg: &Registry, secs: u64) {
    wait_sink_drained(reg, DEFAULT_SINK, secs)
}

fn wait_sink_drained(reg: &Registry, sink: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = reg.sinks();
        let info = s.iter().find(|s| s.name == sink);
        if info.is_some_and(|i| i.pending == 0 && i.in_flight.is_none()) {
            return;
        }
        assert!(Instant::now() < deadline, "feed did not drain: {s:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn random_workload_converges_through_every_fault() {
    let schedule: Vec<Option<Fault>> = vec![
        None,
        Some(Fault::Partial),
        None,
        Some(Fault::Server(500)),
        Some(Fault::DropMidResponse),
        None,
        Some(Fault::TooMany(1)),
        None,
        Some(Fault::Server(503)),
        Some(Fault::Slow(Duration::from_millis(900))),
        None,
        Some(Fault::BadRequest),
        Some(Fault::DropBeforeResponse),
        None,
        Some(Fault::Partial),
        Some(Fault::Malformed207),
        None,
        Some(Fault::Server(503)),
        Some(Fault::Server(500)),
        Some(Fault::DropMidResponse),
        None,
        Some(Fault::Slow(Duration::from_millis(700))),
        Some(Fault::Partial),
        Some(Fault::TooMany(0)),
    ];
    // Faults stop after the schedule: the feed then drains.
    let faults: Vec<Fault> = schedule
        .iter()
        .chain(schedule.iter())
        .map(|f| f.clone().unwrap_or(Fault::Slow(Duration::ZERO)))
        .collect();
    let emu = Emu::start(faults);
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    // SYNC_SEED=N reruns with another workload.
    let seed = std::env::var("SYNC_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0001);
    let mut rng = Rng(seed);
    let mut clock = 1_700_000_000_000;
    workload(&reg, &mut rng, 150, &mut clock);
    let started = Instant::now();
    let handle = SyncWorker::new(reg.clone(), config(&emu).max_ops(2))
        .unwrap()
        .start()
        .unwrap();
    // More changes while the worker runs.
    for _ in 0..15 {
        workload(&reg, &mut rng, 10, &mut clock);
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_drained(&reg, 45);
    let stats = handle.shutdown().unwrap();
    eprintln!("stats {stats:?} in {:?}", started.elapsed());
    assert!(stats.batches > 10 && stats.retries >= 8, "{stats:?}");
    assert!(
        stats.dead_letters > 0 && stats.ignored_indices > 0,
        "{stats:?}"
    );
    assert_converged(&reg, &emu);
    assert_rate(&emu, 20);
    let (reapplied, statuses) = emu.with(|s| (s.reapplied, s.statuses.clone()));
    assert!(
        reapplied >= 3,
        "lost answers must cause re-sends: {reapplied}"
    );
    for code in [200, 207, 400, 429, 500, 503] {
        assert!(statuses.contains(&code), "no {code} in {statuses:?}");
    }
    // The 429 with Retry-After: 1 was honoured.
    let starts = emu.with(|s| s.starts.clone());
    let i = statuses.iter().position(|&c| c == 429).unwrap();
    assert!(starts[i + 1].duration_since(starts[i]) >= Duration::from_millis(990));
    // A drained worker sends nothing more.
    let before = emu.with(|s| s.starts.len());
    let again = SyncWorker::new(reg.clone(), config(&emu))
        .unwrap()
        .run_once()
        .unwrap();
    assert_eq!((again.requests, emu.with(|s| s.starts.len())), (0, before));
    let report = reg.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// The worker of a Pipelines sink: the source key as Basic auth user name,
/// `/v1/batch`.
fn pipelines_config(emu: &Emu) -> SyncConfig {
    SyncConfig::new(Credentials::pipelines(CDP_KEY).unwrap())
        .endpoint(emu.url())
        .sink("cdp")
        .max_ops(5)
        .max_rps(50.0)
        .timeout(Duration::from_millis(400))
        .backoff(Duration::from_millis(5), Duration::from_millis(60))
        .poll_interval(Duration::from_millis(20))
        .max_attempts(Some(50))
}

fn add_pipelines_sink(reg: &Registry) {
    let settings =
        format::SinkSettings::new(format::FormatKind::Pipelines, format::IdentifierKind::Id)
            .unwrap();
    assert!(reg.add_sink_with("cdp", settings).unwrap());
}

/// A Pipelines sink through the same faults: one call per request (the
/// emulator flags more), strict mode, 400 for a call it rejects (no 207 in
/// Pipelines: the call is dead-lettered), retries on 429/5xx/lost answers
/// (a re-sent call repeats its message id, de-duplicated by the model).
#[test]
fn pipelines_random_workload_converges_through_every_fault() {
    use Fault::*;
    let schedule = [
        None,
        Some(Partial),
        Some(Server(500)),
        Some(DropMidResponse),
        None,
        Some(TooMany(0)),
        Some(Server(503)),
        Some(Slow(Duration::from_millis(700))),
        Some(BadRequest),
        Some(DropBeforeResponse),
        None,
        Some(Malformed207),
    ];
    let faults: Vec<Fault> = schedule
        .iter()
        .chain(schedule.iter())
        .map(|f| f.clone().unwrap_or(Slow(Duration::ZERO)))
        .collect();
    let emu = Emu::start(faults);
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    let mut rng = Rng(0x5eed_0002);
    let mut clock = 1_700_000_000_000;
    workload(&reg, &mut rng, 60, &mut clock);
    add_pipelines_sink(&reg);
    let handle = SyncWorker::new(reg.clone(), pipelines_config(&emu))
        .unwrap()
        .start()
        .unwrap();
    for _ in 0..5 {
        workload(&reg, &mut rng, 8, &mut clock);
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_sink_drained(&reg, "cdp", 60);
    let stats = handle.shutdown().unwrap();
    assert!(stats.retries >= 5 && stats.dead_letters >= 3, "{stats:?}");
    assert_eq!(stats.batches, stats.operations, "one call per request");
    assert_sink_converged(&reg, &emu, "cdp");
    let (statuses, duplicates) = emu.with(|s| (s.statuses.clone(), s.cio.duplicates));
    for code in [200, 400, 429, 500, 503] {
        assert!(statuses.contains(&code), "no {code} in {statuses:?}");
    }
    assert!(!statuses.contains(&207));
    assert!(duplicates >= 1, "lost answers must cause re-sends");
    for d in reg.dead_letters("cdp").unwrap() {
        assert!(d.reason.starts_with("HTTP 400: "), "{}", d.reason);
    }
    let report = reg.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// The worker's credentials say which format it sends: a sink of the
/// other format, or a missing Pipelines sink (an export would create a
/// track-v2 one), stop it before any request with an error naming the field.
#[test]
fn a_worker_refuses_a_sink_of_another_format() {
    let emu = Emu::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    reg_one(&reg);
    let field = |r: Result<SyncStats, Error>| match r {
        Err(Error::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    let mut w = SyncWorker::new(reg.clone(), pipelines_config(&emu)).unwrap();
    assert_eq!(field(w.run_once()), "sink");
    let mut w = SyncWorker::new(reg.clone(), config(&emu).sink("cdp")).unwrap();
    add_pipelines_sink(&reg);
    assert_eq!(field(w.run_once()), "sink.format");
    assert!(emu.with(|s| s.starts.is_empty()), "nothing was sent");
    // The right worker drains it.
    let stats = SyncWorker::new(reg.clone(), pipelines_config(&emu))
        .unwrap()
        .run_once()
        .unwrap();
    assert_eq!((stats.batches, stats.dead_letters), (1, 0));
    assert_sink_converged(&reg, &emu, "cdp");
}

fn reg_one(reg: &Registry) {
    let _ = reg
        .register(Register {
            token: "ab12".into(),
            platform: Platform::Android,
            person: Some("p1".into()),
            seen_ms: 1_700_000_000_000,
            attributes: None,
        })
        .unwrap();
}

#[test]
fn max_rps_holds_when_requests_are_fast() {
    let emu = Emu::start(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    for i in 0..50 {
        let _ = reg
            .register(Register {
                token: format!("t{i:03}"),
                platform: Platform::Ios,
                person: Some(format!("p{i}")),
                seen_ms: 9_000,
                attributes: None,
            })
            .unwrap();
    }
    let t = Instant::now();
    let s = SyncWorker::new(reg.clone(), config(&emu).max_ops(1))
        .unwrap()
        .run_once()
        .unwrap();
    assert_eq!((s.requests, s.batches, s.operations), (50, 50, 50));
    // 50 requests at 20 per second take at least 49 intervals.
    assert!(
        t.elapsed() >= Duration::from_millis(2450),
        "{:?}",
        t.elapsed()
    );
    let busiest = assert_rate(&emu, 20);
    assert!(busiest >= 18, "the limiter was not binding: {busiest}");
    assert_converged(&reg, &emu);
}

#[test]
fn partial_bad_request_and_malformed_answers_become_dead_letters() {
    let emu = Emu::start(vec![Fault::Partial, Fault::BadRequest, Fault::Malformed207]);
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    let reg_dev = |t: &str, p: &str| {
        let _ = reg
            .register(Register {
                token: t.into(),
                platform: Platform::Ios,
                person: Some(p.into()),
                seen_ms: 1_000_000,
                attributes: None,
            })
            .unwrap();
    };
    let run = || {
        SyncWorker::new(reg.clone(), config(&emu).max_ops(100))
            .unwrap()
            .run_once()
            .unwrap()
    };
    for t in ["a1", "a2", "a3"] {
        reg_dev(t, "ann");
    }
    let s = run();
    assert_eq!(
        (s.batches, s.dead_letters, s.ignored_indices),
        (1, 2, 1),
        "{s:?}"
    );
    let dead = reg.dead_letters(DEFAULT_SINK).unwrap();
    assert_eq!(dead.iter().map(|d| d.index).collect::<Vec<_>>(), vec![0, 2]);
    assert!(
        dead[0]
            .reason
            .contains("invalid (field device.token): emulator rejects op 0"),
        "{dead:?}"
    );

    reg_dev("b1", "bob");
    reg_dev("b2", "bob");
    let s = run();
    assert_eq!((s.batches, s.dead_letters), (1, 2), "{s:?}");
    let dead = reg.dead_letters(DEFAULT_SINK).unwrap();
    assert_eq!(dead.len(), 4);
    assert!(
        dead[2..].iter().all(|d| d.reason.starts_with("HTTP 400: ")
            && d.reason.contains("emulator says: malformed batch")),
        "{dead:?}"
    );

    reg_dev("c1", "cy");
    let s = run();
    assert_eq!((s.batches, s.dead_letters), (1, 1), "{s:?}");
    let dead = reg.dead_letters(DEFAULT_SINK).unwrap();
    assert!(
        dead[4].reason.starts_with("unparseable 207 body: "),
        "{dead:?}"
    );
    // Never looped: one request per batch.
    assert_eq!(emu.with(|s| s.starts.len()), 3);
    // Requeued, they are delivered.
    assert_eq!(reg.requeue(DEFAULT_SINK).unwrap(), 5);
    run();
    assert!(reg.dead_letters(DEFAULT_SINK).unwrap().is_empty());
    assert_converged(&reg, &emu);
    assert_eq!(emu.with(|s| s.pairs().len()), 6);
}

#[test]
fn rejected_credentials_stop_the_worker_and_nothing_is_acknowledged() {
    let emu = Emu::start(vec![Fault::Unauthorized]);
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    let mut rng = Rng(7);
    let mut clock = 1_700_000_000_000;
    workload(&reg, &mut rng, 40, &mut clock);
    let check = |err: Error| {
        let msg = err.to_string();
        assert!(matches!(&err, Error::Auth { status: 401, .. }), "{err:?}");
        assert!(
            msg.contains("credentials") && msg.contains("HTTP 401"),
            "{msg}"
        );
        assert!(!msg.contains(KEY) && !format!("{err:?}").contains(KEY));
    };
    // A scheduled 401 with the right key, then a wrong key.
    let err = SyncWorker::new(reg.clone(), config(&emu))
        .unwrap()
        .run_once()
        .unwrap_err();
    check(err);
    let wrong = SyncConfig::new(Credentials::new(SITE, "not-the-key").unwrap())
        .endpoint(emu.url())
        .timeout(Duration::from_secs(2));
    assert!(!format!("{wrong:?}").contains("not-the-key"));
    let handle = SyncWorker::new(reg.clone(), wrong)
        .unwrap()
        .start()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "the worker did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    check(handle.shutdown().unwrap_err());
    // Two requests, no retry, nothing acknowledged or dead-lettered.
    assert_eq!(emu.with(|s| (s.starts.len(), s.auth_failures)), (2, 1));
    let info = reg
        .sinks()
        .into_iter()
        .find(|s| s.name == DEFAULT_SINK)
        .unwrap();
    assert_eq!(info.batches_exported, 1, "{info:?}");
    assert!(
        info.in_flight.is_some() && info.pending > 0 && info.dead_letters == 0,
        "{info:?}"
    );
    assert!(emu.with(|s| s.cio.persons.is_empty()));
}

#[test]
fn shutdown_mid_request_keeps_the_acknowledgement() {
    let emu = Emu::start(vec![Fault::Slow(Duration::from_millis(300))]);
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    let mut rng = Rng(11);
    let mut clock = 1_700_000_000_000;
    workload(&reg, &mut rng, 60, &mut clock);
    let handle = SyncWorker::new(reg.clone(), config(&emu).timeout(Duration::from_secs(2)))
        .unwrap()
        .start()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while emu.with(|s| s.starts.is_empty()) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    // The first request is in flight (its answer is 300 ms away).
    let stats = handle.shutdown().unwrap();
    assert_eq!((stats.requests, stats.batches), (1, 1), "{stats:?}");
    let info = reg
        .sinks()
        .into_iter()
        .find(|s| s.name == DEFAULT_SINK)
        .unwrap();
    assert!(
        info.in_flight.is_none(),
        "the answered batch was acknowledged: {info:?}"
    );
    // A later worker drains the rest.
    let s = SyncWorker::new(reg.clone(), config(&emu))
        .unwrap()
        .run_once()
        .unwrap();
    assert!(s.batches > 0);
    assert_converged(&reg, &emu);
}

// ---------------------------------------------------------------- the CLI

fn cli(db: &Path, emu: &Emu, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_devreg"));
    c.arg("--db")
        .arg(db)
        .args([
            "sync",
            "--endpoint",
            &emu.url(),
            "--max-ops",
            "2",
            "--max-rps",
            "50",
        ])
        .args([
            "--timeout-ms",
            "5000",
            "--backoff-base-ms",
            "5",
            "--backoff-cap-ms",
            "50",
        ])
        .args(extra)
        .env("CUSTOMERIO_SITE_ID", SITE)
        .env("CUSTOMERIO_API_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

fn wait_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("devreg sync did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigkill_mid_sync_then_restart_converges() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let reg = open(&db);
        let mut rng = Rng(99);
        let mut clock = 1_700_000_000_000;
        workload(&reg, &mut rng, 120, &mut clock);
    }
    let emu = Emu::start(Vec::new());
    emu.with(|s| s.slow_all = Some(Duration::from_millis(150)));
    let log = dir.path().join("stderr-1");
    let mut child = cli(&db, &emu, &["--once", "--progress", "json"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while emu.with(|s| s.starts.len()) < 6 {
        assert!(Instant::now() < deadline, "no requests from devreg sync");
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "devreg sync exited early ({st:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Request 6 has been applied; its answer is 150 ms away.
    std::thread::sleep(Duration::from_millis(40));
    child.kill().unwrap(); // SIGKILL
    let st = child.wait().unwrap();
    assert_eq!(st.signal(), Some(9));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!stderr.contains(KEY));
    emu.with(|s| s.slow_all = None);
    let log2 = dir.path().join("stderr-2");
    let mut child = cli(&db, &emu, &["--once", "--progress", "json"])
        .stderr(std::fs::File::create(&log2).unwrap())
        .spawn()
        .unwrap();
    let st = wait_exit(&mut child, 40);
    let stderr = std::fs::read_to_string(&log2).unwrap();
    assert!(st.success(), "{stderr}");
    assert!(!stderr.contains(KEY));
    let last: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    for k in ["batches", "ops", "retries", "dead_letters", "lag", "rate"] {
        assert!(last.get(k).is_some(), "{k} missing from {last}");
    }
    assert_eq!(last["event"], "done");
    assert_eq!(last["lag"], 0);
    assert!(
        emu.with(|s| s.reapplied) >= 1,
        "the killed request was re-sent"
    );
    let reg = open(&db);
    wait_drained(&reg, 1);
    assert_converged(&reg, &emu);
    assert_rate(&emu, 50);
}

#[test]
fn cli_follows_until_sigterm_and_needs_env_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let reg = open(&db);
        for i in 0..5 {
            let _ = reg
                .register(Register {
                    token: format!("t{i}"),
                    platform: Platform::Android,
                    person: Some(format!("p{i}")),
                    seen_ms: 5_000,
                    attributes: None,
                })
                .unwrap();
        }
    }
    let emu = Emu::start(Vec::new());
    // Missing credentials: a clear error, exit 1, nothing sent.
    let out = cli(&db, &emu, &["--once"])
        .env_remove("CUSTOMERIO_API_KEY")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CUSTOMERIO_API_KEY") && err.contains("not set"),
        "{err}"
    );
    assert_eq!(emu.with(|s| s.starts.len()), 0);
    // Follow mode: drains, keeps running, stops cleanly on SIGTERM.
    let mut child = cli(&db, &emu, &["--progress", "json"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while emu.with(|s| s.pairs().len()) < 5 {
        assert!(Instant::now() < deadline, "devreg sync did not deliver");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        child.try_wait().unwrap().is_none(),
        "follow mode exited by itself"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let st = wait_exit(&mut child, 20);
    assert_eq!(st.code(), Some(0), "{st:?}");
    let reg = open(&db);
    wait_drained(&reg, 1);
    assert_converged(&reg, &emu);
}

// ---------------------------------------------------------------- TLS failures

/// A loopback listener that hands each connection to `serve`; counts them.
struct Listener {
    port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(serve: impl Fn(TcpStream) + Send + 'static) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((s, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            s.set_nonblocking(false).unwrap();
                            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            serve(s);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Listener {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TLS server for `localhost` whose certificate is self-signed (made
/// fresh by rcgen): no client trusts it.
fn self_signed_tls() -> impl Fn(TcpStream) + Send + 'static {
    use rustls::pki_types::PrivateKeyDer;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .unwrap();
    let config = Arc::new(config);
    move |mut tcp| {
        let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
        // Ends with the client's alert: it does not trust the certificate.
        let _ = conn.complete_io(&mut tcp);
    }
}

/// A plain-HTTP server on the https port: its answer is not TLS.
fn not_tls(mut tcp: TcpStream) {
    let mut hello = [0u8; 512];
    let _ = tcp.read(&mut hello);
    let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
}

fn registry_with_changes(db: &Path) -> Registry {
    let reg = open(db);
    for i in 0..3 {
        let _ = reg
            .register(Register {
                token: format!("tls-token-{i}"),
                platform: Platform::Ios,
                person: Some(format!("p{i}")),
                seen_ms: 5_000,
                attributes: None,
            })
            .unwrap();
    }
    reg
}

/// `run_once` with the default unlimited attempts; fails the test if it has
/// not returned within `secs` (then it is stopped).
fn run_once_within(reg: &Registry, config: SyncConfig, secs: u64) -> Result<SyncStats, Error> {
    let mut worker = SyncWorker::new(reg.clone(), config).unwrap();
    let control = worker.control();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(worker.run_once());
    });
    let got = rx.recv_timeout(Duration::from_secs(secs));
    if got.is_err() {
        control.stop();
    }
    thread.join().unwrap();
    got.unwrap_or_else(|_| {
        panic!(
            "run_once did not return within {secs} s: {:?}",
            control.stats()
        )
    })
}

fn assert_nothing_acknowledged(reg: &Registry) {
    let info = reg
        .sinks()
        .into_iter()
        .find(|s| s.name == DEFAULT_SINK)
        .unwrap();
    assert!(
        info.in_flight.is_some() && info.pending > 0 && info.dead_letters == 0,
        "{info:?}"
    );
}

#[test]
fn an_untrusted_certificate_stops_the_worker_instead_of_retrying() {
    let server = Listener::start(self_signed_tls());
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_with_changes(&dir.path().join("db"));
    let config = SyncConfig::new(creds())
        .endpoint(server.url())
        .timeout(Duration::from_secs(3))
        .backoff(Duration::from_millis(5), Duration::from_millis(50));
    assert_eq!(config.max_attempts, None, "retries forever unless fatal");
    let started = Instant::now();
    let err = run_once_within(&reg, config, 10).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(&err, Error::Tls { .. }), "{err:?}");
    assert!(
        msg.contains("TLS certificate") && msg.contains("could not be verified"),
        "{msg}"
    );
    assert!(msg.contains(&server.url()), "names the endpoint: {msg}");
    assert!(!msg.contains(KEY), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(server.accepted(), 1, "one handshake, no retry");
    assert_nothing_acknowledged(&reg);
}

#[test]
fn a_server_that_does_not_speak_tls_stops_the_worker() {
    let server = Listener::start(not_tls);
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_with_changes(&dir.path().join("db"));
    let config = SyncConfig::new(creds())
        .endpoint(server.url())
        .timeout(Duration::from_secs(3))
        .backoff(Duration::from_millis(5), Duration::from_millis(50));
    let err = run_once_within(&reg, config, 10).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(&err, Error::Tls { .. }), "{err:?}");
    assert!(
        msg.contains("TLS handshake") && msg.contains(&server.url()),
        "{msg}"
    );
    assert_eq!(server.accepted(), 1, "one attempt, no retry");
    assert_nothing_acknowledged(&reg);
}

#[test]
fn cli_sync_once_exits_on_an_untrusted_certificate() {
    let server = Listener::start(self_signed_tls());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    drop(registry_with_changes(&db));
    let mut child = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(&db)
        .args(["sync", "--once", "--endpoint", &server.url()])
        .args(["--backoff-base-ms", "5", "--backoff-cap-ms", "50"])
        .args(["--progress", "json"])
        .env("CUSTOMERIO_SITE_ID", SITE)
        .env("CUSTOMERIO_API_KEY", KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, 10);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TLS certificate") && stderr.contains("could not be verified"),
        "{stderr}"
    );
    assert!(stderr.contains(&server.url()), "{stderr}");
    assert_eq!(server.accepted(), 1);
}

/// `sync --once` against an endpoint that refuses connections gives up:
/// after `--max-attempts` on a batch, or at `--deadline-s`, it exits 75
/// (EX_TEMPFAIL) with the last error, and nothing pending is lost. A cron
/// job no longer hangs. Follow mode does not take these options.
#[test]
fn sync_once_gives_up_against_an_unreachable_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let pending = {
        let reg = open(&db);
        let mut clock = 1_700_000_000_000;
        workload(&reg, &mut Rng(5), 40, &mut clock);
        reg.export(DEFAULT_SINK, 1, 499_999).unwrap();
        reg.sinks()[0].pending
    };
    // A port nobody listens on: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let sync = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_devreg"))
            .arg("--db")
            .arg(&db)
            .args(["sync", "--endpoint", &endpoint, "--progress", "json"])
            .args(["--backoff-base-ms", "1", "--backoff-cap-ms", "20"])
            .args(extra)
            .env("CUSTOMERIO_SITE_ID", SITE)
            .env("CUSTOMERIO_API_KEY", KEY)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = sync(&["--once", "--max-attempts", "3"]);
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains("gave up after 3 attempts"), "{err}");
    let started = Instant::now();
    let (code, err) = sync(&["--once", "--max-attempts", "100000", "--deadline-s", "1"]);
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains("--deadline-s 1"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Without --max-attempts, --once still ends (default 8 attempts).
    let (code, err) = sync(&["--once"]);
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains("gave up after 8 attempts"), "{err}");
    // Follow mode refuses the options (a usage error).
    let (code, _) = sync(&["--max-attempts", "3"]);
    assert_eq!(code, Some(2));
    let reg = open(&db);
    assert_eq!(reg.sinks()[0].pending, pending, "items were lost");
}

/// The worker's `lag` stays current while the endpoint is down: a new
/// sink's snapshot counts at once (it read 0 through an outage while 250
/// items were pending), and changes made during the outage are counted
/// while the worker retries.
#[test]
fn lag_stays_current_while_the_endpoint_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    let add = |from: u64, to: u64| {
        for i in from..to {
            let _ = reg
                .register(Register {
                    token: format!("{i:064x}"),
                    platform: Platform::Ios,
                    person: Some(format!("p{i}")),
                    seen_ms: 1_700_000_000_000 + i,
                    attributes: None,
                })
                .unwrap();
        }
    };
    add(0, 250);
    // A port nobody listens on: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = SyncConfig::new(creds())
        .endpoint(format!("http://127.0.0.1:{port}"))
        .backoff(Duration::from_millis(1), Duration::from_millis(10))
        .max_attempts(None);
    let handle = SyncWorker::new(reg.clone(), config)
        .unwrap()
        .start()
        .unwrap();
    let wait_for_retries = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while handle.stats().retries < n {
            assert!(Instant::now() < deadline, "{:?}", handle.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.stats()
    };
    let s = wait_for_retries(2);
    assert_eq!((s.lag, s.batches), (250, 0), "{s:?}");
    add(250, 260);
    let s = wait_for_retries(s.retries + 2);
    assert_eq!(s.lag, 260, "{s:?}");
    assert_eq!(reg.sinks()[0].pending, 260);
    handle.shutdown().unwrap();
}

/// A plain-HTTP server that reads one request and gives `answer`.
fn answering(answer: &'static str) -> impl Fn(TcpStream) + Send + 'static {
    move |tcp| {
        let mut r = BufReader::new(tcp);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        let _ = r.read_exact(&mut body);
        let _ = r.get_mut().write_all(answer.as_bytes());
    }
}

/// Answers the worker neither settles nor retries are typed errors that
/// carry the status and the body: `Error::Http` (a 404, a redirect), and
/// `Error::Auth` for a 403; a batch that runs out of attempts is
/// `Error::GaveUp`. Nothing is acknowledged.
#[test]
fn unexpected_answers_and_exhausted_retries_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry_with_changes(&dir.path().join("db"));
    let run = |answer: &'static str, attempts: Option<u32>| {
        let server = Listener::start(answering(answer));
        let url = format!("http://127.0.0.1:{}", server.port);
        let config = SyncConfig::new(creds())
            .endpoint(url.clone())
            .timeout(Duration::from_secs(3))
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
            .max_attempts(attempts);
        let err = run_once_within(&reg, config, 10).unwrap_err();
        assert!(err.to_string().contains(&url), "{err}");
        assert!(!format!("{err:?}").contains(KEY));
        assert_nothing_acknowledged(&reg);
        (err, server.accepted())
    };
    let (err, n) = run(
        "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 12\r\n\r\nno such page",
        None,
    );
    match &err {
        Error::Http {
            status: 404, body, ..
        } => assert_eq!(body, "no such page"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("the endpoint is wrong"), "{err}");
    assert_eq!(n, 1, "not retried");
    let (err, _) = run(
        "HTTP/1.1 302 Found\r\nlocation: https://elsewhere.example/\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        None,
    );
    match &err {
        Error::Http {
            status: 302, body, ..
        } => {
            assert_eq!(body, "redirected to https://elsewhere.example/")
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("eu region"), "{err}");
    let (err, _) = run(
        "HTTP/1.1 403 Forbidden\r\nconnection: close\r\ncontent-length: 6\r\n\r\nnope!!",
        None,
    );
    assert!(
        matches!(&err, Error::Auth { status: 403, body, .. } if body == "nope!!"),
        "{err:?}"
    );
    let (err, n) = run(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy",
        Some(3),
    );
    match &err {
        Error::GaveUp {
            attempts: 3, last, ..
        } => assert_eq!(last, "HTTP 503: busy"),
        other => panic!("{other:?}"),
    }
    assert_eq!(n, 3);
}

// ------------------------------------------- a worker in its own process

/// `devreg sync --server URL`: a worker in its own process drains a live
/// `devreg serve` into the emulator, through faults (a partial failure, a
/// rejected batch, 500, 429, a dropped connection), while changes keep
/// arriving through the server; a SIGKILL of the worker mid-run loses
/// nothing. After the server stops, the emulator holds exactly the
/// registry's devices apart from the dead letters.
#[cfg(feature = "server")]
#[test]
fn a_worker_in_its_own_process_drains_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut rng = Rng(7);
    let mut clock = 1_700_000_000_000;
    {
        let reg = open(&db);
        workload(&reg, &mut rng, 150, &mut clock);
        reg.close().unwrap();
    }
    let server = served::Server::start(&db, None, &["--no-auth"]);
    let url = server.url.clone();
    let emu = Emu::start(vec![
        Fault::Partial,
        Fault::Server(500),
        Fault::BadRequest,
        Fault::TooMany(0),
        Fault::DropBeforeResponse,
    ]);
    let worker = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_devreg"));
        c.args(["sync", "--server", &url, "--endpoint", &emu.url()])
            .args(["--max-ops", "3", "--max-rps", "100", "--timeout-ms", "2000"])
            .args(["--backoff-base-ms", "5", "--backoff-cap-ms", "50"])
            .args(extra)
            .env("CUSTOMERIO_SITE_ID", SITE)
            .env("CUSTOMERIO_API_KEY", KEY)
            .env_remove("DEVREG_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    // A follower, killed once it has sent a few batches.
    let mut follower = worker(&["--progress", "json"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while emu.with(|s| s.starts.len()) < 8 {
        assert!(Instant::now() < deadline, "no requests from the worker");
        std::thread::sleep(Duration::from_millis(5));
    }
    follower.kill().unwrap();
    let _ = follower.wait();
    // More changes through the server while no worker runs.
    let events: String = (0..30)
        .map(|i| {
            format!(
                "{{\"op\":\"register\",\"token\":\"live{i}\",\"platform\":\"ios\",\
                 \"person\":\"person-{}\",\"seen_ms\":{}}}\n",
                i % 5,
                clock + i
            )
        })
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let mut r = agent
        .post(&format!("{url}/v1/events"))
        .send(events.as_bytes())
        .unwrap();
    let answer = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{answer}");
    // A worker that drains and exits.
    let out = worker(&["--once", "--progress", "json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(KEY));
    let last: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&last["event"], &last["lag"]),
        (&Value::from("done"), &Value::from(0))
    );
    let (st, err) = server.stop();
    assert!(st.success(), "devreg serve exited {st:?}: {err}");
    let reg = open(&db);
    wait_drained(&reg, 1);
    assert!(reg.device("live29").is_some());
    assert!(!reg.dead_letters(DEFAULT_SINK).unwrap().is_empty());
    assert_converged(&reg, &emu);
}

/// `devreg sync --format pipelines` takes the source key from
/// CUSTOMERIO_CDP_API_KEY (and needs it), posts to /v1/batch and drains a
/// Pipelines sink made by `devreg sinks add`.
#[test]
fn cli_syncs_a_pipelines_sink_with_the_cdp_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let reg = open(&db);
        for i in 0..4 {
            reg_ios_cli(&reg, i);
        }
    }
    let add = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(&db)
        .args(["sinks", "add", "cdp", "--format", "pipelines"])
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let emu = Emu::start(Vec::new());
    let args = ["--once", "--sink", "cdp", "--format", "pipelines"];
    let out = cli(&db, &emu, &args)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CUSTOMERIO_CDP_API_KEY") && err.contains("not set"),
        "{err}"
    );
    let out = cli(&db, &emu, &args)
        .env("CUSTOMERIO_CDP_API_KEY", CDP_KEY)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(emu.with(|s| s.starts.len()), 4, "one call per request");
    let reg = open(&db);
    assert_sink_converged(&reg, &emu, "cdp");
    assert_eq!(emu.with(|s| s.pairs().len()), 4);
}

fn reg_ios_cli(reg: &Registry, i: u32) {
    let _ = reg
        .register(Register {
            token: format!("t{i}"),
            platform: Platform::Ios,
            person: Some(format!("p{i}")),
            seen_ms: 5_000,
            attributes: None,
        })
        .unwrap();
}

//! `cargo bench --bench server --features server [-- --quick]`: the HTTP
//! server against its own floor, in one run (issue 14's targets).
//!
//! A server (`devreg::server::serve`, in this process, on a loopback port,
//! no auth) is measured with keep-alive clients (one connection per client
//! thread: the lean client of `server_client/raw.rs`, or ureq agents with
//! `--client ureq`) in bounded loops, each phase a fixed time:
//! - `GET /healthz`: the HTTP floor (no engine call);
//! - `GET /v1/devices/{token}`: target at least 0.7 of the floor's rate;
//! - a single-event `POST /v1/events?durability=eventual`: at least 0.5;
//! - the same with `durability=immediate` from 16 clients: at least 0.8 of
//!   the library's own durable registers from 8 threads, measured in the
//!   same run on its own database.
//!
//! Every phase reports its rate, p50/p99 latency and the process's CPU
//! time per operation (clients and server together: they share the
//! machine); the durable phases also report the registry's group commits
//! (operations per fdatasync). The results go to
//! `bench-results/server.{txt,json}` (with `--quick`, `server-quick.*`, and
//! no verdicts: it only checks that the harness runs).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use devreg::server::{serve, ServerConfig};

#[path = "server_client/raw.rs"]
mod raw;
use devreg::{Config, Durability, Platform, Register, Registry};

/// Devices registered before the read phase.
const DEVICES: u64 = 20_000;
/// Client threads of the read and eventual-write phases (2 cores: more
/// only queue).
const CLIENTS: usize = 4;
/// Client threads of the durable-write phase (the figure).
const DURABLE_CLIENTS: usize = 16;
/// Library threads of the durable baseline.
const LIBRARY_THREADS: usize = 8;

struct Phase {
    name: &'static str,
    ops: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    /// The whole process's CPU time (user + system) per operation.
    cpu_us_per_op: f64,
    /// Group commits in the phase and the records they appended (durable
    /// phases only).
    groups: Option<(u64, u64)>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let ureq_client = args
        .windows(2)
        .any(|w| w[0] == "--client" && w[1] == "ureq");
    let phase = Duration::from_millis(if quick { 300 } else { 3_000 });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (url, served) = start_server(&dir.path().join("served"));
    let client = agent();
    seed(&client, &url);
    let mut phases = if ureq_client {
        ureq_phases(&url, &served, phase)
    } else {
        raw_phases(&url, &served, phase)
    };
    phases.push(library_durable(&dir.path().join("library"), phase));
    report(&phases, quick, if ureq_client { "ureq" } else { "raw" });
    // The server runs until a signal; the results are written.
    std::process::exit(0);
}

/// The server's phases with the lean client (the default).
fn raw_phases(url: &str, served: &Registry, phase: Duration) -> Vec<Phase> {
    let addr = url.trim_start_matches("http://").to_owned();
    let connect = || raw::Raw::connect(&addr);
    let post = |c: &mut raw::Raw, durability: &str, i: u64| {
        let body = event(&format!("new{i}"), i);
        c.post(
            &format!("/v1/events?durability={durability}"),
            body.as_bytes(),
        )
    };
    vec![
        timed("GET /healthz (floor)", CLIENTS, phase, connect, |c, _| {
            c.get("/healthz")
        }),
        timed(
            "GET /v1/devices/{token}",
            CLIENTS,
            phase,
            connect,
            |c, i| c.get(&format!("/v1/devices/tok{}", i % DEVICES)),
        ),
        timed(
            "POST /v1/events, eventual",
            CLIENTS,
            phase,
            connect,
            |c, i| post(c, "eventual", i),
        ),
        with_groups(served, || {
            timed(
                "POST /v1/events, immediate, 16 clients",
                DURABLE_CLIENTS,
                phase,
                connect,
                |c, i| post(c, "immediate", i),
            )
        }),
    ]
}

/// The server's phases with ureq agents (`--client ureq`).
fn ureq_phases(url: &str, served: &Registry, phase: Duration) -> Vec<Phase> {
    vec![
        run_phase("GET /healthz (floor)", CLIENTS, phase, |a, i| {
            get(a, &format!("{url}/healthz"), i)
        }),
        run_phase("GET /v1/devices/{token}", CLIENTS, phase, |a, i| {
            get(a, &format!("{url}/v1/devices/tok{}", i % DEVICES), i)
        }),
        run_phase("POST /v1/events, eventual", CLIENTS, phase, |a, i| {
            post_event(a, url, "eventual", i)
        }),
        with_groups(served, || {
            run_phase(
                "POST /v1/events, immediate, 16 clients",
                DURABLE_CLIENTS,
                phase,
                |a, i| post_event(a, url, "immediate", i),
            )
        }),
    ]
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Starts the server on its own thread; returns its base URL and a handle
/// on its registry (for the group-commit counts).
fn start_server(db: &Path) -> (String, Registry) {
    let reg = Registry::open_with(Config::new(db)).expect("the served registry opens");
    let handle = reg.clone();
    let mut config = ServerConfig::new();
    config.listen = "127.0.0.1:0".into();
    config.no_auth = true;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let served = serve(reg, config, move |addr| {
            let _ = tx.send(addr.to_owned());
        });
        if let Err(e) = served {
            eprintln!("server: {e}");
            std::process::exit(1);
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server listens");
    (url, handle)
}

/// Runs `phase` and adds the group commits `reg` made meanwhile.
fn with_groups(reg: &Registry, phase: impl FnOnce() -> Phase) -> Phase {
    let before = reg.metrics();
    let mut p = phase();
    let after = reg.metrics();
    p.groups = Some((
        after.group_commits - before.group_commits,
        after.group_commit_records.sum - before.group_commit_records.sum,
    ));
    p
}

/// The process's user + system CPU time so far, in µs (`/proc/self/stat`,
/// clock ticks of 10 ms: about 1% of a 3 s phase on 2 cores).
fn process_cpu_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    ticks * 1e6 / 100.0
}

/// Registers `DEVICES` devices in batches of 1,000 events.
fn seed(a: &ureq::Agent, url: &str) {
    for chunk in 0..DEVICES / 1_000 {
        let body: String = (chunk * 1_000..(chunk + 1) * 1_000)
            .map(|i| event(&format!("tok{i}"), i))
            .collect();
        let mut r = a
            .post(&format!("{url}/v1/events?durability=eventual"))
            .header("Content-Type", "application/x-ndjson")
            .send(body.as_bytes())
            .expect("seeding");
        let text = r.body_mut().read_to_string().expect("the seeding answer");
        assert_eq!(r.status().as_u16(), 200, "seeding: {text}");
    }
}

fn event(token: &str, i: u64) -> String {
    format!(
        "{{\"op\":\"register\",\"token\":\"{token}\",\"platform\":\"ios\",\
         \"person\":\"p{}\",\"seen_ms\":{}}}\n",
        i % 5_000,
        1_700_000_000_000 + i
    )
}

fn get(a: &ureq::Agent, url: &str, _i: u64) -> bool {
    match a.get(url).call() {
        Ok(mut r) => r.body_mut().read_to_string().is_ok() && r.status().as_u16() == 200,
        Err(_) => false,
    }
}

fn post_event(a: &ureq::Agent, url: &str, durability: &str, i: u64) -> bool {
    let body = event(&format!("new{i}"), i);
    let sent = a
        .post(&format!("{url}/v1/events?durability={durability}"))
        .header("Content-Type", "application/x-ndjson")
        .send(body.as_bytes());
    match sent {
        Ok(mut r) => r.body_mut().read_to_string().is_ok() && r.status().as_u16() == 200,
        Err(_) => false,
    }
}

/// `clients` threads, each with its own keep-alive agent, calling `op`
/// until `dur` has passed; every call's latency is kept.
fn run_phase(
    name: &'static str,
    clients: usize,
    dur: Duration,
    op: impl Fn(&ureq::Agent, u64) -> bool + Sync,
) -> Phase {
    timed(name, clients, dur, agent, |a, i| op(a, i))
}

/// The library's durable registers from `LIBRARY_THREADS` threads.
fn library_durable(db: &Path, dur: Duration) -> Phase {
    let reg = Registry::open_with(Config::new(db).durability(Durability::Immediate))
        .expect("the library registry opens");
    let phase = with_groups(&reg, || {
        timed(
            "library durable register, 8 threads",
            LIBRARY_THREADS,
            dur,
            || (),
            |_, i| {
                let r = Register {
                    token: format!("lib{i}"),
                    platform: Platform::Ios,
                    person: Some(format!("p{}", i % 5_000)),
                    seen_ms: 1 + i,
                    attributes: None,
                };
                reg.register(r).is_ok()
            },
        )
    });
    reg.close().expect("the library registry closes");
    phase
}

/// `threads` threads, each with its own `init()` state, calling `op` with
/// distinct numbers until `dur` has passed; every call is timed. A failed
/// call fails the bench.
fn timed<S>(
    name: &'static str,
    threads: usize,
    dur: Duration,
    init: impl Fn() -> S + Sync,
    op: impl Fn(&mut S, u64) -> bool + Sync,
) -> Phase {
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let cpu_before = process_cpu_us();
    let started = Instant::now();
    let mut lat_us: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut state = init();
                    let mut lat = Vec::new();
                    while started.elapsed() < dur {
                        let i = next.fetch_add(1, Ordering::Relaxed) * 7_919;
                        let t = Instant::now();
                        if !op(&mut state, i) {
                            failed.store(true, Ordering::Relaxed);
                        }
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("a thread"))
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let cpu_us = process_cpu_us() - cpu_before;
    assert!(!failed.load(Ordering::Relaxed), "{name}: a call failed");
    lat_us.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat_us
            .get(((lat_us.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Phase {
        name,
        ops: lat_us.len() as u64,
        secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        cpu_us_per_op: cpu_us / (lat_us.len().max(1) as f64),
        groups: None,
    }
}

fn report(phases: &[Phase], quick: bool, client: &str) {
    let mut text = format!("client: {client}\n\n");
    text.push_str(
        "| phase | ops/s | p50 (us) | p99 (us) | requests | CPU us/op | ops per fsync |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for p in phases {
        let per_group = match p.groups {
            Some((g, r)) if g > 0 => format!("{:.1} ({g} groups)", r as f64 / g as f64),
            _ => "-".into(),
        };
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {per_group} |\n",
            p.name,
            p.rate(),
            p.p50_us,
            p.p99_us,
            p.ops,
            p.cpu_us_per_op,
        ));
    }
    let rate = |i: usize| phases.get(i).map_or(0.0, Phase::rate);
    let targets = [
        ("GET device >= 0.7x the floor", rate(1) / rate(0), 0.7),
        (
            "single-event POST, eventual >= 0.5x the floor",
            rate(2) / rate(0),
            0.5,
        ),
        (
            "immediate, 16 clients >= 0.8x the library's 8-thread durable rate",
            rate(3) / rate(4),
            0.8,
        ),
    ];
    text.push('\n');
    for (what, ratio, need) in targets {
        let verdict = match (quick, ratio >= need) {
            (true, _) => "not judged (--quick)",
            (false, true) => "met",
            (false, false) => "MISSED",
        };
        text.push_str(&format!(
            "- {what}: {ratio:.2} (needs >= {need:.2}): {verdict}\n"
        ));
    }
    print!("{text}");
    let json = serde_json::json!({
        "quick": quick,
        "client": client,
        "phases": phases.iter().map(|p| serde_json::json!({
            "name": p.name, "ops": p.ops, "secs": p.secs, "ops_per_s": p.rate(),
            "p50_us": p.p50_us, "p99_us": p.p99_us, "cpu_us_per_op": p.cpu_us_per_op,
            "group_commits": p.groups.map(|g| g.0), "group_records": p.groups.map(|g| g.1),
        })).collect::<Vec<_>>(),
    });
    let stem = if quick { "server-quick" } else { "server" };
    let _ = std::fs::create_dir_all("bench-results");
    let _ = std::fs::write(format!("bench-results/{stem}.txt"), &text);
    let _ = std::fs::write(format!("bench-results/{stem}.json"), json.to_string());
}

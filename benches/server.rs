//! `cargo bench --bench server --features server [-- --quick]`: the HTTP
//! server against its own floor, in one run (issue 14's targets).
//!
//! A server (`devreg::server::serve`, in this process, on a loopback port,
//! no auth) is measured with keep-alive clients (ureq agents, one per
//! client thread) in bounded loops, each phase a fixed time:
//! - `GET /healthz`: the HTTP floor (no engine call);
//! - `GET /v1/devices/{token}`: target at least 0.7 of the floor's rate;
//! - a single-event `POST /v1/events?durability=eventual`: at least 0.5;
//! - the same with `durability=immediate` from 16 clients: at least 0.8 of
//!   the library's own durable registers from 8 threads, measured in the
//!   same run on its own database.
//!
//! Every phase reports its rate and p50/p99 latency; the results go to
//! `bench-results/server.{txt,json}` (with `--quick`, `server-quick.*`, and
//! no verdicts: it only checks that the harness runs).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use devreg::server::{serve, ServerConfig};
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
}

impl Phase {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let phase = Duration::from_millis(if quick { 300 } else { 3_000 });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = start_server(&dir.path().join("served"));
    let client = agent();
    seed(&client, &url);
    let mut phases = vec![
        run_phase("GET /healthz (floor)", CLIENTS, phase, |a, i| {
            get(a, &format!("{url}/healthz"), i)
        }),
        run_phase("GET /v1/devices/{token}", CLIENTS, phase, |a, i| {
            get(a, &format!("{url}/v1/devices/tok{}", i % DEVICES), i)
        }),
        run_phase("POST /v1/events, eventual", CLIENTS, phase, |a, i| {
            post_event(a, &url, "eventual", i)
        }),
        run_phase(
            "POST /v1/events, immediate, 16 clients",
            DURABLE_CLIENTS,
            phase,
            |a, i| post_event(a, &url, "immediate", i),
        ),
    ];
    phases.push(library_durable(&dir.path().join("library"), phase));
    report(&phases, quick);
    // The server runs until a signal; the results are written.
    std::process::exit(0);
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Starts the server on its own thread; returns its base URL.
fn start_server(db: &Path) -> String {
    let reg = Registry::open_with(Config::new(db)).expect("the served registry opens");
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
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the server listens")
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
    timed(name, clients, dur, agent, op)
}

/// The library's durable registers from `LIBRARY_THREADS` threads.
fn library_durable(db: &Path, dur: Duration) -> Phase {
    let reg = Registry::open_with(Config::new(db).durability(Durability::Immediate))
        .expect("the library registry opens");
    let phase = timed(
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
    );
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
    op: impl Fn(&S, u64) -> bool + Sync,
) -> Phase {
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let started = Instant::now();
    let mut lat_us: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let state = init();
                    let mut lat = Vec::new();
                    while started.elapsed() < dur {
                        let i = next.fetch_add(1, Ordering::Relaxed) * 7_919;
                        let t = Instant::now();
                        if !op(&state, i) {
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
    }
}

fn report(phases: &[Phase], quick: bool) {
    let mut text =
        String::from("| phase | ops/s | p50 (us) | p99 (us) | requests |\n|---|---|---|---|---|\n");
    for p in phases {
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {} |\n",
            p.name,
            p.rate(),
            p.p50_us,
            p.p99_us,
            p.ops
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
        "phases": phases.iter().map(|p| serde_json::json!({
            "name": p.name, "ops": p.ops, "secs": p.secs, "ops_per_s": p.rate(),
            "p50_us": p.p50_us, "p99_us": p.p99_us,
        })).collect::<Vec<_>>(),
    });
    let stem = if quick { "server-quick" } else { "server" };
    let _ = std::fs::create_dir_all("bench-results");
    let _ = std::fs::write(format!("bench-results/{stem}.txt"), &text);
    let _ = std::fs::write(format!("bench-results/{stem}.json"), json.to_string());
}

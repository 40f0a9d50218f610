//! The etcd backend (feature `etcd`, DESIGN.md 15) against the local engine,
//! side by side in one run: a real 3-member etcd cluster on loopback
//! (`tests/support/etcd.rs`, members fsync for real), two devreg nodes on it
//! (A and B, one registry), and a local registry (`Durability::Immediate`)
//! in a tempdir.
//!
//! ```text
//! cargo bench --features etcd --bench cluster -- [--quick] [--n N]
//! ```
//!
//! Measured, in this order: loading N devices (`apply_batch` of 1,000: one
//! etcd request each); the open of a node that catches up on them (B,
//! against a reopen of the local registry); point reads (`device`) and
//! `most_recent` from one thread on each; the latency of a durable register
//! from one thread (local: its ack; etcd: A's ack and the moment B sees the
//! write, both timed from the call's start: B is polled with `device` in a
//! spin loop once A has acknowledged);
//! durable registers of distinct tokens from 8 threads (local; 8 on A; 4 on
//! A and 4 on B, summed, and etcd revisions per register: the group
//! commit); etcd alone (raw appends to an operation log under another
//! prefix, the same client: the floor under a node's write), from one
//! thread and from 8; the RSS each system's open and load added; the
//! process's peak RSS and wall time. `--quick` (N = 2,000, 0.5 s phases,
//! 50 latency samples) is a smoke run for CI.
//!
//! It prints a markdown table and writes it to `bench-results/cluster.txt`
//! and the numbers to `bench-results/cluster.json` (a quick run to
//! `cluster-quick.*`, so that it never replaces a full result), each headed
//! by the command, commit, machine and date (`compare/env.rs`).

#[path = "../tests/support/etcd.rs"]
mod etcd_cluster;

#[path = "compare/env.rs"]
mod env;
// `env.rs` records the host's memory latency with it.
#[path = "compare/latency.rs"]
mod latency;

use std::collections::BTreeMap;
use std::hint::{black_box, spin_loop};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use devreg::internals::etcd::EtcdProbe;
use devreg::{Config, Durability, Op, Platform, Register, Registry, TxnLimits};
use etcd_cluster::EtcdCluster;
use serde_json::{json, Value};

/// The limits `tests/support/etcd.rs` starts the cluster with.
const LIMITS: TxnLimits = TxnLimits {
    max_ops: 1024,
    max_request_bytes: 4 << 20,
};
const PREFIX: &str = "bench/";
/// Devices per `apply_batch` while loading (one etcd request each).
const BATCH: usize = 1_000;
/// Writer threads of the throughput phase.
const WRITERS: usize = 8;
/// "Now" of the loaded devices: a fixed instant, so runs are repeatable.
const NOW_MS: u64 = 1_750_000_000_000;
const DAY_MS: u64 = 86_400_000;
/// A poll of B that has not seen a write after this long is a hang.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

const USAGE: &str = "cluster [--quick] [--n N]";

// ---------------------------------------------------------------- arguments

struct Params {
    quick: bool,
    n: usize,
    phase: Duration,
    samples: usize,
}

fn parse_args() -> Params {
    let (mut quick, mut n) = (false, None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--quick" => quick = true,
            "--n" => {
                let v = it.next().unwrap_or_else(|| panic!("--n needs a value"));
                n = Some(v.parse().unwrap_or_else(|_| panic!("--n takes a number")));
            }
            other => panic!("unknown argument {other:?}; usage: {USAGE}"),
        }
    }
    Params {
        quick,
        n: n.unwrap_or(if quick { 2_000 } else { 20_000 }),
        phase: Duration::from_millis(if quick { 500 } else { 3_000 }),
        samples: if quick { 50 } else { 500 },
    }
}

// ---------------------------------------------------------------- workload

/// splitmix64 of `x`: tokens and read indexes that look random.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 64-character hex token (the APNs shape), distinct per (`stream`, `i`).
fn token(stream: u64, i: u64) -> String {
    let base = stream << 40 | i;
    let parts = [0u64, 1, 2, 3].map(|k| mix(base.wrapping_mul(4).wrapping_add(k)));
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        parts[0], parts[1], parts[2], parts[3]
    )
}

fn person(stream: u64, i: u64) -> String {
    format!("person-{stream}-{:08}", i / 2)
}

/// A register of device `i` of `stream` (two devices per person).
fn register(stream: u64, i: u64) -> Register {
    Register {
        token: token(stream, i),
        platform: if i.is_multiple_of(3) {
            Platform::Android
        } else {
            Platform::Ios
        },
        person: Some(person(stream, i)),
        seen_ms: NOW_MS - i % 30 * DAY_MS,
        attributes: None,
    }
}

/// The stream of the N loaded devices (the writes' streams come after it).
const LOADED: u64 = 1;

// ---------------------------------------------------------------- systems

fn open_local(dir: &Path) -> Registry {
    let config = Config::new(dir).durability(Durability::Immediate);
    Registry::open_with(config).expect("opening the local registry")
}

fn open_node(cluster: &EtcdCluster) -> Registry {
    let config = Config::etcd(cluster.endpoints(), PREFIX).etcd_limits(LIMITS);
    Registry::open_with(config).expect("opening an etcd node")
}

/// VmRSS and VmHWM of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        (status.lines())
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `f`'s result, its duration and the RSS it added.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, u64) {
    let (before, _) = rss();
    let t0 = Instant::now();
    let out = f();
    let took = t0.elapsed();
    (out, took, rss().0.saturating_sub(before))
}

/// Loads the N devices in atomic batches of `BATCH`; devices per second.
fn load(reg: &Registry, n: usize) -> f64 {
    let t0 = Instant::now();
    for start in (0..n).step_by(BATCH) {
        let ops: Vec<Op> = (start..(start + BATCH).min(n))
            .map(|i| Op::Register(register(LOADED, i as u64)))
            .collect();
        let outcomes = reg.apply_batch(ops).expect("apply_batch while loading");
        assert!(outcomes.iter().all(|o| o.is_applied()), "a load op skipped");
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- phases

/// Durable registers of distinct tokens from `threads` threads on each of
/// `regs` for `phase`: total operations per second.
fn write_rate(regs: &[&Registry], threads: usize, phase: Duration, stream: u64) -> f64 {
    rate(regs.len() * threads, phase, &|t, i| {
        let outcome = regs[t / threads].register(register(stream + t as u64, i));
        assert!(outcome.expect("a durable register").is_applied());
    })
}

/// Calls `op(thread, i)` for i = 0, 1, .. from `threads` threads for
/// `phase`: total calls per second (the calls past the deadline are
/// counted, and the time they took).
fn rate(threads: usize, phase: Duration, op: &(dyn Fn(usize, u64) + Sync)) -> f64 {
    let total = AtomicU64::new(0);
    let start = Barrier::new(threads + 1);
    let t0 = std::thread::scope(|s| {
        for t in 0..threads {
            let (total, start) = (&total, &start);
            s.spawn(move || {
                start.wait();
                let deadline = Instant::now() + phase;
                let mut i = 0;
                while Instant::now() < deadline {
                    op(t, i);
                    i += 1;
                }
                total.fetch_add(i, Ordering::SeqCst);
            });
        }
        start.wait();
        Instant::now()
    });
    total.load(Ordering::SeqCst) as f64 / t0.elapsed().as_secs_f64()
}

/// Calls `op(k)` with pseudo-random `k` for `phase` from one thread:
/// (operations per second, the calls that found nothing).
fn read_rate(phase: Duration, mut op: impl FnMut(u64) -> bool) -> (f64, u64) {
    let t0 = Instant::now();
    let (mut done, mut missed) = (0u64, 0u64);
    while t0.elapsed() < phase {
        for _ in 0..256 {
            missed += u64::from(!op(mix(done)));
            done += 1;
        }
    }
    (done as f64 / t0.elapsed().as_secs_f64(), missed)
}

struct Reads {
    device: f64,
    most_recent: f64,
    missed: u64,
}

/// `device` of loaded tokens, then `most_recent` of loaded persons.
fn reads(reg: &Registry, n: usize, phase: Duration) -> Reads {
    let tokens: Vec<String> = (0..n as u64).map(|i| token(LOADED, i)).collect();
    let persons: Vec<String> = (0..n as u64)
        .step_by(2)
        .map(|i| person(LOADED, i))
        .collect();
    let (device, m1) = read_rate(phase, |k| {
        black_box(reg.device(&tokens[k as usize % n])).is_some()
    });
    let (most_recent, m2) = read_rate(phase, |k| {
        let p = &persons[k as usize % persons.len()];
        black_box(reg.most_recent(p, None)).is_some()
    });
    Reads {
        device,
        most_recent,
        missed: m1 + m2,
    }
}

/// p50 and p99 of `samples`, in microseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| {
        let i = ((samples.len() - 1) as f64 * p).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

/// The latency of `samples` calls of `op(i)` from one thread.
fn latencies(samples: usize, mut op: impl FnMut(u64)) -> Vec<Duration> {
    (0..samples as u64)
        .map(|i| {
            let t0 = Instant::now();
            op(i);
            t0.elapsed()
        })
        .collect()
}

/// The latency of `samples` durable registers from one thread.
fn write_latency(reg: &Registry, samples: usize, stream: u64) -> Vec<Duration> {
    latencies(samples, |i| {
        let outcome = reg.register(register(stream, i));
        assert!(outcome.expect("a durable register").is_applied());
    })
}

struct Visibility {
    /// A's acknowledgement, from the call's start.
    ack: Vec<Duration>,
    /// B's first `device` that found the token, from the call's start.
    visible: Vec<Duration>,
    /// Writes B had already applied when A acknowledged them.
    seen_by_ack: usize,
}

/// Registers on `a`, then spins on `b.device` until B has the token.
fn visibility(a: &Registry, b: &Registry, samples: usize, stream: u64) -> Visibility {
    let mut v = Visibility {
        ack: Vec::new(),
        visible: Vec::new(),
        seen_by_ack: 0,
    };
    for i in 0..samples as u64 {
        let op = register(stream, i);
        let token = op.token.clone();
        let t0 = Instant::now();
        assert!(a.register(op).expect("a register on A").is_applied());
        v.ack.push(t0.elapsed());
        v.seen_by_ack += usize::from(b.device(&token).is_some());
        wait_visible(b, &token, t0);
        v.visible.push(t0.elapsed());
    }
    v
}

/// Spins until `b` has `token`; panics after `VISIBLE_WITHIN`.
fn wait_visible(b: &Registry, token: &str, t0: Instant) {
    let mut polls = 0u64;
    while b.device(token).is_none() {
        spin_loop();
        polls += 1;
        if polls.is_multiple_of(4096) && t0.elapsed() > VISIBLE_WITHIN {
            panic!("node B has not seen {token} {VISIBLE_WITHIN:?} after A's register");
        }
    }
}

// ---------------------------------------------------------------- results

/// One system's column: metric key to value.
type Column = BTreeMap<&'static str, f64>;

#[derive(Default)]
struct Results {
    local: Column,
    a: Column,
    b: Column,
    /// etcd without devreg (the table shows it in A's column).
    floor: Column,
    /// Facts that are not in the table (cluster start, revisions, checks).
    notes: Vec<String>,
    extra: BTreeMap<&'static str, Value>,
}

fn etcd_revision(reg: &Registry) -> i64 {
    reg.catch_up().expect("catch_up");
    (reg.cluster_status().expect("cluster_status")).applied_revision
}

/// The load, the opens and the RSS they added.
fn load_phase(p: &Params, r: &mut Results, cluster: &EtcdCluster, dir: &Path) -> [Registry; 3] {
    let (local, _, local_rss) = measured(|| {
        let local = open_local(dir);
        r.local.insert("load_per_s", load(&local, p.n));
        local
    });
    r.local
        .insert("rss_mib", local_rss as f64 / (1 << 20) as f64);
    local.close().expect("closing the local registry");
    let (local, open, _) = measured(|| open_local(dir));
    r.local.insert("open_ms", open.as_secs_f64() * 1e3);
    eprintln!("local: loaded and reopened");
    let (a, _, a_rss) = measured(|| {
        let a = open_node(cluster);
        r.a.insert("load_per_s", load(&a, p.n));
        a
    });
    r.a.insert("rss_mib", a_rss as f64 / (1 << 20) as f64);
    let (b, open, b_rss) = measured(|| open_node(cluster));
    r.b.insert("open_ms", open.as_secs_f64() * 1e3);
    r.b.insert("rss_mib", b_rss as f64 / (1 << 20) as f64);
    eprintln!("etcd: A loaded, B opened");
    [local, a, b]
}

fn read_phase(p: &Params, r: &mut Results, [local, a, b]: &[Registry; 3]) {
    b.catch_up().expect("catch_up on B");
    for (name, reg, col) in [
        ("local", local, &mut r.local),
        ("A", a, &mut r.a),
        ("B", b, &mut r.b),
    ] {
        let got = reads(reg, p.n, p.phase.min(Duration::from_secs(2)));
        col.insert("device_per_s", got.device);
        col.insert("most_recent_per_s", got.most_recent);
        if got.missed > 0 {
            r.notes
                .push(format!("{name}: {} reads found nothing", got.missed));
        }
    }
    eprintln!("reads done");
}

fn latency_phase(p: &Params, r: &mut Results, [local, a, b]: &[Registry; 3]) {
    let (p50, p99) = percentiles(&mut write_latency(local, p.samples, 100));
    r.local.insert("write_p50_us", p50);
    r.local.insert("write_p99_us", p99);
    let mut v = visibility(a, b, p.samples, 101);
    let (p50, p99) = percentiles(&mut v.ack);
    r.a.insert("write_p50_us", p50);
    r.a.insert("write_p99_us", p99);
    let (p50, p99) = percentiles(&mut v.visible);
    r.b.insert("write_p50_us", p50);
    r.b.insert("write_p99_us", p99);
    r.notes.push(format!(
        "B had already applied {} of {} writes when A acknowledged them",
        v.seen_by_ack, p.samples
    ));
    r.extra.insert("b_seen_by_a_ack", json!(v.seen_by_ack));
    eprintln!("latency done");
}

fn write_phase(p: &Params, r: &mut Results, [local, a, b]: &[Registry; 3]) {
    r.local.insert(
        "register_8t_per_s",
        write_rate(&[local], WRITERS, p.phase, 200),
    );
    let rev0 = etcd_revision(a);
    let (ops_a, t) = timed(|| write_rate(&[a], WRITERS, p.phase, 300));
    let rev1 = etcd_revision(a);
    r.a.insert("register_8t_per_s", ops_a);
    let (ops_ab, t2) = timed(|| write_rate(&[a, b], WRITERS / 2, p.phase, 400));
    let rev2 = etcd_revision(b);
    r.b.insert("register_8t_per_s", ops_ab);
    let per_rev = |ops: f64, t: f64, revs: i64| ops * t / revs.max(1) as f64;
    let (g1, g2) = (
        per_rev(ops_a, t, rev1 - rev0),
        per_rev(ops_ab, t2, rev2 - rev1),
    );
    r.notes.push(format!(
        "registers per etcd revision (one per group-commit transaction, checkpoints included): \
         {g1:.1} with 8 threads on A, {g2:.1} with 4 on A + 4 on B"
    ));
    r.extra.insert(
        "registers_per_etcd_revision",
        json!({ "a_8t": g1, "ab_4_4": g2 }),
    );
    eprintln!("writes done");
}

/// etcd without devreg: appends of a register-sized body to an operation
/// log under another prefix (one transaction each, the same client), from
/// one thread and from 8: the floor under a node's write.
fn floor_phase(p: &Params, r: &mut Results, cluster: &EtcdCluster) {
    let probe = EtcdProbe::connect(&cluster.endpoints(), "floor/", LIMITS).expect("a probe");
    let body = devreg_sized_body();
    let append = |_: usize, _: u64| {
        probe.append(body.clone()).expect("a raw append");
    };
    let (p50, p99) = percentiles(&mut latencies(p.samples, |i| append(0, i)));
    r.floor.insert("floor_p50_us", p50);
    r.floor.insert("floor_p99_us", p99);
    r.floor
        .insert("floor_8t_per_s", rate(WRITERS, p.phase, &append));
    eprintln!("etcd floor done");
}

/// About the bytes one register's operation carries (token, person,
/// platform, time, framing).
fn devreg_sized_body() -> Vec<u8> {
    let op = register(999, 0);
    let mut body = vec![b'O'; 24];
    body.extend_from_slice(op.token.as_bytes());
    body.extend_from_slice(op.person.unwrap_or_default().as_bytes());
    body
}

/// `f`'s result and the seconds it took.
fn timed(f: impl FnOnce() -> f64) -> (f64, f64) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed().as_secs_f64())
}

/// Both nodes caught up hold the same devices; then every registry closes.
fn finish(r: &mut Results, [local, a, b]: [Registry; 3]) {
    a.catch_up().expect("catch_up on A");
    b.catch_up().expect("catch_up on B");
    let (sa, sb) = (a.stats(), b.stats());
    r.notes.push(format!(
        "after the run, nodes A and B agree: {} ({} and {} devices)",
        sa == sb,
        sa.devices,
        sb.devices
    ));
    for (name, reg) in [("local", local), ("A", a), ("B", b)] {
        if let Err(e) = reg.close() {
            r.notes.push(format!("closing {name} failed: {e}"));
        }
    }
}

// ---------------------------------------------------------------- report

/// (key, label, the local figure the ratio divides by): the table's rows.
const ROWS: [(&str, &str, &str); 11] = [
    (
        "load_per_s",
        "load N devices, `apply_batch` of 1,000 (devices/s)",
        "load_per_s",
    ),
    (
        "open_ms",
        "open with N devices (ms; B: a new node catching up)",
        "open_ms",
    ),
    (
        "register_8t_per_s",
        "durable register, 8 threads (ops/s; last column: 4 on A + 4 on B)",
        "register_8t_per_s",
    ),
    (
        "device_per_s",
        "point read `device`, 1 thread (ops/s)",
        "device_per_s",
    ),
    (
        "most_recent_per_s",
        "`most_recent`, 1 thread (ops/s)",
        "most_recent_per_s",
    ),
    (
        "write_p50_us",
        "durable register, 1 thread, p50 (µs; B: until B sees A's write)",
        "write_p50_us",
    ),
    (
        "write_p99_us",
        "durable register, 1 thread, p99 (µs; B: until B sees A's write)",
        "write_p99_us",
    ),
    (
        "floor_8t_per_s",
        "etcd alone: raw log appends, 8 threads (txn/s; ratio to local registers)",
        "register_8t_per_s",
    ),
    (
        "floor_p50_us",
        "etcd alone: raw log append, 1 thread, p50 (µs; ratio to local register)",
        "write_p50_us",
    ),
    (
        "floor_p99_us",
        "etcd alone: raw log append, 1 thread, p99 (µs; ratio to local register)",
        "write_p99_us",
    ),
    (
        "rss_mib",
        "RSS added by open + load (MiB; B: its open)",
        "rss_mib",
    ),
];

fn fmt_num(v: f64) -> String {
    if v >= 1_000.0 {
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_ratio(etcd: Option<f64>, local: Option<f64>) -> Option<String> {
    let r = etcd? / local.filter(|&l| l > 0.0)?;
    Some(if r < 0.1 {
        format!("{r:.3}")
    } else {
        format!("{r:.2}")
    })
}

fn table(r: &Results) -> String {
    let mut t = String::from(
        "| metric | local | etcd node A | etcd node B / 2 nodes | ratio etcd/local (A; B) |\n\
         |---|---|---|---|---|\n",
    );
    // etcd alone shows in A's column.
    let a: Column = r.a.iter().chain(&r.floor).map(|(k, v)| (*k, *v)).collect();
    for (key, label, base) in ROWS {
        let cell = |c: &Column| c.get(key).map_or("–".into(), |&v| fmt_num(v));
        let l = r.local.get(base).copied();
        let ratios: Vec<String> = [("A", &a), ("B", &r.b)]
            .iter()
            .filter_map(|(n, c)| Some(format!("{n} {}", fmt_ratio(c.get(key).copied(), l)?)))
            .collect();
        let ratios = if ratios.is_empty() {
            "–".into()
        } else {
            ratios.join("; ")
        };
        let row = [
            label.to_string(),
            cell(&r.local),
            cell(&a),
            cell(&r.b),
            ratios,
        ];
        t += &format!("| {} |\n", row.join(" | "));
    }
    t
}

fn header(p: &Params, machine: &env::Env, cluster_s: f64, peak: u64) -> String {
    format!(
        "command: {}\n{}etcd cluster start {:.1} s; peak RSS (VmHWM) {:.1} MiB\n\
         N = {} devices, write phases {:.1} s, read phases {:.1} s, {} latency samples{}\n\n",
        machine.command,
        machine.text(),
        cluster_s,
        peak as f64 / (1 << 20) as f64,
        p.n,
        p.phase.as_secs_f64(),
        p.phase.min(Duration::from_secs(2)).as_secs_f64(),
        p.samples,
        if p.quick {
            " (--quick: a smoke run)"
        } else {
            ""
        },
    )
}

fn json_of(p: &Params, r: &Results, machine: &env::Env, cluster_s: f64, peak: u64) -> Value {
    json!({
        "env": machine.json(),
        "n": p.n,
        "quick": p.quick,
        "phase_s": p.phase.as_secs_f64(),
        "latency_samples": p.samples,
        "etcd_cluster_start_s": cluster_s,
        "peak_rss_bytes": peak,
        "local": r.local,
        "etcd_node_a": r.a,
        "etcd_node_b_or_two_nodes": r.b,
        "etcd_alone": r.floor,
        "extra": r.extra,
        "notes": r.notes,
    })
}

// ---------------------------------------------------------------- main

fn main() {
    let started = Instant::now();
    let p = parse_args();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let cmd = format!(
        "cargo bench --features etcd --bench cluster -- {}",
        args.join(" ")
    );
    let dir = tempfile::tempdir().expect("creating the local registry's tempdir");
    let mut machine = env::Env::start(cmd.trim_end_matches(" -- "), repo, dir.path());
    let cluster = EtcdCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(10));
    let cluster_s = started.elapsed().as_secs_f64();
    eprintln!("etcd cluster up in {cluster_s:.1} s");
    let mut r = Results::default();
    let regs = load_phase(&p, &mut r, &cluster, &dir.path().join("db"));
    read_phase(&p, &mut r, &regs);
    latency_phase(&p, &mut r, &regs);
    write_phase(&p, &mut r, &regs);
    floor_phase(&p, &mut r, &cluster);
    finish(&mut r, regs);
    drop(cluster);
    machine.finish(started.elapsed());
    let peak = rss().1;
    let notes: String = r.notes.iter().map(|n| format!("- {n}\n")).collect();
    let text = header(&p, &machine, cluster_s, peak) + &table(&r) + "\n" + &notes;
    print!("{text}");
    let stem = if p.quick { "cluster-quick" } else { "cluster" };
    let out = repo.join("bench-results");
    let json = serde_json::to_string_pretty(&json_of(&p, &r, &machine, cluster_s, peak));
    std::fs::write(out.join(format!("{stem}.txt")), &text).expect("writing the table");
    std::fs::write(out.join(format!("{stem}.json")), json.expect("JSON") + "\n")
        .expect("writing the JSON");
    eprintln!("wrote bench-results/{stem}.{{txt,json}}");
}

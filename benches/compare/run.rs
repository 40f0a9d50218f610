//! What a child process does: the whole workload against one system (so each
//! system's peak RSS is its own), or devreg's open, or a plain sled scan.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::systems::{self, System, Worker};
use crate::workload::{self, Dev, Rng, DAY_MS, NOW_MS};

pub type Metrics = BTreeMap<String, f64>;

/// Devices per atomic batch in bulk import and update (every system alike).
pub const BATCH: usize = 10_000;
pub const SEED: u64 = 42;
/// How far the fair-count phase moves every device's last-seen time: past
/// any `seen_now()` of the timed phases (one per operation, from NOW_MS).
const ALIGN_SHIFT_MS: u64 = 1 << 40;

/// (VmRSS, VmHWM) of this process in bytes, from /proc/self/status.
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

type Op<'a> = &'a (dyn Fn(&mut dyn Worker, &mut Rng) + Sync);

/// Runs each role's threads at once for `phase`; returns each role's
/// operations per second (summed over its threads).
fn timed_roles(sys: &dyn System, phase: Duration, roles: &[(usize, Op<'_>)]) -> Vec<f64> {
    let threads: usize = roles.iter().map(|r| r.0).sum();
    let start = Barrier::new(threads);
    let rates: Vec<AtomicU64> = roles.iter().map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|s| {
        let mut t = 0u64;
        for (role, &(count, op)) in roles.iter().enumerate() {
            for _ in 0..count {
                t += 1;
                let (start, rates) = (&start, &rates);
                s.spawn(move || {
                    let mut w = sys.worker();
                    let mut rng = Rng::new(1000 + t);
                    start.wait();
                    let t0 = Instant::now();
                    let deadline = t0 + phase;
                    let mut n = 0u64;
                    // Check the clock every few operations: cheap for
                    // sub-microsecond reads, close enough for slow writes.
                    while Instant::now() < deadline {
                        for _ in 0..8 {
                            op(&mut *w, &mut rng);
                        }
                        n += 8;
                    }
                    let rate = n as f64 / t0.elapsed().as_secs_f64();
                    // Milli-ops per second, so an integer atomic can sum them.
                    rates[role].fetch_add((rate * 1000.0) as u64, Ordering::Relaxed);
                });
            }
        }
    });
    rates
        .iter()
        .map(|r| r.load(Ordering::Relaxed) as f64 / 1000.0)
        .collect()
}

fn timed(sys: &dyn System, phase: Duration, threads: usize, op: Op<'_>) -> f64 {
    timed_roles(sys, phase, &[(threads, op)])[0]
}

/// Every re-registration gets a later timestamp than anything before it.
static CLOCK: AtomicU64 = AtomicU64::new(0);

fn seen_now() -> u64 {
    NOW_MS + 1 + CLOCK.fetch_add(1, Ordering::Relaxed)
}

fn bulk(sys: &dyn System, devs: &[Dev]) -> f64 {
    let mut w = sys.worker();
    let t = Instant::now();
    for chunk in devs.chunks(BATCH) {
        w.import(chunk);
    }
    let rate = devs.len() as f64 / t.elapsed().as_secs_f64();
    eprintln!("  bulk of {}: {rate:.0} devices/s", devs.len());
    rate
}

/// The full workload against system `name` in `dir`, `n` devices.
pub fn run_system(name: &str, dir: &Path, n: usize, phase: Duration) -> Metrics {
    let mut devs = workload::generate(n, SEED);
    let persons = workload::persons_for(n);
    let keys = workload::KeyList::draw(&devs, workload::READ_KEYS, SEED ^ 1);
    // The data set itself (the read keys too) is not the system's memory:
    // subtract it.
    let (base_rss, _) = rss();
    let mut m = Metrics::new();
    let nf = n as f64;
    // Progress, with the memory so far (shows which phase sets the peak).
    let started = Instant::now();
    let progress = |what: &str, background: String| {
        let (now, peak) = rss();
        eprintln!(
            "  [{name} n={n} +{:.0} s] {what} (rss {} MiB, peak {} MiB{background})",
            started.elapsed().as_secs_f64(),
            now >> 20,
            peak >> 20,
        );
    };
    let log = |sys: &dyn systems::System, what: &str| progress(what, sys.background());

    // Durable phase.
    let sys = systems::open(name, dir, true);
    log(&*sys, "bulk import");
    m.insert("import_ops_s".into(), bulk(&*sys, &devs));
    sys.settle();
    m.insert("disk_insert_b_per_dev".into(), sys.disk_bytes() as f64 / nf);
    if name == "devreg" {
        // devreg's total includes its preallocated log; record sled's share too.
        let store = systems::dir_bytes(&dir.join("store"));
        m.insert("disk_insert_store_b_per_dev".into(), store as f64 / nf);
    }
    let register: Op<'_> = &|w, r| {
        let d = &devs[r.below(n as u64) as usize];
        w.register(d, seen_now());
    };
    log(&*sys, "durable registers, 1 thread");
    m.insert("durable_1t_ops_s".into(), timed(&*sys, phase, 1, register));
    log(&*sys, "durable registers, 8 threads");
    m.insert("durable_8t_ops_s".into(), timed(&*sys, phase, 8, register));
    drop(sys);

    // Eventual phase: reopen non-durable.
    let t = Instant::now();
    let sys = systems::open(name, dir, false);
    m.insert("reopen_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    for d in devs.iter_mut() {
        d.seen_ms += DAY_MS / 2;
    }
    workload::set_attribute(&mut devs, "app_version", "4.3.0");
    log(&*sys, "bulk update");
    m.insert("update_ops_s".into(), bulk(&*sys, &devs));
    sys.settle();
    m.insert("disk_update_b_per_dev".into(), sys.disk_bytes() as f64 / nf);
    if name == "devreg" {
        // devreg's total includes its preallocated log; record sled's share too.
        let store = systems::dir_bytes(&dir.join("store"));
        m.insert("disk_update_store_b_per_dev".into(), store as f64 / nf);
    }
    let view: &[Dev] = &devs;
    let register: Op<'_> = &|w, r| {
        let d = &view[r.below(n as u64) as usize];
        w.register(d, seen_now());
    };
    let get: Op<'_> = &|w, r| {
        let key = keys.next(r);
        assert!(w.get(key).is_some(), "every token is present");
    };
    let most_recent: Op<'_> = &|w, r| {
        std::hint::black_box(w.most_recent(&workload::person_name(r.below(persons))));
    };
    log(&*sys, "eventual registers");
    m.insert("eventual_1t_ops_s".into(), timed(&*sys, phase, 1, register));
    log(&*sys, "reads");
    m.insert("get_ops_s".into(), timed(&*sys, phase, 1, get));
    m.insert(
        "most_recent_ops_s".into(),
        timed(&*sys, phase, 1, most_recent),
    );
    // The harness's own share of a point read: taking the next key of the
    // read list and reading it, with no call into the system. The same in
    // every child, so measured (and reported) in devreg's only.
    if name == "devreg" {
        let pick: Op<'_> = &|_, r| {
            let key = keys.next(r);
            std::hint::black_box(key.bytes().fold(0u8, |a, b| a ^ b));
        };
        m.insert("harness_pick_ns".into(), 1e9 / timed(&*sys, phase, 1, pick));
    }
    log(&*sys, "mixed 90/10, 4 threads");
    let mixed: Op<'_> = &|w, r| {
        if r.below(10) == 0 {
            register(w, r)
        } else {
            get(w, r)
        }
    };
    m.insert("mixed_4t_ops_s".into(), timed(&*sys, phase, 4, mixed));
    log(&*sys, "2 readers + 1 writer");
    let rw = timed_roles(&*sys, phase, &[(2, get), (1, register)]);
    m.insert("rw_reads_s".into(), rw[0]);
    m.insert("rw_writes_s".into(), rw[1]);

    log(&*sys, "merges");
    let mut w = sys.worker();
    let t = Instant::now();
    let mut merged = 0u64;
    while let Some((primary, secondary)) = workload::merge_pair(merged, n) {
        w.merge(&primary, &secondary);
        merged += 1;
        if t.elapsed() >= phase {
            break;
        }
    }
    m.insert(
        "merge_ops_s".into(),
        merged as f64 / t.elapsed().as_secs_f64(),
    );
    drop(w);
    // Fair counts: every timed phase above refreshed as many random devices
    // as that system managed (seen_now), so each system's 30-day window held
    // a different set. Re-register every device at its own age shifted past
    // all of those times (last_seen never moves back, in every system), then
    // count and time the count: every system counts the same devices.
    log(&*sys, "30-day count over the same data");
    // Shifted in place: a shifted copy doubled the data set at 10^7 (1.9
    // GiB more in this process), which the peak-RSS row then counted as
    // the system's memory. The devices are not used after this phase.
    for d in devs.iter_mut() {
        d.seen_ms += ALIGN_SHIFT_MS;
    }
    let aligned: &[Dev] = &devs;
    bulk(&*sys, aligned);
    sys.settle();
    let since = NOW_MS + ALIGN_SHIFT_MS - 30 * DAY_MS;
    let active: Op<'_> = &|w, _| {
        std::hint::black_box(w.active_count(since));
    };
    m.insert("active30_ops_s".into(), timed(&*sys, phase, 1, active));
    let counted = sys.worker().active_count(since);
    let expected = aligned.iter().filter(|d| d.seen_ms >= since).count();
    assert_eq!(
        counted, expected as u64,
        "{name} counts {counted} devices seen in 30 days over the same data, expected {expected}"
    );
    m.insert("active30_count".into(), counted as f64);
    m.insert("active30_expected".into(), expected as f64);
    // Drain completely (bounded): a half-drained sink would leave its pending
    // items in the database that the open measurement loads.
    if let Some((ops, secs)) = sys.export_drain(Duration::from_secs(120)) {
        log(&*sys, "export drain");
        m.insert("export_ops_min".into(), ops as f64 / secs * 60.0);
    }
    log(&*sys, "closing");
    drop(sys);
    progress("closed", String::new());
    let (_, hwm) = rss();
    m.insert(
        "peak_rss_mb".into(),
        hwm.saturating_sub(base_rss) as f64 / (1 << 20) as f64,
    );
    m
}

/// Opens devreg at `dir` in a fresh process: open time and RAM per device.
pub fn open_devreg(dir: &Path) -> Metrics {
    let (before, _) = rss();
    let t = Instant::now();
    let reg = devreg::Registry::open_with(
        devreg::Config::new(dir).durability(devreg::Durability::Eventual),
    )
    .expect("opening devreg");
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let (after, _) = rss();
    let devices = reg.stats().devices;
    let mut m = Metrics::new();
    m.insert("open_ms".into(), open_ms);
    m.insert("devices".into(), devices as f64);
    m.insert(
        "ram_b_per_dev".into(),
        after.saturating_sub(before) as f64 / devices.max(1) as f64,
    );
    m
}

/// Opens the sled tree devreg checkpointed into and reads every key (its
/// device, history and feed pages, delta pages and metadata: what devreg's
/// open reads): the floor for devreg's open.
pub fn scan_sled(dir: &Path) -> Metrics {
    let t = Instant::now();
    let db = sled::Config::new()
        .path(dir)
        .segment_size(8 << 20)
        .open()
        .expect("opening devreg's sled store");
    let mut keys = 0u64;
    let mut bytes = 0u64;
    for kv in db.iter() {
        let (k, v) = kv.expect("scanning sled");
        keys += 1;
        bytes += (k.len() + v.len()) as u64;
    }
    let mut m = Metrics::new();
    m.insert("scan_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    m.insert("keys".into(), keys as f64);
    m.insert("bytes".into(), bytes as f64);
    m
}

/// The physical floor for durable writes: 4 KiB pwrite + fdatasync into a
/// preallocated file (overwriting, so no metadata is written), on the same
/// disk as the databases.
pub fn fsync_floor(dir: &Path, phase: Duration) -> Metrics {
    use std::os::unix::fs::FileExt;
    const SIZE: u64 = 16 << 20;
    let path = dir.join("fsync-floor");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("creating the fsync file");
    // Preallocate by writing real zeros (not a hole) and syncing them.
    let zeros = vec![0u8; 1 << 20];
    for i in 0..SIZE / (1 << 20) {
        f.write_all_at(&zeros, i << 20).expect("preallocating");
    }
    f.sync_all().expect("fsync");
    let page = [7u8; 4096];
    let mut lat = Vec::new();
    let t = Instant::now();
    let mut off = 0;
    while t.elapsed() < phase {
        let t1 = Instant::now();
        f.write_all_at(&page, off).expect("pwrite");
        f.sync_data().expect("fdatasync");
        lat.push(t1.elapsed().as_secs_f64() * 1e6);
        off = (off + 4096) % SIZE;
    }
    let ops = lat.len() as f64 / t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let _ = std::fs::remove_file(&path);
    let mut m = Metrics::new();
    m.insert("ops_s".into(), ops);
    m.insert(
        "p50_us".into(),
        lat.get(lat.len() / 2).copied().unwrap_or(0.0),
    );
    m
}

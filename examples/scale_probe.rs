//! Where a bulk import's time goes as the registry grows: the importing
//! thread's CPU per device (building the batches included), its time on
//! the run queue and its wall time inside `apply_batch` (more than its CPU
//! when it waits for the log to have room, which a checkpoint makes), per
//! tenth of the import; then every thread's
//! CPU per device (the checkpointer's, sled's I/O threads'), with the
//! checkpoints, page merges and bytes handed to the store, and after the
//! close the store's bytes on disk and the page cache the process dirtied,
//! and the peak RSS after the import and after the close (`crash` exits
//! right after the import instead, leaving the database and its log). With
//! `nockpt` no checkpoint runs while importing or updating (the log holds
//! everything), which isolates the in-memory state's cost (DESIGN.md 13,
//! steps 12 and 47). With
//! `update` the database is then reopened in `Eventual` mode and every
//! device updated, as the harness's bulk update does, with the same
//! columns for that pass.
//!
//! ```sh
//! cargo run --release --example scale_probe -- [N] [nockpt] [update] [delta=BYTES] [disk=BYTES] [chunk=BYTES] [segs=N] [perdev=BYTES] [harness] [keep|crash]
//! ```
//!
//! It runs on the system allocator, as a service linking the library
//! does, and as the harness's children do (glibc's defaults unless the
//! caller sets `GLIBC_TUNABLES`; DESIGN.md 6, "The harness's allocator").
//! Linux only (it reads `/proc/thread-self/schedstat`); elsewhere the CPU
//! columns read 0.

use std::collections::BTreeMap;
use std::time::Instant;

use devreg::{Config, Durability, Op, Registry};

/// Devices per `apply_batch` (the harness's bulk rows use the same).
const BATCH: u64 = 10_000;
/// Threads that used less CPU than this are not listed.
const LIST_THREADS_FROM_NS: f64 = 50e6;

#[path = "support/generator.rs"]
mod generator;
#[path = "support/status.rs"]
mod status;
#[path = "support/threads.rs"]
mod threads;
// One device of the comparison harness's data set, from its index
// (`like_harness`), with the harness's draws (`workload`).
#[path = "support/like_harness.rs"]
mod like_harness;
#[allow(dead_code)]
#[path = "../benches/compare/workload.rs"]
mod workload;
use like_harness::like_harness;

fn ops(from: u64, n: u64, total: u64, (harness, updated): (bool, bool)) -> Vec<Op> {
    (from..from + n)
        .map(|i| {
            if harness {
                return like_harness(i, total, updated);
            }
            let attributes = [
                ("app_version", "4.2.1"),
                ("device_os", "17.4"),
                ("push_enabled", "true"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
            generator::register(i, attributes)
        })
        .collect()
}

/// Bytes of the files under `dir` (not following links).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes of page cache this process dirtied (`write_bytes` of
/// `/proc/self/io`; 0 where it is missing).
fn dirtied_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// (nanoseconds on the CPU, nanoseconds on the run queue) from a
/// `schedstat` file.
fn schedstat(path: &std::path::Path) -> (f64, f64) {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let mut v = s
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0));
    (v.next().unwrap_or(0.0), v.next().unwrap_or(0.0))
}

fn main() -> devreg::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rest: Vec<String> = args.collect();
    let no_checkpoints = rest.iter().any(|a| a == "nockpt");
    // `harness`: devices in the comparison harness's shape (random owners
    // and last-seen times, six attributes) instead of `register`'s.
    let harness = rest.iter().any(|a| a == "harness");
    // `keep`: leave the database for a following open to be timed.
    let keep = rest.iter().any(|a| a == "keep");
    // `update`: after the import and its close, reopen in `Eventual` mode
    // and update every device as the harness's bulk update does (with
    // `harness`: seen half a day later, `app_version` 4.3.0).
    let update = rest.iter().any(|a| a == "update");
    // `name=VALUE` options, each a `Config` setter (`opt`).
    let opt = |name: &str| {
        rest.iter()
            .find_map(|a| a.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    let as_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let dir = std::env::temp_dir().join(format!("devreg-scale-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::new(&dir).durability(Durability::Immediate);
    if no_checkpoints {
        config = without_checkpoints(config);
    }
    // `delta=BYTES` sets `Config::page_delta_bytes` (how much delta the
    // pages may gather before a merge).
    if let Some(bytes) = opt("delta") {
        config = config.page_delta_bytes(as_usize(bytes));
    }
    // `disk=BYTES` sets `Config::delta_disk_bytes_per_device` (the disk
    // bound's bytes per device, 4.3).
    if let Some(bytes) = opt("disk") {
        config = config.delta_disk_bytes_per_device(bytes);
    }
    // `chunk=BYTES` sets `Config::checkpoint_chunk_bytes` (the raw bytes of
    // one delta chunk, 4.3).
    if let Some(bytes) = opt("chunk") {
        config = config.checkpoint_chunk_bytes(as_usize(bytes));
    }
    // `segs=N` sets `Config::max_log_segments` (the log's floor, 5.2).
    if let Some(segs) = opt("segs") {
        config = config.max_log_segments(u32::try_from(segs).unwrap_or(u32::MAX));
    }
    // `perdev=BYTES` sets `Config::log_bytes_per_device` (5.2; 0 by
    // default, DESIGN.md 13 step 24's runs used 24).
    if let Some(bytes) = opt("perdev") {
        config = config.log_bytes_per_device(bytes);
    }
    let reg = Registry::open_with(config)?;
    let before = reg.metrics();
    timed_pass(&reg, n, (harness, false))?;
    report_pass(&reg, n, &before, "import");
    if update {
        drop(reg);
        return update_all(&dir, n, (harness, keep, no_checkpoints));
    }
    // `crash`: exit without closing, leaving the log a crash would (an
    // open of the database then replays it).
    if rest.iter().any(|a| a == "crash") {
        println!("exiting without close: {}", dir.display());
        std::process::exit(0);
    }
    let closing = Instant::now();
    drop(reg);
    println!(
        "close: {:.1} s, peak RSS {} MiB",
        closing.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
    println!(
        "after close: store {:.0} B/device on disk, the process dirtied {:.0} B/device of page cache",
        dir_bytes(&dir.join("store")) as f64 / n as f64,
        dirtied_bytes() as f64 / n as f64
    );
    if keep {
        println!("kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// `apply_batch` of the `n` devices in batches of `BATCH`, printing the
/// wall time inside it, the thread's CPU and its time on the run queue per
/// tenth; returns the seconds inside `apply_batch`.
fn timed_pass(reg: &Registry, n: u64, shape: (bool, bool)) -> devreg::Result<f64> {
    let me = std::path::Path::new("/proc/thread-self/schedstat");
    let window = (n / 10).max(BATCH);
    let (mut i, mut in_apply_s, mut from) = (0u64, 0.0f64, (0.0f64, schedstat(me)));
    println!(
        "devices    wall in apply_batch  thread CPU  run queue  merges  compactions \
         (us/device, this tenth; CPU includes building the batch; merges and compactions \
         so far)"
    );
    while i < n {
        let batch = ops(i, BATCH.min(n - i), n, shape);
        let t = Instant::now();
        reg.apply_batch(batch)?;
        in_apply_s += t.elapsed().as_secs_f64();
        i += BATCH.min(n - i);
        if i.is_multiple_of(window) || i >= n {
            let now = (in_apply_s, schedstat(me));
            let per = |a: f64, b: f64, unit: f64| (a - b) * unit / window as f64;
            let m = reg.metrics();
            println!(
                "{i:>10} {:>10.2} {:>16.2} {:>9.2} {:>7} {:>12}",
                per(now.0, from.0, 1e6),
                per(now.1 .0, from.1 .0, 1e-3),
                per(now.1 .1, from.1 .1, 1e-3),
                m.page_merges,
                m.compactions
            );
            from = now;
        }
    }
    println!("{:.0} devices/s inside apply_batch", n as f64 / in_apply_s);
    Ok(in_apply_s)
}

/// `config` with no checkpoint due by time, log size or pending records
/// (`nockpt`): the log holds everything until the close.
fn without_checkpoints(config: Config) -> Config {
    config
        .checkpoint_log_bytes(u64::MAX / 4)
        .max_log_segments(u32::MAX / 2)
        .checkpoint_interval_ms(u64::MAX / 4)
        .checkpoint_pending_records(usize::MAX / 4)
}

/// The harness's bulk update (`update`): the database reopened in
/// `Eventual` mode, every device registered again with its update, then
/// the threads' CPU, the merges and the peak RSS, as for the import.
fn update_all(
    dir: &std::path::Path,
    n: u64,
    (harness, keep, no_checkpoints): (bool, bool, bool),
) -> devreg::Result<()> {
    let opening = Instant::now();
    let mut config = Config::new(dir).durability(Durability::Eventual);
    if no_checkpoints {
        config = without_checkpoints(config);
    }
    let reg = Registry::open_with(config)?;
    println!(
        "reopened in {:.1} s; the update:",
        opening.elapsed().as_secs_f64()
    );
    let before = reg.metrics();
    timed_pass(&reg, n, (harness, true))?;
    report_pass(&reg, n, &before, "update");
    drop(reg);
    println!(
        "after close: store {:.0} B/device on disk",
        dir_bytes(&dir.join("store")) as f64 / n as f64
    );
    if !keep {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// What the background did during a pass (the metrics since `before`),
/// every thread's CPU per device, and the peak RSS after the pass.
fn report_pass(reg: &Registry, n: u64, before: &devreg::Metrics, pass: &str) {
    let m = reg.metrics();
    let per_device = |now: u64, then: u64| now.saturating_sub(then) as f64 / n as f64;
    println!(
        "{} checkpoints, {} page merges writing {:.0} B/device of pages, {:.0} B/device \
         handed to the store in all, {} compactions during the {pass}",
        m.checkpoints.saturating_sub(before.checkpoints),
        m.page_merges.saturating_sub(before.page_merges),
        per_device(m.page_merge_bytes_written, before.page_merge_bytes_written),
        per_device(m.store_bytes_written, before.store_bytes_written),
        m.compactions.saturating_sub(before.compactions)
    );
    list_threads(n);
    println!("peak RSS after the {pass}: {} MiB", peak_rss_mib());
}

/// This process's peak resident set (`VmHWM`), in MiB (0 where missing).
fn peak_rss_mib() -> u64 {
    status::status_kib("VmHWM:") >> 10
}

/// Every thread of this process that used the CPU, with its CPU per device.
fn list_threads(n: u64) {
    for (name, [cpu_s, ..]) in threads::cpu_by_thread() {
        if cpu_s * 1e9 >= LIST_THREADS_FROM_NS {
            println!(
                "thread {name:<16} {cpu_s:7.2} s of CPU, {:6.2} us/device",
                cpu_s * 1e6 / n as f64
            );
        }
    }
}

//! Point reads beside one writer: how much of their single-thread rate two
//! reader threads keep while a third thread registers devices as fast as it
//! can (the comparison harness's "2 readers + 1 writer" phase, alone).
//!
//! ```sh
//! cargo run --release --example readers_and_writer -- [DEVICES] [SECONDS] [DIR]
//! ```
//!
//! Imports DEVICES (default 10^6) devices with attributes into a new
//! database under DIR (default: the system's temporary directory), eventual
//! durability, then runs three timed phases of SECONDS (default 5) each:
//! one reader alone, two readers alone, two readers and one writer. Prints
//! one JSON line per phase with the rates and the checkpoints it saw.

use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use devreg::{Attributes, Config, Durability, Op, Platform, Register, Registry};

#[path = "support/threads.rs"]
mod threads;
use threads::cpu_by_thread;

const BATCH_DEVICES: u64 = 10_000;
const T0_MS: u64 = 1_764_000_000_000;
/// A read this slow is counted (a reader waited for a write).
const SLOW_READ: Duration = Duration::from_millis(1);

fn token(i: u64) -> String {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{x:016x}{:016x}{i:016x}{:016x}", x.rotate_left(17), !x)
}

fn register(i: u64, seen_ms: u64) -> Register {
    let mut attributes = Attributes::new();
    attributes.insert("app_version".into(), format!("4.{}.0", i % 5));
    attributes.insert("device_os".into(), format!("17.{}", i % 4));
    attributes.insert("device_locale".into(), "en-US".into());
    Register {
        token: token(i),
        platform: if i % 10 < 6 {
            Platform::Ios
        } else {
            Platform::Android
        },
        person: (!i.is_multiple_of(10)).then(|| format!("person-{:08}", i / 2)),
        seen_ms,
        attributes: Some(attributes),
    }
}

/// A cheap per-thread pseudo-random sequence (xorshift).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Starts a named thread in `s` (names show in the CPU split).
fn spawn<'s, 'e>(s: &'s thread::Scope<'s, 'e>, name: &str, f: impl FnOnce() + Send + 's) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn_scoped(s, f) {
        eprintln!("cannot start a {name} thread: {e}");
    }
}

/// What a timed phase did.
struct Done {
    reads: u64,
    writes: u64,
    /// Reads that took `SLOW_READ` or longer.
    slow_reads: u64,
    longest_read: Duration,
}

/// Runs `readers` reader threads and `writers` writer threads for `secs`.
fn phase(reg: &Registry, n: u64, readers: usize, writers: usize, secs: f64) -> Done {
    let stop = AtomicBool::new(false);
    let cpu_before = cpu_by_thread();
    let reads = AtomicU64::new(0);
    let slow = AtomicU64::new(0);
    let longest_ns = AtomicU64::new(0);
    let writes = AtomicU64::new(0);
    thread::scope(|s| {
        for t in 0..readers {
            let (stop, reads, slow, longest_ns) = (&stop, &reads, &slow, &longest_ns);
            spawn(s, "reader", move || {
                let mut r = 0x1234_5678 + t as u64;
                let (mut done, mut over, mut longest) = (0, 0, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let key = token(next(&mut r) % n);
                    let start = Instant::now();
                    let found = reg.device(&key);
                    let took = start.elapsed();
                    assert!(found.is_some(), "every imported device is present");
                    done += 1;
                    over += u64::from(took >= SLOW_READ);
                    longest = longest.max(took);
                }
                reads.fetch_add(done, Ordering::Relaxed);
                slow.fetch_add(over, Ordering::Relaxed);
                longest_ns.fetch_max(longest.as_nanos() as u64, Ordering::Relaxed);
            });
        }
        for t in 0..writers {
            let (stop, writes) = (&stop, &writes);
            spawn(s, "writer", move || {
                let mut r = 0x8765_4321 + t as u64;
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    let i = next(&mut r) % n;
                    let _ = reg.register(register(i, T0_MS + 86_400_000 + done));
                    done += 1;
                }
                writes.fetch_add(done, Ordering::Relaxed);
            });
        }
        thread::sleep(Duration::from_secs_f64(secs));
        let cpu_after = cpu_by_thread();
        let used: Vec<String> = cpu_after
            .iter()
            .map(|(k, v)| {
                let b = cpu_before.get(k).copied().unwrap_or([0.0; 4]);
                (k, [v[0] - b[0], v[1] - b[1], v[2] - b[2], v[3] - b[3]])
            })
            .filter(|(_, v)| v[0] > 0.01 || v[3] > 100.0)
            .map(|(k, v)| {
                format!(
                    "{k}: cpu {:.2}s runq {:.2}s invol {} vol {}",
                    v[0], v[1], v[2], v[3]
                )
            })
            .collect();
        eprintln!("by thread: {}", used.join("; "));
        stop.store(true, Ordering::Relaxed);
    });
    Done {
        reads: reads.into_inner(),
        writes: writes.into_inner(),
        slow_reads: slow.into_inner(),
        longest_read: Duration::from_nanos(longest_ns.into_inner()),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let secs: f64 = args.next().map_or(Ok(5.0), |a| a.parse())?;
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("devreg-rw-{}", std::process::id()));
    let reg = Registry::open_with(Config::new(&dir).durability(Durability::Eventual))?;
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + BATCH_DEVICES).min(n);
        let ops = (i..end)
            .map(|j| Op::Register(register(j, T0_MS + j)))
            .collect();
        reg.apply_batch(ops)?;
        i = end;
    }
    reg.checkpoint()?;
    eprintln!(
        "imported {n} devices in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    for (name, readers, writers) in [("1R", 1, 0), ("2R", 2, 0), ("2R+1W", 2, 1)] {
        let before = reg.metrics();
        let done = phase(&reg, n, readers, writers, secs);
        let after = reg.metrics();
        println!(
            "{{\"phase\":\"{name}\",\"reads_s\":{:.0},\"writes_s\":{:.0},\"reads_over_1ms\":{},\"longest_read_ms\":{:.2},\"checkpoints\":{},\"store_mb_written\":{:.1},\"compactions\":{}}}",
            done.reads as f64 / secs,
            done.writes as f64 / secs,
            done.slow_reads,
            done.longest_read.as_secs_f64() * 1e3,
            after.checkpoints - before.checkpoints,
            (after.store_bytes_written - before.store_bytes_written) as f64 / 1e6,
            after.compactions - before.compactions,
        );
    }
    reg.close()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

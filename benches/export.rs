//! Criterion bench of the Customer.io sync feed: export batch building plus
//! ack, in operations per second, over a registry of 100,000 identified
//! devices; and the feed's space per pending change, printed to stdout.
//!
//! `cargo bench --bench export` (about a minute). Each timed iteration is
//! one `export` of a full batch and its `ack`, including the checkpoints
//! their own log records cause; when fewer than a batch of changes is
//! pending, every device is touched and checkpointed (untimed) so the feed
//! holds 100,000 changes again, each an `add_device` with six attributes.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use devreg::{Attributes, Config, Durability, Op, Platform, Register, Registry, DEFAULT_SINK};

const DEVICES: u64 = 100_000;
const PERSONS: u64 = DEVICES / 2;
const NOW_MS: u64 = 1_750_000_000_000;
const MAX_BYTES: u32 = (devreg::customerio::MAX_BATCH_BODY_BYTES - 1) as u32;

fn token(i: u64) -> String {
    // Distinct 64-char hex tokens (the APNs shape), spread over the key space.
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{h:016x}{i:016x}{:016x}{:016x}", h.rotate_left(17), !h)
}

fn attrs(i: u64) -> Attributes {
    let mut a = Attributes::new();
    let pick = |set: &[&str]| set[(i % set.len() as u64) as usize].to_string();
    a.insert("app_version".into(), pick(&["4.0.1", "4.1.0", "4.2.0"]));
    a.insert("device_os".into(), pick(&["17.5", "18.0", "14", "15"]));
    a.insert(
        "device_model".into(),
        pick(&["iPhone15,3", "Pixel 8", "SM-S911B"]),
    );
    a.insert("push_enabled".into(), pick(&["true", "false"]));
    a.insert(
        "device_locale".into(),
        pick(&["en-US", "de-DE", "fr-FR", "ja-JP"]),
    );
    a.insert("cio_sdk_version".into(), pick(&["3.1.0", "3.2.1"]));
    a
}

struct Fixture {
    reg: Registry,
    /// `seen_ms` of the last refill; each refill touches every device later.
    seen_ms: u64,
    // Dropped after `reg`: the database lives in this directory.
    _dir: tempfile::TempDir,
}

/// A registry of DEVICES identified devices (two per person), checkpointed.
/// The default sink does not exist yet (it is born at the first export).
fn open(durability: Durability) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let reg = Registry::open_with(Config::new(dir.path().join("db")).durability(durability))
        .expect("opening the registry");
    for start in (0..DEVICES).step_by(10_000) {
        let ops = (start..start + 10_000)
            .map(|i| {
                Op::Register(Register {
                    token: token(i),
                    platform: if i % 5 < 3 {
                        Platform::Ios
                    } else {
                        Platform::Android
                    },
                    person: Some(format!("person-{}", i % PERSONS)),
                    seen_ms: NOW_MS - (i % 1000) * 1000,
                    attributes: Some(attrs(i)),
                })
            })
            .collect();
        reg.apply_batch(ops).expect("populating");
    }
    reg.checkpoint().expect("checkpoint");
    Fixture {
        reg,
        seen_ms: NOW_MS,
        _dir: dir,
    }
}

fn pending(reg: &Registry) -> u64 {
    reg.sinks()
        .iter()
        .find(|s| s.name == DEFAULT_SINK)
        .map_or(0, |s| s.pending)
}

impl Fixture {
    /// Makes every device a pending change again (one later `seen_ms` each).
    fn refill(&mut self) {
        self.seen_ms += 1000;
        for start in (0..DEVICES).step_by(10_000) {
            let ops = (start..start + 10_000)
                .map(|i| Op::Touch {
                    token: token(i),
                    seen_ms: self.seen_ms,
                })
                .collect();
            self.reg.apply_batch(ops).expect("refilling");
        }
        // The refill's own checkpoint must not land in a timed export.
        self.reg.checkpoint().expect("checkpoint");
    }

    /// Times `iters` export + ack round trips of full `max_ops` batches.
    fn export_ack(&mut self, iters: u64, max_ops: u32) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if pending(&self.reg) < u64::from(max_ops) {
                self.refill();
            }
            let t = Instant::now();
            let batch = self
                .reg
                .export(DEFAULT_SINK, max_ops, MAX_BYTES)
                .expect("export")
                .expect("a pending batch");
            self.reg.ack(DEFAULT_SINK, batch.id()).expect("ack");
            total += t.elapsed();
            assert_eq!(batch.len(), max_ops as usize, "a full batch");
        }
        total
    }
}

/// Bytes under `path` (files, recursively).
fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The feed's space per pending change: disk after a checkpoint with N
/// pending changes, minus disk after draining them, over N.
fn space_per_pending_change() {
    let Fixture { reg, _dir: dir, .. } = open(Durability::Eventual);
    let store = |reg: &Registry| dir_bytes(&reg.path().join("store"));
    reg.checkpoint().expect("checkpoint");
    let (no_feed_disk, no_feed_store) = (reg.disk_bytes(), store(&reg));
    // The default sink starts with a snapshot: one change per device.
    reg.add_sink(DEFAULT_SINK).expect("add_sink");
    let n = pending(&reg);
    reg.checkpoint().expect("checkpoint");
    let (full_disk, full_store) = (reg.disk_bytes(), store(&reg));

    let t = Instant::now();
    let (mut batches, mut ops, mut bytes) = (0u64, 0u64, 0u64);
    while let Some(b) = reg
        .export(DEFAULT_SINK, devreg::DEFAULT_MAX_OPS, MAX_BYTES)
        .expect("export")
    {
        batches += 1;
        ops += b.len() as u64;
        bytes += b.body().len() as u64;
        reg.ack(DEFAULT_SINK, b.id()).expect("ack");
    }
    let drain = t.elapsed();
    reg.checkpoint().expect("checkpoint");
    let (drained_disk, drained_store) = (reg.disk_bytes(), store(&reg));

    let path = reg.path().to_owned();
    drop(reg);
    let reg = Registry::open(&path).expect("reopen");
    let (reopened_disk, reopened_store) = (reg.disk_bytes(), store(&reg));
    drop(reg);
    drop(dir);

    let per = |a: u64, b: u64| (a as f64 - b as f64) / n.max(1) as f64;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("feed space, {DEVICES} identified devices, {n} pending changes:");
    println!(
        "  disk_bytes: no sink {:.1} MiB, {n} pending {:.1} MiB, drained {:.1} MiB, \
         drained and reopened {:.1} MiB",
        mib(no_feed_disk),
        mib(full_disk),
        mib(drained_disk),
        mib(reopened_disk)
    );
    println!(
        "  (of which sled store: {:.1} / {:.1} / {:.1} / {:.1} MiB; the rest is log segments)",
        mib(no_feed_store),
        mib(full_store),
        mib(drained_store),
        mib(reopened_store)
    );
    println!(
        "  space per pending change: {:.0} bytes (pending vs drained), {:.0} bytes (pending vs no sink)",
        per(full_disk, drained_disk),
        per(full_disk, no_feed_disk)
    );
    println!(
        "  full drain: {batches} batches, {ops} operations, {:.1} MiB of bodies in {:.0} ms = {:.0} ops/s",
        mib(bytes),
        drain.as_secs_f64() * 1e3,
        ops as f64 / drain.as_secs_f64().max(1e-9)
    );
}

fn export_throughput(c: &mut Criterion) {
    space_per_pending_change();

    let mut g = c.benchmark_group("export+ack");
    for (mode, durability, sizes) in [
        ("eventual", Durability::Eventual, &[100u32, 1000][..]),
        ("immediate", Durability::Immediate, &[100u32][..]),
    ] {
        let mut fx = open(durability);
        // Create the sink (its 100,000-change snapshot) before timing.
        fx.reg.add_sink(DEFAULT_SINK).expect("add_sink");
        fx.reg.checkpoint().expect("checkpoint");
        for &max_ops in sizes {
            g.throughput(Throughput::Elements(u64::from(max_ops)));
            g.bench_function(format!("{max_ops} ops/{mode}"), |b| {
                b.iter_custom(|iters| fx.export_ack(iters, max_ops))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    targets = export_throughput
}
criterion_main!(benches);

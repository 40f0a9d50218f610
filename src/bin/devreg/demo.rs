//! `devreg demo`: a realistic workload on a throwaway database, and a
//! report of what devreg did with it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use devreg::{Config, Device, Durability, Op, Outcome, Platform, Register, Registry};

use crate::output::Out;
use crate::workload::{self, DAY_MS, NOW_MS};
use crate::{CliError, CmdResult};

/// Events in the bulk workload (the contract asks for at least 100,000).
const EVENTS: usize = 120_000;
/// Ops per atomic `apply_batch`, as `import` uses.
const BATCH_OPS: usize = 10_000;
/// Durable single registers: one caller, then several sharing fsyncs.
const SERIAL_REGISTERS: usize = 1_000;
const PARALLEL_THREADS: usize = 8;
const PARALLEL_REGISTERS_EACH: usize = 500;

/// A uniquely named directory under the system temp dir, removed on drop
/// (tempfile is only a dev-dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, CliError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("devreg-demo-{}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        // create_dir (not create_dir_all) fails if the name is somehow taken.
        std::fs::create_dir(&path)
            .map_err(|e| CliError(format!("creating {}: {e}", path.display())))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path, durability: Durability, cap: Option<u32>) -> Result<Registry, CliError> {
    let mut config = Config::new(path).durability(durability);
    if let Some(cap) = cap {
        config = config.max_devices_per_person(cap);
    }
    Registry::open_with(config).map_err(|e| CliError(format!("opening {}: {e}", path.display())))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:.0}/s", n as f64 / d.as_secs_f64().max(1e-9))
}

fn short(token: &str) -> String {
    match token.get(..16) {
        Some(head) if token.len() > 20 => format!("{head}…({} chars)", token.len()),
        _ => token.to_string(),
    }
}

fn describe(d: &Device) -> String {
    let version = d.attributes.get("app_version").map_or("?", String::as_str);
    let days_ago = NOW_MS.saturating_sub(d.last_seen_ms) as f64 / DAY_MS as f64;
    format!(
        "{:<7} {:<28} seen {days_ago:>5.1} days ago, app {version}",
        d.platform.as_str(),
        short(&d.token)
    )
}

#[derive(Default)]
struct Tally {
    applied: u64,
    not_found: u64,
    skipped: u64,
    evicted: u64,
}

/// Runs the demo; exits 1 if the final check finds any problem.
pub fn run(cap: Option<u32>) -> CmdResult {
    let tmp = TempDir::new()?;
    let mut out = Out::stdout();
    out.line(&format!(
        "devreg demo (temporary database in {})",
        tmp.0.display()
    ))?;

    let t = Instant::now();
    let work = workload::generate(0x5EED_DE7E, EVENTS);
    let n = work.ops.len();
    out.line(&format!("\ngenerated {n} events in {}", ms(t.elapsed())))?;

    let db = tmp.0.join("bulk");
    let t = Instant::now();
    let reg = open(&db, Durability::Eventual, cap)?;
    let created = t.elapsed();
    let mut tally = Tally::default();
    let t = Instant::now();
    let mut ops = work.ops.into_iter().peekable();
    while ops.peek().is_some() {
        let batch: Vec<Op> = ops.by_ref().take(BATCH_OPS).collect();
        for outcome in reg.apply_batch(batch)? {
            match outcome {
                Outcome::Applied { evicted, .. } => {
                    tally.applied += 1;
                    tally.evicted += u64::from(evicted);
                }
                Outcome::NotFound => tally.not_found += 1,
                Outcome::Skipped => tally.skipped += 1,
                // A kind added later: counted with the skipped ones.
                _ => tally.skipped += 1,
            }
        }
    }
    let applied_in = t.elapsed();
    out.line(&format!(
        "applied {n} events in {} batches of up to {BATCH_OPS} (eventual durability): {} = {}",
        n.div_ceil(BATCH_OPS),
        ms(applied_in),
        rate(n, applied_in)
    ))?;
    out.line(&format!(
        "  outcomes: {} applied, {} on unknown tokens, {} dead-token reports \
         ignored (seen later), {} devices evicted by the per-person cap",
        tally.applied, tally.not_found, tally.skipped, tally.evicted
    ))?;

    report_state(&mut out, &reg, &work.busiest_person, work.prune_before_ms)?;

    let t = Instant::now();
    reg.checkpoint()?;
    let checkpoint = t.elapsed();
    out.line(&format!(
        "\ndisk: {:.1} MiB (sled store + log segments); checkpoint took {}",
        reg.disk_bytes() as f64 / (1 << 20) as f64,
        ms(checkpoint)
    ))?;
    let before = reg.stats();
    let t = Instant::now();
    drop(reg);
    let closed = t.elapsed();
    let t = Instant::now();
    let reg = open(&db, Durability::Eventual, cap)?;
    let reopened = t.elapsed();
    out.line(&format!(
        "open: created in {}, closed in {}, reopened with {} devices in {}",
        ms(created),
        ms(closed),
        reg.stats().devices,
        ms(reopened)
    ))?;
    if reg.stats() != before {
        return Err(CliError("stats changed across the reopen".into()));
    }

    durable_registers(&mut out, &tmp.0.join("durable"), cap)?;
    drained_export(&mut out, &reg)?;

    let t = Instant::now();
    let report = reg.check()?;
    let checked = t.elapsed();
    drop(reg);
    if report.is_clean() {
        out.line(&format!(
            "\ncheck: clean ({} devices verified in {})",
            report.devices,
            ms(checked)
        ))?;
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    } else {
        out.line(&format!("\ncheck: {} problem(s)", report.problems.len()))?;
        for p in &report.problems {
            out.line(&format!("  {p}"))?;
        }
        out.flush()?;
        Ok(ExitCode::FAILURE)
    }
}

fn report_state(out: &mut Out, reg: &Registry, person: &str, pruned: u64) -> Result<(), CliError> {
    let s = reg.stats();
    let days = (NOW_MS - pruned) / DAY_MS;
    out.line(&format!(
        "\nstats (\"now\" is 2026-01-01T00:00Z; devices unseen for {days} days were pruned):"
    ))?;
    out.line(&format!(
        "  {} devices ({} ios, {} android), {} identified, {} anonymous, \
         {} persons, cap {} devices per person",
        s.devices, s.ios, s.android, s.identified, s.anonymous, s.persons, s.max_devices_per_person
    ))?;

    let devices = reg.devices_of(person);
    out.line(&format!(
        "\n{person} (the most-logged-in person) has {} devices, most recent first:",
        devices.len()
    ))?;
    for d in devices.iter().take(5) {
        out.line(&format!("  {}", describe(d)))?;
    }
    if devices.len() > 5 {
        out.line(&format!("  … and {} more", devices.len() - 5))?;
    }
    for platform in [None, Some(Platform::Ios), Some(Platform::Android)] {
        let label = platform.map_or("any platform", Platform::as_str);
        match reg.most_recent(person, platform) {
            Some(d) => out.line(&format!("  most recent ({label}): {}", describe(&d)))?,
            None => out.line(&format!("  most recent ({label}): none"))?,
        }
    }

    let since = NOW_MS - 30 * DAY_MS;
    let t = Instant::now();
    let all = reg.active_since(since, None);
    let took = t.elapsed();
    out.line(&format!(
        "\npush-eligible (seen in the last 30 days): {all} devices \
         ({} ios, {} android), counted in {:.1} µs",
        reg.active_since(since, Some(Platform::Ios)),
        reg.active_since(since, Some(Platform::Android)),
        took.as_secs_f64() * 1e6
    ))
}

/// Single registers with `Durability::Immediate`: each returns only after an
/// fdatasync. One caller pays a sync per register; concurrent callers share
/// one (group commit), which is what the second figure shows.
fn durable_registers(out: &mut Out, path: &Path, cap: Option<u32>) -> Result<(), CliError> {
    let reg = open(path, Durability::Immediate, cap)?;
    let one = |i: usize| Register {
        token: format!("{:064x}", 0xD0_0000 + i),
        platform: Platform::Ios,
        person: Some(format!("durable-{}", i % 500)),
        seen_ms: NOW_MS - (i as u64 % 1000) * 1000,
        attributes: None,
    };
    let t = Instant::now();
    for i in 0..SERIAL_REGISTERS {
        let _ = reg.register(one(i))?;
    }
    let serial = t.elapsed();
    let t = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PARALLEL_THREADS)
            .map(|th| {
                let reg = reg.clone();
                s.spawn(move || -> Result<(), devreg::Error> {
                    for j in 0..PARALLEL_REGISTERS_EACH {
                        let i = SERIAL_REGISTERS + th * PARALLEL_REGISTERS_EACH + j;
                        let _ = reg.register(one(i))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("a register thread panicked".to_string()),
            })
            .collect()
    });
    let parallel = t.elapsed();
    for r in results {
        r.map_err(CliError)?;
    }
    let total = PARALLEL_THREADS * PARALLEL_REGISTERS_EACH;
    out.line(&format!(
        "\ndurable (immediate) single registers, each acknowledged after an fdatasync:\n  \
         1 thread:  {SERIAL_REGISTERS} in {} = {}\n  \
         {PARALLEL_THREADS} threads: {total} in {} = {} (group commit shares each sync)",
        ms(serial),
        rate(SERIAL_REGISTERS, serial),
        ms(parallel),
        rate(total, parallel)
    ))
}

/// Drains the Customer.io change feed as a sync worker would: export a
/// batch from the default sink, "send" it, acknowledge it, until nothing is
/// pending; then reports what it held and the sink's position.
fn drained_export(out: &mut Out, reg: &Registry) -> Result<(), CliError> {
    let sink = devreg::DEFAULT_SINK;
    let max_bytes = (devreg::customerio::MAX_BATCH_BODY_BYTES - 1) as u32;
    // The sink starts with a snapshot of every identified device when it is
    // added (its first export would add it): add it first to report that.
    reg.add_sink(sink)?;
    let pending = reg
        .sinks()
        .iter()
        .find(|s| s.name == sink)
        .map_or(0, |s| s.pending);
    let (mut batches, mut ops, mut bytes) = (0usize, 0usize, 0usize);
    let mut sample = None;
    let t = Instant::now();
    while let Some(batch) = reg.export(sink, devreg::DEFAULT_MAX_OPS, max_bytes)? {
        if sample.is_none() {
            sample = batch.operations().next().map(str::to_owned);
        }
        batches += 1;
        ops += batch.len();
        bytes += batch.body().len();
        reg.ack(sink, batch.id())?;
    }
    let took = t.elapsed();
    out.line(&format!(
        "\nexport (Customer.io change feed, sink {sink:?}, {pending} pending items: \
         (person, token) pairs and merges):\n  \
         drained {batches} batches of up to {} operations: {ops} operations, {:.1} MiB of \
         request bodies, in {} = {} (export + ack, eventual durability)\n  \
         (items that net to nothing, e.g. a device registered and removed before any \
         export, send nothing)",
        devreg::DEFAULT_MAX_OPS,
        bytes as f64 / (1 << 20) as f64,
        ms(took),
        rate(ops, took)
    ))?;
    if let Some(op) = sample {
        out.line(&format!("  first operation: {op}"))?;
    }
    let sinks = serde_json::to_string(&reg.sinks())?;
    out.line(&format!("  sinks: {sinks}"))
}

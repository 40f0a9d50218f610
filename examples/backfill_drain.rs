//! A new sink on a large registry (DESIGN.md 11.5): opens DB, adds sink
//! SINK, and drains it (export of up to 1,000 operations, then ack, until
//! nothing is pending). Prints the time to add the sink, the drain's
//! operations per minute and the peak RSS (VmHWM) of this process. With
//! `timeline` it also prints, every half second of the drain, the RSS, the
//! operations drained so far and the checkpoints, page merges and bytes
//! handed to the store since the open: what a peak coincides with.
//!
//! ```sh
//! cargo run --release --example backfill_drain -- DB [SINK] [timeline]
//! ```

use std::error::Error;

#[path = "support/status.rs"]
mod status;
use status::status_kib;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let db = args.next().ok_or("usage: backfill_drain DB [SINK]")?;
    let sink = args.next().unwrap_or_else(|| "drain".to_owned());
    let timeline = args.next().as_deref() == Some("timeline");
    let t = std::time::Instant::now();
    let reg = devreg::Registry::open(&db)?;
    let open_s = t.elapsed().as_secs_f64();
    let rss_open_kib = status_kib("VmRSS:");
    let t = std::time::Instant::now();
    if !reg.add_sink(&sink)? {
        return Err(format!("sink {sink:?} exists already").into());
    }
    let add_s = t.elapsed().as_secs_f64();
    let pending = reg
        .sinks()
        .into_iter()
        .find(|s| s.name == sink)
        .map_or(0, |s| s.pending);
    let t = std::time::Instant::now();
    let drained = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (ops, batches) = std::thread::scope(|s| {
        if timeline {
            s.spawn(|| print_timeline(&reg, t, &drained, &done));
        }
        let r = drain(&reg, &sink, &drained);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })?;
    let drain_s = t.elapsed().as_secs_f64();
    reg.close()?;
    println!(
        "open {open_s:.2} s (RSS {} MiB); add_sink {add_s:.3} s, {pending} pending; \
         drained {ops} operations in {batches} batches, {drain_s:.1} s \
         ({:.0} ops/min); peak RSS {} MiB",
        rss_open_kib / 1024,
        ops as f64 / drain_s.max(1e-9) * 60.0,
        status_kib("VmHWM:") / 1024
    );
    Ok(())
}

/// Exports and acknowledges until nothing is pending: (operations, batches).
fn drain(
    reg: &devreg::Registry,
    sink: &str,
    drained: &std::sync::atomic::AtomicUsize,
) -> devreg::Result<(usize, usize)> {
    let (mut ops, mut batches) = (0usize, 0usize);
    while let Some(b) = reg.export(sink, 1000, 499_999)? {
        ops += b.len();
        batches += 1;
        reg.ack(sink, b.id())?;
        drained.store(ops, std::sync::atomic::Ordering::Relaxed);
    }
    Ok((ops, batches))
}

/// Every half second until `done`: seconds, RSS, operations drained,
/// checkpoints, page merges and MiB handed to the store.
fn print_timeline(
    reg: &devreg::Registry,
    t: std::time::Instant,
    drained: &std::sync::atomic::AtomicUsize,
    done: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !done.load(Relaxed) {
        let m = reg.metrics();
        println!(
            "t {:.1} s: RSS {} MiB, {} ops, {} checkpoints, {} page merges, {} MiB to the store",
            t.elapsed().as_secs_f64(),
            status_kib("VmRSS:") / 1024,
            drained.load(Relaxed),
            m.checkpoints,
            m.page_merges,
            m.store_bytes_written >> 20
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

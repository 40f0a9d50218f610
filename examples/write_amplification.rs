//! Checkpoint write amplification: bytes the checkpoints hand to the store
//! per changed device (the scale issue's measure).
//!
//! ```sh
//! cargo run --release --example write_amplification -- DB PERCENT [ROUNDS] [no-compaction]
//! ```
//!
//! Opens the database at DB (it must exist), then ROUNDS times (default 3)
//! touches PERCENT of its devices (every k-th by token, a new `seen_ms`)
//! and takes a checkpoint, printing one JSON line per round: devices
//! changed, bytes written to the store, bytes per changed device. A round
//! that crosses `page_delta_bytes` includes a merge of the delta pages.
//! On Linux each line also gives the bytes of page cache the process
//! dirtied in the round (`write_bytes` of `/proc/self/io`: the log, the
//! store's own writing of what it was handed, sled's zeroing), per changed
//! device, and their ratio to the bytes handed to the store.
//! `no-compaction` opens with `Config::compact_min_store_bytes(u64::MAX)`
//! (no store compaction, DESIGN.md 4.6), to tell its share apart.

use std::error::Error;

use devreg::{Config, Op, Registry};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(db), Some(percent)) = (args.next(), args.next()) else {
        return Err("usage: write_amplification DB PERCENT [ROUNDS]".into());
    };
    let percent: f64 = percent.parse()?;
    let rounds: u32 = args.next().map_or(Ok(3), |r| r.parse())?;
    let mut config = Config::new(&db);
    if args.next().as_deref() == Some("no-compaction") {
        config = config.compact_min_store_bytes(u64::MAX);
    }
    let reg = Registry::open_with(config)?;
    let tokens: Vec<String> = reg.dump().into_iter().map(|d| d.token).collect();
    let changed = ((tokens.len() as f64) * percent / 100.0).round().max(1.0) as usize;
    let stride = (tokens.len() / changed).max(1);
    reg.checkpoint()?;
    // Later than any earlier run's touches, so every touch changes its device.
    let base_ms = 2_000_000_000_000
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            * 100;
    for round in 0..rounds {
        let before = reg.store_bytes_written();
        let dirtied_before = dirtied_bytes();
        let seen_ms = base_ms + u64::from(round);
        let ops: Vec<Op> = tokens
            .iter()
            .step_by(stride)
            .take(changed)
            .map(|t| Op::Touch {
                token: t.clone(),
                seen_ms,
            })
            .collect();
        for batch in ops.chunks(10_000) {
            reg.apply_batch(batch.to_vec())?;
        }
        reg.checkpoint()?;
        let written = reg.store_bytes_written() - before;
        let dirtied = dirtied_before
            .zip(dirtied_bytes())
            .map(|(b, a)| a.saturating_sub(b));
        let dirtied_json = dirtied.map_or("null".to_string(), |d| {
            format!(
                "{d},\"dirtied_per_changed_device\":{},\"dirtied_per_byte_written\":{:.1}",
                d / changed as u64,
                d as f64 / written.max(1) as f64
            )
        });
        println!(
            "{{\"devices\":{},\"changed\":{},\"round\":{},\"bytes_written\":{},\"bytes_per_changed_device\":{},\"dirtied_bytes\":{dirtied_json}}}",
            tokens.len(),
            changed,
            round,
            written,
            written / changed as u64
        );
    }
    reg.close()?;
    Ok(())
}

/// Bytes of page cache this process has dirtied so far (`write_bytes` in
/// `/proc/self/io`), or `None` where that file is missing.
fn dirtied_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

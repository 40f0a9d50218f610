//! Checkpoint write amplification: bytes the checkpoints hand to the store
//! per changed device (the scale issue's measure).
//!
//! ```sh
//! cargo run --release --example write_amplification -- DB PERCENT [ROUNDS]
//! ```
//!
//! Opens the database at DB (it must exist), then ROUNDS times (default 3)
//! touches PERCENT of its devices (every k-th by token, a new `seen_ms`)
//! and takes a checkpoint, printing one JSON line per round: devices
//! changed, bytes written to the store, bytes per changed device. A round
//! that crosses `page_delta_bytes` includes a merge of the delta pages.

use std::error::Error;

use devreg::{Op, Registry};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(db), Some(percent)) = (args.next(), args.next()) else {
        return Err("usage: write_amplification DB PERCENT [ROUNDS]".into());
    };
    let percent: f64 = percent.parse()?;
    let rounds: u32 = args.next().map_or(Ok(3), |r| r.parse())?;
    let reg = Registry::open(&db)?;
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
        println!(
            "{{\"devices\":{},\"changed\":{},\"round\":{},\"bytes_written\":{},\"bytes_per_changed_device\":{}}}",
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

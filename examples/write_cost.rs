//! The cost of one write from a single thread, eventual and durable: the
//! before/after check of a change on the write path (DESIGN.md 13,
//! "Metrics": recording must stay within noise).
//!
//! ```sh
//! cargo run --release --example write_cost -- [EVENTUAL] [DURABLE] [ROUNDS] [DIR]
//! ```
//!
//! Each round opens a new database under DIR (default: the system's
//! temporary directory) and registers EVENTUAL devices (default 10^6) with
//! `Durability::Eventual`, then another new database DURABLE devices
//! (default 2,000) with `Durability::Immediate`, one call each; prints one
//! JSON line per round with the wall time and nanoseconds per write.

use std::error::Error;
use std::time::Instant;

use devreg::{Config, Durability, Platform, Register, Registry};

/// Registers `n` new devices one call at a time; seconds taken.
fn run(dir: &std::path::Path, durability: Durability, n: u64) -> Result<f64, Box<dyn Error>> {
    let reg = Registry::open_with(Config::new(dir).durability(durability))?;
    let start = Instant::now();
    for i in 0..n {
        let _ = reg.register(Register {
            token: format!("tok-{i:012}"),
            platform: Platform::Android,
            person: Some(format!("p{}", i % 100_000)),
            seen_ms: 1_700_000_000_000 + i,
            attributes: None,
        })?;
    }
    let secs = start.elapsed().as_secs_f64();
    reg.close()?;
    Ok(secs)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let eventual: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let durable: u64 = args.next().map_or(Ok(2_000), |a| a.parse())?;
    let rounds: u32 = args.next().map_or(Ok(1), |a| a.parse())?;
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    for round in 0..rounds {
        let dir = tempfile::tempdir_in(&base)?;
        let ev = run(&dir.path().join("eventual"), Durability::Eventual, eventual)?;
        let du = run(&dir.path().join("durable"), Durability::Immediate, durable)?;
        println!(
            "{{\"round\":{round},\"eventual_writes\":{eventual},\"eventual_s\":{ev:.3},\
             \"eventual_ns_per_write\":{:.0},\"durable_writes\":{durable},\"durable_s\":{du:.3},\
             \"durable_us_per_write\":{:.1}}}",
            ev * 1e9 / eventual.max(1) as f64,
            du * 1e6 / durable.max(1) as f64,
        );
    }
    Ok(())
}

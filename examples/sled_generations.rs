//! What sled 0.34.7 writes when a store's pages are rewritten, by itself
//! (no devreg): every value overwritten under its own key, against every
//! value written under a new generation's key and the old generation's
//! keys deleted after (devreg's page merge, DESIGN.md 4.3). Prints, per
//! round, the bytes handed to sled and the bytes of page cache the process
//! dirtied (`write_bytes` of `/proc/self/io`, Linux).
//!
//! ```sh
//! cargo run --release --example sled_generations -- [VALUES] [VALUE_BYTES] [ROUNDS]
//! ```
//!
//! Defaults: 4,096 values of 40,000 bytes (the order of a 10^6 store's
//! pages), 4 rounds, a flush every 64 values (devreg flushes per chunk).

use std::error::Error;

/// Values per sled batch and flush (about one checkpoint chunk of pages).
const FLUSH_EVERY_VALUES: u64 = 64;
/// Old keys deleted per sled batch (as a merge deletes a generation).
const DELETE_BATCH_KEYS: u64 = 32;

fn dirtied_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn key(generations: bool, generation: u64, i: u64) -> Vec<u8> {
    if generations {
        [generation.to_be_bytes(), i.to_be_bytes()].concat()
    } else {
        i.to_be_bytes().to_vec()
    }
}

fn value(bytes: usize, i: u64, round: u64) -> Vec<u8> {
    // Varied bytes (sled does not compress them).
    (0..bytes as u64)
        .map(|j| ((j.wrapping_mul(2_654_435_761) + i * 7 + round) >> 7) as u8)
        .collect()
}

/// One round: every value written (and, with generations, the previous
/// generation deleted after).
fn round(db: &sled::Db, generations: bool, shape: (u64, usize), r: u64) -> sled::Result<()> {
    let (values, bytes) = shape;
    let mut batch = sled::Batch::default();
    for i in 0..values {
        batch.insert(key(generations, r, i), value(bytes, i, r));
        if (i + 1) % FLUSH_EVERY_VALUES == 0 {
            db.apply_batch(std::mem::take(&mut batch))?;
            db.flush()?;
        }
    }
    db.apply_batch(batch)?;
    db.flush()?;
    if generations && r > 0 {
        let mut del = sled::Batch::default();
        for i in 0..values {
            del.remove(key(true, r - 1, i));
            if (i + 1) % DELETE_BATCH_KEYS == 0 {
                db.apply_batch(std::mem::take(&mut del))?;
            }
        }
        db.apply_batch(del)?;
        db.flush()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let values: u64 = args.next().map_or(Ok(4096), |a| a.parse())?;
    let bytes: usize = args.next().map_or(Ok(40_000), |a| a.parse())?;
    let rounds: u64 = args.next().map_or(Ok(4), |a| a.parse())?;
    for generations in [false, true] {
        let dir = tempfile::tempdir()?;
        let db = sled::Config::new()
            .path(dir.path())
            .segment_size(8 << 20)
            .cache_capacity(64 << 20)
            .flush_every_ms(None)
            .open()?;
        for r in 0..rounds {
            let before = dirtied_bytes();
            round(&db, generations, (values, bytes), r)?;
            let handed = values * bytes as u64;
            let dirtied = before.zip(dirtied_bytes()).map(|(b, a)| a - b);
            println!(
                "{{\"pattern\":\"{}\",\"round\":{r},\"handed_bytes\":{handed},\"dirtied_bytes\":{},\"ratio\":{}}}",
                if generations { "generations" } else { "in-place" },
                dirtied.map_or("null".into(), |d| d.to_string()),
                dirtied.map_or("null".into(), |d| format!("{:.1}", d as f64 / handed as f64)),
            );
        }
    }
    Ok(())
}

//! The harness's `most_recent(person)` row against a database already on
//! disk, so that two builds can be timed in turns on the same data without
//! importing it again (DESIGN.md 13, step 49): opens DB, then runs
//! `most_recent` for `QUERIES` people drawn at random from the harness's
//! names (`workload::person_name` below `persons_for(devices)`), one at a
//! time on this thread as the harness's row does, and prints the rate.
//!
//! ```sh
//! cargo run --release --example scale_probe -- 10000000 harness keep   # leaves scale-probe-db
//! cargo run --release --example query_probe -- scale-probe-db [QUERIES]
//! ```

use std::error::Error;
use std::time::Instant;

// The comparison harness's data set: its person names and its generator.
#[allow(dead_code)]
#[path = "../benches/compare/workload.rs"]
mod workload;

/// Queries when none are asked for: about two seconds at 10^7 devices.
const DEFAULT_QUERIES: u64 = 2_000_000;
/// The seed of the people drawn (the same in every run).
const SEED: u64 = 0x5eed;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let db = args.next().ok_or("usage: query_probe DB [QUERIES]")?;
    let queries = match args.next() {
        Some(q) => q.parse()?,
        None => DEFAULT_QUERIES,
    };
    let t = Instant::now();
    let reg = devreg::Registry::open_with(devreg::Config::new(&db))?;
    let open_s = t.elapsed().as_secs_f64();
    let devices = reg.stats().devices;
    let persons = workload::persons_for(usize::try_from(devices)?);
    let mut r = workload::Rng::new(SEED);
    let mut found = 0u64;
    let t = Instant::now();
    for _ in 0..queries {
        let name = workload::person_name(r.below(persons));
        found += u64::from(std::hint::black_box(reg.most_recent(&name, None)).is_some());
    }
    let rate = queries as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"devices\":{devices},\"open_s\":{open_s:.1},\"queries\":{queries},\"found\":{found},\"most_recent_ops_s\":{rate:.0}}}"
    );
    Ok(())
}

//! Resident memory after an open (the scale issue's "RAM after open"):
//! opens DB with a memory budget in MiB and prints the open time, the
//! devices and the RSS per device (VmRSS of this process after the open).
//!
//! ```sh
//! cargo run --release --example rss_after_open -- DB [BUDGET_MIB] [nice=STEPS]
//! ```
//!
//! `nice=STEPS` sets `Config::background_nice` (0 keeps the checkpointer at
//! the opener's priority), to time an open with and without it.
//!
//! This measures the library on the system allocator, as a service linking
//! it would run (the `devreg` command uses mimalloc instead, DESIGN.md
//! section 6). glibc's mmap threshold no longer matters for it: since the open
//! returns glibc's free heap pages (`heap.rs`), the harness's 10^7 database
//! read 178 B/device with it and 180 without (DESIGN.md 6, "The harness's
//! allocator"); before, glibc kept the nodes sled freed after the load and
//! the RSS stayed about 110 B per device higher without it.

use std::error::Error;

#[path = "support/status.rs"]
mod status;

fn vm_rss_bytes() -> u64 {
    status::status_kib("VmRSS:") * 1024
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .ok_or("usage: rss_after_open DB [BUDGET_MIB] [nice=STEPS]")?;
    let mut config = devreg::Config::new(&db);
    for arg in args {
        config = match arg.strip_prefix("nice=") {
            Some(steps) => config.background_nice(steps.parse()?),
            None => config.memory_budget_bytes(arg.parse::<u64>()? << 20),
        };
    }
    let before = vm_rss_bytes();
    let t = std::time::Instant::now();
    let reg = devreg::Registry::open_with(config)?;
    let open_ms = t.elapsed().as_millis();
    let devices = reg.stats().devices;
    let rss = vm_rss_bytes().saturating_sub(before);
    println!(
        "{{\"devices\":{devices},\"open_ms\":{open_ms},\"rss_bytes\":{rss},\"rss_b_per_device\":{:.1}}}",
        rss as f64 / devices.max(1) as f64
    );
    Ok(())
}

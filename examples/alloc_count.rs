//! Counts heap allocations per imported device, by thread: a global
//! allocator that counts `alloc`/`realloc` calls, and the importing thread
//! marks itself. Measures the library's allocation churn on the bulk path
//! (glibc's malloc and its fastbin consolidation are most of the importing
//! thread's time at 10^7 devices, DESIGN 13 step 10).
//!
//! cargo run --release --example alloc_count -- [N] [durable|eventual]
//!
//! `ALLOC_SITES=1` also prints where the importing thread's allocations
//! come from (every 997th, by its devreg source lines); `ALLOC_SITES=others`
//! the same for the other threads (the checkpointer's; sled's own threads
//! show no devreg line); `ALLOC_SITES=large` every request of 1 KiB or more
//! on the importing thread (each makes glibc consolidate its fastbins).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use devreg::{Config, Durability, Op, Registry};

struct Counting;

static MAIN_ALLOCS: AtomicU64 = AtomicU64::new(0);
static OTHER_ALLOCS: AtomicU64 = AtomicU64::new(0);
static MAIN_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IS_MAIN: Cell<bool> = const { Cell::new(false) };
    static IN_SAMPLE: Cell<bool> = const { Cell::new(false) };
}

/// Every SAMPLE_EVERY-th allocation of the importing thread records its
/// backtrace when `ALLOC_SITES` is set (sites printed at the end).
const SAMPLE_EVERY: u64 = 997;
static SAMPLING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// `ALLOC_SITES=others`: sample the other threads' allocations instead
/// (the checkpointer's, mostly).
static SAMPLING_OTHERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static SITES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// `ALLOC_SITES=large`: every allocation of the importing thread of
/// `LARGE_BYTES` or more (the requests that make glibc consolidate its
/// fastbins), not a sample.
static SAMPLING_LARGE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static MAIN_LARGE: AtomicU64 = AtomicU64::new(0);
const LARGE_BYTES: usize = 1024;

fn sample() {
    if IN_SAMPLE.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    IN_SAMPLE.with(|c| c.set(true));
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    // Keep the source lines inside devreg.
    let frames: Vec<&str> = bt
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("at "))
        .filter(|f| f.starts_with("./src/") || f.starts_with("src/"))
        .take(5)
        .collect();
    if let Ok(mut s) = SITES.lock() {
        s.push(frames.join(" < "));
    }
    IN_SAMPLE.with(|c| c.set(false));
}

fn count(size: usize) {
    let main = IS_MAIN.try_with(Cell::get).unwrap_or(false);
    if main {
        let k = MAIN_ALLOCS.fetch_add(1, Ordering::Relaxed);
        MAIN_BYTES.fetch_add(size as u64, Ordering::Relaxed);
        if size >= LARGE_BYTES {
            MAIN_LARGE.fetch_add(1, Ordering::Relaxed);
            if SAMPLING_LARGE.load(Ordering::Relaxed) {
                sample();
            }
        }
        if SAMPLING.load(Ordering::Relaxed) && k.is_multiple_of(SAMPLE_EVERY) {
            sample();
        }
    } else {
        let k = OTHER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        if SAMPLING_OTHERS.load(Ordering::Relaxed) && k.is_multiple_of(SAMPLE_EVERY) {
            sample();
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[path = "support/generator.rs"]
mod generator;

fn ops(from: u64, n: u64) -> Vec<Op> {
    (from..from + n)
        .map(|i| {
            let mut attributes = BTreeMap::new();
            for (k, v) in [
                ("app_version", "4.2.1"),
                ("device_os", "17.4"),
                ("device_model", "iPhone15,3"),
                ("push_enabled", "true"),
                ("device_locale", "en-US"),
                ("cio_sdk_version", "3.2.1"),
            ] {
                attributes.insert(k.to_string(), v.to_string());
            }
            generator::register(i, attributes)
        })
        .collect()
}

fn main() -> devreg::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let mode = match args.next().as_deref() {
        Some("eventual") => Durability::Eventual,
        _ => Durability::Immediate,
    };
    let dir = std::env::temp_dir().join(format!("devreg-alloc-count-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let reg = Registry::open_with(Config::new(&dir).durability(mode))?;
    let sites = std::env::var("ALLOC_SITES").ok();
    SAMPLING.store(sites.as_deref() == Some("1"), Ordering::Relaxed);
    SAMPLING_OTHERS.store(sites.as_deref() == Some("others"), Ordering::Relaxed);
    SAMPLING_LARGE.store(sites.as_deref() == Some("large"), Ordering::Relaxed);
    const BATCH: u64 = 10_000;
    let (mut main, mut other, mut bytes) = (0u64, 0u64, 0u64);
    let t = std::time::Instant::now();
    let mut i = 0;
    while i < n {
        let batch = ops(i, BATCH.min(n - i));
        let (m0, o0, b0) = (
            MAIN_ALLOCS.load(Ordering::Relaxed),
            OTHER_ALLOCS.load(Ordering::Relaxed),
            MAIN_BYTES.load(Ordering::Relaxed),
        );
        IS_MAIN.with(|c| c.set(true));
        reg.apply_batch(batch)?;
        IS_MAIN.with(|c| c.set(false));
        main += MAIN_ALLOCS.load(Ordering::Relaxed) - m0;
        bytes += MAIN_BYTES.load(Ordering::Relaxed) - b0;
        other += OTHER_ALLOCS.load(Ordering::Relaxed) - o0;
        i += BATCH;
    }
    let secs = t.elapsed().as_secs_f64();
    reg.checkpoint()?;
    let other_total = OTHER_ALLOCS.load(Ordering::Relaxed);
    println!(
        "{n} devices, {mode:?}: {:.0} devices/s; importing thread: {:.2} allocations/device \
         ({:.0} B/device), inside apply_batch incl. its drop of the ops; other threads: {:.2} \
         allocations/device while importing, {:.2} including the final checkpoint; \
         {} allocations of {LARGE_BYTES} B or more on the importing thread",
        n as f64 / secs,
        main as f64 / n as f64,
        bytes as f64 / n as f64,
        other as f64 / n as f64,
        other_total as f64 / n as f64,
        MAIN_LARGE.load(Ordering::Relaxed)
    );
    SAMPLING.store(false, Ordering::Relaxed);
    SAMPLING_OTHERS.store(false, Ordering::Relaxed);
    SAMPLING_LARGE.store(false, Ordering::Relaxed);
    if let Ok(sites) = SITES.lock() {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for s in sites.iter() {
            *by.entry(s).or_default() += 1;
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1));
        for (site, k) in v.iter().take(30) {
            println!("{k:6}  {site}");
        }
    }
    drop(reg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

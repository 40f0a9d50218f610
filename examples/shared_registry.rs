//! A service sharing one `Arc<Registry>` across threads: 4 writer threads
//! register devices (durable, `Durability::Immediate`: each call returns
//! after the log's fdatasync, shared by the writers waiting at that moment)
//! while 2 reader threads query the same handle. Every thread checks what it
//! reads; at the end the main thread checks every device, closes, reopens
//! read-only and checks again. Exits 1 on any wrong answer.
//!
//! ```sh
//! cargo run --example shared_registry
//! ```
//!
//! `Registry` is itself a cheap handle (`Clone`, an `Arc` inside), so
//! `reg.clone()` works as well as an `Arc<Registry>`; the `Arc` here is how
//! a service usually holds shared state. Reads are memory reads and never
//! wait for an fsync; writes block the calling thread until they are
//! durable (in an async service, call them off the executor: see
//! `examples/tokio_service.rs`).

use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use devreg::{Config, Durability, Platform, Register, Registry};

const WRITERS: usize = 4;
const PERSONS_PER_WRITER: usize = 25;
const DEVICES_PER_PERSON: usize = 4;
const READERS: usize = 2;
const T0_MS: u64 = 1_764_000_000_000;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Res<()> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn person(w: usize, p: usize) -> String {
    format!("user-{w}-{p}")
}

fn token(w: usize, p: usize, d: usize) -> String {
    format!("tok-{w}-{p}-{d}")
}

/// The seen time of device `d` of a person: later devices are newer.
fn seen(d: usize) -> u64 {
    T0_MS + d as u64 * 1000
}

/// One writer: its persons' devices, each checked right after the write.
fn writer(reg: Arc<Registry>, w: usize) -> Res<u64> {
    let mut writes = 0;
    for d in 0..DEVICES_PER_PERSON {
        for p in 0..PERSONS_PER_WRITER {
            let outcome = reg.register(Register {
                token: token(w, p, d),
                platform: if d % 2 == 0 {
                    Platform::Ios
                } else {
                    Platform::Android
                },
                person: Some(person(w, p)),
                seen_ms: seen(d),
                attributes: None,
            })?;
            ensure(outcome.is_applied(), || format!("register: {outcome:?}"))?;
            // Acknowledged means visible to every thread, this one included.
            let device = reg.device(&token(w, p, d));
            let owner = device.and_then(|dev| dev.person);
            ensure(owner.as_deref() == Some(person(w, p).as_str()), || {
                format!("{} reads back owner {owner:?}", token(w, p, d))
            })?;
            writes += 1;
        }
    }
    Ok(writes)
}

/// One reader: until the writers are done, every person's most recent
/// device must be one of theirs, and the device count never goes down.
fn reader(reg: Arc<Registry>, done: Arc<AtomicBool>, r: usize) -> Res<u64> {
    let (mut reads, mut last_count) = (0u64, 0u64);
    while !done.load(Ordering::SeqCst) {
        for w in 0..WRITERS {
            let p = (reads as usize + r) % PERSONS_PER_WRITER;
            let who = person(w, p);
            if let Some(dev) = reg.most_recent(&who, None) {
                let prefix = format!("tok-{w}-{p}-");
                ensure(dev.token.starts_with(&prefix), || {
                    format!("most_recent({who}) is {}", dev.token)
                })?;
                ensure(dev.person.as_deref() == Some(who.as_str()), || {
                    format!("most_recent({who}) belongs to {:?}", dev.person)
                })?;
            }
            reads += 1;
        }
        let count = reg.stats().devices;
        ensure(count >= last_count, || {
            format!("device count went from {last_count} to {count}")
        })?;
        last_count = count;
    }
    Ok(reads)
}

/// Every device has its owner, and each person's most recent is the newest.
fn verify_all(reg: &Registry) -> Res<()> {
    let want = (WRITERS * PERSONS_PER_WRITER * DEVICES_PER_PERSON) as u64;
    let stats = reg.stats();
    ensure(stats.devices == want, || {
        format!("{} devices, expected {want}", stats.devices)
    })?;
    for w in 0..WRITERS {
        for p in 0..PERSONS_PER_WRITER {
            let who = person(w, p);
            let devices = reg.devices_of(&who);
            ensure(devices.len() == DEVICES_PER_PERSON, || {
                format!("{who} has {} devices", devices.len())
            })?;
            let newest = reg.most_recent(&who, None).map(|d| d.token);
            let expected = token(w, p, DEVICES_PER_PERSON - 1);
            ensure(newest.as_deref() == Some(expected.as_str()), || {
                format!("most_recent({who}) is {newest:?}, expected {expected}")
            })?;
        }
    }
    ensure(reg.check()?.is_clean(), || "check found problems".into())
}

fn main() -> Res<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    let reg = Arc::new(Registry::open_with(
        Config::new(&path).durability(Durability::Immediate),
    )?);
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (reg, done) = (reg.clone(), done.clone());
            thread::spawn(move || reader(reg, done, r))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let reg = reg.clone();
            thread::spawn(move || writer(reg, w))
        })
        .collect();
    let mut writes = 0;
    for h in writers {
        writes += h.join().map_err(|_| "a writer thread panicked")??;
    }
    done.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for h in readers {
        reads += h.join().map_err(|_| "a reader thread panicked")??;
    }
    let elapsed = started.elapsed();
    verify_all(&reg)?;
    // The last handle closes the database: final log sync and checkpoint.
    let reg = Arc::into_inner(reg).ok_or("a thread still holds the registry")?;
    reg.close()?;
    let reopened = Registry::open_read_only(&path)?;
    verify_all(&reopened)?;
    println!(
        "shared_registry: {WRITERS} writers made {writes} durable registers and {READERS} readers \
         made {reads} reads in {:.2} s; all {} devices read back, also after a reopen",
        elapsed.as_secs_f64(),
        reopened.stats().devices
    );
    Ok(())
}

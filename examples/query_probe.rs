//! The harness's `most_recent(person)` row against a database already on
//! disk, so that two builds can be timed in turns on the same data without
//! importing it again (DESIGN.md 13, step 49): opens DB, then runs
//! `most_recent` for `QUERIES` people drawn at random from the harness's
//! names (`workload::person_name` below `persons_for(devices)`), one at a
//! time on this thread as the harness's row does, and prints the rate.
//!
//! With `get` it times the harness's "point read by token" row instead:
//! `device(token)` for tokens of devices drawn at random, taken from a
//! list made before the clock starts (as the harness's read list is).
//!
//! With `register` it times the harness's "eventual register, 1 thread"
//! row instead: `QUERIES` registers of devices drawn at random (each as
//! `scale_probe harness` made it, seen now), one `apply` at a time, on a
//! registry opened `Eventual` (DESIGN.md 13, step 50).
//!
//! ```sh
//! cargo run --release --example scale_probe -- 10000000 harness keep   # leaves scale-probe-db
//! cargo run --release --example query_probe -- scale-probe-db [QUERIES] [get|register]
//! ```

use std::error::Error;
use std::time::Instant;

// The comparison harness's data set: its person names and draws
// (`workload`), and one device of it from its index (`like_harness`, with
// `generator`'s tokens).
#[allow(dead_code)]
#[path = "support/generator.rs"]
mod generator;
#[path = "support/like_harness.rs"]
mod like_harness;
#[allow(dead_code)]
#[path = "../benches/compare/workload.rs"]
mod workload;

/// Queries when none are asked for: about two seconds at 10^7 devices.
const DEFAULT_QUERIES: u64 = 2_000_000;
/// Most tokens in the point reads' list (the harness's read list holds
/// 2^20).
const GET_LIST: u64 = 1 << 20;
/// The seed of the people drawn (the same in every run).
const SEED: u64 = 0x5eed;

/// The database as opened, and what every mode's report line starts with.
struct Opened {
    reg: devreg::Registry,
    devices: u64,
    open_s: f64,
}

impl Opened {
    /// One JSON line: the database, then `counts` (`"key":value` pairs),
    /// then the rate under `rate_key`.
    fn report(&self, counts: &str, rate_key: &str, rate: f64) {
        println!(
            "{{\"devices\":{},\"open_s\":{:.1},{counts},\"{rate_key}\":{rate:.0}}}",
            self.devices, self.open_s
        );
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .ok_or("usage: query_probe DB [QUERIES] [get|register]")?;
    let queries = match args.next() {
        Some(q) => q.parse()?,
        None => DEFAULT_QUERIES,
    };
    let mode = args.next();
    let t = Instant::now();
    let mut config = devreg::Config::new(&db);
    if mode.as_deref() == Some("register") {
        config = config.durability(devreg::Durability::Eventual);
    }
    let reg = devreg::Registry::open_with(config)?;
    let open_s = t.elapsed().as_secs_f64();
    let devices = reg.stats().devices;
    let db = Opened {
        reg,
        devices,
        open_s,
    };
    let mut r = workload::Rng::new(SEED);
    match mode.as_deref() {
        Some("register") => registers(&db, queries, &mut r),
        Some("get") => gets(&db, queries, &mut r),
        _ => most_recents(&db, queries, &mut r),
    }
}

/// `count` `most_recent` queries of people drawn at random.
fn most_recents(db: &Opened, count: u64, r: &mut workload::Rng) -> Result<(), Box<dyn Error>> {
    let persons = workload::persons_for(usize::try_from(db.devices)?);
    let mut found = 0u64;
    let t = Instant::now();
    for _ in 0..count {
        let name = workload::person_name(r.below(persons));
        found += u64::from(std::hint::black_box(db.reg.most_recent(&name, None)).is_some());
    }
    let rate = count as f64 / t.elapsed().as_secs_f64();
    db.report(
        &format!("\"queries\":{count},\"found\":{found}"),
        "most_recent_ops_s",
        rate,
    );
    Ok(())
}

/// `count` point reads of random devices' tokens, from a list of at most
/// `GET_LIST` tokens made before the clock starts.
fn gets(db: &Opened, count: u64, r: &mut workload::Rng) -> Result<(), Box<dyn Error>> {
    let list: Vec<String> = (0..count.min(GET_LIST))
        .map(|_| generator::token(r.below(db.devices)))
        .collect();
    let mut found = 0u64;
    let t = Instant::now();
    for token in list.iter().cycle().take(usize::try_from(count)?) {
        found += u64::from(std::hint::black_box(db.reg.device(token)).is_some());
    }
    let rate = count as f64 / t.elapsed().as_secs_f64();
    db.report(
        &format!("\"gets\":{count},\"found\":{found}"),
        "get_ops_s",
        rate,
    );
    Ok(())
}

/// `count` registers of random devices, each seen at a later time than the
/// one before (the harness's `seen_now()`), one `apply` at a time.
fn registers(db: &Opened, count: u64, r: &mut workload::Rng) -> Result<(), Box<dyn Error>> {
    let mut changed = 0u64;
    let t = Instant::now();
    for k in 0..count {
        let mut op = like_harness::like_harness(r.below(db.devices), db.devices, false);
        if let devreg::Op::Register(reg_op) = &mut op {
            reg_op.seen_ms = workload::NOW_MS + k;
        }
        changed += u64::from(matches!(
            db.reg.apply(op)?,
            devreg::Outcome::Applied { devices: 1, .. }
        ));
    }
    let rate = count as f64 / t.elapsed().as_secs_f64();
    db.report(
        &format!("\"registers\":{count},\"changed\":{changed}"),
        "register_ops_s",
        rate,
    );
    Ok(())
}

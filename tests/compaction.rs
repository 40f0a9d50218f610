//! Store compaction (`src/store/compact.rs`, DESIGN.md 4.6): a checkpoint
//! followed by a compaction when sled's files hold enough garbage; the swap
//! of `store.compact/` for `store/` finished by the next open after a crash
//! at any step; a failure before the swap leaves the store as it was and
//! the registry running, a failure inside it fails the registry and the
//! next open finishes it. The SIGKILL crash test and the power-cut test
//! compact constantly too (their configs set `compact_min_store_bytes`).

mod common;

use std::path::Path;

use common::{assert_clean, copy_dir};
use devreg::*;

const SEED_MS: u64 = 1_700_000_000_000;

fn config(db: &Path, compact_from: u64) -> Config {
    Config::new(db)
        .durability(Durability::Eventual)
        // No log segment is recycled (a rename) while the tests count renames.
        .log_segment_bytes(64 << 20)
        .checkpoint_interval_ms(3_600_000)
        // Every checkpoint merges its deltas into the pages: garbage in sled.
        .page_delta_bytes(0)
        .compact_min_store_bytes(compact_from)
}

fn register(reg: &Registry, i: u32, round: u64) {
    let _ = reg
        .apply(Op::Register(Register {
            token: format!("{i:064x}"),
            platform: if i.is_multiple_of(3) {
                Platform::Android
            } else {
                Platform::Ios
            },
            person: Some(format!("person-{}", i % 997)),
            seen_ms: SEED_MS + round * 1_000 + u64::from(i),
            attributes: Some(
                [("app_version".to_string(), format!("4.{round}.0"))]
                    .into_iter()
                    .collect(),
            ),
        }))
        .unwrap();
}

/// Registers `n` devices, then updates every one `rounds` times, with a
/// checkpoint (and so a merge) after each pass.
fn workload(reg: &Registry, n: u32, rounds: u64) {
    for round in 0..=rounds {
        for i in 0..n {
            register(reg, i, round);
        }
        reg.checkpoint().unwrap();
    }
}

/// Bytes of sled's files (the log is preallocated whole).
fn store_bytes(db: &Path) -> u64 {
    std::fs::read_dir(db.join("store"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn leftovers(db: &Path) -> Vec<String> {
    ["store.compact", "store.old"]
        .into_iter()
        .filter(|d| db.join(d).exists())
        .map(str::to_owned)
        .collect()
}

#[test]
fn compaction_keeps_every_entry_and_gives_the_garbage_back() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, compacted) = (dir.path().join("plain"), dir.path().join("compacted"));
    let reg = Registry::open_with(config(&plain, u64::MAX)).unwrap();
    workload(&reg, 20_000, 6);
    let plain_bytes = store_bytes(&plain);
    let plain_dump = reg.dump();
    assert_eq!(reg.metrics().compactions, 0, "u64::MAX never compacts");
    reg.close().unwrap();

    let reg = Registry::open_with(config(&compacted, 0)).unwrap();
    workload(&reg, 20_000, 6);
    let m = reg.metrics();
    assert!(m.compactions >= 2, "{} compactions", m.compactions);
    assert_eq!(m.compactions_abandoned, 0);
    assert!(m.compaction_freed_bytes > 0);
    let compacted_bytes = store_bytes(&compacted);
    assert!(
        compacted_bytes < plain_bytes,
        "store: compacted {compacted_bytes} bytes, not compacted {plain_bytes}"
    );
    let same = reg.dump() == plain_dump;
    assert!(same, "the same devices with and without compactions");
    assert_clean(&reg, "after compactions");
    // Reads and writes go on on the compacted store.
    register(&reg, 20_001, 9);
    assert!(reg.device(&format!("{:064x}", 20_001)).is_some());
    let before_close = reg.dump();
    reg.close().unwrap();
    assert!(
        leftovers(&compacted).is_empty(),
        "{:?}",
        leftovers(&compacted)
    );

    let reg = Registry::open_with(config(&compacted, 0)).unwrap();
    let same = reg.dump() == before_close;
    assert!(same, "the same devices after a reopen");
    assert_clean(&reg, "reopened");
}

/// A closed database compacted once, with its devices.
fn compacted_db(db: &Path) -> Vec<Device> {
    let reg = Registry::open_with(config(db, 0)).unwrap();
    workload(&reg, 500, 2);
    assert!(reg.metrics().compactions >= 1);
    let dump = reg.dump();
    reg.close().unwrap();
    dump
}

#[test]
fn a_crash_between_the_renames_is_finished_by_the_next_write_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let dump = compacted_db(&db);
    // The state a crash after step 2 leaves: the complete copy, no store/.
    copy_dir(&db.join("store"), &db.join("store.compact"));
    std::fs::rename(db.join("store"), db.join("store.old")).unwrap();

    // A read writes nothing: it cannot finish the swap, and says so.
    let err = match Registry::open_with(Config::new(&db).read_only(true)) {
        Ok(_) => panic!("a read-only open of a store mid-swap"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("compaction was interrupted"),
        "{err}"
    );
    assert!(db.join("store.compact").exists() && !db.join("store").exists());

    let reg = Registry::open_with(config(&db, u64::MAX)).unwrap();
    assert_eq!(reg.dump(), dump);
    assert_clean(&reg, "after the swap was finished");
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
}

#[test]
fn a_partial_copy_or_an_old_store_left_by_a_crash_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let dump = compacted_db(&db);
    // A crash during step 1: a partial copy beside the intact store.
    std::fs::create_dir(db.join("store.compact")).unwrap();
    std::fs::write(db.join("store.compact").join("db"), b"partial").unwrap();
    // A crash before step 4: the old store beside the new.
    copy_dir(&db.join("store"), &db.join("store.old"));

    let reg = Registry::open_with(config(&db, u64::MAX)).unwrap();
    assert_eq!(reg.dump(), dump);
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
    assert_clean(&reg, "after the leftovers went");
}

#[test]
fn a_compaction_that_fails_before_the_swap_leaves_the_store_and_the_registry_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let plan = FaultPlan::new();
    let reg = Registry::open_with(config(&db, 0).fault_plan(plan.clone())).unwrap();
    for i in 0..500 {
        register(&reg, i, 0);
    }
    // The first rename of the compaction (store/ to store.old/) fails.
    plan.arm(&[IoOp::Rename], 1, libc_eio(), false);
    reg.checkpoint().unwrap();
    let m = reg.metrics();
    assert_eq!(plan.fired(), 1, "the rename was reached");
    assert_eq!((m.compactions, m.compactions_abandoned), (0, 1), "{m:?}");
    assert!(!m.failed, "an abandoned compaction is not a failure");
    assert!(
        !db.join("store.compact").exists(),
        "the partial copy is gone"
    );
    // Not tried again at the next checkpoint (a full disk would churn)...
    register(&reg, 0, 7);
    reg.checkpoint().unwrap();
    let m = reg.metrics();
    assert_eq!((m.compactions, m.compactions_abandoned), (0, 1), "{m:?}");
    let dump = reg.dump();
    reg.close().unwrap();
    // ...but after the next open.
    let reg = Registry::open_with(config(&db, 0)).unwrap();
    assert!(reg.dump() == dump, "the same devices after a reopen");
    register(&reg, 1, 8);
    reg.checkpoint().unwrap();
    assert!(reg.metrics().compactions >= 1, "{:?}", reg.metrics());
    assert_clean(&reg, "reopened and compacted");
}

#[test]
fn a_compaction_that_fails_inside_the_swap_fails_stop_and_the_next_open_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let plan = FaultPlan::new();
    let reg = Registry::open_with(config(&db, 0).fault_plan(plan.clone())).unwrap();
    // The second rename (store.compact/ to store/) fails, and every later one.
    plan.arm(&[IoOp::Rename], 2, libc_eio(), true);
    for i in 0..500 {
        register(&reg, i, 0);
    }
    let acknowledged = reg.dump();
    let err = reg.checkpoint().unwrap_err();
    assert!(err.to_string().contains("renaming"), "{err}");
    assert!(reg.metrics().failed, "the registry fails stop");
    let touch = Op::Touch {
        token: format!("{:064x}", 1),
        seen_ms: SEED_MS * 2,
    };
    assert!(reg.apply(touch).is_err(), "no write after the failure");
    drop(reg);
    assert!(!db.join("store").exists() && db.join("store.compact").exists());

    let reg = Registry::open_with(config(&db, u64::MAX)).unwrap();
    assert_eq!(
        reg.dump(),
        acknowledged,
        "every acknowledged write is there"
    );
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
    assert_clean(&reg, "after the open finished the swap");
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn a_store_that_fails_to_open_again_between_two_passes_fails_stop_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let plan = FaultPlan::new();
    let c = config(&db, 0)
        .compact_pass_bytes(16 << 10)
        .fault_plan(plan.clone());
    let reg = Registry::open_with(c).unwrap();
    for i in 0..2_000 {
        register(&reg, i, 0);
    }
    let acknowledged = reg.dump();
    // The store's first reopen, after the first pass, fails.
    plan.arm(&[IoOp::StoreOpen], 1, libc_eio(), false);
    let err = reg.checkpoint().unwrap_err();
    assert_eq!(plan.fired(), 1, "{err}");
    assert!(err.to_string().contains("again"), "{err}");
    assert!(reg.metrics().failed, "a closed store fails the registry");
    let token = format!("{:064x}", 1);
    assert!(
        reg.history(&token).is_err(),
        "the store is closed, not stale"
    );
    drop(reg);
    assert!(db.join("store").exists() && db.join("store.compact").exists());

    let reg = Registry::open_with(config(&db, u64::MAX)).unwrap();
    assert!(
        reg.dump() == acknowledged,
        "every acknowledged write is there"
    );
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
    assert_clean(&reg, "after the open removed the partial copy");
}

/// History entries without their commit times (the wall clock's).
fn timeless(mut h: Vec<HistoryEntry>) -> Vec<HistoryEntry> {
    for e in &mut h {
        e.commit_ms = 0;
    }
    h
}

#[test]
fn a_store_larger_than_one_pass_is_copied_in_passes_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, db) = (dir.path().join("plain"), dir.path().join("db"));
    let reg = Registry::open_with(config(&plain, u64::MAX)).unwrap();
    workload(&reg, 2_000, 3);
    let plain_dump = reg.dump();
    let token = format!("{:064x}", 7);
    let plain_history = timeless(reg.history(&token).unwrap());
    reg.close().unwrap();

    // Passes of 64 KiB: the store (about a megabyte) takes many, with the
    // store closed and reopened between two.
    let c = config(&db, 0).compact_pass_bytes(64 << 10);
    let reg = std::sync::Arc::new(Registry::open_with(c).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (reg, stop, token) = (reg.clone(), stop.clone(), token.clone());
        std::thread::spawn(move || {
            // History reads the store: through every reopen and swap.
            // Empty until the token is first registered, then never again.
            let mut found = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let h = reg.history(&token).unwrap();
                assert!(found == 0 || !h.is_empty(), "history lost");
                found += u64::from(!h.is_empty());
            }
            found
        })
    };
    workload(&reg, 2_000, 3);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let m = reg.metrics();
    assert!(m.compactions >= 1, "{m:?}");
    assert_eq!(m.compactions_abandoned, 0, "{m:?}");
    assert!(
        m.compaction_passes >= 4 * m.compactions,
        "{} passes for {} compactions",
        m.compaction_passes,
        m.compactions
    );
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
    assert!(
        reg.dump() == plain_dump,
        "the same devices as without compaction"
    );
    assert_eq!(timeless(reg.history(&token).unwrap()), plain_history);
    assert_clean(&reg, "after compactions in passes");
    let reg = std::sync::Arc::into_inner(reg).unwrap();
    reg.close().unwrap();
    let reg = Registry::open_with(config(&db, u64::MAX)).unwrap();
    assert!(reg.dump() == plain_dump, "the same devices after a reopen");
    assert_eq!(timeless(reg.history(&token).unwrap()), plain_history);
    assert_clean(&reg, "reopened");
}

#[test]
fn a_store_with_more_live_bytes_than_the_bound_is_not_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut c = config(&db, 0).compact_pass_bytes(16 << 10);
    // The copy stops past 64 KiB (the store holds more): skipped, not
    // abandoned, nothing left behind, and not tried again until reopened.
    c.compact_max_live_bytes = 64 << 10;
    let reg = Registry::open_with(c).unwrap();
    workload(&reg, 2_000, 2);
    let m = reg.metrics();
    assert_eq!((m.compactions, m.compactions_abandoned), (0, 0), "{m:?}");
    assert!(leftovers(&db).is_empty(), "{:?}", leftovers(&db));
    let dump = reg.dump();
    reg.close().unwrap();
    let reg = Registry::open_with(config(&db, u64::MAX)).unwrap();
    assert!(reg.dump() == dump, "the same devices after a reopen");
    assert_clean(&reg, "reopened");
    drop(reg);

    // Nor in the next process under the same bound: the copy recorded the
    // bytes it had copied. (Before, every open copied again up to the
    // bound, and each pass's reopen of the store rewrote its free
    // segments.) A reopen of the store would fail here.
    let plan = FaultPlan::new();
    let mut c = config(&db, 0)
        .compact_pass_bytes(16 << 10)
        .fault_plan(plan.clone());
    c.compact_max_live_bytes = 64 << 10;
    let reg = Registry::open_with(c).unwrap();
    plan.arm(&[IoOp::StoreOpen], 1, libc_eio(), false);
    register(&reg, 1, 9);
    reg.checkpoint().unwrap();
    assert_eq!(plan.fired(), 0, "no compaction was tried");
    assert_clean(&reg, "after a checkpoint");
}

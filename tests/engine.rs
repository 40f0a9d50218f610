//! Behaviour of the engine across reopen, log rolling and checkpoints.

use devreg::*;

fn reg_op(token: &str, person: Option<&str>, seen_ms: u64) -> Op {
    Op::Register(Register {
        token: token.into(),
        platform: Platform::Ios,
        person: person.map(Into::into),
        seen_ms,
        attributes: None,
    })
}

fn small(path: &std::path::Path) -> Config {
    Config::new(path)
        .log_segment_bytes(64 << 10)
        .max_log_segments(3)
        .checkpoint_interval_ms(20)
}

#[test]
fn survives_reopen_across_many_segments_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let reg = Registry::open_with(small(&db)).unwrap();
        for i in 0..3000u64 {
            let person = format!("p{}", i % 97);
            reg.apply(reg_op(&format!("{i:064x}"), Some(&person), i))
                .unwrap();
            if i % 7 == 0 {
                reg.touch(&format!("{:064x}", i / 2), 5000 + i).unwrap();
            }
        }
        let report = reg.check().unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
    }
    let reg = Registry::open_with(small(&db)).unwrap();
    let report = reg.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // 97 persons, capped at 20 devices each.
    assert_eq!(reg.stats().devices, 97 * 20);
    assert_eq!(reg.devices_of("p5").len(), 20);
    let log_files = std::fs::read_dir(db.join("log")).unwrap().count();
    assert!(log_files <= 4, "log grew to {log_files} segments");
}

#[test]
fn lower_cap_at_open_evicts_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let reg = Registry::open(&db).unwrap();
        for i in 0..10u64 {
            reg.apply(reg_op(&format!("t{i}"), Some("ann"), 100 + i))
                .unwrap();
        }
    }
    let reg = Registry::open_with(Config::new(&db).max_devices_per_person(3)).unwrap();
    let toks: Vec<String> = reg.devices_of("ann").into_iter().map(|d| d.token).collect();
    assert_eq!(toks, ["t9", "t8", "t7"]);
    assert!(reg.check().unwrap().is_clean());
    drop(reg);
    let reg = Registry::open_with(Config::new(&db).max_devices_per_person(3)).unwrap();
    assert_eq!(reg.stats().devices, 3);
    assert_eq!(reg.stats().max_devices_per_person, 3);
}

#[test]
fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open(&db).unwrap();
    reg.apply(reg_op("aa", Some("p"), 1)).unwrap();
    reg.checkpoint().unwrap();
    fn walk(p: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
        let m = std::fs::metadata(p).unwrap();
        out.push((p.to_owned(), m.permissions().mode() & 0o777));
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), out);
            }
        }
    }
    let mut all = Vec::new();
    walk(&db, &mut all);
    for (p, mode) in all {
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
    }
}

/// The memory budget is cut up as documented, and a budget under the
/// minimum is refused before anything is created.
#[test]
fn memory_budget_sets_the_store_limits_and_is_validated() {
    let c = Config::new("/nonexistent").memory_budget_bytes(512 << 20);
    assert_eq!(c.sled_cache_bytes, 256 << 20);
    assert_eq!(c.page_delta_bytes, 32 << 20);
    assert_eq!(c.checkpoint_chunk_bytes, 2 << 20);
    let big = Config::new("/nonexistent").memory_budget_bytes(64 << 30);
    assert_eq!(
        big.checkpoint_chunk_bytes,
        devreg::limits::CHECKPOINT_CHUNK_BYTES
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let err = Registry::open_with(Config::new(&db).memory_budget_bytes(1 << 20))
        .err()
        .expect("a 1 MiB budget opened");
    assert!(err.to_string().contains("memory_budget_bytes"), "{err}");
    assert!(!db.exists(), "a refused open created {}", db.display());
}

/// The store is closed and opened again after a large load (to free what
/// the load left in sled's cache); the registry then works as usual.
#[test]
fn a_store_reopened_after_the_load_serves_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let config = || {
        let mut c = Config::new(&db);
        c.reopen_store_after_devices = 0;
        c
    };
    let token = |i: u32| format!("{i:064x}");
    let reg = Registry::open_with(config()).unwrap();
    for i in 0..50u32 {
        reg.apply(Op::Register(Register {
            token: token(i),
            platform: Platform::Ios,
            person: Some(format!("p{}", i % 7)),
            seen_ms: 1_700_000_000_000 + u64::from(i),
            attributes: None,
        }))
        .unwrap();
    }
    reg.close().unwrap();
    let reg = Registry::open_with(config()).unwrap();
    assert_eq!(reg.stats().devices, 50);
    assert_eq!(reg.history(&token(3)).unwrap().len(), 1);
    reg.apply(Op::Remove { token: token(3) }).unwrap();
    reg.checkpoint().unwrap();
    assert!(reg.check().unwrap().is_clean());
    reg.close().unwrap();
    let reg = Registry::open_with(config()).unwrap();
    assert_eq!(reg.stats().devices, 49);
    assert_eq!(reg.history(&token(3)).unwrap().len(), 2);
}

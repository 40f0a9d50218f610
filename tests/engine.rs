//! Behaviour of the engine across reopen, log rolling and checkpoints.

use devreg::*;

mod common;

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

/// A large registry's log may hold `log_bytes_per_device` per device
/// before writers wait for a checkpoint (DESIGN.md 5.2): the bound is
/// derived from the devices loaded at open, and the writer fills that many
/// segments without forcing a checkpoint.
#[test]
fn the_log_may_hold_more_in_a_larger_registry() {
    const SEGMENT: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let config = |per_device: u64| {
        Config::new(&db)
            .log_segment_bytes(SEGMENT)
            .max_log_segments(3)
            .log_bytes_per_device(per_device)
            // No checkpoint but the ones the log's bound forces.
            .checkpoint_log_bytes(u64::MAX / 4)
            .checkpoint_interval_ms(u64::MAX / 4)
    };
    let batch = |from: u64| -> Vec<Op> {
        // 500 registers: a record of about 39 KB, under the segment.
        (from..from + 500)
            .map(|i| reg_op(&format!("{i:064x}"), Some(&format!("p{i}")), i))
            .collect()
    };
    {
        let reg = Registry::open_with(config(64)).unwrap();
        // Empty: the floor.
        assert_eq!(reg.metrics().log_bound_bytes, 3 * SEGMENT);
        for k in 0..20 {
            reg.apply_batch(batch(k * 500)).unwrap();
        }
        reg.close().unwrap();
    }
    // 10,000 devices at 64 B: 640,000 B, ten segments of 64 KiB.
    let reg = Registry::open_with(config(64)).unwrap();
    assert_eq!(reg.metrics().log_bound_bytes, 10 * SEGMENT);
    // Rewrites of the same devices (the count stays 10,000) fill six
    // segments, one record each: more than the floor of three, and none
    // forced a checkpoint.
    let mut k = 0;
    while reg.metrics().log_disk_bytes < 6 * SEGMENT {
        reg.apply_batch(batch((k % 20) * 500)).unwrap();
        k += 1;
    }
    let m = reg.metrics();
    assert_eq!(m.checkpoints, 0, "a checkpoint was forced below the bound");
    assert_eq!(m.log_disk_bytes, 6 * SEGMENT);
    assert_eq!(reg.stats().devices, 10_000);
    reg.close().unwrap();
    // Turned off, the floor is the bound at any size.
    let reg = Registry::open_with(config(0)).unwrap();
    assert_eq!(reg.metrics().log_bound_bytes, 3 * SEGMENT);
    let report = reg.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn survives_reopen_across_many_segments_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let reg = Registry::open_with(small(&db)).unwrap();
        for i in 0..3000u64 {
            let person = format!("p{}", i % 97);
            let _ = reg
                .apply(reg_op(&format!("{i:064x}"), Some(&person), i))
                .unwrap();
            if i % 7 == 0 {
                let _ = reg.touch(&format!("{:064x}", i / 2), 5000 + i).unwrap();
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
fn a_lowered_cap_evicts_oldest_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let reg = Registry::open(&db).unwrap();
        for i in 0..10u64 {
            let _ = reg
                .apply(reg_op(&format!("t{i}"), Some("ann"), 100 + i))
                .unwrap();
        }
    }
    let reg = Registry::open(&db).unwrap();
    let _ = reg.set_max_devices_per_person(3).unwrap();
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
    let _ = reg.apply(reg_op("aa", Some("p"), 1)).unwrap();
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
    assert_eq!(c.sled_cache_bytes, 192 << 20);
    assert_eq!(c.page_delta_bytes, 128 << 20);
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

/// Every checkpointer of this process runs `Config::background_nice`
/// steps (10 by default) above its opener's nice value: merges and
/// checkpoints yield the CPU to readers and writers. 0 leaves it at the
/// opener's, and more than 19 steps are refused. (Other tests' registries
/// run beside this one, all with the default.)
#[cfg(target_os = "linux")]
#[test]
fn the_checkpointer_runs_at_the_background_nice_value() {
    let this_thread = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let fields = this_thread.rsplit_once(')').unwrap().1;
    let own: i64 = fields.split_whitespace().nth(16).unwrap().parse().unwrap();
    let default = (own + i64::from(devreg::limits::DEFAULT_BACKGROUND_NICE)).min(19);
    // A new checkpointer sets its own value once it runs: wait for it.
    let settled = |ok: &dyn Fn(&[i64]) -> bool| {
        let started = std::time::Instant::now();
        loop {
            let nices = checkpointer_nices();
            if ok(&nices) || started.elapsed() > std::time::Duration::from_secs(5) {
                return nices;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("a")).unwrap();
    let nices = settled(&|n| !n.is_empty() && n.iter().all(|&n| n == default));
    assert!(!nices.is_empty(), "no checkpointer thread found");
    assert!(
        nices.iter().all(|&n| n == default),
        "checkpointers at {nices:?}, expected {default}"
    );
    drop(reg);
    let reg = Registry::open_with(Config::new(dir.path().join("b")).background_nice(0)).unwrap();
    let nices = settled(&|n| n.contains(&own));
    assert!(
        nices.contains(&own),
        "checkpointers at {nices:?}, none at the opener's {own}"
    );
    drop(reg);
    let err = Registry::open_with(Config::new(dir.path().join("c")).background_nice(20))
        .err()
        .expect("20 steps opened");
    assert!(err.to_string().contains("background_nice"), "{err}");
}

/// The nice values of this process's checkpointer threads (`comm`
/// `devreg-checkpoi`: Linux cuts names at 15 bytes).
#[cfg(target_os = "linux")]
fn checkpointer_nices() -> Vec<i64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3, nice field 19.
        let nice = stat
            .rsplit_once(')')
            .and_then(|(_, f)| f.split_whitespace().nth(16)?.parse().ok());
        if let (true, Some(n)) = (comm.trim_end() == "devreg-checkpoi", nice) {
            out.push(n);
        }
    }
    out
}

/// Registers 50 iOS devices, tokens `{i:064x}`, owned by seven people.
fn register_fifty(reg: &Registry) {
    for i in 0..50u32 {
        let _ = reg
            .apply(Op::Register(Register {
                token: format!("{i:064x}"),
                platform: Platform::Ios,
                person: Some(format!("p{}", i % 7)),
                seen_ms: 1_700_000_000_000 + u64::from(i),
                attributes: None,
            }))
            .unwrap();
    }
}

/// sled is closed and opened again in place after a large load (to free
/// what the load left in its cache); the registry then works as usual.
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
    register_fifty(&reg);
    reg.close().unwrap();
    let reg = Registry::open_with(config()).unwrap();
    assert_eq!(reg.stats().devices, 50);
    assert_eq!(reg.history(&token(3)).unwrap().len(), 1);
    let _ = reg.apply(Op::Remove { token: token(3) }).unwrap();
    reg.checkpoint().unwrap();
    assert!(reg.check().unwrap().is_clean());
    reg.close().unwrap();
    let reg = Registry::open_with(config()).unwrap();
    assert_eq!(reg.stats().devices, 49);
    assert_eq!(reg.history(&token(3)).unwrap().len(), 2);
}

/// After a large load the open sheds sled's cache in place and reads
/// nothing more: until 2026-12-07 it opened the whole store again, which
/// read every delta chunk a second time (at 10^7 after a `devreg import`,
/// 719 MB: 1.4 s of the open and 240 MB of its peak). The in-place shed is
/// the open's last `StoreOpen`; no store read comes after it.
#[test]
fn the_open_sheds_in_place_after_its_load_and_reads_the_deltas_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let plan = FaultPlan::new();
    let config = || {
        let mut c = Config::new(&db);
        c.reopen_store_after_devices = 0;
        c.faults = Some(plan.clone());
        c
    };
    let reg = Registry::open_with(config()).unwrap();
    register_fifty(&reg);
    reg.close().unwrap();
    plan.record_kinds();
    plan.arm(&[IoOp::StoreOpen, IoOp::StoreRead], 0, 0, false);
    let reg = Registry::open_with(config()).unwrap();
    let kinds = plan.recorded_kinds();
    plan.arm(&[], 0, 0, false);
    let last_open = kinds.iter().rposition(|k| *k == IoOp::StoreOpen);
    let Some(last_open) = last_open else {
        panic!("the store was not shed in place after the load: {kinds:?}");
    };
    let reads_before = kinds.iter().filter(|k| **k == IoOp::StoreRead).count();
    assert!(reads_before > 0, "{kinds:?}");
    assert_eq!(&kinds[last_open + 1..], &[], "read after the shed");
    assert_eq!(reg.stats().devices, 50);
    reg.close().unwrap();
    // sled failing to open again at that shed fails the open with the
    // error (nothing half-open is handed out); the next open has it all.
    plan.arm(&[IoOp::StoreOpen], 1, libc::EIO, false);
    let e = Registry::open_with(config()).err().map(|e| e.to_string());
    assert!(e.as_deref().is_some_and(|e| e.contains("opening")), "{e:?}");
    assert_eq!(plan.fired(), 1);
    plan.arm(&[], 0, 0, false);
    let reg = Registry::open_with(config()).unwrap();
    assert_eq!(reg.stats().devices, 50);
    assert!(reg.check().unwrap().is_clean());
    reg.close().unwrap();
}

/// Every file under `dir` with its bytes, by path (`log/` or everything).
fn file_bytes(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_read_only_open_creates_nothing_replays_the_log_in_memory_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    match Registry::open_read_only(&db) {
        Err(Error::NoDatabase { path, .. }) => assert_eq!(path, db),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let not_created = Registry::open_with(Config::new(&db).create_if_missing(false));
    assert!(matches!(not_created, Err(Error::NoDatabase { .. })));
    assert!(!db.exists(), "nothing was created");

    let img = dir.path().join("img");
    crashed_image(&db, &img);
    let log_before = file_bytes(&img.join("log"));
    {
        let ro = Registry::open_read_only(&img).unwrap();
        assert!(ro.is_read_only());
        assert_eq!(
            ro.devices_of("ann").len(),
            2,
            "the logged write is replayed"
        );
        assert!(ro.check().unwrap().is_clean());
        let refused = |r: Result<()>| matches!(r, Err(Error::ReadOnly { .. }));
        assert!(refused(ro.apply(reg_op("cc", None, 3)).map(|_| ())));
        assert!(refused(ro.checkpoint()));
        assert!(refused(ro.set_max_devices_per_person(1).map(|_| ())));
        assert!(refused(ro.export(DEFAULT_SINK, 10, 499_999).map(|_| ())));
        ro.close().unwrap();
    }
    // The log was neither settled (its tail zeroed) nor checkpointed away.
    assert!(
        file_bytes(&img.join("log")) == log_before,
        "a read-only open changed the log"
    );
    let again = Registry::open_read_only(&img).unwrap();
    assert_eq!(again.devices_of("ann").len(), 2);
}

#[test]
fn a_stored_cap_changes_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    {
        let reg = Registry::open_with(Config::new(&db).max_devices_per_person(4)).unwrap();
        for i in 0..6u64 {
            let _ = reg.apply(reg_op(&format!("t{i}"), Some("ann"), i)).unwrap();
        }
        let _ = reg.apply(reg_op("u0", Some("bob"), 10)).unwrap();
        reg.close().unwrap();
    }
    // Opening with another cap is refused before anything is written.
    match Registry::open_with(Config::new(&db).max_devices_per_person(1)) {
        Err(Error::Invalid { field, reason }) => {
            assert_eq!(field, "max_devices_per_person");
            assert!(reason.contains("stored cap of 4"), "{reason}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let reg = Registry::open_with(Config::new(&db).max_devices_per_person(4)).unwrap();
    assert_eq!(reg.dump().len(), 5);
    assert_eq!(reg.cap_evictions(2), 2);
    assert_eq!(reg.cap_evictions(4), 0);
    assert_eq!(reg.dump().len(), 5, "counting evicts nothing");
    let out = reg.set_max_devices_per_person(2).unwrap();
    assert_eq!(
        out,
        Outcome::Applied {
            devices: 2,
            evicted: 2
        }
    );
    assert_eq!(reg.stats().max_devices_per_person, 2);
    reg.close().unwrap();
    // Stored: reopened without a cap it is 2, and the evictions stayed.
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.stats().max_devices_per_person, 2);
    let tokens: Vec<String> = reg.devices_of("ann").into_iter().map(|d| d.token).collect();
    assert_eq!(tokens, ["t5", "t4"]);
}

// ---- Backup ----

/// Every answer of a registry that a backup must reproduce, as text.
fn answers(reg: &Registry) -> Vec<String> {
    let mut out = vec![
        format!("{:?}", reg.dump()),
        format!("{:?}", reg.stats()),
        format!("{:?}", reg.sinks()),
        format!("{:?}", reg.daily_stats()),
        format!("{:?}", reg.changes_since(0, None, 10_000).unwrap()),
    ];
    for d in reg.dump() {
        out.push(format!("{:?}", reg.history(&d.token).unwrap()));
    }
    for s in reg.sinks() {
        out.push(format!("{:?}", reg.dead_letters(&s.name).unwrap()));
    }
    out
}

fn reg_attr(token: &str, person: &str, seen_ms: u64) -> Op {
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("app_version".to_string(), format!("1.{seen_ms}"));
    Op::Register(Register {
        token: token.into(),
        platform: Platform::Android,
        person: Some(person.into()),
        seen_ms,
        attributes: Some(attributes),
    })
}

/// A database with devices, history (moves, a rotation, a logout), a
/// stored cap of 5, a sink with an in-flight batch, pending items and a
/// dead letter, a second sink, and a write in the log only.
fn backup_source(db: &std::path::Path) -> Registry {
    let reg = Registry::open_with(
        small(db)
            .max_devices_per_person(5)
            .checkpoint_interval_ms(3_600_000),
    )
    .unwrap();
    for i in 0..40u64 {
        let _ = reg
            .apply(reg_attr(
                &format!("{i:064x}"),
                &format!("p{}", i % 6),
                1000 + i,
            ))
            .unwrap();
    }
    let _ = reg
        .apply(reg_attr(&format!("{:064x}", 3), "p5", 2000))
        .unwrap();
    let _ = reg.rotate(&format!("{:064x}", 4), "rotated", 2001).unwrap();
    let _ = reg
        .logout(&format!("{:064x}", 5), LogoutPolicy::Keep)
        .unwrap();
    let batch = reg.export(DEFAULT_SINK, 10, 499_999).unwrap().unwrap();
    reg.nack(DEFAULT_SINK, batch.id(), &[(2, "invalid token".into())])
        .unwrap();
    reg.export(DEFAULT_SINK, 5, 499_999).unwrap().unwrap();
    reg.add_sink("audit").unwrap();
    reg.checkpoint().unwrap();
    let _ = reg.apply(reg_attr("logged-only", "p1", 3000)).unwrap();
    reg
}

#[test]
fn a_backup_copies_devices_history_feeds_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let copy = dir.path().join("copy");
    let reg = backup_source(&db);
    let report = reg.backup(&copy).unwrap();
    assert_eq!(report.dest, copy);
    assert_eq!(report.devices, reg.stats().devices);
    assert!(
        report.store_keys > 0 && report.log_segments >= 1,
        "{report:?}"
    );
    let want = answers(&reg);
    let info = reg
        .sinks()
        .into_iter()
        .find(|s| s.name == DEFAULT_SINK)
        .unwrap();
    assert!(info.pending > 0 && info.in_flight.is_some() && info.dead_letters == 1);
    // Opened as it is, read-only and then for writing: the same answers.
    let ro = Registry::open_read_only(&copy).unwrap();
    assert_eq!(answers(&ro), want);
    assert!(ro.check().unwrap().is_clean());
    ro.close().unwrap();
    let rw = Registry::open(&copy).unwrap();
    assert_eq!(answers(&rw), want);
    assert_eq!(rw.stats().max_devices_per_person, 5);
    common::assert_clean(&rw, "the backup");
    // The feeds go on alike: the in-flight batch, then the same next one.
    for sink in [DEFAULT_SINK, "audit"] {
        let a = reg.export(sink, 100, 499_999).unwrap().unwrap();
        let b = rw.export(sink, 100, 499_999).unwrap().unwrap();
        assert_eq!((a.id(), a.body()), (b.id(), b.body()), "{sink}");
    }
    // The two databases are independent.
    let _ = reg.apply(reg_attr("only-in-original", "p2", 4000)).unwrap();
    assert!(rw.device("only-in-original").is_none());
}

#[test]
fn a_backup_taken_while_another_thread_writes_is_a_prefix_of_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open_with(small(&db)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (reg, stop) = (reg.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || n < 400 {
                let op = reg_attr(&format!("{n:064x}"), &format!("p{n}"), 1 + n);
                let _ = reg.apply(op).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut copies = Vec::new();
    for i in 0..3 {
        while reg.stats().devices < 100 * (i + 1) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let copy = dir.path().join(format!("copy{i}"));
        reg.backup(&copy).unwrap();
        copies.push(copy);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.join().unwrap();
    common::assert_clean(&reg, "the original");
    let mut last = 0;
    for copy in copies {
        let c = Registry::open(&copy).unwrap();
        common::assert_clean(&c, &copy.display().to_string());
        // One thread wrote token 0, 1, 2, ... in order: a consistent copy
        // holds exactly the first k of them, each with its own history.
        let tokens: Vec<String> = c.dump().into_iter().map(|d| d.token).collect();
        let k = tokens.len() as u64;
        let want: Vec<String> = (0..k).map(|n| format!("{n:064x}")).collect();
        assert_eq!(tokens, want, "{}", copy.display());
        assert!(k >= last && k <= written, "{k} of {written}");
        assert_eq!(c.history(&format!("{:064x}", k - 1)).unwrap().len(), 1);
        last = k;
    }
}

#[test]
fn a_backup_destination_must_be_new_or_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open(&db).unwrap();
    let _ = reg.apply(reg_op("aa", Some("ann"), 1)).unwrap();
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), b"mine").unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"mine").unwrap();
    let refused = [
        (full.clone(), "not empty"),
        (file.clone(), "not a directory"),
        (db.join("inside"), "inside the database"),
        (
            dir.path().join("no").join("parent"),
            "parent directory does not exist",
        ),
    ];
    for (dest, why_part) in &refused {
        match reg.backup(dest) {
            Err(Error::BackupDestination { path, why }) => {
                assert_eq!(&path, dest);
                assert!(why.contains(why_part), "{why}");
                let msg = Error::BackupDestination { path, why }.to_string();
                assert!(msg.contains(&dest.display().to_string()), "{msg}");
            }
            other => panic!("{}: {:?}", dest.display(), other.map(|_| ())),
        }
    }
    assert_eq!(std::fs::read(full.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    assert!(!db.join("inside").exists() && !dir.path().join("no").exists());
    // An empty directory takes the copy; then it is no longer empty.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    reg.backup(&empty).unwrap();
    assert!(matches!(
        reg.backup(&empty),
        Err(Error::BackupDestination { .. })
    ));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "staging left behind: {names:?}");
    assert_eq!(Registry::open(&empty).unwrap().dump(), reg.dump());
}

/// Makes `img` a copy of the database `db` taken while it was open, as a
/// crash would leave it: two devices, the second write in the log only (no
/// checkpoint since).
fn crashed_image(db: &std::path::Path, img: &std::path::Path) {
    let reg = Registry::open_with(Config::new(db).checkpoint_interval_ms(3_600_000)).unwrap();
    let _ = reg.apply(reg_op("aa", Some("ann"), 1)).unwrap();
    reg.checkpoint().unwrap();
    let _ = reg.apply(reg_op("bb", Some("ann"), 2)).unwrap();
    common::copy_dir(db, img);
    reg.close().unwrap();
}

#[test]
fn a_read_only_registry_backs_up_its_log_tail_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let img = dir.path().join("img");
    crashed_image(&db, &img);
    // sled settles a crashed store at any open (DESIGN 4.4); devreg's own
    // files must stay as they were.
    let before = file_bytes(&img.join("log"));
    let ro = Registry::open_read_only(&img).unwrap();
    let copy = dir.path().join("copy");
    let report = ro.backup(&copy).unwrap();
    assert_eq!(report.devices, 2);
    ro.close().unwrap();
    assert!(
        file_bytes(&img.join("log")) == before,
        "a read-only backup changed the log"
    );
    let c = Registry::open_read_only(&copy).unwrap();
    assert_eq!(
        c.devices_of("ann").len(),
        2,
        "the logged write is in the copy"
    );
    assert!(c.check().unwrap().is_clean());
}

/// `dump_each` walks the dump one device at a time and stops at the first
/// error; `dump_page` walks the devices in dump order in pages of any size, from
/// any token (present or not), and a device added behind the cursor or
/// removed ahead of it during the walk is skipped, not repeated.
#[test]
fn dump_pages_and_dump_each_walk_the_dump() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open_with(small(&dir.path().join("db")).durability(Durability::Eventual))
        .unwrap();
    let ops: Vec<Op> = (0..500u64)
        .map(|i| {
            let token = format!("tok{:05}", (i * 7919) % 100_000);
            let person = (i % 3 != 0).then(|| format!("p{}", i % 40));
            reg_op(&token, person.as_deref(), i)
        })
        .collect();
    reg.apply_batch(ops).unwrap();
    let all = reg.dump();
    assert_eq!(all.len(), 500);
    let mut each = Vec::new();
    reg.dump_each(|d| -> Result<(), ()> {
        each.push(d);
        Ok(())
    })
    .unwrap();
    assert_eq!(each, all);
    // The first error stops the walk and is returned.
    let mut seen = 0;
    let stopped = reg.dump_each(|_| {
        seen += 1;
        if seen == 3 {
            return Err("stop");
        }
        Ok(())
    });
    assert_eq!((stopped, seen), (Err("stop"), 3));
    for limit in [1usize, 7, 499, 500, 501, 10_000] {
        let (mut got, mut after): (Vec<Device>, Option<String>) = (Vec::new(), None);
        loop {
            let page = reg.dump_page(after.as_deref(), limit);
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            after = Some(last.token.clone());
            got.extend(page);
        }
        assert_eq!(got, all, "limit {limit}");
    }
    // From a token that is not there: the next one in order.
    let i = all.iter().position(|d| d.token.as_str() > "tok5").unwrap();
    assert_eq!(reg.dump_page(Some("tok5"), 3), all[i..i + 3].to_vec());
    assert!(reg.dump_page(Some("zzz"), 3).is_empty());
    assert!(reg.dump_page(None, 0).is_empty());
    // Changes during a walk.
    let first = reg.dump_page(None, 10);
    let cursor = first.last().unwrap().token.clone();
    let added = reg.apply(reg_op("tok00000a", None, 1)).unwrap(); // behind the cursor
    assert!(
        matches!(added, Outcome::Applied { devices: 1, .. }),
        "{added:?}"
    );
    let ahead = all[20].token.clone();
    let removed = reg.remove(&ahead).unwrap();
    assert!(
        matches!(removed, Outcome::Applied { devices: 1, .. }),
        "{removed:?}"
    );
    let rest = reg.dump_page(Some(&cursor), 10_000);
    assert!(rest.iter().all(|d| d.token > cursor && d.token != ahead));
    assert_eq!(first.len() + rest.len(), 499);
}

/// `page_merges` counts the checkpoints that folded deltas into the
/// pages, and `page_merge_bytes_written` what they wrote: with no room
/// for deltas every checkpoint that changed a device merges; with room,
/// none does.
#[test]
fn metrics_count_page_merges_and_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let merging = |name: &str, delta_bytes: usize| {
        let c = Config::new(dir.path().join(name))
            .checkpoint_interval_ms(3_600_000)
            .page_delta_bytes(delta_bytes);
        Registry::open_with(c).unwrap()
    };
    let batch = |reg: &Registry, from: u32| {
        let ops = (from..from + 200)
            .map(|i| reg_op(&format!("tok-{i:06}"), Some("ann"), u64::from(i) + 1))
            .collect();
        reg.apply_batch(ops).unwrap();
    };
    let reg = merging("every", 0);
    let m = reg.metrics();
    assert_eq!((m.page_merges, m.page_merge_bytes_written), (0, 0));
    batch(&reg, 0);
    reg.checkpoint().unwrap();
    let first = reg.metrics();
    assert_eq!(first.page_merges, 1, "{first:?}");
    // Each merge hands the heap's free pages back (DESIGN.md 6).
    assert_eq!(first.heap_trims, 1 + first.compactions, "{first:?}");
    assert!(first.page_merge_bytes_written > 200 * 8, "{first:?}");
    assert!(first.page_merge_bytes_written <= first.store_bytes_written);
    // Nothing changed: only metadata is written, no merge.
    reg.checkpoint().unwrap();
    assert_eq!(reg.metrics().page_merges, 1);
    batch(&reg, 200);
    reg.checkpoint().unwrap();
    let second = reg.metrics();
    assert_eq!(second.page_merges, 2, "{second:?}");
    assert_eq!(second.heap_trims, 2 + second.compactions, "{second:?}");
    assert!(second.page_merge_bytes_written > first.page_merge_bytes_written);
    drop(reg);
    let roomy = merging("deltas", 64 << 20);
    batch(&roomy, 0);
    roomy.checkpoint().unwrap();
    let m = roomy.metrics();
    assert!(m.checkpoints >= 1 && m.store_bytes_written > 0, "{m:?}");
    assert_eq!((m.page_merges, m.page_merge_bytes_written), (0, 0), "{m:?}");
    assert_eq!(m.heap_trims, m.compactions, "{m:?}");
}

/// A synced group waits for the last one's callers (`Config::group_gather_us`,
/// DESIGN.md 7): four threads of durable registers commit in groups of about
/// four. Without the wait, a leader answered its group and led the next
/// before the others had queued again: groups of two or three on two cores.
#[test]
fn synced_groups_wait_for_the_last_groups_callers() {
    const THREADS: usize = 4;
    const EACH: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path().join("db"))
        .durability(Durability::Immediate)
        .group_gather_us(devreg::limits::MAX_GROUP_GATHER_US);
    let reg = Registry::open_with(config).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let reg = reg.clone();
            s.spawn(move || {
                for i in 0..EACH {
                    let token = format!("{t:02x}{i:04x}");
                    assert!(reg.apply(reg_op(&token, None, 1)).unwrap().is_applied());
                }
            });
        }
    });
    let m = reg.metrics();
    let writes = (THREADS * EACH) as u64;
    assert_eq!(m.group_commit_records.sum, writes);
    // About writes / THREADS groups; the first ones form as threads start.
    assert!(
        m.group_commits * 3 <= writes,
        "{} groups for {writes} writes: {:?}",
        m.group_commits,
        m.group_commit_records
    );
    assert!(reg.check().unwrap().is_clean());
    drop(reg);
    let over = devreg::limits::MAX_GROUP_GATHER_US + 1;
    let err = Registry::open_with(Config::new(dir.path().join("b")).group_gather_us(over))
        .err()
        .expect("a wait over the maximum opened");
    assert!(err.to_string().contains("group_gather_us"), "{err}");
}

#[test]
fn metrics_count_operations_group_commits_fsyncs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open_with(Config::new(&db).durability(Durability::Immediate)).unwrap();
    let m = reg.metrics();
    assert_eq!(m.ops.iter().map(|c| c.count).sum::<u64>(), 0);
    assert_eq!((m.group_commits, m.log_fsync_us.count), (0, 0));
    assert_eq!(m.ops.len(), OP_KINDS.len() * OP_OUTCOMES.len());
    // 14 requests reach the log, each its own group (one caller).
    let _ = reg.apply(reg_op("t1", Some("ann"), 100)).unwrap();
    let _ = reg.apply(reg_op("t2", Some("ann"), 200)).unwrap();
    let _ = reg.apply(reg_op("t4", Some("bob"), 50)).unwrap();
    assert!(reg.touch("t1", 300).unwrap().is_applied());
    assert_eq!(reg.touch("nosuch", 1).unwrap(), Outcome::NotFound);
    let _ = reg.rotate("t2", "t3", 400).unwrap();
    assert_eq!(reg.rotate("nosuch", "t9", 1).unwrap(), Outcome::NotFound);
    let _ = reg.logout("t3", LogoutPolicy::Keep).unwrap();
    let _ = reg.merge("ann", "bob").unwrap();
    assert_eq!(reg.invalidate("t1", 10).unwrap(), Outcome::Skipped);
    assert_eq!(reg.remove("nosuch").unwrap(), Outcome::NotFound);
    let _ = reg.prune(60).unwrap(); // t4 (seen at 50)
    let _ = reg
        .apply_batch(vec![
            reg_op("t5", None, 500),
            Op::Touch {
                token: "nosuch".into(),
                seen_ms: 1,
            },
        ])
        .unwrap();
    let _ = reg.remove("t1").unwrap();
    // Rejected before the log: one register, then a batch of two.
    assert!(reg.apply(reg_op("", None, 1)).is_err());
    assert!(reg
        .apply_batch(vec![reg_op("t6", None, 1), reg_op("", None, 1)])
        .is_err());

    let m = reg.metrics();
    let expect = [
        ("register", "applied", 4),
        ("register", "rejected", 3),
        ("touch", "applied", 1),
        ("touch", "not_found", 2),
        ("rotate", "applied", 1),
        ("rotate", "not_found", 1),
        ("logout", "applied", 1),
        ("merge", "applied", 1),
        ("invalidate", "skipped", 1),
        ("remove", "not_found", 1),
        ("remove", "applied", 1),
        ("prune", "applied", 1),
    ];
    for (kind, outcome, n) in expect {
        assert_eq!(m.op_count(kind, outcome), n, "{kind} {outcome}");
    }
    let total: u64 = expect.iter().map(|e| e.2).sum();
    assert_eq!(m.ops.iter().map(|c| c.count).sum::<u64>(), total);
    // Immediate: every request is logged, one record each; one fsync per group.
    assert_eq!(m.group_commit_records.sum, 14);
    assert!(m.group_commits >= 1 && m.group_commits <= 14);
    assert_eq!(m.group_commits, m.group_commit_records.count);
    assert!(m.log_fsync_us.count >= m.group_commits);
    assert_eq!(
        m.log_fsync_us.cumulative().last(),
        Some((None, m.log_fsync_us.count))
    );
    assert!(m.log_bytes_written > 0 && m.log_disk_bytes > 0);
    assert_eq!(m.stats, reg.stats());
    assert_eq!(m.sinks, reg.sinks());
    assert!(!m.failed);

    // A checkpoint is counted and timed, and hands bytes to the store.
    let before = m.checkpoints;
    reg.checkpoint().unwrap();
    let m = reg.metrics();
    assert_eq!(m.checkpoints, before + 1);
    assert_eq!(m.checkpoint_ms.count, m.checkpoints);
    assert_eq!(m.checkpoint_failures, 0);
    assert!(m.store_bytes_written > 0);

    // A call on a closed registry is counted as failed.
    let other = reg.clone();
    reg.close().unwrap();
    assert!(other.touch("t5", 1).is_err());
    assert_eq!(other.metrics().op_count("touch", "failed"), 1);
}

/// `apply_batch_with`: a write's own durability. `Immediate` on an
/// `Eventual` registry returns after an fdatasync of its record; `Eventual`
/// on an `Immediate` registry returns without one (the timer syncs it
/// later). Counted by the log's fsync metric, with the timers far off.
#[test]
fn a_write_may_ask_for_its_own_durability() {
    let dir = tempfile::tempdir().unwrap();
    let slow_timers = |c: Config| {
        c.eventual_sync_interval_ms(3_600_000)
            .checkpoint_interval_ms(3_600_000)
    };
    let fsyncs = |r: &Registry| r.metrics().log_fsync_us.count;
    let eventual = Registry::open_with(slow_timers(
        Config::new(dir.path().join("e")).durability(Durability::Eventual),
    ))
    .unwrap();
    let before = fsyncs(&eventual);
    eventual
        .apply_batch(vec![reg_op("t1", Some("ann"), 1)])
        .unwrap();
    assert_eq!(
        fsyncs(&eventual),
        before,
        "an eventual write on an eventual registry"
    );
    let out = eventual
        .apply_batch_with(vec![reg_op("t2", Some("ann"), 2)], Durability::Immediate)
        .unwrap();
    assert!(out[0].is_applied());
    assert_eq!(fsyncs(&eventual), before + 1, "an immediate write syncs");
    let immediate = Registry::open_with(slow_timers(
        Config::new(dir.path().join("i")).durability(Durability::Immediate),
    ))
    .unwrap();
    let before = fsyncs(&immediate);
    immediate
        .apply_batch_with(vec![reg_op("t3", Some("bob"), 3)], Durability::Eventual)
        .unwrap();
    assert_eq!(
        fsyncs(&immediate),
        before,
        "an eventual write does not wait for a sync"
    );
    assert!(immediate.device("t3").is_some(), "and is visible at once");
    immediate
        .apply_batch(vec![reg_op("t4", Some("bob"), 4)])
        .unwrap();
    assert_eq!(fsyncs(&immediate), before + 1);
    // Both survive a reopen (the second write's sync covered the first).
    immediate.close().unwrap();
    let again = Registry::open(dir.path().join("i")).unwrap();
    assert!(again.device("t3").is_some() && again.device("t4").is_some());
}

/// An open loads the devices in batches of 4,096 records handed between two
/// threads, and reuses each batch's buffers once loaded: every device of a
/// store spanning several batches comes back exactly as it was written,
/// owner, platform, last-seen time and attributes.
#[test]
fn a_reopen_loads_every_device_across_reused_load_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let ops: Vec<Op> = (0..3 * 4096 + 17u64)
        .map(|i| {
            let mut attributes = devreg::Attributes::new();
            // Values of different lengths, so a stale byte range would show.
            attributes.insert("app_version".into(), "v".repeat(1 + (i % 13) as usize));
            Op::Register(Register {
                token: format!("{:064x}", i * 2_654_435_761),
                platform: if i % 3 == 0 {
                    Platform::Android
                } else {
                    Platform::Ios
                },
                person: (i % 5 != 0).then(|| format!("person-{}", i % 997)),
                seen_ms: 1_000 + i,
                attributes: Some(attributes),
            })
        })
        .collect();
    let before = {
        let reg = Registry::open_with(Config::new(&db).durability(Durability::Eventual)).unwrap();
        reg.apply_batch(ops).unwrap();
        reg.dump()
    };
    assert_eq!(before.len(), 3 * 4096 + 17);
    let reg = Registry::open_with(Config::new(&db)).unwrap();
    assert_eq!(reg.dump(), before);
    assert_eq!(
        reg.devices_of("person-1").len(),
        before
            .iter()
            .filter(|d| d.person.as_deref() == Some("person-1"))
            .count()
    );
}

#[test]
fn a_store_left_half_created_by_a_cut_is_built_again() {
    // What a power cut while a new database's store was being created
    // leaves: `store.new/` with sled's files cut short, no `store/`.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(db.join("store.new")).unwrap();
    std::fs::write(db.join("store.new").join("conf"), b"").unwrap();
    let reg = Registry::open(&db).unwrap();
    assert!(reg.stats().devices == 0);
    reg.close().unwrap();
    assert!(!db.join("store.new").exists());
    assert!(db.join("store").is_dir());
    assert!(Registry::open(&db).unwrap().check().unwrap().is_clean());
}

/// A checkpoint the writer hands while a page merge runs is written
/// between the merge's batches (`checkpoints_beside_merges` counts them;
/// the writer did not wait for the merge), and everything written
/// survives a reopen. Touches write no history, so the merges come from
/// the bound on deltas on disk and the history's records in memory stay
/// within theirs (the room a merge leaves, DESIGN.md 4.3); pages are
/// written a few KiB at a time and a checkpoint starts every 16 KiB of
/// log, while this thread keeps writing.
#[test]
fn checkpoints_go_on_beside_a_page_merge() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let config = || {
        Config::new(&db)
            .checkpoint_interval_ms(3_600_000)
            .page_delta_bytes(1 << 20)
            .checkpoint_chunk_bytes(4 << 10)
            .checkpoint_log_bytes(16 << 10)
    };
    let reg = Registry::open_with(config()).unwrap();
    let person = |i: u32| format!("p{}", i % 100);
    let ops = (0..2_000u32)
        .map(|i| reg_op(&format!("tok-{i:06}"), Some(&person(i)), 1))
        .collect();
    reg.apply_batch(ops).unwrap();
    let mut seen = vec![1u64; 2_000];
    let mut clock = 1u64;
    for round in 0..400u32 {
        let ops = (0..500u32)
            .map(|j| {
                let i = (round * 500 + j) % 2_000;
                clock += 1;
                seen[i as usize] = clock;
                Op::Touch {
                    token: format!("tok-{i:06}"),
                    seen_ms: clock,
                }
            })
            .collect();
        reg.apply_batch(ops).unwrap();
        if round >= 20 && reg.metrics().checkpoints_beside_merges > 0 {
            break;
        }
    }
    let m = reg.metrics();
    assert!(m.checkpoints_beside_merges >= 1, "{m:?}");
    assert_eq!(m.checkpoint_failures, 0, "{m:?}");
    reg.close().unwrap();
    let reg = Registry::open_with(config()).unwrap();
    assert_eq!(reg.stats().devices, 2_000);
    for (i, want) in seen.iter().enumerate() {
        let d = reg.device(&format!("tok-{i:06}")).unwrap();
        assert_eq!(
            d.person.as_deref(),
            Some(person(i as u32).as_str()),
            "tok-{i:06}"
        );
        assert_eq!(d.last_seen_ms, *want, "tok-{i:06}");
    }
}

/// Changed records held in memory start a checkpoint, whatever the log
/// says (`Config::checkpoint_pending_records`, DESIGN.md 8): registers,
/// and a sink's first drain, whose short acknowledgement records mark a
/// known person per identified device. Before, a drain of 10^7 devices
/// held every known person it marked until the interval's checkpoint.
#[test]
fn many_changed_records_start_a_checkpoint() {
    const DEVICES: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let config = |p: &std::path::Path| {
        Config::new(p)
            .durability(Durability::Eventual)
            // Neither the log nor the clock starts one here.
            .checkpoint_log_bytes(u64::MAX / 4)
            .checkpoint_interval_ms(u64::MAX / 4)
            .checkpoint_pending_records(500)
    };
    let reg = Registry::open_with(config(dir.path())).unwrap();
    for start in (0..DEVICES).step_by(100) {
        let ops = (start..start + 100)
            .map(|i| {
                reg_op(
                    &format!("tok{i:05}"),
                    Some(&format!("p{i:05}")),
                    1_000 + i as u64,
                )
            })
            .collect();
        reg.apply_batch(ops).unwrap();
    }
    // Checkpoints are written on their own thread: wait for one.
    let checkpoints_from = |from: u64| {
        let t = std::time::Instant::now();
        while reg.metrics().checkpoints <= from && t.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        reg.metrics().checkpoints - from
    };
    let after_registers = checkpoints_from(0);
    assert!(
        after_registers >= 1,
        "{DEVICES} registers, a checkpoint every 500 changed records: none"
    );
    reg.checkpoint().unwrap();
    let before_drain = reg.metrics().checkpoints;
    assert!(reg.add_sink("s").unwrap());
    let mut drained = 0;
    while let Some(b) = reg.export("s", 50, 499_999).unwrap() {
        drained += b.len();
        reg.ack("s", b.id()).unwrap();
    }
    assert!(drained >= DEVICES, "drained {drained} operations");
    assert!(
        checkpoints_from(before_drain) >= 1,
        "{DEVICES} known persons marked, a checkpoint every 500: none"
    );
    reg.close().unwrap();
    let reg = Registry::open_with(config(dir.path())).unwrap();
    assert_eq!(reg.stats().devices, DEVICES as u64);
    let sink = reg.sinks().into_iter().find(|s| s.name == "s").unwrap();
    assert_eq!(sink.pending, 0, "{sink:?}");
    assert!(reg.check().unwrap().is_clean());
}

/// Past the memory bound alone (deltas may gather on disk far longer
/// than the history's may in memory), a merge folds only the history's
/// records into their pages (DESIGN.md 4.3, "History merges"):
/// `Mhist_merged` is written and `Mdelta_merged` is not, and after a
/// reopen every device and every ownership change reads back.
#[test]
fn history_merges_run_through_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let config = || {
        Config::new(&db)
            .checkpoint_interval_ms(3_600_000)
            .page_delta_bytes(16 << 10)
            .delta_disk_bytes_per_device(1 << 20)
            .checkpoint_log_bytes(16 << 10)
    };
    let reg = Registry::open_with(config()).unwrap();
    // Every round moves each device to the other of two owners: one
    // history entry per device a round.
    for round in 0..12u32 {
        let ops = (0..500u32)
            .map(|i| {
                let owner = format!("p{}-{}", i % 50, round % 2);
                reg_op(&format!("tok-{i:06}"), Some(&owner), u64::from(round) + 1)
            })
            .collect();
        reg.apply_batch(ops).unwrap();
        reg.checkpoint().unwrap();
    }
    assert!(reg.metrics().page_merges >= 1, "{:?}", reg.metrics());
    reg.close().unwrap();
    let gen = |key: &[u8]| {
        devreg::internals::peek_record(&db, key)
            .unwrap()
            .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
    };
    assert!(gen(b"Mhist_merged") > 0, "a history merge ran");
    assert_eq!(gen(b"Mdelta_merged"), 0, "no full merge ran");
    let reg = Registry::open_with(config()).unwrap();
    assert_eq!(reg.stats().devices, 500);
    for i in [0u32, 7, 123, 499] {
        let token = format!("tok-{i:06}");
        let d = reg.device(&token).unwrap();
        assert_eq!(d.person.as_deref(), Some(format!("p{}-1", i % 50).as_str()));
        let owners: Vec<Option<String>> = reg
            .history(&token)
            .unwrap()
            .into_iter()
            .map(|e| e.owner_after)
            .collect();
        assert_eq!(owners.len(), 12, "{token}: {owners:?}");
    }
}

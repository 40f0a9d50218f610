//! `Registry::apply_batch_then`: writes whose outcome goes to a callback
//! on the writer thread instead of a waiting caller (what `devreg serve`
//! uses so that no thread waits for an fdatasync). The callback gets what
//! `apply_batch_with` would return, once the batch is as durable as asked;
//! detached and waiting writes share groups; bad batches, closed and
//! failed registries answer at once; a panicking callback harms nothing.

use std::time::Duration;

use crossbeam_channel::unbounded;
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

fn applied(m: &Metrics) -> u64 {
    m.ops
        .iter()
        .filter(|c| c.kind == "register" && c.outcome == "applied")
        .map(|c| c.count)
        .sum()
}

/// 4 threads × 50 detached immediate batches of 2, beside 50 waiting
/// writes: every callback is called once with both outcomes, each write is
/// counted, and every device survives a reopen (acknowledged = durable).
#[test]
fn detached_writes_are_answered_once_counted_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open_with(Config::new(&db).durability(Durability::Eventual)).unwrap();
    let (tx, rx) = unbounded();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (reg, tx) = (reg.clone(), tx.clone());
            s.spawn(move || {
                for i in 0..50u64 {
                    let ops = vec![
                        reg_op(&format!("d-{t}-{i}-a"), Some(&format!("p{i}")), i + 1),
                        reg_op(&format!("d-{t}-{i}-b"), None, i + 1),
                    ];
                    let tx = tx.clone();
                    reg.apply_batch_then(ops, Some(Durability::Immediate), move |r| {
                        tx.send(r).unwrap();
                    });
                }
            });
        }
        let reg = reg.clone();
        s.spawn(move || {
            for i in 0..50u64 {
                let r = reg.register(Register {
                    token: format!("w-{i}"),
                    platform: Platform::Android,
                    person: None,
                    seen_ms: 1,
                    attributes: None,
                });
                assert!(r.unwrap().is_applied());
            }
        });
    });
    drop(tx);
    let answers: Vec<_> = rx.iter().collect();
    assert_eq!(answers.len(), 200, "one answer per detached batch");
    for a in &answers {
        let outcomes = a.as_ref().unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(Outcome::is_applied));
    }
    assert_eq!(applied(&reg.metrics()), 450);
    reg.close().unwrap();
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.stats().devices, 450);
    assert!(reg.device("d-3-49-b").is_some());
}

/// A bad batch is answered at once on the calling thread, naming the
/// operation; an empty one applies nothing; a closed registry says Closed.
#[test]
fn bad_batches_and_closed_registries_are_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("db")).unwrap();
    let here = std::thread::current().id();
    let (tx, rx) = unbounded();
    let send = |tx: crossbeam_channel::Sender<_>| {
        move |r: Result<Vec<Outcome>>| tx.send((std::thread::current().id(), r)).unwrap()
    };
    let bad = vec![reg_op("ok", None, 1), reg_op("", None, 1)];
    reg.apply_batch_then(bad, None, send(tx.clone()));
    let (thread, r) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(thread, here, "answered on the calling thread");
    let e = r.unwrap_err();
    assert!(
        matches!(&e, Error::Invalid { field, .. } if field == "batch[1].token"),
        "{e}"
    );
    assert!(reg.device("ok").is_none(), "nothing of a bad batch applies");
    reg.apply_batch_then(Vec::new(), None, send(tx.clone()));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap().1.unwrap(),
        vec![]
    );
    let other = reg.clone();
    reg.close().unwrap();
    other.apply_batch_then(vec![reg_op("late", None, 1)], None, send(tx));
    let r = rx.recv_timeout(Duration::from_secs(5)).unwrap().1;
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

/// A callback that panics is contained: the registry goes on taking
/// writes (detached and waiting) and has not failed.
#[test]
fn a_panicking_callback_does_not_stop_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("db")).unwrap();
    reg.apply_batch_then(vec![reg_op("a", None, 1)], None, |_| {
        panic!("a caller's bug");
    });
    let (tx, rx) = unbounded();
    reg.apply_batch_then(vec![reg_op("b", None, 1)], None, move |r| {
        tx.send(r).unwrap();
    });
    let r = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(r.unwrap()[0].is_applied());
    let r = reg.register(Register {
        token: "c".into(),
        platform: Platform::Ios,
        person: None,
        seen_ms: 1,
        attributes: None,
    });
    assert!(r.unwrap().is_applied());
    assert!(!reg.metrics().failed);
    assert_eq!(reg.stats().devices, 3);
}

/// Many small detached writes from many threads, none waiting: every one
/// is answered (a lost `Lead` would leave some queued for ever, and the
/// wait below would time out).
#[test]
fn a_burst_of_detached_writes_loses_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let reg =
        Registry::open_with(Config::new(dir.path().join("db")).durability(Durability::Eventual))
            .unwrap();
    let (tx, rx) = unbounded();
    let per_thread = 2_000u64;
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (reg, tx) = (reg.clone(), tx.clone());
            s.spawn(move || {
                for i in 0..per_thread {
                    let tx = tx.clone();
                    let op = reg_op(&format!("b-{t}-{i}"), None, i + 1);
                    reg.apply_batch_then(vec![op], None, move |r| {
                        tx.send(r.map(|o| o.len())).unwrap();
                    });
                }
            });
        }
    });
    drop(tx);
    for n in 0..8 * per_thread {
        let r = rx.recv_timeout(Duration::from_secs(30));
        assert!(matches!(r, Ok(Ok(1))), "answer {n}: {r:?}");
    }
    assert_eq!(reg.stats().devices, 8 * per_thread);
}

/// A writer that panics in a group fails stop, and every detached request
/// already queued behind that group is still answered (refused), not left
/// in the queue for ever: three batches of 100,000 operations are queued
/// while the writer thread runs an integrity check, so the first group
/// (at most `MAX_GROUP_OPS`, 200,000 operations) takes two of them and
/// panics, and the third waits behind it.
#[test]
fn requests_queued_behind_a_panicking_group_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let config = Config::new(dir.path().join("db"))
        .durability(Durability::Eventual)
        .fault_plan(plan.clone());
    let reg = Registry::open_with(config).unwrap();
    // Enough devices for the check to keep the writer thread busy a while.
    let seed: Vec<Op> = (0..100_000u64)
        .map(|i| reg_op(&format!("s{i}"), Some(&format!("p{}", i % 5_000)), 1))
        .collect();
    reg.apply_batch(seed).unwrap();
    let checker = {
        let reg = reg.clone();
        std::thread::spawn(move || reg.check())
    };
    std::thread::sleep(Duration::from_millis(5));
    plan.panic_in_apply();
    let (tx, rx) = unbounded();
    for b in 0..3u64 {
        let ops = (0..100_000u64)
            .map(|i| reg_op(&format!("q{b}-{i}"), None, 2))
            .collect();
        let tx = tx.clone();
        reg.apply_batch_then(ops, None, move |r| tx.send((b, r.is_ok())).unwrap());
    }
    drop(tx);
    // The panicking group's callbacks are dropped uncalled; the third
    // batch is answered with the failure.
    let mut answers = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => answers.push(a),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                panic!("a queued request was never answered (so far: {answers:?})")
            }
        }
    }
    assert_eq!(answers, vec![(2, false)]);
    let _ = checker.join().unwrap();
    assert!(reg.metrics().failed);
}

/// An `Eventual` detached write on an idle registry is committed by the
/// calling thread itself (its callback runs there: no hand-off to the
/// writer thread and back, what the server's eventual POST needed); an
/// `Immediate` one is led by the writer thread, so no caller waits for the
/// fdatasync. Both are applied and durable as asked.
#[test]
fn an_eventual_write_on_an_idle_registry_is_committed_by_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open_with(Config::new(&db).durability(Durability::Eventual)).unwrap();
    let here = std::thread::current().id();
    // The writer thread's timers hold the lock now and then: of 10 writes
    // each way, an eventual one led here is enough (none was before).
    let mut led_here = [0, 0];
    for (i, durability) in [Durability::Eventual, Durability::Immediate]
        .into_iter()
        .enumerate()
    {
        for j in 0..10u64 {
            let (tx, rx) = unbounded();
            let op = reg_op(
                &format!("{:064x}", i as u64 * 100 + j),
                Some("ann"),
                1_000 + j,
            );
            reg.apply_batch_then(vec![op], Some(durability), move |r| {
                let _ = tx.send((std::thread::current().id(), r));
            });
            let (thread, r) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert!(r.unwrap()[0].is_applied(), "{durability:?}");
            led_here[i] += usize::from(thread == here);
        }
    }
    assert!(
        led_here[0] >= 1,
        "eventual writes led by the caller: {led_here:?}"
    );
    assert_eq!(
        led_here[1], 0,
        "an immediate write never waits here: {led_here:?}"
    );
    drop(reg);
    let reg = Registry::open_with(Config::new(&db)).unwrap();
    assert_eq!(reg.dump().len(), 20, "every write durable across a reopen");
}

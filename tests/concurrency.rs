//! Concurrency: several threads share one registry (clones of the handle),
//! registering, moving tokens between persons, merging, rotating, logging
//! out, invalidating and reading at once, with group commit, tiny log
//! segments and frequent checkpoints. Every single read must be internally
//! consistent; afterwards `check()` is clean, every token has at most one
//! owner, the cap holds, and a reopen shows the same registry.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{assert_clean, Rng};
use devreg::*;

const CAP: u32 = 4;
const WRITERS: u64 = 5;
const OPS_PER_WRITER: u64 = 600;
const TOKENS: u64 = 90;
const PERSONS: u64 = 10;

fn config(db: &std::path::Path) -> Config {
    Config::new(db)
        .max_devices_per_person(CAP)
        .log_segment_bytes(64 << 10)
        .max_log_segments(3)
        .checkpoint_interval_ms(5)
}

fn token(i: u64) -> String {
    if i.is_multiple_of(2) {
        format!("{:064x}", i * 0x1_0000_0001)
    } else {
        format!("fcm-{i}:APA91b")
    }
}

fn person(i: u64) -> String {
    format!("user-{i}")
}

fn sorted_by_recency(devices: &[Device]) -> bool {
    devices.windows(2).all(|w| {
        (std::cmp::Reverse(w[0].last_seen_ms), &w[0].token)
            < (std::cmp::Reverse(w[1].last_seen_ms), &w[1].token)
    })
}

/// Reads that must hold within one call, whatever runs concurrently.
fn check_reads(reg: &Registry, rng: &mut Rng) {
    let p = person(rng.below(PERSONS));
    let devices = reg.devices_of(&p);
    assert!(devices.len() <= CAP as usize, "{p} has {devices:?}");
    assert!(
        devices
            .iter()
            .all(|d| d.person.as_deref() == Some(p.as_str())),
        "devices_of({p}) holds another person's device: {devices:?}"
    );
    assert!(sorted_by_recency(&devices), "devices_of({p}) out of order");
    if let Some(d) = reg.most_recent(&p, None) {
        assert_eq!(d.person.as_deref(), Some(p.as_str()), "most_recent({p})");
    }
    for plat in Platform::ALL {
        if let Some(d) = reg.most_recent(&p, Some(plat)) {
            assert_eq!(d.person.as_deref(), Some(p.as_str()));
            assert_eq!(d.platform, plat);
        }
    }
    let t = token(rng.below(TOKENS));
    if let Some(d) = reg.device(&t) {
        assert_eq!(d.token, t);
    }
    let s = reg.stats();
    assert_eq!(s.devices, s.identified + s.anonymous, "{s:?}");
    assert_eq!(s.devices, s.ios + s.android, "{s:?}");
    assert!(s.persons <= s.identified, "{s:?}");
    assert!(s.identified <= s.persons * u64::from(CAP), "{s:?}");
    let plat = Platform::ALL[rng.below(2) as usize];
    let page = reg.page_by_platform(plat, None, 16);
    assert!(page.devices.iter().all(|d| d.platform == plat));
    assert!(page
        .devices
        .windows(2)
        .all(|w| (w[0].last_seen_ms, &w[0].token) < (w[1].last_seen_ms, &w[1].token)));
}

fn random_op(rng: &mut Rng, clock: &mut u64) -> Op {
    *clock += rng.below(1000);
    let seen_ms = *clock - rng.below(5000);
    match rng.below(100) {
        0..=44 => Op::Register(Register {
            token: token(rng.below(TOKENS)),
            platform: Platform::ALL[rng.below(2) as usize],
            person: if rng.chance(4, 5) {
                Some(person(rng.below(PERSONS)))
            } else {
                None
            },
            seen_ms,
            attributes: None,
        }),
        45..=59 => {
            let a = rng.below(PERSONS);
            let b = (a + 1 + rng.below(PERSONS - 1)) % PERSONS;
            Op::Merge {
                primary: person(a),
                secondary: person(b),
            }
        }
        60..=71 => {
            let a = rng.below(TOKENS);
            let b = (a + 1 + rng.below(TOKENS - 1)) % TOKENS;
            Op::Rotate {
                old_token: token(a),
                new_token: token(b),
                seen_ms,
            }
        }
        72..=81 => Op::Touch {
            token: token(rng.below(TOKENS)),
            seen_ms,
        },
        82..=89 => Op::Logout {
            token: token(rng.below(TOKENS)),
            policy: if rng.chance(1, 2) {
                LogoutPolicy::Keep
            } else {
                LogoutPolicy::Remove
            },
        },
        90..=95 => Op::Invalidate {
            token: token(rng.below(TOKENS)),
            provider_ms: seen_ms,
        },
        _ => Op::Remove {
            token: token(rng.below(TOKENS)),
        },
    }
}

#[test]
fn threads_write_and_read_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open_with(config(&db)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let reg = reg.clone();
        writers.push(std::thread::spawn(move || {
            let mut rng = Rng::new(1000 + w);
            let mut clock = 1_700_000_000_000 + w * 7;
            let mut applied = 0u64;
            for _ in 0..OPS_PER_WRITER {
                if rng.chance(1, 25) {
                    let n = 2 + rng.below(20);
                    let ops: Vec<Op> = (0..n).map(|_| random_op(&mut rng, &mut clock)).collect();
                    applied += reg.apply_batch(ops).unwrap().len() as u64;
                } else {
                    let _ = reg.apply(random_op(&mut rng, &mut clock)).unwrap();
                    applied += 1;
                }
                if rng.chance(1, 3) {
                    check_reads(&reg, &mut rng);
                }
            }
            applied
        }));
    }
    let reader = {
        let (reg, done) = (reg.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(7);
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) {
                check_reads(&reg, &mut rng);
                reads += 1;
            }
            reads
        })
    };
    let applied: u64 = writers.into_iter().map(|t| t.join().unwrap()).sum();
    done.store(true, Ordering::Release);
    let reads = reader.join().unwrap();
    assert!(applied >= WRITERS * OPS_PER_WRITER);
    assert!(reads > 0);

    assert_clean(&reg, "after the threads");
    let dump = reg.dump();
    let owner: BTreeMap<&str, Option<&str>> = dump
        .iter()
        .map(|d| (d.token.as_str(), d.person.as_deref()))
        .collect();
    assert_eq!(owner.len(), dump.len(), "a token appears twice in dump");
    let mut listed: BTreeMap<String, String> = BTreeMap::new();
    for p in 0..PERSONS {
        let p = person(p);
        let devices = reg.devices_of(&p);
        assert!(
            devices.len() <= CAP as usize,
            "{p} has {} devices, over the cap",
            devices.len()
        );
        assert!(sorted_by_recency(&devices));
        for d in devices {
            assert_eq!(owner.get(d.token.as_str()), Some(&Some(p.as_str())));
            if let Some(other) = listed.insert(d.token.clone(), p.clone()) {
                panic!("token {} is owned by both {other} and {p}", d.token);
            }
        }
    }
    let identified = dump.iter().filter(|d| d.person.is_some()).count();
    assert_eq!(
        listed.len(),
        identified,
        "every owned device is listed once"
    );
    let stats = reg.stats();
    assert_eq!(stats.devices, dump.len() as u64);
    assert_eq!(stats.identified, identified as u64);
    drop(reg);

    let reg = Registry::open_with(config(&db)).unwrap();
    assert_eq!(reg.dump(), dump, "the registry after a reopen");
    assert_clean(&reg, "after the reopen");
    println!(
        "concurrency: {applied} operations from {WRITERS} writers, {reads} read rounds, {} devices",
        dump.len()
    );
}

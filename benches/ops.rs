//! Criterion suite of single registry operations and queries, each write in
//! both durability modes, on a registry pre-populated with 100,000 devices.
//!
//! `cargo bench --bench ops` (about three minutes). Measurement times are
//! short on purpose: the machine is small and shared; the comparison
//! harness (`benches/compare`) is where ratios against other systems live.
//!
//! TODO(export): an "export batch building" bench belongs here once the
//! Customer.io feed exists (issue 6); the lead engineer adds it with the feed.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use devreg::limits::MAX_TIMESTAMP_MS;
use devreg::{
    Attributes, Config, Durability, FeedbackOutcome, LogoutPolicy, Op, Platform, Register, Registry,
};

const PREPOPULATED: u64 = 100_000;
const PERSONS: u64 = PREPOPULATED / 2;
const NOW_MS: u64 = 1_750_000_000_000;
const DAY_MS: u64 = 86_400_000;

fn token(i: u64) -> String {
    // Distinct 64-char hex tokens (the APNs shape); a multiplicative hash
    // spreads them over the key space like real tokens.
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{h:016x}{i:016x}{:016x}{:016x}", h.rotate_left(17), !h)
}

fn attrs(i: u64) -> Attributes {
    let mut a = Attributes::new();
    let pick = |set: &[&str]| set[(i % set.len() as u64) as usize].to_string();
    a.insert("app_version".into(), pick(&["4.0.1", "4.1.0", "4.2.0"]));
    a.insert("device_os".into(), pick(&["17.5", "18.0", "14", "15"]));
    a.insert(
        "device_model".into(),
        pick(&["iPhone15,3", "Pixel 8", "SM-S911B"]),
    );
    a.insert("push_enabled".into(), pick(&["true", "false"]));
    a.insert(
        "device_locale".into(),
        pick(&["en-US", "de-DE", "fr-FR", "ja-JP"]),
    );
    a.insert("cio_sdk_version".into(), pick(&["3.1.0", "3.2.1"]));
    a
}

fn register_op(token: String, person: Option<String>, seen_ms: u64, i: u64) -> Op {
    Op::Register(Register {
        token,
        platform: if i % 5 < 3 {
            Platform::Ios
        } else {
            Platform::Android
        },
        person,
        seen_ms,
        attributes: Some(attrs(i)),
    })
}

/// Device `i` of the pre-populated set: owned by person i % PERSONS, half of
/// them seen in the last 30 days.
fn seed_op(i: u64) -> Op {
    let age = if i.is_multiple_of(2) {
        i % 30
    } else {
        31 + i % 300
    };
    register_op(
        token(i),
        Some(format!("person-{}", i % PERSONS)),
        NOW_MS - age * DAY_MS,
        i,
    )
}

struct Fixture {
    reg: Registry,
    // Dropped after `reg`: the database lives in this directory.
    _dir: tempfile::TempDir,
}

fn open(durability: Durability) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let reg = Registry::open_with(Config::new(dir.path().join("db")).durability(durability))
        .expect("opening the registry");
    for start in (0..PREPOPULATED).step_by(10_000) {
        reg.apply_batch((start..start + 10_000).map(seed_op).collect())
            .expect("pre-populating");
    }
    reg.checkpoint().expect("checkpoint");
    Fixture { reg, _dir: dir }
}

/// Times `op(i)` for fresh indexes `i`, undoing each chunk of them with one
/// untimed batch (`undo`), so the registry's size stays near PREPOPULATED.
fn timed_with_cleanup(
    iters: u64,
    next: &mut u64,
    mut op: impl FnMut(u64),
    mut undo: impl FnMut(std::ops::Range<u64>),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let chunk = (iters - done).min(10_000);
        let first = *next;
        let t = Instant::now();
        for i in first..first + chunk {
            op(i);
        }
        total += t.elapsed();
        *next += chunk;
        undo(first..first + chunk);
        done += chunk;
    }
    total
}

fn writes(c: &mut Criterion, durability: Durability, mode: &str) {
    let fx = open(durability);
    let reg = &fx.reg;
    let mut g = c.benchmark_group(format!("write/{mode}"));
    // Fresh tokens live above the pre-populated range.
    let mut fresh = 1u64 << 40;
    let mut seen = NOW_MS;
    let mut tick = move || {
        seen += 1;
        seen
    };

    g.bench_function("register_new", |b| {
        b.iter_custom(|iters| {
            timed_with_cleanup(
                iters,
                &mut fresh,
                |i| {
                    let _ = reg
                        .apply(register_op(token(i), Some(format!("new-{i}")), NOW_MS, i))
                        .expect("register");
                },
                |r| {
                    let ops = r.map(|i| Op::Remove { token: token(i) }).collect();
                    reg.apply_batch(ops).expect("cleanup");
                },
            )
        })
    });

    let mut i = 0u64;
    g.bench_function("register_existing", |b| {
        b.iter(|| {
            i = (i + 7919) % PREPOPULATED;
            let op = register_op(token(i), Some(format!("person-{}", i % PERSONS)), tick(), i);
            reg.apply(op).expect("register")
        })
    });

    g.bench_function("touch", |b| {
        b.iter(|| {
            i = (i + 7919) % PREPOPULATED;
            reg.touch(&token(i), tick()).expect("touch")
        })
    });

    // The same token alternates between two people: every call is a move.
    let mut flip = false;
    g.bench_function("move_on_login", |b| {
        b.iter(|| {
            flip = !flip;
            let person = if flip { "login-a" } else { "login-b" };
            reg.apply(register_op(token(3), Some(person.into()), tick(), 3))
                .expect("register")
        })
    });

    // A chain of rotations: each moves the record to a brand-new token.
    let mut current = token(5);
    let mut next_token = 1u64 << 50;
    g.bench_function("rotate", |b| {
        b.iter(|| {
            next_token += 1;
            let new = token(next_token);
            let _ = reg.rotate(&current, &new, tick()).expect("rotate");
            current = new;
        })
    });

    // Each logout hits a device that is owned; chunks are re-owned untimed.
    let mut cursor = 0u64;
    g.bench_function("logout_keep", |b| {
        b.iter_custom(|iters| {
            timed_with_cleanup(
                iters,
                &mut cursor,
                |i| {
                    let _ = reg
                        .logout(&token(i % PREPOPULATED), LogoutPolicy::Keep)
                        .expect("logout");
                },
                |r| {
                    let ops = r.map(|i| seed_op(i % PREPOPULATED)).collect();
                    reg.apply_batch(ops).expect("re-own");
                },
            )
        })
    });

    // k devices go back and forth between two people: every call moves k.
    for k in [1u64, 5, 20] {
        let (a, b_) = (format!("merge-{k}-a"), format!("merge-{k}-b"));
        let ops = (0..k)
            .map(|j| register_op(token((1 << 45) + k * 100 + j), Some(a.clone()), NOW_MS, j))
            .collect();
        reg.apply_batch(ops).expect("merge setup");
        let mut there = false;
        g.bench_function(format!("merge_{k}_devices"), |b| {
            b.iter(|| {
                there = !there;
                let (p, s) = if there { (&b_, &a) } else { (&a, &b_) };
                reg.merge(p, s).expect("merge")
            })
        });
    }

    g.bench_function("apply_batch_1000_registers", |b| {
        b.iter_batched(
            || {
                let first = fresh;
                fresh += 1000;
                (first..first + 1000)
                    .map(|i| register_op(token(i), Some(format!("imp-{}", i / 2)), NOW_MS, i))
                    .collect::<Vec<_>>()
            },
            |ops| reg.apply_batch(ops).expect("import"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn writes_immediate(c: &mut Criterion) {
    writes(c, Durability::Immediate, "immediate");
}

fn writes_eventual(c: &mut Criterion) {
    writes(c, Durability::Eventual, "eventual");
}

fn reads(c: &mut Criterion) {
    let fx = open(Durability::Eventual);
    let reg = &fx.reg;
    let mut g = c.benchmark_group("read");
    let mut i = 0u64;
    let mut next = move || {
        i = (i + 7919) % PREPOPULATED;
        i
    };
    g.bench_function("device_by_token", |b| {
        b.iter(|| reg.device(&token(next())).expect("present"))
    });
    g.bench_function("devices_of", |b| {
        b.iter(|| reg.devices_of(&format!("person-{}", next() % PERSONS)))
    });
    g.bench_function("most_recent", |b| {
        b.iter(|| reg.most_recent(&format!("person-{}", next() % PERSONS), None))
    });
    // A third of the devices failed for good: the deliverable walk skips
    // them (each person's most recent device among them, about as often).
    let failed: Vec<Op> = (0..PREPOPULATED)
        .filter(|i| i % 3 == 0)
        .map(|i| Op::Feedback {
            token: token(i),
            outcome: FeedbackOutcome::HardFailure,
            at_ms: MAX_TIMESTAMP_MS,
            reason: None,
        })
        .collect();
    for chunk in failed.chunks(10_000) {
        reg.apply_batch(chunk.to_vec()).expect("feedback");
    }
    g.bench_function("most_recent_deliverable", |b| {
        b.iter(|| reg.most_recent_deliverable(&format!("person-{}", next() % PERSONS), None))
    });
    g.bench_function("active_since_30d_count", |b| {
        b.iter(|| reg.active_since(NOW_MS - 30 * DAY_MS, None))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = reads, writes_eventual, writes_immediate
}
criterion_main!(benches);

//! Model test: random sequences of every operation (single and batched), with
//! checkpoints and reopens in between, applied to devreg and to the plain
//! reference model in `common`; every query must agree after every step.
//!
//! `PROPTEST_CASES=N` sets the number of cases (default 128).

mod common;

use common::{assert_clean, Model};
use devreg::limits::MAX_TIMESTAMP_MS;
use devreg::*;
use proptest::prelude::*;

const CAP: u32 = 3;
const HOUR: u64 = 3_600_000;
/// An hour boundary (2023-11-14T22:00:00Z), so timestamps straddle hours.
const H0: u64 = 472_222 * HOUR;

/// Few tokens, so operations hit existing devices: 64-char lowercase hex
/// (stored packed), short and odd-length hex, uppercase hex (stored raw) and
/// FCM-like tokens, chosen so packed and raw tokens interleave in text order.
fn tokens() -> Vec<String> {
    vec![
        "0".repeat(64),
        format!("{}1", "0".repeat(63)),
        "a0".repeat(32),
        "f".repeat(64),
        "0f".into(),
        "0f0".into(),
        "0F".into(),
        "dGVzdA:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx".into(),
        "cXd1aQ:APA91bF_z9-x".into(),
        "e1:APA91".into(),
        "fcm_token-1".into(),
        "f:APA91b".into(),
    ]
}

const PERSONS: [&str; 5] = ["ann", "bob", "Zoë", "p-4", "ann "];

/// Timestamps that collide often and straddle hour boundaries.
const TIMES: [u64; 12] = [
    H0 - 1,
    H0,
    H0,
    H0 + 1,
    H0 + 1000,
    H0 + HOUR - 1,
    H0 + HOUR,
    H0 + HOUR + 1,
    H0 + 5 * HOUR + 7,
    H0 + 30 * 24 * HOUR,
    0,
    MAX_TIMESTAMP_MS,
];

/// Thresholds for `active_since` and the active-device walks.
const THRESHOLDS: [u64; 13] = [
    0,
    1,
    H0 - 1,
    H0,
    H0 + 1,
    H0 + 2,
    H0 + HOUR - 1,
    H0 + HOUR,
    H0 + 5 * HOUR,
    H0 + 5 * HOUR + 8,
    MAX_TIMESTAMP_MS,
    MAX_TIMESTAMP_MS + 1,
    u64::MAX,
];

fn token() -> impl Strategy<Value = String> {
    (0..12usize).prop_map(|i| tokens()[i].clone())
}

fn person() -> impl Strategy<Value = String> {
    (0..PERSONS.len()).prop_map(|i| PERSONS[i].to_string())
}

fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => (0..10usize).prop_map(|i| TIMES[i]),
        1 => (10..12usize).prop_map(|i| TIMES[i]),
    ]
}

fn platform() -> impl Strategy<Value = Platform> {
    prop_oneof![Just(Platform::Ios), Just(Platform::Android)]
}

fn attributes() -> impl Strategy<Value = Option<Attributes>> {
    let set = |pairs: &[(&str, &str)]| -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let pool = [
        Attributes::new(),
        set(&[("app_version", "1.0")]),
        set(&[("app_version", "1.1"), ("locale", "fr-FR")]),
        set(&[("device_model", "Pixel 8"), ("os", "")]),
    ];
    prop_oneof![
        2 => Just(None),
        1 => (0..pool.len()).prop_map(move |i| Some(pool[i].clone())),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (token(), platform(), proptest::option::weighted(0.7, person()), time(), attributes())
            .prop_map(|(token, platform, person, seen_ms, attributes)| Op::Register(Register {
                token, platform, person, seen_ms, attributes,
            })),
        2 => (token(), time()).prop_map(|(token, seen_ms)| Op::Touch { token, seen_ms }),
        2 => (0..12usize, 1..12usize, time()).prop_map(|(a, d, seen_ms)| Op::Rotate {
            old_token: tokens()[a].clone(),
            new_token: tokens()[(a + d) % 12].clone(),
            seen_ms,
        }),
        2 => (token(), prop_oneof![Just(LogoutPolicy::Keep), Just(LogoutPolicy::Remove)])
            .prop_map(|(token, policy)| Op::Logout { token, policy }),
        2 => (0..PERSONS.len(), 1..PERSONS.len()).prop_map(|(a, d)| Op::Merge {
            primary: PERSONS[a].into(),
            secondary: PERSONS[(a + d) % PERSONS.len()].into(),
        }),
        1 => token().prop_map(|token| Op::Remove { token }),
        2 => (token(), time()).prop_map(|(token, provider_ms)| Op::Invalidate { token, provider_ms }),
        1 => time().prop_map(|before_ms| Op::Prune { before_ms }),
        4 => (token(), 0..4usize, time(), proptest::option::of(Just("throttled".to_string())))
            .prop_map(|(token, o, at_ms, reason)| Op::Feedback {
                token, outcome: FeedbackOutcome::ALL[o], at_ms, reason,
            }),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Op(Op),
    /// `apply_batch`: all the operations as one atomic write.
    Batch(Vec<Op>),
    /// An explicit checkpoint.
    Checkpoint,
    /// Drop the registry and open it again.
    Reopen {
        eventual: bool,
        checkpoint_ms: u64,
    },
    /// The drift audit's repair (`Registry::remark`) on the sink `audit`:
    /// a feed write that changes no device (`check` compares the feed in
    /// memory with the one replayed from store and log at each reopen).
    Remark(Vec<RemarkPair>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        24 => op().prop_map(Step::Op),
        2 => proptest::collection::vec(op(), 1..8).prop_map(Step::Batch),
        1 => Just(Step::Checkpoint),
        1 => proptest::collection::vec((person(), token(), any::<bool>()), 1..4).prop_map(|v| {
            Step::Remark(
                v.into_iter()
                    .map(|(person, token, held)| RemarkPair { person, token, held })
                    .collect(),
            )
        }),
        3 => (any::<bool>(), 1..50u64)
            .prop_map(|(eventual, checkpoint_ms)| Step::Reopen { eventual, checkpoint_ms }),
    ]
}

fn config(path: &std::path::Path, eventual: bool, checkpoint_ms: u64) -> Config {
    Config::new(path)
        .durability(if eventual {
            Durability::Eventual
        } else {
            Durability::Immediate
        })
        .max_devices_per_person(CAP)
        .log_segment_bytes(64 << 10)
        .max_log_segments(3)
        .checkpoint_interval_ms(checkpoint_ms)
}

/// Compares every query of `reg` with the model.
fn compare(reg: &Registry, model: &Model, ctx: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(reg.dump(), model.dump(), "dump after {}", ctx);
    prop_assert_eq!(reg.stats(), model.stats(), "stats after {}", ctx);
    for t in tokens() {
        prop_assert_eq!(
            reg.device(&t),
            model.devices.get(&t).cloned(),
            "device({:?}) after {}",
            t,
            ctx
        );
        prop_assert_eq!(
            reg.deliverability(&t),
            model.deliverability(&t),
            "deliverability({:?}) after {}",
            t,
            ctx
        );
    }
    for p in PERSONS.iter().chain(&["nobody"]) {
        prop_assert_eq!(
            reg.devices_of(p),
            model.devices_of(p),
            "devices_of({:?}) after {}",
            p,
            ctx
        );
        let with: Vec<(Device, Deliverability, bool)> = model
            .devices_of(p)
            .into_iter()
            .map(|d| {
                let (deliv, suppressed) = model.deliverability(&d.token).unwrap();
                (d, deliv, suppressed)
            })
            .collect();
        prop_assert_eq!(
            reg.devices_of_deliverability(p),
            with,
            "devices_of_deliverability({:?}) after {}",
            p,
            ctx
        );
        for plat in [None, Some(Platform::Ios), Some(Platform::Android)] {
            prop_assert_eq!(
                reg.most_recent(p, plat),
                model.most_recent(p, plat),
                "most_recent({:?}, {:?}) after {}",
                p,
                plat,
                ctx
            );
            prop_assert_eq!(
                reg.most_recent_deliverable(p, plat),
                model.most_recent_deliverable(p, plat),
                "most_recent_deliverable({:?}, {:?}) after {}",
                p,
                plat,
                ctx
            );
        }
    }
    for since in THRESHOLDS {
        for plat in [None, Some(Platform::Ios), Some(Platform::Android)] {
            prop_assert_eq!(
                reg.active_since(since, plat),
                model.active_since(since, plat),
                "active_since({}, {:?}) after {}",
                since,
                plat,
                ctx
            );
        }
    }
    for since in [0, H0, H0 + 1, H0 + HOUR] {
        let want: Vec<Device> = Platform::ALL
            .iter()
            .flat_map(|&p| model.by_platform(p, since))
            .collect();
        let got: Vec<Device> = reg.active_devices(since, None).collect();
        prop_assert_eq!(got, want, "active_devices({}, None) after {}", since, ctx);
        let got: Vec<Device> = reg.active_devices(since, Some(Platform::Android)).collect();
        prop_assert_eq!(
            got,
            model.by_platform(Platform::Android, since),
            "active_devices({}, android) after {}",
            since,
            ctx
        );
    }
    for plat in Platform::ALL {
        for page_size in [1, 2] {
            let mut walked = Vec::new();
            let mut cursor = None;
            let mut pages = 0;
            loop {
                let page = reg.page_by_platform(plat, cursor.as_ref(), page_size);
                prop_assert!(page.devices.len() <= page_size);
                walked.extend(page.devices);
                pages += 1;
                prop_assert!(pages <= 100, "page walk does not end");
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            prop_assert_eq!(
                walked,
                model.by_platform(plat, 0),
                "page_by_platform({:?}, size {}) after {}",
                plat,
                page_size,
                ctx
            );
        }
    }
    Ok(())
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut reg = Registry::open_with(config(&db, false, 10)).unwrap();
    reg.add_sink("audit").unwrap();
    let mut model = Model::new(CAP);
    for (i, step) in steps.iter().enumerate() {
        let ctx = format!("step {i}: {step:?}");
        match step {
            Step::Op(op) => {
                let want = model.apply(op);
                let got = reg.apply(op.clone()).unwrap();
                prop_assert_eq!(got, want, "outcome of {}", ctx);
            }
            Step::Batch(ops) => {
                let want: Vec<Outcome> = ops.iter().map(|op| model.apply(op)).collect();
                let got = reg.apply_batch(ops.clone()).unwrap();
                prop_assert_eq!(got, want, "outcomes of {}", ctx);
            }
            Step::Checkpoint => reg.checkpoint().unwrap(),
            Step::Remark(pairs) => {
                let valid = pairs.iter().all(|p| p.validate().is_ok());
                match reg.remark("audit", pairs) {
                    Ok(n) => prop_assert!(valid && n <= pairs.len() as u64, "{}", ctx),
                    Err(Error::Invalid { field, .. }) => {
                        prop_assert!(!valid && field.starts_with("pairs["), "{}", ctx)
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
            }
            Step::Reopen {
                eventual,
                checkpoint_ms,
            } => {
                let sinks = reg.sinks();
                drop(reg);
                reg = Registry::open_with(config(&db, *eventual, *checkpoint_ms)).unwrap();
                assert_clean(&reg, &ctx);
                // The feed (re-marks included) survives the reopen.
                prop_assert_eq!(reg.sinks(), sinks, "sinks after {}", ctx);
            }
        }
        compare(&reg, &model, &ctx)?;
    }
    assert_clean(&reg, "the last step");
    drop(reg);
    // Whatever the last step was, a final reopen shows the same registry.
    let reg = Registry::open_with(config(&db, false, 10)).unwrap();
    compare(&reg, &model, "the final reopen")?;
    assert_clean(&reg, "the final reopen");
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn registry_matches_model(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps)?;
    }
}

/// A fixed sequence exercising each semantic rule once, so a regression
/// names the rule (the random test covers combinations).
#[test]
fn fixed_sequence_matches_model() {
    let t = tokens();
    let reg_op = |tok: &str, person: Option<&str>, seen_ms: u64| {
        Op::Register(Register {
            token: tok.into(),
            platform: Platform::Ios,
            person: person.map(Into::into),
            seen_ms,
            attributes: None,
        })
    };
    let mut steps = vec![
        reg_op(&t[0], Some("ann"), H0),
        reg_op(&t[1], Some("ann"), H0),
        reg_op(&t[2], Some("ann"), H0 + 5),
        // Fourth device: the oldest (H0, t[0]) is evicted, ties by token.
        reg_op(&t[3], Some("ann"), H0 - 1),
        // Out-of-order event: last_seen stays.
        reg_op(&t[2], None, H0 - 100),
        Op::Touch {
            token: t[2].clone(),
            seen_ms: H0 - 5,
        },
        Op::Invalidate {
            token: t[2].clone(),
            provider_ms: H0,
        },
        Op::Invalidate {
            token: t[2].clone(),
            provider_ms: H0 + 5,
        },
        reg_op(&t[4], Some("bob"), H0 + 10),
        reg_op(&t[5], Some("bob"), H0 + 11),
        Op::Merge {
            primary: "ann".into(),
            secondary: "bob".into(),
        },
        Op::Rotate {
            old_token: t[5].clone(),
            new_token: t[4].clone(),
            seen_ms: H0,
        },
        Op::Logout {
            token: t[4].clone(),
            policy: LogoutPolicy::Keep,
        },
        Op::Logout {
            token: t[4].clone(),
            policy: LogoutPolicy::Keep,
        },
        Op::Prune { before_ms: H0 },
        Op::Remove {
            token: t[9].clone(),
        },
    ];
    steps.push(Op::Logout {
        token: t[1].clone(),
        policy: LogoutPolicy::Remove,
    });
    run(steps.into_iter().map(Step::Op).collect()).unwrap();
}

/// Each deliverability rule once (issue 15), checked against hand-written
/// answers and the model: the most recent device is skipped after a hard
/// failure and after three soft failures, a delivery ends a run of soft
/// failures, seeing the device again lifts both, feedback for an unknown
/// token is `NotFound`, `unregistered` is the invalidate rule, and the side
/// table survives a reopen.
#[test]
fn deliverability_rules_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open_with(config(&db, false, 10)).unwrap();
    let (old, new) = ("aa01", "aa02");
    for (tok, seen) in [(old, H0), (new, H0 + 1000)] {
        let _ = reg
            .register(Register {
                token: tok.into(),
                platform: Platform::Ios,
                person: Some("ann".into()),
                seen_ms: seen,
                attributes: None,
            })
            .unwrap();
    }
    let most = |reg: &Registry| reg.most_recent_deliverable("ann", None).map(|d| d.token);
    assert_eq!(most(&reg).as_deref(), Some(new));
    let hard = FeedbackOutcome::HardFailure;
    let soft = FeedbackOutcome::SoftFailure;
    assert!(reg
        .feedback(new, hard, H0 + 2000, Some("BadDeviceToken"))
        .unwrap()
        .is_applied());
    assert_eq!(
        most(&reg).as_deref(),
        Some(old),
        "a hard failure suppresses"
    );
    assert_eq!(
        reg.most_recent("ann", None).unwrap().token,
        new,
        "most_recent ignores it"
    );
    assert_eq!(
        reg.feedback(new, hard, H0 + 1500, None).unwrap(),
        Outcome::Skipped
    );
    let _ = reg.touch(new, H0 + 3000).unwrap();
    assert_eq!(most(&reg).as_deref(), Some(new), "seeing it again lifts it");
    for i in 0..2 {
        let _ = reg.feedback(new, soft, H0 + 4000 + i, None).unwrap();
    }
    // A replay of either (a webhook delivered again, to a server that
    // restarted and forgot its delivery ids) counts once.
    for at in [H0 + 4001, H0 + 4000] {
        assert_eq!(
            reg.feedback(new, soft, at, None).unwrap(),
            Outcome::Skipped,
            "a soft failure replayed at {at}"
        );
    }
    assert_eq!(most(&reg).as_deref(), Some(new), "two soft failures do not");
    let _ = reg.feedback(new, soft, H0 + 4002, None).unwrap();
    assert_eq!(most(&reg).as_deref(), Some(old), "three do");
    let (d, suppressed) = reg.deliverability(new).unwrap();
    assert!(suppressed);
    assert_eq!(
        (d.soft_failures, d.last_soft_failure_ms),
        (3, Some(H0 + 4002))
    );
    let delivered = FeedbackOutcome::Delivered;
    assert!(reg
        .feedback(new, delivered, H0 + 4003, None)
        .unwrap()
        .is_applied());
    assert_eq!(most(&reg).as_deref(), Some(new), "a delivery ends the run");
    assert_eq!(
        reg.feedback(new, soft, H0 + 4003, None).unwrap(),
        Outcome::Skipped
    );
    assert_eq!(
        reg.feedback("ffff", delivered, H0, None).unwrap(),
        Outcome::NotFound
    );
    let unreg = FeedbackOutcome::Unregistered;
    assert_eq!(
        reg.feedback(old, unreg, H0 - 1, None).unwrap(),
        Outcome::Skipped
    );
    assert!(reg.feedback(old, hard, H0 + 1, None).unwrap().is_applied());
    assert!(reg.feedback(old, unreg, H0, None).unwrap().is_applied());
    assert_eq!(reg.device(old), None, "unregistered at last_seen deletes");
    assert_eq!(reg.deliverability(old), None);
    let before = reg.deliverability(new);
    drop(reg);
    let reg = Registry::open_with(config(&db, false, 10)).unwrap();
    assert_eq!(reg.deliverability(new), before, "kept across a reopen");
    assert_clean(&reg, "the reopen");
    let ops = [
        Op::Feedback {
            token: new.into(),
            outcome: hard,
            at_ms: H0 + 9000,
            reason: None,
        },
        Op::Feedback {
            token: "nosuch".into(),
            outcome: soft,
            at_ms: H0,
            reason: None,
        },
    ];
    let mut model = Model::from_devices(CAP, reg.dump());
    model.deliv.insert(new.into(), before.unwrap().0);
    let want: Vec<Outcome> = ops.iter().map(|op| model.apply(op)).collect();
    assert_eq!(reg.apply_batch(ops.to_vec()).unwrap(), want);
    assert_eq!(reg.most_recent_deliverable("ann", None), None);
    assert_eq!(model.most_recent_deliverable("ann", None), None);
}

//! A sequence of operations decoded from the fuzz input, applied to devreg
//! (a fresh database in a temp dir, `Durability::Eventual`, 64 KiB log
//! segments) and to the reference model of tests/common/mod.rs. Every
//! outcome, every query and the final dump must agree, `check()` must stay
//! clean, and a reopen must give back the same devices. Feed exports and
//! acks are mixed in (the model has no feed; `check()` verifies it).
//!
//! Input: byte 0 picks the cap (1..=4) and the checkpoint interval; then
//! each step takes an opcode byte and a few argument bytes, at most
//! `MAX_STEPS` steps. Tokens, persons and times come from small alphabets so
//! that operations collide; some registers carry ~20 KB of attributes so the
//! log rolls over segments within a few steps.
#![no_main]

#[path = "../../tests/common/mod.rs"]
#[allow(dead_code, clippy::all)]
mod common;

use std::path::Path;

use common::Model;
use devreg::limits::MAX_TIMESTAMP_MS;
use devreg::*;
use libfuzzer_sys::fuzz_target;

const MAX_STEPS: usize = 40;
const HOUR: u64 = 3_600_000;
const H0: u64 = 472_222 * HOUR;

const TOKENS: [&str; 10] = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0",
    "0f",
    "0f0",
    "0F",
    "dGVzdA:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx",
    "e1:APA91",
    "fcm_token-1",
    "f:APA91b",
    "ff",
];
const PERSONS: [&str; 5] = ["ann", "bob", "Zoë", "p-4", "ann "];
const TIMES: [u64; 10] = [
    H0 - 1,
    H0,
    H0 + 1,
    H0 + 1000,
    H0 + HOUR - 1,
    H0 + HOUR,
    H0 + 5 * HOUR + 7,
    H0 + 30 * 24 * HOUR,
    0,
    MAX_TIMESTAMP_MS,
];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        Some(from[usize::from(self.byte()?) % from.len()])
    }
}

fn attributes(sel: u8) -> Option<Attributes> {
    let set = |pairs: &[(&str, &str)]| -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    match sel % 8 {
        0..=2 => None,
        3 => Some(Attributes::new()),
        4 => Some(set(&[("app_version", "1.0")])),
        5 => Some(set(&[("app_version", "1.1"), ("locale", "fr-FR")])),
        // Big: fills a 64 KiB log segment in three writes.
        _ => {
            let n = 10 + usize::from(sel / 8) % 12;
            Some(
                (0..n)
                    .map(|i| (format!("big{i:02}"), "x".repeat(1000)))
                    .collect(),
            )
        }
    }
}

fn decode_op(inp: &mut Input<'_>, code: u8) -> Option<Op> {
    Some(match code {
        0..=4 => {
            let token = inp.pick(&TOKENS)?.to_string();
            let b = inp.byte()?;
            let platform = if b & 1 == 0 {
                Platform::Ios
            } else {
                Platform::Android
            };
            let person = if b & 6 == 0 {
                None
            } else {
                Some(PERSONS[usize::from(b >> 3) % PERSONS.len()].to_string())
            };
            Op::Register(Register {
                token,
                platform,
                person,
                seen_ms: inp.pick(&TIMES)?,
                attributes: attributes(inp.byte()?),
            })
        }
        5 => Op::Touch {
            token: inp.pick(&TOKENS)?.into(),
            seen_ms: inp.pick(&TIMES)?,
        },
        6 => {
            let a = usize::from(inp.byte()?) % TOKENS.len();
            let d = 1 + usize::from(inp.byte()?) % (TOKENS.len() - 1);
            Op::Rotate {
                old_token: TOKENS[a].into(),
                new_token: TOKENS[(a + d) % TOKENS.len()].into(),
                seen_ms: inp.pick(&TIMES)?,
            }
        }
        7 => Op::Logout {
            token: inp.pick(&TOKENS)?.into(),
            policy: if inp.byte()? & 1 == 0 {
                LogoutPolicy::Keep
            } else {
                LogoutPolicy::Remove
            },
        },
        8 => {
            let a = usize::from(inp.byte()?) % PERSONS.len();
            let d = 1 + usize::from(inp.byte()?) % (PERSONS.len() - 1);
            Op::Merge {
                primary: PERSONS[a].into(),
                secondary: PERSONS[(a + d) % PERSONS.len()].into(),
            }
        }
        9 => Op::Remove {
            token: inp.pick(&TOKENS)?.into(),
        },
        10 => Op::Invalidate {
            token: inp.pick(&TOKENS)?.into(),
            provider_ms: inp.pick(&TIMES)?,
        },
        _ => Op::Prune {
            before_ms: inp.pick(&TIMES)?,
        },
    })
}

fn config(db: &Path, cap: u32, checkpoint_ms: u64) -> Config {
    Config::new(db)
        .durability(Durability::Eventual)
        .max_devices_per_person(cap)
        .log_segment_bytes(64 << 10)
        .max_log_segments(3)
        .checkpoint_interval_ms(checkpoint_ms)
}

/// Every query the model answers, against the registry.
fn compare(reg: &Registry, model: &Model, ctx: &str) {
    assert_eq!(reg.dump(), model.dump(), "{ctx}: dump");
    assert_eq!(reg.stats(), model.stats(), "{ctx}: stats");
    for p in PERSONS {
        assert_eq!(
            reg.devices_of(p),
            model.devices_of(p),
            "{ctx}: devices_of {p}"
        );
        for pl in [None, Some(Platform::Ios), Some(Platform::Android)] {
            assert_eq!(
                reg.most_recent(p, pl),
                model.most_recent(p, pl),
                "{ctx}: most_recent {p} {pl:?}"
            );
        }
    }
    for t in [0, H0, H0 + 1, H0 + HOUR, MAX_TIMESTAMP_MS] {
        for pl in [None, Some(Platform::Ios), Some(Platform::Android)] {
            assert_eq!(
                reg.active_since(t, pl),
                model.active_since(t, pl),
                "{ctx}: active_since {t} {pl:?}"
            );
        }
    }
    let walked: Vec<Device> = reg.active_devices(H0, None).collect();
    let mut want = model.by_platform(Platform::Ios, H0);
    want.extend(model.by_platform(Platform::Android, H0));
    assert_eq!(walked, want, "{ctx}: active_devices");
}

fn assert_clean(reg: &Registry, ctx: &str) {
    let report = reg.check().expect("check runs");
    assert!(report.is_clean(), "{ctx}: check: {:#?}", report.problems);
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Some(first) = inp.byte() else {
        return;
    };
    let cap = 1 + u32::from(first % 4);
    let checkpoint_ms = if first & 4 == 0 { 3_600_000 } else { 1 };
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("db");
    let mut reg = Some(Registry::open_with(config(&db, cap, checkpoint_ms)).expect("open"));
    let mut model = Model::new(cap);
    let mut steps = 0;
    // The batch exported and not acknowledged, and the max_ops it was built with.
    let mut in_flight: Option<(String, u32)> = None;
    while steps < MAX_STEPS {
        let Some(code) = inp.byte() else { break };
        steps += 1;
        let r = reg.as_ref().expect("open");
        let ctx = format!("step {steps}");
        match code % 18 {
            c @ 0..=11 => {
                let Some(op) = decode_op(&mut inp, c) else {
                    break;
                };
                let want = model.apply(&op);
                let got = r.apply(op.clone()).expect("a valid operation applies");
                assert_eq!(got, want, "{ctx}: outcome of {op:?}");
            }
            12 => {
                // One atomic batch of 1..=4 operations.
                let n = inp.byte().map_or(1, |b| 1 + usize::from(b % 4));
                let mut ops = Vec::new();
                for _ in 0..n {
                    let Some(c) = inp.byte() else { break };
                    let Some(op) = decode_op(&mut inp, c % 12) else {
                        break;
                    };
                    ops.push(op);
                }
                let want: Vec<Outcome> = ops.iter().map(|op| model.apply(op)).collect();
                let got = r.apply_batch(ops.clone()).expect("a valid batch applies");
                assert_eq!(got, want, "{ctx}: outcomes of {ops:?}");
            }
            13 => r.checkpoint().expect("checkpoint"),
            14 => {
                drop(reg.take());
                let again = Registry::open_with(config(&db, cap, checkpoint_ms)).expect("reopen");
                compare(&again, &model, &format!("{ctx}: after a reopen"));
                reg = Some(again);
            }
            15 | 16 => {
                // The feed: export a batch and, now and then, ack it.
                let b = inp.byte().unwrap_or(0);
                let max_ops = 1 + u32::from(b % 5);
                let batch = r.export(DEFAULT_SINK, max_ops, 499_999).expect("export");
                if let Some(batch) = batch {
                    // An unacknowledged batch comes back as it was exported
                    // (with the max_ops of that export).
                    let limit = match &in_flight {
                        Some((id, limit)) if id == batch.id() => *limit,
                        _ => max_ops,
                    };
                    in_flight = Some((batch.id().to_owned(), limit));
                    assert!(
                        !batch.is_empty() && batch.len() <= limit as usize,
                        "{ctx}: batch of {} operations, max_ops {limit}",
                        batch.len()
                    );
                    let again = r.export(DEFAULT_SINK, max_ops, 499_999).expect("export");
                    assert_eq!(
                        again.as_ref().map(|b| b.id()),
                        Some(batch.id()),
                        "{ctx}: an unacknowledged batch is exported again"
                    );
                    if b & 0x80 == 0 {
                        r.ack(DEFAULT_SINK, batch.id()).expect("ack");
                        in_flight = None;
                        r.ack(DEFAULT_SINK, batch.id())
                            .expect("a second ack is a no-op");
                    }
                }
            }
            _ => assert_clean(r, &ctx),
        }
        compare(reg.as_ref().expect("open"), &model, &ctx);
    }
    let r = reg.take().expect("open");
    assert_clean(&r, "the end");
    drop(r);
    let r = Registry::open_with(config(&db, cap, checkpoint_ms)).expect("final reopen");
    compare(&r, &model, "the final reopen");
    assert_clean(&r, "the final reopen");
});

//! One NDJSON import line, from arbitrary bytes, through JSON to a validated
//! `Op`; never a panic.
//!
//! GAP: the import line parser (`parse_line`, the `Event` enum and its
//! conversion) lives in the binary (src/bin/devreg/import.rs) and is private,
//! so a fuzz target cannot call it. This target mirrors it (`Event` below is
//! a copy, keep it in step) and fuzzes the library's part for real:
//! `Platform`/`LogoutPolicy` parsing, `Op::validate` and the limits, and
//! `Op`'s own serde form. Moving `parse_line` into the library (e.g.
//! `devreg::import::parse_line`) would let this target fuzz the real thing.
//!
//! Properties: no panic; an `Op` that validates survives a JSON round trip
//! of its own serde form and still validates.
#![no_main]

use std::collections::BTreeMap;

use devreg::limits::MAX_IMPORT_LINE_BYTES;
use devreg::{LogoutPolicy, Op, Platform, Register};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

/// Copy of `Event` in src/bin/devreg/import.rs.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Event {
    Register {
        token: String,
        platform: String,
        #[serde(default)]
        person: Option<String>,
        seen_ms: u64,
        #[serde(default)]
        attributes: Option<BTreeMap<String, serde_json::Value>>,
    },
    Touch {
        token: String,
        seen_ms: u64,
    },
    Rotate {
        old_token: String,
        new_token: String,
        seen_ms: u64,
    },
    Logout {
        token: String,
        policy: String,
    },
    Merge {
        primary: String,
        secondary: String,
    },
    Remove {
        token: String,
    },
    Invalidate {
        token: String,
        provider_ms: u64,
    },
    Prune {
        before_ms: u64,
    },
}

impl Event {
    fn into_op(self) -> Result<Op, String> {
        Ok(match self {
            Event::Register {
                token,
                platform,
                person,
                seen_ms,
                attributes,
            } => Op::Register(Register {
                token,
                platform: platform.parse::<Platform>().map_err(|e| e.to_string())?,
                person,
                seen_ms,
                attributes: attributes.map(string_attributes).transpose()?,
            }),
            Event::Touch { token, seen_ms } => Op::Touch { token, seen_ms },
            Event::Rotate {
                old_token,
                new_token,
                seen_ms,
            } => Op::Rotate {
                old_token,
                new_token,
                seen_ms,
            },
            Event::Logout { token, policy } => Op::Logout {
                token,
                policy: policy.parse::<LogoutPolicy>().map_err(|e| e.to_string())?,
            },
            Event::Merge { primary, secondary } => Op::Merge { primary, secondary },
            Event::Remove { token } => Op::Remove { token },
            Event::Invalidate { token, provider_ms } => Op::Invalidate { token, provider_ms },
            Event::Prune { before_ms } => Op::Prune { before_ms },
        })
    }
}

fn string_attributes(
    raw: BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, String> {
    raw.into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => Ok((name, s)),
            _ => Err(format!("invalid attributes.{name}: must be a JSON string")),
        })
        .collect()
}

/// Mirror of `parse_line` in src/bin/devreg/import.rs.
fn parse_line(bytes: &[u8]) -> Result<Op, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    let event: Event = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let op = event.into_op()?;
    op.validate().map_err(|e| e.to_string())?;
    Ok(op)
}

fn round_trips(op: &Op) {
    let json = serde_json::to_string(op).expect("an Op serialises");
    let back: Op = serde_json::from_str(&json).expect("an Op's JSON parses");
    assert_eq!(&back, op, "serde round trip of {json}");
    back.validate().expect("a valid Op stays valid");
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_IMPORT_LINE_BYTES {
        return;
    }
    // The line as the importer sees it (newline stripped by the reader).
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    if let Ok(op) = parse_line(line) {
        round_trips(&op);
        // Errors must render without panicking, too (Display of every variant).
        let _ = Op::Touch {
            token: String::new(),
            seen_ms: 0,
        }
        .validate()
        .map_err(|e| e.to_string());
    }
    // The library's own serde form of Op, from the same bytes.
    if let Ok(op) = serde_json::from_slice::<Op>(data) {
        match op.validate() {
            Ok(()) => round_trips(&op),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});

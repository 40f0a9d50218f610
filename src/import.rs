//! The NDJSON import format: one JSON event per line, as `devreg import`
//! reads it. Exposed so services can import the same lines and the fuzzer
//! can test the real parser.
//!
//! ```
//! let op = devreg::import::parse_line(br#"{"op":"touch","token":"ab12","seen_ms":5}"#).unwrap();
//! assert_eq!(op, devreg::Op::Touch { token: "ab12".into(), seen_ms: 5 });
//! let e = devreg::import::parse_line(br#"{"op":"fly"}"#).unwrap_err();
//! assert!(e.starts_with("bad event: unknown variant"), "{e}");
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{LogoutPolicy, Op, Platform, Register};

/// One import line as written. The library's `Op` is shaped for bincode, so
/// the JSON form is parsed here and then converted.
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

/// Customer.io device attributes are strings; a number or bool would be
/// silently stringified by a laxer importer, so it is refused instead.
fn string_attributes(
    raw: BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, String> {
    raw.into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => Ok((name, s)),
            other => Err(format!(
                "invalid attributes.{name}: must be a JSON string, got {}",
                json_kind(&other)
            )),
        })
        .collect()
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Parses and validates one line (without its newline). The error is the
/// reason, in words, for a `line N: <reason>` report.
pub fn parse_line(bytes: &[u8]) -> Result<Op, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    let event: Event = serde_json::from_str(text).map_err(|e| json_reason(&e))?;
    let op = event.into_op()?;
    op.validate().map_err(|e| e.to_string())?;
    Ok(op)
}

/// serde_json says "at line 1 column N"; every line is its own document, so
/// only the column means anything to the reader.
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let msg = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let kind = match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "bad JSON",
        _ => "bad event",
    };
    // Tagged enums are parsed from a buffer, so some errors carry no column.
    match e.column() {
        0 => format!("{kind}: {msg}"),
        col => format!("{kind}: {msg} (column {col})"),
    }
}

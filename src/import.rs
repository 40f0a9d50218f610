//! The NDJSON import format: one JSON event per line, as `devreg import`
//! reads it. Exposed so services can import the same lines and the fuzzer
//! can test the real parser.
//!
//! ```
//! use devreg::import::{parse_line, LineError};
//! let op = parse_line(br#"{"op":"touch","token":"ab12","seen_ms":5}"#).unwrap();
//! assert_eq!(op, devreg::Op::Touch { token: "ab12".into(), seen_ms: 5 });
//! let e = parse_line(br#"{"op":"fly"}"#).unwrap_err();
//! assert!(matches!(e, LineError::Event { .. }));
//! assert!(e.to_string().starts_with("bad event: unknown variant"), "{e}");
//! let e = parse_line(br#"{"op":"remove","token":"a","token":"b"}"#).unwrap_err();
//! assert_eq!(e, LineError::DuplicateKey { key: "token".into(), in_attributes: false });
//! assert_eq!(e.to_string(), r#"duplicate key "token""#);
//! let e = parse_line(br#"{"op":"touch","token":"a b","seen_ms":5}"#).unwrap_err();
//! assert!(matches!(&e, LineError::Invalid { field, .. } if field == "token"), "{e}");
//! ```

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::Error;
use crate::model::{FeedbackOutcome, LogoutPolicy, Op, Platform, Register};

/// Why an import line was refused. Its text is the reason, in words, for a
/// `line N: <reason>` report. New kinds may be added: match with a
/// wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// The line is not UTF-8.
    #[error("not valid UTF-8 (at byte {valid_up_to})")]
    NotUtf8 {
        /// Bytes of valid UTF-8 before the first invalid one.
        valid_up_to: usize,
    },
    /// The line is not JSON.
    #[error("bad JSON: {reason}{}", at_column(*.column))]
    Json {
        /// serde_json's reason.
        reason: String,
        /// Where on the line, 1-based, when known.
        column: Option<usize>,
    },
    /// The line is JSON but not an event: an unknown `op`, a missing or
    /// unknown field, a value of the wrong type.
    #[error("bad event: {reason}{}", at_column(*.column))]
    Event {
        /// serde_json's reason.
        reason: String,
        /// Where on the line, 1-based, when known.
        column: Option<usize>,
    },
    /// A field, or an attribute name, is given twice.
    #[error("duplicate key {key:?}{}", if *.in_attributes { " in attributes" } else { "" })]
    DuplicateKey {
        /// The repeated name.
        key: String,
        /// Whether it is an attribute name (else an event field).
        in_attributes: bool,
    },
    /// A value broke one of devreg's rules (as [`Error::Invalid`]).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field, e.g. `token` or `attributes.app_version`.
        field: String,
        /// What rule it broke.
        reason: String,
    },
}

fn at_column(column: Option<usize>) -> String {
    column.map_or(String::new(), |c| format!(" (column {c})"))
}

impl From<Error> for LineError {
    fn from(e: Error) -> LineError {
        match e {
            Error::Invalid { field, reason } => LineError::Invalid { field, reason },
            other => LineError::Invalid {
                field: "line".into(),
                reason: other.to_string(),
            },
        }
    }
}

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
        // `dump` prints `last_seen_ms`: a dump line is an import line.
        #[serde(alias = "last_seen_ms")]
        seen_ms: u64,
        #[serde(default, deserialize_with = "unique_attributes")]
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
    Feedback {
        token: String,
        outcome: String,
        at_ms: u64,
        #[serde(default)]
        reason: Option<String>,
    },
}

impl Event {
    fn into_op(self) -> Result<Op, LineError> {
        Ok(match self {
            Event::Register {
                token,
                platform,
                person,
                seen_ms,
                attributes,
            } => Op::Register(Register {
                token,
                platform: platform.parse::<Platform>()?,
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
                policy: policy.parse::<LogoutPolicy>()?,
            },
            Event::Merge { primary, secondary } => Op::Merge { primary, secondary },
            Event::Remove { token } => Op::Remove { token },
            Event::Invalidate { token, provider_ms } => Op::Invalidate { token, provider_ms },
            Event::Prune { before_ms } => Op::Prune { before_ms },
            Event::Feedback {
                token,
                outcome,
                at_ms,
                reason,
            } => Op::Feedback {
                token,
                outcome: outcome.parse::<FeedbackOutcome>()?,
                at_ms,
                reason,
            },
        })
    }
}

/// `attributes`, refusing a name given twice. A JSON object may repeat a
/// key and serde's maps silently keep the last value; an import line that
/// says two things about one attribute is more likely a bug upstream than
/// a wish for the second. (Repeated event fields are refused by serde's
/// derive, see [`json_reason`].)
fn unique_attributes<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, serde_json::Value>>, D::Error> {
    Ok(Option::<UniqueKeys>::deserialize(d)?.map(|m| m.0))
}

struct UniqueKeys(BTreeMap<String, serde_json::Value>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of attribute names and values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            match out.entry(name) {
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value()?);
                }
                Entry::Occupied(slot) => {
                    // JSON-quoted, so that `json_reason` can read it back.
                    let quoted = serde_json::to_string(slot.key()).unwrap_or_default();
                    return Err(de::Error::custom(format_args!(
                        "{DUPLICATE_KEY}{quoted}{IN_ATTRIBUTES}"
                    )));
                }
            }
        }
        Ok(UniqueKeys(out))
    }
}

/// How import errors about a repeated key start.
const DUPLICATE_KEY: &str = "duplicate key ";
/// How an error about a repeated attribute name ends.
const IN_ATTRIBUTES: &str = " in attributes";

/// Customer.io device attributes are strings; a number or bool would be
/// silently stringified by a laxer importer, so it is refused instead.
fn string_attributes(
    raw: BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, LineError> {
    raw.into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => Ok((name, s)),
            other => Err(LineError::Invalid {
                reason: format!("must be a JSON string, got {}", json_kind(&other)),
                field: format!("attributes.{name}"),
            }),
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

/// Parses and validates one line (without its newline). The error's text
/// is the reason, in words, for a `line N: <reason>` report.
pub fn parse_line(bytes: &[u8]) -> Result<Op, LineError> {
    let text = std::str::from_utf8(bytes).map_err(|e| LineError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let event: Event = serde_json::from_str(text).map_err(|e| json_reason(&e))?;
    let op = event.into_op()?;
    op.validate()?;
    Ok(op)
}

/// serde_json says "at line 1 column N"; every line is its own document, so
/// only the column means anything to the reader. A repeated key is
/// `DuplicateKey` (serde's derive says "duplicate field `token`").
fn json_reason(e: &serde_json::Error) -> LineError {
    let text = e.to_string();
    let msg = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    let repeated_field = msg
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.strip_suffix('`'));
    if let Some(field) = repeated_field {
        return LineError::DuplicateKey {
            key: field.to_owned(),
            in_attributes: false,
        };
    }
    let repeated_name = msg
        .strip_prefix(DUPLICATE_KEY)
        .and_then(|rest| rest.strip_suffix(IN_ATTRIBUTES))
        .and_then(|quoted| serde_json::from_str::<String>(quoted).ok());
    if let Some(key) = repeated_name {
        return LineError::DuplicateKey {
            key,
            in_attributes: true,
        };
    }
    let reason = msg.to_owned();
    // Tagged enums are parsed from a buffer, so some errors carry no column.
    let column = Some(e.column()).filter(|&c| c > 0);
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            LineError::Json { reason, column }
        }
        _ => LineError::Event { reason, column },
    }
}

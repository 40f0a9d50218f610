//! The NDJSON import format: one JSON event per line, as `devreg import`
//! reads it. Exposed so services can import the same lines and the fuzzer
//! can test the real parser.
//!
//! ```
//! let op = devreg::import::parse_line(br#"{"op":"touch","token":"ab12","seen_ms":5}"#).unwrap();
//! assert_eq!(op, devreg::Op::Touch { token: "ab12".into(), seen_ms: 5 });
//! let e = devreg::import::parse_line(br#"{"op":"fly"}"#).unwrap_err();
//! assert!(e.starts_with("bad event: unknown variant"), "{e}");
//! let e = devreg::import::parse_line(br#"{"op":"remove","token":"a","token":"b"}"#).unwrap_err();
//! assert_eq!(e, r#"duplicate key "token""#);
//! ```

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
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
                    return Err(de::Error::custom(format_args!(
                        "{DUPLICATE_KEY}{:?} in attributes",
                        slot.key()
                    )));
                }
            }
        }
        Ok(UniqueKeys(out))
    }
}

/// How import errors about a repeated key start.
const DUPLICATE_KEY: &str = "duplicate key ";

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
/// only the column means anything to the reader. A repeated key reads
/// `duplicate key "token"` (serde's derive says "duplicate field `token`").
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let msg = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let repeated = msg
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.strip_suffix('`'));
    let (kind, msg) = match repeated {
        Some(field) => ("", format!("{DUPLICATE_KEY}{field:?}")),
        None if msg.starts_with(DUPLICATE_KEY) => ("", msg.to_owned()),
        None => match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ("bad JSON: ", msg.to_owned())
            }
            _ => ("bad event: ", msg.to_owned()),
        },
    };
    // Tagged enums are parsed from a buffer, so some errors carry no column.
    match e.column() {
        0 => format!("{kind}{msg}"),
        col => format!("{kind}{msg} (column {col})"),
    }
}

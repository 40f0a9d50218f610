//! Customer.io Track API v2 wire format: the operations devreg sends in
//! `POST /api/v2/batch` bodies. Field order is fixed so bodies are
//! byte-for-byte reproducible. A low layer: the Track v2 sink format
//! (`crate::format::TrackV2`) renders with it, and every format frames its
//! batch with `batch_body`. The HTTP worker that delivers them drives a
//! registry, so it lives above it, in `crate::sync` (feature `sync`).

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::model::{Attributes, Platform};

pub use crate::limits::{MAX_BATCH_BODY_BYTES, MAX_OPERATION_BYTES};

/// An identifier object of one key: `{"id":..}`, `{"email":..}` or
/// `{"cio_id":..}`.
struct Id<'a> {
    key: &'static str,
    value: &'a str,
}

impl Serialize for Id<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.key, self.value)?;
        map.end()
    }
}

#[derive(Serialize)]
struct AddDevice<'a> {
    token: &'a str,
    platform: &'a str,
    last_used: u64,
    attributes: &'a Attributes,
}

#[derive(Serialize)]
struct TokenOnly<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct DeviceOp<'a, D> {
    #[serde(rename = "type")]
    kind: &'static str,
    identifiers: Id<'a>,
    action: &'static str,
    device: D,
}

#[derive(Serialize)]
struct MergeOp<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    action: &'static str,
    primary: Id<'a>,
    secondary: Id<'a>,
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing plain structs of strings and integers cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// `add_device` for `person`, with `last_used` in whole seconds.
///
/// ```
/// let op = devreg::customerio::add_device("42", "ab12", devreg::Platform::Ios, 1_700_000_000_999, &Default::default());
/// assert_eq!(op, r#"{"type":"person","identifiers":{"id":"42"},"action":"add_device","device":{"token":"ab12","platform":"ios","last_used":1700000000,"attributes":{}}}"#);
/// ```
pub fn add_device(
    person: &str,
    token: &str,
    platform: Platform,
    last_seen_ms: u64,
    attributes: &Attributes,
) -> String {
    add_device_as("id", person, token, platform, last_seen_ms, attributes)
}

/// `add_device` naming the person by identifier `key` (`id`, `email`, `cio_id`).
pub(crate) fn add_device_as(
    key: &'static str,
    person: &str,
    token: &str,
    platform: Platform,
    last_seen_ms: u64,
    attributes: &Attributes,
) -> String {
    to_json(&DeviceOp {
        kind: "person",
        identifiers: Id { key, value: person },
        action: "add_device",
        device: AddDevice {
            token,
            platform: platform.as_str(),
            last_used: last_seen_ms / 1000,
            attributes,
        },
    })
}

/// `delete_device` of `token` from `person`.
///
/// ```
/// assert_eq!(devreg::customerio::delete_device("42", "ab12"),
///     r#"{"type":"person","identifiers":{"id":"42"},"action":"delete_device","device":{"token":"ab12"}}"#);
/// ```
pub fn delete_device(person: &str, token: &str) -> String {
    delete_device_as("id", person, token)
}

/// `delete_device` naming the person by identifier `key`.
pub(crate) fn delete_device_as(key: &'static str, person: &str, token: &str) -> String {
    to_json(&DeviceOp {
        kind: "person",
        identifiers: Id { key, value: person },
        action: "delete_device",
        device: TokenOnly { token },
    })
}

/// `merge` of `secondary` into `primary`.
///
/// ```
/// assert_eq!(devreg::customerio::merge("a", "b"),
///     r#"{"type":"person","action":"merge","primary":{"id":"a"},"secondary":{"id":"b"}}"#);
/// ```
pub fn merge(primary: &str, secondary: &str) -> String {
    merge_as("id", primary, secondary)
}

/// `merge` naming both persons by identifier `key`.
pub(crate) fn merge_as(key: &'static str, primary: &str, secondary: &str) -> String {
    to_json(&MergeOp {
        kind: "person",
        action: "merge",
        primary: Id {
            key,
            value: primary,
        },
        secondary: Id {
            key,
            value: secondary,
        },
    })
}

#[derive(Serialize)]
struct EventOp<'a, A> {
    #[serde(rename = "type")]
    kind: &'static str,
    identifiers: Id<'a>,
    action: &'static str,
    name: &'a str,
    id: &'a str,
    timestamp: u64,
    attributes: &'a A,
}

/// `event` `name` for a person (named by identifier `key`), with its ULID
/// `id` (Customer.io de-duplicates on it), `timestamp` in Unix seconds and
/// string `attributes`.
pub(crate) fn event_as<A: Serialize>(
    key: &'static str,
    person: &str,
    name: &str,
    id: &str,
    timestamp: u64,
    attributes: &A,
) -> String {
    to_json(&EventOp {
        kind: "person",
        identifiers: Id { key, value: person },
        action: "event",
        name,
        id,
        timestamp,
        attributes,
    })
}

/// Wraps operations into a batch body: `{"batch":[op,...]}`.
pub fn batch_body<S: AsRef<str>>(ops: &[S]) -> String {
    let len: usize = ops.iter().map(|o| o.as_ref().len() + 1).sum();
    let mut body = String::with_capacity(len + 12);
    body.push_str("{\"batch\":[");
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(op.as_ref());
    }
    body.push_str("]}");
    body
}

/// Bytes the body grows by when `op_bytes` is added to a batch of `ops` operations.
pub(crate) fn body_growth(ops: usize, op_bytes: usize) -> usize {
    op_bytes + usize::from(ops > 0)
}

/// Size of an empty batch body.
pub(crate) const EMPTY_BODY_BYTES: usize = "{\"batch\":[]}".len();

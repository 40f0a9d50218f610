//! Customer.io Track API v2 wire format: the operations devreg sends in
//! `POST /api/v2/batch` bodies. Field order is fixed so bodies are
//! byte-for-byte reproducible. A low layer: the feed and the state build
//! batches with it. The HTTP worker that delivers them drives a registry,
//! so it lives above it, in `crate::sync` (feature `sync`).

use serde::Serialize;

use crate::model::{Attributes, Platform};

pub use crate::limits::{MAX_BATCH_BODY_BYTES, MAX_OPERATION_BYTES};

#[derive(Serialize)]
struct Id<'a> {
    id: &'a str,
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
    to_json(&DeviceOp {
        kind: "person",
        identifiers: Id { id: person },
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
    to_json(&DeviceOp {
        kind: "person",
        identifiers: Id { id: person },
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
    to_json(&MergeOp {
        kind: "person",
        action: "merge",
        primary: Id { id: primary },
        secondary: Id { id: secondary },
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

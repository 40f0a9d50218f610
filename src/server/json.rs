//! The JSON shapes the server answers with: the same as the `devreg`
//! command prints (src/bin/devreg/output.rs and feed.rs), so that one
//! client parses both. tests/server.rs compares them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::Device;

/// A device as `devreg get` prints it (lowercase platform).
#[derive(Serialize)]
pub(crate) struct DeviceJson<'a> {
    token: &'a str,
    platform: &'static str,
    person: Option<&'a str>,
    last_seen_ms: u64,
    attributes: &'a BTreeMap<String, String>,
}

/// The printable form of a device.
pub(crate) fn device(d: &Device) -> DeviceJson<'_> {
    DeviceJson {
        token: &d.token,
        platform: d.platform.as_str(),
        person: d.person.as_deref(),
        last_seen_ms: d.last_seen_ms,
        attributes: &d.attributes,
    }
}

/// A device as a `devreg dump` line: an import line (`"op":"register"`).
#[derive(Serialize)]
pub(crate) struct DumpLine<'a> {
    op: &'static str,
    #[serde(flatten)]
    device: DeviceJson<'a>,
}

/// The dump form of a device.
pub(crate) fn dump_line(d: &Device) -> DumpLine<'_> {
    DumpLine {
        op: "register",
        device: device(d),
    }
}

/// A JSON string literal (for bodies built around raw JSON).
pub(crate) fn string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

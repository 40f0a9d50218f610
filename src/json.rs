//! The JSON shapes devreg prints and serves: what the `devreg` command
//! writes on stdout and what `devreg serve` answers are built here, once,
//! so that one client parses both (tests/server.rs and tests/remote.rs
//! compare them byte for byte). Field order is part of the contract.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::feed::{DeadLetter, SinkInfo};
use crate::model::{Deliverability, Device};
use crate::state::Stats;

/// A device as `devreg get` prints it. `Device`'s own serde form spells the
/// platform `Ios`/`Android`; the contract wants the lowercase wire name.
#[derive(Serialize)]
pub struct DeviceJson<'a> {
    token: &'a str,
    platform: &'static str,
    person: Option<&'a str>,
    last_seen_ms: u64,
    attributes: &'a BTreeMap<String, String>,
}

/// The printable form of a device.
pub fn device_json(d: &Device) -> DeviceJson<'_> {
    DeviceJson {
        token: &d.token,
        platform: d.platform.as_str(),
        person: d.person.as_deref(),
        last_seen_ms: d.last_seen_ms,
        attributes: &d.attributes,
    }
}

/// A device in `devreg person` (and `GET /v1/people/{id}/devices`): the
/// device's fields, then whether pushes to it are not suppressed
/// (`deliverable`) and what delivery feedback said (`deliverability`).
#[derive(Serialize)]
pub struct PersonDeviceJson<'a> {
    #[serde(flatten)]
    device: DeviceJson<'a>,
    deliverable: bool,
    deliverability: &'a Deliverability,
}

/// The `person` form of a device with its deliverability.
pub fn person_device(d: &(Device, Deliverability, bool)) -> PersonDeviceJson<'_> {
    PersonDeviceJson {
        device: device_json(&d.0),
        deliverable: !d.2,
        deliverability: &d.1,
    }
}

/// Why `most-recent` found nothing: `no device[ on P][ that is
/// deliverable] for person "ID"` (the CLI's and the server's words).
pub fn no_most_recent(
    person: &str,
    platform: Option<crate::model::Platform>,
    deliverable: bool,
) -> String {
    let on = platform.map_or(String::new(), |p| format!(" on {p}"));
    let which = if deliverable {
        " that is deliverable"
    } else {
        ""
    };
    format!("no device{on}{which} for person {person:?}")
}

/// A `dump` line: the device as an import line (`"op":"register"`, which
/// takes `last_seen_ms` for `seen_ms`), so `devreg dump | devreg --db NEW
/// import -` recreates the devices.
#[derive(Serialize)]
pub struct DumpLine<'a> {
    op: &'static str,
    #[serde(flatten)]
    device: DeviceJson<'a>,
}

/// The `dump` form of a device.
pub fn dump_line(d: &Device) -> DumpLine<'_> {
    DumpLine {
        op: "register",
        device: device_json(d),
    }
}

/// `stats`: the registry's counters plus every sink's position.
#[derive(Serialize)]
pub struct StatsJson {
    /// The counters, flattened into the object.
    #[serde(flatten)]
    pub stats: Stats,
    /// Every sink's position.
    pub sinks: Vec<SinkInfo>,
}

/// A JSON string literal.
fn string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The answer to `sinks add`: `{"added","diagnostics","format","identifier","pending","sink"}`.
pub fn sink_added(
    sink: &str,
    added: bool,
    settings: &crate::format::SinkSettings,
    pending: u64,
) -> serde_json::Value {
    serde_json::json!({
        "sink": sink,
        "added": added,
        "format": settings.format.as_str(),
        "identifier": settings.identifier.as_str(),
        "diagnostics": settings.diagnostics,
        "pending": pending,
    })
}

/// An exported batch: `{"batch_id":ID,"body":BODY}`, the body embedded
/// verbatim (byte for byte what is sent to Customer.io).
pub fn batch_line(id: &str, body: &str) -> String {
    format!("{{\"batch_id\":{},\"body\":{body}}}", string(id))
}

/// The answer to an ack or nack: `{"acked":ID,"failed":N,"already_acked":B}`;
/// a batch acknowledged before counts no failures this time.
pub fn ack_line(batch_id: &str, failed: usize, already_acked: bool) -> String {
    let failed = if already_acked { 0 } else { failed };
    format!(
        "{{\"acked\":{},\"failed\":{failed},\"already_acked\":{already_acked}}}",
        string(batch_id)
    )
}

/// A sink's dead letters as one JSON array, oldest first; each operation is
/// embedded verbatim.
pub fn dead_letters_line(dead: &[DeadLetter]) -> String {
    let mut line = String::from("[");
    for (i, d) in dead.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&format!(
            "{{\"batch_id\":{},\"index\":{},\"reason\":{},\"operation\":{}}}",
            string(&d.batch_id),
            d.index,
            string(&d.reason),
            d.operation
        ));
    }
    line.push(']');
    line
}

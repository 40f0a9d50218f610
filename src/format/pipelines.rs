//! Customer.io Data Pipelines as a sink format: `track` calls of the
//! semantic events `Device Created or Updated` and `Device Deleted`, sent
//! in `POST /v1/batch` bodies (`{"batch":[call]}`).
//!
//! A call: `type` `track`, `userId` the person, `event`, `context.device`
//! with `token` (and `type`, `ios` or `android`, on an add), `properties`
//! the device's attributes, `timestamp` (ISO-8601, from `last_seen_ms`,
//! on an add) and `messageId`. Field order is fixed, so a call is
//! byte-for-byte reproducible. The `messageId` is derived from the
//! operation's place (sink, batch number, index) and its content: a
//! re-sent batch (the in-flight batch is stored as built) repeats it, and
//! no two operations of a sink share one. Pipelines has no merge (see
//! [`SinkFormat::merges`]), and a batch's `context` is shared by all its
//! calls (DESIGN.md 19.3), so each request holds one call.

use serde::Serialize;

use super::{Change, FormatKind, IdentifierKind, OpSlot, SinkFormat};
use crate::limits::{MAX_PIPELINES_CALLS_PER_REQUEST, MAX_PIPELINES_CALL_BYTES};
use crate::model::Attributes;

/// The semantic event that creates or updates a device.
pub const DEVICE_UPDATED: &str = "Device Created or Updated";
/// The semantic event that deletes a device.
pub const DEVICE_DELETED: &str = "Device Deleted";

/// The Pipelines format of a sink naming persons by `identifier` (`id` or
/// `email`, both sent as `userId`).
#[derive(Clone, Copy, Debug)]
pub struct Pipelines {
    identifier: IdentifierKind,
}

impl Pipelines {
    /// Pipelines naming persons by `identifier`.
    pub fn new(identifier: IdentifierKind) -> Pipelines {
        Pipelines { identifier }
    }
}

#[derive(Serialize)]
struct Device<'a> {
    token: &'a str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
}

#[derive(Serialize)]
struct Context<'a> {
    device: Device<'a>,
}

/// A diagnostic event: a custom `track` call without a device context.
#[derive(Serialize)]
struct EventCall<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    event: &'static str,
    properties: std::collections::BTreeMap<&'static str, String>,
    timestamp: String,
    #[serde(rename = "messageId")]
    message_id: String,
}

#[derive(Serialize)]
struct Call<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    event: &'static str,
    context: Context<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a Attributes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(rename = "messageId")]
    message_id: String,
}

impl SinkFormat for Pipelines {
    fn kind(&self) -> FormatKind {
        FormatKind::Pipelines
    }

    fn identifier(&self) -> IdentifierKind {
        self.identifier
    }

    /// ```
    /// use devreg::format::{Change, DeviceView, IdentifierKind, OpSlot, Pipelines, SinkFormat};
    /// let device = DeviceView { token: "ab12".into(), platform: devreg::Platform::Ios,
    ///     last_seen_ms: 1_700_000_000_123, attributes: Default::default() };
    /// let at = OpSlot { sink: "cdp", batch: 7, index: 0 };
    /// let call = Pipelines::new(IdentifierKind::Id)
    ///     .render(&Change::Added { person: "42", device: &device }, &at);
    /// assert!(call.starts_with(r#"{"type":"track","userId":"42","event":"Device Created or Updated","context":{"device":{"token":"ab12","type":"ios"}},"properties":{},"timestamp":"2023-11-14T22:13:20.123Z","messageId":"devreg-cdp-7-0-"#));
    /// ```
    fn render(&self, change: &Change<'_>, at: &OpSlot<'_>) -> String {
        let mut call = match *change {
            Change::Added { person, device } => Call {
                kind: "track",
                user_id: self.identifier.wire_value(person).unwrap_or(person),
                event: DEVICE_UPDATED,
                context: Context {
                    device: Device {
                        token: &device.token,
                        kind: Some(device.platform.as_str()),
                    },
                },
                properties: Some(&device.attributes),
                timestamp: Some(iso8601_ms(device.last_seen_ms)),
                message_id: String::new(),
            },
            Change::Deleted { person, token } => Call {
                kind: "track",
                user_id: self.identifier.wire_value(person).unwrap_or(person),
                event: DEVICE_DELETED,
                context: Context {
                    device: Device { token, kind: None },
                },
                properties: None,
                timestamp: None,
                message_id: String::new(),
            },
            Change::Event { person, event } => {
                let mut call = EventCall {
                    kind: "track",
                    user_id: self.identifier.wire_value(person).unwrap_or(person),
                    event: event.kind.name(),
                    properties: event.properties(),
                    timestamp: iso8601_ms(event.at_ms),
                    message_id: String::new(),
                };
                call.message_id = message_id(&call, at);
                return serde_json::to_string(&call).unwrap_or_default();
            }
            // Never rendered: the feed sends a merge as device moves.
            Change::Merged { .. } => return String::new(),
        };
        call.message_id = message_id(&call, at);
        // Serializing plain structs of strings cannot fail.
        serde_json::to_string(&call).unwrap_or_default()
    }

    fn max_operation_bytes(&self) -> usize {
        MAX_PIPELINES_CALL_BYTES
    }

    fn max_operations(&self) -> usize {
        MAX_PIPELINES_CALLS_PER_REQUEST
    }

    fn merges(&self) -> bool {
        false
    }
}

/// `devreg-{sink}-{batch}-{index}-{crc}`, `crc` the CRC-32 of the call as
/// rendered so far (its `messageId` empty): the id changes with the content.
fn message_id<T: Serialize>(call: &T, at: &OpSlot<'_>) -> String {
    let content = serde_json::to_string(call).unwrap_or_default();
    format!(
        "devreg-{}-{}-{}-{:08x}",
        at.sink,
        at.batch,
        at.index,
        crc32fast::hash(content.as_bytes())
    )
}

/// Unix milliseconds as ISO-8601 UTC with milliseconds,
/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (the date from `model::civil_from_days`).
///
/// ```
/// assert_eq!(devreg::format::iso8601_ms(0), "1970-01-01T00:00:00.000Z");
/// assert_eq!(devreg::format::iso8601_ms(951_782_400_001), "2000-02-29T00:00:00.001Z");
/// ```
pub fn iso8601_ms(ms: u64) -> String {
    let (secs, millis) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (year, month, d) = crate::model::civil_from_days(days);
    format!("{year:04}-{month:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_known_dates() {
        assert_eq!(iso8601_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(iso8601_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(
            iso8601_ms(crate::limits::MAX_TIMESTAMP_MS),
            "3000-01-01T00:00:00.000Z"
        );
        assert_eq!(iso8601_ms(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
    }
}

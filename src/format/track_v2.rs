//! Customer.io Track API v2 as a sink format: `add_device`, `delete_device`
//! and `merge` operations in `POST /api/v2/batch` bodies, rendered by
//! `crate::customerio`. With identifier kind `id` the bytes are the ones
//! devreg sent before formats existed (the golden tests hold them).

use super::{Change, FormatKind, IdentifierKind, OpSlot, SinkFormat};
use crate::customerio::{add_device_as, delete_device_as, merge_as};
use crate::limits::{MAX_OPERATION_BYTES, MAX_OPS_LIMIT};

/// The Track v2 format of a sink naming persons by `identifier`.
#[derive(Clone, Copy, Debug)]
pub struct TrackV2 {
    identifier: IdentifierKind,
}

impl TrackV2 {
    /// Track v2 naming persons by `identifier`.
    pub fn new(identifier: IdentifierKind) -> TrackV2 {
        TrackV2 { identifier }
    }

    fn value<'a>(&self, person: &'a str) -> &'a str {
        self.identifier.wire_value(person).unwrap_or(person)
    }
}

impl SinkFormat for TrackV2 {
    fn kind(&self) -> FormatKind {
        FormatKind::TrackV2
    }

    fn identifier(&self) -> IdentifierKind {
        self.identifier
    }

    /// ```
    /// use devreg::format::{Change, IdentifierKind, OpSlot, SinkFormat, TrackV2};
    /// let at = OpSlot { sink: "s", batch: 1, index: 0 };
    /// let op = TrackV2::new(IdentifierKind::Email)
    ///     .render(&Change::Deleted { person: "a@b.io", token: "ab12" }, &at);
    /// assert_eq!(op, r#"{"type":"person","identifiers":{"email":"a@b.io"},"action":"delete_device","device":{"token":"ab12"}}"#);
    /// ```
    fn render(&self, change: &Change<'_>, _at: &OpSlot<'_>) -> String {
        let key = self.identifier.as_str();
        match *change {
            Change::Added { person, device } => add_device_as(
                key,
                self.value(person),
                &device.token,
                device.platform,
                device.last_seen_ms,
                &device.attributes,
            ),
            Change::Deleted { person, token } => delete_device_as(key, self.value(person), token),
            Change::Merged { primary, secondary } => {
                merge_as(key, self.value(primary), self.value(secondary))
            }
        }
    }

    fn max_operation_bytes(&self) -> usize {
        MAX_OPERATION_BYTES
    }

    fn max_operations(&self) -> usize {
        MAX_OPS_LIMIT as usize
    }

    fn merges(&self) -> bool {
        true
    }
}

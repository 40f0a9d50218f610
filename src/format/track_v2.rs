//! Customer.io Track API v2 as a sink format: `add_device`, `delete_device`
//! and `merge` operations in `POST /api/v2/batch` bodies, rendered by
//! `crate::customerio`. With identifier kind `id` the bytes are the ones
//! devreg sent before formats existed (the golden tests hold them).

use super::{Change, FormatKind, IdentifierKind, OpSlot, SinkFormat};
use crate::customerio::{add_device_as, delete_device_as, event_as, merge_as};
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
    fn render(&self, change: &Change<'_>, at: &OpSlot<'_>) -> String {
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
            Change::Event { person, event } => {
                let attributes = event.properties();
                let content = format!("{}{:?}{}", at.sink, attributes, event.kind.name());
                let entropy = (u128::from(crc32fast::hash(content.as_bytes())) << 48)
                    | (u128::from(at.batch & 0xFFFF_FFFF) << 16)
                    | (at.index as u128 & 0xFFFF);
                event_as(
                    key,
                    self.value(person),
                    event.kind.name(),
                    &ulid(event.at_ms, entropy),
                    event.at_ms / 1000,
                    &attributes,
                )
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

/// A ULID (Crockford base32, 26 characters): 48 bits of `ms`, then the
/// low 80 bits of `entropy`. Deterministic, so a re-sent batch repeats it
/// (Track v2 de-duplicates events by it).
pub(crate) fn ulid(ms: u64, entropy: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value = (u128::from(ms & 0xFFFF_FFFF_FFFF) << 80) | (entropy & ((1u128 << 80) - 1));
    (0..26)
        .map(|i| {
            let shift = 125 - 5 * i;
            let digit = (value >> shift) & 31;
            char::from(ALPHABET.get(digit as usize).copied().unwrap_or(b'0'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_26_crockford_characters_led_by_the_time() {
        assert_eq!(ulid(0, 0), "00000000000000000000000000");
        assert_eq!(ulid(1, 0), "00000000010000000000000000");
        // The spec's largest valid ULID.
        assert_eq!(ulid(u64::MAX, u128::MAX), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        assert!(ulid(1_700_000_000_000, 5) < ulid(1_700_000_000_001, 0));
    }
}

//! Sink formats: the seam between the change feed and a sink's wire format.
//!
//! The feed decides *what* a sink must be told (a [`Change`]: a device
//! added to a person, a pair deleted, a merge) and hands a format a typed
//! view of it, never JSON. The format renders the operation and says what
//! it allows: the bytes of one operation, the operations that may share a
//! batch, whether it has merges at all. Nothing reads a rendered operation
//! back: the feed keeps what it needs (the pair, the effect) beside it.
//!
//! Two formats exist: Customer.io Track v2 (`track-v2`, `track_v2.rs`, the
//! original and default) and Customer.io Data Pipelines (`pipelines`,
//! `pipelines.rs`). A sink records its format and its identifier kind
//! ([`SinkSettings`]) in its metadata; a sink of an older database is
//! `track-v2` with `id`. A low layer: the feed builds batches with it.

mod event;
mod identifier;
mod pipelines;
mod track_v2;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Attributes, Platform};

pub use event::{EventKind, TokenEvent};
pub use identifier::IdentifierKind;
pub use pipelines::{iso8601_ms, Pipelines, DEVICE_DELETED, DEVICE_UPDATED};
pub use track_v2::TrackV2;

/// A sink's wire format.
///
/// Append-only: stored in the log (`Entry::AddSinkWith`) by its position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FormatKind {
    /// Customer.io Track API v2, `POST /api/v2/batch` (the default).
    #[default]
    TrackV2,
    /// Customer.io Data Pipelines, `POST /v1/batch` with `track` calls of
    /// the semantic device events.
    Pipelines,
}

impl FormatKind {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [FormatKind; 2] = [FormatKind::TrackV2, FormatKind::Pipelines];

    /// The name the CLI and the JSON answers use: `track-v2` or `pipelines`.
    pub fn as_str(self) -> &'static str {
        match self {
            FormatKind::TrackV2 => "track-v2",
            FormatKind::Pipelines => "pipelines",
        }
    }
}

impl fmt::Display for FormatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FormatKind {
    type Err = Error;

    /// ```
    /// use devreg::format::FormatKind;
    /// assert_eq!("pipelines".parse::<FormatKind>().unwrap(), FormatKind::Pipelines);
    /// let e = "x".parse::<FormatKind>().unwrap_err().to_string();
    /// assert_eq!(e, r#"invalid sink.format: "x" is not one of track-v2, pipelines"#);
    /// ```
    fn from_str(s: &str) -> Result<FormatKind> {
        FormatKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "sink.format",
                    format!("{s:?} is not one of track-v2, pipelines"),
                )
            })
    }
}

/// What a sink is: its format, how it names a person, and whether it
/// sends diagnostic events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SinkSettings {
    /// The wire format.
    pub format: FormatKind,
    /// Which Customer.io identifier a person is sent as.
    pub identifier: IdentifierKind,
    /// Whether a person's token changes (a rotation, an invalidation) are
    /// also sent as events ([`TokenEvent`]); off by default.
    pub diagnostics: bool,
}

impl SinkSettings {
    /// Settings of `format` with `identifier`, checked together.
    ///
    /// ```
    /// use devreg::format::{FormatKind, IdentifierKind, SinkSettings};
    /// assert!(SinkSettings::new(FormatKind::TrackV2, IdentifierKind::CioId).is_ok());
    /// assert!(SinkSettings::new(FormatKind::Pipelines, IdentifierKind::CioId).is_err());
    /// ```
    pub fn new(format: FormatKind, identifier: IdentifierKind) -> Result<SinkSettings> {
        let s = SinkSettings {
            format,
            identifier,
            diagnostics: false,
        };
        s.validate()?;
        Ok(s)
    }

    /// Pipelines names a person by `userId` (an id, or an email where the
    /// workspace identifies by email); it has no way to send a `cio_id`.
    pub fn validate(&self) -> Result<()> {
        if self.format == FormatKind::Pipelines && self.identifier == IdentifierKind::CioId {
            return Err(Error::invalid(
                "sink.identifier",
                "cio_id is not supported by format pipelines (its userId is an id or an email)",
            ));
        }
        Ok(())
    }

    /// The same settings, sending diagnostic events or not.
    pub fn with_diagnostics(mut self, on: bool) -> SinkSettings {
        self.diagnostics = on;
        self
    }

    /// Whether these are the settings of a sink made before formats
    /// (`track-v2` with `id`, no diagnostic events); answers leave such
    /// settings out.
    pub fn is_default(&self) -> bool {
        *self == SinkSettings::default()
    }

    /// The format that renders this sink's operations.
    pub(crate) fn renderer(&self) -> Box<dyn SinkFormat> {
        match self.format {
            FormatKind::TrackV2 => Box::new(TrackV2::new(self.identifier)),
            FormatKind::Pipelines => Box::new(Pipelines::new(self.identifier)),
        }
    }
}

/// A device as the feed hands it to a format: its current truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// The push token, as registered.
    pub token: String,
    /// `ios` or `android`.
    pub platform: Platform,
    /// Last seen, Unix milliseconds.
    pub last_seen_ms: u64,
    /// The device's attributes.
    pub attributes: Attributes,
}

/// What a sink must be told about one pair or merge.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// `person` owns `device` now (added or updated).
    Added {
        /// The owner.
        person: &'a str,
        /// The device's current truth.
        device: &'a DeviceView,
    },
    /// `person` no longer owns the device with `token`.
    Deleted {
        /// The former owner.
        person: &'a str,
        /// The token, as registered.
        token: &'a str,
    },
    /// `secondary` was merged into `primary`.
    Merged {
        /// The person that stays.
        primary: &'a str,
        /// The person merged away.
        secondary: &'a str,
    },
    /// A diagnostic event about one of `person`'s tokens.
    Event {
        /// The owner.
        person: &'a str,
        /// What happened.
        event: &'a TokenEvent,
    },
}

impl Change<'_> {
    /// The persons the operation names, for the identifier check.
    pub fn persons(&self) -> [Option<&str>; 2] {
        match *self {
            Change::Added { person, .. }
            | Change::Deleted { person, .. }
            | Change::Event { person, .. } => [Some(person), None],
            Change::Merged { primary, secondary } => [Some(primary), Some(secondary)],
        }
    }
}

/// Where an operation goes: the sink, the batch's number and the index in
/// it. A format may derive ids from it (Pipelines' `messageId`): an
/// in-flight batch is stored as built, so a re-sent batch repeats them.
#[derive(Clone, Copy, Debug)]
pub struct OpSlot<'a> {
    /// The sink's name.
    pub sink: &'a str,
    /// The batch's number.
    pub batch: u64,
    /// The operation's index in the batch.
    pub index: usize,
}

/// A sink format: renders operations and states its limits.
pub trait SinkFormat {
    /// Which format this is.
    fn kind(&self) -> FormatKind;
    /// The identifier kind persons are sent as.
    fn identifier(&self) -> IdentifierKind;
    /// The operation for `change`, as a JSON object. A person that is not
    /// a valid value of the identifier kind is rendered as it is (the
    /// operation is only shown in a dead letter, never sent).
    fn render(&self, change: &Change<'_>, at: &OpSlot<'_>) -> String;
    /// Most bytes of one rendered operation.
    fn max_operation_bytes(&self) -> usize;
    /// Most operations that may share one batch (one request).
    fn max_operations(&self) -> usize;
    /// Whether the format has a merge. Without one, a merge is sent as what
    /// it does to devices: each of the secondary's devices is deleted from
    /// it and added to the primary (the feed holds those pairs already).
    fn merges(&self) -> bool;

    /// Why `change` can never be sent (a person that is not a valid value
    /// of the identifier kind), or `None`.
    fn refusal(&self, change: &Change<'_>) -> Option<String> {
        let kind = self.identifier();
        change
            .persons()
            .into_iter()
            .flatten()
            .find_map(|p| kind.wire_value(p).err())
    }
}

/// Both formats frame a batch as `{"batch":[op,...]}`.
pub(crate) use crate::customerio::{batch_body, body_growth, EMPTY_BODY_BYTES};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_track_v2_by_id() {
        let s = SinkSettings::default();
        assert_eq!(
            (s.format, s.identifier),
            (FormatKind::TrackV2, IdentifierKind::Id)
        );
        assert!(s.is_default());
        let e = SinkSettings::new(FormatKind::Pipelines, IdentifierKind::CioId).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid sink.identifier: "),
            "{e}"
        );
    }
}

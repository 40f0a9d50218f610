//! Diagnostic events: a person's token changes, sent (by sinks whose
//! settings ask for them) as a custom event beside the device operations,
//! so a Customer.io workspace can see why a device went or came.
//!
//! `device_token_rotated` (properties `old_token`, `new_token`,
//! `platform`): the app reported a new token for a device (`rotate`).
//! `device_token_invalidated` (`token`, `platform`, `provider_ms`): the
//! push provider said the token is no longer valid and devreg removed it
//! (`invalidate`). Both are sent once each (an item of the feed, delivered
//! or dead-lettered like any other), in feed order with the device
//! operations of the same change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Platform;

/// What happened to a token.
///
/// Append-only: stored (bincode) by its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    /// A device's token was replaced by a new one (`rotate`).
    TokenRotated,
    /// The push provider invalidated a token (`invalidate`).
    TokenInvalidated,
}

impl EventKind {
    /// The event's name on the Customer.io side.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::TokenRotated => "device_token_rotated",
            EventKind::TokenInvalidated => "device_token_invalidated",
        }
    }
}

/// A diagnostic event about one token of a person.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenEvent {
    /// What happened.
    pub kind: EventKind,
    /// The token concerned (for a rotation, the old one), as registered.
    pub token: String,
    /// A rotation's new token.
    pub new_token: Option<String>,
    /// The device's platform.
    pub platform: Platform,
    /// When it happened, Unix ms: the rotation's `seen_ms`, or the
    /// provider's time of an invalidation.
    pub at_ms: u64,
}

impl TokenEvent {
    /// The event's properties (attributes), in a fixed order.
    pub fn properties(&self) -> BTreeMap<&'static str, String> {
        let mut p = BTreeMap::new();
        p.insert("platform", self.platform.as_str().to_owned());
        match self.kind {
            EventKind::TokenRotated => {
                p.insert("old_token", self.token.clone());
                p.insert("new_token", self.new_token.clone().unwrap_or_default());
            }
            EventKind::TokenInvalidated => {
                p.insert("token", self.token.clone());
                p.insert("provider_ms", self.at_ms.to_string());
            }
        }
        p
    }
}

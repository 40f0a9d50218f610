//! Public types (devices, operations, outcomes) and their validation.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::*;

/// A device's attributes: name to string value, kept sorted by name.
pub type Attributes = BTreeMap<String, String>;

/// The push platform of a device.
///
/// Append-only: written to the log (bincode), where a variant's position
/// is its tag; new variants go last, none is removed or reordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple devices (APNs or FCM tokens).
    Ios,
    /// Android devices (FCM tokens).
    Android,
}

impl Platform {
    /// Both platforms, in index order.
    pub const ALL: [Platform; 2] = [Platform::Ios, Platform::Android];

    /// The lowercase wire name: `ios` or `android`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Platform::Ios => 0,
            Platform::Android => 1,
        }
    }

    pub(crate) fn from_index(i: u8) -> Option<Platform> {
        match i {
            0 => Some(Platform::Ios),
            1 => Some(Platform::Android),
            _ => None,
        }
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// Parses `ios` or `android`, ignoring ASCII case.
    ///
    /// ```
    /// use devreg::Platform;
    /// assert_eq!("iOS".parse::<Platform>().unwrap(), Platform::Ios);
    /// assert!("windows".parse::<Platform>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("ios") {
            Ok(Platform::Ios)
        } else if s.eq_ignore_ascii_case("android") {
            Ok(Platform::Android)
        } else {
            Err(Error::invalid(
                "platform",
                format!("{s:?} is not \"ios\" or \"android\""),
            ))
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One device as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The push token.
    pub token: String,
    /// `ios` or `android`.
    pub platform: Platform,
    /// The owner, or `None` for an anonymous install.
    pub person: Option<String>,
    /// When the device was last seen, Unix milliseconds.
    pub last_seen_ms: u64,
    /// Device attributes.
    pub attributes: Attributes,
}

/// What `logout` does with the device.
///
/// Append-only: written to the log (bincode), where a variant's position
/// is its tag; new variants go last, none is removed or reordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogoutPolicy {
    /// Keep the device, anonymous.
    Keep,
    /// Delete the device.
    Remove,
}

impl FromStr for LogoutPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "keep" => Ok(LogoutPolicy::Keep),
            "remove" => Ok(LogoutPolicy::Remove),
            _ => Err(Error::invalid(
                "policy",
                format!("{s:?} is not \"keep\" or \"remove\""),
            )),
        }
    }
}

/// The arguments of a register (upsert).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The push token.
    pub token: String,
    /// The platform; replaces the stored one.
    pub platform: Platform,
    /// The owner; `None` keeps the current owner (or none for a new token).
    pub person: Option<String>,
    /// When the device was seen; `last_seen_ms` becomes the max of this and the old value.
    pub seen_ms: u64,
    /// New attributes; `None` keeps the current ones.
    pub attributes: Option<Attributes>,
}

/// One registry operation. Every operation is atomic.
///
/// Append-only: written to the log (bincode), where a variant's position
/// is its tag; new variants go last, none is removed or reordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Insert or update a device.
    Register(Register),
    /// The device was seen again.
    Touch {
        /// The token.
        token: String,
        /// When it was seen.
        seen_ms: u64,
    },
    /// The app got a new token; the record moves to it.
    Rotate {
        /// The token being replaced.
        old_token: String,
        /// The replacement.
        new_token: String,
        /// When the new token was seen.
        seen_ms: u64,
    },
    /// The person logged out on this device.
    Logout {
        /// The token.
        token: String,
        /// Keep the device anonymous or delete it.
        policy: LogoutPolicy,
    },
    /// Two profiles become one: every device of `secondary` moves to `primary`.
    Merge {
        /// The surviving person.
        primary: String,
        /// The person merged away.
        secondary: String,
    },
    /// The app was uninstalled.
    Remove {
        /// The token.
        token: String,
    },
    /// The push provider reported the token dead at `provider_ms`.
    Invalidate {
        /// The token.
        token: String,
        /// The provider's timestamp.
        provider_ms: u64,
    },
    /// Delete every device last seen before `before_ms`.
    Prune {
        /// The cut-off.
        before_ms: u64,
    },
    /// What happened to a push sent to the device (DESIGN.md section 20).
    Feedback {
        /// The token the push went to.
        token: String,
        /// Delivered, failed, or the provider says the token is dead.
        outcome: FeedbackOutcome,
        /// When it happened (the provider's or the sender's time), Unix ms.
        at_ms: u64,
        /// Why it failed, as the sender reported it (logged only).
        reason: Option<String>,
    },
}

/// The outcome of one push, reported as delivery feedback.
///
/// Append-only: written to the log (bincode), where a variant's position
/// is its tag; new variants go last, none is removed or reordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackOutcome {
    /// The push reached the device.
    Delivered,
    /// The push failed in a way that may pass (throttled, timed out).
    SoftFailure,
    /// The push failed in a way that will not pass by retrying.
    HardFailure,
    /// The provider says the token is no longer registered: the
    /// invalidate rule applies (delete iff `last_seen_ms <= at_ms`).
    Unregistered,
}

impl FeedbackOutcome {
    /// Every outcome, in tag order.
    pub const ALL: [FeedbackOutcome; 4] = [
        FeedbackOutcome::Delivered,
        FeedbackOutcome::SoftFailure,
        FeedbackOutcome::HardFailure,
        FeedbackOutcome::Unregistered,
    ];

    /// The wire name: `delivered`, `soft_failure`, `hard_failure`, `unregistered`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackOutcome::Delivered => "delivered",
            FeedbackOutcome::SoftFailure => "soft_failure",
            FeedbackOutcome::HardFailure => "hard_failure",
            FeedbackOutcome::Unregistered => "unregistered",
        }
    }
}

impl FromStr for FeedbackOutcome {
    type Err = Error;

    /// Parses a wire name (exact, lowercase).
    ///
    /// ```
    /// use devreg::FeedbackOutcome;
    /// assert_eq!("hard_failure".parse::<FeedbackOutcome>().unwrap(), FeedbackOutcome::HardFailure);
    /// let e = "x".parse::<FeedbackOutcome>().unwrap_err().to_string();
    /// assert!(e.contains("feedback.outcome"), "{e}");
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        FeedbackOutcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "feedback.outcome",
                    format!(
                        "{s:?} is not one of delivered, soft_failure, hard_failure, unregistered"
                    ),
                )
            })
    }
}

impl fmt::Display for FeedbackOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the registry knows about pushes to one device (from delivery
/// feedback). A device that never had feedback has the default: nothing
/// known, not suppressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Deliverability {
    /// Time of the latest `delivered` feedback, Unix ms.
    pub last_delivered_ms: Option<u64>,
    /// Consecutive soft failures since the last delivery (and since the
    /// device was last seen before the first of them).
    pub soft_failures: u32,
    /// Time of the latest soft failure, Unix ms.
    pub last_soft_failure_ms: Option<u64>,
    /// Time of the latest hard failure, Unix ms.
    pub last_hard_failure_ms: Option<u64>,
}

impl Deliverability {
    /// Whether pushes to a device last seen at `last_seen_ms` are
    /// suppressed: a hard failure after it was last seen, or at least
    /// `soft_limit` consecutive soft failures, the latest after it was
    /// last seen. Seeing the device again lifts both.
    pub fn suppressed(&self, last_seen_ms: u64, soft_limit: u32) -> bool {
        let hard = self.last_hard_failure_ms.is_some_and(|h| h > last_seen_ms);
        let soft = self.soft_failures >= soft_limit
            && self.last_soft_failure_ms.is_some_and(|s| s > last_seen_ms);
        hard || soft
    }

    /// Applies one feedback (not `unregistered`) of time `at_ms` to a device
    /// last seen at `last_seen_ms`; returns whether anything changed.
    pub(crate) fn record(
        &mut self,
        outcome: FeedbackOutcome,
        at_ms: u64,
        last_seen_ms: u64,
    ) -> bool {
        let before = *self;
        match outcome {
            FeedbackOutcome::Delivered => {
                self.last_delivered_ms =
                    Some(self.last_delivered_ms.map_or(at_ms, |d| d.max(at_ms)));
                if self.last_soft_failure_ms.is_none_or(|s| s <= at_ms) {
                    self.soft_failures = 0;
                }
            }
            FeedbackOutcome::SoftFailure => {
                // A delivery since, or a failure at or before the latest one
                // counted: a replay (a webhook delivered again, perhaps to a
                // restarted server that forgot its ids) or one out of order,
                // so every feedback is idempotent on (token, time).
                if self.last_delivered_ms.is_some_and(|d| d >= at_ms)
                    || self.last_soft_failure_ms.is_some_and(|s| at_ms <= s)
                {
                    return false;
                }
                // Failures from before the device was last seen do not count.
                if self.last_soft_failure_ms.is_none_or(|s| s <= last_seen_ms) {
                    self.soft_failures = 0;
                }
                self.soft_failures = self.soft_failures.saturating_add(1);
                self.last_soft_failure_ms =
                    Some(self.last_soft_failure_ms.map_or(at_ms, |s| s.max(at_ms)));
            }
            FeedbackOutcome::HardFailure => {
                self.last_hard_failure_ms =
                    Some(self.last_hard_failure_ms.map_or(at_ms, |h| h.max(at_ms)));
            }
            FeedbackOutcome::Unregistered => {}
        }
        *self != before
    }
}

/// What an operation did. It says whether anything changed (a token that
/// is not registered is `NotFound`, not an error), so it is `#[must_use]`:
/// ignore it with `let _ =` where that is meant. New kinds may be added:
/// match with a wildcard arm.
///
/// ```compile_fail,E0004
/// // A match without a wildcard arm does not compile.
/// fn name(o: devreg::Outcome) -> &'static str {
///     match o {
///         devreg::Outcome::Applied { .. } => "applied",
///         devreg::Outcome::NotFound => "not found",
///         devreg::Outcome::Skipped => "skipped",
///     }
/// }
/// ```
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// // An outcome dropped unlooked-at is a warning (here: an error).
/// let dir = tempfile::tempdir().unwrap();
/// let reg = devreg::Registry::open(dir.path().join("db")).unwrap();
/// reg.remove("nosuch").unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[must_use = "an Outcome says whether the operation changed anything (NotFound, Skipped)"]
#[non_exhaustive]
pub enum Outcome {
    /// The operation was applied. `devices` counts the devices it wrote or deleted
    /// (0 for an update that changed nothing), `evicted` those the per-person cap removed.
    Applied {
        /// Devices written or deleted.
        devices: u32,
        /// Devices evicted by the per-person cap.
        evicted: u32,
    },
    /// The token is not registered; nothing changed.
    NotFound,
    /// `invalidate` found the device seen after the provider's timestamp; it is kept.
    Skipped,
}

impl Outcome {
    /// Whether the operation was applied ([`Outcome::Applied`]); every
    /// other kind changed nothing.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied { .. })
    }

    pub(crate) fn applied(devices: u32) -> Outcome {
        Outcome::Applied {
            devices,
            evicted: 0,
        }
    }
}

/// One (person, token) pair to send to a sink again (`Registry::remark`):
/// the drift audit found Customer.io's view of it out of step (DESIGN.md
/// 20.8). The sink's next export sends the pair's current truth.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RemarkPair {
    /// The person (in the sink's identifier).
    pub person: String,
    /// The device token.
    pub token: String,
    /// Whether Customer.io holds the token on the person now, as the audit
    /// read it: then a pair devreg does not hold is sent as a delete.
    pub held: bool,
}

impl RemarkPair {
    /// Checks the person and the token.
    pub fn validate(&self) -> Result<()> {
        validate_person("person", &self.person)?;
        validate_token("token", &self.token)
    }

    /// Bytes the pair takes in a log record, at most.
    pub fn encoded_len(&self) -> usize {
        self.person.len() + self.token.len() + 16
    }
}

/// Checks a token: visible ASCII, 1..=4096 bytes.
pub fn validate_token(field: &str, token: &str) -> Result<()> {
    if token.is_empty() {
        return Err(Error::invalid(field, "is empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, the limit is {MAX_TOKEN_BYTES}", token.len()),
        ));
    }
    if let Some(pos) = token.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(Error::invalid(
            field,
            format!("byte {pos} is not visible ASCII (0x21..=0x7E)"),
        ));
    }
    Ok(())
}

/// Checks a person id: 1..=150 bytes of UTF-8 without control characters.
pub fn validate_person(field: &str, person: &str) -> Result<()> {
    if person.is_empty() {
        return Err(Error::invalid(field, "is empty"));
    }
    if person.len() > MAX_PERSON_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, the limit is {MAX_PERSON_BYTES}", person.len()),
        ));
    }
    if person.chars().any(char::is_control) {
        return Err(Error::invalid(field, "contains a control character"));
    }
    Ok(())
}

/// Checks a timestamp: at most the year 3000.
pub fn validate_time(field: &str, ms: u64) -> Result<()> {
    if ms > MAX_TIMESTAMP_MS {
        return Err(Error::invalid(
            field,
            format!("{ms} is after the year 3000 ({MAX_TIMESTAMP_MS} ms)"),
        ));
    }
    Ok(())
}

/// Counts bytes written to it, keeping none.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of the attributes as serde_json writes them, counted without
/// building the string (every validated register used to allocate it and
/// grow it two or three times; DESIGN 13 step 10).
fn json_len(attributes: &Attributes) -> usize {
    let mut counter = ByteCounter(0);
    match serde_json::to_writer(&mut counter, attributes) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// Checks attributes: at most 100, names 1..=150 bytes not starting with `_`,
/// values at most 1000 bytes.
pub fn validate_attributes(attributes: &Attributes) -> Result<()> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(
            "attributes",
            format!(
                "has {} entries, the limit is {MAX_ATTRIBUTES}",
                attributes.len()
            ),
        ));
    }
    let json_bytes = json_len(attributes);
    if json_bytes > MAX_ATTRIBUTES_JSON_BYTES {
        return Err(Error::invalid(
            "attributes",
            format!(
                "encode to {json_bytes} bytes of JSON, the limit is {MAX_ATTRIBUTES_JSON_BYTES}"
            ),
        ));
    }
    for (name, value) in attributes {
        if name.is_empty() {
            return Err(Error::invalid("attributes", "an attribute name is empty"));
        }
        if name.len() > MAX_ATTRIBUTE_NAME_BYTES {
            return Err(Error::invalid(
                "attributes",
                format!(
                    "name {name:.40?}... is {} bytes, the limit is {MAX_ATTRIBUTE_NAME_BYTES}",
                    name.len()
                ),
            ));
        }
        if name.starts_with('_') {
            return Err(Error::invalid(
                format!("attributes.{name}"),
                "names starting with '_' are reserved by Customer.io",
            ));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(Error::invalid(
                format!("attributes.{name}"),
                format!(
                    "value is {} bytes, the limit is {MAX_ATTRIBUTE_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

impl Op {
    /// Bytes this operation takes in a log record, to bound batches by
    /// size as well as by count (see [`Registry::max_batch_bytes`](crate::Registry::max_batch_bytes)).
    pub fn encoded_len(&self) -> usize {
        use bincode::Options;
        // One byte of entry tag, then the operation.
        crate::codec::bincode_opts()
            .serialized_size(self)
            .map_or(usize::MAX, |n| {
                usize::try_from(n).unwrap_or(usize::MAX).saturating_add(1)
            })
    }

    /// Checks every field of the operation against devreg's limits.
    ///
    /// ```
    /// use devreg::Op;
    /// let op = Op::Touch { token: "".into(), seen_ms: 1 };
    /// assert_eq!(op.validate().unwrap_err().to_string(), "invalid token: is empty");
    /// ```
    pub fn validate(&self) -> Result<()> {
        match self {
            Op::Register(r) => {
                validate_token("token", &r.token)?;
                if let Some(p) = &r.person {
                    validate_person("person", p)?;
                }
                validate_time("seen_ms", r.seen_ms)?;
                if let Some(a) = &r.attributes {
                    validate_attributes(a)?;
                }
                Ok(())
            }
            Op::Touch { token, seen_ms } => {
                validate_token("token", token)?;
                validate_time("seen_ms", *seen_ms)
            }
            Op::Rotate {
                old_token,
                new_token,
                seen_ms,
            } => {
                validate_token("old_token", old_token)?;
                validate_token("new_token", new_token)?;
                if old_token == new_token {
                    return Err(Error::invalid("new_token", "equals old_token"));
                }
                validate_time("seen_ms", *seen_ms)
            }
            Op::Logout { token, .. } | Op::Remove { token } => validate_token("token", token),
            Op::Merge { primary, secondary } => {
                validate_person("primary", primary)?;
                validate_person("secondary", secondary)?;
                if primary == secondary {
                    return Err(Error::invalid("secondary", "equals primary"));
                }
                Ok(())
            }
            Op::Invalidate { token, provider_ms } => {
                validate_token("token", token)?;
                validate_time("provider_ms", *provider_ms)
            }
            Op::Prune { before_ms } => validate_time("before_ms", *before_ms),
            Op::Feedback {
                token,
                at_ms,
                reason,
                ..
            } => {
                validate_token("token", token)?;
                validate_time("at_ms", *at_ms)?;
                match reason {
                    Some(r) if r.len() > MAX_FEEDBACK_REASON_BYTES => Err(Error::invalid(
                        "feedback.reason",
                        format!("is longer than {MAX_FEEDBACK_REASON_BYTES} bytes"),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// How many leading characters of a token reports show (see [`token_label`]).
pub(crate) const TOKEN_LABEL_CHARS: usize = 8;

/// A token as reports show it: its first characters, "…" and its length,
/// e.g. `f4c2a9b1…(64 bytes)`. A push token lets anyone who holds it message
/// the device, and `check` reports get pasted into tickets and logs.
pub(crate) fn token_label(token: &str) -> String {
    let head = token
        .char_indices()
        .nth(TOKEN_LABEL_CHARS)
        .and_then(|(end, _)| token.get(..end))
        .unwrap_or(token);
    format!("{head}…({} bytes)", token.len())
}

/// [`token_label`] for stored token bytes that do not decode: the first
/// bytes in hex.
pub(crate) fn token_bytes_label(bytes: &[u8]) -> String {
    let head: String = bytes
        .iter()
        .take(TOKEN_LABEL_CHARS / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("0x{head}…({} bytes)", bytes.len())
}

/// Checks a per-person cap: 1 to `MAX_DEVICES_PER_PERSON_LIMIT`.
pub(crate) fn validate_cap(cap: u32) -> crate::Result<()> {
    if (1..=MAX_DEVICES_PER_PERSON_LIMIT).contains(&cap) {
        Ok(())
    } else {
        Err(crate::Error::invalid(
            "max_devices_per_person",
            format!("{cap} is outside 1..={MAX_DEVICES_PER_PERSON_LIMIT}"),
        ))
    }
}

/// Checks a sink name: 1 to `MAX_SINK_NAME_BYTES` (64) of `[a-z0-9_-]`.
pub fn validate_sink(name: &str) -> crate::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= crate::limits::MAX_SINK_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::invalid(
            "sink",
            format!(
                "{name:?} is not 1 to {} characters of a-z, 0-9, '_' and '-'",
                crate::limits::MAX_SINK_NAME_BYTES
            ),
        ))
    }
}

/// The civil date `(year, month, day)` of a day number since 1970-01-01
/// (Howard Hinnant's days-to-civil algorithm, exact for every day devreg
/// can hold). The history's daily counters and the Pipelines timestamps
/// both format dates with it (and the comparison harness, through
/// `internals`).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counted_json_length_is_the_length_of_the_json() {
        let mut a = Attributes::new();
        assert_eq!(json_len(&a), 2);
        a.insert(
            "quote\"back\\slash".into(),
            "tab\tnl\n\u{1}\u{7f}é😀".into(),
        );
        a.insert("x".repeat(2000), String::new());
        let expected = serde_json::to_string(&a).map(|s| s.len()).ok();
        assert_eq!(Some(json_len(&a)), expected);
    }

    #[test]
    fn token_labels_hide_all_but_the_first_characters() {
        let apns = "f4c2a9b1".to_string() + &"7".repeat(56);
        assert_eq!(token_label(&apns), "f4c2a9b1…(64 bytes)");
        assert_eq!(token_label("short"), "short…(5 bytes)");
        assert_eq!(token_label(""), "…(0 bytes)");
        assert_eq!(
            token_bytes_label(&[0xde, 0xad, 0xbe, 0xef, 1, 2]),
            "0xdeadbeef…(6 bytes)"
        );
    }

    #[test]
    fn limits_are_enforced_with_field_names() {
        assert!(validate_token("token", &"a".repeat(MAX_TOKEN_BYTES)).is_ok());
        let e = validate_token("token", &"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
        assert!(validate_token("token", "ab cd").is_err());
        assert!(validate_token("token", "abé").is_err());
        assert!(validate_person("person", &"p".repeat(151)).is_err());
        assert!(validate_person("person", "a\nb").is_err());
        assert!(validate_person("person", "Zoë").is_ok());
        assert!(validate_time("seen_ms", MAX_TIMESTAMP_MS).is_ok());
        assert!(validate_time("seen_ms", MAX_TIMESTAMP_MS + 1).is_err());
        let mut a = Attributes::new();
        a.insert("_last_status".into(), "x".into());
        assert!(validate_attributes(&a)
            .unwrap_err()
            .to_string()
            .contains("attributes._last_status"));
        let mut a = Attributes::new();
        a.insert("v".into(), "x".repeat(1001));
        assert!(validate_attributes(&a).is_err());
        let a: Attributes = (0..101).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_attributes(&a).is_err());
    }
}

//! The identifier kind of a sink: whether a person is sent to Customer.io
//! as its `id`, its `email` or its `cio_id`, and which persons are valid
//! values of each (one that is not is dead-lettered with the reason).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::MAX_CIO_ID_BYTES;

/// How a sink names a person on the Customer.io side.
///
/// Append-only: stored in the log (`Entry::AddSinkWith`) by its position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdentifierKind {
    /// The person is the workspace's `id` (the default).
    #[default]
    Id,
    /// The person is an email address (`email` must be an identifier of
    /// the workspace).
    Email,
    /// The person is Customer.io's own `cio_id`; a `cio_` prefix is
    /// dropped (Track v2 takes the id without it).
    CioId,
}

impl IdentifierKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [IdentifierKind; 3] = [
        IdentifierKind::Id,
        IdentifierKind::Email,
        IdentifierKind::CioId,
    ];

    /// The name of the kind: `id`, `email` or `cio_id` (also the key of
    /// Track v2's `identifiers`).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::Id => "id",
            IdentifierKind::Email => "email",
            IdentifierKind::CioId => "cio_id",
        }
    }

    /// The value `person` is sent as, or why it is not a valid value of
    /// this kind.
    ///
    /// ```
    /// use devreg::format::IdentifierKind;
    /// assert_eq!(IdentifierKind::Email.wire_value("a@b.io"), Ok("a@b.io"));
    /// assert!(IdentifierKind::Email.wire_value("ann").is_err());
    /// assert_eq!(IdentifierKind::CioId.wire_value("cio_a3000001"), Ok("a3000001"));
    /// ```
    pub fn wire_value(self, person: &str) -> std::result::Result<&str, String> {
        match self {
            IdentifierKind::Id => Ok(person),
            IdentifierKind::Email if is_email(person) => Ok(person),
            IdentifierKind::Email => Err(format!(
                "invalid person for sink.identifier email: {person:?} is not an email address"
            )),
            IdentifierKind::CioId => {
                let id = person.strip_prefix("cio_").unwrap_or(person);
                let ok = !id.is_empty()
                    && id.len() <= MAX_CIO_ID_BYTES
                    && id.bytes().all(|b| b.is_ascii_alphanumeric());
                if ok {
                    Ok(id)
                } else {
                    Err(format!(
                        "invalid person for sink.identifier cio_id: {person:?} is not 1 to \
                         {MAX_CIO_ID_BYTES} letters and digits (after an optional cio_ prefix)"
                    ))
                }
            }
        }
    }
}

/// A plausible email address: one `@`, a local part, and a domain of
/// dot-separated labels with at least one dot; no spaces or controls.
/// (Customer.io validates the rest; this catches ids sent to an email sink.)
fn is_email(s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty())
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IdentifierKind {
    type Err = Error;

    /// ```
    /// let e = "x".parse::<devreg::format::IdentifierKind>().unwrap_err().to_string();
    /// assert_eq!(e, r#"invalid sink.identifier: "x" is not one of id, email, cio_id"#);
    /// ```
    fn from_str(s: &str) -> Result<IdentifierKind> {
        IdentifierKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "sink.identifier",
                    format!("{s:?} is not one of id, email, cio_id"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_cio_ids_are_checked() {
        for ok in ["a@b.io", "first.last+tag@mail.example.com", "ü@exämple.de"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "ann", "@b.io", "a@", "a@b", "a@b.", "a@.io", "a b@c.io", "a@b@c.io", "",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        let cio = IdentifierKind::CioId;
        assert_eq!(cio.wire_value("a3000001"), Ok("a3000001"));
        assert!(cio.wire_value("cio_").is_err());
        assert!(cio.wire_value("a-1").is_err());
        assert!(cio.wire_value(&"a".repeat(MAX_CIO_ID_BYTES + 1)).is_err());
        assert_eq!(IdentifierKind::Id.wire_value("any thing"), Ok("any thing"));
    }
}

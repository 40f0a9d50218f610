//! Typed errors: each says what went wrong and where.

use std::io;

/// The result type of every fallible devreg call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in devreg. New kinds may be added: match
/// with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input broke a rule; `field` names the input, `reason` the rule.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field, e.g. `token` or `attributes.app_version`.
        field: String,
        /// What rule it broke.
        reason: String,
    },
    /// The database was written by a format this build does not know.
    #[error(
        "unsupported format in {location}: version {found}, this build reads version {supported}"
    )]
    UnsupportedFormat {
        /// Where the version was read (a key or a file).
        location: String,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Stored bytes failed to decode or to verify.
    #[error("corrupt data in {location}: {detail}")]
    Corrupt {
        /// The key or file (and offset) that is damaged.
        location: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An operating-system I/O call failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What devreg was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The sled store reported an error.
    #[error("store error while {context}: {detail}")]
    Store {
        /// What devreg was doing.
        context: String,
        /// sled's message.
        detail: String,
    },
    /// A value could not be encoded for the store (over the codec's size
    /// limit); the checkpoint that needed it wrote nothing.
    #[error("cannot encode a stored value: {0}")]
    Encode(String),
    /// An earlier write failed; the registry refuses writes until it is reopened.
    #[error("registry stopped after a failed write and refuses writes until reopened: {0}")]
    Failed(String),
    /// Another process (or another open handle) holds the database.
    #[error("database {} is in use by another process (its lock file is taken)", path.display())]
    Locked {
        /// The database directory.
        path: std::path::PathBuf,
    },
    /// The registry was closed.
    #[error("registry is closed")]
    Closed,
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(location: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn store(context: impl Into<String>, e: sled::Error) -> Self {
        Error::Store {
            context: context.into(),
            detail: e.to_string(),
        }
    }
}

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
    /// The call is not offered by this kind of registry (for example a
    /// backup of a registry kept in an etcd cluster).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The etcd cluster refused a request or could not be reached in time
    /// (feature `etcd`, DESIGN.md 15).
    #[error("etcd error while {context}: {detail}")]
    Cluster {
        /// What devreg was doing.
        context: String,
        /// What etcd (or its client) said.
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
    /// There is no database at the path, and the open was not to create
    /// one (read-only, or `create_if_missing(false)`); nothing was created.
    #[error("no devreg database at {}: {why}", path.display())]
    NoDatabase {
        /// The path that was given.
        path: std::path::PathBuf,
        /// What was found there instead.
        why: String,
    },
    /// A backup's destination cannot take the copy (something other than an
    /// empty directory is there, say); nothing was written to it.
    #[error("backup destination {}: {why}", path.display())]
    BackupDestination {
        /// The path that was given (or the staging directory in its way).
        path: std::path::PathBuf,
        /// Why it cannot be used.
        why: String,
    },
    /// The sync endpoint rejected the credentials (HTTP 401 or 403); the
    /// worker stopped and nothing was acknowledged.
    #[error(
        "{context}: Customer.io rejected the credentials (HTTP {status}: {body}); check \
         CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY and the region; nothing was acknowledged"
    )]
    Auth {
        /// What the worker was doing: the batch and the URL.
        context: String,
        /// 401 or 403.
        status: u16,
        /// The start of the answer's body, on one line.
        body: String,
    },
    /// The sync endpoint answered with a status the worker neither settles
    /// nor retries (a redirect, 404, ...): the endpoint or the region is
    /// likely wrong. The worker stopped and nothing was acknowledged.
    #[error("{context}: unexpected HTTP {status}{}: {body}; nothing was acknowledged", http_hint(*.status))]
    Http {
        /// What the worker was doing: the batch and the URL.
        context: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body, on one line; for a redirect,
        /// where it points.
        body: String,
    },
    /// TLS with the sync endpoint failed in a way a retry cannot fix (a
    /// certificate that does not verify, a server that does not speak
    /// compatible TLS). The worker stopped and nothing was acknowledged.
    #[error("{context}: {detail}; nothing was acknowledged")]
    Tls {
        /// What the worker was doing: the batch and the URL.
        context: String,
        /// What failed.
        detail: String,
    },
    /// A batch failed its `max_attempts` attempts (timeouts, refused
    /// connections, 429s, 5xx): try again later. Nothing pending was lost.
    #[error("{context}: gave up after {attempts} attempts; last: {last}")]
    GaveUp {
        /// What the worker was doing: the batch and the URL.
        context: String,
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        last: String,
    },
    /// The registry was opened read-only and refuses writes.
    #[error("database {} is open read-only: writes are refused", path.display())]
    ReadOnly {
        /// The database directory.
        path: std::path::PathBuf,
    },
}

/// What an unexpected status says about the endpoint.
fn http_hint(status: u16) -> &'static str {
    match status {
        300..=399 => {
            " (a redirect: the endpoint or region is wrong; an EU workspace needs the eu region)"
        }
        404 => " (no Track API there: the endpoint is wrong)",
        _ => "",
    }
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

    #[cfg(feature = "etcd")]
    pub(crate) fn cluster(context: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Cluster {
            context: context.into(),
            detail: detail.into(),
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

    /// Why writes stop after this error: its message, or the reason inside
    /// it if it already is [`Error::Failed`] (whose message would otherwise
    /// be wrapped in "registry stopped ..." twice).
    pub(crate) fn fail_reason(&self) -> String {
        match self {
            Error::Failed(why) => why.clone(),
            other => other.to_string(),
        }
    }

    /// The fail-stop error caused by `cause`; a cause that already is
    /// [`Error::Failed`] is copied, not wrapped again.
    pub(crate) fn failed_from(cause: &Error) -> Self {
        Error::Failed(cause.fail_reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_error_says_registry_stopped_once() {
        let disk = Error::io(
            "writing log segment 3",
            io::Error::new(io::ErrorKind::StorageFull, "no space left on device"),
        );
        let first = Error::failed_from(&disk);
        let again = Error::failed_from(&first);
        let want = "registry stopped after a failed write and refuses writes until reopened: \
                    I/O error while writing log segment 3: no space left on device";
        assert_eq!(first.to_string(), want);
        assert_eq!(again.to_string(), want);
        assert_eq!(Error::failed_from(&again).to_string(), want);
        assert_eq!(again.fail_reason(), disk.to_string());
    }
}

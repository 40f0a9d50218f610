//! devreg: an embedded, crash-safe registry of mobile push devices.
//!
//! Devices are keyed by push token and indexed by person, platform and
//! last-seen time. State and indexes live in memory; every write goes through
//! devreg's own write-ahead log (group commit) and is checkpointed to sled.
//! See DESIGN.md for the formats and the durability argument.
//!
//! ```
//! use devreg::{Registry, Register, Platform, LogoutPolicy};
//! let dir = tempfile::tempdir().unwrap();
//! let reg = Registry::open(dir.path().join("db")).unwrap();
//! let reg_op = |token: &str, person: &str, seen_ms| reg.register(Register {
//!     token: token.into(), platform: Platform::Android,
//!     person: Some(person.into()), seen_ms, attributes: None,
//! });
//! reg_op("tok-1", "ann", 10).unwrap();
//! reg_op("tok-2", "ann", 20).unwrap();
//! reg.logout("tok-2", LogoutPolicy::Keep).unwrap();
//! assert_eq!(reg.most_recent("ann", None).unwrap().token, "tok-1");
//! assert_eq!(reg.active_since(15, None), 1);
//! ```
// Four audited exceptions, `state/huge.rs` (a madvise), `heap.rs` (a
// malloc_trim), `nice.rs` (a nice(2)) and `prefetch.rs` (a prefetch
// hint): DESIGN.md 6.
#![deny(unsafe_code)]
// Library code returns typed errors; tests may unwrap.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

mod beside;
mod byteset;
mod codec;
mod config;
pub mod customerio;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod fault;
mod feed;
pub mod format;
mod heap;
mod history;
pub mod import;
pub mod json;
mod kv;
pub mod limits;
mod log;
mod metrics;
mod model;
mod nice;
mod prefetch;
mod registry;
#[cfg(feature = "server")]
pub mod server;
mod state;
mod store;
#[cfg(feature = "sync")]
pub mod sync;
#[cfg(test)]
mod testing;
mod writer;

#[cfg(feature = "etcd")]
pub use config::EtcdTarget;
pub use config::{Config, Durability};
pub use error::{Error, Result};
#[cfg(feature = "etcd")]
pub use etcd::TxnLimits;
#[doc(hidden)]
pub use fault::{FaultPlan, IoOp};
pub use feed::{
    validate_sink, AckOutcome, Batch, DeadLetter, SinkInfo, DEFAULT_MAX_OPS, DEFAULT_SINK,
    MAX_DEAD_LETTERS_PER_SINK, MAX_OPS_LIMIT, MAX_SINKS,
};
pub use history::{
    ChangesPage, DailyStats, DayCounts, HistoryCursor, HistoryEntry, HistoryOp, HistoryTime,
    DEFAULT_HISTORY_RETENTION_MS, MAX_HISTORY_PER_TOKEN,
};
pub use log::RepairReport;
pub use metrics::{AtomicHistogram, Histogram, OpCount, OP_KINDS, OP_OUTCOMES};
pub use model::{
    validate_attributes, validate_person, validate_time, validate_token, Attributes,
    Deliverability, Device, FeedbackOutcome, LogoutPolicy, Op, Outcome, Platform, Register,
    RemarkPair,
};
pub use registry::{ActiveIter, BackupReport, CheckReport, Metrics, Registry};
#[cfg(feature = "etcd")]
pub use registry::{ClusterMember, ClusterStatus, MigrateReport, SinkExporter};
pub use state::{Cursor, Page, Stats};

/// The README's code blocks, run as doctests (its library example must
/// stay true); only compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[doc(hidden)]
pub mod internals {
    //! Exposed for fuzzing and fault-injection tests only; not a stable API.
    pub use crate::codec::{
        decode_attributes, decode_record, pack_token, unpack_token, STORE_FORMAT,
    };
    pub use crate::log::entry::{encode_entries as encode_log_entries, Entry as LogEntry};
    pub use crate::model::civil_from_days;
    pub use crate::store::{
        count_records, page_records, page_value, peek_record, poke_record, sled_closes_abandoned,
        sled_drop_panics,
    };
    /// The etcd backend's store and operation log (feature `etcd`).
    #[cfg(feature = "etcd")]
    pub mod etcd {
        pub use crate::etcd::probe::EtcdProbe;
        pub use crate::etcd::{OpId, TxnLimits, WatchItem};
    }
}

//! The etcd backend (feature `etcd`, issue 16, DESIGN.md 15): the store
//! and the operation log of a registry kept in an etcd cluster, so that no
//! single machine's loss loses or stops it.
//!
//! In pipeline order:
//! - `conn`: a blocking handle on the cluster (etcd-client on a private
//!   tokio runtime), with timeouts and retries through elections;
//! - `oplog`: the replicated operation log: appends exactly once, read by
//!   every node through a watch, in etcd's revision order;
//! - `kv`: devreg's `KvStore` on etcd keys, one transaction per batch,
//!   fenced by a lock's key, for the checkpointed state; read at a pinned
//!   revision by the nodes that do not write it;
//! - `lock`: a lock kept by an etcd lease (the checkpoint lock);
//! - `probe`: the same, public for the tests (`devreg::internals`).

pub(crate) mod body;
mod conn;
mod kv;
mod lock;
mod oplog;
pub mod probe;

pub(crate) use conn::{Conn, Retry};
pub(crate) use kv::EtcdKv;
pub use kv::TxnLimits;
pub(crate) use lock::LeaseLock;
pub(crate) use oplog::OpLog;
pub use oplog::{OpId, WatchItem};

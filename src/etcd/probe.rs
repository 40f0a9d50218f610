//! Test support (`devreg::internals::etcd`): the etcd backend's key-value
//! store and operation log, callable from integration tests against a real
//! cluster. Not a stable API.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use super::conn::{Conn, Retry};
use super::kv::{EtcdKv, Fence, TxnLimits};
use super::oplog::{OpId, OpLog, WatchItem};
use crate::error::{Error, Result};
use crate::kv::KvStore;
use crate::log::entry::{decode_entries, Entry};

/// One node's view of a registry's keys in an etcd cluster.
pub struct EtcdProbe {
    conn: Arc<Conn>,
    kv: EtcdKv,
    log: OpLog,
    limits: TxnLimits,
}

impl EtcdProbe {
    /// Connects to `endpoints`, with every key under `prefix`; joins the
    /// operation log as a new node.
    pub fn connect(endpoints: &[String], prefix: &str, limits: TxnLimits) -> Result<EtcdProbe> {
        let conn = Arc::new(Conn::connect(endpoints)?);
        let store = format!("{prefix}store/");
        let kv = EtcdKv::new(conn.clone(), store.as_bytes(), limits);
        let log = OpLog::join(conn.clone(), prefix.as_bytes())?;
        Ok(EtcdProbe {
            conn,
            kv,
            log,
            limits,
        })
    }

    /// The store, its writes fenced on `key` keeping `create_revision`.
    pub fn fence(self, key: &[u8], create_revision: i64) -> EtcdProbe {
        let fence = Fence {
            key: key.to_vec(),
            create_revision,
        };
        EtcdProbe {
            kv: self.kv.fenced(fence),
            ..self
        }
    }

    /// The endpoints, comma-separated.
    pub fn endpoints(&self) -> String {
        self.conn.describe()
    }

    /// The create revision of the etcd key `key` (the full key, with
    /// every prefix); 0 if it does not exist.
    pub fn create_revision(&self, key: &[u8]) -> Result<i64> {
        let key = key.to_vec();
        self.conn.call(
            "reading a create revision",
            Retry::Idempotent,
            move |mut c| {
                let key = key.clone();
                async move {
                    let r = c.get(key, None).await?;
                    Ok(r.kvs().first().map_or(0, |kv| kv.create_revision()))
                }
            },
        )
    }

    /// Deletes the etcd key `key` (the full key): a lock taken away.
    pub fn delete_key(&self, key: &[u8]) -> Result<()> {
        let key = key.to_vec();
        self.conn
            .call("deleting a key", Retry::Idempotent, move |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await.map(|_| ()) }
            })
    }

    /// `KvStore::get`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.kv.get(key)
    }

    /// `KvStore::apply`: every write or none.
    pub fn apply(&self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        self.kv.apply(writes)
    }

    /// `KvStore::scan_prefix`, collected.
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.kv.scan_prefix(prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// This node's id in the operation log.
    pub fn node(&self) -> u64 {
        self.log.node()
    }

    /// Appends an operation: its id and revision.
    pub fn append(&self, body: Vec<u8>) -> Result<(OpId, i64)> {
        let id = self.log.next_id();
        Ok((id, self.log.append(id, body)?))
    }

    /// The last operation's revision.
    pub fn last_revision(&self) -> Result<i64> {
        self.log.last_revision()
    }

    /// Every operation from revision `from` on, in order.
    pub fn watch(&self, from: i64) -> Receiver<Result<WatchItem>> {
        self.log.watch(from)
    }

    /// Operations in the log (not trimmed yet).
    pub fn count_ops(&self) -> Result<u64> {
        self.log.count()
    }

    /// Every registry operation (`Op`) the log holds up to revision
    /// `upto`, in the order every node applies them (other entries, such
    /// as commit times and feed steps, left out).
    pub fn ops_in_order(&self, upto: i64) -> Result<Vec<crate::model::Op>> {
        let watch = self.log.watch(1);
        let limit = std::time::Duration::from_millis(crate::limits::ETCD_RETRY_MS);
        let mut ops = Vec::new();
        let mut at = 0;
        while at < upto {
            let item = watch.recv_timeout(limit).map_err(|_| {
                Error::cluster("reading the log", format!("stopped before revision {upto}"))
            })??;
            let WatchItem::Op { revision, body, .. } = item;
            at = revision;
            for r in super::body::requests(&body).unwrap_or_default() {
                let (count, encoded) =
                    r.map_err(|why| Error::corrupt(format!("revision {revision}"), why))?;
                for e in decode_entries(&format!("revision {revision}"), count, encoded)? {
                    if let Entry::Op(op) = e {
                        ops.push(op);
                    }
                }
            }
        }
        Ok(ops)
    }

    /// Deletes the operations at or before `upto`; how many.
    pub fn trim(&self, upto: i64) -> Result<u64> {
        self.log.trim(upto, self.limits)
    }
}

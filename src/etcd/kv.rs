//! `KvStore` on etcd: devreg's ordered key-value interface over the keys
//! under one prefix of an etcd cluster.
//!
//! - `apply` is one etcd transaction, so it is atomic; a batch over the
//!   cluster's transaction limits (`--max-txn-ops`, `--max-request-bytes`)
//!   is refused whole with a message naming the setting, never split.
//! - With a fence (`EtcdKv::fenced`), every transaction also compares the
//!   create revision of the fence key (a lock's or lease's key): a node
//!   that lost the lock writes nothing (DESIGN.md 15).
//! - `scan_prefix` reads page by page at the revision of its first page,
//!   so a scan sees one consistent version of the store, in key order.
//! - `sync` has nothing to do: etcd answers a write after a quorum of its
//!   members has it in their fsynced logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::conn::{Conn, Retry};
use crate::error::{Error, Result};
use crate::kv::{KvStore, RawKv, Visit, Write};
use crate::limits::{
    ETCD_DEFAULT_MAX_REQUEST_BYTES, ETCD_DEFAULT_MAX_TXN_OPS, ETCD_RANGE_PAGE_KEYS,
    ETCD_TXN_OP_OVERHEAD_BYTES,
};

/// The transaction limits the cluster was started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnLimits {
    /// etcd's `--max-txn-ops`.
    pub max_ops: usize,
    /// etcd's `--max-request-bytes`.
    pub max_request_bytes: usize,
}

impl Default for TxnLimits {
    fn default() -> TxnLimits {
        TxnLimits {
            max_ops: ETCD_DEFAULT_MAX_TXN_OPS,
            max_request_bytes: ETCD_DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// The key of a lock (or lease) and the create revision it had when taken.
#[derive(Clone, Debug)]
pub(crate) struct Fence {
    pub(crate) key: Vec<u8>,
    pub(crate) create_revision: i64,
}

/// The keys under `prefix` of an etcd cluster, as a `KvStore`.
pub(crate) struct EtcdKv {
    conn: Arc<Conn>,
    prefix: Vec<u8>,
    limits: TxnLimits,
    fence: Option<Fence>,
    /// Reads at this revision (a store another node writes, seen as of one
    /// of its commits); writes refused.
    pinned: Option<i64>,
    written: AtomicU64,
}

/// The first key after every key that starts with `prefix` (etcd's range
/// end for a prefix); `[0]` (every key from the start) for an empty or
/// all-`0xff` prefix.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdKv {
    pub(crate) fn new(conn: Arc<Conn>, prefix: &[u8], limits: TxnLimits) -> EtcdKv {
        EtcdKv {
            conn,
            prefix: prefix.to_vec(),
            limits,
            fence: None,
            pinned: None,
            written: AtomicU64::new(0),
        }
    }

    /// The same keys, every write of which requires `fence` to hold.
    pub(crate) fn fenced(mut self, fence: Fence) -> EtcdKv {
        self.fence = Some(fence);
        self
    }

    /// The same keys read as of `revision`, read-only.
    pub(crate) fn pinned(mut self, revision: i64) -> EtcdKv {
        self.pinned = Some(revision);
        self
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    /// Writes `writes` in one transaction unless `key` exists; whether it
    /// wrote. A new store's first metadata: of two nodes opening one empty
    /// store at once, one initialises it and the other finds it done.
    pub(crate) fn init_if_absent(&self, key: &[u8], writes: &[Write]) -> Result<bool> {
        self.check_limits(writes)?;
        let guard = Compare::create_revision(self.full_key(key), CompareOp::Equal, 0);
        let ops: Vec<TxnOp> = writes
            .iter()
            .filter_map(|(k, v)| Some(TxnOp::put(self.full_key(k), v.clone()?, None)))
            .collect();
        self.conn
            .call("initialising the store", Retry::Idempotent, move |mut c| {
                let txn = Txn::new().when([guard.clone()]).and_then(ops.clone());
                async move { Ok(c.txn(txn).await?.succeeded()) }
            })
    }

    /// Refuses a batch the cluster would refuse, before sending it.
    fn check_limits(&self, writes: &[Write]) -> Result<()> {
        let ops = writes.len() + usize::from(self.fence.is_some());
        let bytes: usize = writes
            .iter()
            .map(|(k, v)| {
                self.prefix.len()
                    + k.len()
                    + v.as_ref().map_or(0, Vec::len)
                    + ETCD_TXN_OP_OVERHEAD_BYTES
            })
            .sum();
        let context = format!("writing a batch of {} keys", writes.len());
        if ops > self.limits.max_ops {
            return Err(Error::cluster(
                context,
                format!(
                    "{ops} operations in one transaction, over the cluster's --max-txn-ops of {} \
                     (start etcd with a larger --max-txn-ops and tell devreg: DESIGN.md 15)",
                    self.limits.max_ops
                ),
            ));
        }
        if bytes > self.limits.max_request_bytes {
            return Err(Error::cluster(
                context,
                format!(
                    "about {bytes} bytes in one request, over the cluster's --max-request-bytes \
                     of {} (DESIGN.md 15)",
                    self.limits.max_request_bytes
                ),
            ));
        }
        Ok(())
    }

    /// One page of a scan: up to `ETCD_RANGE_PAGE_KEYS` keys in
    /// `[from, end)` at `revision` (0: the current one); the keys and
    /// values, whether more follow, and the revision read.
    fn page(&self, from: Vec<u8>, end: Vec<u8>, revision: i64) -> Result<Page> {
        let context = format!(
            "scanning {} of {}",
            crate::codec::describe_key(&from),
            self.conn.describe()
        );
        self.conn.call(&context, Retry::Idempotent, move |mut c| {
            let (from, end) = (from.clone(), end.clone());
            async move {
                let options = GetOptions::new()
                    .with_range(end)
                    .with_limit(ETCD_RANGE_PAGE_KEYS)
                    .with_revision(revision);
                let mut r = c.get(from, Some(options)).await?;
                let rev = r.header().map_or(0, |h| h.revision());
                let more = r.more();
                let kvs = r.take_kvs().into_iter().map(|kv| kv.into_key_value());
                Ok(Page {
                    kvs: kvs.collect(),
                    more,
                    revision: rev,
                })
            }
        })
    }
}

impl EtcdKv {
    /// Visits the keys in `[from, end)` (full keys) in order, at one
    /// revision, until `max_bytes` of keys and values were visited.
    fn scan_full(&self, from: Vec<u8>, end: Vec<u8>, max_bytes: usize, f: Visit<'_>) -> Result<()> {
        let (mut from, mut revision, mut bytes) = (from, self.pinned.unwrap_or(0), 0usize);
        loop {
            let page = self.page(from.clone(), end.clone(), revision)?;
            revision = page.revision;
            let Some(last) = page.kvs.last().map(|kv| kv.0.clone()) else {
                return Ok(());
            };
            for (k, v) in &page.kvs {
                f(k.get(self.prefix.len()..).unwrap_or_default(), v)?;
                bytes += k.len() + v.len();
                if bytes >= max_bytes {
                    return Ok(());
                }
            }
            if !page.more {
                return Ok(());
            }
            from = last;
            from.push(0);
        }
    }
}

impl RawKv for EtcdKv {
    fn max_batch_writes(&self) -> usize {
        // The fence's compare is an operation too.
        (self.limits.max_ops - usize::from(self.fence.is_some())).max(1)
    }

    fn scan_range(&self, from: &[u8], to: &[u8], f: Visit<'_>) -> Result<()> {
        self.scan_full(self.full_key(from), self.full_key(to), usize::MAX, f)
    }

    fn scan_chunk(&self, prefix: &[u8], max_bytes: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = self.full_key(prefix);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        self.scan_full(start, end, max_bytes.max(1), &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }
}

/// `writes` with only the last write of each key, in the order of those.
fn last_write_per_key(writes: &[Write]) -> Vec<Write> {
    let mut last: hashbrown::HashMap<&[u8], usize> =
        hashbrown::HashMap::with_capacity(writes.len());
    for (i, (k, _)) in writes.iter().enumerate() {
        last.insert(k.as_slice(), i);
    }
    writes
        .iter()
        .enumerate()
        .filter(|(i, (k, _))| last.get(k.as_slice()) == Some(i))
        .map(|(_, w)| w.clone())
        .collect()
}

struct Page {
    kvs: Vec<(Vec<u8>, Vec<u8>)>,
    more: bool,
    revision: i64,
}

impl KvStore for EtcdKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let full = self.full_key(key);
        let context = format!("reading {}", crate::codec::describe_key(key));
        let options = GetOptions::new().with_revision(self.pinned.unwrap_or(0));
        self.conn.call(&context, Retry::Idempotent, move |mut c| {
            let (full, options) = (full.clone(), options.clone());
            async move {
                let mut r = c.get(full, Some(options)).await?;
                Ok(r.take_kvs()
                    .into_iter()
                    .next()
                    .map(|kv| kv.into_key_value().1))
            }
        })
    }

    fn apply(&self, writes: &[Write]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        if let Some(rev) = self.pinned {
            return Err(Error::cluster(
                format!("writing a batch of {} keys", writes.len()),
                format!("this view of the store (at revision {rev}) is read-only"),
            ));
        }
        // etcd refuses a key twice in one transaction; in a batch the later
        // write of a key wins (a checkpoint's carry goes first, 8).
        let writes = last_write_per_key(writes);
        let writes = writes.as_slice();
        self.check_limits(writes)?;
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(self.full_key(k), v.clone(), None),
                None => TxnOp::delete(self.full_key(k), None),
            })
            .collect();
        let compares: Vec<Compare> = self
            .fence
            .iter()
            .map(|f| Compare::create_revision(f.key.clone(), CompareOp::Equal, f.create_revision))
            .collect();
        let context = format!("writing a batch of {} keys", writes.len());
        // Retrying is safe: the batch holds after-images only.
        let succeeded = self.conn.call(&context, Retry::Idempotent, move |mut c| {
            let txn = Txn::new().when(compares.clone()).and_then(ops.clone());
            async move { Ok(c.txn(txn).await?.succeeded()) }
        })?;
        if !succeeded {
            return Err(Error::cluster(
                context,
                "this node no longer holds the store's lock (another node took it over): nothing \
                 was written",
            ));
        }
        let bytes: usize = writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8], f: Visit<'_>) -> Result<()> {
        let start = self.full_key(prefix);
        let end = prefix_end(&start);
        self.scan_full(start, end, usize::MAX, f)
    }

    fn sync(&self) -> Result<()> {
        // etcd acknowledged every write after a quorum fsynced it.
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        let status = self.conn.call(
            "reading the cluster's status",
            Retry::Once,
            |mut c| async move { Ok(c.status().await?.db_size()) },
        );
        status.map_or(0, |b| u64::try_from(b).unwrap_or(0))
    }

    fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn mark_troubled(&self) {
        // Nothing is settled at close: there is nothing to skip.
    }

    fn scan_stored(&self, f: Visit<'_>) -> Result<()> {
        self.scan_prefix(&[], f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_the_last_write_of_each_key() {
        let w =
            |k: &str, v: Option<&str>| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()));
        let batch = [
            w("a", Some("1")),
            w("b", Some("2")),
            w("a", None),
            w("c", Some("3")),
            w("b", Some("4")),
        ];
        assert_eq!(
            last_write_per_key(&batch),
            vec![w("a", None), w("c", Some("3")), w("b", Some("4"))]
        );
    }

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}

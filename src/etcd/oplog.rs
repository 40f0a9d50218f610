//! The operation log in etcd: every node appends its write requests (the
//! same encoded entries as a local log record) as keys under one prefix,
//! and every node applies every operation in etcd's revision order, read
//! through a watch (DESIGN.md 15).
//!
//! ```text
//! <prefix>ops/<node:016x>/<seq:016x>   an operation (log entries, encoded)
//! <prefix>ops-tail                      put with every operation: its mod
//!                                       revision is the last operation's
//! <prefix>nodes                         put by each joining node: the put's
//!                                       revision is the node's id
//! ```
//!
//! An append is one transaction: if the operation's key has never been
//! created, put it (and `ops-tail`); else read it. A request whose answer
//! was lost (a leader died, a member was killed) is sent again with the
//! same key, and finds it there: an operation is committed once, whatever
//! the retries, and the answer names the revision it was committed at.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchFilterType,
    WatchOptions,
};

use super::conn::{Conn, Retry};
use super::kv::{prefix_end, TxnLimits};
use crate::error::{Error, Result};
use crate::limits::{ETCD_RETRY_MAX_PAUSE_MS, ETCD_RETRY_MS, ETCD_WATCH_BUFFER};

/// Where an operation came from: the node that appended it and its
/// sequence number on that node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId {
    /// The appending node (the revision of its join).
    pub node: u64,
    /// Its number among that node's operations, from 1.
    pub seq: u64,
}

/// What a watch of the log delivers, in revision order.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchItem {
    /// An operation committed at `revision`.
    Op {
        /// Its etcd revision (its place in the cluster's order).
        revision: i64,
        /// Who appended it.
        id: OpId,
        /// The encoded entries.
        body: Vec<u8>,
    },
}

/// One node's handle on the operation log.
pub(crate) struct OpLog {
    conn: Arc<Conn>,
    /// `<prefix>ops/`.
    ops: Vec<u8>,
    /// `<prefix>ops-tail`.
    tail: Vec<u8>,
    node: u64,
    next_seq: AtomicU64,
}

fn op_key(ops: &[u8], id: OpId) -> Vec<u8> {
    let mut k = ops.to_vec();
    k.extend_from_slice(format!("{:016x}/{:016x}", id.node, id.seq).as_bytes());
    k
}

/// The `OpId` of the key `key` under `ops`; None for a key of another shape.
fn parse_op_key(ops: &[u8], key: &[u8]) -> Option<OpId> {
    let rest = std::str::from_utf8(key.strip_prefix(ops)?).ok()?;
    let (node, seq) = rest.split_once('/')?;
    if node.len() != 16 || seq.len() != 16 {
        return None;
    }
    Some(OpId {
        node: u64::from_str_radix(node, 16).ok()?,
        seq: u64::from_str_radix(seq, 16).ok()?,
    })
}

impl OpLog {
    /// Joins the log under `prefix` as a new node (a fresh node id).
    pub(crate) fn join(conn: Arc<Conn>, prefix: &[u8]) -> Result<OpLog> {
        let nodes = [prefix, b"nodes"].concat();
        // Not retried: a retried join would only waste an id, but its
        // first answer's id is the one that is known unique.
        let node = conn.call("joining the operation log", Retry::Once, move |mut c| {
            let nodes = nodes.clone();
            async move {
                Ok(c.put(nodes, Vec::new(), None)
                    .await?
                    .header()
                    .map_or(0, |h| h.revision()))
            }
        })?;
        let node = u64::try_from(node).ok().filter(|&n| n > 0).ok_or_else(|| {
            Error::cluster("joining the operation log", "the answer had no revision")
        })?;
        Ok(OpLog {
            conn,
            ops: [prefix, b"ops/"].concat(),
            tail: [prefix, b"ops-tail"].concat(),
            node,
            next_seq: AtomicU64::new(1),
        })
    }

    /// Reads the log under `prefix` without joining it (a read-only node:
    /// id 0, never appends).
    pub(crate) fn reader(conn: Arc<Conn>, prefix: &[u8]) -> OpLog {
        OpLog {
            conn,
            ops: [prefix, b"ops/"].concat(),
            tail: [prefix, b"ops-tail"].concat(),
            node: 0,
            next_seq: AtomicU64::new(1),
        }
    }

    /// This node's id.
    pub(crate) fn node(&self) -> u64 {
        self.node
    }

    /// A fresh id for this node's next operation.
    pub(crate) fn next_id(&self) -> OpId {
        OpId {
            node: self.node,
            seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
        }
    }

    /// Appends one operation under `id` (from `next_id`); the revision it
    /// was committed at. Exactly once, through any number of retries (see
    /// the module doc).
    pub(crate) fn append(&self, id: OpId, body: Vec<u8>) -> Result<i64> {
        let key = op_key(&self.ops, id);
        let tail = self.tail.clone();
        let context = format!("appending operation {}/{}", id.node, id.seq);
        let revision = self.conn.call(&context, Retry::Idempotent, move |mut c| {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(key.clone(), body.clone(), None),
                    TxnOp::put(tail.clone(), Vec::new(), None),
                ])
                .or_else([TxnOp::get(key.clone(), None)]);
            async move { Ok(committed_at(&c.txn(txn).await?)) }
        })?;
        // None: created, then trimmed before this retry's answer. Not
        // possible while this node has not applied it (a checkpoint only
        // covers applied operations), which it cannot have before its
        // append returns.
        let revision = revision.ok_or_else(|| {
            Error::cluster(context, "the operation's key was neither created nor found")
        })?;
        Ok(revision)
    }

    /// The revision of the last operation committed in the cluster (0 if
    /// none): a read that waits until its node has applied this much sees
    /// every write acknowledged before it started (a linearizable read).
    pub(crate) fn last_revision(&self) -> Result<i64> {
        let tail = self.tail.clone();
        self.conn.call(
            "reading the operation log's tail",
            Retry::Idempotent,
            move |mut c| {
                let tail = tail.clone();
                async move {
                    let r = c.get(tail, None).await?;
                    Ok(r.kvs().first().map_or(0, |kv| kv.mod_revision()))
                }
            },
        )
    }

    /// The cluster's current revision (a quorum read).
    pub(crate) fn current_revision(&self) -> Result<i64> {
        let tail = self.tail.clone();
        self.conn.call(
            "reading the current revision",
            Retry::Idempotent,
            move |mut c| {
                let tail = tail.clone();
                async move {
                    Ok(c.get(tail, None)
                        .await?
                        .header()
                        .map_or(0, |h| h.revision()))
                }
            },
        )
    }

    /// Drops etcd's history before `revision` (reads and watches from
    /// older revisions fail from then on). An already compacted revision
    /// is not an error.
    pub(crate) fn compact(&self, revision: i64) -> Result<()> {
        let r = self.conn.call(
            "compacting etcd's history",
            Retry::Idempotent,
            move |mut c| async move { c.compact(revision, None).await.map(|_| ()) },
        );
        match r {
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            other => other,
        }
    }

    /// Watches the log from `from` (inclusive): every operation committed
    /// at that revision or later, in order. A watch that cannot go on (etcd
    /// compacted its history past it, or no member answered for
    /// `ETCD_RETRY_MS`) delivers an error and ends.
    pub(crate) fn watch(&self, from: i64) -> Receiver<Result<WatchItem>> {
        let (tx, rx) = crossbeam_channel::bounded(ETCD_WATCH_BUFFER);
        let pump = Pump {
            client: self.conn.client(),
            ops: self.ops.clone(),
            next: from.max(1),
            tx,
        };
        self.conn.spawn(pump.run());
        rx
    }

    /// How many operations the log holds (not yet trimmed).
    pub(crate) fn count(&self) -> Result<u64> {
        let (ops, end) = (self.ops.clone(), prefix_end(&self.ops));
        self.conn
            .call("counting operations", Retry::Idempotent, move |mut c| {
                let (ops, end) = (ops.clone(), end.clone());
                async move {
                    let o = GetOptions::new().with_range(end).with_count_only();
                    Ok(u64::try_from(c.get(ops, Some(o)).await?.count()).unwrap_or(0))
                }
            })
    }

    /// Deletes every operation committed at `upto` or before (a checkpoint
    /// of the state holds them), in transactions within `limits`; how many.
    pub(crate) fn trim(&self, upto: i64, limits: TxnLimits) -> Result<u64> {
        let (ops, end) = (self.ops.clone(), prefix_end(&self.ops));
        let keys = self.conn.call(
            "listing operations to trim",
            Retry::Idempotent,
            move |mut c| {
                let (ops, end) = (ops.clone(), end.clone());
                async move {
                    let o = GetOptions::new()
                        .with_range(end)
                        .with_keys_only()
                        .with_max_mod_revision(upto);
                    let mut r = c.get(ops, Some(o)).await?;
                    Ok(r.take_kvs()
                        .into_iter()
                        .map(|kv| kv.into_key_value().0)
                        .collect::<Vec<_>>())
                }
            },
        )?;
        for batch in keys.chunks(limits.max_ops.max(1)) {
            let deletes: Vec<TxnOp> = batch
                .iter()
                .map(|k| TxnOp::delete(k.clone(), None))
                .collect();
            self.conn.call(
                "trimming the operation log",
                Retry::Idempotent,
                move |mut c| {
                    let txn = Txn::new().and_then(deletes.clone());
                    async move { c.txn(txn).await.map(|_| ()) }
                },
            )?;
        }
        Ok(keys.len() as u64)
    }
}

/// The revision an append's transaction committed its operation at: the
/// transaction's own if it created the key, else the key's create revision
/// (an earlier attempt of the same append created it).
fn committed_at(r: &etcd_client::TxnResponse) -> Option<i64> {
    if r.succeeded() {
        return r.header().map(|h| h.revision());
    }
    r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
        _ => None,
    })
}

/// The task that reads a watch and hands its operations to the node.
struct Pump {
    client: Client,
    ops: Vec<u8>,
    /// The revision the next operation is at least at.
    next: i64,
    tx: Sender<Result<WatchItem>>,
}

impl Pump {
    async fn run(mut self) {
        let mut pause = Duration::from_millis(25);
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            let before = self.next;
            let flow = self.follow().await;
            if self.next > before {
                // It moved on: a failure from here starts a new count.
                failing_since = None;
                pause = Duration::from_millis(25);
            }
            match flow {
                Ok(Flow::Stop) => return,
                Ok(Flow::Reconnect) => failing_since = None,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= Duration::from_millis(ETCD_RETRY_MS) {
                        let _ = self.tx.send(Err(e));
                        return;
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(ETCD_RETRY_MAX_PAUSE_MS));
        }
    }

    /// Follows one watch stream until it ends.
    async fn follow(&mut self) -> Result<Flow> {
        let context = format!("watching the operation log from revision {}", self.next);
        let cluster = |e: etcd_client::Error| Error::cluster(&context, e.to_string());
        let options = WatchOptions::new()
            .with_range(prefix_end(&self.ops))
            .with_start_revision(self.next)
            .with_filters([WatchFilterType::NoDelete]);
        let (_watcher, mut stream) = self
            .client
            .watch(self.ops.clone(), Some(options))
            .await
            .map_err(cluster)?;
        while let Some(resp) = stream.message().await.map_err(cluster)? {
            if resp.compact_revision() > 0 {
                let why = format!(
                    "etcd compacted its history to revision {}: this node must load the state again",
                    resp.compact_revision()
                );
                let _ = self.tx.send(Err(Error::cluster(&context, why)));
                return Ok(Flow::Stop);
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv().filter(|_| ev.event_type() == EventType::Put) else {
                    continue;
                };
                let Some(id) = parse_op_key(&self.ops, kv.key()) else {
                    continue;
                };
                let item = WatchItem::Op {
                    revision: kv.mod_revision(),
                    id,
                    body: kv.value().to_vec(),
                };
                self.next = kv.mod_revision() + 1;
                if !self.deliver(item).await {
                    return Ok(Flow::Stop);
                }
            }
            if resp.canceled() {
                return Ok(Flow::Reconnect);
            }
        }
        Ok(Flow::Reconnect)
    }

    /// Hands `item` to the node, waiting while its buffer is full (without
    /// holding the runtime's thread); false once the node stopped reading.
    async fn deliver(&self, item: WatchItem) -> bool {
        let mut item = Ok(item);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    item = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

enum Flow {
    /// The node stopped reading, or the watch cannot go on: end the task.
    Stop,
    /// The stream ended: watch again from `next`.
    Reconnect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_keys_round_trip_and_others_are_not_ops() {
        let id = OpId {
            node: 7,
            seq: 1 << 40,
        };
        let key = op_key(b"p/ops/", id);
        assert_eq!(key, b"p/ops/0000000000000007/0000010000000000");
        assert_eq!(parse_op_key(b"p/ops/", &key), Some(id));
        assert_eq!(parse_op_key(b"q/ops/", &key), None);
        assert_eq!(parse_op_key(b"p/ops/", b"p/ops/7/1"), None);
        assert_eq!(
            parse_op_key(b"p/ops/", b"p/ops/000000000000000g/0000000000000001"),
            None
        );
    }
}

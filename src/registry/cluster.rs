//! A registry node on an etcd cluster (feature `etcd`, DESIGN.md 15): its
//! writes go to the cluster's operation log, and it applies every write of
//! every node in the log's order.
//!
//! Threads:
//! - the **leader** takes every request queued since its last group, stamps
//!   them with one commit time, and appends them as one operation (group
//!   commit: one etcd transaction for the group);
//! - the **applier** reads the log through a watch and applies each
//!   operation to the state under the write lock, then answers the requests
//!   of this node's own operations with the outcomes it computed.
//!
//! An operation's body (`encode_group`):
//!
//! ```text
//! b'O' then, per request: entries (u32 BE) body length (u32 BE) body
//!                         (encode_entries of the request, Entry::Clock first)
//! ```
//!
//! A request whose body does not decode or whose entries do not validate
//! (a bug of the node that wrote it) is skipped by every node alike, and
//! its submitter gets the error; the rest of the operation applies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex};

use super::cluster_ckpt::Checkpoints;
use super::CheckReport;
use crate::error::{Error, Result};
use crate::etcd::body::OP_MARK;
use crate::etcd::{body, Conn, LeaseLock, OpId, OpLog, WatchItem};
use crate::log::entry::{decode_entries, encode_entries, validate_entry, Entry};
use crate::state::{Applied, State, StateLock};
use crate::store::{load_state, KvStore};
use crate::writer::{wall_ms, FailFlag, Request, WriteReply};

/// Operations the applier applies under one acquisition of the write lock.
const APPLY_BATCH_OPS: usize = 256;
/// How often the leader and the applier look at the stop flag when idle.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// One node's write path and applied position.
pub(crate) struct Node {
    log: OpLog,
    state: Arc<StateLock>,
    failed: Arc<FailFlag>,
    queue: Sender<Request>,
    /// This node's operations in flight: their requests' replies, in order.
    pending: Mutex<HashMap<u64, Vec<WriteReply>>>,
    /// The revision of the last operation applied.
    applied: Mutex<i64>,
    applied_changed: Condvar,
    stop: AtomicBool,
    /// Largest operation body (the cluster's request limit, less framing).
    max_body: usize,
    /// The last commit time this node stamped (never goes backwards).
    last_clock_ms: Mutex<u64>,
    /// Checkpoints of the state to the cluster's store.
    ckpt: Checkpoints,
    /// The sinks this node exports, each under its lease.
    exporters: Exporters,
}

/// The exporter leases this node holds: one node at a time exports a sink
/// (DESIGN.md 15.4).
pub(crate) struct Exporters {
    pub(crate) conn: Arc<Conn>,
    /// `<prefix>exporter/`.
    pub(crate) prefix: Vec<u8>,
    pub(crate) held: Mutex<HashMap<String, LeaseLock>>,
}

impl Node {
    /// A node on `log`, applying to `state` from `applied` (the revision the
    /// state reflects); the receiving end of its request queue is for
    /// `run_leader`.
    pub(crate) fn new(
        log: OpLog,
        state: Arc<StateLock>,
        failed: Arc<FailFlag>,
        applied: i64,
        max_body: usize,
        (ckpt, exporters): (Checkpoints, Exporters),
    ) -> (Arc<Node>, Receiver<Request>) {
        let (queue, rx) = crossbeam_channel::unbounded();
        let last_clock_ms = Mutex::new(state.read().now_ms);
        let node = Node {
            log,
            state,
            failed,
            queue,
            pending: Mutex::new(HashMap::new()),
            applied: Mutex::new(applied),
            applied_changed: Condvar::new(),
            stop: AtomicBool::new(false),
            max_body,
            last_clock_ms,
            ckpt,
            exporters,
        };
        (Arc::new(node), rx)
    }

    /// The revision of the last operation this node applied.
    pub(crate) fn applied(&self) -> i64 {
        *self.applied.lock()
    }

    /// This node's id in the operation log.
    pub(crate) fn id(&self) -> u64 {
        self.log.node()
    }

    pub(crate) fn log(&self) -> &OpLog {
        &self.log
    }

    pub(crate) fn checkpoints(&self) -> &Checkpoints {
        &self.ckpt
    }

    /// Makes sure this node holds `sink`'s exporter lease, taking it if no
    /// node does; an error naming the holder if another node does.
    pub(crate) fn hold_exporter(&self, sink: &str) -> Result<()> {
        let mut held = self.exporters.held.lock();
        if held.get(sink).is_some_and(LeaseLock::held) {
            return Ok(());
        }
        held.remove(sink);
        let key = [self.exporters.prefix.as_slice(), sink.as_bytes()].concat();
        let me = self.id().to_string().into_bytes();
        match LeaseLock::try_take(&self.exporters.conn, &key, me)? {
            Some(lock) => {
                held.insert(sink.to_owned(), lock);
                Ok(())
            }
            None => Err(Error::cluster(
                format!("exporting sink {sink:?}"),
                format!(
                    "another node holds the sink's exporter lease (it lapses {} s after that node stops): export from that node",
                    crate::limits::ETCD_LOCK_TTL_S
                ),
            )),
        }
    }

    /// The cluster's status as this node sees it.
    pub(crate) fn status(&self) -> Result<super::cluster_status::ClusterStatus> {
        super::cluster_status::status(self, &self.exporters.conn, &self.exporters.prefix)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.get()
    }

    /// Commits `entries` through the cluster and waits for their outcomes.
    pub(crate) fn commit(&self, entries: Vec<Entry>) -> Result<Vec<Applied>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit((entries, None, WriteReply::Wait(tx)));
        // The leader or the applier always answers or drops the reply.
        rx.recv()
            .map_err(|_| self.failed.get().map_or(Error::Closed, Error::Failed))?
    }

    /// Queues a request for the leader; refused at once when stopped.
    pub(crate) fn submit(&self, request: Request) {
        if self.stop.load(Ordering::SeqCst) {
            return request.2.send(Err(Error::Closed));
        }
        if let Err(e) = self.queue.send(request) {
            e.into_inner().2.send(Err(Error::Closed));
        }
    }

    /// Waits until this node has applied revision `target`, for at most
    /// `limit` (None: as long as it takes while the node is healthy).
    pub(crate) fn wait_applied(&self, target: i64, limit: Option<Duration>) -> Result<()> {
        let deadline = limit.map(|l| Instant::now() + l);
        let mut applied = self.applied.lock();
        while *applied < target {
            if let Some(why) = self.failed.get() {
                return Err(Error::Failed(why));
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            let until = deadline.map_or(Instant::now() + IDLE_POLL, |d| {
                d.min(Instant::now() + IDLE_POLL)
            });
            self.applied_changed.wait_until(&mut applied, until);
            if deadline.is_some_and(|d| Instant::now() >= d) && *applied < target {
                return Err(Error::cluster(
                    format!("waiting to apply revision {target}"),
                    format!("this node has applied up to revision {} only", *applied),
                ));
            }
        }
        Ok(())
    }

    /// Waits until this node has applied every operation the cluster
    /// committed before this call (a linearizable point for reads).
    pub(crate) fn catch_up(&self) -> Result<()> {
        let target = self.log.last_revision()?;
        let limit = Duration::from_millis(crate::limits::ETCD_RETRY_MS);
        self.wait_applied(target, Some(limit))
    }

    /// Asks both threads to stop; queued requests are answered `Closed`.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.applied_changed.notify_all();
        // Another node may take the sinks over at once.
        self.exporters.held.lock().clear();
    }

    /// Answers `Closed` to every request still waiting for its operation:
    /// called once the node's threads have stopped, so nothing can answer
    /// them any more (a write racing a close).
    pub(crate) fn close_pending(&self) {
        let pending: Vec<_> = self.pending.lock().drain().collect();
        for r in pending.into_iter().flat_map(|(_, replies)| replies) {
            r.send(Err(Error::Closed));
        }
    }

    fn fail(&self, e: &Error) {
        self.failed.set(e);
        let pending: Vec<_> = self.pending.lock().drain().collect();
        for (_, replies) in pending {
            for r in replies {
                r.send(Err(Error::failed_from(e)));
            }
        }
        self.applied_changed.notify_all();
    }
}

/// `check` on a cluster node: the live state against the state rebuilt
/// from the store and the operation log up to the revision the live state
/// reflects. Writes wait meanwhile (the live state's read lock is held).
pub(crate) fn check(node: &Node, store: &dyn KvStore, retention_ms: u64) -> Result<CheckReport> {
    if let Some(why) = node.failed.get() {
        return Err(Error::Failed(why));
    }
    // No checkpoint may commit while the store is read (lock order: the
    // holder's mutex, then the state; a checkpoint takes them so too).
    let _quiet = node.ckpt.quiesce();
    let live = node.state.read();
    let upto = node.applied();
    let loaded = load_state(
        store,
        live.cap,
        crate::limits::DEFAULT_LOG_SEGMENT_BYTES,
        retention_ms,
    )?;
    let mut disk = loaded.state;
    let from = i64::try_from(loaded.checkpoint_lsn).unwrap_or(i64::MAX);
    if upto > from {
        let watch = node.log.watch(from + 1);
        let limit = Duration::from_millis(crate::limits::ETCD_RETRY_MS);
        loop {
            let item = watch.recv_timeout(limit).map_err(|_| {
                Error::cluster(
                    "checking",
                    format!("the operation log did not reach revision {upto}"),
                )
            })??;
            let WatchItem::Op { revision, id, body } = item;
            if revision > upto {
                break;
            }
            let _ = apply_op(&mut disk, revision, id, &body);
            if revision == upto {
                break;
            }
        }
    }
    super::check::compare_states(store, &live, &disk)
}

/// Waits for the next item on `rx`, then takes what else is queued, up to
/// `max` in all; None once the node stops (after an idle poll) or `rx`
/// is closed.
fn next_batch<T>(node: &Node, rx: &Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = loop {
        match rx.recv_timeout(IDLE_POLL) {
            Ok(item) => break item,
            Err(RecvTimeoutError::Timeout) if !node.stopping() => continue,
            Err(_) => return None,
        }
    };
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The leader thread: commits queued requests a group at a time.
pub(crate) fn run_leader(node: Arc<Node>, rx: Receiver<Request>) {
    while let Some(group) = next_batch(&node, &rx, crate::limits::MAX_GROUP_OPS) {
        if node.stop.load(Ordering::SeqCst) {
            group.into_iter().for_each(|r| r.2.send(Err(Error::Closed)));
            break;
        }
        lead_group(&node, group);
    }
    while let Ok(r) = rx.try_recv() {
        r.2.send(Err(Error::Closed));
    }
}

/// Appends one group as operations of at most `max_body` bytes each.
fn lead_group(node: &Node, group: Vec<Request>) {
    if let Some(why) = node.failed.get() {
        return group
            .into_iter()
            .for_each(|r| r.2.send(Err(Error::Failed(why.clone()))));
    }
    let now = {
        let mut last = node.last_clock_ms.lock();
        let now = wall_ms()
            .min(crate::limits::MAX_TIMESTAMP_MS)
            .max(*last)
            .max(node.state.read().now_ms);
        *last = now;
        now
    };
    let mut body = body::new_writes();
    let mut replies = Vec::new();
    for (mut entries, _, reply) in group {
        entries.insert(0, Entry::Clock(now));
        let encoded = match encode_entries(&entries) {
            Ok(b) if 1 + body::REQUEST_HEADER_BYTES + b.len() <= node.max_body => b,
            Ok(b) => {
                let why = format!(
                    "encodes to {} bytes, over the cluster's request limit of {}",
                    b.len(),
                    node.max_body
                );
                reply.send(Err(Error::invalid("batch", why)));
                continue;
            }
            Err(e) => {
                reply.send(Err(e));
                continue;
            }
        };
        if body.len() + body::REQUEST_HEADER_BYTES + encoded.len() > node.max_body {
            append_op(
                node,
                std::mem::replace(&mut body, body::new_writes()),
                std::mem::take(&mut replies),
            );
        }
        body::push_request(&mut body, entries.len() as u32, &encoded);
        replies.push(reply);
    }
    if !replies.is_empty() {
        append_op(node, body, replies);
    }
}

/// Appends one operation; its requests are answered by the applier once it
/// applies it, or here if the append failed (then the outcome is unknown:
/// the cluster may have committed it without answering).
fn append_op(node: &Node, body: Vec<u8>, replies: Vec<WriteReply>) {
    let id = node.log.next_id();
    node.pending.lock().insert(id.seq, replies);
    if let Err(e) = node.log.append(id, body) {
        let Some(replies) = node.pending.lock().remove(&id.seq) else {
            return; // Applied meanwhile: answered by the applier.
        };
        let why = format!("{e}; the write may or may not have been applied: read it back");
        for r in replies {
            r.send(Err(Error::cluster("committing a write", why.clone())));
        }
    }
}

/// The applier thread: applies the watched operations in order.
pub(crate) fn run_applier(node: Arc<Node>, rx: Receiver<Result<WatchItem>>) {
    while let Some(batch) = next_batch(&node, &rx, APPLY_BATCH_OPS) {
        let mut items = Vec::with_capacity(batch.len());
        for item in batch {
            match item {
                Ok(i) => items.push(i),
                Err(e) => {
                    apply_items(&node, items);
                    return node.fail(&e);
                }
            }
        }
        apply_items(&node, items);
    }
}

/// Applies `items` under one write lock (a mark releases it: its snapshot
/// downgrades it), then answers this node's requests.
fn apply_items(node: &Node, items: Vec<WatchItem>) {
    let mut answers = Vec::new();
    let mut held = Some(node.state.write());
    let mut failure = None;
    for WatchItem::Op { revision, id, body } in items {
        let mut st = held.take().unwrap_or_else(|| node.state.write());
        let mine = id.node == node.log.node();
        if body.first() == Some(&OP_MARK) {
            // Set under the lock, before the snapshot releases it: the
            // mark changes no device (`check` reads both together).
            *node.applied.lock() = revision;
            if let Err(e) = node.ckpt.on_mark(st, revision, mine, &body) {
                failure = Some(e);
                break;
            }
            continue;
        }
        let outcomes = apply_op(&mut st, revision, id, &body);
        node.ckpt.ops_since_mark.fetch_add(1, Ordering::SeqCst);
        if mine {
            if let Some(replies) = node.pending.lock().remove(&id.seq) {
                answers.push((replies, outcomes));
            }
        }
        // Under the state's lock: a reader holding it sees the state of
        // exactly the revision `applied` says (`check`).
        *node.applied.lock() = revision;
        held = Some(st);
    }
    drop(held);
    node.applied_changed.notify_all();
    for (replies, outcomes) in answers {
        let mut outcomes = outcomes.into_iter();
        for r in replies {
            r.send(outcomes.next().unwrap_or(Err(Error::Closed)));
        }
    }
    if let Some(e) = failure {
        node.fail(&e);
    }
}

/// Applies one operation's requests; each request's outcomes or error.
fn apply_op(st: &mut State, revision: i64, id: OpId, body: &[u8]) -> Vec<Result<Vec<Applied>>> {
    let location = format!("operation {}/{} at revision {revision}", id.node, id.seq);
    if body.first() == Some(&OP_MARK) {
        return Vec::new(); // A checkpoint mark: no device changes.
    }
    let Some(requests) = body::requests(body) else {
        return vec![Err(Error::corrupt(location, "not an operation of writes"))];
    };
    requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let request = format!("{location}, request {i}");
            let (count, encoded) = r.map_err(|why| Error::corrupt(&request, why))?;
            apply_request(st, &request, count, encoded)
        })
        .collect()
}

/// Decodes, validates and applies one request (all of it or, if any entry
/// is bad, none of it); the outcomes of its entries after the clock.
fn apply_request(
    st: &mut State,
    location: &str,
    count: u32,
    encoded: &[u8],
) -> Result<Vec<Applied>> {
    let mut entries = decode_entries(location, count, encoded)?;
    for e in &entries {
        validate_entry(e).map_err(|e| Error::corrupt(location, e.to_string()))?;
    }
    // Nodes' clocks differ: a commit time behind the state's is taken as
    // the state's, the same on every node (it is the same state).
    if let Some(Entry::Clock(ms)) = entries.first_mut() {
        *ms = (*ms).max(st.now_ms);
    }
    let mut outcomes = Vec::with_capacity(entries.len().saturating_sub(1));
    for (i, e) in entries.iter().enumerate() {
        let (a, _) = st.apply(e);
        if i > 0 {
            outcomes.push(a);
        }
    }
    Ok(outcomes)
}

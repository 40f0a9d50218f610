//! Checkpoints of a registry on etcd (DESIGN.md 15.3): one node at a time,
//! the holder of the checkpoint lock, writes the state to the store under
//! `<prefix>store/`; every node drains the same changes at the same point
//! of the log, so all agree on what the store has and what only memory has.
//!
//! A checkpoint: the holder appends a mark to the log (`encode_mark`: the
//! revision of the last mark whose checkpoint the store holds, and a
//! revision at which that store can be read). Every node applying the mark
//! takes a snapshot there (`Snapshot::take` drains its dirty sets) and keeps
//! it as its carry until a later mark confirms it is in the store; an
//! unconfirmed carry goes in front of the next snapshot, so the changes of
//! a checkpoint whose holder died are written by the next holder. The
//! holder writes its snapshot through the page layout (fenced on its lock),
//! then deletes the operations the checkpoint covers and compacts etcd's
//! history to the revision its previous checkpoint was read at. The other
//! nodes read the store as of the revision the mark names (a pinned view),
//! so the holder's later commits and garbage collection never change what
//! they read.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use super::cluster::Node;
use crate::codec::META_CHECKPOINT_LSN;
use crate::error::{Error, Result};
use crate::etcd::body::OP_MARK;
use crate::etcd::{Conn, EtcdKv, LeaseLock, TxnLimits};
use crate::kv::{KvStore, Visit, Write};
use crate::state::StateWrite;
use crate::store::{PagedStore, Snapshot};
use crate::writer::Reply;

/// How often the checkpointer looks at its lock and its timer.
const TICK: Duration = Duration::from_millis(100);

/// What a mark says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The revision of the last mark whose checkpoint the store holds.
    pub(crate) confirmed: i64,
    /// A revision at which the store holds exactly that checkpoint.
    pub(crate) pin: i64,
}

pub(crate) fn encode_mark(m: Mark) -> Vec<u8> {
    let mut b = vec![OP_MARK];
    b.extend_from_slice(&m.confirmed.to_be_bytes());
    b.extend_from_slice(&m.pin.to_be_bytes());
    b
}

pub(crate) fn decode_mark(body: &[u8]) -> Option<Mark> {
    let rest = body.strip_prefix(&[OP_MARK])?;
    Some(Mark {
        confirmed: i64::from_be_bytes(rest.get(0..8)?.try_into().ok()?),
        pin: i64::from_be_bytes(rest.get(8..16)?.try_into().ok()?),
    })
}

/// The store a node reads through: the holder's own, or a read-only view
/// of the store as of a revision; swapped as checkpoints go by.
pub(crate) struct ClusterStore {
    current: RwLock<Arc<dyn KvStore>>,
}

impl ClusterStore {
    fn get_current(&self) -> Arc<dyn KvStore> {
        self.current.read().clone()
    }
}

impl KvStore for ClusterStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_current().get(key)
    }
    fn apply(&self, writes: &[Write]) -> Result<()> {
        self.get_current().apply(writes)
    }
    fn scan_prefix(&self, prefix: &[u8], f: Visit<'_>) -> Result<()> {
        self.get_current().scan_prefix(prefix, f)
    }
    fn sync(&self) -> Result<()> {
        self.get_current().sync()
    }
    fn disk_bytes(&self) -> u64 {
        self.get_current().disk_bytes()
    }
    fn bytes_written(&self) -> u64 {
        self.get_current().bytes_written()
    }
    fn mark_troubled(&self) {}
    fn scan_stored(&self, f: Visit<'_>) -> Result<()> {
        self.get_current().scan_stored(f)
    }
}

/// Where the store is and how it is laid out.
pub(crate) struct StoreSpec {
    pub(crate) conn: Arc<Conn>,
    pub(crate) prefix: Vec<u8>,
    pub(crate) limits: TxnLimits,
    pub(crate) chunk_bytes: usize,
    pub(crate) delta_bytes: usize,
}

impl StoreSpec {
    /// The store as of `revision`, read-only.
    pub(crate) fn view_at(&self, revision: i64) -> Result<PagedStore<EtcdKv>> {
        let kv = EtcdKv::new(self.conn.clone(), &self.prefix, self.limits).pinned(revision);
        PagedStore::open(kv, self.chunk_bytes, self.delta_bytes)
    }
}

/// A snapshot the applier took at a mark of this node's (its revision),
/// for the checkpointer to write.
type Handoff = (i64, Arc<Snapshot>);

/// The lock holder's side.
pub(crate) struct Holder {
    lock: LeaseLock,
    store: Arc<PagedStore<EtcdKv>>,
    /// The revision of the last mark whose checkpoint the store holds.
    confirmed: i64,
    /// A revision at which the store holds exactly that checkpoint.
    pin: i64,
    /// The pin the previous mark carried: nodes may still read there until
    /// they apply the next mark, so history is compacted only up to it.
    previous_mark_pin: i64,
}

/// A node's checkpoint state.
pub(crate) struct Checkpoints {
    spec: StoreSpec,
    lock_key: Vec<u8>,
    interval: Duration,
    pub(crate) view: Arc<ClusterStore>,
    view_pin: AtomicI64,
    carry: Mutex<Option<Arc<Snapshot>>>,
    holder: Mutex<Option<Holder>>,
    /// Whether `holder` is set; read by the applier, which must not take
    /// `holder`'s mutex (`check` holds it while it waits for the state).
    holding: AtomicBool,
    handoff: (Sender<Handoff>, Receiver<Handoff>),
    pub(crate) ops_since_mark: AtomicU64,
    requests: (Sender<Reply<()>>, Receiver<Reply<()>>),
    /// The last checkpoint's failure, if it failed (for status).
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Checkpoints {
    /// `view` read as of `pin` (the open's load).
    pub(crate) fn new(
        spec: StoreSpec,
        lock_key: Vec<u8>,
        interval: Duration,
        view: PagedStore<EtcdKv>,
        pin: i64,
    ) -> Checkpoints {
        let view: Arc<dyn KvStore> = Arc::new(view);
        Checkpoints {
            spec,
            lock_key,
            interval,
            view: Arc::new(ClusterStore {
                current: RwLock::new(view),
            }),
            view_pin: AtomicI64::new(pin),
            carry: Mutex::new(None),
            holder: Mutex::new(None),
            holding: AtomicBool::new(false),
            handoff: crossbeam_channel::bounded(4),
            ops_since_mark: AtomicU64::new(0),
            requests: crossbeam_channel::unbounded(),
            last_error: Mutex::new(None),
        }
    }

    /// Whether this node holds the checkpoint lock.
    pub(crate) fn is_holder(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }

    /// Holds checkpoints back (the holder's mutex) while the guard lives.
    pub(crate) fn quiesce(&self) -> parking_lot::MutexGuard<'_, Option<Holder>> {
        self.holder.lock()
    }

    /// Asks for a checkpoint now; the answer comes on `reply`.
    pub(crate) fn request(&self, reply: Reply<()>) {
        let _ = self.requests.0.send(reply);
    }

    /// Applies a mark at `revision` (under the state's write lock, which it
    /// releases): the snapshot every node takes there.
    pub(crate) fn on_mark(
        &self,
        guard: StateWrite<'_>,
        revision: i64,
        mine: bool,
        body: &[u8],
    ) -> Result<()> {
        let Some(mark) = decode_mark(body) else {
            return Ok(()); // Not a mark any node wrote: skipped by every node.
        };
        let mut carry = self.carry.lock();
        if carry
            .as_ref()
            .is_some_and(|c| i64::try_from(c.lsn).unwrap_or(i64::MAX) <= mark.confirmed)
        {
            *carry = None;
        }
        let extra = carry
            .take()
            .map(|c| Arc::try_unwrap(c).map_or_else(|c| c.writes.clone(), |s| s.writes))
            .unwrap_or_default();
        let lsn = u64::try_from(revision).unwrap_or(0);
        let snapshot = Arc::new(Snapshot::take(guard, lsn, extra)?);
        *carry = Some(snapshot.clone());
        drop(carry);
        self.ops_since_mark.store(0, Ordering::SeqCst);
        if mine {
            let _ = self.handoff.0.try_send((revision, snapshot));
        } else if !self.holding.load(Ordering::SeqCst)
            && mark.pin > self.view_pin.load(Ordering::SeqCst)
        {
            // Reads go to the store as the mark's author last committed it.
            if let Ok(view) = self.spec.view_at(mark.pin) {
                *self.view.current.write() = Arc::new(view);
                self.view_pin.store(mark.pin, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// The checkpointer thread of a cluster node.
pub(crate) fn run_checkpointer(node: Arc<Node>) {
    let ck = node.checkpoints();
    let mut last_mark = Instant::now();
    let mut last_try: Option<Instant> = None;
    loop {
        let request = ck.requests.1.recv_timeout(TICK).ok();
        if node.stopping() {
            if let Some(r) = request {
                let _ = r.send(Err(Error::Closed));
            }
            break;
        }
        if node.failure().is_some() {
            continue;
        }
        let try_due = last_try.is_none_or(|t| t.elapsed() >= ck.interval);
        let mut lock_error = None;
        if request.is_some() || try_due {
            last_try = Some(Instant::now());
            lock_error = keep_or_take_lock(&node, ck).err();
        }
        let due =
            ck.ops_since_mark.load(Ordering::SeqCst) > 0 && last_mark.elapsed() >= ck.interval;
        if request.is_none() && !due {
            continue;
        }
        last_mark = Instant::now();
        // Not "another node holds it" when the cluster could not be asked.
        let r = match lock_error {
            Some(e) if !ck.is_holder() => Err(e),
            _ => checkpoint_once(&node, ck),
        };
        *ck.last_error.lock() = r.as_ref().err().map(|e| e.to_string());
        if let Some(reply) = request {
            let _ = reply.send(r);
        }
    }
    ck.holder.lock().take();
    ck.holding.store(false, Ordering::SeqCst);
}

/// Drops a lock whose lease lapsed; takes the lock if nobody holds it. An
/// error: the cluster could not be asked (this node may take it later).
fn keep_or_take_lock(node: &Node, ck: &Checkpoints) -> Result<()> {
    let mut holder = ck.holder.lock();
    if holder.as_ref().is_some_and(|h| !h.lock.held()) {
        *holder = None;
        ck.holding.store(false, Ordering::SeqCst);
    }
    if holder.is_some() {
        return Ok(());
    }
    let me = node.id().to_string().into_bytes();
    let Some(lock) = LeaseLock::try_take(&ck.spec.conn, &ck.lock_key, me)? else {
        return Ok(());
    };
    let h = open_as_holder(node, ck, lock)?;
    *ck.view.current.write() = h.store.clone();
    *holder = Some(h);
    ck.holding.store(true, Ordering::SeqCst);
    Ok(())
}

/// The store as the holder writes it: current, fenced on `lock`.
fn open_as_holder(node: &Node, ck: &Checkpoints, lock: LeaseLock) -> Result<Holder> {
    let s = &ck.spec;
    let kv = EtcdKv::new(s.conn.clone(), &s.prefix, s.limits).fenced(lock.fence());
    let store = Arc::new(PagedStore::open(kv, s.chunk_bytes, s.delta_bytes)?);
    let confirmed = match store.get(META_CHECKPOINT_LSN)? {
        Some(v) => <[u8; 8]>::try_from(v.as_slice()).map_or(0, i64::from_be_bytes),
        None => 0,
    };
    let pin = node.log().current_revision()?;
    Ok(Holder {
        lock,
        store,
        confirmed,
        pin,
        previous_mark_pin: 0,
    })
}

/// One checkpoint by the holder: mark, write, trim, compact.
fn checkpoint_once(node: &Node, ck: &Checkpoints) -> Result<()> {
    let mut guard = ck.holder.lock();
    let Some(holder) = guard.as_mut() else {
        return Err(Error::Unsupported(
            "a checkpoint from this node: another node holds the checkpoint lock (DESIGN.md 15.3)"
                .into(),
        ));
    };
    let mark = Mark {
        confirmed: holder.confirmed,
        pin: holder.pin,
    };
    let log = node.log();
    let id = log.next_id();
    let revision = log.append(id, encode_mark(mark))?;
    let limit = Duration::from_millis(crate::limits::ETCD_RETRY_MS);
    let snapshot = loop {
        let (rev, snap) = ck.handoff.1.recv_timeout(limit).map_err(|_| {
            Error::cluster(
                "checkpointing",
                format!("the mark at revision {revision} was not applied"),
            )
        })?;
        if rev == revision {
            break snap;
        }
    };
    // The merge a checkpoint makes due follows its commit (4.3); a failed
    // one is left to the next holder, like a failed write.
    let written = snapshot
        .write(&*holder.store)
        .and_then(|_| holder.store.merge_if_due());
    if let Err(e) = written {
        // Fenced out, or the cluster refused: the carry keeps the changes,
        // and the next holder (maybe this node again) writes them.
        *guard = None;
        ck.holding.store(false, Ordering::SeqCst);
        return Err(e);
    }
    let compact_to = holder.previous_mark_pin;
    holder.previous_mark_pin = mark.pin;
    holder.confirmed = revision;
    holder.pin = log.current_revision()?;
    log.trim(revision, ck.spec.limits)?;
    match compact_to {
        0 => Ok(()),
        r => log.compact(r),
    }
}

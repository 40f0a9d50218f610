//! The registry handle: opening, recovery, operations and queries.

mod backup;
mod check;
#[cfg(feature = "etcd")]
mod cluster;
#[cfg(feature = "etcd")]
mod cluster_ckpt;
#[cfg(feature = "etcd")]
mod cluster_status;
#[cfg(feature = "etcd")]
pub use cluster_status::{ClusterMember, ClusterStatus, SinkExporter};
#[cfg(feature = "etcd")]
mod etcd_migrate;
#[cfg(feature = "etcd")]
mod etcd_open;
#[cfg(feature = "etcd")]
pub use etcd_migrate::MigrateReport;
mod feed;
mod history;
mod metrics;
mod open;
#[cfg(test)]
mod tests;

pub use backup::BackupReport;
use check::check_on_writer;
pub use check::CheckReport;
pub use metrics::Metrics;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded, Sender};
use parking_lot::Mutex;

use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::log::entry::{decode_entries, validate_entry, Entry};
use crate::log::{replay, RepairReport};
use crate::metrics::{kind_index, Recorder};
use crate::model::*;
use crate::state::{Applied, Cursor, Page, State, StateLock, StateRead, Stats};
use crate::store::{load_state, KvStore, SledStore};
use crate::writer::{
    commit, submit_detached, submit_inline_or_detached, CheckpointerCtx, FailFlag, Msg, WriteQueue,
    WriteReply, WriterCtx,
};

struct Inner {
    path: PathBuf,
    /// Opened read-only: every write is refused before it reaches the writer.
    read_only: bool,
    /// Largest sum of `Op::encoded_len` one `apply_batch` may carry.
    max_batch_bytes: usize,
    /// `Config::soft_failures_to_suppress`.
    soft_limit: u32,
    /// `Config::history_retention_ms`.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    history_retention_ms: u64,
    /// `Config::durability`: a write's durability when it names none.
    durability: Durability,
    state: Arc<StateLock>,
    engine: Engine,
    failed: Arc<FailFlag>,
    store: Arc<dyn KvStore>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The engine's counters and histograms (`Registry::metrics`).
    metrics: Arc<Recorder>,
    /// The database's flock, held while the registry is open (None on
    /// etcd). Last, so it is released after every field above (the store
    /// among them) drops.
    _lock: Option<std::fs::File>,
    /// Dropped after every field above: gives the freed heap back to the
    /// kernel once the state, the store and the threads are gone.
    _trim: crate::heap::TrimOnDrop,
}

/// How writes reach the state.
enum Engine {
    /// devreg's own write-ahead log and writer (sections 5, 7).
    Local {
        tx: Mutex<Option<Sender<Msg>>>,
        ctx: Arc<Mutex<WriterCtx>>,
        queue: WriteQueue,
    },
    /// An etcd cluster's operation log (section 15).
    #[cfg(feature = "etcd")]
    Cluster(Arc<cluster::Node>),
}

impl Inner {
    /// The state's read lock for a query. While a write holds the lock the
    /// reader first spins (`limits::READ_SPIN_TRIES` tries) and only then
    /// parks: a parked reader is woken when the write ends, and on a
    /// machine whose cores are all busy the woken reader preempts the
    /// writer, which then waits for a core while the readers run (DESIGN.md
    /// 13, step 9: two readers beside one writer at 10^5 devices, the
    /// writer runnable but not running 97% of a 3 s phase, 2.7k writes/s).
    fn read_state(&self) -> StateRead<'_> {
        for _ in 0..crate::limits::READ_SPIN_TRIES {
            if let Some(guard) = self.state.try_read() {
                return guard;
            }
            std::hint::spin_loop();
        }
        self.state.read()
    }

    /// Stops the writer (its final sync and checkpoint) and the
    /// checkpointer; the first error that stopped the registry, if any.
    fn shut_down(&self) -> Result<()> {
        match &self.engine {
            // Closing the channel makes the writer checkpoint and stop.
            Engine::Local { tx, .. } => drop(tx.lock().take()),
            #[cfg(feature = "etcd")]
            Engine::Cluster(node) => node.stop(),
        }
        let mut panicked = false;
        for t in self.threads.lock().drain(..) {
            panicked |= t.join().is_err();
        }
        #[cfg(feature = "etcd")]
        if let Engine::Cluster(node) = &self.engine {
            node.close_pending();
        }
        if let Some(why) = self.failed.get() {
            return Err(Error::Failed(why));
        }
        if panicked {
            return Err(Error::Failed(
                "a devreg thread panicked while closing".into(),
            ));
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Errors here have nowhere to go: `Registry::close` reports them.
        let _ = self.shut_down();
    }
}

/// An open device registry. Cheap to clone; `Send + Sync`; every clone
/// shares one database. The database closes (with a final checkpoint) when
/// the last clone is dropped.
///
/// ```
/// use devreg::{Registry, Register, Platform};
/// let dir = tempfile::tempdir().unwrap();
/// let reg = Registry::open(dir.path().join("db")).unwrap();
/// reg.register(Register {
///     token: "a1b2".into(),
///     platform: Platform::Ios,
///     person: Some("ann".into()),
///     seen_ms: 1_700_000_000_000,
///     attributes: None,
/// }).unwrap();
/// assert_eq!(reg.most_recent("ann", None).unwrap().token, "a1b2");
/// assert!(reg.check().unwrap().is_clean());
/// ```
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// Rebuilds the state from the store and the log, as an open does.
fn recover(
    store: &dyn KvStore,
    log_dir: &Path,
    cap: u32,
    segment_bytes: u64,
    history_retention_ms: u64,
    faults: &crate::fault::Faults,
) -> Result<(State, u64, u64, u64, bool)> {
    let loaded = load_state(store, cap, segment_bytes, history_retention_ms)?;
    let mut state = loaded.state;
    let end = replay(
        log_dir,
        loaded.segment_bytes,
        loaded.checkpoint_lsn,
        faults,
        |lsn, count, body| {
            let location = format!("log record at position {lsn}");
            for entry in decode_entries(&location, count, body)? {
                validate_entry(&entry).map_err(|e| Error::corrupt(&location, e.to_string()))?;
                state.apply(&entry);
            }
            Ok(())
        },
    )?;
    Ok((
        state,
        loaded.checkpoint_lsn,
        loaded.segment_bytes,
        end.end_lsn,
        end.stale_after_end,
    ))
}

/// A cap given to an open must be the stored one (a new database stored
/// it already): a stored setting changes only through
/// `set_max_devices_per_person`. A read-only open ignores it.
fn check_stored_cap(config: &Config, stored: u32) -> Result<()> {
    match config.max_devices_per_person {
        Some(cap) if cap != stored && !config.read_only => Err(Error::invalid(
            "max_devices_per_person",
            format!(
                "{cap} differs from the database's stored cap of {stored}; a stored setting \
                 changes only on request: Registry::set_max_devices_per_person (devreg config \
                 set max-devices-per-person {cap})"
            ),
        )),
        _ => Ok(()),
    }
}

impl Registry {
    /// Opens (or creates) the registry at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Registry> {
        Registry::open_with(Config::new(path))
    }

    /// Opens the registry at `path` read-only: nothing is created or
    /// written, a missing database is [`Error::NoDatabase`], and every
    /// write fails with [`Error::ReadOnly`]. The log's records after the
    /// last checkpoint are replayed in memory only.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Registry> {
        Registry::open_with(Config::new(path).read_only(true))
    }

    /// Opens (or creates) a registry: loads the store, replays the log. A
    /// [`Config::etcd`] registry loads the cluster's checkpoint and applies
    /// its operation log instead (feature `etcd`, DESIGN.md 15).
    pub fn open_with(config: Config) -> Result<Registry> {
        config.validate()?;
        #[cfg(feature = "etcd")]
        if let Some(target) = config.etcd.clone() {
            return etcd_open::open(config, target);
        }
        let log_dir = config.path.join("log");
        let (lock, store) = open::open_store(&config, &log_dir)?;
        let (state, ckpt_lsn, segment_bytes, end_lsn, stale) = recover(
            &*store,
            &log_dir,
            config
                .max_devices_per_person
                .unwrap_or(crate::limits::DEFAULT_MAX_DEVICES_PER_PERSON),
            config.log_segment_bytes,
            config.history_retention_ms,
            &config.faults,
        )?;
        check_stored_cap(&config, state.cap)?;
        if !config.read_only {
            crate::log::settle_recovered(
                &log_dir,
                segment_bytes,
                ckpt_lsn,
                end_lsn,
                stale,
                &config.faults,
            )?;
        }
        // sled 0.34's LRU registers a node when it pages it in and evicts
        // only when 64 such accesses of one of its 256 shards have queued,
        // so what the load read last stays resident whatever the cache's
        // capacity (DESIGN.md 6). After a large load the raw store is
        // closed and opened again in place; the paged store keeps what it
        // read at open (its deltas): until 2026-12-07 the whole store was
        // opened again, which read every delta chunk a second time (at
        // 10^7 after a `devreg import`, 719 MB: 1.4 s and 240 MB of peak).
        if state.len() >= config.reopen_store_after_devices {
            store.shed_reads()?;
        }
        // The load's transient memory is free now; give its pages back.
        crate::heap::release_free_pages();
        let last_clock_ms = state.now_ms;
        let metrics = Arc::new(Recorder::new());
        let (pool, log) = open::open_log(
            &config,
            &log_dir,
            segment_bytes,
            (ckpt_lsn, end_lsn),
            metrics.clone(),
        )?;
        // The record also carries the commit time (an entry of at most 11 bytes).
        let max_batch_bytes = log.max_body().saturating_sub(16);
        let mut config = config;
        config.log_segment_bytes = segment_bytes;
        let state = Arc::new(StateLock::new(state));
        let failed = Arc::new(FailFlag::default());
        let busy = Arc::new(AtomicBool::new(false));
        let merging = Arc::new(AtomicBool::new(false));
        let (ckpt_tx, ckpt_rx) = bounded(1);
        let (tx, rx) = unbounded();
        let carry = Arc::new(Mutex::new(Vec::new()));
        let ckpt_thread = open::spawn_checkpointer(
            CheckpointerCtx {
                state: state.clone(),
                store: store.clone(),
                pool,
                failed: failed.clone(),
                busy: busy.clone(),
                merging: merging.clone(),
                carry: carry.clone(),
                metrics: metrics.clone(),
            },
            ckpt_rx,
            config.background_nice,
        )?;
        let ctx = WriterCtx {
            state: state.clone(),
            log,
            store: store.clone(),
            failed: failed.clone(),
            config: config.clone(),
            ckpt_tx: Some(ckpt_tx),
            ckpt_busy: busy,
            ckpt_merging: merging,
            ckpt_carry: carry,
            last_checkpoint_lsn: ckpt_lsn,
            last_checkpoint_at: Instant::now(),
            last_sync_at: Instant::now(),
            last_clock_ms,
            closed: false,
            last_synced_group: 0,
            metrics: metrics.clone(),
            pending_records: 0,
        };
        // The log's bound for the registry as loaded (DESIGN.md 5.2).
        ctx.rescale_log_bound();
        let ctx = Arc::new(Mutex::new(ctx));
        let ctx_for_thread = ctx.clone();
        let queue = WriteQueue::new();
        let queue_for_thread = queue.clone();
        let writer_thread = std::thread::Builder::new()
            .name("devreg-writer".into())
            .spawn(move || WriterCtx::run(ctx_for_thread, rx, queue_for_thread))
            .map_err(|e| Error::io("starting the writer thread", e))?;
        let reg = Registry {
            inner: Arc::new(Inner {
                path: config.path.clone(),
                read_only: config.read_only,
                soft_limit: config.soft_failures_to_suppress,
                history_retention_ms: config.history_retention_ms,
                durability: config.durability,
                _lock: Some(lock),
                _trim: crate::heap::TrimOnDrop,
                max_batch_bytes,
                state,
                engine: Engine::Local {
                    tx: Mutex::new(Some(tx)),
                    ctx,
                    queue,
                },
                failed,
                store,
                // The writer must stop (and hand over its last checkpoint) first.
                threads: Mutex::new(vec![writer_thread, ckpt_thread]),
                metrics,
            }),
        };
        Ok(reg)
    }

    /// Sets the per-person device cap stored in the database, evicting each
    /// person's least recently seen devices beyond it; the outcome counts
    /// them. [`cap_evictions`](Registry::cap_evictions) tells how many
    /// first. (`devreg config set max-devices-per-person N --yes`.)
    pub fn set_max_devices_per_person(&self, cap: u32) -> Result<Outcome> {
        self.submit_one(Entry::SetCap(cap)).and_then(outcome)
    }

    /// How many devices [`set_max_devices_per_person`](Registry::set_max_devices_per_person)
    /// with `cap` would evict now. Changes nothing.
    pub fn cap_evictions(&self, cap: u32) -> u64 {
        self.inner.read_state().evictions_at_cap(cap)
    }

    /// Whether this handle was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Cuts the log of the (closed) database at `path` at its first damaged
    /// record, for damage that makes the open fail with `Corrupt` ("damaged
    /// record before the end of the log"): the rest of that segment is
    /// zeroed and later segments are removed. The writes after the damage
    /// are lost; the report says how many records were dropped. A log with
    /// no damage is left as it is. `devreg repair` prints the report.
    pub fn repair(path: impl AsRef<Path>) -> Result<RepairReport> {
        use open::lock_db;
        let path = path.as_ref();
        open::finish_interrupted_swap(path, &None)?;
        if !path.join("store").is_dir() {
            return Err(Error::invalid(
                "path",
                format!(
                    "{}: is not a devreg database (no store/ inside)",
                    path.display()
                ),
            ));
        }
        let _lock = lock_db(path, true)?;
        let store = SledStore::open(
            &path.join("store"),
            None,
            crate::limits::TOOL_SLED_CACHE_BYTES,
            true,
        )?;
        let (lsn, segment_bytes) = crate::store::log_position(&store)?;
        crate::log::repair(&path.join("log"), segment_bytes, lsn, &None)
    }

    /// Why the registry stopped taking writes after a failed write
    /// (`Error::Failed`'s reason), or `None` while it is healthy. A
    /// service's readiness probe asks this.
    pub fn failure(&self) -> Option<String> {
        self.inner.failed.get()
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The most bytes of operations (the sum of [`Op::encoded_len`]) one
    /// [`apply_batch`](Registry::apply_batch) can hold: one log record, so
    /// a little less than a log segment.
    pub fn max_batch_bytes(&self) -> usize {
        self.inner.max_batch_bytes
    }

    fn send(&self, msg: Msg) -> Result<()> {
        let tx = match &self.inner.engine {
            Engine::Local { tx, .. } => tx.lock().clone().ok_or(Error::Closed)?,
            #[cfg(feature = "etcd")]
            Engine::Cluster(_) => return Err(cluster_unsupported("this call")),
        };
        tx.send(msg).map_err(|_| Error::Closed)
    }

    fn submit(&self, entries: Vec<Entry>) -> Result<Vec<Applied>> {
        self.submit_as(entries, None)
    }

    /// `submit` with the durability this write asks for (None: the
    /// registry's).
    fn submit_as(&self, entries: Vec<Entry>, d: Option<Durability>) -> Result<Vec<Applied>> {
        self.refuse_if_read_only()?;
        if let Some(why) = self.inner.failed.get() {
            return Err(Error::Failed(why));
        }
        match &self.inner.engine {
            Engine::Local { ctx, queue, .. } => commit(ctx, queue, &self.inner.failed, entries, d),
            #[cfg(feature = "etcd")]
            Engine::Cluster(node) => node.commit(entries),
        }
    }

    /// Applies one operation atomically and durably (as configured).
    pub fn apply(&self, op: Op) -> Result<Outcome> {
        let kind = kind_index(&op);
        let r = op
            .validate()
            .and_then(|()| self.submit_one(Entry::Op(op)).and_then(outcome));
        self.inner.metrics.op(kind, r.as_ref());
        r
    }

    fn submit_one(&self, entry: Entry) -> Result<Applied> {
        validate_entry(&entry)?;
        self.submit(vec![entry])?.pop().ok_or(Error::Closed)
    }

    /// Applies operations in order as one atomic write: all of them or, after
    /// a crash, none. Fails before applying anything if any is invalid; the
    /// error names the operation's index.
    pub fn apply_batch(&self, ops: Vec<Op>) -> Result<Vec<Outcome>> {
        self.apply_batch_as(ops, None)
    }

    /// `apply_batch` with this write's own durability instead of the
    /// registry's: `Immediate` returns once the batch is fdatasynced, also
    /// on an `Eventual` registry; `Eventual` returns once it is written to
    /// the OS, also on an `Immediate` registry (the timer syncs it within
    /// `eventual_sync_interval_ms`). Writes committed in one group share
    /// the stronger durability: an `Eventual` write that joins an
    /// `Immediate` one is synced with it.
    pub fn apply_batch_with(&self, ops: Vec<Op>, durability: Durability) -> Result<Vec<Outcome>> {
        self.apply_batch_as(ops, Some(durability))
    }

    /// Both: counted by kind and outcome (`durability` None: the registry's).
    fn apply_batch_as(&self, ops: Vec<Op>, durability: Option<Durability>) -> Result<Vec<Outcome>> {
        let kinds: Vec<u8> = ops.iter().map(|op| kind_index(op) as u8).collect();
        let r = self.apply_batch_uncounted(ops, durability);
        count_batch(&self.inner.metrics, &kinds, &r);
        r
    }

    /// [`apply_batch_with`](Registry::apply_batch_with) (`durability`
    /// None: the registry's) without waiting: the writer thread commits the
    /// batch, with whatever else is queued, and calls `done` with the same
    /// outcome `apply_batch_with` would return, once the batch is as durable
    /// as asked. For async services: `done` completes a future (a oneshot
    /// channel's send), and no thread waits for the fdatasync meanwhile.
    /// An invalid batch, or a closed or failed registry, calls `done` at
    /// once on this thread. An `Eventual` batch that finds the writer idle
    /// is committed by this thread itself, with no hand-off (one group: no
    /// fdatasync unless an `Immediate` write queued meanwhile joins it; the
    /// timers stay with the writer thread), and `done` runs here before
    /// this returns. Otherwise `done` runs on the writer thread. Either way
    /// it must not block, and every write waits while it runs; a `done`
    /// that panics is contained.
    pub fn apply_batch_then(
        &self,
        ops: Vec<Op>,
        durability: Option<Durability>,
        done: impl FnOnce(Result<Vec<Outcome>>) + Send + 'static,
    ) {
        let kinds: Vec<u8> = ops.iter().map(|op| kind_index(op) as u8).collect();
        let metrics = self.inner.metrics.clone();
        let finish = move |r: Result<Vec<Outcome>>| {
            count_batch(&metrics, &kinds, &r);
            done(r);
        };
        let entries = match self.detached_entries(ops) {
            Ok(Some(entries)) => entries,
            Ok(None) => return finish(Ok(Vec::new())),
            Err(e) => return finish(Err(e)),
        };
        let reply = WriteReply::Call(Box::new(move |r: Result<Vec<Applied>>| {
            finish(r.and_then(outcomes));
        }));
        let request = (entries, durability, reply);
        let (tx, ctx, queue) = match &self.inner.engine {
            Engine::Local { tx, ctx, queue } => (tx, ctx, queue),
            // The node's leader thread commits it and its applier answers.
            #[cfg(feature = "etcd")]
            Engine::Cluster(node) => return node.submit(request),
        };
        let Some(msgs) = tx.lock().clone() else {
            return request.2.send(Err(Error::Closed));
        };
        // An `Eventual` write needs no fdatasync: when the writer lock is
        // free this thread commits it at once (no hand-off either way).
        match durability.unwrap_or(self.inner.durability) {
            Durability::Eventual => submit_inline_or_detached(ctx, queue, &msgs, request),
            Durability::Immediate => submit_detached(ctx, queue, &msgs, request),
        }
    }

    /// The entries of a batch that `apply_batch_then` may queue (None: an
    /// empty batch), or why it may not.
    fn detached_entries(&self, ops: Vec<Op>) -> Result<Option<Vec<Entry>>> {
        self.refuse_if_read_only()?;
        if let Some(why) = self.inner.failed.get() {
            return Err(Error::Failed(why));
        }
        validate_batch(&ops)?;
        Ok((!ops.is_empty()).then(|| ops.into_iter().map(Entry::Op).collect()))
    }

    fn apply_batch_uncounted(
        &self,
        ops: Vec<Op>,
        durability: Option<Durability>,
    ) -> Result<Vec<Outcome>> {
        validate_batch(&ops)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        outcomes(self.submit_as(ops.into_iter().map(Entry::Op).collect(), durability)?)
    }
}

/// Counts each operation of a batch by its kind (`kinds`, in order) and
/// its outcome; a batch that failed as a whole gives each its error.
fn count_batch(m: &Recorder, kinds: &[u8], r: &Result<Vec<Outcome>>) {
    match r {
        Ok(outcomes) => {
            for (&k, o) in kinds.iter().zip(outcomes) {
                m.op(usize::from(k), Ok(o));
            }
        }
        Err(e) => {
            for &k in kinds {
                m.op(usize::from(k), Err(e));
            }
        }
    }
}

/// Checks a batch's size and every operation; the error names the
/// operation's index.
fn validate_batch(ops: &[Op]) -> Result<()> {
    if ops.len() > crate::limits::MAX_OPS_PER_BATCH {
        return Err(Error::invalid(
            "batch",
            format!(
                "has {} operations, the limit is {}",
                ops.len(),
                crate::limits::MAX_OPS_PER_BATCH
            ),
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        op.validate().map_err(|e| match e {
            Error::Invalid { field, reason } => Error::Invalid {
                field: format!("batch[{i}].{field}"),
                reason,
            },
            other => other,
        })?;
    }
    Ok(())
}

impl Registry {
    /// Registers (upserts) a device; see [`Op::Register`].
    pub fn register(&self, r: Register) -> Result<Outcome> {
        self.apply(Op::Register(r))
    }

    /// The device was seen at `seen_ms`.
    pub fn touch(&self, token: &str, seen_ms: u64) -> Result<Outcome> {
        self.apply(Op::Touch {
            token: token.into(),
            seen_ms,
        })
    }

    /// Moves the record from `old_token` to `new_token`.
    pub fn rotate(&self, old_token: &str, new_token: &str, seen_ms: u64) -> Result<Outcome> {
        self.apply(Op::Rotate {
            old_token: old_token.into(),
            new_token: new_token.into(),
            seen_ms,
        })
    }

    /// Logs the owner out of the device.
    pub fn logout(&self, token: &str, policy: LogoutPolicy) -> Result<Outcome> {
        self.apply(Op::Logout {
            token: token.into(),
            policy,
        })
    }

    /// Moves every device of `secondary` to `primary`, then applies the cap.
    pub fn merge(&self, primary: &str, secondary: &str) -> Result<Outcome> {
        self.apply(Op::Merge {
            primary: primary.into(),
            secondary: secondary.into(),
        })
    }

    /// Deletes the device.
    pub fn remove(&self, token: &str) -> Result<Outcome> {
        self.apply(Op::Remove {
            token: token.into(),
        })
    }

    /// Deletes the device if it was not seen after `provider_ms`.
    pub fn invalidate(&self, token: &str, provider_ms: u64) -> Result<Outcome> {
        self.apply(Op::Invalidate {
            token: token.into(),
            provider_ms,
        })
    }

    /// Records what happened to a push to `token` at `at_ms` (DESIGN.md
    /// 20): `delivered`, `soft_failure` and `hard_failure` update the
    /// device's deliverability (`Skipped` when the feedback is older than
    /// what it already knows); `unregistered` deletes the device if it was
    /// not seen after `at_ms`, like `invalidate`. `NotFound` for an
    /// unknown token.
    pub fn feedback(
        &self,
        token: &str,
        outcome: FeedbackOutcome,
        at_ms: u64,
        reason: Option<&str>,
    ) -> Result<Outcome> {
        self.apply(Op::Feedback {
            token: token.into(),
            outcome,
            at_ms,
            reason: reason.map(str::to_owned),
        })
    }

    /// A device's deliverability and whether it is suppressed now; `None`
    /// when the token is not registered.
    pub fn deliverability(&self, token: &str) -> Option<(Deliverability, bool)> {
        let (d, seen) = self.inner.read_state().deliverability(token)?;
        Some((d, d.suppressed(seen, self.inner.soft_limit)))
    }

    /// A person's most recently seen device (optionally on one platform)
    /// that is not suppressed by delivery feedback: the `most_recent` walk,
    /// skipping suppressed devices (O(devices of the person)).
    pub fn most_recent_deliverable(
        &self,
        person: &str,
        platform: Option<Platform>,
    ) -> Option<Device> {
        self.inner
            .state
            .read()
            .most_recent_deliverable(person, platform, self.inner.soft_limit)
    }

    /// Consecutive soft failures that suppress a device (the open's
    /// `Config::soft_failures_to_suppress`).
    pub fn soft_failures_to_suppress(&self) -> u32 {
        self.inner.soft_limit
    }

    /// Deletes every device last seen before `before_ms`.
    pub fn prune(&self, before_ms: u64) -> Result<Outcome> {
        self.apply(Op::Prune { before_ms })
    }

    /// The device with this token.
    pub fn device(&self, token: &str) -> Option<Device> {
        self.inner.read_state().device(token)
    }

    /// `device`, if it can be answered without waiting: None when a write
    /// holds the state at this moment. For async callers, whose threads
    /// must never block: the answer is an in-memory lookup.
    pub fn try_device(&self, token: &str) -> Option<Option<Device>> {
        self.inner.state.try_read().map(|st| st.device(token))
    }

    /// A person's devices, most recently seen first (ties by token).
    pub fn devices_of(&self, person: &str) -> Vec<Device> {
        self.inner.read_state().devices_of(person)
    }

    /// `devices_of`, each device with its deliverability and whether it is
    /// suppressed now (`false`: deliverable).
    pub fn devices_of_deliverability(&self, person: &str) -> Vec<(Device, Deliverability, bool)> {
        self.inner
            .state
            .read()
            .devices_of_deliverability(person, self.inner.soft_limit)
    }

    /// A person's most recently seen device, optionally on one platform.
    pub fn most_recent(&self, person: &str, platform: Option<Platform>) -> Option<Device> {
        self.inner.read_state().most_recent(person, platform)
    }

    /// How many devices were seen at or after `since_ms`.
    pub fn active_since(&self, since_ms: u64, platform: Option<Platform>) -> u64 {
        self.inner.read_state().active_count(since_ms, platform)
    }

    /// The devices seen at or after `since_ms`, walked in pages (no lock is
    /// held between pages), per platform in `(last_seen_ms, token)` order.
    pub fn active_devices(&self, since_ms: u64, platform: Option<Platform>) -> ActiveIter {
        let platforms = match platform {
            Some(p) => vec![p],
            None => Platform::ALL.to_vec(),
        };
        ActiveIter {
            reg: self.clone(),
            since_ms,
            platforms,
            cursor: None,
            buf: Vec::new().into_iter(),
            done: false,
        }
    }

    /// One page of a platform's devices in `(last_seen_ms, token)` order,
    /// starting after `cursor`; pass `page.next` back to continue.
    pub fn page_by_platform(
        &self,
        platform: Platform,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Page {
        let cursor = cursor.filter(|c| c.platform == platform);
        self.inner
            .state
            .read()
            .page(platform, 0, cursor, limit.max(1))
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.inner.read_state().stats()
    }

    /// Every device, ordered by token.
    pub fn dump(&self) -> Vec<Device> {
        self.inner.read_state().dump()
    }

    /// Calls `f` with every device in dump order (by token), one at a
    /// time, holding 8 bytes per device instead of every `Device` as
    /// `dump` does. The state's read lock is held throughout, so writers
    /// wait until it returns: for a live registry, prefer `dump_page`.
    /// Stops at `f`'s first error and returns it.
    pub fn dump_each<E>(
        &self,
        f: impl FnMut(Device) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.inner.read_state().dump_each(f)
    }

    /// Up to `limit` devices in dump order (by token), those after the
    /// token `after` (None: from the start): pass the last token returned
    /// to get the next page. Holds O(`limit`) devices, unlike `dump`; each
    /// page scans every device (about 20 ns each) under the state's read
    /// lock, so writers wait that long. A device present during the whole
    /// iteration is returned exactly once; one added or removed meanwhile
    /// may or may not be.
    pub fn dump_page(&self, after: Option<&str>, limit: usize) -> Vec<Device> {
        let after = after.map(crate::codec::pack_token);
        self.inner.read_state().dump_page(after.as_deref(), limit)
    }

    fn refuse_if_read_only(&self) -> Result<()> {
        match self.inner.read_only {
            true => Err(Error::ReadOnly {
                path: self.inner.path.clone(),
            }),
            false => Ok(()),
        }
    }

    /// Waits until this registry has applied every write its etcd cluster
    /// acknowledged before the call (from any node), so that a read after
    /// it sees them all: a linearizable read (DESIGN.md 15). A local
    /// registry has nothing to wait for. Fails after 20 s
    /// (`ETCD_RETRY_MS`) if the cluster or this node cannot get there.
    pub fn catch_up(&self) -> Result<()> {
        match &self.inner.engine {
            Engine::Local { .. } => Ok(()),
            #[cfg(feature = "etcd")]
            Engine::Cluster(node) => node.catch_up(),
        }
    }

    /// The etcd cluster's members and leader, this node's place in the
    /// operation log (its watch lag), the checkpoint lock and each sink's
    /// exporter (`devreg cluster status`); `Unsupported` on a local
    /// registry.
    #[cfg(feature = "etcd")]
    pub fn cluster_status(&self) -> Result<ClusterStatus> {
        match &self.inner.engine {
            Engine::Cluster(node) => node.status(),
            Engine::Local { .. } => Err(Error::Unsupported(
                "cluster status of a local registry".into(),
            )),
        }
    }

    /// Writes a checkpoint to the store now and waits for it.
    pub fn checkpoint(&self) -> Result<()> {
        self.refuse_if_read_only()?;
        let (reply, rx) = bounded(1);
        // On etcd: by this node if it holds the checkpoint lock or can
        // take it, else `Unsupported` naming why (DESIGN.md 15.3).
        #[cfg(feature = "etcd")]
        if let Engine::Cluster(node) = &self.inner.engine {
            node.checkpoints().request(reply);
            return rx.recv().map_err(|_| Error::Closed)?;
        }
        self.send(Msg::Checkpoint { reply })?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Closes the database for every clone of this handle: the final log
    /// sync and checkpoint run now, and their failure is returned instead
    /// of being lost in a drop. Later calls on any clone fail with
    /// [`Error::Closed`]. A caller that reports success (like `devreg
    /// import`) should close first.
    pub fn close(self) -> Result<()> {
        self.inner.shut_down()
    }

    /// Bytes of keys and values the checkpoints handed to the store since
    /// this open (pages, delta pages and metadata; sled's own overhead not
    /// counted): divided by the devices changed, the write amplification
    /// of checkpoints.
    pub fn store_bytes_written(&self) -> u64 {
        self.inner.store.bytes_written()
    }

    /// Bytes the database takes on disk (store and log).
    pub fn disk_bytes(&self) -> u64 {
        self.inner.store.disk_bytes() + self.log_disk_bytes()
    }

    /// Bytes of the files under `log/` (preallocated segments count whole).
    fn log_disk_bytes(&self) -> u64 {
        std::fs::read_dir(self.inner.path.join("log"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Verifies every index and counter against the records, the cap, and the
    /// store plus a replay of the log against the memory state.
    pub fn check(&self) -> Result<CheckReport> {
        #[cfg(feature = "etcd")]
        if let Engine::Cluster(node) = &self.inner.engine {
            return cluster::check(node, &*self.inner.store, self.inner.history_retention_ms);
        }
        let (reply, rx) = bounded(1);
        let path = self.inner.path.clone();
        self.send(Msg::Exclusive {
            f: Box::new(move |ctx: &mut WriterCtx| {
                let _ = reply.send(check_on_writer(ctx, &path));
            }),
        })?;
        rx.recv().map_err(|_| Error::Closed)?
    }
}

/// Each entry's outcome, into a vector of its own: collected in place (as
/// `into_iter().map(outcome).collect()` is) the `Applied` buffer was then
/// shrunk to fit by a `realloc` that copied it, 2% of the importing
/// thread's time at 10^7 devices (DESIGN.md 13 step 46).
fn outcomes(applied: Vec<Applied>) -> Result<Vec<Outcome>> {
    let mut out = Vec::with_capacity(applied.len());
    for a in applied {
        out.push(outcome(a)?);
    }
    Ok(out)
}

fn outcome(a: Applied) -> Result<Outcome> {
    match a {
        Applied::Op(o) => Ok(o),
        Applied::Rejected(field, why) => Err(Error::invalid(field, why)),
        other => Err(Error::corrupt(
            "writer",
            format!("unexpected result {other:?}"),
        )),
    }
}

/// Iterator over active devices; see [`Registry::active_devices`].
pub struct ActiveIter {
    reg: Registry,
    since_ms: u64,
    platforms: Vec<Platform>,
    cursor: Option<Cursor>,
    buf: std::vec::IntoIter<Device>,
    done: bool,
}

impl Iterator for ActiveIter {
    type Item = Device;

    fn next(&mut self) -> Option<Device> {
        loop {
            if let Some(d) = self.buf.next() {
                return Some(d);
            }
            if self.done {
                return None;
            }
            let &platform = self.platforms.first()?;
            let page = self.reg.inner.state.read().page(
                platform,
                self.since_ms,
                self.cursor.as_ref(),
                1024,
            );
            self.cursor = page.next;
            if self.cursor.is_none() {
                self.platforms.remove(0);
                self.done = self.platforms.is_empty();
            }
            self.buf = page.devices.into_iter();
        }
    }
}

/// The error of a call an etcd registry does not offer (yet).
#[cfg(feature = "etcd")]
fn cluster_unsupported(what: &str) -> Error {
    Error::Unsupported(format!(
        "{what} on a registry in an etcd cluster (DESIGN.md 15)"
    ))
}

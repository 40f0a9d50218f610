//! The write path (leader-based group commit), the background writer thread
//! and the checkpointer thread.
//!
//! The leader takes every request queued at the moment it gets the lock,
//! applies them in order to the in-memory state under one short write lock,
//! appends one log record per request, and acknowledges all of them after
//! one write (and, for `Immediate`, one fdatasync). Reads never wait for the
//! fdatasync: the lock is released before the log I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bincode::Options;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};

use crate::codec::bincode_opts;
use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::log::LogWriter;
use crate::state::{Applied, Entry, State};
use crate::store::{KvStore, Snapshot};

pub(crate) type Reply<T> = Sender<Result<T>>;

pub(crate) enum Msg {
    /// Take a checkpoint now and wait for it.
    Checkpoint { reply: Reply<()> },
    /// Run `f` on the writer thread with no write or checkpoint in progress.
    Exclusive {
        f: Box<dyn FnOnce(&mut WriterCtx) + Send>,
    },
}

/// One caller's write, queued for the next leader.
pub(crate) type Request = (Vec<Entry>, Reply<Vec<Applied>>);

/// Writes waiting for a leader.
pub(crate) struct WriteQueue {
    tx: Sender<Request>,
    rx: Receiver<Request>,
}

impl WriteQueue {
    pub(crate) fn new() -> WriteQueue {
        let (tx, rx) = crossbeam_channel::unbounded();
        WriteQueue { tx, rx }
    }
}

/// Commits `entries` with group commit and no thread hand-off: the caller
/// queues its request, then takes the writer lock; whoever holds it (the
/// leader) commits every queued request as one group, so callers that arrive
/// during a leader's fsync share the next one. When the lock is ours, our
/// request was committed by an earlier leader or is in the queue for us.
pub(crate) fn commit(
    ctx: &Mutex<WriterCtx>,
    queue: &WriteQueue,
    entries: Vec<Entry>,
) -> Result<Vec<Applied>> {
    let (reply, done) = crossbeam_channel::bounded(1);
    queue.tx.send((entries, reply)).map_err(|_| Error::Closed)?;
    loop {
        // Done by an earlier leader?
        match done.try_recv() {
            Ok(r) => return r,
            Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(Error::Closed),
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        if let Some(mut c) = ctx.try_lock() {
            lead(&mut c, queue);
            continue;
        }
        // Another caller leads (likely in its fsync) and takes our request
        // with its next group; waiting on the lock instead would make every
        // caller queue behind each fsync in turn. A request queued just as a
        // leader finished is picked up by the next poll.
        match done.recv_timeout(std::time::Duration::from_micros(100)) {
            Ok(r) => return r,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(Error::Closed),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Commits every queued request, a group at a time, until the queue is empty.
fn lead(c: &mut WriterCtx, queue: &WriteQueue) {
    loop {
        let mut group = Vec::new();
        let mut ops = 0;
        while ops < crate::limits::MAX_GROUP_OPS {
            match queue.rx.try_recv() {
                Ok(req) => {
                    ops += req.0.len();
                    group.push(req);
                }
                Err(_) => break,
            }
        }
        if group.is_empty() {
            break;
        }
        c.write_group(group);
    }
    c.periodic();
}

/// Shared "the store failed" flag: once set, every write is refused.
#[derive(Default)]
pub(crate) struct FailFlag(Mutex<Option<String>>);

impl FailFlag {
    pub(crate) fn set(&self, why: &Error) {
        let mut g = self.0.lock();
        if g.is_none() {
            *g = Some(why.fail_reason());
        }
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().clone()
    }
}

pub(crate) struct CheckpointJob {
    snapshot: Snapshot,
    done: Option<Reply<()>>,
}

/// What the writer thread owns.
pub(crate) struct WriterCtx {
    pub(crate) state: Arc<RwLock<State>>,
    pub(crate) log: LogWriter,
    pub(crate) store: Arc<dyn KvStore>,
    pub(crate) failed: Arc<FailFlag>,
    pub(crate) config: Config,
    pub(crate) ckpt_tx: Option<Sender<CheckpointJob>>,
    pub(crate) ckpt_busy: Arc<AtomicBool>,
    pub(crate) last_checkpoint_lsn: u64,
    pub(crate) last_checkpoint_at: Instant,
    pub(crate) last_sync_at: Instant,
    /// The last commit time stamped (`Entry::Clock`); never goes backwards.
    pub(crate) last_clock_ms: u64,
}

/// Wall-clock Unix milliseconds.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode_entries(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    for e in entries {
        bincode_opts()
            .serialize_into(&mut body, e)
            .map_err(|e| Error::invalid("batch", format!("cannot encode: {e}")))?;
    }
    Ok(body)
}

/// Decodes a log record body into its entries.
pub(crate) fn decode_entries(location: &str, count: u32, body: &[u8]) -> Result<Vec<Entry>> {
    let mut rd = body;
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    for i in 0..count {
        let e: Entry = bincode_opts()
            .allow_trailing_bytes()
            .deserialize_from(&mut rd)
            .map_err(|e| Error::corrupt(location, format!("entry {i}: {e}")))?;
        out.push(e);
    }
    if !rd.is_empty() {
        return Err(Error::corrupt(
            location,
            format!("{} bytes after the last entry", rd.len()),
        ));
    }
    Ok(out)
}

impl WriterCtx {
    fn fail(&self, e: &Error) -> Error {
        self.failed.set(e);
        Error::failed_from(e)
    }

    fn refuse(&self) -> Option<Error> {
        self.failed.get().map(Error::Failed)
    }

    /// The background duties: timers, forced checkpoints, exclusive work
    /// (the integrity check) and the final checkpoint at close. Writes do not
    /// pass through here: callers commit them as leaders (see `commit`).
    pub(crate) fn run(ctx: Arc<Mutex<WriterCtx>>, rx: Receiver<Msg>) {
        let tick = {
            let c = ctx.lock();
            Duration::from_millis(
                c.config
                    .eventual_sync_interval_ms
                    .clamp(5, 1000)
                    .min(c.config.checkpoint_interval_ms.max(5)),
            )
        };
        loop {
            match rx.recv_timeout(tick) {
                Ok(Msg::Checkpoint { reply }) => {
                    let mut c = ctx.lock();
                    if let Err(e) = c.checkpoint_now(Some(reply.clone())) {
                        let _ = reply.send(Err(e));
                    }
                }
                Ok(Msg::Exclusive { f }) => {
                    let mut c = ctx.lock();
                    c.wait_checkpoint_idle();
                    f(&mut c);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            ctx.lock().periodic();
        }
        ctx.lock().shutdown();
    }

    fn write_group(&mut self, group: Vec<(Vec<Entry>, Reply<Vec<Applied>>)>) {
        if let Some(e) = self.refuse() {
            for (_, reply) in group {
                let _ = reply.send(Err(Error::failed_from(&e)));
            }
            return;
        }
        // Every record starts with the group's commit time, so replay
        // stamps history entries with the same times.
        let now = wall_ms()
            .min(crate::limits::MAX_TIMESTAMP_MS)
            .max(self.last_clock_ms);
        self.last_clock_ms = now;
        // Encode first: it needs no state, and sizes decide segment rolls.
        let mut work = Vec::with_capacity(group.len());
        for (mut entries, reply) in group {
            entries.insert(0, Entry::Clock(now));
            match encode_entries(&entries) {
                Ok(body) if body.len() <= self.log.max_body() => work.push((entries, body, reply)),
                Ok(body) => {
                    let _ = reply.send(Err(Error::invalid(
                        "batch",
                        format!(
                            "encodes to {} bytes, over the log record limit of {}",
                            body.len(),
                            self.log.max_body()
                        ),
                    )));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        let rolls = self.log.rolls_needed(work.iter().map(|w| w.1.len()));
        for n in 1..=rolls {
            let seq = self.log.seq_after(n);
            if !self.log.pool().has_room_for(seq) {
                // Backpressure: the log is full until a checkpoint releases segments.
                if let Err(e) = self.checkpoint_now(None) {
                    let e = self.fail(&e);
                    for (_, _, reply) in work {
                        let _ = reply.send(Err(Error::failed_from(&e)));
                    }
                    return;
                }
                let failed = self.failed.clone();
                self.log
                    .pool()
                    .wait_for_room(seq, &move || failed.get().is_some());
            }
        }
        let mut results = Vec::with_capacity(work.len());
        {
            let mut st = self.state.write();
            for (entries, body, reply) in work {
                let mut changed = false;
                // The clock's own result is not the caller's.
                let outcomes: Vec<Applied> = entries
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        let (a, c) = st.apply(e);
                        changed |= c;
                        (i > 0).then_some(a)
                    })
                    .collect();
                results.push((entries.len() as u32, body, changed, outcomes, reply));
            }
        }
        let mut io = Ok(());
        for (count, body, changed, _, _) in &results {
            if *changed {
                if let Err(e) = self.log.append(*count, body) {
                    io = Err(e);
                    break;
                }
            }
        }
        let io = io.and_then(|()| match self.config.durability {
            Durability::Immediate => self.log.sync(),
            Durability::Eventual => self.log.write_out(),
        });
        if let Err(e) = io {
            let e = self.fail(&e);
            for (.., reply) in results {
                let _ = reply.send(Err(Error::failed_from(&e)));
            }
            return;
        }
        for (_, _, _, outcomes, reply) in results {
            let _ = reply.send(Ok(outcomes));
        }
        let since = self.log.end_lsn() - self.last_checkpoint_lsn;
        let trigger = self
            .config
            .checkpoint_log_bytes
            .unwrap_or(self.config.log_segment_bytes / 2);
        if since >= trigger && !self.ckpt_busy.load(Ordering::Acquire) {
            if let Err(e) = self.start_checkpoint(None) {
                self.fail(&e);
            }
        }
    }

    fn periodic(&mut self) {
        if self.refuse().is_some() {
            return;
        }
        let now = Instant::now();
        if self.log.needs_sync()
            && now.duration_since(self.last_sync_at)
                >= Duration::from_millis(self.config.eventual_sync_interval_ms)
        {
            if let Err(e) = self.log.sync() {
                self.fail(&e);
                return;
            }
            self.last_sync_at = now;
        }
        let due = now.duration_since(self.last_checkpoint_at)
            >= Duration::from_millis(self.config.checkpoint_interval_ms);
        if due && !self.ckpt_busy.load(Ordering::Acquire) {
            let dirty = !self.state.read().dirty.is_empty();
            if dirty {
                if let Err(e) = self.start_checkpoint(None) {
                    self.fail(&e);
                }
            } else {
                self.last_checkpoint_at = now;
            }
        }
    }

    fn wait_checkpoint_idle(&self) {
        while self.ckpt_busy.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Hands a snapshot of the state at the log's end to the checkpointer.
    fn start_checkpoint(&mut self, done: Option<Reply<()>>) -> Result<()> {
        self.wait_checkpoint_idle();
        self.log.write_out()?;
        let lsn = self.log.end_lsn();
        let snapshot = Snapshot::take(&mut self.state.write(), lsn, Vec::new());
        self.ckpt_busy.store(true, Ordering::Release);
        let job = CheckpointJob { snapshot, done };
        match &self.ckpt_tx {
            Some(tx) if tx.send(job).is_ok() => {}
            _ => {
                self.ckpt_busy.store(false, Ordering::Release);
                return Err(Error::Closed);
            }
        }
        self.last_checkpoint_lsn = lsn;
        self.last_checkpoint_at = Instant::now();
        Ok(())
    }

    fn checkpoint_now(&mut self, done: Option<Reply<()>>) -> Result<()> {
        if let Some(e) = self.refuse() {
            return Err(e);
        }
        self.start_checkpoint(done)
    }

    fn shutdown(&mut self) {
        if self.refuse().is_none() {
            let r = self.log.sync().and_then(|()| self.start_checkpoint(None));
            if let Err(e) = r {
                self.fail(&e);
            }
            self.wait_checkpoint_idle();
        }
        self.ckpt_tx = None;
    }
}

/// The checkpointer: writes snapshots to the store and releases log segments.
pub(crate) fn run_checkpointer(
    rx: Receiver<CheckpointJob>,
    store: Arc<dyn KvStore>,
    pool: Arc<crate::log::segments::SegmentPool>,
    failed: Arc<FailFlag>,
    busy: Arc<AtomicBool>,
) {
    for job in rx {
        let r = job.snapshot.write(&*store);
        match &r {
            Ok(lsn) => pool.checkpointed(*lsn),
            Err(e) => failed.set(e),
        }
        busy.store(false, Ordering::Release);
        if let Some(done) = job.done {
            let _ = done.send(r.map(|_| ()));
        }
    }
}

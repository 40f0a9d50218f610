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

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::log::entry::{encode_entries, Entry};
use crate::log::LogWriter;
use crate::metrics::Recorder;
use crate::state::{Applied, State, StateLock, StateWrite};
use crate::store::{KvStore, Snapshot};

mod checkpointer;
pub(crate) use checkpointer::{run_checkpointer, CheckpointerCtx};

pub(crate) type Reply<T> = Sender<Result<T>>;

pub(crate) enum Msg {
    /// Take a checkpoint now and wait for it.
    Checkpoint { reply: Reply<()> },
    /// Run `f` on the writer thread with no write or checkpoint in progress.
    Exclusive {
        f: Box<dyn FnOnce(&mut WriterCtx) + Send>,
    },
    /// Lead the queued writes: one was submitted with no caller waiting
    /// (`submit_detached`).
    Lead,
}

/// Where a write's outcome goes.
pub(crate) enum WriteReply {
    /// A caller waiting in `commit`.
    Wait(Reply<Vec<Applied>>),
    /// A callback, run once on the thread that committed the write
    /// (`Registry::apply_batch_then`); dropped uncalled only if that
    /// thread panicked.
    Call(Box<dyn FnOnce(Result<Vec<Applied>>) + Send>),
}

impl WriteReply {
    /// Hands over the outcome. A callback that panics is the caller's bug,
    /// not the store's: it is contained, and the writer goes on.
    pub(crate) fn send(self, r: Result<Vec<Applied>>) {
        match self {
            WriteReply::Wait(tx) => {
                let _ = tx.send(r);
            }
            WriteReply::Call(f) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r)));
            }
        }
    }
}

/// One caller's write, queued for the next leader: its entries, the
/// durability it asked for (None: the registry's), where to answer.
pub(crate) type Request = (Vec<Entry>, Option<Durability>, WriteReply);

/// Writes waiting for a leader.
#[derive(Clone)]
pub(crate) struct WriteQueue {
    tx: Sender<Request>,
    rx: Receiver<Request>,
    /// Set while a `Msg::Lead` is on its way to the writer thread: detached
    /// writes arriving meanwhile send no other one.
    lead_wanted: Arc<AtomicBool>,
}

impl WriteQueue {
    pub(crate) fn new() -> WriteQueue {
        let (tx, rx) = crossbeam_channel::unbounded();
        WriteQueue {
            tx,
            rx,
            lead_wanted: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Queues a write whose outcome goes to `reply` and has the writer thread
/// (`msgs`) lead it, so no caller thread waits: for async callers, whose
/// threads must not block. Every request queued before the writer thread
/// takes a `Lead` is in the groups it leads; `msgs` is held until the
/// `Lead` is sent, so the writer thread cannot have stopped before it
/// reads it. A writer thread that is gone answers nothing: then this
/// thread leads (the writer is closed, so the request is refused).
pub(crate) fn submit_detached(
    ctx: &Mutex<WriterCtx>,
    queue: &WriteQueue,
    msgs: &Sender<Msg>,
    request: Request,
) {
    if enqueue(queue, request) {
        want_lead(ctx, queue, msgs);
    }
}

/// Queues `request`; false (it is answered `Closed`) if it cannot be.
fn enqueue(queue: &WriteQueue, request: Request) -> bool {
    match queue.tx.send(request) {
        Ok(()) => true,
        Err(e) => {
            // The queue holds its own receiver: unreachable, but answered.
            e.into_inner().2.send(Err(Error::Closed));
            false
        }
    }
}

/// Has the writer thread lead what is queued, unless a `Lead` is already
/// on its way; a writer thread that is gone leaves it to this thread.
fn want_lead(ctx: &Mutex<WriterCtx>, queue: &WriteQueue, msgs: &Sender<Msg>) {
    if queue.lead_wanted.swap(true, Ordering::SeqCst) {
        return;
    }
    if msgs.send(Msg::Lead).is_err() {
        queue.lead_wanted.store(false, Ordering::SeqCst);
        lead(&mut ctx.lock(), queue);
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
    failed: &FailFlag,
    entries: Vec<Entry>,
    durability: Option<Durability>,
) -> Result<Vec<Applied>> {
    let (reply, done) = crossbeam_channel::bounded(1);
    queue
        .tx
        .send((entries, durability, WriteReply::Wait(reply)))
        .map_err(|_| Error::Closed)?;
    // A reply dropped unanswered: the leader panicked (and failed stop).
    let dropped = || Err(failed.get().map_or(Error::Closed, Error::Failed));
    loop {
        // Done by an earlier leader?
        match done.try_recv() {
            Ok(r) => return r,
            Err(crossbeam_channel::TryRecvError::Disconnected) => return dropped(),
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        if let Some(mut c) = ctx.try_lock() {
            lead_for_caller(&mut c, queue);
            continue;
        }
        // Another caller leads (likely in its fsync) and takes our request
        // with its next group; waiting on the lock instead would make every
        // caller queue behind each fsync in turn. A request queued just as a
        // leader finished is picked up by the next poll.
        match done.recv_timeout(std::time::Duration::from_micros(100)) {
            Ok(r) => return r,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return dropped(),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Commits every queued request, a group at a time, until the queue is empty.
fn lead(c: &mut WriterCtx, queue: &WriteQueue) {
    while lead_group(c, queue) {}
    c.periodic();
}

/// `lead` for a caller whose own request is queued: one group, which holds
/// that request unless `MAX_GROUP_OPS` cut it (then `commit` leads again).
/// Leading on until the queue was empty kept a caller from its next write
/// while the others' went on, and a synced group waits for the last one's
/// callers: four threads of durable writes committed in groups of three
/// while the fourth led them (DESIGN.md 7). What is left is led by its
/// callers, who poll the lock.
fn lead_for_caller(c: &mut WriterCtx, queue: &WriteQueue) {
    lead_group(c, queue);
    c.periodic();
}

/// Commits one group of queued requests; false when the queue was empty.
fn lead_group(c: &mut WriterCtx, queue: &WriteQueue) -> bool {
    let mut group = Vec::new();
    let mut ops = 0;
    while ops < crate::limits::MAX_GROUP_OPS && take_queued(queue, &mut group, &mut ops) {}
    if group.is_empty() {
        return false;
    }
    let mode = group_durability(c.config.durability, &group);
    if mode == Durability::Immediate {
        gather(c, queue, &mut group, ops);
    }
    // A panic here would leave the state half-applied with the flag
    // unset: catch it and fail stop (finding 14). The group's replies
    // are dropped with it; `commit` turns that into the failure. The
    // requests queued behind it are still taken, and refused: no other
    // leader may come for a detached one.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.write_group(group, mode)));
    if r.is_err() {
        c.fail(&Error::Failed(
            "the writer panicked while applying a group".into(),
        ));
    }
    true
}

/// Moves the next queued request into `group`, counting its operations in
/// `ops`; false when none is queued.
fn take_queued(queue: &WriteQueue, group: &mut Vec<Request>, ops: &mut usize) -> bool {
    match queue.rx.try_recv() {
        Ok(req) => {
            *ops += req.0.len();
            group.push(req);
            true
        }
        Err(_) => false,
    }
}

/// Before a group that will be synced: while it holds fewer requests than
/// the last synced group, takes those that arrive within
/// `Config::group_gather_us` (DESIGN.md 7, "A synced group waits for the
/// last one's callers"). That group's callers were answered a moment ago
/// and are queueing their next writes; each that makes it shares this
/// fsync instead of paying the next. A group of one after a group of one
/// never waits; the caller gathers only for a group that will be synced.
fn gather(c: &mut WriterCtx, queue: &WriteQueue, group: &mut Vec<Request>, mut ops: usize) {
    let wait = Duration::from_micros(c.config.group_gather_us);
    let start = Instant::now();
    while group.len() < c.last_synced_group
        && ops < crate::limits::MAX_GROUP_OPS
        && start.elapsed() < wait
    {
        if !take_queued(queue, group, &mut ops) {
            // The callers need the core more than this loop does.
            std::thread::yield_now();
        }
    }
    c.last_synced_group = group.len();
}

/// How a group is written: synced when any of its requests asks for it
/// (`configured` for a request without a wish).
fn group_durability(configured: Durability, group: &[Request]) -> Durability {
    match group
        .iter()
        .any(|r| r.1.unwrap_or(configured) == Durability::Immediate)
    {
        true => Durability::Immediate,
        false => Durability::Eventual,
    }
}

/// `submit_detached` for an `Eventual` write: when the writer lock is free
/// this thread leads one group itself (its own request among it, so its
/// reply runs here, with no hand-off to the writer thread and back), and
/// leaves the timers and anything queued after that group to the writer
/// thread. Otherwise, or with more queued, as `submit_detached`.
pub(crate) fn submit_inline_or_detached(
    ctx: &Mutex<WriterCtx>,
    queue: &WriteQueue,
    msgs: &Sender<Msg>,
    request: Request,
) {
    if !enqueue(queue, request) {
        return;
    }
    if let Some(mut c) = ctx.try_lock() {
        lead_group(&mut c, queue);
        drop(c);
        if queue.rx.is_empty() {
            return;
        }
    }
    want_lead(ctx, queue, msgs);
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
    pub(crate) state: Arc<StateLock>,
    pub(crate) log: LogWriter,
    pub(crate) store: Arc<dyn KvStore>,
    pub(crate) failed: Arc<FailFlag>,
    pub(crate) config: Config,
    pub(crate) ckpt_tx: Option<Sender<CheckpointJob>>,
    /// A snapshot was handed to the checkpointer and is not written yet.
    pub(crate) ckpt_busy: Arc<AtomicBool>,
    /// The checkpointer is merging or compacting after a checkpoint (a
    /// snapshot handed meanwhile is written between a merge's batches).
    pub(crate) ckpt_merging: Arc<AtomicBool>,
    /// Writes of a checkpoint that failed or was dropped; the next snapshot
    /// starts with them (none is taken after a failure, but the dirty set a
    /// snapshot drained is never simply forgotten).
    pub(crate) ckpt_carry: Arc<Mutex<Vec<crate::store::Write>>>,
    pub(crate) last_checkpoint_lsn: u64,
    pub(crate) last_checkpoint_at: Instant,
    pub(crate) last_sync_at: Instant,
    /// The last commit time stamped (`Entry::Clock`); never goes backwards.
    pub(crate) last_clock_ms: u64,
    /// Set by `shutdown`: every later write is refused with `Closed`.
    pub(crate) closed: bool,
    /// Requests in the last group that was synced (`gather`).
    pub(crate) last_synced_group: usize,
    /// Where group commits are counted.
    pub(crate) metrics: Arc<Recorder>,
    /// `State::pending_records` after the last group applied: at
    /// `Config::checkpoint_pending_records` a checkpoint starts (DESIGN.md 8).
    pub(crate) pending_records: usize,
}

/// One request on its way through a group: its entries (the commit time
/// first), its encoded record body, and where to answer.
pub(crate) struct Work {
    entries: Vec<Entry>,
    body: Vec<u8>,
    reply: WriteReply,
}

/// A request's outcomes and where to send them.
type Done = (Vec<Applied>, WriteReply);

/// Answers every reply with `e`.
fn reply_all(replies: impl Iterator<Item = WriteReply>, e: &Error) {
    for reply in replies {
        reply.send(Err(clone_refusal(e)));
    }
}

/// The error a refused or failed write gets: `Closed` stays `Closed`; any
/// other becomes `Failed` with its text once (not "stopped: stopped: ...").
fn clone_refusal(e: &Error) -> Error {
    match e {
        Error::Closed => Error::Closed,
        other => Error::failed_from(other),
    }
}

/// Applies one request's entries; the outcomes (the commit time's own
/// excluded) and whether anything changed.
fn apply_request(
    st: &mut State,
    entries: &[Entry],
    faults: &crate::fault::Faults,
) -> (Vec<Applied>, bool) {
    let mut changed = false;
    let mut outcomes = Vec::with_capacity(entries.len().saturating_sub(1));
    // A bulk batch on a large state reads ahead (`state/ahead.rs`).
    let ahead = st.ahead_of(entries);
    for (i, e) in entries.iter().enumerate() {
        st.read_ahead(&ahead, i);
        let (a, c) = st.apply(e);
        changed |= c;
        if i > 0 {
            outcomes.push(a);
            crate::fault::maybe_panic(faults);
        }
    }
    st.keep_ahead(ahead);
    (outcomes, changed)
}

/// Wall-clock Unix milliseconds.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl WriterCtx {
    fn fail(&self, e: &Error) -> Error {
        self.failed.set(e);
        self.store.mark_troubled();
        Error::failed_from(e)
    }

    fn refuse(&self) -> Option<Error> {
        self.failed.get().map(Error::Failed)
    }

    /// The background duties: timers, forced checkpoints, exclusive work
    /// (the integrity check) and the final checkpoint at close. Writes do not
    /// pass through here: callers commit them as leaders (see `commit`).
    pub(crate) fn run(ctx: Arc<Mutex<WriterCtx>>, rx: Receiver<Msg>, queue: WriteQueue) {
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
                    if let Err(e) = c.start_checkpoint(Some(reply.clone())) {
                        let _ = reply.send(Err(e));
                    }
                }
                Ok(Msg::Exclusive { f }) => {
                    let mut c = ctx.lock();
                    c.wait_checkpointer_idle();
                    f(&mut c);
                }
                Ok(Msg::Lead) => {
                    // Cleared before the queue is read: a request queued
                    // after this sends another `Lead`.
                    queue.lead_wanted.store(false, Ordering::SeqCst);
                    lead(&mut ctx.lock(), &queue);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            ctx.lock().periodic();
        }
        ctx.lock().shutdown();
    }

    /// Commits one group. In `Immediate` mode the records are written and
    /// fdatasynced before the state changes, so a reader never sees a write
    /// that a crash can take back (finding 16); in `Eventual` mode the state
    /// changes first and only records that changed something are logged.
    ///
    /// `mode` is the group's (`group_durability`): `Immediate` if any of
    /// its requests asks for it (a request without a wish takes the
    /// registry's durability), so an `Eventual` request in such a group is
    /// synced too, never the other way round.
    fn write_group(&mut self, group: Vec<Request>, mode: Durability) {
        let refusal = if self.closed {
            Some(Error::Closed)
        } else {
            self.refuse()
        };
        if let Some(e) = refusal {
            for (_, _, reply) in group {
                reply.send(Err(clone_refusal(&e)));
            }
            return;
        }
        let work = self.encode_group(group);
        if let Err(e) = self.make_room(&work) {
            return reply_all(work.into_iter().map(|w| w.reply), &e);
        }
        let results = match mode {
            Durability::Immediate => self.log_then_apply(work),
            Durability::Eventual => self.apply_then_log(work),
        };
        let Ok(results) = results else {
            return;
        };
        for (outcomes, reply) in results {
            reply.send(Ok(outcomes));
        }
        let since = self.log.end_lsn() - self.last_checkpoint_lsn;
        let trigger = self
            .config
            .checkpoint_log_bytes
            .unwrap_or(self.config.log_segment_bytes / 2);
        let due = since >= trigger || self.many_pending();
        if (due && self.checkpoint_may_start()) || self.backlog_beside_merge(since) {
            if let Err(e) = self.start_checkpoint(None) {
                self.fail(&e);
            }
        }
    }

    /// Whether `since` bytes of log since the last checkpoint are as much
    /// as a merge that leaves no room beside it may let gather
    /// (`LOG_BACKLOG_BESIDE_MERGE_PCT` of the log's bound): then the
    /// writer waits for the merge's end (`start_checkpoint` waits) and
    /// hands its snapshot, instead of filling the rest of the log. The
    /// snapshot after the merge holds every change since the last one, and
    /// at 10^7 devices one of a full log (about 600k writes) set the
    /// import's peak RSS (DESIGN.md 4.3, "History merges").
    fn backlog_beside_merge(&self, since: u64) -> bool {
        if !self.ckpt_merging.load(Ordering::Acquire) || self.store.room_beside_merge() {
            return false;
        }
        let log_bytes = self
            .log
            .pool()
            .max_segments()
            .saturating_mul(self.log.segment_bytes());
        since >= log_bytes / 100 * crate::limits::LOG_BACKLOG_BESIDE_MERGE_PCT
    }

    /// Stamps each request with the commit time and encodes its record;
    /// requests that cannot be logged are answered here.
    fn encode_group(&mut self, group: Vec<Request>) -> Vec<Work> {
        // Every record starts with the group's commit time, so replay
        // stamps history entries with the same times.
        let now = wall_ms()
            .min(crate::limits::MAX_TIMESTAMP_MS)
            .max(self.last_clock_ms);
        self.last_clock_ms = now;
        let mut work = Vec::with_capacity(group.len());
        for (mut entries, _, reply) in group {
            entries.insert(0, Entry::Clock(now));
            match encode_entries(&entries) {
                Ok(body) if body.len() <= self.log.max_body() => work.push(Work {
                    entries,
                    body,
                    reply,
                }),
                Ok(body) => {
                    reply.send(Err(Error::invalid(
                        "batch",
                        format!(
                            "encodes to {} bytes, over the log record limit of {}",
                            body.len(),
                            self.log.max_body()
                        ),
                    )));
                }
                Err(e) => {
                    reply.send(Err(e));
                }
            }
        }
        work
    }

    /// Waits until the log may start every segment the group needs
    /// (backpressure); fails if the registry failed meanwhile, so a waiting
    /// write is never acknowledged after a failure nor starts a segment
    /// beyond the maximum (finding 15).
    fn make_room(&mut self, work: &[Work]) -> Result<()> {
        let rolls = self.log.rolls_needed(work.iter().map(|w| w.body.len()));
        for n in 1..=rolls {
            let seq = self.log.seq_after(n);
            if self.log.pool().has_room_for(seq) {
                continue;
            }
            // The bound follows the registry's size; only looked at here,
            // on the way to waiting.
            self.rescale_log_bound();
            if self.log.pool().has_room_for(seq) {
                continue;
            }
            if let Err(e) = self.start_checkpoint(None) {
                return Err(self.fail(&e));
            }
            let failed = self.failed.clone();
            self.log
                .pool()
                .wait_for_room(seq, &move || failed.get().is_some());
            if let Some(e) = self.refuse() {
                return Err(e);
            }
            debug_assert!(self.log.pool().has_room_for(seq));
        }
        Ok(())
    }

    /// Sets the log's bound for the registry's size now
    /// (`log_bound_segments`, DESIGN.md 5.2).
    pub(crate) fn rescale_log_bound(&self) {
        let devices = self.state.read().len();
        let segment_bytes = self.log.segment_bytes();
        let bound = crate::log::segments::log_bound_segments(
            self.config.max_log_segments,
            segment_bytes,
            self.config.log_bytes_per_device,
            devices,
        );
        let bound = self.log.pool().set_max_segments(bound);
        self.metrics
            .set_log_bound(bound.saturating_mul(segment_bytes));
    }

    /// `Immediate`: every record is written and synced, then applied.
    fn log_then_apply(&mut self, work: Vec<Work>) -> Result<Vec<Done>> {
        let mut io = Ok(());
        for w in &work {
            if let Err(e) = self.log.append(w.entries.len() as u32, &w.body) {
                io = Err(e);
                break;
            }
        }
        if let Err(e) = io.and_then(|()| self.log.sync()) {
            let e = self.fail(&e);
            reply_all(work.into_iter().map(|w| w.reply), &e);
            return Err(e);
        }
        self.count_group(work.len());
        let mut st = self.lock_warmed(&work);
        let done = work
            .into_iter()
            .map(|w| {
                (
                    apply_request(&mut st, &w.entries, &self.config.faults).0,
                    w.reply,
                )
            })
            .collect();
        let pending = st.pending_records();
        drop(st);
        self.pending_records = pending;
        Ok(done)
    }

    /// `Eventual`: applied first, then the records that changed something
    /// are written to the OS (fdatasynced by the timer).
    fn apply_then_log(&mut self, work: Vec<Work>) -> Result<Vec<Done>> {
        let mut applied = Vec::with_capacity(work.len());
        self.pending_records = {
            let mut st = self.lock_warmed(&work);
            for w in work {
                let (outcomes, changed) = apply_request(&mut st, &w.entries, &self.config.faults);
                applied.push((w, outcomes, changed));
            }
            st.pending_records()
        };
        let mut io = Ok(());
        let mut records = 0;
        for (w, _, changed) in &applied {
            if *changed {
                if let Err(e) = self.log.append(w.entries.len() as u32, &w.body) {
                    io = Err(e);
                    break;
                }
                records += 1;
            }
        }
        if let Err(e) = io.and_then(|()| self.log.write_out()) {
            let e = self.fail(&e);
            reply_all(applied.into_iter().map(|(w, ..)| w.reply), &e);
            return Err(e);
        }
        self.count_group(records);
        Ok(applied
            .into_iter()
            .map(|(w, outcomes, _)| (outcomes, w.reply))
            .collect())
    }

    /// The state's write lock for applying `work`, taken after reading
    /// what the applying will read under the read lock (readers go on
    /// meanwhile), so that the write lock is held for less time
    /// (`State::warm`, DESIGN.md 7).
    fn lock_warmed(&self, work: &[Work]) -> StateWrite<'_> {
        {
            let st = self.state.read();
            std::hint::black_box(st.warm_ahead(work.iter().map(|w| w.entries.as_slice())));
        }
        self.state.write()
    }

    /// Counts a group commit that appended `records` log records (none
    /// appended: not a commit of the log, not counted).
    fn count_group(&self, records: usize) {
        if records > 0 {
            self.metrics.group_commit(records);
        }
    }

    fn periodic(&mut self) {
        if self.closed || self.config.read_only || self.refuse().is_some() {
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
            >= Duration::from_millis(self.config.checkpoint_interval_ms)
            || self.many_pending();
        if due && self.checkpoint_may_start() {
            // Feed entries alone (acknowledgements) count too.
            let dirty = self.pending_records > 0 || !self.state.read().dirty.is_empty();
            if dirty {
                if let Err(e) = self.start_checkpoint(None) {
                    self.fail(&e);
                }
            } else {
                self.last_checkpoint_at = now;
            }
        }
    }

    /// Whether the state holds enough changed records to start a
    /// checkpoint whatever the log and the clock say (DESIGN.md 8).
    fn many_pending(&self) -> bool {
        self.pending_records >= self.config.checkpoint_pending_records
    }

    /// Whether a snapshot may be handed now: the one handed last is
    /// written, and no merge runs whose deltas have no room for another
    /// checkpoint beside it (`KvStore::room_beside_merge`, DESIGN.md 4.3).
    fn checkpoint_may_start(&self) -> bool {
        !self.ckpt_busy.load(Ordering::Acquire)
            && (!self.ckpt_merging.load(Ordering::Acquire) || self.store.room_beside_merge())
    }

    /// Waits until a snapshot may be handed (`checkpoint_may_start`): the
    /// one handed last is written, and a merge after it may still run.
    fn wait_checkpoint_idle(&self) {
        while !self.checkpoint_may_start() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the checkpointer is idle: the snapshot handed last is
    /// written and no merge or compaction runs (a backup copies the store,
    /// a shutdown closes it).
    fn wait_checkpointer_idle(&self) {
        while self.ckpt_busy.load(Ordering::Acquire) || self.ckpt_merging.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Hands a snapshot of the state at the log's end to the checkpointer.
    ///
    /// Waits for the checkpoint in flight first and only then checks the
    /// failure flag: a checkpoint that failed while we waited left the store
    /// behind the log, and a new snapshot on top of it (Linux reports a
    /// failed fsync once; the next one succeeds) would free log segments
    /// whose records the store never got (reliability finding 4).
    fn start_checkpoint(&mut self, done: Option<Reply<()>>) -> Result<()> {
        self.wait_checkpoint_idle();
        if let Some(e) = self.refuse() {
            return Err(e);
        }
        if let Err(e) = self.log.write_out() {
            return Err(self.fail(&e));
        }
        let lsn = self.log.end_lsn();
        let carry = std::mem::take(&mut *self.ckpt_carry.lock());
        let snapshot = match Snapshot::take(self.state.write(), lsn, carry) {
            Ok(s) => s,
            // Nothing is written; the drained changes are in the log only.
            Err(e) => return Err(self.fail(&e)),
        };
        // The snapshot drained every changed record.
        self.pending_records = 0;
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

    /// Takes a checkpoint and waits for it, on the writer's side (no group
    /// commits meanwhile): afterwards the store holds everything the log
    /// does (`Registry::backup`).
    pub(crate) fn checkpoint_and_wait(&mut self) -> Result<()> {
        self.start_checkpoint(None)?;
        self.wait_checkpointer_idle();
        match self.refuse() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        // Wait before looking at the flag (see `start_checkpoint`).
        self.wait_checkpointer_idle();
        if self.refuse().is_none() && !self.config.read_only {
            let r = self.log.sync().and_then(|()| self.start_checkpoint(None));
            if let Err(e) = r {
                self.fail(&e);
            }
            self.wait_checkpointer_idle();
        }
        self.ckpt_tx = None;
        self.closed = true;
    }
}

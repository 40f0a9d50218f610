//! The ordered key-value interface (`crate::kv::KvStore`) implemented on
//! sled 0.34.7. Nothing here knows about devices, pages or checkpoints:
//! another ordered transactional store (the etcd issue) implements
//! `KvStore` and the layers above stay as they are.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fault::{check, Faults, IoOp};
use crate::kv::{KvStore, Visit, VisitWhile, Write};

/// What a copy of the store copied (`copy_store`, a compaction's
/// `copy_in_passes`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Copied {
    /// Entries (sled keys).
    pub(crate) keys: u64,
    /// Bytes of keys and values (a compaction's without `Mstore_live_bytes`).
    pub(crate) bytes: u64,
    /// Passes, each between two reopens of the store (1 for one scan).
    pub(crate) passes: u32,
}

/// Copies every stored entry of `src` (`KvStore::scan_stored_from`) into
/// a new sled store at `dest`, in batches of at most `chunk_bytes` (the
/// memory a copy holds besides sled's caches) and in passes of about
/// `pass_bytes`: between two passes the copy is closed and opened again
/// and `src` sheds what it read (`KvStore::shed_reads`), since sled keeps
/// both what a scan read and what a batch wrote resident until its store
/// is closed (at 10^7 devices a backup in one pass peaked at 6.6 GiB;
/// DESIGN.md 4.5). Then makes the copy durable: flushed and every file and
/// directory fsynced, closed (and settled once, see `Drop for
/// SledStore`), and fsynced once more for what the settling wrote. `dest`
/// must not exist; the caller fsyncs the directory holding it. The caller
/// keeps `src` from changing meanwhile.
pub(crate) fn copy_store(
    src: &dyn KvStore,
    dest: &Path,
    (chunk_bytes, pass_bytes): (usize, u64),
) -> Result<Copied> {
    let mut copied = Copied::default();
    let mut from = Vec::new();
    loop {
        let out = SledStore::open(dest, None, crate::limits::TOOL_SLED_CACHE_BYTES, true)?;
        copied.passes += 1;
        let pass = (chunk_bytes, pass_bytes);
        let next = copy_pass(src, &out, &from, pass, &mut copied, &|_| true)?;
        out.sync()?;
        let Some(next) = next else {
            drop(out);
            visit_tree(dest, true, &None)?;
            return Ok(copied);
        };
        // The next pass opens the copy again: only the last close settles it.
        out.close_for_reopen();
        src.shed_reads()?;
        from = next;
    }
}

/// One pass of a copy (`copy_store`, a compaction's `copy_in_passes`):
/// the entries of `src` from `from` on that `keep` selects into `out`, in
/// batches of `chunk_bytes`, until `pass_bytes` of them are copied.
/// Returns the key the next pass starts at, or `None` when `src` is
/// copied whole.
pub(super) fn copy_pass(
    src: &dyn KvStore,
    out: &SledStore,
    from: &[u8],
    (chunk_bytes, pass_bytes): (usize, u64),
    copied: &mut Copied,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Result<Option<Vec<u8>>> {
    let mut batch = Batch::new(chunk_bytes);
    let mut this_pass = 0u64;
    let mut next = None;
    src.scan_stored_from(from, &mut |k, v| {
        if this_pass >= pass_bytes.max(1) {
            next = Some(k.to_vec());
            return Ok(false);
        }
        if !keep(k) {
            return Ok(true);
        }
        let bytes = (k.len() + v.len()) as u64;
        this_pass += bytes;
        copied.bytes += bytes;
        copied.keys += 1;
        batch.push(out, k, v)?;
        Ok(true)
    })?;
    batch.finish(out)?;
    Ok(next)
}

/// Creates an empty sled store at `dest` (which must not exist) and makes
/// every file and directory of it durable: opened, flushed, closed (and
/// settled), then fsynced whole. The caller renames it into place and
/// fsyncs the directory holding it, so that a power cut while sled creates
/// its files (its `conf` and first segment, written without an fsync)
/// leaves no store sled cannot open.
pub(crate) fn create_empty_store(dest: &Path, faults: &Faults) -> Result<()> {
    let out = SledStore::open(
        dest,
        faults.clone(),
        crate::limits::TOOL_SLED_CACHE_BYTES,
        true,
    )?;
    out.sync()?;
    drop(out);
    visit_tree(dest, true, faults)
}

/// Entries gathered for one sled batch of a copy, written once they reach
/// `chunk_bytes`.
struct Batch {
    writes: Vec<Write>,
    bytes: usize,
    chunk_bytes: usize,
}

impl Batch {
    fn new(chunk_bytes: usize) -> Batch {
        Batch {
            writes: Vec::new(),
            bytes: 0,
            chunk_bytes,
        }
    }

    /// Adds one entry, writing the batch into `out` once it is full.
    fn push(&mut self, out: &SledStore, k: &[u8], v: &[u8]) -> Result<()> {
        self.bytes += k.len() + v.len();
        self.writes.push((k.to_vec(), Some(v.to_vec())));
        if self.bytes >= self.chunk_bytes {
            self.finish(out)?;
        }
        Ok(())
    }

    /// Writes what is gathered into `out`.
    fn finish(&mut self, out: &SledStore) -> Result<()> {
        if !self.writes.is_empty() {
            out.apply(&self.writes)?;
        }
        self.writes.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// sled, with a real fsync after its flush.
pub(crate) struct SledStore {
    /// `None` only while the store is dropped (see `Drop`). Replaced whole
    /// by a compaction (`store/compact.rs`) under the write lock, so no
    /// operation is still using the old database when its files go.
    pub(super) db: parking_lot::RwLock<Option<sled::Db>>,
    pub(super) path: PathBuf,
    /// sled's cache capacity, for a reopen after a compaction.
    pub(super) cache_bytes: u64,
    /// The smallest files a compaction is worth for (`u64::MAX`, the
    /// default: never; a registry sets its `Config`'s).
    pub(super) compact_min_bytes: std::sync::atomic::AtomicU64,
    /// Bytes a compaction copies between two reopens of this store
    /// (`Config::compact_pass_bytes`).
    pub(super) compact_pass_bytes: std::sync::atomic::AtomicU64,
    /// The most live bytes a compaction copies (`Config::compact_max_live_bytes`).
    pub(super) compact_max_live: std::sync::atomic::AtomicU64,
    /// No new compaction until sled's files take this many bytes (0: no
    /// such wait), or the store is opened again: half as much again after
    /// an abandoned one (a full disk, say), `u64::MAX` after a copy went
    /// over `compact_max_live`.
    pub(super) compact_retry_at_bytes: std::sync::atomic::AtomicU64,
    /// The registry's device count at its last checkpoint
    /// (`KvStore::plan_for_devices`): a compaction records it beside the
    /// live bytes, and scales those by the growth since (`compact.rs`).
    pub(super) devices: std::sync::atomic::AtomicU64,
    pub(super) faults: Faults,
    written: std::sync::atomic::AtomicU64,
    /// A write (batch or flush) failed: no settling at close.
    troubled: std::sync::atomic::AtomicBool,
    /// Settle at close (see `Drop`); false for a store that is opened
    /// again at once (`close_for_reopen`), whose next open does sled's
    /// housekeeping anyway.
    settle_at_close: bool,
    /// Times `shed_cache` closed and opened sled.
    sheds: std::sync::atomic::AtomicU64,
    /// Keys `touch` read back.
    touches: std::sync::atomic::AtomicU64,
    /// `RawKv::shed_after_bytes` (`u64::MAX`, the default: never).
    shed_after_bytes: std::sync::atomic::AtomicU64,
    /// Wakes a flush that sled forgot after a failed write; stopped before
    /// `db` drops (it holds a clone).
    pub(super) waker: parking_lot::Mutex<super::sled_waker::SledWaker>,
}

/// sled 0.34.7 unwraps the fsync of its log when the last handle drops
/// (`pagecache/logger.rs`, `Drop for Log`): a failed fsync at close was a
/// panic (exit 101 after a success message, found by the fault sweep). By
/// then devreg's final checkpoint has flushed and fsynced every file, or
/// `Registry::close` has already returned its error; the panic is contained
/// here and counted (`devreg::internals::sled_drop_panics`).
///
/// A store that was written to is then opened and closed once more: sled
/// 0.34.7 writes its snapshot (and zeroes the unused end of its segment)
/// when it *opens* a log that grew since the last snapshot, so without
/// this the first read-only open after a write session would change
/// sled's files. After it, an open that writes nothing leaves every file
/// as it was (tests/cli.rs). Not after a failed write, and on a thread
/// that is waited for at most `SETTLE_TIMEOUT_MS`: the fault sweep found
/// sled 0.34.7 waiting forever inside an open whose writes fail (ENOSPC).
/// A failure or timeout only leaves that work to the next open. After a
/// failed write, sled's close itself is waited for at most that long
/// (`close_troubled`).
impl Drop for SledStore {
    fn drop(&mut self) {
        self.waker.get_mut().stop();
        let Some(db) = self.db.get_mut().take() else {
            return;
        };
        let settle = self.written.load(std::sync::atomic::Ordering::SeqCst) > 0
            && !self.troubled.load(std::sync::atomic::Ordering::SeqCst)
            && self.settle_at_close;
        if self.troubled.load(std::sync::atomic::Ordering::SeqCst) {
            close_troubled(db, self.faults.clone());
            return;
        }
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
        if dropped.is_err() {
            SLED_DROP_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        } else if settle {
            settle_sled(&self.path);
        }
    }
}

/// Closes sled after a failed write on its own thread, waiting for it at
/// most `SETTLE_TIMEOUT_MS`. sled 0.34.7's close flushes, and after a
/// failed write that flush can wait for ever for a buffer that will never
/// be written (the waker, `sled_waker.rs`, is stopped by then: it holds a
/// handle, so it cannot outlive the close). A harness child whose
/// directory was removed under it hung there. A close that does not end
/// in time is abandoned, counted in `sled_closes_abandoned`: its thread
/// keeps sled's file lock and cache until it ends or the process exits,
/// so an open of the same store in this process fails (sled's lock)
/// instead of hanging. Nothing durable depends on that close: devreg's
/// own checkpoints flush and fsync (DESIGN.md 4.4).
fn close_troubled(db: sled::Db, faults: Faults) {
    let closed = run_for_at_most_settle_timeout("devreg-close", move || {
        // Only a test's `slow` makes this wait: it stands in for sled's.
        let _ = check(&faults, IoOp::StoreClose);
        drop(db);
    });
    if !closed {
        SLED_CLOSES_ABANDONED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `sled_work` (an open or close of sled) on a thread named `name`,
/// counting a panic in it as sled's (`sled_drop_panics`), and waits for it
/// at most `SETTLE_TIMEOUT_MS`. False when it did not end in time (it goes
/// on, abandoned); true when it ended, or when no thread could be started
/// (then `sled_work` was dropped unrun).
fn run_for_at_most_settle_timeout(name: &str, sled_work: impl FnOnce() + Send + 'static) -> bool {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(sled_work)).is_err() {
                SLED_DROP_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let _ = done_tx.send(());
        });
    if spawned.is_err() {
        return true;
    }
    let wait = std::time::Duration::from_millis(crate::limits::SETTLE_TIMEOUT_MS);
    done_rx.recv_timeout(wait).is_ok()
}

static SLED_CLOSES_ABANDONED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Test support: closes of a failed store given up after
/// `SETTLE_TIMEOUT_MS` (see `close_troubled`).
pub fn sled_closes_abandoned() -> u64 {
    SLED_CLOSES_ABANDONED.load(std::sync::atomic::Ordering::SeqCst)
}

#[cfg(test)]
thread_local! {
    /// Settles started by this thread (tests count what a compaction does).
    pub(super) static SETTLES_STARTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Opens and closes sled at `path` on its own thread, waiting for it at
/// most `SETTLE_TIMEOUT_MS` (see `Drop for SledStore`).
fn settle_sled(path: &Path) {
    #[cfg(test)]
    SETTLES_STARTED.with(|c| c.set(c.get() + 1));
    let path = path.to_owned();
    run_for_at_most_settle_timeout("devreg-settle", move || {
        if let Ok(db) = open_sled(&path, crate::limits::SETTLE_SLED_CACHE_BYTES) {
            drop(db);
        }
    });
}

static SLED_DROP_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one panic of sled closing a database.
pub(super) fn count_sled_drop_panic() {
    SLED_DROP_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Test support: how many times sled panicked as a store was dropped.
pub fn sled_drop_panics() -> u64 {
    SLED_DROP_PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

impl SledStore {
    /// Closes the store without settling it (see `Drop`), for a caller
    /// that opens it again at once: that open does sled's housekeeping, so
    /// a settle in between would be one more sled open for nothing (each
    /// rewrites the store's free segments, section 4.6 of DESIGN.md).
    pub(super) fn close_for_reopen(mut self) {
        self.settle_at_close = false;
    }

    /// The current database, held until the guard drops: a compaction
    /// replaces it only when no operation uses it (recursive, so a scan's
    /// callback may read again while a compaction waits).
    fn db(&self) -> Result<parking_lot::MappedRwLockReadGuard<'_, sled::Db>> {
        parking_lot::RwLockReadGuard::try_map(self.db.read_recursive(), Option::as_ref)
            .map_err(|_| Error::Closed)
    }

    /// Opens sled at `path`. A read-only open (`writable` false) neither
    /// removes an unfinished snapshot nor restricts file modes: it changes
    /// nothing of devreg's doing (sled's own recovery aside; see `Drop`).
    pub(crate) fn open(
        path: &Path,
        faults: Faults,
        cache_bytes: u64,
        writable: bool,
    ) -> Result<SledStore> {
        if writable {
            remove_unfinished_snapshots(path)?;
        }
        let db = open_sled(path, cache_bytes)?;
        let store = SledStore {
            waker: parking_lot::Mutex::new(super::sled_waker::SledWaker::start(&db)),
            db: parking_lot::RwLock::new(Some(db)),
            path: path.to_owned(),
            cache_bytes,
            compact_min_bytes: std::sync::atomic::AtomicU64::new(u64::MAX),
            compact_pass_bytes: std::sync::atomic::AtomicU64::new(u64::MAX),
            compact_max_live: std::sync::atomic::AtomicU64::new(0),
            compact_retry_at_bytes: std::sync::atomic::AtomicU64::new(0),
            devices: std::sync::atomic::AtomicU64::new(0),
            faults,
            written: std::sync::atomic::AtomicU64::new(0),
            troubled: std::sync::atomic::AtomicBool::new(false),
            settle_at_close: true,
            sheds: std::sync::atomic::AtomicU64::new(0),
            touches: std::sync::atomic::AtomicU64::new(0),
            shed_after_bytes: std::sync::atomic::AtomicU64::new(u64::MAX),
        };
        if writable {
            // Files from before (sled creates them 0644) become owner-only
            // now; new ones at every checkpoint.
            visit_tree(path, false, &store.faults)?;
        }
        Ok(store)
    }
}

impl SledStore {
    /// Visits the entries with keys in `[from, to)`, in key order.
    pub(crate) fn scan_range(&self, from: &[u8], to: &[u8], f: Visit<'_>) -> Result<()> {
        check(&self.faults, IoOp::StoreRead).map_err(|e| Error::io("scanning the store", e))?;
        for item in self.db()?.range(from..to) {
            let (k, v) = item.map_err(|e| Error::store("scanning", e))?;
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Visits the entries with keys from `from` on, in key order, until
    /// `f` returns false. sled's read guard is held meanwhile: `f` must
    /// not wait for the write lock (`reopen_db`).
    pub(super) fn scan_from(&self, from: &[u8], f: VisitWhile<'_>) -> Result<()> {
        check(&self.faults, IoOp::StoreRead).map_err(|e| Error::io("scanning the store", e))?;
        for item in self.db()?.range(from..) {
            let (k, v) = item.map_err(|e| Error::store("scanning", e))?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The first entries whose key starts with `prefix`, up to about
    /// `max_bytes` of keys and values (at least one if any).
    pub(crate) fn scan_chunk(
        &self,
        prefix: &[u8],
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check(&self.faults, IoOp::StoreRead).map_err(|e| Error::io("scanning the store", e))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in self.db()?.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| Error::store("scanning", e))?;
            bytes += k.len() + v.len();
            out.push((k.to_vec(), v.to_vec()));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }
}

impl SledStore {
    /// Times `shed_cache` closed and opened sled since the store opened.
    #[cfg(test)]
    pub(crate) fn sheds(&self) -> u64 {
        self.sheds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keys `touch` read back since the store opened.
    #[cfg(test)]
    pub(crate) fn touches(&self) -> u64 {
        self.touches.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl crate::kv::RawKv for SledStore {
    fn scan_range(&self, from: &[u8], to: &[u8], f: Visit<'_>) -> Result<()> {
        SledStore::scan_range(self, from, to, f)
    }

    fn scan_chunk(&self, prefix: &[u8], max_bytes: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        SledStore::scan_chunk(self, prefix, max_bytes)
    }

    fn shed_after_bytes(&self) -> Option<u64> {
        match self
            .shed_after_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            u64::MAX => None,
            bytes => Some(bytes),
        }
    }

    fn shed_cache(&self) -> Result<bool> {
        // A store that failed a write is not opened again (its close must
        // not settle, `Drop`). A read-only one is, as after its load
        // (`KvStore::shed_reads`): sled's open writes over its
        // free segments either way (DESIGN.md 4.6), and nothing else.
        if self.troubled.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let shed = self.try_reopen_db()?;
        if shed {
            self.sheds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(shed)
    }

    fn touch(&self, keys: &mut dyn Iterator<Item = &[u8]>) -> Result<()> {
        check(&self.faults, IoOp::StoreRead).map_err(|e| Error::io("reading the store", e))?;
        let db = self.db()?;
        for key in keys {
            for _ in 0..crate::limits::SLED_LRU_TOUCHES {
                db.get(key).map_err(|e| Error::store("reading", e))?;
            }
            self.touches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

pub(super) fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db> {
    let config = sled::Config::new()
        .path(path)
        // Measured: 8 MiB segments cut sled's disk use by 40 to 68%.
        .segment_size(8 << 20)
        // Config::sled_cache_bytes says why this is not small.
        .cache_capacity(cache_bytes)
        .flush_every_ms(None);
    // sled's I/O threads may hold its file lock for a moment after the
    // previous handle in this process was dropped (seen in the crash
    // tests): retry briefly before calling the database locked.
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            // sled reports it as ErrorKind::Other with this text.
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && started.elapsed() < std::time::Duration::from_secs(2) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => {
                return other.map_err(|e| Error::store(format!("opening {}", path.display()), e))
            }
        }
    }
}

/// A kill while sled 0.34.7 writes a snapshot leaves `snap.<lsn>.generating`,
/// and sled then refuses to open (sled issues #1527, #1533). The file is by
/// definition unfinished (sled renames it when complete), so it is dropped.
fn remove_unfinished_snapshots(path: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(path) else {
        return Ok(());
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(ent.path())
                .map_err(|e| Error::io(format!("removing unfinished sled snapshot {name}"), e))?;
        }
    }
    Ok(())
}

/// Walks every file and directory under `path`, making it readable by its
/// owner only (sled creates files 0644; tokens let anyone push to a device)
/// and, with `sync`, fsyncing it (sled's own flush uses `sync_file_range`,
/// which does not survive power loss).
pub(super) fn visit_tree(path: &Path, sync: bool, faults: &Faults) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let ctx = |p: &Path| format!("walking {}", p.display());
    let meta = std::fs::metadata(path).map_err(|e| Error::io(ctx(path), e))?;
    let private = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))
            .map_err(|e| Error::io(format!("restricting {}", path.display()), e))?;
    }
    if meta.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|e| Error::io(ctx(path), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(ctx(path), e))?;
            match visit_tree(&ent.path(), sync, faults) {
                // sled removes blob files of rewritten values in the
                // background: one gone since the listing needs no sync.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
    }
    if sync {
        check(faults, IoOp::Open)
            .and_then(|()| File::open(path))
            .and_then(|f| check(faults, IoOp::Fsync).and_then(|()| f.sync_all()))
            .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
    }
    Ok(())
}

pub(super) fn dir_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| dir_bytes(&e.path())).sum())
        .unwrap_or(0)
}

impl KvStore for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check(&self.faults, IoOp::StoreRead).map_err(|e| Error::io("reading the store", e))?;
        self.db()?
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| Error::store("reading", e))
    }

    fn apply(&self, writes: &[Write]) -> Result<()> {
        let r = self.apply_batch(writes);
        self.note(r)
    }

    fn scan_prefix(&self, prefix: &[u8], f: Visit<'_>) -> Result<()> {
        check(&self.faults, IoOp::StoreRead).map_err(|e| Error::io("scanning the store", e))?;
        for item in self.db()?.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| Error::store("scanning", e))?;
            f(&k, &v)?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let r = self.flush_and_fsync();
        self.note(r)
    }

    fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.path)
    }

    fn bytes_written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn mark_troubled(&self) {
        self.troubled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn scan_stored(&self, f: Visit<'_>) -> Result<()> {
        self.scan_prefix(&[], f)
    }

    fn scan_stored_from(&self, from: &[u8], f: VisitWhile<'_>) -> Result<()> {
        self.scan_from(from, f)
    }

    fn plan_for_devices(&self, devices: u64) {
        self.devices
            .store(devices, std::sync::atomic::Ordering::Relaxed);
    }

    fn compact_if_worth(&self) -> Result<crate::kv::CompactOutcome> {
        if self.troubled.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(crate::kv::CompactOutcome::Skipped);
        }
        SledStore::compact_if_worth(self)
    }
}

impl SledStore {
    /// Passes `r` on, remembering a failed write: a store that failed one
    /// is not opened again at close (see `Drop`).
    /// Lets `compact_if_worth` compact files of `min_bytes` or more whose
    /// live bytes are at most `max_live`, copying `pass_bytes` between two
    /// reopens of the store.
    pub(crate) fn set_compact_limits(&self, min_bytes: u64, max_live: u64, pass_bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.compact_min_bytes.store(min_bytes, Relaxed);
        self.compact_max_live.store(max_live, Relaxed);
        self.compact_pass_bytes.store(pass_bytes, Relaxed);
    }

    /// Lets a long scan shed sled's nodes each time it read `bytes` of
    /// pages (`Config::load_shed_bytes`; `u64::MAX`: never).
    pub(crate) fn set_shed_after_bytes(&self, bytes: u64) {
        self.shed_after_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A compaction finished its swap: the store at `path` is whole again.
    pub(super) fn clear_troubled(&self) {
        self.troubled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn note(&self, r: Result<()>) -> Result<()> {
        if r.is_err() {
            self.mark_troubled();
        }
        r
    }

    fn apply_batch(&self, writes: &[Write]) -> Result<()> {
        let bytes: usize = writes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.written
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        check(&self.faults, IoOp::StoreWrite)
            .map_err(|e| Error::io("applying a checkpoint batch", e))?;
        self.db()?
            .apply_batch(batch)
            .map_err(|e| Error::store("applying a checkpoint batch", e))
    }

    fn flush_and_fsync(&self) -> Result<()> {
        check(&self.faults, IoOp::StoreWrite).map_err(|e| Error::io("flushing the store", e))?;
        self.db()?
            .flush()
            .map_err(|e| Error::store("flushing", e))?;
        // sled's flush uses sync_file_range, which does not survive power loss.
        visit_tree(&self.path, true, &self.faults)
    }
}

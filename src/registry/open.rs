//! Opening a database: the path checks, the lock, the store (converted to
//! pages if it is older) and the log, before recovery replays it.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fault::Faults;
use crate::log::segments::{list_segments, sync_dir, SegmentPool};
use crate::log::LogWriter;
use crate::metrics::Recorder;
use crate::store::{KvStore, PagedStore, SledStore};
use crate::writer::{run_checkpointer, CheckpointJob, CheckpointerCtx};

fn open_paged(config: &Config) -> Result<PagedStore> {
    let raw = SledStore::open(
        &config.path.join("store"),
        config.faults.clone(),
        config.sled_cache_bytes,
        !config.read_only,
    )?;
    let min_bytes = match config.read_only {
        true => u64::MAX,
        false => config.compact_min_store_bytes,
    };
    raw.set_shed_after_bytes(config.load_shed_bytes);
    raw.set_compact_limits(
        min_bytes,
        config.compact_max_live_bytes,
        config.compact_pass_bytes,
    );
    let mut store = PagedStore::open(raw, config.checkpoint_chunk_bytes, config.page_delta_bytes)?;
    store.set_delta_disk_bytes_per_device(config.delta_disk_bytes_per_device);
    Ok(store)
}

/// What `open_store` opened: the lock and the store.
pub(super) type Opened = (File, Arc<dyn KvStore>);

/// Checks the path, takes the lock, opens (and if need be converts) the
/// store, and makes sure a new database has its first log segment. A
/// read-only open (or one that may not create) first requires a database
/// at the path; a read-only one then writes nothing.
pub(super) fn open_store(config: &Config, log_dir: &Path) -> Result<Opened> {
    if config.read_only || !config.create_if_missing {
        require_database(&config.path)?;
    }
    if config.read_only {
        return open_store_read_only(config, log_dir);
    }
    finish_interrupted_swap(&config.path, &config.faults)?;
    prepare_db_dir(&config.path, &config.faults)?;
    let lock = lock_db(&config.path, true)?;
    // A compaction's partial copy or old store left by a crash.
    crate::store::finish_interrupted_compaction(&config.path.join("store"), &config.faults)?;
    create_store_if_missing(config)?;
    let paged = open_paged(config)?;
    paged.convert_legacy()?;
    let store: Arc<dyn KvStore> = Arc::new(paged);
    if !log_dir.is_dir() {
        create_dir_synced(log_dir, &config.faults)?;
    }
    // sled created store/ without an fsync of the directory holding it.
    sync_dir(&config.path, &config.faults)?;
    if store.get(crate::codec::META_FORMAT)?.is_none() {
        // Fault sweep finding (strace on sled's files): after one EIO on
        // a read during its recovery, sled 0.34.7 zeroes the segment it
        // could not read and opens empty. devreg took that for a new
        // database and wrote fresh metadata into the store (checkpoint
        // position 0, the configured segment size): a database made with
        // another segment size then failed every open with a misleading
        // "the file was truncated". A store without metadata is new only
        // if the log holds no record; otherwise the store was lost:
        // refuse, with a typed error, and write nothing.
        if !crate::log::is_empty(log_dir, &config.faults)? {
            return Err(lost_store(config));
        }
        crate::log::create_first_segment(log_dir, config.log_segment_bytes, &config.faults)?;
    }
    Ok((lock, store))
}

/// Where a new store is built before it is renamed to `store/`.
const NEW_STORE_DIR: &str = "store.new";

/// Creates a new database's store in `store.new/`, durably, and renames it
/// to `store/`: a power cut while sled created its files in place left a
/// `store/` whose `conf` had never been fsynced, and every later open
/// failed with sled's "Read corrupted data" (power-loss test finding,
/// 2026-12-02, `powerloss_cut_while_the_store_is_created`). A `store.new/`
/// left by a cut is unfinished and removed.
fn create_store_if_missing(config: &Config) -> Result<()> {
    let store = config.path.join("store");
    if store.exists() {
        return Ok(());
    }
    let building = config.path.join(NEW_STORE_DIR);
    if building.exists() {
        std::fs::remove_dir_all(&building)
            .map_err(|e| Error::io(format!("removing {}", building.display()), e))?;
    }
    crate::store::create_empty_store(&building, &config.faults)?;
    std::fs::rename(&building, &store)
        .map_err(|e| Error::io(format!("renaming {} into place", building.display()), e))?;
    sync_dir(&config.path, &config.faults)
}

/// A store without metadata beside a log that holds records.
fn lost_store(config: &Config) -> Error {
    Error::corrupt(
        format!("store {}", config.path.join("store").display()),
        "it has no metadata but the log holds records: the store was lost or damaged \
         (sled empties a segment it cannot read); not taking the database for a new one",
    )
}

/// A crash between a compaction's two renames leaves no `store/`, only
/// its complete copy (`store/compact.rs`): under the lock, the copy
/// becomes `store/` before anything looks for it. Only for a write open.
pub(super) fn finish_interrupted_swap(path: &Path, faults: &crate::fault::Faults) -> Result<()> {
    if !crate::store::compaction_interrupted(&path.join("store")) {
        return Ok(());
    }
    let _lock = lock_db(path, true)?;
    crate::store::finish_interrupted_compaction(&path.join("store"), faults)
}

/// Fails with `NoDatabase` unless `path` holds a devreg database (a
/// `store/` directory inside it). Reads only.
fn require_database(path: &Path) -> Result<()> {
    let missing = |why: &str| Error::NoDatabase {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing("nothing is there")),
        Err(e) => Err(Error::io(format!("inspecting {}", path.display()), e)),
        Ok(m) if !m.is_dir() => Err(missing("it is not a directory")),
        Ok(_) if crate::store::compaction_interrupted(&path.join("store")) => Err(missing(
            "a store compaction was interrupted (store.compact/ without store/): \
             open it for writing once to finish it",
        )),
        Ok(_) if !path.join("store").is_dir() => Err(missing(
            "the directory holds no store/ (not a devreg database)",
        )),
        Ok(_) => Ok(()),
    }
}

/// The read-only open: the lock (never created), the store as it is (no
/// conversion, no relabelling), and a log that must already exist.
fn open_store_read_only(config: &Config, log_dir: &Path) -> Result<Opened> {
    let lock = lock_db(&config.path, false)?;
    let store: Arc<dyn KvStore> = Arc::new(open_paged(config)?);
    let has_log = log_dir.is_dir();
    if store.get(crate::codec::META_FORMAT)?.is_none() {
        // As a write open would: records in the log mean the store was lost.
        if has_log && !crate::log::is_empty(log_dir, &config.faults)? {
            return Err(lost_store(config));
        }
        return Err(Error::NoDatabase {
            path: config.path.clone(),
            why: "its store holds no database yet (a write command creates one)".into(),
        });
    }
    if !has_log {
        return Err(Error::corrupt(
            format!("log {}", log_dir.display()),
            "missing, while the store holds a database",
        ));
    }
    Ok((lock, store))
}

/// The segment pool (segments below the checkpoint are free) and the log
/// writer, continuing at `end_lsn`.
pub(super) fn open_log(
    config: &Config,
    log_dir: &Path,
    segment_bytes: u64,
    (ckpt_lsn, end_lsn): (u64, u64),
    metrics: Arc<Recorder>,
) -> Result<(Arc<SegmentPool>, LogWriter)> {
    let ckpt_seq = ckpt_lsn / segment_bytes;
    let free: Vec<u64> = list_segments(log_dir)?
        .into_iter()
        .filter(|&s| s < ckpt_seq)
        .collect();
    let pool = Arc::new(SegmentPool::new(
        log_dir.to_owned(),
        segment_bytes,
        u64::from(config.max_log_segments),
        ckpt_seq,
        free,
        config.faults.clone(),
    ));
    let log = match config.read_only {
        true => LogWriter::inert(segment_bytes, end_lsn, pool.clone(), log_dir, metrics)?,
        false => LogWriter::open(segment_bytes, end_lsn, pool.clone(), metrics)?,
    };
    Ok((pool, log))
}

/// Starts the checkpointer thread.
pub(super) fn spawn_checkpointer(
    ctx: CheckpointerCtx,
    rx: Receiver<CheckpointJob>,
    nice: i32,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("devreg-checkpoint".into())
        .spawn(move || {
            // Before any work, so every thread it starts inherits it.
            crate::nice::lower_this_thread(nice);
            run_checkpointer(rx, ctx)
        })
        .map_err(|e| Error::io("starting the checkpointer thread", e))
}

/// Makes `path` ready to hold a database, changing nothing before it is
/// sure the path is one: an absent path is created (mode 0700, its parent
/// fsynced so the new entry survives power loss); an existing one must be a
/// directory that is empty or holds a devreg database (`store/`). Only then
/// is it made owner-only (finding 9: a shared 1777 directory lost its
/// sticky bit, a regular file became 0700).
fn prepare_db_dir(path: &Path, faults: &Faults) -> Result<()> {
    let refuse = |why: &str| Error::invalid("path", format!("{}: {why}", path.display()));
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return create_dir_synced(path, faults)
        }
        Err(e) => return Err(Error::io(format!("inspecting {}", path.display()), e)),
        Ok(m) if !m.is_dir() => return Err(refuse("is not a directory")),
        Ok(_) => {}
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
    // Empty, or what a cut while the database was created leaves: the
    // lock file and an unfinished `store.new/` (`create_store_if_missing`).
    let mut unfinished = true;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
        unfinished &= matches!(entry.file_name().to_str(), Some("lock" | NEW_STORE_DIR));
    }
    if !unfinished && !path.join("store").is_dir() {
        return Err(refuse(
            "is neither a devreg database (no store/ inside) nor an empty directory",
        ));
    }
    restrict(path)
}

/// Creates a directory (and missing parents) owner-only, fsyncing each new
/// one and the directory that holds it (finding 12).
fn create_dir_synced(path: &Path, faults: &Faults) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            create_dir_synced(parent, faults)?;
        }
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent, faults)?;
    sync_dir(path, faults)
}

/// Makes an existing directory owner-only if it is not already.
fn restrict(path: &Path) -> Result<()> {
    let mode = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("inspecting {}", path.display()), e))?
        .permissions()
        .mode();
    if mode & 0o7077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("restricting {}", path.display()), e))
}

/// How long an open retries a lock held by someone else before `Locked`.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes the database's lock file (`<db>/lock`, an exclusive flock held
/// for the registry's life) before anything under the database is touched,
/// so a second process neither deletes the first one's unfinished sled
/// snapshot nor gets sled's raw lock text.
pub(super) fn lock_db(path: &Path, create: bool) -> Result<std::fs::File> {
    let lock_path = path.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path);
    let file = match file {
        // A database from before the lock file: a read-only open creates
        // none and holds the directory instead (a writer would create it).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
            return std::fs::File::open(path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e));
        }
        other => other.map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?,
    };
    // A process forked by another thread of ours shares the lock until its
    // exec closes the descriptor: a lock held only that long is retried.
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_RETRY => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: path.to_owned(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", lock_path.display()), e))
            }
        }
    }
}

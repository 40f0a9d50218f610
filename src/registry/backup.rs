//! `backup`: a consistent copy of an open database (its store entries, the
//! log segments a recovery reads, a lock file) into a new directory, taken
//! on the writer's side with no write or checkpoint in progress
//! (DESIGN.md 4.5).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crossbeam_channel::bounded;
use serde::Serialize;

use super::Registry;
use crate::error::{Error, Result};
use crate::log::segments::{copy_segments, sync_dir};
use crate::writer::{Msg, WriterCtx};

/// What [`Registry::backup`] copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BackupReport {
    /// Where the copy is.
    pub dest: PathBuf,
    /// Devices in the database when it was copied.
    pub devices: u64,
    /// Entries of the store copied (sled keys: pages, delta chunks, metadata).
    pub store_keys: u64,
    /// Bytes of those keys and values.
    pub store_bytes: u64,
    /// Log segments copied (from the checkpoint's on).
    pub log_segments: u64,
    /// Bytes of those segments.
    pub log_bytes: u64,
    /// The log position the copied store reflects.
    pub checkpoint_lsn: u64,
}

impl Registry {
    /// Copies the whole database (devices, history, feeds and dead letters,
    /// settings) into `dest`, a path that does not exist yet or an empty
    /// directory, while it stays open: the copy opens as it is and passes
    /// [`check`](Registry::check). Reads go on meanwhile; writes wait until
    /// the copy is done (it takes a checkpoint first, then copies the store
    /// entry by entry in chunks of `limits::BACKUP_CHUNK_BYTES` and the log
    /// segments byte for byte, everything fsynced). The copy is built in a
    /// hidden sibling directory and renamed to `dest` when complete, so a
    /// failed backup leaves nothing at `dest`. A `dest` that exists and is
    /// not an empty directory, lies inside the database, or whose parent
    /// does not exist is [`Error::BackupDestination`] naming it.
    pub fn backup(&self, dest: impl AsRef<Path>) -> Result<BackupReport> {
        let dest = dest.as_ref().to_owned();
        let staging = check_dest(&dest, self.path())?;
        let src = self.path().to_owned();
        let read_only = self.inner.read_only;
        let (reply, rx) = bounded(1);
        self.send(Msg::Exclusive {
            f: Box::new(move |ctx: &mut WriterCtx| {
                let plan = Plan {
                    src: &src,
                    dest: &dest,
                    staging: &staging,
                };
                let _ = reply.send(backup_on_writer(ctx, &plan, read_only));
            }),
        })?;
        rx.recv().map_err(|_| Error::Closed)?
    }
}

/// The paths of one backup.
struct Plan<'a> {
    src: &'a Path,
    dest: &'a Path,
    staging: &'a Path,
}

/// Checks that `dest` can take a backup of the database at `db`; the
/// staging directory the copy is built in.
fn check_dest(dest: &Path, db: &Path) -> Result<PathBuf> {
    let refuse = |path: &Path, why: &str| Error::BackupDestination {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let name = dest
        .file_name()
        .ok_or_else(|| refuse(dest, "names no directory"))?;
    match std::fs::metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("inspecting {}", dest.display()), e)),
        Ok(m) if !m.is_dir() => return Err(refuse(dest, "exists and is not a directory")),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dest)
                .map_err(|e| Error::io(format!("listing {}", dest.display()), e))?;
            if entries.next().is_some() {
                return Err(refuse(dest, "is a directory that is not empty"));
            }
        }
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent_real = parent
        .canonicalize()
        .map_err(|_| refuse(dest, "its parent directory does not exist"))?;
    let db_real = db
        .canonicalize()
        .map_err(|e| Error::io(format!("inspecting {}", db.display()), e))?;
    if parent_real.starts_with(&db_real) {
        return Err(refuse(dest, "is inside the database directory"));
    }
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(".devreg-backup");
    let staging = parent.join(staging_name);
    if staging.symlink_metadata().is_ok() {
        return Err(refuse(
            &staging,
            "is in the way: an earlier backup that did not finish left it; remove it",
        ));
    }
    Ok(staging)
}

/// Runs on the writer with no write or checkpoint in progress: a
/// checkpoint (unless read-only), then the copy into the staging directory,
/// renamed to `dest` when complete. A failed copy's staging directory is
/// removed.
fn backup_on_writer(ctx: &mut WriterCtx, plan: &Plan<'_>, read_only: bool) -> Result<BackupReport> {
    if let Some(why) = ctx.failed.get() {
        return Err(Error::Failed(why));
    }
    if !read_only {
        ctx.checkpoint_and_wait()?;
    }
    // Records of `Eventual` writes not yet handed to the OS.
    ctx.log.write_out()?;
    let copied = copy_into(ctx, plan).and_then(|report| {
        std::fs::rename(plan.staging, plan.dest).map_err(|e| {
            Error::io(
                format!(
                    "renaming {} to {}",
                    plan.staging.display(),
                    plan.dest.display()
                ),
                e,
            )
        })?;
        Ok(report)
    });
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(plan.staging);
    }
    let report = copied?;
    let parent = plan
        .dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sync_dir(parent, &None)?;
    Ok(report)
}

/// Copies the store and the log into the staging directory, with a lock
/// file, and fsyncs it.
fn copy_into(ctx: &WriterCtx, plan: &Plan<'_>) -> Result<BackupReport> {
    let staging = plan.staging;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
    let (checkpoint_lsn, segment_bytes) = crate::store::log_position(&*ctx.store)?;
    let store = crate::store::copy_store(
        &*ctx.store,
        &staging.join("store"),
        (
            crate::limits::BACKUP_CHUNK_BYTES,
            ctx.config.memory_budget() / crate::limits::BACKUP_PASS_BUDGET_DIVISOR,
        ),
    )?;
    let (log_segments, log_bytes) = copy_segments(
        &plan.src.join("log"),
        &staging.join("log"),
        checkpoint_lsn / segment_bytes,
    )?;
    let lock = staging.join("lock");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&lock)
        .map_err(|e| Error::io(format!("creating {}", lock.display()), e))?;
    sync_dir(staging, &None)?;
    Ok(BackupReport {
        dest: plan.dest.to_owned(),
        devices: ctx.state.read().len(),
        store_keys: store.keys,
        store_bytes: store.bytes,
        log_segments,
        log_bytes,
        checkpoint_lsn,
    })
}

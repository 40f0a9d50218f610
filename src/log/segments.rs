//! Segment files: naming, preallocation, recycling and the bound on their number.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::fault::{check, Faults, IoOp};
use crate::limits::SPARE_LOG_SEGMENTS;

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Parses `00000000000000000042.wal` into 42.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Every segment file in `dir`, by sequence number.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        if let Some(seq) = ent.file_name().to_str().and_then(parse_segment_name) {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// fsyncs a directory, so the entries created or renamed in it survive power loss.
pub(crate) fn sync_dir(dir: &Path, faults: &Faults) -> Result<()> {
    check(faults, IoOp::Open)
        .and_then(|()| File::open(dir))
        .and_then(|d| check(faults, IoOp::Fsync).and_then(|()| d.sync_all()))
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// Creates a segment filled with zeros, so later fdatasyncs write no metadata.
///
/// The zeros go to `<name>.tmp`, which is renamed into place once full and
/// fsynced: a segment file is never shorter than a segment, so recovery can
/// take a short one for damage (the caller fsyncs the directory).
pub(crate) fn create_preallocated(path: &Path, bytes: u64, faults: &Faults) -> Result<File> {
    let ctx = || format!("preallocating log segment {}", path.display());
    let tmp = path.with_extension("wal.tmp");
    check(faults, IoOp::Open).map_err(|e| Error::io(ctx(), e))?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(ctx(), e))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        let chunk = zeros.get(..n).unwrap_or_default();
        check(faults, IoOp::Write)
            .and_then(|()| f.write_all(chunk))
            .map_err(|e| Error::io(ctx(), e))?;
        left -= n as u64;
    }
    check(faults, IoOp::Fsync)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(ctx(), e))?;
    check(faults, IoOp::Rename)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Error::io(ctx(), e))?;
    Ok(f)
}

/// Copies the log segments from `first` on (the store's checkpoint
/// segment and every later one) from `src` into the new directory `dest`
/// (mode 0700), byte for byte through a buffer of `BACKUP_COPY_BUFFER_BYTES`
/// (real blocks, as preallocation made them), each file fsynced, then the
/// directory. Segments below `first` are free (replay never reads them) and
/// are not copied. Returns the segments and bytes copied. The caller keeps
/// the log from changing meanwhile and fsyncs the directory holding `dest`.
pub(crate) fn copy_segments(src: &Path, dest: &Path, first: u64) -> Result<(u64, u64)> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
    let mut buf = vec![0u8; crate::limits::BACKUP_COPY_BUFFER_BYTES];
    let (mut count, mut bytes) = (0u64, 0u64);
    for seq in list_segments(src)?.into_iter().filter(|&s| s >= first) {
        bytes += copy_file(&segment_path(src, seq), &segment_path(dest, seq), &mut buf)?;
        count += 1;
    }
    sync_dir(dest, &None)?;
    Ok((count, bytes))
}

/// Copies one file to a new owner-only file through `buf` and fsyncs it.
fn copy_file(from: &Path, to: &Path, buf: &mut [u8]) -> Result<u64> {
    use std::io::Read;
    let ctx = || format!("copying {} to {}", from.display(), to.display());
    let mut input = File::open(from).map_err(|e| Error::io(ctx(), e))?;
    let mut output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| Error::io(ctx(), e))?;
    let mut total = 0u64;
    loop {
        let n = match input.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(ctx(), e)),
        };
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        output.write_all(chunk).map_err(|e| Error::io(ctx(), e))?;
        total += n as u64;
    }
    output.sync_all().map_err(|e| Error::io(ctx(), e))?;
    Ok(total)
}

pub(crate) fn open_segment(path: &Path, faults: &Faults) -> Result<File> {
    check(faults, IoOp::Open)
        .and_then(|()| OpenOptions::new().read(true).write(true).open(path))
        .map_err(|e| Error::io(format!("opening log segment {}", path.display()), e))
}

struct PoolState {
    /// Segments below this sequence are covered by a checkpoint.
    checkpoint_seq: u64,
    /// Files that may be renamed and reused.
    free: Vec<u64>,
}

/// How many segments the log may hold with `devices` registered
/// (DESIGN.md 5.2): `floor` (`Config::max_log_segments`), or enough for
/// `bytes_per_device` of log per device, whichever is more; the scaled part
/// is at most `MAX_SCALED_LOG_BYTES`. A page merge's length grows with the
/// store, and a log that fills during one stops the writer until it ends.
pub(crate) fn log_bound_segments(
    floor: u32,
    segment_bytes: u64,
    bytes_per_device: u64,
    devices: u64,
) -> u64 {
    let scaled_bytes = devices
        .saturating_mul(bytes_per_device)
        .min(crate::limits::MAX_SCALED_LOG_BYTES);
    u64::from(floor).max(scaled_bytes.div_ceil(segment_bytes.max(1)))
}

/// Tracks which segments the checkpoint has released, and makes the writer
/// wait when all `max_segments` are in use (backpressure).
pub(crate) struct SegmentPool {
    dir: PathBuf,
    segment_bytes: u64,
    /// The bound in force, in segments: the writer raises or lowers it as
    /// the registry grows or shrinks (`log_bound_segments`).
    max_segments: AtomicU64,
    state: Mutex<PoolState>,
    freed: Condvar,
    pub(crate) faults: Faults,
}

impl SegmentPool {
    pub(crate) fn new(
        dir: PathBuf,
        segment_bytes: u64,
        max_segments: u64,
        checkpoint_seq: u64,
        free: Vec<u64>,
        faults: Faults,
    ) -> SegmentPool {
        SegmentPool {
            dir,
            segment_bytes,
            max_segments: AtomicU64::new(max_segments),
            state: Mutex::new(PoolState {
                checkpoint_seq,
                free,
            }),
            freed: Condvar::new(),
            faults,
        }
    }

    /// Sets how many segments may be live (at least 2: the one being
    /// written and the next); returns the bound set.
    pub(crate) fn set_max_segments(&self, n: u64) -> u64 {
        let bound = n.max(2);
        self.max_segments.store(bound, Ordering::Release);
        bound
    }

    /// The bound in force.
    pub(crate) fn max_segments(&self) -> u64 {
        self.max_segments.load(Ordering::Acquire)
    }

    /// Whether segment `seq` may be started without exceeding the bound.
    pub(crate) fn has_room_for(&self, seq: u64) -> bool {
        let st = self.state.lock();
        seq < st.checkpoint_seq + self.max_segments()
    }

    /// Waits until segment `seq` may be started.
    pub(crate) fn wait_for_room(&self, seq: u64, failed: &dyn Fn() -> bool) {
        let mut st = self.state.lock();
        while seq >= st.checkpoint_seq + self.max_segments() && !failed() {
            self.freed
                .wait_for(&mut st, std::time::Duration::from_millis(50));
        }
    }

    /// Provides the file for segment `seq`: a recycled one renamed, or a new one.
    pub(crate) fn take(&self, seq: u64) -> Result<File> {
        let path = segment_path(&self.dir, seq);
        if path.exists() {
            // Created before, maybe by a run whose directory fsync failed:
            // make its entry durable before records go into it (finding 12).
            sync_dir(&self.dir, &self.faults)?;
            return open_segment(&path, &self.faults);
        }
        let recycled = self.state.lock().free.pop();
        match recycled {
            Some(old) => {
                let old_path = segment_path(&self.dir, old);
                check(&self.faults, IoOp::Rename)
                    .and_then(|()| fs::rename(&old_path, &path))
                    .map_err(|e| {
                        Error::io(
                            format!("recycling {} as {}", old_path.display(), path.display()),
                            e,
                        )
                    })?;
                sync_dir(&self.dir, &self.faults)?;
                open_segment(&path, &self.faults)
            }
            None => {
                let f = create_preallocated(&path, self.segment_bytes, &self.faults)?;
                sync_dir(&self.dir, &self.faults)?;
                Ok(f)
            }
        }
    }

    /// A checkpoint now covers everything before `lsn`: release older
    /// segments. At most `SPARE_LOG_SEGMENTS` of them are kept for reuse;
    /// the others are deleted, so an idle database holds one or two
    /// segments on disk, not `max_segments`.
    pub(crate) fn checkpointed(&self, lsn: u64) {
        let seq = lsn / self.segment_bytes;
        let mut st = self.state.lock();
        for old in st.checkpoint_seq..seq {
            if segment_path(&self.dir, old).exists() {
                st.free.push(old);
            }
        }
        st.checkpoint_seq = st.checkpoint_seq.max(seq);
        // Keep the newest spares (the free list is in sequence order).
        let extra = st.free.len().saturating_sub(SPARE_LOG_SEGMENTS);
        let doomed: Vec<u64> = st.free.drain(..extra).collect();
        drop(st);
        self.freed.notify_all();
        for old in doomed {
            // Covered by a checkpoint: a failed or undone deletion (the
            // directory is not synced) leaves a spare that the next open
            // lists as free, never a segment that recovery reads.
            let _ = check(&self.faults, IoOp::Unlink)
                .and_then(|()| fs::remove_file(segment_path(&self.dir, old)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_bound_is_the_floor_or_the_per_device_bytes_whichever_is_more() {
        let mib = 1 << 20;
        // A small registry: the floor.
        assert_eq!(log_bound_segments(4, 16 * mib, 24, 0), 4);
        assert_eq!(log_bound_segments(4, 16 * mib, 24, 1_000_000), 4);
        // 10^7 devices at 24 B: 240 MB, 15 segments of 16 MiB (rounded up).
        assert_eq!(log_bound_segments(4, 16 * mib, 24, 10_000_000), 15);
        // Off: the floor at any size.
        assert_eq!(log_bound_segments(4, 16 * mib, 0, 10_000_000), 4);
        // The per-device part stops at MAX_SCALED_LOG_BYTES (64 segments
        // of 16 MiB); a larger floor still wins.
        let cap = crate::limits::MAX_SCALED_LOG_BYTES / (16 * mib);
        assert_eq!(log_bound_segments(4, 16 * mib, 4096, u64::MAX), cap);
        assert_eq!(log_bound_segments(100, 16 * mib, 4096, u64::MAX), 100);
    }

    #[test]
    fn the_pool_waits_at_the_bound_in_force_and_never_below_two() {
        let dir = tempfile::tempdir().unwrap();
        let pool = SegmentPool::new(
            dir.path().to_owned(),
            4096,
            3,
            10,
            Vec::new(),
            Faults::default(),
        );
        // Segments 10, 11 and 12 may be live; 13 waits.
        assert!(pool.has_room_for(12));
        assert!(!pool.has_room_for(13));
        pool.set_max_segments(6);
        assert_eq!(pool.max_segments(), 6);
        assert!(pool.has_room_for(15));
        assert!(!pool.has_room_for(16));
        // Lowered again: segments already live stay, new ones wait.
        pool.set_max_segments(0);
        assert_eq!(pool.max_segments(), 2);
        assert!(pool.has_room_for(11));
        assert!(!pool.has_room_for(12));
        // A waiter returns once the bound lets it start.
        pool.set_max_segments(4);
        pool.wait_for_room(13, &|| false);
    }

    #[test]
    fn a_checkpoint_keeps_one_spare_segment_and_deletes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        for seq in 0..4 {
            create_preallocated(&segment_path(dir.path(), seq), 4096, &faults).unwrap();
        }
        let pool = SegmentPool::new(dir.path().to_owned(), 4096, 8, 0, Vec::new(), faults);
        // Segments 0..3 are covered; 3 is the live one.
        pool.checkpointed(3 * 4096 + 10);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![2, 3]);
        // The spare is the one reused next.
        drop(pool.take(4).unwrap());
        assert_eq!(list_segments(dir.path()).unwrap(), vec![3, 4]);
        // With no spare, a new segment is preallocated.
        drop(pool.take(5).unwrap());
        assert_eq!(list_segments(dir.path()).unwrap(), vec![3, 4, 5]);
        pool.checkpointed(5 * 4096);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![4, 5]);
    }
}

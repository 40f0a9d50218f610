//! devreg's write-ahead log: preallocated segments of checksummed records,
//! appended by the single writer, replayed at open after the checkpoint.
//!
//! A log position (LSN) is a byte offset in an endless log; segment `n`
//! holds LSNs `n * segment_bytes .. (n + 1) * segment_bytes`.

pub(crate) mod entry;
pub(crate) mod record;
mod replay;
pub(crate) mod segments;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fault::{check, IoOp};
use crate::metrics::Recorder;
use record::{HEADER_BYTES, KIND_ENTRIES, KIND_PAD};
pub use replay::RepairReport;
pub(crate) use replay::{repair, replay};

/// Makes the recovered log durable before anything is appended to it, so a
/// record appended at `end_lsn` may carry the "everything before me is
/// durable" sync mark: fdatasyncs every segment from the checkpoint's to
/// the end's (a crashed process's records may still be in the page cache
/// only). With `stale`, first zeroes the end's segment from `end_lsn` on:
/// records of a torn write lie there, and must never be replayed after
/// records written later.
pub(crate) fn settle_recovered(
    dir: &std::path::Path,
    segment_bytes: u64,
    checkpoint_lsn: u64,
    end_lsn: u64,
    stale: bool,
    faults: &crate::fault::Faults,
) -> Result<()> {
    let end_seq = end_lsn / segment_bytes;
    for seq in checkpoint_lsn / segment_bytes..=end_seq {
        let path = segments::segment_path(dir, seq);
        if !path.exists() {
            continue;
        }
        let file = segments::open_segment(&path, faults)?;
        let ctx = || format!("settling recovered log segment {}", path.display());
        if stale && seq == end_seq {
            let from = end_lsn % segment_bytes;
            let zeros = vec![0u8; (segment_bytes - from) as usize];
            check(faults, IoOp::Pwrite)
                .and_then(|()| file.write_all_at(&zeros, from))
                .map_err(|e| Error::io(ctx(), e))?;
        }
        check(faults, IoOp::Fdatasync)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(ctx(), e))?;
    }
    Ok(())
}

/// Creates the first segment of a new database's log (if absent) and makes
/// its directory entry durable. Runs before the store records that the
/// database exists, so an existing store always has a log to continue.
pub(crate) fn create_first_segment(
    dir: &std::path::Path,
    segment_bytes: u64,
    faults: &crate::fault::Faults,
) -> Result<()> {
    let path = segments::segment_path(dir, 0);
    if !path.exists() {
        segments::create_preallocated(&path, segment_bytes, faults)?;
        segments::sync_dir(dir, faults)?;
    }
    Ok(())
}

/// Whether the log holds no record: no segment file at all, or only
/// segment 0 with zeros where its first record would be (a new database
/// creates segment 0 before its store records that the database exists).
/// A store without metadata is a new database only if this holds (fault
/// sweep finding, see `Registry::open_with`).
pub(crate) fn is_empty(dir: &std::path::Path, faults: &crate::fault::Faults) -> Result<bool> {
    match segments::list_segments(dir)?.as_slice() {
        [] => Ok(true),
        [0] => {
            let path = segments::segment_path(dir, 0);
            let ctx = || format!("reading {}", path.display());
            let file = check(faults, IoOp::Open)
                .and_then(|()| File::open(&path))
                .map_err(|e| Error::io(ctx(), e))?;
            let mut head = [0u8; HEADER_BYTES];
            match check(faults, IoOp::Pread).and_then(|()| file.read_exact_at(&mut head, 0)) {
                Ok(()) => Ok(head.iter().all(|&b| b == 0)),
                // Shorter than a header: not a segment a new database made.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
                Err(e) => Err(Error::io(ctx(), e)),
            }
        }
        _ => Ok(false),
    }
}

use segments::SegmentPool;

/// The append side of the log; owned by the writer thread.
pub(crate) struct LogWriter {
    segment_bytes: u64,
    file: File,
    seq: u64,
    end_lsn: u64,
    pool: Arc<SegmentPool>,
    buf: Vec<u8>,
    /// Start of `buf` in the log.
    buf_lsn: u64,
    synced_lsn: u64,
    /// Where fdatasync latencies and bytes written are counted.
    metrics: Arc<Recorder>,
}

impl LogWriter {
    pub(crate) fn open(
        segment_bytes: u64,
        end_lsn: u64,
        pool: Arc<SegmentPool>,
        metrics: Arc<Recorder>,
    ) -> Result<LogWriter> {
        let seq = end_lsn / segment_bytes;
        let file = pool.take(seq)?;
        Ok(LogWriter {
            segment_bytes,
            file,
            seq,
            end_lsn,
            pool,
            buf: Vec::new(),
            buf_lsn: end_lsn,
            synced_lsn: end_lsn,
            metrics,
        })
    }

    /// A writer that never writes, for a read-only registry (whose writes
    /// are refused before they reach the log): it holds the log directory
    /// open instead of a segment, so opening creates and renames nothing.
    pub(crate) fn inert(
        segment_bytes: u64,
        end_lsn: u64,
        pool: Arc<SegmentPool>,
        dir: &std::path::Path,
        metrics: Arc<Recorder>,
    ) -> Result<LogWriter> {
        let file = std::fs::File::open(dir)
            .map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
        Ok(LogWriter {
            segment_bytes,
            file,
            seq: end_lsn / segment_bytes,
            end_lsn,
            pool,
            buf: Vec::new(),
            buf_lsn: end_lsn,
            synced_lsn: end_lsn,
            metrics,
        })
    }

    pub(crate) fn end_lsn(&self) -> u64 {
        self.end_lsn
    }

    pub(crate) fn pool(&self) -> &Arc<SegmentPool> {
        &self.pool
    }

    /// This database's segment size (fixed when it was created).
    pub(crate) fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Largest body one record can carry.
    pub(crate) fn max_body(&self) -> usize {
        (self.segment_bytes as usize).saturating_sub(2 * HEADER_BYTES)
    }

    /// How many new segments appending records of these body sizes needs.
    pub(crate) fn rolls_needed(&self, bodies: impl Iterator<Item = usize>) -> u64 {
        let mut lsn = self.end_lsn;
        let mut seq = self.seq;
        let mut rolls = 0;
        for len in bodies {
            let need = (HEADER_BYTES + len) as u64;
            if self.must_roll(lsn, seq, need) {
                seq += 1;
                lsn = seq * self.segment_bytes;
                rolls += 1;
            }
            lsn += need;
        }
        rolls
    }

    /// Whether a record of `need` bytes at `lsn` does not fit segment `seq`
    /// (also when the segment is exactly full: `lsn` is the next one's start).
    fn must_roll(&self, lsn: u64, seq: u64, need: u64) -> bool {
        debug_assert!(lsn >= seq * self.segment_bytes);
        lsn - seq * self.segment_bytes + need > self.segment_bytes
    }

    /// The sequence number of the `n`-th segment after the current one.
    pub(crate) fn seq_after(&self, n: u64) -> u64 {
        self.seq + n
    }

    /// Queues one record; it reaches the OS at the next `write_out`.
    /// The caller checked `rolls_needed` against the pool first.
    pub(crate) fn append(&mut self, count: u32, body: &[u8]) -> Result<u64> {
        let need = (HEADER_BYTES + body.len()) as u64;
        if body.len() > self.max_body() {
            return Err(Error::invalid(
                "batch",
                format!(
                    "encodes to {} bytes, over the log's record limit of {}",
                    body.len(),
                    self.max_body()
                ),
            ));
        }
        if self.must_roll(self.end_lsn, self.seq, need) {
            self.roll()?;
        }
        let lsn = self.end_lsn;
        let mark = self.mark();
        record::encode(&mut self.buf, lsn, KIND_ENTRIES, mark, count, body);
        self.end_lsn += need;
        Ok(lsn)
    }

    /// Writes queued records to the OS (one write call): after this they
    /// survive a process crash.
    pub(crate) fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let off = self.buf_lsn - self.seq * self.segment_bytes;
        check(&self.pool.faults, IoOp::Pwrite)
            .and_then(|()| self.file.write_all_at(&self.buf, off))
            .map_err(|e| Error::io(format!("writing log segment {}", self.seq), e))?;
        self.metrics.log_written(self.buf.len());
        self.buf.clear();
        self.buf_lsn = self.end_lsn;
        Ok(())
    }

    /// Makes everything written so far durable (fdatasync).
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.write_out()?;
        if self.synced_lsn == self.end_lsn {
            return Ok(());
        }
        self.fdatasync()?;
        self.synced_lsn = self.end_lsn;
        Ok(())
    }

    /// fdatasyncs the current segment, timing it (`Metrics::log_fsync_us`).
    fn fdatasync(&self) -> Result<()> {
        check(&self.pool.faults, IoOp::Fdatasync)
            .map_err(|e| Error::io(format!("syncing log segment {}", self.seq), e))?;
        let start = std::time::Instant::now();
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("syncing log segment {}", self.seq), e))?;
        self.metrics.log_fsync(start.elapsed());
        Ok(())
    }

    /// The sync mark of a record starting at the end now (see `record`).
    fn mark(&self) -> u8 {
        if self.synced_lsn == self.end_lsn {
            record::MARK_AT_SYNCED
        } else {
            record::MARK_AFTER_UNSYNCED
        }
    }

    pub(crate) fn needs_sync(&self) -> bool {
        self.synced_lsn != self.end_lsn || !self.buf.is_empty()
    }

    /// Ends the current segment with a pad record and moves to the next one.
    fn roll(&mut self) -> Result<()> {
        let used = self.end_lsn - self.seq * self.segment_bytes;
        if self.segment_bytes - used >= HEADER_BYTES as u64 {
            let mark = self.mark();
            record::encode(&mut self.buf, self.end_lsn, KIND_PAD, mark, 0, &[]);
        }
        self.write_out()?;
        // The pad must be durable before anything lands in the next segment,
        // or recovery would see a hole before valid records.
        self.fdatasync()?;
        let next = self.seq + 1;
        self.file = self.pool.take(next)?;
        self.seq = next;
        self.end_lsn = next * self.segment_bytes;
        self.buf_lsn = self.end_lsn;
        self.synced_lsn = self.end_lsn;
        Ok(())
    }
}

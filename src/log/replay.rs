//! Recovery: read records from the checkpoint position to the end of the log.
//!
//! The end is the first position holding no valid record. A damaged record
//! there is a torn write from a crash and is cut off; a damaged record with a
//! valid record after it is corruption before the tail and fails the open.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{self, Header, HEADER_BYTES, KIND_PAD};
use super::segments::segment_path;
use crate::error::{Error, Result};
use crate::fault::{check, Faults, IoOp};

/// Where the replay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayEnd {
    /// The first free log position: the writer continues here.
    pub(crate) end_lsn: u64,
    /// Records replayed.
    pub(crate) records: u64,
    /// Whether a damaged record at the tail was cut off.
    pub(crate) cut_tail: bool,
    /// Valid records of the torn write lie after the end in its segment:
    /// they must be cleared before the log continues, or a later recovery
    /// could replay them after newer records.
    pub(crate) stale_after_end: bool,
}

enum Read {
    Record {
        kind: u8,
        count: u32,
        body: Vec<u8>,
        /// See `Header::proves_durable_before`.
        proof: bool,
    },
    Invalid {
        plausible_len: Option<u32>,
    },
}

/// Reads exactly `buf.len()` bytes at `off`. `Ok(false)`: the file ends
/// first (a short read at the real end of the data). Any other error is an
/// error: one EIO must never pass for the end of the log (finding 2).
fn read_full(file: &File, faults: &Faults, buf: &mut [u8], off: u64) -> std::io::Result<bool> {
    check(faults, IoOp::Pread)?;
    match file.read_exact_at(buf, off) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Where a read happened, for errors.
struct At<'a> {
    dir: &'a Path,
    seq: u64,
    off: u64,
}

impl At<'_> {
    fn location(&self) -> String {
        format!(
            "log segment {} at offset {}",
            segment_path(self.dir, self.seq).display(),
            self.off
        )
    }
}

fn read_at(file: &File, segment_bytes: u64, lsn: u64, dir: &Path, faults: &Faults) -> Result<Read> {
    let at = At {
        dir,
        seq: lsn / segment_bytes,
        off: lsn % segment_bytes,
    };
    let io_err = |e| Error::io(format!("reading {}", at.location()), e);
    let mut hb = [0u8; HEADER_BYTES];
    if !read_full(file, faults, &mut hb, at.off).map_err(io_err)? {
        return Ok(Read::Invalid {
            plausible_len: None,
        });
    }
    let h = Header::parse(&hb);
    let fits = at.off + (HEADER_BYTES as u64) + u64::from(h.len) <= segment_bytes;
    if !fits || h.lsn != lsn {
        return Ok(Read::Invalid {
            plausible_len: if fits && h.len > 0 { Some(h.len) } else { None },
        });
    }
    let mut body = vec![0u8; h.len as usize];
    if !read_full(file, faults, &mut body, at.off + HEADER_BYTES as u64).map_err(io_err)? {
        return Ok(Read::Invalid {
            plausible_len: None,
        });
    }
    if record::verify(&hb, &body, lsn) {
        return Ok(Read::Record {
            kind: h.kind,
            count: h.count,
            body,
            proof: h.proves_durable_before(),
        });
    }
    // A record whose checksum holds at its own position but whose version or
    // kind this build does not know was written by a newer devreg: cutting
    // it as a torn tail would destroy it (finding 8).
    if record::checksum_matches(&hb, &body) {
        return Err(Error::UnsupportedFormat {
            location: at.location(),
            found: u32::from(if h.version != record::LOG_VERSION {
                h.version
            } else {
                h.kind
            }),
            supported: u32::from(record::LOG_VERSION),
        });
    }
    Ok(Read::Invalid {
        plausible_len: Some(h.len),
    })
}

fn open_existing(dir: &Path, seq: u64, faults: &Faults) -> Result<Option<File>> {
    let path = segment_path(dir, seq);
    match check(faults, IoOp::Open).and_then(|()| File::open(&path)) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("opening {}", path.display()), e)),
    }
}

/// What valid records sit after a damaged one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum After {
    /// None.
    Nothing,
    /// Only records written after unsynced data (the damaged one may be
    /// part of the same torn write): stale once the tail is cut.
    Unsynced,
    /// A record written when everything before it was durable: the damage
    /// before it is not a torn write.
    Proof,
}

/// The valid records in segment `seq` after offset `from`. A record carries
/// its own LSN, so one found at its own position was written there; its
/// sync mark says whether the damage before it can be a torn write.
fn valid_records_after(
    file: &File,
    segment_bytes: u64,
    seq: u64,
    from: u64,
    faults: &Faults,
) -> std::io::Result<After> {
    let mut rest = Vec::new();
    let len = segment_bytes.saturating_sub(from);
    rest.resize(len as usize, 0);
    let mut got = 0usize;
    // A short read (a truncated file) just scans what is there; an error is
    // an error.
    while let Some(buf) = rest.get_mut(got..).filter(|b| !b.is_empty()) {
        check(faults, IoOp::Pread)?;
        match file.read_at(buf, from + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    rest.truncate(got);
    let base = seq * segment_bytes + from;
    let mut found = After::Nothing;
    let mut p = 0usize;
    while p + HEADER_BYTES <= rest.len() {
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&rest[p + 8..p + 16]);
        if u64::from_le_bytes(lsn) == base + p as u64 {
            let mut hb = [0u8; HEADER_BYTES];
            hb.copy_from_slice(&rest[p..p + HEADER_BYTES]);
            let h = Header::parse(&hb);
            let end = p + HEADER_BYTES + h.len as usize;
            if let Some(body) = rest.get(p + HEADER_BYTES..end) {
                if record::verify(&hb, body, base + p as u64) {
                    if h.proves_durable_before() {
                        return Ok(After::Proof);
                    }
                    found = After::Unsynced;
                }
            }
        }
        p += 1;
    }
    Ok(found)
}

/// The log must not continue in a later segment. If one starts with a valid
/// record, the store is older than the log (sled recovered to an earlier
/// state after damage) or a segment went missing: replaying from here would
/// silently roll the registry back, so the open fails instead.
fn no_log_beyond(dir: &Path, segment_bytes: u64, end_lsn: u64, faults: &Faults) -> Result<()> {
    let end_seq = end_lsn / segment_bytes;
    for seq in super::segments::list_segments(dir)? {
        if seq > end_seq
            && valid_record_at(dir, segment_bytes, seq * segment_bytes, faults)? != After::Nothing
        {
            return Err(Error::corrupt(
                format!("log segment {}", segment_path(dir, seq).display()),
                format!(
                    "the log continues here but recovery ended at position {end_lsn}: \
                     the store is older than the log, or a segment is missing"
                ),
            ));
        }
    }
    Ok(())
}

fn valid_record_at(dir: &Path, segment_bytes: u64, lsn: u64, faults: &Faults) -> Result<After> {
    let Some(f) = open_existing(dir, lsn / segment_bytes, faults)? else {
        return Ok(After::Nothing);
    };
    Ok(match read_at(&f, segment_bytes, lsn, dir, faults)? {
        Read::Record { proof: true, .. } => After::Proof,
        Read::Record { proof: false, .. } => After::Unsynced,
        Read::Invalid { .. } => After::Nothing,
    })
}

/// Segment `seq` is absent where the log continues at `lsn`. That is the
/// log's end only where the writer cannot have started the segment yet: at
/// a segment's first byte, when the segment before it is still there. The
/// pool hands out the segment freed last (the one before) when it starts
/// the next, so a started segment `seq` leaves no `seq - 1` behind; and a
/// new database creates segment 0 before its store says it exists. Inside
/// a segment, or with neither file there, writes since the checkpoint would
/// vanish silently: that is corruption (finding 7).
fn missing_segment_is_end(dir: &Path, segment_bytes: u64, lsn: u64) -> Result<()> {
    let seq = lsn / segment_bytes;
    let at_start = lsn.is_multiple_of(segment_bytes);
    let previous_there = seq > 0 && segment_path(dir, seq - 1).exists();
    if at_start && previous_there {
        return Ok(());
    }
    Err(Error::corrupt(
        format!("log segment {}", segment_path(dir, seq).display()),
        format!("missing, but the log continues at position {lsn}"),
    ))
}

/// A segment is created full length (zeros, then renamed into place), so a
/// shorter file was damaged; the records that were in it are gone.
fn check_length(file: &File, dir: &Path, seq: u64, segment_bytes: u64) -> Result<()> {
    let path = segment_path(dir, seq);
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?
        .len();
    if len < segment_bytes {
        return Err(Error::corrupt(
            format!("log segment {}", path.display()),
            format!("{len} bytes, expected {segment_bytes}: the file was truncated"),
        ));
    }
    Ok(())
}

/// Replays records from `start_lsn`, calling `apply(lsn, count, body)` for each.
pub(crate) fn replay(
    dir: &Path,
    segment_bytes: u64,
    start_lsn: u64,
    faults: &Faults,
    mut apply: impl FnMut(u64, u32, &[u8]) -> Result<()>,
) -> Result<ReplayEnd> {
    let mut lsn = start_lsn;
    let mut records = 0;
    let mut current: Option<(u64, File)> = None;
    loop {
        let seq = lsn / segment_bytes;
        let off = lsn % segment_bytes;
        if segment_bytes - off < HEADER_BYTES as u64 {
            lsn = (seq + 1) * segment_bytes;
            continue;
        }
        if current.as_ref().map(|(s, _)| *s) != Some(seq) {
            match open_existing(dir, seq, faults)? {
                Some(f) => {
                    check_length(&f, dir, seq, segment_bytes)?;
                    current = Some((seq, f));
                }
                None => {
                    missing_segment_is_end(dir, segment_bytes, lsn)?;
                    no_log_beyond(dir, segment_bytes, lsn, faults)?;
                    return Ok(ReplayEnd {
                        end_lsn: lsn,
                        records,
                        cut_tail: false,
                        stale_after_end: false,
                    });
                }
            }
        }
        let Some((_, file)) = current.as_ref() else {
            continue;
        };
        match read_at(file, segment_bytes, lsn, dir, faults)? {
            Read::Record { kind, .. } if kind == KIND_PAD => {
                lsn = (seq + 1) * segment_bytes;
            }
            Read::Record { count, body, .. } => {
                apply(lsn, count, &body)?;
                records += 1;
                lsn += (HEADER_BYTES + body.len()) as u64;
            }
            Read::Invalid { plausible_len } => {
                return end_at_invalid(
                    file,
                    dir,
                    segment_bytes,
                    lsn,
                    plausible_len,
                    records,
                    faults,
                );
            }
        }
    }
}

/// The first invalid record: the log's end unless a record after it proves
/// it was durable (a torn write is cut off; records of the same unsynced
/// write after it are reported as stale, for the writer to clear), and
/// corruption before the tail otherwise (finding 11: a power cut can keep a
/// later page of one write and lose an earlier one).
fn end_at_invalid(
    file: &File,
    dir: &Path,
    segment_bytes: u64,
    lsn: u64,
    plausible_len: Option<u32>,
    records: u64,
    faults: &Faults,
) -> Result<ReplayEnd> {
    let seq = lsn / segment_bytes;
    let off = lsn % segment_bytes;
    let after_this = match plausible_len
        .map(|len| lsn + (HEADER_BYTES as u64) + u64::from(len))
        .filter(|&next| next / segment_bytes == seq)
    {
        Some(next) => valid_record_at(dir, segment_bytes, next, faults)?,
        None => After::Nothing,
    };
    let next_segment = valid_record_at(dir, segment_bytes, (seq + 1) * segment_bytes, faults)?;
    let in_segment =
        valid_records_after(file, segment_bytes, seq, off + 1, faults).map_err(|e| {
            Error::io(
                format!("reading log segment {}", segment_path(dir, seq).display()),
                e,
            )
        })?;
    let after = after_this.max(next_segment).max(in_segment);
    if after == After::Proof {
        return Err(Error::corrupt(
            format!(
                "log segment {} at offset {off}",
                segment_path(dir, seq).display()
            ),
            "damaged record before the end of the log",
        ));
    }
    no_log_beyond(dir, segment_bytes, lsn, faults)?;
    // A torn tail is cut only if it is not all zeros (never written).
    Ok(ReplayEnd {
        end_lsn: lsn,
        records,
        cut_tail: plausible_len.is_some() || after == After::Unsynced,
        stale_after_end: after == After::Unsynced,
    })
}

/// What `repair` cut from the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// The log position where the log now ends, if anything was cut.
    pub cut_at_lsn: Option<u64>,
    /// The segment file and offset of the first damaged record.
    pub damaged: Option<String>,
    /// Valid records after the damage that were dropped with it.
    pub records_dropped: u64,
    /// Later segment files removed (they continued the dropped log).
    pub segments_removed: Vec<String>,
}

/// The position of the first record from `start_lsn` on that is not valid
/// (or `None` when the log ends cleanly before any damage).
fn first_invalid(
    dir: &Path,
    segment_bytes: u64,
    start_lsn: u64,
    faults: &Faults,
) -> Result<Option<u64>> {
    let mut lsn = start_lsn;
    loop {
        let seq = lsn / segment_bytes;
        if segment_bytes - lsn % segment_bytes < HEADER_BYTES as u64 {
            lsn = (seq + 1) * segment_bytes;
            continue;
        }
        let Some(file) = open_existing(dir, seq, faults)? else {
            return Ok(None);
        };
        loop {
            match read_at(&file, segment_bytes, lsn, dir, faults)? {
                Read::Record { kind, .. } if kind == KIND_PAD => break,
                Read::Record { body, .. } => lsn += (HEADER_BYTES + body.len()) as u64,
                Read::Invalid { .. } => return Ok(Some(lsn)),
            }
            if segment_bytes - lsn % segment_bytes < HEADER_BYTES as u64 {
                break;
            }
        }
        lsn = (seq + 1) * segment_bytes;
    }
}

/// Counts the valid records at their own positions in `bytes`, which start
/// at log position `base`.
fn count_valid(bytes: &[u8], base: u64) -> u64 {
    let mut n = 0;
    let mut p = 0usize;
    while let Some(hs) = bytes.get(p..p + HEADER_BYTES) {
        let mut hb = [0u8; HEADER_BYTES];
        hb.copy_from_slice(hs);
        let h = Header::parse(&hb);
        let body = bytes.get(p + HEADER_BYTES..p + HEADER_BYTES + h.len as usize);
        match body {
            Some(body) if h.lsn == base + p as u64 && record::verify(&hb, body, h.lsn) => {
                n += 1;
                p += HEADER_BYTES + body.len();
            }
            _ => p += 1,
        }
    }
    n
}

/// Cuts the log at its first damaged record (`devreg repair`): zeroes the
/// rest of that segment, removes later segments, and reports what was
/// dropped. For damage *before* the durable end, which the open refuses
/// with `Corrupt`: the records after it are lost, by the operator's choice.
pub(crate) fn repair(
    dir: &Path,
    segment_bytes: u64,
    start_lsn: u64,
    faults: &Faults,
) -> Result<RepairReport> {
    let mut report = RepairReport {
        cut_at_lsn: None,
        damaged: None,
        records_dropped: 0,
        segments_removed: Vec::new(),
    };
    // A log that recovers (a torn tail at most) needs no repair.
    match replay(dir, segment_bytes, start_lsn, faults, |_, _, _| Ok(())) {
        Ok(_) => return Ok(report),
        Err(Error::Corrupt { .. }) => {}
        Err(e) => return Err(e),
    }
    let Some(cut) = first_invalid(dir, segment_bytes, start_lsn, faults)? else {
        return Ok(report);
    };
    let seq = cut / segment_bytes;
    let off = cut % segment_bytes;
    let path = segment_path(dir, seq);
    let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    let mut rest = vec![0u8; (segment_bytes - off) as usize];
    let file = super::segments::open_segment(&path, faults)?;
    let got = read_full(&file, faults, &mut rest, off)
        .map_err(|e| Error::io(ctx("reading", &path), e))?;
    report.records_dropped += if got { count_valid(&rest, cut) } else { 0 };
    rest.fill(0);
    check(faults, IoOp::Pwrite)
        .and_then(|()| file.write_all_at(&rest, off))
        .and_then(|()| check(faults, IoOp::Fdatasync))
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io(ctx("cutting", &path), e))?;
    for later in super::segments::list_segments(dir)? {
        if later <= seq {
            continue;
        }
        let p = segment_path(dir, later);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(ctx("reading", &p), e))?;
        report.records_dropped += count_valid(&bytes, later * segment_bytes);
        std::fs::remove_file(&p).map_err(|e| Error::io(ctx("removing", &p), e))?;
        report.segments_removed.push(p.display().to_string());
    }
    super::segments::sync_dir(dir, faults)?;
    report.cut_at_lsn = Some(cut);
    report.damaged = Some(format!("{} at offset {off}", path.display()));
    Ok(report)
}

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

/// Where the replay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayEnd {
    /// The first free log position: the writer continues here.
    pub(crate) end_lsn: u64,
    /// Records replayed.
    pub(crate) records: u64,
    /// Whether a damaged record at the tail was cut off.
    pub(crate) cut_tail: bool,
}

enum Read {
    Record { kind: u8, count: u32, body: Vec<u8> },
    Invalid { plausible_len: Option<u32> },
}

fn read_at(file: &File, segment_bytes: u64, lsn: u64) -> Read {
    let off = lsn % segment_bytes;
    let mut hb = [0u8; HEADER_BYTES];
    if file.read_exact_at(&mut hb, off).is_err() {
        return Read::Invalid {
            plausible_len: None,
        };
    }
    let h = Header::parse(&hb);
    let fits = off + (HEADER_BYTES as u64) + u64::from(h.len) <= segment_bytes;
    if !fits || h.lsn != lsn {
        return Read::Invalid {
            plausible_len: if fits && h.len > 0 { Some(h.len) } else { None },
        };
    }
    let mut body = vec![0u8; h.len as usize];
    if file
        .read_exact_at(&mut body, off + HEADER_BYTES as u64)
        .is_err()
    {
        return Read::Invalid {
            plausible_len: None,
        };
    }
    if record::verify(&hb, &body, lsn) {
        Read::Record {
            kind: h.kind,
            count: h.count,
            body,
        }
    } else {
        Read::Invalid {
            plausible_len: Some(h.len),
        }
    }
}

fn open_existing(dir: &Path, seq: u64) -> Result<Option<File>> {
    let path = segment_path(dir, seq);
    match File::open(&path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("opening {}", path.display()), e)),
    }
}

/// Whether any valid record sits in segment `seq` after offset `from`: a
/// record carries its own LSN, so one found at its own position proves the
/// damage before it is not a torn tail.
fn valid_record_after(file: &File, segment_bytes: u64, seq: u64, from: u64) -> bool {
    let mut rest = Vec::new();
    let len = segment_bytes.saturating_sub(from);
    rest.resize(len as usize, 0);
    let mut got = 0usize;
    // A short read (a truncated file) just scans what is there.
    while got < rest.len() {
        match file.read_at(&mut rest[got..], from + got as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    rest.truncate(got);
    let base = seq * segment_bytes + from;
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
                    return true;
                }
            }
        }
        p += 1;
    }
    false
}

/// The log must not continue in a later segment. If one starts with a valid
/// record, the store is older than the log (sled recovered to an earlier
/// state after damage) or a segment went missing: replaying from here would
/// silently roll the registry back, so the open fails instead.
fn no_log_beyond(dir: &Path, segment_bytes: u64, end_lsn: u64) -> Result<()> {
    let end_seq = end_lsn / segment_bytes;
    for seq in super::segments::list_segments(dir)? {
        if seq > end_seq && valid_record_at(dir, segment_bytes, seq * segment_bytes)? {
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

fn valid_record_at(dir: &Path, segment_bytes: u64, lsn: u64) -> Result<bool> {
    let Some(f) = open_existing(dir, lsn / segment_bytes)? else {
        return Ok(false);
    };
    Ok(matches!(
        read_at(&f, segment_bytes, lsn),
        Read::Record { .. }
    ))
}

/// Replays records from `start_lsn`, calling `apply(lsn, count, body)` for each.
pub(crate) fn replay(
    dir: &Path,
    segment_bytes: u64,
    start_lsn: u64,
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
            match open_existing(dir, seq)? {
                Some(f) => current = Some((seq, f)),
                None => {
                    no_log_beyond(dir, segment_bytes, lsn)?;
                    return Ok(ReplayEnd {
                        end_lsn: lsn,
                        records,
                        cut_tail: false,
                    });
                }
            }
        }
        let Some((_, file)) = current.as_ref() else {
            continue;
        };
        match read_at(file, segment_bytes, lsn) {
            Read::Record { kind, .. } if kind == KIND_PAD => {
                lsn = (seq + 1) * segment_bytes;
            }
            Read::Record { count, body, .. } => {
                apply(lsn, count, &body)?;
                records += 1;
                lsn += (HEADER_BYTES + body.len()) as u64;
            }
            Read::Invalid { plausible_len } => {
                // Is anything valid after this record? Then it is not the tail.
                let after_this = plausible_len
                    .map(|len| lsn + (HEADER_BYTES as u64) + u64::from(len))
                    .filter(|&next| next / segment_bytes == seq);
                let later_valid =
                    match after_this {
                        Some(next) => valid_record_at(dir, segment_bytes, next)?,
                        None => false,
                    } || valid_record_at(dir, segment_bytes, (seq + 1) * segment_bytes)?
                        || valid_record_after(file, segment_bytes, seq, off + 1);
                if later_valid {
                    return Err(Error::corrupt(
                        format!(
                            "log segment {} at offset {off}",
                            segment_path(dir, seq).display()
                        ),
                        "damaged record before the end of the log",
                    ));
                }
                no_log_beyond(dir, segment_bytes, lsn)?;
                // A torn tail is cut only if it is not all zeros (never written).
                let cut_tail = plausible_len.is_some();
                return Ok(ReplayEnd {
                    end_lsn: lsn,
                    records,
                    cut_tail,
                });
            }
        }
    }
}

//! The log record format.
//!
//! ```text
//! offset  size  field
//! 0       4     body length in bytes, u32 little-endian
//! 4       4     CRC-32 (IEEE) of bytes 8..24+len, u32 little-endian
//! 8       8     LSN: the record's own log position, u64 little-endian
//! 16      1     log format version (1)
//! 17      1     kind: 1 = entries, 2 = pad (rest of the segment is unused)
//! 18      1     sync mark: 2 = the record starts where the log was durable
//!               (everything before it was fdatasynced before it was
//!               written), 1 = unsynced records precede it, 0 = written
//!               before marks existed (treated like 2)
//! 19      1     reserved, zero
//! 20      4     entry count, u32 little-endian
//! 24      len   body: the entries, bincode (varint) one after another
//! ```

pub(crate) const HEADER_BYTES: usize = 24;
pub(crate) const LOG_VERSION: u8 = 1;
pub(crate) const KIND_ENTRIES: u8 = 1;
pub(crate) const KIND_PAD: u8 = 2;
/// Sync mark: unsynced records precede this one.
pub(crate) const MARK_AFTER_UNSYNCED: u8 = 1;
/// Sync mark: everything before this record was durable when it was written.
pub(crate) const MARK_AT_SYNCED: u8 = 2;

/// A parsed header whose checksum has not been verified yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) len: u32,
    pub(crate) crc: u32,
    pub(crate) lsn: u64,
    pub(crate) version: u8,
    pub(crate) kind: u8,
    pub(crate) mark: u8,
    pub(crate) count: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

impl Header {
    pub(crate) fn parse(b: &[u8; HEADER_BYTES]) -> Header {
        Header {
            len: le_u32(b, 0),
            crc: le_u32(b, 4),
            lsn: le_u64(b, 8),
            version: b[16],
            kind: b[17],
            mark: b[18],
            count: le_u32(b, 20),
        }
    }
}

impl Header {
    /// Whether this record proves that damage before it is not a torn
    /// write: it was written only after everything before it was durable.
    pub(crate) fn proves_durable_before(&self) -> bool {
        self.mark != MARK_AFTER_UNSYNCED
    }
}

/// Appends one record (header and body) to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, lsn: u64, kind: u8, mark: u8, count: u32, body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&[LOG_VERSION, kind, mark, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(body);
    let crc = checksum(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub(crate) fn checksum(covered: &[u8]) -> u32 {
    crc32fast::hash(covered)
}

/// Whether the checksum of `header_bytes` and `body` holds, whatever the
/// version and kind say.
pub(crate) fn checksum_matches(header_bytes: &[u8; HEADER_BYTES], body: &[u8]) -> bool {
    let h = Header::parse(header_bytes);
    if body.len() != h.len as usize {
        return false;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_bytes.get(8..).unwrap_or_default());
    hasher.update(body);
    hasher.finalize() == h.crc
}

/// Verifies a record read at `expected_lsn`: `header_bytes` then `body`.
pub(crate) fn verify(header_bytes: &[u8; HEADER_BYTES], body: &[u8], expected_lsn: u64) -> bool {
    let h = Header::parse(header_bytes);
    if h.lsn != expected_lsn || h.version != LOG_VERSION || body.len() != h.len as usize {
        return false;
    }
    if h.kind != KIND_ENTRIES && h.kind != KIND_PAD {
        return false;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header_bytes[8..]);
    hasher.update(body);
    hasher.finalize() == h.crc
}

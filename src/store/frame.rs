//! Compressed frames: how a page or delta chunk is kept in its sled value.
//!
//! ```text
//! plain frame       the block itself (its first byte is its version, 1)
//! compressed frame  FRAME_LZ4(0xF4) raw length(LEB128) LZ4 block of the block
//! ```
//!
//! `seal` compresses a block with LZ4 (`lz4_flex`, pure Rust) and keeps the
//! plain block when that does not make it smaller (an empty page, a block of
//! random bytes) or when it is larger than `MAX_FRAME_RAW_BYTES`. `open`
//! undoes it, whichever it is. Format 4 brought the compressed frame
//! (DESIGN.md 4.3 has the measurements: pages shrink to about half, and
//! decompressing all of them costs little next to decoding them).

#[cfg(test)]
use std::borrow::Cow;
use std::cell::RefCell;

use super::paged::{get_varint, put_varint};
use crate::error::{Error, Result};
use crate::limits::{FRAME_BUF_KEEP_BYTES, MAX_FRAME_RAW_BYTES};

/// First byte of a compressed frame. Never a block version (those are small).
pub(crate) const FRAME_LZ4: u8 = 0xF4;

/// Blocks shorter than this are never worth a frame header.
const MIN_BLOCK_TO_COMPRESS: usize = 16;

/// The sled value of `block`: compressed when that makes it smaller.
pub(crate) fn seal(block: Vec<u8>) -> Vec<u8> {
    match compress(&block, &mut Vec::new()) {
        Some(frame) => frame,
        None => block,
    }
}

/// `seal` of a borrowed block, compressing into `buf` (kept by the caller
/// from one page to the next, so a page of more than glibc's mmap
/// threshold does not map and fault in fresh memory each time: DESIGN.md
/// 4.3, "Buffers"). The value returned is a new vector of its exact length.
pub(crate) fn seal_from(block: &[u8], buf: &mut Vec<u8>) -> Vec<u8> {
    compress(block, buf).unwrap_or_else(|| block.to_vec())
}

/// The compressed frame of `block`, built in `buf`; `None` when the plain
/// block is to be kept.
fn compress(block: &[u8], buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    debug_assert_ne!(
        block.first(),
        Some(&FRAME_LZ4),
        "a block never starts like a frame"
    );
    if block.len() < MIN_BLOCK_TO_COMPRESS || block.len() > MAX_FRAME_RAW_BYTES {
        return None;
    }
    let bound = lz4_flex::block::get_maximum_output_size(block.len());
    grow_zeroed(buf, bound);
    // The bound is LZ4's worst case, so this cannot run out of room; if it
    // ever did, the plain block is a correct frame.
    let packed_len = lz4_flex::block::compress_into(block, buf.get_mut(..bound)?).ok()?;
    let packed = buf.get(..packed_len)?;
    // The header is the marker and at most ten LEB128 bytes of length.
    let mut out = Vec::with_capacity(11 + packed.len());
    out.push(FRAME_LZ4);
    put_varint(&mut out, block.len() as u64);
    if out.len() + packed.len() >= block.len() {
        return None;
    }
    out.extend_from_slice(packed);
    Some(out)
}

/// The block a sled value holds; errors name `location`. (The store reads
/// through `with_open` and `open_in`, into kept buffers.)
#[cfg(test)]
pub(crate) fn open<'a>(location: &dyn Fn() -> String, value: &'a [u8]) -> Result<Cow<'a, [u8]>> {
    let mut buf = Vec::new();
    match decompress(location, value, &mut buf)? {
        Some(len) => {
            buf.truncate(len);
            Ok(Cow::Owned(buf))
        }
        None => Ok(Cow::Borrowed(value)),
    }
}

/// Calls `f` with the block a sled value holds, decompressed into a buffer
/// this thread keeps between calls (up to `FRAME_BUF_KEEP_BYTES`; a call
/// made inside `f` gets a buffer of its own). For the scans, which open
/// every page in turn.
pub(crate) fn with_open<R>(
    location: &dyn Fn() -> String,
    value: &[u8],
    f: impl FnOnce(&[u8]) -> Result<R>,
) -> Result<R> {
    thread_local! {
        static KEPT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    // `try_with` and `try_borrow_mut`: a buffer that cannot be had (a call
    // inside `f`, a thread's exit) is a fresh one, never a panic.
    let mut buf = KEPT
        .try_with(|k| k.try_borrow_mut().map(|mut b| std::mem::take(&mut *b)))
        .ok()
        .and_then(std::result::Result::ok)
        .unwrap_or_default();
    let out = open_in(location, value, &mut buf).and_then(f);
    if buf.capacity() <= FRAME_BUF_KEEP_BYTES {
        let _kept = KEPT.try_with(|k| {
            if let Ok(mut kept) = k.try_borrow_mut() {
                if kept.capacity() < buf.capacity() {
                    *kept = buf;
                }
            }
        });
    }
    out
}

/// `open` into `buf`, kept by the caller from one value to the next (see
/// `seal_from`): the block, borrowed from `value` when it is plain and from
/// `buf` when it was compressed.
pub(crate) fn open_in<'a>(
    location: &dyn Fn() -> String,
    value: &'a [u8],
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    match decompress(location, value, buf)? {
        Some(len) => Ok(buf.get(..len).unwrap_or_default()),
        None => Ok(value),
    }
}

/// Makes `buf` at least `len` bytes long. Its length only grows, so a kept
/// buffer is not zeroed again; one too small is replaced by a zeroed
/// allocation (fresh pages come zeroed, so that costs no pass over them).
fn grow_zeroed(buf: &mut Vec<u8>, len: usize) {
    if buf.capacity() < len {
        *buf = vec![0u8; len];
    } else if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Decompresses a compressed frame into the front of `buf` and returns
/// the block's length; `None` for a plain frame (its block is `value`).
/// `buf` only grows, so a kept buffer is not zeroed again.
fn decompress(
    location: &dyn Fn() -> String,
    value: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Option<usize>> {
    if value.first() != Some(&FRAME_LZ4) {
        return Ok(None);
    }
    let bad = |why: String| Error::corrupt(location(), why);
    let mut at = 1usize;
    let raw_len = get_varint(value, &mut at)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad("compressed frame: bad length".into()))?;
    if raw_len > MAX_FRAME_RAW_BYTES {
        return Err(bad(format!(
            "compressed frame: length {raw_len} is over the limit of {MAX_FRAME_RAW_BYTES}"
        )));
    }
    let packed = value.get(at..).unwrap_or_default();
    grow_zeroed(buf, raw_len);
    let block = buf.get_mut(..raw_len).unwrap_or_default();
    let n = lz4_flex::block::decompress_into(packed, block)
        .map_err(|e| bad(format!("compressed frame: {e}")))?;
    if n != raw_len {
        return Err(bad(format!(
            "compressed frame: {n} bytes where its header says {raw_len}"
        )));
    }
    if block.first() == Some(&FRAME_LZ4) {
        return Err(bad("compressed frame holds another frame".into()));
    }
    Ok(Some(raw_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> String {
        "frame".into()
    }

    #[test]
    fn frames_round_trip_and_stay_plain_when_compression_does_not_pay() {
        let repetitive: Vec<u8> = std::iter::once(1u8)
            .chain((0..4000).map(|i| b"device_model"[i % 12]))
            .collect();
        let sealed = seal(repetitive.clone());
        assert_eq!(sealed.first(), Some(&FRAME_LZ4));
        assert!(
            sealed.len() * 4 < repetitive.len(),
            "{} bytes",
            sealed.len()
        );
        assert_eq!(open(&loc, &sealed).ok().as_deref(), Some(&repetitive[..]));

        // An empty page and random bytes stay plain, and open as they are.
        let empty = vec![1u8, 0];
        assert_eq!(seal(empty.clone()), empty);
        let mut rnd = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        let random: Vec<u8> = std::iter::once(1u8)
            .chain((0..3000).map(|_| rnd() as u8))
            .collect();
        let sealed = seal(random.clone());
        assert_eq!(sealed, random);
        assert!(matches!(open(&loc, &sealed), Ok(Cow::Borrowed(_))));
    }

    /// Kept buffers (`seal_from`, `open_in`, `with_open`) give exactly
    /// what fresh ones give, after a larger block left its bytes in them,
    /// and a `with_open` inside another gets a buffer of its own.
    #[test]
    fn kept_buffers_give_what_fresh_ones_give() {
        let big: Vec<u8> = std::iter::once(1u8)
            .chain((0..9000).map(|i| b"app_version"[i % 11]))
            .collect();
        let small: Vec<u8> = std::iter::once(1u8)
            .chain((0..700).map(|i| b"locale"[i % 6]))
            .collect();
        let plain = vec![1u8, 0];
        let (mut packed, mut opened) = (Vec::new(), Vec::new());
        for block in [&big, &small, &plain, &big, &small] {
            let sealed = seal_from(block, &mut packed);
            assert_eq!(sealed, seal(block.clone()));
            assert_eq!(open_in(&loc, &sealed, &mut opened).ok(), Some(&block[..]));
        }
        assert!(
            opened.len() >= big.len(),
            "the buffer kept the larger length"
        );
        let (sealed_big, sealed_small) = (seal(big.clone()), seal(small.clone()));
        let mut inner_saw = Vec::new();
        let outer = with_open(&loc, &sealed_big, |outer| {
            inner_saw = with_open(&loc, &sealed_small, |inner| Ok(inner.to_vec()))?;
            Ok(outer.to_vec())
        });
        assert_eq!(outer.ok(), Some(big.clone()));
        assert_eq!(inner_saw, small);
        let again = with_open(&loc, &sealed_small, |b| Ok(b.to_vec()));
        assert_eq!(again.ok(), Some(small));
        let err = with_open(&loc, sealed_big.get(..40).unwrap_or_default(), |_| Ok(()));
        assert!(matches!(err, Err(Error::Corrupt { .. })));
    }

    #[test]
    fn damaged_frames_are_typed_errors() {
        let block: Vec<u8> = std::iter::once(1u8)
            .chain((0..2000).map(|i| (i % 7) as u8))
            .collect();
        let sealed = seal(block);
        // Every truncation and every flipped byte either fails with
        // Corrupt or (a flip inside literals) yields a block: never a panic.
        for cut in 1..sealed.len() {
            let r = open(&loc, sealed.get(..cut).unwrap_or_default());
            assert!(matches!(r, Err(Error::Corrupt { .. })), "cut {cut}");
        }
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            if let Some(b) = bad.get_mut(i) {
                *b ^= 0x5a;
            }
            let _ = open(&loc, &bad);
        }
        // A length over the limit is refused before allocating.
        let mut huge = vec![FRAME_LZ4];
        put_varint(&mut huge, (MAX_FRAME_RAW_BYTES as u64) + 1);
        huge.push(0);
        let err = open(&loc, &huge)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("over the limit"), "{err}");
    }
}

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

use std::borrow::Cow;

use super::paged::{get_varint, put_varint};
use crate::error::{Error, Result};
use crate::limits::MAX_FRAME_RAW_BYTES;

/// First byte of a compressed frame. Never a block version (those are small).
pub(crate) const FRAME_LZ4: u8 = 0xF4;

/// Blocks shorter than this are never worth a frame header.
const MIN_BLOCK_TO_COMPRESS: usize = 16;

/// The sled value of `block`: compressed when that makes it smaller.
pub(crate) fn seal(block: Vec<u8>) -> Vec<u8> {
    debug_assert_ne!(
        block.first(),
        Some(&FRAME_LZ4),
        "a block never starts like a frame"
    );
    if block.len() < MIN_BLOCK_TO_COMPRESS || block.len() > MAX_FRAME_RAW_BYTES {
        return block;
    }
    let packed = lz4_flex::block::compress(&block);
    let mut out = Vec::with_capacity(packed.len() + 6);
    out.push(FRAME_LZ4);
    put_varint(&mut out, block.len() as u64);
    out.extend_from_slice(&packed);
    if out.len() < block.len() {
        out
    } else {
        block
    }
}

/// The block a sled value holds; errors name `location`.
pub(crate) fn open<'a>(location: &dyn Fn() -> String, value: &'a [u8]) -> Result<Cow<'a, [u8]>> {
    if value.first() != Some(&FRAME_LZ4) {
        return Ok(Cow::Borrowed(value));
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
    let mut block = vec![0u8; raw_len];
    let n = lz4_flex::block::decompress_into(packed, &mut block)
        .map_err(|e| bad(format!("compressed frame: {e}")))?;
    if n != raw_len {
        return Err(bad(format!(
            "compressed frame: {n} bytes where its header says {raw_len}"
        )));
    }
    if block.first() == Some(&FRAME_LZ4) {
        return Err(bad("compressed frame holds another frame".into()));
    }
    Ok(Cow::Owned(block))
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
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = std::iter::once(1u8)
            .chain((0..3000).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }))
            .collect();
        let sealed = seal(random.clone());
        assert_eq!(sealed, random);
        assert!(matches!(open(&loc, &sealed), Ok(Cow::Borrowed(_))));
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

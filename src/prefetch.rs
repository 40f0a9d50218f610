//! A hint to the CPU to start loading the cache line a later step reads.
//!
//! The open's load inserts millions of devices into tables far larger than
//! the cache: each record's person lookup (the person index's entry, then
//! the person's slot) and token insert (the token index's entry) were
//! misses taken one after another. Issued a few records ahead
//! (`store/load.rs`), the loads overlap (DESIGN.md 6, "The load reads
//! ahead").
//!
//! This is one of devreg's `unsafe` calls (with `huge.rs`'s `madvise`,
//! `heap.rs`'s `malloc_trim` and `nice.rs`'s `nice`). `PREFETCHT0` is a
//! hint: it never faults, whatever the address, changes no memory and no
//! register the program can see, and the CPU may drop it. SSE, which it
//! belongs to, is part of every x86-64 CPU. Elsewhere it is a no-op.

/// Starts loading the cache line that holds `r` (a hint; a no-op off x86-64).
#[inline]
pub(crate) fn prefetch<T>(r: &T) {
    prefetch_byte((r as *const T).cast::<u8>());
}

/// Bytes in a cache line (x86-64 and most aarch64 cores).
const LINE_BYTES: usize = 64;

/// Starts loading every cache line `r` spans (a hint, as `prefetch`): a
/// 96-byte device slot always spans two, a record at an address that is
/// not a multiple of its size can span one more than its size needs, and
/// a slice (a last-seen leaf, a group's keys) spans as many as its bytes.
#[inline]
pub(crate) fn prefetch_lines<T: ?Sized>(r: &T) {
    let size = std::mem::size_of_val(r);
    if size == 0 {
        return;
    }
    let start = (r as *const T).cast::<u8>();
    for offset in line_offsets(start as usize, size) {
        // `offset` is inside `r` (`line_offsets`), and the address is only
        // a hint.
        prefetch_byte(start.wrapping_add(offset));
    }
}

/// One offset inside a record of `size` bytes at address `start` for each
/// cache line it spans, in order: the line's first byte of the record's
/// (its own first byte for the first line).
fn line_offsets(start: usize, size: usize) -> impl Iterator<Item = usize> {
    let size = size.max(1);
    let lines = (start + (size - 1)) / LINE_BYTES - start / LINE_BYTES + 1;
    let skew = start % LINE_BYTES;
    (0..lines).map(move |line| (line * LINE_BYTES).saturating_sub(skew))
}

/// Starts loading the cache line that holds the byte at `p`.
#[inline]
fn prefetch_byte(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` is `PREFETCHT0`, which reads nothing into the
    // program's state, writes nothing and cannot fault on any address;
    // its target feature (SSE) is in the x86-64 baseline. Every caller
    // passes an address inside a live reference's bytes in any case.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One offset per line a record spans, each inside the record, in
    /// line order, for records of several sizes at every place in a line.
    #[test]
    fn line_offsets_cover_every_line_of_a_record_once() {
        for size in [1usize, 12, 63, 64, 65, 96, 128, 200] {
            for start in 4096..4096 + 64usize {
                let offsets: Vec<usize> = line_offsets(start, size).collect();
                assert!(offsets.iter().all(|&o| o < size), "size {size} at {start}");
                let lines: Vec<usize> = offsets.iter().map(|o| (start + o) / 64).collect();
                let want: Vec<usize> = (start / 64..=(start + size - 1) / 64).collect();
                assert_eq!(lines, want, "size {size} at {start}");
            }
        }
    }
}

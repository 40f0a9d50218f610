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
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` is `PREFETCHT0`, which reads nothing into the
    // program's state, writes nothing and cannot fault on any address;
    // its target feature (SSE) is in the x86-64 baseline. `r` is a live
    // reference in any case.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

//! Asks the kernel to back the state's large arrays (device and person
//! slots, and the two hash indexes' entries) with transparent huge pages.
//!
//! A point read at 10^7 devices makes two dependent random reads, one in
//! the token index's entries (128 MiB) and one in the slots (960 MiB). With
//! 4 KiB pages each also misses the TLB, and on this VM a page walk is
//! itself a chain of misses: a dependent random load in a 1 GiB array took
//! 273 ns with 4 KiB pages and 171 ns with 2 MiB pages (DESIGN.md 6). Hosts
//! whose THP mode is `madvise` (Debian's default and this machine's) give
//! huge pages only to ranges advised `MADV_HUGEPAGE`, which this does.
//!
//! This is one of devreg's two `unsafe` calls (the other is `heap.rs`'s
//! `malloc_trim`). `madvise(MADV_HUGEPAGE)` is an
//! advice on a range of the process's own memory: it changes no byte and
//! no mapping the program can see, only how the kernel backs the range,
//! and a range it cannot advise gets an error, which is ignored (the
//! arrays then keep 4 KiB pages, as before). Nothing here reads or writes
//! through the pointer.

/// The huge page size of x86-64 and of aarch64 with 4 KiB base pages.
const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Arrays smaller than this are left alone: a few huge pages buy little,
/// and each advice splits a mapping.
const MIN_ADVISED_BYTES: usize = 8 * HUGE_PAGE_BYTES;

/// Advises the whole huge pages inside `v`'s allocation (its capacity, not
/// only its length, so that the pages a later push touches fault in huge).
/// Call it whenever `v`'s buffer may have moved or grown; it is a few
/// arithmetic operations when the buffer is small.
pub(crate) fn advise<T>(v: &Vec<T>) {
    let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
    if bytes < MIN_ADVISED_BYTES {
        return;
    }
    let start = v.as_ptr() as usize;
    let Some(end) = start.checked_add(bytes) else {
        return;
    };
    let first = start.next_multiple_of(HUGE_PAGE_BYTES);
    let last = end - end % HUGE_PAGE_BYTES;
    if last > first {
        advise_range(first, last - first);
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise_range(addr: usize, len: usize) {
    // SAFETY: madvise with MADV_HUGEPAGE dereferences nothing in this
    // process and changes no memory contents or protections; `addr..addr+len`
    // lies inside one live allocation (the caller's Vec buffer), rounded
    // inwards to page boundaries. Its result is advisory: an error (an old
    // kernel, THP disabled) leaves the pages as they were.
    let _ = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_range(_addr: usize, _len: usize) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The advice lands: a large array's range is marked `hg` in smaps'
    /// VmFlags, and a small one is left alone.
    #[test]
    fn a_large_array_is_advised_and_a_small_one_is_not() {
        // A kernel built without THP refuses the advice (and ignoring
        // that is the design); there is nothing to check there.
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return;
        }
        let big: Vec<u64> = vec![0; 4 * MIN_ADVISED_BYTES / 8];
        let small: Vec<u64> = vec![0; 1024];
        advise(&big);
        advise(&small);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let flags_of = |addr: usize| -> String {
            let mut inside = false;
            for line in smaps.lines() {
                if let Some((range, _)) = line.split_once(' ') {
                    if let Some((a, b)) = range.split_once('-') {
                        if let (Ok(a), Ok(b)) =
                            (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                        {
                            inside = a <= addr && addr < b;
                            continue;
                        }
                    }
                }
                if inside && line.starts_with("VmFlags:") {
                    return line.to_string();
                }
            }
            String::new()
        };
        let mid = big.as_ptr() as usize + big.len() * 4;
        assert!(flags_of(mid).contains(" hg"), "{}", flags_of(mid));
        let small_at = small.as_ptr() as usize;
        assert!(
            !flags_of(small_at).contains(" hg"),
            "{}",
            flags_of(small_at)
        );
    }
}

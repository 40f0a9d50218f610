//! Hands the free pages of the C heap back to the kernel once open's bulk
//! load is done (DESIGN.md 6, "The heap after open"), after each page
//! merge and compaction (the checkpointer; "The heap after a merge") and
//! when a registry closes ("The heap after close").
//!
//! Open decodes every page of the store on a scanning thread, and sled
//! reads its pages on that thread too: glibc gives the thread its own
//! arena, and the arena grows to the load's transient peak (decoded pages,
//! sled's nodes and cache), most of which is free once the load ends. glibc
//! returns an arena's memory to the kernel only from its top, so the free
//! middle stayed resident: on a 10^6-device database, 107 MB of 127 MB of
//! the scanning thread's arena was free after open. `malloc_trim(0)`
//! releases every free whole page of every arena (`MADV_DONTNEED`).
//!
//! A process whose global allocator is not glibc's (the `devreg` command
//! uses mimalloc, which returns free pages on its own) loses nothing: the
//! call then finds glibc's heap nearly empty. On other C libraries it is a
//! no-op.

/// Returns the free whole pages of every glibc malloc arena to the kernel.
/// Takes each arena's lock in turn while it walks its free chunks (a few
/// milliseconds at 10^7 devices, DESIGN.md 6), so call it after work that
/// freed much (a bulk load, a merge, a compaction), never on a hot path.
pub(crate) fn release_free_pages() {
    trim();
}

/// Releases the free pages when dropped: the last field of a registry,
/// so the state, the store and their threads' arenas are freed first.
#[derive(Debug, Default)]
pub(crate) struct TrimOnDrop;

impl Drop for TrimOnDrop {
    fn drop(&mut self) {
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and has no precondition: it
    // frees nothing that is allocated and moves no live chunk, it only
    // advises the kernel that whole free pages inside glibc's arenas may
    // be dropped (they read back as zeros if malloc reuses them, which it
    // expects). Its result says only whether any memory was released.
    let _ = unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

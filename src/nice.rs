//! Background threads yield the CPU to foreground ones: the checkpointer
//! raises its own nice value when it starts, and every thread it starts
//! inherits it (a page merge's second thread, sled's I/O threads that its
//! flushes start, a compaction's settle). On a 2-core host a page merge's
//! two threads otherwise took both cores from the readers beside it
//! (DESIGN.md 7, "Background work yields").
//!
//! Linux only: there `nice(2)` changes the calling thread's nice value,
//! not the process's, and raising it needs no privilege. Elsewhere this is
//! a no-op.

/// Raises the calling thread's nice value by `steps` (0..=19; the kernel
/// caps the result at 19; 0 changes nothing). Best effort: a thread whose
/// priority cannot change runs on at the one it had, which changes what
/// runs first, never what is written.
pub(crate) fn lower_this_thread(steps: i32) {
    debug_assert!(
        (0..=crate::limits::MAX_BACKGROUND_NICE).contains(&steps),
        "nice steps {steps} outside 0..=19 (Config::validate checks them)"
    );
    if steps > 0 {
        raise(steps);
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn raise(steps: i32) {
    // SAFETY: nice(2) reads only its integer argument and changes only
    // the calling thread's nice value; its result (the new value, or -1
    // with errno) is not needed: see `lower_this_thread`.
    let _ = unsafe { libc::nice(steps) };
}

#[cfg(not(target_os = "linux"))]
fn raise(_steps: i32) {}

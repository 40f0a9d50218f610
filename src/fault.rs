//! I/O fault injection for tests: fail the N-th I/O call of chosen kinds.
//!
//! Every file operation devreg makes on its own files (log segments, the
//! database directories) and every call into the store asks the registry's
//! [`FaultPlan`], if it has one, before it runs. A plan counts the calls of
//! the kinds it watches and fails the N-th with the chosen errno, once (as
//! Linux reports a failed fsync once) or from then on (a disk gone bad). The
//! I/O fault sweep (`tests/fault_sweep.rs`) runs a workload once to count
//! its calls, then once per N. It is SQLite's I/O-error test and redb's
//! crash countdown, for devreg's own files; sled's files are covered by
//! `strace -e inject` in the same sweep.
//!
//! A registry without a plan pays one `Option` check per I/O call. The type
//! is public for the tests and hidden from the documentation: it is not a
//! stable API.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// The kinds of I/O call a plan can fail.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum IoOp {
    /// A sequential write (segment preallocation).
    Write = 1,
    /// A positioned write (log records).
    Pwrite = 1 << 1,
    /// fdatasync of a log segment.
    Fdatasync = 1 << 2,
    /// fsync of a file or directory.
    Fsync = 1 << 3,
    /// A positioned read (recovery).
    Pread = 1 << 4,
    /// Opening or creating a file or directory.
    Open = 1 << 5,
    /// Renaming a file (segment recycling).
    Rename = 1 << 6,
    /// Truncating a file (repair).
    Ftruncate = 1 << 7,
    /// A write into the store (a checkpoint batch, sled's flush).
    StoreWrite = 1 << 8,
    /// A read from the store (open, scans).
    StoreRead = 1 << 9,
    /// Deleting a file (a log segment no longer needed as a spare).
    Unlink = 1 << 10,
    /// Opening the store again while the registry runs (between two passes
    /// of a compaction, and at its swap).
    StoreOpen = 1 << 11,
    /// Closing sled's handle after a failed write (`Drop for SledStore`).
    /// Only `slow` uses it, standing in for sled's close that waits for
    /// ever: a close has no result to fail, so `ALL` leaves it out.
    StoreClose = 1 << 12,
}

impl IoOp {
    /// Every kind.
    pub const ALL: [IoOp; 12] = [
        IoOp::Write,
        IoOp::Pwrite,
        IoOp::Fdatasync,
        IoOp::Fsync,
        IoOp::Pread,
        IoOp::Open,
        IoOp::Rename,
        IoOp::Ftruncate,
        IoOp::StoreWrite,
        IoOp::StoreRead,
        IoOp::Unlink,
        IoOp::StoreOpen,
    ];

    fn from_bits(bits: u32) -> Option<IoOp> {
        IoOp::ALL.into_iter().find(|op| *op as u32 == bits)
    }
}

/// A countdown that fails the N-th watched I/O call.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// The watched call to fail, counting from 1; 0 fails none.
    target: AtomicU64,
    mask: AtomicU32,
    errno: AtomicI32,
    /// Fail every watched call from the target on, not just the target.
    sticky: AtomicBool,
    /// Sleep this long before failing (lets a test race the failure).
    delay_ms: AtomicU64,
    /// Panic in the writer after applying an operation (finding 14).
    panic_in_apply: AtomicBool,
    /// Kinds of call that are slow (a slow disk): each sleeps `slow_us`
    /// before it runs, failed or not. Independent of `arm`.
    slow_mask: AtomicU32,
    slow_us: AtomicU64,
    calls: AtomicU64,
    fired: AtomicU64,
    /// The kind of the first failure injected since `arm` (0: none).
    first_fired: AtomicU32,
    /// With `record_kinds`, the kind of every watched call, in order.
    kinds: Mutex<Option<Vec<IoOp>>>,
}

impl FaultPlan {
    /// A plan that watches nothing and fails nothing.
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan::default())
    }

    /// Watches `ops` (counting restarts from zero) and fails call `nth`
    /// (from 1; 0 only counts) with `errno`; with `sticky`, every later call too.
    pub fn arm(&self, ops: &[IoOp], nth: u64, errno: i32, sticky: bool) {
        let mask = ops.iter().fold(0u32, |m, op| m | *op as u32);
        self.mask.store(mask, Ordering::SeqCst);
        self.errno.store(errno, Ordering::SeqCst);
        self.sticky.store(sticky, Ordering::SeqCst);
        self.calls.store(0, Ordering::SeqCst);
        self.fired.store(0, Ordering::SeqCst);
        self.first_fired.store(0, Ordering::SeqCst);
        if let Some(kinds) = self.kinds.lock().as_mut() {
            kinds.clear();
        }
        self.target.store(nth, Ordering::SeqCst);
    }

    /// From now on (and across `arm`), remembers the kind of every watched
    /// call: the sweep's count run learns which kind the N-th call is.
    pub fn record_kinds(&self) {
        *self.kinds.lock() = Some(Vec::new());
    }

    /// The kinds of the watched calls since `arm`, in order (empty unless
    /// `record_kinds` was called).
    pub fn recorded_kinds(&self) -> Vec<IoOp> {
        self.kinds.lock().clone().unwrap_or_default()
    }

    /// The kind of the first call failed since `arm`, if any.
    pub fn first_fired(&self) -> Option<IoOp> {
        IoOp::from_bits(self.first_fired.load(Ordering::SeqCst))
    }

    /// Sleeps this long before each injected failure.
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Makes every later call of the kinds `ops` sleep `micros` before it
    /// runs (none: `ops` empty or `micros` 0), as on a slow disk. Calls
    /// are slowed whether or not `arm` watches them, and are not counted
    /// for it. The crash test slows the store's writes so that its kills
    /// land inside merges that otherwise last well under a millisecond.
    pub fn slow(&self, ops: &[IoOp], micros: u64) {
        let mask = ops.iter().fold(0u32, |m, op| m | *op as u32);
        self.slow_us.store(micros, Ordering::SeqCst);
        self.slow_mask.store(mask, Ordering::SeqCst);
    }

    /// Makes the writer panic after it applies the next operation.
    pub fn panic_in_apply(&self) {
        self.panic_in_apply.store(true, Ordering::SeqCst);
    }

    /// Stops failing calls (counting goes on).
    pub fn disarm(&self) {
        self.target.store(0, Ordering::SeqCst);
    }

    /// Watched calls seen since `arm`.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Failures injected since `arm`.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// Counts a call of kind `op`; fails it if it is the target.
    pub(crate) fn check(&self, op: IoOp) -> io::Result<()> {
        if self.slow_mask.load(Ordering::SeqCst) & op as u32 != 0 {
            let micros = self.slow_us.load(Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_micros(micros));
        }
        if self.mask.load(Ordering::SeqCst) & op as u32 == 0 {
            return Ok(());
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(kinds) = self.kinds.lock().as_mut() {
            kinds.push(op);
        }
        let target = self.target.load(Ordering::SeqCst);
        let hit =
            target != 0 && (n == target || (n > target && self.sticky.load(Ordering::SeqCst)));
        if !hit {
            return Ok(());
        }
        self.fired.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .first_fired
            .compare_exchange(0, op as u32, Ordering::SeqCst, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        Err(io::Error::from_raw_os_error(
            self.errno.load(Ordering::SeqCst),
        ))
    }
}

/// The plan a component was given, if any.
pub(crate) type Faults = Option<Arc<FaultPlan>>;

/// Panics if the plan asks for it, once (tests of panic containment).
#[allow(clippy::panic)]
pub(crate) fn maybe_panic(faults: &Faults) {
    if let Some(p) = faults {
        if p.panic_in_apply.swap(false, Ordering::SeqCst) {
            panic!("injected panic in the writer (FaultPlan::panic_in_apply)");
        }
    }
}

/// Asks `faults` whether call `op` fails.
pub(crate) fn check(faults: &Faults, op: IoOp) -> io::Result<()> {
    match faults {
        Some(p) => p.check(op),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails_exactly_the_target_once_or_from_then_on() {
        let p = FaultPlan::new();
        p.arm(&[IoOp::Pwrite], 2, 5, false);
        assert!(p.check(IoOp::Fsync).is_ok(), "unwatched kinds pass");
        assert!(p.check(IoOp::Pwrite).is_ok());
        assert_eq!(p.check(IoOp::Pwrite).unwrap_err().raw_os_error(), Some(5));
        assert!(p.check(IoOp::Pwrite).is_ok());
        assert_eq!((p.calls(), p.fired()), (3, 1));
        assert_eq!(p.first_fired(), Some(IoOp::Pwrite));
        p.record_kinds();
        p.arm(&[IoOp::Pwrite, IoOp::Fsync], 1, 28, true);
        assert_eq!(p.first_fired(), None);
        assert!(p.check(IoOp::Fsync).is_err());
        assert!(p.check(IoOp::Pwrite).is_err());
        assert_eq!((p.calls(), p.fired()), (2, 2));
        assert_eq!(p.first_fired(), Some(IoOp::Fsync));
        assert_eq!(p.recorded_kinds(), [IoOp::Fsync, IoOp::Pwrite]);
    }

    #[test]
    fn slow_calls_sleep_and_pass_without_being_counted() {
        use std::time::{Duration, Instant};
        // Wide margins: a slowed call sleeps 100 ms, and an unslowed one
        // must take under half that even on a loaded machine.
        let p = FaultPlan::new();
        p.slow(&[IoOp::StoreWrite], 100_000);
        let t = Instant::now();
        assert!(p.check(IoOp::StoreWrite).is_ok(), "slow, not failed");
        assert!(t.elapsed() >= Duration::from_millis(100));
        let t = Instant::now();
        assert!(p.check(IoOp::StoreRead).is_ok());
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "other kinds are not slowed"
        );
        assert_eq!((p.calls(), p.fired()), (0, 0), "arm watches nothing");
        // A slow kind that is also watched still fails at its target.
        p.arm(&[IoOp::StoreWrite], 1, 5, false);
        assert_eq!(
            p.check(IoOp::StoreWrite).unwrap_err().raw_os_error(),
            Some(5)
        );
        p.slow(&[], 0);
        let t = Instant::now();
        assert!(p.check(IoOp::StoreWrite).is_ok());
        assert!(t.elapsed() < Duration::from_millis(50), "no longer slow");
    }
}

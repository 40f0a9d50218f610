//! Wakes threads that sled 0.34.7 leaves waiting for ever after a failed
//! write.
//!
//! sled writes its log buffers on its own threads. When such a write
//! fails, sled records a "global error", and every thread waiting for the
//! log to become stable (`Tree::flush`, and reads of a page that is not yet
//! durable) is meant to wake up and return it. One of sled's two write paths
//! (`pagecache/logger.rs`, the buffer written from `exit_reservation`)
//! records the error without notifying the waiters, so a flush that began
//! waiting before the error waits for ever. The fault sweep found it: an
//! import that failed one `pwrite64` of sled's with EIO hung in its first
//! flush about once in a hundred runs, and once in four when the failing
//! write is delayed by 300 ms (`tests/fault_sweep.rs`,
//! `strace_sled_error_wakes_flush`).
//!
//! The waker is a thread per open store that polls sled's global error
//! every `limits::SLED_ERROR_POLL_MS`. Once it is set, the waker calls
//! `flush` itself: sled's flush checks the error before it waits, and when
//! it finds one it notifies every waiter, which then return the error.
//! While the error stays set (sled never clears it in an open database)
//! each poll does this again, so a waiter that began waiting just before
//! the error is woken by the next poll. A flush that finds the error
//! returns at once: the waker never waits on the log itself.
//!
//! Invariant: the waker holds a clone of the database, so it is stopped
//! (and joined) before the store drops its own handle; otherwise sled
//! would not close, and its file lock would outlive the store.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::limits::SLED_ERROR_POLL_MS;

/// A running waker; `stop` ends it (also on drop).
pub(crate) struct SledWaker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SledWaker {
    /// Starts watching `db`. If the thread cannot be spawned the store still
    /// works; only the wake-up after sled's lost notification is missing,
    /// which is what sled 0.34.7 does on its own.
    pub(crate) fn start(db: &sled::Db) -> SledWaker {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let db = db.clone();
        let poll = Duration::from_millis(SLED_ERROR_POLL_MS);
        let thread = std::thread::Builder::new()
            .name("devreg-sled-waker".into())
            .spawn(move || loop {
                match stop_rx.recv_timeout(poll) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                if db.context.global_error().is_err() {
                    // Returns at once: with the error, after notifying every
                    // thread waiting for the log (see the module doc); or
                    // Ok when the log is already stable, and then no thread
                    // waits for it.
                    let _ = db.flush();
                }
            })
            .ok();
        SledWaker {
            stop: Some(stop_tx),
            thread,
        }
    }

    /// Stops the thread and waits for it, so that its database handle is
    /// gone when this returns. At most one poll's wait plus one flush that
    /// finds the error (which does not wait).
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SledWaker {
    fn drop(&mut self) {
        self.stop();
    }
}

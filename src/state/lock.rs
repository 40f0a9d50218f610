//! The lock around the state: one writer (the group-commit leader or the
//! checkpointer's drain) against many readers.
//!
//! It is `std::sync::RwLock`, not parking_lot's. parking_lot's writer waits
//! for the readers to leave by spinning with `sched_yield` before it parks;
//! on this 2-core VM beside two reading threads, each yield gave the core
//! away for a whole scheduler slice. `perf` on `examples/readers_and_writer`
//! (2×10^5 devices, two readers beside the writer): the writer was switched
//! out 3,420 times in a 3 s phase and waited 0.52 ms on average to run
//! again; in a second run recorded with call stacks, 1,162 of its switches
//! were in that yield and 249 parked on the readers (DESIGN.md 13, step
//! 23). std's lock on Linux spins without yielding, then sleeps on a
//! futex that the last reader wakes.
//!
//! A panic while the lock is held does not poison it here: the writer
//! catches a panic inside a group and fails stop (finding 14), so readers
//! go on reading the state as parking_lot's lock let them.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use super::State;

/// The state behind its lock.
pub(crate) struct StateLock(RwLock<State>);

/// Shared access to the state.
pub(crate) type StateRead<'a> = RwLockReadGuard<'a, State>;
/// Exclusive access to the state.
pub(crate) type StateWrite<'a> = RwLockWriteGuard<'a, State>;

impl StateLock {
    pub(crate) fn new(state: State) -> StateLock {
        StateLock(RwLock::new(state))
    }

    /// Waits for shared access.
    pub(crate) fn read(&self) -> StateRead<'_> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shared access if no writer holds the lock now.
    pub(crate) fn try_read(&self) -> Option<StateRead<'_>> {
        match self.0.try_read() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Exclusive access if nobody holds the lock now (tests check who holds it).
    #[cfg(test)]
    pub(crate) fn try_write(&self) -> Option<StateWrite<'_>> {
        match self.0.try_write() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Waits for exclusive access.
    pub(crate) fn write(&self) -> StateWrite<'_> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns exclusive access into shared access, with no writer between.
    pub(crate) fn downgrade(guard: StateWrite<'_>) -> StateRead<'_> {
        RwLockWriteGuard::downgrade(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic while the write lock is held leaves the state readable and
    /// writable, as parking_lot's lock did: the writer fails stop on its own
    /// (finding 14), and a poisoned lock must not turn every later read
    /// into a panic or an error.
    #[test]
    fn a_panic_under_the_write_lock_does_not_poison_it() {
        let lock = std::sync::Arc::new(StateLock::new(State::new(4)));
        let held = lock.clone();
        let r = std::thread::spawn(move || {
            let _guard = held.write();
            panic!("a bug while writing");
        })
        .join();
        assert!(r.is_err(), "the thread panicked holding the lock");
        assert!(lock.0.is_poisoned(), "std marks it");
        assert_eq!(lock.read().len(), 0);
        assert!(lock.try_read().is_some());
        let w = lock.write();
        let r = StateLock::downgrade(w);
        assert_eq!(r.len(), 0);
        drop(r);
        // Shared access excludes exclusive access, and the reverse.
        let shared = lock.read();
        assert!(lock.try_write().is_none(), "a reader holds it");
        drop(shared);
        let exclusive = lock.write();
        assert!(lock.try_read().is_none(), "the writer holds it");
        drop(exclusive);
    }
}

//! `beside`: run one piece of work on a scoped second thread while the
//! caller's thread does another, the pattern of the open's load, the
//! last-seen index's build, the page merge and a large snapshot's encoding
//! (DESIGN.md 6, 4.3 and 8).
//!
//! The second thread's outcome comes back as a `Result`: a thread that
//! could not start is `Io`, one that panicked is `Corrupt` (a bug in
//! devreg, not damage), so a caller fails as it would on a failed write
//! and never unwinds. The caller's own work always runs, even when the
//! second thread could not start, so anything it shares with that thread
//! (a channel, say) sees the thread gone and ends.

use crate::error::{Error, Result};

/// What the second thread is for, in its errors and its name.
pub(crate) struct Helper<'a> {
    /// The thread's name (`devreg-…`), as `top` and `perf` show it.
    pub thread: &'a str,
    /// The data it works on, as `Corrupt` names it.
    pub what: &'a str,
    /// What the thread does, for the messages: "scanning them",
    /// "building it".
    pub doing: &'a str,
}

/// Runs `theirs` on a scoped thread named `h.thread` and `mine` on this
/// one, and returns `mine`'s value with `theirs`'s outcome.
pub(crate) fn beside<M, T, FM, FT>(h: &Helper<'_>, theirs: FT, mine: FM) -> (M, Result<T>)
where
    FM: FnOnce() -> M,
    FT: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name(h.thread.to_owned())
            .spawn_scoped(scope, theirs);
        let m = mine();
        let t = match helper {
            Ok(joined) => joined.join().map_err(|_| {
                Error::corrupt(
                    h.what,
                    format!(
                        "the thread {} panicked (a bug in devreg, not damage)",
                        h.doing
                    ),
                )
            }),
            Err(e) => Err(Error::io(format!("starting the thread {}", h.doing), e)),
        };
        (m, t)
    })
}

/// `beside`, for work that may just as well run here: when no second
/// thread can start, `theirs` runs on this thread after `mine` instead of
/// failing with `Io`. A panic on the second thread is still `Corrupt`.
/// (The known persons' load and a large snapshot's encoding.)
pub(crate) fn beside_or_here<M, T, FM, FT>(h: &Helper<'_>, theirs: FT, mine: FM) -> (M, Result<T>)
where
    FM: FnOnce() -> M,
    FT: Fn() -> T + Sync,
    T: Send,
{
    match beside(h, &theirs, mine) {
        (m, Err(Error::Io { .. })) => (m, Ok(theirs())),
        done => done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const H: Helper<'static> = Helper {
        thread: "devreg-test",
        what: "the test's data",
        doing: "testing it",
    };

    #[test]
    fn both_run_and_both_values_come_back() {
        let ran = AtomicU32::new(0);
        let (mine, theirs) = beside(
            &H,
            || {
                ran.fetch_add(1, Ordering::SeqCst);
                std::thread::current().name().map(str::to_owned)
            },
            || {
                ran.fetch_add(10, Ordering::SeqCst);
                7
            },
        );
        assert_eq!(mine, 7);
        assert_eq!(theirs.ok().flatten().as_deref(), Some("devreg-test"));
        assert_eq!(ran.load(Ordering::SeqCst), 11);
    }

    #[test]
    fn a_panic_on_the_second_thread_is_corrupt_and_mine_still_runs() {
        let (mine, theirs) = beside(&H, || -> u8 { panic!("boom") }, || "done");
        assert_eq!(mine, "done");
        let e = match theirs {
            Err(e) => e,
            Ok(v) => panic!("a panicking thread returned {v}"),
        };
        let text = e.to_string();
        assert!(matches!(e, Error::Corrupt { .. }), "{text}");
        assert!(text.contains("the test's data"), "{text}");
        assert!(text.contains("testing it panicked"), "{text}");
    }

    /// The fallback is for a thread that never started: work that ran on
    /// the second thread runs once, and its panic is not run again here.
    #[test]
    fn beside_or_here_runs_their_work_once_and_keeps_a_panic_corrupt() {
        let ran = AtomicU32::new(0);
        let (mine, theirs) = beside_or_here(&H, || ran.fetch_add(1, Ordering::SeqCst), || "mine");
        assert_eq!((mine, theirs.ok()), ("mine", Some(0)));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let (_, theirs) = beside_or_here(
            &H,
            || -> u32 {
                ran.fetch_add(1, Ordering::SeqCst);
                panic!("boom")
            },
            || (),
        );
        assert!(matches!(theirs, Err(Error::Corrupt { .. })));
        assert_eq!(ran.load(Ordering::SeqCst), 2, "a panic is not run again");
    }
}

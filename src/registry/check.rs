//! `check`: indexes and counters against the records, and the store plus a
//! replay of the log against the memory state.

use std::path::Path;

use serde::Serialize;

use super::recover;
use crate::error::{Error, Result};
use crate::writer::WriterCtx;

/// What `check` found. Empty `problems` means every index, counter, the cap
/// and the store (against a replay of the log) agree.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Devices checked.
    pub devices: u64,
    /// Each inconsistency, in words.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(super) fn check_on_writer(ctx: &mut WriterCtx, path: &Path) -> Result<CheckReport> {
    // After a failed write the log buffer holds records whose callers were
    // told they failed: writing it out now could bring them back (finding 5).
    if let Some(why) = ctx.failed.get() {
        return Err(Error::Failed(why));
    }
    ctx.log.write_out()?;
    let live = ctx.state.read();
    let mut problems = live.check_indexes();
    let (disk, ..) = recover(
        &*ctx.store,
        &path.join("log"),
        live.cap,
        ctx.config.log_segment_bytes,
        ctx.config.history_retention_ms,
        &ctx.config.faults,
    )?;
    problems.extend(
        disk.check_indexes()
            .into_iter()
            .map(|p| format!("store+log: {p}")),
    );
    problems.extend(live.feed.check());
    if !live.feed.same_as(&disk.feed) {
        problems.push("feed in store+log differs from the feed in memory".into());
    }
    problems.extend(live.history_problems());
    if !live.history.same_as(&disk.history) {
        problems.push("history in store+log differs from the history in memory".into());
    }
    if disk.cap != live.cap {
        problems.push(format!(
            "store+log cap {} differs from memory cap {}",
            disk.cap, live.cap
        ));
    }
    let (a, b) = (live.dump(), disk.dump());
    if a != b {
        let mut diffs = 0;
        let mut ai = a.iter().peekable();
        let mut bi = b.iter().peekable();
        while diffs < 20 {
            match (ai.peek(), bi.peek()) {
                (None, None) => break,
                (Some(x), Some(y)) if x.token == y.token => {
                    if x != y {
                        problems.push(format!(
                            "device {:?}: memory {x:?}, store+log {y:?}",
                            x.token
                        ));
                        diffs += 1;
                    }
                    ai.next();
                    bi.next();
                }
                (Some(x), y) if y.is_none_or(|y| x.token < y.token) => {
                    problems.push(format!(
                        "device {:?} is in memory but not in store+log",
                        x.token
                    ));
                    diffs += 1;
                    ai.next();
                }
                (_, Some(y)) => {
                    problems.push(format!(
                        "device {:?} is in store+log but not in memory",
                        y.token
                    ));
                    diffs += 1;
                    bi.next();
                }
                (Some(_), None) => break,
            }
        }
    }
    Ok(CheckReport {
        devices: live.len(),
        problems,
    })
}

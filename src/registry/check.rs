//! `check`: indexes and counters against the records, and the store plus a
//! replay of the log against the memory state. Reports abbreviate tokens
//! (`token_label`): they get pasted into tickets and logs.

use std::path::Path;

use serde::Serialize;

use super::recover;
use crate::error::{Error, Result};
use crate::model::{token_label, Device};
use crate::state::State;
use crate::store::KvStore;
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
    let (disk, ..) = recover(
        &*ctx.store,
        &path.join("log"),
        live.cap,
        ctx.config.log_segment_bytes,
        ctx.config.history_retention_ms,
        &ctx.config.faults,
    )?;
    compare_states(&*ctx.store, &live, &disk)
}

/// The check's report: the live state's own indexes, and every difference
/// between it and `disk`, the state rebuilt from the store and the log.
pub(super) fn compare_states(
    store: &dyn KvStore,
    live: &State,
    disk: &State,
) -> Result<CheckReport> {
    let mut problems = live.check_indexes();
    problems.extend(
        disk.check_indexes()
            .into_iter()
            .map(|p| format!("store+log: {p}")),
    );
    problems.extend(live.feed.check());
    if !live.feed.same_as(&disk.feed) {
        problems.push("feed in store+log differs from the feed in memory".into());
    }
    problems.extend(super::history::history_problems(store, live, disk)?);
    if disk.cap != live.cap {
        problems.push(format!(
            "store+log cap {} differs from memory cap {}",
            disk.cap, live.cap
        ));
    }
    // One device of each at a time: two dumps of 10^7 devices as vectors
    // of owned devices, beside both states, took the check past 23 GiB.
    problems.extend(device_differences(
        live.devices_by_token(),
        disk.devices_by_token(),
    ));
    if live.deliverability_by_token() != disk.deliverability_by_token() {
        problems.push("deliverability in store+log differs from memory".into());
    }
    Ok(CheckReport {
        devices: live.len(),
        problems,
    })
}

/// Most device differences one report lists.
const MAX_LISTED_DIFFERENCES: usize = 20;

/// The devices that differ between memory (`a`) and store+log (`b`), both
/// in token order; tokens abbreviated, values not shown.
fn device_differences(
    a: impl Iterator<Item = Device>,
    b: impl Iterator<Item = Device>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (mut ai, mut bi) = (a.peekable(), b.peekable());
    while problems.len() < MAX_LISTED_DIFFERENCES {
        match (ai.peek(), bi.peek()) {
            (None, None) => break,
            (Some(x), Some(y)) if x.token == y.token => {
                if x != y {
                    problems.push(format!(
                        "device {}: memory and store+log differ in {}",
                        token_label(&x.token),
                        differing_fields(x, y)
                    ));
                }
                ai.next();
                bi.next();
            }
            (Some(x), y) if y.is_none_or(|y| x.token < y.token) => {
                problems.push(format!(
                    "device {} is in memory but not in store+log",
                    token_label(&x.token)
                ));
                ai.next();
            }
            (_, Some(y)) => {
                problems.push(format!(
                    "device {} is in store+log but not in memory",
                    token_label(&y.token)
                ));
                bi.next();
            }
            (Some(_), None) => break,
        }
    }
    problems
}

fn differing_fields(x: &Device, y: &Device) -> String {
    let fields = [
        ("platform", x.platform != y.platform),
        ("person", x.person != y.person),
        ("last_seen_ms", x.last_seen_ms != y.last_seen_ms),
        ("attributes", x.attributes != y.attributes),
    ];
    let names: Vec<&str> = fields.iter().filter(|f| f.1).map(|f| f.0).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Platform;

    fn device(token: &str, last_seen_ms: u64) -> Device {
        Device {
            token: token.into(),
            platform: Platform::Android,
            person: Some("ann".into()),
            last_seen_ms,
            attributes: Default::default(),
        }
    }

    #[test]
    fn differences_abbreviate_tokens() {
        let long = |c: char| format!("fcm{c}:APA91b-{}", "x".repeat(140));
        let (t1, t2, t3) = (long('1'), long('2'), long('3'));
        let memory = [device(&t1, 5), device(&t2, 5)];
        let stored = [device(&t1, 6), device(&t3, 5)];
        let got = device_differences(memory.clone().into_iter(), stored.into_iter());
        assert_eq!(
            got,
            [
                "device fcm1:APA…(152 bytes): memory and store+log differ in last_seen_ms",
                "device fcm2:APA…(152 bytes) is in memory but not in store+log",
                "device fcm3:APA…(152 bytes) is in store+log but not in memory",
            ]
        );
        assert!(got.iter().all(|p| !p.contains("xxxxxxxx")), "{got:?}");
        assert!(device_differences(memory.clone().into_iter(), memory.into_iter()).is_empty());
    }
}

//! Registry tests that look inside its state (what the public API cannot
//! show: which allocations are shared).

use std::sync::Arc;

use crate::*;

/// The feed's known-person set shares the state's name allocations after
/// an open instead of holding a second copy of every name (at 10^6
/// devices of the harness's data: 334 -> 314 B/device after open).
#[test]
fn known_persons_share_the_states_names_after_an_open() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let reg = Registry::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..20u64 {
        let op = Op::Register(Register {
            token: format!("{i:064x}"),
            platform: Platform::Ios,
            person: Some(format!("person-{}", i % 7)),
            seen_ms: 1_700_000_000_000 + i,
            attributes: None,
        });
        let _ = reg.apply(op).unwrap_or_else(|e| panic!("{e}"));
    }
    let batch = reg.export(DEFAULT_SINK, 100, 499_999);
    let batch = batch.unwrap_or_else(|e| panic!("{e}"));
    let batch = batch.unwrap_or_else(|| panic!("a batch"));
    reg.ack(DEFAULT_SINK, batch.id())
        .unwrap_or_else(|e| panic!("{e}"));
    reg.close().unwrap_or_else(|e| panic!("{e}"));

    let reg = Registry::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let st = reg.inner.state.read();
    let known = &st
        .feed
        .sinks
        .get(DEFAULT_SINK)
        .unwrap_or_else(|| panic!("sink"))
        .known;
    assert_eq!(known.len(), 7, "every person is known after the ack");
    for name in known {
        let held = st.person_id(name).and_then(|pid| st.person_name(pid));
        let held = held.unwrap_or_else(|| panic!("{name} has devices"));
        assert!(Arc::ptr_eq(name, &held), "{name} is allocated twice");
    }
}

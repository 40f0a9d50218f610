//! Registry tests that look inside its state (what the public API cannot
//! show: what the feed's sets hold after an open).

use crate::*;

/// The feed's known-person set (fingerprints, `feed/known.rs`) holds
/// exactly the acknowledged persons after an open, read back from the
/// `'K'` records.
#[test]
fn known_persons_are_exactly_the_acknowledged_ones_after_an_open() {
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
    for i in 0..7 {
        assert!(known.contains(&format!("person-{i}")), "person-{i}");
    }
    for other in ["person-7", "person-", "", "Person-0"] {
        assert!(!known.contains(other), "{other:?} was never acknowledged");
    }
}

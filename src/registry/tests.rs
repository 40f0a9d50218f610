//! Registry tests that look inside its state (what the public API cannot
//! show: what the feed's sets hold after an open).

use crate::*;

/// Registers device `i` (its token `i` in hex) of `person` on `platform`.
fn register(reg: &Registry, i: u64, person: String, platform: Platform) {
    let op = Op::Register(Register {
        token: format!("{i:064x}"),
        platform,
        person: Some(person),
        seen_ms: 1_700_000_000_000 + i,
        attributes: None,
    });
    let _ = reg.apply(op).unwrap_or_else(|e| panic!("{e}"));
}

/// The feed's known-person set (fingerprints, `feed/known.rs`) holds
/// exactly the acknowledged persons after an open, read back from the
/// `'K'` records.
#[test]
fn known_persons_are_exactly_the_acknowledged_ones_after_an_open() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let reg = Registry::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..20u64 {
        register(&reg, i, format!("person-{}", i % 7), Platform::Ios);
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

/// Each sink gets its own known persons back at an open (they are read
/// beside the devices, then handed to their sinks), and a sink that
/// acknowledged more persons keeps more.
#[test]
fn each_sink_gets_its_own_known_persons_after_an_open() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let reg = Registry::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let add = |i: u64| register(&reg, i, format!("person-{}", i % 10), Platform::Android);
    let drain = |reg: &Registry, sink: &str| {
        while let Some(b) = reg
            .export(sink, 100, 499_999)
            .unwrap_or_else(|e| panic!("{e}"))
        {
            reg.ack(sink, b.id()).unwrap_or_else(|e| panic!("{e}"));
        }
    };
    for i in 0..7 {
        add(i);
    }
    drain(&reg, DEFAULT_SINK);
    for i in 7..10 {
        add(i);
    }
    reg.add_sink("other").unwrap_or_else(|e| panic!("{e}"));
    drain(&reg, "other");
    reg.close().unwrap_or_else(|e| panic!("{e}"));

    let reg = Registry::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let st = reg.inner.state.read();
    let known = |sink: &str| {
        &st.feed
            .sinks
            .get(sink)
            .unwrap_or_else(|| panic!("sink {sink}"))
            .known
    };
    assert_eq!(
        known(DEFAULT_SINK).len(),
        7,
        "the default sink acknowledged 7"
    );
    assert_eq!(known("other").len(), 10, "the other sink acknowledged 10");
    for i in 0..10 {
        let person = format!("person-{i}");
        assert_eq!(known(DEFAULT_SINK).contains(&person), i < 7, "{person}");
        assert!(known("other").contains(&person), "{person}");
    }
}

/// A checkpoint frees the history entries it stored (they were held until
/// the next snapshot, through the whole merge that may follow), and the
/// queries still find them, in the store.
#[test]
fn a_checkpoint_frees_the_history_entries_it_stored() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let reg = Registry::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let in_memory = |reg: &Registry| reg.inner.state.read().history.memory_entries();
    let token = format!("{:064x}", 7);
    register(&reg, 7, "ann".into(), Platform::Ios);
    assert_eq!(in_memory(&reg), 1);
    reg.checkpoint().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(in_memory(&reg), 0, "the stored entry is still held");
    register(&reg, 7, "bob".into(), Platform::Ios);
    assert_eq!(in_memory(&reg), 1);
    let owners = |reg: &Registry| -> Vec<Option<String>> {
        let h = reg.history(&token).unwrap_or_else(|e| panic!("{e}"));
        h.into_iter().map(|e| e.owner_after).collect()
    };
    assert_eq!(owners(&reg), [Some("bob".into()), Some("ann".into())]);
    reg.checkpoint().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(in_memory(&reg), 0);
    assert_eq!(owners(&reg), [Some("bob".into()), Some("ann".into())]);
}

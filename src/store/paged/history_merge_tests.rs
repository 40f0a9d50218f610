//! History merges (DESIGN.md 4.3): past the memory bound alone, the
//! history's records held in memory are folded into their pages and the
//! chunks stay current for the other keyspaces; the open then skips the
//! history records those chunks hold (`Mhist_merged`); a history merge cut
//! short by a crash loses nothing. All against the model of
//! `beside_tests`.

use super::beside_tests::{Model, Rng};
use super::tests::open_with_deltas;
use super::*;

/// A generation kept in the raw store's metadata key `key` (0: absent).
fn meta(s: &PagedStore, key: &[u8]) -> u64 {
    s.raw
        .get(key)
        .unwrap()
        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
}

/// A history merge cut short by a crash: every other page of the history
/// records held in memory is written in place (durably), and
/// `Mhist_merged` is never written.
fn history_merge_cut_short(s: &PagedStore) {
    let deltas = s.deltas.read();
    let half = merge::changes_by_page(&deltas.map, &|_| true)
        .into_iter()
        .step_by(2)
        .collect();
    s.write_pages_in_place(s.committed(), half, &mut || Ok(()))
        .unwrap();
    s.raw.sync().unwrap();
}

/// Checkpoints of device, known-person and history records under a small
/// memory bound and a disk bound 80 times larger: history merges come from
/// the memory bound and leave the other records in their chunks; full
/// merges come from the disk bound. Every read answers as the model
/// through reopens and history merges cut short, and a reopen holds in
/// memory exactly what the store held before it (the history records a
/// history merge wrote are not loaded again).
#[test]
fn history_merges_fold_the_history_alone_and_match_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let reopen = || {
        let mut s = open_with_deltas(dir.path(), 256, 400);
        s.pass_bytes = 256;
        // Memory bound clamp(1,000 x 16, 100, 400) = 400; disk bound
        // max(1,000 x 32, 400) = 32,000.
        s.plan_for_devices(1_000);
        s
    };
    let mut s = reopen();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model = Model::default();
    let (mut history_merges, mut full_merges, mut cut_short) = (0, 0, 0);
    for round in 0..200 {
        let (history_before, full_before) =
            (meta(&s, META_HIST_MERGED), meta(&s, META_DELTA_MERGED));
        s.apply(&model.batch(&mut rng)).unwrap();
        let (history_after, full_after) = (meta(&s, META_HIST_MERGED), meta(&s, META_DELTA_MERGED));
        {
            let d = s.deltas.read();
            assert!(d.frozen.is_none(), "round {round}: left frozen");
            if full_after > full_before {
                full_merges += 1;
                assert_eq!(
                    history_after, history_before,
                    "round {round}: one merge a checkpoint"
                );
                assert!(
                    d.chunks.is_empty(),
                    "round {round}: a full merge retires every chunk"
                );
                assert_eq!((d.bytes, d.memory_bytes), (0, 0), "round {round}");
            } else if history_after > history_before {
                history_merges += 1;
                assert_eq!(
                    history_after,
                    s.committed(),
                    "round {round}: marks its generation"
                );
                assert!(
                    !d.chunks.is_empty(),
                    "round {round}: the chunks stay current"
                );
                assert!(
                    d.map.is_empty(),
                    "round {round}: the history's records are in pages"
                );
                assert_eq!(d.memory_bytes, 0, "round {round}");
                assert_eq!(
                    d.bytes,
                    d.disk_only_bytes(),
                    "round {round}: only the others count"
                );
                assert!(d.bytes <= 32_000, "round {round}: within the disk bound");
            }
        }
        model.check(&s, &mut rng, &format!("round {round}"));
        if round % 9 == 4 && !s.deltas.read().map.is_empty() {
            history_merge_cut_short(&s);
            cut_short += 1;
            drop(s);
            s = reopen();
            model.check(&s, &mut rng, &format!("round {round}, cut short"));
        }
        if round % 7 == 3 {
            let held = |s: &PagedStore| {
                let d = s.deltas.read();
                (d.bytes, d.memory_bytes, d.map.len(), d.chunks.len())
            };
            let before = held(&s);
            drop(s);
            s = reopen();
            assert_eq!(
                held(&s),
                before,
                "round {round}: the open holds what was held"
            );
            model.check(&s, &mut rng, &format!("round {round}, reopened"));
        }
    }
    assert!(history_merges >= 10, "{history_merges} history merges");
    assert!(full_merges >= 2, "{full_merges} full merges");
    assert!(cut_short >= 10, "{cut_short} history merges cut short");
}

//! The order of a run's rounds when it measures several sizes: each
//! size's rounds spread over the whole run (`rounds.rs`, `measure_all`).
//! Its own file so that `tests/compare_schedule.rs` can include it.

/// The order in which a run takes its rounds: for each size (by index)
/// with `rounds[i]` rounds, round `k` sits at `(k + 1/2) / rounds[i]` of
/// the run, so every size's rounds are spread over it; ties go to the
/// smaller index. Gives the size index of each round in turn.
pub fn schedule(rounds: &[usize]) -> Vec<usize> {
    let mut at: Vec<(f64, usize)> = rounds
        .iter()
        .enumerate()
        .flat_map(|(i, &r)| (0..r).map(move |k| ((k as f64 + 0.5) / r as f64, i)))
        .collect();
    at.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    at.into_iter().map(|(_, i)| i).collect()
}

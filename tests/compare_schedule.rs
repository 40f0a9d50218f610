//! The comparison harness's order of rounds across sizes
//! (`benches/compare/schedule.rs`): a bench target without libtest runs no
//! unit tests, so its pure scheduling is tested here.

#[path = "../benches/compare/schedule.rs"]
mod schedule;

use schedule::schedule;

#[test]
fn the_rounds_of_every_size_are_spread_over_the_run() {
    // 7 rounds at 10^4 and 3 at 10^7: each 10^7 round has 10^4 rounds on
    // both sides of it, and none of the 10^4 rounds waits for the end.
    assert_eq!(schedule(&[7, 3]), vec![0, 1, 0, 0, 0, 1, 0, 0, 1, 0]);
    assert_eq!(schedule(&[1, 1]), vec![0, 1]);
    assert_eq!(schedule(&[2]), vec![0, 0]);
    // A size with no rounds takes no turn; ties go to the smaller index.
    assert_eq!(schedule(&[3, 0, 1]), vec![0, 0, 2, 0]);
    assert!(schedule(&[]).is_empty());
}

#[test]
fn every_round_of_every_size_is_scheduled_once() {
    for rounds in [[7usize, 3, 1], [1, 7, 3], [5, 5, 5], [1, 1, 9]] {
        let order = schedule(&rounds);
        for (i, &r) in rounds.iter().enumerate() {
            assert_eq!(order.iter().filter(|&&x| x == i).count(), r, "{rounds:?}");
        }
        assert_eq!(order.len(), rounds.iter().sum::<usize>());
    }
}

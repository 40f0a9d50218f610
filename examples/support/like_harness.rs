//! One device of the comparison harness's data set, drawn from its index
//! alone (`scale_probe`'s import and update, `query_probe`'s registers).
//! Included with `#[path]` beside `workload` (`benches/compare/workload.rs`)
//! and `generator`; cargo does not build this directory as an example.

use devreg::{Op, Platform, Register};

use super::workload::{self, DAY_MS, NOW_MS};

/// Device `i` of `n` in the harness's shape (`workload::generate`'s
/// draws, seeded per device so no data set is held): 60% iOS, one in ten
/// anonymous, the others owned by a person drawn from n/2 at random, half
/// seen in the last 30 days and half 31 to 365 days ago, the harness's six
/// attributes. Owners and last-seen times do not follow `i`, so the person
/// and last-seen indexes take their inserts at random places.
///
/// `updated`: the harness's bulk update of that device instead (seen half
/// a day later, `app_version` 4.3.0; `run.rs`).
pub fn like_harness(i: u64, n: u64, updated: bool) -> Op {
    let mut r = workload::Rng::new(i);
    let platform = if r.below(10) < 6 {
        Platform::Ios
    } else {
        Platform::Android
    };
    let persons = workload::persons_for(usize::try_from(n).unwrap_or(usize::MAX));
    let person = (r.below(10) != 0).then(|| workload::person_name(r.below(persons)));
    let age_days = if i.is_multiple_of(2) {
        r.below(30)
    } else {
        31 + r.below(334)
    };
    let mut seen_ms = NOW_MS - age_days * DAY_MS - r.below(DAY_MS);
    let mut attributes = workload::attributes(&mut r, platform);
    if updated {
        seen_ms += DAY_MS / 2;
        attributes.insert("app_version".into(), "4.3.0".into());
    }
    Op::Register(Register {
        token: super::generator::token(i),
        platform,
        person,
        seen_ms,
        attributes: Some(attributes),
    })
}

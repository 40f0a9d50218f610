//! The bulk examples' generated devices (`alloc_count`, `scale_probe`):
//! tokens of 64 hex digits (an APNs token's shape) from an index, spread
//! by a 64-bit mixer so that consecutive devices land on unrelated pages;
//! 60% iOS; one device in ten anonymous, the others two to a person.
//! Included with `#[path]`; cargo does not build this directory as an
//! example.

use std::collections::BTreeMap;

use devreg::{Op, Platform, Register};

/// The token of device `i`: the same for the same `i` in every run.
pub fn token(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    let mut s = String::with_capacity(64);
    for _ in 0..4 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        s.push_str(&format!("{x:016x}"));
    }
    s
}

/// The registration of device `i` with `attributes`.
pub fn register(i: u64, attributes: BTreeMap<String, String>) -> Op {
    Op::Register(Register {
        token: token(i),
        platform: if i % 10 < 6 {
            Platform::Ios
        } else {
            Platform::Android
        },
        person: (!i.is_multiple_of(10)).then(|| format!("person-{:08}", i / 2)),
        seen_ms: 1_750_000_000_000 + i,
        attributes: Some(attributes),
    })
}

/// splitmix64 of `x`: a device's draws in `register_like_harness`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Device `i` of `n` in the comparison harness's shape (its
/// `workload::generate`, not its exact values): 60% iOS, one in ten
/// anonymous, the others owned by a person drawn from n/2 at random, half
/// seen in the last 30 days and half 31 to 365 days ago, and six attributes
/// drawn from the harness's small sets (a few thousand combinations).
/// Unlike `register`, owners and last-seen times do not follow `i`, so the
/// person and last-seen indexes take their inserts at random places.
pub fn register_like_harness(i: u64, n: u64) -> Op {
    const DAY_MS: u64 = 86_400_000;
    const NOW_MS: u64 = 1_750_000_000_000;
    let draw = |k: u64, below: u64| mix(i.wrapping_mul(16).wrapping_add(k)) % below.max(1);
    let ios = draw(0, 10) < 6;
    let pick = |k: u64, set: &[&str]| set[draw(k, set.len() as u64) as usize].to_string();
    let (os, models): (&[&str], &[&str]) = if ios {
        (
            &["16.7", "17.4", "17.5", "18.0", "18.1"],
            &["iPhone14,2", "iPhone15,3", "iPhone16,1", "iPad13,4"],
        )
    } else {
        (
            &["12", "13", "14", "15"],
            &["Pixel 7", "Pixel 8", "SM-S911B", "SM-A546B", "moto g84"],
        )
    };
    let attributes = BTreeMap::from([
        (
            "app_version".to_string(),
            pick(3, &["3.9.0", "4.0.1", "4.1.0", "4.2.0", "4.2.1"]),
        ),
        ("device_os".to_string(), pick(4, os)),
        ("device_model".to_string(), pick(5, models)),
        (
            "push_enabled".to_string(),
            pick(6, &["true", "true", "false"]),
        ),
        (
            "device_locale".to_string(),
            pick(7, &["en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR"]),
        ),
        (
            "cio_sdk_version".to_string(),
            pick(8, &["3.1.0", "3.2.1", "3.3.0"]),
        ),
    ]);
    let age_days = if i.is_multiple_of(2) {
        draw(9, 30)
    } else {
        31 + draw(9, 334)
    };
    Op::Register(Register {
        token: token(i),
        platform: if ios {
            Platform::Ios
        } else {
            Platform::Android
        },
        person: (draw(1, 10) != 0).then(|| format!("person-{:08}", draw(2, n / 2))),
        seen_ms: NOW_MS - age_days * DAY_MS - draw(10, DAY_MS),
        attributes: Some(attributes),
    })
}

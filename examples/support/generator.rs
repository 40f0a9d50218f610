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

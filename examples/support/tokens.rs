//! The bulk examples' device tokens (`alloc_count`, `scale_probe`): 64 hex
//! digits (an APNs token's shape) from an index, spread by a 64-bit mixer
//! so that consecutive devices land on unrelated pages. Included with
//! `#[path]`; cargo does not build this directory as an example.

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

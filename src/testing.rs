//! Helpers for the unit tests only (compiled under `cfg(test)`).

/// A xorshift64 generator from `seed` (not zero): the same sequence on
/// every run, so a failing test fails again.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

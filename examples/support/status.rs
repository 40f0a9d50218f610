//! One field of `/proc/self/status` (`VmRSS`, `VmHWM`), for the examples
//! that report this process's memory (`backfill_drain`, `rss_after_open`,
//! `scale_probe`). Included with `#[path]`; Linux only (0 elsewhere).

/// The value of `field` (with its colon, as `"VmHWM:"`) in KiB; 0 when the
/// file or the field is missing.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

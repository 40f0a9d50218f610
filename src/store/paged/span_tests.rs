//! Chunks in hash order (DESIGN.md 4.3): a checkpoint's chunks span
//! disjoint slices of the hash space, and a merge's or a scan's pass reads
//! only the chunks of its slice.

use super::tests::open_with_deltas;
use super::*;

/// A checkpoint writes its records in hash order, so its chunks span
/// disjoint, ascending slices of the hash space, and a scan's pass reads
/// only the chunks that meet its slice: a scan in 6 passes reads each
/// chunk about once (each was read in every pass before), and still
/// visits every record.
#[test]
fn a_pass_reads_only_the_chunks_of_its_slice() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_with_deltas(dir.path(), 512, 1 << 20);
    s.plan_for_devices(1_000_000);
    s.pass_bytes = 4_096;
    let writes: Vec<Write> = (0..400u32)
        .map(|i| (format!("D{i:05}").into_bytes(), Some(vec![b'v'; 50])))
        .collect();
    s.apply(&writes).unwrap();
    let chunks = s.deltas.read().chunks.clone();
    assert!(chunks.len() >= 40, "{} chunks", chunks.len());
    for pair in chunks.windows(2) {
        assert!(
            pair[0].span.hi < pair[1].span.lo,
            "{pair:?}: disjoint, ascending"
        );
    }
    let passes = s.delta_passes(s.deltas.read().disk_only_bytes());
    assert_eq!(passes, 6, "22,400 bytes of deltas in passes of 4,096");
    let touched = s.raw.touches();
    let mut seen = 0;
    s.scan_prefix(b"D", &mut |_, v| {
        assert_eq!(v, [b'v'; 50]);
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 400);
    let reads = s.raw.touches() - touched;
    let n = chunks.len() as u64;
    // Each chunk once, and a chunk on a slice's edge in both slices.
    assert!(
        reads >= n && reads < n + u64::from(passes),
        "{reads} chunk reads for {n} chunks in {passes} passes"
    );
}

//! Rewriting one page: its stored records joined with a checkpoint's
//! changes, as a merge of two sorted runs that copies bytes.
//!
//! A merge rewrites every page that has a delta record (at 10^7 devices,
//! 2^14 pages of about 600 records each). Decoding each page into a map of
//! owned keys and values, then encoding the map again, made two allocations
//! per record of every page rewritten: `malloc` and `free` were the largest
//! part of a checkpoint's CPU in the profile of a 3×10^6 import (DESIGN.md
//! 13). Here the stored records are read in place (they are in key order,
//! which `paged::decode_page` checks), the changes are sorted, and the new
//! block is written in one pass; a record is allocated only where the
//! append keyspace joins an old and a new history list.
//!
//! The block written is exactly the one `paged::encode_page` writes for the
//! same records (`PAGE_VERSION`, record count, then key and value of each
//! record by key), so nothing on disk changes.

use std::borrow::Cow;

use super::frame;
use super::paged::{combine, is_append, put_varint, visit_block, PAGE_VERSION};
use crate::error::Result;

/// One change a merge folds into a page: a key and its new value (`None`:
/// deleted; in the append keyspace, entries to join).
pub(crate) type Change<'a> = (&'a [u8], Option<&'a [u8]>);

/// Buffers one thread keeps from one page it rewrites to the next: the
/// stored page decompressed, the new block and its LZ4 output. Each is
/// about a page's size (70–120 KB at 10^7 devices), over glibc's mmap
/// threshold when it is fixed at 64 KiB as the harness fixes it, so fresh
/// buffers for every page were mapped and faulted in each time (DESIGN.md
/// 4.3, "Buffers").
#[derive(Default)]
pub(crate) struct Scratch {
    stored: Vec<u8>,
    block: Vec<u8>,
    packed: Vec<u8>,
}

/// Room left in front of a new block for its header: the version byte and
/// a record count of at most ten LEB128 bytes.
const HEADER_ROOM: usize = 11;

/// The sealed value of a page after `changes` over its stored value
/// `stored` (none for a page never written), and its record count.
/// `changes` are sorted here (stably: of two changes to one key, the later
/// wins, or in the append keyspace joins the earlier).
pub(crate) fn rewrite(
    location: &dyn Fn() -> String,
    stored: Option<&[u8]>,
    changes: &mut [Change<'_>],
    scratch: &mut Scratch,
) -> Result<(Vec<u8>, u64)> {
    changes.sort_by(|a, b| a.0.cmp(b.0));
    let block: &[u8] = match stored {
        Some(v) => frame::open_in(location, v, &mut scratch.stored)?,
        None => &[PAGE_VERSION, 0],
    };
    let old = records_of(location, block)?;
    let room: usize = changes
        .iter()
        .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 4)
        .sum();
    let body = &mut scratch.block;
    body.clear();
    body.reserve(HEADER_ROOM + block.len() + room);
    body.resize(HEADER_ROOM, 0);
    let count = join(&old, changes, body)?;
    let mut header = Vec::with_capacity(HEADER_ROOM);
    header.push(PAGE_VERSION);
    put_varint(&mut header, count);
    debug_assert!(
        header.len() <= HEADER_ROOM,
        "a u64 is at most ten LEB128 bytes"
    );
    let start = HEADER_ROOM.saturating_sub(header.len());
    if let Some(front) = body.get_mut(start..HEADER_ROOM) {
        front.copy_from_slice(&header);
    }
    let new_block = body.get(start..).unwrap_or_default();
    Ok((frame::seal_from(new_block, &mut scratch.packed), count))
}

/// Writes the stored records `old` joined with the sorted `changes` to
/// `body`, by key; returns how many records it wrote.
fn join(old: &[(&[u8], &[u8])], changes: &[Change<'_>], body: &mut Vec<u8>) -> Result<u64> {
    let mut count = 0u64;
    let (mut i, mut j) = (0usize, 0usize);
    loop {
        let next_old = old.get(i);
        let Some(&(key, _)) = changes.get(j) else {
            // No change left: the rest of the page as it is.
            for (k, v) in old.get(i..).unwrap_or_default() {
                put_record(body, k, v);
                count += 1;
            }
            return Ok(count);
        };
        if let Some((k, v)) = next_old.filter(|(k, _)| *k < key) {
            put_record(body, k, v);
            count += 1;
            i += 1;
            continue;
        }
        // The changes to `key`, over its stored value if it has one.
        let mut value: Option<Cow<'_, [u8]>> = match next_old {
            Some((k, v)) if *k == key => {
                i += 1;
                Some(Cow::Borrowed(*v))
            }
            _ => None,
        };
        while let Some(&(k, v)) = changes.get(j).filter(|(k, _)| *k == key) {
            value = match v {
                None => None,
                Some(v) if is_append(k) => Some(Cow::Owned(combine(k, value.as_deref(), v)?)),
                Some(v) => Some(Cow::Borrowed(v)),
            };
            j += 1;
        }
        if let Some(v) = value {
            put_record(body, key, &v);
            count += 1;
        }
    }
}

/// The records of a page block, borrowed, in stored (key) order.
fn records_of<'a>(location: &dyn Fn() -> String, b: &'a [u8]) -> Result<Vec<(&'a [u8], &'a [u8])>> {
    let mut out = Vec::new();
    visit_block(location, b, &mut |k, v| {
        out.push((k, v));
        Ok(())
    })?;
    Ok(out)
}

fn put_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::store::paged::{page_records, page_value};
    use crate::store::Write;

    fn location() -> String {
        "page D 0".to_owned()
    }

    /// What the map-based rewrite (the code before this one) gives.
    fn by_map(old: &[(Vec<u8>, Vec<u8>)], changes: &[Write]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut m: BTreeMap<Vec<u8>, Vec<u8>> = old.iter().cloned().collect();
        for (k, v) in changes {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        m.into_iter().collect()
    }

    proptest! {
        /// The merge join gives the same records as applying the changes
        /// one by one to a map, for stored pages plain or compressed,
        /// changes unsorted and repeated, deletions of absent keys included.
        #[test]
        fn the_join_matches_a_map(
            old in proptest::collection::btree_map(
                proptest::collection::vec(0u8..6, 0..3), proptest::collection::vec(any::<u8>(), 0..40), 0..12),
            changes in proptest::collection::vec(
                (proptest::collection::vec(0u8..6, 0..3),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))), 0..16),
            fresh in any::<bool>(),
            used in any::<bool>(),
        ) {
            // A scratch that rewrote a larger page before holds its bytes
            // past the lengths this rewrite uses: none of them may show.
            let mut scratch = Scratch::default();
            if used {
                let big: Vec<(Vec<u8>, Vec<u8>)> =
                    (0..200u8).map(|i| (vec![b'D', 9, i], vec![i; 90])).collect();
                let mut more: Vec<Change<'_>> = vec![(b"D\x09\xff", Some(b"x"))];
                rewrite(&location, Some(&page_value(&big)), &mut more, &mut scratch).unwrap();
            }
            let prefixed = |k: &Vec<u8>| [&[b'D'][..], k].concat();
            let old: Vec<(Vec<u8>, Vec<u8>)> =
                old.iter().map(|(k, v)| (prefixed(k), v.clone())).collect();
            let changes: Vec<Write> =
                changes.iter().map(|(k, v)| (prefixed(k), v.clone())).collect();
            let stored = page_value(&old);
            let mut list: Vec<Change<'_>> =
                changes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
            let (stored, old) = if fresh { (None, Vec::new()) } else { (Some(stored.as_slice()), old) };
            let (sealed, count) = rewrite(&location, stored, &mut list, &mut scratch).unwrap();
            let got = page_records(&sealed).unwrap();
            let want = by_map(&old, &changes);
            prop_assert_eq!(count as usize, want.len());
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_page_out_of_key_order_is_damage() {
        // Two records, "Db" before "Da": written by hand, never by devreg.
        let mut b = vec![PAGE_VERSION, 2];
        put_record(&mut b, b"Db", b"1");
        put_record(&mut b, b"Da", b"2");
        let w: Change<'_> = (b"Dc", Some(b"3"));
        let err = rewrite(&location, Some(&b), &mut [w], &mut Scratch::default()).unwrap_err();
        assert!(err.to_string().contains("out of key order"), "{err}");
        assert!(page_records(&b).is_err(), "reads refuse it too");
    }

    /// Timing probe (`cargo test --release --lib page_rewrite_probe --
    /// --ignored --nocapture`): pages of 600 device-like records, each
    /// rewritten with 30 changes and sealed, as a merge at 10^7 does;
    /// prints the best of five rounds in µs per page.
    #[test]
    #[ignore]
    fn page_rewrite_probe() {
        let mut rnd = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        let record = |rnd: &mut dyn FnMut() -> u64| {
            let mut k = vec![b'D'];
            (0..4).for_each(|_| k.extend_from_slice(&rnd().to_le_bytes()));
            let mut v = Vec::new();
            (0..5).for_each(|_| v.extend_from_slice(&rnd().to_le_bytes()));
            v.extend_from_slice(
                b"app_version\x054.2.1os_version\x0417.1locale\x05en_USmodel\x08iPhone15",
            );
            v.extend_from_slice(format!("timezone America/New_York {}", rnd() % 97).as_bytes());
            (k, v)
        };
        let pages: Vec<Vec<u8>> = (0..256)
            .map(|_| {
                let mut recs: Vec<(Vec<u8>, Vec<u8>)> =
                    (0..600).map(|_| record(&mut rnd)).collect();
                recs.sort();
                page_value(&recs)
            })
            .collect();
        let changes: Vec<Vec<(Vec<u8>, Vec<u8>)>> = (0..256)
            .map(|_| (0..30).map(|_| record(&mut rnd)).collect())
            .collect();
        let mut best = f64::MAX;
        let mut scratch = Scratch::default();
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let mut bytes = 0usize;
            for (page, ch) in pages.iter().zip(&changes) {
                let mut list: Vec<Change<'_>> = ch
                    .iter()
                    .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
                    .collect();
                let (sealed, _) = rewrite(&location, Some(page), &mut list, &mut scratch).unwrap();
                bytes += sealed.len();
            }
            assert!(bytes > 0);
            best = best.min(t.elapsed().as_secs_f64() * 1e6 / pages.len() as f64);
        }
        eprintln!(
            "{best:.1} µs per page (best of 5), {} B stored a page",
            pages[0].len()
        );
    }
}

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

/// The block of a page after `changes` over its stored value `stored` (none
/// for a page never written): returns the unsealed block and its record
/// count. `changes` are sorted here (stably: of two changes to one key,
/// the later wins, or in the append keyspace joins the earlier).
pub(crate) fn rewrite(
    location: &dyn Fn() -> String,
    stored: Option<&[u8]>,
    changes: &mut [Change<'_>],
) -> Result<(Vec<u8>, u64)> {
    changes.sort_by(|a, b| a.0.cmp(b.0));
    let block = match stored {
        Some(v) => frame::open(location, v)?,
        None => Cow::Borrowed(&[PAGE_VERSION, 0][..]),
    };
    let old = records_of(location, &block)?;
    let room: usize = changes
        .iter()
        .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 4)
        .sum();
    let mut body = Vec::with_capacity(block.len() + room);
    let mut count = 0u64;
    let (mut i, mut j) = (0usize, 0usize);
    loop {
        let next_old = old.get(i);
        let Some(&(key, _)) = changes.get(j) else {
            // No change left: the rest of the page as it is.
            for (k, v) in old.get(i..).unwrap_or_default() {
                put_record(&mut body, k, v);
                count += 1;
            }
            break;
        };
        if let Some((k, v)) = next_old.filter(|(k, _)| *k < key) {
            put_record(&mut body, k, v);
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
            put_record(&mut body, key, &v);
            count += 1;
        }
    }
    let mut out = Vec::with_capacity(body.len() + 11);
    out.push(PAGE_VERSION);
    put_varint(&mut out, count);
    out.extend_from_slice(&body);
    Ok((out, count))
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
        ) {
            let prefixed = |k: &Vec<u8>| [&[b'D'][..], k].concat();
            let old: Vec<(Vec<u8>, Vec<u8>)> =
                old.iter().map(|(k, v)| (prefixed(k), v.clone())).collect();
            let changes: Vec<Write> =
                changes.iter().map(|(k, v)| (prefixed(k), v.clone())).collect();
            let stored = page_value(&old);
            let mut list: Vec<Change<'_>> =
                changes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
            let (stored, old) = if fresh { (None, Vec::new()) } else { (Some(stored.as_slice()), old) };
            let (block, count) = rewrite(&location, stored, &mut list).unwrap();
            let got = page_records(&frame::seal(block)).unwrap();
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
        let err = rewrite(&location, Some(&b), &mut [w]).unwrap_err();
        assert!(err.to_string().contains("out of key order"), "{err}");
        assert!(page_records(&b).is_err(), "reads refuse it too");
    }
}

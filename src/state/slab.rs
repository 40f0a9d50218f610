//! A slab of records addressed by `u32` ids, kept in fixed chunks that
//! never move: the device slots and the person slots.
//!
//! A `Vec` that grows by reallocation moves its buffer (glibc's `mremap`
//! for a large one), and the huge pages of the old range are split when
//! the new range is not aligned the same way: at 10^7 devices only 458 MB
//! of about 1.1 GB of slots and index entries stayed on huge pages (DESIGN.md
//! 6). Here every chunk after the first is allocated once at its full size
//! and advised before it is written (`huge::advise`), so it faults in on
//! huge pages and keeps them; the first chunk grows as a `Vec` until it is
//! full, so a small registry reserves no more than it uses. An id is its
//! chunk (`id >> CHUNK_SHIFT`) and its place in the chunk: one more load,
//! from a chunk table of a few hundred bytes that stays in the cache.

use super::huge;

/// Records per chunk: 2^18, so a chunk of device slots (96 B) is 24 MiB
/// and one of person slots (64 B) 16 MiB, each holding about 11 and 7
/// whole huge pages.
const CHUNK_SHIFT: u32 = 18;
const CHUNK_LEN: usize = 1 << CHUNK_SHIFT;
const CHUNK_MASK: u32 = (1 << CHUNK_SHIFT) - 1;

pub(crate) struct Slab<T> {
    /// Every chunk but the last holds exactly `CHUNK_LEN` entries, so the
    /// ids handed out are the full chunks' and the last one's entries.
    chunks: Vec<Vec<Option<T>>>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { chunks: Vec::new() }
    }
}

fn split(id: u32) -> (usize, usize) {
    ((id >> CHUNK_SHIFT) as usize, (id & CHUNK_MASK) as usize)
}

impl<T> Slab<T> {
    /// Ids handed out so far, live or free: the next `push` gets this one.
    pub(crate) fn len(&self) -> usize {
        match self.chunks.split_last() {
            Some((last, full)) => full.len() * CHUNK_LEN + last.len(),
            None => 0,
        }
    }

    fn entry(&self, id: u32) -> Option<&Option<T>> {
        let (c, i) = split(id);
        self.chunks.get(c)?.get(i)
    }

    fn entry_mut(&mut self, id: u32) -> Option<&mut Option<T>> {
        let (c, i) = split(id);
        self.chunks.get_mut(c)?.get_mut(i)
    }

    /// Starts loading every cache line of entry `id` (`prefetch_lines`: a
    /// device slot spans two); nothing if there is no such entry.
    pub(crate) fn prefetch(&self, id: u32) {
        if let Some(e) = self.entry(id) {
            crate::prefetch::prefetch_lines(e);
        }
    }

    pub(crate) fn get(&self, id: u32) -> Option<&T> {
        self.entry(id)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        self.entry_mut(id)?.as_mut()
    }

    /// Puts `v` under an id handed out before (a freed one); false, with
    /// nothing stored, if `id` was never handed out.
    pub(crate) fn put(&mut self, id: u32, v: T) -> bool {
        match self.entry_mut(id) {
            Some(e) => {
                debug_assert!(e.is_none(), "put over a live record");
                *e = Some(v);
                true
            }
            None => false,
        }
    }

    /// Empties `id`, returning what it held; the id stays handed out.
    pub(crate) fn take(&mut self, id: u32) -> Option<T> {
        self.entry_mut(id)?.take()
    }

    /// Stores `v` under a new id. Ids are `u32`, as they were in the
    /// `Vec` this replaced: 2^32 device slots would be 384 GiB of memory,
    /// so no registry reaches the end of the id space.
    pub(crate) fn push(&mut self, v: T) -> u32 {
        let len = self.len();
        debug_assert!(len < u32::MAX as usize, "the u32 id space is spent");
        let id = len as u32;
        if self.chunks.last().is_none_or(|c| c.len() >= CHUNK_LEN) {
            let chunk = self.new_chunk();
            self.chunks.push(chunk);
        }
        if let Some(last) = self.chunks.last_mut() {
            let cap = last.capacity();
            last.push(Some(v));
            if last.capacity() != cap {
                // Only the first chunk grows (the others start full size).
                huge::advise(last);
            }
            debug_assert_eq!(split(id).1 + 1, last.len());
        }
        id
    }

    fn new_chunk(&self) -> Vec<Option<T>> {
        if self.chunks.is_empty() {
            return Vec::new();
        }
        let chunk = Vec::with_capacity(CHUNK_LEN);
        huge::advise(&chunk);
        chunk
    }

    /// Live records with their ids, in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|v| (i as u32, v)))
    }

    /// Live records, in id order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten().flatten()
    }

    /// Live records, in id order.
    #[cfg(test)]
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids across chunk boundaries address what was stored under them,
    /// freed ids read as empty and take a new record, and iteration sees
    /// the live records with their ids.
    #[test]
    fn ids_across_chunks_address_their_records() {
        let mut s: Slab<u64> = Slab::default();
        let n = 2 * CHUNK_LEN + 5;
        for k in 0..n {
            assert_eq!(s.push(k as u64 * 3), k as u32);
        }
        assert_eq!(s.len(), n);
        assert_eq!(s.chunks.len(), 3);
        for id in [0, CHUNK_LEN - 1, CHUNK_LEN, 2 * CHUNK_LEN + 4] {
            assert_eq!(s.get(id as u32), Some(&(id as u64 * 3)));
        }
        assert_eq!(s.get(n as u32), None);
        let boundary = CHUNK_LEN as u32;
        assert_eq!(s.take(boundary), Some(boundary as u64 * 3));
        assert_eq!(s.get(boundary), None);
        assert_eq!(s.take(boundary), None);
        assert!(!s.put(n as u32, 7), "an id never handed out");
        assert!(s.put(boundary, 7));
        if let Some(v) = s.get_mut(boundary) {
            *v += 1;
        }
        assert_eq!(s.get(boundary), Some(&8));
        s.take(1);
        let ids: Vec<u32> = s.iter().map(|(id, _)| id).take(3).collect();
        assert_eq!(ids, vec![0, 2, 3]);
        assert_eq!(s.iter().count(), n - 1);
        assert!(s
            .iter()
            .all(|(id, &v)| v == id as u64 * 3 || id == boundary));
        // Full chunks were allocated once, at their full size.
        assert!(s.chunks.iter().all(|c| c.capacity() >= c.len()));
        assert_eq!(s.chunks.get(1).map(Vec::capacity), Some(CHUNK_LEN));
    }
}

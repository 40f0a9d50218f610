//! The history entries recorded since a snapshot, by token, in few heap
//! buffers: the tokens in a [`ByteSet`], and beside them one slot per token
//! that holds its first entry inline. Only a token with two or more entries
//! between two snapshots gets a vector of its own.
//!
//! A bulk import records one entry per new device; held as a map from a
//! boxed token to a vector of entries, that was two heap chunks per device,
//! freed on the writer's thread at each snapshot (DESIGN.md 13, step 15).

use std::sync::Arc;

use hashbrown::HashMap;

use super::Rec;
use crate::byteset::ByteSet;
use crate::limits::MAX_HISTORY_PER_TOKEN;

/// One token's entries, oldest first.
#[derive(Clone, Debug)]
enum Entries {
    One(Rec),
    Many(Vec<Rec>),
}

impl Entries {
    fn as_slice(&self) -> &[Rec] {
        match self {
            Entries::One(r) => std::slice::from_ref(r),
            Entries::Many(v) => v,
        }
    }
}

/// Entries by token (see the module doc).
#[derive(Clone, Debug, Default)]
pub(crate) struct PendingRecs {
    tokens: ByteSet,
    /// `lists[i]` holds the entries of `tokens.key(i)`.
    lists: Vec<Entries>,
}

impl PendingRecs {
    /// Appends `rec` to `token`'s entries, keeping the newest
    /// [`MAX_HISTORY_PER_TOKEN`].
    pub(crate) fn push(&mut self, token: &[u8], rec: Rec) {
        debug_assert_eq!(self.lists.len(), self.tokens.len());
        let (i, new) = self.tokens.insert(token);
        if new {
            self.lists.push(Entries::One(rec));
            return;
        }
        let Some(entries) = self.lists.get_mut(i) else {
            // Unreachable: `lists` grows with `tokens`.
            return;
        };
        // A second entry: the slot becomes a vector (an empty one is no
        // allocation, so the placeholder costs nothing).
        let mut list = match std::mem::replace(entries, Entries::Many(Vec::new())) {
            Entries::One(first) => vec![first],
            Entries::Many(v) => v,
        };
        list.push(rec);
        if list.len() > MAX_HISTORY_PER_TOKEN {
            let extra = list.len() - MAX_HISTORY_PER_TOKEN;
            list.drain(..extra);
        }
        *entries = Entries::Many(list);
    }

    /// `token`'s entries, oldest first (empty if it has none).
    pub(crate) fn get(&self, token: &[u8]) -> &[Rec] {
        self.tokens
            .find(token)
            .and_then(|i| self.lists.get(i))
            .map_or(&[], Entries::as_slice)
    }

    /// Every token with its entries, in the order the tokens first had one.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[Rec])> + '_ {
        self.tokens
            .iter()
            .zip(self.lists.iter().map(Entries::as_slice))
    }

    /// Tokens with entries.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Entries of every token.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.lists.iter().map(|e| e.as_slice().len()).sum()
    }

    /// Adds every token's entries to `out` (after the ones there).
    pub(crate) fn extend_map(&self, out: &mut HashMap<Arc<[u8]>, Vec<Rec>>) {
        for (token, list) in self.iter() {
            match out.get_mut(token) {
                Some(v) => v.extend_from_slice(list),
                None => {
                    out.insert(Arc::from(token), list.to_vec());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistoryOp;
    use crate::model::Platform;

    fn rec(seq: u64) -> Rec {
        Rec {
            seq,
            commit_ms: seq,
            event_ms: None,
            op: HistoryOp::Register,
            link: None,
            before: None,
            after: None,
            present: true,
            platform: Platform::Ios,
        }
    }

    #[test]
    fn keeps_each_tokens_newest_entries_in_order() {
        let mut p = PendingRecs::default();
        p.push(b"a", rec(1));
        p.push(b"b", rec(2));
        let total = MAX_HISTORY_PER_TOKEN as u64 + 3;
        for seq in 3..3 + total {
            p.push(b"a", rec(seq));
        }
        assert_eq!(p.len(), 2);
        let a: Vec<u64> = p.get(b"a").iter().map(|r| r.seq).collect();
        let want: Vec<u64> = (3 + total - MAX_HISTORY_PER_TOKEN as u64..3 + total).collect();
        assert_eq!(a, want, "the newest MAX_HISTORY_PER_TOKEN, oldest first");
        assert_eq!(p.get(b"b").len(), 1);
        assert!(p.get(b"c").is_empty());
        let order: Vec<&[u8]> = p.iter().map(|(t, _)| t).collect();
        assert_eq!(order, vec![&b"a"[..], b"b"]);
        assert_eq!(p.entries(), MAX_HISTORY_PER_TOKEN + 1);
        let mut map = HashMap::new();
        map.insert(Arc::<[u8]>::from(&b"b"[..]), vec![rec(0)]);
        p.extend_map(&mut map);
        let b: Vec<u64> = map[&b"b"[..]].iter().map(|r| r.seq).collect();
        assert_eq!(b, vec![0, 2], "appended after what was there");
        assert_eq!(map[&b"a"[..]].len(), MAX_HISTORY_PER_TOKEN);
    }
}

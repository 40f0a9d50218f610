//! A new sink's snapshot, sent lazily (the backfill).
//!
//! A sink starts out owing Customer.io every identified device. Until store
//! format 5 that snapshot was a feed item per device, built at `add_sink`:
//! at 10^7 devices, 9×10^6 items in memory (three copies of each token) and
//! in the next checkpoint. Now the sink holds only a cursor. The devices are
//! visited in *position* order, `(CRC-32 of the packed token, packed token)`,
//! which is stable across processes and needs no index: an export scans the
//! state once per window of about `BACKFILL_WINDOW_TOKENS` positions and
//! keeps the window (not persisted; rebuilt after a reopen) until it is used
//! up. Each visited device whose current pair has no pending item is sent as
//! `add_device` with its current truth.
//!
//! Rules (DESIGN.md 11.5 gives the argument):
//! * while a backfill is active, exports send only backfill batches; regular
//!   items wait, as they waited behind the eager snapshot;
//! * `acked`: every position up to it was delivered (or skipped); a pair on a
//!   token beyond it was never sent, so a new item for it starts with base
//!   `false`, not `true`;
//! * a delivered backfill add sets the base of a pending item for the same
//!   pair (it changed while the batch was in flight): Customer.io holds it.
//!
//! The window is a cache: an export's result is the same with or without it
//! (removed tokens stay in it but are no longer owned; tokens added since it
//! was built are put in by `Feed::on_device`), so a replay rebuilds exactly.

use super::export::render_checked;
use super::{BatchOp, Effect, Feed, ItemKey, Truth};
use crate::format::{body_growth, Change, OpSlot, EMPTY_BODY_BYTES};
use crate::limits::BACKFILL_WINDOW_TOKENS;
use std::collections::BTreeSet;

/// A device's place in the backfill order.
pub(crate) type Position = (u32, Box<[u8]>);

/// Hashes a packed token to its position's first half.
pub(crate) fn hash_of(token: &[u8]) -> u32 {
    crc32fast::hash(token)
}

/// Whether `token` lies beyond `bound` (`None`: before every position).
pub(crate) fn beyond(token_hash: u32, token: &[u8], bound: Option<&Position>) -> bool {
    match bound {
        None => true,
        Some((h, t)) => (token_hash, token) > (*h, &**t),
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Backfill {
    /// Positions up to here were delivered or skipped; `None`: none yet.
    pub(crate) acked: Option<Position>,
    /// Where the backfill batch in flight ends.
    pub(crate) in_flight_end: Option<Position>,
    /// Pairs still to send: the identified devices at `add_sink` less the
    /// backfill adds acknowledged (`pending` adds it). Never below what is
    /// left: the backfill sends only devices identified at `add_sink`
    /// (one identified since has a pending item, and items wait for the
    /// backfill), each once; devices that moved or went since are counted
    /// until an export finds the backfill over.
    pub(crate) remaining: u64,
    window: Window,
    /// Positions a window aims at; 0 means `BACKFILL_WINDOW_TOKENS` (tests
    /// set a few, to cross many windows).
    window_tokens: usize,
}

/// The positions after `lower` with a hash below `hash_end`, as of the scan
/// that built it plus the tokens `on_device` reported since.
#[derive(Clone, Debug, Default)]
struct Window {
    built: bool,
    lower: Option<Position>,
    hash_end: u64,
    tokens: BTreeSet<Position>,
}

/// The end of the hash space: a window reaching it is the last.
const HASH_SPACE: u64 = 1 << 32;

impl PartialEq for Backfill {
    /// The window is a cache and takes no part.
    fn eq(&self, other: &Backfill) -> bool {
        (&self.acked, &self.in_flight_end, self.remaining)
            == (&other.acked, &other.in_flight_end, other.remaining)
    }
}
impl Eq for Backfill {}

impl Backfill {
    pub(crate) fn new(remaining: u64) -> Backfill {
        Backfill {
            remaining,
            ..Backfill::default()
        }
    }

    /// Whether a pair on `token` may already be on Customer.io's side
    /// (its position was delivered), for a new item's base.
    pub(crate) fn passed(&self, token: &[u8]) -> bool {
        !beyond(hash_of(token), token, self.acked.as_ref())
    }

    /// A device changed: a window that covers its position must hold it.
    pub(crate) fn saw(&mut self, token: &[u8]) {
        let w = &mut self.window;
        let h = hash_of(token);
        if w.built && u64::from(h) < w.hash_end && beyond(h, token, w.lower.as_ref()) {
            w.tokens.insert((h, Box::from(token)));
        }
    }

    /// The next position after `after`, building windows as needed; `None`
    /// when the hash space is used up.
    fn next(&mut self, after: Option<&Position>, devices: &dyn Truth) -> Option<Position> {
        let covers = self.window.built && self.window.lower.as_ref() <= after;
        let target = match self.window_tokens {
            0 => BACKFILL_WINDOW_TOKENS,
            n => n,
        };
        if !covers {
            self.window = Window::build(after.cloned(), devices, target);
        }
        loop {
            let w = &self.window;
            let found = match after {
                None => w.tokens.iter().next(),
                Some(a) => w
                    .tokens
                    .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                    .next(),
            };
            if let Some(p) = found {
                return Some(p.clone());
            }
            if w.hash_end >= HASH_SPACE {
                return None;
            }
            // Nothing else before `hash_end`: the next window starts there.
            let lower = match after {
                Some(a) if u64::from(a.0) + 1 >= w.hash_end => Some(a.clone()),
                _ => u32::try_from(w.hash_end - 1).ok().map(|h| (h, max_token())),
            };
            self.window = Window::build(lower, devices, target);
        }
    }
}

/// Greater than any packed token (at most `MAX_TOKEN_BYTES` + 1 bytes, so
/// shorter than this run of 0xFF bytes).
fn max_token() -> Box<[u8]> {
    vec![0xFF; crate::limits::MAX_TOKEN_BYTES + 2].into_boxed_slice()
}

impl Window {
    /// Scans every device once for the positions after `lower` in a hash
    /// range sized to hold about `BACKFILL_WINDOW_TOKENS` of them.
    fn build(lower: Option<Position>, devices: &dyn Truth, target_tokens: usize) -> Window {
        let target = target_tokens as u64;
        let from = lower.as_ref().map_or(0, |p| u64::from(p.0));
        let span = (HASH_SPACE.saturating_mul(target) / devices.device_count().max(1)).max(1);
        let mut hash_end = from.saturating_add(span).min(HASH_SPACE);
        let mut found: Vec<Position> = Vec::new();
        devices.each_token(&mut |t| {
            let h = hash_of(t);
            if u64::from(h) < hash_end && beyond(h, t, lower.as_ref()) {
                found.push((h, Box::from(t)));
            }
        });
        found.sort_unstable();
        // Skewed hashes: keep the first `2 × target`, cut at a hash boundary.
        let keep = 2 * target_tokens;
        if let Some(p) = found.get(keep) {
            let cut = u64::from(p.0).max(from + 1);
            found.retain(|q| u64::from(q.0) < cut);
            hash_end = cut;
        }
        Window {
            built: true,
            lower,
            hash_end,
            tokens: found.into_iter().collect(),
        }
    }
}

/// What one backfill export decided.
pub(crate) enum Step {
    /// Send these adds (maybe none: only skipped or rejected devices); the
    /// batch covers the positions up to the one given.
    Batch(Vec<BatchOp>, Position),
    /// The first add does not fit `max_bytes`: nothing can be sent (the
    /// positions up to the one given, if any, were skipped or rejected).
    Stalled(Option<Position>),
    /// No position is left: the backfill is over.
    Done,
}

/// A backfill add that can never be sent (over the format's limit, or a
/// person that is not a valid value of the sink's identifier kind).
pub(crate) struct Rejected {
    pub(crate) item: ItemKey,
    pub(crate) operation: String,
    pub(crate) reason: String,
}

/// A backfill add of `device` to `person`, rendered and checked.
fn render_add(
    format: &dyn crate::format::SinkFormat,
    person: &str,
    device: &crate::format::DeviceView,
    at: &OpSlot<'_>,
) -> Result<String, (String, String)> {
    render_checked(format, &Change::Added { person, device }, at)
}

impl Feed {
    /// Plans the next backfill batch of `sink_name` (no batch in flight).
    /// Operations too large for Customer.io are returned as rejected.
    pub(crate) fn plan_backfill(
        &mut self,
        sink_name: &str,
        truth: &dyn Truth,
        max_ops: usize,
        max_bytes: usize,
    ) -> (Step, Vec<Rejected>) {
        let Some(sink) = self.sinks.get_mut(sink_name) else {
            return (Step::Done, Vec::new());
        };
        let items = &sink.items;
        let format = sink.settings.renderer();
        let max_ops = max_ops.min(format.max_operations());
        let number = sink.next_batch;
        let Some(bf) = sink.backfill.as_mut() else {
            return (Step::Done, Vec::new());
        };
        if max_ops == 0 {
            // Never a batch (the registry refuses 0); not "done" either.
            return (Step::Stalled(None), Vec::new());
        }
        let mut cursor = bf.acked.clone();
        let mut ops: Vec<BatchOp> = Vec::new();
        let mut rejected = Vec::new();
        let mut body_bytes = EMPTY_BODY_BYTES;
        let mut end: Option<Position> = None;
        while ops.len() < max_ops {
            let Some(p) = bf.next(cursor.as_ref(), truth) else {
                break;
            };
            let owner = truth.owner(&p.1);
            let add = owner.as_ref().and_then(|o| {
                let key = super::device_item(o, &p.1);
                if items.contains_key(&key) {
                    return None; // its pending item sends the truth
                }
                truth.owned(o, &p.1).map(|device| (o.clone(), key, device))
            });
            if let Some((person, key, device)) = add {
                let at = OpSlot {
                    sink: sink_name,
                    batch: number,
                    index: ops.len(),
                };
                match render_add(&*format, &person, &device, &at) {
                    Err((operation, reason)) => rejected.push(Rejected {
                        item: key,
                        operation,
                        reason,
                    }),
                    Ok(json) => {
                        let grow = body_growth(ops.len(), json.len());
                        if body_bytes + grow > max_bytes {
                            if ops.is_empty() {
                                return (Step::Stalled(end), rejected);
                            }
                            break;
                        }
                        body_bytes += grow;
                        ops.push(BatchOp {
                            item: None,
                            effect: Effect::Backfilled(person),
                            token: Some(p.1.clone()),
                            json,
                        });
                    }
                }
            }
            end = Some(p.clone());
            cursor = Some(p);
        }
        match end {
            Some(end) => (Step::Batch(ops, end), rejected),
            None => (Step::Done, rejected),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    /// Devices as a map of packed token to owner.
    struct Fake(BTreeMap<Vec<u8>, Option<Arc<str>>>);

    impl Truth for Fake {
        fn owned(&self, person: &str, token: &[u8]) -> Option<crate::format::DeviceView> {
            let owner = self.0.get(token)?.as_ref()?;
            (&**owner == person).then(|| crate::format::DeviceView {
                token: String::from_utf8_lossy(token).into_owned(),
                platform: crate::model::Platform::Ios,
                last_seen_ms: 0,
                attributes: Default::default(),
            })
        }
        fn newest(&self, _: &str) -> Option<(Box<[u8]>, crate::format::DeviceView)> {
            None
        }
        fn each_token(&self, f: &mut dyn FnMut(&[u8])) {
            self.0.keys().for_each(|t| f(t));
        }
        fn device_count(&self) -> u64 {
            self.0.len() as u64
        }
        fn owner(&self, token: &[u8]) -> Option<Arc<str>> {
            self.0.get(token)?.clone()
        }
    }

    fn token(i: u32) -> Vec<u8> {
        format!("t{i}").into_bytes()
    }

    /// Walks the whole backfill order from the start; `during` runs before
    /// each step with the number of steps and the cursor.
    fn walk(
        bf: &mut Backfill,
        devices: &mut Fake,
        mut during: impl FnMut(usize, Option<&Position>, &mut Fake, &mut Backfill),
    ) -> Vec<Position> {
        let mut seen = Vec::new();
        let mut cursor: Option<Position> = None;
        loop {
            during(seen.len(), cursor.as_ref(), devices, bf);
            let Some(p) = bf.next(cursor.as_ref(), devices) else {
                break;
            };
            seen.push(p.clone());
            cursor = Some(p);
        }
        seen
    }

    #[test]
    fn the_order_visits_every_device_once_across_many_windows() {
        let mut devices = Fake((0..500).map(|i| (token(i), None)).collect());
        let mut bf = Backfill::new(500);
        bf.window_tokens = 7;
        let seen = walk(&mut bf, &mut devices, |_, _, _, _| {});
        let mut want: Vec<Position> = devices
            .0
            .keys()
            .map(|t| (hash_of(t), t.clone().into_boxed_slice()))
            .collect();
        want.sort();
        assert_eq!(seen, want, "every position once, in order");
        assert!(
            bf.window.tokens.len() < 500,
            "the last window is not the whole set"
        );
    }

    #[test]
    fn a_device_added_ahead_of_the_cursor_is_visited_and_one_behind_it_is_not() {
        let mut devices = Fake((0..300).map(|i| (token(i), None)).collect());
        let mut bf = Backfill::new(300);
        bf.window_tokens = 5;
        let (mut behind, mut ahead) = (Vec::new(), Vec::new());
        let seen = walk(&mut bf, &mut devices, |n, cursor, devices, bf| {
            if n != 150 {
                return;
            }
            // Devices added now, some inside the window in use; `saw` is
            // what `Feed::on_device` calls.
            let in_window = |t: &[u8]| {
                let h = hash_of(t);
                u64::from(h) < bf.window.hash_end && beyond(h, t, cursor)
            };
            let mut new: Vec<Vec<u8>> = (1000..200_000)
                .map(token)
                .filter(|t| in_window(t))
                .take(3)
                .collect();
            assert_eq!(new.len(), 3);
            new.extend((1000..1050).map(token));
            for t in new {
                devices.0.insert(t.clone(), None);
                bf.saw(&t);
                if beyond(hash_of(&t), &t, cursor) {
                    ahead.push(t);
                } else {
                    behind.push(t);
                }
            }
        });
        assert!(!ahead.is_empty() && !behind.is_empty());
        let count = |t: &[u8]| seen.iter().filter(|p| &*p.1 == t).count();
        for t in &ahead {
            assert_eq!(count(t), 1, "a device added ahead is visited once");
        }
        for t in &behind {
            assert_eq!(count(t), 0, "a device added behind is not visited");
        }
        assert_eq!(seen.len(), 300 + ahead.len());
    }

    #[test]
    fn a_window_holds_at_most_twice_its_target() {
        let mut devices = Fake((0..400).map(|i| (token(i), None)).collect());
        let mut bf = Backfill::new(400);
        bf.window_tokens = 3;
        let mut largest = 0;
        let seen = walk(&mut bf, &mut devices, |_, _, _, bf| {
            largest = largest.max(bf.window.tokens.len());
        });
        assert_eq!(seen.len(), 400);
        assert!(largest <= 6, "a window held {largest} positions");
    }
}

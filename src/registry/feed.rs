//! The change-feed half of the registry's API: sinks, export, ack, nack,
//! dead letters.

use std::sync::Arc;

use super::{Applied, Entry, Registry};
use crate::error::{Error, Result};
use crate::feed::{validate_sink, AckOutcome, Batch, DeadLetter, SinkInfo};
use crate::format::SinkSettings;

impl Registry {
    /// Adds a `track-v2` sink naming persons by `id` whose feed starts with
    /// a snapshot of every identified device. Returns false if it already
    /// exists.
    pub fn add_sink(&self, sink: &str) -> Result<bool> {
        self.submit_add_sink(sink, Entry::AddSink(sink.to_owned()))
    }

    /// Adds a sink of a format and identifier kind whose feed starts with
    /// a snapshot of every identified device. Returns false if a sink of
    /// that name exists with the same settings; one with other settings is
    /// `Error::Invalid` naming `sink` (a sink's settings never change).
    ///
    /// ```
    /// use devreg::format::{FormatKind, IdentifierKind, SinkSettings};
    /// let dir = tempfile::tempdir().unwrap();
    /// let reg = devreg::Registry::open(dir.path().join("db")).unwrap();
    /// let cdp = SinkSettings::new(FormatKind::Pipelines, IdentifierKind::Email).unwrap();
    /// assert!(reg.add_sink_with("cdp", cdp).unwrap());
    /// assert!(!reg.add_sink_with("cdp", cdp).unwrap());
    /// assert!(reg.add_sink_with("cdp", SinkSettings::default()).is_err());
    /// assert_eq!(reg.sinks()[0].settings, cdp);
    /// ```
    pub fn add_sink_with(&self, sink: &str, settings: SinkSettings) -> Result<bool> {
        validate_sink(sink)?;
        settings.validate()?;
        let existing = self
            .inner
            .state
            .read()
            .feed
            .sinks
            .get(sink)
            .map(|s| s.settings);
        match existing {
            Some(s) if s == settings => return Ok(false),
            Some(s) => {
                return Err(Error::invalid(
                    "sink",
                    format!(
                        "{sink:?} exists as format {} with identifier {} (a sink's settings never change)",
                        s.format, s.identifier
                    ),
                ))
            }
            None => {}
        }
        let entry = if settings.is_default() {
            Entry::AddSink(sink.to_owned())
        } else {
            Entry::AddSinkWith {
                sink: sink.to_owned(),
                settings,
            }
        };
        self.submit_add_sink(sink, entry)
    }

    fn submit_add_sink(&self, sink: &str, entry: Entry) -> Result<bool> {
        match self.submit_one(entry)? {
            Applied::Count(n) => {
                if n == 0 && !self.inner.state.read().feed.sinks.contains_key(sink) {
                    return Err(Error::invalid(
                        "sink",
                        format!("at most {} sinks", crate::feed::MAX_SINKS),
                    ));
                }
                Ok(n > 0)
            }
            other => Err(Error::corrupt(
                "writer",
                format!("unexpected result {other:?}"),
            )),
        }
    }

    /// The default sink before its first export: it has nothing yet.
    fn default_sink_unborn(&self, sink: &str) -> bool {
        sink == crate::feed::DEFAULT_SINK && !self.inner.state.read().feed.sinks.contains_key(sink)
    }

    fn require_sink(&self, sink: &str) -> Result<()> {
        validate_sink(sink)?;
        if self.inner.state.read().feed.sinks.contains_key(sink) {
            Ok(())
        } else {
            Err(Error::invalid("sink", format!("no sink named {sink:?}")))
        }
    }

    /// The next batch for `sink`: at most `max_ops` operations and a body
    /// of at most `max_bytes` (under Customer.io's 500,000). Until it is
    /// acknowledged, every export returns the identical batch, also after a
    /// crash. `None` when nothing is pending.
    ///
    /// ```
    /// use devreg::{Registry, Register, Platform, DEFAULT_SINK};
    /// let dir = tempfile::tempdir().unwrap();
    /// let reg = Registry::open(dir.path().join("db")).unwrap();
    /// reg.register(Register { token: "ab".into(), platform: Platform::Ios,
    ///     person: Some("p1".into()), seen_ms: 5_000, attributes: None }).unwrap();
    /// let batch = reg.export(DEFAULT_SINK, 100, 499_999).unwrap().unwrap();
    /// assert!(batch.body().contains(r#""action":"add_device""#));
    /// assert_eq!(reg.export(DEFAULT_SINK, 100, 499_999).unwrap().unwrap().id(), batch.id());
    /// reg.ack(DEFAULT_SINK, batch.id()).unwrap();
    /// assert!(reg.export(DEFAULT_SINK, 100, 499_999).unwrap().is_none());
    /// ```
    pub fn export(&self, sink: &str, max_ops: u32, max_bytes: u32) -> Result<Option<Arc<Batch>>> {
        // On etcd one node at a time exports a sink, under its lease, and
        // first applies everything before it (the batch in flight).
        #[cfg(feature = "etcd")]
        if let super::Engine::Cluster(node) = &self.inner.engine {
            self.refuse_if_read_only()?;
            node.hold_exporter(sink)?;
            node.catch_up()?;
        }
        if self.default_sink_unborn(sink) {
            self.add_sink(sink)?;
        }
        self.require_sink(sink)?;
        if let Some(b) = self
            .inner
            .state
            .read()
            .feed
            .sinks
            .get(sink)
            .and_then(|s| s.in_flight.clone())
        {
            return Ok(Some(b));
        }
        match self.submit_one(Entry::Export {
            sink: sink.to_owned(),
            max_ops,
            max_bytes,
        })? {
            Applied::Batch(b) => Ok(b),
            other => Err(Error::corrupt(
                "writer",
                format!("unexpected result {other:?}"),
            )),
        }
    }

    /// Marks batch `batch_id` delivered. Acknowledging it again is a no-op;
    /// an id never exported is an error.
    pub fn ack(&self, sink: &str, batch_id: &str) -> Result<()> {
        self.acknowledge(sink, batch_id, &[]).map(|_| ())
    }

    /// Customer.io accepted the batch except the operations at these indices
    /// (its 207 answer): they go to the dead letters with their reasons.
    pub fn nack(&self, sink: &str, batch_id: &str, failed: &[(u32, String)]) -> Result<()> {
        self.acknowledge(sink, batch_id, failed).map(|_| ())
    }

    /// `ack` (no `failed`) or `nack`, telling whether this call delivered
    /// the batch or it had been acknowledged before (then nothing changes:
    /// its failures were recorded the first time). The writer decides, so
    /// of concurrent acknowledgements of one batch exactly one is
    /// [`AckOutcome::Delivered`]. An unknown sink is `Error::Invalid`
    /// naming `sink`; an id that is not one of the sink's exported batches,
    /// or an index outside the batch, names `batch_id`.
    pub fn acknowledge(
        &self,
        sink: &str,
        batch_id: &str,
        failed: &[(u32, String)],
    ) -> Result<AckOutcome> {
        self.require_sink(sink)?;
        match self.submit_one(Entry::Ack {
            sink: sink.to_owned(),
            batch_id: batch_id.to_owned(),
            failed: failed.to_vec(),
        })? {
            // `deliver` counts 1 for a delivery, 0 for a batch acked before.
            Applied::Count(0) => Ok(AckOutcome::AlreadyAcked),
            Applied::Count(_) => Ok(AckOutcome::Delivered),
            Applied::Rejected(field, why) => Err(Error::invalid(field, why)),
            other => Err(Error::corrupt(
                "writer",
                format!("unexpected result {other:?}"),
            )),
        }
    }

    /// The sink's dead letters, oldest first.
    pub fn dead_letters(&self, sink: &str) -> Result<Vec<DeadLetter>> {
        if self.default_sink_unborn(sink) {
            return Ok(Vec::new());
        }
        self.require_sink(sink)?;
        Ok(self.inner.state.read().feed.dead_letters(sink))
    }

    /// Puts every dead letter back into the feed; returns how many.
    pub fn requeue(&self, sink: &str) -> Result<u64> {
        if self.default_sink_unborn(sink) {
            return Ok(0);
        }
        self.require_sink(sink)?;
        match self.submit_one(Entry::Requeue(sink.to_owned()))? {
            Applied::Count(n) => Ok(n),
            other => Err(Error::corrupt(
                "writer",
                format!("unexpected result {other:?}"),
            )),
        }
    }

    /// The drift audit's repair (DESIGN.md 20.8): puts each (person,
    /// token) pair back into `sink`'s feed, so the next export sends its
    /// current truth (a pair Customer.io `held` that devreg does not hold
    /// goes out as a delete). Logged (`Entry::Remark`), durable as
    /// configured, and checkpointed like every feed change. A `held` pair
    /// that is in the sink's batch in flight is not marked (deferred: the
    /// batch's acknowledgement decides what Customer.io holds; audit again
    /// after the sync), nor is any pair of a sink that is gone. Pairs are
    /// written in atomic chunks of at most `MAX_REMARK_PAIRS` that each fit
    /// one log record; a crash between chunks leaves a prefix re-marked,
    /// which is harmless (re-running the repair marks the rest). Returns the
    /// pairs marked (the rest were deferred). An unknown sink is `Invalid` naming `sink`; an invalid
    /// pair names `pairs[i]`.
    pub fn remark(&self, sink: &str, pairs: &[crate::model::RemarkPair]) -> Result<u64> {
        self.require_sink(sink)?;
        for (i, p) in pairs.iter().enumerate() {
            p.validate()
                .map_err(|e| Error::invalid(format!("pairs[{i}]"), e.to_string()))?;
        }
        let budget = self.max_batch_bytes() / 2;
        let mut marked = 0;
        let mut rest = pairs;
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            for p in rest.iter().take(crate::limits::MAX_REMARK_PAIRS) {
                let len = p.encoded_len();
                if n > 0 && bytes + len > budget {
                    break;
                }
                bytes += len;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            let entry = Entry::Remark {
                sink: sink.to_owned(),
                pairs: chunk.to_vec(),
            };
            marked += match self.submit_one(entry)? {
                Applied::Count(c) => c,
                other => {
                    return Err(Error::corrupt(
                        "writer",
                        format!("unexpected result {other:?}"),
                    ))
                }
            };
            rest = tail;
        }
        Ok(marked)
    }

    /// Up to `n` identified persons for an audit sample: the same ones for
    /// the same persons, whatever the order they arrived in (the smallest
    /// CRC-32 of the name first). A read: nothing is written.
    pub fn sample_persons(&self, n: usize) -> Vec<String> {
        self.inner.state.read().sample_persons(n)
    }

    /// Every sink's position.
    pub fn sinks(&self) -> Vec<SinkInfo> {
        self.inner.state.read().feed.infos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Platform, Register};

    fn registry_with_batch(dir: &std::path::Path) -> (Registry, String) {
        let reg = Registry::open(dir.join("db")).unwrap();
        for i in 0..3u64 {
            let outcome = reg.register(Register {
                token: format!("tok{i}"),
                platform: Platform::Ios,
                person: Some("p1".into()),
                seen_ms: 5_000 + i,
                attributes: None,
            });
            assert!(outcome.unwrap().is_applied());
        }
        reg.add_sink("s").unwrap();
        let batch = reg.export("s", 100, 499_999).unwrap().unwrap();
        (reg, batch.id().to_owned())
    }

    /// The first acknowledgement delivers (failures become dead letters);
    /// a second, with or without failures, is `AlreadyAcked` and changes
    /// nothing; ids never exported and unknown sinks are errors naming
    /// their field.
    #[test]
    fn acknowledge_tells_a_delivery_from_a_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, id) = registry_with_batch(dir.path());
        let failed = vec![(0, "bad token".to_owned())];
        assert_eq!(
            reg.acknowledge("s", &id, &failed).unwrap(),
            AckOutcome::Delivered
        );
        assert_eq!(reg.dead_letters("s").unwrap().len(), 1);
        let again = reg.acknowledge("s", &id, &failed).unwrap();
        assert_eq!(again, AckOutcome::AlreadyAcked);
        assert!(again.already_acked());
        assert_eq!(
            reg.acknowledge("s", &id, &[]).unwrap(),
            AckOutcome::AlreadyAcked
        );
        assert_eq!(
            reg.dead_letters("s").unwrap().len(),
            1,
            "a repeat adds none"
        );
        assert_eq!(reg.sinks()[0].in_flight, None);

        let digits = crate::limits::BATCH_NUMBER_DIGITS;
        let never = format!("s-{:0digits$}", 999);
        assert_eq!(never.len(), id.len(), "a well-formed id: {id}");
        match reg.acknowledge("s", &never, &[]) {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "batch_id"),
            other => panic!("{other:?}"),
        }
        match reg.acknowledge("nope", &id, &[]) {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "sink"),
            other => panic!("{other:?}"),
        }
        reg.close().unwrap();
    }

    /// Of concurrent acknowledgements of one batch exactly one delivers
    /// (what the server needs for `already_acked`, without a lock of its own).
    #[test]
    fn concurrent_acknowledgements_deliver_once() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, id) = registry_with_batch(dir.path());
        let outcomes: Vec<AckOutcome> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| reg.acknowledge("s", &id, &[]).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let delivered = outcomes
            .iter()
            .filter(|o| **o == AckOutcome::Delivered)
            .count();
        assert_eq!(delivered, 1, "{outcomes:?}");
        reg.close().unwrap();
    }

    /// A sample is the same for the same persons whatever order they came
    /// in, at most `n`, identified persons only, sorted by CRC-32 of the name.
    #[test]
    fn samples_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..40).map(|i| format!("person-{i}")).collect();
        let fill = |path: &std::path::Path, order: &mut dyn Iterator<Item = &String>| {
            let reg = Registry::open(path).unwrap();
            for (i, p) in order.enumerate() {
                let r = reg.register(Register {
                    token: format!("t-{p}"),
                    platform: Platform::Ios,
                    person: Some(p.clone()),
                    seen_ms: 1_000 + i as u64,
                    attributes: None,
                });
                assert!(r.unwrap().is_applied());
            }
            let _ = reg.register(Register {
                token: "anon".into(),
                platform: Platform::Android,
                person: None,
                seen_ms: 9,
                attributes: None,
            });
            reg
        };
        let a = fill(&dir.path().join("a"), &mut names.iter());
        let b = fill(&dir.path().join("b"), &mut names.iter().rev());
        let sample = a.sample_persons(7);
        assert_eq!(sample.len(), 7);
        assert_eq!(sample, b.sample_persons(7));
        let crcs: Vec<u32> = sample
            .iter()
            .map(|p| crc32fast::hash(p.as_bytes()))
            .collect();
        assert!(crcs.windows(2).all(|w| w[0] <= w[1]), "{crcs:?}");
        let mut all = a.sample_persons(1_000);
        assert_eq!(all.len(), 40);
        assert_eq!(all[..7], sample[..]);
        all.sort();
        let mut want = names.clone();
        want.sort();
        assert_eq!(all, want);
        assert!(a.sample_persons(0).is_empty());
        a.close().unwrap();
        b.close().unwrap();
    }
}

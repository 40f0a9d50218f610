//! The log's entry: what one log record holds (a list of these), its
//! encoding (bincode with `codec::bincode_opts`) and its validation. Written
//! by the writer, read back by recovery, applied by the state; the one place
//! that knows the entry's bytes.

use bincode::Options;

use crate::codec::bincode_opts;
use crate::error::{Error, Result};
use crate::limits::{
    MAX_BATCH_BODY_BYTES, MAX_BATCH_ID_BYTES, MAX_OPERATION_BYTES, MAX_OPS_LIMIT, MAX_REASON_BYTES,
    MAX_REMARK_PAIRS,
};
use crate::model::{validate_sink, Op, RemarkPair};

/// What the log records: a user operation or an internal one.
///
/// Append-only: bincode writes a variant's position as its tag, so a new
/// variant goes last and none is ever removed or reordered (the log of an
/// older build must decode the same).
/// Public only for the fuzz targets (`devreg::internals::LogEntry`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Entry {
    /// A user operation.
    Op(Op),
    /// The per-person cap changed (at open); persons over it are trimmed.
    SetCap(u32),
    /// A new sink, starting with every identified device.
    AddSink(String),
    /// The next batch of a sink was built.
    Export {
        /// The sink.
        sink: String,
        /// Most operations in the batch.
        max_ops: u32,
        /// Most bytes of its body.
        max_bytes: u32,
    },
    /// A batch was delivered; `failed` operations go to the dead letters.
    Ack {
        /// The sink.
        sink: String,
        /// The batch acknowledged.
        batch_id: String,
        /// Indices of failed operations, with their reasons.
        failed: Vec<(u32, String)>,
    },
    /// Dead letters go back into the feed.
    Requeue(String),
    /// Commit time (Unix ms) of the entries that follow in the record; the
    /// writer puts one first in every record, so history times replay exactly.
    /// Older logs keep their entry tags: new variants go after it.
    Clock(u64),
    /// A new sink of a format and identifier kind, starting with every
    /// identified device (`AddSink` is one of `track-v2` with `id`).
    /// Store format 6.
    AddSinkWith {
        /// The sink.
        sink: String,
        /// Its format and identifier kind.
        settings: crate::format::SinkSettings,
    },
    /// The drift audit's repair: each pair goes back into the sink's feed
    /// (its current truth is sent again; a pair Customer.io `held` and
    /// devreg does not is sent as a delete). DESIGN.md 20.8.
    Remark {
        /// The sink.
        sink: String,
        /// The pairs, at most `MAX_REMARK_PAIRS`.
        pairs: Vec<crate::model::RemarkPair>,
    },
}

/// Encodes entries as one log record body (public only for the fuzz
/// targets, as `devreg::internals::encode_log_entries`).
pub fn encode_entries(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    for e in entries {
        bincode_opts()
            .serialize_into(&mut body, e)
            .map_err(|e| Error::invalid("batch", format!("cannot encode: {e}")))?;
    }
    Ok(body)
}

/// Decodes a log record body into its entries.
pub(crate) fn decode_entries(location: &str, count: u32, body: &[u8]) -> Result<Vec<Entry>> {
    let mut rd = body;
    let mut out = Vec::with_capacity(count.min(1 << 16) as usize);
    for i in 0..count {
        let e: Entry = bincode_opts()
            .allow_trailing_bytes()
            .deserialize_from(&mut rd)
            .map_err(|e| Error::corrupt(location, format!("entry {i}: {e}")))?;
        out.push(e);
    }
    if !rd.is_empty() {
        return Err(Error::corrupt(
            location,
            format!("{} bytes after the last entry", rd.len()),
        ));
    }
    Ok(out)
}

/// Checks an entry read from the log (or about to be written): every
/// field within its limit, so applying it cannot fail or misbehave.
pub(crate) fn validate_entry(e: &Entry) -> Result<()> {
    match e {
        Entry::Op(op) => op.validate(),
        Entry::Clock(ms) => crate::model::validate_time("clock", *ms),
        Entry::SetCap(c) => crate::model::validate_cap(*c),
        Entry::AddSink(s) | Entry::Requeue(s) => validate_sink(s),
        Entry::AddSinkWith { sink, settings } => {
            validate_sink(sink)?;
            settings.validate()
        }
        Entry::Remark { sink, pairs } => validate_remark(sink, pairs),
        Entry::Export {
            sink,
            max_ops,
            max_bytes,
        } => {
            validate_sink(sink)?;
            if !(1..=MAX_OPS_LIMIT).contains(max_ops) {
                return Err(Error::invalid(
                    "max_ops",
                    format!("{max_ops} is outside 1..={MAX_OPS_LIMIT}"),
                ));
            }
            let min = (MAX_OPERATION_BYTES + 64) as u32;
            let max = (MAX_BATCH_BODY_BYTES - 1) as u32;
            if !(min..=max).contains(max_bytes) {
                return Err(Error::invalid(
                    "max_bytes",
                    format!("{max_bytes} is outside {min}..={max}"),
                ));
            }
            Ok(())
        }
        Entry::Ack {
            sink,
            batch_id,
            failed,
        } => {
            validate_sink(sink)?;
            if batch_id.len() > MAX_BATCH_ID_BYTES {
                return Err(Error::invalid(
                    "batch_id",
                    format!("is longer than {MAX_BATCH_ID_BYTES} bytes"),
                ));
            }
            if failed.len() > MAX_OPS_LIMIT as usize {
                return Err(Error::invalid(
                    "failed",
                    "lists more indices than a batch holds",
                ));
            }
            if let Some((i, _)) = failed.iter().find(|(_, r)| r.len() > MAX_REASON_BYTES) {
                return Err(Error::invalid(
                    format!("failed[{i}]"),
                    format!("reason is over {MAX_REASON_BYTES} bytes"),
                ));
            }
            Ok(())
        }
    }
}

/// Checks a re-mark entry: a valid sink, 1..=`MAX_REMARK_PAIRS` pairs, each
/// valid (the error names the pair's index).
fn validate_remark(sink: &str, pairs: &[RemarkPair]) -> Result<()> {
    validate_sink(sink)?;
    if pairs.is_empty() || pairs.len() > MAX_REMARK_PAIRS {
        return Err(Error::invalid(
            "pairs",
            format!("{} pairs is outside 1..={MAX_REMARK_PAIRS}", pairs.len()),
        ));
    }
    for (i, p) in pairs.iter().enumerate() {
        p.validate()
            .map_err(|e| Error::invalid(format!("pairs[{i}]"), e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(person: &str, token: &str, held: bool) -> RemarkPair {
        RemarkPair {
            person: person.into(),
            token: token.into(),
            held,
        }
    }

    /// `Entry::Remark` is encoded as DESIGN.md 20.8 documents: variant 8,
    /// the sink, the pair count, then each pair's person, token and `held`.
    #[test]
    fn a_remark_entry_encodes_as_documented_and_is_validated() {
        let e = Entry::Remark {
            sink: "s".into(),
            pairs: vec![pair("ann", "t1", true), pair("bo", "t2", false)],
        };
        let body = encode_entries(std::slice::from_ref(&e)).unwrap();
        let want: Vec<u8> = [
            &[8u8, 1, b's', 2][..],
            &[3, b'a', b'n', b'n', 2, b't', b'1', 1],
            &[2, b'b', b'o', 2, b't', b'2', 0],
        ]
        .concat();
        assert_eq!(body, want);
        assert_eq!(decode_entries("test", 1, &body).unwrap(), vec![e.clone()]);
        validate_entry(&e).unwrap();

        let field = |e: Entry| match validate_entry(&e) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let remark = |sink: &str, pairs: Vec<RemarkPair>| Entry::Remark {
            sink: sink.into(),
            pairs,
        };
        assert_eq!(field(remark("s", vec![])), "pairs");
        let many = vec![pair("ann", "t", false); MAX_REMARK_PAIRS + 1];
        assert_eq!(field(remark("s", many)), "pairs");
        assert_eq!(
            field(remark("s", vec![pair("ann", "t t", true)])),
            "pairs[0]"
        );
        assert_eq!(field(remark("S!", vec![pair("ann", "t", true)])), "sink");
    }
}

//! Log recovery (src/log/replay.rs, the entry decoding and validation in
//! src/log/entry.rs) on hostile log segments.
//!
//! A template database is created once per process: some devices, a feed
//! batch exported and acknowledged, closed (checkpointed at log position
//! `L`). Each input copies the template and overwrites log segment 0 from
//! `L` on, then opens it: the open must return `Ok` or a typed `Err`, never
//! panic; when it opens, `check()` must run and be clean (the state is a
//! deterministic replay, so memory and store+log agree), and the registry
//! must take a write and reopen to the same devices.
//!
//! Byte 0 of the input picks how the rest becomes the segment:
//! - mode 0: raw bytes (torn/garbage tails, plausible headers);
//! - mode 1: chunks `[count u8][len u8][body len bytes]`, each framed as a
//!   valid record (right LSN, version, kind, CRC), so the fuzzer reaches the
//!   entry decoder with bodies of its own;
//! - mode 2: entries generated from the bytes (operations of every kind,
//!   cap changes, sinks, exports, acks with odd ids, requeues, commit
//!   times, including
//!   invalid values), bincode-encoded like devreg's own and framed; now and
//!   then a record is damaged after framing or a pad record is inserted.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use devreg::internals::{encode_log_entries, LogEntry as Entry};
use devreg::*;
use libfuzzer_sys::fuzz_target;

const SEGMENT: u64 = 64 << 10;
const HEADER: usize = 24;

struct Template {
    _dir: tempfile::TempDir,
    db: PathBuf,
    /// The checkpoint position: where replay starts.
    start: usize,
    segment: Vec<u8>,
}

fn config(db: &Path) -> Config {
    Config::new(db)
        .durability(Durability::Eventual)
        .log_segment_bytes(SEGMENT)
        .checkpoint_interval_ms(3_600_000)
}

fn segment_path(db: &Path, seq: u64) -> PathBuf {
    db.join("log").join(format!("{seq:020}.wal"))
}

/// The end of the valid records of a segment read from offset 0.
fn records_end(seg: &[u8]) -> usize {
    let mut off = 0;
    while off + HEADER <= seg.len() {
        let len = u32::from_le_bytes(seg[off..off + 4].try_into().unwrap()) as usize;
        let lsn = u64::from_le_bytes(seg[off + 8..off + 16].try_into().unwrap());
        if len == 0 || lsn != off as u64 || seg[off + 16] != 1 || seg[off + 17] != 1 {
            break;
        }
        off += HEADER + len;
    }
    off
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("template");
        {
            let reg = Registry::open_with(config(&db)).expect("create template");
            for i in 0..12u64 {
                let _ = reg.register(Register {
                    token: format!("tok-{i}"),
                    platform: if i % 2 == 0 {
                        Platform::Ios
                    } else {
                        Platform::Android
                    },
                    person: (i % 3 != 0).then(|| format!("p{}", i % 4)),
                    seen_ms: 1_700_000_000_000 + i,
                    attributes: None,
                })
                .expect("register");
            }
            let b = reg.export(DEFAULT_SINK, 3, 499_999).expect("export");
            if let Some(b) = b {
                reg.ack(DEFAULT_SINK, b.id()).expect("ack");
            }
            reg.export(DEFAULT_SINK, 2, 499_999).expect("export");
        }
        let segment = std::fs::read(segment_path(&db, 0)).expect("segment 0");
        let start = records_end(&segment);
        assert!(start > 0 && segment.len() as u64 == SEGMENT);
        Template {
            _dir: dir,
            db,
            start,
            segment,
        }
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for ent in std::fs::read_dir(from).unwrap() {
        let ent = ent.unwrap();
        let target = to.join(ent.file_name());
        if ent.file_type().unwrap().is_dir() {
            copy_dir(&ent.path(), &target);
        } else {
            std::fs::copy(ent.path(), &target).unwrap();
        }
    }
}

/// Appends one record at log position `lsn` (the format of src/log/record.rs).
fn frame(out: &mut Vec<u8>, lsn: u64, kind: u8, count: u32, body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&[1, kind, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let mut a = [0u8; 4];
        for x in &mut a {
            *x = self.byte()?;
        }
        Some(u32::from_le_bytes(a))
    }
    fn text(&mut self, alphabet: &[&str]) -> Option<String> {
        let b = self.byte()?;
        Some(match b {
            0..=239 => alphabet[usize::from(b) % alphabet.len()].to_string(),
            240 => String::new(),
            241 => "x".repeat(5000),
            242 => "a b".into(),
            243 => "_reserved".into(),
            244 => "\u{7f}ctl".into(),
            _ => {
                let n = usize::from(self.byte()? % 16);
                let raw: Vec<u8> = (0..n).filter_map(|_| self.byte()).collect();
                String::from_utf8_lossy(&raw).into_owned()
            }
        })
    }
}

const TOKENS: [&str; 6] = ["tok-0", "tok-1", "tok-5", "ab", "abcd", "new-tok"];
const PERSONS: [&str; 5] = ["p1", "p2", "p3", "p0", "zed"];
const SINKS: [&str; 3] = ["customerio", "other", "Bad Sink!"];

fn time(b: &mut Bytes<'_>) -> Option<u64> {
    Some(match b.byte()? {
        0..=200 => 1_700_000_000_000 + u64::from(b.byte()?),
        201..=250 => 0,
        251 => devreg::limits::MAX_TIMESTAMP_MS,
        252 => devreg::limits::MAX_TIMESTAMP_MS + 1,
        _ => u64::MAX,
    })
}

fn entry(b: &mut Bytes<'_>) -> Option<Entry> {
    let code = b.byte()?;
    Some(match code % 18 {
        0..=3 => {
            let attributes = match b.byte()? % 4 {
                0 => None,
                1 => Some(Attributes::new()),
                2 => Some(
                    [(b.text(&["app_version", "locale"])?, b.text(&["1.0", ""])?)]
                        .into_iter()
                        .collect(),
                ),
                _ => Some((0..101).map(|i| (format!("k{i}"), String::new())).collect()),
            };
            Entry::Op(Op::Register(Register {
                token: b.text(&TOKENS)?,
                platform: if b.byte()? & 1 == 0 {
                    Platform::Ios
                } else {
                    Platform::Android
                },
                person: if b.byte()? & 1 == 0 {
                    None
                } else {
                    Some(b.text(&PERSONS)?)
                },
                seen_ms: time(b)?,
                attributes,
            }))
        }
        4 => Entry::Op(Op::Touch {
            token: b.text(&TOKENS)?,
            seen_ms: time(b)?,
        }),
        5 => Entry::Op(Op::Rotate {
            old_token: b.text(&TOKENS)?,
            new_token: b.text(&TOKENS)?,
            seen_ms: time(b)?,
        }),
        6 => Entry::Op(Op::Logout {
            token: b.text(&TOKENS)?,
            policy: if b.byte()? & 1 == 0 {
                LogoutPolicy::Keep
            } else {
                LogoutPolicy::Remove
            },
        }),
        7 => Entry::Op(Op::Merge {
            primary: b.text(&PERSONS)?,
            secondary: b.text(&PERSONS)?,
        }),
        8 => Entry::Op(Op::Remove {
            token: b.text(&TOKENS)?,
        }),
        9 => Entry::Op(Op::Invalidate {
            token: b.text(&TOKENS)?,
            provider_ms: time(b)?,
        }),
        10 => Entry::Op(Op::Prune {
            before_ms: time(b)?,
        }),
        11 => Entry::SetCap(match b.byte()? {
            0 => 0,
            255 => b.u32()?,
            n => u32::from(n % 8),
        }),
        12 => Entry::AddSink(b.text(&SINKS)?),
        13 => Entry::Export {
            sink: b.text(&SINKS)?,
            max_ops: match b.byte()? {
                255 => b.u32()?,
                n => u32::from(n % 8),
            },
            max_bytes: match b.byte()? {
                0 => 0,
                255 => b.u32()?,
                _ => 499_999,
            },
        },
        14 => {
            let n = b.byte()? % 4;
            let mut failed = Vec::new();
            for _ in 0..n {
                failed.push((u32::from(b.byte()?), b.text(&["bad token", ""])?));
            }
            let batch_id = match b.byte()? % 4 {
                0 => format!("customerio-{:012}", b.byte()? % 4),
                1 => format!("other-{:012}", b.byte()? % 4),
                2 => "x".repeat(200),
                _ => b.text(&["customerio-000000000001", ""])?,
            };
            Entry::Ack {
                sink: b.text(&SINKS)?,
                batch_id,
                failed,
            }
        }
        15 => Entry::Clock(time(b)?),
        16 => {
            // The audit's repair; 0 pairs is refused by validation.
            let n = b.byte()? % 3;
            let mut pairs = Vec::new();
            for _ in 0..n {
                pairs.push(RemarkPair {
                    person: b.text(&PERSONS)?,
                    token: b.text(&TOKENS)?,
                    held: b.byte()? % 2 == 0,
                });
            }
            Entry::Remark {
                sink: b.text(&SINKS)?,
                pairs,
            }
        }
        _ => Entry::Requeue(b.text(&SINKS)?),
    })
}

/// The segment bytes from `start` on, as the input's mode says.
fn tail(start: usize, data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let lsn = |out: &Vec<u8>| (start + out.len()) as u64;
    match mode % 3 {
        0 => out.extend_from_slice(rest),
        1 => {
            let mut b = Bytes(rest);
            while let (Some(count), Some(len)) = (b.byte(), b.byte()) {
                let n = usize::from(len).min(b.0.len());
                let (body, more) = b.0.split_at(n);
                b.0 = more;
                let at = lsn(&out);
                frame(&mut out, at, 1, u32::from(count % 8), body);
            }
        }
        _ => {
            let mut b = Bytes(rest);
            while let Some(ctl) = b.byte() {
                let n = 1 + usize::from(ctl % 4);
                let mut entries = Vec::new();
                for _ in 0..n {
                    match entry(&mut b) {
                        Some(e) => entries.push(e),
                        None => break,
                    }
                }
                if entries.is_empty() {
                    break;
                }
                // The real entry type and encoder (src/log/entry.rs).
                let body = encode_log_entries(&entries).expect("encoding entries");
                let count = entries.len() as u32;
                let at = lsn(&out);
                match ctl >> 4 {
                    // A pad record: the rest of the segment is unused.
                    0 => frame(&mut out, at, 2, 0, &[]),
                    // The count disagrees with the body.
                    1 => frame(&mut out, at, 1, count + 1, &body),
                    2 => frame(&mut out, at, 1, count.saturating_sub(1), &body),
                    // Damaged after framing: a byte flipped.
                    3 => {
                        let rec = out.len();
                        frame(&mut out, at, 1, count, &body);
                        let pos = rec + usize::from(b.byte().unwrap_or(0)) % (out.len() - rec);
                        out[pos] ^= 1 << (ctl % 8);
                    }
                    _ => frame(&mut out, at, 1, count, &body),
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("db");
    copy_dir(&t.db, &db);
    let mut seg = t.segment.clone();
    let bytes = tail(t.start, data);
    let n = bytes.len().min(seg.len() - t.start);
    seg[t.start..t.start + n].copy_from_slice(&bytes[..n]);
    std::fs::write(segment_path(&db, 0), &seg).expect("writing the segment");

    let reg = match Registry::open_with(config(&db)) {
        Ok(reg) => reg,
        Err(
            Error::Corrupt { .. }
            | Error::UnsupportedFormat { .. }
            | Error::Invalid { .. }
            | Error::Io { .. }
            | Error::Store { .. },
        ) => return,
        Err(e) => panic!("open failed with an unexpected error: {e:?}"),
    };
    let report = reg.check().expect("check runs on a registry that opened");
    assert!(
        report.is_clean(),
        "check after replay: {:#?}",
        report.problems
    );
    let before = reg.dump();
    let op = Op::Register(Register {
        token: "after-replay".into(),
        platform: Platform::Ios,
        person: Some("p1".into()),
        seen_ms: 1_700_000_000_999,
        attributes: None,
    });
    // A write after recovery lands (or fails typed) and everything survives a reopen.
    let wrote = reg.apply(op).is_ok();
    let after = reg.dump();
    drop(reg);
    let reg = Registry::open_with(config(&db)).expect("reopen after a successful open");
    assert_eq!(reg.dump(), after, "reopen gives back the devices");
    if !wrote {
        assert_eq!(after, before);
    }
    let report = reg.check().expect("check runs");
    assert!(
        report.is_clean(),
        "check after reopen: {:#?}",
        report.problems
    );
});

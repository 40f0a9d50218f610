//! Raw sled 0.34.7 with devreg's key layout and none of its logic: one tree,
//! `b'D' + packed token -> version byte + bincode record`, a person index
//! `b'P' + person + 0 + packed token` and a last-seen index
//! `b'S' + be(last_seen) + packed token`, all maintained by one `apply_batch`
//! per operation. Durable writes add `flush` plus an fsync of every file
//! (sled's flush uses sync_file_range, which is not a power-loss fsync).

use std::fs::File;
use std::path::{Path, PathBuf};

use bincode::Options;
use devreg::internals::{pack_token, unpack_token};
use devreg::{Device, Platform};
use serde::{Deserialize, Serialize};

use super::{decode_attrs, dir_bytes, encode_attrs, System, Worker};
use crate::workload::Dev;

const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Rec {
    platform: u8,
    last_seen: u64,
    person: Option<String>,
    attrs: Vec<u8>,
}

pub struct SledSys {
    db: sled::Db,
    dir: PathBuf,
    durable: bool,
}

impl SledSys {
    pub fn open(dir: &Path, durable: bool) -> SledSys {
        let db = sled::Config::new()
            .path(dir)
            // The one sled setting measured to help (disk use), as devreg uses.
            .segment_size(8 << 20)
            .open()
            .expect("opening sled");
        SledSys {
            db,
            dir: dir.to_owned(),
            durable,
        }
    }

    fn commit(&self, batch: sled::Batch) {
        self.db.apply_batch(batch).expect("sled apply_batch");
        if self.durable {
            self.db.flush().expect("sled flush");
            sync_tree(&self.dir);
        }
    }

    fn read(&self, packed: &[u8]) -> Option<Rec> {
        let v = self.db.get(key(b'D', packed)).expect("sled get")?;
        Some(decode(&v))
    }

    /// Adds the writes of one upsert to `batch` (after reading the old record).
    fn upsert(&self, batch: &mut sled::Batch, d: &Dev, seen_ms: u64) {
        let packed = pack_token(&d.token);
        let old = self.read(&packed);
        let mut rec = Rec {
            platform: d.platform as u8,
            last_seen: seen_ms,
            person: d.person.clone(),
            attrs: encode_attrs(&d.attrs),
        };
        if let Some(old) = old {
            rec.last_seen = rec.last_seen.max(old.last_seen);
            if rec.person.is_none() {
                rec.person = old.person.clone();
            }
            if old.person != rec.person {
                if let Some(p) = &old.person {
                    batch.remove(person_key(p, &packed));
                }
            }
            if old.last_seen != rec.last_seen {
                batch.remove(seen_key(old.last_seen, &packed));
            }
        }
        if let Some(p) = &rec.person {
            batch.insert(person_key(p, &packed), &[][..]);
        }
        batch.insert(seen_key(rec.last_seen, &packed), &[][..]);
        batch.insert(key(b'D', &packed), encode(&rec));
    }

    fn tokens_of(&self, person: &str) -> Vec<Vec<u8>> {
        let prefix = person_key(person, &[]);
        self.db
            .scan_prefix(&prefix)
            .keys()
            .map(|k| k.expect("sled scan")[prefix.len()..].to_vec())
            .collect()
    }
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn person_key(person: &str, packed: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + person.len() + packed.len());
    k.push(b'P');
    k.extend_from_slice(person.as_bytes());
    k.push(0);
    k.extend_from_slice(packed);
    k
}

fn seen_key(last_seen: u64, packed: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + packed.len());
    k.push(b'S');
    k.extend_from_slice(&last_seen.to_be_bytes());
    k.extend_from_slice(packed);
    k
}

fn encode(r: &Rec) -> Vec<u8> {
    let mut out = vec![VERSION];
    bincode::DefaultOptions::new()
        .serialize_into(&mut out, r)
        .expect("serializing into a Vec cannot fail");
    out
}

fn decode(v: &[u8]) -> Rec {
    assert_eq!(v.first(), Some(&VERSION), "record version");
    bincode::DefaultOptions::new()
        .deserialize(&v[1..])
        .expect("sled record decodes")
}

fn to_device(packed: &[u8], r: Rec) -> Device {
    Device {
        token: unpack_token(packed).expect("packed token"),
        platform: if r.platform == Platform::Ios as u8 {
            Platform::Ios
        } else {
            Platform::Android
        },
        person: r.person,
        last_seen_ms: r.last_seen,
        attributes: decode_attrs(&r.attrs),
    }
}

/// fsyncs every file and directory under `path`.
fn sync_tree(path: &Path) {
    if path.is_dir() {
        for ent in std::fs::read_dir(path).expect("listing sled's dir") {
            sync_tree(&ent.expect("listing sled's dir").path());
        }
    }
    File::open(path)
        .and_then(|f| f.sync_all())
        .expect("fsync of a sled file");
}

struct W<'a>(&'a SledSys);

impl Worker for W<'_> {
    fn import(&mut self, batch: &[Dev]) {
        let mut b = sled::Batch::default();
        for d in batch {
            self.0.upsert(&mut b, d, d.seen_ms);
        }
        self.0.commit(b);
    }

    fn register(&mut self, d: &Dev, seen_ms: u64) {
        let mut b = sled::Batch::default();
        self.0.upsert(&mut b, d, seen_ms);
        self.0.commit(b);
    }

    fn get(&mut self, token: &str) -> Option<Device> {
        let packed = pack_token(token);
        self.0.read(&packed).map(|r| to_device(&packed, r))
    }

    fn most_recent(&mut self, person: &str) -> Option<Device> {
        // The person index has no recency order: read each device's record.
        let mut best: Option<(u64, Vec<u8>, Rec)> = None;
        for packed in self.0.tokens_of(person) {
            let Some(r) = self.0.read(&packed) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((seen, tok, _)) => {
                    (r.last_seen, std::cmp::Reverse(&packed)) > (*seen, std::cmp::Reverse(tok))
                }
            };
            if better {
                best = Some((r.last_seen, packed, r));
            }
        }
        best.map(|(_, packed, r)| to_device(&packed, r))
    }

    fn active_count(&mut self, since_ms: u64) -> u64 {
        let start = seen_key(since_ms, &[]);
        self.0.db.range(start..vec![b'T']).keys().count() as u64
    }

    fn merge(&mut self, primary: &str, secondary: &str) {
        let mut b = sled::Batch::default();
        for packed in self.0.tokens_of(secondary) {
            let Some(mut r) = self.0.read(&packed) else {
                continue;
            };
            b.remove(person_key(secondary, &packed));
            b.insert(person_key(primary, &packed), &[][..]);
            r.person = Some(primary.to_owned());
            b.insert(key(b'D', &packed), encode(&r));
        }
        self.0.commit(b);
    }
}

impl System for SledSys {
    fn worker(&self) -> Box<dyn Worker + '_> {
        Box::new(W(self))
    }

    fn settle(&self) {
        self.db.flush().expect("sled flush");
    }

    fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }
}

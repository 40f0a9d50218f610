//! The four systems behind one interface. A `System` is opened once per
//! durability mode; each thread of a workload takes its own `Worker` (SQLite
//! needs a connection per thread; the others just borrow the shared handle).

pub mod devreg_sys;
pub mod memory_sys;
pub mod sled_sys;
pub mod sqlite_sys;

use std::path::Path;

use bincode::Options;
use devreg::Device;

use crate::workload::Dev;

/// Every system measured, in table order.
pub const ALL: [&str; 4] = ["devreg", "sled", "sqlite", "memory"];

/// Per-thread access to a system.
pub trait Worker {
    /// Upserts a batch of devices as one atomic, durable (per mode) write.
    fn import(&mut self, batch: &[Dev]);
    /// Registers (upserts) one device seen at `seen_ms`: one atomic write,
    /// acknowledged per the durability mode.
    fn register(&mut self, d: &Dev, seen_ms: u64);
    fn get(&mut self, token: &str) -> Option<Device>;
    fn most_recent(&mut self, person: &str) -> Option<Device>;
    /// Devices seen at or after `since_ms`.
    fn active_count(&mut self, since_ms: u64) -> u64;
    /// Moves every device of `secondary` to `primary` in one atomic write.
    fn merge(&mut self, primary: &str, secondary: &str);
}

pub trait System: Sync {
    fn worker(&self) -> Box<dyn Worker + '_>;
    /// Makes the store's files reflect every write (devreg: a checkpoint into
    /// sled), so `disk_bytes` measures the data and not a pending buffer.
    fn settle(&self) {}
    fn disk_bytes(&self) -> u64;
    /// Drains the change feed for at most `phase`: (operations, seconds).
    /// Only devreg has a feed.
    fn export_drain(&self, _phase: std::time::Duration) -> Option<(u64, f64)> {
        None
    }
    /// The system's background work so far, for the progress log (devreg:
    /// checkpoints, page merges, compactions and bytes written to its
    /// store), so that a slow phase can be matched with what ran beside it.
    fn background(&self) -> String {
        String::new()
    }
}

/// Opens system `name` in `dir`; `durable` selects fsync-per-acknowledgement.
pub fn open(name: &str, dir: &Path, durable: bool) -> Box<dyn System> {
    match name {
        "devreg" => Box::new(devreg_sys::DevregSys::open(dir, durable)),
        "sled" => Box::new(sled_sys::SledSys::open(dir, durable)),
        "sqlite" => Box::new(sqlite_sys::SqliteSys::open(dir, durable)),
        "memory" => Box::new(memory_sys::MemorySys::default()),
        other => panic!("unknown system {other:?}"),
    }
}

/// Total size of the files under `path` (a file or a directory tree).
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| dir_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Encodes attributes the way devreg's record does (bincode pairs), so raw
/// sled and SQLite store the same bytes for them.
pub fn encode_attrs(a: &devreg::Attributes) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    bincode::DefaultOptions::new()
        .serialize(&pairs)
        .expect("serializing strings into a Vec cannot fail")
}

pub fn decode_attrs(b: &[u8]) -> devreg::Attributes {
    let pairs: Vec<(String, String)> = bincode::DefaultOptions::new()
        .deserialize(b)
        .expect("attribute blob decodes");
    pairs.into_iter().collect()
}

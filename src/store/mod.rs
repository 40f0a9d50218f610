//! The durable store, in three layers read top to bottom:
//! - `checkpoint`: what a checkpoint writes (the net changes since the last
//!   one, with the log position) and how the state is loaded at open
//!   (`load`: the devices, scanned and decoded on a second thread);
//! - `paged` and `delta`: the layout, logical records kept as pages and
//!   delta pages in few store values (DESIGN.md 4.3), the deltas merged
//!   into the pages in place (`paged/merge.rs`); `overlay`: the delta
//!   records a scan reads back from disk, in one arena;
//! - `kv`: the ordered key-value interface (`KvStore`) and sled behind it
//!   (`sled_waker`: wakes what sled 0.34.7 leaves waiting after a failed
//!   write).

mod checkpoint;
mod compact;
mod delta;
mod frame;
mod kv;
mod load;
mod overlay;
mod page_merge;
mod paged;
mod sled_waker;

use std::path::Path;

use crate::error::Result;

pub(crate) use crate::kv::{KvStore, RawKv, Visit, Write};
#[cfg(feature = "etcd")]
pub(crate) use checkpoint::META_SEGMENT_BYTES;
pub(crate) use checkpoint::{load_state, log_position, Snapshot};
pub(crate) use compact::finish_interrupted as finish_interrupted_compaction;
pub(crate) use compact::interrupted as compaction_interrupted;
pub(crate) use kv::{copy_store, create_empty_store, SledStore};
pub use kv::{sled_closes_abandoned, sled_drop_panics};
pub(crate) use paged::PagedStore;

/// The store of the closed database at `db`, for one short job (1 MiB
/// chunks, every change merged at once, a small sled cache).
pub(crate) fn open_closed(db: &Path, writable: bool) -> Result<PagedStore> {
    if compact::interrupted(&db.join("store")) {
        return Err(crate::error::Error::NoDatabase {
            path: db.to_owned(),
            why: "a store compaction was interrupted: open it for writing once to finish it".into(),
        });
    }
    let raw = SledStore::open(
        &db.join("store"),
        None,
        crate::limits::TOOL_SLED_CACHE_BYTES,
        writable,
    )?;
    PagedStore::open(raw, 1 << 20, 0)
}

/// Test support (`devreg::internals`): reads one logical record (a device
/// record, a history value, a metadata key...) of the closed database at
/// `db`, wherever the layout keeps it.
pub fn peek_record(db: &Path, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let store = open_closed(db, false)?;
    store.get(key)
}

/// Test support (`devreg::internals`): how many logical records under
/// `prefix` the closed database at `db` holds.
pub fn count_records(db: &Path, prefix: &[u8]) -> Result<u64> {
    let store = open_closed(db, false)?;
    let mut n = 0u64;
    store.scan_prefix(prefix, &mut |_, _| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// Test support (`devreg::internals`): sets (or with `None` removes) one
/// logical record of the closed database at `db`, as a checkpoint would.
pub fn poke_record(db: &Path, key: &[u8], value: Option<&[u8]>) -> Result<()> {
    let store = open_closed(db, true)?;
    store.apply(&[(key.to_vec(), value.map(<[u8]>::to_vec))])?;
    store.sync()
}

/// Test support (`devreg::internals`, the `page_frame` fuzz target): the
/// records of one page's sled value, in stored order; errors as an open
/// would report them.
pub fn page_records(value: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    paged::page_records(value)
}

/// Test support (`devreg::internals`): the sled value a checkpoint writes
/// for a page holding `records` (by key, the last of equal keys kept).
pub fn page_value(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    paged::page_value(records)
}

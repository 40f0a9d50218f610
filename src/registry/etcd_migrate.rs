//! Moving a registry between a local database and an etcd cluster
//! (feature `etcd`, `devreg migrate`, DESIGN.md 15.4). Both sides use the
//! same page layout (4.3), so a migration copies the stored entries as they
//! are, after a checkpoint that puts every change in the store; only the
//! log position is rewritten (a local LSN and an etcd revision mean
//! different things).
//!
//! Into etcd, a marker key is written first and removed by the last
//! transaction, which also writes the format key: an open finding the
//! marker refuses (an interrupted migration), and no open can mistake a
//! half-copied prefix for an empty one. Out of etcd, the copy is built in
//! `<db>.migrating` and renamed into place once complete.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::Registry;
use crate::codec::{META_CHECKPOINT_LSN, META_FORMAT};
use crate::config::{Config, EtcdTarget};
use crate::error::{Error, Result};
use crate::etcd::{Conn, EtcdKv, OpLog, TxnLimits};
use crate::kv::{KvStore, Write};
use crate::store::{SledStore, META_SEGMENT_BYTES};

/// The marker of a migration into etcd that has not finished.
pub(crate) const META_MIGRATING: &[u8] = b"Mmigrating";

/// What a migration copied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MigrateReport {
    /// Devices in the registry.
    pub devices: u64,
    /// Stored entries copied (pages, delta chunks, metadata).
    pub keys: u64,
    /// Bytes of their keys and values.
    pub bytes: u64,
}

/// Entries gathered for one batch of the destination, within its limits.
struct Batcher<'a> {
    out: &'a dyn KvStore,
    writes: Vec<Write>,
    bytes: usize,
    limits: TxnLimits,
    report: MigrateReport,
}

impl Batcher<'_> {
    fn push(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        self.report.keys += 1;
        self.report.bytes += (k.len() + v.len()) as u64;
        let size = k.len() + v.len() + crate::limits::ETCD_TXN_OP_OVERHEAD_BYTES;
        let full = self.writes.len() + 1 >= self.limits.max_ops
            || self.bytes + size > self.limits.max_request_bytes / 2;
        if full && !self.writes.is_empty() {
            self.flush()?;
        }
        self.bytes += size;
        self.writes.push((k.to_vec(), Some(v.to_vec())));
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.out.apply(&std::mem::take(&mut self.writes))?;
        self.bytes = 0;
        Ok(())
    }
}

/// Whether `k` is rewritten by the migration rather than copied.
fn is_position_key(k: &[u8]) -> bool {
    k == META_CHECKPOINT_LSN || k == META_SEGMENT_BYTES || k == META_FORMAT || k == META_MIGRATING
}

impl Registry {
    /// Copies the local database at `db` (not open elsewhere) into an empty
    /// prefix of an etcd cluster. Opens it first, so that its log is
    /// checkpointed into its store (and an older format converted).
    pub fn migrate_to_etcd(db: &Path, target: &EtcdTarget) -> Result<MigrateReport> {
        let local = Registry::open_with(Config::new(db).create_if_missing(false))?;
        let devices = local.stats().devices;
        local.checkpoint()?;
        local.close()?;
        let conn = Arc::new(Conn::connect(&target.endpoints)?);
        let prefix = target.prefix.as_bytes();
        let kv = EtcdKv::new(conn.clone(), &[prefix, b"store/"].concat(), target.limits);
        let taken = kv.get(META_FORMAT)?.is_some() || kv.get(META_MIGRATING)?.is_some();
        if taken || OpLog::reader(conn, prefix).count()? > 0 {
            return Err(Error::invalid(
                "etcd prefix",
                format!(
                    "{:?} already holds a registry: migrate into an empty prefix",
                    target.prefix
                ),
            ));
        }
        kv.apply(&[(META_MIGRATING.to_vec(), Some(vec![1]))])?;
        let src = crate::store::open_closed(db, false)?;
        let format = src
            .get(META_FORMAT)?
            .ok_or_else(|| Error::corrupt("metadata key Mformat", "missing"))?;
        let segment = src
            .get(META_SEGMENT_BYTES)?
            .ok_or_else(|| Error::corrupt("metadata key Mlog_segment_bytes", "missing"))?;
        let mut out = Batcher {
            out: &kv,
            writes: Vec::new(),
            bytes: 0,
            limits: target.limits,
            report: MigrateReport {
                devices,
                ..MigrateReport::default()
            },
        };
        src.scan_stored(&mut |k, v| match is_position_key(k) {
            true => Ok(()),
            false => out.push(k, v),
        })?;
        out.flush()?;
        // Last, in one transaction: the log position of an empty log, the
        // format, and the marker gone.
        kv.apply(&[
            (
                META_CHECKPOINT_LSN.to_vec(),
                Some(0u64.to_be_bytes().to_vec()),
            ),
            (META_SEGMENT_BYTES.to_vec(), Some(segment)),
            (META_FORMAT.to_vec(), Some(format)),
            (META_MIGRATING.to_vec(), None),
        ])?;
        Ok(out.report)
    }

    /// Copies the registry in an etcd cluster into a new local database at
    /// `db`. Takes a checkpoint first (so this node must be able to take
    /// the checkpoint lock), and fails if a write arrives meanwhile: stop
    /// every writer before migrating.
    pub fn migrate_from_etcd(target: &EtcdTarget, db: &Path) -> Result<MigrateReport> {
        if db.exists() {
            return Err(Error::invalid(
                "destination",
                format!("{} exists: migrate into a new path", db.display()),
            ));
        }
        let conn = Arc::new(Conn::connect(&target.endpoints)?);
        let store_prefix = [target.prefix.as_bytes(), b"store/"].concat();
        // Nothing is created by a migration out of the cluster.
        if EtcdKv::new(conn.clone(), &store_prefix, target.limits)
            .get(META_FORMAT)?
            .is_none()
        {
            return Err(Error::NoDatabase {
                path: format!("etcd:{}/{}", target.endpoints.join(","), target.prefix).into(),
                why: "no registry under this prefix of the cluster".into(),
            });
        }
        let node = Registry::open_with(
            Config::etcd(target.endpoints.clone(), &target.prefix).etcd_limits(target.limits),
        )?;
        node.checkpoint()?;
        let devices = node.stats().devices;
        node.close()?;
        let log = OpLog::reader(conn.clone(), target.prefix.as_bytes());
        // The store as of one revision, checked to hold every operation.
        let pin = log.current_revision()?;
        let kv = EtcdKv::new(conn, &store_prefix, target.limits).pinned(pin);
        let view = crate::store::PagedStore::open(kv, 1 << 20, 0)?;
        if log.count()? > 0 {
            return Err(Error::invalid(
                "etcd registry",
                "written to during the migration: stop every writer and migrate again",
            ));
        }
        let building = db.with_extension("migrating");
        if building.exists() {
            std::fs::remove_dir_all(&building)
                .map_err(|e| Error::io("removing an unfinished migration", e))?;
        }
        Registry::open(&building)?.close()?;
        let report = copy_into_local(&view, &building, devices)?;
        std::fs::rename(&building, db)
            .map_err(|e| Error::io("moving the migrated database into place", e))?;
        if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::log::segments::sync_dir(parent, &None)?;
        }
        Ok(report)
    }
}

/// Writes every stored entry of `view` into the new database at `db`
/// (its own log position kept), durably.
fn copy_into_local(view: &dyn KvStore, db: &Path, devices: u64) -> Result<MigrateReport> {
    let out = SledStore::open(
        &db.join("store"),
        None,
        crate::limits::TOOL_SLED_CACHE_BYTES,
        true,
    )?;
    let limits = TxnLimits {
        max_ops: 10_000,
        max_request_bytes: 8 << 20,
    };
    let mut batch = Batcher {
        out: &out,
        writes: Vec::new(),
        bytes: 0,
        limits,
        report: MigrateReport {
            devices,
            ..MigrateReport::default()
        },
    };
    view.scan_stored(&mut |k, v| match k == META_CHECKPOINT_LSN
        || k == META_SEGMENT_BYTES
        || k == META_MIGRATING
    {
        true => Ok(()),
        false => batch.push(k, v),
    })?;
    batch.flush()?;
    out.sync()?;
    Ok(batch.report)
}

//! Opening a registry kept in an etcd cluster (feature `etcd`, DESIGN.md
//! 15): connect, load the checkpointed state from the store under
//! `<prefix>store/`, then apply the operation log from the checkpoint's
//! revision on, until this node has every operation committed before the
//! open; from then on the watch keeps it current.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use std::time::Duration;

use super::cluster::{run_applier, run_leader, Exporters, Node};
use super::cluster_ckpt::{run_checkpointer, Checkpoints, StoreSpec};
use super::{Engine, Inner, Registry};
use crate::codec::{META_CAP, META_CHECKPOINT_LSN, META_FORMAT, STORE_FORMAT};
use crate::config::{Config, EtcdTarget};
use crate::error::{Error, Result};
use crate::etcd::{Conn, EtcdKv, OpLog};
use crate::metrics::Recorder;
use crate::store::{load_state, KvStore};
use crate::writer::FailFlag;

/// Bytes of an operation request beyond its body (keys, framing; generous).
const OP_REQUEST_OVERHEAD_BYTES: usize = 4_096;

pub(super) fn open(config: Config, target: EtcdTarget) -> Result<Registry> {
    let conn = Arc::new(Conn::connect(&target.endpoints)?);
    let prefix = target.prefix.as_bytes();
    let store_prefix = [prefix, b"store/"].concat();
    let cap = config
        .max_devices_per_person
        .unwrap_or(crate::limits::DEFAULT_MAX_DEVICES_PER_PERSON);
    let init = EtcdKv::new(conn.clone(), &store_prefix, target.limits);
    let path = PathBuf::from(format!(
        "etcd:{}/{}",
        target.endpoints.join(","),
        target.prefix
    ));
    // A read-only node writes nothing: it neither creates the registry nor
    // joins the log; it takes no lock and starts no leader.
    if init.get(super::etcd_migrate::META_MIGRATING)?.is_some() {
        return Err(Error::NoDatabase {
            path,
            why: "a migration into this prefix did not finish: delete the prefix's keys and migrate again".into(),
        });
    }
    let log = match config.read_only {
        false => {
            init_store(&init, cap, config.log_segment_bytes)?;
            OpLog::join(conn.clone(), prefix)?
        }
        true => {
            if init.get(META_FORMAT)?.is_none() {
                return Err(Error::NoDatabase {
                    path,
                    why: "no registry under this prefix of the cluster".into(),
                });
            }
            OpLog::reader(conn.clone(), prefix)
        }
    };
    let spec = StoreSpec {
        conn,
        prefix: store_prefix,
        limits: target.limits,
        // Checkpoint chunks must fit in one request of the cluster.
        chunk_bytes: config
            .checkpoint_chunk_bytes
            .min(target.limits.max_request_bytes / 2),
        delta_bytes: config.page_delta_bytes,
    };
    // The store as of now: one consistent version, whatever the lock
    // holder writes meanwhile.
    let pin = log.current_revision()?;
    let view = spec.view_at(pin)?;
    let loaded = load_state(
        &view,
        cap,
        config.log_segment_bytes,
        config.history_retention_ms,
    )?;
    super::check_stored_cap(&config, loaded.state.cap)?;
    // As in `Registry::open_with`: the load's transient pages go back.
    crate::heap::release_free_pages();
    let from = i64::try_from(loaded.checkpoint_lsn).unwrap_or(i64::MAX);
    let target_rev = log.last_revision()?;
    let watch = log.watch(from.saturating_add(1));
    let state = Arc::new(crate::state::StateLock::new(loaded.state));
    let failed = Arc::new(FailFlag::default());
    let max_body = target
        .limits
        .max_request_bytes
        .saturating_sub(OP_REQUEST_OVERHEAD_BYTES);
    let interval = Duration::from_millis(config.checkpoint_interval_ms.max(1));
    let lock_key = [prefix, b"checkpointer"].concat();
    let exporters = Exporters {
        conn: spec.conn.clone(),
        prefix: [prefix, b"exporter/"].concat(),
        held: Mutex::new(Default::default()),
    };
    let ckpt = Checkpoints::new(spec, lock_key, interval, view, pin);
    let store: Arc<dyn KvStore> = ckpt.view.clone();
    let (node, requests) = Node::new(
        log,
        state.clone(),
        failed.clone(),
        from,
        max_body,
        (ckpt, exporters),
    );
    let applier = spawn("devreg-etcd-apply", {
        let node = node.clone();
        move || run_applier(node, watch)
    })?;
    let mut threads = vec![applier];
    if !config.read_only {
        threads.push(spawn("devreg-etcd-lead", {
            let node = node.clone();
            move || run_leader(node, requests)
        })?);
        threads.push(spawn("devreg-etcd-ckpt", {
            let node = node.clone();
            move || run_checkpointer(node)
        })?);
    }
    let reg = Registry {
        inner: Arc::new(Inner {
            path: PathBuf::from(format!(
                "etcd:{}{}",
                target.endpoints.join(","),
                target.prefix
            )),
            read_only: false,
            soft_limit: config.soft_failures_to_suppress,
            history_retention_ms: config.history_retention_ms,
            durability: config.durability,
            max_batch_bytes: max_body.saturating_sub(64),
            state,
            engine: Engine::Cluster(node.clone()),
            failed,
            store,
            threads: Mutex::new(threads),
            metrics: Arc::new(Recorder::new()),
            _lock: None,
            _trim: crate::heap::TrimOnDrop,
        }),
    };
    // Every operation committed before the open is applied before it returns.
    node.wait_applied(target_rev, None)?;
    Ok(reg)
}

/// Writes a new store's first metadata, unless a node did already (the
/// load then finds it; see `EtcdKv::init_if_absent`).
fn init_store(kv: &EtcdKv, cap: u32, segment_bytes: u64) -> Result<()> {
    let writes = [
        (
            META_FORMAT.to_vec(),
            Some(STORE_FORMAT.to_be_bytes().to_vec()),
        ),
        (META_CAP.to_vec(), Some(cap.to_be_bytes().to_vec())),
        (
            crate::store::META_SEGMENT_BYTES.to_vec(),
            Some(segment_bytes.to_be_bytes().to_vec()),
        ),
        (
            META_CHECKPOINT_LSN.to_vec(),
            Some(0u64.to_be_bytes().to_vec()),
        ),
    ];
    kv.init_if_absent(META_FORMAT, &writes).map(|_| ())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io(format!("starting the {name} thread"), e))
}

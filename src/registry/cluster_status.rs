//! `Registry::cluster_status` (feature `etcd`, `devreg cluster status`):
//! the cluster's members and leader, this node's place in the operation
//! log, the checkpoint lock and each sink's exporter.

use serde::Serialize;

use super::cluster::Node;
use crate::error::Result;
use crate::etcd::{Conn, EtcdKv, TxnLimits};
use crate::kv::KvStore;

/// One etcd member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterMember {
    /// Its member id, in hex (as etcd prints it).
    pub id: String,
    /// Its `--name`.
    pub name: String,
    /// Its client URLs.
    pub client_urls: Vec<String>,
    /// Whether it is the Raft leader now.
    pub leader: bool,
}

/// Who exports a sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SinkExporter {
    /// The sink.
    pub sink: String,
    /// The node holding its exporter lease.
    pub node: String,
    /// Whether that is this node.
    pub this_node: bool,
}

/// What `devreg cluster status` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// The cluster's members.
    pub members: Vec<ClusterMember>,
    /// This node's id in the operation log.
    pub node: String,
    /// The revision of the last operation this node applied.
    pub applied_revision: i64,
    /// The revision of the last operation any node committed.
    pub last_operation_revision: i64,
    /// Revisions committed that this node has not applied yet (0: current).
    pub watch_lag_revisions: i64,
    /// Operations in the log, not yet covered by a checkpoint.
    pub operations_in_log: u64,
    /// Whether this node holds the checkpoint lock.
    pub checkpoint_holder: bool,
    /// Why this node's last checkpoint failed, if it did.
    pub last_checkpoint_error: Option<String>,
    /// Every sink's exporter, by sink.
    pub exporters: Vec<SinkExporter>,
}

pub(crate) fn status(
    node: &Node,
    conn: &std::sync::Arc<Conn>,
    exporter_prefix: &[u8],
) -> Result<ClusterStatus> {
    let applied = node.applied();
    let last = node.log().last_revision()?;
    let members = conn.call(
        "listing members",
        crate::etcd::Retry::Idempotent,
        |mut c| async move {
            let list = c.member_list().await?;
            let leader = c.status().await?.leader();
            Ok(list
                .members()
                .iter()
                .map(|m| ClusterMember {
                    id: format!("{:x}", m.id()),
                    name: m.name().to_owned(),
                    client_urls: m.client_urls().to_vec(),
                    leader: m.id() == leader,
                })
                .collect::<Vec<_>>())
        },
    )?;
    let me = node.id().to_string();
    let mut exporters = Vec::new();
    EtcdKv::new(conn.clone(), exporter_prefix, TxnLimits::default()).scan_prefix(
        &[],
        &mut |k, v| {
            let holder = String::from_utf8_lossy(v).into_owned();
            exporters.push(SinkExporter {
                sink: String::from_utf8_lossy(k).into_owned(),
                this_node: holder == me,
                node: holder,
            });
            Ok(())
        },
    )?;
    Ok(ClusterStatus {
        members,
        node: me,
        applied_revision: applied,
        last_operation_revision: last,
        watch_lag_revisions: (last - applied).max(0),
        operations_in_log: node.log().count()?,
        checkpoint_holder: node.checkpoints().is_holder(),
        last_checkpoint_error: node.checkpoints().last_error.lock().clone(),
        exporters,
    })
}

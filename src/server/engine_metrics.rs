//! The engine's own metrics (`Registry::metrics`) in `/metrics`: a
//! prometheus-client `Collector` read at each scrape. Operations by kind
//! and outcome (every write, not only HTTP ones), group-commit sizes, log
//! fsync latency, log and store bytes, checkpoints and their durations,
//! and whether the registry failed. Times are converted to seconds, as
//! Prometheus names them.

use std::fmt::Error as FmtError;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;

use crate::metrics::Histogram;
use crate::registry::Registry;

/// Reads the registry's metrics snapshot when scraped.
pub(crate) struct EngineCollector {
    pub reg: Arc<Registry>,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCollector")
            .field("path", &self.reg.path())
            .finish()
    }
}

/// No exemplar (the type the encoder wants spelled out).
const NO_EXEMPLAR: Option<&Exemplar<NoLabelSet, f64>> = None;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), FmtError> {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter(&v, NO_EXEMPLAR)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), FmtError> {
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A histogram whose values are multiplied by `scale` (e.g. µs to s).
fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Histogram,
    scale: f64,
) -> Result<(), FmtError> {
    let bounds = h.bounds.iter().map(|&b| b as f64 * scale).chain([f64::MAX]);
    let buckets: Vec<(f64, u64)> = bounds.zip(h.counts.iter().copied()).collect();
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(h.sum as f64 * scale, h.count, &buckets, None)
}

impl Collector for EngineCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), FmtError> {
        let m = self.reg.metrics();
        let help = "Registry operations by kind and outcome (every write, not only HTTP ones).";
        let mut family = e.encode_descriptor("operations", help, None, MetricType::Counter)?;
        for op in &m.ops {
            let labels = [("kind", op.kind), ("outcome", op.outcome)];
            family
                .encode_family(&labels)?
                .encode_counter(&op.count, NO_EXEMPLAR)?;
        }
        let help = "Log records appended per group commit.";
        histogram(
            &mut e,
            "group_commit_records",
            help,
            &m.group_commit_records,
            1.0,
        )?;
        let help = "Latency of each fdatasync of the log, in seconds.";
        histogram(&mut e, "log_fsync_seconds", help, &m.log_fsync_us, 1e-6)?;
        let help = "Bytes written to the log (records and padding).";
        counter(&mut e, "log_written_bytes", help, m.log_bytes_written)?;
        let help = "Bytes the log's files take on disk.";
        gauge(&mut e, "log_disk_bytes", help, m.log_disk_bytes)?;
        let help = "Bytes the log may hold before writers wait for a checkpoint.";
        gauge(&mut e, "log_bound_bytes", help, m.log_bound_bytes)?;
        let help = "Duration of each checkpoint written, in seconds.";
        histogram(
            &mut e,
            "checkpoint_duration_seconds",
            help,
            &m.checkpoint_ms,
            1e-3,
        )?;
        let help = "Checkpoints that failed.";
        counter(&mut e, "checkpoint_failures", help, m.checkpoint_failures)?;
        let help = "Checkpoints written beside a page merge, between its batches.";
        counter(
            &mut e,
            "checkpoints_beside_merges",
            help,
            m.checkpoints_beside_merges,
        )?;
        let help = "Bytes of keys and values checkpoints handed to the store.";
        counter(&mut e, "store_written_bytes", help, m.store_bytes_written)?;
        let help = "Store compactions done.";
        counter(&mut e, "store_compactions", help, m.compactions)?;
        let help = "Store compactions abandoned with the store left as it was.";
        counter(
            &mut e,
            "store_compactions_abandoned",
            help,
            m.compactions_abandoned,
        )?;
        let help = "Bytes of disk store compactions gave back.";
        counter(
            &mut e,
            "store_compaction_freed_bytes",
            help,
            m.compaction_freed_bytes,
        )?;
        let help = "Passes of the store compactions done (the store is reopened between two).";
        counter(&mut e, "store_compaction_passes", help, m.compaction_passes)?;
        let help = "Page merges committed (delta records folded into new page versions).";
        counter(&mut e, "store_page_merges", help, m.page_merges)?;
        let help = "Bytes of page versions page merges handed to the store.";
        counter(
            &mut e,
            "store_page_merge_written_bytes",
            help,
            m.page_merge_bytes_written,
        )?;
        let help =
            "Times the C heap's free pages were handed back after a page merge or a compaction.";
        counter(&mut e, "heap_trims", help, m.heap_trims)?;
        let help = "1 once the registry failed and refuses writes until reopened.";
        gauge(&mut e, "registry_failed", help, u64::from(m.failed))
    }
}

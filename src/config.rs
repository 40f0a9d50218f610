//! How a registry is opened.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::limits::*;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After an fdatasync of the log covering the write (shared by every
    /// concurrent caller: group commit). Survives a process crash and power loss.
    Immediate,
    /// Once the log record is written to the operating system. Survives a
    /// process crash but not a power loss; the log is fdatasynced every
    /// `eventual_sync_interval_ms`.
    Eventual,
}

/// Options for [`Registry::open_with`](crate::Registry::open_with).
#[derive(Clone, Debug)]
pub struct Config {
    /// The database directory; created (mode 0700) if missing.
    pub path: PathBuf,
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Most devices one person may own; older ones are evicted. A stored
    /// setting: given to a new database it is its initial cap (`None`: 20);
    /// given to an existing database whose stored cap differs, the open
    /// fails (`Error::Invalid` naming it): only
    /// [`Registry::set_max_devices_per_person`](crate::Registry::set_max_devices_per_person)
    /// changes it. Ignored by a read-only open.
    pub max_devices_per_person: Option<u32>,
    /// Open without writing anything (`Registry::open_read_only`): no file
    /// is created or changed by devreg (its store's own housekeeping
    /// aside, see DESIGN.md 4.4), every write fails with `Error::ReadOnly`,
    /// and a missing database is `Error::NoDatabase`.
    pub read_only: bool,
    /// Create the database when the path is absent or an empty directory
    /// (the default); when false, a missing database is `Error::NoDatabase`.
    pub create_if_missing: bool,
    /// In `Eventual` mode, the longest a written record waits for an fdatasync.
    pub eventual_sync_interval_ms: u64,
    /// Size of each preallocated log segment; fixed when the database is created.
    pub log_segment_bytes: u64,
    /// Segments the log may use before writers wait for a checkpoint
    /// (with `log_bytes_per_device` set, a large registry may use more).
    pub max_log_segments: u32,
    /// Log bytes per registered device the log may hold beyond
    /// `max_log_segments` (0, the default: `max_log_segments` is the
    /// bound). A page merge of a large store runs for seconds, and the
    /// writes made meanwhile go into the log; a larger log lets a bulk load
    /// go on through it, for more memory and a longer recovery after a
    /// crash (DESIGN.md 5.2).
    pub log_bytes_per_device: u64,
    /// Longest time between checkpoints while there are changes.
    pub checkpoint_interval_ms: u64,
    /// Log bytes written since the last checkpoint that start the next one
    /// (`None`: half a log segment). Smaller means smaller sled batches.
    pub checkpoint_log_bytes: Option<u64>,
    /// Changed records held in memory (devices, feed entries, known
    /// persons, deliverability) that start the next checkpoint whatever
    /// the log says (`limits::CHECKPOINT_PENDING_RECORDS`, about 1M: a
    /// sink's first drain marks up to 1,000 known persons per short
    /// acknowledgement record).
    pub checkpoint_pending_records: usize,
    /// How long ownership history is kept (by commit time); older entries
    /// are dropped as their token changes and at checkpoints.
    pub history_retention_ms: u64,
    /// Most bytes of pages one sled batch of a checkpoint carries (set by
    /// `memory_budget_bytes`: 1/256 of the budget, at most
    /// `limits::CHECKPOINT_CHUNK_BYTES`); a checkpoint of any size is
    /// written in chunks of this size and committed at the end.
    pub checkpoint_chunk_bytes: usize,
    /// Bytes of changed records a checkpoint may append as delta pages
    /// before one merges them all into the pages (set by
    /// `memory_budget_bytes`: 1/4 of the budget; 0 merges at every checkpoint).
    /// The history's deltas are also held in memory, and a scan or merge
    /// reads the others back from disk in passes of at most this many
    /// bytes; a large registry may gather more on disk
    /// (`delta_disk_bytes_per_device`).
    pub page_delta_bytes: usize,
    /// Bytes of delta records, every keyspace, the store may gather on disk
    /// per device before a merge folds them all into the pages (default
    /// `limits::DELTA_DISK_BYTES_PER_DEVICE`, 32; the bound is at least
    /// `page_delta_bytes`). More means fewer merges (each rewrites about
    /// every page) for more disk; past `page_delta_bytes` alone, only the
    /// history's records are merged (DESIGN.md 4.3, "History merges").
    pub delta_disk_bytes_per_device: u64,
    /// sled's files are compacted (copied into a new store, DESIGN.md 4.6)
    /// after a checkpoint once they take at least this many bytes and
    /// `limits::COMPACT_SPACE_FACTOR` times the live bytes of the last
    /// compaction (default `limits::COMPACT_MIN_STORE_BYTES`, 64 MiB;
    /// `u64::MAX` never compacts).
    pub compact_min_store_bytes: u64,
    /// A compaction copies the store in passes of about this many bytes of
    /// entries (set by `memory_budget_bytes`: 1/8 of the budget), closing
    /// and reopening both stores between two passes: sled keeps what a
    /// scan read resident until its store is closed, so this bounds the
    /// memory a compaction of any size adds (DESIGN.md 4.6).
    pub compact_pass_bytes: u64,
    /// A compaction runs only while the live bytes of the last one are at
    /// most this (set by `memory_budget_bytes`: the budget itself). A copy
    /// that passes it stops there and none is tried again until the next
    /// open. Above it sled's own costs dominate (DESIGN.md 4.6): each reopen
    /// between two passes rewrites every free segment of the store, and at
    /// 10^7 devices a copy hung inside sled.
    pub compact_max_live_bytes: u64,
    /// The open's load closes and opens the store each time it has read
    /// this many bytes of pages (set by `memory_budget_bytes`: twice the
    /// budget; `u64::MAX`: never): sled keeps the nodes of every page a
    /// scan read until it is closed, about 1 GB at 10^7 devices, on top of
    /// the state (DESIGN.md 6, "The open's scan sheds sled's nodes").
    pub load_shed_bytes: u64,
    /// sled's cache capacity (default 3/8 of the memory budget). sled evicts
    /// late whatever it is set to (DESIGN.md section 6).
    pub sled_cache_bytes: u64,
    /// Consecutive soft failures that suppress a device for
    /// `most_recent_deliverable` (default
    /// `limits::DEFAULT_SOFT_FAILURES_TO_SUPPRESS`, 3; 1..=1000). A query
    /// setting: nothing stored depends on it.
    pub soft_failures_to_suppress: u32,
    /// How many steps above the opening thread's nice value the
    /// checkpointer runs, and every thread it starts (page merges, sled's
    /// I/O threads, compactions), at most 19: 0..=19, default
    /// `limits::DEFAULT_BACKGROUND_NICE` (10); 0 leaves them at the
    /// opener's priority. Linux only (DESIGN.md 7, "Background work
    /// yields").
    pub background_nice: i32,
    /// How long, at most, a leader whose group will be synced waits for
    /// more requests while it holds fewer than the last synced group did
    /// (default `limits::DEFAULT_GROUP_GATHER_US`, 150; at most
    /// `limits::MAX_GROUP_GATHER_US`, 10,000; 0 never waits). The last
    /// group's callers, answered a moment before, are queueing their next
    /// writes: each that makes it shares this fsync instead of paying the
    /// next one (DESIGN.md 7). One writer alone never waits.
    pub group_gather_us: u64,
    /// Test-only: devices loaded at open from which the store is reopened
    /// (default `limits::REOPEN_STORE_AFTER_DEVICES`).
    #[doc(hidden)]
    pub reopen_store_after_devices: u64,
    /// The budget last given to `memory_budget_bytes` (checked at open).
    memory_budget: u64,
    /// Test-only I/O fault injection (`FaultPlan`); not a stable API.
    #[doc(hidden)]
    pub faults: Option<std::sync::Arc<crate::fault::FaultPlan>>,
    /// The etcd cluster the registry lives in instead of `path` (feature
    /// `etcd`, [`Config::etcd`], DESIGN.md 15); `None`: a local database.
    #[cfg(feature = "etcd")]
    pub etcd: Option<EtcdTarget>,
}

/// Where a registry lives in an etcd cluster ([`Config::etcd`]).
#[cfg(feature = "etcd")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTarget {
    /// Client URLs of the cluster's members (`http://host:port`).
    pub endpoints: Vec<String>,
    /// The prefix of every key of this registry (`devreg/` by default):
    /// several registries may share a cluster under different prefixes.
    pub prefix: String,
    /// The cluster's `--max-txn-ops` and `--max-request-bytes`.
    pub limits: crate::etcd::TxnLimits,
}

impl Config {
    /// Defaults: immediate durability, the stored per-person cap (20 for a
    /// new database), 16 MiB log segments.
    ///
    /// ```
    /// let c = devreg::Config::new("/tmp/x").max_devices_per_person(5);
    /// assert_eq!(c.max_devices_per_person, Some(5));
    /// ```
    pub fn new(path: impl AsRef<Path>) -> Config {
        Config {
            path: path.as_ref().to_owned(),
            durability: Durability::Immediate,
            max_devices_per_person: None,
            read_only: false,
            create_if_missing: true,
            eventual_sync_interval_ms: 1000,
            log_segment_bytes: DEFAULT_LOG_SEGMENT_BYTES,
            max_log_segments: DEFAULT_MAX_LOG_SEGMENTS,
            log_bytes_per_device: crate::limits::DEFAULT_LOG_BYTES_PER_DEVICE,
            checkpoint_interval_ms: 30_000,
            checkpoint_log_bytes: None,
            checkpoint_pending_records: crate::limits::CHECKPOINT_PENDING_RECORDS,
            history_retention_ms: crate::history::DEFAULT_HISTORY_RETENTION_MS,
            // Set from the budget just below.
            checkpoint_chunk_bytes: 0,
            page_delta_bytes: 0,
            delta_disk_bytes_per_device: crate::limits::DELTA_DISK_BYTES_PER_DEVICE,
            sled_cache_bytes: 0,
            compact_min_store_bytes: crate::limits::COMPACT_MIN_STORE_BYTES,
            // Set from the budget just below.
            compact_pass_bytes: 0,
            compact_max_live_bytes: 0,
            load_shed_bytes: 0,
            memory_budget: 0,
            soft_failures_to_suppress: crate::limits::DEFAULT_SOFT_FAILURES_TO_SUPPRESS,
            background_nice: crate::limits::DEFAULT_BACKGROUND_NICE,
            group_gather_us: crate::limits::DEFAULT_GROUP_GATHER_US,
            reopen_store_after_devices: REOPEN_STORE_AFTER_DEVICES,
            faults: None,
            #[cfg(feature = "etcd")]
            etcd: None,
        }
        .memory_budget_bytes(DEFAULT_MEMORY_BUDGET_BYTES)
    }

    /// A registry kept in the etcd cluster at `endpoints`, every key under
    /// `prefix` (feature `etcd`, DESIGN.md 15). Every write is committed by
    /// the cluster's quorum before it is acknowledged (`durability` has
    /// nothing weaker to offer), and every node opened on the same cluster
    /// and prefix applies every write, in one order.
    ///
    /// ```
    /// let c = devreg::Config::etcd(vec!["http://127.0.0.1:2379".into()], "pushes/");
    /// assert_eq!(c.etcd.unwrap().prefix, "pushes/");
    /// ```
    #[cfg(feature = "etcd")]
    pub fn etcd(endpoints: Vec<String>, prefix: &str) -> Config {
        let mut c = Config::new(format!("etcd:{}", prefix));
        c.etcd = Some(EtcdTarget {
            endpoints,
            prefix: prefix.to_owned(),
            limits: crate::etcd::TxnLimits::default(),
        });
        c
    }

    /// The cluster's transaction limits, when it was started with more than
    /// etcd's defaults (`--max-txn-ops`, `--max-request-bytes`); only for a
    /// [`Config::etcd`] registry.
    #[cfg(feature = "etcd")]
    pub fn etcd_limits(mut self, limits: crate::etcd::TxnLimits) -> Config {
        if let Some(t) = self.etcd.as_mut() {
            t.limits = limits;
        }
        self
    }

    /// The memory budget (`memory_budget_bytes`): a backup copies the
    /// store in passes of a share of it (`Registry::backup`).
    pub(crate) fn memory_budget(&self) -> u64 {
        self.memory_budget
    }

    /// Sets the memory the store may use besides the devices themselves,
    /// and cuts it up: 3/8 for sled's cache, 1/4 for delta pages (held
    /// in memory too), 1/256 (at most `CHECKPOINT_CHUNK_BYTES`) per
    /// checkpoint chunk, 1/8 per pass of a store compaction (which runs
    /// while the live bytes fit in the budget); the open's load sheds
    /// sled's nodes after reading twice the budget. The rest is headroom for sled's own buffers and a
    /// checkpoint's change list. The default, 256 MiB, was chosen by
    /// measurement at 10^6 and 10^7 devices (DESIGN.md section 13). At least 64 MiB.
    ///
    /// ```
    /// let c = devreg::Config::new("/tmp/x").memory_budget_bytes(256 << 20);
    /// assert_eq!(c.sled_cache_bytes, 96 << 20);
    /// assert_eq!(c.page_delta_bytes, 64 << 20);
    /// assert_eq!(c.checkpoint_chunk_bytes, 1 << 20);
    /// assert_eq!(c.compact_pass_bytes, 32 << 20);
    /// assert_eq!(c.compact_max_live_bytes, 256 << 20);
    /// assert_eq!(c.load_shed_bytes, 512 << 20);
    /// ```
    pub fn memory_budget_bytes(mut self, bytes: u64) -> Config {
        self.memory_budget = bytes;
        self.sled_cache_bytes = bytes / 8 * 3;
        self.compact_pass_bytes = bytes / 8;
        self.compact_max_live_bytes = bytes;
        self.load_shed_bytes = bytes.saturating_mul(2);
        self.page_delta_bytes = usize::try_from(bytes / 4).unwrap_or(usize::MAX);
        self.checkpoint_chunk_bytes = usize::try_from(bytes / 256)
            .map_or(CHECKPOINT_CHUNK_BYTES, |b| b.min(CHECKPOINT_CHUNK_BYTES));
        self
    }

    /// Sets how many consecutive soft failures suppress a device.
    ///
    /// ```
    /// let c = devreg::Config::new("/tmp/x").soft_failures_to_suppress(5);
    /// assert_eq!(c.soft_failures_to_suppress, 5);
    /// ```
    pub fn soft_failures_to_suppress(mut self, n: u32) -> Config {
        self.soft_failures_to_suppress = n;
        self
    }

    /// Sets the durability mode.
    pub fn durability(mut self, d: Durability) -> Config {
        self.durability = d;
        self
    }

    /// Sets the per-person device cap.
    pub fn max_devices_per_person(mut self, n: u32) -> Config {
        self.max_devices_per_person = Some(n);
        self
    }

    /// Opens read-only (see the field).
    pub fn read_only(mut self, yes: bool) -> Config {
        self.read_only = yes;
        self
    }

    /// Whether a missing database is created (see the field).
    pub fn create_if_missing(mut self, yes: bool) -> Config {
        self.create_if_missing = yes;
        self
    }

    /// Sets the log segment size (used when the database is created).
    pub fn log_segment_bytes(mut self, n: u64) -> Config {
        self.log_segment_bytes = n;
        self
    }

    /// Sets how many log segments may be in use before writers wait.
    pub fn max_log_segments(mut self, n: u32) -> Config {
        self.max_log_segments = n;
        self
    }

    /// Sets the log bytes per registered device the log may hold beyond
    /// `max_log_segments` (0, the default, turns the per-device bound off).
    ///
    /// ```
    /// // A bulk load of 10^7 devices: up to 240 MB of log.
    /// let c = devreg::Config::new("/tmp/x").log_bytes_per_device(24);
    /// assert_eq!(c.log_bytes_per_device, 24);
    /// ```
    pub fn log_bytes_per_device(mut self, bytes: u64) -> Config {
        self.log_bytes_per_device = bytes;
        self
    }

    /// Sets how many steps above the opening thread's nice value the
    /// checkpointer and the threads it starts run (0..=19, checked at
    /// open; 0: the opener's own priority).
    ///
    /// ```
    /// let c = devreg::Config::new("/tmp/x").background_nice(0);
    /// assert_eq!(c.background_nice, 0);
    /// ```
    pub fn background_nice(mut self, nice: i32) -> Config {
        self.background_nice = nice;
        self
    }

    /// Sets how long a synced group waits, at most, for the callers of the
    /// last one (see the field; 0..=10,000 µs, checked at open).
    ///
    /// ```
    /// let c = devreg::Config::new("/tmp/x").group_gather_us(0);
    /// assert_eq!(c.group_gather_us, 0);
    /// ```
    pub fn group_gather_us(mut self, us: u64) -> Config {
        self.group_gather_us = us;
        self
    }

    /// Sets how many bytes of log start a checkpoint.
    pub fn checkpoint_log_bytes(mut self, bytes: u64) -> Config {
        self.checkpoint_log_bytes = Some(bytes);
        self
    }

    /// Sets how many changed records held in memory start a checkpoint
    /// (at least 1).
    pub fn checkpoint_pending_records(mut self, records: usize) -> Config {
        self.checkpoint_pending_records = records.max(1);
        self
    }

    /// Sets how long a written record may wait for its fdatasync in
    /// `Eventual` mode.
    pub fn eventual_sync_interval_ms(mut self, ms: u64) -> Config {
        self.eventual_sync_interval_ms = ms;
        self
    }

    /// Sets the longest time between checkpoints.
    pub fn checkpoint_interval_ms(mut self, ms: u64) -> Config {
        self.checkpoint_interval_ms = ms;
        self
    }

    /// Sets how long ownership history is kept.
    pub fn history_retention_ms(mut self, ms: u64) -> Config {
        self.history_retention_ms = ms;
        self
    }

    /// Sets the most bytes of pages per checkpoint batch (at least 1).
    pub fn checkpoint_chunk_bytes(mut self, bytes: usize) -> Config {
        self.checkpoint_chunk_bytes = bytes;
        self
    }

    /// Sets the bound on delta pages before a merge (0: merge every time).
    pub fn page_delta_bytes(mut self, bytes: usize) -> Config {
        self.page_delta_bytes = bytes;
        self
    }

    /// Sets the bytes of deltas per device the store may gather on disk
    /// before a full merge (see the field).
    ///
    /// ```
    /// let c = devreg::Config::new("/tmp/x").delta_disk_bytes_per_device(64);
    /// assert_eq!(c.delta_disk_bytes_per_device, 64);
    /// ```
    pub fn delta_disk_bytes_per_device(mut self, bytes: u64) -> Config {
        self.delta_disk_bytes_per_device = bytes;
        self
    }

    /// Sets the size of sled's files from which a checkpoint may be followed
    /// by a compaction (`u64::MAX`: never).
    pub fn compact_min_store_bytes(mut self, bytes: u64) -> Config {
        self.compact_min_store_bytes = bytes;
        self
    }

    /// Sets the bytes a compaction copies between two reopens of the store
    /// (at least 1; `memory_budget_bytes` sets it too, so call this after).
    pub fn compact_pass_bytes(mut self, bytes: u64) -> Config {
        self.compact_pass_bytes = bytes.max(1);
        self
    }

    /// Sets the bytes of pages the open's load reads between two sheds of
    /// sled's nodes (`u64::MAX`: never; `memory_budget_bytes` sets it too,
    /// so call this after).
    pub fn load_shed_bytes(mut self, bytes: u64) -> Config {
        self.load_shed_bytes = bytes;
        self
    }

    /// Test-only: every I/O call of the registry asks `plan` first.
    #[doc(hidden)]
    pub fn fault_plan(mut self, plan: std::sync::Arc<crate::fault::FaultPlan>) -> Config {
        self.faults = Some(plan);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.history_retention_ms == 0 {
            return Err(Error::invalid("history_retention_ms", "must be at least 1"));
        }
        if let Some(cap) = self.max_devices_per_person {
            crate::model::validate_cap(cap)?;
        }
        if self.log_segment_bytes < 64 << 10 || self.log_segment_bytes > 1 << 30 {
            return Err(Error::invalid(
                "log_segment_bytes",
                format!("{} is outside 64 KiB..=1 GiB", self.log_segment_bytes),
            ));
        }
        if self.memory_budget < MIN_MEMORY_BUDGET_BYTES {
            return Err(Error::invalid(
                "memory_budget_bytes",
                format!(
                    "{} is under the minimum of {MIN_MEMORY_BUDGET_BYTES}",
                    self.memory_budget
                ),
            ));
        }
        if self.load_shed_bytes < MIN_MEMORY_BUDGET_BYTES {
            return Err(Error::invalid(
                "load_shed_bytes",
                format!(
                    "{} is under the minimum of {MIN_MEMORY_BUDGET_BYTES} (u64::MAX: never)",
                    self.load_shed_bytes
                ),
            ));
        }
        let max_soft = crate::limits::MAX_SOFT_FAILURES_TO_SUPPRESS;
        if !(1..=max_soft).contains(&self.soft_failures_to_suppress) {
            return Err(Error::invalid(
                "soft_failures_to_suppress",
                format!(
                    "{} is outside 1..={max_soft}",
                    self.soft_failures_to_suppress
                ),
            ));
        }
        let max_nice = crate::limits::MAX_BACKGROUND_NICE;
        if !(0..=max_nice).contains(&self.background_nice) {
            return Err(Error::invalid(
                "background_nice",
                format!("{} is outside 0..={max_nice}", self.background_nice),
            ));
        }
        let max_gather = crate::limits::MAX_GROUP_GATHER_US;
        if self.group_gather_us > max_gather {
            return Err(Error::invalid(
                "group_gather_us",
                format!(
                    "{} is over the maximum of {max_gather}",
                    self.group_gather_us
                ),
            ));
        }
        if self.max_log_segments < 2 {
            return Err(Error::invalid("max_log_segments", "must be at least 2"));
        }
        let max_per_device = crate::limits::MAX_LOG_BYTES_PER_DEVICE;
        if self.log_bytes_per_device > max_per_device {
            return Err(Error::invalid(
                "log_bytes_per_device",
                format!(
                    "{} is over the maximum of {max_per_device}",
                    self.log_bytes_per_device
                ),
            ));
        }
        Ok(())
    }
}

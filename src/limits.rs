//! Every limit devreg enforces, named in one place (TigerBeetle style).

/// Longest accepted device token, in bytes (APNs hex is 64, FCM about 163).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest person id, in bytes (Customer.io's limit for a person id).
pub const MAX_PERSON_BYTES: usize = 150;
/// Most attributes one device may carry.
pub const MAX_ATTRIBUTES: usize = 100;
/// Longest attribute name, in bytes (Customer.io's limit).
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 150;
/// Longest attribute value, in bytes (Customer.io's limit).
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1000;
/// Largest JSON encoding of one device's attributes, in bytes. Keeps every
/// `add_device` (with a 4096-byte token and a 150-byte person, escaped)
/// under Customer.io's 32,768-byte operation limit.
pub const MAX_ATTRIBUTES_JSON_BYTES: usize = 23_000;
/// Latest accepted timestamp: 3000-01-01T00:00:00Z in Unix milliseconds.
pub const MAX_TIMESTAMP_MS: u64 = 32_503_680_000_000;
/// Default cap on devices per person.
pub const DEFAULT_MAX_DEVICES_PER_PERSON: u32 = 20;
/// Largest configurable cap on devices per person.
pub const MAX_DEVICES_PER_PERSON_LIMIT: u32 = 10_000;
/// Most operations one atomic batch (one log record) may hold.
pub const MAX_OPS_PER_BATCH: usize = 100_000;
/// Largest encoded size of one log record body, in bytes.
pub const MAX_LOG_RECORD_BYTES: usize = 16 << 20;
/// Default size of one preallocated log segment, in bytes.
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 16 << 20;
/// Default number of log segments before writers wait for a checkpoint.
pub const DEFAULT_MAX_LOG_SEGMENTS: u32 = 4;
/// Default log bytes the log may hold per registered device, beyond
/// `DEFAULT_MAX_LOG_SEGMENTS`: none (DESIGN.md 5.2). 24 (240 MB at 10^7
/// devices) made a 10^7 import 27–50% faster and its peak
/// RSS 0.5–1.2 GB higher, over the memory target; a bulk load on a host
/// with room to spare may set it.
pub const DEFAULT_LOG_BYTES_PER_DEVICE: u64 = 0;
/// The largest `Config::log_bytes_per_device`.
pub const MAX_LOG_BYTES_PER_DEVICE: u64 = 4096;
/// Most log bytes the per-device bound may reach (the floor,
/// `Config::max_log_segments`, may be more).
pub const MAX_SCALED_LOG_BYTES: u64 = 1 << 30;
/// Log segments a checkpoint has released that are kept for reuse (renamed
/// instead of preallocated); the rest are deleted.
pub const SPARE_LOG_SEGMENTS: usize = 1;
/// Most operations one write group (one fsync) collects from concurrent callers.
pub const MAX_GROUP_OPS: usize = 200_000;
/// How long, by default, a leader whose group will be synced waits for the
/// callers of the last synced group to queue again, while it holds fewer
/// requests than that group did (`Config::group_gather_us`; DESIGN.md 7,
/// "A synced group waits for the last one's callers"): about one fsync.
pub const DEFAULT_GROUP_GATHER_US: u64 = 150;
/// Largest accepted `Config::group_gather_us`: 10 ms.
pub const MAX_GROUP_GATHER_US: u64 = 10_000;
/// Tries a query makes for the state's read lock, a spin-loop hint apart,
/// before it parks (`Inner::read_state`): a write holds the lock a few
/// microseconds, and this spins for about that long.
pub const READ_SPIN_TRIES: u32 = 256;
/// Most operations of a write group the writer reads ahead under the read
/// lock before it takes the write lock (`State::warm_ahead`, DESIGN.md 7).
/// The pass is for the short groups that readers wait behind; a group of
/// more holds the write lock for milliseconds whatever is read ahead. At
/// 10^7 devices the pass over the harness's 10,000-op bulk update groups
/// was a fifth of the writing thread's CPU, and bounding it lifted that
/// row from 61k-62k to 69k-80k devices/s (13 step 32).
pub const WARM_MAX_OPS: usize = 256;
/// Fewest changed devices a checkpoint's snapshot encodes on two threads
/// (`store/checkpoint.rs`): below it, starting a thread costs more than
/// it saves.
pub const SNAPSHOT_SPLIT_DEVICES: usize = 4096;
/// Most encoded bytes of operations one import batch collects (it is also
/// bounded by the registry's `max_batch_bytes`): lines that average 23 KB
/// of attributes must not make a 10,000-line batch outgrow a log record.
pub const MAX_IMPORT_BATCH_BYTES: usize = 4 << 20;
/// Longest import line, in bytes.
pub const MAX_IMPORT_LINE_BYTES: usize = 1 << 20;
/// Rejected lines `devreg import` reports one by one; after them it only
/// counts (the summary has the total), so a wrong file is not 200,000
/// lines of stderr.
pub const IMPORT_REJECTIONS_SHOWN: u64 = 100;
/// 2001-01-01T00:00:00Z in Unix milliseconds. A `seen_ms` below it that is
/// at least this many *seconds* (978,307,200) looks like seconds, and
/// `devreg import` warns (once).
pub const SECONDS_LOOKALIKE_BEFORE_MS: u64 = 978_307_200_000;
/// How many steps the checkpointer's nice value, and that of the threads
/// it starts, is above its opener's (`Config::background_nice`): page
/// merges, checkpoints and compactions yield the CPU to readers and
/// writers (DESIGN.md 7). At 10 a thread at nice 0 gets about nine tenths
/// of a core the two share (the kernel's weights, 1024 against 110).
pub const DEFAULT_BACKGROUND_NICE: i32 = 10;
/// Most steps `Config::background_nice` takes (Linux's highest nice value:
/// the lowest priority).
pub const MAX_BACKGROUND_NICE: i32 = 19;
/// Default memory budget (`Config::memory_budget_bytes`): sled's cache,
/// the delta pages and the checkpoint chunks are cut from it.
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 256 << 20;
/// Smallest accepted memory budget.
pub const MIN_MEMORY_BUDGET_BYTES: u64 = 64 << 20;
/// Devices loaded at open from which the store is closed and opened again
/// before use (`KvStore::shed_reads`): it frees the page nodes the
/// load left resident in sled (about 110 B per device at 10^7), at the cost
/// of one more sled open, which also starts a new sled segment on disk (too
/// much for a small database on a small filesystem).
pub const REOPEN_STORE_AFTER_DEVICES: u64 = 100_000;
/// Pages of a keyspace one slice of the open's load scans: sled's read
/// guard is let go between slices, so the scan can shed sled's nodes
/// there (`RawKv::shed_cache`). The devices' 2^14 pages make 64 slices.
pub const LOAD_SCAN_SLICE_PAGES: u32 = 256;
/// The open sheds sled's cache after reading the delta chunks, and at the
/// end of a shedding scan, when it read at least this fraction (1/N) of
/// `Config::load_shed_bytes` since the last shed: sled keeps what it read
/// (128 MiB with the default budget; `PagedStore::shed_remainder`).
pub const SHED_REMAINDER_DIVISOR: u64 = 4;
/// Longest a shed of sled's nodes waits for the store to be free (the other
/// load's current slice); it is skipped after that.
pub const SHED_WAIT_MS: u64 = 1_000;
/// Extra reads of each page a merge writes and of each delta chunk read
/// from disk, by a merge or otherwise (`RawKv::touch`): sled's LRU processes its accesses only once 64
/// have queued in one of its 256 shards, so each extra access of a node
/// sled holds brings the eviction of older nodes sooner (DESIGN.md 6,
/// "A merge reads back what it wrote").
pub const SLED_LRU_TOUCHES: usize = 3;
/// sled's cache size in a store opened for one short job (`repair`, the
/// test helpers), outside any registry's budget.
pub const TOOL_SLED_CACHE_BYTES: u64 = 64 << 20;
/// Most changed records (devices, feed entries, deliverability entries)
/// the state holds before the writer starts a checkpoint, whatever the log
/// says: an acknowledgement is a short log record that can mark 1,000
/// known persons dirty, so a sink's first drain at 10^7 devices held about
/// 4.5 million of them (about 170 bytes each) until the interval's
/// checkpoint, and that snapshot's writes beside them (DESIGN.md 8,
/// "Checkpoint triggers"). A bulk import's checkpoint at 10^7 devices,
/// set off by the log, holds about 480,000 (a device and its feed item).
pub const CHECKPOINT_PENDING_RECORDS: usize = 1 << 20;
/// Most bytes of pages one sled batch of a checkpoint carries: sled's memory
/// grows with a batch, so a checkpoint of any size is written in chunks.
pub const CHECKPOINT_CHUNK_BYTES: usize = 4 << 20;

/// Most bytes of store entries one sled batch of a backup carries (what a
/// backup holds in memory besides sled's caches; `Registry::backup`).
pub const BACKUP_CHUNK_BYTES: usize = 4 << 20;
/// A backup copies the store in passes of the memory budget over this (64
/// MiB by default): between two passes the copy is opened again and the
/// source sheds what it read (`store::copy_store`). Measured at 10^7
/// devices: one pass peaked at 6,767 MiB, passes of the budget at 3,374,
/// passes of a quarter at 3,089 (the open's own peak, 32 s).
pub const BACKUP_PASS_BUDGET_DIVISOR: u64 = 4;
/// Store compaction (`store/compact.rs`): sled's files are copied into a new
/// store when they take at least this many bytes...
pub const COMPACT_MIN_STORE_BYTES: u64 = 64 << 20;
/// ...and at least this many times the live bytes the last compaction
/// copied (a fresh copy itself takes about twice its live bytes: sled
/// rewrites a node as it fills, and never cleans without its flusher).
pub const COMPACT_SPACE_FACTOR: u64 = 3;
/// Most times the live bytes of the last compaction are scaled up by the
/// registry's growth since (`store/compact.rs`, `scaled_live`): the scale
/// takes every byte as a device's, and a small registry's bytes are
/// mostly fixed costs (its pages, its feed), so at 10^4 → 10^6 devices an
/// unbounded scale would take 100 times bytes that grew perhaps 10 times
/// and never compact again. Bounded, a growing store is copied at up to
/// `2 × COMPACT_SPACE_FACTOR` times its last live bytes, not 3.
pub const COMPACT_LIVE_SCALE_MAX: u64 = 2;
/// Most bytes of entries one sled batch of a compaction's copy carries:
/// measured at 2×10^5 devices, batches of about 64 entries (64 KiB) gave
/// the smallest copy (75 MB for 38 MB of entries, against 100 MB with
/// 4 MiB batches and 117 MB with one entry per batch).
pub const COMPACT_CHUNK_BYTES: usize = 64 << 10;
/// The buffer a backup copies log segments through, in bytes.
pub const BACKUP_COPY_BUFFER_BYTES: usize = 1 << 20;

/// Largest block (page or delta chunk) a compressed frame may hold; a
/// larger one is stored plain, so a damaged frame length never makes a read
/// allocate more (`store/frame.rs`).
pub const MAX_FRAME_RAW_BYTES: usize = 1 << 30;
/// Largest buffer a thread keeps between the frames it decompresses
/// (`store/frame.rs`): a page at 10^7 devices is 70–120 KB and a delta
/// chunk at most `CHECKPOINT_CHUNK_BYTES` and one record, so both reuse
/// one. Only the threads that read chunks back (the checkpointer's merges,
/// the open's scans) ever hold one this large; a reader of pages holds at
/// most a page's.
pub const FRAME_BUF_KEEP_BYTES: usize = CHECKPOINT_CHUNK_BYTES + (1 << 20);

/// sled's cache while a closing store is opened once more so that sled
/// writes its snapshot then, not at the next (maybe read-only) open.
pub const SETTLE_SLED_CACHE_BYTES: u64 = 8 << 20;

/// Longest a close waits for that open (a thread; see `store/kv.rs`).
pub const SETTLE_TIMEOUT_MS: u64 = 5_000;

/// Tries of one call of a sync worker to a live server
/// (`sync/remote.rs`) while the server is unreachable or answers 429/503.
pub const REMOTE_FEED_ATTEMPTS: u32 = 8;

/// The first wait between those tries, in milliseconds; each doubles it
/// (8 tries: about 25 s in all).
pub const REMOTE_FEED_BACKOFF_MS: u64 = 100;

/// Longest one call to a live server may take, in milliseconds.
pub const REMOTE_FEED_TIMEOUT_MS: u64 = 30_000;

/// Characters of an unexpected HTTP answer kept in its error.
pub const HTTP_ERROR_BODY_CHARS: usize = 200;

/// How often a store's waker looks for a failed write of sled's, in
/// milliseconds: the longest a flush may wait after sled lost its wake-up
/// (`store/sled_waker.rs`). One cheap check per poll and open store.
pub const SLED_ERROR_POLL_MS: u64 = 100;

/// Positions (devices) a new sink's backfill takes from one scan of the
/// state (`feed/backfill.rs`): a window of this many costs about 100 B each
/// while the backfill runs, and a backfill of N devices scans N / this times.
pub const BACKFILL_WINDOW_TOKENS: usize = 1 << 18;

/// Most sinks one database may have.
pub const MAX_SINKS: usize = 16;
/// Longest sink name, in bytes (of `a-z 0-9 _ -`).
pub const MAX_SINK_NAME_BYTES: usize = 64;
/// Default operations per exported batch.
pub const DEFAULT_MAX_OPS: u32 = 100;
/// Most operations per exported batch.
pub const MAX_OPS_LIMIT: u32 = 1000;
/// Digits of a batch number in a batch id (`<sink>-<number>`).
pub const BATCH_NUMBER_DIGITS: usize = 12;
/// Longest batch id an ack may name, in bytes (a sink name, '-' and the
/// number fit with room to spare; a longer one is refused, not looked up).
pub const MAX_BATCH_ID_BYTES: usize = 128;
/// Longest dead-letter reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;
/// Most dead letters kept per sink; past it the oldest is discarded (and
/// counted).
pub const MAX_DEAD_LETTERS_PER_SINK: usize = 10_000;
/// Most ownership-history entries kept per token (the newest win).
pub const MAX_HISTORY_PER_TOKEN: usize = 64;
/// Customer.io's limit on one `/api/v2/batch` request body, in bytes (it
/// must be under this).
pub const MAX_BATCH_BODY_BYTES: usize = 500_000;
/// Customer.io's limit on one operation inside a batch, in bytes.
pub const MAX_OPERATION_BYTES: usize = 32_768;

/// Customer.io Data Pipelines' limit on one call (`track`) inside a
/// `/v1/batch` request, in bytes ("32KB per call"; the Pipelines OpenAPI
/// file, `info.description` and `/batch`).
pub const MAX_PIPELINES_CALL_BYTES: usize = 32_768;
/// Calls per Pipelines `/v1/batch` request. Customer.io's docs say a
/// batch's `context` applies to all its calls and cannot differ per call;
/// a device's token lives in `context.device.token`, so each request
/// carries one call (DESIGN.md 19.3 gives the sources).
pub const MAX_PIPELINES_CALLS_PER_REQUEST: usize = 1;
/// Longest `cio_id` a sink with identifier kind `cio_id` sends, in bytes
/// (after its optional `cio_` prefix).
pub const MAX_CIO_ID_BYTES: usize = 64;

/// Bytes of delta records the store may hold in memory per device before a
/// merge (those of the history, the append keyspace; and the most one pass
/// of a scan or merge reads back from disk), within a quarter of
/// `Config::page_delta_bytes` and all of it (`store/paged.rs`): 16 MiB at
/// 10^6 devices, the default 64 MiB from 4×10^6.
pub const DELTA_BYTES_PER_DEVICE: u64 = 16;

/// Default bytes of delta records, every keyspace, the store may gather on
/// disk per device before a full merge (`Config::delta_disk_bytes_per_device`;
/// at least the memory bound above): 320 MB at 10^7 devices. A merge
/// rewrites about every page, so this sets how often the store is
/// rewritten; the deltas not yet in pages cost this much disk at most (the
/// history's that a history merge wrote stay in their chunks beside them
/// until the next full merge), and a scan at open reads them back in
/// passes of a quarter of the memory bound. A growing registry's bound
/// also has a credit for its new devices (`DELTA_DISK_BYTES_PER_NEW_DEVICE`).
pub const DELTA_DISK_BYTES_PER_DEVICE: u64 = 32;

/// Bytes of deltas on disk the bound allows for each device added since
/// the last full merge (`store/paged.rs`, `delta_disk_bound`; DESIGN.md
/// 4.3, "The growth credit"): a new device's records are inserts, which
/// cost disk as deltas about as they will in the pages, and every merge
/// rewrites about every page. 128 is about a new device's disk-only delta
/// bytes on the comparison harness's data (129 measured at 10^7), so a
/// bulk import merges for its updates and its growth's excess only.
pub const DELTA_DISK_BYTES_PER_NEW_DEVICE: u64 = 128;

/// The growth credit is at most this many times the per-device bound
/// (`DELTA_DISK_BYTES_PER_DEVICE`): the deltas on disk stay within three
/// times that bound, so an import whose devices carry more than the
/// credit still merges, and the open's scans read a bounded share of
/// deltas.
pub const DELTA_DISK_GROWTH_MAX_FACTOR: u64 = 2;

/// How far, in percent of the bound on every delta on disk
/// (`DELTA_DISK_BYTES_PER_DEVICE`, or the bytes the merge froze if those
/// are more), the checkpoints written beside a page merge may take the
/// deltas past it before the writer waits for the merge's end
/// (`store/paged.rs`, DESIGN.md 4.3 "Checkpoints beside a merge", "Room
/// beside a merge"): it costs disk and the passes of an open's scans
/// after a crash. The deltas held in memory get none: checkpoints beside
/// a merge that let them pass their bound raised the peak RSS of a 10^7
/// import past its target (13 step 34).
pub const DELTA_DISK_SLACK_BESIDE_MERGE_PCT: usize = 50;

/// How much of the log's bound (in percent) a writer fills since the last
/// checkpoint while a page merge leaves no room for a checkpoint beside
/// it, before it waits for the merge's end (`writer.rs`,
/// `backlog_beside_merge`): the snapshot after the merge holds every
/// change since the last one, and one of a full log set the 10^7 import's
/// peak RSS (DESIGN.md 4.3, "History merges"). At 50% the import took
/// 176 s against 149 s: the writer idled through most of each merge.
pub const LOG_BACKLOG_BESIDE_MERGE_PCT: u64 = 75;

/// Upper bounds (Prometheus `le`, inclusive) of the histogram of log
/// records one group commit appends (`Metrics::group_commit_records`):
/// powers of two up to 131,072 (a group holds at most `MAX_GROUP_OPS`
/// operations, one record per request); larger go to the `+Inf` bucket.
pub const GROUP_COMMIT_RECORDS_BUCKETS: [u64; 18] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536, 131_072,
];
/// Upper bounds (inclusive) of the histogram of log fdatasync latencies,
/// in microseconds (`Metrics::log_fsync_us`): powers of two from 16 µs to
/// 1,048,576 µs (about 1 s).
pub const LOG_FSYNC_BUCKETS_US: [u64; 17] = [
    16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536, 131_072, 262_144,
    524_288, 1_048_576,
];
/// Upper bounds (inclusive) of the histogram of checkpoint durations, in
/// milliseconds (`Metrics::checkpoint_ms`): 1-2-5 steps from 1 ms to 60 s.
pub const CHECKPOINT_BUCKETS_MS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 60_000,
];

// `devreg serve` (feature `server`, src/server/).
/// Default listen address of `devreg serve`.
pub const DEFAULT_SERVER_LISTEN: &str = "127.0.0.1:7600";
/// Largest request body the server reads; a larger one is answered 413.
pub const MAX_SERVER_BODY_BYTES: usize = 4 << 20;
/// Largest `POST /v1/events` body the server parses on its async workers
/// (about 40 events: tens of microseconds); a larger one is parsed on the
/// blocking pool.
pub const SERVER_INLINE_PARSE_BYTES: usize = 16 << 10;
/// Most events one `POST /v1/events` may hold (one atomic batch).
pub const MAX_SERVER_EVENTS_PER_REQUEST: usize = 10_000;
/// Devices or changes per page when the request names no `limit`.
pub const DEFAULT_SERVER_PAGE_LIMIT: usize = 100;
/// Most devices or changes one page may ask for (`limit`).
pub const MAX_SERVER_PAGE_LIMIT: usize = 1000;
/// Engine calls running or waiting at once; one more is answered 429.
pub const MAX_SERVER_ENGINE_CALLS: usize = 64;
/// tokio worker threads: they only parse, route and encode.
pub const SERVER_WORKER_THREADS: usize = 2;
/// The `Retry-After` a 429 answer suggests, in seconds.
pub const SERVER_RETRY_AFTER_SECONDS: u64 = 1;
/// Longest a TLS handshake may take before its connection is dropped.
pub const SERVER_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Most TLS handshakes in progress at once; more connections wait.
pub const MAX_SERVER_PENDING_HANDSHAKES: usize = 256;
/// Pause after a failed `accept` (e.g. out of file descriptors).
pub const SERVER_ACCEPT_RETRY_MS: u64 = 50;

/// Longest `reason` of a delivery feedback, in bytes (logged with the
/// operation, not kept in memory).
pub const MAX_FEEDBACK_REASON_BYTES: usize = 1024;
/// Default number of consecutive soft failures (since the device's last
/// delivery and since it was last seen) that suppress a device
/// (`Config::soft_failures_to_suppress`).
pub const DEFAULT_SOFT_FAILURES_TO_SUPPRESS: u32 = 3;
/// Largest configurable `soft_failures_to_suppress`.
pub const MAX_SOFT_FAILURES_TO_SUPPRESS: u32 = 1_000;

/// Oldest (or furthest in the future) `X-CIO-Timestamp` a Customer.io
/// reporting webhook may carry, in seconds from the server's clock; older
/// is refused as stale (a replay of a captured request).
pub const CIO_WEBHOOK_MAX_SKEW_SECS: u64 = 300;
/// Reporting-webhook event ids remembered to answer a redelivery as a
/// duplicate (oldest forgotten first; a redelivery older than this many
/// events is applied again, which feedback tolerates: stale feedback is
/// `Skipped`).
pub const CIO_WEBHOOK_SEEN_IDS: usize = 10_000;
/// Longest reporting-webhook `event_id` kept, in bytes.
pub const MAX_CIO_EVENT_ID_BYTES: usize = 256;
/// Customer.io's documented App API limit: 10 requests per second (the 429
/// answer of `GET /v1/customers/{id}/attributes` names it). The audit's
/// rate limiter spaces its requests to stay under it.
pub const CIO_APP_API_MAX_REQUESTS_PER_SEC: u32 = 10;
/// Attempts of one App API request the audit makes before it gives up on a
/// 429 or 5xx answer.
pub const CIO_APP_API_ATTEMPTS: u32 = 5;
/// Longest `Retry-After` the audit honours on an App API 429, in seconds.
pub const CIO_APP_API_MAX_RETRY_AFTER_SECS: u64 = 60;
/// Timeout of one App API request, in milliseconds.
pub const CIO_APP_API_TIMEOUT_MS: u64 = 30_000;
/// Most persons one `devreg audit --sample N` reads from the App API (at 10
/// requests per second, about 17 minutes).
pub const MAX_AUDIT_SAMPLE: usize = 10_000;
/// Most (person, token) pairs in one re-mark log entry (`Entry::Remark`,
/// DESIGN.md 20.8); `Registry::remark` splits a longer list into atomic
/// writes of at most this many, each also within one log record.
pub const MAX_REMARK_PAIRS: usize = 1_000;

/// Longest one attempt of an etcd request may take before it is retried
/// or given up (feature `etcd`), in milliseconds.
pub const ETCD_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Time given to the first attempt of an etcd request, in milliseconds;
/// doubled for each later one, up to `ETCD_REQUEST_TIMEOUT_MS`. A request
/// a follower was forwarding when the leader died is never answered (the
/// follower gives up only after its own timeout, seconds later), so the
/// first retry must come about when a new leader can be in place.
pub const ETCD_FIRST_ATTEMPT_TIMEOUT_MS: u64 = 1_000;
/// Longest a connection attempt to an etcd endpoint may take, in milliseconds.
pub const ETCD_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Longest devreg retries one etcd request through a leader election or a
/// lost member before it reports the error, in milliseconds. etcd elects a
/// new leader within a few election timeouts (1 s by default).
pub const ETCD_RETRY_MS: u64 = 20_000;
/// First pause between two attempts of an etcd request, in milliseconds;
/// doubled after each, up to `ETCD_RETRY_MAX_PAUSE_MS`.
pub const ETCD_RETRY_PAUSE_MS: u64 = 25;
/// Longest pause between two attempts of an etcd request, in milliseconds.
pub const ETCD_RETRY_MAX_PAUSE_MS: u64 = 500;
/// Keys one page of an etcd range read returns (a scan reads page by page
/// at one revision, so its memory is one page).
pub const ETCD_RANGE_PAGE_KEYS: i64 = 1_000;
/// etcd's default `--max-txn-ops`: most operations in one transaction. A
/// cluster started with more is told with `Config` (DESIGN.md 15).
pub const ETCD_DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB): the largest request.
pub const ETCD_DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;
/// Bytes of a transaction's framing beyond its keys and values that devreg
/// reserves under `--max-request-bytes` (per operation; generous).
pub const ETCD_TXN_OP_OVERHEAD_BYTES: usize = 32;
/// Watch responses a node buffers between etcd and the thread applying
/// them (each holds the events of one etcd revision or more).
pub const ETCD_WATCH_BUFFER: usize = 1_024;
/// Time to live of the etcd lease behind a cluster lock (the checkpoint
/// lock), in seconds: a holder that dies loses it this long after its last
/// keep-alive, and another node takes over.
pub const ETCD_LOCK_TTL_S: u64 = 5;

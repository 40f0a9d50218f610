//! The sync worker: drains a sink's feed into Customer.io's Track API
//! (`POST {endpoint}/api/v2/batch`) or Data Pipelines API (`POST
//! {endpoint}/v1/batch`, Basic auth with the source key and an empty
//! password, `X-Strict-Mode: 1`), as the credentials say; the sink must be
//! of that format. It survives every failure the API can return. DESIGN.md
//! section 12 has the retry and acknowledgement rules, 19.4 how Pipelines'
//! answers map to them (no 207: one call per request, so a 400 in strict
//! mode is that call's failure).
//!
//! The rules, in short:
//! - 200: the batch is acknowledged (`Registry::ack`), only once the whole
//!   response has been read.
//! - 207: the batch is acknowledged with the failed operations (by
//!   `batch_index`) moved to the dead letters (`Registry::nack`). A 207 body
//!   that cannot be parsed is treated like a 400 (see [`SyncWorker`]).
//! - 400 (and 413): the whole batch is rejected: every operation is
//!   dead-lettered with the response text as its reason, and the worker goes on.
//! - 401/403: the worker stops with `Error::Auth`; nothing is acknowledged.
//! - 408, 429, 5xx, timeouts, refused or dropped connections, truncated
//!   responses: the same batch (the same bytes: `export` returns the
//!   identical batch until it is acknowledged) is sent again after an
//!   exponential backoff with full jitter, at least `Retry-After` seconds.
//! - Anything else (3xx, 404, other statuses): the worker stops with
//!   `Error::Http { status, body }` and nothing is acknowledged: a wrong endpoint must not turn the
//!   whole feed into dead letters.
//! - A TLS certificate that does not verify, or a server that does not
//!   speak compatible TLS: the worker stops with an error (a retry would
//!   fail the same way forever); nothing is acknowledged.
//!
//! Request bodies are sent uncompressed: Customer.io does not document
//! accepting `Content-Encoding: gzip` on the Track API, so devreg does not
//! gzip them (bodies are under 500,000 bytes anyway).

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;

use super::config::*;
use super::response::*;
use super::source::{Exported as Batch, FeedSource};
use crate::error::{Error, Result};
use crate::format::FormatKind;
use crate::registry::Registry;

/// What a worker has done so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncStats {
    /// HTTP requests started (retries included).
    pub requests: u64,
    /// Batches settled: acknowledged after a 200 or 207, or dead-lettered after a 400.
    pub batches: u64,
    /// Operations in those batches.
    pub operations: u64,
    /// Requests that were retried (429, 5xx, timeouts, dropped connections).
    pub retries: u64,
    /// Operations this worker moved to the dead letters.
    pub dead_letters: u64,
    /// `batch_index` values of 207 answers that were outside the batch (ignored).
    pub ignored_indices: u64,
    /// Items still pending in the sink (at the last look).
    pub lag: u64,
    /// Operations settled per second since the worker started.
    pub rate: f64,
    /// Requests started per second since the worker started.
    pub request_rate: f64,
    /// Milliseconds since the worker started.
    pub elapsed_ms: u64,
    /// Why the last retry happened.
    pub last_retry: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    stats: Mutex<SyncStats>,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    started: Instant,
}

impl Shared {
    /// Sleeps until `deadline` or a stop; true if stopped.
    fn sleep_until(&self, deadline: Instant) -> bool {
        let mut guard = self.sleep_lock.lock();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.wake.wait_until(&mut guard, deadline);
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _guard = self.sleep_lock.lock();
        self.wake.notify_all();
    }

    fn stats(&self) -> SyncStats {
        let mut s = self.stats.lock().clone();
        let secs = self.started.elapsed().as_secs_f64();
        s.elapsed_ms = self.started.elapsed().as_millis() as u64;
        if secs > 0.0 {
            s.rate = s.operations as f64 / secs;
            s.request_rate = s.requests as f64 / secs;
        }
        s
    }
}

/// A handle to watch or stop a worker from another thread (e.g. a signal
/// handler). Cheap to clone.
#[derive(Clone)]
pub struct SyncControl {
    shared: Arc<Shared>,
}

impl SyncControl {
    /// Asks the worker to stop: an in-flight request is finished (its
    /// answer acknowledged as usual), a backoff or rate wait is cut short,
    /// and no new request starts.
    pub fn stop(&self) {
        self.shared.stop();
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// The worker's counters now.
    pub fn stats(&self) -> SyncStats {
        self.shared.stats()
    }
}

/// The answer to one request, classified.
enum Answer {
    /// 200, body fully read.
    Delivered,
    /// 207, body fully read.
    Partial(String),
    /// 400 or 413: the whole batch is rejected.
    Rejected(String),
    /// Try the same batch again, waiting at least `retry_after`.
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
    /// Stop the worker; nothing is acknowledged.
    Stop(Stop),
}

/// Why the worker stops.
enum Stop {
    /// 401/403, with the start of the body.
    Credentials(u16, String),
    /// Another status it neither settles nor retries, with the start of
    /// the body (for a redirect: where it points).
    Unexpected(u16, String),
    /// The request cannot be sent as configured.
    Unsendable(String),
    /// TLS failed in a way a retry cannot fix.
    Tls(String),
}

/// Drains a sink's feed into Customer.io. Create it on a [`Registry`]
/// clone, then either call [`run_once`](SyncWorker::run_once) (drain what is
/// pending, return), [`run`](SyncWorker::run) (follow new changes until
/// stopped) or [`start`](SyncWorker::start) (follow on a background thread).
///
/// ```no_run
/// use devreg::sync::{Credentials, Region, SyncConfig, SyncWorker};
/// let reg = devreg::Registry::open("/tmp/devreg-example").unwrap();
/// let config = SyncConfig::new(Credentials::from_env().unwrap()).region(Region::Eu);
/// let handle = SyncWorker::new(reg.clone(), config).unwrap().start().unwrap();
/// // ... the service runs; later:
/// let stats = handle.shutdown().unwrap();
/// println!("{} batches sent", stats.batches);
/// ```
///
/// A 207 body that cannot be parsed is treated like a 400, not retried:
/// Customer.io has answered, and re-sending would most likely get the same
/// answer forever. Every operation of the batch is dead-lettered with the
/// reason `unparseable 207 body: ...`, where it is listed and can be requeued.
pub struct SyncWorker {
    source: Box<dyn FeedSource>,
    config: SyncConfig,
    url: String,
    auth: String,
    agent: ureq::Agent,
    shared: Arc<Shared>,
    next_start: Option<Instant>,
    interval: Duration,
    rng: u64,
}

impl fmt::Debug for SyncWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncWorker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SyncWorker {
    /// Checks the configuration and builds the HTTP client. Sends nothing yet.
    pub fn new(reg: Registry, config: SyncConfig) -> Result<SyncWorker> {
        SyncWorker::with_source(Box::new(reg), config)
    }

    /// The same, taking batches from any [`FeedSource`]: a registry, or a
    /// live `devreg serve` through [`RemoteFeed`](super::RemoteFeed).
    pub fn with_source(source: Box<dyn FeedSource>, config: SyncConfig) -> Result<SyncWorker> {
        config.validate()?;
        // Parsed once: the URL requested is the URL that was checked.
        let endpoint = Endpoint::parse(&config.endpoint)?;
        let agent = endpoint.agent(config.timeout, Duration::from_secs(10));
        let interval = Duration::from_secs_f64(RATE_MARGIN / config.max_rps);
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Ok(SyncWorker {
            source,
            url: endpoint.batch_url(batch_path(config.format())),
            auth: config.credentials.authorization(),
            config,
            agent,
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                stats: Mutex::new(SyncStats::default()),
                sleep_lock: Mutex::new(()),
                wake: Condvar::new(),
                started: Instant::now(),
            }),
            next_start: None,
            interval,
            rng: seed | 1,
        })
    }

    /// A handle to stop the worker or read its counters from elsewhere.
    pub fn control(&self) -> SyncControl {
        SyncControl {
            shared: self.shared.clone(),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> SyncStats {
        self.shared.stats()
    }

    /// Sends what is pending until the sink is drained (or a stop is asked
    /// for), then returns the counters. Errors: [`Error::Auth`] (401/403),
    /// [`Error::Http`] (an answer it neither settles nor retries: a
    /// redirect, 404...), [`Error::Tls`], [`Error::GaveUp`] (a batch ran out
    /// of `max_attempts`), or a registry error. Nothing is acknowledged for
    /// the batch that failed.
    pub fn run_once(&mut self) -> Result<SyncStats> {
        loop {
            if self.stopped() {
                break;
            }
            if !self.has_work()? {
                break;
            }
            let Some(batch) =
                self.source
                    .export(&self.config.sink, self.config.max_ops, MAX_BODY_BYTES)?
            else {
                break;
            };
            if !self.deliver(&batch)? {
                break;
            }
        }
        self.refresh_lag();
        Ok(self.stats())
    }

    /// Follows the feed: drains it, then looks for new changes every
    /// `poll_interval`, until [`SyncControl::stop`] is called or an error stops it.
    pub fn run(&mut self) -> Result<SyncStats> {
        loop {
            self.run_once()?;
            let next = Instant::now() + self.config.poll_interval;
            if self.shared.sleep_until(next) {
                return Ok(self.stats());
            }
        }
    }

    /// Runs [`run`](SyncWorker::run) on a background thread.
    pub fn start(mut self) -> Result<WorkerHandle> {
        let control = self.control();
        let thread = std::thread::Builder::new()
            .name("devreg-sync".into())
            .spawn(move || self.run())
            .map_err(|e| Error::io("starting the sync worker thread", e))?;
        Ok(WorkerHandle {
            control,
            thread: Some(thread),
        })
    }

    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn bump(&self, f: impl FnOnce(&mut SyncStats)) {
        f(&mut self.shared.stats.lock());
    }

    /// Reads the sink's pending count into `lag`. A source that cannot
    /// answer now (a server being restarted) leaves the last figure.
    fn refresh_lag(&self) {
        if let Ok(info) = self.source.sink(&self.config.sink) {
            let lag = info.map_or(0, |s| s.pending);
            self.bump(|s| s.lag = lag);
        }
    }

    /// Whether an export may return a batch; creates a missing sink. Reading
    /// the sink's info first keeps an idle worker from writing to the log.
    fn has_work(&self) -> Result<bool> {
        let format = self.config.format();
        match self.source.sink(&self.config.sink)? {
            Some(s) if s.settings.format != format => Err(Error::invalid(
                "sink.format",
                format!(
                    "sink {:?} is {}, but the worker's credentials are for {format}",
                    self.config.sink, s.settings.format
                ),
            )),
            Some(s) => {
                self.bump(|st| st.lag = s.pending);
                Ok(s.pending > 0 || s.in_flight.is_some())
            }
            // A missing sink is created as track-v2 by id.
            None if format != FormatKind::TrackV2 => Err(Error::invalid(
                "sink",
                format!(
                    "no sink named {:?}: create it first with `devreg sinks add {} --format {format}`",
                    self.config.sink, self.config.sink
                ),
            )),
            None => {
                // A new sink starts with a snapshot: count it now, not
                // after the first batch is settled (the lag read 0 through
                // a whole outage while its 250 items were pending).
                self.source.add_sink(&self.config.sink)?;
                self.refresh_lag();
                Ok(true)
            }
        }
    }

    /// Waits for the rate limiter; true if stopped meanwhile.
    fn wait_turn(&mut self) -> bool {
        if let Some(next) = self.next_start {
            if self.shared.sleep_until(next) {
                return true;
            }
        }
        self.next_start = Some(Instant::now() + self.interval);
        false
    }

    fn random(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))].
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = self.config.backoff_base.as_secs_f64();
        let ceiling = (base * 2f64.powi(attempt.saturating_sub(1).min(60) as i32))
            .min(self.config.backoff_cap.as_secs_f64());
        let unit = (self.random() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64((ceiling * unit).max(0.0))
    }

    /// Sends one batch until it is settled. Ok(false): stopped before that.
    fn deliver(&mut self, batch: &Batch) -> Result<bool> {
        let mut attempt = 0u32;
        loop {
            if self.stopped() || self.wait_turn() {
                return Ok(false);
            }
            self.bump(|s| s.requests += 1);
            // From here on the request is finished even if a stop is asked
            // for: its answer is acknowledged like any other.
            match self.post(batch.body()) {
                Answer::Delivered => {
                    self.source.ack(&self.config.sink, batch.id())?;
                    self.settled(batch, 0);
                    return Ok(true);
                }
                Answer::Partial(body) => {
                    let failed = self.partial_failures(batch, &body);
                    self.source.nack(&self.config.sink, batch.id(), &failed)?;
                    self.settled(batch, failed.len() as u64);
                    return Ok(true);
                }
                Answer::Rejected(reason) => {
                    let failed = all_failed(batch, &reason);
                    self.source.nack(&self.config.sink, batch.id(), &failed)?;
                    self.settled(batch, failed.len() as u64);
                    return Ok(true);
                }
                Answer::Stop(why) => return Err(self.stop_error(batch, why)),
                Answer::Retry { why, retry_after } => {
                    attempt += 1;
                    self.bump(|s| {
                        s.retries += 1;
                        s.last_retry = Some(why.clone());
                    });
                    // Changes keep arriving while the endpoint is down.
                    self.refresh_lag();
                    if self.config.max_attempts.is_some_and(|m| attempt >= m) {
                        return Err(Error::GaveUp {
                            context: self.context(batch),
                            attempts: attempt,
                            last: why,
                        });
                    }
                    let mut wait = self.backoff(attempt);
                    if let Some(ra) = retry_after {
                        wait = wait.max(ra.min(self.config.max_retry_after));
                    }
                    if self.shared.sleep_until(Instant::now() + wait) {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// The operations a 207 answer failed, reasons joined per index.
    fn partial_failures(&self, batch: &Batch, body: &str) -> Vec<(u32, String)> {
        let list = match parse_partial_failure(body) {
            Ok(list) => list,
            // Treated like a 400: see the type's documentation.
            Err(e) => return all_failed(batch, &format!("unparseable 207 body: {e}")),
        };
        let mut by_index: BTreeMap<u32, String> = BTreeMap::new();
        let mut ignored = 0u64;
        for (i, reason) in list {
            if (i as usize) >= batch.len() {
                // Not an operation of this batch: nothing to dead-letter.
                ignored += 1;
                continue;
            }
            by_index
                .entry(i)
                .and_modify(|r| {
                    if r.len() < MAX_REASON {
                        r.push_str("; ");
                        r.push_str(&reason);
                        truncate(r, MAX_REASON);
                    }
                })
                .or_insert(reason);
        }
        self.bump(|s| s.ignored_indices += ignored);
        by_index.into_iter().collect()
    }

    /// What the worker was doing, for its errors.
    fn context(&self, batch: &Batch) -> String {
        format!("sending batch {} to {}", batch.id(), self.url)
    }

    /// The error that stops the worker.
    fn stop_error(&self, batch: &Batch, stop: Stop) -> Error {
        let context = self.context(batch);
        match stop {
            Stop::Credentials(status, text) => Error::Auth {
                context,
                status,
                body: one_line(&text, 200),
            },
            Stop::Unexpected(status, body) => Error::Http {
                context,
                status,
                body,
            },
            Stop::Tls(detail) => Error::Tls { context, detail },
            Stop::Unsendable(why) => Error::invalid(
                "endpoint",
                format!("{context}: the request cannot be sent: {why}"),
            ),
        }
    }

    fn settled(&self, batch: &Batch, dead: u64) {
        self.bump(|s| {
            s.batches += 1;
            s.operations += batch.len() as u64;
            s.dead_letters += dead;
        });
        self.refresh_lag();
    }

    /// The batch request with its headers.
    fn request(&self) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .header("Authorization", &self.auth);
        match self.config.format() {
            // Strict mode: a call that fails validation is a 400, not a
            // 200 that dropped it (DESIGN.md 19.4).
            FormatKind::Pipelines => request.header("X-Strict-Mode", "1"),
            FormatKind::TrackV2 => request,
        }
    }

    /// One POST, its answer classified. Never panics.
    fn post(&self, body: &str) -> Answer {
        let sent = self.request().send(body.as_bytes());
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return classify_error(e, &self.config.endpoint),
        };
        let status = resp.status().as_u16();
        let retry_after = super::response::retry_after(&resp);
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|s| one_line(s, 200));
        let mut read = |limit: u64| resp.body_mut().with_config().limit(limit).read_to_string();
        // Data Pipelines documents no 207: one there is not an answer to
        // settle (a wrong endpoint?), so it stops the worker.
        let partial_ok = self.config.format() == FormatKind::TrackV2;
        match status {
            200 | 207 if status == 200 || partial_ok => match read(MAX_RESPONSE_BYTES) {
                // Acknowledged only once the whole answer has been read: a
                // connection dropped mid-response leaves the batch to be re-sent.
                Ok(text) if status == 200 => {
                    let _ = text;
                    Answer::Delivered
                }
                Ok(text) => Answer::Partial(text),
                Err(e) => Answer::Retry {
                    why: format!("HTTP {status} response could not be read: {e}"),
                    retry_after: None,
                },
            },
            400 | 413 => {
                let text = read(MAX_ERROR_BODY_BYTES)
                    .unwrap_or_else(|e| format!("(response body unreadable: {e})"));
                let mut reason = format!("HTTP {status}: {}", one_line(&text, MAX_REASON));
                truncate(&mut reason, MAX_REASON);
                Answer::Rejected(reason)
            }
            401 | 403 => Answer::Stop(Stop::Credentials(status, read(4096).unwrap_or_default())),
            408 | 429 | 500..=599 => {
                // Read (and drop) the body so the connection can be reused.
                let text = read(MAX_ERROR_BODY_BYTES).unwrap_or_default();
                Answer::Retry {
                    why: format!("HTTP {status}: {}", one_line(&text, 200)),
                    retry_after,
                }
            }
            300..=399 => Answer::Stop(Stop::Unexpected(
                status,
                format!(
                    "redirected to {}",
                    location.unwrap_or_else(|| "an unnamed location".into())
                ),
            )),
            _ => {
                let text = read(4096).unwrap_or_default();
                Answer::Stop(Stop::Unexpected(status, one_line(&text, 200)))
            }
        }
    }
}

/// A request that got no answer: configuration faults and TLS failures that
/// a retry cannot fix stop the worker; network trouble is retried.
fn classify_error(e: ureq::Error, endpoint: &str) -> Answer {
    if let Some(why) = tls_failure(&e, endpoint) {
        return Answer::Stop(Stop::Tls(why));
    }
    match e {
        ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::InvalidProxyUrl
        | ureq::Error::RequireHttpsOnly(_) => Answer::Stop(Stop::Unsendable(e.to_string())),
        other => Answer::Retry {
            why: match &other {
                ureq::Error::Timeout(t) => format!("timed out ({t})"),
                _ => format!("request failed: {other}"),
            },
            retry_after: None,
        },
    }
}

/// Why a TLS failure is final, or `None` if it may be transient. A
/// certificate that does not verify (unknown issuer, expired, wrong name)
/// and a server that does not speak compatible TLS fail the same way on
/// every attempt: retrying them would loop forever (`sync --once` would
/// never exit) and hide a misconfiguration or an interception.
fn tls_failure(e: &ureq::Error, endpoint: &str) -> Option<String> {
    use rustls::{AlertDescription as Alert, Error as Tls};
    let tls = match e {
        ureq::Error::Rustls(tls) => tls,
        ureq::Error::Tls(why) => return Some(format!("TLS setup for {endpoint} failed: {why}")),
        // rustls reports handshake failures through the socket's io::Error.
        ureq::Error::Io(io) => rustls_cause(io)?,
        _ => return None,
    };
    match tls {
        Tls::InvalidCertificate(_)
        | Tls::NoCertificatesPresented
        | Tls::UnsupportedNameType
        | Tls::InvalidCertRevocationList(_) => Some(format!(
            "the TLS certificate of {endpoint} could not be verified ({tls}); \
             not retried: check the endpoint, and the network for TLS interception"
        )),
        Tls::InvalidMessage(_)
        | Tls::PeerIncompatible(_)
        | Tls::AlertReceived(Alert::HandshakeFailure | Alert::ProtocolVersion) => Some(format!(
            "the TLS handshake with {endpoint} failed ({tls}); \
             not retried: the endpoint does not speak compatible TLS"
        )),
        _ => None,
    }
}

/// The rustls error inside an I/O error, if one is there.
fn rustls_cause(io: &io::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(io.get_ref()?);
    while let Some(err) = cause {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = err.source();
    }
    None
}

fn all_failed(batch: &Batch, reason: &str) -> Vec<(u32, String)> {
    let mut reason = reason.to_owned();
    truncate(&mut reason, MAX_REASON);
    (0..batch.len() as u32)
        .map(|i| (i, reason.clone()))
        .collect()
}

/// A worker running on a background thread; see [`SyncWorker::start`].
/// Dropping it stops the worker and waits for it.
pub struct WorkerHandle {
    control: SyncControl,
    thread: Option<JoinHandle<Result<SyncStats>>>,
}

impl WorkerHandle {
    /// The worker's counters now.
    pub fn stats(&self) -> SyncStats {
        self.control.stats()
    }

    /// A control to stop the worker from elsewhere.
    pub fn control(&self) -> SyncControl {
        self.control.clone()
    }

    /// Whether the worker has stopped (asked to, or by an error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the worker and waits for it: the in-flight request is finished
    /// (at most the request timeout) and its answer acknowledged, or it is
    /// abandoned unacknowledged (then the next run re-sends the identical
    /// batch). Returns the final counters, or the error that stopped it.
    pub fn shutdown(mut self) -> Result<SyncStats> {
        self.join()
    }

    fn join(&mut self) -> Result<SyncStats> {
        self.control.stop();
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(Error::io(
                    "running the sync worker",
                    io::Error::other("the worker thread panicked"),
                ))
            }),
            None => Ok(self.control.stats()),
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn partial_failure_bodies() {
        assert_eq!(
            parse_partial_failure(r#"{"errors":[]}"#).ok(),
            Some(Vec::new())
        );
        let got = parse_partial_failure(
            r#"{"errors":[{"batch_index":0},{"batch_index":99999999999,"reason":"x","message":7}]}"#,
        )
        .ok();
        assert_eq!(
            got,
            Some(vec![
                (0, "rejected".to_string()),
                (u32::MAX, "x: 7".to_string())
            ])
        );
        for bad in [
            "",
            "null",
            "[]",
            r#"{"errors":{}}"#,
            r#"{"errors":[1]}"#,
            r#"{"errors":[{"batch_index":-1}]}"#,
            r#"{"errors":[{"batch_index":1.5}]}"#,
            r#"{"errors":[{"reason":"no index"}]}"#,
            &"[".repeat(10_000),
        ] {
            assert!(parse_partial_failure(bad).is_err(), "{bad:.40}");
        }
    }

    #[test]
    fn config_checks() {
        let c = || SyncConfig::new(Credentials::new("s", "k").unwrap_or_else(|_| unreachable!()));
        assert!(c().validate().is_ok());
        assert!(c().region(Region::Eu).validate().is_ok());
        assert_eq!(
            c().region(Region::Eu).batch_url().ok().as_deref(),
            Some("https://track-eu.customer.io/api/v2/batch")
        );
        assert!(c().endpoint("http://127.0.0.1:9/").validate().is_ok());
        assert!(c().endpoint("http://[::1]:9").validate().is_ok());
        assert!(c().endpoint("http://example.com").validate().is_err());
        assert!(c().endpoint("ftp://x").validate().is_err());
        assert!(c().max_rps(0.0).validate().is_err());
        assert!(c().max_ops(0).validate().is_err());
        assert!("EU".parse::<Region>().is_ok() && "mars".parse::<Region>().is_err());
    }
}

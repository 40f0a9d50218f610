//! `devreg sync`: drain a sink's feed into Customer.io's Track API.
//!
//! Credentials come from `CUSTOMERIO_SITE_ID` and `CUSTOMERIO_API_KEY`
//! (`--format pipelines`: `CUSTOMERIO_CDP_API_KEY`) in the environment only: never from argv (other users can read it), and
//! they are never printed. Progress goes to stderr: an updating line on a
//! terminal, otherwise one JSON object per line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use devreg::format::FormatKind;
use devreg::sync::{
    Credentials, FeedSource, Region, RemoteFeed, SyncConfig, SyncControl, SyncStats, SyncWorker,
};
use devreg::{Config, Durability, Registry, DEFAULT_SINK};

fn parse_format(s: &str) -> Result<FormatKind, String> {
    s.parse().map_err(|e: devreg::Error| e.to_string())
}

/// `devreg sync` options.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The sink to drain (created with a snapshot of every identified device if missing).
    #[arg(long, value_name = "S", default_value = DEFAULT_SINK)]
    sink: String,
    /// The sink's format: track-v2 (credentials from CUSTOMERIO_SITE_ID and
    /// CUSTOMERIO_API_KEY) or pipelines (the source key from
    /// CUSTOMERIO_CDP_API_KEY). The sink must be of this format.
    #[arg(long, value_name = "FORMAT", default_value = "track-v2", value_parser = parse_format)]
    format: FormatKind,
    /// Customer.io region: us (track.customer.io, or cdp.customer.io for
    /// pipelines) or eu (track-eu.customer.io, cdp-eu.customer.io).
    #[arg(long, value_enum, conflicts_with = "endpoint")]
    region: Option<RegionArg>,
    /// Any base URL instead of a region (https, or http to a loopback host).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Drain what is pending, then exit (otherwise follow new changes until SIGINT/SIGTERM).
    #[arg(long)]
    once: bool,
    /// With --once: give up on a batch after this many failed attempts
    /// (default 8) and exit 75 (EX_TEMPFAIL) with the last error.
    #[arg(long, value_name = "N", requires = "once")]
    max_attempts: Option<u32>,
    /// With --once: give up when the sink is not drained after this many
    /// seconds, and exit 75 (EX_TEMPFAIL).
    #[arg(long, value_name = "S", requires = "once")]
    deadline_s: Option<u64>,
    /// Most operations per batch (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = devreg::DEFAULT_MAX_OPS)]
    max_ops: u32,
    /// Most requests per second, retries included.
    #[arg(long, value_name = "R", default_value_t = devreg::sync::DEFAULT_MAX_RPS)]
    max_rps: f64,
    /// Whole-request timeout, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
    /// First retry waits up to this long (exponential backoff, full jitter), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    backoff_base_ms: u64,
    /// Longest backoff, in milliseconds (a longer Retry-After is still honoured).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    backoff_cap_ms: u64,
    /// Take the batches from a live `devreg serve` at URL instead of opening
    /// the database (https, or http to a loopback host; the bearer token
    /// comes from DEVREG_API_TOKEN). The worker runs in its own process
    /// under the same rules; an unreachable server is retried for about 25 s.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Progress output on stderr: a progress line (terminal) or JSON lines.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    progress: ProgressArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RegionArg {
    Us,
    Eu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ProgressArg {
    /// A progress line if stderr is a terminal, JSON lines otherwise.
    Auto,
    /// An updating progress line.
    Bar,
    /// One JSON object per line.
    Json,
}

/// Runs `devreg sync`. The registry is opened only once the credentials
/// and options are known to be usable.
pub fn run(
    (base, place): (Config, String),
    cap: Option<u32>,
    durability: Durability,
    args: &SyncArgs,
    server: Option<&str>,
) -> crate::CmdResult {
    let credentials =
        Credentials::from_env_for(args.format).map_err(|e| crate::CliError(e.to_string()))?;
    let mut config = SyncConfig::new(credentials)
        .sink(args.sink.clone())
        .max_ops(args.max_ops)
        .max_rps(args.max_rps)
        .timeout(Duration::from_millis(args.timeout_ms))
        .backoff(
            Duration::from_millis(args.backoff_base_ms),
            Duration::from_millis(args.backoff_cap_ms),
        );
    if args.once {
        // A cron job must end: follow mode keeps retrying, --once gives up.
        config = config.max_attempts(Some(args.max_attempts.unwrap_or(DEFAULT_ONCE_MAX_ATTEMPTS)));
    }
    config = match (&args.endpoint, args.region) {
        (Some(url), _) => config.endpoint(url.clone()),
        (None, Some(RegionArg::Eu)) => config.region(Region::Eu),
        (None, _) => config.region(Region::Us),
    };
    config.validate()?;
    let mut worker = SyncWorker::with_source(
        source((base, place), cap, durability, args, server)?,
        config,
    )?;
    let control = worker.control();
    {
        let control = control.clone();
        ctrlc::set_handler(move || control.stop())
            .map_err(|e| crate::CliError(format!("installing the signal handler: {e}")))?;
    }
    let bar = match args.progress {
        ProgressArg::Bar => true,
        ProgressArg::Json => false,
        ProgressArg::Auto => std::io::stderr().is_terminal(),
    };
    let done = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (control, done) = (control.clone(), done.clone());
        std::thread::spawn(move || report(&control, &done, bar))
    };
    let (result, deadline_passed) = match (args.once, args.deadline_s) {
        (true, Some(secs)) => run_once_until(&mut worker, &control, Duration::from_secs(secs)),
        (true, None) => (worker.run_once(), false),
        (false, _) => (worker.run(), false),
    };
    done.store(true, Ordering::SeqCst);
    let _ = reporter.join();
    let stats = worker.stats();
    if bar {
        eprintln!("sync: {}", summary(&stats));
    } else {
        log_line(&stats, if result.is_ok() { "done" } else { "failed" });
    }
    drop(worker);
    if deadline_passed {
        let last = stats.last_retry.as_deref().unwrap_or("none");
        eprintln!(
            "error: gave up: the sink was not drained within --deadline-s {}; last retried error: {last}",
            args.deadline_s.unwrap_or_default()
        );
        return Ok(ExitCode::from(EX_TEMPFAIL));
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) if gave_up(&e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EX_TEMPFAIL))
        }
        Err(e) => Err(e.into()),
    }
}

/// The feed to drain: a live server (`--server`), or the database, opened
/// only now that the credentials and options are known to be usable.
fn source(
    (base, place): (Config, String),
    cap: Option<u32>,
    durability: Durability,
    args: &SyncArgs,
    server: Option<&str>,
) -> Result<Box<dyn FeedSource>, crate::CliError> {
    // `devreg --server URL sync` means the same as `devreg sync --server URL`.
    if let Some(url) = args.server.as_deref().or(server) {
        let token = std::env::var("DEVREG_API_TOKEN").ok();
        return Ok(Box::new(RemoteFeed::new(url, token.as_deref())?));
    }
    let mut reg_config = base.durability(durability);
    if let Some(cap) = cap {
        reg_config = reg_config.max_devices_per_person(cap);
    }
    let reg = Registry::open_with(reg_config)
        .map_err(|e| crate::CliError(format!("opening {place}: {e}")))?;
    Ok(Box::new(reg))
}

/// Exit code of a `--once` run that gave up (sysexits.h `EX_TEMPFAIL`):
/// the endpoint failed for now, try again later.
const EX_TEMPFAIL: u8 = 75;
/// Attempts at one batch before `--once` gives up, unless `--max-attempts`.
const DEFAULT_ONCE_MAX_ATTEMPTS: u32 = 8;

/// Whether the worker stopped because a batch ran out of attempts.
fn gave_up(e: &devreg::Error) -> bool {
    matches!(e, devreg::Error::GaveUp { .. })
}

/// `run_once`, stopped once `deadline` has passed; also says whether it
/// was (the stop is asked for only while the run is still going).
fn run_once_until(
    worker: &mut SyncWorker,
    control: &SyncControl,
    deadline: Duration,
) -> (devreg::Result<SyncStats>, bool) {
    let gate = Arc::new(parking_lot::Mutex::new((false, false)));
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let timer = {
        let (gate, control) = (gate.clone(), control.clone());
        std::thread::spawn(move || {
            if done_rx.recv_timeout(deadline).is_err() {
                let mut g = gate.lock();
                if !g.0 {
                    g.1 = true;
                    control.stop();
                }
            }
        })
    };
    let result = worker.run_once();
    let passed = {
        let mut g = gate.lock();
        g.0 = true;
        g.1
    };
    let _ = done_tx.send(());
    let _ = timer.join();
    (result, passed)
}

fn summary(s: &SyncStats) -> String {
    format!(
        "{} batches, {} ops sent, {} retries, {} dead letters, lag {}, {:.0} ops/s",
        s.batches, s.operations, s.retries, s.dead_letters, s.lag, s.rate
    )
}

/// A structured progress line: one JSON object on stderr.
fn log_line(s: &SyncStats, event: &str) {
    let line = serde_json::json!({
        "event": event,
        "batches": s.batches,
        "ops": s.operations,
        "requests": s.requests,
        "retries": s.retries,
        "dead_letters": s.dead_letters,
        "ignored_indices": s.ignored_indices,
        "lag": s.lag,
        "rate": (s.rate * 10.0).round() / 10.0,
        "elapsed_ms": s.elapsed_ms,
        "last_retry": s.last_retry,
    });
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

fn report(control: &SyncControl, done: &AtomicBool, bar: bool) {
    if bar {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        pb.enable_steady_tick(Duration::from_millis(120));
        while !done.load(Ordering::SeqCst) {
            pb.set_message(summary(&control.stats()));
            std::thread::sleep(Duration::from_millis(100));
        }
        pb.finish_and_clear();
        return;
    }
    let mut last = Instant::now();
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            log_line(&control.stats(), "progress");
            last = Instant::now();
        }
    }
}

//! The `devreg` command: import events, query the registry, read the
//! Customer.io sync feed, sync it, audit Customer.io against it, run a demo.
//!
//! Output contract: results are JSON on stdout, diagnostics on stderr.
//! Exit codes: 0 success, 1 error or "not found" or a failed check,
//! 2 usage error (clap) or an import with rejected lines.

mod audit;
mod demo;
mod feed;
mod history;
mod import;
mod output;
mod remote;
#[cfg(feature = "server")]
mod serve;
mod sync;
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use devreg::{Config, Durability, Platform, Registry};

use devreg::json::{self, device_json};
use output::Out;

#[derive(Parser, Debug)]
#[command(
    name = "devreg",
    version,
    about = "An embedded, crash-safe registry of mobile push devices"
)]
struct Cli {
    /// The database directory. Write commands create it where the path is
    /// absent or an empty directory; read commands never create anything.
    #[arg(long, default_value = "./devreg-data")]
    db: PathBuf,

    /// Most devices one person may own (older ones are evicted): the
    /// initial setting of a database that a write command creates. For an
    /// existing database it must equal the stored setting (change that
    /// with `config set`); read commands ignore it.
    #[arg(long, value_name = "N")]
    max_devices_per_person: Option<u32>,

    /// When a write is acknowledged: after an fdatasync (immediate) or once
    /// written to the OS (eventual: survives a process crash, not a power loss).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Immediate)]
    durability: DurabilityArg,

    /// Memory for the store besides the devices (sled's cache, delta pages,
    /// checkpoint chunks), in MiB; at least 64. The default, 256, suits
    /// 10^7 devices.
    #[arg(long, value_name = "MIB")]
    memory_budget_mib: Option<u64>,

    /// Log bytes per device the log may hold beyond its 4 segments, so that
    /// a bulk `import` into a large registry goes on through page merges
    /// (24 cut a 10^7 import's time by 27% and raised its peak 1.2 GB, and an
    /// open after a crash replays more; DESIGN.md 5.2). Default 0: off.
    #[arg(long, value_name = "BYTES")]
    log_bytes_per_device: Option<u64>,

    /// Run the command against a live `devreg serve` at URL instead of
    /// opening --db (which the server holds locked): every read command
    /// but check, `stats --daily` and `config show`, and export, ack, nack,
    /// dead-letters, requeue, sinks and backup. Same output, same exit
    /// codes; the bearer token comes from DEVREG_API_TOKEN. (`sync` has its
    /// own --server.)
    #[arg(long, value_name = "URL")]
    server: Option<String>,

    /// The registry lives in this etcd cluster (its members' client URLs,
    /// comma-separated) instead of --db (feature `etcd`, DESIGN.md 15).
    /// Every command that opens a registry joins the cluster as a node
    /// (`sync` exports under the sink's lease: one exporter per sink);
    /// `repair` and `backup` need a local --db.
    #[cfg(feature = "etcd")]
    #[arg(
        long,
        value_name = "URL[,URL...]",
        value_delimiter = ',',
        conflicts_with = "server"
    )]
    etcd: Vec<String>,

    /// The prefix of the registry's keys in the etcd cluster.
    #[cfg(feature = "etcd")]
    #[arg(long, value_name = "PREFIX", default_value = "devreg/")]
    etcd_prefix: String,

    /// The cluster's --max-txn-ops (etcd's default: 128).
    #[cfg(feature = "etcd")]
    #[arg(long, value_name = "N", default_value_t = devreg::limits::ETCD_DEFAULT_MAX_TXN_OPS)]
    etcd_max_txn_ops: usize,

    /// The cluster's --max-request-bytes (etcd's default: 1.5 MiB).
    #[cfg(feature = "etcd")]
    #[arg(long, value_name = "BYTES", default_value_t = devreg::limits::ETCD_DEFAULT_MAX_REQUEST_BYTES)]
    etcd_max_request_bytes: usize,

    #[command(subcommand)]
    command: Command,
}

/// Where the registry is, for messages: the --db path or the etcd cluster.
fn place(cli: &Cli) -> String {
    #[cfg(feature = "etcd")]
    if !cli.etcd.is_empty() {
        return format!("etcd {} (prefix {:?})", cli.etcd.join(","), cli.etcd_prefix);
    }
    cli.db.display().to_string()
}

/// The registry's configuration before the command's settings: --db, or
/// the etcd cluster.
fn base_config(cli: &Cli) -> Config {
    #[cfg(feature = "etcd")]
    if !cli.etcd.is_empty() {
        let limits = devreg::TxnLimits {
            max_ops: cli.etcd_max_txn_ops,
            max_request_bytes: cli.etcd_max_request_bytes,
        };
        return Config::etcd(cli.etcd.clone(), &cli.etcd_prefix).etcd_limits(limits);
    }
    Config::new(&cli.db)
}

/// Refuses `what` on a registry in an etcd cluster (it needs a local --db).
fn local_only(cli: &Cli, what: &str) -> Result<(), CliError> {
    #[cfg(feature = "etcd")]
    if !cli.etcd.is_empty() {
        return Err(CliError(format!(
            "{what} needs a local --db: it is not offered with --etcd (DESIGN.md 15)"
        )));
    }
    let _ = (cli, what);
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Immediate,
    Eventual,
}

/// `devreg cluster ...` (feature `etcd`).
#[cfg(feature = "etcd")]
#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Print the cluster's members and leader, this node's watch lag, the
    /// checkpoint lock and each sink's exporter, as JSON (needs --etcd).
    Status,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The etcd cluster a registry lives in (feature `etcd`).
    #[cfg(feature = "etcd")]
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Copy a registry between a local database and the --etcd cluster
    /// (feature `etcd`): `--from-db PATH` into an empty --etcd-prefix,
    /// `--to-db PATH` (a new path) out of it. Prints what was copied.
    #[cfg(feature = "etcd")]
    Migrate {
        /// The local database to copy into the cluster.
        #[arg(
            long,
            value_name = "PATH",
            conflicts_with = "to_db",
            required_unless_present = "to_db"
        )]
        from_db: Option<PathBuf>,
        /// The new local database to copy the cluster's registry into.
        #[arg(long, value_name = "PATH")]
        to_db: Option<PathBuf>,
    },
    /// Apply JSON events, one per line, from FILE (or `-` for stdin).
    #[command(long_about = import::LONG_ABOUT)]
    Import {
        /// The file to read, or `-` for standard input.
        file: String,
    },
    /// Print every device as one JSON object per line, ordered by token.
    /// Each line is an `import` line (`"op":"register"`, every field), so
    /// `devreg dump | devreg --db NEW import -` copies the devices.
    Dump,
    /// Print one device.
    Get {
        /// The push token.
        token: String,
    },
    /// Print a person's devices, most recently seen first.
    Person {
        /// The person id.
        id: String,
    },
    /// Print a person's most recently seen device.
    MostRecent {
        /// The person id.
        id: String,
        /// Only consider devices on this platform (ios or android).
        #[arg(long, value_parser = parse_platform)]
        platform: Option<Platform>,
        /// Skip devices suppressed by delivery feedback (a hard failure
        /// since last seen, or too many soft failures in a row).
        #[arg(long)]
        deliverable: bool,
    },
    /// Count the devices seen at or after a time.
    Active {
        /// Unix milliseconds.
        #[arg(long)]
        since_ms: u64,
        /// Only count devices on this platform (ios or android).
        #[arg(long, value_parser = parse_platform)]
        platform: Option<Platform>,
    },
    /// Print the registry's counters and every sink's feed position.
    Stats {
        /// Instead: token changes per day and platform (see `history`).
        #[arg(long)]
        daily: bool,
    },
    #[command(flatten)]
    History(history::HistoryCmd),
    /// Verify indexes, counters, the cap and the store; exit 1 on any problem.
    Check,
    /// Run a realistic workload on a temporary database and report.
    Demo,
    /// Copy the whole database (devices, history, feeds, dead letters,
    /// settings) into DEST, a new path or an empty directory; the copy opens
    /// as it is (restore: stop the service, then move the copy into place
    /// or point --db at it). Opens the database read-only, so a service
    /// must not have it open: in a service, call Registry::backup. Prints
    /// what was copied as JSON.
    Backup {
        /// Where the copy goes: a path that does not exist yet (its parent
        /// must) or an empty directory. Required, except with --server
        /// (the server writes into its --backup-dir).
        dest: Option<PathBuf>,
    },
    /// Cut the log at its first damaged record, for a database whose open
    /// fails with "damaged record before the end of the log". The writes
    /// after the damage are lost; prints what was cut as JSON.
    Repair,
    /// Print the sink's next Customer.io batch as one JSON line
    /// ({"batch_id":..,"body":{"batch":[..]}}), or nothing when nothing is
    /// pending. Until it is acknowledged, the same batch is printed again.
    /// An unknown sink is created, starting with every identified device.
    Export {
        #[command(flatten)]
        sink: feed::SinkArg,
        /// Most operations in the batch (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = devreg::DEFAULT_MAX_OPS)]
        max_ops: u32,
    },
    /// Mark an exported batch delivered (Customer.io answered 200).
    Ack {
        #[command(flatten)]
        sink: feed::SinkArg,
        /// The batch id printed by `export`.
        batch_id: String,
    },
    /// Mark an exported batch delivered except some operations (Customer.io
    /// answered 207): those go to the sink's dead letters with their reasons.
    Nack {
        #[command(flatten)]
        sink: feed::SinkArg,
        /// The batch id printed by `export`.
        batch_id: String,
        /// A failed operation: its index in the batch, a colon, and
        /// Customer.io's reason (e.g. `3:invalid token`). Repeatable.
        #[arg(long, value_name = "INDEX:REASON", num_args = 1.., required = true,
              value_parser = feed::parse_failed)]
        failed: Vec<(u32, String)>,
    },
    /// Print the sink's dead letters as a JSON array, oldest first.
    DeadLetters {
        #[command(flatten)]
        sink: feed::SinkArg,
    },
    /// Put the sink's dead letters back into its feed.
    Requeue {
        #[command(flatten)]
        sink: feed::SinkArg,
    },
    /// Print every sink's position as a JSON array (`sinks` or `sinks
    /// list`), or add a sink (`sinks add NAME --format F --identifier I`).
    Sinks {
        #[command(subcommand)]
        cmd: Option<feed::SinksCmd>,
    },
    /// Show or change the settings stored in the database.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Send the sink's feed to Customer.io (credentials from CUSTOMERIO_SITE_ID
    /// and CUSTOMERIO_API_KEY); --once drains and exits, otherwise follows
    /// new changes until SIGINT/SIGTERM.
    Sync(sync::SyncArgs),
    /// Compare Customer.io's view of persons' devices (the App API, key
    /// from CUSTOMERIO_APP_API_KEY) with devreg's: the drift as JSON on
    /// stdout, a summary on stderr; exit 1 when drift is left. --repair
    /// re-marks the drifted pairs in the sink's feed for the next sync.
    Audit(audit::AuditArgs),
    /// Serve the registry over HTTP (JSON; README, "Server") until
    /// SIGTERM/SIGINT. The bearer token comes from DEVREG_API_TOKEN.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Print the stored settings as JSON.
    Show,
    /// Change a stored setting. Without --yes, prints what it would do
    /// (how many devices a lower cap evicts) and changes nothing.
    Set {
        #[command(subcommand)]
        setting: Setting,
    },
}

#[derive(Subcommand, Debug)]
enum Setting {
    /// The most devices one person may own; lowering it evicts each
    /// person's least recently seen devices beyond it (and sends their
    /// deletions to Customer.io).
    MaxDevicesPerPerson {
        /// The new cap (1 to 10000).
        n: u32,
        /// Apply it (otherwise only report).
        #[arg(long)]
        yes: bool,
    },
}

fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse::<Platform>().map_err(|e| e.to_string())
}

/// Why a command failed; the message is printed as `error: <message>`.
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// A command either finishes with an exit code or fails with a message.
pub type CmdResult = Result<ExitCode, CliError>;

/// The command's allocator: mimalloc. glibc's malloc was more than half of
/// the writer thread's time in an import (`malloc_consolidate`,
/// `unlink_chunk`: the fastbin consolidation that sled's large node
/// allocations set off among the state's small ones), and it kept sled's
/// freed nodes in a fragmented heap unless its mmap threshold was pinned
/// (DESIGN.md section 6). Measured on a 3×10^6 import: user CPU 50.3 →
/// 30.4 s, peak RSS 1.28 → 1.24 GB; open + stats 5.1 → 3.3 s of CPU.
/// Built with `no_thp` (Cargo.toml): mimalloc no longer advises every
/// arena onto huge pages, whose zeroing at the first touch was 37–42% of
/// an open's CPU on a VM host; the open of one 10^7 database took
/// 13.9–14.8 s instead of 18.2–27.1 s (DESIGN.md 6, "The command's heap
/// is on small pages").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(&cli);
    match result {
        Ok(code) => code,
        Err(CliError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn durability(d: DurabilityArg) -> Durability {
    match d {
        DurabilityArg::Immediate => Durability::Immediate,
        DurabilityArg::Eventual => Durability::Eventual,
    }
}

fn run(cli: &Cli) -> CmdResult {
    let durability = durability(cli.durability);
    // Checked for every command, read commands (which ignore it) included,
    // so that a mistyped value is never silently dropped.
    if let Some(cap) = cli.max_devices_per_person {
        let limit = devreg::limits::MAX_DEVICES_PER_PERSON_LIMIT;
        if !(1..=limit).contains(&cap) {
            return Err(CliError(format!(
                "invalid max_devices_per_person: {cap} is outside 1..={limit}"
            )));
        }
    }
    if let Some(url) = &cli.server {
        if !matches!(cli.command, Command::Sync(_)) {
            return remote::run(url, &cli.command);
        }
    }
    match &cli.command {
        Command::Repair => local_only(cli, "repair")?,
        Command::Backup { .. } => local_only(cli, "backup")?,
        _ => {}
    }
    match &cli.command {
        #[cfg(feature = "etcd")]
        Command::Cluster(ClusterCmd::Status) => {
            if cli.etcd.is_empty() {
                return Err(CliError("cluster status needs --etcd".into()));
            }
            let reg = open_read_only(cli)?;
            let status = reg
                .cluster_status()
                .map_err(|e| CliError(format!("reading the status of {}: {e}", place(cli))))?;
            close(cli, reg)?;
            let mut out = Out::stdout();
            out.json(&status)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "etcd")]
        Command::Migrate { from_db, to_db } => migrate(cli, from_db.as_deref(), to_db.as_deref()),
        Command::Backup { dest: Some(dest) } => backup(cli, dest),
        Command::Backup { dest: None } => Err(CliError(
            "backup needs DEST (a new path or an empty directory)".into(),
        )),
        Command::Demo => demo::run(cli.max_devices_per_person),
        Command::Repair => {
            let report = Registry::repair(&cli.db)
                .map_err(|e| CliError(format!("repairing {}: {e}", cli.db.display())))?;
            match report.cut_at_lsn {
                Some(_) => eprintln!(
                    "cut the log at {}; dropped {} record(s) after it",
                    report.damaged.as_deref().unwrap_or("?"),
                    report.records_dropped
                ),
                None => eprintln!("the log has no damaged record; nothing was changed"),
            }
            let mut out = Out::stdout();
            out.json(&report)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(args) => {
            // The key and endpoint are checked before anything is opened;
            // the audit reads a read-only open (never creating a database);
            // only a repair with drift to re-mark opens it for writing.
            let client = audit::client(args)?;
            let reg = open_read_only(cli)?;
            let mut report = audit::read(&reg, client, args)?;
            close(cli, reg)?;
            if args.repair {
                let reg = match report.is_clean() {
                    true => None,
                    false => Some(open(cli, durability)?),
                };
                audit::repair(reg.as_ref(), args, &mut report)?;
                if let Some(reg) = reg {
                    close(cli, reg)?;
                }
            }
            audit::print(&report)
        }
        Command::Sync(args) => sync::run(
            (base_config(cli), place(cli)),
            cli.max_devices_per_person,
            durability,
            args,
            cli.server.as_deref(),
        ),
        #[cfg(feature = "server")]
        Command::Serve(args) => {
            let config = serve::config(args)?;
            serve::run(open(cli, durability)?, config)
        }
        Command::Import { file } => {
            // Open the input first: a mistyped path must not create a database.
            let mut input = import::open_input(file)?;
            // A CSV file or a JSON array is one clear error, before the
            // database is opened (or created).
            input.check_shape(file)?;
            let reg = open(cli, durability)?;
            import::run(reg, input)
        }
        Command::Config(ConfigCmd::Set { setting }) => {
            let reg = open_with(cli, durability, None)?;
            let code = set_setting(&reg, setting)?;
            reg.close()
                .map_err(|e| CliError(format!("closing {}: {e}", place(cli))))?;
            Ok(code)
        }
        cmd => {
            let reg = match is_write(cmd) {
                true => open(cli, durability)?,
                false => open_read_only(cli)?,
            };
            let code = query(&reg, cmd)?;
            // The final sync and checkpoint can fail: never exit 0 then.
            reg.close()
                .map_err(|e| CliError(format!("closing {}: {e}", place(cli))))?;
            Ok(code)
        }
    }
}

/// The commands (besides import, sync, repair and `config set`, which run
/// on their own) that write: the feed's position and dead letters.
fn is_write(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Export { .. }
            | Command::Ack { .. }
            | Command::Nack { .. }
            | Command::Requeue { .. }
            | Command::Sinks {
                cmd: Some(feed::SinksCmd::Add { .. })
            }
    )
}

/// Closes `reg`: the final sync and checkpoint can fail, never exit 0 then.
fn close(cli: &Cli, reg: Registry) -> Result<(), CliError> {
    reg.close()
        .map_err(|e| CliError(format!("closing {}: {e}", place(cli))))
}

/// Opens the registry for a write command: created if missing, with
/// `--max-devices-per-person` as a new database's cap (and an error for an
/// existing one whose stored cap differs: see `config set`).
fn open(cli: &Cli, durability: Durability) -> Result<Registry, CliError> {
    open_with(cli, durability, cli.max_devices_per_person)
}

fn open_with(cli: &Cli, durability: Durability, cap: Option<u32>) -> Result<Registry, CliError> {
    let mut config = base_config(cli).durability(durability);
    if let Some(cap) = cap {
        config = config.max_devices_per_person(cap);
    }
    open_config(cli, config)
}

/// Opens the registry for a read command: read-only, never created, no
/// setting applied; a missing database is an error naming the path.
fn open_read_only(cli: &Cli) -> Result<Registry, CliError> {
    open_config(cli, base_config(cli).read_only(true))
}

fn open_config(cli: &Cli, mut config: Config) -> Result<Registry, CliError> {
    if let Some(mib) = cli.memory_budget_mib {
        config = config.memory_budget_bytes(mib.saturating_mul(1 << 20));
    }
    if let Some(bytes) = cli.log_bytes_per_device {
        config = config.log_bytes_per_device(bytes);
    }
    Registry::open_with(config).map_err(|e| match e {
        // It names the path already.
        devreg::Error::NoDatabase { .. } => CliError(e.to_string()),
        e => CliError(format!("opening {}: {e}", place(cli))),
    })
}

/// `migrate --from-db PATH | --to-db PATH` with --etcd.
#[cfg(feature = "etcd")]
fn migrate(cli: &Cli, from: Option<&std::path::Path>, to: Option<&std::path::Path>) -> CmdResult {
    let Some(target) = base_config(cli).etcd else {
        return Err(CliError("migrate needs --etcd".into()));
    };
    let report = match (from, to) {
        (Some(db), _) => Registry::migrate_to_etcd(db, &target).map_err(|e| {
            CliError(format!(
                "migrating {} into {}: {e}",
                db.display(),
                place(cli)
            ))
        })?,
        (None, Some(db)) => Registry::migrate_from_etcd(&target, db).map_err(|e| {
            CliError(format!(
                "migrating {} into {}: {e}",
                place(cli),
                db.display()
            ))
        })?,
        (None, None) => {
            return Err(CliError(
                "migrate needs --from-db PATH or --to-db PATH".into(),
            ))
        }
    };
    let mut out = Out::stdout();
    out.json(&report)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `backup DEST`: a read-only open of the database, its copy, the report.
fn backup(cli: &Cli, dest: &std::path::Path) -> CmdResult {
    let reg = open_read_only(cli)?;
    let report = reg.backup(dest).map_err(|e| match e {
        // It names the path already.
        devreg::Error::BackupDestination { .. } => CliError(e.to_string()),
        e => CliError(format!("backing up {}: {e}", cli.db.display())),
    })?;
    reg.close()
        .map_err(|e| CliError(format!("closing {}: {e}", cli.db.display())))?;
    let mut out = Out::stdout();
    out.json(&report)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `config set`: reports, and with `--yes` applies.
fn set_setting(reg: &Registry, setting: &Setting) -> CmdResult {
    let Setting::MaxDevicesPerPerson { n, yes } = *setting;
    let stored = reg.stats().max_devices_per_person;
    let would_evict = reg.cap_evictions(n);
    let mut report = serde_json::json!({
        "setting": "max-devices-per-person",
        "stored": stored,
        "requested": n,
        "would_evict": would_evict,
        "applied": false,
    });
    if yes {
        let outcome = reg.set_max_devices_per_person(n)?;
        let evicted = match outcome {
            devreg::Outcome::Applied { evicted, .. } => evicted,
            _ => 0,
        };
        report["applied"] = true.into();
        report["evicted"] = evicted.into();
    } else if n != stored {
        eprintln!(
            "nothing changed: run again with --yes to set it ({would_evict} device(s) evicted)"
        );
    }
    let mut out = Out::stdout();
    out.json(&report)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn query(reg: &Registry, cmd: &Command) -> CmdResult {
    let mut out = Out::stdout();
    match cmd {
        Command::Dump => {
            // One device at a time (a read-only open: no writer waits).
            reg.dump_each(|d| out.json(&json::dump_line(&d)))?;
        }
        Command::Get { token } => match reg.device(token) {
            Some(d) => out.json(&device_json(&d))?,
            None => return not_found(format!("no device with token {token:?}")),
        },
        Command::Person { id } => {
            let devices = reg.devices_of_deliverability(id);
            let list: Vec<_> = devices.iter().map(json::person_device).collect();
            out.json(&list)?;
        }
        Command::MostRecent {
            id,
            platform,
            deliverable,
        } => {
            let found = match deliverable {
                true => reg.most_recent_deliverable(id, *platform),
                false => reg.most_recent(id, *platform),
            };
            match found {
                Some(d) => out.json(&device_json(&d))?,
                None => return not_found(json::no_most_recent(id, *platform, *deliverable)),
            }
        }
        Command::Active { since_ms, platform } => {
            let count = reg.active_since(*since_ms, *platform);
            out.json(&serde_json::json!({ "count": count }))?;
        }
        Command::Stats { daily: false } => out.json(&json::StatsJson {
            stats: reg.stats(),
            sinks: reg.sinks(),
        })?,
        Command::Stats { daily: true } => history::daily(reg, &mut out)?,
        Command::History(cmd) => history::run(reg, cmd, &mut out)?,
        Command::Check => {
            let report = reg.check()?;
            out.json(&report)?;
            out.flush()?;
            if !report.is_clean() {
                eprintln!("check found {} problem(s)", report.problems.len());
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Export { sink, max_ops } => feed::export(reg, &mut out, &sink.sink, *max_ops)?,
        Command::Ack { sink, batch_id } => feed::ack(reg, &mut out, &sink.sink, batch_id, &[])?,
        Command::Nack {
            sink,
            batch_id,
            failed,
        } => feed::ack(reg, &mut out, &sink.sink, batch_id, failed)?,
        Command::DeadLetters { sink } => feed::dead_letters(reg, &mut out, &sink.sink)?,
        Command::Requeue { sink } => {
            let n = reg.requeue(&sink.sink)?;
            out.json(&serde_json::json!({ "requeued": n }))?;
        }
        Command::Sinks { cmd } => feed::sinks(reg, &mut out, cmd.as_ref())?,
        Command::Config(ConfigCmd::Show) => out.json(&serde_json::json!({
            "max_devices_per_person": reg.stats().max_devices_per_person,
        }))?,
        Command::Import { .. }
        | Command::Demo
        | Command::Sync(_)
        | Command::Audit(_)
        | Command::Repair
        | Command::Backup { .. }
        | Command::Config(ConfigCmd::Set { .. }) => unreachable!("dispatched in run()"),
        #[cfg(feature = "server")]
        Command::Serve(_) => unreachable!("dispatched in run()"),
        #[cfg(feature = "etcd")]
        Command::Cluster(_) | Command::Migrate { .. } => unreachable!("dispatched in run()"),
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A lookup that found nothing: exit 1 with `error: not found: ...`, the
/// same prefix as every other error; stdout stays empty, so scripts can
/// tell "missing" from a result.
fn not_found(what: String) -> CmdResult {
    let _ = std::io::stdout().flush();
    eprintln!("error: not found: {what}");
    Ok(ExitCode::FAILURE)
}

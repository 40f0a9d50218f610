//! History commands: `history`, `owner-at`, `changes`, and `stats --daily`.

use clap::{Subcommand, ValueEnum};
use devreg::{HistoryCursor, HistoryTime, Registry};

use crate::output::Out;
use crate::CliError;

/// The ownership-history subcommands (flattened into the main command list).
#[derive(Subcommand, Debug)]
pub enum HistoryCmd {
    /// Print a token's ownership history, newest first (a JSON array).
    History {
        /// The push token.
        token: String,
    },
    /// Print who owned a token at a time (by commit time, or `--by event`).
    OwnerAt {
        /// The push token.
        token: String,
        /// Unix milliseconds.
        #[arg(long)]
        at_ms: u64,
        /// Which time orders the history: `commit` (when devreg committed
        /// each change; one import batch shares one) or `event` (each
        /// change's own time: `seen_ms` of register and rotate,
        /// `provider_ms` of invalidate; a change without one, such as a
        /// logout, counts at its commit time or just before the token's
        /// next change, whichever is earlier). `event` answers for
        /// backfilled history.
        #[arg(long, value_enum, default_value_t = By::Commit)]
        by: By,
    },
    /// Print changes of every token committed at or after a time, oldest
    /// first; pass the printed `cursor` back with `--cursor` to continue.
    Changes {
        /// Unix milliseconds.
        #[arg(long)]
        since_ms: u64,
        /// Resume after this cursor (`COMMIT_MS.SEQ`, from a previous page).
        #[arg(long, value_parser = parse_cursor)]
        cursor: Option<HistoryCursor>,
        /// Most changes to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `owner-at --by`: the library's [`HistoryTime`].
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Commit time.
    Commit,
    /// Event time where the change has one.
    Event,
}

impl By {
    fn time(self) -> HistoryTime {
        match self {
            By::Commit => HistoryTime::Commit,
            By::Event => HistoryTime::Event,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            By::Commit => "commit",
            By::Event => "event",
        }
    }
}

fn parse_cursor(s: &str) -> Result<HistoryCursor, String> {
    s.parse()
}

/// Runs one history subcommand, printing JSON.
pub fn run(reg: &Registry, cmd: &HistoryCmd, out: &mut Out) -> Result<(), CliError> {
    match cmd {
        HistoryCmd::History { token } => out.json(&reg.history(token)?),
        HistoryCmd::OwnerAt { token, at_ms, by } => out.json(&serde_json::json!({
            "token": token,
            "at_ms": at_ms,
            "by": by.name(),
            "owner": reg.owner_at_by(token, *at_ms, by.time())?,
        })),
        HistoryCmd::Changes {
            since_ms,
            cursor,
            limit,
        } => out.json(&reg.changes_since(*since_ms, *cursor, (*limit).max(1))?),
    }
}

/// `stats --daily`: token-change counters per day and platform.
pub fn daily(reg: &Registry, out: &mut Out) -> Result<(), CliError> {
    out.json(&reg.daily_stats())
}

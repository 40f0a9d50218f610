//! History commands: `history`, `owner-at`, `changes`, and `stats --daily`.

use clap::Subcommand;
use devreg::{HistoryCursor, Registry};

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
    /// Print who owned a token at a time (by commit time).
    OwnerAt {
        /// The push token.
        token: String,
        /// Unix milliseconds.
        #[arg(long)]
        at_ms: u64,
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

fn parse_cursor(s: &str) -> Result<HistoryCursor, String> {
    s.parse()
}

/// Runs one history subcommand, printing JSON.
pub fn run(reg: &Registry, cmd: &HistoryCmd, out: &mut Out) -> Result<(), CliError> {
    match cmd {
        HistoryCmd::History { token } => out.json(&reg.history(token)?),
        HistoryCmd::OwnerAt { token, at_ms } => out.json(&serde_json::json!({
            "token": token,
            "at_ms": at_ms,
            "owner": reg.owner_at(token, *at_ms)?,
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

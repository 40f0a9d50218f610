//! The sync-feed commands: export, ack, nack, dead-letters (and the JSON
//! forms they print).
//!
//! Batch bodies and dead-letter operations are JSON text built by the
//! library with a fixed field order; they are embedded verbatim, never
//! parsed and re-serialized, so what is printed is byte for byte what is
//! sent to Customer.io.

use clap::{Args, Subcommand};
use devreg::format::{FormatKind, IdentifierKind, SinkSettings};
use devreg::json::{ack_line, batch_line, dead_letters_line};
use devreg::{Registry, DEFAULT_SINK};

use crate::output::Out;
use crate::CliError;

/// `--sink S`, shared by the feed commands.
#[derive(Args, Debug)]
pub struct SinkArg {
    /// The sink (a-z, 0-9, '_' and '-'; at most 64 characters). A sink
    /// exists from its first export, which starts it with a snapshot of
    /// every identified device.
    #[arg(long, value_name = "S", default_value = DEFAULT_SINK)]
    pub sink: String,
}

/// `sinks` subcommands; `sinks` alone lists.
#[derive(Subcommand, Debug)]
pub enum SinksCmd {
    /// Print every sink's position as a JSON array (what `sinks` prints).
    List,
    /// Add a sink of a format and identifier kind, starting with a snapshot
    /// of every identified device; prints the sink's position. A sink's
    /// settings never change: adding it again with the same ones changes
    /// nothing, with others is an error.
    Add {
        /// The sink (a-z, 0-9, '_' and '-'; at most 64 characters).
        name: String,
        /// track-v2 (Customer.io Track API v2, /api/v2/batch) or pipelines
        /// (Customer.io Data Pipelines, /v1/batch).
        #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
        format: FormatKind,
        /// How a person is sent: id, email or cio_id (pipelines: id or
        /// email, as userId). A person that is not a valid value of the
        /// kind is dead-lettered with the reason, not sent.
        #[arg(long, value_name = "KIND", default_value = "id", value_parser = parse_identifier)]
        identifier: IdentifierKind,
        /// Also send a person's token changes (rotations, invalidations) as
        /// events: device_token_rotated, device_token_invalidated.
        #[arg(long)]
        diagnostics: bool,
    },
}

fn parse_format(s: &str) -> Result<FormatKind, String> {
    s.parse().map_err(|e: devreg::Error| e.to_string())
}

fn parse_identifier(s: &str) -> Result<IdentifierKind, String> {
    s.parse().map_err(|e: devreg::Error| e.to_string())
}

/// `sinks` / `sinks list` (every sink's position) or `sinks add`.
pub fn sinks(reg: &Registry, out: &mut Out, cmd: Option<&SinksCmd>) -> Result<(), CliError> {
    if let Some(SinksCmd::Add {
        name,
        format,
        identifier,
        diagnostics,
    }) = cmd
    {
        let settings = SinkSettings::new(*format, *identifier)?.with_diagnostics(*diagnostics);
        return add_sink(reg, out, name, settings);
    }
    let sinks = reg.sinks();
    if !sinks.iter().any(|s| s.name == DEFAULT_SINK) {
        eprintln!(
            "note: the default sink {DEFAULT_SINK:?} does not exist yet; its first export \
             creates it with a snapshot of every identified device"
        );
    }
    out.json(&sinks)?;
    Ok(())
}

/// `sinks add`: creates the sink (or finds it with the same settings) and
/// prints its position.
pub fn add_sink(
    reg: &Registry,
    out: &mut Out,
    name: &str,
    settings: SinkSettings,
) -> Result<(), CliError> {
    let added = reg.add_sink_with(name, settings)?;
    let info = reg.sinks().into_iter().find(|s| s.name == name);
    if !added {
        eprintln!("note: sink {name:?} exists already with these settings; nothing changed");
    }
    let pending = info.map_or(0, |s| s.pending);
    out.json(&devreg::json::sink_added(name, added, &settings, pending))?;
    Ok(())
}

/// The largest body `export` asks for: under Customer.io's limit.
const MAX_BODY_BYTES: u32 = (devreg::customerio::MAX_BATCH_BODY_BYTES - 1) as u32;

/// Parses `INDEX:REASON` (the reason may itself contain colons).
pub fn parse_failed(s: &str) -> Result<(u32, String), String> {
    let bad = || format!("{s:?} is not INDEX:REASON (e.g. 3:invalid token)");
    let (index, reason) = s.split_once(':').ok_or_else(bad)?;
    let index = index.trim().parse::<u32>().map_err(|_| bad())?;
    if reason.trim().is_empty() {
        return Err(format!("{s:?} has no reason after the colon"));
    }
    Ok((index, reason.to_string()))
}

/// Prints the sink's next batch, creating the sink first if it is new.
pub fn export(reg: &Registry, out: &mut Out, sink: &str, max_ops: u32) -> Result<(), CliError> {
    devreg::validate_sink(sink)?;
    if !reg.sinks().iter().any(|s| s.name == sink) && reg.add_sink(sink)? {
        let pending = reg
            .sinks()
            .iter()
            .find(|s| s.name == sink)
            .map_or(0, |s| s.pending);
        eprintln!(
            "note: created sink {sink:?}; it starts with a snapshot of every identified \
             device ({pending} pending)"
        );
    }
    if let Some(batch) = reg.export(sink, max_ops, MAX_BODY_BYTES)? {
        out.line(&batch_line(batch.id(), batch.body()))?;
    }
    Ok(())
}

/// `ack` (no failures) or `nack`: prints
/// `{"acked":ID,"failed":N,"already_acked":BOOL}`. Acknowledging a batch
/// again changes nothing (its failures, if any, were recorded the first time).
pub fn ack(
    reg: &Registry,
    out: &mut Out,
    sink: &str,
    batch_id: &str,
    failed: &[(u32, String)],
) -> Result<(), CliError> {
    let mut seen = std::collections::BTreeSet::new();
    if let Some((i, _)) = failed.iter().find(|(i, _)| !seen.insert(*i)) {
        return Err(CliError(format!("--failed lists index {i} twice")));
    }
    let already = reg.acknowledge(sink, batch_id, failed)?.already_acked();
    if already {
        eprintln!("note: batch {batch_id} was already acknowledged; nothing changed");
    }
    out.line(&ack_line(batch_id, failed.len(), already))
}

/// Prints the dead letters as one JSON array; each operation is raw JSON.
pub fn dead_letters(reg: &Registry, out: &mut Out, sink: &str) -> Result<(), CliError> {
    out.line(&dead_letters_line(&reg.dead_letters(sink)?))
}

//! `devreg audit`: compare Customer.io's view of persons' devices (the App
//! API, `GET /v1/customers/{id}/attributes`) with devreg's, print the
//! drift as JSON on stdout and a one-line summary on stderr; `--repair`
//! re-marks the drifted pairs in the sink's feed for the next sync.
//!
//! The App API key comes from `CUSTOMERIO_APP_API_KEY` in the environment
//! only (never argv) and is never printed. Exit codes: 0 when there is no
//! drift, or every drifted pair was re-marked by `--repair`; 1 when drift
//! is left (not repaired, not repairable, or deferred because it is in the
//! batch in flight) or on an error.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use devreg::format::IdentifierKind;
use devreg::sync::audit::{self, AppApiClient, AuditReport, Selection, APP_API_KEY_ENV};
use devreg::sync::Region;
use devreg::{Registry, DEFAULT_SINK};

use crate::output::Out;
use crate::CliError;

/// `devreg audit` options.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Audit up to N identified persons: the same N for the same persons
    /// (those with the smallest CRC-32 of their id). The default is 100.
    #[arg(long, value_name = "N", conflicts_with = "person")]
    sample: Option<usize>,
    /// Audit this one person.
    #[arg(long, value_name = "ID")]
    person: Option<String>,
    /// Re-mark every drifted (person, token) pair in the sink's feed, so
    /// the next `sync` sends it again (a logged write).
    #[arg(long)]
    pub repair: bool,
    /// The sink whose Customer.io workspace is audited (its identifier kind
    /// names the persons; `--repair` re-marks in its feed).
    #[arg(long, value_name = "S", default_value = DEFAULT_SINK)]
    sink: String,
    /// Customer.io region: us (api.customer.io) or eu (api-eu.customer.io).
    #[arg(long, value_enum, conflicts_with = "endpoint")]
    region: Option<RegionArg>,
    /// Any App API base URL instead of a region (https, or http to a
    /// loopback host).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RegionArg {
    Us,
    Eu,
}

/// Default `--sample`.
const DEFAULT_SAMPLE: usize = 100;

/// Reads the audit of `args`'s persons from `reg` (a read-only open) and
/// Customer.io.
pub fn read(
    reg: &Registry,
    client: AppApiClient,
    args: &AuditArgs,
) -> Result<AuditReport, CliError> {
    let mut client = client.identifier(identifier(reg, &args.sink)?);
    let selection = match &args.person {
        Some(p) => Selection::Person(p.clone()),
        None => Selection::Sample(args.sample.unwrap_or(DEFAULT_SAMPLE)),
    };
    Ok(audit::audit(reg, &mut client, &selection, &args.sink)?)
}

/// `--repair`: re-marks the report's drift in `reg` (opened for writing;
/// `None` when there is nothing to re-mark, and nothing is opened).
pub fn repair(
    reg: Option<&Registry>,
    args: &AuditArgs,
    report: &mut AuditReport,
) -> Result<(), CliError> {
    match reg {
        Some(reg) => {
            audit::repair(reg, &args.sink, report)?;
        }
        None => report.repaired = Some(0),
    }
    Ok(())
}

/// Prints the report (stdout) and its summary (stderr); the exit code:
/// 1 when drift is left.
pub fn print(report: &AuditReport) -> crate::CmdResult {
    let mut out = Out::stdout();
    out.json(report)?;
    out.flush()?;
    eprintln!("{}", report.summary_line());
    let left = match report.repaired {
        Some(_) => report.unrepairable > 0 || report.deferred > 0,
        None => !report.is_clean(),
    };
    Ok(match left {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

/// The App API client: the key from the environment, the endpoint from
/// `--endpoint` or `--region` (default us).
pub fn client(args: &AuditArgs) -> Result<AppApiClient, CliError> {
    let key = std::env::var(APP_API_KEY_ENV)
        .map_err(|_| CliError(format!("{APP_API_KEY_ENV} is not set (the App API key)")))?;
    let base = match (&args.endpoint, args.region) {
        (Some(url), _) => url.clone(),
        (None, Some(RegionArg::Eu)) => audit::app_api_endpoint(Region::Eu).to_owned(),
        (None, _) => audit::app_api_endpoint(Region::Us).to_owned(),
    };
    Ok(AppApiClient::new(&base, &key)?)
}

/// The identifier kind of `sink`'s persons: the sink's own, or `id` for
/// the default sink before its first export; another unknown sink is an error.
fn identifier(reg: &Registry, sink: &str) -> Result<IdentifierKind, CliError> {
    match reg.sinks().into_iter().find(|s| s.name == sink) {
        Some(s) => Ok(s.settings.identifier),
        None if sink == DEFAULT_SINK => Ok(IdentifierKind::Id),
        None => Err(CliError(format!("invalid sink: no sink named {sink:?}"))),
    }
}

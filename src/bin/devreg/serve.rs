//! `devreg serve` (feature `server`): parses the flags and calls
//! `devreg::server::serve`; everything else is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use devreg::server::{serve, ServerConfig};
use devreg::Registry;

use crate::{CliError, CmdResult};

/// The environment variable holding the signing key of Customer.io's
/// reporting webhook (`POST /v1/webhooks/customerio`).
const CIO_WEBHOOK_KEY_ENV: &str = "CUSTOMERIO_WEBHOOK_SIGNING_KEY";

/// The environment variable holding the bearer token.
const TOKEN_ENV: &str = "DEVREG_API_TOKEN";

/// `devreg serve` flags.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// HOST:PORT (port 0 picks a free one) or a Unix socket path.
    #[arg(long, value_name = "ADDR", default_value = devreg::limits::DEFAULT_SERVER_LISTEN)]
    listen: String,
    /// Serve without a bearer token: only on loopback or a Unix socket,
    /// and only when DEVREG_API_TOKEN is not set.
    #[arg(long)]
    no_auth: bool,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain HTTP on an address that is not loopback.
    #[arg(long)]
    insecure_http: bool,
    /// Where POST /v1/backup writes (a new subdirectory per backup);
    /// without it backups are refused.
    #[arg(long, value_name = "DIR")]
    backup_dir: Option<PathBuf>,
}

/// The server's settings from the flags and `DEVREG_API_TOKEN`, checked
/// (a refusal comes before the database is opened, so nothing is created).
pub fn config(args: &ServeArgs) -> Result<ServerConfig, CliError> {
    let token = match std::env::var(TOKEN_ENV) {
        Ok(t) => Some(t),
        Err(std::env::VarError::NotPresent) => None,
        Err(e) => return Err(CliError(format!("{TOKEN_ENV}: {e}"))),
    };
    let mut config = ServerConfig::new();
    config.listen = args.listen.clone();
    config.token = token;
    config.no_auth = args.no_auth;
    config.tls = args.tls_cert.clone().zip(args.tls_key.clone());
    config.insecure_http = args.insecure_http;
    config.backup_dir = args.backup_dir.clone();
    config.cio_webhook_key = match std::env::var(CIO_WEBHOOK_KEY_ENV) {
        Ok(k) if !k.is_empty() => Some(k),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(e) => return Err(CliError(format!("{CIO_WEBHOOK_KEY_ENV}: {e}"))),
    };
    config.check()?;
    Ok(config)
}

/// Serves `reg` until SIGTERM/SIGINT; prints `listening on URL` on stdout
/// once requests can be made.
pub fn run(reg: Registry, config: ServerConfig) -> CmdResult {
    serve(reg, config, |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    })?;
    eprintln!("stopped: requests finished, registry closed");
    Ok(ExitCode::SUCCESS)
}

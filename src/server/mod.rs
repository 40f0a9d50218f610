//! The registry over HTTP (feature `server`): `devreg serve` and services
//! that embed it call [`serve`]. JSON in and out, a bearer token, TLS
//! through rustls, Prometheus metrics; engine calls run on tokio's blocking
//! pool, never on the async workers (DESIGN.md 18).
//!
//! Modules: `app` (shared state, router, engine calls), `auth`, `errors`,
//! `listen` (address rules, TCP, Unix socket), `tls`, `metrics`,
//! `engine_metrics` (the registry's own counters), `shutdown`, `query`
//! (query-string parsing) and `routes/` (one file per group of endpoints).
//! The answers' shapes are `crate::json`, shared with the CLI.

mod app;
mod auth;
mod engine_metrics;
mod errors;
mod listen;
mod metrics;
mod query;
mod routes;
mod shutdown;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::limits::{DEFAULT_SERVER_LISTEN, SERVER_WORKER_THREADS};
use crate::registry::Registry;

/// How [`serve`] listens and whom it lets in. Start from
/// [`ServerConfig::new`] and set the fields (more may be added).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// `HOST:PORT` (port 0 picks a free one) or the path of a Unix socket
    /// (anything with a `/`, or `unix:PATH`).
    pub listen: String,
    /// The bearer token every `/v1` and `/metrics` request must carry
    /// (`DEVREG_API_TOKEN`). Without one the server refuses to start
    /// unless `no_auth` is set and the address is loopback or a socket.
    pub token: Option<String>,
    /// Serve without authentication: only on loopback or a Unix socket,
    /// and only when no token is given.
    pub no_auth: bool,
    /// PEM certificate chain and private key: serve HTTPS (rustls, ring).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Allow plain HTTP on an address that is not loopback.
    pub insecure_http: bool,
    /// Where `POST /v1/backup` writes (one new subdirectory per backup);
    /// `None` refuses backups.
    pub backup_dir: Option<PathBuf>,
    /// The signing key of Customer.io's reporting webhook
    /// (`CUSTOMERIO_WEBHOOK_SIGNING_KEY`): `POST /v1/webhooks/customerio`
    /// accepts events signed with it; `None` answers that endpoint 404.
    pub cio_webhook_key: Option<String>,
}

impl ServerConfig {
    /// Loopback on the default port, no token, no TLS, no backups.
    pub fn new() -> ServerConfig {
        ServerConfig {
            listen: DEFAULT_SERVER_LISTEN.to_owned(),
            token: None,
            no_auth: false,
            tls: None,
            insecure_http: false,
            backup_dir: None,
            cio_webhook_key: None,
        }
    }

    /// The start-up refusals, without binding anything: a bad `listen`,
    /// no token (unless `no_auth` on a local address), plain HTTP off
    /// loopback, an unreadable certificate or key. [`serve`] checks the
    /// same; a caller checks first to refuse before opening the registry.
    pub fn check(&self) -> Result<()> {
        let bind = listen::parse(&self.listen)?;
        listen::check_policy(&bind, self)?;
        if let Some((cert, key)) = &self.tls {
            tls::acceptor(cert, key)?;
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::new()
    }
}

/// Serves `reg` until SIGTERM or SIGINT, then stops accepting, finishes
/// the requests in flight, closes the registry (final checkpoint) and
/// returns. `on_listening` is called once with the bound address
/// (`http://127.0.0.1:PORT`, `https://...` or `unix:PATH`) when requests
/// can be made. A refused configuration (no token, plain HTTP off
/// loopback, unreadable certificate) is `Error::Invalid` naming the
/// setting, before anything is bound.
pub fn serve(reg: Registry, config: ServerConfig, on_listening: impl FnOnce(&str)) -> Result<()> {
    let bind = listen::parse(&config.listen)?;
    listen::check_policy(&bind, &config)?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    if let Some(dir) = &config.backup_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating backup directory {}", dir.display()), e))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVER_WORKER_THREADS)
        .max_blocking_threads(crate::limits::MAX_SERVER_ENGINE_CALLS)
        .thread_name("devreg-http")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the HTTP runtime", e))?;
    let state = app::AppState::new(Arc::new(reg), &config);
    let router = app::router(state.clone());
    let served = runtime.block_on(listen::run(bind, tls, router, on_listening));
    // Every request has been answered; blocking jobs of dropped
    // connections finish before the runtime is gone.
    drop(runtime);
    let closed = (*state.reg).clone().close();
    served.and(closed)
}

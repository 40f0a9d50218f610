//! Where the server listens: parsing `--listen` (TCP or a Unix socket),
//! the rules on who may be served how (token, loopback, TLS), and the
//! serving loop with its graceful shutdown.

use std::future::IntoFuture;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use super::{shutdown, tls, ServerConfig};
use crate::error::{Error, Result};

/// A parsed `--listen`.
#[derive(Debug)]
pub(crate) enum Bind {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Bind {
    /// Loopback addresses and Unix sockets reach only this machine.
    fn is_local(&self) -> bool {
        match self {
            Bind::Tcp(addr) => addr.ip().is_loopback(),
            Bind::Unix(_) => true,
        }
    }
}

/// `HOST:PORT`, `[V6]:PORT`, `localhost:PORT`, or a socket path (with a
/// `/`, or prefixed `unix:`).
pub(crate) fn parse(listen: &str) -> Result<Bind> {
    if let Some(path) = listen.strip_prefix("unix:") {
        return Ok(Bind::Unix(PathBuf::from(path)));
    }
    if listen.contains('/') {
        return Ok(Bind::Unix(PathBuf::from(listen)));
    }
    let bad = |why: String| Error::invalid("listen", format!("{listen:?} {why}"));
    let mut addrs = listen
        .to_socket_addrs()
        .map_err(|e| bad(format!("is not HOST:PORT or a socket path: {e}")))?;
    addrs
        .next()
        .map(Bind::Tcp)
        .ok_or_else(|| bad("resolves to no address".into()))
}

/// The start-up refusals: no token (unless `--no-auth` on a local
/// address), `--no-auth` with a token or off loopback, plain HTTP off
/// loopback without `--insecure-http`.
pub(crate) fn check_policy(bind: &Bind, config: &ServerConfig) -> Result<()> {
    let token_set = config.token.as_deref().is_some_and(|t| !t.is_empty());
    if config.token.as_deref() == Some("") {
        return Err(Error::invalid("DEVREG_API_TOKEN", "is empty"));
    }
    if config.no_auth && token_set {
        return Err(Error::invalid(
            "no_auth",
            "given while DEVREG_API_TOKEN is set: choose one",
        ));
    }
    if config.no_auth && !bind.is_local() {
        return Err(Error::invalid(
            "no_auth",
            format!("is only allowed on a loopback address or a Unix socket, not {bind:?}"),
        ));
    }
    if !token_set && !config.no_auth {
        return Err(Error::invalid(
            "DEVREG_API_TOKEN",
            "is not set: the server needs a bearer token (or --no-auth on a loopback address)",
        ));
    }
    if !bind.is_local() && config.tls.is_none() && !config.insecure_http {
        return Err(Error::invalid(
            "listen",
            format!(
                "{bind:?} is not loopback: serve it with --tls-cert and --tls-key, or accept \
                 plain HTTP with --insecure-http"
            ),
        ));
    }
    Ok(())
}

/// Binds, reports the address, serves until a signal, then waits for the
/// requests in flight.
pub(crate) async fn run(
    bind: Bind,
    tls: Option<TlsAcceptor>,
    router: Router,
    on_listening: impl FnOnce(&str),
) -> Result<()> {
    let app = router.into_make_service();
    let served = match bind {
        Bind::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io(format!("binding {addr}"), e))?;
            let local = listener
                .local_addr()
                .map_err(|e| Error::io("reading the bound address", e))?;
            match tls {
                None => {
                    on_listening(&format!("http://{local}"));
                    let serve = axum::serve(listener, app);
                    serve
                        .with_graceful_shutdown(shutdown::signal())
                        .into_future()
                        .await
                }
                Some(acceptor) => {
                    let listener = tls::TlsListener::spawn(listener, acceptor, local);
                    on_listening(&format!("https://{local}"));
                    let serve = axum::serve(listener, app);
                    serve
                        .with_graceful_shutdown(shutdown::signal())
                        .into_future()
                        .await
                }
            }
        }
        Bind::Unix(path) => {
            if tls.is_some() {
                return Err(Error::invalid("tls_cert", "is not used on a Unix socket"));
            }
            let listener = UnixListener::bind(&path)
                .map_err(|e| Error::io(format!("binding socket {}", path.display()), e))?;
            on_listening(&format!("unix:{}", path.display()));
            let serve = axum::serve(listener, app);
            let r = serve
                .with_graceful_shutdown(shutdown::signal())
                .into_future()
                .await;
            let _ = std::fs::remove_file(&path);
            r
        }
    };
    served.map_err(|e| Error::io("serving HTTP", e))
}

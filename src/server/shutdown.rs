//! The shutdown signal: SIGTERM or SIGINT. The server then stops
//! accepting, finishes the requests in flight and closes the registry
//! (see `server::serve`).

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C). If a handler cannot
/// be installed, that signal is not waited for (the other still is).
pub(crate) async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {},
        () = int => {},
    }
}

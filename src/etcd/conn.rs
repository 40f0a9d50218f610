//! A blocking handle on an etcd cluster: etcd-client's async client on a
//! private tokio runtime, with per-request timeouts and retries through
//! leader elections and lost members.
//!
//! Callers are devreg's own threads (the writer, the checkpointer, the
//! watch applier) and the library's synchronous API, so every request is
//! spawned on the runtime and waited for over a channel: never `block_on`,
//! which would panic if a caller is itself a tokio worker (a service
//! calling the registry from async code).

use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::error::{Error, Result};
use crate::limits::{
    ETCD_CONNECT_TIMEOUT_MS, ETCD_FIRST_ATTEMPT_TIMEOUT_MS, ETCD_REQUEST_TIMEOUT_MS,
    ETCD_RETRY_MAX_PAUSE_MS, ETCD_RETRY_MS, ETCD_RETRY_PAUSE_MS,
};

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Sending it twice has the effect of sending it once (a read, a put of
    /// an after-image, a create guarded by a compare): retried through
    /// transient failures for up to `ETCD_RETRY_MS`.
    Idempotent,
    /// Sent once; any failure is the caller's.
    Once,
}

/// A connection to one etcd cluster.
pub(crate) struct Conn {
    /// Taken by `drop`, which shuts it down without waiting: a registry may
    /// be dropped on a tokio worker, where a blocking shutdown panics.
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    endpoints: Vec<String>,
}

/// Checks the endpoint list: at least one, each `http://host:port` (TLS to
/// etcd is not built: DESIGN.md 15).
pub(crate) fn validate_endpoints(endpoints: &[String]) -> Result<()> {
    if endpoints.is_empty() {
        return Err(Error::invalid("etcd endpoints", "is empty"));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let field = format!("etcd endpoints[{i}]");
        let Some(rest) = e.strip_prefix("http://") else {
            return Err(Error::invalid(
                field,
                format!("{e:?} is not an http:// URL (TLS to etcd is not supported)"),
            ));
        };
        if rest.is_empty() || (rest.contains('/') && !rest.ends_with('/')) {
            return Err(Error::invalid(field, format!("{e:?} has no host:port")));
        }
    }
    Ok(())
}

impl Conn {
    /// Connects to the cluster at `endpoints` (client URLs of its members).
    pub(crate) fn connect(endpoints: &[String]) -> Result<Conn> {
        validate_endpoints(endpoints)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("devreg-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the etcd client's runtime", e))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(ETCD_CONNECT_TIMEOUT_MS))
            .with_timeout(Duration::from_millis(ETCD_REQUEST_TIMEOUT_MS))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // A member cut off from its leader fails fast, and the
            // request goes to another member.
            .with_require_leader(true);
        let eps = endpoints.to_vec();
        let connect = async move { Client::connect(eps, Some(options)).await };
        let client = wait(&rt, connect)?.map_err(|e| {
            Error::cluster(
                format!("connecting to {}", endpoints.join(",")),
                e.to_string(),
            )
        })?;
        Ok(Conn {
            rt: Some(rt),
            client,
            endpoints: endpoints.to_vec(),
        })
    }

    /// The endpoints it was opened with, comma-separated (for messages).
    pub(crate) fn describe(&self) -> String {
        self.endpoints.join(",")
    }

    /// A client to use from a task spawned on this connection's runtime.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Spawns `fut` on the runtime (a long-running task, such as a watch).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.rt {
            rt.spawn(fut);
        }
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt
            .as_ref()
            .ok_or_else(|| Error::cluster("using the etcd client", "it was shut down"))
    }

    /// Runs the request `make` builds, retrying it as `retry` allows; the
    /// error names `context`.
    pub(crate) fn call<T, F, Fut>(&self, context: &str, retry: Retry, make: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
    {
        let deadline = Instant::now() + Duration::from_millis(ETCD_RETRY_MS);
        let mut pause = Duration::from_millis(ETCD_RETRY_PAUSE_MS);
        let mut attempts = 0u32;
        let mut limit_ms = match retry {
            Retry::Idempotent => ETCD_FIRST_ATTEMPT_TIMEOUT_MS,
            Retry::Once => ETCD_REQUEST_TIMEOUT_MS,
        };
        loop {
            attempts += 1;
            let timed = timed(make(self.client.clone()), limit_ms);
            limit_ms = (limit_ms * 2).min(ETCD_REQUEST_TIMEOUT_MS);
            let (e, transient) = match wait(self.runtime()?, timed)? {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => (e.to_string(), transient_error(&e)),
                Err(elapsed) => (elapsed, true),
            };
            if retry == Retry::Once || !transient || Instant::now() + pause > deadline {
                let detail = match transient && retry == Retry::Idempotent {
                    true => format!("{e} (gave up after {attempts} attempts)"),
                    false => e,
                };
                return Err(Error::cluster(context, detail));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(ETCD_RETRY_MAX_PAUSE_MS));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// `fut` bounded by `limit_ms`: its outcome, or the text of the timeout.
async fn timed<T, Fut>(fut: Fut, limit_ms: u64) -> std::result::Result<T, String>
where
    Fut: Future<Output = T>,
{
    tokio::time::timeout(Duration::from_millis(limit_ms), fut)
        .await
        .map_err(|_| format!("no answer within {limit_ms} ms"))
}

/// Runs `fut` on `rt` and waits for its outcome on this thread.
fn wait<T, Fut>(rt: &tokio::runtime::Runtime, fut: Fut) -> Result<T>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = crossbeam_channel::bounded(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::cluster("waiting for etcd", "the client's task stopped"))
}

/// Whether an error of the client may go away by itself: a lost or
/// unreachable member, no leader (an election), a timeout. A refusal (too
/// many operations, too large a request, the database out of space, a
/// compacted revision) is not.
fn transient_error(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => match format!("{:?}", s.code()).as_str() {
            "Unavailable" | "DeadlineExceeded" | "Aborted" | "Cancelled" => {
                !is_refusal(s.message())
            }
            "Unknown" | "Internal" => is_transient(s.message()),
            _ => false,
        },
        other => is_transient(&other.to_string()),
    }
}

/// Whether a message names a refusal that no retry changes.
fn is_refusal(e: &str) -> bool {
    const PERMANENT: [&str; 5] = [
        "too many operations",
        "too large",
        "database space exceeded",
        "compacted",
        "permission denied",
    ];
    let e = e.to_ascii_lowercase();
    PERMANENT.iter().any(|p| e.contains(p))
}

/// Whether a message (of an error without a status code) says the failure
/// may go away by itself.
pub(crate) fn is_transient(e: &str) -> bool {
    const TRANSIENT: [&str; 11] = [
        "unavailable",
        "no leader",
        "leader changed",
        "deadlineexceeded",
        "timed out",
        "transport error",
        "connect",
        "connection",
        "cancelled",
        "broken pipe",
        "reset",
    ];
    let lower = e.to_ascii_lowercase();
    !is_refusal(e) && TRANSIENT.iter().any(|t| lower.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_plain_http_urls() {
        assert!(validate_endpoints(&[]).is_err());
        let bad = ["127.0.0.1:2379", "https://a:1", "http://"];
        for b in bad {
            let e = validate_endpoints(&["http://a:1".into(), b.into()]).unwrap_err();
            assert!(e.to_string().contains("etcd endpoints[1]"), "{e}");
        }
        assert!(validate_endpoints(&["http://127.0.0.1:2379".into()]).is_ok());
    }

    #[test]
    fn refusals_are_not_retried_and_elections_are() {
        assert!(is_transient(
            "status: Unavailable, message: \"etcdserver: no leader\""
        ));
        assert!(is_transient(
            "tcp connect error: Connection refused (os error 111)"
        ));
        assert!(!is_transient(
            "status: InvalidArgument, message: \"etcdserver: too many operations in txn request\""
        ));
        assert!(!is_transient("etcdserver: mvcc: database space exceeded"));
        assert!(!is_transient(
            "etcdserver: mvcc: required revision has been compacted"
        ));
        assert!(!is_transient("some other error"));
    }
}

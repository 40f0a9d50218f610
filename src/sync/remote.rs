//! A live `devreg serve` as a [`FeedSource`]: the five feed calls of a sync
//! worker made over HTTP, so that a worker runs in its own process
//! (`devreg sync --server URL`).
//!
//! The calls and their answers are the server's API (README, "Server"):
//! `GET /v1/sinks`, `POST /v1/sinks/{sink}/export?max_ops=` (200 with
//! `{"batch_id","body"}`, 204 when drained; the export creates a missing
//! sink), `POST /v1/sinks/{sink}/ack/{id}` and `.../nack/{id}` with
//! `{"failed":[{"index","reason"}]}`. The batch body is taken from the answer
//! as raw JSON text and sent to Customer.io byte for byte.
//!
//! A call that finds the server unreachable, or answered 429 or 503, is
//! tried again (`limits::REMOTE_FEED_ATTEMPTS`, doubling waits from
//! `limits::REMOTE_FEED_BACKOFF_MS`): a server being restarted does not stop
//! the worker. Every call may be repeated safely: an export returns the
//! batch in flight until it is acknowledged, and acknowledging a batch again
//! changes nothing. Any other answer is an [`Error::Http`].

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::config::Endpoint;
use super::source::{Exported, FeedSource};
use crate::error::{Error, Result};
use crate::feed::SinkInfo;
use crate::limits::{REMOTE_FEED_ATTEMPTS, REMOTE_FEED_BACKOFF_MS, REMOTE_FEED_TIMEOUT_MS};

/// An HTTP client of a live `devreg serve`: the URL checked once, the
/// bearer token, a keep-alive agent. One request per `send`, no retry;
/// `RemoteFeed` and `devreg --server` are built on it.
pub struct ServerClient {
    endpoint: Endpoint,
    /// `Bearer <token>`, or None for a server started with `--no-auth`.
    auth: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("ServerClient")
            .field("server", &self.endpoint.join(""))
            .finish_non_exhaustive()
    }
}

/// One answer of the server: its status and body text.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, as sent.
    pub body: String,
}

/// The feed of a live server.
#[derive(Debug)]
pub struct RemoteFeed {
    client: ServerClient,
}

#[derive(Deserialize)]
struct ExportAnswer<'a> {
    batch_id: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
}

impl ServerClient {
    /// A client of the server at `server` (https, or http to a loopback
    /// host: the token must not travel in clear text), sending `token` as a
    /// bearer token when given. Sends nothing yet.
    pub fn new(server: &str, token: Option<&str>) -> Result<ServerClient> {
        let endpoint = Endpoint::parse_as(server, "server")?;
        let timeout = Duration::from_millis(REMOTE_FEED_TIMEOUT_MS);
        let agent = endpoint.agent(timeout, timeout);
        Ok(ServerClient {
            endpoint,
            auth: token.map(|t| format!("Bearer {t}")),
            agent,
        })
    }

    /// One request: `method` is GET or POST, `path` starts with '/' and may
    /// carry a query. A transport failure is `Error::Io`; any status is an
    /// `Answer`.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer> {
        let url = self.endpoint.join(path);
        let failed = |e: String| Error::io(format!("{method} {url}"), std::io::Error::other(e));
        let sent = match method {
            "GET" => self.with_auth(self.agent.get(&url)).call(),
            _ => self
                .with_auth(self.agent.post(&url))
                .header("Content-Type", "application/json")
                .send(body.unwrap_or("").as_bytes()),
        };
        let mut resp = sent.map_err(|e| failed(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| failed(format!("reading the answer: {e}")))?;
        Ok(Answer { status, body })
    }

    fn with_auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(a) => req.header("Authorization", a),
            None => req,
        }
    }
}

impl RemoteFeed {
    /// A feed client of the server at `server`; see [`ServerClient::new`].
    pub fn new(server: &str, token: Option<&str>) -> Result<RemoteFeed> {
        Ok(RemoteFeed {
            client: ServerClient::new(server, token)?,
        })
    }

    /// One request, tried again while the server is unreachable or busy.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer> {
        let mut wait = Duration::from_millis(REMOTE_FEED_BACKOFF_MS);
        let mut attempt = 1;
        loop {
            let last = attempt >= REMOTE_FEED_ATTEMPTS;
            match self.client.send(method, path, body) {
                Ok(a) if !last && (a.status == 429 || a.status == 503) => {}
                Err(_) if !last => {}
                done => return done,
            }
            std::thread::sleep(wait);
            wait = wait.saturating_mul(2);
            attempt += 1;
        }
    }

    /// The answer if its status is one of `want`, else `Error::Http`.
    fn check_status(&self, what: &str, a: Answer, want: &[u16]) -> Result<Answer> {
        if want.contains(&a.status) {
            return Ok(a);
        }
        Err(Error::Http {
            context: format!("{what} at {}", self.client.endpoint.join("")),
            status: a.status,
            body: super::response::one_line(&a.body, crate::limits::HTTP_ERROR_BODY_CHARS),
        })
    }
}

/// A sink name or batch id goes into a URL path as it is: it must be one.
fn path_safe(field: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    match ok {
        true => Ok(()),
        false => Err(Error::invalid(
            field,
            format!("{s:?} is not a-z, 0-9, '_' or '-'"),
        )),
    }
}

/// An export answer `{"batch_id","body"}`: the body kept as the server's
/// exact text, its operations counted.
fn parse_export(answer: &str) -> Result<Exported> {
    let bad = |e: String| Error::invalid("export", format!("the server's batch: {e}"));
    let ans: ExportAnswer = serde_json::from_str(answer).map_err(|e| bad(e.to_string()))?;
    path_safe("batch_id", &ans.batch_id)?;
    let ops: BatchBody = serde_json::from_str(ans.body.get()).map_err(|e| bad(e.to_string()))?;
    if ops.batch.is_empty() {
        return Err(bad("it holds no operation".into()));
    }
    Ok(Exported::new(
        ans.batch_id,
        ans.body.get().to_owned(),
        ops.batch.len(),
    ))
}

fn sink_info(v: &serde_json::Value) -> Option<SinkInfo> {
    // Absent for a track-v2 sink by id; an unknown name is not this sink.
    let text = |key: &str| v.get(key).and_then(|f| f.as_str());
    let mut settings = crate::format::SinkSettings::default();
    if let Some(f) = text("format") {
        settings.format = f.parse().ok()?;
    }
    if let Some(i) = text("identifier") {
        settings.identifier = i.parse().ok()?;
    }
    settings.diagnostics = v.get("diagnostics").and_then(|d| d.as_bool()) == Some(true);
    Some(SinkInfo {
        name: v.get("name")?.as_str()?.to_owned(),
        pending: v.get("pending")?.as_u64()?,
        in_flight: v
            .get("in_flight")
            .and_then(|f| f.as_str())
            .map(str::to_owned),
        batches_exported: v
            .get("batches_exported")
            .and_then(|n| n.as_u64())
            .unwrap_or(0),
        dead_letters: v.get("dead_letters").and_then(|n| n.as_u64()).unwrap_or(0),
        dead_letters_discarded: v
            .get("dead_letters_discarded")
            .and_then(|n| n.as_u64())
            .unwrap_or(0),
        settings,
        format: (!settings.is_default()).then_some(settings.format.as_str()),
        identifier: (!settings.is_default()).then_some(settings.identifier.as_str()),
        diagnostics: settings.diagnostics,
    })
}

impl FeedSource for RemoteFeed {
    fn sink(&self, sink: &str) -> Result<Option<SinkInfo>> {
        let a = self.call("GET", "/v1/sinks", None)?;
        let a = self.check_status("listing the sinks", a, &[200])?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&a.body).map_err(|e| {
            Error::invalid("sinks", format!("the server's answer is not a list: {e}"))
        })?;
        Ok(list
            .iter()
            .filter(|v| v.get("name").and_then(|n| n.as_str()) == Some(sink))
            .find_map(sink_info))
    }

    /// Nothing to do: the server's export creates a missing sink.
    fn add_sink(&self, sink: &str) -> Result<bool> {
        path_safe("sink", sink)?;
        Ok(false)
    }

    /// `max_bytes` is the server's: its export keeps bodies under
    /// Customer.io's limit.
    fn export(&self, sink: &str, max_ops: u32, _max_bytes: u32) -> Result<Option<Exported>> {
        path_safe("sink", sink)?;
        let path = format!("/v1/sinks/{sink}/export?max_ops={max_ops}");
        let a = self.call("POST", &path, None)?;
        let a = self.check_status("exporting a batch", a, &[200, 204])?;
        if a.status == 204 {
            return Ok(None);
        }
        parse_export(&a.body).map(Some)
    }

    fn ack(&self, sink: &str, batch_id: &str) -> Result<()> {
        path_safe("sink", sink)?;
        path_safe("batch_id", batch_id)?;
        let a = self.call("POST", &format!("/v1/sinks/{sink}/ack/{batch_id}"), None)?;
        self.check_status("acknowledging a batch", a, &[200])
            .map(drop)
    }

    fn nack(&self, sink: &str, batch_id: &str, failed: &[(u32, String)]) -> Result<()> {
        path_safe("sink", sink)?;
        path_safe("batch_id", batch_id)?;
        let failed: Vec<serde_json::Value> = failed
            .iter()
            .map(|(i, r)| serde_json::json!({"index": i, "reason": r}))
            .collect();
        let body = serde_json::json!({ "failed": failed }).to_string();
        let path = format!("/v1/sinks/{sink}/nack/{batch_id}");
        let a = self.call("POST", &path, Some(&body))?;
        self.check_status("acknowledging a batch with failures", a, &[200])
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_answer_keeps_the_body_byte_for_byte() {
        // Key order and spacing as the server sent them (a re-serialised
        // Value would sort "type" before "identifiers").
        let body = r#"{"batch":[{"type":"person","identifiers":{"id":"p1"}}, {"type":"x"}]}"#;
        let answer = format!(r#"{{"batch_id":"default-000001","body":{body}}}"#);
        let b = parse_export(&answer).unwrap();
        assert_eq!((b.id(), b.body(), b.len()), ("default-000001", body, 2));
    }

    #[test]
    fn a_bad_export_answer_is_an_error_naming_it() {
        for (answer, says) in [
            (r#"{"batch_id":"a/../b","body":{"batch":[{}]}}"#, "batch_id"),
            (r#"{"batch_id":"a","body":{"batch":[]}}"#, "no operation"),
            (r#"{"batch_id":"a","body":{"nobatch":1}}"#, "export"),
            (r#"not json"#, "export"),
        ] {
            let e = parse_export(answer)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(says), "{answer}: {e}");
        }
    }

    #[test]
    fn the_server_url_is_checked_and_never_printed_with_the_token() {
        let e = RemoteFeed::new("http://example.com:7600", None).unwrap_err();
        assert!(e.to_string().starts_with("invalid server:"), "{e}");
        let f = RemoteFeed::new("http://127.0.0.1:7600/", Some("s3cret")).unwrap();
        assert!(!format!("{f:?}").contains("s3cret"));
        assert_eq!(
            f.client.endpoint.join("/v1/sinks"),
            "http://127.0.0.1:7600/v1/sinks"
        );
        // Regression: the query stayed in the path, escaped (`%3F`).
        assert_eq!(
            f.client.endpoint.join("/v1/sinks/cio/export?max_ops=10"),
            "http://127.0.0.1:7600/v1/sinks/cio/export?max_ops=10"
        );
    }
}

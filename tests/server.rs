//! `devreg serve` over real HTTP (feature `server`): every endpoint with
//! its status and body shape, authentication and the start-up refusals,
//! bad input and limits, concurrent clients against a model, SIGTERM and
//! SIGKILL. Each test starts the binary on a free loopback port and talks
//! to it with ureq; the two that need an I/O fault (a failed fsync for
//! `/readyz`'s 503, a slow one for the 429) run `devreg::server::serve` in
//! this process on a registry opened with a `FaultPlan`, the library hook
//! the binary does not expose.

mod common;
#[path = "support/server.rs"]
mod served;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Model;
use devreg::{Config, FaultPlan, FeedbackOutcome, IoOp, Op, Platform, Register, Registry};
use serde_json::{json, Value};
use served::Server;

const TOKEN: &str = "test-token-0123456789";

fn devreg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_devreg"))
}

/// A client that treats every status as an answer.
struct Client {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

impl Client {
    fn new(server: &Server, token: Option<&str>) -> Client {
        Client::at(&server.url, token)
    }

    /// A client of the server at `url`.
    fn at(url: &str, token: Option<&str>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client {
            agent,
            url: url.to_owned(),
            token: token.map(str::to_owned),
        }
    }

    fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
        let mut r = r.unwrap();
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap();
        (status, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut req = self.agent.get(format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::answer(req.call())
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        let mut req = self.agent.post(format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::answer(req.send(body))
    }

    /// A POST whose transport may fail (the server is being killed).
    fn try_post(&self, path: &str, body: &str) -> Option<u16> {
        let mut req = self.agent.post(format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut r = req.send(body).ok()?;
        let status = r.status().as_u16();
        r.body_mut().read_to_string().ok()?;
        Some(status)
    }

    fn get_json(&self, path: &str) -> (u16, Value) {
        let (s, b) = self.get(path);
        (
            s,
            serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: {e}: {b:?}")),
        )
    }

    fn post_json(&self, path: &str, body: &str) -> (u16, Value) {
        let (s, b) = self.post(path, body);
        let v = match b.is_empty() {
            true => Value::Null,
            false => serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: {e}: {b:?}")),
        };
        (s, v)
    }
}

/// Asserts an error answer: status, `{"error":{"code","message","field"}}`.
fn assert_error(answer: (u16, Value), status: u16, field: Option<&str>) -> String {
    let (s, v) = answer;
    assert_eq!(s, status, "{v}");
    let e = &v["error"];
    assert!(e["code"].is_string() && e["message"].is_string(), "{v}");
    assert_eq!(e["field"].as_str(), field, "{v}");
    e["message"].as_str().unwrap().to_owned()
}

/// The import line of an operation.
fn line(op: &Op) -> String {
    match op {
        Op::Register(r) => json!({
            "op": "register", "token": r.token, "platform": r.platform.as_str(),
            "person": r.person, "seen_ms": r.seen_ms,
        }),
        Op::Touch { token, seen_ms } => json!({"op":"touch","token":token,"seen_ms":seen_ms}),
        Op::Rotate {
            old_token,
            new_token,
            seen_ms,
        } => json!({
            "op":"rotate","old_token":old_token,"new_token":new_token,"seen_ms":seen_ms,
        }),
        Op::Remove { token } => json!({"op":"remove","token":token}),
        Op::Feedback {
            token,
            outcome,
            at_ms,
            reason,
        } => json!({
            "op":"feedback","token":token,"outcome":outcome.as_str(),"at_ms":at_ms,"reason":reason,
        }),
        other => panic!("no line for {other:?}"),
    }
    .to_string()
}

fn register(token: &str, person: &str, seen_ms: u64) -> Op {
    Op::Register(Register {
        token: token.into(),
        platform: if seen_ms.is_multiple_of(2) {
            Platform::Ios
        } else {
            Platform::Android
        },
        person: Some(person.into()),
        seen_ms,
        attributes: None,
    })
}

/// Runs the CLI on DB and parses its stdout as JSON.
fn cli_json(db: &Path, args: &[&str]) -> Value {
    let out = devreg().arg("--db").arg(db).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const T0: u64 = 1_700_000_000_000;

/// Every endpoint's status and body shape; the reads answer what the CLI
/// prints for the same database; SIGTERM exits 0 with the registry closed.
#[test]
fn every_endpoint_answers_with_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (db, backups) = (dir.path().join("db"), dir.path().join("backups"));
    let backup_arg = backups.to_str().unwrap();
    let server = Server::start(&db, Some(TOKEN), &["--backup-dir", backup_arg]);
    let c = Client::new(&server, Some(TOKEN));

    // Events: NDJSON with a rejected line, then a JSON array.
    let ndjson = [
        line(&register("tok-a", "ann", T0)),
        String::new(),
        line(&register("tok-b", "ann", T0 + 1)),
        r#"{"op":"touch","token":"","seen_ms":5}"#.into(),
        line(&Op::Touch {
            token: "missing".into(),
            seen_ms: T0,
        }),
    ]
    .join("\n");
    let (s, v) = c.post_json("/v1/events?durability=immediate", &ndjson);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"], 2);
    assert_eq!(v["skipped"], 1);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["rejected"][0]["index"], 3);
    assert_eq!(v["rejected"][0]["field"], "token");
    assert!(
        v["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid token"),
        "{v}"
    );
    let array = format!("[{}]", line(&register("tok-c", "bob", T0 + 2)));
    let (s, v) = c.post_json("/v1/events?durability=eventual", &array);
    assert_eq!(
        (s, v),
        (200, json!({"applied":1,"skipped":0,"rejected":[]}))
    );

    // Device reads.
    let (s, device) = c.get_json("/v1/devices/tok-a");
    assert_eq!(s, 200);
    assert_eq!(device["person"], "ann");
    assert_eq!(device["platform"], "ios");
    assert_error(c.get_json("/v1/devices/nope"), 404, Some("token"));
    let (s, person) = c.get_json("/v1/people/ann/devices");
    assert_eq!((s, person.as_array().unwrap().len()), (200, 2));
    assert_eq!(person[0]["token"], "tok-b", "most recently seen first");
    let (s, recent) = c.get_json("/v1/people/ann/most-recent?platform=ios");
    assert_eq!((s, recent["token"].as_str()), (200, Some("tok-a")));
    assert_error(c.get_json("/v1/people/zed/most-recent"), 404, Some("id"));
    assert_eq!(
        c.get_json(&format!("/v1/active?since_ms={}", T0 + 1)),
        (200, json!({"count":2}))
    );
    assert_eq!(
        c.get_json("/v1/active?since_ms=0&platform=android"),
        (200, json!({"count":1}))
    );

    // The dump in pages of 2, resumed with the opaque cursor.
    let (s, p1) = c.get_json("/v1/devices?limit=2");
    assert_eq!(s, 200);
    let tokens = |p: &Value| -> Vec<String> {
        p["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["token"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(tokens(&p1), ["tok-a", "tok-b"]);
    assert_eq!(
        p1["devices"][0]["op"], "register",
        "a dump line is an import line"
    );
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (s, p2) = c.get_json(&format!("/v1/devices?limit=2&cursor={cursor}"));
    assert_eq!((s, tokens(&p2)), (200, vec!["tok-c".to_owned()]));
    assert!(p2["next_cursor"].is_null());

    // History.
    let (s, history) = c.get_json("/v1/history/tok-a");
    assert_eq!((s, history[0]["owner_after"].as_str()), (200, Some("ann")));
    let (s, owner) = c.get_json("/v1/owner-at/tok-a?at_ms=99999999999999");
    assert_eq!(
        (s, owner["owner"].as_str(), owner["by"].as_str()),
        (200, Some("ann"), Some("commit"))
    );
    let (s, changes) = c.get_json("/v1/changes?since_ms=0&limit=2");
    assert_eq!((s, changes["changes"].as_array().unwrap().len()), (200, 2));
    assert_eq!(changes["more"], true);
    let cursor = changes["cursor"].as_str().unwrap();
    let (s, rest) = c.get_json(&format!("/v1/changes?since_ms=0&cursor={cursor}"));
    assert_eq!(
        (s, rest["changes"].as_array().unwrap().len()),
        (200, 1),
        "{rest}"
    );

    feed_endpoints(&c);
    let http = [
        ("get", c.get_json("/v1/devices/tok-b").1),
        ("person", c.get_json("/v1/people/ann/devices").1),
        ("stats", c.get_json("/v1/stats").1),
        ("sinks", c.get_json("/v1/sinks").1),
        ("history", c.get_json("/v1/history/tok-c").1),
    ];
    ops_endpoints(&c, &backups);

    let (status, err) = server.stop();
    assert!(status.success(), "SIGTERM: {status}; {err}");
    // The CLI prints the same JSON for the same database.
    for (cmd, answer) in http {
        let args: Vec<&str> = match cmd {
            "get" => vec!["get", "tok-b"],
            "person" => vec!["person", "ann"],
            "history" => vec!["history", "tok-c"],
            other => vec![other],
        };
        assert_eq!(cli_json(&db, &args), answer, "{cmd}");
    }
}

/// Export (200, then the same batch, then 204), ack, nack, dead letters,
/// requeue, sinks.
fn feed_endpoints(c: &Client) {
    let (s, batch) = c.post_json("/v1/sinks/cio/export?max_ops=2", "");
    assert_eq!(s, 200, "{batch}");
    let id = batch["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(batch["body"]["batch"].as_array().unwrap().len(), 2);
    assert_eq!(
        c.post_json("/v1/sinks/cio/export?max_ops=2", "").1,
        batch,
        "same until acked"
    );
    let (s, v) = c.post_json(&format!("/v1/sinks/cio/ack/{id}"), "");
    assert_eq!(
        (s, v),
        (
            200,
            json!({"acked": id, "failed": 0, "already_acked": false})
        )
    );
    let (s, v) = c.post_json(&format!("/v1/sinks/cio/ack/{id}"), "");
    assert_eq!((s, v["already_acked"].as_bool()), (200, Some(true)));
    let (s, batch) = c.post_json("/v1/sinks/cio/export", "");
    assert_eq!(s, 200);
    let id = batch["batch_id"].as_str().unwrap().to_owned();
    let nack = r#"{"failed":[{"index":0,"reason":"invalid token"}]}"#;
    let (s, v) = c.post_json(&format!("/v1/sinks/cio/nack/{id}"), nack);
    assert_eq!(
        (s, v),
        (
            200,
            json!({"acked": id, "failed": 1, "already_acked": false})
        )
    );
    assert_eq!(
        c.post_json("/v1/sinks/cio/export", ""),
        (204, Value::Null),
        "drained"
    );
    let (s, dead) = c.get_json("/v1/sinks/cio/dead-letters");
    assert_eq!((s, dead.as_array().unwrap().len()), (200, 1));
    assert_eq!(dead[0]["reason"], "invalid token");
    assert!(dead[0]["operation"].is_object(), "{dead}");
    let (s, sinks) = c.get_json("/v1/sinks");
    assert_eq!(
        (
            s,
            sinks[0]["name"].as_str(),
            sinks[0]["dead_letters"].as_u64()
        ),
        (200, Some("cio"), Some(1))
    );
    assert_eq!(
        c.post_json("/v1/sinks/cio/requeue", ""),
        (200, json!({"requeued": 1}))
    );
    assert_eq!(
        c.post_json("/v1/sinks/cio/export", "").0,
        200,
        "requeued op is pending"
    );
    assert_error(c.post_json("/v1/sinks/nope/ack/x", ""), 404, Some("sink"));
    assert_error(
        c.post_json("/v1/sinks/cio/ack/cio-999999999999", ""),
        409,
        Some("batch_id"),
    );
    assert_error(c.get_json("/v1/sinks/nope/dead-letters"), 404, Some("sink"));
}

/// Backup, probes, metrics, an unknown route.
fn ops_endpoints(c: &Client, backups: &Path) {
    let (s, report) = c.post_json("/v1/backup", "");
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["devices"], 3);
    let dest = Path::new(report["dest"].as_str().unwrap());
    assert!(dest.starts_with(backups), "{dest:?}");
    let copy = Registry::open_read_only(dest).unwrap();
    assert_eq!(copy.stats().devices, 3);
    copy.close().unwrap();
    assert_eq!(c.get_json("/healthz"), (200, json!({"status":"ok"})));
    assert_eq!(c.get_json("/readyz"), (200, json!({"status":"ready"})));
    let (s, text) = c.get("/metrics");
    assert_eq!(s, 200);
    for needle in [
        "devreg_operations_total{kind=\"register\",outcome=\"applied\"} 3",
        "devreg_operations_total{kind=\"touch\",outcome=\"not_found\"} 1",
        "devreg_http_events_total{kind=\"register\",outcome=\"applied\"} 3",
        "devreg_http_events_total{kind=\"touch\",outcome=\"skipped\"} 1",
        "devreg_http_events_total{kind=\"unknown\",outcome=\"rejected\"} 1",
        "devreg_group_commit_records_count ",
        "devreg_log_fsync_seconds_bucket{le=\"+Inf\"} ",
        "devreg_checkpoint_duration_seconds_count ",
        "devreg_store_compactions_total ",
        "devreg_store_page_merges_total ",
        "devreg_checkpoints_beside_merges_total ",
        "devreg_store_page_merge_written_bytes_total ",
        "devreg_heap_trims_total ",
        "devreg_registry_failed 0",
        "devreg_devices 3",
        "devreg_feed_pending_operations{sink=\"cio\"}",
        "devreg_http_requests_total{route=\"/v1/devices/{token}\",method=\"GET\",status=\"404\"} 1",
        "devreg_http_request_duration_seconds_count{route=\"/v1/events\"} 2",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
    assert_error(c.get_json("/v1/nothing"), 404, Some("path"));
    let (s, v) = c.get_json("/v1/events");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

/// Runs `devreg serve` expecting a refusal: exits non-zero within 10 s
/// without listening; returns its stderr.
fn refused(token: Option<&str>, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = devreg();
    cmd.arg("--db")
        .arg(dir.path().join("db"))
        .arg("serve")
        .args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove("DEVREG_API_TOKEN");
    if let Some(t) = token {
        cmd.env("DEVREG_API_TOKEN", t);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("{args:?} was not refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?} listened");
    assert!(
        !dir.path().join("db").exists(),
        "{args:?} created the database"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn authentication_and_start_up_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("db"), Some(TOKEN), &[]);
    let none = Client::new(&server, None);
    let wrong = Client::new(&server, Some("test-token-0123456788"));
    let right = Client::new(&server, Some(TOKEN));
    assert_error(none.get_json("/v1/stats"), 401, Some("authorization"));
    assert_error(wrong.get_json("/v1/stats"), 401, Some("authorization"));
    assert_error(
        wrong.post_json("/v1/events", ""),
        401,
        Some("authorization"),
    );
    assert_error(none.get_json("/metrics"), 401, Some("authorization"));
    assert_eq!(right.get_json("/v1/stats").0, 200);
    assert_eq!(none.get_json("/healthz").0, 200, "probes need no token");
    assert_eq!(none.get_json("/readyz").0, 200);
    drop(server);

    let msg = refused(None, &["--listen", "127.0.0.1:0"]);
    assert!(
        msg.contains("invalid DEVREG_API_TOKEN: is not set"),
        "{msg}"
    );
    let msg = refused(None, &["--listen", "0.0.0.0:0", "--no-auth"]);
    assert!(msg.contains("invalid no_auth"), "{msg}");
    let msg = refused(Some(TOKEN), &["--listen", "0.0.0.0:0"]);
    assert!(
        msg.contains("invalid listen") && msg.contains("--insecure-http"),
        "{msg}"
    );
    let msg = refused(Some(TOKEN), &["--listen", "127.0.0.1:0", "--no-auth"]);
    assert!(msg.contains("invalid no_auth"), "{msg}");
    let msg = refused(Some(""), &["--listen", "127.0.0.1:0"]);
    assert!(msg.contains("DEVREG_API_TOKEN: is empty"), "{msg}");

    // --no-auth on loopback serves without a token.
    let server = Server::start(&dir.path().join("db"), None, &["--no-auth"]);
    assert_eq!(Client::new(&server, None).get_json("/v1/stats").0, 200);
}

#[test]
fn bad_input_and_limits_name_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("db"), Some(TOKEN), &[]);
    let c = Client::new(&server, Some(TOKEN));
    assert_error(
        c.post_json("/v1/events", r#"[{"op":"touch""#),
        400,
        Some("body"),
    );
    assert_error(
        c.post_json("/v1/events?durability=later", ""),
        400,
        Some("durability"),
    );
    assert_error(
        c.post_json("/v1/events?durabilty=eventual", ""),
        400,
        Some("durabilty"),
    );
    for (path, field) in [
        ("/v1/devices?limit=0", "limit"),
        ("/v1/devices?limit=1001", "limit"),
        ("/v1/devices?cursor=zz", "cursor"),
        ("/v1/active?since_ms=soon", "since_ms"),
        ("/v1/active", "since_ms"),
        ("/v1/active?since_ms=0&platform=symbian", "platform"),
        ("/v1/owner-at/t", "at_ms"),
        ("/v1/owner-at/t?at_ms=1&by=wall", "by"),
        ("/v1/changes?since_ms=0&cursor=nope", "cursor"),
        ("/v1/changes?since_ms=0&limit=100000", "limit"),
        ("/v1/devices/%FF", "path"),
        ("/v1/history/%C3%28", "path"),
    ] {
        assert_error(c.get_json(path), 400, Some(field));
    }
    assert_error(
        c.post_json("/v1/sinks/cio/export?max_ops=1001", ""),
        400,
        Some("max_ops"),
    );
    assert_error(c.post_json("/v1/sinks/No!/export", ""), 400, Some("sink"));
    assert_eq!(c.post_json("/v1/sinks/cio/export", "").0, 204);
    assert_error(c.post_json("/v1/sinks/cio/nack/b", "{"), 400, Some("body"));
    let twice = r#"{"failed":[{"index":1,"reason":"a"},{"index":1,"reason":"b"}]}"#;
    assert_error(
        c.post_json("/v1/sinks/cio/nack/b", twice),
        400,
        Some("failed"),
    );

    // The body limit: one byte over is 413, whether declared up front or
    // found while reading a chunked body; nothing is applied. (Raw
    // requests: a client that writes the whole body before reading, as
    // ureq does, sees the connection closed after the early answer.)
    let limit = devreg::limits::MAX_SERVER_BODY_BYTES;
    let head = format!("Content-Length: {}\r\n", limit + 1);
    assert_error(raw_post(&server, &head, b""), 413, Some("body"));
    let mut big = line(&register("big", "ann", T0)).into_bytes();
    big.push(b'\n');
    big.resize(limit + 1, b' ');
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_error(
        raw_post(&server, "Transfer-Encoding: chunked\r\n", &chunked),
        413,
        Some("body"),
    );
    // The event count limit.
    let n = devreg::limits::MAX_SERVER_EVENTS_PER_REQUEST + 1;
    let many = vec![line(&register("many", "ann", T0)); n].join("\n");
    assert_error(c.post_json("/v1/events", &many), 413, Some("body"));
    // One event over the line limit is rejected; the others apply.
    let huge = format!(
        "{}\n{{\"op\":\"remove\",\"token\":\"{}\"}}",
        line(&register("ok", "ann", T0)),
        "x".repeat(devreg::limits::MAX_IMPORT_LINE_BYTES)
    );
    let (s, v) = c.post_json("/v1/events", &huge);
    assert_eq!((s, v["applied"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(
        (
            v["rejected"][0]["index"].as_u64(),
            v["rejected"][0]["field"].as_str()
        ),
        (Some(1), Some("event"))
    );
    let (s, page) = c.get_json("/v1/devices");
    assert_eq!(s, 200);
    let tokens: Vec<_> = page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["token"].clone())
        .collect();
    assert_eq!(
        tokens,
        [json!("ok")],
        "nothing of the refused requests applied"
    );
}

/// Eight clients post disjoint workloads at once; every answer's counts
/// and the final state agree with one model per client.
#[test]
fn concurrent_clients_agree_with_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("db"), Some(TOKEN), &[]);
    let models: Vec<Model> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let c = Client::new(&server, Some(TOKEN));
                scope.spawn(move || client_workload(&c, t))
            })
            .collect();
        threads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let expected: Vec<devreg::Device> = {
        let mut all: Vec<_> = models
            .into_iter()
            .flat_map(|m| m.devices.into_values())
            .collect();
        all.sort_by(|a, b| a.token.cmp(&b.token));
        all
    };
    let c = Client::new(&server, Some(TOKEN));
    let mut got = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page) = c.get_json(&format!("/v1/devices?limit=1000&cursor={cursor}"));
        assert_eq!(s, 200);
        got.extend(page["devices"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    let want: Vec<Value> = expected
        .iter()
        .map(|d| {
            json!({"op":"register","token":d.token,"platform":d.platform.as_str(),
            "person":d.person,"last_seen_ms":d.last_seen_ms,"attributes":{}})
        })
        .collect();
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(got, want);
    let (status, err) = server.stop();
    assert!(status.success(), "{err}");
}

/// One client's requests on its own tokens and persons; returns its model.
fn client_workload(c: &Client, t: u64) -> Model {
    let mut rng = common::Rng::new(t + 1);
    let mut model = Model::new(devreg::limits::DEFAULT_MAX_DEVICES_PER_PERSON);
    let mut fresh = 1000;
    for _ in 0..20 {
        let ops: Vec<Op> = (0..25)
            .map(|_| {
                let token = format!("c{t}-{}", rng.below(60));
                let seen = T0 + rng.below(1_000_000);
                match rng.below(10) {
                    0..=5 => register(&token, &format!("p{t}-{}", rng.below(4)), seen),
                    6 | 7 => Op::Touch {
                        token,
                        seen_ms: seen,
                    },
                    8 => {
                        fresh += 1;
                        Op::Rotate {
                            old_token: token,
                            new_token: format!("c{t}-{fresh}"),
                            seen_ms: seen,
                        }
                    }
                    _ => Op::Remove { token },
                }
            })
            .collect();
        let applied = ops.iter().filter(|op| model.apply(op).is_applied()).count();
        let body: Vec<String> = ops.iter().map(line).collect();
        let (s, v) = c.post_json("/v1/events", &body.join("\n"));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["applied"].as_u64(), Some(applied as u64), "{v}");
        assert_eq!(
            v["skipped"].as_u64(),
            Some((ops.len() - applied) as u64),
            "{v}"
        );
    }
    model
}

/// SIGKILL under load: after a restart every request answered 200 with
/// immediate durability is there.
#[test]
fn sigkill_under_load_keeps_every_acknowledged_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut server = Server::start(&db, Some(TOKEN), &[]);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (c, acked, stop) = (
                Client::new(&server, Some(TOKEN)),
                acked.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                for i in 0.. {
                    let tokens: Vec<String> = (0..10).map(|j| format!("k{t}-{i}-{j}")).collect();
                    let body: Vec<String> = tokens
                        .iter()
                        .map(|tok| line(&register(tok, &format!("p{t}-{i}"), T0 + i)))
                        .collect();
                    match c.try_post("/v1/events?durability=immediate", &body.join("\n")) {
                        Some(200) => acked.lock().unwrap().extend(tokens),
                        Some(other) => panic!("answered {other}"),
                        None => return,
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) && i > 10_000 {
                        return;
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    while acked.lock().unwrap().len() < 500 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500, "only {} acknowledged", acked.len());
    drop(server);
    let server = Server::start(&db, Some(TOKEN), &[]);
    let c = Client::new(&server, Some(TOKEN));
    let (s, stats) = c.get_json("/v1/stats");
    assert_eq!(s, 200);
    assert!(
        stats["devices"].as_u64().unwrap() >= acked.len() as u64,
        "{stats}"
    );
    for token in acked.iter().step_by(7).chain(acked.last()) {
        assert_eq!(
            c.get(&format!("/v1/devices/{token}")).0,
            200,
            "{token} lost"
        );
    }
    drop(server);
    let reg = Registry::open(&db).unwrap();
    let missing: Vec<_> = acked.iter().filter(|t| reg.device(t).is_none()).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged but lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    reg.close().unwrap();
}

/// HTTPS with a self-signed certificate the client trusts.
#[test]
fn serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, pem("CERTIFICATE", made.cert.der())).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &made.key_pair.serialize_der())).unwrap();
    let args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let server = Server::start(&dir.path().join("db"), Some(TOKEN), &args);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let root = ureq::tls::Certificate::from_der(made.cert.der()).to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[root]))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .build()
        .into();
    let c = Client {
        agent,
        url: server.url.clone(),
        token: Some(TOKEN.into()),
    };
    assert_eq!(c.get_json("/v1/stats").0, 200);
    assert_error(
        Client { token: None, ..c }.get_json("/v1/stats"),
        401,
        Some("authorization"),
    );
    // A bad key is refused at start, naming the flag.
    std::fs::write(&key, "not a key").unwrap();
    let msg = refused(
        Some(TOKEN),
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(msg.contains("invalid tls_key"), "{msg}");
}

/// PEM text of DER bytes (rcgen is built without its `pem` feature).
fn pem(label: &str, der: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            let c = ABC[(n >> (18 - 6 * i)) as usize & 63] as char;
            b64.push(if i <= chunk.len() { c } else { '=' });
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// `POST /v1/events` over a raw connection: the request head with the
/// extra header lines `head`, then `body`; the answer as status and JSON.
fn raw_post(server: &Server, head: &str, body: &[u8]) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = server.url.strip_prefix("http://").unwrap();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Connection: close\r\n{head}\r\n"
    );
    conn.write_all(request.as_bytes()).unwrap();
    // The server may answer and close before the body is all written.
    let _ = conn.write_all(body);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{text:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}")),
    )
}

/// `devreg --server URL CMD` against a live server prints, byte for byte,
/// what `devreg CMD` prints on the same database (src/bin/devreg/remote.rs).
#[test]
fn the_cli_with_server_prints_what_the_local_cli_prints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let server = Server::start(&db, Some(TOKEN), &[]);
    let c = Client::new(&server, Some(TOKEN));
    let mut events: Vec<String> = (0..30)
        .map(|i| {
            line(&register(
                &format!("tok-{i:02}"),
                &format!("p{}", i % 4),
                T0 + i,
            ))
        })
        .collect();
    events.push(r#"{"op":"register","token":"tok-x","platform":"ios","seen_ms":1700000000100,"attributes":{"app":"1.2"}}"#.into());
    assert_eq!(c.post_json("/v1/events", &events.join("\n")).0, 200);
    let batch = c.post_json("/v1/sinks/cio/export?max_ops=3", "").1;
    let id = batch["batch_id"].as_str().unwrap();
    let nack = r#"{"failed":[{"index":1,"reason":"bad: token"}]}"#;
    assert_eq!(
        c.post_json(&format!("/v1/sinks/cio/nack/{id}"), nack).0,
        200
    );
    let commands: Vec<Vec<&str>> = vec![
        vec!["dump"],
        vec!["get", "tok-x"],
        vec!["person", "p1"],
        vec!["most-recent", "p2", "--platform", "ios"],
        vec!["active", "--since-ms", "1700000000010"],
        vec!["stats"],
        vec!["history", "tok-03"],
        vec!["owner-at", "tok-03", "--at-ms", "99999999999999"],
        vec!["changes", "--since-ms", "0", "--limit", "5"],
        vec!["sinks"],
        vec!["dead-letters", "--sink", "cio"],
    ];
    let url = server.url.clone();
    let run = |remote: bool, args: &[&str]| {
        let mut cmd = devreg();
        cmd.arg("--db").arg(&db).env("DEVREG_API_TOKEN", TOKEN);
        if remote {
            cmd.args(["--server", &url]);
        }
        let out = cmd.args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let remote: Vec<_> = commands.iter().map(|a| run(true, a)).collect();
    let missing = run(true, &["get", "nope"]);
    assert_eq!(missing.0, Some(1));
    assert!(
        missing
            .2
            .contains("error: not found: no device with token \"nope\""),
        "{}",
        missing.2
    );
    let (status, err) = server.stop();
    assert!(status.success(), "{err}");
    for (args, remote) in commands.iter().zip(remote) {
        let local = run(false, args);
        assert_eq!(
            (remote.0, &remote.1),
            (Some(0), &local.1),
            "{args:?}: {}",
            remote.2
        );
        assert!(!local.1.is_empty(), "{args:?}");
    }
    let local_missing = run(false, &["get", "nope"]);
    assert_eq!(local_missing.0, Some(1));
    assert!(local_missing
        .2
        .contains("error: not found: no device with token \"nope\""));
}

/// A Unix socket: served without a token under `--no-auth`, removed at
/// shutdown.
#[test]
fn serves_a_unix_socket() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("devreg.sock");
    let mut child = devreg()
        .arg("--db")
        .arg(dir.path().join("db"))
        .args(["serve", "--no-auth", "--listen"])
        .arg(&sock)
        .env_remove("DEVREG_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first.trim(),
        format!("listening on unix:{}", sock.display())
    );
    let request = |text: String| {
        let mut conn = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        conn.write_all(text.as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    };
    let event = line(&register("u1", "ann", T0));
    let answer = request(format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{event}",
        event.len()
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(r#"{"applied":1,"skipped":0,"rejected":[]}"#),
        "{answer}"
    );
    let answer =
        request("GET /v1/devices/u1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into());
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(r#""token":"u1""#),
        "{answer}"
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists(), "the socket file is removed at shutdown");
}

/// The log's fdatasyncs so far, from `/metrics`.
fn fsyncs(c: &Client) -> u64 {
    let (s, text) = c.get("/metrics");
    assert_eq!(s, 200);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("devreg_log_fsync_seconds_count "))
        .unwrap_or_else(|| panic!("no fsync count in\n{text}"));
    line.trim().parse().unwrap()
}

/// `?durability=` is the request's own (Registry::apply_batch_with): an
/// immediate request on an eventual server is fdatasynced before its 200,
/// an eventual one on an immediate server is not.
#[test]
fn a_request_chooses_its_durability() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    // Immediate server, eventual request: answered without an fsync.
    let server = Server::start(&db, Some(TOKEN), &[]);
    let c = Client::new(&server, Some(TOKEN));
    let before = fsyncs(&c);
    let event = line(&register("e1", "ann", T0));
    assert_eq!(c.post_json("/v1/events?durability=eventual", &event).0, 200);
    assert_eq!(fsyncs(&c), before, "an eventual write was synced");
    assert_eq!(
        c.post_json("/v1/events", &line(&register("e2", "ann", T0)))
            .0,
        200
    );
    assert!(fsyncs(&c) > before, "the registry's immediate default");
    drop(server);
    // Eventual server (`--durability eventual`), immediate request.
    let mut cmd = devreg();
    cmd.arg("--db").arg(&db).args([
        "--durability",
        "eventual",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    cmd.env("DEVREG_API_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let server = Server {
        url: first.trim().strip_prefix("listening on ").unwrap().into(),
        child,
    };
    let c = Client::new(&server, Some(TOKEN));
    let before = fsyncs(&c);
    let event = line(&register("e3", "ann", T0));
    assert_eq!(
        c.post_json("/v1/events?durability=immediate", &event).0,
        200
    );
    assert!(
        fsyncs(&c) > before,
        "an immediate write was not synced before its answer"
    );
}

const EIO: i32 = 5;

/// Serves `reg` from this process (`devreg::server::serve`, as
/// `devreg serve` does) on a free loopback port with the bearer token;
/// returns its URL. The server runs until the test binary exits (`serve`
/// stops only on a signal, which would stop every such server at once).
fn serve_in_process(reg: Registry) -> String {
    let mut config = devreg::server::ServerConfig::new();
    config.listen = "127.0.0.1:0".into();
    config.token = Some(TOKEN.into());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let served = devreg::server::serve(reg, config, move |url| {
            let _ = tx.send(url.to_owned());
        });
        eprintln!("in-process server stopped: {served:?}");
    });
    rx.recv_timeout(Duration::from_secs(30)).unwrap()
}

/// A registry on DB whose I/O asks a fresh fault plan (immediate durability).
fn with_plan(db: &Path) -> (Registry, Arc<FaultPlan>) {
    let plan = FaultPlan::new();
    let reg = Registry::open_with(Config::new(db).fault_plan(plan.clone())).unwrap();
    (reg, plan)
}

/// Asserts the error shape without a field: `{"error":{"code","message"}}`
/// and nothing else; returns the message.
fn assert_bare_error(answer: &(u16, Value), status: u16, code: &str) -> String {
    let (s, v) = answer;
    assert_eq!(*s, status, "{v}");
    let e = v["error"].as_object().unwrap_or_else(|| panic!("{v}"));
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message"], "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    assert_eq!(e["code"], code, "{v}");
    e["message"].as_str().unwrap().to_owned()
}

/// `/readyz` over real HTTP: 200 while the registry takes writes; after an
/// fdatasync fails (EIO, the fault plan), the write that hit it is a 503
/// and so is `/readyz`, in the error shape with the registry's reason,
/// while `/healthz` still answers 200 (the process lives; it needs a
/// reopen) and `/metrics` reports `devreg_registry_failed 1`.
#[test]
fn readyz_is_503_once_a_write_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, plan) = with_plan(&dir.path().join("db"));
    let url = serve_in_process(reg);
    let c = Client::at(&url, Some(TOKEN));
    assert_eq!(c.get_json("/readyz"), (200, json!({"status":"ready"})));
    let first = line(&register("r1", "ann", T0));
    assert_eq!(
        c.post_json("/v1/events?durability=immediate", &first).0,
        200
    );

    plan.arm(&[IoOp::Fdatasync], 1, EIO, false);
    let second = line(&register("r2", "ann", T0 + 1));
    let write = c.post_json("/v1/events?durability=immediate", &second);
    let why = assert_bare_error(&write, 503, "unavailable");
    assert!(why.contains("stopped"), "{why}");
    assert_eq!(
        plan.fired(),
        1,
        "the armed fdatasync was the one that failed"
    );

    let ready = c.get_json("/readyz");
    let why = assert_bare_error(&ready, 503, "unavailable");
    assert!(why.starts_with("registry stopped: "), "{why}");
    assert!(why.contains("Input/output error"), "names the cause: {why}");
    // Not once per poll: the probe reads the flag, it does not write.
    assert_eq!(c.get_json("/readyz").0, 503);
    assert_eq!(c.get_json("/healthz"), (200, json!({"status":"ok"})));
    // Reads go on; later writes are refused the same way.
    assert_eq!(c.get_json("/v1/devices/r1").0, 200);
    assert_eq!(
        c.get_json("/v1/devices/r2").0,
        404,
        "a failed write is not applied"
    );
    let third = line(&register("r3", "ann", T0 + 2));
    assert_bare_error(&c.post_json("/v1/events", &third), 503, "unavailable");
    let (s, text) = c.get("/metrics");
    assert_eq!(s, 200);
    assert!(text.contains("devreg_registry_failed 1"), "{text}");
}

/// 429 over real HTTP: while one fdatasync takes seconds (a slow disk:
/// the plan delays the call, then fails it), `MAX_SERVER_ENGINE_CALLS`
/// immediate writes wait in their engine calls; one more engine call is
/// answered 429 at once with `Retry-After: 1` and `{"error":{"code":
/// "busy","message"}}` naming the limit, not queued, while the same call
/// was served before the slots filled.
#[test]
fn engine_calls_over_the_bound_are_answered_429() {
    const LIMIT: usize = devreg::limits::MAX_SERVER_ENGINE_CALLS;
    // Long enough for 64 client threads to connect on a loaded 2-core
    // machine (CI once needed more than 4 s, beside a release build); the
    // 429 must come while the writers still hold their slots.
    const SLOW_MS: u64 = 15_000;
    let dir = tempfile::tempdir().unwrap();
    let (reg, plan) = with_plan(&dir.path().join("db"));
    let url = serve_in_process(reg);
    let probe = Client::at(&url, Some(TOKEN));
    assert_eq!(probe.get_json("/v1/stats").0, 200);

    plan.set_delay_ms(SLOW_MS);
    plan.arm(&[IoOp::Fdatasync], 1, EIO, false);
    let started = Instant::now();
    let writers: Vec<_> = (0..LIMIT)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = Client::at(&url, Some(TOKEN));
                let event = line(&register(&format!("w{i}"), "ann", T0 + i as u64));
                // A writer that finds the last slot held for a moment by
                // the probe's read is answered 429 too; it tries again, as
                // Retry-After asks (else only LIMIT - 1 writers would wait
                // and the probe would never see 429: a flake under load).
                loop {
                    let answer = c.post_json("/v1/events?durability=immediate", &event);
                    if answer.0 != 429 || started.elapsed() >= Duration::from_millis(SLOW_MS) {
                        return answer;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    // Every writer holds a slot until the slow fsync ends; a read takes
    // one only for a moment, so it is served until all LIMIT are taken.
    let busy = loop {
        assert!(
            started.elapsed() < Duration::from_millis(SLOW_MS - 3_000),
            "no 429 while {LIMIT} writers wait"
        );
        let asked = Instant::now();
        let mut r = probe
            .agent
            .get(format!("{url}/v1/stats"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .call()
            .unwrap();
        let took = asked.elapsed();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        if status != 200 {
            break (status, body, retry, took);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (status, body, retry, took) = busy;
    let why = assert_bare_error(&(status, body), 429, "busy");
    assert!(why.contains(&format!("limit {LIMIT}")), "{why}");
    assert_eq!(retry.as_deref(), Some("1"), "Retry-After");
    assert!(
        took < Duration::from_secs(2),
        "answered at once, not queued: {took:?}"
    );
    assert_eq!(plan.fired(), 1, "the writers still wait on the slow fsync");
    // The writers end with the failed fsync: 503, none applied.
    for w in writers {
        assert_bare_error(&w.join().unwrap(), 503, "unavailable");
    }
    assert!(started.elapsed() >= Duration::from_millis(SLOW_MS));
}

/// Concurrent acks and nacks of one batch over HTTP: exactly one answers
/// `already_acked: false` (the registry's writer decides,
/// `Registry::acknowledge`), the others `true` with `failed: 0`, and only
/// the delivering nack's failure is a dead letter.
#[test]
fn concurrent_acks_of_one_batch_deliver_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("db"), Some(TOKEN), &[]);
    let c = Client::new(&server, Some(TOKEN));
    let events: String = (0..4)
        .map(|i| line(&register(&format!("a{i}"), "ann", T0 + i)) + "\n")
        .collect();
    assert_eq!(c.post_json("/v1/events", &events).0, 200);
    let (s, batch) = c.post_json("/v1/sinks/cio/export", "");
    assert_eq!(s, 200, "{batch}");
    let id = batch["batch_id"].as_str().unwrap().to_owned();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (url, id) = (server.url.clone(), id.clone());
                scope.spawn(move || {
                    let c = Client::at(&url, Some(TOKEN));
                    let (s, v) = match i % 2 {
                        0 => c.post_json(&format!("/v1/sinks/cio/ack/{id}"), ""),
                        _ => c.post_json(
                            &format!("/v1/sinks/cio/nack/{id}"),
                            r#"{"failed":[{"index":0,"reason":"invalid token"}]}"#,
                        ),
                    };
                    assert_eq!(s, 200, "{v}");
                    v
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first: Vec<&Value> = answers
        .iter()
        .filter(|v| v["already_acked"] == false)
        .collect();
    assert_eq!(first.len(), 1, "{answers:?}");
    for v in answers.iter().filter(|v| v["already_acked"] == true) {
        assert_eq!(v["failed"], 0, "{v}");
    }
    let (s, dead) = c.get_json("/v1/sinks/cio/dead-letters");
    assert_eq!(s, 200);
    let want = first[0]["failed"].as_u64().unwrap() as usize;
    assert_eq!(dead.as_array().unwrap().len(), want, "{dead}");
}

/// Delivery feedback over HTTP (issue 15): POST /v1/events takes feedback
/// lines through the import parser (an unknown token is skipped, a bad
/// outcome rejected naming `feedback.outcome`), the person's devices carry
/// `deliverable` and `deliverability`, and `most-recent?deliverable=true`
/// skips the suppressed device (404 when none is left; a bad flag is 400).
#[test]
fn feedback_events_and_the_most_recent_deliverable_device() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("db")).unwrap();
    let url = serve_in_process(reg);
    let c = Client::at(&url, Some(TOKEN));
    let fb = |token: &str, outcome: FeedbackOutcome, at_ms: u64| {
        line(&Op::Feedback {
            token: token.into(),
            outcome,
            at_ms,
            reason: Some("BadDeviceToken".into()),
        })
    };
    let body = [
        line(&register("old0", "ann", T0 + 1)),
        line(&register("new0", "ann", T0 + 2)),
        fb("new0", FeedbackOutcome::HardFailure, T0 + 3),
        fb("nope", FeedbackOutcome::Delivered, T0),
        r#"{"op":"feedback","token":"old0","outcome":"lost","at_ms":5}"#.into(),
    ]
    .join("\n");
    let (s, v) = c.post_json("/v1/events?durability=immediate", &body);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["applied"].clone(), v["skipped"].clone()),
        (json!(3), json!(1)),
        "{v}"
    );
    assert_eq!(v["rejected"][0]["field"], "feedback.outcome", "{v}");
    let (s, devices) = c.get_json("/v1/people/ann/devices");
    assert_eq!(s, 200);
    assert_eq!(devices[0]["token"], "new0");
    assert_eq!(devices[0]["deliverable"], false);
    assert_eq!(devices[0]["deliverability"]["last_hard_failure_ms"], T0 + 3);
    assert_eq!(devices[1]["deliverable"], true);
    assert_eq!(c.get_json("/v1/people/ann/most-recent").1["token"], "new0");
    let (s, d) = c.get_json("/v1/people/ann/most-recent?deliverable=true");
    assert_eq!((s, d["token"].clone()), (200, json!("old0")));
    assert_eq!(
        c.get_json("/v1/people/ann/most-recent?platform=ios").1["token"],
        "new0"
    );
    let (s, d) = c.get_json("/v1/people/ann/most-recent?deliverable=true&platform=ios");
    assert_eq!(s, 404, "{d}");
    assert!(
        d["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliverable"),
        "{d}"
    );
    assert_error(
        c.get_json("/v1/people/ann/most-recent?deliverable=yes"),
        400,
        Some("deliverable"),
    );
}

#[path = "support/cio.rs"]
mod cio;

/// Posts a reporting-webhook body with the given timestamp and signature.
fn post_webhook(url: &str, body: &str, ts: &str, sig: Option<&str>) -> (u16, Value) {
    // No bearer token: the signature authenticates the request.
    let c = Client::at(url, None);
    let mut req = c
        .agent
        .post(format!("{url}/v1/webhooks/customerio"))
        .header("Content-Type", "application/json")
        .header("X-CIO-Timestamp", ts);
    if let Some(sig) = sig {
        req = req.header("X-CIO-Signature", sig);
    }
    let (status, text) = Client::answer(req.send(body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Customer.io reporting webhooks (issue 15): a push event signed as
/// Customer.io signs it (`v0:<timestamp>:<body>`, hex HMAC-SHA256,
/// computed here by `support/cio.rs`, not by the server's code) becomes
/// feedback on the device it names, without the bearer token; a wrong or
/// missing signature, a body changed after signing and a stale timestamp
/// are 401 naming the header and change nothing; a redelivery of the same
/// `event_id` is a duplicate, applied once; an unknown token is counted;
/// other metrics and channels are ignored; a server without a key is 404.
#[test]
fn customerio_webhooks_are_verified_and_become_feedback() {
    const KEY: &str = "cio-signing-key";
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("db")).unwrap();
    let _ = reg.apply(register("tok0", "ann", T0)).unwrap();
    let _ = reg.apply(register("tok1", "ann", T0 - 2)).unwrap();
    let mut config = devreg::server::ServerConfig::new();
    config.listen = "127.0.0.1:0".into();
    config.token = Some(TOKEN.into());
    config.cio_webhook_key = Some(KEY.into());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = devreg::server::serve(reg, config, move |url| {
            let _ = tx.send(url.to_owned());
        });
    });
    let url = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let c = Client::at(&url, Some(TOKEN));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts = now.to_string();
    let at = T0 / 1000 + 10;
    let body = cio::push_report(
        "ev1",
        "bounced",
        at,
        &["tok0", "nope"],
        Some("BadDeviceToken"),
    )
    .to_string();
    let sig = cio::sign_report(KEY, &ts, body.as_bytes());

    // Refused, nothing applied: no signature, a wrong key, a changed body,
    // a stale timestamp (signed correctly), a timestamp that is not a number.
    let (s, v) = post_webhook(&url, &body, &ts, None);
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (401, json!("x-cio-signature")),
        "{v}"
    );
    let wrong = cio::sign_report("other-key", &ts, body.as_bytes());
    let (s, v) = post_webhook(&url, &body, &ts, Some(&wrong));
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{v}"
    );
    let changed = body.replace("bounced", "delivered");
    assert_eq!(post_webhook(&url, &changed, &ts, Some(&sig)).0, 401);
    let old = (now - devreg::limits::CIO_WEBHOOK_MAX_SKEW_SECS - 5).to_string();
    let (s, v) = post_webhook(
        &url,
        &body,
        &old,
        Some(&cio::sign_report(KEY, &old, body.as_bytes())),
    );
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (401, json!("x-cio-timestamp")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("stale"),
        "{v}"
    );
    assert_eq!(post_webhook(&url, &body, "soon", Some(&sig)).0, 401);
    let devices = c.get_json("/v1/people/ann/devices").1;
    assert_eq!(
        devices[0]["deliverable"], true,
        "nothing applied yet: {devices}"
    );

    // Valid: the hard failure suppresses tok0; the unknown token is counted.
    let (s, v) = post_webhook(&url, &body, &ts, Some(&sig));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"event_id":"ev1","duplicate":false,"ignored":false,"applied":1,"skipped":0,"unknown":1})
    );
    let (_, d) = c.get_json("/v1/people/ann/most-recent?deliverable=true");
    assert_eq!(d["token"], "tok1", "{d}");
    let devices = c.get_json("/v1/people/ann/devices").1;
    assert_eq!(
        devices[0]["deliverability"]["last_hard_failure_ms"],
        at * 1000
    );

    // A redelivery (Customer.io retries; re-signed with a new timestamp) is a duplicate.
    let ts2 = (now + 1).to_string();
    let (s, v) = post_webhook(
        &url,
        &body,
        &ts2,
        Some(&cio::sign_report(KEY, &ts2, body.as_bytes())),
    );
    assert_eq!(
        (s, v["duplicate"].clone(), v["applied"].clone()),
        (200, json!(true), json!(0)),
        "{v}"
    );

    // Deliveries and soft failures; opens and other channels are ignored.
    let post = |event: Value| {
        let body = event.to_string();
        post_webhook(
            &url,
            &body,
            &ts,
            Some(&cio::sign_report(KEY, &ts, body.as_bytes())),
        )
    };
    let (s, v) = post(cio::push_report(
        "ev2",
        "delivered",
        at + 1,
        &["tok1"],
        None,
    ));
    assert_eq!((s, v["applied"].clone()), (200, json!(1)), "{v}");
    let (_, v) = post(cio::push_report("ev3", "opened", at + 2, &["tok1"], None));
    assert_eq!(v["ignored"], true, "{v}");
    let mut email = cio::push_report("ev4", "bounced", at + 3, &["tok1"], None);
    email["object_type"] = json!("email");
    assert_eq!(post(email).1["ignored"], true);
    let (_, v) = post(cio::push_report(
        "ev5",
        "failed",
        at + 4,
        &["tok1"],
        Some("throttled"),
    ));
    assert_eq!(v["applied"], 1, "{v}");
    let devices = c.get_json("/v1/people/ann/devices").1;
    assert_eq!(
        devices[1]["deliverability"]["last_delivered_ms"],
        (at + 1) * 1000
    );
    assert_eq!(devices[1]["deliverability"]["soft_failures"], 1);

    // Not JSON (signed) is 400 naming the body.
    let (s, v) = post_webhook(&url, "{", &ts, Some(&cio::sign_report(KEY, &ts, b"{")));
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("body")),
        "{v}"
    );

    // A server without a signing key does not take webhooks.
    let dir2 = tempfile::tempdir().unwrap();
    let plain = serve_in_process(Registry::open(dir2.path().join("db")).unwrap());
    assert_eq!(post_webhook(&plain, &body, &ts, Some(&sig)).0, 404);
}

//! `devreg serve` over real HTTP (feature `server`): every endpoint with
//! its status and body shape, authentication and the start-up refusals,
//! bad input and limits, concurrent clients against a model, SIGTERM and
//! SIGKILL. Each test starts the binary on a free loopback port and talks
//! to it with ureq.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Model;
use devreg::{Op, Platform, Register, Registry};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789";

/// A running `devreg serve`; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

fn devreg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_devreg"))
}

impl Server {
    /// Starts `devreg --db DB serve --listen 127.0.0.1:0 ARGS` and waits
    /// for its `listening on URL` line.
    fn start(db: &Path, token: Option<&str>, args: &[&str]) -> Server {
        let mut cmd = devreg();
        cmd.arg("--db").arg(db).args(["serve", "--listen", "127.0.0.1:0"]);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        cmd.stderr(Stdio::piped()).env_remove("DEVREG_API_TOKEN");
        if let Some(t) = token {
            cmd.env("DEVREG_API_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let out = child.wait_with_output().unwrap();
            panic!("no address: {line:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
        };
        Server {
            url: url.to_owned(),
            child,
        }
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        use std::io::Read;
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that treats every status as an answer.
struct Client {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

impl Client {
    fn new(server: &Server, token: Option<&str>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client {
            agent,
            url: server.url.clone(),
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

    fn get_json(&self, path: &str) -> (u16, Value) {
        let (s, b) = self.get(path);
        (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: {e}: {b:?}")))
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
        Op::Rotate { old_token, new_token, seen_ms } => json!({
            "op":"rotate","old_token":old_token,"new_token":new_token,"seen_ms":seen_ms,
        }),
        Op::Remove { token } => json!({"op":"remove","token":token}),
        other => panic!("no line for {other:?}"),
    }
    .to_string()
}

fn register(token: &str, person: &str, seen_ms: u64) -> Op {
    Op::Register(Register {
        token: token.into(),
        platform: if seen_ms % 2 == 0 { Platform::Ios } else { Platform::Android },
        person: Some(person.into()),
        seen_ms,
        attributes: None,
    })
}

/// Runs the CLI on DB and parses its stdout as JSON.
fn cli_json(db: &Path, args: &[&str]) -> Value {
    let out = devreg().arg("--db").arg(db).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
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
        line(&Op::Touch { token: "missing".into(), seen_ms: T0 }),
    ]
    .join("\n");
    let (s, v) = c.post_json("/v1/events?durability=immediate", &ndjson);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["applied"], 2);
    assert_eq!(v["skipped"], 1);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["rejected"][0]["index"], 3);
    assert_eq!(v["rejected"][0]["field"], "token");
    assert!(v["rejected"][0]["reason"].as_str().unwrap().contains("invalid token"), "{v}");
    let array = format!("[{}]", line(&register("tok-c", "bob", T0 + 2)));
    let (s, v) = c.post_json("/v1/events?durability=eventual", &array);
    assert_eq!((s, v), (200, json!({"applied":1,"skipped":0,"rejected":[]})));

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
    assert_eq!(c.get_json(&format!("/v1/active?since_ms={}", T0 + 1)), (200, json!({"count":2})));
    assert_eq!(c.get_json("/v1/active?since_ms=0&platform=android"), (200, json!({"count":1})));

    // The dump in pages of 2, resumed with the opaque cursor.
    let (s, p1) = c.get_json("/v1/devices?limit=2");
    assert_eq!(s, 200);
    let tokens = |p: &Value| -> Vec<String> {
        p["devices"].as_array().unwrap().iter().map(|d| d["token"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(tokens(&p1), ["tok-a", "tok-b"]);
    assert_eq!(p1["devices"][0]["op"], "register", "a dump line is an import line");
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (s, p2) = c.get_json(&format!("/v1/devices?limit=2&cursor={cursor}"));
    assert_eq!((s, tokens(&p2)), (200, vec!["tok-c".to_owned()]));
    assert!(p2["next_cursor"].is_null());

    // History.
    let (s, history) = c.get_json("/v1/history/tok-a");
    assert_eq!((s, history[0]["owner_after"].as_str()), (200, Some("ann")));
    let (s, owner) = c.get_json("/v1/owner-at/tok-a?at_ms=99999999999999");
    assert_eq!((s, owner["owner"].as_str(), owner["by"].as_str()), (200, Some("ann"), Some("commit")));
    let (s, changes) = c.get_json("/v1/changes?since_ms=0&limit=2");
    assert_eq!((s, changes["changes"].as_array().unwrap().len()), (200, 2));
    assert_eq!(changes["more"], true);
    let cursor = changes["cursor"].as_str().unwrap();
    let (s, rest) = c.get_json(&format!("/v1/changes?since_ms=0&cursor={cursor}"));
    assert_eq!((s, rest["changes"].as_array().unwrap().len()), (200, 1), "{rest}");

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
    assert_eq!(c.post_json("/v1/sinks/cio/export?max_ops=2", "").1, batch, "same until acked");
    let (s, v) = c.post_json(&format!("/v1/sinks/cio/ack/{id}"), "");
    assert_eq!((s, v), (200, json!({"acked": id, "failed": 0, "already_acked": false})));
    let (s, v) = c.post_json(&format!("/v1/sinks/cio/ack/{id}"), "");
    assert_eq!((s, v["already_acked"].as_bool()), (200, Some(true)));
    let (s, batch) = c.post_json("/v1/sinks/cio/export", "");
    assert_eq!(s, 200);
    let id = batch["batch_id"].as_str().unwrap().to_owned();
    let nack = r#"{"failed":[{"index":0,"reason":"invalid token"}]}"#;
    let (s, v) = c.post_json(&format!("/v1/sinks/cio/nack/{id}"), nack);
    assert_eq!((s, v), (200, json!({"acked": id, "failed": 1, "already_acked": false})));
    assert_eq!(c.post_json("/v1/sinks/cio/export", ""), (204, Value::Null), "drained");
    let (s, dead) = c.get_json("/v1/sinks/cio/dead-letters");
    assert_eq!((s, dead.as_array().unwrap().len()), (200, 1));
    assert_eq!(dead[0]["reason"], "invalid token");
    assert!(dead[0]["operation"].is_object(), "{dead}");
    let (s, sinks) = c.get_json("/v1/sinks");
    assert_eq!((s, sinks[0]["name"].as_str(), sinks[0]["dead_letters"].as_u64()), (200, Some("cio"), Some(1)));
    assert_eq!(c.post_json("/v1/sinks/cio/requeue", ""), (200, json!({"requeued": 1})));
    assert_eq!(c.post_json("/v1/sinks/cio/export", "").0, 200, "requeued op is pending");
    assert_error(c.post_json("/v1/sinks/nope/ack/x", ""), 404, Some("sink"));
    assert_error(c.post_json("/v1/sinks/cio/ack/cio-999999999999", ""), 409, Some("batch_id"));
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
        "devreg_operations_total{kind=\"touch\",outcome=\"skipped\"} 1",
        "devreg_operations_total{kind=\"unknown\",outcome=\"rejected\"} 1",
        "devreg_devices 3",
        "devreg_feed_pending_operations{sink=\"cio\"}",
        "devreg_http_requests_total{route=\"/v1/devices/{token}\",method=\"GET\",status=\"404\"} 1",
        "devreg_http_request_duration_seconds_count{route=\"/v1/events\"} 2",
    ] {
        assert!(text.contains(needle), "{needle} not in\n{text}");
    }
    assert_error(c.get_json("/v1/nothing"), 404, Some("path"));
}

//! The HTTP side of the Customer.io emulator, shared by `tests/sync.rs`
//! and `tests/audit.rs`: one loopback server that speaks Track's `POST
//! /api/v2/batch` and Data Pipelines' `POST /v1/batch` (each with its Basic
//! auth, the request and operation size limits, faults injected on a
//! schedule) and the App API's `GET /v1/customers/{id}/attributes` (bearer
//! auth, the 10 requests/s limit answered with 429 and `Retry-After`, 5xx
//! faults), all answering from the one test model of Customer.io,
//! `support/cio.rs` (declared by the including test as `mod cio`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cio;
pub const SITE: &str = "site-4242";
pub const KEY: &str = "k3y-Very-Secret-9f";
/// The Data Pipelines source key.
pub const CDP_KEY: &str = "cdp-S0urce-K3y";

// ---------------------------------------------------------------- emulator

#[derive(Clone, Debug)]
pub enum Fault {
    /// 207: the first and last operations fail, plus one index outside the batch.
    Partial,
    /// 207 with a body that is not the documented shape.
    Malformed207,
    /// 400: the whole batch is rejected.
    BadRequest,
    /// 401.
    Unauthorized,
    /// 429 with `Retry-After: N`.
    TooMany(u64),
    /// 500, 503.
    Server(u16),
    /// Applies the batch, answers 200 after this delay (past the client
    /// timeout when long; `Slow(0)` is a plain 200).
    Slow(Duration),
    /// Applies the batch, closes the connection without answering.
    DropBeforeResponse,
    /// Applies the batch, sends part of a 200 and closes.
    DropMidResponse,
}

pub type Pairs = cio::Pairs;

#[derive(Default)]
pub struct EmuState {
    pub cio: cio::Cio,
    /// The App API's gate (key, rate limit, faults) in front of `cio`.
    pub app: cio::AppApi,
    pub schedule: Vec<Fault>,
    /// Delay before every answer (the kill test).
    pub slow_all: Option<Duration>,
    /// Request start times, one per batch request (any answer).
    pub starts: Vec<Instant>,
    pub statuses: Vec<u16>,
    pub violations: Vec<String>,
    pub last_applied: Option<String>,
    /// Batches applied again right after themselves (a re-send).
    pub reapplied: usize,
    pub auth_failures: usize,
}

pub enum Reply {
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        delay: Option<Duration>,
    },
    DropBefore,
    DropMid,
}

pub fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, s) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= c.len() {
                A[((n >> s) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

impl EmuState {
    /// Applies a batch's operations except `skip`; returns the indices that failed.
    pub fn apply(&mut self, body: &str, ops: &[Value], skip: &BTreeSet<usize>) -> Vec<usize> {
        let again = self.last_applied.as_deref() == Some(body);
        let before = again.then(|| self.cio.persons.clone());
        let mut failed = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            if let Err(e) = self.cio.apply(op) {
                failed.push(i);
                if skip.is_empty() {
                    self.violations.push(e);
                }
            }
        }
        if let Some(before) = before {
            self.reapplied += 1;
            if before != self.cio.persons {
                self.violations
                    .push(format!("a re-sent batch changed the result: {body:.200}"));
            }
        }
        self.last_applied = Some(body.to_owned());
        failed
    }

    pub fn handle(
        &mut self,
        line: &str,
        headers: &BTreeMap<String, String>,
        body: &[u8],
        start: Instant,
    ) -> Reply {
        let answer = |status: u16, body: &str| Reply::Answer {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            delay: None,
        };
        if let Some(target) = line
            .strip_prefix("GET ")
            .and_then(|l| l.strip_suffix(" HTTP/1.1"))
        {
            let auth = headers.get("authorization").map(String::as_str);
            return match self.app.handle(&self.cio, target, auth, start) {
                Some((status, headers, body)) => Reply::Answer {
                    status,
                    headers,
                    body,
                    delay: None,
                },
                None => {
                    self.violations
                        .push(format!("unexpected request line {line:?}"));
                    answer(404, "{}")
                }
            };
        }
        let pipelines = match line {
            "POST /api/v2/batch HTTP/1.1" => false,
            "POST /v1/batch HTTP/1.1" => true,
            _ => {
                self.violations
                    .push(format!("unexpected request line {line:?}"));
                return answer(404, "{}");
            }
        };
        self.starts.push(start);
        // Pipelines: the source key as the user name, an empty password.
        let user_pass = match pipelines {
            false => format!("{SITE}:{KEY}"),
            true => format!("{CDP_KEY}:"),
        };
        let want = format!("Basic {}", base64(user_pass.as_bytes()));
        if pipelines && headers.get("x-strict-mode").map(String::as_str) != Some("1") {
            self.violations
                .push("Pipelines request without strict mode".into());
        }
        if headers.get("authorization") != Some(&want) {
            self.auth_failures += 1;
            self.statuses.push(401);
            return answer(401, r#"{"meta":{"error":"Unauthorized request"}}"#);
        }
        if headers.get("content-type").map(String::as_str) != Some("application/json") {
            self.violations
                .push(format!("content-type {:?}", headers.get("content-type")));
        }
        if headers.contains_key("content-encoding") {
            self.violations.push("compressed body".into());
        }
        if body.len() >= 500_000 {
            self.violations
                .push(format!("request of {} bytes", body.len()));
            self.statuses.push(400);
            return answer(400, r#"{"meta":{"errors":["request too large"]}}"#);
        }
        let text = String::from_utf8_lossy(body).into_owned();
        let ops = match serde_json::from_str::<Value>(&text) {
            Ok(v) => v["batch"].as_array().cloned().unwrap_or_default(),
            Err(e) => {
                self.violations.push(format!("body is not JSON: {e}"));
                Vec::new()
            }
        };
        if ops.is_empty() {
            self.violations.push("empty batch".into());
        }
        if let Some(op) = ops.iter().find(|o| o.to_string().len() > 32_768) {
            self.violations
                .push(format!("operation of {} bytes", op.to_string().len()));
        }
        if pipelines && ops.len() > 1 {
            // A batch's context is shared by all its calls: a token in
            // each call's context.device would not survive.
            self.violations
                .push(format!("{} calls in one Pipelines request", ops.len()));
        }
        if pipelines && ops.iter().any(|o| o.get("action").is_some()) {
            self.violations
                .push("a Track operation sent to /v1/batch".into());
        }
        if !pipelines && ops.iter().any(|o| o.get("action").is_none()) {
            self.violations
                .push("a Pipelines call sent to /api/v2/batch".into());
        }
        let n = self.starts.len() - 1;
        let mut fault = self.schedule.get(n).cloned();
        // Customer.io rejects an operation every time or never: a batch it
        // already applied in full (its answer was lost) is not rejected now.
        if self.last_applied.as_deref() == Some(text.as_str())
            && matches!(
                fault,
                Some(Fault::Partial | Fault::Malformed207 | Fault::BadRequest)
            )
        {
            fault = None;
        }
        if pipelines {
            if let Some(Fault::Partial | Fault::Malformed207 | Fault::BadRequest) = fault {
                // No 207 in Pipelines: in strict mode a call that fails
                // validation makes the request a 400, and nothing of it is applied.
                self.statuses.push(400);
                return answer(400, r#"{"meta":{"errors":["emulator rejects the call"]}}"#);
            }
        }
        let reply = match fault {
            None => {
                self.apply(&text, &ops, &BTreeSet::new());
                answer(200, "{}")
            }
            Some(Fault::Partial) => {
                let skip: BTreeSet<usize> = [0, ops.len().saturating_sub(1)].into_iter().collect();
                let mut failed: BTreeSet<usize> = skip.clone();
                // A merge whose primary was just rejected fails too.
                failed.extend(self.apply(&text, &ops, &skip));
                let mut errors: Vec<Value> = failed
                    .iter()
                    .map(|&i| {
                        serde_json::json!({"batch_index": i, "reason": "invalid", "field": "device.token",
                            "message": format!("emulator rejects op {i}")})
                    })
                    .collect();
                errors.push(
                    serde_json::json!({"batch_index": ops.len() + 3, "reason": "out of range"}),
                );
                Reply::Answer {
                    status: 207,
                    headers: Vec::new(),
                    body: serde_json::json!({ "errors": errors }).to_string(),
                    delay: None,
                }
            }
            Some(Fault::Malformed207) => answer(207, r#"{"errors":[{"batch_index":"zero"}"#),
            Some(Fault::BadRequest) => answer(
                400,
                r#"{"meta":{"errors":["emulator says: malformed batch"]}}"#,
            ),
            Some(Fault::Unauthorized) => answer(401, r#"{"meta":{"error":"Unauthorized"}}"#),
            Some(Fault::TooMany(secs)) => Reply::Answer {
                status: 429,
                headers: vec![("Retry-After".into(), secs.to_string())],
                body: "rate limited".into(),
                delay: None,
            },
            Some(Fault::Server(code)) => answer(code, "server error"),
            Some(Fault::Slow(d)) => {
                self.apply(&text, &ops, &BTreeSet::new());
                Reply::Answer {
                    status: 200,
                    headers: Vec::new(),
                    body: "{}".into(),
                    delay: (!d.is_zero()).then_some(d),
                }
            }
            Some(Fault::DropBeforeResponse) => {
                self.apply(&text, &ops, &BTreeSet::new());
                Reply::DropBefore
            }
            Some(Fault::DropMidResponse) => {
                self.apply(&text, &ops, &BTreeSet::new());
                Reply::DropMid
            }
        };
        self.statuses.push(match &reply {
            Reply::Answer { status, .. } => *status,
            _ => 0,
        });
        match (reply, self.slow_all) {
            (
                Reply::Answer {
                    status,
                    headers,
                    body,
                    delay: None,
                },
                Some(d),
            ) => Reply::Answer {
                status,
                headers,
                body,
                delay: Some(d),
            },
            (r, _) => r,
        }
    }

    pub fn pairs(&self) -> Pairs {
        self.cio.pairs()
    }
}

pub struct Emu {
    pub port: u16,
    pub state: Arc<Mutex<EmuState>>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<()>>,
}

impl Emu {
    pub fn start(schedule: Vec<Fault>) -> Emu {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(EmuState {
            schedule,
            ..EmuState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(180);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (state, stop) = (state.clone(), stop.clone());
                            std::thread::spawn(move || serve(s, &state, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Emu {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut EmuState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: HTTP/1.1 requests with Content-Length bodies, kept alive.
pub fn serve(stream: TcpStream, state: &Mutex<EmuState>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    for _ in 0..10_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let start = Instant::now();
        let mut headers = BTreeMap::new();
        for _ in 0..100 {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > 2_000_000 {
            return;
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply = state
            .lock()
            .unwrap()
            .handle(line.trim_end(), &headers, &body, start);
        match reply {
            Reply::DropBefore => return,
            Reply::DropMid => {
                let _ = out.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"resu",
                );
                let _ = out.flush();
                return;
            }
            Reply::Answer {
                status,
                headers,
                body,
                delay,
            } => {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                resp.push_str(&body);
                if out.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

//! The Customer.io sync worker embedded in a service: the worker follows the
//! feed on its own thread (`SyncWorker::start`) while the service keeps
//! writing, and delivers to a stub of Customer.io's `POST /api/v2/batch`
//! that this example starts on 127.0.0.1 (nothing leaves the machine). The
//! stub checks the Basic credentials and keeps, per person, the devices the
//! batches gave it; the example waits until the stub holds exactly the
//! registry's identified devices, then shuts the worker down. Exits 1 if
//! they do not agree within 20 s, or on any other wrong answer.
//!
//! ```sh
//! cargo run --example embedded_worker
//! ```
//!
//! In a real service the credentials come from the environment
//! (`Credentials::from_env()`) and the endpoint is a region
//! (`SyncConfig::region`); plain `http://` is accepted for loopback only.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use devreg::sync::{Credentials, SyncConfig, SyncWorker};
use devreg::{Config, LogoutPolicy, Platform, Register, Registry, DEFAULT_SINK};
use serde_json::Value;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;
/// (person, token) pairs Customer.io knows.
type Pairs = BTreeSet<(String, String)>;

const SITE: &str = "example-site";
const KEY: &str = "example-key";

/// The stub endpoint: a loopback listener, one thread per connection.
struct Stub {
    url: String,
    persons: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stub {
    fn start() -> Res<Stub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let persons = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (persons.clone(), stop.clone());
        let thread = thread::spawn(move || {
            // Bounded: the accept loop ends by itself after 60 s.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let p = p.clone();
                        thread::spawn(move || serve(conn, &p));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Stub {
            url,
            persons,
            stop,
            thread: Some(thread),
        })
    }

    fn pairs(&self) -> Pairs {
        let persons = self.persons.lock().map(|g| g.clone()).unwrap_or_default();
        persons
            .into_iter()
            .flat_map(|(p, tokens)| tokens.into_iter().map(move |t| (p.clone(), t)))
            .collect()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One kept-alive connection: requests with a Content-Length body.
fn serve(conn: TcpStream, persons: &Mutex<BTreeMap<String, BTreeSet<String>>>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let auth = format!("Basic {}", base64(format!("{SITE}:{KEY}").as_bytes()));
    for _ in 0..1000 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut len, mut authorized) = (0usize, false);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let Some((k, v)) = h.trim_end().split_once(':') else {
                break;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "authorization" => authorized = v.trim() == auth,
                _ => {}
            }
        }
        let mut body = vec![0; len.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, answer) = match (line.starts_with("POST /api/v2/batch "), authorized) {
            (false, _) => (404, "{}"),
            (true, false) => (401, r#"{"meta":{"error":"Unauthorized request"}}"#),
            (true, true) => match serde_json::from_slice::<Value>(&body) {
                Ok(v) => {
                    if let Ok(mut p) = persons.lock() {
                        apply(&mut p, &v);
                    }
                    (200, "{}")
                }
                Err(_) => (400, r#"{"meta":{"errors":["body is not JSON"]}}"#),
            },
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Customer.io's effect of a batch: `add_device` adds the device to the
/// person, `delete_device` removes it, `merge` deletes the secondary.
fn apply(persons: &mut BTreeMap<String, BTreeSet<String>>, body: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    for op in body["batch"].as_array().into_iter().flatten() {
        let (id, token) = (text(&op["identifiers"]["id"]), text(&op["device"]["token"]));
        match op["action"].as_str() {
            Some("add_device") => {
                persons.entry(id).or_default().insert(token);
            }
            Some("delete_device") => {
                persons.entry(id).or_default().remove(&token);
            }
            Some("merge") => {
                persons.remove(&text(&op["secondary"]["id"]));
            }
            _ => {}
        }
    }
}

fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = |i: usize| u32::from(c.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            let ch = A.get(((n >> shift) & 63) as usize).copied().unwrap_or(b'=');
            out.push(if i <= c.len() { ch as char } else { '=' });
        }
    }
    out
}

/// What Customer.io should hold: every identified device of the registry.
fn expected(reg: &Registry) -> Pairs {
    reg.dump()
        .into_iter()
        .filter_map(|d| d.person.map(|p| (p, d.token)))
        .collect()
}

fn register(reg: &Registry, token: &str, person: &str, seen_ms: u64) -> Res<()> {
    let outcome = reg.register(Register {
        token: token.into(),
        platform: Platform::Ios,
        person: Some(person.into()),
        seen_ms,
        attributes: None,
    })?;
    if !outcome.is_applied() {
        return Err(format!("register {token}: {outcome:?}").into());
    }
    Ok(())
}

/// The service's own traffic while the worker runs: new devices, a token
/// that changes hands, a logout, a merge of two people.
fn service_writes(reg: &Registry) -> Res<()> {
    let t0 = 1_764_000_000_000;
    for i in 0..40u64 {
        register(
            reg,
            &format!("tok-{i:02}"),
            &format!("user-{}", i % 10),
            t0 + i,
        )?;
    }
    thread::sleep(Duration::from_millis(100));
    register(reg, "tok-00", "user-9", t0 + 100)?; // the token moves
    let _ = reg.logout("tok-01", LogoutPolicy::Keep)?; // anonymous now
    let _ = reg.merge("user-2", "user-3")?; // user-3's devices go to user-2
    for i in 40..60u64 {
        register(
            reg,
            &format!("tok-{i:02}"),
            &format!("user-{}", i % 10),
            t0 + i,
        )?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let dir = tempfile::tempdir()?;
    let reg = Registry::open_with(Config::new(dir.path().join("db")))?;
    let stub = Stub::start()?;
    let config = SyncConfig::new(Credentials::new(SITE, KEY)?)
        .endpoint(&stub.url)
        .max_ops(8)
        .timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .max_attempts(Some(20))
        .poll_interval(Duration::from_millis(50));
    let worker = SyncWorker::new(reg.clone(), config)?.start()?;
    service_writes(&reg)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let want = expected(&reg);
    loop {
        let drained = reg
            .sinks()
            .iter()
            .any(|s| s.name == DEFAULT_SINK && s.pending == 0 && s.in_flight.is_none());
        if drained && stub.pairs() == want {
            break;
        }
        if worker.is_finished() || Instant::now() > deadline {
            let stats = worker.shutdown();
            return Err(format!("not delivered: {stats:?}, stub {:?}", stub.pairs()).into());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let stats = worker.shutdown()?;
    if stats.dead_letters != 0 || !reg.dead_letters(DEFAULT_SINK)?.is_empty() {
        return Err(format!("dead letters: {stats:?}").into());
    }
    reg.close()?;
    println!(
        "embedded_worker: {} batches ({} operations, {} requests) delivered to the stub at {}; \
         it holds the registry's {} identified devices",
        stats.batches,
        stats.operations,
        stats.requests,
        stub.url,
        want.len()
    );
    Ok(())
}

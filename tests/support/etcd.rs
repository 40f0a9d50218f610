//! A real etcd cluster on loopback for the etcd backend's tests
//! (`tests/etcd.rs`, feature `etcd`): `EtcdCluster::start(3)` runs three
//! `etcd` child processes (Debian's etcd-server, 3.4) on free 127.0.0.1
//! ports with their data dirs in a tempdir, and waits until each answers
//! `GET /health` with `{"health":"true"}`. Members can be killed (SIGKILL)
//! and restarted on their data dir; the leader is found through etcd's JSON
//! gRPC gateway (`POST /v3/maintenance/status`). Dropping the cluster kills
//! every member and removes the dirs. A test includes it with
//! `#[path = "support/etcd.rs"] mod etcd_cluster;`.
//!
//! Only std (and tempfile, serde_json): the HTTP/1.1 client here is the
//! minimum the health checks and the gateway need, with timeouts on every
//! step. Every wait is bounded; a failure panics with the members' log tails.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How many times `start` tries a fresh set of ports before giving up (a
/// port picked free may be taken by another process before etcd binds it).
const START_ATTEMPTS: usize = 3;
/// How long a starting or restarted member has to answer healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// Connect, read and write timeout of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two polls of a member.
const POLL: Duration = Duration::from_millis(50);
/// Lines of a member's log that `log_tail` returns.
const TAIL_LINES: usize = 40;

/// Clusters started by this process (part of each cluster's token).
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------- cluster

/// One etcd process and what it needs to start again.
struct Member {
    data_dir: PathBuf,
    log: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// `None` while killed.
    child: Option<Child>,
}

/// A running etcd cluster on 127.0.0.1. Member `i` is named `m{i}`.
pub struct EtcdCluster {
    etcd: PathBuf,
    token: String,
    members: Vec<Member>,
    /// Dropped after `Drop::drop` has killed the members: removes the dirs.
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts a cluster of `members` members and waits until every one is
    /// healthy. Retries with fresh ports (and dirs) up to 3 times when a
    /// member fails to come up; panics with the failures and log tails after.
    pub fn start(members: usize) -> EtcdCluster {
        assert!(members > 0, "an etcd cluster needs at least one member");
        let etcd = etcd_binary();
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = EtcdCluster::spawn_new(&etcd, members);
            let deadline = Instant::now() + HEALTHY_WITHIN;
            let up = (0..members).try_for_each(|i| cluster.wait_healthy(i, deadline));
            match up {
                Ok(()) => return cluster,
                // Dropping `cluster` kills its members and removes its dirs.
                Err(e) => failures.push(format!("attempt {attempt}: {e}")),
            }
        }
        panic!(
            "an etcd cluster of {members} did not come up in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// A new tempdir, fresh ports, a new token, every member spawned with
    /// `--initial-cluster-state new` (not yet waited for).
    fn spawn_new(etcd: &Path, members: usize) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("devreg-etcd-")
            .tempdir()
            .expect("creating the etcd cluster's tempdir");
        let ports = free_ports(2 * members);
        let members = (0..members)
            .map(|i| {
                let member_dir = dir.path().join(format!("m{i}"));
                std::fs::create_dir(&member_dir).expect("creating an etcd member's dir");
                Member {
                    log: member_dir.join("etcd.log"),
                    data_dir: member_dir.join("data"),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    child: None,
                }
            })
            .collect();
        let mut cluster = EtcdCluster {
            etcd: etcd.to_path_buf(),
            token: cluster_token(),
            members,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i, "new");
        }
        cluster
    }

    /// Spawns member `i` (which must not be running) with its flags, its
    /// stdout and stderr appended to its log file.
    fn spawn(&mut self, i: usize, state: &str) {
        assert!(
            self.members[i].child.is_none(),
            "etcd member m{i} is running"
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.members[i].log)
            .expect("opening an etcd member's log file");
        let stderr = log
            .try_clone()
            .expect("duplicating an etcd log file handle");
        let child = Command::new(&self.etcd)
            .args(self.flags(i, state))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning etcd ({}): {e}", self.etcd.display()));
        self.members[i].child = Some(child);
    }

    /// The command line of member `i`; `state` is `new` or `existing`.
    fn flags(&self, i: usize, state: &str) -> Vec<String> {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let initial_cluster: Vec<String> = (self.members.iter().enumerate())
            .map(|(j, o)| format!("m{j}=http://127.0.0.1:{}", o.peer_port))
            .collect();
        let flags = [
            ("--name", format!("m{i}")),
            ("--data-dir", m.data_dir.display().to_string()),
            ("--listen-client-urls", client.clone()),
            ("--advertise-client-urls", client),
            ("--listen-peer-urls", peer.clone()),
            ("--initial-advertise-peer-urls", peer),
            ("--initial-cluster", initial_cluster.join(",")),
            ("--initial-cluster-token", self.token.clone()),
            ("--initial-cluster-state", state.to_string()),
            ("--heartbeat-interval", "50".into()),
            ("--election-timeout", "500".into()),
            ("--max-txn-ops", "1024".into()),
            // 4 MiB requests from a client (etcd adds its own gRPC overhead).
            ("--max-request-bytes", "4194304".into()),
            ("--quota-backend-bytes", "4294967296".into()),
            ("--logger", "zap".into()),
            ("--log-level", "warn".into()),
        ];
        flags
            .into_iter()
            .flat_map(|(k, v)| [k.to_string(), v])
            .collect()
    }

    /// Waits until member `i` answers healthy; an error (with its log tail)
    /// when its process exits or `deadline` passes first.
    fn wait_healthy(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        loop {
            let child = self.members[i].child.as_mut();
            let child = child.ok_or_else(|| format!("etcd member m{i} is not running"))?;
            if let Some(status) = child.try_wait().expect("polling an etcd process") {
                let tail = self.log_tail(i);
                return Err(format!(
                    "etcd member m{i} exited ({status}); its log:\n{tail}"
                ));
            }
            let answer = health(&self.endpoint(i));
            if answer.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail(i);
                return Err(format!(
                    "etcd member m{i} ({}) not healthy in time, last answer {answer:?}; its log:\n{tail}",
                    self.endpoint(i)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The number of members, live or killed.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether member `i` is running (not killed).
    pub fn is_live(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// `http://127.0.0.1:PORT`: member `i`'s client URL (live or not).
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The client URLs of the live members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.live().map(|i| self.endpoint(i)).collect()
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|&i| self.is_live(i))
    }

    /// SIGKILLs member `i` and reaps it. Its data dir and ports are kept
    /// for `restart`.
    pub fn kill(&mut self, i: usize) {
        let mut child = (self.members[i].child.take())
            .unwrap_or_else(|| panic!("killing etcd member m{i}: it is not running"));
        // An error here is only "already exited": wait reaps it either way.
        let _ = child.kill();
        child.wait().expect("reaping a killed etcd member");
    }

    /// Starts member `i` again on its data dir and ports
    /// (`--initial-cluster-state existing`) and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        if let Err(e) = self.wait_healthy(i, Instant::now() + HEALTHY_WITHIN) {
            panic!("restarting etcd member m{i}: {e}");
        }
    }

    /// The index of the current leader: a live member that reports itself
    /// leader, confirmed by a quorum of the members' status answers. `None`
    /// during an election, without quorum, or when members cannot be asked.
    pub fn leader(&self) -> Option<usize> {
        // (index, member id, the leader it reports)
        let statuses: Vec<(usize, u64, Option<u64>)> = self
            .live()
            .filter_map(|i| {
                let s = post_json(&self.endpoint(i), "/v3/maintenance/status", &json!({})).ok()?;
                let leader = json_u64(&s["leader"]).filter(|&l| l != 0);
                Some((i, json_u64(&s["header"]["member_id"])?, leader))
            })
            .collect();
        let quorum = self.members.len() / 2 + 1;
        let (index, id, _) = *statuses.iter().find(|(_, id, l)| *l == Some(*id))?;
        let agreeing = statuses.iter().filter(|s| s.2 == Some(id)).count();
        (agreeing >= quorum).then_some(index)
    }

    /// Polls `leader` until there is one; panics with every member's log
    /// tail after `timeout`.
    pub fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no etcd leader within {timeout:?}\n{}",
                    self.all_log_tails()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The last ~40 lines of member `i`'s log (stdout and stderr of each of
    /// its runs), for panic messages.
    pub fn log_tail(&self, i: usize) -> String {
        let log = &self.members[i].log;
        match std::fs::read(log) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(no log at {}: {e})", log.display()),
        }
    }

    /// Every member's log tail, headed by its name.
    pub fn all_log_tails(&self) -> String {
        (0..self.members.len())
            .map(|i| format!("--- m{i} ({}):\n{}", self.endpoint(i), self.log_tail(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The tempdir holding every member's dir (`m{i}/data`, `m{i}/etcd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    /// Kills every member; the tempdir (its dirs) is removed after.
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------- helpers

/// `etcd` on PATH, or a panic saying how to install it.
fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("etcd not found: run scripts/install-ci-deps.sh (Debian package etcd-server)")
        })
}

/// A token no other cluster on this machine uses (process, counter, time),
/// so members of different clusters never join each other.
fn cluster_token() -> String {
    let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("devreg-test-{}-{n}-{nanos}", std::process::id())
}

/// `n` distinct loopback ports that were free a moment ago: all bound at
/// once (so they differ), then released for etcd to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free loopback port"))
        .collect();
    (listeners.iter())
        .map(|l| l.local_addr().expect("a bound listener's address").port())
        .collect()
}

/// A uint64 of etcd's JSON gateway: a string of digits (how the gateway
/// encodes 64-bit integers), or a plain number.
pub fn json_u64(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
}

/// `Ok` when `GET /health` on `endpoint` answers 200 `{"health":"true"}`;
/// otherwise what it answered.
pub fn health(endpoint: &str) -> Result<(), String> {
    let (status, body) = http(endpoint, "GET", "/health", "")?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status} {body:?}: {e}"))?;
    match (status, v["health"].as_str()) {
        (200, Some("true")) => Ok(()),
        _ => Err(format!("{status} {body}")),
    }
}

/// POSTs `body` to `path` of etcd's JSON gRPC gateway at `endpoint` (for
/// example `/v3/kv/put`) and returns the JSON answer; an error for a
/// transport failure, a status other than 200, or a body that is not JSON.
pub fn post_json(endpoint: &str, path: &str, body: &Value) -> Result<Value, String> {
    let (status, answer) = http(endpoint, "POST", path, &body.to_string())?;
    if status != 200 {
        return Err(format!("POST {endpoint}{path}: {status} {answer}"));
    }
    serde_json::from_str(&answer).map_err(|e| format!("POST {endpoint}{path}: {e}: {answer:?}"))
}

/// One HTTP/1.1 request (`Connection: close`) to `http://IP:PORT`:
/// (status, body). Every step has a timeout.
pub fn http(endpoint: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let authority = endpoint.strip_prefix("http://").unwrap_or(endpoint);
    let addr: SocketAddr = (authority.parse())
        .map_err(|e| format!("endpoint {endpoint:?} is not http://IP:PORT: {e}"))?;
    let fail = |what: &str, e: std::io::Error| format!("{method} {endpoint}{path}: {what}: {e}");
    let mut stream =
        TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| fail("connect", e))?;
    (stream.set_read_timeout(Some(HTTP_TIMEOUT))).map_err(|e| fail("set timeout", e))?;
    (stream.set_write_timeout(Some(HTTP_TIMEOUT))).map_err(|e| fail("set timeout", e))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail("write", e))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| fail("read", e))?;
    parse_response(&raw).map_err(|e| format!("{method} {endpoint}{path}: {e}"))
}

/// (status, body) of a whole HTTP/1.1 response; a chunked body is decoded.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split = find(raw, b"\r\n\r\n").ok_or("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = (head.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let body = &raw[split + 4..];
    let body = if head.contains("\r\ntransfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or("truncated chunk size")?;
        let line = String::from_utf8_lossy(&rest[..eol]);
        let hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|e| format!("chunk size {line:?}: {e}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

//! The crash tests' shared workload and child protocol (tests/crash.rs,
//! tests/powerloss.rs): a seeded mix of every write and feed step, the lines
//! a child prints around each acknowledged write, and how the parent checks
//! a recovered registry against the reference model.
//!
//! The child prints `@@O` once the registry is open, `@@B <ops>` before and
//! `@@A <outcomes>` after each write, and for feed steps `@@e`, then
//! `@@E <id> <body hash>` (or `@@E -`), and `@@k <id>` / `@@K <id>` around an
//! ack. A line is only trusted once its newline was printed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{Model, Rng};
use devreg::*;

pub const CAP: u32 = 4;
pub const HOUR: u64 = 3_600_000;
pub const H0: u64 = 472_222 * HOUR;
/// Marks the child's own lines (libtest prints around them).
pub const MARK: &str = "@@";

/// Starts this test binary running only the child test `name`.
pub fn spawn_child(name: &str, envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        name,
        "--nocapture",
        "--ignored",
        "--test-threads=1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawning the child test process")
}

// ---------------------------------------------------------------- workload --

/// Deterministic operations from a seed; `run` moves the clock forward so
/// later runs prune what earlier ones wrote.
pub struct Workload {
    pub rng: Rng,
    clock: u64,
}

impl Workload {
    pub fn new(seed: u64, run: u64) -> Workload {
        Workload {
            rng: Rng::new(seed),
            clock: H0 + run * 20 * HOUR,
        }
    }

    pub fn token(&mut self) -> String {
        let i = self.rng.below(700);
        if i.is_multiple_of(3) {
            format!(
                "{:064x}",
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15) as u128 * 7919
            )
        } else {
            format!("f{i}:APA91b-{}_x", i * 31)
        }
    }

    pub fn person(&mut self) -> String {
        format!("person-{}", self.rng.below(70))
    }

    pub fn seen(&mut self) -> u64 {
        self.clock += self.rng.below(60_000);
        // Events arrive out of order.
        self.clock - self.rng.below(600_000)
    }

    pub fn one(&mut self) -> Op {
        let roll = self.rng.below(1000);
        match roll {
            0..=419 => {
                let person = if self.rng.chance(6, 10) {
                    Some(self.person())
                } else {
                    None
                };
                let attributes = if self.rng.chance(1, 4) {
                    let mut a = Attributes::new();
                    a.insert("app_version".into(), format!("1.{}", self.rng.below(5)));
                    if self.rng.chance(1, 2) {
                        a.insert("locale".into(), "en-US".into());
                    }
                    Some(a)
                } else {
                    None
                };
                Op::Register(Register {
                    token: self.token(),
                    platform: if self.rng.chance(1, 2) {
                        Platform::Ios
                    } else {
                        Platform::Android
                    },
                    person,
                    seen_ms: self.seen(),
                    attributes,
                })
            }
            420..=559 => Op::Touch {
                token: self.token(),
                seen_ms: self.seen(),
            },
            560..=659 => {
                let old_token = self.token();
                let mut new_token = self.token();
                if new_token == old_token {
                    new_token.push('r');
                }
                Op::Rotate {
                    old_token,
                    new_token,
                    seen_ms: self.seen(),
                }
            }
            660..=739 => Op::Logout {
                token: self.token(),
                policy: if self.rng.chance(1, 2) {
                    LogoutPolicy::Keep
                } else {
                    LogoutPolicy::Remove
                },
            },
            740..=809 => {
                let primary = self.person();
                let mut secondary = self.person();
                if secondary == primary {
                    secondary.push('x');
                }
                Op::Merge { primary, secondary }
            }
            810..=869 => Op::Remove {
                token: self.token(),
            },
            870..=944 => {
                let provider_ms = self.seen() - self.rng.below(1_200_000);
                Op::Invalidate {
                    token: self.token(),
                    provider_ms,
                }
            }
            // Delivery feedback (issue 15): logged, checkpointed and
            // replayed like the rest; `unregistered` may delete.
            945..=994 => Op::Feedback {
                token: self.token(),
                outcome: FeedbackOutcome::ALL[self.rng.below(4) as usize],
                at_ms: self.seen() - self.rng.below(1_200_000),
                reason: self.rng.chance(1, 2).then(|| "throttled".to_owned()),
            },
            _ => Op::Prune {
                before_ms: self.clock - 8 * HOUR,
            },
        }
    }

    /// The next write: one operation, or now and then a batch of 10..=50.
    pub fn next_write(&mut self) -> Vec<Op> {
        if self.rng.chance(1, 18) {
            let n = 10 + self.rng.below(41);
            (0..n).map(|_| self.one()).collect()
        } else {
            vec![self.one()]
        }
    }
}

/// Buffers one thread's output and prints it whole at each flush, so that
/// the lines of concurrent threads never mix.
#[derive(Default)]
pub struct LineOut(Vec<u8>);

impl Write for LineOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(&self.0)?;
        out.flush()?;
        self.0.clear();
        Ok(())
    }
}

/// The crash children's endless loop: one step in twelve is a feed step,
/// the others are writes; every line is flushed at once. Any error panics
/// (a crash test's child only ends by being killed, or by a power cut).
///
/// With `noise_threads > 0`, that many more threads each register its own
/// devices (see [`noise_op`]) as fast as they can, so that writes meet in
/// one commit group (several records in one log write). Their devices have
/// no person and are never pruned, so they commute with the main workload:
/// the parent checks them apart ([`check_noise`]).
pub fn run_workload(reg: &Registry, seed: u64, run: u64, noise_threads: usize) -> ! {
    std::thread::scope(|s| {
        for t in 0..noise_threads {
            s.spawn(move || noise_writer(reg, run, t));
        }
        let mut out = LineOut::default();
        writeln!(out, "\n{MARK}O").unwrap();
        out.flush().unwrap();
        let mut work = Workload::new(seed, run);
        loop {
            if work.rng.chance(1, 12) {
                feed_step(reg, &mut work.rng, &mut out);
                continue;
            }
            let ops = work.next_write();
            writeln!(out, "{MARK}B {}", serde_json::to_string(&ops).unwrap()).unwrap();
            out.flush().unwrap();
            let outcomes = if ops.len() == 1 {
                vec![reg.apply(ops[0].clone()).unwrap()]
            } else {
                reg.apply_batch(ops).unwrap()
            };
            writeln!(out, "{MARK}A {}", serde_json::to_string(&outcomes).unwrap()).unwrap();
            out.flush().unwrap();
        }
    });
    unreachable!("the workload never ends by itself")
}

/// Noise devices per thread; each is registered again and again.
const NOISE_TOKENS: u64 = 64;

/// The `i`-th write of noise thread `t`: a register of one of its
/// [`NOISE_TOKENS`] devices, seen far in the future (about eleven years
/// ahead of the main workload's clock, which no prune reaches) and later at
/// every write.
pub fn noise_op(run: u64, t: usize, i: u64) -> Op {
    Op::Register(Register {
        token: format!("noise-t{t}-{}", i % NOISE_TOKENS),
        platform: Platform::Android,
        person: None,
        seen_ms: H0 + 100_000 * HOUR + run * 20 * HOUR + i,
        attributes: None,
    })
}

/// Prints `@@nb <t> <i>` before and `@@na <t> <i>` after each noise write.
fn noise_writer(reg: &Registry, run: u64, t: usize) {
    let mut out = LineOut::default();
    for i in 0.. {
        writeln!(out, "{MARK}nb {t} {i}").unwrap();
        out.flush().unwrap();
        let _ = reg.apply(noise_op(run, t, i)).unwrap();
        writeln!(out, "{MARK}na {t} {i}").unwrap();
        out.flush().unwrap();
    }
}

/// Each noise thread's acknowledged writes (`0..acked`) and the one in
/// flight, from a child's output.
pub fn parse_noise(out: &str) -> std::collections::BTreeMap<usize, (u64, Option<u64>)> {
    let complete = match out.rfind('\n') {
        Some(i) => &out[..i],
        None => "",
    };
    let mut threads = std::collections::BTreeMap::new();
    for line in complete.lines() {
        let Some(rest) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
            continue;
        };
        let mut words = rest.split(' ');
        let (kind, t, i) = (words.next(), words.next(), words.next());
        let (Some(t), Some(i)) = (
            t.and_then(|t| t.parse::<usize>().ok()),
            i.and_then(|i| i.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let entry = threads.entry(t).or_insert((0, None));
        match kind {
            Some("nb") => {
                assert_eq!(i, entry.0, "noise thread {t} began write {i} out of order");
                entry.1 = Some(i);
            }
            Some("na") => {
                assert_eq!(
                    entry.1,
                    Some(i),
                    "noise thread {t} acknowledged {i} unbegun"
                );
                *entry = (i + 1, None);
            }
            _ => {}
        }
    }
    threads
}

/// Checks the noise devices of a recovered registry and returns `model`
/// (the main workload's match) with them in. `before` is the model before
/// this run. Every acknowledged noise write must be there; the one in
/// flight per thread may be.
pub fn check_noise(
    got: &[Device],
    before: &Model,
    mut model: Model,
    run: u64,
    noise: &std::collections::BTreeMap<usize, (u64, Option<u64>)>,
) -> Result<Model, String> {
    let got: std::collections::BTreeMap<&str, &Device> = got
        .iter()
        .filter(|d| d.token.starts_with("noise-"))
        .map(|d| (d.token.as_str(), d))
        .collect();
    // The acknowledged writes, in each thread's order, on the old devices.
    let mut acked = before.clone();
    let mut in_flight = Vec::new();
    for (&t, &(n, flying)) in noise {
        for i in 0..n {
            let _ = acked.apply(&noise_op(run, t, i));
        }
        in_flight.extend(flying.map(|i| noise_op(run, t, i)));
    }
    let mut problems = Vec::new();
    let want: std::collections::BTreeMap<String, Device> = acked
        .devices
        .iter()
        .filter(|(t, _)| t.starts_with("noise-"))
        .map(|(t, d)| (t.clone(), d.clone()))
        .collect();
    let mut allowed_extra = want.clone();
    for op in &in_flight {
        let mut m = Model::from_devices(acked.cap, want.values().cloned().collect());
        let _ = m.apply(op);
        if let Op::Register(r) = op {
            if let Some(d) = m.devices.get(&r.token) {
                allowed_extra.insert(format!("in flight {}", r.token), d.clone());
            }
        }
    }
    for (token, d) in &got {
        let ok = want.get(*token) == Some(*d)
            || allowed_extra.get(&format!("in flight {token}")) == Some(*d);
        if !ok {
            problems.push(format!(
                "noise device {token}: got {d:?}, want {:?}",
                want.get(*token)
            ));
        }
    }
    for token in want.keys() {
        if !got.contains_key(token.as_str()) {
            problems.push(format!("noise device {token} is missing"));
        }
    }
    if !problems.is_empty() {
        problems.truncate(12);
        return Err(format!(
            "acknowledged noise writes lost or wrong:\n{}",
            problems.join("\n")
        ));
    }
    model.devices.retain(|t, _| !t.starts_with("noise-"));
    for d in got.values() {
        model.devices.insert(d.token.clone(), (*d).clone());
    }
    Ok(model)
}

/// A hash of a batch body, the same in every process (SipHash with fixed keys).
pub fn body_hash(body: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    body.hash(&mut h);
    h.finish()
}

/// The child's feed step: export the next batch of the default sink (printing
/// `E <id> <body hash>` once it is returned, `E -` if nothing is pending) and,
/// two times in three, acknowledge it (`k <id>` before, `K <id>` after).
pub fn feed_step(reg: &Registry, rng: &mut Rng, out: &mut impl Write) {
    writeln!(out, "{MARK}e").unwrap();
    out.flush().unwrap();
    let max_ops = 1 + rng.below(60) as u32;
    match reg.export(DEFAULT_SINK, max_ops, 499_999).unwrap() {
        None => writeln!(out, "{MARK}E -").unwrap(),
        Some(b) => {
            writeln!(out, "{MARK}E {} {:016x}", b.id(), body_hash(b.body())).unwrap();
            out.flush().unwrap();
            if rng.chance(2, 3) {
                writeln!(out, "{MARK}k {}", b.id()).unwrap();
                out.flush().unwrap();
                reg.ack(DEFAULT_SINK, b.id()).unwrap();
                writeln!(out, "{MARK}K {}", b.id()).unwrap();
            }
        }
    }
    out.flush().unwrap();
}

/// What the child's feed steps reported, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// An export returned this batch (id, body hash).
    Exported(String, String),
    /// An ack of this batch began.
    AckBegun(String),
    /// An ack of this batch returned.
    Acked(String),
}

pub fn parse_feed_events(out: &str) -> Vec<FeedEvent> {
    let complete = match out.rfind('\n') {
        Some(i) => &out[..i],
        None => "",
    };
    let mut events = Vec::new();
    for line in complete.lines() {
        let Some(rest) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
            continue;
        };
        let mut words = rest.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("E"), Some(id), Some(hash)) => {
                events.push(FeedEvent::Exported(id.into(), hash.into()))
            }
            (Some("k"), Some(id), None) => events.push(FeedEvent::AckBegun(id.into())),
            (Some("K"), Some(id), None) => events.push(FeedEvent::Acked(id.into())),
            _ => {}
        }
    }
    events
}

/// The feed across runs: every batch body ever exported, and acked ids.
#[derive(Default)]
pub struct FeedLedger {
    bodies: std::collections::HashMap<String, String>,
    acked: std::collections::HashSet<String>,
    /// Batches exported and acknowledged, as the children reported them.
    pub exports: u64,
    pub acks: u64,
    /// In-flight batches found again after a crash with the identical body.
    pub reexported_identical: u64,
}

impl FeedLedger {
    /// Checks one run's feed events and the recovered registry's in-flight
    /// batch: an exported batch that was not acknowledged is exported again,
    /// identical, after the crash; an acknowledged one never comes back; a
    /// batch id always carries the same body.
    pub fn verify(&mut self, ctx: &str, events: &[FeedEvent], reg: &Registry) {
        let mut last_export: Option<&str> = None;
        let mut ack_begun: Option<&str> = None;
        for e in events {
            match e {
                FeedEvent::Exported(id, hash) => {
                    self.exports += 1;
                    if let Some(old) = self.bodies.insert(id.clone(), hash.clone()) {
                        assert_eq!(
                            &old, hash,
                            "{ctx}: batch {id} was exported with another body"
                        );
                    }
                    assert!(
                        !self.acked.contains(id),
                        "{ctx}: acknowledged batch {id} was exported again"
                    );
                    last_export = Some(id);
                    ack_begun = None;
                }
                FeedEvent::AckBegun(id) => ack_begun = Some(id),
                FeedEvent::Acked(id) => {
                    self.acks += 1;
                    self.acked.insert(id.clone());
                    ack_begun = None;
                }
            }
        }
        // The default sink is born at its first export.
        let Some(info) = reg.sinks().into_iter().find(|s| s.name == DEFAULT_SINK) else {
            assert!(
                self.bodies.is_empty(),
                "{ctx}: the default sink is gone after the crash, though {} batches were \
                 exported",
                self.bodies.len()
            );
            return;
        };
        if let Some(id) = &info.in_flight {
            assert!(
                !self.acked.contains(id),
                "{ctx}: acknowledged batch {id} is in flight again after the crash"
            );
            // A read: export returns the in-flight batch without a write.
            let b = reg.export(DEFAULT_SINK, 1, 499_999).unwrap().unwrap();
            assert_eq!(b.id(), id);
            let hash = format!("{:016x}", body_hash(b.body()));
            if let Some(known) = self.bodies.get(id) {
                assert_eq!(known, &hash, "{ctx}: batch {id} changed across the crash");
                self.reexported_identical += 1;
            }
        }
        if let Some(id) = last_export {
            if !self.acked.contains(id) && ack_begun != Some(id) {
                assert_eq!(
                    info.in_flight.as_deref(),
                    Some(id),
                    "{ctx}: exported batch {id} (not acknowledged) is not in flight after the crash"
                );
            }
        }
    }
}

/// One write the child began: its operations and, if acknowledged, the
/// outcomes it reported (JSON).
pub struct ChildWrite {
    ops: Vec<Op>,
    ack: Option<String>,
}

pub fn parse_child_output(out: &str) -> (bool, Vec<ChildWrite>) {
    let mut opened = false;
    let mut writes: Vec<ChildWrite> = Vec::new();
    // A last line without its newline may be cut short: ignore it.
    let complete = match out.rfind('\n') {
        Some(i) => &out[..i],
        None => "",
    };
    for line in complete.lines() {
        let Some(rest) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
            continue;
        };
        if rest == "O" {
            opened = true;
        } else if let Some(json) = rest.strip_prefix("B ") {
            assert!(
                writes.last().is_none_or(|w| w.ack.is_some()),
                "a write began before the previous one was acknowledged"
            );
            writes.push(ChildWrite {
                ops: serde_json::from_str(json).expect("child printed valid ops"),
                ack: None,
            });
        } else if let Some(json) = rest.strip_prefix("A ") {
            let w = writes.last_mut().expect("an ack follows a begin");
            assert!(w.ack.is_none());
            w.ack = Some(json.to_string());
        }
    }
    (opened, writes)
}

pub fn describe_diff(got: &[Device], want: &[Device]) -> String {
    let got: std::collections::BTreeMap<_, _> = got.iter().map(|d| (&d.token, d)).collect();
    let want: std::collections::BTreeMap<_, _> = want.iter().map(|d| (&d.token, d)).collect();
    let mut out = Vec::new();
    for (t, w) in &want {
        match got.get(t) {
            None => out.push(format!("missing {w:?}")),
            Some(g) if g != w => out.push(format!("differs: got {g:?}, want {w:?}")),
            _ => {}
        }
    }
    for (t, g) in &got {
        if !want.contains_key(t) {
            out.push(format!("unexpected {g:?}"));
        }
    }
    out.truncate(12);
    out.join("\n")
}

/// A directory removed at the end unless the test failed, so the files
/// that made it fail can be examined.
pub struct KeepOnPanic(pub PathBuf);

impl KeepOnPanic {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "kept the failing databases in {} (raw-crash: the state as the child left it)",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The acknowledged prefix of one child's writes applied to `model`, each
/// outcome checked against what the child reported; and the write in
/// flight, if the child was stopped inside one.
pub struct Acked<'a> {
    pub model: Model,
    pub in_flight: Option<&'a Vec<Op>>,
    pub writes: u64,
    pub ops: u64,
}

pub fn acked_prefix<'a>(ctx: &str, model: &Model, writes: &'a [ChildWrite]) -> Acked<'a> {
    let mut acked = Acked {
        model: model.clone(),
        in_flight: None,
        writes: 0,
        ops: 0,
    };
    for (i, w) in writes.iter().enumerate() {
        match &w.ack {
            Some(ack) => {
                let outcomes: Vec<Outcome> = w.ops.iter().map(|op| acked.model.apply(op)).collect();
                assert_eq!(
                    &serde_json::to_string(&outcomes).unwrap(),
                    ack,
                    "{ctx}: outcome of write {i} {:?}",
                    w.ops
                );
                acked.writes += 1;
                acked.ops += w.ops.len() as u64;
            }
            None => {
                assert_eq!(i + 1, writes.len(), "only the last write can be in flight");
                acked.in_flight = Some(&w.ops);
            }
        }
    }
    acked
}

/// What became of the write in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFlight {
    None,
    Lost,
    Applied,
}

/// Matches a recovered registry's devices against the acknowledged prefix,
/// optionally plus the write in flight (a crash may land either way). Returns
/// the model to continue from, or a description of what is lost or wrong.
pub fn match_recovered(got: &[Device], acked: &Acked<'_>) -> Result<(Model, InFlight), String> {
    if got == acked.model.dump() {
        let what = if acked.in_flight.is_some() {
            InFlight::Lost
        } else {
            InFlight::None
        };
        return Ok((acked.model.clone(), what));
    }
    if let Some(ops) = acked.in_flight {
        let mut m = acked.model.clone();
        for op in ops {
            let _ = m.apply(op);
        }
        if got == m.dump() {
            return Ok((m, InFlight::Applied));
        }
    }
    Err(format!(
        "recovered registry is neither the acknowledged prefix ({} writes) nor that plus the \
         write in flight {:?}; against the acknowledged prefix:\n{}",
        acked.writes,
        acked.in_flight,
        describe_diff(got, &acked.model.dump())
    ))
}

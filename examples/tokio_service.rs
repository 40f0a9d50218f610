//! A tokio service that calls devreg through `tokio::task::spawn_blocking`.
//!
//! devreg's API blocks: a write returns after its log record is durable
//! (an fdatasync with `Durability::Immediate`), and history queries,
//! `check`, `backup`, `export`/`ack` and `close` read or write files. Called
//! on an async worker thread, each would stall every task scheduled on that
//! thread for the length of an fsync. So the service runs them on tokio's
//! blocking pool with `spawn_blocking`; there, concurrent writes also share
//! one fsync (group commit). Memory reads (`device`, `devices_of`,
//! `most_recent`, `active_since`, `stats`) wait for no I/O and are called
//! directly.
//!
//! 200 concurrent "requests" on a 2-thread runtime each register a device
//! and read it back; the service then checks its answers, reads a token's
//! history and closes the database, all off the executor. Exits 1 on a
//! wrong answer.
//!
//! ```sh
//! cargo run --example tokio_service
//! ```

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use devreg::{Config, Durability, HistoryOp, Platform, Register, Registry};

const REQUESTS: usize = 200;
const PERSONS: usize = 50;
const T0_MS: u64 = 1_764_000_000_000;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Res<()> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// The service's state: one registry handle shared by every task.
#[derive(Clone)]
struct Service {
    reg: Arc<Registry>,
}

impl Service {
    /// Runs a blocking devreg call on tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Res<T>
    where
        F: FnOnce(&Registry) -> devreg::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let reg = self.reg.clone();
        Ok(tokio::task::spawn_blocking(move || f(&reg)).await??)
    }

    /// A request handler: registers the device (durable before it returns),
    /// then answers with the person's most recent device (a memory read).
    async fn handle_register(&self, i: usize) -> Res<String> {
        let person = format!("user-{}", i % PERSONS);
        let r = Register {
            token: format!("tok-{i:04}"),
            platform: Platform::Android,
            person: Some(person.clone()),
            seen_ms: T0_MS + i as u64,
            attributes: None,
        };
        let outcome = self.blocking(move |reg| reg.register(r)).await?;
        ensure(outcome.is_applied(), || format!("register: {outcome:?}"))?;
        let device = self.reg.most_recent(&person, None).ok_or("no device")?;
        Ok(device.token)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    // Opening recovers the log and reads the store: blocking too.
    let reg = tokio::task::spawn_blocking(move || {
        Registry::open_with(Config::new(path).durability(Durability::Immediate))
    })
    .await??;
    let service = Service { reg: Arc::new(reg) };
    let started = Instant::now();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move { service.handle_register(i).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let answer = task.await??;
        // Another request of the same person may have landed meanwhile.
        ensure(answer.starts_with("tok-"), || {
            format!("request {i}: {answer}")
        })?;
    }
    let elapsed = started.elapsed();
    let stats = service.reg.stats();
    ensure(stats.devices == REQUESTS as u64, || {
        format!("{} devices, expected {REQUESTS}", stats.devices)
    })?;
    for p in 0..PERSONS {
        let newest = service.reg.most_recent(&format!("user-{p}"), None);
        // The person's devices are p, p + 50, p + 100, p + 150: the last is newest.
        let want = format!("tok-{:04}", p + REQUESTS - PERSONS);
        ensure(newest.as_ref().map(|d| &d.token) == Some(&want), || {
            format!("most_recent(user-{p}) is {newest:?}, expected {want}")
        })?;
    }
    // History reads the store: off the executor.
    let history = service.blocking(|reg| reg.history("tok-0007")).await?;
    ensure(
        history.len() == 1 && history.iter().all(|e| e.op == HistoryOp::Register),
        || format!("history of tok-0007: {history:?}"),
    )?;
    let report = service.blocking(|reg| reg.check()).await?;
    ensure(report.is_clean(), || format!("check: {report:?}"))?;
    // Close (final sync and checkpoint) once every other handle is gone.
    let reg = Arc::into_inner(service.reg).ok_or("a task still holds the registry")?;
    tokio::task::spawn_blocking(move || reg.close()).await??;
    println!(
        "tokio_service: {REQUESTS} concurrent requests, each a durable register through \
         spawn_blocking, answered in {:.2} s; {} devices, check clean, closed",
        elapsed.as_secs_f64(),
        stats.devices
    );
    Ok(())
}

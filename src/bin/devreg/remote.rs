//! `devreg --server URL <command>`: the read and feed commands against a
//! live `devreg serve` instead of opening the database, which the server
//! holds locked. What is printed, and the exit codes, are those of the
//! local command: the server answers in the same JSON shapes, and its
//! answers are printed as the text it sent (never re-serialised).
//!
//! The bearer token comes from `DEVREG_API_TOKEN`; plain http is only
//! allowed to a loopback host (the token must not travel in clear text).

use std::process::ExitCode;

use serde::Deserialize;
use serde_json::value::RawValue;

use devreg::sync::{Answer, ServerClient};

use crate::output::Out;
use crate::{CliError, CmdResult, Command};

/// Devices per page of `dump`.
const DUMP_PAGE_DEVICES: u32 = 1_000;

/// The server and its token (`devreg::sync::ServerClient`: the URL check
/// and the HTTP client are the sync worker's).
struct Client(ServerClient);

impl Client {
    fn new(url: &str) -> Result<Client, CliError> {
        let token = std::env::var("DEVREG_API_TOKEN").ok();
        Ok(Client(ServerClient::new(url, token.as_deref())?))
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer, CliError> {
        Ok(self.0.send(method, path, body)?)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct DumpPage<'a> {
    #[serde(borrow)]
    devices: Vec<&'a RawValue>,
    next_cursor: Option<String>,
}

/// Runs `cmd` against the server at `url`.
pub fn run(url: &str, cmd: &Command) -> CmdResult {
    let client = Client::new(url)?;
    let mut out = Out::stdout();
    let code = dispatch(&client, cmd, &mut out)?;
    out.flush()?;
    Ok(code)
}

fn dispatch(c: &Client, cmd: &Command, out: &mut Out) -> CmdResult {
    use crate::history::HistoryCmd;
    let path = match cmd {
        Command::Dump => return dump(c, out),
        Command::Get { token } => format!("/v1/devices/{}", seg(token)),
        Command::Person { id } => format!("/v1/people/{}/devices", seg(id)),
        Command::MostRecent {
            id,
            platform,
            deliverable,
        } => {
            let mut q: Vec<String> = platform.iter().map(|p| format!("platform={p}")).collect();
            if *deliverable {
                q.push("deliverable=true".into());
            }
            let q = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            format!("/v1/people/{}/most-recent{q}", seg(id))
        }
        Command::Active { since_ms, platform } => format!(
            "/v1/active?since_ms={since_ms}{}",
            platform.map_or(String::new(), |p| format!("&platform={p}"))
        ),
        Command::Stats { daily: false } => "/v1/stats".into(),
        Command::History(HistoryCmd::History { token }) => format!("/v1/history/{}", seg(token)),
        Command::History(HistoryCmd::OwnerAt { token, at_ms, by }) => {
            format!("/v1/owner-at/{}?at_ms={at_ms}&by={}", seg(token), by.name())
        }
        Command::History(HistoryCmd::Changes {
            since_ms,
            cursor,
            limit,
        }) => format!(
            "/v1/changes?since_ms={since_ms}&limit={limit}{}",
            cursor.map_or(String::new(), |c| format!("&cursor={c}"))
        ),
        Command::Sinks {
            cmd: None | Some(crate::feed::SinksCmd::List),
        } => "/v1/sinks".into(),
        Command::DeadLetters { sink } => format!("/v1/sinks/{}/dead-letters", seg(&sink.sink)),
        _ => return post(c, cmd, out),
    };
    print(c.call("GET", &path, None)?, out)
}

/// The commands that change something on the server.
fn post(c: &Client, cmd: &Command, out: &mut Out) -> CmdResult {
    let (path, body) = match cmd {
        Command::Export { sink, max_ops } => (
            format!("/v1/sinks/{}/export?max_ops={max_ops}", seg(&sink.sink)),
            None,
        ),
        Command::Ack { sink, batch_id } => (
            format!("/v1/sinks/{}/ack/{}", seg(&sink.sink), seg(batch_id)),
            None,
        ),
        Command::Nack {
            sink,
            batch_id,
            failed,
        } => {
            let failed: Vec<_> = failed
                .iter()
                .map(|(i, r)| serde_json::json!({"index": i, "reason": r}))
                .collect();
            (
                format!("/v1/sinks/{}/nack/{}", seg(&sink.sink), seg(batch_id)),
                Some(serde_json::json!({ "failed": failed }).to_string()),
            )
        }
        Command::Requeue { sink } => (format!("/v1/sinks/{}/requeue", seg(&sink.sink)), None),
        Command::Sinks {
            cmd:
                Some(crate::feed::SinksCmd::Add {
                    name,
                    format,
                    identifier,
                    diagnostics,
                }),
        } => (
            format!(
                "/v1/sinks/{}?format={format}&identifier={identifier}&diagnostics={diagnostics}",
                seg(name)
            ),
            None,
        ),
        Command::Backup { dest: None } => ("/v1/backup".into(), None),
        Command::Backup { dest: Some(_) } => {
            return Err(CliError(
                "with --server, backup takes no DEST: the server writes each copy into \
                 its --backup-dir"
                    .into(),
            ))
        }
        _ => {
            return Err(CliError(
                "this command is not available with --server (reads, export, ack, nack, \
                 dead-letters, requeue, sinks and backup are; sync has its own --server)"
                    .into(),
            ))
        }
    };
    print(c.call("POST", &path, body.as_deref())?, out)
}

/// Prints a 2xx answer as sent (a 204 prints nothing); an error answer is
/// the local command's error: `error: not found: ...` for a 404.
fn print(a: Answer, out: &mut Out) -> CmdResult {
    match a.status {
        204 => Ok(ExitCode::SUCCESS),
        200..=299 => {
            out.line(a.body.trim_end())?;
            Ok(ExitCode::SUCCESS)
        }
        status => {
            let (code, message) = match serde_json::from_str::<ErrorBody>(&a.body) {
                Ok(e) => (e.error.code, e.error.message),
                Err(_) => (String::new(), a.body.trim().chars().take(200).collect()),
            };
            match status == 404 && code == "not_found" {
                true => Err(CliError(format!("not found: {message}"))),
                false => Err(CliError(format!("the server answered {status}: {message}"))),
            }
        }
    }
}

/// `dump`: every page, a device per line.
fn dump(c: &Client, out: &mut Out) -> CmdResult {
    let mut cursor: Option<String> = None;
    loop {
        let path = format!(
            "/v1/devices?limit={DUMP_PAGE_DEVICES}{}",
            cursor
                .as_ref()
                .map_or(String::new(), |c| format!("&cursor={}", seg(c)))
        );
        let a = c.call("GET", &path, None)?;
        if a.status != 200 {
            return print(a, out);
        }
        let page: DumpPage = serde_json::from_str(&a.body)
            .map_err(|e| CliError(format!("the server's page of devices: {e}")))?;
        for d in &page.devices {
            out.line(d.get())?;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// A path segment: every byte outside a-z, A-Z, 0-9 and `-._~` escaped.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

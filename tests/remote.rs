//! The `devreg` command as a client of a live `devreg serve` (feature
//! `server`): `devreg --server URL <command>` prints what the same command
//! prints on the database itself, byte for byte, with the same exit code.
//! (The sync worker in its own process against a live server is in
//! tests/sync.rs, beside the Customer.io emulator; the read commands are
//! also compared in tests/server.rs.)

#[path = "support/server.rs"]
mod served;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use served::Server;

fn devreg(db: &Path, server: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_devreg"));
    c.arg("--db").arg(db);
    if let Some(url) = server {
        c.args(["--server", url]);
    }
    c.args(args)
        .env_remove("DEVREG_API_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        match e.file_type().unwrap().is_dir() {
            true => copy_dir(&e.path(), &dest),
            false => drop(std::fs::copy(e.path(), dest).unwrap()),
        }
    }
}

/// A database with devices of several people, a rotation, a logout and a
/// device without an owner.
fn fixture(db: &Path, dir: &Path) {
    let mut lines = String::new();
    for i in 0..40u64 {
        let person = match i % 7 {
            0 => String::new(),
            p => format!(",\"person\":\"p{p}\""),
        };
        let platform = if i % 2 == 0 { "ios" } else { "android" };
        lines.push_str(&format!(
            "{{\"op\":\"register\",\"token\":\"tok{i:03}\",\"platform\":\"{platform}\"{person},\"seen_ms\":{}}}\n",
            1_700_000_000_000 + i * 1000
        ));
    }
    lines.push_str(
        "{\"op\":\"rotate\",\"old_token\":\"tok001\",\"new_token\":\"tok900\",\"seen_ms\":1700000100000}\n",
    );
    lines.push_str("{\"op\":\"logout\",\"token\":\"tok002\",\"policy\":\"keep\"}\n");
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines).unwrap();
    let o = devreg(db, None, &["import", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn every_client_command_prints_what_the_local_command_prints() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    fixture(&db, dir.path());
    let local = dir.path().join("local");
    copy_dir(&db, &local);
    let reads: Vec<Vec<&str>> = vec![
        vec!["dump"],
        vec!["get", "tok003"],
        vec!["get", "no such token"],
        vec!["person", "p3"],
        vec!["person", "nobody"],
        vec!["most-recent", "p3"],
        vec!["most-recent", "p3", "--platform", "android"],
        vec!["most-recent", "nobody"],
        vec!["active", "--since-ms", "1700000020000"],
        vec!["active", "--since-ms", "0", "--platform", "ios"],
        vec!["stats"],
        vec!["history", "tok001"],
        vec!["owner-at", "tok900", "--at-ms", "1900000000000"],
        vec![
            "owner-at",
            "tok900",
            "--at-ms",
            "1700000100000",
            "--by",
            "event",
        ],
        vec!["changes", "--since-ms", "0", "--limit", "5"],
        vec!["sinks"],
        // The feed: the first export creates the sink on both sides.
        vec!["export", "--max-ops", "3"],
        vec!["export", "--max-ops", "3"],
        vec!["ack", "default-000000"],
        vec!["ack", "default-000000"],
        vec!["export", "--max-ops", "2"],
        vec!["nack", "default-000001", "--failed", "1:bad token"],
        vec!["dead-letters"],
        vec!["requeue"],
        vec!["sinks"],
        vec!["ack", "no-such-batch"],
        // Sinks of other formats: added, exported, acknowledged alike.
        vec!["sinks", "add", "cdp", "--format", "pipelines"],
        vec!["sinks", "add", "cdp", "--format", "pipelines"],
        vec!["sinks", "add", "cdp", "--format", "track-v2"],
        vec![
            "sinks",
            "add",
            "mail",
            "--format",
            "track-v2",
            "--identifier",
            "email",
            "--diagnostics",
        ],
        vec!["export", "--sink", "cdp"],
        vec!["ack", "--sink", "cdp", "cdp-000000000001"],
        vec!["export", "--sink", "mail", "--max-ops", "50"],
        vec!["dead-letters", "--sink", "mail"],
        vec!["sinks", "list"],
    ];
    let expected: Vec<Output> = reads.iter().map(|a| devreg(&local, None, a)).collect();
    let server = Server::start(&db, None, &["--no-auth"]);
    for (args, want) in reads.iter().zip(&expected) {
        let got = devreg(&db, Some(&server.url), args);
        let (w, g) = (
            String::from_utf8_lossy(&want.stdout),
            String::from_utf8_lossy(&got.stdout),
        );
        assert_eq!(g, w, "stdout of {args:?}");
        assert_eq!(
            got.status.code(),
            want.status.code(),
            "exit of {args:?}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
        if want.status.code() == Some(1) {
            let werr = String::from_utf8_lossy(&want.stderr);
            let gerr = String::from_utf8_lossy(&got.stderr);
            let prefix = |s: &str| s.starts_with("error: not found");
            assert_eq!(prefix(&gerr), prefix(&werr), "{args:?}: {werr} / {gerr}");
        }
    }
    // A command the server does not offer is refused, not run locally.
    let o = devreg(&db, Some(&server.url), &["check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not available with --server"));
    let (status, err) = server.stop();
    assert!(status.success(), "{err}");
}

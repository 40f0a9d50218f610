//! The `devreg` command, run as a user would: exit codes, stdout JSON,
//! stderr messages.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn devreg(db: &Path, args: &[&str]) -> Output {
    devreg_with_stdin(db, args, None)
}

/// `devreg --db DB ARGS...` started, its stdin, stdout and stderr piped.
fn spawn_devreg(db: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn devreg")
}

fn devreg_with_stdin(db: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = spawn_devreg(db, args);
    // Dropping the pipe after writing closes stdin: the import sees EOF.
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("wait for devreg")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_from(s: &str) -> Value {
    serde_json::from_str(s.trim()).expect("JSON")
}

fn json_out(o: &Output) -> Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    json_from(&stdout(o))
}

fn import_text(db: &Path, dir: &Path, text: &[u8]) -> Output {
    let file = dir.join("events.jsonl");
    std::fs::write(&file, text).unwrap();
    devreg(db, &["import", file.to_str().unwrap()])
}

fn dump(db: &Path) -> Vec<Value> {
    let o = devreg(db, &["dump"]);
    assert!(o.status.success(), "dump failed: {}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("dump line is JSON"))
        .collect()
}

fn register(token: &str, platform: &str, person: Option<&str>, seen_ms: u64) -> String {
    json!({"op": "register", "token": token, "platform": platform,
           "person": person, "seen_ms": seen_ms})
    .to_string()
}

/// A small registry: ann has two devices, one anonymous device.
fn fixture(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("db");
    let lines = [
        json!({"op":"register","token":"aa01","platform":"iOS","person":"ann",
               "seen_ms":1000,"attributes":{"app_version":"1.2"}})
        .to_string(),
        register("bb02", "android", None, 2000),
        register("cc03", "android", Some("ann"), 3000),
    ];
    let o = import_text(&db, dir, lines.join("\n").as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    db
}

#[test]
fn import_rejects_bad_lines_and_applies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut text = Vec::new();
    let lines = [
        register("t1", "ios", Some("ann"), 10),         // 1
        "{not json".to_string(),                        // 2
        register("t2", "android", None, 20),            // 3
        r#"{"op":"explode","token":"t1"}"#.to_string(), // 4
        register("bad token", "ios", None, 1),          // 5: space in token
        r#"{"op":"touch","token":"t1","seen_ms":50,"x":1}"#.into(), // 6
        r#"{"op":"register","token":"t3","platform":"ios","seen_ms":1,"attributes":{"n":5}}"#
            .into(), // 7
        register("t4", "windows", None, 1),             // 8
        register("t5", "ios", None, 1),                 // 9
        r#"{"op":"touch","token":"nobody","seen_ms":5}"#.into(), // 10: skipped
        r#"{"op":"invalidate","token":"t2","provider_ms":5}"#.into(), // 11: skipped
        r#"{"op":"logout","token":"t1","policy":"maybe"}"#.into(), // 12
    ];
    for l in &lines {
        text.extend_from_slice(l.as_bytes());
        text.push(b'\n');
    }
    text.extend_from_slice(b"{\"op\":\"remove\",\"token\":\"\xff\"}\n"); // 13
    text.extend_from_slice(b"\n   \n"); // 14, 15: blank, ignored
    text.extend_from_slice(&vec![b' '; devreg::limits::MAX_IMPORT_LINE_BYTES + 1]); // 16
    text.push(b'\n');
    text.extend_from_slice(register("t6", "android", Some("bob"), 60).as_bytes()); // 17, no newline

    let o = import_text(&db, dir.path(), &text);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    for n in [2, 4, 5, 6, 7, 8, 12, 13, 16] {
        assert!(err.contains(&format!("line {n}: ")), "no line {n} in {err}");
    }
    for n in [1, 3, 9, 10, 11, 14, 15, 17] {
        assert!(!err.contains(&format!("line {n}: ")), "line {n} in {err}");
    }
    assert!(err.contains("line 7: invalid attributes.n: must be a JSON string"));
    assert!(err.contains("line 13: not valid UTF-8"), "{err}");
    assert!(err.contains("imported 4, skipped 2, rejected 9"), "{err}");
    assert_eq!(
        json_from(&stdout(&o)),
        json!({"imported": 4, "skipped": 2, "rejected": 9})
    );

    let tokens: Vec<_> = dump(&db).iter().map(|d| d["token"].clone()).collect();
    assert_eq!(tokens, vec!["t1", "t2", "t5", "t6"]);
}

#[test]
fn every_op_kind_imports() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let lines = [
        register("a1", "ios", Some("ann"), 100),
        register("a2", "ios", Some("ann"), 200),
        register("b1", "android", Some("bob"), 300),
        r#"{"op":"touch","token":"a1","seen_ms":250}"#.into(),
        r#"{"op":"rotate","old_token":"a2","new_token":"a3","seen_ms":260}"#.into(),
        r#"{"op":"merge","primary":"ann","secondary":"bob"}"#.into(),
        r#"{"op":"logout","token":"a1","policy":"keep"}"#.into(),
        r#"{"op":"logout","token":"b1","policy":"remove"}"#.into(),
        register("c1", "android", None, 5),
        r#"{"op":"remove","token":"c1"}"#.into(),
        register("d1", "android", None, 40),
        r#"{"op":"invalidate","token":"d1","provider_ms":50}"#.into(),
        register("e1", "ios", None, 1),
        r#"{"op":"prune","before_ms":100}"#.into(),
    ];
    let o = import_text(&db, dir.path(), lines.join("\n").as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let devices = dump(&db);
    assert_eq!(
        devices,
        vec![
            json!({"op":"register","token":"a1","platform":"ios","person":null,
                   "last_seen_ms":250,"attributes":{}}),
            json!({"op":"register","token":"a3","platform":"ios","person":"ann",
                   "last_seen_ms":260,"attributes":{}}),
        ]
    );
}

#[test]
fn query_commands_print_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());

    let d = json_out(&devreg(&db, &["get", "aa01"]));
    assert_eq!(
        d,
        json!({"token":"aa01","platform":"ios","person":"ann","last_seen_ms":1000,
               "attributes":{"app_version":"1.2"}})
    );
    let anon = json_out(&devreg(&db, &["get", "bb02"]));
    assert_eq!(anon["person"], Value::Null);

    let ann = json_out(&devreg(&db, &["person", "ann"]));
    let tokens: Vec<_> = ann
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["token"])
        .collect();
    assert_eq!(tokens, vec!["cc03", "aa01"], "most recent first");
    assert_eq!(json_out(&devreg(&db, &["person", "nobody"])), json!([]));

    let recent = json_out(&devreg(&db, &["most-recent", "ann"]));
    assert_eq!(recent["token"], "cc03");
    let ios = json_out(&devreg(&db, &["most-recent", "ann", "--platform", "IOS"]));
    assert_eq!(ios["token"], "aa01");

    let active = |args: &[&str]| json_out(&devreg(&db, args));
    assert_eq!(active(&["active", "--since-ms", "0"]), json!({"count": 3}));
    assert_eq!(
        active(&["active", "--since-ms", "2000"]),
        json!({"count": 2})
    );
    assert_eq!(
        active(&["active", "--since-ms", "0", "--platform", "android"]),
        json!({"count": 2})
    );

    let stats = json_out(&devreg(&db, &["stats"]));
    let want = json!({"devices": 3, "identified": 2, "anonymous": 1, "ios": 1,
                      "android": 2, "persons": 1, "max_devices_per_person": 20,
                      "sinks": []});
    assert_eq!(stats, want);

    let check = devreg(&db, &["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    assert_eq!(
        json_from(&stdout(&check)),
        json!({"devices": 3, "problems": []})
    );
}

#[test]
fn missing_things_and_bad_arguments_fail() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());

    let o = devreg(&db, &["get", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert_eq!(
        stderr(&o),
        "error: not found: no device with token \"nope\"\n",
        "the same prefix as every error"
    );

    let o = devreg(&db, &["most-recent", "ann", "--platform", "android"]);
    assert!(o.status.success());
    let o = devreg(&db, &["most-recent", "zed"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: not found: no device for person \"zed\"\n"
    );

    let o = devreg(&db, &["active", "--since-ms", "0", "--platform", "windows"]);
    assert_eq!(o.status.code(), Some(2), "usage error");
    assert!(stderr(&o).contains("windows"));

    let o = devreg(
        &db,
        &["import", dir.path().join("missing").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: cannot open"),
        "{}",
        stderr(&o)
    );

    let o = devreg(&db, &["--max-devices-per-person", "0", "stats"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("max_devices_per_person"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn dump_is_ordered_by_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    // Hex and non-hex tokens are packed differently; the order is the text's.
    let tokens = [
        "ff", "0a", "Zed", "abc", "ab", "0a0b", "a:APA91b", "10", "1",
    ];
    let lines: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| register(t, "android", None, i as u64))
        .collect();
    let o = import_text(&db, dir.path(), lines.join("\n").as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<String> = dump(&db)
        .iter()
        .map(|d| d["token"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
}

/// Imports `n` devices of ann (seen 0..n) with the given cap.
fn import_with_cap(dir: &Path, n: u64, cap: &str) -> std::path::PathBuf {
    let db = dir.join(format!("db-{cap}"));
    let lines: Vec<_> = (0..n)
        .map(|i| register(&format!("t{i:02}"), "ios", Some("ann"), i))
        .collect();
    let file = dir.join("ev.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let args = [
        "--max-devices-per-person",
        cap,
        "import",
        file.to_str().unwrap(),
    ];
    let o = devreg(&db, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    db
}

#[test]
fn cap_flag_evicts_oldest_and_is_kept_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let db = import_with_cap(dir.path(), 5, "3");
    let ann = json_out(&devreg(&db, &["person", "ann"]));
    let tokens: Vec<_> = ann
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["token"])
        .collect();
    assert_eq!(tokens, vec!["t04", "t03", "t02"]);
    // A later command without the flag keeps the stored cap of 3.
    let stats = json_out(&devreg(&db, &["stats"]));
    assert_eq!(
        (
            stats["max_devices_per_person"].as_u64(),
            stats["devices"].as_u64()
        ),
        (Some(3), Some(3))
    );

    // Above the default of 20: opening without the flag keeps the stored cap
    // (the library's `None`), so plain reads and writes never lower it and evict.
    let db = import_with_cap(dir.path(), 30, "50");
    let stats = json_out(&devreg(&db, &["stats"]));
    assert_eq!(
        (
            stats["max_devices_per_person"].as_u64(),
            stats["devices"].as_u64()
        ),
        (Some(50), Some(30))
    );
    let o = import_text(
        &db,
        dir.path(),
        register("t99", "ios", Some("ann"), 99).as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json_out(&devreg(&db, &["person", "ann"]))
            .as_array()
            .map(Vec::len),
        Some(31)
    );
    let stats = json_out(&devreg(&db, &["stats"]));
    assert_eq!(stats["max_devices_per_person"], 50);
}

/// `import -` of two registers on stdin with `flags` before the command.
fn import_two_from_stdin(db: &Path, flags: &[&str]) -> Output {
    let text = [
        register("s1", "ios", None, 1),
        register("s2", "android", None, 2),
    ]
    .join("\n");
    let args: Vec<&str> = flags.iter().copied().chain(["import", "-"]).collect();
    devreg_with_stdin(db, &args, Some(text.as_bytes()))
}

/// The import of `import_two_from_stdin` succeeded, and both are there.
fn assert_imported_two(db: &Path, o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    assert_eq!(
        json_from(&stdout(o)),
        json!({"imported": 2, "skipped": 0, "rejected": 0})
    );
    assert_eq!(dump(db).len(), 2);
}

/// The command's heap is not advised onto huge pages (mimalloc's `no_thp`,
/// DESIGN.md 6, "The command's heap is on small pages"): while an import
/// waits on stdin with its database open, no mapping of the process
/// carries `MADV_HUGEPAGE` (the `hg` flag of /proc/PID/smaps). mimalloc's
/// default advises every arena it maps; the state's own arrays take the
/// advice only from 16 MiB (`state/huge.rs`), which one device never needs.
#[cfg(target_os = "linux")]
#[test]
fn the_command_heap_is_not_advised_onto_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut child = spawn_devreg(&db, &["import", "-"]);
    let mut pipe = child.stdin.take().expect("stdin");
    writeln!(pipe, "{}", register("aa01", "ios", Some("ann"), 1000)).unwrap();
    pipe.flush().unwrap();
    let smaps = format!("/proc/{}/smaps", child.id());
    let advised = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("VmFlags:"))
            .filter(|l| l.split_whitespace().any(|f| f == "hg"))
            .count()
    };
    // Until the open has made the store, and twice after it.
    let mut looks_after_open = 0;
    for _ in 0..100 {
        let opened = db.join("store").exists();
        let text = std::fs::read_to_string(&smaps).expect("the import is still running");
        assert_eq!(
            advised(&text),
            0,
            "mappings advised onto huge pages:\n{text}"
        );
        if opened {
            looks_after_open += 1;
            if looks_after_open == 2 {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(looks_after_open, 2, "the import never opened its database");
    drop(pipe);
    let o = child.wait_with_output().expect("wait for devreg");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_out(&o)["imported"], 1);
}

#[test]
fn import_reads_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let o = import_two_from_stdin(&db, &["--durability", "eventual"]);
    assert_imported_two(&db, &o);
}

/// `--log-bytes-per-device` reaches the registry's config: a bulk import
/// may set it, and a value over the limit is refused naming the setting.
#[test]
fn import_takes_the_log_bound_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let too_many = (devreg::limits::MAX_LOG_BYTES_PER_DEVICE + 1).to_string();
    let o = import_two_from_stdin(&db, &["--log-bytes-per-device", &too_many]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("log_bytes_per_device"),
        "{}",
        stderr(&o)
    );
    let o = import_two_from_stdin(&db, &["--log-bytes-per-device", "24"]);
    assert_imported_two(&db, &o);
}

#[test]
fn an_empty_file_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let o = import_text(&db, dir.path(), b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("imported 0, skipped 0, rejected 0"));
    assert!(dump(&db).is_empty());
    let o = devreg(&db, &["check"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn import_spans_several_batches_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut text = String::new();
    // 25,000 registers cross two batch boundaries; the last touch of each
    // token must win, so order across batches matters.
    for i in 0..25_000u64 {
        text.push_str(&register(&format!("{i:064x}"), "ios", None, i));
        text.push('\n');
    }
    text.push_str(r#"{"op":"prune","before_ms":24990}"#);
    let o = import_text(&db, dir.path(), text.as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json_out(&devreg(&db, &["stats"]))["devices"], 10);
}

#[test]
#[ignore = "slow in debug builds; run with --release -- --ignored"]
fn demo_runs_clean() {
    let o = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("demo")
        .output()
        .expect("run demo");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("check: clean"), "{text}");
    assert!(text.contains("drained "), "{text}");
    assert!(text.contains(r#""pending":0"#), "{text}");
}

// ---- The sync feed: export, ack, nack, dead letters, requeue, sinks ----

const FIRST: &str = "customerio-000000000001";

fn add_device(person: &str, token: &str, platform: &str, last_used: u64, attrs: Value) -> Value {
    json!({"type": "person", "identifiers": {"id": person}, "action": "add_device",
           "device": {"token": token, "platform": platform, "last_used": last_used,
                      "attributes": attrs}})
}

/// Runs `export` and returns its raw stdout line (empty when drained).
fn export_line(db: &Path, args: &[&str]) -> String {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let o = devreg(db, &all);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o)
}

/// The operations of an exported batch, checked against the documented shape.
fn batch_ops(line: &str) -> (String, Vec<Value>) {
    assert!(
        line.ends_with('\n') && line.trim_end().lines().count() == 1,
        "{line:?}"
    );
    let v = json_from(line);
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 2, "{v}");
    let id = obj["batch_id"].as_str().expect("batch_id is a string");
    let body = obj["body"].as_object().expect("body is an object");
    assert_eq!(body.len(), 1, "{v}");
    (
        id.to_string(),
        body["batch"].as_array().expect("batch").clone(),
    )
}

fn ack(db: &Path, sink: &str, id: &str) -> Output {
    devreg(db, &["ack", "--sink", sink, id])
}

fn sinks(db: &Path) -> Vec<Value> {
    json_out(&devreg(db, &["sinks"]))
        .as_array()
        .expect("array")
        .clone()
}

#[test]
fn export_prints_a_customerio_batch_and_repeats_it_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());

    // The default sink is born at its first export.
    let o = devreg(&db, &["sinks"]);
    assert_eq!(json_out(&o), json!([]));
    assert!(stderr(&o).contains("first export"), "{}", stderr(&o));
    let o = devreg(&db, &["export"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("snapshot"), "{}", stderr(&o));
    let line = stdout(&o);
    // Field order is part of the contract: the body is what is POSTed. A
    // new sink's snapshot goes by CRC-32 of the packed token (DESIGN.md 11.5).
    let start = r#"{"batch_id":"customerio-000000000001","body":{"batch":[{"type":"person","identifiers":{"id":"ann"},"action":"add_device","device":{"token":"cc03","platform":"android","last_used":3,"attributes":{}}},"#;
    assert!(line.starts_with(start), "{line}");
    let (id, ops) = batch_ops(&line);
    assert_eq!(id, FIRST);
    // Only identified devices; last_used in whole seconds; string attributes.
    assert_eq!(
        ops,
        vec![
            add_device("ann", "cc03", "android", 3, json!({})),
            add_device("ann", "aa01", "ios", 1, json!({"app_version": "1.2"})),
        ]
    );

    // Exported again before the ack: the identical line.
    assert_eq!(export_line(&db, &[]), line);
    assert_eq!(
        sinks(&db),
        vec![
            json!({"name": "customerio", "pending": 2, "in_flight": FIRST,
                    "batches_exported": 1, "dead_letters": 0})
        ]
    );

    let o = ack(&db, "customerio", FIRST);
    assert_eq!(
        json_out(&o),
        json!({"acked": FIRST, "failed": 0, "already_acked": false})
    );
    assert_eq!(export_line(&db, &[]), "", "drained: nothing printed");
    assert_eq!(
        sinks(&db),
        vec![
            json!({"name": "customerio", "pending": 0, "in_flight": null,
                    "batches_exported": 1, "dead_letters": 0})
        ]
    );
    // Acknowledging again is a no-op.
    let o = ack(&db, "customerio", FIRST);
    assert_eq!(json_out(&o)["already_acked"], true);
    assert_eq!(devreg(&db, &["check"]).status.code(), Some(0));
}

#[test]
fn deletes_moves_and_merges_have_the_customerio_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    let drain = |db: &Path| -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let line = export_line(db, &["--max-ops", "1000"]);
            if line.is_empty() {
                return all;
            }
            let (id, ops) = batch_ops(&line);
            assert!(ack(db, "customerio", &id).status.success());
            all.extend(ops);
        }
    };
    assert_eq!(drain(&db).len(), 2);

    let lines = [
        register("b1", "android", Some("bob"), 5000),
        r#"{"op":"logout","token":"cc03","policy":"keep"}"#.into(),
        register("aa01", "ios", Some("bob"), 6000), // moves from ann to bob
    ];
    let o = import_text(&db, dir.path(), lines.join("\n").as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let del = |p: &str, t: &str| {
        json!({"type": "person", "identifiers": {"id": p}, "action": "delete_device",
               "device": {"token": t}})
    };
    let ops = drain(&db);
    assert!(ops.contains(&del("ann", "cc03")), "{ops:?}");
    let (d, a) = (
        ops.iter().position(|o| *o == del("ann", "aa01")),
        ops.iter()
            .position(|o| o["action"] == "add_device" && o["device"]["token"] == "aa01"),
    );
    assert!(
        d.is_some() && a.is_some() && d < a,
        "delete before add: {ops:?}"
    );
    assert_eq!(
        ops[a.unwrap()],
        add_device("bob", "aa01", "ios", 6, json!({"app_version": "1.2"}))
    );

    register_and_merge(&db, dir.path());
    let ops = drain(&db);
    let merge = json!({"type": "person", "action": "merge",
                       "primary": {"id": "cy"}, "secondary": {"id": "bob"}});
    assert!(ops.contains(&merge), "{ops:?}");
    for op in &ops {
        let action = op["action"].as_str().unwrap_or_default();
        assert!(
            ["add_device", "delete_device", "merge"].contains(&action),
            "{op}"
        );
    }
    assert_eq!(devreg(&db, &["check"]).status.code(), Some(0));
}

/// Gives cy a device, delivers it, then merges bob into cy.
fn register_and_merge(db: &Path, dir: &Path) {
    let o = import_text(db, dir, register("c1", "ios", Some("cy"), 7000).as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = import_text(
        db,
        dir,
        br#"{"op":"merge","primary":"cy","secondary":"bob"}"#,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn ack_of_an_unknown_batch_fails() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    let fails = |id: &str, sink: &str| {
        let o = ack(&db, sink, id);
        assert_eq!(o.status.code(), Some(1), "{id}");
        assert!(stdout(&o).is_empty());
        assert!(stderr(&o).starts_with("error: "), "{}", stderr(&o));
        stderr(&o)
    };
    // Before the first export nothing can be acknowledged.
    fails(FIRST, "customerio");
    let (id, ops) = batch_ops(&export_line(&db, &[]));
    assert_eq!((id.as_str(), ops.len()), (FIRST, 2));
    for id in [
        "customerio-000000000002",
        "customerio-000000000099",
        "nope",
        "",
    ] {
        fails(id, "customerio");
    }
    assert!(fails(FIRST, "nosuchsink").contains("nosuchsink"));
    // Still in flight: the same batch is exported again, then acknowledged.
    assert_eq!(batch_ops(&export_line(&db, &[])).0, FIRST);
    assert!(ack(&db, "customerio", FIRST).status.success());
}

#[test]
fn nack_dead_letters_and_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    let (id, ops) = batch_ops(&export_line(&db, &[]));

    // Malformed values are usage errors that name the value.
    for bad in ["x", "one:reason", "1", "-1:r", "99999999999:r", "1:"] {
        let flag = format!("--failed={bad}");
        let o = devreg(&db, &["nack", &id, &flag]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains(bad), "{bad}: {}", stderr(&o));
    }
    let o = devreg(&db, &["nack", &id]);
    assert_eq!(o.status.code(), Some(2), "--failed is required");
    // An index outside the batch is an error; nothing is acknowledged.
    let o = devreg(&db, &["nack", &id, "--failed", "2:too far"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("index 2"), "{}", stderr(&o));
    assert_eq!(sinks(&db)[0]["in_flight"], id.as_str());

    let o = devreg(
        &db,
        &["nack", &id, "--failed", "1:Invalid token: too short"],
    );
    assert_eq!(
        json_out(&o),
        json!({"acked": id, "failed": 1, "already_acked": false})
    );
    let dead = json_out(&devreg(&db, &["dead-letters"]));
    assert_eq!(
        dead,
        json!([{"batch_id": id, "index": 1, "reason": "Invalid token: too short",
                "operation": ops[1]}])
    );
    let info = &sinks(&db)[0];
    assert_eq!(
        (&info["pending"], &info["dead_letters"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(export_line(&db, &[]), "", "the rest counts as delivered");

    assert_eq!(json_out(&devreg(&db, &["requeue"])), json!({"requeued": 1}));
    assert_eq!(json_out(&devreg(&db, &["dead-letters"])), json!([]));
    assert_eq!(sinks(&db)[0]["pending"], 1);
    let (id2, ops2) = batch_ops(&export_line(&db, &[]));
    assert_eq!(id2, "customerio-000000000002");
    assert_eq!(ops2, vec![ops[1].clone()]);

    // The requeued operation delivered: nothing is left to requeue.
    let o = ack(&db, "customerio", &id2);
    assert!(o.status.success());
    assert_eq!(json_out(&devreg(&db, &["requeue"])), json!({"requeued": 0}));
    assert_eq!(devreg(&db, &["check"]).status.code(), Some(0));
}

#[test]
fn nack_takes_several_failures() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    let (id, _) = batch_ops(&export_line(&db, &[]));
    let o = devreg(&db, &["nack", &id, "--failed", "0:a", "0:b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("index 0 twice"), "{}", stderr(&o));
    let o = devreg(&db, &["nack", &id, "--failed", "0:a", "--failed", "1:b"]);
    assert_eq!(json_out(&o)["failed"], 2);
    let dead = json_out(&devreg(&db, &["dead-letters", "--sink", "customerio"]));
    let reasons: Vec<_> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["index"].clone(), d["reason"].clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![(json!(0), json!("a")), (json!(1), json!("b"))]
    );
    assert_eq!(sinks(&db)[0]["dead_letters"], 2);
}

#[test]
fn a_new_sink_starts_with_a_snapshot_of_identified_devices() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    // Drain the default sink first: the new sink must not depend on it.
    let (id, _) = batch_ops(&export_line(&db, &[]));
    assert!(ack(&db, "customerio", &id).status.success());

    let o = devreg(&db, &["export", "--sink", "warehouse", "--max-ops", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("created sink \"warehouse\""),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("snapshot"), "{}", stderr(&o));
    let (wid, ops) = batch_ops(&stdout(&o));
    assert_eq!(wid, "warehouse-000000000001");
    assert_eq!(
        ops,
        vec![add_device("ann", "cc03", "android", 3, json!({}))]
    );
    assert_eq!(
        sinks(&db),
        vec![
            json!({"name": "customerio", "pending": 0, "in_flight": null,
                   "batches_exported": 1, "dead_letters": 0}),
            json!({"name": "warehouse", "pending": 2, "in_flight": wid,
                   "batches_exported": 1, "dead_letters": 0}),
        ]
    );
    // The second export does not create it again (no note).
    let o = devreg(&db, &["export", "--sink", "warehouse"]);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    assert!(ack(&db, "warehouse", &wid).status.success());
    assert_eq!(sinks(&db)[1]["pending"], 1, "one of the two delivered");
    let (_, ops) = batch_ops(&export_line(&db, &["--sink", "warehouse"]));
    assert_eq!(
        ops,
        vec![add_device(
            "ann",
            "aa01",
            "ios",
            1,
            json!({"app_version": "1.2"})
        )]
    );
    let stats = json_out(&devreg(&db, &["stats"]));
    assert_eq!(stats["sinks"].as_array().map(Vec::len), Some(2));

    // Bad names are refused; only export creates sinks.
    let o = devreg(&db, &["export", "--sink", "Bad Name"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: invalid sink"),
        "{}",
        stderr(&o)
    );
    for cmd in ["dead-letters", "requeue"] {
        let o = devreg(&db, &[cmd, "--sink", "other"]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        assert!(stderr(&o).contains("no sink named"), "{}", stderr(&o));
    }
    let o = devreg(&db, &["export", "--max-ops", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("max_ops"), "{}", stderr(&o));
    assert_eq!(devreg(&db, &["check"]).status.code(), Some(0));
}

// ---- Safe use: reads never write, stored settings change on request ----

/// Every file under `dir` with its bytes and mode, by path.
fn files_of(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p.clone());
                out.insert(p, (Vec::new(), meta.permissions().mode()));
            } else {
                out.insert(
                    p.clone(),
                    (std::fs::read(&p).unwrap(), meta.permissions().mode()),
                );
            }
        }
    }
    out
}

/// Every read command, with the cap flag that once evicted devices.
const READS: &[&[&str]] = &[
    &["dump"],
    &["get", "aa01"],
    &["get", "nosuch"],
    &["person", "ann"],
    &["most-recent", "ann"],
    &["active", "--since-ms", "0"],
    &["stats"],
    &["stats", "--daily"],
    &["check"],
    &["history", "aa01"],
    &["owner-at", "aa01", "--at-ms", "1500"],
    &["owner-at", "aa01", "--at-ms", "1500", "--by", "event"],
    &["changes", "--since-ms", "0"],
    &["dead-letters"],
    &["sinks"],
    &["config", "show"],
];

#[test]
fn a_read_command_leaves_every_file_of_the_database_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    // A feed position and a dead letter, so that every file kind exists.
    let line = export_line(&db, &[]);
    let (id, _) = batch_ops(&line);
    let o = devreg(&db, &["nack", &id, "--failed", "0:bad"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = files_of(&db);
    let devices = dump(&db).len();
    for args in READS {
        let mut with_cap = vec!["--max-devices-per-person", "1"];
        with_cap.extend_from_slice(args);
        for a in [args.to_vec(), with_cap] {
            let o = devreg(&db, &a);
            assert!(o.status.code() != Some(2), "{a:?}: {}", stderr(&o));
            assert!(files_of(&db) == before, "devreg {a:?} changed a file");
        }
    }
    // ann still has both devices: the cap of 1 was not applied.
    assert_eq!(dump(&db).len(), devices);
    assert_eq!(
        json_out(&devreg(&db, &["config", "show"])),
        json!({"max_devices_per_person": 20})
    );
}

#[test]
fn a_read_command_on_a_missing_database_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no").join("such");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for args in READS {
        for db in [&missing, &empty] {
            let o = devreg(db, args);
            assert_eq!(o.status.code(), Some(1), "{args:?} on {}", db.display());
            let err = stderr(&o);
            assert!(
                err.starts_with(&format!("error: no devreg database at {}", db.display())),
                "{args:?}: {err}"
            );
            assert!(stdout(&o).is_empty());
        }
        assert!(
            !dir.path().join("no").exists(),
            "{args:?} created a directory"
        );
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "{args:?}");
    }
    // A write command still creates one where the path is absent.
    std::fs::create_dir_all(&missing).unwrap();
    let db = fixture(&missing);
    assert_eq!(dump(&db).len(), 3);
}

#[test]
fn the_cap_is_set_when_created_and_changed_only_by_config_set() {
    let dir = tempfile::tempdir().unwrap();
    let db = import_with_cap(dir.path(), 6, "5");
    assert_eq!(dump(&db).len(), 5);
    // A write command with a different cap: refused, pointing to config set.
    let more = register("t99", "ios", Some("ann"), 99);
    let file = dir.path().join("more.jsonl");
    std::fs::write(&file, &more).unwrap();
    let import_with_cap_flag = |cap: &str| {
        devreg(
            &db,
            &[
                "--max-devices-per-person",
                cap,
                "import",
                file.to_str().unwrap(),
            ],
        )
    };
    let o = import_with_cap_flag("2");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("config set max-devices-per-person 2"),
        "{}",
        stderr(&o)
    );
    assert_eq!(dump(&db).len(), 5, "nothing imported, nothing evicted");
    // The same cap is fine.
    let o = import_with_cap_flag("5");
    assert!(o.status.success(), "{}", stderr(&o));
    // config set without --yes reports and changes nothing.
    let before = files_of(&db);
    let o = devreg(&db, &["config", "set", "max-devices-per-person", "2"]);
    assert_eq!(
        json_out(&o),
        json!({"setting": "max-devices-per-person", "stored": 5, "requested": 2,
               "would_evict": 3, "applied": false})
    );
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    assert_eq!(dump(&db).len(), 5);
    assert_eq!(
        json_out(&devreg(&db, &["config", "show"]))["max_devices_per_person"],
        5
    );
    assert_eq!(before.len(), files_of(&db).len());
    // With --yes it evicts what it said, oldest first.
    let o = devreg(
        &db,
        &["config", "set", "max-devices-per-person", "2", "--yes"],
    );
    assert_eq!(
        json_out(&o),
        json!({"setting": "max-devices-per-person", "stored": 5, "requested": 2,
               "would_evict": 3, "applied": true, "evicted": 3})
    );
    let ann = json_out(&devreg(&db, &["person", "ann"]));
    let tokens: Vec<_> = ann
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["token"])
        .collect();
    assert_eq!(tokens, vec!["t99", "t05"]);
    assert_eq!(
        json_out(&devreg(&db, &["config", "show"]))["max_devices_per_person"],
        2
    );
}

#[test]
fn a_dump_imports_into_a_new_database_as_the_same_devices() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    // Attributes, an anonymous device, a person with two devices.
    let o = devreg(&db, &["dump"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for line in text.lines() {
        let v = json_from(line);
        assert_eq!(v["op"], "register", "{line}");
    }
    let copy = dir.path().join("copy");
    let o = devreg_with_stdin(&copy, &["import", "-"], Some(text.as_bytes()));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        json_from(&stdout(&o)),
        json!({"imported": 3, "skipped": 0, "rejected": 0})
    );
    assert_eq!(stdout(&devreg(&copy, &["dump"])), text);
    assert_eq!(dump(&copy)[0]["attributes"], json!({"app_version": "1.2"}));
}

// ---- Backup ----

#[test]
fn a_backup_answers_every_read_as_the_original_and_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    // A dead letter, then more changes pending in the feed.
    let (id, _) = batch_ops(&export_line(&db, &[]));
    let o = devreg(&db, &["nack", &id, "--failed", "0:bad"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let more = [
        register("dd04", "ios", Some("bob"), 4000),
        register("aa01", "ios", Some("bob"), 5000),
    ];
    let o = import_text(&db, dir.path(), more.join("\n").as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(sinks(&db)[0]["pending"].as_u64().unwrap() > 0);

    let copy = dir.path().join("copy");
    let before = files_of(&db);
    let o = devreg(&db, &["backup", copy.to_str().unwrap()]);
    let report = json_out(&o);
    assert_eq!(report["devices"], 4);
    assert_eq!(report["dest"], copy.to_str().unwrap());
    assert!(
        files_of(&db) == before,
        "backup changed the source database"
    );
    let reads: &[&[&str]] = &[
        &["dump"],
        &["history", "aa01"],
        &["owner-at", "aa01", "--at-ms", "99999999999999"],
        &["changes", "--since-ms", "0"],
        &["sinks"],
        &["dead-letters"],
        &["config", "show"],
        &["stats"],
        &["stats", "--daily"],
        &["person", "bob"],
    ];
    for args in reads {
        let (a, b) = (devreg(&db, args), devreg(&copy, args));
        assert!(a.status.success(), "{args:?}: {}", stderr(&a));
        assert_eq!(
            (stdout(&a), a.status.code()),
            (stdout(&b), b.status.code()),
            "{args:?}"
        );
    }
    assert_eq!(devreg(&copy, &["check"]).status.code(), Some(0));
    // The next export is the same batch in both.
    assert_eq!(export_line(&copy, &[]), export_line(&db, &[]));
}

#[test]
fn backup_refuses_a_destination_that_is_not_new_or_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    let dest = dir.path().join("taken");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("notes.txt"), b"keep me").unwrap();
    let o = devreg(&db, &["backup", dest.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "error: backup destination {}: is a directory that is not empty",
            dest.display()
        )
    );
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 1);
    // A missing database: the usual error, and no copy made.
    let missing = dir.path().join("nosuch");
    let fresh = dir.path().join("fresh");
    let o = devreg(&missing, &["backup", fresh.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: no devreg database at"),
        "{}",
        stderr(&o)
    );
    assert!(!fresh.exists() && !missing.exists());
}

// ---- An import that helps ----

#[test]
fn a_json_array_or_csv_is_one_clear_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let events: Vec<String> = (0..3000)
        .map(|i| register(&format!("t{i}"), "ios", Some("ann"), 1_700_000_000_000 + i))
        .collect();
    let array = format!("[{}]", events.join(",\n"));
    let csv: String = std::iter::once("token,platform,person,seen_ms\n".to_string())
        .chain((0..3000).map(|i| format!("t{i},ios,ann,{i}\n")))
        .collect();
    for (text, says) in [
        (array.as_str(), "is a JSON array"),
        (csv.as_str(), "looks like CSV"),
        ("\u{feff}\n  [ ]", "is a JSON array"),
    ] {
        for stdin in [false, true] {
            let o = match stdin {
                false => import_text(&db, dir.path(), text.as_bytes()),
                true => import_stdin_may_stop_early(&db, text.as_bytes()),
            };
            assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
            let err = stderr(&o);
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            assert!(err.starts_with("error: ") && err.contains(says), "{err}");
            assert!(err.contains("one JSON object per line"), "{err}");
            assert!(stdout(&o).is_empty());
            assert!(!db.exists(), "a refused input created the database");
        }
    }
    // The CSV error shows the header it saw.
    let o = import_text(&db, dir.path(), csv.as_bytes());
    assert!(stderr(&o).contains("token,platform,person,seen_ms"));
    // NDJSON whose first line is bad is judged line by line, as before.
    let text = format!("not json, at all\n{}\n", events[0]);
    let o = import_text(&db, dir.path(), text.as_bytes());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(json_out_any(&o)["imported"], 1);
}

/// `import -` fed `text`; devreg may exit before it has read it all.
fn import_stdin_may_stop_early(db: &Path, text: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(db)
        .args(["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    match pipe.write_all(text) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// The JSON summary of an import that may have exited 2.
fn json_out_any(o: &Output) -> Value {
    json_from(&stdout(o))
}

#[test]
fn after_100_rejected_lines_the_rest_are_only_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut text = String::new();
    for i in 0..250 {
        text.push_str(&format!("{{\"op\":\"touch\",\"token\":\"t{i}\"}}\n"));
    }
    text.push_str(&register("ok", "ios", None, 1_700_000_000_000));
    let o = import_text(&db, dir.path(), text.as_bytes());
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    let reported: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("line ") && l.contains("bad event"))
        .collect();
    assert_eq!(reported.len(), 100, "{err}");
    assert!(reported[99].starts_with("line 100: "), "{}", reported[99]);
    assert!(
        err.contains("line 101: rejected too; more than 100 lines"),
        "{err}"
    );
    assert!(!err.contains("line 102"), "{err}");
    assert!(err.contains("imported 1, skipped 0, rejected 250"), "{err}");
    assert!(err.lines().count() <= 103, "{err}");
    assert_eq!(
        json_out_any(&o),
        json!({"imported": 1, "skipped": 0, "rejected": 250})
    );
}

#[test]
fn a_seen_ms_that_looks_like_seconds_gets_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let lines = [
        register("a1", "ios", Some("ann"), 1_764_000_000_000), // milliseconds
        register("a2", "ios", Some("ann"), 1_764_000_000),     // line 2: seconds
        r#"{"op":"touch","token":"a1","seen_ms":1764000100}"#.to_string(), // seconds again
        register("a3", "ios", None, 5),                        // tiny, not seconds-like
    ];
    let o = import_text(&db, dir.path(), lines.join("\n").as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].starts_with("warning: line 2: seen_ms 1764000000 ")
            && warnings[0].contains("looks like seconds"),
        "{}",
        warnings[0]
    );
    // Imported as given: a warning, not a rejection.
    assert_eq!(dump(&db).len(), 3);
    assert!(err.contains("imported 4, skipped 0, rejected 0"), "{err}");
}

#[test]
fn import_help_shows_the_event_schema() {
    let o = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .args(["import", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let help = stdout(&o);
    for op in [
        "register",
        "touch",
        "rotate",
        "logout",
        "merge",
        "remove",
        "invalidate",
        "prune",
    ] {
        assert!(help.contains(&format!(r#"{{"op":"{op}""#)), "{op}: {help}");
    }
    for field in [
        "seen_ms",
        "last_seen_ms",
        "provider_ms",
        "before_ms",
        "policy",
        "attributes",
    ] {
        assert!(help.contains(field), "{field}: {help}");
    }
    assert!(help.contains("Unix milliseconds"), "{help}");
}

/// `owner-at` of a backfilled import: every line of the import is one
/// commit, so by commit time nobody owned the token before it; `--by event`
/// answers from each line's `seen_ms` (a logout, which has no time, counts
/// just before the token's next change).
#[test]
fn owner_at_by_event_answers_for_backfilled_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let lines = [
        register("a1b2c3", "ios", Some("ann"), 1_700_000_000_000),
        register("a1b2c3", "ios", Some("bob"), 1_700_000_100_000),
        json!({"op": "logout", "token": "a1b2c3", "policy": "keep"}).to_string(),
        register("a1b2c3", "ios", Some("cy"), 1_700_000_200_000),
    ];
    let o = import_text(&db, dir.path(), lines.join("\n").as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let history = json_out(&devreg(&db, &["history", "a1b2c3"]));
    let commits: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["commit_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(commits.len(), 4, "{history}");
    assert!(commits.iter().all(|&c| c == commits[0]), "{history}");
    let commit = commits[0];
    let owner_at = |at: u64, by: Option<&str>| {
        let at = at.to_string();
        let mut args = vec!["owner-at", "a1b2c3", "--at-ms", &at];
        args.extend(by.iter().flat_map(|b| ["--by", *b]));
        let v = json_out(&devreg(&db, &args));
        assert_eq!(v["at_ms"].as_u64(), at.parse().ok());
        assert_eq!(v["by"], by.unwrap_or("commit"));
        v["owner"].as_str().map(str::to_owned)
    };
    let cases = [
        (1_699_999_999_999, None),
        (1_700_000_050_000, Some("ann")),
        (1_700_000_150_000, Some("bob")),
        (1_700_000_199_999, Some("bob")),
        (1_700_000_250_000, Some("cy")),
    ];
    for (at, want) in cases {
        assert_eq!(owner_at(at, Some("event")).as_deref(), want, "at {at}");
        // By commit time (the default) the import came later.
        assert_eq!(owner_at(at, Some("commit")), None, "at {at}");
        assert_eq!(owner_at(at, None), None, "at {at}");
    }
    for by in [None, Some("commit"), Some("event")] {
        assert_eq!(owner_at(commit, by).as_deref(), Some("cy"), "{by:?}");
    }
    let o = devreg(&db, &["owner-at", "a1b2c3", "--at-ms", "1", "--by", "seen"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let help = stdout(&devreg(&db, &["owner-at", "--help"]));
    assert!(help.contains("--by"), "{help}");
}

/// `sinks add NAME --format F [--identifier I]` creates a sink with a
/// snapshot; `sinks` and `sinks list` print the same array (a track-v2 by
/// id sink keeps the old shape); bad names of a format or kind exit 2
/// naming the field; a pipelines sink's export prints the same
/// `{"batch_id","body":{"batch":[...]}}` line, its calls in it; ack,
/// dead-letters and requeue work on it.
#[test]
fn sinks_add_creates_a_sink_of_a_format_and_identifier_kind() {
    let dir = tempfile::tempdir().unwrap();
    let db = fixture(dir.path());
    let o = devreg(&db, &["sinks", "add", "cdp", "--format", "pipelines"]);
    let added = json_out(&o);
    assert_eq!(added["added"], true);
    assert_eq!(added["format"], "pipelines");
    assert_eq!(added["identifier"], "id");
    assert!(added["pending"].as_u64().unwrap() > 0);
    let o = devreg(&db, &["sinks", "add", "cdp", "--format", "pipelines"]);
    assert_eq!(json_out(&o)["added"], false);
    let o = devreg(&db, &["sinks", "add", "cdp", "--format", "track-v2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("never change"), "{}", stderr(&o));
    let o = devreg(&db, &["sinks", "add", "x", "--format", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(r#"invalid sink.format: "nope" is not one of track-v2, pipelines"#),
        "{}",
        stderr(&o)
    );
    let o = devreg(
        &db,
        &[
            "sinks",
            "add",
            "x",
            "--format",
            "track-v2",
            "--identifier",
            "phone",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(r#"invalid sink.identifier: "phone" is not one of id, email, cio_id"#),
        "{}",
        stderr(&o)
    );
    let o = devreg(
        &db,
        &[
            "sinks",
            "add",
            "mail",
            "--format",
            "track-v2",
            "--identifier",
            "email",
        ],
    );
    assert_eq!(json_out(&o)["identifier"], "email");
    let o = devreg(
        &db,
        &[
            "sinks",
            "add",
            "diag",
            "--format",
            "pipelines",
            "--diagnostics",
        ],
    );
    assert_eq!(json_out(&o)["diagnostics"], true);
    let list = sinks(&db);
    let diag = list.iter().find(|s| s["name"] == "diag").unwrap();
    assert_eq!(diag["diagnostics"], true);
    assert!(list
        .iter()
        .filter(|s| s["name"] != "diag")
        .all(|s| s.get("diagnostics").is_none()));
    assert_eq!(
        json_out(&devreg(&db, &["sinks", "list"])),
        Value::Array(list.clone())
    );
    let cdp = list.iter().find(|s| s["name"] == "cdp").unwrap();
    assert_eq!(
        (&cdp["format"], &cdp["identifier"]),
        (&json!("pipelines"), &json!("id"))
    );
    // The default sink, born at its first export, keeps the old shape.
    let _ = json_out(&devreg(&db, &["export"]));
    let list = sinks(&db);
    let default = list.iter().find(|s| s["name"] == "customerio").unwrap();
    assert!(default.get("format").is_none(), "{default}");
    // Export, ack, dead letters for the pipelines sink.
    let line = json_out(&devreg(&db, &["export", "--sink", "cdp"]));
    let id = line["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(id, "cdp-000000000001");
    let call = &line["body"]["batch"][0];
    assert_eq!(call["type"], "track");
    assert_eq!(call["event"], "Device Created or Updated");
    assert!(call["context"]["device"]["token"].is_string());
    let a = json_out(&ack(&db, "cdp", &id));
    assert_eq!(a["already_acked"], false);
    let d = json_out(&devreg(&db, &["dead-letters", "--sink", "cdp"]));
    assert_eq!(d, json!([]));
    let r = json_out(&devreg(&db, &["requeue", "--sink", "cdp"]));
    assert_eq!(r["requeued"], 0);
    // The email sink dead-letters persons that are not email addresses.
    for _ in 0..10 {
        let o = devreg(&db, &["export", "--sink", "mail"]);
        assert!(o.status.success(), "{}", stderr(&o));
        if stdout(&o).trim().is_empty() {
            break;
        }
        let id = json_from(&stdout(&o))["batch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let _ = json_out(&ack(&db, "mail", &id));
    }
    let d = json_out(&devreg(&db, &["dead-letters", "--sink", "mail"]));
    let reasons: Vec<&str> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(!reasons.is_empty());
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("is not an email address")),
        "{reasons:?}"
    );
}

/// Delivery feedback through the CLI (issue 15): imported like any event
/// (an unknown token is skipped and counted), `person` adds `deliverable`
/// and `deliverability` to each device (the device's fields unchanged),
/// `most-recent --deliverable` skips a suppressed device, and `stats
/// --daily` counts the feedback.
#[test]
fn feedback_imports_and_most_recent_deliverable_skips_a_failed_device() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let fb = |token: &str, outcome: &str, at: u64| {
        json!({"op":"feedback","token":token,"outcome":outcome,"at_ms":at,"reason":"r"}).to_string()
    };
    let lines = [
        register("aa01", "ios", Some("ann"), 10),
        register("aa02", "ios", Some("ann"), 20),
        fb("aa02", "hard_failure", 30),
        fb("aa01", "delivered", 40),
        fb("ffff", "delivered", 40),
    ];
    let o = import_text(&db, dir.path(), (lines.join("\n") + "\n").as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_out(&o), json!({"imported":4,"rejected":0,"skipped":1}));
    let person = json_out(&devreg(&db, &["person", "ann"]));
    assert_eq!(
        person[0],
        json!({"token":"aa02","platform":"ios","person":"ann","last_seen_ms":20,"attributes":{},
               "deliverable":false,"deliverability":{"last_delivered_ms":null,"soft_failures":0,
               "last_soft_failure_ms":null,"last_hard_failure_ms":30}})
    );
    assert_eq!(person[1]["deliverable"], true);
    assert_eq!(person[1]["deliverability"]["last_delivered_ms"], 40);
    assert_eq!(
        json_out(&devreg(&db, &["most-recent", "ann"]))["token"],
        "aa02"
    );
    let o = devreg(&db, &["most-recent", "ann", "--deliverable"]);
    assert_eq!(json_out(&o)["token"], "aa01");
    let o = devreg(
        &db,
        &[
            "most-recent",
            "ann",
            "--deliverable",
            "--platform",
            "android",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("that is deliverable"), "{}", stderr(&o));
    let daily = json_out(&devreg(&db, &["stats", "--daily"]));
    let ios = daily
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["platform"] == "ios")
        .unwrap();
    assert_eq!(
        (ios["deliveries"].clone(), ios["hard_failures"].clone()),
        (json!(1), json!(1))
    );
    let check = json_out(&devreg(&db, &["check"]));
    assert_eq!(check["problems"], json!([]));
}

//! The `devreg` command, run as a user would: exit codes, stdout JSON,
//! stderr messages.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

fn devreg(db: &Path, args: &[&str]) -> Output {
    devreg_with_stdin(db, args, None)
}

fn devreg_with_stdin(db: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn devreg");
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
            json!({"token":"a1","platform":"ios","person":null,"last_seen_ms":250,"attributes":{}}),
            json!({"token":"a3","platform":"ios","person":"ann","last_seen_ms":260,"attributes":{}}),
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
                      "android": 2, "persons": 1, "max_devices_per_person": 20});
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
    assert!(stderr(&o).starts_with("not found: "), "{}", stderr(&o));

    let o = devreg(&db, &["most-recent", "ann", "--platform", "android"]);
    assert!(o.status.success());
    let o = devreg(&db, &["most-recent", "zed"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not found: "));

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

    // Above the default of 20: a plain read must not lower the cap and evict.
    let db = import_with_cap(dir.path(), 30, "50");
    let stats = json_out(&devreg(&db, &["stats"]));
    assert_eq!(
        (
            stats["max_devices_per_person"].as_u64(),
            stats["devices"].as_u64()
        ),
        (Some(50), Some(30))
    );
}

#[test]
fn import_reads_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let text = [
        register("s1", "ios", None, 1),
        register("s2", "android", None, 2),
    ]
    .join("\n");
    let o = devreg_with_stdin(
        &db,
        &["--durability", "eventual", "import", "-"],
        Some(text.as_bytes()),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        json_from(&stdout(&o)),
        json!({"imported": 2, "skipped": 0, "rejected": 0})
    );
    assert_eq!(dump(&db).len(), 2);
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
    assert!(String::from_utf8_lossy(&o.stdout).contains("check: clean"));
}

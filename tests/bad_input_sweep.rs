//! Bad input sweep: one table of every kind of bad input the CLI's import
//! and the library accept, each with the typed error (library) or the
//! message fragment (CLI, `line N: <reason>` on stderr) it must produce.
//! Nothing here may panic, and valid lines between bad ones are imported.
//! tests/bad_input.rs goes deeper on single limits and damaged storage.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

#[path = "support/raw_store.rs"]
mod raw_store;

use devreg::limits::*;
use devreg::*;

const T: u64 = 1_700_000_000_000;

fn devreg_import(db: &Path, input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(db)
        .args(["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running devreg");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn reg_line(token: &str, extra: &str) -> String {
    format!(r#"{{"op":"register","token":"{token}","platform":"ios","seen_ms":{T}{extra}}}"#)
}

fn attrs_json(pairs: impl Iterator<Item = (String, String)>) -> String {
    let m: std::collections::BTreeMap<String, String> = pairs.collect();
    serde_json::to_string(&m).unwrap()
}

/// (what, the line's bytes, a fragment its rejection must contain)
fn cli_cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let long_token = "a".repeat(MAX_TOKEN_BYTES + 1);
    let long_person = "p".repeat(MAX_PERSON_BYTES + 1);
    let many = attrs_json((0..=MAX_ATTRIBUTES).map(|i| (format!("k{i}"), String::new())));
    let long_name = attrs_json(std::iter::once((
        "n".repeat(MAX_ATTRIBUTE_NAME_BYTES + 1),
        "v".into(),
    )));
    let long_value = attrs_json(std::iter::once((
        "v".into(),
        "x".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1),
    )));
    let big_json = attrs_json((0..30).map(|i| (format!("k{i:02}"), "v".repeat(900))));
    let s = |x: &str| x.as_bytes().to_vec();
    vec![
        // Encoding and syntax.
        (
            "invalid UTF-8",
            b"{\"op\":\"remove\",\"token\":\"a\xff\"}".to_vec(),
            "not valid UTF-8 (at byte 25)",
        ),
        (
            "truncated JSON",
            s(r#"{"op":"remove","token":"#),
            "bad JSON",
        ),
        ("not an object", s("42"), "bad event"),
        ("JSON null", s("null"), "bad event"),
        (
            "trailing garbage",
            s(r#"{"op":"remove","token":"a"} x"#),
            "bad JSON",
        ),
        (
            "two events on a line",
            s(r#"{"op":"remove","token":"a"}{"op":"remove","token":"b"}"#),
            "bad JSON",
        ),
        // Shape.
        (
            "unknown op",
            s(r#"{"op":"upsert","token":"a"}"#),
            "unknown variant `upsert`",
        ),
        ("op missing", s(r#"{"token":"a"}"#), "missing field `op`"),
        (
            "op of the wrong case",
            s(r#"{"op":"Register","token":"a"}"#),
            "unknown variant `Register`",
        ),
        (
            "missing field",
            s(r#"{"op":"touch","token":"a"}"#),
            "missing field `seen_ms`",
        ),
        (
            "unknown field",
            s(r#"{"op":"remove","token":"a","force":true}"#),
            "unknown field `force`",
        ),
        // Repeated keys: JSON parsers keep the last one silently; import refuses.
        (
            "repeated field",
            s(r#"{"op":"remove","token":"a","token":"b"}"#),
            r#"duplicate key "token""#,
        ),
        (
            "repeated field, spelled with an escape",
            s(r#"{"op":"remove","token":"a","tok\u0065n":"b"}"#),
            r#"duplicate key "token""#,
        ),
        (
            "repeated op",
            s(r#"{"op":"touch","token":"a","seen_ms":5,"op":"remove"}"#),
            r#"duplicate key "op""#,
        ),
        (
            "repeated person",
            reg_line("a", r#","person":"ann","person":"bob""#).into_bytes(),
            r#"duplicate key "person""#,
        ),
        (
            "repeated attribute",
            reg_line("a", r#","attributes":{"os":"17","app":"2","os":"18"}"#).into_bytes(),
            r#"duplicate key "os" in attributes"#,
        ),
        (
            "repeated attribute, spelled with an escape",
            reg_line("a", r#","attributes":{"os":"17","\u006fs":"18"}"#).into_bytes(),
            r#"duplicate key "os" in attributes"#,
        ),
        // Types.
        (
            "token a number",
            s(r#"{"op":"remove","token":7}"#),
            "invalid type",
        ),
        (
            "seen_ms a string",
            s(r#"{"op":"touch","token":"a","seen_ms":"5"}"#),
            "invalid type",
        ),
        (
            "seen_ms negative",
            s(r#"{"op":"touch","token":"a","seen_ms":-1}"#),
            "invalid value",
        ),
        (
            "seen_ms a float",
            s(r#"{"op":"touch","token":"a","seen_ms":1.5}"#),
            "invalid type",
        ),
        (
            "seen_ms over u64",
            s(r#"{"op":"touch","token":"a","seen_ms":18446744073709551616}"#),
            "bad event",
        ),
        (
            "person a number",
            reg_line("a", r#","person":5"#).into_bytes(),
            "invalid type",
        ),
        (
            "attributes an array",
            reg_line("a", r#","attributes":["x"]"#).into_bytes(),
            "invalid type",
        ),
        (
            "attribute value a number",
            reg_line("a", r#","attributes":{"v":1}"#).into_bytes(),
            "invalid attributes.v: must be a JSON string, got a number",
        ),
        (
            "attribute value null",
            reg_line("a", r#","attributes":{"v":null}"#).into_bytes(),
            "got null",
        ),
        (
            "attribute value an object",
            reg_line("a", r#","attributes":{"v":{}}"#).into_bytes(),
            "got an object",
        ),
        // Values and limits.
        (
            "unknown platform",
            s(&format!(
                r#"{{"op":"register","token":"a","platform":"windows","seen_ms":{T}}}"#
            )),
            "invalid platform",
        ),
        (
            "unknown logout policy",
            s(r#"{"op":"logout","token":"a","policy":"wipe"}"#),
            "invalid policy",
        ),
        (
            "empty token",
            reg_line("", "").into_bytes(),
            "invalid token: is empty",
        ),
        (
            "token over the limit",
            reg_line(&long_token, "").into_bytes(),
            "invalid token: is 4097 bytes, the limit is 4096",
        ),
        (
            "token with a space",
            reg_line("a b", "").into_bytes(),
            "invalid token: byte 1 is not visible ASCII",
        ),
        (
            "token with a control char",
            reg_line("a\\u0001", "").into_bytes(),
            "invalid token: byte 1 is not visible ASCII",
        ),
        (
            "token not ASCII",
            reg_line("caf\u{e9}", "").into_bytes(),
            "invalid token: byte 3 is not visible ASCII",
        ),
        (
            "empty person",
            reg_line("a", r#","person":"""#).into_bytes(),
            "invalid person: is empty",
        ),
        (
            "person over the limit",
            reg_line("a", &format!(r#","person":"{long_person}""#)).into_bytes(),
            "invalid person: is 151 bytes",
        ),
        (
            "person with a newline",
            reg_line("a", r#","person":"a\nb""#).into_bytes(),
            "invalid person: contains a control character",
        ),
        (
            "seen_ms after the year 3000",
            s(&format!(
                r#"{{"op":"touch","token":"a","seen_ms":{}}}"#,
                MAX_TIMESTAMP_MS + 1
            )),
            "invalid seen_ms",
        ),
        (
            "provider_ms after the year 3000",
            s(&format!(
                r#"{{"op":"invalidate","token":"a","provider_ms":{}}}"#,
                u64::MAX
            )),
            "invalid provider_ms",
        ),
        (
            "before_ms after the year 3000",
            s(&format!(
                r#"{{"op":"prune","before_ms":{}}}"#,
                MAX_TIMESTAMP_MS + 1
            )),
            "invalid before_ms",
        ),
        (
            "too many attributes",
            reg_line("a", &format!(r#","attributes":{many}"#)).into_bytes(),
            "invalid attributes: has 101 entries, the limit is 100",
        ),
        (
            "attribute name too long",
            reg_line("a", &format!(r#","attributes":{long_name}"#)).into_bytes(),
            "is 151 bytes, the limit is 150",
        ),
        (
            "attribute value too long",
            reg_line("a", &format!(r#","attributes":{long_value}"#)).into_bytes(),
            "invalid attributes.v: value is 1001 bytes",
        ),
        (
            "reserved attribute name",
            reg_line("a", r#","attributes":{"_last":"x"}"#).into_bytes(),
            "invalid attributes._last: names starting with '_' are reserved",
        ),
        (
            "empty attribute name",
            reg_line("a", r#","attributes":{"":"x"}"#).into_bytes(),
            "an attribute name is empty",
        ),
        (
            "attributes JSON too big",
            reg_line("a", &format!(r#","attributes":{big_json}"#)).into_bytes(),
            "the limit is 23000",
        ),
        (
            "rotate to the same token",
            s(&format!(
                r#"{{"op":"rotate","old_token":"a","new_token":"a","seen_ms":{T}}}"#
            )),
            "invalid new_token: equals old_token",
        ),
        (
            "merge a person into itself",
            s(r#"{"op":"merge","primary":"ann","secondary":"ann"}"#),
            "invalid secondary: equals primary",
        ),
        (
            "merge with an empty primary",
            s(r#"{"op":"merge","primary":"","secondary":"ann"}"#),
            "invalid primary: is empty",
        ),
        (
            "huge line",
            {
                let mut l = reg_line("a", r#","person":""#).into_bytes();
                l.extend(std::iter::repeat_n(b'p', MAX_IMPORT_LINE_BYTES));
                l.extend_from_slice(b"\"}");
                l
            },
            "bytes, the limit is 1048576",
        ),
    ]
}

#[test]
fn cli_import_rejects_every_bad_line_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let cases = cli_cases();
    // Each bad line follows a good one, so the line numbers are 2, 4, 6...
    let mut input = Vec::new();
    for (i, (_, line, _)) in cases.iter().enumerate() {
        input.extend_from_slice(reg_line(&format!("good-{i}"), "").as_bytes());
        input.push(b'\n');
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let out = devreg_import(&db, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit 2 when lines are rejected:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let rejections: std::collections::BTreeMap<usize, &str> = stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("line ")?;
            let (n, reason) = rest.split_once(": ")?;
            Some((n.parse().ok()?, reason))
        })
        .collect();
    let mut wrong = Vec::new();
    for (i, (what, _, want)) in cases.iter().enumerate() {
        let line = 2 * i + 2;
        match rejections.get(&line) {
            Some(reason) if reason.contains(want) => {}
            Some(reason) => wrong.push(format!("{what} (line {line}): {reason:?} lacks {want:?}")),
            None => wrong.push(format!("{what} (line {line}): not rejected")),
        }
    }
    assert_eq!(
        rejections.len(),
        cases.len(),
        "only the bad lines are rejected:\n{stderr}"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["imported"], cases.len());
    assert_eq!(summary["rejected"], cases.len());
    println!("bad input sweep: {} kinds of bad import line", cases.len());
}

#[test]
fn cli_import_of_empty_and_blank_input() {
    let dir = tempfile::tempdir().unwrap();
    for (what, input) in [
        ("empty input", &b""[..]),
        ("blank lines", b"\n\n   \n\t\n"),
        ("CRLF blank line", b"\r\n"),
    ] {
        let db = dir.path().join(what.replace(' ', "-"));
        let out = devreg_import(&db, input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["imported"], 0, "{what}");
        assert_eq!(summary["rejected"], 0, "{what}");
    }
    // A missing input file: an error, and no database is created.
    let db = dir.path().join("never");
    let out = Command::new(env!("CARGO_BIN_EXE_devreg"))
        .arg("--db")
        .arg(&db)
        .args(["import", "/nonexistent/events.ndjson"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open"));
    assert!(!db.exists());
}

/// What a library case must return.
enum Want {
    Invalid(&'static str),
    Unsupported,
}

#[track_caller]
fn expect<T: std::fmt::Debug>(what: &str, r: Result<T>, want: &Want) -> Option<String> {
    match (r, want) {
        (Err(Error::Invalid { field, .. }), Want::Invalid(f)) if field == *f => None,
        (Err(Error::UnsupportedFormat { .. }), Want::Unsupported) => None,
        (other, _) => Some(format!("{what}: got {other:?}")),
    }
}

fn register(token: &str, person: Option<&str>, seen_ms: u64, attributes: Option<Attributes>) -> Op {
    Op::Register(Register {
        token: token.into(),
        platform: Platform::Android,
        person: person.map(Into::into),
        seen_ms,
        attributes,
    })
}

#[test]
fn library_rejects_every_bad_input_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let reg = Registry::open(&db).unwrap();
    let _ = reg.apply(register("good", Some("ann"), T, None)).unwrap();
    let before = reg.dump();
    let attrs = |n: usize, name: &str, value: usize| -> Option<Attributes> {
        Some(
            (0..n)
                .map(|i| (format!("{name}{i}"), "v".repeat(value)))
                .collect(),
        )
    };
    let ops: Vec<(&str, Op, Want)> = vec![
        (
            "empty token",
            register("", None, T, None),
            Want::Invalid("token"),
        ),
        (
            "token over the limit",
            register(&"a".repeat(MAX_TOKEN_BYTES + 1), None, T, None),
            Want::Invalid("token"),
        ),
        (
            "token with a NUL",
            register("a\0", None, T, None),
            Want::Invalid("token"),
        ),
        (
            "person over the limit",
            register("a", Some(&"p".repeat(MAX_PERSON_BYTES + 1)), T, None),
            Want::Invalid("person"),
        ),
        (
            "person with a control char",
            register("a", Some("a\u{85}"), T, None),
            Want::Invalid("person"),
        ),
        (
            "seen_ms after 3000",
            register("a", None, MAX_TIMESTAMP_MS + 1, None),
            Want::Invalid("seen_ms"),
        ),
        (
            "101 attributes",
            register("a", None, T, attrs(MAX_ATTRIBUTES + 1, "k", 0)),
            Want::Invalid("attributes"),
        ),
        (
            "attributes JSON over 23000 bytes",
            register("a", None, T, attrs(30, "k", 900)),
            Want::Invalid("attributes"),
        ),
        (
            "attribute value over 1000 bytes",
            register("a", None, T, attrs(1, "k", 1001)),
            Want::Invalid("attributes.k0"),
        ),
        (
            "reserved attribute name",
            register("a", None, T, attrs(1, "_k", 1)),
            Want::Invalid("attributes._k0"),
        ),
        (
            "touch, empty token",
            Op::Touch {
                token: String::new(),
                seen_ms: T,
            },
            Want::Invalid("token"),
        ),
        (
            "rotate, same token",
            Op::Rotate {
                old_token: "a".into(),
                new_token: "a".into(),
                seen_ms: T,
            },
            Want::Invalid("new_token"),
        ),
        (
            "rotate, bad old token",
            Op::Rotate {
                old_token: " ".into(),
                new_token: "a".into(),
                seen_ms: T,
            },
            Want::Invalid("old_token"),
        ),
        (
            "merge into itself",
            Op::Merge {
                primary: "ann".into(),
                secondary: "ann".into(),
            },
            Want::Invalid("secondary"),
        ),
        (
            "merge, empty primary",
            Op::Merge {
                primary: String::new(),
                secondary: "ann".into(),
            },
            Want::Invalid("primary"),
        ),
        (
            "invalidate after 3000",
            Op::Invalidate {
                token: "a".into(),
                provider_ms: u64::MAX,
            },
            Want::Invalid("provider_ms"),
        ),
        (
            "prune after 3000",
            Op::Prune {
                before_ms: MAX_TIMESTAMP_MS + 1,
            },
            Want::Invalid("before_ms"),
        ),
        (
            "logout, empty token",
            Op::Logout {
                token: String::new(),
                policy: LogoutPolicy::Keep,
            },
            Want::Invalid("token"),
        ),
        (
            "remove, token over the limit",
            Op::Remove {
                token: "r".repeat(MAX_TOKEN_BYTES + 1),
            },
            Want::Invalid("token"),
        ),
    ];
    let mut wrong = Vec::new();
    let n_ops = ops.len();
    for (what, op, want) in ops {
        wrong.extend(expect(what, reg.apply(op.clone()), &want));
        // The same operation inside a batch names its index.
        let batch = reg.apply_batch(vec![register("fine", None, T, None), op]);
        match (&batch, &want) {
            (Err(Error::Invalid { field, .. }), Want::Invalid(f))
                if *field == format!("batch[1].{f}") => {}
            _ => wrong.push(format!("{what} in a batch: got {batch:?}")),
        }
    }
    // Batches, sinks, the feed.
    let too_many: Vec<Op> = (0..=MAX_OPS_PER_BATCH)
        .map(|_| Op::Prune { before_ms: 0 })
        .collect();
    let others: Vec<(&str, Result<()>, Want)> = vec![
        (
            "batch over the op limit",
            reg.apply_batch(too_many).map(|_| ()),
            Want::Invalid("batch"),
        ),
        (
            "sink name with a space",
            reg.add_sink("bad sink").map(|_| ()),
            Want::Invalid("sink"),
        ),
        (
            "empty sink name",
            reg.add_sink("").map(|_| ()),
            Want::Invalid("sink"),
        ),
        (
            "sink name too long",
            reg.add_sink(&"s".repeat(65)).map(|_| ()),
            Want::Invalid("sink"),
        ),
        (
            "export from an unknown sink",
            reg.export("nosuch", 10, 499_999).map(|_| ()),
            Want::Invalid("sink"),
        ),
        (
            "export of 0 operations",
            reg.export(DEFAULT_SINK, 0, 499_999).map(|_| ()),
            Want::Invalid("max_ops"),
        ),
        (
            "export over the op limit",
            reg.export(DEFAULT_SINK, MAX_OPS_LIMIT + 1, 499_999)
                .map(|_| ()),
            Want::Invalid("max_ops"),
        ),
        (
            "export body limit too small",
            reg.export(DEFAULT_SINK, 10, 100).map(|_| ()),
            Want::Invalid("max_bytes"),
        ),
        (
            "export body limit over Customer.io's",
            reg.export(DEFAULT_SINK, 10, 500_000).map(|_| ()),
            Want::Invalid("max_bytes"),
        ),
        (
            "ack of a batch never exported",
            reg.ack(DEFAULT_SINK, "customerio-000000009999"),
            Want::Invalid("batch_id"),
        ),
        (
            "ack with an id over 128 bytes",
            reg.ack(DEFAULT_SINK, &"x".repeat(129)),
            Want::Invalid("batch_id"),
        ),
        (
            "requeue of an unknown sink",
            reg.requeue("nosuch").map(|_| ()),
            Want::Invalid("sink"),
        ),
    ];
    let n_others = others.len();
    for (what, r, want) in others {
        wrong.extend(expect(what, r, &want));
    }
    assert_eq!(reg.dump(), before, "nothing stored by a rejected input");
    assert!(reg.check().unwrap().is_clean());
    drop(reg);

    // Configurations.
    let cfg = |c: Config| Registry::open_with(c).map(|_| ());
    let configs: Vec<(&str, Result<()>, Want)> = vec![
        (
            "cap 0",
            cfg(Config::new(&db).max_devices_per_person(0)),
            Want::Invalid("max_devices_per_person"),
        ),
        (
            "cap over the limit",
            cfg(Config::new(&db).max_devices_per_person(MAX_DEVICES_PER_PERSON_LIMIT + 1)),
            Want::Invalid("max_devices_per_person"),
        ),
        (
            "log segment under 64 KiB",
            cfg(Config::new(&db).log_segment_bytes(1024)),
            Want::Invalid("log_segment_bytes"),
        ),
        (
            "log segment over 1 GiB",
            cfg(Config::new(&db).log_segment_bytes((1 << 30) + 1)),
            Want::Invalid("log_segment_bytes"),
        ),
        (
            "one log segment",
            cfg(Config::new(&db).max_log_segments(1)),
            Want::Invalid("max_log_segments"),
        ),
    ];
    let n_configs = configs.len();
    for (what, r, want) in configs {
        wrong.extend(expect(what, r, &want));
    }

    // A database of a future format version.
    {
        let store = raw_store::open_raw_store(&db);
        store.insert(b"Mformat", &8u32.to_be_bytes()).unwrap();
        store.flush().unwrap();
    }
    wrong.extend(expect(
        "database of format version 8",
        Registry::open(&db).map(|_| ()),
        &Want::Unsupported,
    ));
    // A device record of a future version (the record's version byte).
    let rec = [9u8, 0, 5, 0, 0];
    wrong.extend(expect(
        "device record of version 9",
        devreg::internals::decode_record("k", &rec).map(|_| ()),
        &Want::Unsupported,
    ));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    println!(
        "bad input sweep: {} operations (alone and in a batch), {} batch/sink/feed calls, \
         {} configurations, 2 future formats",
        n_ops, n_others, n_configs
    );
}

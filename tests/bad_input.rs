//! Bad input: every limit of issue 3 through the library (a typed
//! `Error::Invalid` naming the field, nothing stored), damaged device records
//! and metadata in the sled store (`Error::Corrupt` naming the key,
//! `Error::UnsupportedFormat`), never a panic, and nothing already stored lost.

use std::path::Path;

use devreg::internals::pack_token;
use devreg::limits::*;
use devreg::*;

fn register(token: &str, person: Option<&str>, seen_ms: u64, attrs: Option<Attributes>) -> Op {
    Op::Register(Register {
        token: token.into(),
        platform: Platform::Ios,
        person: person.map(Into::into),
        seen_ms,
        attributes: attrs,
    })
}

fn attrs(pairs: &[(String, String)]) -> Attributes {
    pairs.iter().cloned().collect()
}

/// Attributes, each within the per-entry limits, whose JSON encoding is
/// exactly `bytes` long.
fn attrs_with_json_bytes(bytes: usize) -> Attributes {
    let mut a: Attributes = (0..33)
        .map(|i| (format!("k{i:02}"), "v".repeat(680)))
        .collect();
    let len = serde_json::to_string(&a).unwrap().len();
    assert!(len <= bytes);
    let last = a.get_mut("k32").unwrap();
    last.push_str(&"v".repeat(bytes - len));
    assert!(last.len() <= MAX_ATTRIBUTE_VALUE_BYTES);
    assert_eq!(serde_json::to_string(&a).unwrap().len(), bytes);
    a
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(r: Result<T>, want_field: &str) {
    match r {
        Err(Error::Invalid { field, reason }) => {
            assert_eq!(field, want_field, "reason: {reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected Invalid {{ field: {want_field:?} }}, got {other:?}"),
    }
}

const T: u64 = 1_700_000_000_000;

#[test]
fn every_limit_is_a_typed_error_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("db")).unwrap();
    let _ = reg.apply(register("good", Some("ann"), T, None)).unwrap();
    let before = reg.dump();

    // (operation, the field its error must name)
    let long_name = "n".repeat(MAX_ATTRIBUTE_NAME_BYTES + 1);
    let cases: Vec<(Op, &str)> = vec![
        (register("", None, T, None), "token"),
        (
            register(&"a".repeat(MAX_TOKEN_BYTES + 1), None, T, None),
            "token",
        ),
        (register("ab cd", None, T, None), "token"),
        (register("tab\there", None, T, None), "token"),
        (register("del\u{7f}", None, T, None), "token"),
        (register("caf\u{e9}", None, T, None), "token"),
        (register("nul\0", None, T, None), "token"),
        (register("new", Some(""), T, None), "person"),
        (
            register("new", Some(&"p".repeat(MAX_PERSON_BYTES + 1)), T, None),
            "person",
        ),
        // 151 bytes of multi-byte characters.
        (
            register("new", Some(&format!("{}x", "\u{e9}".repeat(75))), T, None),
            "person",
        ),
        (register("new", Some("a\nb"), T, None), "person"),
        (register("new", Some("a\u{0}b"), T, None), "person"),
        (register("new", Some("a\u{85}b"), T, None), "person"),
        (register("new", None, MAX_TIMESTAMP_MS + 1, None), "seen_ms"),
        (register("new", None, u64::MAX, None), "seen_ms"),
        (
            register(
                "new",
                None,
                T,
                Some(
                    (0..=MAX_ATTRIBUTES)
                        .map(|i| (format!("k{i}"), String::new()))
                        .collect(),
                ),
            ),
            "attributes",
        ),
        (
            register(
                "new",
                None,
                T,
                Some(attrs(&[(long_name.clone(), "v".into())])),
            ),
            "attributes",
        ),
        (
            register("new", None, T, Some(attrs(&[(String::new(), "v".into())]))),
            "attributes",
        ),
        (
            register(
                "new",
                None,
                T,
                Some(attrs(&[("_status".into(), "v".into())])),
            ),
            "attributes._status",
        ),
        (
            register(
                "new",
                None,
                T,
                Some(attrs(&[(
                    "model".into(),
                    "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1),
                )])),
            ),
            "attributes.model",
        ),
        (
            register(
                "new",
                None,
                T,
                Some(attrs_with_json_bytes(MAX_ATTRIBUTES_JSON_BYTES + 1)),
            ),
            "attributes",
        ),
        (
            Op::Touch {
                token: "".into(),
                seen_ms: T,
            },
            "token",
        ),
        (
            Op::Touch {
                token: "good".into(),
                seen_ms: MAX_TIMESTAMP_MS + 1,
            },
            "seen_ms",
        ),
        (
            Op::Rotate {
                old_token: "good".into(),
                new_token: "good".into(),
                seen_ms: T,
            },
            "new_token",
        ),
        (
            Op::Rotate {
                old_token: "bad token".into(),
                new_token: "x".into(),
                seen_ms: T,
            },
            "old_token",
        ),
        (
            Op::Rotate {
                old_token: "good".into(),
                new_token: "x".repeat(MAX_TOKEN_BYTES + 1),
                seen_ms: T,
            },
            "new_token",
        ),
        (
            Op::Rotate {
                old_token: "good".into(),
                new_token: "x".into(),
                seen_ms: MAX_TIMESTAMP_MS + 1,
            },
            "seen_ms",
        ),
        (
            Op::Logout {
                token: "".into(),
                policy: LogoutPolicy::Remove,
            },
            "token",
        ),
        (
            Op::Merge {
                primary: "ann".into(),
                secondary: "ann".into(),
            },
            "secondary",
        ),
        (
            Op::Merge {
                primary: "".into(),
                secondary: "ann".into(),
            },
            "primary",
        ),
        (
            Op::Merge {
                primary: "bob".into(),
                secondary: "p".repeat(MAX_PERSON_BYTES + 1),
            },
            "secondary",
        ),
        (
            Op::Remove {
                token: "\u{1}".into(),
            },
            "token",
        ),
        (
            Op::Invalidate {
                token: "good".into(),
                provider_ms: MAX_TIMESTAMP_MS + 1,
            },
            "provider_ms",
        ),
        (
            Op::Prune {
                before_ms: MAX_TIMESTAMP_MS + 1,
            },
            "before_ms",
        ),
    ];
    for (op, field) in &cases {
        assert_invalid(reg.apply(op.clone()), field);
        // The same through apply_batch, after a valid op: nothing applies.
        let batch = vec![register("batch-new", Some("cy"), T, None), op.clone()];
        assert_invalid(reg.apply_batch(batch), &format!("batch[1].{field}"));
        assert_eq!(reg.dump(), before, "after the rejected {op:?}");
    }
    // The typed helpers name the same fields.
    assert_invalid(reg.touch("", T), "token");
    assert_invalid(reg.rotate("good", "good", T), "new_token");
    assert_invalid(reg.merge("ann", "ann"), "secondary");
    assert_invalid(reg.invalidate("good", u64::MAX), "provider_ms");
    assert_invalid(reg.prune(u64::MAX), "before_ms");
    assert_invalid(reg.logout("a b", LogoutPolicy::Keep), "token");
    assert_invalid(reg.remove(""), "token");
    assert_invalid("windows".parse::<Platform>(), "platform");
    assert_invalid("drop".parse::<LogoutPolicy>(), "policy");
    assert_eq!(reg.dump(), before);
    assert_eq!(reg.stats().devices, 1);

    // Exactly at every limit is accepted.
    let at_limit = vec![
        register(&"a".repeat(MAX_TOKEN_BYTES), None, T, None),
        register("\u{21}~", Some(&"p".repeat(MAX_PERSON_BYTES)), T, None),
        register("z", Some(&"\u{e9}".repeat(75)), MAX_TIMESTAMP_MS, None),
        register(
            "y",
            None,
            0,
            Some(
                (0..MAX_ATTRIBUTES)
                    .map(|i| (format!("k{i}"), "v".into()))
                    .collect(),
            ),
        ),
        register(
            "x",
            None,
            T,
            Some(attrs(&[(
                "n".repeat(MAX_ATTRIBUTE_NAME_BYTES),
                "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES),
            )])),
        ),
        register(
            "w",
            None,
            T,
            Some(attrs_with_json_bytes(MAX_ATTRIBUTES_JSON_BYTES)),
        ),
    ];
    for op in at_limit {
        let _ = reg
            .apply(op.clone())
            .unwrap_or_else(|e| panic!("{e} for an op at the limit"));
    }
    assert_eq!(reg.stats().devices, 7);
    let report = reg.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let dump = reg.dump();
    drop(reg);
    let reg = Registry::open(dir.path().join("db")).unwrap();
    assert_eq!(reg.dump(), dump, "limit-sized values survive a reopen");
}

#[test]
fn bad_config_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let open = |c: Config| Registry::open_with(c).map(|_| ());
    assert_invalid(
        open(Config::new(&db).max_devices_per_person(0)),
        "max_devices_per_person",
    );
    assert_invalid(
        open(Config::new(&db).max_devices_per_person(MAX_DEVICES_PER_PERSON_LIMIT + 1)),
        "max_devices_per_person",
    );
    assert_invalid(
        open(Config::new(&db).log_segment_bytes(1000)),
        "log_segment_bytes",
    );
    assert_invalid(
        open(Config::new(&db).max_log_segments(1)),
        "max_log_segments",
    );
    assert_invalid(
        open(Config::new(&db).log_bytes_per_device(devreg::limits::MAX_LOG_BYTES_PER_DEVICE + 1)),
        "log_bytes_per_device",
    );
    assert_invalid(open(Config::new(&db).load_shed_bytes(0)), "load_shed_bytes");
}

#[test]
fn an_import_line_with_a_repeated_key_is_refused_naming_the_key() {
    use devreg::import::{parse_line, LineError};
    let refused = |line: &str| parse_line(line.as_bytes()).unwrap_err();
    let e = refused(r#"{"op":"remove","token":"a","token":"b"}"#);
    assert_eq!(e.to_string(), r#"duplicate key "token""#);
    assert_eq!(
        e,
        LineError::DuplicateKey {
            key: "token".into(),
            in_attributes: false
        }
    );
    let register = |attributes: &str| {
        format!(
            r#"{{"op":"register","token":"t","platform":"ios","seen_ms":5,"attributes":{attributes}}}"#
        )
    };
    // Before: the last "os" won silently and the line was imported.
    let e = refused(&register(r#"{"os":"17","os":"18"}"#));
    assert_eq!(e.to_string(), r#"duplicate key "os" in attributes"#);
    assert_eq!(
        e,
        LineError::DuplicateKey {
            key: "os".into(),
            in_attributes: true
        }
    );
    // A name that needs escaping reads back the same.
    let e = refused(&register(r#"{"a\"b":"1","a\"b":"2"}"#));
    assert_eq!(
        e,
        LineError::DuplicateKey {
            key: "a\"b".into(),
            in_attributes: true
        }
    );
    // Names that differ only in case are different names.
    let op = parse_line(register(r#"{"os":"17","OS":"18","app":"2"}"#).as_bytes()).unwrap();
    let Op::Register(r) = op else {
        panic!("{op:?}")
    };
    let attrs = r.attributes.unwrap();
    assert_eq!((attrs["os"].as_str(), attrs["OS"].as_str()), ("17", "18"));
    assert_eq!(parse_line(register("null").as_bytes()).map(|_| ()), Ok(()));
}

/// `parse_line` says what kind of problem a line has, as a type.
#[test]
fn import_line_errors_are_typed() {
    use devreg::import::{parse_line, LineError};
    let refused = |line: &[u8]| parse_line(line).unwrap_err();
    assert_eq!(
        refused(b"{\"op\":\"remove\",\"token\":\"\xff\"}"),
        LineError::NotUtf8 { valid_up_to: 24 }
    );
    let e = refused(b"{not json");
    assert!(
        matches!(
            &e,
            LineError::Json {
                column: Some(2),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("bad JSON: "), "{e}");
    for line in [
        &br#"{"op":"explode","token":"t1"}"#[..],
        br#"{"op":"touch","token":"t1"}"#,
        br#"{"op":"touch","token":"t1","seen_ms":"5"}"#,
        br#"{"op":"touch","token":"t1","seen_ms":5,"x":1}"#,
    ] {
        let e = refused(line);
        assert!(matches!(e, LineError::Event { .. }), "{e:?}");
        assert!(e.to_string().starts_with("bad event: "), "{e}");
    }
    let invalid = |line: &[u8]| match refused(line) {
        LineError::Invalid { field, .. } => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        invalid(br#"{"op":"register","token":"a b","platform":"ios","seen_ms":1}"#),
        "token"
    );
    assert_eq!(
        invalid(br#"{"op":"register","token":"t","platform":"windows","seen_ms":1}"#),
        "platform"
    );
    assert_eq!(
        invalid(br#"{"op":"logout","token":"t","policy":"maybe"}"#),
        "policy"
    );
    assert_eq!(
        invalid(
            br#"{"op":"register","token":"t","platform":"ios","seen_ms":1,"attributes":{"n":5}}"#
        ),
        "attributes.n"
    );
}

// ------------------------------------------------------- damaged storage --

fn device_key(token: &str) -> Vec<u8> {
    let mut k = vec![b'D'];
    k.extend_from_slice(&pack_token(token));
    k
}

/// Sets (or with `None` removes) one record in the closed registry's store
/// (inside its page, for the paged keyspaces); returns the old value.
fn poke(db: &Path, key: &[u8], value: Option<&[u8]>) -> Option<Vec<u8>> {
    let old = devreg::internals::peek_record(db, key).unwrap();
    devreg::internals::poke_record(db, key, value).unwrap();
    old
}

const HEX: &str = "4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa01";
const FCM: &str = "cXd1aQ:APA91bF_z9-x";

fn populated(db: &Path) -> Vec<Device> {
    let reg = Registry::open(db).unwrap();
    let mut a = Attributes::new();
    a.insert("app_version".into(), "3.1".into());
    let _ = reg.apply(register(HEX, Some("ann"), T, Some(a))).unwrap();
    let _ = reg.apply(register(FCM, Some("bob"), T + 1, None)).unwrap();
    let _ = reg.apply(register("plain", None, T + 2, None)).unwrap();
    let dump = reg.dump();
    drop(reg); // closes with a checkpoint: the records are in sled
    dump
}

#[test]
fn corrupt_device_records_are_typed_errors_naming_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let dump = populated(&db);
    for token in [HEX, FCM] {
        let key = device_key(token);
        let original = devreg::internals::peek_record(&db, &key)
            .unwrap()
            .expect("the device is in the store after a clean close");
        assert_eq!(original[0], 1, "records start with format version 1");
        let mut truncated = original.clone();
        truncated.pop();
        let mut bad_platform = original.clone();
        bad_platform[1] = 7;
        let garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![1],
            vec![
                1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            ],
            truncated,
            bad_platform,
            [original.clone(), vec![0xAB]].concat(),
        ];
        for value in garbage {
            poke(&db, &key, Some(&value));
            match Registry::open(&db) {
                Err(Error::Corrupt { location, detail }) => assert!(
                    location.contains(token),
                    "location {location:?} ({detail}) does not name {token}"
                ),
                Err(e) => panic!("value {value:02x?}: expected Corrupt, got {e:?}"),
                Ok(_) => panic!("value {value:02x?} for {token}: opened"),
            }
        }
        let mut future = original.clone();
        future[0] = 9;
        poke(&db, &key, Some(&future));
        match Registry::open(&db) {
            Err(Error::UnsupportedFormat {
                location, found, ..
            }) => {
                assert_eq!(found, 9);
                assert!(location.contains(token), "{location}");
            }
            other => panic!("expected UnsupportedFormat, got {:?}", other.map(|_| ())),
        }
        // Restored: every record is intact.
        poke(&db, &key, Some(&original));
        let reg = Registry::open(&db).unwrap();
        assert_eq!(reg.dump(), dump);
        assert!(reg.check().unwrap().is_clean());
    }

    // A key that is not a packed token.
    let bogus = b"D\x07zz".to_vec();
    poke(&db, &bogus, Some(&[1]));
    assert!(matches!(Registry::open(&db), Err(Error::Corrupt { .. })));
    poke(&db, &bogus, None);
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.dump(), dump);
}

#[test]
fn unknown_format_version_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let dump = populated(&db);
    let original = poke(&db, b"Mformat", Some(&8u32.to_be_bytes())).expect("Mformat is set");
    assert_eq!(original, devreg::internals::STORE_FORMAT.to_be_bytes());
    match Registry::open(&db) {
        Err(Error::UnsupportedFormat { found, .. }) => assert_eq!(found, 8),
        other => panic!("expected UnsupportedFormat, got {:?}", other.map(|_| ())),
    }
    poke(&db, b"Mformat", Some(&u32::MAX.to_be_bytes()));
    assert!(matches!(
        Registry::open(&db),
        Err(Error::UnsupportedFormat { .. })
    ));
    // A version of the wrong width is damage, not a version.
    poke(&db, b"Mformat", Some(&[0, 1]));
    assert!(matches!(Registry::open(&db), Err(Error::Corrupt { .. })));
    // Without the version key but with devices: refuse, do not re-initialise.
    poke(&db, b"Mformat", None);
    assert!(matches!(Registry::open(&db), Err(Error::Corrupt { .. })));
    poke(&db, b"Mformat", Some(&original));
    let reg = Registry::open(&db).unwrap();
    assert_eq!(
        reg.dump(),
        dump,
        "nothing lost after the version is restored"
    );
    assert!(reg.check().unwrap().is_clean());
}

/// A feedback import line (issue 15) parses to `Op::Feedback`; a bad
/// outcome, a long reason, a bad time or token are refused naming the field.
#[test]
fn feedback_import_lines_parse_and_bad_ones_name_the_field() {
    use devreg::import::parse_line;
    let line = r#"{"op":"feedback","token":"ab12","outcome":"soft_failure","at_ms":5,"reason":"throttled"}"#;
    assert_eq!(
        parse_line(line.as_bytes()).unwrap(),
        Op::Feedback {
            token: "ab12".into(),
            outcome: devreg::FeedbackOutcome::SoftFailure,
            at_ms: 5,
            reason: Some("throttled".into()),
        }
    );
    let no_reason = r#"{"op":"feedback","token":"ab12","outcome":"delivered","at_ms":5}"#;
    assert!(matches!(
        parse_line(no_reason.as_bytes()).unwrap(),
        Op::Feedback { reason: None, .. }
    ));
    let refused = |line: String| parse_line(line.as_bytes()).unwrap_err().to_string();
    let e = refused(r#"{"op":"feedback","token":"a","outcome":"x","at_ms":5}"#.into());
    assert_eq!(
        e,
        r#"invalid feedback.outcome: "x" is not one of delivered, soft_failure, hard_failure, unregistered"#
    );
    let long = "r".repeat(devreg::limits::MAX_FEEDBACK_REASON_BYTES + 1);
    let e = refused(format!(
        r#"{{"op":"feedback","token":"a","outcome":"delivered","at_ms":5,"reason":"{long}"}}"#
    ));
    assert!(e.contains("feedback.reason"), "{e}");
    let e = refused(
        r#"{"op":"feedback","token":"a","outcome":"delivered","at_ms":99999999999999999}"#.into(),
    );
    assert!(e.contains("at_ms"), "{e}");
    let e = refused(r#"{"op":"feedback","token":"a b","outcome":"delivered","at_ms":5}"#.into());
    assert!(e.contains("token"), "{e}");
    let e = refused(r#"{"op":"feedback","token":"a","at_ms":5}"#.into());
    assert!(e.contains("outcome"), "{e}");
}

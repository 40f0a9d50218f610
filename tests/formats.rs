//! Sink formats (issue 17): the golden output of every Customer.io Data
//! Pipelines operation, each checked against the official Pipelines
//! OpenAPI schemas (`tests/fixtures/openapi/pipelines-device-events.json`,
//! vendored with its source); a merge sent as device moves; one call per
//! request; identifier kinds (`email`, `cio_id`) in Track v2 and Pipelines,
//! and persons that are not valid values of a sink's kind dead-lettered
//! with the reason instead of sent.

use devreg::format::{FormatKind, IdentifierKind, SinkSettings};
use devreg::*;
use serde_json::Value;

fn open(path: &std::path::Path) -> Registry {
    Registry::open_with(Config::new(path).durability(Durability::Eventual)).unwrap()
}

fn register(reg: &Registry, token: &str, person: &str, seen_ms: u64, attrs: &[(&str, &str)]) {
    let attributes: Attributes = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let o = reg
        .register(Register {
            token: token.into(),
            platform: Platform::Ios,
            person: Some(person.into()),
            seen_ms,
            attributes: Some(attributes),
        })
        .unwrap();
    assert!(o.is_applied());
}

fn settings(format: FormatKind, identifier: IdentifierKind) -> SinkSettings {
    SinkSettings::new(format, identifier).unwrap()
}

/// Exports and acknowledges until nothing is pending; every batch body.
fn drain(reg: &Registry, sink: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(b) = reg.export(sink, 100, 499_999).unwrap() {
        bodies.push(b.body().to_owned());
        reg.ack(sink, b.id()).unwrap();
    }
    bodies
}

// ------------------------------------------------ the OpenAPI schema check

fn schemas() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/openapi/pipelines-device-events.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The subset of JSON Schema the vendored schemas use: `type`, `required`,
/// `properties`, `enum`, `allOf` (a `$ref` is not followed; every one in
/// the excerpt is a plain string).
fn violations(schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(t) = schema["type"].as_str() {
        let ok = match t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "array" => v.is_array(),
            "boolean" => v.is_boolean(),
            "number" => v.is_number(),
            _ => true,
        };
        if !ok {
            out.push(format!("{at}: not a {t}: {v}"));
            return;
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(v) {
            out.push(format!("{at}: {v} is not one of {values:?}"));
        }
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        let key = r.as_str().unwrap();
        if v.get(key).is_none() {
            out.push(format!("{at}: missing required {key}"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (key, sub) in props {
            if let Some(field) = v.get(key) {
                violations(sub, field, &format!("{at}.{key}"), out);
            }
        }
    }
    for sub in schema["allOf"].as_array().into_iter().flatten() {
        violations(sub, v, at, out);
    }
}

/// A call must satisfy its semantic event's schema, the `/batch` item
/// schema of a known user's `track`, and the common fields' types.
fn assert_valid_call(call: &Value) {
    let s = schemas();
    let event = match call["event"].as_str() {
        Some("Device Created or Updated") => "create_update_device",
        Some("Device Deleted") => "delete_device",
        other => panic!("unexpected event {other:?} in {call}"),
    };
    let mut out = Vec::new();
    for name in [event, "batch_track_known_user", "common_fields"] {
        violations(&s[name], call, name, &mut out);
    }
    assert!(out.is_empty(), "{call}: {out:?}");
    // The common fields' timestamp is ISO-8601 date-time.
    if let Some(ts) = call["timestamp"].as_str() {
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T",
            "timestamp {ts}"
        );
    }
}

fn calls(body: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(body).unwrap();
    v["batch"].as_array().unwrap().clone()
}

#[test]
fn the_schema_check_catches_what_it_checks() {
    let good: Value = serde_json::from_str(
        r#"{"type":"track","userId":"u","event":"Device Deleted","context":{"device":{"token":"t"}},"messageId":"m"}"#,
    )
    .unwrap();
    assert_valid_call(&good);
    let s = schemas();
    for bad in [
        r#"{"type":"track","event":"Device Deleted","context":{"device":{"token":"t"}}}"#,
        r#"{"type":"track","userId":"u","event":"Device Deleted","context":{"device":{}}}"#,
        r#"{"type":"track","userId":"u","event":"Device Deleted","context":{"device":{"token":"t","type":"web"}}}"#,
        r#"{"type":"identify","userId":"u","event":"Device Deleted","context":{"device":{"token":"t"}}}"#,
    ] {
        let v: Value = serde_json::from_str(bad).unwrap();
        let mut out = Vec::new();
        for name in ["delete_device", "batch_track_known_user"] {
            violations(&s[name], &v, name, &mut out);
        }
        assert!(!out.is_empty(), "{bad} passed");
    }
}

// ------------------------------------------------------- Pipelines goldens

#[test]
fn pipelines_device_created_or_updated_golden() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    let cdp = settings(FormatKind::Pipelines, IdentifierKind::Id);
    assert!(reg.add_sink_with("cdp", cdp).unwrap());
    register(
        &reg,
        "ab12",
        "42",
        1_700_000_000_123,
        &[("app_version", "1.2"), ("push_enabled", "true")],
    );
    let b = reg.export("cdp", 100, 499_999).unwrap().unwrap();
    assert_eq!(b.id(), "cdp-000000000001");
    assert_eq!(
        b.body(),
        r#"{"batch":[{"type":"track","userId":"42","event":"Device Created or Updated","context":{"device":{"token":"ab12","type":"ios"}},"properties":{"app_version":"1.2","push_enabled":"true"},"timestamp":"2023-11-14T22:13:20.123Z","messageId":"devreg-cdp-1-0-MSGID"}]}"#
            .replace("MSGID", message_crc(b.body()))
    );
    assert_valid_call(&calls(b.body())[0]);
    // A re-export (a re-send) is the same call, message id included.
    assert_eq!(
        reg.export("cdp", 100, 499_999).unwrap().unwrap().body(),
        b.body()
    );
    reg.close().unwrap();
    let reg = open(&dir.path().join("db"));
    let again = reg.export("cdp", 100, 499_999).unwrap().unwrap();
    assert_eq!(again.body(), b.body(), "the same call after a reopen");
}

/// The last 8 hex digits of the first call's message id (a CRC-32 of the
/// call's content, pinned by `message_ids_are_pinned`).
fn message_crc(body: &str) -> &str {
    let at = body.find(r#""messageId":""#).unwrap() + 13;
    let id = &body[at..body[at..].find('"').unwrap() + at];
    &id[id.len() - 8..]
}

#[test]
fn message_ids_are_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    reg.add_sink_with("cdp", settings(FormatKind::Pipelines, IdentifierKind::Id))
        .unwrap();
    register(&reg, "ab12", "42", 1_700_000_000_123, &[]);
    let b = reg.export("cdp", 100, 499_999).unwrap().unwrap();
    assert_eq!(
        b.body(),
        r#"{"batch":[{"type":"track","userId":"42","event":"Device Created or Updated","context":{"device":{"token":"ab12","type":"ios"}},"properties":{},"timestamp":"2023-11-14T22:13:20.123Z","messageId":"devreg-cdp-1-0-1ee09471"}]}"#
    );
}

#[test]
fn pipelines_device_deleted_golden_and_a_move_is_delete_then_add() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    reg.add_sink_with("cdp", settings(FormatKind::Pipelines, IdentifierKind::Id))
        .unwrap();
    register(&reg, "ab12", "ann", 1_000, &[]);
    drain(&reg, "cdp");
    register(&reg, "ab12", "bob", 2_000, &[]);
    let bodies = drain(&reg, "cdp");
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let delete = &calls(&bodies[0])[0];
    let id = delete["messageId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("devreg-cdp-2-0-"), "{id}");
    assert_eq!(
        bodies[0],
        format!(
            r#"{{"batch":[{{"type":"track","userId":"ann","event":"Device Deleted","context":{{"device":{{"token":"ab12"}}}},"messageId":"{id}"}}]}}"#
        )
    );
    assert_valid_call(delete);
    let add = &calls(&bodies[1])[0];
    assert_eq!(add["userId"], "bob");
    assert_eq!(add["event"], "Device Created or Updated");
    assert_eq!(add["timestamp"], "1970-01-01T00:00:02.000Z");
    assert_valid_call(add);
    assert_ne!(add["messageId"], delete["messageId"]);
}

#[test]
fn pipelines_merge_is_sent_as_device_moves_one_call_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    reg.add_sink_with("cdp", settings(FormatKind::Pipelines, IdentifierKind::Id))
        .unwrap();
    register(&reg, "aa", "sec", 1_000, &[]);
    register(&reg, "bb", "sec", 1_500, &[]);
    register(&reg, "cc", "prim", 3_000, &[]);
    let first = drain(&reg, "cdp");
    assert_eq!(first.len(), 3, "one call per request: {first:?}");
    let _ = reg.merge("prim", "sec").unwrap();
    let mut seen = Vec::new();
    for body in drain(&reg, "cdp") {
        let c = calls(&body);
        assert_eq!(c.len(), 1, "{body}");
        assert_valid_call(&c[0]);
        seen.push(format!(
            "{}:{}:{}",
            c[0]["event"].as_str().unwrap(),
            c[0]["userId"].as_str().unwrap(),
            c[0]["context"]["device"]["token"].as_str().unwrap()
        ));
    }
    for t in ["aa", "bb"] {
        let del = seen
            .iter()
            .position(|s| s == &format!("Device Deleted:sec:{t}"));
        let add = seen
            .iter()
            .position(|s| s == &format!("Device Created or Updated:prim:{t}"));
        assert!(del.unwrap() < add.unwrap(), "{seen:?}");
    }
    assert_eq!(seen.len(), 4, "no merge call: {seen:?}");
    let check = reg.check().unwrap();
    assert!(check.is_clean(), "{:?}", check.problems);
}

#[test]
fn a_pipelines_sink_starts_with_a_snapshot_of_every_identified_device() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    for i in 0..5 {
        register(&reg, &format!("t{i}"), &format!("p{i}"), 1_000 + i, &[]);
    }
    reg.add_sink_with("cdp", settings(FormatKind::Pipelines, IdentifierKind::Id))
        .unwrap();
    let info = reg.sinks().into_iter().find(|s| s.name == "cdp").unwrap();
    assert_eq!(
        (info.pending, info.format, info.identifier),
        (5, Some("pipelines"), Some("id"))
    );
    let bodies = drain(&reg, "cdp");
    assert_eq!(bodies.len(), 5);
    for b in &bodies {
        assert_valid_call(&calls(b)[0]);
    }
}

// ------------------------------------------------------ identifier kinds

#[test]
fn track_v2_by_email_and_cio_id_name_the_identifier() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    reg.add_sink_with("mail", settings(FormatKind::TrackV2, IdentifierKind::Email))
        .unwrap();
    reg.add_sink_with("cio", settings(FormatKind::TrackV2, IdentifierKind::CioId))
        .unwrap();
    register(&reg, "aa", "ann@example.com", 5_000, &[]);
    register(&reg, "bb", "cio_a3000001", 6_000, &[]);
    let mail = drain(&reg, "mail").concat();
    assert!(
        mail.contains(r#"{"type":"person","identifiers":{"email":"ann@example.com"},"action":"add_device","device":{"token":"aa","platform":"ios","last_used":5,"attributes":{}}}"#),
        "{mail}"
    );
    let cio = drain(&reg, "cio").concat();
    assert!(
        cio.contains(r#"{"type":"person","identifiers":{"cio_id":"a3000001"},"action":"add_device","device":{"token":"bb","platform":"ios","last_used":6,"attributes":{}}}"#),
        "{cio}"
    );
}

#[test]
fn a_person_that_is_not_an_email_is_dead_lettered_on_an_email_sink() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    for format in FormatKind::ALL {
        let name = format!("mail-{format}");
        reg.add_sink_with(&name, settings(format, IdentifierKind::Email))
            .unwrap();
    }
    register(&reg, "aa", "ann@example.com", 5_000, &[]);
    register(&reg, "bb", "bob", 6_000, &[]);
    for format in FormatKind::ALL {
        let name = format!("mail-{format}");
        let sent = drain(&reg, &name).concat();
        assert!(sent.contains("ann@example.com"), "{sent}");
        assert!(!sent.contains("bob"), "a non-email is never sent: {sent}");
        let dead = reg.dead_letters(&name).unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].batch_id, "export");
        assert!(
            dead[0].reason.contains(r#""bob" is not an email address"#),
            "{}",
            dead[0].reason
        );
        assert!(dead[0].operation.contains("bob"));
        // Requeued, it is refused again: still a letter, still not sent.
        assert_eq!(reg.requeue(&name).unwrap(), 1);
        assert!(drain(&reg, &name).is_empty());
        assert_eq!(reg.dead_letters(&name).unwrap().len(), 1);
    }
    // A move to a valid person sends it (and the letter is moot).
    register(&reg, "bb", "bob@example.com", 7_000, &[]);
    let sent = drain(&reg, "mail-track-v2").concat();
    assert!(sent.contains("bob@example.com"), "{sent}");
    let check = reg.check().unwrap();
    assert!(check.is_clean(), "{:?}", check.problems);
}

#[test]
fn sink_settings_are_kept_across_a_reopen_and_never_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let reg = open(&path);
    let cdp = settings(FormatKind::Pipelines, IdentifierKind::Email);
    assert!(reg.add_sink_with("cdp", cdp).unwrap());
    reg.checkpoint().unwrap();
    let mail = settings(FormatKind::TrackV2, IdentifierKind::Email);
    // Only in the log (no checkpoint after it): the replay must restore it.
    assert!(reg.add_sink_with("mail", mail).unwrap());
    drop(reg);
    let reg = open(&path);
    let got = |name: &str| {
        reg.sinks()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
            .settings
    };
    assert_eq!(got("cdp"), cdp);
    assert_eq!(got("mail"), mail);
    match reg.add_sink_with("cdp", SinkSettings::default()) {
        Err(Error::Invalid { field, reason }) => {
            assert_eq!(field, "sink");
            assert!(reason.contains("never change"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let e = reg
        .add_sink_with(
            "x",
            SinkSettings {
                format: FormatKind::Pipelines,
                identifier: IdentifierKind::CioId,
                diagnostics: false,
            },
        )
        .unwrap_err();
    assert!(
        e.to_string().starts_with("invalid sink.identifier: "),
        "{e}"
    );
    // A backup holds the settings too.
    let copy = dir.path().join("copy");
    reg.backup(&copy).unwrap();
    reg.close().unwrap();
    let reg = open(&copy);
    assert!(reg
        .sinks()
        .iter()
        .any(|s| s.name == "cdp" && s.settings == cdp));
}

// ------------------------------------------------------ diagnostic events

#[path = "support/cio.rs"]
mod cio;

/// Exports, applies to the model and acknowledges until nothing is pending.
fn drain_into(reg: &Registry, sink: &str, model: &mut cio::Cio) -> Vec<Value> {
    let mut ops = Vec::new();
    while let Some(b) = reg.export(sink, 100, 499_999).unwrap() {
        assert!(model.apply_body(b.body(), &[]).is_empty(), "{}", b.body());
        ops.extend(calls(b.body()));
        reg.ack(sink, b.id()).unwrap();
    }
    ops
}

/// Token changes go out as events only on sinks that ask for them, once
/// each, in both formats, after the device moves of the same change; the
/// pending event survives a reopen.
#[test]
fn diagnostic_events_are_off_by_default_and_sent_once_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut reg = open(&path);
    for format in FormatKind::ALL {
        let plain = settings(format, IdentifierKind::Id);
        reg.add_sink_with(&format!("plain-{format}"), plain)
            .unwrap();
        reg.add_sink_with(&format!("diag-{format}"), plain.with_diagnostics(true))
            .unwrap();
    }
    let info = reg.sinks();
    assert!(info
        .iter()
        .all(|s| s.diagnostics == s.name.starts_with("diag")));
    register(&reg, "aa01", "ann", 1_000, &[]);
    let mut models: std::collections::BTreeMap<String, cio::Cio> = Default::default();
    for s in reg.sinks() {
        drain_into(&reg, &s.name, models.entry(s.name.clone()).or_default());
    }
    let _ = reg.rotate("aa01", "bb02", 2_000).unwrap();
    // Pending across a reopen (the event is a stored item).
    reg.close().unwrap();
    reg = open(&path);
    let _ = reg.invalidate("bb02", 3_000).unwrap();
    for s in reg.sinks() {
        let model = models.get_mut(&s.name).unwrap();
        let ops = drain_into(&reg, &s.name, model);
        let names: Vec<String> = model.events.iter().map(|e| e.1.clone()).collect();
        if s.name.starts_with("plain") {
            assert!(names.is_empty(), "{}: {names:?}", s.name);
            continue;
        }
        assert_eq!(
            names,
            ["device_token_rotated", "device_token_invalidated"],
            "{}",
            s.name
        );
        let (person, _, props) = &model.events[0];
        assert_eq!(person, "ann");
        assert_eq!(
            props,
            &serde_json::json!({"new_token":"bb02","old_token":"aa01","platform":"ios"})
        );
        let props = &model.events[1].2;
        assert_eq!(
            props,
            &serde_json::json!({"platform":"ios","provider_ms":"3000","token":"bb02"})
        );
        if s.name.ends_with("pipelines") {
            let event = ops
                .iter()
                .find(|c| c["event"] == "device_token_rotated")
                .unwrap();
            let mut out = Vec::new();
            for name in ["batch_track_known_user", "common_fields"] {
                violations(&schemas()[name], event, name, &mut out);
            }
            assert!(out.is_empty(), "{event}: {out:?}");
            assert_eq!(event["timestamp"], "1970-01-01T00:00:02.000Z");
        } else {
            let event = ops.iter().find(|o| o["action"] == "event").unwrap();
            assert_eq!(event["identifiers"], serde_json::json!({"id": "ann"}));
            assert_eq!(event["timestamp"], 2);
            assert!(
                event["id"].as_str().unwrap().starts_with("00000001YG"),
                "{event}"
            );
        }
        assert!(
            model.pairs().is_empty(),
            "the device went: {:?}",
            model.pairs()
        );
    }
    let check = reg.check().unwrap();
    assert!(check.is_clean(), "{:?}", check.problems);
}

/// Export-time dead letters list the same index in memory as after a
/// reopen (the index of their slot: the rejections numbered 0, 1, ...).
#[test]
fn export_rejections_list_the_same_index_before_and_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let reg = open(&path);
    reg.add_sink_with("mail", settings(FormatKind::TrackV2, IdentifierKind::Email))
        .unwrap();
    for i in 0..3 {
        register(&reg, &format!("t{i}"), &format!("p{i}"), 1_000, &[]);
    }
    assert!(drain(&reg, "mail").is_empty());
    let before: Vec<(String, u32)> = reg
        .dead_letters("mail")
        .unwrap()
        .into_iter()
        .map(|d| (d.batch_id, d.index))
        .collect();
    let want: Vec<(String, u32)> = (0..3).map(|i| ("export".to_string(), i)).collect();
    assert_eq!(before, want);
    reg.close().unwrap();
    let reg = open(&path);
    let after: Vec<(String, u32)> = reg
        .dead_letters("mail")
        .unwrap()
        .into_iter()
        .map(|d| (d.batch_id, d.index))
        .collect();
    assert_eq!(after, want);
}

/// Delivery feedback `unregistered` (issue 15) is the invalidate rule on
/// the same path: a sink with diagnostics gets one
/// `device_token_invalidated` event (at the feedback's time) and the
/// device's deletion; one seen after the feedback is kept and sends nothing.
#[test]
fn unregistered_feedback_sends_the_invalidation_event() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("db"));
    let diag = settings(FormatKind::TrackV2, IdentifierKind::Id).with_diagnostics(true);
    reg.add_sink_with("diag", diag).unwrap();
    register(&reg, "aa01", "ann", 1_000, &[]);
    register(&reg, "aa02", "ann", 5_000, &[]);
    let mut model = cio::Cio::default();
    drain_into(&reg, "diag", &mut model);
    let unreg = devreg::FeedbackOutcome::Unregistered;
    assert_eq!(
        reg.feedback("aa02", unreg, 4_000, None).unwrap(),
        Outcome::Skipped
    );
    assert!(reg
        .feedback("aa01", unreg, 3_000, Some("Unregistered"))
        .unwrap()
        .is_applied());
    drain_into(&reg, "diag", &mut model);
    let names: Vec<&str> = model.events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(names, ["device_token_invalidated"]);
    assert_eq!(
        model.events[0].2,
        serde_json::json!({"platform":"ios","provider_ms":"3000","token":"aa01"})
    );
    let devices: Vec<&String> = model.persons["ann"].keys().collect();
    assert_eq!(devices, ["aa02"], "the device is deleted on the sink too");
}

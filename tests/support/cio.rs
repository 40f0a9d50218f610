//! The one test model of Customer.io, shared by the feed's convergence
//! tests (`tests/feed.rs`) and the sync worker's emulator
//! (`tests/sync.rs`): per person a set of devices; tokens never move by
//! themselves. It reads both sink formats:
//!
//! * Track v2 operations: `add_device` upserts, `delete_device` removes,
//!   `merge` drops the secondary with its devices and is an error without
//!   the primary;
//! * Data Pipelines calls (`type` `track`): `Device Created or Updated`
//!   upserts `context.device.token` on `userId`, `Device Deleted` removes
//!   it; a call whose `messageId` was applied before is a duplicate and
//!   changes nothing (Customer.io de-duplicates on it).
//!
//! Diagnostic events (Track `event` with a ULID `id`, a Pipelines `track`
//! call of another event name) are recorded in `events`, once per id.
//!
//! It also speaks Customer.io's reporting webhooks for push messages
//! (`push_report`, `sign_report`): the event a delivery outcome posts, and
//! its `X-CIO-Signature` (DESIGN.md 20.7), for `tests/server.rs`.
//!
//! And the App API's side of the drift audit (`AppApi`): `GET
//! /v1/customers/{id}/attributes` answers a person's devices from this
//! model (`Cio::attributes`), behind a bearer key, a requests-per-second
//! limit answered with 429 and `Retry-After`, and injectable faults.
//!
//! A device is (platform, last used in whole seconds, attributes). An
//! operation Customer.io would refuse is an `Err`; a delete for a person it
//! never saw is accepted and noted (`notes`): devreg should never send one.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Platform, last used (Unix seconds), attributes.
pub type Device = (String, u64, Value);
pub type Devices = BTreeMap<String, Device>;
pub type Pairs = BTreeMap<(String, String), Device>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cio {
    pub persons: BTreeMap<String, Devices>,
    /// Pipelines `messageId`s applied.
    pub message_ids: BTreeSet<String>,
    /// Calls ignored as duplicates of an applied `messageId`.
    pub duplicates: usize,
    /// Diagnostic events received: (person, name, properties).
    pub events: Vec<(String, String, Value)>,
    /// Track event ids applied.
    pub event_ids: BTreeSet<String>,
    pub notes: Vec<String>,
}

fn text(v: &Value, what: &str, op: &Value) -> Result<String, String> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("{what} is not a non-empty string: {op}")),
    }
}

fn check_device(platform: &str, attrs: &Value, op: &Value) -> Result<(), String> {
    if platform != "ios" && platform != "android" {
        return Err(format!("platform {platform}: {op}"));
    }
    if !attrs
        .as_object()
        .is_some_and(|a| a.values().all(Value::is_string))
    {
        return Err(format!("attribute values must be strings: {op}"));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` as Unix seconds (days from civil: Howard
/// Hinnant's algorithm).
pub fn iso_secs(ts: &str) -> Option<u64> {
    let b = ts.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

impl Cio {
    /// Applies one operation of either format.
    pub fn apply(&mut self, op: &Value) -> Result<(), String> {
        if op.get("action").is_some() {
            self.apply_track(op)
        } else {
            self.apply_call(op)
        }
    }

    /// A Track v2 operation (`{"id":..}`, `{"email":..}` or `{"cio_id":..}`).
    pub fn apply_track(&mut self, op: &Value) -> Result<(), String> {
        let ident = |v: &Value| -> Result<String, String> {
            let obj = v.as_object().filter(|o| o.len() == 1);
            let value = obj.and_then(|o| o.values().next());
            text(value.unwrap_or(&Value::Null), "identifier", op)
        };
        match op["action"].as_str() {
            Some("add_device") => {
                let d = &op["device"];
                if !d["last_used"].is_u64() {
                    return Err(format!("last_used is not an integer: {op}"));
                }
                let platform = text(&d["platform"], "platform", op)?;
                check_device(&platform, &d["attributes"], op)?;
                let id = ident(&op["identifiers"])?;
                let seen = d["last_used"].as_u64().unwrap_or(0);
                let token = text(&d["token"], "token", op)?;
                let device = (platform, seen, d["attributes"].clone());
                self.persons.entry(id).or_default().insert(token, device);
            }
            Some("delete_device") => {
                let id = ident(&op["identifiers"])?;
                let token = text(&op["device"]["token"], "token", op)?;
                self.delete(&id, &token);
            }
            Some("event") => {
                let id = ident(&op["identifiers"])?;
                let ulid = text(&op["id"], "id", op)?;
                if ulid.len() != 26 {
                    return Err(format!("id is not a ULID: {op}"));
                }
                if !op["timestamp"].is_u64() {
                    return Err(format!("timestamp is not an integer: {op}"));
                }
                let name = text(&op["name"], "name", op)?;
                if self.event_ids.insert(ulid) {
                    self.events.push((id, name, op["attributes"].clone()));
                }
            }
            Some("merge") => {
                let primary = ident(&op["primary"])?;
                let secondary = ident(&op["secondary"])?;
                if !self.persons.contains_key(&primary) {
                    return Err(format!("merge into missing primary {primary}: {op}"));
                }
                // Customer.io deletes the secondary with its devices; a
                // re-sent merge finds it gone: a no-op.
                self.persons.remove(&secondary);
            }
            _ => return Err(format!("unknown action: {op}")),
        }
        Ok(())
    }

    /// A Data Pipelines `track` call of a semantic device event.
    pub fn apply_call(&mut self, call: &Value) -> Result<(), String> {
        if call["type"] != "track" {
            return Err(format!("not a track call: {call}"));
        }
        let user = text(&call["userId"], "userId", call)?;
        let id = text(&call["messageId"], "messageId", call)?;
        let event = text(&call["event"], "event", call)?;
        if self.message_ids.contains(&id) {
            self.duplicates += 1;
            return Ok(());
        }
        if !event.starts_with("Device ") {
            let ts = text(&call["timestamp"], "timestamp", call)?;
            iso_secs(&ts).ok_or(format!("timestamp {ts} is not ISO-8601"))?;
            self.events.push((user, event, call["properties"].clone()));
            self.message_ids.insert(id);
            return Ok(());
        }
        let token = text(
            &call["context"]["device"]["token"],
            "context.device.token",
            call,
        )?;
        match event.as_str() {
            "Device Created or Updated" => {
                let platform = text(&call["context"]["device"]["type"], "device type", call)?;
                check_device(&platform, &call["properties"], call)?;
                let ts = text(&call["timestamp"], "timestamp", call)?;
                let seen = iso_secs(&ts).ok_or(format!("timestamp {ts} is not ISO-8601"))?;
                let device = (platform, seen, call["properties"].clone());
                self.persons.entry(user).or_default().insert(token, device);
            }
            "Device Deleted" => self.delete(&user, &token),
            other => return Err(format!("unexpected event {other}: {call}")),
        }
        self.message_ids.insert(id);
        Ok(())
    }

    fn delete(&mut self, person: &str, token: &str) {
        match self.persons.get_mut(person) {
            Some(p) => {
                p.remove(token);
            }
            None => self
                .notes
                .push(format!("delete of {token} for unknown person {person}")),
        }
    }

    /// Applies a batch body's operations except `skip`; the indices that
    /// failed, with why.
    pub fn apply_body(&mut self, body: &str, skip: &[usize]) -> Vec<(usize, String)> {
        let v: Value = match serde_json::from_str(body) {
            Ok(v) => v,
            Err(e) => return vec![(0, format!("body is not JSON: {e}"))],
        };
        let mut failed = Vec::new();
        for (i, op) in v["batch"].as_array().into_iter().flatten().enumerate() {
            if skip.contains(&i) {
                continue;
            }
            if let Err(e) = self.apply(op) {
                failed.push((i, e));
            }
        }
        failed
    }

    pub fn pairs(&self) -> Pairs {
        let mut out = BTreeMap::new();
        for (p, devs) in &self.persons {
            for (t, d) in devs {
                out.insert((p.clone(), t.clone()), d.clone());
            }
        }
        out
    }
}

#[test]
fn iso_secs_reads_what_devreg_writes() {
    for ms in [0, 951_782_400_001, 1_700_000_000_123, 32_503_680_000_000] {
        let ts = devreg::format::iso8601_ms(ms);
        assert_eq!(iso_secs(&ts), Some(ms / 1000), "{ts}");
    }
}

/// A reporting-webhook event for a push to `tokens` (the shape Customer.io
/// posts: `event_id`, `object_type`, `metric`, `timestamp` in Unix
/// seconds, `data` with the delivery, its recipients' `device_id`s and,
/// for failures, `failure_message`).
pub fn push_report(
    event_id: &str,
    metric: &str,
    timestamp_s: u64,
    tokens: &[&str],
    failure: Option<&str>,
) -> Value {
    let recipients: Vec<Value> = tokens
        .iter()
        .map(|t| serde_json::json!({"device_id": t, "device_platform": "ios"}))
        .collect();
    let mut data = serde_json::json!({
        "customer_id": "ann",
        "identifiers": {"id": "ann"},
        "delivery_id": format!("delivery-{event_id}"),
        "campaign_id": 7,
        "action_id": 11,
        "recipients": recipients,
    });
    if let Some(f) = failure {
        data["failure_message"] = Value::from(f);
    }
    serde_json::json!({
        "event_id": event_id,
        "object_type": "push",
        "metric": metric,
        "timestamp": timestamp_s,
        "data": data,
    })
}

/// `X-CIO-Signature` for `body` sent at `timestamp` (the `X-CIO-Timestamp`
/// text): lowercase hex HMAC-SHA256 of `v0:<timestamp>:<body>` with the
/// webhook's signing key.
pub fn sign_report(key: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The App API bearer key the emulator accepts.
pub const APP_API_KEY: &str = "app-K3y-B3arer-77";

impl Cio {
    /// The App API answer to `GET /v1/customers/{person}/attributes`: the
    /// profile with its devices (`id` = token, `platform`, `last_used` in
    /// Unix seconds), or `None` (404) for a person Customer.io never saw.
    pub fn attributes(&self, person: &str) -> Option<Value> {
        let devices: Vec<Value> = self
            .persons
            .get(person)?
            .iter()
            .map(|(token, (platform, last_used, _))| {
                serde_json::json!({"id": token, "platform": platform, "last_used": last_used})
            })
            .collect();
        Some(serde_json::json!({"customer": {
            "id": person,
            "identifiers": {"id": person},
            "attributes": {"id": person},
            "devices": devices,
        }}))
    }

    /// Test tampering: moves `token` from `from` to `to` (as if Customer.io
    /// had it on the wrong person); false if `from` did not hold it.
    pub fn move_device(&mut self, from: &str, token: &str, to: &str) -> bool {
        let Some(d) = self.persons.get_mut(from).and_then(|p| p.remove(token)) else {
            return false;
        };
        self.persons
            .entry(to.to_owned())
            .or_default()
            .insert(token.to_owned(), d);
        true
    }
}

/// The App API's gate in front of the model: the bearer key, at most
/// `per_second` admitted requests in any second (more is a 429 with
/// `Retry-After: 1`, the "10-per-second limit"), and `faults`: statuses
/// answered instead of the next requests, in order (a 429 with
/// `Retry-After: 0`, a 5xx without).
#[derive(Debug)]
pub struct AppApi {
    pub key: String,
    pub per_second: usize,
    pub faults: VecDeque<u16>,
    /// Start times of the requests admitted (answered from the model).
    pub admitted: Vec<Instant>,
    /// Every request's person and status, in order.
    pub seen: Vec<(String, u16)>,
    /// Query strings seen (`id_type=...`).
    pub queries: Vec<String>,
}

impl Default for AppApi {
    fn default() -> AppApi {
        AppApi {
            key: APP_API_KEY.to_owned(),
            per_second: 10,
            faults: VecDeque::new(),
            admitted: Vec::new(),
            seen: Vec::new(),
            queries: Vec::new(),
        }
    }
}

/// An App API answer: status, extra headers, body.
pub type AppAnswer = (u16, Vec<(String, String)>, String);

/// Decodes `%XX` escapes of a path segment.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl AppApi {
    /// Counts of the statuses answered.
    pub fn count(&self, status: u16) -> usize {
        self.seen.iter().filter(|(_, s)| *s == status).count()
    }

    /// Answers one App API request (`target`: the request line's path and
    /// query) with (status, extra headers, body); `None` when it is not an
    /// App API request.
    pub fn handle(
        &mut self,
        cio: &Cio,
        target: &str,
        authorization: Option<&str>,
        now: Instant,
    ) -> Option<AppAnswer> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let person = path
            .strip_prefix("/v1/customers/")?
            .strip_suffix("/attributes")
            .filter(|p| !p.is_empty() && !p.contains('/'))
            .map(percent_decode)?;
        if !query.is_empty() {
            self.queries.push(query.to_owned());
        }
        let answer = self.answer(cio, &person, authorization, now);
        self.seen.push((person, answer.0));
        Some(answer)
    }

    fn answer(
        &mut self,
        cio: &Cio,
        person: &str,
        authorization: Option<&str>,
        now: Instant,
    ) -> AppAnswer {
        let plain = |status: u16, body: &str| (status, Vec::new(), body.to_owned());
        if authorization != Some(format!("Bearer {}", self.key).as_str()) {
            return plain(401, r#"{"meta":{"error":"Unauthorized request"}}"#);
        }
        if let Some(status) = self.faults.pop_front() {
            let headers = match status {
                429 => vec![("Retry-After".to_owned(), "0".to_owned())],
                _ => Vec::new(),
            };
            return (
                status,
                headers,
                r#"{"meta":{"error":"injected fault"}}"#.to_owned(),
            );
        }
        let second_ago = now.checked_sub(Duration::from_secs(1));
        let recent = self
            .admitted
            .iter()
            .filter(|t| second_ago.is_none_or(|s| **t > s))
            .count();
        if recent >= self.per_second {
            return (
                429,
                vec![("Retry-After".to_owned(), "1".to_owned())],
                r#"{"meta":{"error":"Your request is over the 10-per-second limit"}}"#.to_owned(),
            );
        }
        self.admitted.push(now);
        match cio.attributes(person) {
            Some(v) => plain(200, &v.to_string()),
            None => plain(404, r#"{"meta":{"error":"Not found"}}"#),
        }
    }
}

//! The drift audit against the sink (issue 15 item 4, DESIGN.md 20.8):
//! reading Customer.io's view of one person's devices from the App API
//! answer to `GET /v1/customers/{id}/attributes`, comparing it with
//! devreg's view, the rate limiter that keeps the audit under the App API's
//! documented 10 requests per second, and `AppApiClient`, which fetches
//! that answer (bearer key, region, 429s waited on). `run.rs` walks the
//! chosen persons and repairs (`audit`, `repair`).

mod run;

pub use run::{audit, repair, AuditReport, CioView, PersonDrift, Selection};

use super::config::{Endpoint, Region};
use crate::error::{Error, Result};
use crate::limits::{
    CIO_APP_API_ATTEMPTS, CIO_APP_API_MAX_REQUESTS_PER_SEC, CIO_APP_API_MAX_RETRY_AFTER_SECS,
    CIO_APP_API_TIMEOUT_MS,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The App API base URL in the US region.
pub const APP_API_US_ENDPOINT: &str = "https://api.customer.io";
/// The App API base URL in the EU region.
pub const APP_API_EU_ENDPOINT: &str = "https://api-eu.customer.io";
/// The environment variable that holds the App API bearer key.
pub const APP_API_KEY_ENV: &str = "CUSTOMERIO_APP_API_KEY";

/// One device as Customer.io reports it on a profile.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct CioDevice {
    /// The device token (`id` in the App API and Track v1).
    pub id: String,
    /// `ios` or `android`.
    #[serde(default)]
    pub platform: Option<String>,
    /// Unix seconds of the device's last identify, when present.
    #[serde(default)]
    pub last_used: Option<u64>,
}

#[derive(Deserialize)]
struct AttributesAnswer {
    customer: CustomerView,
}

#[derive(Deserialize)]
struct CustomerView {
    #[serde(default)]
    devices: Vec<CioDevice>,
}

/// Reads the devices out of an attributes answer, `{"customer": {...,
/// "devices": [...]}}`. A profile without a `devices` list has none.
pub fn parse_attributes(body: &str) -> Result<Vec<CioDevice>> {
    let a: AttributesAnswer = serde_json::from_str(body).map_err(|e| Error::Invalid {
        field: "customer.devices".into(),
        reason: format!("App API attributes answer: {e}"),
    })?;
    Ok(a.customer.devices)
}

/// One device as devreg holds it for the audited person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnDevice {
    /// The device token.
    pub token: String,
    /// Last time devreg saw it, Unix milliseconds.
    pub last_seen_ms: u64,
}

/// One drifted (person, token) pair and its kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// devreg has the device on this person; Customer.io does not.
    Missing {
        /// The device token.
        token: String,
    },
    /// Customer.io has the device on this person; devreg owns it nowhere.
    Stale {
        /// The device token.
        token: String,
    },
    /// Customer.io has the device on this person; devreg owns it on another.
    WrongPerson {
        /// The device token.
        token: String,
        /// The person devreg has it on.
        owner: String,
    },
    /// Customer.io's `last_used` is behind devreg's `last_seen_ms / 1000`.
    LastUsedBehind {
        /// The device token.
        token: String,
        /// Customer.io's value, Unix seconds (absent counts as 0).
        cio_last_used: u64,
        /// devreg's value, Unix seconds.
        devreg_last_seen: u64,
    },
}

/// Compares one person's devices in devreg (`own`) with Customer.io's view
/// (`cio`). `owner_of` answers who owns a token in devreg (any person), for
/// tokens Customer.io lists that this person does not own.
pub fn compare(
    own: &[OwnDevice],
    cio: &[CioDevice],
    owner_of: impl Fn(&str) -> Option<String>,
) -> Vec<Drift> {
    let theirs: BTreeMap<&str, &CioDevice> = cio.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut out = Vec::new();
    for d in own {
        let seen = d.last_seen_ms / 1000;
        match theirs.get(d.token.as_str()) {
            None => out.push(Drift::Missing {
                token: d.token.clone(),
            }),
            Some(c) if c.last_used.unwrap_or(0) < seen => out.push(Drift::LastUsedBehind {
                token: d.token.clone(),
                cio_last_used: c.last_used.unwrap_or(0),
                devreg_last_seen: seen,
            }),
            Some(_) => {}
        }
    }
    let mine: BTreeMap<&str, ()> = own.iter().map(|d| (d.token.as_str(), ())).collect();
    for c in cio.iter().filter(|c| !mine.contains_key(c.id.as_str())) {
        out.push(match owner_of(&c.id) {
            Some(owner) => Drift::WrongPerson {
                token: c.id.clone(),
                owner,
            },
            None => Drift::Stale {
                token: c.id.clone(),
            },
        });
    }
    out
}

/// Counts of each drift kind, for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DriftSummary {
    /// Devices Customer.io lacks.
    pub missing: u64,
    /// Devices Customer.io has that devreg owns nowhere.
    pub stale: u64,
    /// Devices Customer.io has on the wrong person.
    pub wrong_person: u64,
    /// Devices whose `last_used` is behind.
    pub last_used_behind: u64,
}

impl DriftSummary {
    /// Adds `drifts` to the counts.
    pub fn add(&mut self, drifts: &[Drift]) {
        for d in drifts {
            match d {
                Drift::Missing { .. } => self.missing += 1,
                Drift::Stale { .. } => self.stale += 1,
                Drift::WrongPerson { .. } => self.wrong_person += 1,
                Drift::LastUsedBehind { .. } => self.last_used_behind += 1,
            }
        }
    }
}

/// A simple limiter: request starts are spaced at least `1/rps` apart.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next: Option<Instant>,
}

impl RateLimiter {
    /// A limiter for the App API's documented limit.
    pub fn app_api() -> RateLimiter {
        RateLimiter::per_second(CIO_APP_API_MAX_REQUESTS_PER_SEC)
    }

    /// A limiter for `rps` requests per second (0 is taken as 1).
    pub fn per_second(rps: u32) -> RateLimiter {
        let secs = super::config::RATE_MARGIN / f64::from(rps.max(1));
        RateLimiter {
            interval: Duration::from_secs_f64(secs),
            next: None,
        }
    }

    /// How long to wait before the next request may start at `now`; the
    /// slot is taken.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let start = match self.next {
            Some(n) if n > now => n,
            _ => now,
        };
        self.next = Some(start.checked_add(self.interval).unwrap_or(start));
        start.saturating_duration_since(now)
    }

    /// Sleeps until the next request may start.
    pub fn wait(&mut self) {
        let d = self.reserve(Instant::now());
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

/// The App API base URL of `region`.
pub fn app_api_endpoint(region: Region) -> &'static str {
    match region {
        Region::Us => APP_API_US_ENDPOINT,
        Region::Eu => APP_API_EU_ENDPOINT,
    }
}

/// A client of Customer.io's App API for the audit: one request at a time,
/// spaced by the App API limiter.
#[derive(Debug)]
pub struct AppApiClient {
    endpoint: Endpoint,
    auth: String,
    agent: ureq::Agent,
    limiter: RateLimiter,
    /// The `id_type` query parameter, when persons are not `id`s.
    id_type: Option<&'static str>,
}

impl AppApiClient {
    /// A client of `base` (an https URL, or http to a loopback host) with
    /// the App API bearer `key`. Sends nothing yet.
    pub fn new(base: &str, key: &str) -> Result<AppApiClient> {
        if key.trim().is_empty() {
            return Err(Error::Invalid {
                field: APP_API_KEY_ENV.into(),
                reason: "the App API key is empty".into(),
            });
        }
        let endpoint = Endpoint::parse_as(base, "app_api_endpoint")?;
        let timeout = Duration::from_millis(CIO_APP_API_TIMEOUT_MS);
        let agent = endpoint.agent(timeout, timeout);
        Ok(AppApiClient {
            endpoint,
            auth: format!("Bearer {}", key.trim()),
            agent,
            limiter: RateLimiter::app_api(),
            id_type: None,
        })
    }

    /// Names persons by this identifier kind (the sink's): `email` and
    /// `cio_id` are sent as the `id_type` query parameter.
    pub fn identifier(mut self, kind: crate::format::IdentifierKind) -> AppApiClient {
        self.id_type = match kind {
            crate::format::IdentifierKind::Id => None,
            other => Some(other.as_str()),
        };
        self
    }

    /// Customer.io's devices of `person` (`GET
    /// /v1/customers/{person}/attributes`). A 429 or 5xx is waited on (at
    /// least its `Retry-After`, at most `CIO_APP_API_MAX_RETRY_AFTER_SECS`)
    /// and retried up to `CIO_APP_API_ATTEMPTS` times; 404 is an unknown
    /// `person`; 401/403 name the key.
    pub fn devices(&mut self, person: &str) -> Result<Vec<CioDevice>> {
        self.profile(person)?.ok_or_else(|| Error::Invalid {
            field: "person".into(),
            reason: format!("Customer.io has no customer {person:?}"),
        })
    }

    /// `devices`, with a 404 (no such customer) as `None`.
    pub fn profile(&mut self, person: &str) -> Result<Option<Vec<CioDevice>>> {
        let query = self.id_type.map(|t| format!("?id_type={t}"));
        let url = self.endpoint.join(&format!(
            "/v1/customers/{}/attributes{}",
            encode_path(person),
            query.unwrap_or_default()
        ));
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=CIO_APP_API_ATTEMPTS {
            self.limiter.wait();
            let (status, retry_after, body) = self.get(&url)?;
            match status {
                200 => return parse_attributes(&body).map(Some),
                404 => return Ok(None),
                401 | 403 => {
                    return Err(Error::Invalid {
                        field: APP_API_KEY_ENV.into(),
                        reason: format!("the App API refused the key (HTTP {status})"),
                    })
                }
                429 | 500..=599 if attempt < CIO_APP_API_ATTEMPTS => {
                    let cap = Duration::from_secs(CIO_APP_API_MAX_RETRY_AFTER_SECS);
                    std::thread::sleep(retry_after.unwrap_or(backoff).min(cap));
                    backoff = backoff.saturating_mul(2);
                }
                _ => return Err(http_error(&url, status, &body)),
            }
        }
        Err(http_error(&url, 0, "no attempt made"))
    }

    fn get(&self, url: &str) -> Result<(u16, Option<Duration>, String)> {
        let failed = |e: String| Error::io(format!("GET {url}"), std::io::Error::other(e));
        let mut resp = self
            .agent
            .get(url)
            .header("Authorization", &self.auth)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| failed(e.to_string()))?;
        let retry_after = super::response::retry_after(&resp);
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| failed(format!("reading the answer: {e}")))?;
        Ok((status, retry_after, body))
    }
}

fn http_error(url: &str, status: u16, body: &str) -> Error {
    Error::Http {
        context: format!("audit: GET {url}"),
        status,
        body: body.chars().take(200).collect(),
    }
}

/// Percent-encodes `s` for one path segment (RFC 3986 unreserved kept).
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(t: &str, ms: u64) -> OwnDevice {
        OwnDevice {
            token: t.into(),
            last_seen_ms: ms,
        }
    }

    #[test]
    fn parses_the_devices_of_a_profile() {
        let body = r#"{"customer":{"id":"42","attributes":{"id":"42"},
            "devices":[{"id":"tok-a","platform":"ios","last_used":1700000000},
                       {"id":"tok-b","platform":"android"}]}}"#;
        let d = parse_attributes(body).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].id, "tok-a");
        assert_eq!(d[0].last_used, Some(1_700_000_000));
        assert_eq!(d[1].platform.as_deref(), Some("android"));
        assert_eq!(d[1].last_used, None);
        let none = parse_attributes(r#"{"customer":{"id":"42","attributes":{}}}"#).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn a_bad_answer_is_a_typed_error_naming_the_field() {
        match parse_attributes(r#"{"people":[]}"#) {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "customer.devices"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn matching_views_have_no_drift() {
        let cio = parse_attributes(
            r#"{"customer":{"devices":[{"id":"a","platform":"ios","last_used":1700000000}]}}"#,
        )
        .unwrap();
        assert!(compare(&[own("a", 1_700_000_000_999)], &cio, |_| None).is_empty());
    }

    #[test]
    fn each_drift_kind_is_found() {
        let cio = parse_attributes(
            r#"{"customer":{"devices":[
                {"id":"behind","platform":"ios","last_used":100},
                {"id":"gone","platform":"ios","last_used":5},
                {"id":"moved","platform":"android","last_used":5}]}}"#,
        )
        .unwrap();
        let mine = [own("behind", 101_000), own("new", 1)];
        let owner = |t: &str| (t == "moved").then(|| "p2".to_string());
        let drift = compare(&mine, &cio, owner);
        assert_eq!(
            drift,
            vec![
                Drift::LastUsedBehind {
                    token: "behind".into(),
                    cio_last_used: 100,
                    devreg_last_seen: 101
                },
                Drift::Missing {
                    token: "new".into()
                },
                Drift::Stale {
                    token: "gone".into()
                },
                Drift::WrongPerson {
                    token: "moved".into(),
                    owner: "p2".into()
                },
            ]
        );
        let mut s = DriftSummary::default();
        s.add(&drift);
        assert_eq!(
            (s.missing, s.stale, s.wrong_person, s.last_used_behind),
            (1, 1, 1, 1)
        );
        let json = serde_json::to_string(&drift[1]).unwrap();
        assert_eq!(json, r#"{"kind":"missing","token":"new"}"#);
    }

    #[test]
    fn the_limiter_spaces_requests_under_ten_per_second() {
        let mut l = RateLimiter::app_api();
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..11).map(|_| l.reserve(t0)).collect();
        assert_eq!(waits[0], Duration::ZERO);
        // The 11th request starts more than one second after the first.
        assert!(waits[10] > Duration::from_secs(1), "{:?}", waits[10]);
        // After a pause, no wait.
        assert_eq!(l.reserve(t0 + Duration::from_secs(5)), Duration::ZERO);
    }

    /// A one-connection-per-answer HTTP server on loopback: answers the
    /// canned `(status, extra headers, body)` in order, records each request.
    fn serve(
        answers: Vec<(u16, &'static str, &'static str)>,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, headers, body) in answers {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
                let r = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
                s.write_all(r.as_bytes()).unwrap();
            }
            seen
        });
        (base, h)
    }

    #[test]
    fn the_client_waits_out_429s_and_sends_the_bearer_key() {
        let ok =
            r#"{"customer":{"id":"p 1","devices":[{"id":"t","platform":"ios","last_used":7}]}}"#;
        let (base, h) = serve(vec![
            (429, "Retry-After: 0\r\n", "slow down"),
            (429, "", "slow down"),
            (200, "Content-Type: application/json\r\n", ok),
        ]);
        let mut c = AppApiClient::new(&base, "k3y").unwrap();
        let d = c.devices("p 1").unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].last_used, Some(7));
        let seen = h.join().unwrap();
        assert_eq!(seen.len(), 3);
        for r in &seen {
            assert!(r.starts_with("GET /v1/customers/p%201/attributes "), "{r}");
            assert!(
                r.to_ascii_lowercase().contains("authorization: bearer k3y"),
                "{r}"
            );
        }
    }

    #[test]
    fn an_unknown_person_and_an_empty_key_are_typed_errors() {
        let (base, h) = serve(vec![(404, "", "{}")]);
        let mut c = AppApiClient::new(&base, "k").unwrap();
        match c.devices("nobody") {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "person"),
            other => panic!("{other:?}"),
        }
        h.join().unwrap();
        match AppApiClient::new(&base, " ") {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, APP_API_KEY_ENV),
            other => panic!("{other:?}"),
        }
    }
}

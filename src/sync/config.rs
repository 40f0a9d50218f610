//! Sync worker configuration: endpoint, region, credentials, limits.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use url::{Host, Url};

use crate::error::{Error, Result};
use crate::feed::{validate_sink, DEFAULT_MAX_OPS, DEFAULT_SINK, MAX_OPS_LIMIT};
use crate::format::FormatKind;

/// Customer.io's Track API host for US workspaces.
pub const US_ENDPOINT: &str = "https://track.customer.io";
/// Customer.io's Track API host for EU workspaces.
pub const EU_ENDPOINT: &str = "https://track-eu.customer.io";
/// The path of the batch endpoint, appended to the endpoint base URL.
pub const BATCH_PATH: &str = "/api/v2/batch";
/// Customer.io's Data Pipelines host for US workspaces.
pub const PIPELINES_US_ENDPOINT: &str = "https://cdp.customer.io";
/// Customer.io's Data Pipelines host for EU workspaces.
pub const PIPELINES_EU_ENDPOINT: &str = "https://cdp-eu.customer.io";
/// The path of the Data Pipelines batch endpoint.
pub const PIPELINES_BATCH_PATH: &str = "/v1/batch";

/// The batch path of a format.
pub fn batch_path(format: FormatKind) -> &'static str {
    match format {
        FormatKind::TrackV2 => BATCH_PATH,
        FormatKind::Pipelines => PIPELINES_BATCH_PATH,
    }
}
/// Default request-rate limit (Customer.io's documented fair-use rate).
pub const DEFAULT_MAX_RPS: f64 = 100.0;

/// Longest dead-letter reason the worker builds, in bytes (the registry keeps up to 4096).
pub(crate) const MAX_REASON: usize = 1024;
/// Most bytes read from a 200/207 response body.
pub(crate) const MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// Most bytes read from an error response body (its text becomes a reason).
pub(crate) const MAX_ERROR_BODY_BYTES: u64 = 64 << 10;
/// The body bound devreg exports: under Customer.io's 500,000.
pub(crate) const MAX_BODY_BYTES: u32 = (crate::customerio::MAX_BATCH_BODY_BYTES - 1) as u32;
/// The limiter spaces request starts by this much more than `1/max_rps`,
/// so that network jitter cannot make the server see more than `max_rps`
/// requests in any second.
pub(crate) const RATE_MARGIN: f64 = 1.02;

/// A Customer.io data center.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// `https://track.customer.io`
    Us,
    /// `https://track-eu.customer.io`
    Eu,
}

impl Region {
    /// The Track API base URL of this region.
    pub fn endpoint(self) -> &'static str {
        self.endpoint_for(FormatKind::TrackV2)
    }

    /// The base URL of this region for a format: Track's `track` hosts or
    /// Data Pipelines' `cdp` hosts.
    pub fn endpoint_for(self, format: FormatKind) -> &'static str {
        match (format, self) {
            (FormatKind::TrackV2, Region::Us) => US_ENDPOINT,
            (FormatKind::TrackV2, Region::Eu) => EU_ENDPOINT,
            (FormatKind::Pipelines, Region::Us) => PIPELINES_US_ENDPOINT,
            (FormatKind::Pipelines, Region::Eu) => PIPELINES_EU_ENDPOINT,
        }
    }
}

impl FromStr for Region {
    type Err = Error;

    fn from_str(s: &str) -> Result<Region> {
        match s.to_ascii_lowercase().as_str() {
            "us" => Ok(Region::Us),
            "eu" => Ok(Region::Eu),
            _ => Err(Error::invalid("region", format!("{s:?} is not us or eu"))),
        }
    }
}

/// Customer.io credentials, sent as HTTP Basic auth: for Track, the site
/// id and the Track API key; for Data Pipelines, the source's API key as
/// the user name and an empty password. They also say which format the
/// worker sends. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct Credentials {
    site_id: String,
    api_key: String,
    format: FormatKind,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("format", &self.format.as_str())
            .field("site_id", &self.site_id)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// The environment variable holding the site id.
pub const ENV_SITE_ID: &str = "CUSTOMERIO_SITE_ID";
/// The environment variable holding the Track API key.
pub const ENV_API_KEY: &str = "CUSTOMERIO_API_KEY";
/// The environment variable holding the Data Pipelines source API key.
pub const ENV_CDP_API_KEY: &str = "CUSTOMERIO_CDP_API_KEY";

/// Checks a credential's text: not empty, at most 1024 bytes, no controls.
fn check_secret(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::invalid(field, "is empty"));
    }
    if v.len() > 1024 || v.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            field,
            "is over 1024 bytes or holds control characters",
        ));
    }
    Ok(())
}

/// An environment variable's trimmed value, or an error naming it.
fn env_var(name: &str, hint: &str) -> Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        Ok(_) => Err(Error::invalid(name, "is empty")),
        Err(std::env::VarError::NotPresent) => {
            Err(Error::invalid(name, format!("is not set ({hint})")))
        }
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::invalid(name, "is not valid UTF-8")),
    }
}

impl Credentials {
    /// Checks and wraps a site id and API key.
    ///
    /// ```
    /// let c = devreg::sync::Credentials::new("site", "s3cret").unwrap();
    /// assert!(!format!("{c:?}").contains("s3cret"));
    /// assert!(devreg::sync::Credentials::new("a:b", "k").is_err());
    /// ```
    pub fn new(site_id: impl Into<String>, api_key: impl Into<String>) -> Result<Credentials> {
        let (site_id, api_key) = (site_id.into(), api_key.into());
        check_secret("site_id", &site_id)?;
        check_secret("api_key", &api_key)?;
        if site_id.contains(':') {
            // HTTP Basic splits user and password at the first colon.
            return Err(Error::invalid("site_id", "contains ':'"));
        }
        Ok(Credentials {
            site_id,
            api_key,
            format: FormatKind::TrackV2,
        })
    }

    /// Data Pipelines credentials: the source's API key, sent as the Basic
    /// auth user name with an empty password.
    ///
    /// ```
    /// let c = devreg::sync::Credentials::pipelines("cdp-k3y").unwrap();
    /// assert_eq!(c.format(), devreg::format::FormatKind::Pipelines);
    /// assert!(!format!("{c:?}").contains("cdp-k3y"));
    /// assert!(devreg::sync::Credentials::pipelines("a:b").is_err());
    /// ```
    pub fn pipelines(api_key: impl Into<String>) -> Result<Credentials> {
        let api_key = api_key.into();
        check_secret("cdp_api_key", &api_key)?;
        if api_key.contains(':') {
            return Err(Error::invalid("cdp_api_key", "contains ':'"));
        }
        Ok(Credentials {
            site_id: String::new(),
            api_key,
            format: FormatKind::Pipelines,
        })
    }

    /// Reads `CUSTOMERIO_SITE_ID` and `CUSTOMERIO_API_KEY` from the environment.
    pub fn from_env() -> Result<Credentials> {
        let hint =
            "the Customer.io credentials come from CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY";
        Credentials::new(env_var(ENV_SITE_ID, hint)?, env_var(ENV_API_KEY, hint)?)
    }

    /// The credentials of `format` from the environment: Track's
    /// ([`from_env`](Credentials::from_env)), or `CUSTOMERIO_CDP_API_KEY`
    /// for Data Pipelines.
    pub fn from_env_for(format: FormatKind) -> Result<Credentials> {
        match format {
            FormatKind::TrackV2 => Credentials::from_env(),
            FormatKind::Pipelines => Credentials::pipelines(env_var(
                ENV_CDP_API_KEY,
                "the Data Pipelines source API key comes from CUSTOMERIO_CDP_API_KEY",
            )?),
        }
    }

    /// The format these credentials are for.
    pub fn format(&self) -> FormatKind {
        self.format
    }

    /// The site id (not secret).
    pub fn site_id(&self) -> &str {
        &self.site_id
    }

    pub(crate) fn authorization(&self) -> String {
        let raw = match self.format {
            FormatKind::TrackV2 => format!("{}:{}", self.site_id, self.api_key),
            FormatKind::Pipelines => format!("{}:", self.api_key),
        };
        format!("Basic {}", base64(raw.as_bytes()))
    }
}

pub(crate) fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How a [`SyncWorker`] talks to Customer.io.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Base URL, e.g. `https://track.customer.io`; the worker posts to
    /// `{endpoint}/api/v2/batch` (Data Pipelines: `https://cdp.customer.io`
    /// and `{endpoint}/v1/batch`). Plain `http://` is accepted for loopback
    /// hosts only (the credentials must not cross a network in clear text).
    pub endpoint: String,
    /// The feed sink to drain (created with a snapshot if missing).
    pub sink: String,
    /// Most operations per batch (1 to 1000; Customer.io recommends 100).
    pub max_ops: u32,
    /// Most requests started in any second (retries included).
    pub max_rps: f64,
    /// Whole-request timeout (connect, send, response and body).
    pub timeout: Duration,
    /// First retry waits up to this long (full jitter).
    pub backoff_base: Duration,
    /// Retries never wait longer than this (unless `Retry-After` asks for more).
    pub backoff_cap: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// Attempts per batch before the worker gives up with an error;
    /// `None` retries until stopped.
    pub max_attempts: Option<u32>,
    /// In follow mode, how often to look for new changes once drained.
    pub poll_interval: Duration,
    pub(crate) credentials: Credentials,
}

impl SyncConfig {
    /// Defaults: the US region, the default sink, 100 operations per batch,
    /// 100 requests per second, a 30 s timeout, backoff 500 ms to 30 s.
    pub fn new(credentials: Credentials) -> SyncConfig {
        SyncConfig {
            endpoint: Region::Us.endpoint_for(credentials.format).to_owned(),
            sink: DEFAULT_SINK.to_owned(),
            max_ops: DEFAULT_MAX_OPS,
            max_rps: DEFAULT_MAX_RPS,
            timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(600),
            max_attempts: None,
            poll_interval: Duration::from_millis(500),
            credentials,
        }
    }

    /// Uses a region's host (for the credentials' format).
    pub fn region(mut self, region: Region) -> Self {
        self.endpoint = region.endpoint_for(self.credentials.format).to_owned();
        self
    }

    /// The format the worker sends, from the credentials; the sink must be
    /// of this format.
    pub fn format(&self) -> FormatKind {
        self.credentials.format
    }

    /// Uses any base URL (e.g. a local emulator).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = url.into();
        self
    }

    /// Drains this sink.
    pub fn sink(mut self, sink: impl Into<String>) -> Self {
        self.sink = sink.into();
        self
    }

    /// Most operations per batch.
    pub fn max_ops(mut self, n: u32) -> Self {
        self.max_ops = n;
        self
    }

    /// Most requests per second.
    pub fn max_rps(mut self, r: f64) -> Self {
        self.max_rps = r;
        self
    }

    /// Whole-request timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Backoff base and cap.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// Attempts per batch before giving up (`None`: until stopped).
    pub fn max_attempts(mut self, n: Option<u32>) -> Self {
        self.max_attempts = n;
        self
    }

    /// Follow mode's polling interval.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The full batch URL, built from the parsed endpoint (the URL that
    /// [`validate`](SyncConfig::validate) checked is the URL requested).
    ///
    /// ```
    /// use devreg::sync::{Credentials, SyncConfig};
    /// let c = SyncConfig::new(Credentials::new("s", "k").unwrap());
    /// assert_eq!(c.endpoint("HTTP://LocalHost:8080/").batch_url().unwrap(),
    ///     "http://localhost:8080/api/v2/batch");
    /// ```
    pub fn batch_url(&self) -> Result<String> {
        Ok(Endpoint::parse(&self.endpoint)?.batch_url(batch_path(self.format())))
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate_sink(&self.sink)?;
        Endpoint::parse(&self.endpoint)?;
        if !(1..=MAX_OPS_LIMIT).contains(&self.max_ops) {
            return Err(Error::invalid(
                "max_ops",
                format!("{} is outside 1..={MAX_OPS_LIMIT}", self.max_ops),
            ));
        }
        if !(self.max_rps.is_finite() && self.max_rps >= 0.001 && self.max_rps <= 10_000.0) {
            return Err(Error::invalid(
                "max_rps",
                format!("{} is outside 0.001..=10000", self.max_rps),
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid("timeout", "is zero"));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(Error::invalid(
                "backoff",
                "the cap is shorter than the base",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::invalid("max_attempts", "is zero"));
        }
        Ok(())
    }
}

/// A checked endpoint: parsed once by the WHATWG URL parser (the `url`
/// crate), so the host that is checked is the host that is contacted.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    url: Url,
}

impl Endpoint {
    /// Parses and checks an endpoint: `https`, or plain `http` to a loopback
    /// address (127.0.0.0/8, `::1`) or exactly `localhost`; no user name or
    /// password (the credentials are sent as a header, and only by
    /// [`Credentials`]), no query, no fragment.
    pub(crate) fn parse(raw: &str) -> Result<Endpoint> {
        Endpoint::parse_as(raw, "endpoint")
    }

    /// `parse`, with errors naming `field` (e.g. `server`).
    pub(crate) fn parse_as(raw: &str, field: &str) -> Result<Endpoint> {
        let bad = |reason: String| Error::invalid(field, reason);
        if raw.contains('@') {
            // Not echoed: the text before an '@' may be a password.
            return Err(bad(
                "must not contain '@' (a user name or password in the URL is refused: \
                 the credentials come from CUSTOMERIO_SITE_ID and CUSTOMERIO_API_KEY)"
                    .into(),
            ));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!(
                "{raw:?} contains whitespace or control characters"
            )));
        }
        let url = Url::parse(raw).map_err(|e| bad(format!("{raw:?} is not a URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not contain a user name or password".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(format!("{raw:?} must not have a query or a fragment")));
        }
        let endpoint = Endpoint { url };
        match endpoint.url.scheme() {
            "https" => Ok(endpoint),
            "http" if endpoint.is_loopback() => Ok(endpoint),
            "http" => Err(bad(format!(
                "{raw:?}: plain http is only allowed to a loopback address (127.0.0.0/8, ::1) \
                 or localhost (the API key would travel in clear text)"
            ))),
            other => Err(bad(format!(
                "{raw:?} is not an http(s) URL (scheme {other:?})"
            ))),
        }
    }

    /// The HTTP agent every devreg client of this endpoint uses: statuses
    /// are answers (not errors), `timeout` for the whole call and at most
    /// `connect` to connect, no redirects, devreg's user agent, and never an
    /// environment proxy for a loopback host.
    pub(crate) fn agent(&self, timeout: Duration, connect: Duration) -> ureq::Agent {
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(connect.min(timeout)))
            .max_redirects(0)
            .user_agent(concat!("devreg/", env!("CARGO_PKG_VERSION")));
        if self.is_loopback() {
            builder = builder.proxy(None);
        }
        builder.build().into()
    }

    /// Whether the host is a loopback IP address or exactly `localhost`
    /// (the parser has already lowercased names and decoded IP addresses).
    pub(crate) fn is_loopback(&self) -> bool {
        match self.url.host() {
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            Some(Host::Domain(name)) => name == "localhost",
            None => false,
        }
    }

    /// `{endpoint}{path}`, serialised from the parsed URL (`path` starts
    /// with '/'; a trailing '/' of the endpoint is not doubled). A `?query`
    /// in `path` becomes the URL's query (`set_path` alone escaped the `?`
    /// into the path: `devreg sync --server` asked the server for
    /// `/v1/sinks/S/export%3Fmax_ops=N` and got 404).
    pub(crate) fn join(&self, path: &str) -> String {
        let mut url = self.url.clone();
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url.set_query(query);
        url.into()
    }

    /// `{endpoint}{path}` for a batch path (`/api/v2/batch`, `/v1/batch`),
    /// serialised from the parsed URL.
    pub(crate) fn batch_url(&self, batch_path: &str) -> String {
        let mut url = self.url.clone();
        let path = format!("{}{batch_path}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str) -> SyncConfig {
        let creds = Credentials::new("s", "k").unwrap_or_else(|_| unreachable!());
        SyncConfig::new(creds).endpoint(endpoint)
    }

    /// The reason an endpoint is refused, or `None` if it is accepted;
    /// every refusal must be an `Invalid` error naming the endpoint field.
    fn refusal(endpoint: &str) -> Option<String> {
        match config(endpoint).validate() {
            Ok(()) => None,
            Err(Error::Invalid { field, reason }) if field == "endpoint" => Some(reason),
            Err(other) => panic!("{endpoint}: not an endpoint error: {other:?}"),
        }
    }

    #[test]
    fn plain_http_goes_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:9/",
            "http://127.255.0.3",
            "http://[::1]:80",
            "http://localhost:1",
            "http://LOCALHOST:1/prefix/",
            "https://track.customer.io",
            "https://track-eu.customer.io/",
            "https://127.0.0.1:8443",
        ] {
            assert_eq!(refusal(ok), None, "{ok}");
        }
        for bad in [
            // Finding 10: the hand-written parser took these hosts for loopback.
            "http://127.0.0.1@192.0.2.2:18081",
            "http://127.0.0.1.attacker.example",
            "http://localhost.evil.com",
            "http://localhost@evil.com",
            "http://[::1]@evil.com",
            "http://evil.com#@127.0.0.1",
            "http://evil.com\\@127.0.0.1",
            "http://example.com",
            "http://192.0.2.2",
            "http://[::2]",
            "http://[::ffff:127.0.0.1]",
            "http://0.0.0.0:80",
            "http://localhost.:1",
            "https://user:pw@track.customer.io",
            "https://user@track.customer.io",
            "https://:pw@track.customer.io",
            "http://@localhost:1",
            "https://track.customer.io?x=1",
            "https://track.customer.io/#frag",
            "http://localhost:1?",
            "ftp://localhost",
            "file:///etc/passwd",
            "localhost:8080",
            "https://",
            "https://track.customer.io /",
            "http://local\thost:1",
            "",
        ] {
            assert!(refusal(bad).is_some(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn refusals_say_why_and_never_echo_a_password() {
        let why = refusal("https://user:hunter2@track.customer.io").unwrap_or_default();
        assert!(why.contains("user name or password"), "{why}");
        assert!(!why.contains("hunter2"), "{why}");
        let why = refusal("http://127.0.0.1.attacker.example").unwrap_or_default();
        assert!(
            why.contains("plain http") && why.contains("loopback"),
            "{why}"
        );
        let e = config("http://127.0.0.1@192.0.2.2:18081").validate();
        assert!(
            e.is_err_and(|e| e.to_string().starts_with("invalid endpoint: ")),
            "the Display names the field"
        );
    }

    #[test]
    fn the_batch_url_is_built_from_the_parsed_endpoint() {
        let url = |e: &str| config(e).batch_url().ok();
        assert_eq!(
            url("https://track.customer.io").as_deref(),
            Some("https://track.customer.io/api/v2/batch")
        );
        assert_eq!(
            url("HTTP://LocalHost:8080/base/").as_deref(),
            Some("http://localhost:8080/base/api/v2/batch")
        );
        // IPv4 in other notations is decoded, checked and sent as decoded.
        assert_eq!(
            url("http://0x7f.1:9").as_deref(),
            Some("http://127.0.0.1:9/api/v2/batch")
        );
        assert_eq!(url("http://127.0.0.1@192.0.2.2:18081"), None);
        let cdp = SyncConfig::new(Credentials::pipelines("k").unwrap_or_else(|_| unreachable!()));
        assert_eq!(
            cdp.batch_url().ok().as_deref(),
            Some("https://cdp.customer.io/v1/batch")
        );
        assert_eq!(
            cdp.region(Region::Eu).batch_url().ok().as_deref(),
            Some("https://cdp-eu.customer.io/v1/batch")
        );
        let loopback = |e: &str| Endpoint::parse(e).is_ok_and(|e| e.is_loopback());
        assert!(loopback("http://[::1]:80") && loopback("https://localhost"));
        assert!(!loopback("https://track.customer.io"));
    }
}

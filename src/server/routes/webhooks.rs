//! `POST /v1/webhooks/customerio`: Customer.io reporting webhooks for push
//! messages, turned into delivery feedback (DESIGN.md 20.7). No bearer
//! token (Customer.io cannot send one): the request is authenticated by its
//! signature, `X-CIO-Signature` = hex HMAC-SHA256 of `v0:<X-CIO-Timestamp>:
//! <raw body>` with the webhook's signing key, and a timestamp within
//! `CIO_WEBHOOK_MAX_SKEW_SECS` of the server's clock. Each event is applied
//! once: its `event_id` is remembered (`CIO_WEBHOOK_SEEN_IDS`, oldest
//! forgotten first) and a redelivery is answered as a duplicate.

use std::collections::{HashSet, VecDeque};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::limits::{CIO_WEBHOOK_MAX_SKEW_SECS, CIO_WEBHOOK_SEEN_IDS, MAX_CIO_EVENT_ID_BYTES};
use crate::model::{FeedbackOutcome, Op, Outcome};
use crate::server::app::AppState;
use crate::server::errors::ApiError;
use crate::server::routes::events::read_body;

/// The signing key and the event ids already applied.
pub(crate) struct CioWebhook {
    key: Vec<u8>,
    seen: Mutex<SeenIds>,
}

/// A bounded set of ids, forgetting the oldest.
#[derive(Default)]
struct SeenIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl SeenIds {
    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
        }
        while self.order.len() > CIO_WEBHOOK_SEEN_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

impl CioWebhook {
    pub(crate) fn new(key: &str) -> CioWebhook {
        CioWebhook {
            key: key.as_bytes().to_vec(),
            seen: Mutex::new(SeenIds::default()),
        }
    }
}

fn new_mac(key: &[u8]) -> Result<Hmac<Sha256>, ApiError> {
    // HMAC takes a key of any length: this error is not expected.
    Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| ApiError::unavailable(format!("webhook signing key: {e}")))
}

/// Lowercase or uppercase hex to bytes; `None` if it is not hex.
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// Checks the timestamp's age and the signature (constant time).
fn verify(key: &[u8], headers: &HeaderMap, body: &[u8], now_s: u64) -> Result<(), ApiError> {
    let header = |name: &str| -> Result<&str, ApiError> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized(name, "is missing"))
    };
    let timestamp = header("x-cio-timestamp")?;
    let signature = header("x-cio-signature")?;
    let ts: u64 = timestamp
        .parse()
        .map_err(|_| unauthorized("x-cio-timestamp", "is not Unix seconds"))?;
    if ts.abs_diff(now_s) > CIO_WEBHOOK_MAX_SKEW_SECS {
        return Err(unauthorized(
            "x-cio-timestamp",
            &format!(
                "{ts} is more than {CIO_WEBHOOK_MAX_SKEW_SECS} s from the server's clock ({now_s}): stale"
            ),
        ));
    }
    let given = from_hex(signature).ok_or_else(|| unauthorized("x-cio-signature", "is not hex"))?;
    let mut mac = new_mac(key)?;
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| unauthorized("x-cio-signature", "does not match the body"))
}

fn unauthorized(field: &str, why: &str) -> ApiError {
    ApiError::unauthorized_field(field, format!("invalid {field}: {why}"))
}

/// One reporting-webhook event, as far as push feedback needs it.
#[derive(Deserialize)]
struct Event {
    event_id: String,
    #[serde(default)]
    object_type: String,
    metric: String,
    /// Unix seconds.
    timestamp: u64,
    #[serde(default)]
    data: EventData,
}

#[derive(Deserialize, Default)]
struct EventData {
    #[serde(default)]
    recipients: Vec<Recipient>,
    #[serde(default)]
    failure_message: Option<String>,
}

#[derive(Deserialize)]
struct Recipient {
    device_id: String,
}

/// What the endpoint did with one event.
#[derive(Serialize, Debug, Default)]
pub(crate) struct WebhookAnswer {
    event_id: String,
    /// Already applied (a redelivery): nothing was done.
    duplicate: bool,
    /// Not a push delivery outcome (another channel, `sent`, `opened`...).
    ignored: bool,
    /// Feedback applied (one per device of the event).
    applied: u64,
    /// Feedback that changed nothing (older than what devreg knows).
    skipped: u64,
    /// Devices devreg does not know.
    unknown: u64,
}

/// The feedback a push metric means; `None` for metrics that say nothing
/// about delivery. `bounced` is the provider refusing the token (e.g.
/// APNs `BadDeviceToken`); `failed` and `undeliverable` may pass.
fn outcome_of(metric: &str) -> Option<FeedbackOutcome> {
    match metric {
        "delivered" => Some(FeedbackOutcome::Delivered),
        "bounced" => Some(FeedbackOutcome::HardFailure),
        "failed" | "undeliverable" => Some(FeedbackOutcome::SoftFailure),
        _ => None,
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) async fn customerio(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<WebhookAnswer>, ApiError> {
    let Some(hook) = st.cio_webhook.clone() else {
        return Err(ApiError::not_found(
            None,
            "no Customer.io webhook signing key is configured (CUSTOMERIO_WEBHOOK_SIGNING_KEY)",
        ));
    };
    let bytes = read_body(&headers, body).await?;
    verify(&hook.key, &headers, &bytes, now_s())?;
    let event: Event = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("not a reporting webhook event: {e}")))?;
    if event.event_id.is_empty() || event.event_id.len() > MAX_CIO_EVENT_ID_BYTES {
        return Err(ApiError::invalid(
            "event_id",
            format!("must be 1 to {MAX_CIO_EVENT_ID_BYTES} bytes"),
        ));
    }
    let mut answer = WebhookAnswer {
        event_id: event.event_id.clone(),
        ..WebhookAnswer::default()
    };
    if hook.seen.lock().set.contains(&event.event_id) {
        answer.duplicate = true;
        return Ok(Json(answer));
    }
    let ops = feedback_ops(&event);
    if ops.is_empty() {
        answer.ignored = true;
        hook.seen.lock().insert(&event.event_id);
        return Ok(Json(answer));
    }
    let outcomes = st.engine(move |st| Ok(st.reg.apply_batch(ops)?)).await?;
    for o in outcomes {
        match o {
            Outcome::Applied { .. } => answer.applied += 1,
            Outcome::NotFound => answer.unknown += 1,
            _ => answer.skipped += 1,
        }
    }
    // Remembered only once applied: a failed apply is retried by Customer.io.
    hook.seen.lock().insert(&event.event_id);
    Ok(Json(answer))
}

/// One feedback per recipient device of a push event with a delivery
/// outcome; none for anything else.
fn feedback_ops(event: &Event) -> Vec<Op> {
    let outcome = match (event.object_type.as_str(), outcome_of(&event.metric)) {
        ("push", Some(o)) => o,
        _ => return Vec::new(),
    };
    let reason = event.data.failure_message.as_ref().map(|m| {
        let mut end = m.len().min(crate::limits::MAX_FEEDBACK_REASON_BYTES);
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.get(..end).unwrap_or_default().to_owned()
    });
    event
        .data
        .recipients
        .iter()
        .filter(|r| crate::model::validate_token("token", &r.device_id).is_ok())
        .map(|r| Op::Feedback {
            token: r.device_id.clone(),
            outcome,
            at_ms: event.timestamp.saturating_mul(1000),
            reason: reason.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_forget_the_oldest_beyond_the_bound() {
        let mut s = SeenIds::default();
        for i in 0..CIO_WEBHOOK_SEEN_IDS + 2 {
            s.insert(&i.to_string());
        }
        assert_eq!(s.set.len(), CIO_WEBHOOK_SEEN_IDS);
        assert!(!s.set.contains("0") && !s.set.contains("1"));
        assert!(s.set.contains("2"));
    }

    #[test]
    fn hex_and_metrics() {
        assert_eq!(from_hex("0aFF"), Some(vec![10, 255]));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(outcome_of("bounced"), Some(FeedbackOutcome::HardFailure));
        assert_eq!(outcome_of("opened"), None);
    }
}

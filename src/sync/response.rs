//! Reading Customer.io's answers: the 207 body, reasons kept short.

use serde_json::Value;

use super::config::MAX_REASON;
use crate::error::{Error, Result};

/// The `Retry-After` of an answer, in whole seconds (an HTTP date or a
/// missing header: None).
pub(crate) fn retry_after<B>(resp: &ureq::http::Response<B>) -> Option<std::time::Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs)
}

/// The text on one line, at most `max` bytes.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned();
    truncate(&mut out, max);
    out
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Parses a 207 body, `{"errors":[{"batch_index":N,"reason":..,"field":..,"message":..}]}`,
/// into `(batch_index, reason)` pairs in the order given. `reason`,
/// `field` and `message` are optional and folded into one reason string.
/// Indices are not checked against any batch (the caller ignores those
/// outside it); an index above `u32::MAX` becomes `u32::MAX`. A body that
/// is not JSON, lacks the `errors` array, or has an entry without a
/// non-negative integer `batch_index` is an `Error::Invalid`. Never panics.
///
/// ```
/// let body = r#"{"errors":[{"batch_index":1,"reason":"invalid","field":"device.token","message":"too long"}]}"#;
/// let failed = devreg::sync::parse_partial_failure(body).unwrap();
/// assert_eq!(failed, vec![(1, "invalid (field device.token): too long".to_string())]);
/// assert!(devreg::sync::parse_partial_failure("{").is_err());
/// ```
pub fn parse_partial_failure(body: &str) -> Result<Vec<(u32, String)>> {
    let bad = |why: String| Error::invalid("207 response body", why);
    let v: Value = serde_json::from_str(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let errors = v
        .get("errors")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"errors\" array".into()))?;
    let mut out = Vec::with_capacity(errors.len());
    for (n, entry) in errors.iter().enumerate() {
        let obj = entry
            .as_object()
            .ok_or_else(|| bad(format!("errors[{n}] is not an object")))?;
        let index = obj
            .get("batch_index")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                bad(format!(
                    "errors[{n}] has no non-negative integer batch_index"
                ))
            })?;
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let text = |key: &str| -> Option<String> {
            match obj.get(key)? {
                Value::Null => None,
                Value::String(s) if s.trim().is_empty() => None,
                Value::String(s) => Some(one_line(s, MAX_REASON)),
                other => Some(one_line(&other.to_string(), MAX_REASON)),
            }
        };
        let mut reason = text("reason").unwrap_or_else(|| "rejected".to_owned());
        if let Some(field) = text("field") {
            reason.push_str(&format!(" (field {field})"));
        }
        if let Some(message) = text("message") {
            reason.push_str(": ");
            reason.push_str(&message);
        }
        truncate(&mut reason, MAX_REASON);
        out.push((index, reason));
    }
    Ok(out)
}

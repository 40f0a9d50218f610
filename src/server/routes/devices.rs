//! Device reads: one device, the dump in pages, a person's devices and
//! most recent one, the active count, the counters.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::json::{self, StatsJson};
use crate::server::app::AppState;
use crate::server::errors::ApiError;
use crate::server::query::{Params, RawQuery, Segments};

/// `GET /v1/devices/{token}`: the device as `devreg get` prints it; 404.
pub(crate) async fn get_device(
    State(st): State<AppState>,
    Segments(token): Segments<String>,
) -> Result<Response, ApiError> {
    let answer = |found: Option<crate::model::Device>, token: &str| match found {
        Some(d) => Ok(Json(json::device_json(&d)).into_response()),
        None => Err(ApiError::not_found(
            Some("token"),
            format!("no device with token {token:?}"),
        )),
    };
    // An in-memory lookup: answered here unless a write holds the state
    // this moment, and then on the blocking pool (never waiting here).
    if let Some(found) = st.reg.try_device(&token) {
        return answer(found, &token);
    }
    st.engine(move |st| answer(st.reg.device(&token), &token))
        .await
}

/// `GET /v1/devices?cursor=&limit=`: devices in dump order (by token) as
/// dump lines, `{"devices":[..],"next_cursor":C|null}`. The cursor is
/// opaque to clients (the hex of the last token returned).
pub(crate) async fn list(State(st): State<AppState>, q: RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(q, &["cursor", "limit"])?;
    let limit = params.limit()?;
    let after = params.text("cursor").map(decode_cursor).transpose()?;
    st.engine(move |st| {
        // One more than asked tells whether a next page exists.
        let mut page = st.reg.dump_page(after.as_deref(), limit + 1);
        let more = page.len() > limit;
        page.truncate(limit);
        let next_cursor = match more {
            true => page.last().map(|d| encode_cursor(&d.token)),
            false => None,
        };
        let devices = page.iter().map(json::dump_line).collect();
        Ok(Json(DevicesPage {
            devices,
            next_cursor,
        })
        .into_response())
    })
    .await
}

/// A page of `GET /v1/devices`.
#[derive(Serialize)]
struct DevicesPage<'a> {
    devices: Vec<json::DumpLine<'a>>,
    next_cursor: Option<String>,
}

fn encode_cursor(token: &str) -> String {
    token.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(c: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid("cursor", "is not a cursor this server gave out");
    if !c.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..c.len())
        .step_by(2)
        .map(|i| c.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map_err(|_| bad())
}

/// `GET /v1/people/{id}/devices`: most recently seen first, as `devreg person`.
pub(crate) async fn person_devices(
    State(st): State<AppState>,
    Segments(id): Segments<String>,
) -> Result<Response, ApiError> {
    st.engine(move |st| {
        let devices = st.reg.devices_of_deliverability(&id);
        let list: Vec<_> = devices.iter().map(json::person_device).collect();
        Ok(Json(list).into_response())
    })
    .await
}

/// `GET /v1/people/{id}/most-recent?platform=&deliverable=`: as `devreg
/// most-recent [--deliverable]`; 404.
pub(crate) async fn most_recent(
    State(st): State<AppState>,
    Segments(id): Segments<String>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::new(q, &["platform", "deliverable"])?;
    let platform = params.platform()?;
    let deliverable = params.flag("deliverable")?;
    st.engine(move |st| {
        let found = match deliverable {
            true => st.reg.most_recent_deliverable(&id, platform),
            false => st.reg.most_recent(&id, platform),
        };
        match found {
            Some(d) => Ok(Json(json::device_json(&d)).into_response()),
            None => Err(ApiError::not_found(
                Some("id"),
                json::no_most_recent(&id, platform, deliverable),
            )),
        }
    })
    .await
}

/// `GET /v1/active?since_ms=&platform=`: `{"count":N}`.
pub(crate) async fn active(State(st): State<AppState>, q: RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(q, &["since_ms", "platform"])?;
    let since_ms = params.required_u64("since_ms")?;
    let platform = params.platform()?;
    st.engine(move |st| {
        let count = st.reg.active_since(since_ms, platform);
        Ok(Json(serde_json::json!({ "count": count })).into_response())
    })
    .await
}

/// `GET /v1/stats`: as `devreg stats`.
pub(crate) async fn stats(State(st): State<AppState>) -> Result<Response, ApiError> {
    st.engine(|st| {
        let stats = StatsJson {
            stats: st.reg.stats(),
            sinks: st.reg.sinks(),
        };
        Ok(Json(stats).into_response())
    })
    .await
}

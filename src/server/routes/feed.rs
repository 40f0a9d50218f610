//! The sync feed over HTTP: export, ack, nack, sinks, dead letters,
//! requeue. Batch bodies and dead-letter operations are embedded verbatim,
//! byte for byte what is sent to Customer.io (as `devreg export` prints).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::events::read_body;
use super::raw_json;
use crate::customerio::MAX_BATCH_BODY_BYTES;
use crate::feed::{validate_sink, DEFAULT_MAX_OPS, DEFAULT_SINK, MAX_OPS_LIMIT};
use crate::format::{FormatKind, IdentifierKind, SinkSettings};
use crate::json::{ack_line, batch_line, dead_letters_line, sink_added};
use crate::server::app::AppState;
use crate::server::errors::ApiError;
use crate::server::query::{Params, RawQuery, Segments};

/// The largest body an export asks for: under Customer.io's limit.
const MAX_EXPORT_BODY_BYTES: u32 = (MAX_BATCH_BODY_BYTES - 1) as u32;

/// 404 unless the sink exists (export creates sinks; nothing else does).
fn require_sink(st: &AppState, sink: &str) -> Result<(), ApiError> {
    validate_sink(sink)?;
    match st.reg.sinks().iter().any(|s| s.name == sink) {
        true => Ok(()),
        false => Err(ApiError::not_found(
            Some("sink"),
            format!("no sink named {sink:?} (its first export creates it)"),
        )),
    }
}

/// As `require_sink`, but the default sink before its first export is
/// there (empty), as in the CLI.
fn require_named_sink(st: &AppState, sink: &str) -> Result<(), ApiError> {
    match sink == DEFAULT_SINK {
        true => Ok(()),
        false => require_sink(st, sink),
    }
}

/// `POST /v1/sinks/{sink}/export?max_ops=`: 200 `{"batch_id","body"}`, or
/// 204 when nothing is pending. An unknown sink is created (starting with
/// a snapshot of every identified device); the same batch is answered
/// until it is acknowledged.
pub(crate) async fn export(
    State(st): State<AppState>,
    Segments(sink): Segments<String>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::new(q, &["max_ops"])?;
    let max_ops = params.u64("max_ops")?.unwrap_or(u64::from(DEFAULT_MAX_OPS));
    let max_ops = u32::try_from(max_ops)
        .ok()
        .filter(|n| (1..=MAX_OPS_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(
                "max_ops",
                format!("{max_ops} is outside 1..={MAX_OPS_LIMIT}"),
            )
        })?;
    st.engine(move |st| {
        validate_sink(&sink)?;
        if !st.reg.sinks().iter().any(|s| s.name == sink) {
            st.reg.add_sink(&sink)?;
        }
        match st.reg.export(&sink, max_ops, MAX_EXPORT_BODY_BYTES)? {
            Some(batch) => Ok(raw_json(batch_line(batch.id(), batch.body()))),
            None => Ok(StatusCode::NO_CONTENT.into_response()),
        }
    })
    .await
}

/// `POST /v1/sinks/{sink}/ack/{batch_id}`: `{"acked","failed","already_acked"}`.
pub(crate) async fn ack(
    State(st): State<AppState>,
    Segments((sink, batch_id)): Segments<(String, String)>,
) -> Result<Response, ApiError> {
    st.engine(move |st| acknowledge(st, &sink, &batch_id, &[]))
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NackBody {
    failed: Vec<Failed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Failed {
    index: u32,
    reason: String,
}

/// `POST /v1/sinks/{sink}/nack/{batch_id}` with `{"failed":[{"index","reason"}]}`.
pub(crate) async fn nack(
    State(st): State<AppState>,
    Segments((sink, batch_id)): Segments<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body).await?;
    let parsed: NackBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(
            "body",
            format!("is not {{\"failed\":[{{\"index\",\"reason\"}}]}}: {e}"),
        )
    })?;
    let mut seen = std::collections::BTreeSet::new();
    if let Some(f) = parsed.failed.iter().find(|f| !seen.insert(f.index)) {
        return Err(ApiError::invalid(
            "failed",
            format!("lists index {} twice", f.index),
        ));
    }
    if parsed.failed.is_empty() {
        return Err(ApiError::invalid("failed", "is empty (use ack)"));
    }
    let failed: Vec<(u32, String)> = parsed
        .failed
        .into_iter()
        .map(|f| (f.index, f.reason))
        .collect();
    st.engine(move |st| acknowledge(st, &sink, &batch_id, &failed))
        .await
}

fn acknowledge(
    st: &AppState,
    sink: &str,
    batch_id: &str,
    failed: &[(u32, String)],
) -> Result<Response, ApiError> {
    require_sink(st, sink)?;
    let outcome = st
        .reg
        .acknowledge(sink, batch_id, failed)
        .map_err(|e| match e {
            crate::Error::Invalid { field, reason } if field == "batch_id" => {
                ApiError::conflict(Some("batch_id"), format!("invalid batch_id: {reason}"))
            }
            other => other.into(),
        })?;
    let already = outcome.already_acked();
    Ok(raw_json(ack_line(batch_id, failed.len(), already)))
}

/// `GET /v1/sinks`: every sink's position, as `devreg sinks`.
pub(crate) async fn sinks(State(st): State<AppState>) -> Result<Response, ApiError> {
    st.engine(|st| Ok(Json(st.reg.sinks()).into_response()))
        .await
}

/// `POST /v1/sinks/{sink}?format=&identifier=&diagnostics=`: adds a sink of
/// a format (required) and identifier kind (default `id`), as `devreg
/// sinks add`: 200 `{"added","diagnostics","format","identifier","pending","sink"}`;
/// an existing sink with other settings is a 400 naming `sink`.
pub(crate) async fn add_sink(
    State(st): State<AppState>,
    Segments(sink): Segments<String>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::new(q, &["format", "identifier", "diagnostics"])?;
    let format: FormatKind = params
        .text("format")
        .ok_or_else(|| ApiError::invalid("sink.format", "is required"))?
        .parse()?;
    let identifier: IdentifierKind = params.text("identifier").unwrap_or("id").parse()?;
    let diagnostics = params.flag("diagnostics")?;
    let settings = SinkSettings::new(format, identifier)?.with_diagnostics(diagnostics);
    st.engine(move |st| {
        let added = st.reg.add_sink_with(&sink, settings)?;
        let sinks = st.reg.sinks();
        let pending = sinks
            .iter()
            .find(|s| s.name == sink)
            .map_or(0, |s| s.pending);
        Ok(Json(sink_added(&sink, added, &settings, pending)).into_response())
    })
    .await
}

/// `GET /v1/sinks/{sink}/dead-letters`: oldest first, as `devreg dead-letters`.
pub(crate) async fn dead_letters(
    State(st): State<AppState>,
    Segments(sink): Segments<String>,
) -> Result<Response, ApiError> {
    st.engine(move |st| {
        require_named_sink(st, &sink)?;
        let out = dead_letters_line(&st.reg.dead_letters(&sink)?);
        Ok(raw_json(out))
    })
    .await
}

/// `POST /v1/sinks/{sink}/requeue`: `{"requeued":N}`.
pub(crate) async fn requeue(
    State(st): State<AppState>,
    Segments(sink): Segments<String>,
) -> Result<Response, ApiError> {
    st.engine(move |st| {
        require_named_sink(st, &sink)?;
        let n = st.reg.requeue(&sink)?;
        Ok(Json(serde_json::json!({ "requeued": n })).into_response())
    })
    .await
}

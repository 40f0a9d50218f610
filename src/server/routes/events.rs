//! `POST /v1/events`: NDJSON, or a JSON array of the same event objects
//! `devreg import` reads (parsed by `import::parse_line`). One request is
//! one atomic `apply_batch` of its valid events; rejected events are
//! reported by index and not applied.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::Durability;
use crate::import::{parse_line, LineError};
use crate::limits::{
    MAX_IMPORT_LINE_BYTES, MAX_SERVER_BODY_BYTES, MAX_SERVER_EVENTS_PER_REQUEST,
    SERVER_INLINE_PARSE_BYTES,
};
use crate::model::Op;
use crate::server::app::AppState;
use crate::server::errors::ApiError;
use crate::server::query::{Params, RawQuery};

/// The answer: what was applied, what changed nothing, what was refused.
#[derive(Serialize, Debug, Default)]
pub(crate) struct EventsAnswer {
    applied: u64,
    skipped: u64,
    rejected: Vec<Rejected>,
}

/// One refused event: its 0-based index (the element of an array, the
/// line of NDJSON counting blank lines) and why.
#[derive(Serialize, Debug)]
struct Rejected {
    index: usize,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

pub(crate) async fn post_events(
    State(st): State<AppState>,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EventsAnswer>, ApiError> {
    let params = Params::new(query, &["durability"])?;
    let want = match params.text("durability") {
        None => None,
        Some("immediate") => Some(Durability::Immediate),
        Some("eventual") => Some(Durability::Eventual),
        Some(other) => {
            return Err(ApiError::invalid(
                "durability",
                format!("{other:?} is neither immediate nor eventual"),
            ))
        }
    };
    let bytes = read_body(&headers, body).await?;
    let permit = st.engine_permit()?;
    // Parsing is CPU only: a small body is parsed here, a large one on the
    // blocking pool (it may take milliseconds).
    let parsed = if bytes.len() <= SERVER_INLINE_PARSE_BYTES {
        parse(&st, &bytes)
    } else {
        st.blocking(move |st| parse(st, &bytes)).await?
    };
    let (mut answer, ops) = parsed?;
    let kinds: Vec<&'static str> = ops.iter().map(op_kind).collect();
    // No thread waits for the commit: the writer thread answers the
    // oneshot once the batch is as durable as asked.
    let (tx, rx) = tokio::sync::oneshot::channel();
    st.reg.apply_batch_then(ops, want, move |r| {
        let _ = tx.send(r);
    });
    let outcomes = rx.await.map_err(|_| {
        ApiError::unavailable("the write was dropped unanswered (the writer stopped)".to_owned())
    })??;
    drop(permit);
    for (kind, outcome) in kinds.into_iter().zip(outcomes) {
        if outcome.is_applied() {
            answer.applied += 1;
            st.metrics.op(kind, "applied");
        } else {
            answer.skipped += 1;
            st.metrics.op(kind, "skipped");
        }
    }
    Ok(Json(answer))
}

/// The body, at most `MAX_SERVER_BODY_BYTES` (413 beyond, naming `body`).
pub(crate) async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::too_large(
            "body",
            format!("is over the limit of {MAX_SERVER_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_SERVER_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, MAX_SERVER_BODY_BYTES).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        // Past the limit, or the client went away mid-body: either way
        // nothing is applied.
        Err(_) => Err(too_large()),
    }
}

/// Parses, applies the valid events as one batch, counts.
/// The body's events as operations, with the rejected ones already in
/// the answer; a body over a limit is an error naming it.
fn parse(st: &AppState, body: &[u8]) -> Result<(EventsAnswer, Vec<Op>), ApiError> {
    let events = split(body)?;
    if events.len() > MAX_SERVER_EVENTS_PER_REQUEST {
        return Err(ApiError::too_large(
            "body",
            format!(
                "holds {} events, the limit is {MAX_SERVER_EVENTS_PER_REQUEST}",
                events.len()
            ),
        ));
    }
    let mut answer = EventsAnswer::default();
    let mut ops = Vec::with_capacity(events.len());
    for (index, bytes) in events {
        match parse_event(bytes) {
            Ok(op) => ops.push(op),
            Err(e) => {
                st.metrics.op("unknown", "rejected");
                answer.rejected.push(rejection(index, e));
            }
        }
    }
    let bytes: usize = ops.iter().map(Op::encoded_len).sum();
    if bytes > st.reg.max_batch_bytes() {
        return Err(ApiError::too_large(
            "body",
            format!(
                "its events encode to {bytes} bytes, over one batch's limit of {}",
                st.reg.max_batch_bytes()
            ),
        ));
    }
    Ok((answer, ops))
}

/// The events with their indices: a JSON array's elements, or NDJSON's
/// non-blank lines. A body that starts with `[` and is not a JSON array is
/// a 400 naming `body`.
fn split(body: &[u8]) -> Result<Vec<(usize, &[u8])>, ApiError> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if start.is_some_and(|i| body[i] == b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid("body", format!("is not a JSON array of events: {e}"))
        })?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i, v.get().as_bytes()))
            .collect());
    }
    Ok(body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect())
}

fn parse_event(bytes: &[u8]) -> Result<Op, LineError> {
    if bytes.len() > MAX_IMPORT_LINE_BYTES {
        return Err(LineError::Invalid {
            field: "event".into(),
            reason: format!(
                "is {} bytes, over the limit of {MAX_IMPORT_LINE_BYTES}",
                bytes.len()
            ),
        });
    }
    parse_line(bytes)
}

fn rejection(index: usize, e: LineError) -> Rejected {
    let field = match &e {
        LineError::Invalid { field, .. } => Some(field.clone()),
        LineError::DuplicateKey { key, .. } => Some(key.clone()),
        _ => None,
    };
    Rejected {
        index,
        reason: e.to_string(),
        field,
    }
}

/// The metric label of an operation.
fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Register(_) => "register",
        Op::Touch { .. } => "touch",
        Op::Rotate { .. } => "rotate",
        Op::Logout { .. } => "logout",
        Op::Merge { .. } => "merge",
        Op::Remove { .. } => "remove",
        Op::Invalidate { .. } => "invalidate",
        Op::Prune { .. } => "prune",
        Op::Feedback { .. } => "feedback",
    }
}

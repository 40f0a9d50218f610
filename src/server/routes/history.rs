//! Ownership history: a token's history, its owner at a time, and the
//! changes of every token since a time (pages), as the CLI prints them.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::history::{HistoryCursor, HistoryTime};
use crate::server::app::AppState;
use crate::server::errors::ApiError;
use crate::server::query::{Params, RawQuery, Segments};

/// `GET /v1/history/{token}`: newest first, as `devreg history`.
pub(crate) async fn history(
    State(st): State<AppState>,
    Segments(token): Segments<String>,
) -> Result<Response, ApiError> {
    st.engine(move |st| Ok(Json(st.reg.history(&token)?).into_response()))
        .await
}

/// `GET /v1/owner-at/{token}?at_ms=&by=commit|event`: as `devreg owner-at`.
pub(crate) async fn owner_at(
    State(st): State<AppState>,
    Segments(token): Segments<String>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::new(q, &["at_ms", "by"])?;
    let at_ms = params.required_u64("at_ms")?;
    let (by, time) = match params.text("by").unwrap_or("commit") {
        "commit" => ("commit", HistoryTime::Commit),
        "event" => ("event", HistoryTime::Event),
        other => {
            return Err(ApiError::invalid(
                "by",
                format!("{other:?} is neither commit nor event"),
            ))
        }
    };
    st.engine(move |st| {
        let owner = st.reg.owner_at_by(&token, at_ms, time)?;
        let answer = serde_json::json!({
            "token": token, "at_ms": at_ms, "by": by, "owner": owner,
        });
        Ok(Json(answer).into_response())
    })
    .await
}

/// `GET /v1/changes?since_ms=&cursor=&limit=`: oldest first, as `devreg
/// changes` (pass the answer's `cursor` back to continue).
pub(crate) async fn changes(State(st): State<AppState>, q: RawQuery) -> Result<Response, ApiError> {
    let params = Params::new(q, &["since_ms", "cursor", "limit"])?;
    let since_ms = params.required_u64("since_ms")?;
    let limit = params.limit()?;
    let cursor = params
        .text("cursor")
        .map(|c| c.parse::<HistoryCursor>())
        .transpose()
        .map_err(|e| ApiError::invalid("cursor", e))?;
    st.engine(move |st| {
        let page = st.reg.changes_since(since_ms, cursor, limit)?;
        Ok(Json(page).into_response())
    })
    .await
}

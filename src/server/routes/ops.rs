//! Operations: backup into the configured directory, the liveness and
//! readiness probes, the metrics, and the answer for unknown routes.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::server::app::AppState;
use crate::server::errors::ApiError;

/// `GET /healthz`: the process answers.
pub(crate) async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: 200 while the registry takes writes; 503 once it
/// stopped after a failed write (reopen needed).
pub(crate) async fn readyz(State(st): State<AppState>) -> Response {
    match st.reg.failure() {
        None => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Some(why) => ApiError::unavailable(format!("registry stopped: {why}")).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    st.engine(|st| {
        let text = st
            .metrics
            .render(&st.reg)
            .map_err(|e| ApiError::unavailable(format!("encoding metrics: {e}")))?;
        let mut response = text.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        Ok(response)
    })
    .await
}

/// `POST /v1/backup`: a consistent copy (`Registry::backup`) into a new
/// subdirectory of `--backup-dir` named by the time (`backup-<unix ms>`);
/// answers the report as `devreg backup` prints it (its `dest` is the
/// new directory); 409 when no directory is configured.
pub(crate) async fn backup(State(st): State<AppState>) -> Result<Response, ApiError> {
    let Some(dir) = st.backup_dir.clone() else {
        return Err(ApiError::conflict(
            Some("backup_dir"),
            "backups are off: start the server with --backup-dir DIR",
        ));
    };
    st.engine(move |st| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut path = dir.join(format!("backup-{ms}"));
        for n in 1.. {
            if !path.exists() {
                break;
            }
            path = dir.join(format!("backup-{ms}-{n}"));
        }
        let report = st.reg.backup(&path)?;
        Ok(Json(report).into_response())
    })
    .await
}

/// Any other path: 404 in the error shape.
pub(crate) async fn no_route() -> Response {
    let answer = ApiError::not_found(Some("path"), "no such endpoint (see README, Server)");
    (StatusCode::NOT_FOUND, answer).into_response()
}

/// A known path with another method: 405 in the error shape.
pub(crate) async fn wrong_method() -> Response {
    let body = serde_json::json!({"error": {
        "code": "method_not_allowed",
        "message": "this endpoint does not take this method (see README, Server)",
    }});
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

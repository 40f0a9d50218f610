//! The server's error answers: `{"error":{"code","message","field"?}}`
//! with the fitting status, and how engine errors map onto them.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::Error;
use crate::limits::SERVER_RETRY_AFTER_SECONDS;

/// One error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, field: Option<&str>, msg: String) -> Self {
        ApiError {
            status,
            code,
            message: msg,
            field: field.map(str::to_owned),
        }
    }

    /// 400: a request value broke a rule; `field` names it.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = format!("invalid {field}: {}", message.into());
        Self::new(StatusCode::BAD_REQUEST, "invalid", Some(field), message)
    }

    /// 401: no bearer token, or the wrong one.
    pub fn unauthorized() -> Self {
        let msg = "missing or wrong bearer token (Authorization: Bearer $DEVREG_API_TOKEN)";
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some("authorization"),
            msg.into(),
        )
    }

    /// 401 naming the header that failed authentication (a webhook's
    /// signature or timestamp).
    pub fn unauthorized_field(field: &str, message: String) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            Some(field),
            message,
        )
    }

    /// 404: nothing there; `field` names what was looked up.
    pub fn not_found(field: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", field, message.into())
    }

    /// 409: the request conflicts with the registry's state.
    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", field, message.into())
    }

    /// 413: over a size limit; `field` names what was too large.
    pub fn too_large(field: &str, message: impl Into<String>) -> Self {
        let status = StatusCode::PAYLOAD_TOO_LARGE;
        Self::new(status, "too_large", Some(field), message.into())
    }

    /// 429: too many engine calls at once; retry after a pause.
    pub fn busy() -> Self {
        let msg = format!(
            "too many requests in progress (limit {}); retry later",
            crate::limits::MAX_SERVER_ENGINE_CALLS
        );
        Self::new(StatusCode::TOO_MANY_REQUESTS, "busy", None, msg)
    }

    /// 503: the registry cannot serve (stopped after a failed write,
    /// closed, an I/O error).
    pub fn unavailable(message: impl Into<String>) -> Self {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        Self::new(status, "unavailable", None, message.into())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Invalid { field, .. } => {
                let status = StatusCode::BAD_REQUEST;
                ApiError::new(status, "invalid", Some(&field), message)
            }
            Error::ReadOnly { .. } => ApiError::conflict(None, message),
            Error::BackupDestination { .. } => ApiError::conflict(Some("backup"), message),
            _ => ApiError::unavailable(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(SERVER_RETRY_AFTER_SECONDS),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

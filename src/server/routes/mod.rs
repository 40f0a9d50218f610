//! The endpoints, one file per group: events in, device reads, ownership
//! history, the sync feed, operations (backup, probes, metrics), and
//! Customer.io's reporting webhooks (`webhooks.rs`).

pub(crate) mod devices;
pub(crate) mod events;
pub(crate) mod feed;
pub(crate) mod history;
pub(crate) mod ops;
pub(crate) mod webhooks;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// A 200 whose body is JSON text built elsewhere (raw batch bodies and
/// dead-letter operations are embedded verbatim, as the CLI prints them).
pub(crate) fn raw_json(body: String) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

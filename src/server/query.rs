//! Request parameters: the query string, parsed by hand so every bad value
//! is a 400 naming its parameter (axum's own rejection is plain text) and
//! unknown parameters are refused (a typo is not silently ignored); path
//! segments with the same error shape.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::errors::ApiError;
use crate::limits::{DEFAULT_SERVER_PAGE_LIMIT, MAX_SERVER_PAGE_LIMIT};
use crate::model::Platform;

/// What an extractor hands a handler.
pub(crate) type RawQuery = Result<Query<BTreeMap<String, String>>, QueryRejection>;

/// A request's query parameters.
pub(crate) struct Params(BTreeMap<String, String>);

impl Params {
    /// Parses the query; any parameter not in `allowed` is a 400.
    pub fn new(raw: RawQuery, allowed: &[&str]) -> Result<Params, ApiError> {
        let Query(map) = raw.map_err(|e| ApiError::invalid("query", e.body_text()))?;
        if let Some(name) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            let known = allowed.join(", ");
            return Err(ApiError::invalid(
                name,
                format!("is not a parameter here (known: {known})"),
            ));
        }
        Ok(Params(map))
    }

    /// A parameter's text, if given and not empty.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// An optional unsigned integer.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.text(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::invalid(name, format!("{v:?} is not an unsigned integer"))
                })
            })
            .transpose()
    }

    /// A required unsigned integer.
    pub fn required_u64(&self, name: &str) -> Result<u64, ApiError> {
        self.u64(name)?
            .ok_or_else(|| ApiError::invalid(name, "is required"))
    }

    /// A boolean `name=true|false`, false if absent.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.text(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("{other:?} is not true or false"),
            )),
        }
    }

    /// `platform=ios|android`, optional.
    pub fn platform(&self) -> Result<Option<Platform>, ApiError> {
        self.text("platform")
            .map(|v| {
                v.parse::<Platform>()
                    .map_err(|e| ApiError::invalid("platform", e.to_string()))
            })
            .transpose()
    }

    /// `limit`: 1 to `MAX_SERVER_PAGE_LIMIT`, `DEFAULT_SERVER_PAGE_LIMIT` if absent.
    pub fn limit(&self) -> Result<usize, ApiError> {
        let Some(n) = self.u64("limit")? else {
            return Ok(DEFAULT_SERVER_PAGE_LIMIT);
        };
        match usize::try_from(n) {
            Ok(n) if (1..=MAX_SERVER_PAGE_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "limit",
                format!("{n} is outside 1..={MAX_SERVER_PAGE_LIMIT}"),
            )),
        }
    }
}

/// Path segments (`{token}`, `{sink}`, ...) as axum's `Path`, but a bad one
/// (not UTF-8 after percent-decoding) is a 400 in the error shape naming
/// `path`, not axum's plain-text rejection.
pub(crate) struct Segments<T>(pub T);

impl<S, T> FromRequestParts<S> for Segments<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(Segments(t)),
            Err(e) => Err(ApiError::invalid("path", e.body_text())),
        }
    }
}

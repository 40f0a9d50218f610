//! Bearer-token authentication: the token from `DEVREG_API_TOKEN`,
//! compared in constant time (subtle), on every route but the probes.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::app::AppState;
use super::errors::ApiError;

/// Answers 401 unless the request carries `Authorization: Bearer TOKEN`
/// with the configured token; passes everything when none is configured
/// (`--no-auth`, loopback only).
pub(crate) async fn require_token(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &st.token {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| token_matches(g.as_bytes(), expected)) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Constant time in the token's contents (a different length answers at
/// once: the length is not the secret).
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    bool::from(given.ct_eq(expected))
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn only_the_exact_token_matches() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cres", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
    }
}

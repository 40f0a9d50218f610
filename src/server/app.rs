//! The state every handler shares, the router, and how engine calls leave
//! the async workers: each runs on tokio's blocking pool, bounded by a
//! semaphore (one call over the bound is answered 429, not queued).

use std::path::PathBuf;
use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::errors::ApiError;
use super::metrics::Metrics;
use super::routes::{devices, events, feed, history, ops, webhooks};
use super::{auth, ServerConfig};
use crate::limits::MAX_SERVER_ENGINE_CALLS;
use crate::registry::Registry;

/// Shared by every handler (cheap to clone).
#[derive(Clone)]
pub(crate) struct AppState {
    pub reg: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub engine_slots: Arc<Semaphore>,
    pub backup_dir: Option<Arc<PathBuf>>,
    pub token: Option<Arc<[u8]>>,
    /// Customer.io reporting webhooks: the signing key and the event ids
    /// applied; `None` when no key is configured (the endpoint is 404).
    pub cio_webhook: Option<Arc<webhooks::CioWebhook>>,
}

impl AppState {
    pub fn new(reg: Arc<Registry>, config: &ServerConfig) -> AppState {
        AppState {
            metrics: Arc::new(Metrics::new(reg.clone())),
            reg,
            engine_slots: Arc::new(Semaphore::new(MAX_SERVER_ENGINE_CALLS)),
            backup_dir: config.backup_dir.clone().map(Arc::new),
            token: config.token.as_deref().map(|t| Arc::from(t.as_bytes())),
            cio_webhook: config
                .cio_webhook_key
                .as_deref()
                .map(|k| Arc::new(webhooks::CioWebhook::new(k))),
        }
    }

    /// Runs `f` on the blocking pool with the registry; 429 when
    /// `MAX_SERVER_ENGINE_CALLS` are already running or waiting.
    pub async fn engine<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
    {
        let permit = self.engine_permit()?;
        let r = self.blocking(f).await;
        drop(permit);
        r?
    }

    /// One of the `MAX_SERVER_ENGINE_CALLS` slots, held while an engine
    /// call runs or waits; 429 when none is free.
    pub fn engine_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.engine_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::busy())
    }

    /// Runs `f` on the blocking pool (the caller holds a slot).
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&AppState) -> T + Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(|e| ApiError::unavailable(format!("engine call did not finish: {e}")))
    }
}

/// Every route. `/healthz`, `/readyz` and the Customer.io webhook (signed)
/// need no token; the rest do.
pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/events", post(events::post_events))
        .route("/v1/devices", get(devices::list))
        .route("/v1/devices/{token}", get(devices::get_device))
        .route("/v1/people/{id}/devices", get(devices::person_devices))
        .route("/v1/people/{id}/most-recent", get(devices::most_recent))
        .route("/v1/active", get(devices::active))
        .route("/v1/stats", get(devices::stats))
        .route("/v1/history/{token}", get(history::history))
        .route("/v1/owner-at/{token}", get(history::owner_at))
        .route("/v1/changes", get(history::changes))
        .route("/v1/sinks", get(feed::sinks))
        .route("/v1/sinks/{sink}", post(feed::add_sink))
        .route("/v1/sinks/{sink}/export", post(feed::export))
        .route("/v1/sinks/{sink}/ack/{batch_id}", post(feed::ack))
        .route("/v1/sinks/{sink}/nack/{batch_id}", post(feed::nack))
        .route("/v1/sinks/{sink}/dead-letters", get(feed::dead_letters))
        .route("/v1/sinks/{sink}/requeue", post(feed::requeue))
        .route("/v1/backup", post(ops::backup))
        .route("/metrics", get(ops::metrics))
        .route_layer(from_fn_with_state(state.clone(), auth::require_token));
    let open = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        // Authenticated by its signature, not the bearer token.
        .route("/v1/webhooks/customerio", post(webhooks::customerio));
    api.merge(open)
        .route_layer(from_fn_with_state(state.clone(), super::metrics::track))
        .fallback(ops::no_route)
        .method_not_allowed_fallback(ops::wrong_method)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// Past `MAX_SERVER_ENGINE_CALLS` running calls, one more is 429 at
    /// once (not queued); with a slot free it runs.
    #[test]
    fn engine_calls_over_the_bound_are_answered_429() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path().join("db")).unwrap();
        let state = AppState::new(Arc::new(reg), &ServerConfig::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let all = u32::try_from(MAX_SERVER_ENGINE_CALLS).unwrap();
        let held = state
            .engine_slots
            .clone()
            .try_acquire_many_owned(all)
            .unwrap();
        let busy = rt.block_on(state.engine(|st| Ok(st.reg.stats().devices)));
        let e = busy.unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::TOO_MANY_REQUESTS, "busy"));
        drop(held);
        let ok = rt.block_on(state.engine(|st| Ok(st.reg.stats().devices)));
        assert_eq!(ok.unwrap(), 0);
        (*state.reg).clone().close().unwrap();
    }
}

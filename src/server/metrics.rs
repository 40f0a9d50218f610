//! `GET /metrics`: Prometheus text through prometheus-client. The server's
//! own: events received by kind and outcome, devices, each sink's feed lag
//! and dead letters, HTTP requests and latency by route; the engine's
//! (`engine_metrics`) are collected from `Registry::metrics` at each scrape.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as Prom;

use super::app::AppState;
use super::engine_metrics::EngineCollector;
use crate::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// Latency buckets: 100 µs to about 26 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// The server's metrics and their registry.
pub(crate) struct Metrics {
    prom: Prom,
    ops: Family<OpLabels, Counter>,
    requests: Family<HttpLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    devices: Gauge<u64, AtomicU64>,
    feed_pending: Family<SinkLabels, Gauge<u64, AtomicU64>>,
    dead_letters: Family<SinkLabels, Gauge<u64, AtomicU64>>,
}

impl Metrics {
    /// The server's metrics, and the engine's read from `reg` at each
    /// scrape (`engine_metrics`).
    pub fn new(reg: Arc<Registry>) -> Metrics {
        let mut prom = Prom::with_prefix("devreg");
        prom.register_collector(Box::new(EngineCollector { reg }));
        let ops = Family::<OpLabels, Counter>::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let devices = Gauge::<u64, AtomicU64>::default();
        let feed_pending = Family::<SinkLabels, Gauge<u64, AtomicU64>>::default();
        let dead_letters = Family::<SinkLabels, Gauge<u64, AtomicU64>>::default();
        let ops_help = "Events received by POST /v1/events, by kind and outcome (applied, \
                        skipped, or rejected before reaching the registry)";
        prom.register("http_events", ops_help, ops.clone());
        let req_help = "HTTP requests by route, method and status";
        prom.register("http_requests", req_help, requests.clone());
        let lat_help = "HTTP request latency by route, in seconds";
        prom.register("http_request_duration_seconds", lat_help, latency.clone());
        prom.register("devices", "Devices in the registry", devices.clone());
        let lag_help = "Operations waiting in a sink's feed (its lag)";
        prom.register("feed_pending_operations", lag_help, feed_pending.clone());
        let dead_help = "Dead letters kept for a sink";
        prom.register("feed_dead_letters", dead_help, dead_letters.clone());
        Metrics {
            prom,
            ops,
            requests,
            latency,
            devices,
            feed_pending,
            dead_letters,
        }
    }

    /// Counts one event of `kind` with `outcome` (applied, skipped, rejected).
    pub fn op(&self, kind: &'static str, outcome: &'static str) {
        self.ops.get_or_create(&OpLabels { kind, outcome }).inc();
    }

    fn request(&self, route: String, method: String, status: u16, seconds: f64) {
        let labels = HttpLabels {
            route: route.clone(),
            method,
            status: status.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    /// The text exposition, with the gauges read from `reg` now.
    pub fn render(&self, reg: &Registry) -> Result<String, std::fmt::Error> {
        self.devices.set(reg.stats().devices);
        for sink in reg.sinks() {
            let labels = SinkLabels { sink: sink.name };
            self.feed_pending.get_or_create(&labels).set(sink.pending);
            self.dead_letters
                .get_or_create(&labels)
                .set(sink.dead_letters);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &self.prom)?;
        prometheus_client::encoding::text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// Middleware: counts every routed request and its latency by route
/// pattern (`/v1/devices/{token}`, never the token itself).
pub(crate) async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    st.metrics
        .request(route, method, response.status().as_u16(), seconds);
    response
}

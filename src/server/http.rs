//! The control plane's HTTP port: `/healthz` (the process answers), `/readyz` (connected to NATS
//! and serving), `/metrics` (Prometheus text).

use crate::telemetry::{ConnectionLabels, Metrics};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Set once the service answers requests, cleared at shutdown.
    pub serving: Arc<AtomicBool>,
    /// The control plane's NATS connections, once made.
    pub conns: Arc<OnceLock<Vec<(String, async_nats::Client)>>>,
    pub metrics: Arc<Metrics>,
}

impl HttpState {
    /// Update the connection gauges; true when every connection is up.
    fn connections_up(&self) -> bool {
        let Some(conns) = self.conns.get() else { return false };
        let mut all = true;
        for (name, c) in conns {
            let up = c.connection_state() == async_nats::connection::State::Connected;
            self.metrics.nats_connected.get_or_create(&ConnectionLabels { connection: name.clone() }).set(up as i64);
            all &= up;
        }
        all
    }
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"status\":\"ok\"}\n")
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.connections_up() && s.serving.load(Ordering::SeqCst) {
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"status\":\"ready\"}\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"not_ready\",\"reason\":\"not connected to NATS or not serving yet\"}\n",
        )
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    s.connections_up();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.render(),
    )
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

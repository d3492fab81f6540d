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
    /// The estate, for OCSP and the CRL.
    pub estate: Arc<crate::estate::Estate>,
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

fn ocsp_answer(s: &HttpState, request: &[u8]) -> axum::response::Response {
    let e = &s.estate;
    let now = e.clock().now_unix();
    let cas: Vec<_> = e.trusted_cas().into_iter().map(|(_, c)| c).collect();
    let der = crate::ocsp::respond(&cas, request, |serial| e.revocation_status(serial).unwrap_or(crate::ocsp::Status::Unknown), now);
    s.metrics.ocsp_responses.inc();
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/ocsp-response".to_string()),
            (header::CACHE_CONTROL, format!("max-age={}", crate::ocsp::NEXT_UPDATE_SECS / 2)),
        ],
        der,
    )
        .into_response()
}

async fn ocsp_get(State(s): State<HttpState>, axum::extract::Path(req): axum::extract::Path<String>) -> axum::response::Response {
    match crate::ocsp::decode_get(&req) {
        Some(der) => ocsp_answer(&s, &der),
        None => ocsp_answer(&s, b""),
    }
}

async fn ocsp_post(State(s): State<HttpState>, body: axum::body::Bytes) -> axum::response::Response {
    ocsp_answer(&s, &body)
}

/// `/crl`: the CRL of the CA of `init` while it is trusted (its certificates name this URL),
/// else of the issuing CA.
async fn crl(State(s): State<HttpState>) -> axum::response::Response {
    crl_of(s, None).await
}

/// `/crl/<id>`: the CRL of one CA of the trusted set (certificates of rotated CAs name it).
async fn crl_by_id(State(s): State<HttpState>, axum::extract::Path(id): axum::extract::Path<String>) -> axum::response::Response {
    crl_of(s, Some(id)).await
}

async fn crl_of(s: HttpState, id: Option<String>) -> axum::response::Response {
    let e = s.estate.clone();
    let trusted = e.trusted_cas();
    let ca = match &id {
        Some(id) => trusted.iter().find(|(r, _)| crate::estate::ca::ca_url_id(&r.fingerprint) == *id).map(|(_, c)| c.clone()),
        None => trusted.iter().find(|(r, _)| r.key_ref == "ca").map(|(_, c)| c.clone()).or_else(|| Some(e.ca())),
    };
    let Some(ca) = ca else {
        return (StatusCode::NOT_FOUND, "no such CA in the trusted set\n").into_response();
    };
    let built = tokio::task::spawn_blocking(move || {
        let now = e.clock().now_unix();
        let revoked = e.revoked_serials().map_err(|x| x.to_string())?;
        ca.crl(&revoked, now as u64, now, now + crate::ocsp::NEXT_UPDATE_SECS).map_err(|x| x.to_string())
    })
    .await;
    match built.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(der) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/pkix-crl".to_string()),
                (header::CACHE_CONTROL, format!("max-age={}", crate::ocsp::NEXT_UPDATE_SECS / 2)),
            ],
            der,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("cannot build the CRL: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "CRL unavailable\n").into_response()
        }
    }
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ocsp", axum::routing::post(ocsp_post))
        .route("/ocsp/{*req}", get(ocsp_get))
        .route("/crl", get(crl))
        .route("/crl/{id}", get(crl_by_id))
        .layer(axum::extract::DefaultBodyLimit::max(crate::ocsp::MAX_REQUEST_BYTES))
        .with_state(state)
}

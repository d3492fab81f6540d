//! An OCSP responder that answers from a [`Copy`] of the pre-signed answers: no CA key, no
//! store, no control plane. `tillit responder` (next to a hub nats-server), the site agent
//! (`--ocsp-addr`) and `serve` (before it signs anything itself) answer this way.
//!
//! A request the copy holds no current answer for gets HTTP 404, never `unknown`: nats-server
//! then asks the next responder the certificate names instead of refusing the handshake.

use super::copy::Copy;
use crate::clock::SharedClock;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

#[derive(Clone)]
struct St {
    copy: Arc<Copy>,
    clock: SharedClock,
}

/// The DER answer to `request` as an HTTP response: 200 with the answer, or 404.
pub fn http_answer(copy: &Copy, request: &[u8], now: i64) -> axum::response::Response {
    match copy.answer(request, now) {
        Some(der) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/ocsp-response")], der).into_response(),
        None => (StatusCode::NOT_FOUND, "no current answer for this certificate here; ask the next responder\n").into_response(),
    }
}

async fn ocsp_get(State(s): State<St>, axum::extract::Path(req): axum::extract::Path<String>) -> axum::response::Response {
    let der = super::decode_get(&req).unwrap_or_default();
    http_answer(&s.copy, &der, s.clock.now_unix())
}

async fn ocsp_post(State(s): State<St>, body: axum::body::Bytes) -> axum::response::Response {
    http_answer(&s.copy, &body, s.clock.now_unix())
}

async fn healthz(State(s): State<St>) -> impl IntoResponse {
    let body = serde_json::json!({ "status": "ok", "answers": s.copy.len(), "last_seq": s.copy.last_seq() });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n"))
}

/// The responder's routes: `/ocsp` (POST), `/ocsp/<request>` (GET), `/healthz`.
fn router(copy: Arc<Copy>, clock: SharedClock) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ocsp", axum::routing::post(ocsp_post))
        .route("/ocsp/{*req}", get(ocsp_get))
        .layer(axum::extract::DefaultBodyLimit::max(super::MAX_REQUEST_BYTES))
        .with_state(St { copy, clock })
}

/// Bind `addr` and answer until `stop` resolves.
pub async fn run(
    addr: std::net::SocketAddr,
    copy: Arc<Copy>,
    clock: SharedClock,
    stop: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve(listener, copy, clock, stop).await;
    Ok(())
}

/// Answer on a bound `listener` until `stop` resolves.
pub async fn serve(listener: tokio::net::TcpListener, copy: Arc<Copy>, clock: SharedClock, stop: impl std::future::Future<Output = ()> + Send) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, answers = copy.len(), "OCSP responder listening");
    }
    crate::server::http::serve_http(listener, router(copy, clock), 1024, stop).await;
}

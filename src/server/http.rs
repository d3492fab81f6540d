//! The control plane's HTTP port: `/healthz` (the process answers), `/readyz` (connected to NATS
//! and serving), `/metrics` (OpenMetrics or Prometheus text 0.0.4, by `Accept`), `/ocsp` and `/crl`.
//!
//! nats-server's `ocsp_peer` fails closed, so whoever can hold this port can refuse every new
//! connection of the estate. The port therefore runs its own accept loop ([`serve_http`]):
//! headers must arrive within [`HEADER_TIMEOUT`], a request must finish within
//! [`REQUEST_TIMEOUT`], a connection lives at most [`CONNECTION_LIFETIME`], headers are capped
//! at [`MAX_HEADER_BYTES`] and bodies at the OCSP request limit, and at most
//! `http.max_connections` connections are open: past it the oldest connection with no request
//! in progress (half-sent or idle) is closed to make room, so a flood of half-sent requests
//! cannot crowd out nats-server's queries. `/metrics` is served on a listener of its own
//! (`http.metrics_addr`), or on this port only when it is bound to loopback.

use crate::telemetry::{ConnectionLabels, Format, Metrics};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
    /// The published OCSP statuses ([`crate::ocsp::copy::Copy::load_compact`]); the estate's for a serial they do not hold.
    pub answers: Arc<crate::ocsp::copy::Copy>,
    /// The dashboard's sessions (and the control plane's context, once up).
    pub dashboard: Arc<super::dashboard::Sessions>,
    /// The CRLs as last built.
    pub crl: Arc<super::crl::CrlCache>,
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
    if !s.estate.store().reachable() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"not_ready\",\"reason\":\"the store is not reachable\"}\n",
        )
    } else if s.connections_up() && s.serving.load(Ordering::SeqCst) {
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"status\":\"ready\"}\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"not_ready\",\"reason\":\"not connected to NATS or not serving yet\"}\n",
        )
    }
}

/// `/metrics` in the format the scraper's `Accept` asks for (OpenMetrics, else text 0.0.4).
async fn metrics(State(s): State<HttpState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    s.connections_up();
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type()), (header::VARY, "Accept")], s.metrics.render(format))
}

fn ocsp_answer(s: &HttpState, request: &[u8]) -> axum::response::Response {
    let e = &s.estate;
    let now = e.clock().now_unix();
    if let Some(der) = s.answers.answer(request, now) {
        s.metrics.ocsp_responses.inc();
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/ocsp-response".to_string())], der).into_response();
    }
    // The control plane's copy keeps statuses only: it signs the published status now (the
    // same answer a responder's pre-signed copy gives), and the store's for a serial not
    // published yet.
    let cas: Vec<_> = e.trusted_cas().into_iter().map(|(_, c)| c).collect();
    let status = |serial: &str| s.answers.status(serial, now).unwrap_or_else(|| e.revocation_status(serial).unwrap_or(crate::ocsp::Status::Unknown));
    let der = crate::ocsp::respond(&cas, request, status, now);
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
    // Kept per CA, by its certificate's fingerprint (a rotated CA is another).
    let key = match crate::issuer::x509::fingerprint(ca.cert_pem()) {
        Ok(f) => f,
        Err(err) => {
            tracing::error!("cannot fingerprint the CA for its CRL: {err}");
            return (StatusCode::INTERNAL_SERVER_ERROR, "CRL unavailable\n").into_response();
        }
    };
    let (clock, store) = (e.clock().clone(), e.store_arc());
    let build = move || {
        let now = e.clock().now_unix();
        let revoked = e.revoked_serials().map_err(|x| x.to_string())?;
        ca.crl(&revoked, now as u64, now, now + crate::ocsp::NEXT_UPDATE_SECS).map_err(|x| x.to_string())
    };
    let built = s.crl.get(&key, move || store.others_changes(), move || clock.now_unix(), build).await.map(|der| der.to_vec());
    match built {
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

/// The router of the main port; `/metrics` only when `with_metrics`.
pub fn router(state: HttpState, with_metrics: bool) -> Router {
    let r = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz));
    let r = if with_metrics { r.route("/metrics", get(metrics)) } else { r };
    r.route("/ocsp", axum::routing::post(ocsp_post))
        .route("/ocsp/{*req}", get(ocsp_get))
        .route("/crl", get(crl))
        .route("/crl/{id}", get(crl_by_id))
        .merge(super::dashboard::routes())
        .layer(axum::extract::DefaultBodyLimit::max(crate::ocsp::MAX_REQUEST_BYTES))
        .with_state(state)
}

/// The router of the metrics listener.
pub fn metrics_router(state: HttpState) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(state)
}

// === the accept loop ===

/// A client must send a request's headers within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A request must be answered within this (body included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (keep-alive included) is closed after this.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Largest request head (request line and headers).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests in progress on it.
    busy: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Serve `router` on `listener` with the limits above and at most `max_conns` connections,
/// until `stop` resolves.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    max_conns: usize,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    use std::sync::atomic::AtomicUsize;
    tokio::pin!(stop);
    // Never more connections than descriptors to spare (the store, NATS and the log need some).
    let max_conns = max_conns.min(fd_limit().saturating_sub(FD_RESERVE)).max(16);
    let mut conns: std::collections::VecDeque<Conn> = std::collections::VecDeque::new();
    // The oldest connection with nothing in progress goes; false if every one is busy.
    fn evict_idle(conns: &mut std::collections::VecDeque<Conn>) -> bool {
        match conns.iter().position(|c| c.busy.load(Ordering::SeqCst) == 0) {
            Some(i) => {
                if let Some(old) = conns.remove(i) {
                    old.task.abort();
                }
                true
            }
            None => false,
        }
    }
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or similar: make room, back off instead of spinning.
                    tracing::warn!("HTTP accept failed: {e}");
                    conns.retain(|c| !c.task.is_finished());
                    evict_idle(&mut conns);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        conns.retain(|c| !c.task.is_finished());
        if conns.len() >= max_conns && !evict_idle(&mut conns) {
            tracing::warn!(%peer, "HTTP: {max_conns} requests in progress; refusing a connection");
            drop(stream);
            continue;
        }
        let busy = Arc::new(AtomicUsize::new(0));
        let router = router.clone();
        let in_flight = busy.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            in_flight.fetch_add(1, Ordering::SeqCst);
            let router = router.clone();
            let in_flight = in_flight.clone();
            async move {
                use tower::ServiceExt;
                let r = tokio::time::timeout(REQUEST_TIMEOUT, router.oneshot(req.map(axum::body::Body::new))).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(match r {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(never)) => match never {},
                    Err(_) => (StatusCode::REQUEST_TIMEOUT, "request not completed in time\n").into_response(),
                })
            }
        });
        let _ = stream.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
        let task = tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
        conns.push_back(Conn { busy, task });
    }
    for c in conns {
        c.task.abort();
    }
}

/// Descriptors kept for everything but HTTP connections.
const FD_RESERVE: usize = 256;

/// This process's open-file limit (soft).
pub fn fd_limit() -> usize {
    // SAFETY: getrlimit with a valid pointer to an rlimit owned by this frame.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            return usize::try_from(r.rlim_cur).unwrap_or(usize::MAX);
        }
    }
    usize::MAX
}

/// Raise this process's open-file limit to its hard limit (a busy HTTP port and many NATS
/// connections need more than the usual soft 1024).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit owned by this frame.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                tracing::debug!("cannot raise the open-file limit");
            }
        }
    }
}

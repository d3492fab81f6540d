//! The control plane (`tillit serve`).
//!
//! It connects to NATS twice with credentials it mints for itself in memory (a TILLIT user for the
//! API, a SYS user for account pushes), answers the `tillit.v1.…` subjects as a NATS micro
//! service (`$SRV.PING|INFO|STATS`), and serves `/healthz`, `/readyz` and `/metrics` over HTTP.
//!
//! Every request is a signed token ([`crate::proto`]): size-checked, verified, checked against the
//! replay cache, its signer looked up in the identity store, then dispatched. The reply is always
//! `{"result": …}` or `{"error": {"code", "message"}}`.

mod accounts;
mod admin;
mod ca;
mod dispatch;
mod enroll;
mod events;
pub mod http;
mod origin;
pub mod push;
pub mod reconcile;
mod secrets;
mod sites;
mod status;
pub mod stream;

use crate::client::{self, tls, ConnectParams, NatsCreds};
use crate::error::{ApiError, ErrorCode};
use crate::estate::{Estate, SYS_ACCOUNT, TILLIT_ACCOUNT};
use crate::issuer::jwt::UserPermissions;
use crate::replay::ReplayCache;
use crate::subjects;
use crate::telemetry::Metrics;
use async_nats::service::ServiceExt;
use futures::StreamExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use crate::audit::{self, Journal};
use std::collections::HashMap;
use tokio::sync::{mpsc, watch, Semaphore};

/// Requests handled at once; more wait in the subscription.
const MAX_IN_FLIGHT: usize = 512;
/// Replay cache capacity (ids live at most `proto::MAX_REQUEST_LIFETIME`).
const REPLAY_CAPACITY: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for HTTP on {addr}: {source}; pick another --http-addr or stop what uses it")]
    HttpBind { addr: String, source: std::io::Error },
    #[error("cannot mint the control plane's own credentials: {0}")]
    Creds(String),
    #[error("cannot start the NATS micro service: {0}")]
    Service(String),
    #[error("account push: {0}")]
    Push(#[from] push::PushError),
}

/// Every endpoint the control plane serves ([`crate::proto::ENDPOINTS`]).
pub use crate::proto::ENDPOINTS;

/// Work done after a reply has been sent.
#[derive(Debug)]
pub enum After {
    /// Revoke a burned token's bootstrap user (valid until the given time).
    RevokeBootstrap(String, i64),
}

/// What every handler can reach.
pub struct Ctx {
    pub estate: Arc<Estate>,
    pub metrics: Arc<Metrics>,
    pub replay: ReplayCache,
    pub sys: async_nats::Client,
    pub api: async_nats::Client,
    /// The audit log: every change is recorded (and made durable) through it.
    pub journal: Journal,
    /// Join tokens being enrolled with right now.
    pub burning: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Account name → `iat` of the JWT last pushed to nats-server.
    pub pushed: std::sync::Mutex<HashMap<String, i64>>,
    /// Bootstrap users to revoke, batched by [`accounts::run_revoker`].
    pub revoke_tx: mpsc::UnboundedSender<(String, i64)>,
    /// Public key of the BOOTSTRAP account (enrollment requests must come from it).
    pub bootstrap_account: String,
    /// Service → its tenant account and role, as pushed.
    pub roles: std::sync::RwLock<HashMap<crate::names::ServiceId, accounts::RoleEntry>>,
    /// The signed event stream.
    pub events: stream::Events,
    /// The control plane's xkey (secrets in and out), opened once, with a box per reader.
    pub xkey: crate::crypto::Sealer,
    /// Account name → public key.
    pub account_keys: std::sync::RwLock<HashMap<String, String>>,
    /// Serialises CA rotation steps.
    pub ca_lock: tokio::sync::Mutex<()>,
    /// Wakes the renewal of the control plane's own credentials now (`rotate ca --finish`).
    pub renew_own: Arc<tokio::sync::Notify>,
    /// This context, for work a handler leaves running after it replies.
    pub me: OnceLock<std::sync::Weak<Ctx>>,
}

fn stopped(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Mint credentials for one of the control plane's connections.
fn own_params(
    estate: &Estate,
    account: &str,
    permissions: UserPermissions,
) -> Result<(ConnectParams, Arc<rustls::sign::CertifiedKey>, i64), ServeError> {
    let (creds, _user) = estate.control_plane_creds(account, permissions).map_err(|e| ServeError::Creds(e.to_string()))?;
    let ck = tls::certified_key(&creds.cert_pem, creds.key_pem.expose()).map_err(|e| ServeError::Creds(e.to_string()))?;
    let user = nkeys::KeyPair::from_seed(creds.user_seed.expose()).map_err(|e| ServeError::Creds(e.to_string()))?;
    Ok((
        ConnectParams {
            urls: estate.config.urls(),
            name: format!("tillit-serve-{}", account.to_lowercase()),
            inbox_prefix: subjects::inbox_prefix(&user.public_key()),
            ca_pem: estate.ca_bundle_pem(),
            creds: Arc::new(RwLock::new(NatsCreds { user_jwt: creds.user_jwt, user_seed: creds.user_seed })),
            cert: tls::SwappableCert::new(ck.clone()),
            max_reconnects: None,
        },
        ck,
        creds.expires_at,
    ))
}

/// The control plane's TILLIT user: it receives the API, discovery and its own inbox; it
/// publishes only events (and the JetStream API that stores them), notifications, and replies
/// to inboxes (`_INBOX.`, and `_R_.` for requests that crossed a service import). [`handle`]
/// answers only such reply subjects, so a requester-chosen reply subject cannot make the
/// control plane publish into the stream API or anywhere else. (nats-server's `resp` permission
/// would be tighter, but a config reload forgets the replies it allowed.)
fn api_permissions() -> UserPermissions {
    UserPermissions::new(
        vec![
            "$JS.API.>".into(),
            subjects::EVENTS_EXPORT.into(),
            subjects::NOTIFY_EXPORT.into(),
            format!("{}.>", subjects::INBOX_ROOT),
            format!("{}.>", subjects::SERVICE_REPLY_ROOT),
        ],
        vec![format!("{}.>", subjects::API_PREFIX), subjects::SRV_ALL.into(), format!("{}.>", subjects::INBOX_ROOT)],
    )
}

fn sys_permissions() -> UserPermissions {
    UserPermissions::new(vec![], vec![])
}

/// Connect, retrying until connected or told to stop.
async fn connect_until(params: &ConnectParams, what: &str, stop: &watch::Receiver<bool>) -> Option<async_nats::Client> {
    let mut delay = Duration::from_millis(200);
    loop {
        match client::connect(params).await {
            Ok(c) => {
                tracing::info!(connection = what, urls = ?params.urls, "connected to NATS");
                return Some(c);
            }
            Err(e) => tracing::warn!(connection = what, "waiting for NATS: {e}; retrying in {delay:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(stop) => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Renew the control plane's own credentials at 2/3 of their life and reconnect with them.
fn spawn_self_renewal(
    estate: Arc<Estate>,
    account: &'static str,
    params: ConnectParams,
    client: async_nats::Client,
    mut expires_at: i64,
    stop: watch::Receiver<bool>,
    now_please: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = estate.clock().now_unix();
            let issued = now.min(expires_at);
            let at = crate::rotation::renew_at(issued, expires_at, crate::rotation::random_jitter());
            let wait = Duration::from_secs((at - now).max(1) as u64);
            tracing::debug!(connection = account, "own credentials renew in {wait:?}");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = now_please.notified() => tracing::info!(connection = account, "renewing own credentials now (CA rotation finished)"),
                _ = stopped(&stop) => return,
            }
            let perms = if account == SYS_ACCOUNT { sys_permissions() } else { api_permissions() };
            match own_params(&estate, account, perms) {
                Ok((fresh, ck, exp)) => {
                    let new_creds = match fresh.creds.read() {
                        Ok(g) => NatsCreds { user_jwt: g.user_jwt.clone(), user_seed: g.user_seed.clone() },
                        Err(_) => continue,
                    };
                    if let Ok(mut g) = params.creds.write() {
                        *g = new_creds;
                    }
                    params.cert.swap(ck);
                    expires_at = exp;
                    if let Err(e) = client.force_reconnect().await {
                        tracing::warn!(connection = account, "reconnect with renewed credentials failed: {e}");
                    } else {
                        tracing::info!(connection = account, "renewed own credentials");
                    }
                }
                Err(e) => {
                    tracing::error!(connection = account, "cannot renew own credentials: {e}; retrying in 30s");
                    expires_at = expires_at.max(now + 45);
                }
            }
        }
    })
}

/// Run the control plane until `shutdown` completes.
pub async fn serve(estate: Estate, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let estate = Arc::new(estate);
    let metrics = Arc::new(Metrics::new(estate.trust_domain()));
    let serving = Arc::new(AtomicBool::new(false));
    let conns: Arc<OnceLock<Vec<(String, async_nats::Client)>>> = Arc::new(OnceLock::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    // HTTP first: /healthz answers while NATS comes up.
    let addr = estate.config.http_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::HttpBind { addr: addr.to_string(), source })?;
    http::raise_fd_limit();
    let http_state = http::HttpState { serving: serving.clone(), conns: conns.clone(), metrics: metrics.clone(), estate: estate.clone() };
    let metrics_here = match estate.config.metrics_addr {
        Some(_) => false,
        None if addr.ip().is_loopback() => true,
        None => {
            tracing::warn!(%addr, "/metrics is not served on a non-loopback HTTP address; set http.metrics_addr to a listener for it");
            false
        }
    };
    let max_conns = estate.config.http_max_connections;
    let http_stop = stopped(&stop_rx);
    let main_router = http::router(http_state.clone(), metrics_here);
    let http_task = tokio::spawn(http::serve_http(listener, main_router, max_conns, http_stop));
    tracing::info!(%addr, metrics = metrics_here, "HTTP: /healthz /readyz /ocsp /crl{}", if metrics_here { " /metrics" } else { "" });
    if let Some(maddr) = estate.config.metrics_addr {
        let l = tokio::net::TcpListener::bind(maddr)
            .await
            .map_err(|source| ServeError::HttpBind { addr: maddr.to_string(), source })?;
        tokio::spawn(http::serve_http(l, http::metrics_router(http_state), 64, stopped(&stop_rx)));
        tracing::info!(addr = %maddr, "HTTP: /metrics");
    }

    let (api_params, _, api_exp) = own_params(&estate, TILLIT_ACCOUNT, api_permissions())?;
    let (sys_params, _, sys_exp) = own_params(&estate, SYS_ACCOUNT, sys_permissions())?;
    let Some(api) = connect_until(&api_params, "api", &stop_rx).await else {
        let _ = http_task.await;
        return Ok(());
    };
    let Some(sys) = connect_until(&sys_params, "sys", &stop_rx).await else {
        let _ = http_task.await;
        return Ok(());
    };
    let _ = conns.set(vec![("api".into(), api.clone()), ("sys".into(), sys.clone())]);
    let renew_own = Arc::new(tokio::sync::Notify::new());
    let mut background = vec![
        spawn_self_renewal(estate.clone(), TILLIT_ACCOUNT, api_params, api.clone(), api_exp, stop_rx.clone(), renew_own.clone()),
        spawn_self_renewal(estate.clone(), SYS_ACCOUNT, sys_params, sys.clone(), sys_exp, stop_rx.clone(), renew_own.clone()),
    ];

    let (revoke_tx, revoke_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        estate: estate.clone(),
        metrics: metrics.clone(),
        replay: ReplayCache::new(REPLAY_CAPACITY),
        sys,
        api: api.clone(),
        journal: Journal::start(
            audit::Writer::open(&estate.dir.audit(), estate.store_arc(), estate.clock().clone(), estate.audit_key())
                .map_err(|e| ServeError::Service(e.to_string()))?,
        ),
        burning: Default::default(),
        pushed: Default::default(),
        revoke_tx,
        bootstrap_account: estate
            .account(crate::estate::BOOTSTRAP_ACCOUNT)
            .map_err(|e| ServeError::Creds(e.to_string()))?
            .public_key,
        roles: Default::default(),
        events: stream::Events::start(
            api.clone(),
            estate.envelope_signer().map_err(|e| ServeError::Service(e.to_string()))?,
        )
        .await
        .map_err(|e| ServeError::Service(format!("event stream: {e}")))?,
        xkey: crate::crypto::Sealer::new(&estate.xkey().map_err(|e| ServeError::Creds(e.to_string()))?).map_err(|e| ServeError::Creds(e.to_string()))?,
        account_keys: Default::default(),
        ca_lock: Default::default(),
        renew_own,
        me: OnceLock::new(),
    });
    let _ = ctx.me.set(Arc::downgrade(&ctx));
    restore_replay_cache(&ctx);
    // Make sure the servers hold the current JWT of every account (a restored or new server may not).
    for acct in estate.accounts().map_err(|e| ServeError::Creds(e.to_string()))? {
        if acct.name == SYS_ACCOUNT || acct.name == crate::estate::BOOTSTRAP_ACCOUNT {
            continue;
        }
        let _g = estate.account_lock().lock().await;
        if let Err(e) = accounts::push(&ctx, &acct, "reconcile").await {
            tracing::warn!("{}", e.message);
        }
    }
    sites::start_sites(&ctx).await;
    // Role keys left over from permission changes before a restart are retired now.
    admin::retire_leftover_keys(&ctx, true).await;
    let settle = ctx.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(300)).await;
            admin::retire_leftover_keys(&settle, false).await;
        }
    }));
    // BOOTSTRAP carries the live revocations of used tokens' bootstrap users.
    let revocations = accounts::start_revocations(&ctx).await.map_err(|e| ServeError::Service(e.message))?;
    background.push(tokio::spawn(accounts::run_revoker(ctx.clone(), revocations, revoke_rx)));
    // The store is made durable in the background; the audit log is the durability point.
    let flush = estate.store_arc();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let f = flush.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || f.sync()).await {
                tracing::error!("store flush failed: {e}");
            }
        }
    }));
    background.push(tokio::spawn(events::watch_auth_errors(ctx.clone())));
    background.push(tokio::spawn(reconcile::run(ctx.clone(), estate.config.reconcile_interval)));
    let retire = ctx.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            match retire.estate.retire_envelope_keys() {
                Ok(true) => tracing::info!("retired an envelope signing key"),
                Ok(false) => {}
                Err(e) => tracing::error!("cannot retire envelope keys: {e}"),
            }
        }
    }));
    let gauges = ctx.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let g = gauges.clone();
            let _ = tokio::task::spawn_blocking(move || status::refresh_gauges(&g)).await;
        }
    }));
    status::refresh_gauges(&ctx);
    let rollout = ctx.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(ca::ROLLOUT_TICK).await;
            ca::tick(&rollout).await;
        }
    }));
    let site_gauges = ctx.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            sites::refresh_site_gauges(&site_gauges).await;
        }
    }));

    let service = api
        .service_builder()
        .description("tillit trust control plane")
        .start(subjects::SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| ServeError::Service(e.to_string()))?;
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut endpoint_tasks = Vec::new();
    for route in dispatch::routes() {
        let spec = route.spec;
        let (group, name) = spec.subject.rsplit_once('.').unwrap_or(("", spec.subject));
        let mut endpoint = service
            .group(group)
            .endpoint(name)
            .await
            .map_err(|e| ServeError::Service(format!("{}: {e}", spec.subject)))?;
        let ctx = ctx.clone();
        let permits = permits.clone();
        let stop = stop_rx.clone();
        endpoint_tasks.push(tokio::spawn(async move {
            loop {
                let req = tokio::select! {
                    r = endpoint.next() => match r { Some(r) => r, None => break },
                    _ = stopped(&stop) => break,
                };
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    handle(ctx, route, req).await;
                    drop(permit);
                });
            }
        }));
    }
    serving.store(true, Ordering::SeqCst);
    tracing::info!(trust_domain = estate.trust_domain(), urls = ?estate.config.urls(), "tillit control plane serving");

    stopped(&stop_rx).await;
    tracing::info!("shutting down");
    serving.store(false, Ordering::SeqCst);
    for t in endpoint_tasks {
        let _ = t.await;
    }
    // Let in-flight requests finish (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(5), permits.acquire_many(MAX_IN_FLIGHT as u32)).await;
    // NATS calls at shutdown are bounded: the server may be gone.
    match tokio::time::timeout(Duration::from_secs(2), service.stop()).await {
        Ok(Err(e)) => tracing::debug!("service stop: {e}"),
        Err(_) => tracing::warn!("NATS did not confirm the service stop within 2s"),
        Ok(Ok(())) => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), api.flush()).await;
    let _ = http_task.await;
    for t in background {
        t.abort();
        let _ = t.await;
    }
    save_replay_cache(&ctx);
    // Flush the store (the audit log already holds every change), then let go of it.
    let store = estate.store_arc();
    let _ = tokio::task::spawn_blocking(move || store.sync()).await;
    drop(ctx);
    tracing::info!("stopped");
    Ok(())
}

async fn handle(ctx: Arc<Ctx>, route: dispatch::Route, req: async_nats::service::Request) {
    let spec = route.spec;
    let start = Instant::now();
    // A reply goes to an inbox, never to a subject the requester picked elsewhere (the
    // stream's API, say): such a request is dropped unanswered and unprocessed.
    if !req.message.reply.as_deref().is_some_and(subjects::is_reply_subject) {
        ctx.metrics.observe(spec.subject, "bad_reply_subject", start.elapsed().as_secs_f64());
        tracing::warn!(subject = spec.subject, reply = ?req.message.reply.as_deref(), "request with a reply subject that is not an inbox; dropped");
        return;
    }
    let result = dispatch::dispatch(&ctx, &route, &req.message).await;
    let mut headers = async_nats::HeaderMap::new();
    let mut after = None;
    let body = match result {
        Ok((v, a)) => {
            after = a;
            ctx.metrics.observe(spec.subject, "ok", start.elapsed().as_secs_f64());
            serde_json::json!({ "result": v })
        }
        Err(e) => {
            ctx.metrics.observe(spec.subject, e.code.as_str(), start.elapsed().as_secs_f64());
            tracing::info!(subject = spec.subject, code = e.code.as_str(), "refused: {}", e.message);
            headers.insert(subjects::HDR_SERVICE_ERROR, e.message.as_str());
            headers.insert(subjects::HDR_SERVICE_ERROR_CODE, e.code.status().to_string().as_str());
            serde_json::json!({ "error": e })
        }
    };
    let mut bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":{\"code\":\"internal\",\"message\":\"encoding\"}}".to_vec());
    let max = ctx.api.server_info().max_payload;
    if max > 0 && bytes.len() > max {
        tracing::error!(subject = spec.subject, size = bytes.len(), max, "reply larger than max_payload");
        let e = ApiError::new(ErrorCode::LimitExceeded, format!("the reply would be {} bytes, over the server's max_payload {max}", bytes.len()));
        bytes = serde_json::to_vec(&serde_json::json!({ "error": e })).unwrap_or_default();
    }
    if let Err(e) = req.respond_with_headers(Ok(bytes.into()), headers).await {
        tracing::warn!(subject = spec.subject, "could not send reply: {e}");
    }
    match after {
        Some(After::RevokeBootstrap(user, exp)) => {
            let _ = ctx.revoke_tx.send((user, exp));
        }
        None => {}
    }
}

/// What the replay cache's snapshot is MACed under.
const REPLAY_KEY_LABEL: &str = "tillit replay cache v1";

/// Take the previous run's request ids back (a clean stop left them, MACed); without them, refuse
/// requests signed before this start, which that run may have seen.
fn restore_replay_cache(ctx: &Ctx) {
    let e = &ctx.estate;
    let now = e.clock().now_unix();
    let path = e.dir.replay_snapshot();
    let key = e.vault_key(REPLAY_KEY_LABEL);
    let restored = match std::fs::read(&path) {
        Ok(bytes) => {
            let _ = std::fs::remove_file(&path);
            match serde_json::from_slice::<crate::replay::Snapshot>(&bytes) {
                Ok(snap) if ctx.replay.restore(&snap, &key, now) => {
                    tracing::info!(ids = snap.ids.len(), "request ids of the previous run restored");
                    true
                }
                _ => {
                    tracing::warn!(path = %path.display(), "the saved request ids do not verify; refusing requests signed before this start");
                    false
                }
            }
        }
        Err(_) => false,
    };
    if !restored {
        ctx.replay.set_not_before(now);
    }
}

/// Hand the live request ids to the next run (0600, MACed).
fn save_replay_cache(ctx: &Ctx) {
    let e = &ctx.estate;
    let snap = ctx.replay.snapshot(&e.vault_key(REPLAY_KEY_LABEL), e.clock().now_unix());
    let r = serde_json::to_vec(&snap)
        .map_err(std::io::Error::other)
        .and_then(|b| crate::fsutil::write_atomic(&e.dir.replay_snapshot(), &b, 0o600));
    if let Err(err) = r {
        tracing::warn!("cannot save the request ids for the next run (it will refuse requests signed before it starts): {err}");
    }
}

/// An error for a request the control plane cannot take right now.
pub fn unavailable(msg: &str) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, msg)
}

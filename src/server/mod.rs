//! The control plane (`tillit serve`).
//!
//! It connects to NATS twice with credentials it mints for itself in memory (a TILLIT user for the
//! API, a SYS user for account pushes), answers the `tillit.v1.…` subjects as a NATS micro
//! service (`$SRV.PING|INFO|STATS`, spoken by `micro.rs`), and serves `/healthz`, `/readyz` and `/metrics` over HTTP.
//!
//! Every request is a signed token ([`crate::proto`]): size-checked, verified, checked against the
//! replay cache, its signer looked up in the identity store, then dispatched. The reply is always
//! `{"result": …}` or `{"error": {"code", "message"}}`.

#[macro_use]
mod dispatch;
mod accounts;
mod auditlog;
pub mod callers;
pub mod callout;
pub mod dashboard;
mod export;
mod admin;
pub mod answers;
mod backup;
mod breakglass;
mod ca;
pub mod crl;
mod enroll;
mod micro;
pub mod observed;
mod events;
pub mod http;
mod origin;
pub mod leader;
mod own;
mod paging;
mod replies;
mod spill;
pub mod push;
pub mod reconcile;
mod secrets;
mod sites;
mod status;
pub mod stream;
mod tasks;

use crate::error::{ApiError, ErrorCode};
use crate::estate::Estate;
use crate::replay::ReplayCache;
use crate::subjects;
use crate::telemetry::Metrics;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
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

/// Work done after a reply has been sent.
#[derive(Debug)]
pub enum After {
    /// Revoke a burned token's bootstrap user (valid until the given time).
    RevokeBootstrap(String, i64),
}

/// In-memory state of the control plane: derived from the store or the servers, rebuilt after a
/// restart, never the only copy of anything.
#[derive(Default)]
pub struct Cache {
    /// Join tokens being enrolled with right now.
    pub burning: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Account name → `iat` of the JWT last pushed to nats-server.
    pub pushed: std::sync::Mutex<HashMap<String, i64>>,
    /// Service → its role, as pushed (its account's record: `accounts`), for the services seen
    /// last ([`RoleCache`]).
    pub roles: std::sync::RwLock<RoleCache>,
    /// Account name → public key.
    pub account_keys: std::sync::RwLock<HashMap<String, String>>,
    /// The store's count of other replicas' changes when the caches were last checked.
    pub seen_changes: std::sync::atomic::AtomicU64,
    /// Account name → the one copy of its record the role cache names (kept by `remember_account`).
    pub accounts: std::sync::RwLock<HashMap<String, Arc<crate::estate::AccountRecord>>>,
    /// What `status` counts of the identities ([`status::Summary`]), refreshed in the background.
    pub(crate) summary: std::sync::RwLock<Option<Arc<status::Summary>>>,
}

/// What `serve`'s saved OCSP statuses are MACed under.
const OCSP_STATUSES_KEY_LABEL: &str = "tillit ocsp statuses v1";

/// How many roles the role cache holds at most.
const ROLE_CACHE_MAX: usize = 4096;

/// Roles by service, at most 4,096; the entry taken in first leaves first. A role
/// not held is read from the store (`accounts::ensure_role_pushed`): renewals come every half
/// lifetime, so an estate of 100,000 services costs a few reads a second, not ~600 bytes a
/// service for ever.
#[derive(Default)]
pub struct RoleCache {
    map: HashMap<crate::names::ServiceId, crate::estate::RoleRecord>,
    order: std::collections::VecDeque<crate::names::ServiceId>,
}

impl RoleCache {
    pub fn get(&self, sid: &crate::names::ServiceId) -> Option<&crate::estate::RoleRecord> {
        self.map.get(sid)
    }

    pub fn insert(&mut self, role: crate::estate::RoleRecord) {
        let sid = role.service.clone();
        if self.map.insert(sid.clone(), role).is_none() {
            self.order.push_back(sid);
            while self.order.len() > ROLE_CACHE_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

impl Cache {
    /// Forget what was derived from the store (another replica changed it).
    pub fn clear(&self) {
        if let Ok(mut m) = self.pushed.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.roles.write() {
            m.clear();
        }
        if let Ok(mut m) = self.accounts.write() {
            m.clear();
        }
        if let Ok(mut m) = self.account_keys.write() {
            m.clear();
        }
    }
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
    /// What the control plane remembers between requests (nothing the store does not hold).
    pub cache: Cache,
    /// Bootstrap users to revoke, batched by `accounts::run_revoker`.
    pub revoke_tx: mpsc::UnboundedSender<(String, i64)>,
    /// Public key of the BOOTSTRAP account (enrollment requests must come from it).
    pub bootstrap_account: String,
    /// The signed event stream.
    pub events: stream::Events,
    /// The control plane's xkey (secrets in and out), opened once, with a box per reader.
    pub xkey: crate::crypto::Sealer,
    /// Serialises CA rotation steps.
    pub ca_lock: tokio::sync::Mutex<()>,
    /// Wakes the renewal of the control plane's own credentials now (`rotate ca --finish`).
    pub renew_own: Arc<tokio::sync::Notify>,
    /// Whether this replica runs the singleton jobs.
    pub leader: leader::Leadership,
    /// Replies kept for requests retried after a lost reply.
    pub replies: replies::ReplyCache,
    /// The pre-signed OCSP answers this replica publishes and answers from.
    pub answers: Arc<answers::Answers>,
    /// The dashboard's one-time URLs and browser sessions (shared with the HTTP port).
    pub dashboard: Arc<dashboard::Sessions>,
    /// The caller key sets' publisher.
    pub callers: Arc<callers::Publisher>,
    /// This replica's auth callout decisions (callout mode).
    pub callout_stats: Arc<callout::Stats>,
    /// Orders the callout's answers before a push that rotates their keys.
    pub callout_gate: callout::AnswerGate,
}

/// A start-up step, timed: logged at debug, and at info when it took long enough for an
/// operator waiting on `/readyz` to want to know (a pass over a large estate).
async fn step<T>(name: &str, f: impl Future<Output = T>) -> T {
    let began = std::time::Instant::now();
    let out = f.await;
    let took = began.elapsed();
    if took >= std::time::Duration::from_millis(250) {
        tracing::info!(?took, "start-up step: {name}");
    } else {
        tracing::debug!(?took, "start-up step: {name}");
    }
    out
}

fn stopped(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Run the control plane until `shutdown` completes: HTTP first (so `/healthz` answers while
/// NATS comes up), then its own NATS connections, the context every handler shares, the start-up
/// steps, the named background tasks (`tasks.rs`), and the endpoints (`dispatch::routes`).
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
    // The published OCSP statuses, kept current from the bucket once NATS is up; saved, so a
    // restarted replica answers as the responders do before it reaches the bucket. Statuses
    // only: this process holds the CA and signs each answer when asked, and a copy of every
    // pre-signed answer would grow by ~1.5 KiB per certificate of the estate.
    let copy = Arc::new(crate::ocsp::copy::Copy::load_compact(estate.dir.ocsp_answers(), estate.vault_key(OCSP_STATUSES_KEY_LABEL)));
    let sessions = Arc::new(dashboard::Sessions::default());
    let crl = Arc::new(crl::CrlCache::default());
    let http_state = http::HttpState {
        serving: serving.clone(),
        conns: conns.clone(),
        metrics: metrics.clone(),
        estate: estate.clone(),
        answers: copy.clone(),
        dashboard: sessions.clone(),
        crl: crl.clone(),
    };
    let http_task = start_http(&estate, http_state.clone(), &stop_rx).await?;

    let renew_own = Arc::new(tokio::sync::Notify::new());
    let Some(own) = own::connect(&estate, &metrics, &stop_rx, renew_own.clone()).await? else {
        let _ = http_task.await;
        return Ok(());
    };
    let _ = conns.set(vec![("api".into(), own.api.clone()), ("sys".into(), own.sys.clone())]);
    let (revoke_tx, revoke_rx) = mpsc::unbounded_channel();
    let ctx = Ctx::new(&http_state, own.api.clone(), own.sys, revoke_tx, renew_own).await?;
    let ctx = Arc::new(Ctx { dashboard: sessions.clone(), ..ctx });
    let _ = sessions.ctx.set(Arc::downgrade(&ctx));

    tasks::restore_replay_cache(&ctx);
    // A replica learns whether it leads before the start-up steps that only the leader takes.
    step("first lease step", tasks::first_lease_step(&ctx)).await;
    if ctx.leader.is_leader() {
        step("default permissions of every role", admin::add_missing_defaults(&ctx)).await;
        // An estate from before the service index: built once (until then, listing a service's
        // identities reads every identity).
        match step("service index", async { estate.build_service_index() }).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(identities = n, "indexed the service identities by service"),
            Err(e) => tracing::warn!("cannot index the service identities: {e}; listing a service's identities reads them all until a restart"),
        }
        match estate.build_identity_order() {
            Ok(0) => {}
            Ok(n) => tracing::info!(identities = n, "indexed the identities in list order"),
            Err(e) => tracing::warn!("cannot index the identities in list order: {e}; each page of `tillit list` reads them all until a restart"),
        }
    }
    step("account push", tasks::push_all_accounts(&ctx)).await?;
    // The stream that keeps break-glass connections while `serve` is down exists from the
    // first start on (the next run of its reader records what it holds).
    let replicas = estate.config.store.replicas();
    if let Err(e) = breakglass::ensure_stream(&ctx.api, replicas).await {
        tracing::error!("cannot create the {} stream: break-glass connections are not kept while serve is down: {e}", subjects::BREAK_GLASS_STREAM);
    }
    step("sites", sites::start_sites(&ctx)).await;
    if ctx.leader.is_leader() {
        // Maintenance the periodic jobs also do, in the background: serving need not wait.
        let c = ctx.clone();
        tokio::spawn(async move {
            step("former keys settled", admin::retire_leftover_keys(&c, true)).await;
            // Every service's caller key set, now (a publish the last run did not finish is made good).
            callers::sweep(&c).await;
        });
    }
    // BOOTSTRAP carries the live revocations of used tokens' bootstrap users.
    let revocations = step("bootstrap revocations", accounts::start_revocations(&ctx)).await.map_err(|e| ServeError::Service(e.message))?;
    // The counts for status, off the async threads (a pass over the store); until they are
    // made, status makes them itself.
    {
        let c = ctx.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = status::refresh_summary(&c) {
                tracing::warn!("cannot count the identities for status: {e}");
            }
        });
    }
    step("responder access", tasks::refresh_responder_access(&ctx)).await;
    let mut background = own.renewals;
    background.extend(tasks::start(&ctx, Box::pin(accounts::run_revoker(ctx.clone(), revocations, revoke_rx))));

    let service = micro::Service::start(
        &own.api,
        micro::Config {
            name: subjects::SERVICE_NAME,
            version: env!("CARGO_PKG_VERSION"),
            description: "tillit trust control plane",
            metadata: [
                ("trust_domain".to_string(), estate.trust_domain().to_string()),
                ("api".to_string(), subjects::API_PREFIX.to_string()),
            ]
            .into(),
            started: crate::clock::rfc3339(estate.clock().now_unix()),
        },
    )
    .await
    .map_err(|e| ServeError::Service(e.to_string()))?;
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut endpoint_tasks = Vec::new();
    for route in dispatch::routes() {
        endpoint_tasks.push(serve_route(&service, route, &ctx, &permits, &stop_rx).await?);
    }
    let backup_socket = backup::start(&ctx, &stop_rx);
    serving.store(true, Ordering::SeqCst);
    tracing::info!(trust_domain = estate.trust_domain(), urls = ?estate.config.urls(), "tillit control plane serving");
    if let Some(fault) = crate::natsbin::known_fault(&ctx.api.server_info().version) {
        tracing::warn!("{fault}");
    }

    stopped(&stop_rx).await;
    tracing::info!("shutting down");
    serving.store(false, Ordering::SeqCst);
    for t in endpoint_tasks {
        let _ = t.await;
    }
    // Let in-flight requests finish (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(5), permits.acquire_many(MAX_IN_FLIGHT as u32)).await;
    // NATS calls at shutdown are bounded: the server may be gone.
    service.stop();
    let _ = tokio::time::timeout(Duration::from_secs(2), own.api.flush()).await;
    let _ = http_task.await;
    if let Some(t) = backup_socket {
        let _ = t.await;
    }
    for t in background {
        t.abort();
        let _ = t.await;
    }
    // The audit head anchor names the last record (it is rewritten at most every 200 ms).
    let _ = tokio::time::timeout(Duration::from_secs(5), ctx.journal.settle()).await;
    tasks::save_replay_cache(&ctx);
    replies::spill_all(&ctx);
    {
        let c = ctx.clone();
        let _ = tokio::task::spawn_blocking(move || leader::leave(&c)).await;
    }
    // Flush the store (the audit log already holds every change), then let go of it.
    let store = estate.store_arc();
    let _ = tokio::task::spawn_blocking(move || store.sync()).await;
    drop(ctx);
    tracing::info!("stopped");
    Ok(())
}

impl Ctx {
    /// The context of the handlers, sharing the estate, metrics, OCSP statuses and CRLs of the
    /// HTTP port's `shared`.
    async fn new(
        shared: &http::HttpState,
        api: async_nats::Client,
        sys: async_nats::Client,
        revoke_tx: mpsc::UnboundedSender<(String, i64)>,
        renew_own: Arc<tokio::sync::Notify>,
    ) -> Result<Ctx, ServeError> {
        let (estate, metrics, copy, crl) = (shared.estate.clone(), shared.metrics.clone(), shared.answers.clone(), shared.crl.clone());
        let service_err = |e: &dyn std::fmt::Display| ServeError::Service(e.to_string());
        let creds_err = |e: &dyn std::fmt::Display| ServeError::Creds(e.to_string());
        let signer = estate.envelope_signer().map_err(|e| service_err(&e))?;
        let replicas = estate.config.store.replicas();
        let answers = Arc::new(answers::Answers::open(api.clone(), copy, replicas).await.map_err(ServeError::Service)?);
        let told = answers.clone();
        let callers = Arc::new(callers::Publisher::default());
        let keys_told = callers.clone();
        let journal = open_journal(&estate).await.map_err(|e| service_err(&e))?.with_observer(crate::audit::Observer {
            filter: |op| answers::watched(op) || callers::watched(op) || crl::watched(op),
            notify: Arc::new(move |ops| {
                let seen = observed::all(&ops);
                crl.told(&seen);
                keys_told.touch(&seen);
                told.touch(answers::touches(&seen));
            }),
        });
        let first_seq: Option<u64> = estate.meta_flag(stream::EVENTS_FIRST_SEQ).ok().flatten();
        let events = stream::Events::start(api.clone(), signer, replicas, first_seq).await.map_err(|e| ServeError::Service(format!("event stream: {e}")))?;
        Ok(Ctx {
            replay: ReplayCache::new(REPLAY_CAPACITY),
            sys,
            api,
            journal,
            cache: Cache::default(),
            revoke_tx,
            bootstrap_account: estate.account(crate::estate::BOOTSTRAP_ACCOUNT).map_err(|e| creds_err(&e))?.public_key,
            events,
            xkey: crate::crypto::Sealer::new(&estate.xkey().map_err(|e| creds_err(&e))?).map_err(|e| creds_err(&e))?,
            ca_lock: Default::default(),
            renew_own,
            replies: replies::ReplyCache::open(&estate),
            answers,
            dashboard: Default::default(),
            callers,
            callout_stats: Default::default(),
            callout_gate: Default::default(),
            leader: leader::Leadership::new(
                match &estate.config.store {
                    crate::config::StoreBackend::JetStream { lease_ttl, .. } => Some(*lease_ttl),
                    crate::config::StoreBackend::Sled => None,
                },
                estate.clock().now_unix(),
            ),
            estate,
            metrics,
        })
    }
}

/// Bind the HTTP listener(s) and serve `/healthz`, `/readyz`, `/ocsp`, `/crl` and `/metrics`
/// (on loopback, or on `http.metrics_addr` only).
async fn start_http(estate: &Estate, state: http::HttpState, stop: &watch::Receiver<bool>) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let addr = estate.config.http_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::HttpBind { addr: addr.to_string(), source })?;
    http::raise_fd_limit();
    let metrics_here = match estate.config.metrics_addr {
        Some(_) => false,
        None if addr.ip().is_loopback() => true,
        None => {
            tracing::warn!(%addr, "/metrics is not served on a non-loopback HTTP address; set http.metrics_addr to a listener for it");
            false
        }
    };
    let main_router = http::router(state.clone(), metrics_here);
    let task = tokio::spawn(http::serve_http(listener, main_router, estate.config.http_max_connections, stopped(stop)));
    tracing::info!(%addr, metrics = metrics_here, "HTTP: /healthz /readyz /ocsp /crl /dashboard{}", if metrics_here { " /metrics" } else { "" });
    if let Some(maddr) = estate.config.metrics_addr {
        let l = tokio::net::TcpListener::bind(maddr)
            .await
            .map_err(|source| ServeError::HttpBind { addr: maddr.to_string(), source })?;
        tokio::spawn(http::serve_http(l, http::metrics_router(state), 64, stopped(stop)));
        tracing::info!(addr = %maddr, "HTTP: /metrics");
    }
    Ok(task)
}

/// Add `route`'s endpoint to the micro service and serve its requests, at most
/// [`MAX_IN_FLIGHT`] at once across all endpoints, until told to stop.
async fn serve_route(
    service: &micro::Service,
    route: dispatch::Route,
    ctx: &Arc<Ctx>,
    permits: &Arc<Semaphore>,
    stop: &watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let subject = route.spec.subject;
    let mut endpoint = service.endpoint(subject).await.map_err(|e| ServeError::Service(format!("{subject}: {e}")))?;
    let (ctx, permits, stop) = (ctx.clone(), permits.clone(), stop.clone());
    Ok(tokio::spawn(async move {
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
    }))
}

async fn handle(ctx: Arc<Ctx>, route: dispatch::Route, req: micro::Request) {
    let spec = route.spec;
    let start = Instant::now();
    // A reply goes to an inbox, never to a subject the requester picked elsewhere (the
    // stream's API, say): such a request is dropped unanswered and unprocessed.
    if !req.message.reply.as_deref().is_some_and(subjects::is_reply_subject) {
        ctx.metrics.observe(spec.subject, "bad_reply_subject", start.elapsed().as_secs_f64());
        tracing::warn!(subject = spec.subject, reply = ?req.message.reply.as_deref(), "request with a reply subject that is not an inbox; dropped");
        return;
    }
    // A changing request will commit: the journal's group may wait a moment for it.
    let result = if crate::proto::changes(spec.subject) {
        ctx.journal.expecting(dispatch::dispatch(&ctx, &route, &req.message)).await
    } else {
        dispatch::dispatch(&ctx, &route, &req.message).await
    };
    let mut headers = async_nats::HeaderMap::new();
    let mut after = None;
    let mut failed = None;
    let mut bytes = match result {
        Ok((v, a)) => {
            after = a;
            ctx.metrics.observe(spec.subject, "ok", start.elapsed().as_secs_f64());
            // `{"result": …}` around the reply's JSON as it is (through a `Value`, it would be
            // parsed and written again).
            let raw = v.get().as_bytes();
            let mut b = Vec::with_capacity(raw.len() + 11);
            b.extend_from_slice(b"{\"result\":");
            b.extend_from_slice(raw);
            b.push(b'}');
            b
        }
        Err(e) => {
            ctx.metrics.observe(spec.subject, e.code.as_str(), start.elapsed().as_secs_f64());
            tracing::info!(subject = spec.subject, code = e.code.as_str(), "refused: {}", e.message);
            headers.insert(subjects::HDR_SERVICE_ERROR, e.message.as_str());
            headers.insert(subjects::HDR_SERVICE_ERROR_CODE, e.code.status().to_string().as_str());
            failed = Some(format!("{}:{}", e.code.status(), e.message));
            serde_json::to_vec(&serde_json::json!({ "error": e })).unwrap_or_else(|_| b"{\"error\":{\"code\":\"internal\",\"message\":\"encoding\"}}".to_vec())
        }
    };
    let max = ctx.api.server_info().max_payload;
    if max > 0 && bytes.len() > max {
        tracing::error!(subject = spec.subject, size = bytes.len(), max, "reply larger than max_payload");
        let e = ApiError::new(ErrorCode::LimitExceeded, format!("the reply would be {} bytes, over the server's max_payload {max}{}", bytes.len(), if paged(spec.subject) { "; ask for it by pages with `limit` and `after`" } else { "" }));
        bytes = serde_json::to_vec(&serde_json::json!({ "error": e })).unwrap_or_default();
    }
    if let Err(e) = req.respond(bytes.into(), headers, failed).await {
        tracing::warn!(subject = spec.subject, "could not send reply: {e}");
    }
    match after {
        Some(After::RevokeBootstrap(user, exp)) => {
            let _ = ctx.revoke_tx.send((user, exp));
        }
        None => {}
    }
}

/// Whether the verb on `subject` answers by pages ([`paging`]).
fn paged(subject: &str) -> bool {
    [crate::proto::List::SUBJECT, crate::proto::SecretList::SUBJECT, crate::proto::SiteList::SUBJECT].contains(&subject)
}

/// An error for a request the control plane cannot take right now.
/// The message of a change another replica raced (the request is served again, never seen by
/// the caller unless it keeps racing).
pub(crate) const RACED: &str = "another replica changed the estate at the same time; retry";
/// The message of a change the store could not take right now (JetStream electing a leader):
/// nothing changed; dispatch serves the request again for a while.
pub(crate) const STORE_AWAY: &str = "the store is not reachable right now; nothing was changed; retry shortly";

/// The journal the store calls for: the local file beside sled, a stream beside a JetStream
/// bucket (opened on a thread of its own: it waits on NATS synchronously).
async fn open_journal(estate: &Estate) -> Result<Journal, audit::AuditError> {
    let (store, clock, key) = (estate.store_arc(), estate.clock().clone(), estate.audit_key());
    match (&estate.config.store, store.nats()) {
        (crate::config::StoreBackend::JetStream { journal, replicas, .. }, Some(client)) => {
            let (name, replicas, file) = (journal.clone(), *replicas, estate.dir.audit_log());
            let imported = store.get(crate::store::Space::Meta, "audit_checkpoint").ok().flatten().is_some();
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(audit::StreamWriter::open(client, &name, replicas, store, clock, key, imported.then_some(file)));
            });
            let w = rx.await.map_err(|_| audit::AuditError::Stopped)??;
            Ok(Journal::start(w))
        }
        _ => Ok(Journal::start(audit::Writer::open(&estate.dir.audit(), store, clock, key)?)),
    }
}

/// A journal failure as the caller sees it: a race with another replica is
/// [`ErrorCode::Unavailable`] with [`RACED`] (dispatch serves the request again), anything else
/// internal.
pub(crate) fn journal_error(e: crate::audit::AuditError) -> ApiError {
    match e {
        crate::audit::AuditError::Conflict => ApiError::new(ErrorCode::Unavailable, RACED),
        crate::audit::AuditError::Unavailable(m) => {
            tracing::warn!("the journal is not writable right now: {m}");
            ApiError::new(ErrorCode::Unavailable, STORE_AWAY)
        }
        crate::audit::AuditError::NoSpace(m) => {
            tracing::error!("cannot record a change: {m}; free space in (or remount read-write) the data dir: {}", DATA_FULL);
            ApiError::new(ErrorCode::Unavailable, DATA_FULL)
        }
        e => ApiError::internal(e),
    }
}

/// The message of a change refused because the data dir takes no more writes.
pub(crate) const DATA_FULL: &str = "the control plane's data dir takes no more writes (disk full or read-only); nothing was changed; an operator must free space";

pub fn unavailable(msg: &str) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The role cache holds the services seen last, at most [`ROLE_CACHE_MAX`]; the first taken
    /// in leaves first, and taking a held role in again does not count twice.
    #[test]
    fn the_role_cache_stays_within_its_bound() {
        let role = |i: usize| crate::estate::RoleRecord {
            account: "acme-prod".into(),
            service: crate::names::ServiceId::parse(&format!("acme/shop/prod/s{i}")).unwrap(),
            key: format!("K{i}"),
            permissions: Default::default(),
            created_at: 0,
            updated_at: 0,
            previous: vec![],
        };
        let mut c = RoleCache::default();
        for i in 0..ROLE_CACHE_MAX {
            c.insert(role(i));
        }
        c.insert(role(0));
        assert_eq!(c.len(), ROLE_CACHE_MAX);
        for i in ROLE_CACHE_MAX..ROLE_CACHE_MAX + 10 {
            c.insert(role(i));
        }
        assert_eq!((c.len(), c.order.len()), (ROLE_CACHE_MAX, ROLE_CACHE_MAX));
        assert!(c.get(&role(0).service).is_none() && c.get(&role(9).service).is_none(), "the first in left first");
        assert_eq!(c.get(&role(10).service).map(|r| r.key.as_str()), Some("K10"));
        assert!(c.get(&role(ROLE_CACHE_MAX + 9).service).is_some());
        c.clear();
        assert!(c.is_empty() && c.order.is_empty());
    }
}

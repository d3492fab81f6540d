//! The control plane's own NATS credentials: minted in memory for its two connections (a TILLIT
//! user for the API, a SYS user for account pushes), never written to disk, renewed at 2/3 of
//! their life.

use super::{stopped, ServeError};
use crate::client::{self, tls, ConnectParams, NatsCreds};
use crate::estate::{Estate, SYS_ACCOUNT};
use crate::issuer::jwt::UserPermissions;
use crate::subjects;
use crate::telemetry::Metrics;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Credentials for a connection of the control plane as a user of `account` (the caller-key
/// publisher's, in each tenant account).
pub(super) fn params_for(
    estate: &Estate,
    account: &str,
    permissions: UserPermissions,
) -> Result<(ConnectParams, Arc<rustls::sign::CertifiedKey>, i64), ServeError> {
    own_params(estate, account, permissions)
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
/// publishes only events (and the JetStream API that stores them), pre-signed OCSP answers, notifications, and replies
/// to inboxes (`_INBOX.`, and `_R_.` for requests that crossed a service import). [`super::handle`]
/// answers only such reply subjects, so a requester-chosen reply subject cannot make the
/// control plane publish into the stream API or anywhere else. (nats-server's `resp` permission
/// would be tighter, but a config reload forgets the replies it allowed.)
pub(super) fn api_permissions() -> UserPermissions {
    UserPermissions::new(
        vec![
            "$JS.API.>".into(),
            // The pre-signed OCSP answers (`server::answers`).
            format!("$KV.{}.>", subjects::OCSP_BUCKET),
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

/// The name of the connection an account's credentials are for, as `/readyz` and the metrics
/// label it (`api`, `sys`).
fn connection_name(account: &str) -> &'static str {
    if account == SYS_ACCOUNT {
        "sys"
    } else {
        "api"
    }
}

/// One of the control plane's connections, as its renewal task keeps it.
struct OwnConnection {
    account: &'static str,
    params: ConnectParams,
    client: async_nats::Client,
    /// When its current credentials expire (Unix time).
    expires_at: i64,
}

/// Renew the control plane's own credentials at 2/3 of their life and reconnect with them; their
/// expiry goes to `tillit_own_credentials_expiry_timestamp_seconds`.
fn spawn_self_renewal(
    estate: Arc<Estate>,
    metrics: Arc<Metrics>,
    conn: OwnConnection,
    stop: watch::Receiver<bool>,
    now_please: Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    let OwnConnection { account, params, client, mut expires_at } = conn;
    tokio::spawn(async move {
        let connection = connection_name(account);
        metrics.set_own_credentials_expiry(connection, expires_at);
        loop {
            let now = estate.clock().now_unix();
            let issued = now.min(expires_at);
            let at = crate::policy::renew::renew_at(issued, expires_at, crate::policy::renew::random_jitter());
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
                    metrics.set_own_credentials_expiry(connection, exp);
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

/// The control plane's two live connections, and the tasks that keep their credentials fresh.
pub(super) struct Own {
    pub(super) api: async_nats::Client,
    pub(super) sys: async_nats::Client,
    pub(super) renewals: Vec<tokio::task::JoinHandle<()>>,
}

/// Mint the control plane's credentials, connect both (retrying until NATS is up; `None` if told
/// to stop first), and start renewing them ([`spawn_self_renewal`], woken early by `now_please`).
pub(super) async fn connect(estate: &Arc<Estate>, metrics: &Arc<Metrics>, stop: &watch::Receiver<bool>, now_please: Arc<tokio::sync::Notify>) -> Result<Option<Own>, ServeError> {
    let (api_params, _, api_exp) = own_params(estate, crate::estate::TILLIT_ACCOUNT, api_permissions())?;
    let (sys_params, _, sys_exp) = own_params(estate, SYS_ACCOUNT, sys_permissions())?;
    let Some(api) = connect_until(&api_params, "api", stop).await else { return Ok(None) };
    let Some(sys) = connect_until(&sys_params, "sys", stop).await else { return Ok(None) };
    let renewals = vec![
        spawn_self_renewal(
            estate.clone(),
            metrics.clone(),
            OwnConnection { account: crate::estate::TILLIT_ACCOUNT, params: api_params, client: api.clone(), expires_at: api_exp },
            stop.clone(),
            now_please.clone(),
        ),
        spawn_self_renewal(
            estate.clone(),
            metrics.clone(),
            OwnConnection { account: SYS_ACCOUNT, params: sys_params, client: sys.clone(), expires_at: sys_exp },
            stop.clone(),
            now_please,
        ),
    ];
    Ok(Some(Own { api, sys, renewals }))
}

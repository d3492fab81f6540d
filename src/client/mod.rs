//! The client side: connecting to NATS as a tillit identity and calling the control plane.
//!
//! [`connect`] returns an `async_nats::Client` that authenticates with the identity's user JWT
//! (nonce signed by its seed, through the auth callback so renewed credentials are picked up on
//! the next reconnect), presents its client certificate (swappable, see [`tls`]), trusts only the
//! tillit CA, uses its private inbox prefix, and reconnects at once after a server-side bounce.
//! [`TillitClient`] adds signed request-reply calls.

pub mod call;
pub mod enroll;
pub mod secrets;
pub mod session;
pub mod tls;

use crate::clock::SystemClock;
use crate::crypto::SecretString;
use crate::error::ApiError;
use crate::identity::{self, IdentityFiles};
use crate::layout::IdentityDir;
use crate::proto::{self, Endpoint};
use nkeys::KeyPair;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a request waits for the control plane (sent again, the same, each
/// [`call::ATTEMPT_TIMEOUT`]): long enough to ride out a clustered JetStream electing a new
/// leader after a node died (4 to 9 s) while the control plane waits for it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What kind of failure a connection attempt met, as far as the client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The server refuses these credentials: an authorization violation, or the certificate
    /// refused at the handshake (revoked, expired, from a retired CA).
    Refused,
    /// The server's certificate is not from this identity's CA (another estate's server, or a
    /// bundle older than a CA rotation).
    Untrusted,
    /// Anything else: unreachable, timed out, a malformed URL, a server restarting.
    Other,
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The identity dir could not be read, or its files are missing or malformed (was it written by `tillit enroll`?).
    #[error("identity: {0}")]
    Identity(#[from] identity::IdentityError),
    /// Key material is unusable: a bad seed, a malformed join token, a trust set without the control plane's xkey, a dir
    /// that already holds an identity. The message says which; fix the dir or enroll again.
    #[error("identity credentials are unusable: {0}")]
    Credentials(String),
    /// The TLS material (CA bundle, client certificate or key) could not be loaded.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// No connection could be made to NATS; `reason` says why.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URLs tried, comma-separated.
        url: String,
        /// Why it failed (refused, timed out, credentials refused, TLS), with a hint.
        reason: String,
        /// What kind of failure it was.
        failure: ConnectFailure,
    },
    /// The control plane did not answer within `timeout`: it is not running, or is overloaded; retry later.
    #[error("no reply from the control plane on {subject} within {timeout:?}; is `tillit serve` running?")]
    Timeout {
        /// The subject the request was sent on.
        subject: String,
        /// How long the client waited ([`REQUEST_TIMEOUT`]).
        timeout: Duration,
    },
    /// Nothing subscribes to `subject`: the control plane is not running, or not connected to this NATS server.
    #[error("nothing answers {subject}; is `tillit serve` running and connected to this server?")]
    NoResponders {
        /// The subject the request was sent on.
        subject: String,
    },
    /// The request could not be sent (the connection closed, …).
    #[error("request on {subject} failed: {reason}")]
    Request {
        /// The subject the request was for.
        subject: String,
        /// Why it could not be sent (the connection closed, …).
        reason: String,
    },
    /// An admin verb asked with an identity that is not an admin's: nothing was sent.
    #[error("{id} is a {kind} identity, not an admin's: this command needs an admin identity (`--identity DATA/admin`, or one from `tillit admin add`)")]
    NotAdmin {
        /// The identity used.
        id: String,
        /// Its kind (`service`, `agent`).
        kind: String,
    },
    /// The control plane refused the request or failed; match on the error's `code`.
    #[error("control plane refused: {0}")]
    Api(ApiError),
    /// The reply does not decode, or what it carries fails the client's checks (credentials not for this key or not
    /// from the pinned CA, a secret sealed by another key); nothing of it was used.
    #[error("reply from the control plane is malformed: {0}")]
    Protocol(String),
}

impl From<ApiError> for ClientError {
    fn from(e: ApiError) -> Self {
        ClientError::Api(e)
    }
}

/// The NATS credentials of an identity, replaceable on renewal.
#[derive(Debug)]
pub struct NatsCreds {
    /// The user JWT the connection presents.
    pub user_jwt: String,
    /// The user nkey's seed, which signs the server's nonce (a secret).
    pub user_seed: SecretString,
}

/// Everything a connection needs, shared with the renewal task.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// The NATS URLs to connect to.
    pub urls: Vec<String>,
    /// The connection's name, as the server reports it (an identity's SPIFFE id).
    pub name: String,
    /// The identity's private inbox prefix (`_INBOX.<user public key>`); the server refuses other inboxes.
    pub inbox_prefix: String,
    /// The CA bundle (PEM) servers are verified against, unless one was already swapped into `cert`.
    pub ca_pem: String,
    /// The NATS credentials; a renewal replaces them and the next (re)connect uses them.
    pub creds: Arc<RwLock<NatsCreds>>,
    /// The client certificate and CA bundle, replaceable while connections use them.
    pub cert: Arc<tls::SwappableCert>,
    /// Give up after this many failed reconnects (`None`: never give up).
    pub max_reconnects: Option<usize>,
}

impl ConnectParams {
    /// From an identity dir's files; `url` overrides the identity's NATS URLs.
    pub fn from_identity(files: &IdentityFiles, url: Option<&str>) -> Result<Self, ClientError> {
        let cert = tls::SwappableCert::new(tls::certified_key(&files.cert_pem, files.key_pem.expose())?);
        KeyPair::from_seed(files.user_seed.expose()).map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(ConnectParams {
            urls: match url {
                Some(u) => vec![u.to_string()],
                None => files.info.nats_urls.clone(),
            },
            name: files.info.id.clone(),
            inbox_prefix: files.info.inbox_prefix.clone(),
            ca_pem: files.ca_pem.clone(),
            creds: Arc::new(RwLock::new(NatsCreds { user_jwt: files.user_jwt.clone(), user_seed: files.user_seed.clone() })),
            cert,
            max_reconnects: None,
        })
    }
}

/// Reconnect policy: the first attempt at once (the server bounces connections on permission
/// changes and expects them back within milliseconds), then exponential up to 2 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis((50u64 << (n - 2).min(6)).min(2000)),
    }
}

/// What a failed connection attempt says, with a hint, and what kind of failure it was.
fn describe_connect_error(e: &async_nats::ConnectError) -> (String, ConnectFailure) {
    use async_nats::ConnectErrorKind as K;
    use ConnectFailure::{Other, Refused, Untrusted};
    let text = e.to_string();
    match e.kind() {
        K::Io if text.contains("refused") => ("connection refused; is nats-server running and is the URL right?".into(), Other),
        K::TimedOut => ("timed out; is the host reachable?".into(), Other),
        K::AuthorizationViolation => (
            "authorization violation: the server refused this identity's credentials (expired, revoked, or from another operator)".into(),
            Refused,
        ),
        K::Tls | K::Io if text.contains("UnknownIssuer") => (
            format!(
                "TLS handshake failed ({text}): the server's certificate is not from this identity's CA; it belongs to another estate, or this identity's CA bundle predates a CA rotation (enroll again)"
            ),
            Untrusted,
        ),
        K::Tls | K::Io if text.contains("BadCertificate") || text.contains("CertificateRevoked") => (
            format!("TLS handshake failed ({text}): the server refused this identity's certificate: it was revoked, or is from a retired CA; enroll again"),
            Refused,
        ),
        K::Tls | K::Io if text.contains("CertificateExpired") => {
            (format!("TLS handshake failed ({text}): this identity's certificate has expired; enroll again"), Refused)
        }
        K::Tls => (format!("TLS handshake failed ({text}); does the server use the tillit CA in this identity's tls/ca.pem?"), Other),
        _ => (text, Other),
    }
}

/// Connect to NATS as the identity described by `params`.
pub async fn connect(params: &ConnectParams) -> Result<async_nats::Client, ClientError> {
    let tls = tls::client_config(&params.ca_pem, params.cert.clone())?;
    let creds = params.creds.clone();
    let opts = async_nats::ConnectOptions::with_auth_callback(move |nonce: Vec<u8>| {
        let creds = creds.clone();
        async move {
            let (jwt, seed) = {
                let g = creds.read().map_err(|_| async_nats::AuthError::new("credentials lock poisoned"))?;
                (g.user_jwt.clone(), g.user_seed.clone())
            };
            let kp = KeyPair::from_seed(seed.expose()).map_err(|e| async_nats::AuthError::new(e.to_string()))?;
            let sig = kp.sign(&nonce).map_err(|e| async_nats::AuthError::new(e.to_string()))?;
            let mut auth = async_nats::Auth::new();
            auth.jwt = Some(jwt);
            auth.signature = Some(sig);
            Ok(auth)
        }
    })
    .require_tls(true)
    .tls_client_config(tls)
    .custom_inbox_prefix(&params.inbox_prefix)
    .name(&params.name)
    .connection_timeout(CONNECT_TIMEOUT)
    .reconnect_delay_callback(reconnect_delay)
    .max_reconnects(params.max_reconnects);
    let url_list = params.urls.join(",");
    let addrs: Vec<async_nats::ServerAddr> = params
        .urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>().map_err(|e| ClientError::Connect { url: u.clone(), reason: e.to_string(), failure: ConnectFailure::Other }))
        .collect::<Result<_, _>>()?;
    // A first connection is tried three times (now, after 50 ms, after 200 ms) when the server
    // refused it or the link failed: nats-server refuses new connections for a few milliseconds
    // while it reloads its configuration (a CA rotation reloads every server once), and that
    // must not fail a client. Credentials that are really refused fail all three.
    let mut last = None;
    for pause in [0u64, 50, 200] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        match opts.clone().connect(addrs.as_slice()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                use async_nats::ConnectErrorKind as K;
                let transient = matches!(e.kind(), K::AuthorizationViolation | K::Io | K::Tls);
                last = Some(e);
                if !transient {
                    break;
                }
            }
        }
    }
    let (reason, failure) = last.map(|e| describe_connect_error(&e)).unwrap_or_else(|| (String::new(), ConnectFailure::Other));
    Err(ClientError::Connect { url: url_list, reason, failure })
}

/// An identity dir, loaded: the entry point of the client library.
///
/// ```no_run
/// # async fn demo() -> Result<(), tillit::client::ClientError> {
/// let id = tillit::client::Identity::load("./orders")?;
/// let session = id.connect().await?;           // mutual TLS + JWT, renews itself
/// session.client().publish("shop.orders.created", "o-1".into()).await.ok();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Identity {
    dir: IdentityDir,
    files: IdentityFiles,
}

impl Identity {
    /// Load and check an identity dir (`tillit enroll --out DIR` wrote it).
    pub fn load(dir: impl Into<std::path::PathBuf>) -> Result<Self, ClientError> {
        let dir = IdentityDir::new(dir.into());
        let files = identity::load(&dir)?;
        // Fail now, not at connect time, if the key material is unusable.
        tls::certified_key(&files.cert_pem, files.key_pem.expose())?;
        KeyPair::from_seed(files.user_seed.expose()).map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(Identity { dir, files })
    }
    /// Who this is, where it connects, when it expires.
    pub fn info(&self) -> &crate::identity::IdentityInfo {
        &self.files.info
    }
    /// Connect and keep the connection valid across renewals.
    pub async fn connect(&self) -> Result<session::Session, ClientError> {
        session::Session::connect(&self.dir, None).await
    }
    /// [`Identity::connect`] to another URL than the identity's.
    pub async fn connect_to(&self, url: &str) -> Result<session::Session, ClientError> {
        session::Session::connect(&self.dir, Some(url)).await
    }
}

pub use call::{request, RequestSigner};

/// A connected identity that can call the control plane.
pub struct TillitClient {
    nats: async_nats::Client,
    signer: RequestSigner,
    files: IdentityFiles,
}

impl TillitClient {
    /// Load `dir` and connect (`url` overrides the identity's URLs).
    pub async fn connect_dir(dir: &IdentityDir, url: Option<&str>) -> Result<Self, ClientError> {
        let files = identity::load(dir)?;
        let params = ConnectParams::from_identity(&files, url)?;
        let nats = connect(&params).await?;
        let signer = KeyPair::from_seed(files.user_seed.expose()).map_err(|e| ClientError::Credentials(e.to_string()))?;
        let signer = RequestSigner::new(signer, files.info.trust_domain.clone(), Arc::new(SystemClock));
        Ok(TillitClient { nats, signer, files })
    }

    /// The NATS connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }
    /// The identity's files as loaded (keys included: keep them in memory only).
    pub fn identity(&self) -> &IdentityFiles {
        &self.files
    }

    /// Call verb `E` of the control plane with `body`.
    pub async fn call<E: Endpoint>(&self, body: E::Request) -> Result<E::Reply, ClientError> {
        if E::CALLER == proto::Caller::Admin && self.files.info.kind != crate::identity::IdentityKind::Admin {
            return Err(ClientError::NotAdmin { id: self.files.info.id.clone(), kind: self.files.info.kind.as_str().to_string() });
        }
        self.signer.call::<E>(&self.nats, body).await
    }

    /// `tillit.v1.admin.status`.
    pub async fn status(&self) -> Result<proto::StatusReply, ClientError> {
        self.call::<proto::Status>(proto::StatusRequest {}).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_at_once_then_backs_off_to_two_seconds() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(50));
        assert_eq!(reconnect_delay(3), Duration::from_millis(100));
        assert_eq!(reconnect_delay(7), Duration::from_millis(1600));
        assert_eq!(reconnect_delay(8), Duration::from_millis(2000));
        assert_eq!(reconnect_delay(1000), Duration::from_millis(2000));
    }
}

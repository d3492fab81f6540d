//! A NATS connection that stays valid by itself.
//!
//! [`Session::connect`] loads an identity dir and connects (mutual TLS + JWT). A background task
//! renews the identity at its `renew_at` (2/3 of its life, with jitter): a fresh TLS key and CSR,
//! one signed request on `tillit.v1.svc.renew`, the new files written atomically, the new JWT and
//! certificate swapped into the live connection's auth callback and TLS resolver, then a
//! reconnect (nats-server cannot reload credentials on a live connection). Publishes made while
//! it reconnects are buffered by the client and sent after; subscriptions are restored. The
//! application keeps using the same `async_nats::Client` throughout.

use super::enroll::files_from_reply;
use super::{connect, tls, ClientError, ConnectParams, NatsCreds, RequestSigner};
use crate::clock::{rfc3339, SharedClock, SystemClock};
use crate::identity::{self, IdentityFiles, IdentityInfo};
use crate::issuer::x509;
use crate::layout::IdentityDir;
use crate::proto::{self, Endpoint, RenewRequest};
use crate::policy::renew;
use crate::subjects;
use nkeys::KeyPair;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::Mutex;

struct Inner {
    dir: IdentityDir,
    params: ConnectParams,
    files: std::sync::RwLock<IdentityFiles>,
    clock: SharedClock,
    renewing: Mutex<()>,
    /// Signs requests as the identity's nkey (it never changes: renewal keeps it).
    signer: RequestSigner,
    /// Opens sealed secrets; rebuilt after a renewal (the trust set may have changed).
    opener: std::sync::RwLock<Option<Arc<super::secrets::Opener>>>,
}

/// A self-renewing connection as one identity.
pub struct Session {
    client: async_nats::Client,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
    notified: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("identity", &self.identity().id).finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(t) = &self.notified {
            t.abort();
        }
    }
}

impl Session {
    /// Try a fresh connection with this session's credentials (while its own keeps failing):
    /// `Some(why)` when the servers refuse them (an authorization violation, a certificate
    /// refused at the handshake: revoked, expired, from a retired CA), `None` when it connects or
    /// fails for any other reason (a partition, a server restarting).
    pub async fn refused_now(&self) -> Option<String> {
        match connect(&self.inner.params).await {
            Ok(c) => {
                drop(c);
                None
            }
            Err(ClientError::Connect { reason, failure: super::ConnectFailure::Refused | super::ConnectFailure::Untrusted, .. }) => Some(reason),
            Err(_) => None,
        }
    }

    /// Load `dir`, connect, and start renewing. `url` overrides the identity's NATS URLs.
    pub async fn connect(dir: &IdentityDir, url: Option<&str>) -> Result<Session, ClientError> {
        Self::connect_with_clock(dir, url, Arc::new(SystemClock)).await
    }

    /// [`Session::connect`] with an injected clock.
    pub async fn connect_with_clock(dir: &IdentityDir, url: Option<&str>, clock: SharedClock) -> Result<Session, ClientError> {
        let files = identity::load(dir)?;
        let params = ConnectParams::from_identity(&files, url)?;
        let client = connect(&params).await?;
        let key = KeyPair::from_seed(files.user_seed.expose()).map_err(|e| ClientError::Credentials(e.to_string()))?;
        let signer = RequestSigner::new(key, files.info.trust_domain.clone(), clock.clone());
        let inner = Arc::new(Inner {
            signer,
            dir: dir.clone(),
            params,
            files: std::sync::RwLock::new(files),
            clock,
            renewing: Mutex::new(()),
            opener: std::sync::RwLock::new(None),
        });
        let task = tokio::spawn(renewal_loop(client.clone(), inner.clone()));
        let notified = match notification_subject(&inner) {
            Some(subject) => {
                let sub = client.subscribe(subject).await.map_err(|e| ClientError::Request { subject: "notifications".into(), reason: e.to_string() })?;
                Some(tokio::spawn(notification_loop(client.clone(), inner.clone(), sub)))
            }
            None => None,
        };
        Ok(Session { client, inner, task, notified })
    }

    /// The connection. Clone it freely; it stays valid across renewals.
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// The identity as of the last renewal.
    pub fn identity(&self) -> IdentityInfo {
        self.inner.files.read().map(|f| f.info.clone()).unwrap_or_else(|p| p.into_inner().info.clone())
    }

    /// Renew now instead of waiting for `renew_at`.
    pub async fn renew_now(&self) -> Result<IdentityInfo, ClientError> {
        renew_once(&self.client, &self.inner).await
    }

    /// Read a secret this service may read: a bare name (in its own tenant/project/env) or a full
    /// path. The value crosses the broker sealed to this identity's xkey.
    pub async fn secret(&self, name: &str) -> Result<crate::crypto::SecretString, ClientError> {
        self.secret_version(name, None).await.map(|(v, _)| v)
    }

    /// [`Session::secret`] at a given version (`None`: the current one); returns the version.
    pub async fn secret_version(&self, name: &str, version: Option<u32>) -> Result<(crate::crypto::SecretString, u32), ClientError> {
        let reply = self.call::<proto::SecretGet>(proto::SecretGetRequest { name: name.into(), version }).await?;
        let opener = match self.inner.opener.read().ok().and_then(|o| o.clone()) {
            Some(o) => o,
            None => {
                let files = self.inner.files.read().map_err(|_| ClientError::Credentials("identity lock poisoned".into()))?;
                let o = Arc::new(super::secrets::Opener::new(&files)?);
                if let Ok(mut slot) = self.inner.opener.write() {
                    *slot = Some(o.clone());
                }
                o
            }
        };
        let plain = opener.open(&reply.value)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| ClientError::Protocol("secret is not UTF-8 text".into()))?;
        Ok((crate::crypto::SecretString::new(text), reply.version))
    }

    /// Sign an envelope (JWS EdDSA, CloudEvents) as this identity: `kid` is its nkey, `source`
    /// its SPIFFE id. The control plane pins the nkey from its records to verify it.
    pub fn sign_envelope<D: Serialize>(&self, kind: &str, subject: &str, aud: &str, ttl_secs: i64, data: D) -> Result<String, ClientError> {
        let (seed, id) = {
            let f = self.inner.files.read().map_err(|_| ClientError::Credentials("identity lock poisoned".into()))?;
            (f.user_seed.clone(), f.info.id.clone())
        };
        let key = KeyPair::from_seed(seed.expose()).map_err(|e| ClientError::Credentials(e.to_string()))?;
        let signer = crate::envelope::Signer::new(&key.public_key(), &id, Arc::new(key));
        signer.sign(kind, subject, aud, ttl_secs, None, data, self.inner.clock.now_unix()).map_err(|e| ClientError::Credentials(e.to_string()))
    }

    /// A request to another service of this tenant and environment, carrying a caller token
    /// ([`crate::service::CALLER_HEADER`]) signed by this instance's own nkey: `iss` this
    /// service, `aud` the service that owns `subject` (`<project>.<service>.…`), `sub` the
    /// subject, valid 30 s. The callee checks it with [`crate::service::Callers`].
    pub async fn request_as(&self, subject: &str, payload: bytes::Bytes) -> Result<async_nats::Message, ClientError> {
        let (me, id, td) = {
            let f = self.inner.files.read().map_err(|_| ClientError::Credentials("identity lock poisoned".into()))?;
            (f.info.service.clone(), f.info.id.clone(), f.info.trust_domain.clone())
        };
        let me = me.ok_or_else(|| ClientError::Credentials("caller tokens are for service identities".into()))?;
        let aud = crate::service::callee_of(&td, &me, subject)
            .ok_or_else(|| ClientError::Credentials(format!("{subject:?} names no service (want <project>.<service>.…)")))?;
        // The key the connection authenticates with (it does not change across renewals).
        let token = crate::service::sign(self.inner.signer.key(), &id, &aud, subject, 30, self.inner.clock.now_unix())
            .map_err(|e| ClientError::Credentials(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(crate::service::CALLER_HEADER, token.as_str());
        self.client
            .request_with_headers(subject.to_string(), headers, payload)
            .await
            .map_err(|e| ClientError::Request { subject: subject.into(), reason: e.to_string() })
    }

    /// The identity's files as of the last renewal (keys included: keep them in memory only).
    pub fn files(&self) -> Result<IdentityFiles, ClientError> {
        self.inner.files.read().map(|f| f.clone()).map_err(|_| ClientError::Credentials("identity lock poisoned".into()))
    }

    /// Call verb `E` of the control plane as this identity.
    pub async fn call<E: Endpoint>(&self, body: E::Request) -> Result<E::Reply, ClientError> {
        self.inner.signer.call::<E>(&self.client, body).await
    }
}

async fn renew_once(client: &async_nats::Client, inner: &Inner) -> Result<IdentityInfo, ClientError> {
    let _one = inner.renewing.lock().await;
    let files = inner.files.read().map_err(|_| ClientError::Credentials("identity lock poisoned".into()))?.clone();
    let me = inner.signer.public_key();
    let (csr, key) = x509::make_csr(&me).map_err(|e| ClientError::Credentials(e.to_string()))?;
    let reply = inner.signer.call::<proto::Renew>(client, RenewRequest { csr }).await?;
    let new = files_from_reply(
        reply,
        files.user_seed.clone(),
        key,
        files.xkey_seed.clone(),
        &me,
        &files.info.ca_fingerprint,
        files.info.nats_urls.clone(),
    )?;
    let to_disk = new.clone();
    if let Ok(mut c) = inner.params.creds.write() {
        *c = NatsCreds { user_jwt: new.user_jwt.clone(), user_seed: new.user_seed.clone() };
    }
    inner.params.cert.swap(tls::certified_key(&new.cert_pem, new.key_pem.expose())?);
    // A CA rotation reaches the client here: trust the bundle the control plane sent.
    inner.params.cert.swap_roots(&new.ca_pem)?;
    let info = new.info.clone();
    if let Ok(mut f) = inner.files.write() {
        *f = new;
    }
    if let Ok(mut o) = inner.opener.write() {
        *o = None;
    }
    // Send what is buffered, reconnect with the new JWT and certificate, and return only once
    // the new connection is up (a new client id), so later requests use it.
    let _ = client.flush().await;
    let old_cid = client.server_info().client_id;
    client
        .force_reconnect()
        .await
        .map_err(|e| ClientError::Request { subject: "reconnect".into(), reason: e.to_string() })?;
    // The files are written while the connection comes back (the old ones stay valid until
    // they expire, so a crash in between only means the next start renews again).
    let dir = inner.dir.clone();
    tokio::task::spawn_blocking(move || identity::write(&dir, &to_disk))
        .await
        .map_err(|e| ClientError::Credentials(format!("writing the identity: {e}")))??;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while client.server_info().client_id == old_cid || client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            tracing::warn!("still reconnecting 10s after renewal; the client keeps trying");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    tracing::info!(identity = %info.id, expires = %info.expires_at, next = %info.renew_at, "renewed credentials");
    Ok(info)
}

/// Where a service hears from the control plane (none for other kinds of identity).
fn notification_subject(inner: &Inner) -> Option<String> {
    let f = inner.files.read().ok()?;
    let sid = f.info.service.as_ref()?;
    (f.info.kind == crate::identity::IdentityKind::Service).then(|| subjects::notify_subject(&f.info.account, &sid.project, &sid.service))
}

/// On a verified `permissions.changed` for this service: renew onto the role's new key and
/// reconnect (after a flush), so the new permissions hold without the server closing the
/// connection under the application.
async fn notification_loop(client: async_nats::Client, inner: Arc<Inner>, mut sub: async_nats::Subscriber) {
    use futures::StreamExt;
    let verifier = {
        let Ok(f) = inner.files.read() else { return };
        let Ok(trust) = crate::envelope::TrustSet::from_jwks(f.trust_jwks.as_deref().unwrap_or("{\"keys\":[]}")) else { return };
        crate::envelope::Verifier::new(trust, vec![f.info.id.clone()], 1024)
    };
    let kind = subjects::EventKind::PermissionsChanged.envelope_type();
    while let Some(msg) = sub.next().await {
        let Ok(token) = std::str::from_utf8(&msg.payload) else { continue };
        match verifier.verify::<serde_json::Value>(token, &kind, inner.clock.now_unix()) {
            Ok(_) => {
                // A reply can be lost if the server reconnects this client meanwhile: retry.
                for (attempt, pause) in [0u64, 200, 1000].into_iter().enumerate() {
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                    match tokio::time::timeout(std::time::Duration::from_secs(3), renew_once(&client, &inner)).await {
                        Ok(Ok(info)) => {
                            tracing::info!(identity = %info.id, "permissions changed: moved to the new credentials");
                            break;
                        }
                        Ok(Err(e)) => tracing::warn!(attempt, "permissions changed, but renewing failed: {e}"),
                        Err(_) => tracing::warn!(attempt, "permissions changed, but renewing timed out"),
                    }
                }
            }
            Err(e) => tracing::warn!("ignored a notification: {e}"),
        }
    }
}

async fn renewal_loop(client: async_nats::Client, inner: Arc<Inner>) {
    let mut attempt: u32 = 0;
    loop {
        let (renew_at, expires) = match inner.files.read() {
            Ok(f) => (f.info.renew_at_unix, f.info.expires_at_unix),
            Err(_) => return,
        };
        let now = inner.clock.now_unix();
        if attempt == 0 {
            let wait = (renew_at - now).max(0) as u64;
            tracing::debug!(at = %rfc3339(renew_at), "next renewal");
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        }
        match renew_once(&client, &inner).await {
            Ok(_) => attempt = 0,
            Err(e) => {
                let now = inner.clock.now_unix();
                if now >= expires {
                    tracing::error!("identity expired before it could be renewed ({e}); enroll again with a new join token");
                    return;
                }
                let delay = renew::retry_delay(attempt, now, expires);
                attempt = attempt.saturating_add(1);
                tracing::warn!("renewal failed: {e}; retrying in {delay:?} (expires {})", rfc3339(expires));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

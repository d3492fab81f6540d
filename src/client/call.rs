//! The one signed caller: sign a verb's request as an identity's nkey, send it, decode the reply.
//! [`super::TillitClient`], [`super::session::Session`], enrollment and renewal all call the
//! control plane through [`RequestSigner::call`].

use super::{ClientError, REQUEST_TIMEOUT};
use crate::clock::SharedClock;
use crate::proto::{self, Endpoint, Reply};
use nkeys::KeyPair;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Signs requests as one nkey for one trust domain's control plane.
#[derive(Clone)]
pub struct RequestSigner {
    key: Arc<KeyPair>,
    trust_domain: String,
    clock: SharedClock,
}

impl std::fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSigner").field("key", &self.key.public_key()).field("trust_domain", &self.trust_domain).finish()
    }
}

impl RequestSigner {
    /// Sign as `key` for the control plane of `trust_domain`, with `clock`'s time.
    pub fn new(key: KeyPair, trust_domain: impl Into<String>, clock: SharedClock) -> Self {
        RequestSigner { key: Arc::new(key), trust_domain: trust_domain.into(), clock }
    }

    /// The identity's own key (to sign caller tokens with, `crate::service::sign`).
    pub(crate) fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The public nkey requests are signed by.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The signed request token of verb `E` with `body`.
    pub fn sign<E: Endpoint>(&self, body: &E::Request) -> Result<String, ClientError> {
        proto::sign_request(&self.key, &self.trust_domain, E::SUBJECT, E::KIND, body, self.clock.now_unix())
            .map_err(|e| ClientError::Credentials(e.to_string()))
    }

    /// Call verb `E` on `nc`: sign, send, decode.
    pub async fn call<E: Endpoint>(&self, nc: &async_nats::Client, body: E::Request) -> Result<E::Reply, ClientError> {
        if !proto::changes(E::SUBJECT) {
            return read(nc, E::SUBJECT, || self.sign::<E>(&body)).await;
        }
        let token = self.sign::<E>(&body)?;
        request(nc, E::SUBJECT, token).await
    }
}

/// How long a request is sent again while nobody serves its subject.
const NO_RESPONDERS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long one attempt of a request waits for its reply.
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(2_500);

/// Send a signed request token on `subject` and decode the reply. A request that gets no reply
/// (the replica serving it died, or the reply was lost) is sent again, the very same signed
/// bytes, until [`REQUEST_TIMEOUT`] has passed: the control plane answers a repeated changing
/// request with its first reply, so a retry never has a second effect.
pub async fn request<R: DeserializeOwned>(nc: &async_nats::Client, subject: &str, signed: String) -> Result<R, ClientError> {
    let payload: bytes::Bytes = signed.into();
    let start = tokio::time::Instant::now();
    let deadline = start + REQUEST_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match attempt(nc, subject, payload.clone(), left.min(ATTEMPT_TIMEOUT)).await {
            // Nobody serves the subject: a replica restarting is back within moments; no
            // `serve` at all is said soon.
            Err(ClientError::NoResponders { .. }) if start.elapsed() < NO_RESPONDERS_WAIT => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(ClientError::Timeout { .. }) if left > ATTEMPT_TIMEOUT => {
                tracing::debug!(subject, "no reply yet; sending the same request again");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(ClientError::Timeout { .. }) => return Err(ClientError::Timeout { subject: subject.into(), timeout: REQUEST_TIMEOUT }),
            r => return r,
        }
    }
}

/// Attempts of a read in flight at once: one every [`ATTEMPT_TIMEOUT`] for the whole
/// [`REQUEST_TIMEOUT`]. NATS hands each to any replica, so a cap of two left a read to time out
/// whenever both went to a paused replica (a test of a paused leader showed it).
const READ_ATTEMPTS: usize = 8;

/// A read (a verb without effect, [`proto::changes`]): an attempt without a reply after
/// [`ATTEMPT_TIMEOUT`] is not sent again as the same bytes, which the control plane refuses as
/// `replayed` (it keeps no reply of a read), but signed afresh by `sign`. The first attempt's
/// reply is still awaited: a slow read (a page of a large listing, `audit verify`) is answered by
/// whichever attempt finishes first (a read of 3 s is started twice), and a read whose replica
/// died or stalled is answered by another.
pub async fn read<R: DeserializeOwned>(nc: &async_nats::Client, subject: &str, sign: impl Fn() -> Result<String, ClientError>) -> Result<R, ClientError> {
    use futures::StreamExt;
    let start = tokio::time::Instant::now();
    let deadline = start + REQUEST_TIMEOUT;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut next_send = start;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout { subject: subject.into(), timeout: REQUEST_TIMEOUT });
        }
        if pending.len() < READ_ATTEMPTS && now >= next_send {
            if !pending.is_empty() {
                tracing::debug!(subject, "no reply yet; asking again with a fresh request, still waiting for the first");
            }
            let payload: bytes::Bytes = sign()?.into();
            pending.push(attempt::<R>(nc, subject, payload, deadline - now));
            next_send = now + ATTEMPT_TIMEOUT;
        }
        let wake = if pending.len() < READ_ATTEMPTS { next_send } else { deadline };
        tokio::select! {
            Some(r) = pending.next() => match r {
                // Nobody serves the subject: a replica restarting is back within moments.
                Err(ClientError::NoResponders { .. }) if start.elapsed() < NO_RESPONDERS_WAIT => {
                    next_send = tokio::time::Instant::now() + std::time::Duration::from_millis(250);
                }
                // This attempt ran out of time: so did the request (each had the rest of it).
                Err(ClientError::Timeout { .. }) => {}
                r => return r,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

async fn attempt<R: DeserializeOwned>(nc: &async_nats::Client, subject: &str, payload: bytes::Bytes, timeout: std::time::Duration) -> Result<R, ClientError> {
    let req = async_nats::Request::new().payload(payload).timeout(Some(timeout));
    let msg = nc.send_request(subject.to_string(), req).await.map_err(|e| {
        use async_nats::RequestErrorKind as K;
        match e.kind() {
            K::TimedOut => ClientError::Timeout { subject: subject.into(), timeout: REQUEST_TIMEOUT },
            K::NoResponders => ClientError::NoResponders { subject: subject.into() },
            _ => ClientError::Request { subject: subject.into(), reason: e.to_string() },
        }
    })?;
    let reply: Reply<R> = serde_json::from_slice(&msg.payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(reply.into_result()?)
}

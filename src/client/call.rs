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
        let token = self.sign::<E>(&body)?;
        request(nc, E::SUBJECT, token).await
    }
}

/// Send a signed request token on `subject` and decode the reply.
pub async fn request<R: DeserializeOwned>(nc: &async_nats::Client, subject: &str, signed: String) -> Result<R, ClientError> {
    let req = async_nats::Request::new().payload(signed.into()).timeout(Some(REQUEST_TIMEOUT));
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

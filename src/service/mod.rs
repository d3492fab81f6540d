//! Service-to-service calls a callee can trust: caller tokens, verified offline with
//! issuer-bound keys.
//!
//! A **caller token** rides on a request (header [`CALLER_HEADER`]): a JWS compact serialization,
//! `alg: EdDSA`, `typ: tillit-caller+jwt`, signed by the calling *instance's* own nkey (the key
//! its NATS connection authenticates with), header `kid` = that nkey. Claims: `iss` (the caller's
//! SPIFFE id), `aud` (the callee's), `sub` (the NATS subject called), `iat`, `exp` (at most
//! [`MAX_CALLER_TTL`] after `iat`), `jti` (unique).
//!
//! A callee keeps a [`Callers`] verifier: key sets by issuer ([`KeySet`], all live instances of
//! one service). The key is selected **only from the claimed issuer's set**: a token claiming
//! `iss: B` with A's `kid` is refused ([`CallerRefusal::KeyOfAnotherIssuer`]), never verified
//! with A's key. Verification makes no round trip. [`Allow`] is the callee's allow-list on top.

use crate::replay::{ReplayCache, Seen};
use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;

/// The request header that carries a caller token.
pub const CALLER_HEADER: &str = "Tillit-Caller";
/// JWS `typ` of a caller token.
pub const CALLER_TYP: &str = "tillit-caller+jwt";
/// The longest a caller token may live.
pub const MAX_CALLER_TTL: i64 = 60;
/// Tolerated clock skew between caller and callee.
pub const MAX_SKEW: i64 = 30;
/// The KV bucket, in every tenant account, that holds its services' key sets (key
/// `<project>.<service>`, value a [`KeySetDoc`]); written by the control plane only.
pub const CALLERS_BUCKET: &str = "TILLIT_CALLERS";
/// Largest caller token read.
pub const MAX_CALLER_TOKEN_BYTES: usize = 4096;

/// The claims of a caller token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerClaims {
    /// The caller's SPIFFE id (`spiffe://<td>/<tenant>/<project>/<env>/<service>`).
    pub iss: String,
    /// The callee's SPIFFE id.
    pub aud: String,
    /// The NATS subject called.
    pub sub: String,
    /// When it was signed (Unix seconds).
    pub iat: i64,
    /// When it stops being valid (Unix seconds), at most `MAX_CALLER_TTL` after `iat`.
    pub exp: i64,
    /// Unique id (replays are refused).
    pub jti: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why a caller token was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerRefusal {
    /// No token on the request: the call is unauthenticated.
    #[error("no caller token on the request")]
    Missing,
    /// Not a caller token: not a JWS compact serialization, bad base64 or JSON, too large, another `typ`.
    #[error("caller token is malformed: {0}")]
    Malformed(String),
    /// Another algorithm than EdDSA (`none` included).
    #[error("caller token algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    /// The claimed issuer is no service this callee knows keys of (another tenant or environment, or none at all).
    #[error("caller {0} is unknown here (no keys: another tenant or environment, or never enrolled)")]
    UnknownIssuer(String),
    /// The key named is not among the claimed issuer's keys but belongs to another issuer: one service signing as another.
    #[error("key {kid} is not one of {claimed}'s keys (it belongs to another service): refused")]
    KeyOfAnotherIssuer {
        /// The key the header names.
        kid: String,
        /// The issuer the token claims.
        claimed: String,
    },
    /// The key named is not among the issuer's live keys (revoked, expired, or not published yet).
    #[error("key {kid} is not a live key of {issuer} (revoked or expired)")]
    UnknownKey {
        /// The key the header names.
        kid: String,
        /// The issuer whose set lacks it.
        issuer: String,
    },
    /// The key named was revoked.
    #[error("key {kid} of {issuer} was revoked")]
    Revoked {
        /// The revoked key.
        kid: String,
        /// Its issuer.
        issuer: String,
    },
    /// The signature does not verify with the issuer's key.
    #[error("caller token signature does not verify")]
    Signature,
    /// The token is for another callee.
    #[error("caller token is for {0}, not this service")]
    Audience(String),
    /// The token is for another subject than the one called.
    #[error("caller token is for subject {got:?}, not {want:?}")]
    Subject {
        /// The subject the token names.
        got: String,
        /// The subject called.
        want: String,
    },
    /// Expired.
    #[error("caller token expired")]
    Expired,
    /// Issued in the future, or living longer than `MAX_CALLER_TTL`.
    #[error("caller token lifetime is not acceptable: {0}")]
    Lifetime(String),
    /// The same token again.
    #[error("caller token {0} was already used (replay)")]
    Replayed(String),
    /// The replay cache is full; retry shortly.
    #[error("too many caller tokens in flight; retry shortly")]
    Busy,
    /// Not allowed by the callee's allow-list.
    #[error("{0} may not call this")]
    NotAllowed(String),
    /// Signing failed.
    #[error("cannot sign a caller token: {0}")]
    Sign(String),
}

/// Sign a caller token as the instance holding `key`, for `iss` calling `aud` on `subject`, valid
/// `ttl` seconds (at most [`MAX_CALLER_TTL`]) from `now`.
pub fn sign(key: &nkeys::KeyPair, iss: &str, aud: &str, subject: &str, ttl: i64, now: i64) -> Result<String, CallerRefusal> {
    let ttl = ttl.clamp(1, MAX_CALLER_TTL);
    let header = Header { alg: crate::envelope::ALG.into(), typ: CALLER_TYP.into(), kid: key.public_key() };
    let claims = CallerClaims { iss: iss.into(), aud: aud.into(), sub: subject.into(), iat: now, exp: now + ttl, jti: uuid::Uuid::new_v4().to_string() };
    let h = serde_json::to_vec(&header).map_err(|e| CallerRefusal::Sign(e.to_string()))?;
    let c = serde_json::to_vec(&claims).map_err(|e| CallerRefusal::Sign(e.to_string()))?;
    let mut out = format!("{}.{}", BASE64URL_NOPAD.encode(&h), BASE64URL_NOPAD.encode(&c));
    let sig = key.sign(out.as_bytes()).map_err(|e| CallerRefusal::Sign(e.to_string()))?;
    out.push('.');
    out.push_str(&BASE64URL_NOPAD.encode(&sig));
    Ok(out)
}

/// Who called: a verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its SPIFFE id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its project.
    pub project: String,
    /// Its environment.
    pub env: String,
    /// Its service name.
    pub service: String,
    /// The calling instance: its public nkey (`U…`).
    pub instance: String,
}

/// The live keys of one issuer (every live instance of one service), and those revoked.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    /// Public nkey → when it stops being valid (Unix seconds) and the key itself.
    keys: HashMap<String, (i64, ed25519_dalek::VerifyingKey)>,
    revoked: std::collections::HashSet<String>,
}

impl KeySet {
    /// How many live keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// Whether it holds no live key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A key set as a JWK Set (what the control plane publishes per issuer; any JOSE library reads it):
/// `{"iss": <SPIFFE id>, "keys": [{kty: OKP, crv: Ed25519, x, kid: <nkey>, use: sig, alg: EdDSA, exp}], "revoked": [<nkey>…]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySetDoc {
    /// The issuer: one service's SPIFFE id.
    pub iss: String,
    /// Its live instances' keys (JWKs, `kid` = the instance's public nkey).
    pub keys: Vec<serde_json::Value>,
    /// Keys revoked and not yet expired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
}

fn verifying_key(nkey: &str) -> Option<ed25519_dalek::VerifyingKey> {
    let (_, raw) = nkeys::from_public_key(nkey).ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&raw).ok()
}

impl KeySetDoc {
    /// The JWK of one instance key, valid until `exp`.
    pub fn jwk(nkey: &str, exp: i64) -> Option<serde_json::Value> {
        let (_, raw) = nkeys::from_public_key(nkey).ok()?;
        Some(serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": BASE64URL_NOPAD.encode(&raw), "kid": nkey, "use": "sig", "alg": "EdDSA", "exp": exp }))
    }

    /// The set's keys, checked (keys that are not Ed25519 user nkeys matching their `x` are dropped).
    pub fn key_set(&self) -> KeySet {
        let mut set = KeySet::default();
        for k in &self.keys {
            let (Some(kid), Some(x), exp) = (k["kid"].as_str(), k["x"].as_str(), k["exp"].as_i64().unwrap_or(i64::MAX)) else { continue };
            let Some(vk) = verifying_key(kid) else { continue };
            if !kid.starts_with('U') || BASE64URL_NOPAD.decode(x.as_bytes()).ok().as_deref() != Some(vk.as_bytes().as_slice()) {
                continue;
            }
            set.keys.insert(kid.to_string(), (exp, vk));
        }
        set.revoked = self.revoked.iter().cloned().collect();
        set
    }
}

/// A callee's verifier: key sets by issuer, a replay cache, and who the callee is.
#[derive(Debug)]
pub struct Callers {
    /// The callee's own SPIFFE id (the `aud` it accepts).
    me: String,
    trust_domain: String,
    sets: RwLock<HashMap<String, KeySet>>,
    replay: ReplayCache,
}

impl Callers {
    /// A verifier for the service whose SPIFFE id is `me`, in `trust_domain`.
    pub fn new(me: &str, trust_domain: &str) -> Self {
        Callers { me: me.into(), trust_domain: trust_domain.into(), sets: RwLock::default(), replay: ReplayCache::new(200_000) }
    }

    /// Replace the key set of `issuer` (a SPIFFE id).
    pub fn set_keys(&self, issuer: &str, set: KeySet) {
        if let Ok(mut m) = self.sets.write() {
            m.insert(issuer.to_string(), set);
        }
    }

    /// Forget `issuer`'s keys.
    pub fn remove(&self, issuer: &str) {
        if let Ok(mut m) = self.sets.write() {
            m.remove(issuer);
        }
    }

    /// How many issuers it holds keys of.
    pub fn issuers(&self) -> usize {
        self.sets.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Verify a caller token on a request to `subject` at `now`: the caller, or why not.
    pub fn verify(&self, token: Option<&str>, subject: &str, now: i64) -> Result<Caller, CallerRefusal> {
        let token = token.ok_or(CallerRefusal::Missing)?.trim();
        if token.len() > MAX_CALLER_TOKEN_BYTES {
            return Err(CallerRefusal::Malformed("larger than 4 KiB".into()));
        }
        let mut parts = token.split('.');
        let (h, c, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(c), Some(s), None) => (h, c, s),
            _ => return Err(CallerRefusal::Malformed("not a JWS compact serialization".into())),
        };
        let dec = |what: &str, p: &str| BASE64URL_NOPAD.decode(p.as_bytes()).map_err(|_| CallerRefusal::Malformed(format!("{what}: not base64url")));
        let header: Header = serde_json::from_slice(&dec("header", h)?).map_err(|e| CallerRefusal::Malformed(format!("header: {e}")))?;
        if header.alg != crate::envelope::ALG {
            return Err(CallerRefusal::Algorithm(header.alg));
        }
        if header.typ != CALLER_TYP {
            return Err(CallerRefusal::Malformed(format!("typ {:?} is not {CALLER_TYP}", header.typ)));
        }
        // The claimed issuer picks the key set; the key comes from that set only.
        let claims: CallerClaims = serde_json::from_slice(&dec("claims", c)?).map_err(|e| CallerRefusal::Malformed(format!("claims: {e}")))?;
        let key = {
            let sets = self.sets.read().map_err(|_| CallerRefusal::Busy)?;
            let Some(set) = sets.get(&claims.iss) else {
                return Err(CallerRefusal::UnknownIssuer(claims.iss));
            };
            if set.revoked.contains(&header.kid) {
                return Err(CallerRefusal::Revoked { kid: header.kid, issuer: claims.iss });
            }
            match set.keys.get(&header.kid) {
                Some((exp, k)) if *exp > now => *k,
                Some(_) => return Err(CallerRefusal::UnknownKey { kid: header.kid, issuer: claims.iss }),
                None if sets.iter().any(|(i, s)| *i != claims.iss && s.keys.contains_key(&header.kid)) => {
                    return Err(CallerRefusal::KeyOfAnotherIssuer { kid: header.kid, claimed: claims.iss })
                }
                None => return Err(CallerRefusal::UnknownKey { kid: header.kid, issuer: claims.iss }),
            }
        };
        let sig = ed25519_dalek::Signature::from_slice(&dec("signature", s)?).map_err(|_| CallerRefusal::Signature)?;
        key.verify_strict(&token.as_bytes()[..h.len() + 1 + c.len()], &sig).map_err(|_| CallerRefusal::Signature)?;
        if claims.aud != self.me {
            return Err(CallerRefusal::Audience(claims.aud));
        }
        if claims.sub != subject {
            return Err(CallerRefusal::Subject { got: claims.sub, want: subject.into() });
        }
        if claims.exp <= now {
            return Err(CallerRefusal::Expired);
        }
        if claims.iat > now + MAX_SKEW || claims.exp - claims.iat > MAX_CALLER_TTL || claims.jti.is_empty() || claims.jti.len() > 64 {
            return Err(CallerRefusal::Lifetime(format!("iat {} exp {} (at most {MAX_CALLER_TTL} s, not ahead of this clock)", claims.iat, claims.exp)));
        }
        let who = self.caller(&claims.iss, &header.kid)?;
        match self.replay.check_and_insert(&format!("{}|{}", header.kid, claims.jti), claims.exp, now) {
            Seen::New => Ok(who),
            Seen::Replay => Err(CallerRefusal::Replayed(claims.jti)),
            Seen::Full | Seen::SignerQuota => Err(CallerRefusal::Busy),
        }
    }

    fn caller(&self, id: &str, instance: &str) -> Result<Caller, CallerRefusal> {
        let prefix = format!("spiffe://{}/", self.trust_domain);
        let path = id.strip_prefix(prefix.as_str()).ok_or_else(|| CallerRefusal::UnknownIssuer(id.into()))?;
        let sid = crate::names::ServiceId::parse(path).map_err(|_| CallerRefusal::UnknownIssuer(id.into()))?;
        Ok(Caller { id: id.into(), tenant: sid.tenant, project: sid.project, env: sid.env, service: sid.service, instance: instance.into() })
    }
}

/// A callee's allow-list: `tenant/project/env/service` patterns, `*` for a whole segment.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    patterns: Vec<[String; 4]>,
}

impl Allow {
    /// Parse patterns such as `acme/shop/prod/orders`, `acme/shop/prod/*`, `acme/*/prod/*`.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let mut out = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            let parts: Vec<&str> = p.split('/').collect();
            let [t, pr, e, s] = parts.as_slice() else { return Err(format!("{p:?}: want tenant/project/env/service (`*` for any)")) };
            for seg in [t, pr, e, s] {
                if *seg != "*" {
                    crate::names::check_segment("segment", seg).map_err(|e| format!("{p:?}: {e}"))?;
                }
            }
            out.push([t.to_string(), pr.to_string(), e.to_string(), s.to_string()]);
        }
        Ok(Allow { patterns: out })
    }

    /// Whether `caller` matches a pattern.
    pub fn allows(&self, caller: &Caller) -> bool {
        let got = [&caller.tenant, &caller.project, &caller.env, &caller.service];
        self.patterns.iter().any(|p| p.iter().zip(got).all(|(want, have)| want == "*" || want == have))
    }

    /// The ADR's "internal + roles" rule: no verified caller is `Missing` (unauthenticated),
    /// a caller outside the list is `NotAllowed` (forbidden).
    pub fn authorize(&self, verified: Result<Caller, CallerRefusal>) -> Result<Caller, CallerRefusal> {
        let c = verified?;
        if self.allows(&c) {
            Ok(c)
        } else {
            Err(CallerRefusal::NotAllowed(c.id))
        }
    }
}

#[cfg(test)]
mod tests;

// === live key sets and calls ===

/// The SPIFFE id a service's key set in its account's bucket stands for (`<project>.<service>`
/// under the follower's own tenant and environment).
fn issuer_of_key(trust_domain: &str, tenant: &str, env: &str, key: &str) -> Option<String> {
    let (project, service) = key.split_once('.')?;
    let sid = crate::names::ServiceId::parse(&format!("{tenant}/{project}/{env}/{service}")).ok()?;
    Some(sid.spiffe_id(trust_domain))
}

impl Callers {
    /// Apply one entry of the account's bucket: a key set (checked: its `iss` must be the service
    /// its key names), or its removal.
    fn apply_entry(&self, trust_domain: &str, tenant: &str, env: &str, key: &str, value: Option<&[u8]>) {
        let Some(issuer) = issuer_of_key(trust_domain, tenant, env, key) else { return };
        match value.map(serde_json::from_slice::<KeySetDoc>) {
            Some(Ok(doc)) if doc.iss == issuer => self.set_keys(&issuer, doc.key_set()),
            Some(Ok(doc)) => tracing::warn!(key, iss = %doc.iss, "a caller key set names another issuer than its key; ignored"),
            Some(Err(e)) => tracing::warn!(key, "a caller key set does not parse: {e}"),
            None => self.remove(&issuer),
        }
    }

    /// A verifier for the service `session` is, kept current from its account's caller key sets
    /// (every service of its tenant and environment): loaded before this returns, then followed
    /// live until the session's connection closes. Verification makes no round trip, and keeps
    /// working while the control plane is down (the sets live in nats-server's JetStream).
    pub async fn follow(session: &crate::client::session::Session) -> Result<std::sync::Arc<Callers>, crate::client::ClientError> {
        use crate::client::ClientError;
        use futures::StreamExt;
        let info = session.identity();
        let sid = info.service.clone().ok_or_else(|| ClientError::Credentials("caller verification is for service identities".into()))?;
        let me = std::sync::Arc::new(Callers::new(&info.id, &info.trust_domain));
        let js = async_nats::jetstream::new(session.client());
        let fail = |e: &dyn std::fmt::Display| ClientError::Request { subject: format!("$KV.{CALLERS_BUCKET}"), reason: e.to_string() };
        let kv = js.get_key_value(CALLERS_BUCKET).await.map_err(|e| ClientError::Request {
            subject: format!("$KV.{CALLERS_BUCKET}"),
            reason: format!(
                "{e}: the caller key sets are not reachable from this connection. They live in the hub's JetStream, \
                 in this service's account, and tillit publishes them there once serve has started; a service \
                 connected to a site's leaf server cannot follow them yet (site links carry the control plane only)"
            ),
        })?;
        let (td, tenant, env) = (info.trust_domain.clone(), sid.tenant.clone(), sid.env.clone());
        // Everything there now, then every change (`watch_with_history` gives the current
        // values first): loaded in full before this returns.
        let mut keys = kv.keys().await.map_err(|e| fail(&e))?;
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| fail(&e))?;
            if let Ok(v) = kv.get(&k).await {
                me.apply_entry(&td, &tenant, &env, &k, v.as_deref());
            }
        }
        let follower = me.clone();
        tokio::spawn(async move {
            loop {
                match kv.watch_with_history(">").await {
                    Ok(mut w) => {
                        while let Some(Ok(e)) = w.next().await {
                            let value = matches!(e.operation, async_nats::jetstream::kv::Operation::Put).then_some(e.value.as_ref());
                            follower.apply_entry(&td, &tenant, &env, &e.key, value);
                        }
                    }
                    Err(e) => tracing::warn!("cannot follow the caller key sets: {e}; again in 1 s"),
                }
                if std::sync::Arc::strong_count(&follower) == 1 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        Ok(me)
    }

    /// Verify the caller of a request received on NATS (its [`CALLER_HEADER`], its subject).
    pub fn verify_message(&self, msg: &async_nats::Message, now: i64) -> Result<Caller, CallerRefusal> {
        let token = msg.headers.as_ref().and_then(|h| h.get(CALLER_HEADER)).map(|v| v.as_str().to_string());
        self.verify(token.as_deref(), msg.subject.as_str(), now)
    }
}

/// The SPIFFE id of the service that owns `subject` in `caller`'s tenant and environment
/// (`<project>.<service>.…` is that service's namespace).
pub fn callee_of(trust_domain: &str, caller: &crate::names::ServiceId, subject: &str) -> Option<String> {
    let mut t = subject.split('.');
    let (project, service) = (t.next()?, t.next()?);
    let sid = crate::names::ServiceId::parse(&format!("{}/{project}/{}/{service}", caller.tenant, caller.env)).ok()?;
    Some(sid.spiffe_id(trust_domain))
}

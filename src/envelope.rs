//! Signed event envelopes (*contract*, DESIGN.md §5): a JWS compact serialization, `alg: EdDSA`
//! (Ed25519, RFC 8037), over a CloudEvents 1.0 JSON body.
//!
//! The body carries `specversion`, `id` (UUID v4), `source` (the issuer, `tillit://<trust-domain>`),
//! `type` (`io.tillit.v1.<name>`), `time`, `subject`, and tillit's `aud`, `exp` and, on streams,
//! `seq`. The header's `kid` names the signing key. A verifier holds a pinned trust set
//! (`trust.jwks`: an RFC 7517 JWK Set of OKP/Ed25519 keys, each bound to its issuer by `iss`) and
//! refuses: a `kid` it does not hold, any `alg` but EdDSA (`none` included), a key of another
//! issuer than the body's `source` (A-signed-as-B), a bad signature, another `type`, another
//! audience, an expired envelope, and an `id` it has already seen. Any JOSE library verifies an
//! envelope with `trust.jwks`.

use crate::replay::{ReplayCache, Seen};
use data_encoding::BASE64URL_NOPAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The only algorithm signed or accepted.
pub const ALG: &str = "EdDSA";
/// JWS `typ` of an envelope.
pub const TYP: &str = "tillit-envelope+jwt";
/// Audience that every party accepts.
pub const AUD_ALL: &str = "all";
/// Largest envelope read.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// Why an envelope was refused, or could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not an envelope tillit reads: not a JWS compact serialization, bad base64 or JSON, another `specversion`, larger
    /// than `MAX_ENVELOPE_BYTES`; or a malformed trust set or key. Says what.
    #[error("envelope is malformed: {0}")]
    Malformed(String),
    /// The header's `alg` (carried) is not `EdDSA`: `none`, HMAC and every other algorithm are refused.
    #[error("envelope algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    /// The header's `kid` (carried) is not in the trust set: a key of another control plane, a retired one, or one this
    /// party has not received yet (refresh its `trust.jwks`).
    #[error("envelope key {0:?} is not in the trust set")]
    UnknownKey(String),
    /// The key the header names is bound to another issuer than the body's `source` claims (one party signing as another).
    #[error("envelope key {kid:?} belongs to {key_issuer:?}, not to the claimed source {claimed:?}")]
    IssuerMismatch {
        /// The key the header names.
        kid: String,
        /// The issuer the trust set binds that key to.
        key_issuer: String,
        /// The issuer the body claims (its `source`).
        claimed: String,
    },
    /// The signature does not verify with the key the header's `kid` names: the envelope was altered, or another key signed it.
    #[error("envelope signature does not verify")]
    Signature,
    /// The envelope is another kind of event than the one expected.
    #[error("envelope type {got:?} is not {want:?}")]
    Type {
        /// The envelope's `type`.
        got: String,
        /// The type the verifier expected.
        want: String,
    },
    /// The envelope is addressed to another party (its `aud`, carried), neither to this one nor to `all`.
    #[error("envelope is for audience {0:?}, not this party")]
    Audience(String),
    /// The envelope's `exp` has passed (if it should not have, check the clocks).
    #[error("envelope expired")]
    Expired,
    /// An envelope with this `id` (carried) was already accepted: a replay.
    #[error("envelope {0} was already seen (replay)")]
    Replayed(String),
    /// The replay cache is full; retry shortly.
    #[error("replay cache is full; retry shortly")]
    Busy,
    /// Signing failed (the event did not serialize, or the key refused); says why.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A CloudEvents 1.0 body with tillit's extensions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event<D> {
    /// CloudEvents version: always `1.0`.
    pub specversion: String,
    /// Unique id (UUID v4); a verifier refuses one it has seen.
    pub id: String,
    /// The issuer: `tillit://<trust-domain>` for a control plane, the SPIFFE id for an identity. The signing key must be
    /// bound to it in the trust set.
    pub source: String,
    /// The event type, `io.tillit.v1.<name>`; `type` on the wire.
    #[serde(rename = "type")]
    pub kind: String,
    /// When it was signed (RFC 3339).
    pub time: String,
    /// What it is about: a secret path, a service, or `trust.jwks`.
    pub subject: String,
    /// Who it is for: `site:<name>`, a SPIFFE id, a control plane's issuer, or [`AUD_ALL`] for every party.
    pub aud: String,
    /// When it stops being accepted (Unix seconds).
    pub exp: i64,
    /// On streams, the `TILLIT_EVENTS` sequence it was stored at (a consumer checks it against the message's); absent
    /// elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Media type of `data`: always `application/json`.
    pub datacontenttype: String,
    /// The event's payload (per kind: see `subjects/asyncapi.yaml`).
    pub data: D,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    kid: String,
    #[serde(default)]
    typ: Option<String>,
}

/// The issuer (`source`) of the control plane of `trust_domain`.
pub fn issuer(trust_domain: &str) -> String {
    format!("tillit://{trust_domain}")
}

// === signing ===

/// Signs envelopes with one key.
pub struct Signer {
    kid: String,
    issuer: String,
    key: std::sync::Arc<nkeys::KeyPair>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with `key`, named `kid` in trust sets, signing as `issuer` (the envelopes' `source`).
    pub fn new(kid: &str, issuer: &str, key: std::sync::Arc<nkeys::KeyPair>) -> Self {
        Signer { kid: kid.into(), issuer: issuer.into(), key }
    }

    /// Sign an event of `kind` about `subject` for `aud`, valid `ttl` seconds from `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn sign<D: Serialize>(
        &self,
        kind: &str,
        subject: &str,
        aud: &str,
        ttl: i64,
        seq: Option<u64>,
        data: D,
        now: i64,
    ) -> Result<String, EnvelopeError> {
        let ev = Event {
            specversion: "1.0".into(),
            id: uuid::Uuid::new_v4().to_string(),
            source: self.issuer.clone(),
            kind: kind.into(),
            time: crate::clock::rfc3339(now),
            subject: subject.into(),
            aud: aud.into(),
            exp: now + ttl,
            seq,
            datacontenttype: "application/json".into(),
            data,
        };
        let header = serde_json::to_vec(&Header { alg: ALG.into(), kid: self.kid.clone(), typ: Some(TYP.into()) })
            .map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        let body = serde_json::to_vec(&ev).map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        let mut out = format!("{}.{}", BASE64URL_NOPAD.encode(&header), BASE64URL_NOPAD.encode(&body));
        let sig = self.key.sign(out.as_bytes()).map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        out.push('.');
        out.push_str(&BASE64URL_NOPAD.encode(&sig));
        Ok(out)
    }
}

// === trust set ===

/// One pinned key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The key id, as envelope headers name it (`kid`).
    pub kid: String,
    /// The only issuer (`source`) it may sign for (the JWK's `iss`).
    pub issuer: String,
    key: ed25519_dalek::VerifyingKey,
}

/// A pinned set of envelope keys, by `kid`, each bound to its issuer.
#[derive(Debug, Clone, Default)]
pub struct TrustSet {
    keys: Vec<TrustedKey>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    iss: String,
}

impl TrustSet {
    /// Parse `trust.jwks`. Keys that are not OKP/Ed25519 with an issuer are skipped.
    pub fn from_jwks(json: &str) -> Result<Self, EnvelopeError> {
        let set: Jwks = serde_json::from_str(json).map_err(|e| EnvelopeError::Malformed(format!("trust set: {e}")))?;
        let mut keys = Vec::new();
        for k in set.keys {
            if k.kty != "OKP" || k.crv != "Ed25519" || k.kid.is_empty() || k.iss.is_empty() {
                continue;
            }
            if k.alg.as_deref().is_some_and(|a| a != ALG) {
                continue;
            }
            let raw = BASE64URL_NOPAD.decode(k.x.as_bytes()).map_err(|_| EnvelopeError::Malformed("trust set key x".into()))?;
            let raw: [u8; 32] = raw.try_into().map_err(|_| EnvelopeError::Malformed("trust set key is not 32 bytes".into()))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| EnvelopeError::Malformed("trust set key".into()))?;
            keys.push(TrustedKey { kid: k.kid, issuer: k.iss, key });
        }
        Ok(TrustSet { keys })
    }

    /// A set of one key: an nkey (user or account, Ed25519) bound to `issuer`, named by its
    /// public key. How the control plane pins an identity's own key to check what it signs.
    pub fn single(issuer: &str, public_nkey: &str) -> Result<Self, EnvelopeError> {
        let raw = data_encoding::BASE32_NOPAD.decode(public_nkey.as_bytes()).map_err(|_| EnvelopeError::Malformed("nkey".into()))?;
        let raw: [u8; 32] = raw.get(1..33).and_then(|r| r.try_into().ok()).ok_or_else(|| EnvelopeError::Malformed("nkey length".into()))?;
        nkeys::KeyPair::from_public_key(public_nkey).map_err(|_| EnvelopeError::Malformed("nkey".into()))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| EnvelopeError::Malformed("nkey".into()))?;
        Ok(TrustSet { keys: vec![TrustedKey { kid: public_nkey.into(), issuer: issuer.into(), key }] })
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// Whether the set holds no key (it then verifies nothing).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

// === verifying ===

/// Verifies envelopes for one party.
#[derive(Debug)]
pub struct Verifier {
    trust: TrustSet,
    audiences: Vec<String>,
    replay: ReplayCache,
}

impl Verifier {
    /// A verifier accepting envelopes for any of `audiences` (and for [`AUD_ALL`]).
    pub fn new(trust: TrustSet, audiences: Vec<String>, replay_capacity: usize) -> Self {
        Verifier { trust, audiences, replay: ReplayCache::new(replay_capacity) }
    }

    /// Verify `token` as an event of `kind` at `now`; on success its id is remembered.
    pub fn verify<D: DeserializeOwned>(&self, token: &str, kind: &str, now: i64) -> Result<Event<D>, EnvelopeError> {
        let ev: Event<D> = self.check(token, kind, now)?;
        match self.replay.check_and_insert(&ev.id, ev.exp, now) {
            Seen::New => Ok(ev),
            Seen::Replay => Err(EnvelopeError::Replayed(ev.id)),
            Seen::Full | Seen::SignerQuota => Err(EnvelopeError::Busy),
        }
    }

    /// Everything [`Self::verify`] checks but the replay cache: for readers that bind replay
    /// protection to something else (a stream consumer: the envelope's `seq` must be the stream
    /// sequence it arrived at, and above what was applied) or keep a cache of their own.
    pub fn check<D: DeserializeOwned>(&self, token: &str, kind: &str, now: i64) -> Result<Event<D>, EnvelopeError> {
        if token.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::Malformed("larger than 64 KiB".into()));
        }
        let mut parts = token.trim().split('.');
        let (h, b, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(b), Some(s), None) => (h, b, s),
            _ => return Err(EnvelopeError::Malformed("not a JWS compact serialization".into())),
        };
        let header: Header = serde_json::from_slice(&BASE64URL_NOPAD.decode(h.as_bytes()).map_err(|_| EnvelopeError::Malformed("header".into()))?)
            .map_err(|e| EnvelopeError::Malformed(format!("header: {e}")))?;
        if header.alg != ALG {
            return Err(EnvelopeError::Algorithm(header.alg));
        }
        let key = self.trust.keys.iter().find(|k| k.kid == header.kid).ok_or_else(|| EnvelopeError::UnknownKey(header.kid.clone()))?;
        let body = BASE64URL_NOPAD.decode(b.as_bytes()).map_err(|_| EnvelopeError::Malformed("body".into()))?;
        let sig = BASE64URL_NOPAD.decode(s.as_bytes()).map_err(|_| EnvelopeError::Malformed("signature".into()))?;
        let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| EnvelopeError::Signature)?;
        let signed = &token.trim().as_bytes()[..h.len() + 1 + b.len()];
        key.key.verify_strict(signed, &sig).map_err(|_| EnvelopeError::Signature)?;
        let ev: Event<D> = serde_json::from_slice(&body).map_err(|e| EnvelopeError::Malformed(format!("body: {e}")))?;
        if key.issuer != ev.source {
            return Err(EnvelopeError::IssuerMismatch { kid: key.kid.clone(), key_issuer: key.issuer.clone(), claimed: ev.source });
        }
        if ev.specversion != "1.0" {
            return Err(EnvelopeError::Malformed(format!("specversion {}", ev.specversion)));
        }
        if ev.kind != kind {
            return Err(EnvelopeError::Type { got: ev.kind, want: kind.into() });
        }
        if ev.aud != AUD_ALL && !self.audiences.contains(&ev.aud) {
            return Err(EnvelopeError::Audience(ev.aud));
        }
        if ev.exp <= now {
            return Err(EnvelopeError::Expired);
        }
        Ok(ev)
    }
}

/// The JWK of an envelope key (for `trust.jwks`).
pub fn jwk(kid: &str, issuer: &str, public_nkey: &str, state: &str) -> Option<serde_json::Value> {
    let (_, raw) = nkeys::from_public_key(public_nkey).ok()?;
    Some(serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": BASE64URL_NOPAD.encode(&raw),
        "kid": kid,
        "use": "sig",
        "alg": ALG,
        "iss": issuer,
        "tillit_state": state,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const NOW: i64 = 1_780_000_000;

    fn party(issuer: &str) -> (Signer, serde_json::Value) {
        let kp = Arc::new(nkeys::KeyPair::new_account());
        let kid = format!("{issuer}#{}", &kp.public_key()[..8]);
        let j = jwk(&kid, issuer, &kp.public_key(), "current").unwrap();
        (Signer::new(&kid, issuer, kp), j)
    }

    fn verifier(keys: Vec<serde_json::Value>) -> Verifier {
        let jwks = serde_json::json!({ "keys": keys }).to_string();
        Verifier::new(TrustSet::from_jwks(&jwks).unwrap(), vec!["site:east".into()], 1000)
    }

    #[test]
    fn accepts_its_own_and_refuses_everything_else() {
        let (a, ja) = party("tillit://a.org");
        let (b, jb) = party("tillit://b.org");
        let (stranger, _) = party("tillit://a.org");
        let v = verifier(vec![ja, jb]);
        let kind = "io.tillit.v1.secret.rotated";
        let data = serde_json::json!({"path": "acme/shop/prod/db", "version": 2});
        let good = a.sign(kind, "acme/shop/prod/db", "site:east", 60, Some(7), &data, NOW).unwrap();
        let ev: Event<serde_json::Value> = v.verify(&good, kind, NOW).unwrap();
        assert_eq!(ev.seq, Some(7));
        assert_eq!(ev.source, "tillit://a.org");
        // Replay.
        assert!(matches!(v.verify::<serde_json::Value>(&good, kind, NOW), Err(EnvelopeError::Replayed(_))));
        // For all sites: accepted.
        let all = a.sign(kind, "s", AUD_ALL, 60, None, &data, NOW).unwrap();
        v.verify::<serde_json::Value>(&all, kind, NOW).unwrap();
        // Unknown key.
        let t = stranger.sign(kind, "s", "site:east", 60, None, &data, NOW).unwrap();
        assert!(matches!(v.verify::<serde_json::Value>(&t, kind, NOW), Err(EnvelopeError::UnknownKey(_))));
        // A signed as B: B's key, A's claimed source.
        let forged = Signer::new(&b.kid, "tillit://a.org", b.key.clone()).sign(kind, "s", "site:east", 60, None, &data, NOW).unwrap();
        assert!(matches!(v.verify::<serde_json::Value>(&forged, kind, NOW), Err(EnvelopeError::IssuerMismatch { .. })));
        // Wrong type, audience, expired.
        let t = a.sign("io.tillit.v1.ca.rotated", "s", "site:east", 60, None, &data, NOW).unwrap();
        assert!(matches!(v.verify::<serde_json::Value>(&t, kind, NOW), Err(EnvelopeError::Type { .. })));
        let t = a.sign(kind, "s", "site:west", 60, None, &data, NOW).unwrap();
        assert!(matches!(v.verify::<serde_json::Value>(&t, kind, NOW), Err(EnvelopeError::Audience(_))));
        let t = a.sign(kind, "s", "site:east", 60, None, &data, NOW - 120).unwrap();
        assert_eq!(v.verify::<serde_json::Value>(&t, kind, NOW).unwrap_err(), EnvelopeError::Expired);
        // alg none, and alg swapped to HS256 with the same body.
        let fresh = a.sign(kind, "s", "site:east", 60, None, &data, NOW).unwrap();
        let parts: Vec<&str> = fresh.split('.').collect();
        for alg in ["none", "HS256", "ES256"] {
            let h = BASE64URL_NOPAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, a.kid).as_bytes());
            let t = format!("{h}.{}.{}", parts[1], parts[2]);
            assert_eq!(v.verify::<serde_json::Value>(&t, kind, NOW).unwrap_err(), EnvelopeError::Algorithm(alg.into()));
        }
        // An edited body.
        let mut body: serde_json::Value = serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        body["data"]["version"] = serde_json::json!(99);
        let t = format!("{}.{}.{}", parts[0], BASE64URL_NOPAD.encode(body.to_string().as_bytes()), parts[2]);
        assert_eq!(v.verify::<serde_json::Value>(&t, kind, NOW).unwrap_err(), EnvelopeError::Signature);
        for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(v.verify::<serde_json::Value>(junk, kind, NOW).is_err(), "{junk}");
        }
    }
}

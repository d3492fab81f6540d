//! NATS JWT v2: the one place that mints and parses them.
//!
//! A JWT is `b64url(header).b64url(claims).b64url(sig)`, header `{"typ":"JWT","alg":"ed25519-nkey"}`,
//! signature Ed25519 by the issuer's nkey over the first two parts. Claims follow nats-server's
//! `jwt/v2` shapes for operators, accounts and users. The same codec signs tillit's own requests
//! (`crate::proto::sign_request`), so there is one signing path to audit.
//!
//! Parsing verifies the signature with the key the token names as `iss`; *which* issuers are
//! acceptable is always the caller's decision ([`decode_from`] takes the pinned set).

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// JWT header `typ`.
pub const TYP: &str = "JWT";
/// JWT header `alg` for nkey-signed JWTs (v2).
pub const ALG: &str = "ed25519-nkey";
/// The largest JWT nats-server accepts (its JWT library's hard cap).
pub const MAX_JWT_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a JWT: expected three dot-separated base64url parts")]
    Shape,
    #[error("JWT is larger than {MAX_JWT_BYTES} bytes")]
    TooLarge,
    #[error("JWT part is not valid base64url")]
    Base64,
    #[error("JWT header or claims are not valid JSON: {0}")]
    Json(String),
    #[error("unsupported JWT header: typ {typ:?}, alg {alg:?} (want JWT / ed25519-nkey)")]
    Header { typ: String, alg: String },
    #[error("JWT issuer {0:?} is not a valid public nkey")]
    Issuer(String),
    #[error("JWT signature does not verify")]
    Signature,
    #[error("JWT issuer {0} is not trusted here")]
    Untrusted(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
struct Header {
    typ: String,
    alg: String,
}

/// The registered claims every NATS JWT carries, around the `nats` section `N`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims<N> {
    pub jti: String,
    pub iat: i64,
    pub iss: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub nats: N,
}

/// A fresh unique `jti`: 20 random bytes, base32 like nats' own ids.
pub fn new_jti() -> Result<String, JwtError> {
    let b = crate::crypto::random_bytes(20).map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(data_encoding::BASE32_NOPAD.encode(&b))
}

/// Sign `claims` with `signer`. The caller sets `iss` to the signer's public key; this checks it.
pub fn encode<N: Serialize>(claims: &Claims<N>, signer: &KeyPair) -> Result<String, JwtError> {
    if claims.iss != signer.public_key() {
        return Err(JwtError::Sign(format!(
            "claims name issuer {} but the signing key is {}",
            claims.iss,
            signer.public_key()
        )));
    }
    encode_any(claims, signer)
}

/// Sign any claims object (tillit's own request tokens use this). The claims must carry `iss`
/// equal to the signer's public key, or no verifier will accept them.
pub fn encode_any<T: Serialize>(claims: &T, signer: &KeyPair) -> Result<String, JwtError> {
    let header = serde_json::to_vec(&Header { typ: TYP.into(), alg: ALG.into() })
        .map_err(|e| JwtError::Json(e.to_string()))?;
    let body = serde_json::to_vec(claims).map_err(|e| JwtError::Json(e.to_string()))?;
    let mut out = String::with_capacity(header.len() * 2 + body.len() * 2 + 90);
    out.push_str(&BASE64URL_NOPAD.encode(&header));
    out.push('.');
    out.push_str(&BASE64URL_NOPAD.encode(&body));
    let sig = signer.sign(out.as_bytes()).map_err(|e| JwtError::Sign(e.to_string()))?;
    out.push('.');
    out.push_str(&BASE64URL_NOPAD.encode(&sig));
    if out.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLarge);
    }
    Ok(out)
}

/// Parse and verify a JWT against the key it names as `iss`. Does **not** decide whether that
/// issuer is trusted: use [`decode_from`] for that.
pub fn decode<N: DeserializeOwned>(token: &str) -> Result<Claims<N>, JwtError> {
    decode_any(token).map(|(c, _)| c)
}

/// Parse and verify any claims object against the key its `iss` names; returns it with `iss`.
pub fn decode_any<T: DeserializeOwned>(token: &str) -> Result<(T, String), JwtError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLarge);
    }
    let token = token.trim();
    let mut parts = token.splitn(4, '.');
    let (h, c, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) if !h.is_empty() && !c.is_empty() && !s.is_empty() => (h, c, s),
        _ => return Err(JwtError::Shape),
    };
    let header: Header = serde_json::from_slice(&BASE64URL_NOPAD.decode(h.as_bytes()).map_err(|_| JwtError::Base64)?)
        .map_err(|e| JwtError::Json(e.to_string()))?;
    if !header.typ.eq_ignore_ascii_case(TYP) || header.alg != ALG {
        return Err(JwtError::Header { typ: header.typ, alg: header.alg });
    }
    let body = BASE64URL_NOPAD.decode(c.as_bytes()).map_err(|_| JwtError::Base64)?;
    let sig = BASE64URL_NOPAD.decode(s.as_bytes()).map_err(|_| JwtError::Base64)?;
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let iss: Iss = serde_json::from_slice(&body).map_err(|e| JwtError::Json(e.to_string()))?;
    let key = verifying_key(&iss.iss).ok_or_else(|| JwtError::Issuer(iss.iss.clone()))?;
    let signed_len = h.len() + 1 + c.len();
    let sig: [u8; 64] = sig.as_slice().try_into().map_err(|_| JwtError::Signature)?;
    use ed25519_dalek::Verifier as _;
    key.verify(&token.as_bytes()[..signed_len], &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| JwtError::Signature)?;
    let claims = serde_json::from_slice(&body).map_err(|e| JwtError::Json(e.to_string()))?;
    Ok((claims, iss.iss))
}

/// Most decoded public keys kept (~300 bytes each: the hot signers, not every identity of a
/// large estate).
const MAX_CACHED_KEYS: usize = 8_192;

/// The Ed25519 key of a public nkey (any kind), decoded and decompressed once: the same callers
/// sign request after request, and decompressing a point costs about as much as the signature
/// check itself. The same checks as `KeyPair::from_public_key` (prefix, checksum) on a miss.
fn verifying_key(nkey: &str) -> Option<ed25519_dalek::VerifyingKey> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, ed25519_dalek::VerifyingKey>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(k) = cache.lock().ok().and_then(|m| m.get(nkey).copied()) {
        return Some(k);
    }
    KeyPair::from_public_key(nkey).ok()?;
    let raw = data_encoding::BASE32_NOPAD.decode(nkey.as_bytes()).ok()?;
    let bytes: [u8; 32] = raw.get(1..33)?.try_into().ok()?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
    if let Ok(mut m) = cache.lock() {
        if m.len() >= MAX_CACHED_KEYS {
            m.clear();
        }
        m.insert(nkey.to_string(), key);
    }
    Some(key)
}

/// Parse, verify, and require the issuer to be one of `trusted` (a pinned set, never "any key").
pub fn decode_from<N: DeserializeOwned>(token: &str, trusted: &[&str]) -> Result<Claims<N>, JwtError> {
    let claims: Claims<N> = decode(token)?;
    if !trusted.iter().any(|t| *t == claims.iss) {
        return Err(JwtError::Untrusted(claims.iss));
    }
    Ok(claims)
}

// === nats claim sections ===

fn is_false(b: &bool) -> bool {
    !*b
}

/// `nats` section of an operator JWT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct OperatorNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_account: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub strict_signing_key_usage: bool,
}

/// Account limits. Every field is explicit: nats-server reads a missing limit as 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountLimits {
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    pub imports: i64,
    pub exports: i64,
    /// A bool, not a number: `-1` here makes the JWT invalid.
    pub wildcards: bool,
    pub conn: i64,
    pub leaf: i64,
    pub mem_storage: i64,
    pub disk_storage: i64,
    pub streams: i64,
    pub consumer: i64,
}

impl AccountLimits {
    /// No NATS limits; JetStream enabled without storage caps.
    pub fn unlimited_with_jetstream() -> Self {
        AccountLimits {
            subs: -1,
            data: -1,
            payload: -1,
            imports: -1,
            exports: -1,
            wildcards: true,
            conn: -1,
            leaf: -1,
            mem_storage: -1,
            disk_storage: -1,
            streams: -1,
            consumer: -1,
        }
    }
    /// No NATS limits and no JetStream (the SYS account).
    pub fn unlimited_without_jetstream() -> Self {
        AccountLimits { mem_storage: 0, disk_storage: 0, streams: 0, consumer: 0, ..Self::unlimited_with_jetstream() }
    }
}

/// Allow/deny subject lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SubjectPermission {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// Permission to reply to requests received (`resp`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResponsePermission {
    pub max: i64,
    /// Nanoseconds.
    pub ttl: i64,
}

/// A user's permissions and limits, also the template of a scoped signing key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct UserPermissions {
    #[serde(rename = "pub", default)]
    pub publish: SubjectPermission,
    #[serde(rename = "sub", default)]
    pub subscribe: SubjectPermission,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<ResponsePermission>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<i64>,
}

impl UserPermissions {
    /// Permissions with explicit unlimited subs/data/payload, as plain users need.
    pub fn new(pub_allow: Vec<String>, sub_allow: Vec<String>) -> Self {
        UserPermissions {
            publish: SubjectPermission { allow: pub_allow, deny: vec![] },
            subscribe: SubjectPermission { allow: sub_allow, deny: vec![] },
            resp: None,
            subs: Some(-1),
            data: Some(-1),
            payload: Some(-1),
        }
    }
}

/// A scoped signing key (`kind: user_scope`): users it signs get `template` as permissions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScopedSigningKey {
    pub kind: String,
    pub key: String,
    pub role: String,
    pub template: UserPermissions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An entry of an account's `signing_keys`: a bare key or a scoped one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SigningKeyEntry {
    Plain(String),
    Scoped(Box<ScopedSigningKey>),
}

/// An account export (a service or a stream other accounts may import).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Export {
    pub name: String,
    pub subject: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An account import.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Import {
    pub name: String,
    pub subject: String,
    pub account: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_subject: Option<String>,
    /// Share the importer's connection info with the exporter (`Nats-Request-Info`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub share: bool,
}

/// `nats` section of an account JWT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    pub limits: AccountLimits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKeyEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<Export>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<Import>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, i64>,
    /// Auth callout: nats-server asks the callout about every connection but `auth_users`'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<ExternalAuthorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An account's `authorization` (auth callout) section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExternalAuthorization {
    /// Users that bypass the callout (it is enabled only with one listed).
    pub auth_users: Vec<String>,
    /// Accounts the callout may place users in (none: only this one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_accounts: Vec<String>,
    /// The callout's public xkey: nats-server seals each request to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xkey: Option<String>,
}

impl AccountNats {
    pub fn new(limits: AccountLimits) -> Self {
        AccountNats {
            kind: "account".into(),
            version: 2,
            limits,
            signing_keys: vec![],
            exports: vec![],
            imports: vec![],
            revocations: BTreeMap::new(),
            authorization: None,
            description: None,
        }
    }
}

/// `nats` section of a user JWT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(flatten)]
    pub permissions: UserPermissions,
    /// Always false for tillit users: a bearer JWT would connect without its seed.
    pub bearer_token: bool,
    /// Set when signed by an account signing key: the account's identity key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_account: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_claims(iss: &KeyPair, sub: &str) -> Claims<UserNats> {
        Claims {
            jti: new_jti().unwrap(),
            iat: 1_700_000_000,
            iss: iss.public_key(),
            sub: sub.to_string(),
            name: Some("svc".into()),
            aud: None,
            exp: Some(1_700_086_400),
            nbf: None,
            nats: UserNats {
                kind: "user".into(),
                version: 2,
                permissions: UserPermissions::new(vec!["a.>".into()], vec!["_INBOX.x.>".into()]),
                bearer_token: false,
                issuer_account: None,
                tags: vec![],
            },
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let acct = KeyPair::new_account();
        let user = KeyPair::new_user();
        let c = user_claims(&acct, &user.public_key());
        let jwt = encode(&c, &acct).unwrap();
        let back: Claims<UserNats> = decode_from(&jwt, &[&acct.public_key()]).unwrap();
        assert_eq!(back, c);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[0].as_bytes()).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"typ":"JWT","alg":"ed25519-nkey"}));
        let body: serde_json::Value = serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        assert_eq!(body["nats"]["pub"]["allow"][0], "a.>");
        assert_eq!(body["nats"]["subs"], -1);
        assert_eq!(body["nats"]["bearer_token"], false);
        assert_eq!(body["nats"]["type"], "user");
        assert!(body["nats"].get("issuer_account").is_none());
    }

    #[test]
    fn account_limits_are_explicit_and_wildcards_is_bool() {
        let v = serde_json::to_value(AccountNats::new(AccountLimits::unlimited_with_jetstream())).unwrap();
        for k in ["subs", "data", "payload", "imports", "exports", "conn", "leaf", "mem_storage", "disk_storage"] {
            assert_eq!(v["limits"][k], -1, "{k}");
        }
        assert_eq!(v["limits"]["wildcards"], true);
    }

    #[test]
    fn rejects_forgeries_and_malformed_tokens() {
        let acct = KeyPair::new_account();
        let other = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = encode(&user_claims(&acct, &user.public_key()), &acct).unwrap();

        // Untrusted issuer.
        assert_eq!(
            decode_from::<UserNats>(&jwt, &[&other.public_key()]).unwrap_err(),
            JwtError::Untrusted(acct.public_key())
        );
        // Claims edited after signing.
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut body: serde_json::Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap()).unwrap();
        body["nats"]["pub"]["allow"] = serde_json::json!([">"]);
        let edited = format!("{}.{}.{}", parts[0], BASE64URL_NOPAD.encode(body.to_string().as_bytes()), parts[2]);
        assert_eq!(decode::<UserNats>(&edited).unwrap_err(), JwtError::Signature);
        // Issuer swapped to another key, signature of the first: refused.
        body["iss"] = serde_json::json!(other.public_key());
        let swapped = format!("{}.{}.{}", parts[0], BASE64URL_NOPAD.encode(body.to_string().as_bytes()), parts[2]);
        assert_eq!(decode::<UserNats>(&swapped).unwrap_err(), JwtError::Signature);
        // alg none / other algs.
        let none_header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"none"}"#);
        let none = format!("{none_header}.{}.{}", parts[1], parts[2]);
        assert!(matches!(decode::<UserNats>(&none).unwrap_err(), JwtError::Header { .. }));
        // Shape and encoding errors.
        for bad in ["", "a.b", "a.b.c.d", "..", "!!!.!!!.!!!", "e30.e30.e30"] {
            assert!(decode::<UserNats>(bad).is_err(), "{bad}");
        }
        // Signing with a key that is not the claimed issuer.
        assert!(matches!(encode(&user_claims(&acct, &user.public_key()), &other), Err(JwtError::Sign(_))));
    }

    #[test]
    fn signing_key_entries_parse_both_forms() {
        let v = serde_json::json!([
            "AABC",
            {"kind":"user_scope","key":"ADEF","role":"orders","template":{"pub":{"allow":["x.>"]},"sub":{},"subs":-1,"data":-1,"payload":-1}}
        ]);
        let entries: Vec<SigningKeyEntry> = serde_json::from_value(v).unwrap();
        assert!(matches!(&entries[0], SigningKeyEntry::Plain(k) if k == "AABC"));
        assert!(matches!(&entries[1], SigningKeyEntry::Scoped(s) if s.role == "orders" && s.template.publish.allow == vec!["x.>"]));
    }
}

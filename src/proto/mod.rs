//! Wire types: signed requests, replies, and the bodies of each verb.
//!
//! **Signed requests.** Every request to the control plane is a compact token signed by the
//! caller's own user nkey (the key its NATS connection authenticated with), using the same codec
//! as NATS JWTs. Claims: `iss` (caller's public nkey), `aud` (`tillit:<trust-domain>`), `sub` (the
//! NATS subject it is for, so it cannot be re-purposed), `type` (`io.tillit.v1.<verb>`), `iat`,
//! `exp` (at most [`MAX_REQUEST_LIFETIME`] after `iat`), `jti` (unique, checked against a replay
//! cache) and `body`. The control plane trusts none of it until [`verify_request`] passes and the
//! signer is found in the identity store.
//!
//! **Replies.** `{"result": …}` or `{"error": {"code", "message"}}`; errors also carry the micro
//! protocol headers.

use crate::error::{ApiError, ErrorCode};
use crate::issuer::jwt;
use nkeys::KeyPair;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The longest a signed request stays valid.
pub const MAX_REQUEST_LIFETIME: i64 = 120;
/// Tolerated clock skew between caller and control plane.
pub const MAX_CLOCK_SKEW: i64 = 30;

/// Claims of a signed request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestClaims<B> {
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub sub: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub body: B,
}

/// The audience of requests to the control plane of `trust_domain`.
pub fn audience(trust_domain: &str) -> String {
    format!("tillit:{trust_domain}")
}

/// Sign a request for `subject` as `signer`.
pub fn sign_request<B: Serialize>(
    signer: &KeyPair,
    trust_domain: &str,
    subject: &str,
    kind: &str,
    body: B,
    now: i64,
) -> Result<String, jwt::JwtError> {
    let claims = RequestClaims {
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now,
        exp: now + 60,
        iss: signer.public_key(),
        aud: audience(trust_domain),
        sub: subject.to_string(),
        kind: kind.to_string(),
        body,
    };
    jwt::encode_any(&claims, signer)
}

/// Check a signed request's signature and claims (pure: `now` comes in). Does not check the
/// replay cache or the identity store; the caller does both.
pub fn verify_request<B: DeserializeOwned>(
    payload: &[u8],
    subject: &str,
    kind: &str,
    trust_domain: &str,
    now: i64,
) -> Result<RequestClaims<B>, ApiError> {
    let token = std::str::from_utf8(payload).map_err(|_| ApiError::bad_request("request is not a UTF-8 signed token"))?;
    let (claims, iss): (RequestClaims<B>, String) = jwt::decode_any(token).map_err(|e| match e {
        jwt::JwtError::Signature | jwt::JwtError::Issuer(_) => {
            ApiError::unauthenticated("request signature does not verify with the key it names")
        }
        jwt::JwtError::Json(m) => ApiError::bad_request(format!("request claims are malformed: {m}")),
        other => ApiError::bad_request(format!("request is not a signed token: {other}")),
    })?;
    if iss != claims.iss || !iss.starts_with('U') {
        return Err(ApiError::unauthenticated("requests must be signed by a user nkey"));
    }
    if claims.aud != audience(trust_domain) {
        return Err(ApiError::unauthenticated(format!(
            "request audience {:?} is not this control plane ({})",
            claims.aud,
            audience(trust_domain)
        )));
    }
    if claims.sub != subject {
        return Err(ApiError::unauthenticated(format!("request was signed for {:?}, not {subject:?}", claims.sub)));
    }
    if claims.kind != kind {
        return Err(ApiError::bad_request(format!("request type {:?} is not {kind:?}", claims.kind)));
    }
    if claims.exp <= now {
        return Err(ApiError::new(ErrorCode::Expired, "signed request has expired; check the caller's clock"));
    }
    if claims.iat > now + MAX_CLOCK_SKEW || claims.exp - claims.iat > MAX_REQUEST_LIFETIME || claims.exp < claims.iat {
        return Err(ApiError::unauthenticated("signed request times are out of bounds; check the caller's clock"));
    }
    if claims.jti.is_empty() || claims.jti.len() > 64 {
        return Err(ApiError::bad_request("request id (jti) must be 1-64 characters"));
    }
    Ok(claims)
}

/// A reply on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Result(T),
    Error(ApiError),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, ApiError> {
        match self {
            Reply::Result(t) => Ok(t),
            Reply::Error(e) => Err(e),
        }
    }
}

/// `tillit.v1.admin.token.create` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    pub identity: crate::names::ServiceId,
    pub ttl_secs: i64,
    pub count: u32,
}

/// `tillit.v1.admin.token.create` reply: the printable tokens (secrets, shown once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreateReply {
    pub tokens: Vec<String>,
    pub identity: crate::names::ServiceId,
    pub expires_at: String,
    pub expires_at_unix: i64,
}

/// `tillit.v1.enroll` request body. The request is signed by the *new* user nkey (proof of
/// possession); the CSR's subject CN must be that nkey's public key, binding the TLS key to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token_id: String,
    pub token_secret: String,
    pub identity: crate::names::ServiceId,
    /// The service's public xkey (curve25519), for sealed deliveries.
    pub xkey: String,
    /// PKCS#10 CSR (PEM) for an ECDSA P-256 key.
    pub csr: String,
}

/// `tillit.v1.svc.renew` request body, signed by the identity's current nkey.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PKCS#10 CSR (PEM) for a fresh ECDSA P-256 key, subject CN = the identity's public nkey.
    pub csr: String,
}

/// What enrollment and renewal return: everything an identity dir holds but the private keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedReply {
    pub id: String,
    pub kind: crate::identity::IdentityKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::names::ServiceId>,
    pub trust_domain: String,
    pub account: String,
    pub account_public_key: String,
    pub user_public_key: String,
    pub inbox_prefix: String,
    pub user_jwt: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub trust_jwks: String,
    pub nats_urls: Vec<String>,
    pub ca_fingerprint: String,
    pub cert_serial: String,
    pub issued_at_unix: i64,
    pub expires_at_unix: i64,
}

/// `tillit.v1.admin.grant` / `ungrant` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub service: crate::names::ServiceId,
    #[serde(rename = "pub", default)]
    pub publish: Vec<String>,
    #[serde(rename = "sub", default)]
    pub subscribe: Vec<String>,
}

/// `tillit.v1.admin.grants` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    pub service: crate::names::ServiceId,
}

/// A service's permissions (reply of grant, ungrant and grants).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantsReply {
    pub service: crate::names::ServiceId,
    /// Everything the service may publish / subscribe now (defaults and grants).
    #[serde(rename = "pub")]
    pub publish: Vec<String>,
    #[serde(rename = "sub")]
    pub subscribe: Vec<String>,
    /// What operators granted on top of the defaults.
    pub granted_pub: Vec<String>,
    pub granted_sub: Vec<String>,
}

/// `tillit.v1.admin.revoke` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub service: crate::names::ServiceId,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One revoked credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedIdentity {
    pub user_public_key: String,
    pub cert_serial: String,
}

/// `tillit.v1.admin.revoke` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeReply {
    pub service: crate::names::ServiceId,
    pub revoked: Vec<RevokedIdentity>,
    pub revoked_at: String,
}

/// `tillit.v1.admin.list` request body (empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {}

/// One identity in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityEntry {
    pub id: String,
    pub kind: crate::identity::IdentityKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::names::ServiceId>,
    pub user_public_key: String,
    /// `active`, `revoked` or `expired`.
    pub state: String,
    pub cert_serial: String,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// `tillit.v1.admin.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListReply {
    pub identities: Vec<IdentityEntry>,
}

/// A value sealed end to end: curve25519 box (nkeys xkey format) from `sender_xkey` to the
/// recipient's xkey, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedValue {
    pub sealed: String,
    pub sender_xkey: String,
}

/// `tillit.v1.admin.secret.put` request body: a new secret, sealed to the control plane's xkey.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPutRequest {
    pub path: crate::secrets::SecretPath,
    pub readers: Vec<String>,
    pub value: SealedValue,
}

/// `tillit.v1.admin.secret.rotate` request body: a new version, either sealed by the admin or
/// generated by the control plane (`generate` random bytes, base64url), so no value crosses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRotateRequest {
    pub path: crate::secrets::SecretPath,
    #[serde(default)]
    pub value: Option<SealedValue>,
    #[serde(default)]
    pub generate: Option<usize>,
}

/// A request naming one secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPathRequest {
    pub path: crate::secrets::SecretPath,
}

/// `tillit.v1.admin.secret.list` request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretListRequest {
    #[serde(default)]
    pub prefix: String,
}

/// A secret's metadata, as shown to operators (never the value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInfo {
    pub path: String,
    pub readers: Vec<String>,
    pub current_version: u32,
    pub versions: Vec<SecretVersionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretVersionInfo {
    pub version: u32,
    pub created_at: String,
    pub created_by: String,
    pub bytes: usize,
}

/// Reply of put, rotate, versions, delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretReply {
    pub secret: SecretInfo,
}

/// `tillit.v1.admin.secret.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretListReply {
    pub secrets: Vec<SecretInfo>,
}

/// `tillit.v1.svc.secret.get` request body. `name` is a bare name (resolved inside the caller's
/// own tenant/project/env) or a full path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretGetRequest {
    pub name: String,
    #[serde(default)]
    pub version: Option<u32>,
}

/// `tillit.v1.svc.secret.get` reply: the value sealed to the caller's xkey by the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretGetReply {
    pub path: String,
    pub version: u32,
    pub value: SealedValue,
}

/// `tillit.v1.admin.rotate.signing-key` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateSigningKeyRequest {
    /// How long the old key keeps verifying.
    pub retire_after_secs: i64,
}

/// `tillit.v1.admin.rotate.signing-key` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateSigningKeyReply {
    pub current: String,
    pub previous: String,
    pub retire_at: String,
    /// The trust set now (what `trust.rotated` carried).
    pub trust_jwks: serde_json::Value,
}

/// `tillit.v1.admin.site.add` request body. The caller made the site server's TLS key and the
/// users its leafnode remotes log in as; only public keys and a CSR travel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteAddRequest {
    pub name: String,
    /// `host:port` the site server will listen on for clients.
    pub listen: String,
    /// Extra DNS names / IPs for the site server's certificate.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// CSR (PEM, P-256) whose subject CN is `tillit_user`.
    pub csr: String,
    pub sys_user: String,
    pub tillit_user: String,
    /// Lifetime of the agent join token minted with the site.
    pub agent_token_ttl_secs: i64,
}

/// `tillit.v1.admin.site.add` reply: everything the site directory holds but private keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteAddReply {
    pub site: SiteInfo,
    pub cert_pem: String,
    pub ca_pem: String,
    pub operator_jwt: String,
    pub system_account: String,
    pub tillit_account: String,
    /// Account public key → JWT, preloaded into the site server's resolver.
    pub preload: std::collections::BTreeMap<String, String>,
    pub sys_user_jwt: String,
    pub tillit_user_jwt: String,
    /// The hub's leafnode URLs.
    pub hub_urls: Vec<String>,
    /// A join token for the site's agent (shown once).
    pub agent_token: String,
}

/// A site as status and list show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteInfo {
    pub name: String,
    pub listen: String,
    pub created_at: String,
    pub agents: usize,
    /// Lowest stream sequence every agent of the site applied (0: none yet).
    pub last_applied_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_type: Option<String>,
    /// Events for the site its slowest agent has not acknowledged yet (its consumer's backlog).
    pub lag_events: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack_unix: Option<i64>,
    pub failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The site server's certificate: when it expires, and whether the current CA issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_at: Option<String>,
    #[serde(default)]
    pub cert_from_current_ca: bool,
}

/// `tillit.v1.admin.site.remove` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRemoveRequest {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `tillit.v1.admin.site.remove` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteRemoveReply {
    pub name: String,
    /// Agents revoked (user public keys).
    pub agents_revoked: Vec<String>,
    /// The site server's leafnode users, revoked (its links to the hub drop).
    pub leaf_users_revoked: Vec<String>,
}

/// `tillit.v1.admin.site.list` request body (empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteListRequest {}

/// `tillit.v1.admin.site.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteListReply {
    pub sites: Vec<SiteInfo>,
}

/// `tillit.v1.svc.ack` request body: an agent's signed acknowledgement envelope (JWS EdDSA by
/// the agent's nkey, type `io.tillit.v1.agent.ack`, audience the control plane).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub envelope: String,
}

/// What an agent acknowledges (the envelope's `data`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckData {
    pub site: String,
    /// `applied` or `failed`.
    pub outcome: String,
    /// Stream sequences of the batch's events (applied or attempted).
    pub seqs: Vec<u64>,
    /// Envelope ids of the batch's events.
    pub event_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `tillit.v1.svc.ack` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckReply {
    pub recorded: bool,
    pub last_seq: u64,
}

/// `tillit.v1.admin.rotate.ca` request body: empty starts a rotation; `finish` brings the
/// retirement of the previous CA forward to now (its client certificates stop working).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateCaRequest {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finish: bool,
}

/// `tillit.v1.svc.site.renew` request body (a site's agent): a CSR made at the site, CN = the
/// site's TILLIT leafnode user (the key pair stays at the site).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRenewRequest {
    pub csr: String,
}

/// `tillit.v1.svc.site.renew` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteRenewReply {
    pub site: String,
    pub cert_pem: String,
    pub sys_user_jwt: String,
    pub tillit_user_jwt: String,
    pub ca_pem: String,
    /// Fingerprint of the CA that issued `cert_pem`.
    pub ca_fingerprint: String,
    pub expires_at: String,
    pub expires_at_unix: i64,
}

/// One CA as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaInfo {
    pub fingerprint: String,
    /// `current`, `next`, `previous` or `retired`.
    pub state: String,
    pub created_at: String,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<String>,
}

/// A CA rollout under way: the new CA is in the bundle, waiting for sites to acknowledge it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRollout {
    pub next: String,
    /// Stream sequence of the `ca.rotated` event sites must have applied.
    pub event_seq: u64,
    pub started_at: String,
    /// Sites that have not acknowledged it yet.
    pub sites_pending: Vec<String>,
}

/// `tillit.v1.admin.rotate.ca` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateCaReply {
    /// `distributing` (waiting for sites) or `switched` (no site to wait for).
    pub phase: String,
    pub cas: Vec<CaInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<CaRollout>,
}

/// `tillit.v1.admin.status` request body (empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {}

/// One account in a status reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountStatus {
    pub public_key: String,
    pub kind: String,
    pub created_at: String,
}

/// Counts of things the control plane manages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Counts {
    pub identities: usize,
    /// Identities by state.
    pub active: usize,
    pub revoked: usize,
    pub expired: usize,
    pub accounts: usize,
    pub tenant_accounts: usize,
}

/// `tillit.v1.admin.status` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    pub trust_domain: String,
    pub version: String,
    pub server_time: String,
    pub operator: String,
    pub ca_fingerprint: String,
    pub ca_expires_at: String,
    pub nats_urls: Vec<String>,
    pub accounts: std::collections::BTreeMap<String, AccountStatus>,
    pub counts: Counts,
    /// Sites and how far their agents are.
    #[serde(default)]
    pub sites: Vec<SiteInfo>,
    /// The CAs in the bundle (and retired ones).
    #[serde(default)]
    pub cas: Vec<CaInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rollout: Option<CaRollout>,
    /// Resident memory of the control plane process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Who asked (the verified caller).
    pub caller: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000;
    const TD: &str = "example.org";
    const SUBJ: &str = "tillit.v1.admin.status";
    const KIND: &str = "io.tillit.v1.admin.status";

    fn signed(kp: &KeyPair, edit: impl FnOnce(&mut RequestClaims<serde_json::Value>)) -> String {
        let mut c = RequestClaims {
            jti: "id-1".into(),
            iat: NOW,
            exp: NOW + 60,
            iss: kp.public_key(),
            aud: audience(TD),
            sub: SUBJ.into(),
            kind: KIND.into(),
            body: serde_json::json!({}),
        };
        edit(&mut c);
        jwt::encode_any(&c, kp).unwrap()
    }

    fn check(token: &str) -> Result<RequestClaims<StatusRequest>, ApiError> {
        verify_request(token.as_bytes(), SUBJ, KIND, TD, NOW)
    }

    #[test]
    fn accepts_a_well_formed_request() {
        let kp = KeyPair::new_user();
        let t = sign_request(&kp, TD, SUBJ, KIND, StatusRequest {}, NOW).unwrap();
        let c = check(&t).unwrap();
        assert_eq!(c.iss, kp.public_key());
    }

    #[test]
    fn rejection_table() {
        let kp = KeyPair::new_user();
        let other = KeyPair::new_user();
        let acct = KeyPair::new_account();
        type Edit = Box<dyn Fn(&mut RequestClaims<serde_json::Value>)>;
        let cases: Vec<(&str, Edit, ErrorCode)> = vec![
            ("wrong audience", Box::new(|c| c.aud = audience("other.org")), ErrorCode::Unauthenticated),
            ("other subject", Box::new(|c| c.sub = "tillit.v1.admin.grant".into()), ErrorCode::Unauthenticated),
            ("other type", Box::new(|c| c.kind = "io.tillit.v1.admin.grant".into()), ErrorCode::BadRequest),
            ("expired", Box::new(|c| { c.iat = NOW - 100; c.exp = NOW - 1 }), ErrorCode::Expired),
            ("from the future", Box::new(|c| { c.iat = NOW + 300; c.exp = NOW + 360 }), ErrorCode::Unauthenticated),
            ("too long-lived", Box::new(|c| c.exp = NOW + 3600), ErrorCode::Unauthenticated),
            ("claims another issuer", Box::new(move |c| c.iss = other.public_key()), ErrorCode::Unauthenticated),
            ("empty id", Box::new(|c| c.jti = String::new()), ErrorCode::BadRequest),
            ("unknown body field", Box::new(|c| c.body = serde_json::json!({"x": 1})), ErrorCode::BadRequest),
        ];
        for (name, edit, code) in cases {
            let t = signed(&kp, |c| edit(c));
            assert_eq!(check(&t).unwrap_err().code, code, "{name}");
        }
        // Signed by an account key, not a user key.
        let t = signed(&acct, |_| {});
        assert_eq!(check(&t).unwrap_err().code, ErrorCode::Unauthenticated);
        // Garbage.
        for g in [&b"\xff\xfe"[..], b"", b"not a token", b"a.b.c"] {
            assert_eq!(verify_request::<StatusRequest>(g, SUBJ, KIND, TD, NOW).unwrap_err().code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn replies_have_one_shape() {
        let ok: Reply<u32> = serde_json::from_str(r#"{"result": 7}"#).unwrap();
        assert_eq!(ok.into_result().unwrap(), 7);
        let err: Reply<u32> = serde_json::from_str(r#"{"error": {"code": "forbidden", "message": "no"}}"#).unwrap();
        assert_eq!(err.into_result().unwrap_err().code, ErrorCode::Forbidden);
        let v = serde_json::to_value(Reply::<u32>::Error(ApiError::new(ErrorCode::TokenUsed, "x"))).unwrap();
        assert_eq!(v["error"]["code"], "token_used");
    }
}

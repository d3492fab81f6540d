//! The contract: every verb of the control plane as a type, the signed request that carries it,
//! and the reply that answers it.
//!
//! **Verbs.** Each verb is a unit type implementing [`Endpoint`]: its subject, its request type
//! (`io.tillit.v1.<verb>`), who may call it, its request and reply bodies and their JSON Schemas
//! in `subjects/schemas/`. [`ENDPOINTS`] lists them all, once: the server's dispatch, the
//! client's `call::<E>` and the contract test read it. A verb is its family file here
//! ([`status`], [`enroll`], [`admin`], [`secret`], [`site`], [`ca`]), its handler in
//! `server/<family>.rs` and its command in `cli/<verb>.rs`.
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
    /// Unique request id (1 to 64 characters); the control plane refuses a second use with `replayed`.
    pub jti: String,
    /// When the caller signed it (Unix seconds); at most `MAX_CLOCK_SKEW` ahead of the control plane's clock.
    pub iat: i64,
    /// When it stops being valid (Unix seconds); after `iat`, by at most `MAX_REQUEST_LIFETIME`.
    pub exp: i64,
    /// The caller's public user nkey (`U…`), whose key signed the token; it must be a recorded, active identity's
    /// (for enrollment: the new identity's key, proven by this signature).
    pub iss: String,
    /// The control plane it is for: `tillit:<trust-domain>` ([`audience`]).
    pub aud: String,
    /// The NATS subject it is sent on, so it cannot be replayed against another verb.
    pub sub: String,
    /// The request type, `io.` + the subject (the verb's [`Endpoint::KIND`]); `type` on the wire.
    #[serde(rename = "type")]
    pub kind: String,
    /// The verb's request body ([`Endpoint::Request`]).
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

/// Whether the verb on `subject` changes the estate. Its replies are kept until the request
/// expires, so the very same request sent again gets the first reply. A read has no effect and
/// keeps nothing: the same bytes again are refused as `replayed`, so a client asks again with a
/// request signed afresh ([`crate::client::call`]).
pub fn changes(subject: &str) -> bool {
    !matches!(
        subject,
        Status::SUBJECT
            | Grants::SUBJECT
            | List::SUBJECT
            | SecretList::SUBJECT
            | SecretVersions::SUBJECT
            | SecretGet::SUBJECT
            | SiteList::SUBJECT
            | AdminList::SUBJECT
            | AuditTail::SUBJECT
            | AuditVerify::SUBJECT
            | EstateExport::SUBJECT
    )
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
    /// The verb succeeded: `{"result": …}`, the verb's reply body.
    Result(T),
    /// The verb was refused or failed: `{"error": {"code", "message"}}`.
    Error(ApiError),
}

impl<T> Reply<T> {
    /// The reply as a `Result`: `Ok` with the reply body, `Err` with the control plane's error.
    pub fn into_result(self) -> Result<T, ApiError> {
        match self {
            Reply::Result(t) => Ok(t),
            Reply::Error(e) => Err(e),
        }
    }
}

// === endpoints ===

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Admin identities only.
    Admin,
    /// Any recorded, active identity (services, admins, agents).
    Identity,
    /// A new identity holding a join token (its signer is not recorded yet).
    Enrollee,
}

/// What a request reaches, for admin roles' tenant confinement ([`crate::policy::roles`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Nothing beyond the caller itself (enrollment, renewal, acknowledgements).
    Own,
    /// One tenant's things (a service, a secret): a confined admin must hold that tenant.
    Tenant(String),
    /// Every tenant's things, each shown only to admins who hold its tenant (listings).
    EachTenant,
    /// Estate-wide facts that belong to no tenant, read only (site list, audit verification).
    Shared,
    /// An estate-wide change (sites, rotations, site agents): admins confined to tenants may not.
    Estate,
    /// Admin identities themselves: owners only.
    Admins,
}

/// What a request body reaches ([`Reach`]); every request type says it.
pub trait Reaches {
    /// What this request reaches.
    fn reach(&self) -> Reach;
}

/// An endpoint as data (what [`Endpoint`] says, for tables and tests).
#[derive(Debug, Clone, Copy)]
pub struct EndpointSpec {
    /// The NATS subject it is served on.
    pub subject: &'static str,
    /// The `type` claim its signed requests carry.
    pub kind: &'static str,
    /// Who may call it.
    pub caller: Caller,
    /// JSON Schema of the request body, a file in `subjects/schemas/`.
    pub request_schema: &'static str,
    /// JSON Schema of the reply's `result`, a file in `subjects/schemas/`.
    pub reply_schema: &'static str,
}

/// One verb of the API: a unit type that knows its subject, kind, caller, and the types of its
/// request and reply bodies.
pub trait Endpoint: Send + Sync + 'static {
    /// The NATS subject it is served on.
    const SUBJECT: &'static str;
    /// The `type` claim of its signed requests: `io.` + the subject.
    const KIND: &'static str;
    /// Who may call it.
    const CALLER: Caller;
    /// JSON Schema of the request body (`subjects/schemas/`).
    const REQUEST_SCHEMA: &'static str;
    /// JSON Schema of the reply's `result` (`subjects/schemas/`).
    const REPLY_SCHEMA: &'static str;
    /// The request body.
    type Request: Serialize + DeserializeOwned + Reaches + Send + Sync + 'static;
    /// The reply's `result`.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// All of it as data.
    const SPEC: EndpointSpec = EndpointSpec {
        subject: Self::SUBJECT,
        kind: Self::KIND,
        caller: Self::CALLER,
        request_schema: Self::REQUEST_SCHEMA,
        reply_schema: Self::REPLY_SCHEMA,
    };
}

/// Declares a verb: `Name: "subject", Caller, Request => Reply, "req.json" => "reply.json"`.
macro_rules! endpoint {
    ($(#[$doc:meta])* $name:ident: $subject:literal, $caller:ident, $req:ty => $reply:ty, $rs:literal => $ps:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl $name {
            /// The NATS subject it is served on ([`Endpoint::SUBJECT`](crate::proto::Endpoint::SUBJECT)).
            pub const SUBJECT: &'static str = $subject;
            /// The `type` claim of its signed requests ([`Endpoint::KIND`](crate::proto::Endpoint::KIND)).
            pub const KIND: &'static str = concat!("io.", $subject);
        }
        impl $crate::proto::Endpoint for $name {
            const SUBJECT: &'static str = $subject;
            const KIND: &'static str = concat!("io.", $subject);
            const CALLER: $crate::proto::Caller = $crate::proto::Caller::$caller;
            const REQUEST_SCHEMA: &'static str = $rs;
            const REPLY_SCHEMA: &'static str = $ps;
            type Request = $req;
            type Reply = $reply;
        }
    };
}

/// Declares a wire enum: serde spells each variant in snake_case, `as_str` and `Display` say the
/// same (a CLI pads it like a string).
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident => $s:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $v),+
        }
        impl $name {
            /// How the wire spells it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

/// Calls `$m!` with every verb, in the order the service registers them: the one list that
/// [`ENDPOINTS`] and the server's dispatch table are made from.
macro_rules! for_each_endpoint {
    ($m:ident) => {
        $m!(
            Status, TokenCreate, Grant, Ungrant, Grants, Revoke, List, RotateSigningKey, SecretPut, SecretRotate,
            SecretList, SecretVersions, SecretDelete, SecretGet, Enroll, Renew, Ack, SiteRenew, SiteAdd, SiteList,
            RotateCa, SiteRemove, AdminAdd, AdminList, AuditTail, AuditVerify, EstateExport, SecretReaders, DashboardSession
        )
    };
}
pub(crate) use for_each_endpoint;

macro_rules! specs {
    ($($e:ident),*) => { &[$(<$e as Endpoint>::SPEC),*] };
}

/// Every endpoint the control plane serves.
pub const ENDPOINTS: &[EndpointSpec] = for_each_endpoint!(specs);

/// The endpoint served on `subject`.
pub fn endpoint(subject: &str) -> Option<&'static EndpointSpec> {
    ENDPOINTS.iter().find(|e| e.subject == subject)
}

/// The most items one page of a listing holds (`limit`).
pub const MAX_PAGE: u32 = 2_000;

pub mod admin;
pub mod audit;
pub mod ca;
pub mod enroll;
pub mod estate;
pub mod secret;
pub mod site;
pub mod status;
pub use admin::*;
pub use audit::*;
pub use ca::*;
pub use enroll::*;
pub use estate::*;
pub use secret::*;
pub use site::*;
pub use status::*;

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

    #[test]
    fn secrets_in_wire_types_never_print() {
        let req = EnrollRequest {
            token_id: "T1".into(),
            token_secret: "s3cret-token-secret".into(),
            identity: crate::names::ServiceId::parse("acme/shop/prod/orders").unwrap(),
            xkey: "X".into(),
            csr: "csr".into(),
        };
        let reply = TokenCreateReply {
            tokens: vec!["tillit1.s3cret".into()],
            identity: req.identity.clone(),
            expires_at: "t".into(),
            expires_at_unix: 0,
        };
        for text in [format!("{req:?}"), format!("{reply:?}")] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("redacted"), "{text}");
        }
        assert_eq!(serde_json::to_value(&req).unwrap()["token_secret"], "s3cret-token-secret", "the wire still carries it");
        assert_eq!(serde_json::to_value(IdentityStatus::Expired).unwrap(), "expired");
        assert_eq!(format!("{:<9}|", CaStatus::Next), "next     |");
        assert!(serde_json::from_value::<AckOutcome>(serde_json::json!("maybe")).is_err());
    }

    #[test]
    fn endpoints_are_one_table() {
        let mut seen = std::collections::BTreeSet::new();
        for e in ENDPOINTS {
            assert!(seen.insert(e.subject), "{} twice", e.subject);
            assert_eq!(e.kind, format!("io.{}", e.subject));
            assert!(e.subject.starts_with("tillit.v1."));
            assert_eq!(endpoint(e.subject).map(|s| s.kind), Some(e.kind));
            let admin = e.subject.starts_with("tillit.v1.admin.");
            assert_eq!(admin, e.caller == Caller::Admin, "{}: admin verbs live under tillit.v1.admin", e.subject);
        }
        assert_eq!(<Grant as Endpoint>::KIND, "io.tillit.v1.admin.grant");
        assert!(endpoint("tillit.v1.admin.nope").is_none());
    }
}

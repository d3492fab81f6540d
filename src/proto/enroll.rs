//! Enrollment with a join token and renewal: the verbs that issue an identity its credentials.
//!
//! The verbs of this family ([`super::Endpoint`]) and the bodies they carry.

use crate::identity::IdentityInfo;
use serde::{Deserialize, Serialize};

endpoint! {
    /// `tillit.v1.enroll`: A new identity enrolls with a join token (from its bootstrap connection).
    Enroll: "tillit.v1.enroll", Enrollee, EnrollRequest => IssuedReply, "enroll-request.json" => "issued-reply.json"
}
endpoint! {
    /// `tillit.v1.svc.renew`: An identity renews its certificate and user JWT.
    Renew: "tillit.v1.svc.renew", Identity, RenewRequest => IssuedReply, "renew-request.json" => "issued-reply.json"
}

/// `tillit.v1.enroll` request body. The request is signed by the *new* user nkey (proof of
/// possession); the CSR's subject CN must be that nkey's public key, binding the TLS key to it.
#[derive(Clone, Serialize, Deserialize)]
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

/// The token secret never prints.
impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token_id", &self.token_id)
            .field("token_secret", &"<redacted>")
            .field("identity", &self.identity)
            .field("xkey", &self.xkey)
            .finish_non_exhaustive()
    }
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

impl IssuedReply {
    /// What the identity dir says of the identity this reply issued, reached at `nats_urls`,
    /// to be renewed at `renew_at` (Unix seconds; see `policy::renew`).
    pub fn identity_info(&self, nats_urls: Vec<String>, xkey_public_key: Option<String>, renew_at: i64) -> IdentityInfo {
        let reply = self;
        IdentityInfo {
            format: crate::identity::IDENTITY_FORMAT,
            kind: reply.kind,
            id: reply.id.clone(),
            name: reply.name.clone(),
            trust_domain: reply.trust_domain.clone(),
            account: reply.account.clone(),
            account_public_key: reply.account_public_key.clone(),
            user_public_key: reply.user_public_key.clone(),
            inbox_prefix: reply.inbox_prefix.clone(),
            nats_urls,
            ca_fingerprint: reply.ca_fingerprint.clone(),
            cert_serial: reply.cert_serial.clone(),
            issued_at: String::new(),
            expires_at: String::new(),
            renew_at: String::new(),
            issued_at_unix: 0,
            expires_at_unix: 0,
            renew_at_unix: 0,
            service: reply.service.clone(),
            xkey_public_key,
        }
        .with_times(reply.issued_at_unix, reply.expires_at_unix, renew_at)
    }
}

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
    /// The join token's id.
    pub token_id: String,
    /// The join token's secret (base64url, 32 bytes; the control plane keeps only its SHA-256). `Debug` never prints it.
    pub token_secret: String,
    /// The identity the token was minted for (`tenant/project/env/service`); a token for another one is `forbidden`.
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
    /// The identity's SPIFFE id (`spiffe://<trust-domain>/…`), also the certificate's URI SAN.
    pub id: String,
    /// What the identity is: a service, an admin or a site agent.
    pub kind: crate::identity::IdentityKind,
    /// Its short name: the service's name, the admin's name, or for a site agent its consumer name (`agent-<site>-<key>`).
    pub name: String,
    /// `tenant/project/env/service` of a service (`tillit/sites/<site>/agent` for a site agent); absent for admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::names::ServiceId>,
    /// The trust domain it belongs to.
    pub trust_domain: String,
    /// Name of the NATS account its user lives in: the tenant account (`<tenant>-<env>`), or `TILLIT` for admins and agents.
    pub account: String,
    /// That account's public nkey (`A…`).
    pub account_public_key: String,
    /// The identity's public user nkey (`U…`): the key that signed the request, and the subject of `user_jwt`.
    pub user_public_key: String,
    /// The inbox prefix its connections must use (`_INBOX.<user public key>`; `_INBOX.site-<site>.<key>` for agents):
    /// only it may subscribe below it.
    pub inbox_prefix: String,
    /// The NATS user JWT, signed by the account's scoped key for the identity's role: no permissions of its own, not a
    /// bearer token, expires with the certificate.
    pub user_jwt: String,
    /// The client certificate (PEM) for the CSR's key, with the SPIFFE id as URI SAN.
    pub cert_pem: String,
    /// The CA bundle to trust (PEM): every CA trusted now, more than one during a CA rotation.
    pub ca_pem: String,
    /// The trust set (`trust.jwks`, an RFC 7517 JWK Set): the keys that sign envelopes, and the control plane's xkey.
    pub trust_jwks: String,
    /// The hub's client URLs.
    pub nats_urls: Vec<String>,
    /// The CA that issued `cert_pem`, `sha256:<hex>` of its DER; the identity pins it.
    pub ca_fingerprint: String,
    /// The certificate's serial number (hex): what revocations, the CRL and OCSP name.
    pub cert_serial: String,
    /// When the certificate and the user JWT were issued (Unix seconds).
    pub issued_at_unix: i64,
    /// When the certificate and the user JWT expire (Unix seconds).
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

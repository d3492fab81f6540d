//! Operators at work on identities: join tokens, grants, revocations, listings.
//!
//! The verbs of this family ([`super::Endpoint`]) and the bodies they carry.

use serde::{Deserialize, Serialize};

endpoint! {
    /// `tillit.v1.admin.token.create`: Mint join tokens for a service.
    TokenCreate: "tillit.v1.admin.token.create", Admin, TokenCreateRequest => TokenCreateReply, "token-create-request.json" => "token-create-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.grant`: Add subjects a service may publish / subscribe.
    Grant: "tillit.v1.admin.grant", Admin, GrantRequest => GrantsReply, "grant-request.json" => "grants-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.ungrant`: Take granted subjects back.
    Ungrant: "tillit.v1.admin.ungrant", Admin, GrantRequest => GrantsReply, "grant-request.json" => "grants-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.grants`: Show what a service may publish / subscribe.
    Grants: "tillit.v1.admin.grants", Admin, ServiceRequest => GrantsReply, "service-request.json" => "grants-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.revoke`: Revoke every live identity of a service.
    Revoke: "tillit.v1.admin.revoke", Admin, RevokeRequest => RevokeReply, "revoke-request.json" => "revoke-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.list`: List identities.
    List: "tillit.v1.admin.list", Admin, ListRequest => ListReply, "list-request.json" => "list-reply.json"
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
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenCreateReply {
    pub tokens: Vec<String>,
    pub identity: crate::names::ServiceId,
    pub expires_at: String,
    pub expires_at_unix: i64,
}

/// The tokens never print.
impl std::fmt::Debug for TokenCreateReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCreateReply")
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("identity", &self.identity)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
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

wire_enum! {
    /// Where an identity stands.
    IdentityStatus {
        Active => "active",
        Revoked => "revoked",
        Expired => "expired",
    }
}

/// One identity in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityEntry {
    pub id: String,
    pub kind: crate::identity::IdentityKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::names::ServiceId>,
    pub user_public_key: String,
    pub state: IdentityStatus,
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

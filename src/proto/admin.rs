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
    /// The identity the tokens enroll: `tenant/project/env/service`, `tillit/sites/<site>/agent` for a site's agents, or
    /// `tillit/admins/<name>/admin` for a new admin.
    pub identity: crate::names::ServiceId,
    /// How long the tokens stay usable, in seconds (60 s to 7 days).
    pub ttl_secs: i64,
    /// How many tokens to mint (1 to 200); each enrolls one instance, once.
    pub count: u32,
}

/// `tillit.v1.admin.token.create` reply: the printable tokens (secrets, shown once).
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenCreateReply {
    /// The join tokens, `tillit1.<base64url(JSON)>`: secrets, shown once (`Debug` prints only their number).
    pub tokens: Vec<String>,
    /// The identity they enroll.
    pub identity: crate::names::ServiceId,
    /// When the tokens expire (RFC 3339).
    pub expires_at: String,
    /// When the tokens expire (Unix seconds).
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
    /// The service whose permissions change (`tenant/project/env/service`).
    pub service: crate::names::ServiceId,
    /// Subjects to grant (or take back) for publishing; `pub` on the wire. Wildcards are allowed, but not `>` alone, a
    /// wildcard first token, system subjects (`$SYS`, `$JS`, …), `tillit.*` or inboxes.
    #[serde(rename = "pub", default)]
    pub publish: Vec<String>,
    /// Subjects to grant (or take back) for subscribing, under the same rules; `sub` on the wire.
    #[serde(rename = "sub", default)]
    pub subscribe: Vec<String>,
}

/// `tillit.v1.admin.grants` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    /// The service to show (`tenant/project/env/service`).
    pub service: crate::names::ServiceId,
}

/// A service's permissions (reply of grant, ungrant and grants).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantsReply {
    /// The service (`tenant/project/env/service`).
    pub service: crate::names::ServiceId,
    /// Everything the service may publish / subscribe now (defaults and grants).
    #[serde(rename = "pub")]
    pub publish: Vec<String>,
    /// Everything it may subscribe to now; `sub` on the wire.
    #[serde(rename = "sub")]
    pub subscribe: Vec<String>,
    /// What operators granted on top of the defaults.
    pub granted_pub: Vec<String>,
    /// What operators granted for subscribing on top of the defaults.
    pub granted_sub: Vec<String>,
    /// What the operator should check (a service that never enrolled: a typo?).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `tillit.v1.admin.revoke` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The service whose active identities are all revoked (`tillit/admins/<name>/admin` for an admin's; the last live
    /// admin cannot be revoked).
    pub service: crate::names::ServiceId,
    /// Why, for the audit log (at most 512 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One revoked credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedIdentity {
    /// Its user nkey, now in the account's revocations: nats-server drops its connections and refuses it.
    pub user_public_key: String,
    /// Its certificate's serial (hex), now reported revoked by the CRL and OCSP.
    pub cert_serial: String,
}

/// `tillit.v1.admin.revoke` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeReply {
    /// The service revoked.
    pub service: crate::names::ServiceId,
    /// Every credential revoked, one per identity that was active.
    pub revoked: Vec<RevokedIdentity>,
    /// When (RFC 3339).
    pub revoked_at: String,
}

/// `tillit.v1.admin.list` request body: empty for every identity at once (or `limit_exceeded`
/// when they do not fit in one reply), or one page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// At most this many identities (1 to [`super::MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

wire_enum! {
    /// Where an identity stands.
    IdentityStatus {
        /// Recorded, not revoked, and its credentials have not expired.
        Active => "active",
        /// Revoked by an admin (or with its site); it can never renew.
        Revoked => "revoked",
        /// Not revoked, but its credentials expired without a renewal; it must enroll again.
        Expired => "expired",
    }
}

/// One identity in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityEntry {
    /// The identity's SPIFFE id.
    pub id: String,
    /// What it is: a service, an admin or a site agent.
    pub kind: crate::identity::IdentityKind,
    /// `tenant/project/env/service` of a service or site agent; absent for admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::names::ServiceId>,
    /// Its public user nkey (`U…`); one service has one identity per enrolled instance.
    pub user_public_key: String,
    /// Where it stands now.
    pub state: IdentityStatus,
    /// Serial of its current certificate (hex).
    pub cert_serial: String,
    /// When its certificate and user JWT expire (RFC 3339).
    pub expires_at: String,
    /// When it was revoked (RFC 3339); absent unless revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// `tillit.v1.admin.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListReply {
    /// Every recorded identity (or this page of them), in any state, sorted by SPIFFE id then
    /// user key.
    pub identities: Vec<IdentityEntry>,
    /// Where the next page starts (pass it as `after`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

wire_enum! {
    /// What an admin may do ([`crate::policy::roles`] has the verb × role matrix).
    AdminRole {
        /// Everything, including adding and revoking admins. Never confined to tenants.
        Owner => "owner",
        /// Tokens, grants, revocations, secrets, sites, rotations; not admins, not the audit log.
        Operator => "operator",
        /// Read-only: status, listings, grants, secret metadata (never values), the audit log.
        Auditor => "auditor",
    }
}

impl std::str::FromStr for AdminRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(AdminRole::Owner),
            "operator" => Ok(AdminRole::Operator),
            "auditor" => Ok(AdminRole::Auditor),
            _ => Err(format!("unknown role {s:?}: owner, operator or auditor")),
        }
    }
}

endpoint! {
    /// `tillit.v1.admin.admins.add`: Mint a join token for a new admin identity with a role (owners only).
    AdminAdd: "tillit.v1.admin.admins.add", Admin, AdminAddRequest => TokenCreateReply, "admin-add-request.json" => "token-create-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.admins.list`: List admins with their roles and tenants (owners and auditors).
    AdminList: "tillit.v1.admin.admins.list", Admin, AdminListRequest => AdminListReply, "admin-list-request.json" => "admin-list-reply.json"
}

/// The most tenants one admin can be confined to.
pub const MAX_ADMIN_TENANTS: usize = 64;

/// `tillit.v1.admin.admins.add` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminAddRequest {
    /// The new admin's name (a-z, 0-9, '-', '_'); its identity is `spiffe://<td>/tillit/admin/<name>`.
    pub name: String,
    /// What it may do: `owner`, `operator` or `auditor`.
    pub role: AdminRole,
    /// The tenants an operator or auditor is confined to (at most 64); empty: the whole estate. Owners are never confined.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// How long the join token stays usable, in seconds (60 s to 7 days).
    pub ttl_secs: i64,
}

/// `tillit.v1.admin.admins.list` request body (empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminListRequest {}

/// One admin (all the identities enrolled under its name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminInfo {
    /// The admin's name.
    pub name: String,
    /// Its role.
    pub role: AdminRole,
    /// The tenants it is confined to; empty: the whole estate.
    pub tenants: Vec<String>,
    /// `active` when at least one of its identities is; else `revoked` or `expired`.
    pub state: IdentityStatus,
    /// How many live identities it has (one per enrolled machine or person's dir).
    pub active_identities: usize,
    /// When its latest identity's credentials expire (RFC 3339).
    pub expires_at: String,
}

/// `tillit.v1.admin.admins.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminListReply {
    /// Every admin, sorted by name.
    pub admins: Vec<AdminInfo>,
}

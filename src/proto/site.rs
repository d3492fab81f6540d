//! Sites: adding, listing and removing them, and what their agents send (acknowledgements, site server renewal).
//!
//! The verbs of this family ([`super::Endpoint`]) and the bodies they carry.

use serde::{Deserialize, Serialize};

endpoint! {
    /// `tillit.v1.svc.ack`: A site agent acknowledges the events it applied.
    Ack: "tillit.v1.svc.ack", Identity, AckRequest => AckReply, "ack-request.json" => "ack-reply.json"
}
endpoint! {
    /// `tillit.v1.svc.site.renew`: A site agent renews its site server's certificate and leafnode users.
    SiteRenew: "tillit.v1.svc.site.renew", Identity, SiteRenewRequest => SiteRenewReply, "site-renew-request.json" => "site-renew-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.site.add`: Add a site.
    SiteAdd: "tillit.v1.admin.site.add", Admin, SiteAddRequest => SiteAddReply, "site-add-request.json" => "site-add-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.site.list`: List sites and how far their agents are.
    SiteList: "tillit.v1.admin.site.list", Admin, SiteListRequest => SiteListReply, "site-list-request.json" => "site-list-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.site.remove`: Remove a site: revoke its agents and its server's links.
    SiteRemove: "tillit.v1.admin.site.remove", Admin, SiteRemoveRequest => SiteRemoveReply, "site-remove-request.json" => "site-remove-reply.json"
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
#[derive(Clone, Serialize, Deserialize)]
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

/// The agent's join token never prints.
impl std::fmt::Debug for SiteAddReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteAddReply").field("site", &self.site).field("agent_token", &"<redacted>").finish_non_exhaustive()
    }
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

wire_enum! {
    /// What became of the events an agent acknowledges.
    AckOutcome {
        /// Written (and the reload hook ran).
        Applied => "applied",
        /// Not applied; `error` says why.
        Failed => "failed",
    }
}

/// What an agent acknowledges (the envelope's `data`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckData {
    pub site: String,
    pub outcome: AckOutcome,
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

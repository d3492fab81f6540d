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
    /// The site's name: 1 to 63 lowercase letters, digits, `_` or `-`, starting with a letter or digit.
    pub name: String,
    /// `host:port` the site server will listen on for clients.
    pub listen: String,
    /// Extra DNS names / IPs for the site server's certificate.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// CSR (PEM, P-256) whose subject CN is `tillit_user`.
    pub csr: String,
    /// Public nkey (`U…`) of the user the site server's SYS leafnode remote logs in as (made at the site).
    pub sys_user: String,
    /// Public nkey (`U…`) of the user its TILLIT leafnode remote logs in as (made at the site; the CSR's subject CN).
    pub tillit_user: String,
    /// Lifetime of the agent join token minted with the site.
    pub agent_token_ttl_secs: i64,
}

/// `tillit.v1.admin.site.add` reply: everything the site directory holds but private keys.
#[derive(Clone, Serialize, Deserialize)]
pub struct SiteAddReply {
    /// The site as recorded.
    pub site: SiteInfo,
    /// The site server's certificate (PEM; serverAuth + clientAuth, SPIFFE id `spiffe://<trust-domain>/tillit/site/<name>`).
    pub cert_pem: String,
    /// The CA bundle the site server trusts (PEM).
    pub ca_pem: String,
    /// The NATS operator JWT, for the site server's configuration.
    pub operator_jwt: String,
    /// Public nkey (`A…`) of the SYS account.
    pub system_account: String,
    /// Public nkey (`A…`) of the TILLIT account.
    pub tillit_account: String,
    /// Account public key → JWT, preloaded into the site server's resolver.
    pub preload: std::collections::BTreeMap<String, String>,
    /// User JWT of the SYS leafnode remote (`sys_user`).
    pub sys_user_jwt: String,
    /// User JWT of the TILLIT leafnode remote (`tillit_user`).
    pub tillit_user_jwt: String,
    /// The hub's leafnode URLs.
    pub hub_urls: Vec<String>,
    /// What the site server does when no OCSP responder answers: `refuse` or `admit`
    /// (`ocsp.when_unreachable` of the estate). Absent from older control planes: `refuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_when_unreachable: Option<String>,
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
    /// The site's name.
    pub name: String,
    /// `host:port` its server listens on for clients.
    pub listen: String,
    /// When it was added (RFC 3339).
    pub created_at: String,
    /// How many agents the site has enrolled.
    pub agents: usize,
    /// Lowest stream sequence every agent of the site applied (0: none yet).
    pub last_applied_seq: u64,
    /// Envelope id of the last event its slowest agent applied; absent before any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    /// Envelope `type` of that event; absent before any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_type: Option<String>,
    /// Events for the site its slowest agent has not acknowledged yet (its consumer's backlog).
    pub lag_events: u64,
    /// When one of its agents last acknowledged applied events (RFC 3339); absent before any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack_at: Option<String>,
    /// The same instant, in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack_unix: Option<i64>,
    /// How many batches its agents reported they could not apply, in total.
    pub failures: u64,
    /// The most recent failure one of its agents reported; absent if none did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The site server's certificate: when it expires, and whether the current CA issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_at: Option<String>,
    /// Whether the current CA issued the site server's certificate (an old CA retires only once every site's is).
    #[serde(default)]
    pub cert_from_current_ca: bool,
}

/// `tillit.v1.admin.site.remove` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRemoveRequest {
    /// The site to remove.
    pub name: String,
    /// Why, for the audit log (at most 512 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `tillit.v1.admin.site.remove` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteRemoveReply {
    /// The site removed.
    pub name: String,
    /// Agents revoked (user public keys).
    pub agents_revoked: Vec<String>,
    /// The site server's leafnode users, revoked (its links to the hub drop).
    pub leaf_users_revoked: Vec<String>,
}

/// `tillit.v1.admin.site.list` request body: empty for every site, or one page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteListRequest {
    /// At most this many sites (1 to [`super::MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `tillit.v1.admin.site.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteListReply {
    /// Every site (or this page of them), by name, with its agents' progress.
    pub sites: Vec<SiteInfo>,
    /// Where the next page starts (pass it as `after`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `tillit.v1.svc.ack` request body: an agent's signed acknowledgement envelope (JWS EdDSA by
/// the agent's nkey, type `io.tillit.v1.agent.ack`, audience the control plane).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// The acknowledgement: a JWS compact envelope signed by the agent's own nkey, whose `data` is an [`AckData`].
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
    /// The agent's own site (another one is `forbidden`).
    pub site: String,
    /// Whether the batch was applied.
    pub outcome: AckOutcome,
    /// Stream sequences of the batch's events (applied or attempted).
    pub seqs: Vec<u64>,
    /// Envelope ids of the batch's events.
    pub event_ids: Vec<String>,
    /// Envelope `type` of the batch's last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_type: Option<String>,
    /// Why the batch failed (with `failed`); the control plane keeps the start of it as the site's `last_error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `tillit.v1.svc.ack` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckReply {
    /// Whether the acknowledgement was recorded (always `true` in a reply; a refusal is an error).
    pub recorded: bool,
    /// The highest stream sequence this agent has applied, as the control plane now records it.
    pub last_seq: u64,
}

/// `tillit.v1.svc.site.renew` request body (a site's agent): a CSR made at the site, CN = the
/// site's TILLIT leafnode user (the key pair stays at the site).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRenewRequest {
    /// PEM PKCS#10 for an ECDSA P-256 key, subject CN = the site's TILLIT leafnode user public key.
    pub csr: String,
}

/// `tillit.v1.svc.site.renew` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteRenewReply {
    /// The site (the calling agent's).
    pub site: String,
    /// The site server's new certificate (PEM, from the current CA; serverAuth + clientAuth).
    pub cert_pem: String,
    /// New user JWT of the SYS leafnode remote (same nkey, new expiry).
    pub sys_user_jwt: String,
    /// New user JWT of the TILLIT leafnode remote (same nkey, new expiry).
    pub tillit_user_jwt: String,
    /// The CA bundle now (PEM).
    pub ca_pem: String,
    /// Fingerprint of the CA that issued `cert_pem`.
    pub ca_fingerprint: String,
    /// When the new certificate expires (RFC 3339).
    pub expires_at: String,
    /// When the new certificate expires (Unix seconds).
    pub expires_at_unix: i64,
}

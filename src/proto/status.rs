//! `tillit.v1.admin.status`: what the control plane manages and how far its sites are.
//!
//! The verbs of this family ([`super::Endpoint`]) and the bodies they carry.

use super::{CaInfo, CaRollout, SiteInfo};
use serde::{Deserialize, Serialize};

endpoint! {
    /// `tillit.v1.admin.status`: The estate at a glance (admins).
    Status: "tillit.v1.admin.status", Admin, StatusRequest => StatusReply, "status-request.json" => "status-reply.json"
}

/// `tillit.v1.admin.status` request body (empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {}

/// One account in a status reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountStatus {
    /// The account's public nkey (`A…`).
    pub public_key: String,
    /// What the account is for: `system` (SYS), `tillit` (the control plane, admins and site agents), `bootstrap`
    /// (join tokens' bootstrap users) or `tenant` (one per tenant + environment).
    pub kind: String,
    /// When tillit created it (RFC 3339).
    pub created_at: String,
}

/// Counts of things the control plane manages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Counts {
    /// Every recorded identity, whatever its state.
    pub identities: usize,
    /// Identities by state.
    pub active: usize,
    /// Identities revoked (they never renew again).
    pub revoked: usize,
    /// Identities not revoked whose credentials expired without a renewal (they must enroll again).
    pub expired: usize,
    /// Accounts of the operator, of every kind.
    pub accounts: usize,
    /// Tenant accounts among them (one per tenant + environment).
    pub tenant_accounts: usize,
}

/// `tillit.v1.admin.status` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    /// The trust domain this control plane serves (the authority of every SPIFFE id it issues, e.g. `example.org`).
    pub trust_domain: String,
    /// The control plane's tillit version.
    pub version: String,
    /// The control plane's clock when it answered (RFC 3339): compare it with the caller's to spot skew.
    pub server_time: String,
    /// The NATS operator's public nkey (`O…`).
    pub operator: String,
    /// The CA that issues certificates now: `sha256:<hex>` of its DER.
    pub ca_fingerprint: String,
    /// When the control plane's CA certificate expires (RFC 3339).
    pub ca_expires_at: String,
    /// The hub's client URLs, as identities are told to connect.
    pub nats_urls: Vec<String>,
    /// Every account by name: `SYS`, `TILLIT`, `BOOTSTRAP` and one per tenant + environment (e.g. `acme-prod`).
    pub accounts: std::collections::BTreeMap<String, AccountStatus>,
    /// How many identities and accounts there are.
    pub counts: Counts,
    /// Sites and how far their agents are.
    #[serde(default)]
    pub sites: Vec<SiteInfo>,
    /// The CAs in the bundle (and retired ones).
    #[serde(default)]
    pub cas: Vec<CaInfo>,
    /// The CA rotation waiting for sites, if one is under way (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rollout: Option<CaRollout>,
    /// Where the records live, the replicas serving them and the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    /// Whether the data plane keeps working without the control plane, and what says it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<AvailabilityStatus>,
    /// The break-glass bundle: which one is current, and every connection made with one (absent
    /// in an estate without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlassStatus>,
    /// Resident memory of the control plane process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// How tenant connections are authenticated, and (callout mode) the answering replica's
    /// decisions since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthStatus>,
    /// Who asked (the verified caller).
    pub caller: String,
    /// The caller's admin role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_role: Option<super::AdminRole>,
    /// The tenants the caller is confined to (empty: the whole estate; its counts and accounts are of these tenants only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caller_tenants: Vec<String>,
}

/// The authentication mode in a status reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthStatus {
    /// `jwt` (nats-server checks the user JWT and the certificate separately) or `callout`
    /// (tillit decides each tenant connection from both).
    pub mode: String,
    /// When the estate entered this mode (RFC 3339); absent if it never changed mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Authorization requests this replica answered since it started.
    pub requests: u64,
    /// Of those, connections admitted.
    pub admitted: u64,
    /// Of those, connections refused.
    pub refused: u64,
    /// Median decision time over the last decisions (ms).
    pub p50_ms: f64,
    /// 99th percentile decision time over the last decisions (ms).
    pub p99_ms: f64,
}

/// The break-glass bundle in a status reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakGlassStatus {
    /// The current bundle: `sha256:<hex>` of its CA certificate.
    pub fingerprint: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it expires (RFC 3339).
    pub expires_at: String,
    /// How many bundles were rotated away before it.
    pub rotated: usize,
    /// How many connections were ever made with a break-glass bundle (this or a rotated one).
    pub connections_total: u64,
    /// When the last one was made (RFC 3339, the server's clock); absent if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_connection: Option<String>,
    /// The last connections, newest first (at most 20).
    #[serde(default)]
    pub connections: Vec<BreakGlassConnection>,
    /// Whether the bundle file `init` wrote is still in the data dir (it belongs offline).
    pub bundle_in_data_dir: bool,
}

/// One connection made with a break-glass bundle, as nats-server reported it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakGlassConnection {
    /// When (RFC 3339, the server's clock).
    pub at: String,
    /// The server's name.
    pub server: String,
    /// The client's IP address.
    pub host: String,
    /// The break-glass user's public nkey.
    pub user: String,
    /// The bundle it belongs to (its fingerprint).
    pub bundle: String,
}

/// How new connections are checked when the control plane is away.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AvailabilityStatus {
    /// The OCSP responder next to every nats-server that certificates name first
    /// (`ocsp.local_url`); absent when none is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_local_url: Option<String>,
    /// Whether a responder answers at that URL from the host of the replica that answered
    /// (absent when not checked: no URL, or not an `http://IP:PORT` one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_responder_answers: Option<bool>,
    /// What nats-servers do when no responder answers: `refuse` or `admit`.
    pub when_unreachable: String,
    /// Pre-signed OCSP answers this replica holds.
    pub ocsp_answers: usize,
    /// Every way the estate depends on a single control-plane process, and a known fault of the
    /// nats-server release this replica is connected to, in words with what to do.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The store and the replicas of the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `sled` (embedded, one `serve`) or `jetstream` (a KV bucket and a journal stream; several replicas).
    pub backend: String,
    /// The JetStream KV bucket of the records (jetstream only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The journal stream (jetstream only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<String>,
    /// Copies JetStream keeps of the bucket and the journal (1 with sled).
    pub replication: usize,
    /// The replica that answered this request.
    pub answered_by: String,
    /// Whether the store is reachable from the replica that answered.
    pub reachable: bool,
    /// The leader lease (jetstream only): the replica running the singleton jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderInfo>,
    /// The replicas that announced themselves lately (three lease lives, at least 5 s).
    #[serde(default)]
    pub replicas: Vec<ReplicaInfo>,
}

/// The leader lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The replica holding the lease.
    pub replica: String,
    /// The fencing token: one more at every change of leader.
    pub token: u64,
    /// When the lease lapses unless renewed (RFC 3339).
    pub expires_at: String,
}

/// A replica of the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Its id (`TILLIT_REPLICA_ID`, or host, process id and a random suffix).
    pub id: String,
    /// Its HTTP address (health, OCSP, metrics).
    pub http_addr: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it last announced itself (RFC 3339).
    pub seen_at: String,
}

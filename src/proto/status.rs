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

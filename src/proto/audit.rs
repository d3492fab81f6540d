//! The audit log over NATS, for admins who hold no data dir (auditors above all).

use serde::{Deserialize, Serialize};

endpoint! {
    /// `tillit.v1.admin.audit.tail`: The last records of the audit log (owners and auditors; tenant-confined auditors see their tenants' records).
    AuditTail: "tillit.v1.admin.audit.tail", Admin, AuditTailRequest => AuditTailReply, "audit-tail-request.json" => "audit-tail-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.audit.verify`: Check the whole log (hash chain, every record's MAC, the head anchor) where it is kept.
    AuditVerify: "tillit.v1.admin.audit.verify", Admin, AuditVerifyRequest => AuditVerifyReply, "audit-verify-request.json" => "audit-verify-reply.json"
}

/// The most records one `audit.tail` returns.
pub const MAX_AUDIT_TAIL: usize = 500;

/// `tillit.v1.admin.audit.tail` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditTailRequest {
    /// How many records, the newest last (1 to 500).
    pub n: usize,
    /// Only records before this sequence number: the page before one whose first record had it
    /// (absent: the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// One audit record as admins see it: what the log line says, without the store changes it carried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecordInfo {
    /// Its sequence number in the log.
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// Who acted: a SPIFFE id, `nkey:<key>` for a caller no identity has, or `tillit` for the control plane.
    pub actor: String,
    /// What was done: `token.create`, `enroll`, `grant`, `revoke`, …
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// `ok`, or `denied:<code>`.
    pub outcome: String,
    /// What else the record says (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// `tillit.v1.admin.audit.tail` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditTailReply {
    /// The records, oldest first.
    pub records: Vec<AuditRecordInfo>,
}

/// `tillit.v1.admin.audit.verify` request body (empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditVerifyRequest {}

/// `tillit.v1.admin.audit.verify` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditVerifyReply {
    /// Whether the whole log checks out.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// The hash of the last good record.
    pub head: String,
    /// Records whose MAC checked out.
    pub authenticated: u64,
    /// Whether the head anchor matches the last record.
    pub anchored: bool,
    /// What is wrong, when not `ok`: the first bad record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

//! Rotations of the trust roots: the envelope signing key and the X.509 CA.
//!
//! The verbs of this family ([`super::Endpoint`]) and the bodies they carry.

use serde::{Deserialize, Serialize};

endpoint! {
    /// `tillit.v1.admin.rotate.signing-key`: Rotate the envelope signing key.
    RotateSigningKey: "tillit.v1.admin.rotate.signing-key", Admin, RotateSigningKeyRequest => RotateSigningKeyReply, "rotate-signing-key-request.json" => "rotate-signing-key-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.rotate.ca`: Start a CA rotation, or finish one (`finish`).
    RotateCa: "tillit.v1.admin.rotate.ca", Admin, RotateCaRequest => RotateCaReply, "rotate-ca-request.json" => "rotate-ca-reply.json"
}

/// `tillit.v1.admin.rotate.signing-key` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateSigningKeyRequest {
    /// How long the old key keeps verifying.
    pub retire_after_secs: i64,
}

/// `tillit.v1.admin.rotate.signing-key` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateSigningKeyReply {
    pub current: String,
    pub previous: String,
    pub retire_at: String,
    /// The trust set now (what `trust.rotated` carried).
    pub trust_jwks: serde_json::Value,
}

/// `tillit.v1.admin.rotate.ca` request body: empty starts a rotation; `finish` brings the
/// retirement of the previous CA forward to now (its client certificates stop working).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateCaRequest {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finish: bool,
}

wire_enum! {
    /// Where a CA stands in the bundle.
    CaStatus {
        /// It issues.
        Current => "current",
        /// In the bundle, waiting for the sites before it issues.
        Next => "next",
        /// In the bundle until its last certificate expired.
        Previous => "previous",
        /// Gone from the bundle.
        Retired => "retired",
    }
}

wire_enum! {
    /// What `rotate ca` reached.
    RotatePhase {
        /// The new CA is in the bundle, waiting for sites to acknowledge it.
        Distributing => "distributing",
        /// Issuance switched (no site to wait for).
        Switched => "switched",
        /// `--finish`: the previous CA leaves once every site server was re-issued.
        Retiring => "retiring",
    }
}

wire_enum! {
    /// The step a `ca.rotated` event announces (its `phase`).
    CaEventPhase {
        /// A next CA joined the bundle.
        Added => "added",
        /// Issuance switched to it.
        Switched => "switched",
        /// Site agents re-issue their servers' certificates from the current CA.
        Reissue => "reissue",
        /// The previous CA left the bundle.
        Retired => "retired",
    }
}

/// One CA as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaInfo {
    pub fingerprint: String,
    pub state: CaStatus,
    pub created_at: String,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<String>,
}

/// A CA rollout under way: the new CA is in the bundle, waiting for sites to acknowledge it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRollout {
    pub next: String,
    /// Stream sequence of the `ca.rotated` event sites must have applied.
    pub event_seq: u64,
    pub started_at: String,
    /// Sites that have not acknowledged it yet.
    pub sites_pending: Vec<String>,
}

/// `tillit.v1.admin.rotate.ca` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateCaReply {
    pub phase: RotatePhase,
    pub cas: Vec<CaInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<CaRollout>,
}

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
    /// Key id (`kid`, the key's public nkey) of the key that signs envelopes from now on.
    pub current: String,
    /// Key id of the former key, which keeps verifying until `retire_at`.
    pub previous: String,
    /// When the former key leaves the trust set (RFC 3339).
    pub retire_at: String,
    /// The trust set now (what `trust.rotated` carried).
    pub trust_jwks: serde_json::Value,
}

/// `tillit.v1.admin.rotate.ca` request body: empty starts a rotation; `finish` brings the
/// retirement of the previous CA forward to now (its client certificates stop working).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateCaRequest {
    /// Retire the previous CA now instead of once its last client certificate expired: the sites' and the hub's server
    /// certificates are re-issued first; clients still holding its certificates must renew. Absent: start a rotation.
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
    /// `sha256:<hex>` of the CA certificate's DER.
    pub fingerprint: String,
    /// Where it stands in the bundle.
    pub state: CaStatus,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When its certificate expires (RFC 3339).
    pub expires_at: String,
    /// When it leaves (or left) the bundle (RFC 3339), set once it stops issuing; absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<String>,
}

/// A CA rollout under way: the new CA is in the bundle, waiting for sites to acknowledge it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRollout {
    /// Fingerprint (`sha256:<hex>`) of the CA being distributed.
    pub next: String,
    /// Stream sequence of the `ca.rotated` event sites must have applied.
    pub event_seq: u64,
    /// When the rotation started (RFC 3339).
    pub started_at: String,
    /// Sites that have not acknowledged it yet.
    pub sites_pending: Vec<String>,
}

/// `tillit.v1.admin.rotate.ca` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateCaReply {
    /// How far this step got.
    pub phase: RotatePhase,
    /// Every CA after the step, with its state.
    pub cas: Vec<CaInfo>,
    /// The rollout still waiting for sites; absent when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<CaRollout>,
}

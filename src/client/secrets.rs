//! Secrets, the client side: sealing a value to the control plane (admins) and opening one
//! sealed to this identity (services). The control plane's xkey comes from the pinned
//! `trust.jwks`; a value from any other sender is refused.

use super::ClientError;
use crate::identity::IdentityFiles;
use crate::proto::SealedValue;
use data_encoding::BASE64;
use zeroize::Zeroizing;

/// The control plane's xkey, as pinned in a trust set.
pub fn control_plane_xkey(trust_jwks: &str) -> Result<String, ClientError> {
    let v: serde_json::Value = serde_json::from_str(trust_jwks).map_err(|e| ClientError::Credentials(format!("trust.jwks: {e}")))?;
    v["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find_map(|k| k["tillit_xkey"].as_str().map(str::to_string)))
        .ok_or_else(|| ClientError::Credentials("trust.jwks names no control-plane xkey (renew or enroll again)".into()))
}

/// Seal `value` to the control plane with a one-off sender key.
pub fn seal_for_control_plane(trust_jwks: &str, value: &[u8]) -> Result<SealedValue, ClientError> {
    let cp = nkeys::XKey::from_public_key(&control_plane_xkey(trust_jwks)?).map_err(|e| ClientError::Credentials(e.to_string()))?;
    let sender = nkeys::XKey::new();
    let sealed = sender.seal(value, &cp).map_err(|e| ClientError::Credentials(e.to_string()))?;
    Ok(SealedValue { sealed: BASE64.encode(&sealed), sender_xkey: sender.public_key() })
}

/// What opens values the control plane seals to one identity: the pinned control-plane xkey
/// and this identity's box with it (built once, not per read).
#[derive(Debug)]
pub struct Opener {
    pinned: String,
    sealer: crate::crypto::Sealer,
}

impl Opener {
    /// An opener for the identity in `files`: needs its `trust.jwks` (the pinned control-plane xkey) and `xkey.seed`.
    pub fn new(files: &IdentityFiles) -> Result<Self, ClientError> {
        let jwks = files.trust_jwks.as_deref().ok_or_else(|| ClientError::Credentials("no trust.jwks in the identity dir".into()))?;
        let pinned = control_plane_xkey(jwks)?;
        let seed = files.xkey_seed.as_ref().ok_or_else(|| ClientError::Credentials("no xkey.seed in the identity dir".into()))?;
        let me = nkeys::XKey::from_seed(seed.expose()).map_err(|e| ClientError::Credentials(e.to_string()))?;
        let sealer = crate::crypto::Sealer::new(&me).map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(Opener { pinned, sealer })
    }

    /// Open `v`; refused unless the pinned control plane sealed it.
    pub fn open(&self, v: &SealedValue) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        if v.sender_xkey != self.pinned {
            return Err(ClientError::Protocol("secret was sealed by a key that is not the pinned control plane's".into()));
        }
        let sealed = BASE64.decode(v.sealed.as_bytes()).map_err(|_| ClientError::Protocol("sealed value is not base64".into()))?;
        self.sealer.open(&sealed, &self.pinned).map_err(|_| ClientError::Protocol("sealed value does not open with this identity's xkey".into()))
    }
}

/// Open a value the control plane sealed to this identity.
pub fn open_from_control_plane(files: &IdentityFiles, v: &SealedValue) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    Opener::new(files)?.open(v)
}

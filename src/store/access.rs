//! How a `serve` replica reaches a JetStream store: credentials kept in the data dir, sealed by
//! the master key.
//!
//! The keys that mint NATS credentials live in the store, so the first connection to the store
//! cannot be minted from it. `tillit init --store jetstream` (and every replica while it runs)
//! writes `store-access.sealed`: a TILLIT-account user allowed the JetStream API, the records'
//! bucket and the journal subject, and a client certificate without an OCSP responder (so the
//! hub lets it in while no replica answers OCSP). Whoever holds the data dir without the master
//! key cannot open it; the master key's holder is the control plane anyway.

use super::StoreError;
use crate::client::{tls, ConnectParams, NatsCreds};
use crate::crypto::{MasterKey, SecretString};
use crate::issuer::jwt::UserPermissions;
use crate::layout::DataDir;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use zeroize::Zeroize;

/// The associated data the file is sealed under.
const AAD: &str = "file/store-access";

/// Credentials for the store's NATS connection.
pub struct StoreAccess {
    pub user_jwt: String,
    pub user_seed: SecretString,
    pub cert_pem: String,
    pub key_pem: SecretString,
    /// The CA bundle the hub's certificate is checked against.
    pub ca_pem: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for StoreAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAccess").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    user_jwt: String,
    user_seed: String,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    expires_at: i64,
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.user_seed.zeroize();
        self.key_pem.zeroize();
    }
}

/// What the store's user may do: the JetStream API, its bucket's subjects, the journal
/// subject, and replies to its own inbox.
pub fn permissions(bucket: &str, journal_subject: &str, inbox_prefix: &str) -> UserPermissions {
    UserPermissions::new(
        vec!["$JS.API.>".into(), format!("$KV.{bucket}.>"), journal_subject.to_string(), "$JS.FC.>".into()],
        vec![format!("{inbox_prefix}.>")],
    )
}

impl StoreAccess {
    fn wire(&self) -> Wire {
        Wire {
            user_jwt: self.user_jwt.clone(),
            user_seed: self.user_seed.expose().to_string(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.expose().to_string(),
            ca_pem: self.ca_pem.clone(),
            expires_at: self.expires_at,
        }
    }

    fn from_wire(wire: &Wire) -> StoreAccess {
        StoreAccess {
            user_jwt: wire.user_jwt.clone(),
            user_seed: SecretString::new(wire.user_seed.clone()),
            cert_pem: wire.cert_pem.clone(),
            key_pem: SecretString::new(wire.key_pem.clone()),
            ca_pem: wire.ca_pem.clone(),
            expires_at: wire.expires_at,
        }
    }

    /// Seal and write to `dir` (0600, atomically).
    pub fn write(&self, dir: &DataDir, master: &MasterKey) -> Result<(), StoreError> {
        let wire = self.wire();
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(&wire).map_err(|e| StoreError::Backend(e.to_string()))?);
        let sealed = master.seal(AAD, &plain)?;
        let path = dir.store_access();
        crate::fsutil::write_atomic(&path, &sealed, crate::fsutil::PRIVATE)
            .map_err(|e| StoreError::Backend(format!("cannot write {}: {e}", path.display())))
    }

    /// Write unsealed to `path` (0600): the OCSP responder's access, which reads only public
    /// answers and must start without the master key.
    pub fn write_plain(&self, path: &std::path::Path) -> Result<(), StoreError> {
        let wire = self.wire();
        let plain = zeroize::Zeroizing::new(serde_json::to_vec_pretty(&wire).map_err(|e| StoreError::Backend(e.to_string()))?);
        if let Some(parent) = path.parent() {
            crate::fsutil::create_dir(parent, 0o700).map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", parent.display())))?;
        }
        crate::fsutil::write_atomic(path, &plain, crate::fsutil::PRIVATE).map_err(|e| StoreError::Backend(format!("cannot write {}: {e}", path.display())))
    }

    /// Read what [`StoreAccess::write_plain`] wrote.
    pub fn read_plain(path: &std::path::Path) -> Result<StoreAccess, StoreError> {
        let plain = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", path.display())))?);
        let wire: Wire = serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt(path.display().to_string(), e.to_string()))?;
        Ok(Self::from_wire(&wire))
    }

    /// Read and open `dir`'s store access.
    pub fn read(dir: &DataDir, master: &MasterKey) -> Result<StoreAccess, StoreError> {
        let path = dir.store_access();
        let sealed = std::fs::read(&path).map_err(|e| {
            StoreError::Backend(format!(
                "cannot read {}: {e} (a JetStream store needs the store access `tillit init --store jetstream` wrote; copy it with the config to every replica's data dir)",
                path.display()
            ))
        })?;
        let plain = master.open(AAD, &sealed)?;
        let wire: Wire = serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt(path.display().to_string(), e.to_string()))?;
        Ok(Self::from_wire(&wire))
    }

    /// How to connect with these credentials to `urls`.
    pub fn connect_params(&self, urls: Vec<String>, name: &str) -> Result<ConnectParams, String> {
        let user = nkeys::KeyPair::from_seed(self.user_seed.expose()).map_err(|e| format!("store access user key: {e}"))?;
        let ck = tls::certified_key(&self.cert_pem, self.key_pem.expose()).map_err(|e| format!("store access certificate: {e}"))?;
        Ok(ConnectParams {
            urls,
            name: name.to_string(),
            inbox_prefix: crate::subjects::inbox_prefix(&user.public_key()),
            ca_pem: self.ca_pem.clone(),
            creds: Arc::new(RwLock::new(NatsCreds { user_jwt: self.user_jwt.clone(), user_seed: self.user_seed.clone() })),
            cert: tls::SwappableCert::new(ck),
            max_reconnects: None,
        })
    }
}

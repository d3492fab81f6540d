//! The identity dir (*contract*, DESIGN.md §3.4): writing one atomically and loading it back.
//!
//! ```text
//! DIR/nats.creds       standard .creds (user JWT + seed)            0600
//! DIR/tls/cert.pem     client certificate (SPIFFE URI SAN)          0644
//! DIR/tls/key.pem      client private key                           0600
//! DIR/tls/ca.pem       CA bundle                                    0644
//! DIR/trust.jwks       envelope signing keys (JWK Set), when known  0644
//! DIR/xkey.seed        curve25519 xkey seed (sealed deliveries)      0600
//! DIR/identity.json    who, where, until when                       0644
//! ```

use crate::clock::rfc3339;
use crate::crypto::SecretString;
use crate::fsutil::{self, PRIVATE, PRIVATE_DIR, PUBLIC};
use crate::issuer::creds;
use crate::layout::IdentityDir;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of the `identity.json` format.
pub const IDENTITY_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a tillit identity: {message}")]
    Invalid { path: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.display().to_string(), source }
}

/// What kind of party an identity belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    Admin,
    Service,
    Agent,
    ControlPlane,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Admin => "admin",
            IdentityKind::Service => "service",
            IdentityKind::Agent => "agent",
            IdentityKind::ControlPlane => "control_plane",
        }
    }
}

/// `identity.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdentityInfo {
    pub format: u32,
    pub kind: IdentityKind,
    /// SPIFFE id, e.g. `spiffe://example.org/acme/shop/prod/orders`.
    pub id: String,
    pub name: String,
    pub trust_domain: String,
    /// Account name (`TILLIT`, `acme-prod`) and public key.
    pub account: String,
    pub account_public_key: String,
    pub user_public_key: String,
    /// Request-reply inbox prefix this identity may subscribe to.
    pub inbox_prefix: String,
    pub nats_urls: Vec<String>,
    /// `sha256:<hex>` of the CA certificate this identity pins.
    pub ca_fingerprint: String,
    pub cert_serial: String,
    pub issued_at: String,
    pub expires_at: String,
    pub renew_at: String,
    pub issued_at_unix: i64,
    pub expires_at_unix: i64,
    pub renew_at_unix: i64,
    /// For services: `tenant/project/env/service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::names::ServiceId>,
    /// Public xkey (curve25519); its seed is in `xkey.seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xkey_public_key: Option<String>,
}

impl IdentityInfo {

    /// Fill the human-readable times from the Unix ones.
    pub fn with_times(mut self, issued: i64, expires: i64, renew: i64) -> Self {
        self.issued_at_unix = issued;
        self.expires_at_unix = expires;
        self.renew_at_unix = renew;
        self.issued_at = rfc3339(issued);
        self.expires_at = rfc3339(expires);
        self.renew_at = rfc3339(renew);
        self
    }
}

/// Everything an identity dir holds.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub info: IdentityInfo,
    pub user_jwt: String,
    pub user_seed: SecretString,
    pub cert_pem: String,
    pub key_pem: SecretString,
    pub ca_pem: String,
    pub trust_jwks: Option<String>,
    /// The xkey seed (`SX…`), when the identity has one.
    pub xkey_seed: Option<SecretString>,
}

/// Write an identity dir: directories 0700, key files 0600, each file atomically. The identity
/// document is written last, so a dir with an `identity.json` is complete.
pub fn write(dir: &IdentityDir, files: &IdentityFiles) -> Result<(), IdentityError> {
    fsutil::create_dir(dir.root(), PRIVATE_DIR).map_err(io_err(dir.root()))?;
    fsutil::create_dir(&dir.tls(), PRIVATE_DIR).map_err(io_err(&dir.tls()))?;
    let creds = creds::format(&files.user_jwt, &files.user_seed);
    let w = |p: std::path::PathBuf, data: &[u8], mode: u32| fsutil::write_atomic(&p, data, mode).map_err(io_err(&p));
    w(dir.creds(), creds.expose().as_bytes(), PRIVATE)?;
    w(dir.key(), files.key_pem.expose().as_bytes(), PRIVATE)?;
    w(dir.cert(), files.cert_pem.as_bytes(), PUBLIC)?;
    w(dir.ca(), files.ca_pem.as_bytes(), PUBLIC)?;
    if let Some(x) = &files.xkey_seed {
        w(dir.xkey(), x.expose().as_bytes(), PRIVATE)?;
    }
    if let Some(jwks) = &files.trust_jwks {
        w(dir.trust_jwks(), jwks.as_bytes(), PUBLIC)?;
    }
    let json = serde_json::to_vec_pretty(&files.info).map_err(|e| IdentityError::Invalid {
        path: dir.identity_json().display().to_string(),
        message: e.to_string(),
    })?;
    w(dir.identity_json(), &json, PUBLIC)
}

/// Read `identity.json` alone.
pub fn read_info(dir: &IdentityDir) -> Result<IdentityInfo, IdentityError> {
    let p = dir.identity_json();
    let text = std::fs::read(&p).map_err(io_err(&p))?;
    let info: IdentityInfo = serde_json::from_slice(&text)
        .map_err(|e| IdentityError::Invalid { path: p.display().to_string(), message: e.to_string() })?;
    if info.format != IDENTITY_FORMAT {
        return Err(IdentityError::Invalid {
            path: p.display().to_string(),
            message: format!("identity format {} is not supported (want {IDENTITY_FORMAT})", info.format),
        });
    }
    Ok(info)
}

/// Load a whole identity dir.
pub fn load(dir: &IdentityDir) -> Result<IdentityFiles, IdentityError> {
    if !dir.root().is_dir() {
        return Err(IdentityError::Invalid {
            path: dir.root().display().to_string(),
            message: "no such directory (use the dir `tillit init` or `tillit enroll` wrote, e.g. DATA/admin)".into(),
        });
    }
    let info = read_info(dir)?;
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).map_err(io_err(&p));
    let creds_text = SecretString::new(read(dir.creds())?);
    let (user_jwt, user_seed) = creds::parse(creds_text.expose()).map_err(|e| IdentityError::Invalid {
        path: dir.creds().display().to_string(),
        message: e.to_string(),
    })?;
    let key_pem = SecretString::new(read(dir.key())?);
    let trust_jwks = std::fs::read_to_string(dir.trust_jwks()).ok();
    let xkey_seed = std::fs::read_to_string(dir.xkey()).ok().map(|s| SecretString::new(s.trim().to_string()));
    Ok(IdentityFiles {
        info,
        user_jwt,
        user_seed,
        cert_pem: read(dir.cert())?,
        key_pem,
        ca_pem: read(dir.ca())?,
        trust_jwks,
        xkey_seed,
    })
}

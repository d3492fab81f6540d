//! Shared pieces of the fuzz targets: fixed keys, a fixed CA, a JWS/JWT signer for
//! "re-signed" inputs, an in-memory store, and a scratch dir on tmpfs.
//!
//! Signatures cannot be forged by a fuzzer, so the targets that verify one (signed requests,
//! envelopes, JWTs) take two kinds of input:
//! - anything else: the raw token, parsed exactly as it comes off the wire;
//! - an input starting with `{`: JSON that the harness signs with a fixed key first, so the
//!   code *behind* the signature check (claims parsing and checks) is fuzzed too. `HEADER\nBODY`
//!   signs HEADER as the protected header; a single line gets the default header.

use data_encoding::BASE64URL_NOPAD;
use nkeys::{KeyPair, KeyPairType};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use tillit::issuer::x509::CertAuthority;
use tillit::store::{Batch, Space, Store, StoreError};

pub mod seeds;

/// The fixed "now" of every target.
pub const NOW: i64 = 1_780_000_000;
/// Trust domain of every target.
pub const TD: &str = "example.org";
/// Fixed CA (P-256, PKCS#8) so that seed OCSP requests name a known issuer.
pub const CA_PEM: &str = include_str!("../fixtures/ca.pem");
pub const CA_KEY_PEM: &str = include_str!("../fixtures/ca.key");

fn fixed(kind: KeyPairType, b: u8) -> KeyPair {
    KeyPair::new_from_raw(kind.clone(), [b; 32]).unwrap_or_else(|_| KeyPair::new(kind))
}

/// The user nkey that signs requests (and the seed's creds/identity files).
pub fn user_key() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(|| fixed(KeyPairType::User, 1))
}
/// The account nkey: signs user JWTs and envelopes.
pub fn account_key() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(|| fixed(KeyPairType::Account, 2))
}
/// The operator nkey: signs account JWTs.
pub fn operator_key() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(|| fixed(KeyPairType::Operator, 3))
}

/// Issuer (`source`) of envelopes.
pub fn envelope_issuer() -> String {
    tillit::envelope::issuer(TD)
}
/// `kid` of the envelope key.
pub fn envelope_kid() -> String {
    format!("{}#{}", envelope_issuer(), &account_key().public_key()[..8])
}
/// `trust.jwks` holding the envelope key.
pub fn trust_jwks() -> String {
    let k = tillit::envelope::jwk(&envelope_kid(), &envelope_issuer(), &account_key().public_key(), "current");
    serde_json::json!({ "keys": [k] }).to_string()
}
/// The trust set of [`trust_jwks`].
pub fn trust_set() -> &'static tillit::envelope::TrustSet {
    static T: OnceLock<tillit::envelope::TrustSet> = OnceLock::new();
    T.get_or_init(|| tillit::envelope::TrustSet::from_jwks(&trust_jwks()).unwrap_or_default())
}

/// The fixed CA, loaded once.
pub fn ca() -> &'static CertAuthority {
    static CA: OnceLock<CertAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertAuthority::load(CA_PEM, &tillit::crypto::SecretString::new(CA_KEY_PEM.to_string())).expect("fixture CA loads")
    })
}

/// Compact serialization `b64(header).b64(body).b64(sig)`, signed by `key`.
pub fn sign_compact(header: &[u8], body: &[u8], key: &KeyPair) -> String {
    let mut out = format!("{}.{}", BASE64URL_NOPAD.encode(header), BASE64URL_NOPAD.encode(body));
    let sig = key.sign(out.as_bytes()).unwrap_or_default();
    out.push('.');
    out.push_str(&BASE64URL_NOPAD.encode(&sig));
    out
}

/// Split a re-sign input into (header, body): `HEADER\nBODY`, or the default header.
pub fn split_header<'a>(data: &'a [u8], default_header: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (default_header, data),
    }
}

/// NATS JWT header.
pub const JWT_HEADER: &[u8] = br#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// The fixed key whose public key `claims` names as `iss` (the user key if none does).
pub fn signer_for(claims: &[u8]) -> &'static KeyPair {
    let v: serde_json::Value = serde_json::from_slice(claims).unwrap_or_default();
    let iss = v["iss"].as_str().unwrap_or_default();
    for k in [user_key(), account_key(), operator_key()] {
        if k.public_key() == iss {
            return k;
        }
    }
    user_key()
}

/// Claims of a compact token, without checking anything (to route an input to a parser).
pub fn peek_claims(token: &str) -> Option<serde_json::Value> {
    let mid = token.trim().split('.').nth(1)?;
    serde_json::from_slice(&BASE64URL_NOPAD.decode(mid.as_bytes()).ok()?).ok()
}

// === an in-memory store ===

/// A `Store` in a map: for the audit log's crash recovery.
#[derive(Default)]
pub struct MemStore(Mutex<std::collections::BTreeMap<(String, String), Vec<u8>>>);

impl Store for MemStore {
    fn get(&self, space: Space, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let m = self.0.lock().map_err(|_| StoreError::Backend("poisoned".into()))?;
        Ok(m.get(&(space.as_str().to_string(), key.to_string())).cloned())
    }
    fn scan(&self, space: Space) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.scan_prefix(space, "")
    }
    fn count(&self, space: Space) -> Result<usize, StoreError> {
        Ok(self.scan(space)?.len())
    }
    fn scan_prefix(&self, space: Space, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let m = self.0.lock().map_err(|_| StoreError::Backend("poisoned".into()))?;
        Ok(m.iter()
            .filter(|((s, k), _)| s == space.as_str() && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut m = self.0.lock().map_err(|_| StoreError::Backend("poisoned".into()))?;
        for op in batch.ops {
            let k = (op.space.as_str().to_string(), op.key);
            match op.value {
                Some(v) => {
                    m.insert(k, v);
                }
                None => {
                    m.remove(&k);
                }
            }
        }
        Ok(())
    }
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn compare_and_swap(&self, space: Space, key: &str, old: Option<&[u8]>, new: Option<Vec<u8>>) -> Result<bool, StoreError> {
        let mut m = self.0.lock().map_err(|_| StoreError::Backend("poisoned".into()))?;
        let k = (space.as_str().to_string(), key.to_string());
        if m.get(&k).map(|v| v.as_slice()) != old {
            return Ok(false);
        }
        match new {
            Some(v) => {
                m.insert(k, v);
            }
            None => {
                m.remove(&k);
            }
        }
        Ok(true)
    }
}

/// The audit MAC key, derived from a fixed master key.
pub fn audit_key() -> &'static tillit::crypto::MacKey {
    static K: OnceLock<tillit::crypto::MacKey> = OnceLock::new();
    K.get_or_init(|| {
        tillit::crypto::MasterKey::from_hex(&"5a".repeat(32), "fuzz")
            .expect("fixed master key")
            .derive(tillit::audit::AUDIT_KEY_LABEL)
    })
}

/// A fixed clock for the audit writer.
pub fn clock() -> tillit::clock::SharedClock {
    std::sync::Arc::new(tillit::clock::ManualClock::new(NOW))
}

/// A per-process scratch dir, on tmpfs when there is one.
pub fn scratch(name: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("tillit-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Write `data` to `path`, or remove `path` when `data` is `None`.
pub fn put_file(path: &Path, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            if let Some(p) = path.parent() {
                let _ = std::fs::create_dir_all(p);
            }
            let _ = std::fs::write(path, d);
        }
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The files of an identity dir, in the order a fuzz input lists them (NUL-separated).
pub const IDENTITY_FILES: [&str; 7] =
    ["identity.json", "nats.creds", "tls/cert.pem", "tls/key.pem", "tls/ca.pem", "trust.jwks", "xkey.seed"];

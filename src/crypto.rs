//! Key material at rest and the small primitives around it.
//!
//! - [`MasterKey`]: the 32-byte key that seals every private key and secret value in the store
//!   (XChaCha20-Poly1305, record key as associated data, so a sealed value cannot be moved to
//!   another record). It lives outside the store: `DATA/master.key` (0600) or `TILLIT_MASTER_KEY`.
//! - [`SecretString`]: seeds and PEM private keys in memory; redacted `Debug`, zeroized on drop.
//! - random bytes, SHA-256, constant-time comparison.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Environment variable that carries the master key (64 hex characters) instead of the file.
pub const MASTER_KEY_ENV: &str = "TILLIT_MASTER_KEY";

const NONCE_LEN: usize = 24;
const SEAL_VERSION: u8 = 1;

/// Everything that can go wrong with key material at rest.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key not found: {path} does not exist and {MASTER_KEY_ENV} is not set; restore the file from your backup or set {MASTER_KEY_ENV}")]
    MasterKeyMissing { path: PathBuf },
    #[error("master key in {source_name} is malformed: expected 64 hex characters (32 bytes)")]
    MasterKeyMalformed { source_name: String },
    #[error("master key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    MasterKeyPermissions { path: PathBuf, mode: u32 },
    #[error("cannot read master key {path}: {source}")]
    MasterKeyIo { path: PathBuf, source: std::io::Error },
    #[error("sealed value for {aad} could not be opened: wrong master key, or the record was altered")]
    Open { aad: String },
    #[error("sealed value for {aad} is malformed")]
    Malformed { aad: String },
    #[error("xkey box: {0}")]
    Sealed(String),
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

// === impl MacKey ===

/// A 32-byte HMAC-SHA256 key (derived with [`MasterKey::derive`]). Zeroized on drop.
#[derive(Clone)]
pub struct MacKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    /// HMAC-SHA256 of `msg`, lower-case hex.
    pub fn mac_hex(&self, msg: &[u8]) -> String {
        data_encoding::HEXLOWER.encode(&hmac_sha256(self.0.as_ref(), msg))
    }

    /// Whether `mac_hex` is the MAC of `msg` (constant time).
    pub fn verify_hex(&self, msg: &[u8], mac_hex: &str) -> bool {
        ct_eq(self.mac_hex(msg).as_bytes(), mac_hex.as_bytes())
    }
}

/// HMAC-SHA256 (RFC 2104) with a key of at most one block (64 bytes); longer keys are hashed
/// first, as the RFC says.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = Zeroizing::new([0u8; 64]);
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut ipad = Zeroizing::new([0x36u8; 64]);
    let mut opad = Zeroizing::new([0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= block[i];
        opad[i] ^= block[i];
    }
    let inner = Sha256::new().chain_update(ipad.as_ref()).chain_update(msg).finalize();
    Sha256::new().chain_update(opad.as_ref()).chain_update(inner).finalize().into()
}

// === impl MasterKey ===

/// The 32-byte store master key. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        fill_random(k.as_mut())?;
        Ok(MasterKey(k))
    }

    /// Parse the hex form (surrounding whitespace ignored).
    pub fn from_hex(s: &str, source_name: &str) -> Result<Self, CryptoError> {
        let malformed = || CryptoError::MasterKeyMalformed { source_name: source_name.to_string() };
        let s = s.trim();
        if s.len() != 64 {
            return Err(malformed());
        }
        let bytes = Zeroizing::new(data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).map_err(|_| malformed())?);
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&bytes);
        Ok(MasterKey(k))
    }

    /// The hex form, for writing `master.key`.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(data_encoding::HEXLOWER.encode(self.0.as_ref()))
    }

    /// Load the key for a data dir: `TILLIT_MASTER_KEY` wins, else `DATA/master.key`, which must
    /// not be readable by group or others.
    pub fn load(data_dir: &Path) -> Result<Self, CryptoError> {
        if let Ok(v) = std::env::var(MASTER_KEY_ENV) {
            let v = Zeroizing::new(v);
            return Self::from_hex(&v, MASTER_KEY_ENV);
        }
        Self::load_file(&crate::layout::DataDir::new(data_dir).master_key())
    }

    /// Load the key from a `master.key` file (64 hex characters), which must not be readable by
    /// group or others.
    pub fn load_file(path: &Path) -> Result<Self, CryptoError> {
        let path = path.to_path_buf();
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CryptoError::MasterKeyMissing { path })
            }
            Err(source) => return Err(CryptoError::MasterKeyIo { path, source }),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CryptoError::MasterKeyPermissions { path, mode });
            }
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(&path).map_err(|source| CryptoError::MasterKeyIo { path: path.clone(), source })?,
        );
        Self::from_hex(&text, &path.display().to_string())
    }

    /// A key for one purpose, derived from the master key (HMAC-SHA256 keyed by the master key
    /// over `label`): whoever holds the data dir without the master key cannot compute it.
    pub fn derive(&self, label: &str) -> MacKey {
        MacKey(Zeroizing::new(hmac_sha256(self.0.as_ref(), label.as_bytes())))
    }

    /// Seal `plaintext`, bound to `aad` (the record's key). Output: version || nonce || ciphertext.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = XChaCha20Poly1305::new(self.0.as_ref().into());
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Malformed { aad: aad.to_string() })?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Open a value sealed by [`seal`](Self::seal) under the same `aad`.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEAL_VERSION {
            return Err(CryptoError::Malformed { aad: aad.to_string() });
        }
        let cipher = XChaCha20Poly1305::new(self.0.as_ref().into());
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        cipher
            .decrypt(nonce, Payload { msg: &sealed[1 + NONCE_LEN..], aad: aad.as_bytes() })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open { aad: aad.to_string() })
    }
}

// === impl SecretString ===

/// A secret in text form (an nkey seed, a PEM private key). Redacted in `Debug`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        SecretString(Zeroizing::new(s))
    }
    /// The secret itself; keep the borrow short.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        SecretString::new(s)
    }
}

// === primitives ===

/// Fill `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::getrandom(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; n];
    fill_random(&mut v)?;
    Ok(v)
}

/// SHA-256 digest.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Lower-case hex SHA-256, as used for fingerprints and token hashes.
pub fn sha256_hex(data: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&sha256(data))
}

/// Constant-time equality for secrets and their hashes.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {

    /// RFC 4231 test cases 1, 2 and 6 (a key longer than a block).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let hex = |b: [u8; 32]| data_encoding::HEXLOWER.encode(&b);
        assert_eq!(hex(hmac_sha256(&[0x0b; 20], b"Hi There")), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        assert_eq!(hex(hmac_sha256(b"Jefe", b"what do ya want for nothing?")), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_eq!(
            hex(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        let m = MasterKey::generate().unwrap();
        let (a, b) = (m.derive("a"), m.derive("b"));
        assert_ne!(a.mac_hex(b"x"), b.mac_hex(b"x"));
        assert!(a.verify_hex(b"x", &a.mac_hex(b"x")));
        assert!(!a.verify_hex(b"y", &a.mac_hex(b"x")));
        assert_eq!(format!("{a:?}"), "MacKey(<redacted>)");
    }

    use super::*;

    #[test]
    fn seal_round_trips_and_binds_aad() {
        let k = MasterKey::generate().unwrap();
        let sealed = k.seal("keys/operator", b"SOABC").unwrap();
        assert_eq!(&k.open("keys/operator", &sealed).unwrap()[..], b"SOABC");
        // Moved to another record: refused.
        assert!(matches!(k.open("keys/account/SYS", &sealed), Err(CryptoError::Open { .. })));
        // Another key: refused.
        let other = MasterKey::generate().unwrap();
        assert!(matches!(other.open("keys/operator", &sealed), Err(CryptoError::Open { .. })));
        // A flipped bit: refused.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.open("keys/operator", &bad).is_err());
        // Truncated / wrong version: malformed.
        assert!(matches!(k.open("x", &sealed[..10]), Err(CryptoError::Malformed { .. })));
        let mut v2 = sealed;
        v2[0] = 9;
        assert!(matches!(k.open("keys/operator", &v2), Err(CryptoError::Malformed { .. })));
    }

    #[test]
    fn seal_never_repeats_a_nonce() {
        let k = MasterKey::generate().unwrap();
        let a = k.seal("a", b"same").unwrap();
        let b = k.seal("a", b"same").unwrap();
        assert_ne!(a, b);
        assert!(!a.windows(4).any(|w| w == b"same"));
    }

    #[test]
    fn master_key_hex_parsing() {
        let k = MasterKey::generate().unwrap();
        let hex = k.to_hex();
        let k2 = MasterKey::from_hex(&format!("{}\n", hex.as_str()), "test").unwrap();
        let sealed = k.seal("r", b"v").unwrap();
        assert_eq!(&k2.open("r", &sealed).unwrap()[..], b"v");
        for bad in ["", "abc", &"z".repeat(64), &"a".repeat(63), &"a".repeat(66)] {
            assert!(matches!(MasterKey::from_hex(bad, "t"), Err(CryptoError::MasterKeyMalformed { .. })), "{bad}");
        }
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }

    #[test]
    fn master_key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(MasterKey::load(dir.path()), Err(CryptoError::MasterKeyMissing { .. })));
        let p = crate::layout::DataDir::new(dir.path()).master_key();
        let k = MasterKey::generate().unwrap();
        std::fs::write(&p, k.to_hex().as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(MasterKey::load(dir.path()), Err(CryptoError::MasterKeyPermissions { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        MasterKey::load(dir.path()).unwrap();
    }

    #[test]
    fn secrets_are_redacted_and_compare_in_constant_time() {
        let s = SecretString::new("SUAXYZ".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

// === impl Sealer ===

/// Seals to and opens from xkeys (curve25519 + XSalsa20-Poly1305, the nkeys `xkv1` format any
/// NATS xkey library opens), keeping the Diffie-Hellman result per peer: a box per reader costs
/// one curve25519 operation instead of one per message.
pub struct Sealer {
    secret: crypto_box::SecretKey,
    public: String,
    boxes: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<crypto_box::SalsaBox>>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("public", &self.public).finish_non_exhaustive()
    }
}

/// Most peers whose boxes are kept.
const MAX_BOXES: usize = 16_384;
const XKV1: &[u8] = b"xkv1";

fn xkey_raw(encoded: &str, at: usize) -> Result<[u8; 32], CryptoError> {
    let raw = data_encoding::BASE32_NOPAD.decode(encoded.as_bytes()).map_err(|_| CryptoError::Sealed("xkey encoding".into()))?;
    raw.get(at..at + 32).and_then(|r| r.try_into().ok()).ok_or_else(|| CryptoError::Sealed("xkey length".into()))
}

impl Sealer {
    /// From an xkey with its secret half.
    pub fn new(x: &nkeys::XKey) -> Result<Self, CryptoError> {
        let seed = Zeroizing::new(x.seed().map_err(|e| CryptoError::Sealed(e.to_string()))?);
        let raw = Zeroizing::new(xkey_raw(&seed, 2)?);
        Ok(Sealer { secret: crypto_box::SecretKey::from(*raw), public: x.public_key(), boxes: Default::default() })
    }

    /// This side's public xkey.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    fn boxed(&self, peer: &str) -> Result<std::sync::Arc<crypto_box::SalsaBox>, CryptoError> {
        if let Some(b) = self.boxes.lock().ok().and_then(|m| m.get(peer).cloned()) {
            return Ok(b);
        }
        nkeys::XKey::from_public_key(peer).map_err(|_| CryptoError::Sealed("peer is not an xkey".into()))?;
        let pk = crypto_box::PublicKey::from(xkey_raw(peer, 1)?);
        let b = std::sync::Arc::new(crypto_box::SalsaBox::new(&pk, &self.secret));
        if let Ok(mut m) = self.boxes.lock() {
            if m.len() >= MAX_BOXES {
                m.clear();
            }
            m.insert(peer.to_string(), b.clone());
        }
        Ok(b)
    }

    /// Seal `input` to `recipient` (an `X…` public xkey).
    pub fn seal(&self, input: &[u8], recipient: &str) -> Result<Vec<u8>, CryptoError> {
        use crypto_box::aead::Aead;
        let b = self.boxed(recipient)?;
        let mut nonce = [0u8; 24];
        fill_random(&mut nonce)?;
        let ct = b.encrypt(&nonce.into(), input).map_err(|_| CryptoError::Sealed("seal".into()))?;
        let mut out = Vec::with_capacity(XKV1.len() + 24 + ct.len());
        out.extend_from_slice(XKV1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Open what `sender` (an `X…` public xkey) sealed to this side.
    pub fn open(&self, input: &[u8], sender: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        use crypto_box::aead::Aead;
        let rest = input.strip_prefix(XKV1).ok_or_else(|| CryptoError::Sealed("not an xkv1 box".into()))?;
        if rest.len() <= 24 {
            return Err(CryptoError::Sealed("sealed value is too short".into()));
        }
        let (nonce, ct) = rest.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| CryptoError::Sealed("nonce".into()))?;
        let b = self.boxed(sender)?;
        b.decrypt(&nonce.into(), ct).map(Zeroizing::new).map_err(|_| CryptoError::Sealed("cannot open: wrong key or tampered".into()))
    }
}

#[cfg(test)]
mod sealer_tests {
    use super::*;

    #[test]
    fn boxes_are_compatible_with_nkeys_xkeys_both_ways() {
        let a = nkeys::XKey::new();
        let b = nkeys::XKey::new();
        let sa = Sealer::new(&a).unwrap();
        let sealed = sa.seal(b"hello", &b.public_key()).unwrap();
        assert_eq!(b.open(&sealed, &nkeys::XKey::from_public_key(&a.public_key()).unwrap()).unwrap(), b"hello");
        let back = b.seal(b"world", &nkeys::XKey::from_public_key(&a.public_key()).unwrap()).unwrap();
        assert_eq!(&sa.open(&back, &b.public_key()).unwrap()[..], b"world");
        // Cached box, second message, distinct nonces.
        let again = sa.seal(b"hello", &b.public_key()).unwrap();
        assert_ne!(sealed, again);
        // Tampered, wrong sender, garbage.
        let mut bad = back.clone();
        let n = bad.len() - 1;
        bad[n] ^= 1;
        assert!(sa.open(&bad, &b.public_key()).is_err());
        assert!(sa.open(&back, &nkeys::XKey::new().public_key()).is_err());
        assert!(sa.open(b"xkv1short", &b.public_key()).is_err());
        assert!(sa.seal(b"x", "not-a-key").is_err());
    }
}

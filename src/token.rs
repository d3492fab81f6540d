//! Join tokens: `tillit1.<base64url(JSON)>`, a single-use bootstrap bundle bound to one service
//! identity.
//!
//! A token carries what a new service needs to make its first, restricted connection: a
//! bootstrap user (JWT + seed) that may only request enrollment, a short-lived bootstrap client
//! certificate and key, the NATS URLs, the CA bundle and its fingerprint to pin, and a 32-byte
//! secret. The control plane stores only the secret's SHA-256 and the token's metadata; a second
//! use, an expired token, or a token presented for another identity is refused. The token is a
//! secret: shown once, never logged.

use crate::crypto::{self, SecretString};
use crate::names::ServiceId;
use data_encoding::{BASE64URL_NOPAD, BASE64_NOPAD};
use serde::{Deserialize, Serialize};

/// Every token starts with this (the format version lives in it).
pub const TOKEN_PREFIX: &str = "tillit1.";
/// Largest token accepted (a bundle is about 3 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a tillit join token (it must start with {TOKEN_PREFIX})")]
    Prefix,
    #[error("join token is damaged (not valid base64url JSON); copy it again in full")]
    Encoding,
    #[error("join token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("join token is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// The decoded bundle.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinToken {
    pub id: String,
    /// base64url of 32 random bytes.
    pub secret: String,
    pub trust_domain: String,
    pub identity: ServiceId,
    pub expires_at: i64,
    pub nats_urls: Vec<String>,
    /// `sha256:<hex>` of the first CA certificate's DER.
    pub ca_fingerprint: String,
    /// CA bundle, base64 DER each.
    pub ca: Vec<String>,
    pub bootstrap_jwt: String,
    pub bootstrap_seed: String,
    /// Bootstrap client certificate (base64 DER) and its PKCS#8 key (base64 DER).
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("identity", &self.identity)
            .field("expires_at", &self.expires_at)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn der_of(b64: &str) -> Result<Vec<u8>, TokenError> {
    BASE64_NOPAD.decode(b64.trim_end_matches('=').as_bytes()).map_err(|_| TokenError::Encoding)
}

impl JoinToken {
    /// The printable token.
    pub fn encode(&self) -> SecretString {
        let json = serde_json::to_vec(self).unwrap_or_default();
        SecretString::new(format!("{TOKEN_PREFIX}{}", BASE64URL_NOPAD.encode(&json)))
    }

    /// Parse a printed token and check it is internally consistent.
    pub fn decode(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let body = s.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Prefix)?;
        let json = zeroize::Zeroizing::new(BASE64URL_NOPAD.decode(body.as_bytes()).map_err(|_| TokenError::Encoding)?);
        let t: JoinToken = serde_json::from_slice(&json).map_err(|_| TokenError::Encoding)?;
        let first = t.ca.first().ok_or(TokenError::Inconsistent("no CA certificate"))?;
        if format!("sha256:{}", crypto::sha256_hex(&der_of(first)?)) != t.ca_fingerprint {
            return Err(TokenError::Inconsistent("CA certificate does not match the pinned fingerprint"));
        }
        if t.nats_urls.is_empty() {
            return Err(TokenError::Inconsistent("no NATS URL"));
        }
        if BASE64URL_NOPAD.decode(t.secret.as_bytes()).map(|b| b.len()) != Ok(32) {
            return Err(TokenError::Inconsistent("secret is not 32 bytes"));
        }
        Ok(t)
    }

    /// The CA bundle as PEM.
    pub fn ca_pem(&self) -> Result<String, TokenError> {
        let mut out = String::new();
        for c in &self.ca {
            out.push_str(&pem("CERTIFICATE", &der_of(c)?));
        }
        Ok(out)
    }
    /// The bootstrap certificate as PEM.
    pub fn cert_pem(&self) -> Result<String, TokenError> {
        Ok(pem("CERTIFICATE", &der_of(&self.cert)?))
    }
    /// The bootstrap key as PEM.
    pub fn key_pem(&self) -> Result<SecretString, TokenError> {
        let der = zeroize::Zeroizing::new(der_of(&self.key)?);
        Ok(SecretString::new(pem("PRIVATE KEY", &der)))
    }
    /// The secret's SHA-256, as stored by the control plane.
    pub fn secret_hash(secret: &str) -> String {
        crypto::sha256_hex(secret.as_bytes())
    }
}

/// Encode DER as the token's base64.
pub fn b64(der: &[u8]) -> String {
    BASE64_NOPAD.encode(der)
}

/// DER of the first PEM block of `pem_text`, whatever its label.
pub fn pem_to_der(pem_text: &str) -> Option<Vec<u8>> {
    let first_end = pem_text.find("-----END")?;
    let body: String = pem_text[..first_end].lines().filter(|l| !l.starts_with("-----")).collect();
    data_encoding::BASE64.decode(body.trim().as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinToken {
        let ca = b"not really DER but bytes".to_vec();
        JoinToken {
            id: "T1".into(),
            secret: BASE64URL_NOPAD.encode(&[7u8; 32]),
            trust_domain: "example.org".into(),
            identity: ServiceId::parse("acme/shop/prod/orders").unwrap(),
            expires_at: 100,
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            ca_fingerprint: format!("sha256:{}", crypto::sha256_hex(&ca)),
            ca: vec![b64(&ca)],
            bootstrap_jwt: "a.b.c".into(),
            bootstrap_seed: "SUAX".into(),
            cert: b64(b"cert"),
            key: b64(b"key"),
        }
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let t = sample();
        let s = t.encode();
        assert!(s.expose().starts_with("tillit1."));
        assert_eq!(JoinToken::decode(s.expose()).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(JoinToken::decode("tillit2.abc").unwrap_err(), TokenError::Prefix);
        assert_eq!(JoinToken::decode("tillit1.!!!").unwrap_err(), TokenError::Encoding);
        // A flipped character in the middle breaks the JSON or the fingerprint.
        let mut chars: Vec<char> = s.expose().chars().collect();
        let mid = chars.len() / 2;
        chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        assert!(JoinToken::decode(&flipped).map(|d| d != t).unwrap_or(true));
        // A swapped CA no longer matches its pin.
        let mut bad = sample();
        bad.ca = vec![b64(b"another CA")];
        assert!(matches!(JoinToken::decode(bad.encode().expose()), Err(TokenError::Inconsistent(_))));
        assert_eq!(JoinToken::decode(&"tillit1.".repeat(3000)).unwrap_err(), TokenError::TooLarge);
    }
}

//! PEM in, rustls types out: the one place certificate chains and private keys are parsed from
//! PEM (the client's TLS, the estate's CA bundle, the agent's site files all use it).

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// A PEM input that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The certificate (chain) is unusable.
    #[error("certificate: {0}")]
    Cert(String),
    /// The private key is unusable, or does not belong to the certificate.
    #[error("private key: {0}")]
    Key(String),
}

/// Parse every certificate of a PEM bundle (at least one).
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut rd = pem.as_bytes();
    let certs = rustls_pemfile::certs(&mut rd).collect::<Result<Vec<_>, _>>().map_err(|e| PemError::Cert(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::Cert("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// A rustls certified key from a PEM certificate chain and private key.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, PemError> {
    let chain = certs(cert_pem)?;
    let mut rd = key_pem.as_bytes();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut rd)
        .map_err(|e| PemError::Key(e.to_string()))?
        .ok_or_else(|| PemError::Key("no PRIVATE KEY block found".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| PemError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// Whether a certificate and a private key belong together.
pub fn key_matches(cert_pem: &str, key_pem: &str) -> Result<(), PemError> {
    certified_key(cert_pem, key_pem)?.keys_match().map_err(|e| PemError::Key(format!("does not match the certificate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_pem() {
        assert!(matches!(certs(""), Err(PemError::Cert(_))));
        assert!(matches!(certs("-----BEGIN NOTHING-----\n-----END NOTHING-----\n"), Err(PemError::Cert(_))));
        let now = 1_780_000_000;
        let issued = crate::issuer::x509::CertAuthority::generate("t.example", now, now + 86_400).unwrap();
        let other = crate::issuer::x509::CertAuthority::generate("t.example", now, now + 86_400).unwrap();
        assert_eq!(certs(&issued.cert_pem).unwrap().len(), 1);
        assert!(key_matches(&issued.cert_pem, issued.key_pem.expose()).is_ok());
        assert!(matches!(key_matches(&issued.cert_pem, other.key_pem.expose()), Err(PemError::Key(_))));
        assert!(matches!(certified_key(&issued.cert_pem, "junk"), Err(PemError::Key(_))));
    }
}

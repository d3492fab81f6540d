//! TLS for NATS connections: trust only the tillit CA bundle, present the identity's client
//! certificate, and let the certificate be swapped in place when it is renewed (the next
//! handshake, i.e. the next reconnect, uses the new one). Built once per client and shared
//! (building a rustls config per connection is slow; nats.rs #1622).

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CA bundle: {0}")]
    Ca(String),
    #[error("client certificate: {0}")]
    Cert(String),
    #[error("client key: {0}")]
    Key(String),
    #[error("TLS setup: {0}")]
    Config(String),
}

/// The process-wide crypto provider: ring, chosen explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parse every certificate of a PEM bundle.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut rd = pem.as_bytes();
    let certs = rustls_pemfile::certs(&mut rd).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// Build a rustls certified key from PEM certificate chain and private key.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs_from_pem(cert_pem).map_err(TlsError::Cert)?;
    let mut rd = key_pem.as_bytes();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut rd)
        .map_err(|e| TlsError::Key(e.to_string()))?
        .ok_or_else(|| TlsError::Key("no PRIVATE KEY block found".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// A client certificate that can be replaced while connections use it.
#[derive(Debug)]
pub struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl SwappableCert {
    pub fn new(ck: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(SwappableCert(RwLock::new(ck)))
    }
    /// Replace the certificate used by future handshakes.
    pub fn swap(&self, ck: Arc<CertifiedKey>) {
        match self.0.write() {
            Ok(mut g) => *g = ck,
            Err(p) => *p.into_inner() = ck,
        }
    }
    fn current(&self) -> Arc<CertifiedKey> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl ResolvesClientCert for SwappableCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config that trusts exactly the CA bundle `ca_pem` and presents `cert`.
pub fn client_config(ca_pem: &str, cert: Arc<SwappableCert>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem).map_err(TlsError::Ca)? {
        roots.add(c).map_err(|e| TlsError::Ca(e.to_string()))?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(cert);
    Ok(cfg)
}

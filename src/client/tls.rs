//! TLS for NATS connections: trust only the tillit CA bundle, present the identity's client
//! certificate, and let the certificate be swapped in place when it is renewed (the next
//! handshake, i.e. the next reconnect, uses the new one). Built once per client and shared
//! (building a rustls config per connection is slow; nats.rs #1622).

use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, RwLock};

/// Why TLS material could not be loaded or a client configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA bundle is unusable: no certificate in it, or one rustls will not take as a root.
    #[error("CA bundle: {0}")]
    Ca(String),
    /// The client certificate or key PEM does not parse, or the key does not belong to the certificate.
    #[error("client {0}")]
    Pem(#[from] crate::pem::PemError),
    /// rustls refused the configuration (its protocol versions).
    #[error("TLS setup: {0}")]
    Config(String),
}

/// The process-wide crypto provider: ring, chosen explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parse every certificate of a PEM bundle ([`crate::pem::certs`]).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    crate::pem::certs(pem).map_err(|e| e.to_string())
}

/// A rustls certified key from PEM ([`crate::pem::certified_key`]).
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    crate::pem::certified_key(cert_pem, key_pem).map_err(TlsError::from)
}

/// A client certificate, and the CA bundle servers are verified against, both replaceable
/// while connections use them (a renewal brings a new certificate, a CA rotation a new bundle;
/// the next handshake uses them).
#[derive(Debug)]
pub struct SwappableCert {
    cert: RwLock<Arc<CertifiedKey>>,
    roots: RwLock<Option<Arc<WebPkiServerVerifier>>>,
}

impl SwappableCert {
    /// Start with the certificate `ck` and no CA bundle yet ([`client_config`] or [`SwappableCert::swap_roots`] sets one).
    pub fn new(ck: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(SwappableCert { cert: RwLock::new(ck), roots: RwLock::new(None) })
    }
    /// Replace the certificate used by future handshakes.
    pub fn swap(&self, ck: Arc<CertifiedKey>) {
        match self.cert.write() {
            Ok(mut g) => *g = ck,
            Err(p) => *p.into_inner() = ck,
        }
    }
    fn current(&self) -> Arc<CertifiedKey> {
        match self.cert.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
    /// Trust exactly the CA bundle `ca_pem` in future handshakes.
    pub fn swap_roots(&self, ca_pem: &str) -> Result<(), TlsError> {
        let v = verifier(ca_pem)?;
        match self.roots.write() {
            Ok(mut g) => *g = Some(v),
            Err(p) => *p.into_inner() = Some(v),
        }
        Ok(())
    }
    fn roots(&self) -> Option<Arc<WebPkiServerVerifier>> {
        match self.roots.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

fn verifier(ca_pem: &str) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem).map_err(TlsError::Ca)? {
        roots.add(c).map_err(|e| TlsError::Ca(e.to_string()))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|e| TlsError::Ca(e.to_string()))
}

/// Verifies servers against the current bundle of a [`SwappableCert`] (standard WebPKI checks).
#[derive(Debug)]
struct CurrentRoots(Arc<SwappableCert>);

impl CurrentRoots {
    fn get(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        self.0.roots().ok_or_else(|| rustls::Error::General("no CA bundle".into()))
    }
}

impl ServerCertVerifier for CurrentRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.get()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().map(|v| v.supported_verify_schemes()).unwrap_or_default()
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

/// A client config that trusts exactly the CA bundle of `cert` (set to `ca_pem` unless one was
/// already swapped in) and presents `cert`'s certificate; both can be replaced later.
pub fn client_config(ca_pem: &str, cert: Arc<SwappableCert>) -> Result<ClientConfig, TlsError> {
    if cert.roots().is_none() {
        cert.swap_roots(ca_pem)?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CurrentRoots(cert.clone())))
        .with_client_cert_resolver(cert);
    Ok(cfg)
}

//! The internal X.509 CA: an ECDSA P-256 root that signs the nats-server's certificate and every
//! client certificate (mutual TLS on every NATS connection).
//!
//! Pure minting: times come in as parameters, nothing here reads the clock or touches disk.
//! Certificates carry a random positive serial, explicit validity, and for clients the SPIFFE URI
//! SAN `spiffe://<trust-domain>/<path>` with the clientAuth EKU.

use crate::crypto::{self, SecretString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use std::net::IpAddr;
use time::OffsetDateTime;

/// Backdating of `notBefore`, so a peer whose clock is slightly behind accepts a fresh certificate.
pub const BACKDATE_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid time {0}")]
    Time(i64),
    #[error("invalid subject alternative name {0:?}")]
    San(String),
    #[error("randomness: {0}")]
    Random(#[from] crypto::CryptoError),
}

/// A freshly generated key and certificate, both PEM.
#[derive(Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: SecretString,
    /// Lower-case hex serial number.
    pub serial: String,
    pub not_after: i64,
}

fn ts(unix: i64) -> Result<OffsetDateTime, X509Error> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| X509Error::Time(unix))
}

/// A random, positive, 16-byte serial.
fn random_serial() -> Result<(SerialNumber, String), X509Error> {
    let mut b = crypto::random_bytes(16)?;
    b[0] &= 0x7f;
    if b[0] == 0 {
        b[0] = 0x01;
    }
    Ok((SerialNumber::from_slice(&b), data_encoding::HEXLOWER.encode(&b)))
}

/// SHA-256 fingerprint (`sha256:<hex>`) of a PEM certificate's DER, as pinned by join tokens.
pub fn fingerprint(cert_pem: &str) -> Result<String, X509Error> {
    let der = first_cert_der(cert_pem)?;
    Ok(format!("sha256:{}", crypto::sha256_hex(&der)))
}

/// DER of the first certificate in a PEM bundle.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, X509Error> {
    let mut rd = pem.as_bytes();
    let first = rustls_pemfile::certs(&mut rd).next();
    match first {
        Some(Ok(c)) => Ok(c.to_vec()),
        Some(Err(e)) => Err(X509Error::Pem(e.to_string())),
        None => Err(X509Error::Pem("no CERTIFICATE block".into())),
    }
}

/// The serial of a PEM certificate, lower-case hex (as tillit records it and OCSP looks it up).
pub fn serial_hex(cert_pem: &str) -> Result<String, X509Error> {
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| X509Error::Pem(e.to_string()))?;
    Ok(data_encoding::HEXLOWER.encode(cert.raw_serial()))
}

/// `notAfter` of a PEM certificate, as Unix seconds.
pub fn not_after(cert_pem: &str) -> Result<i64, X509Error> {
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| X509Error::Pem(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}

fn leaf_params(cn: &str, not_before: i64, not_after: i64) -> Result<(CertificateParams, String), X509Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tillit");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = ts(not_before - BACKDATE_SECS)?;
    p.not_after = ts(not_after)?;
    let (serial, serial_hex) = random_serial()?;
    p.serial_number = Some(serial);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    Ok((p, serial_hex))
}

fn san_for_host(host: &str) -> Result<SanType, X509Error> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    match h.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(h.to_string().try_into().map_err(|_| X509Error::San(host.into()))?)),
    }
}

// === impl CertAuthority ===

/// Where relying parties check revocation: put into every leaf certificate (AIA OCSP URL and
/// CRL distribution point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationUrls {
    /// OCSP responders, tried in order by relying parties (nats-server takes the first that answers).
    pub ocsp: Vec<String>,
    /// CRL distribution point URLs.
    pub crl: Vec<String>,
}

/// The root CA with its signing key in memory (loaded from the sealed store).
pub struct CertAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    urls: Option<RevocationUrls>,
    /// The hashes OCSP names this CA by, worked out once ([`crate::ocsp`]).
    pub(crate) ocsp_ids: std::sync::OnceLock<Option<std::sync::Arc<crate::ocsp::IssuerIds>>>,
}

impl AsRef<CertAuthority> for CertAuthority {
    fn as_ref(&self) -> &CertAuthority {
        self
    }
}

/// DER length prefix.
fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else if n < 0x100 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(der_len(body.len()));
    v.extend_from_slice(body);
    v
}

/// The Authority Information Access extension with OCSP URLs, in order (RFC 5280 §4.2.2.1).
fn aia_ocsp(urls: &[String]) -> rcgen::CustomExtension {
    let mut descriptions = Vec::new();
    for url in urls {
        // id-ad-ocsp 1.3.6.1.5.5.7.48.1
        let oid = der_tlv(0x06, &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01]);
        let location = der_tlv(0x86, url.as_bytes()); // [6] IA5String uniformResourceIdentifier
        descriptions.extend(der_tlv(0x30, &[oid, location].concat()));
    }
    let content = der_tlv(0x30, &descriptions);
    rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], content)
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").field("key", &"<redacted>").finish()
    }
}

impl CertAuthority {
    /// Generate a new root for `trust_domain`, valid from `now` until `not_after`.
    pub fn generate(trust_domain: &str, now: i64, not_after: i64) -> Result<Issued, X509Error> {
        Self::generate_named(trust_domain, "", now, not_after)
    }

    /// [`Self::generate`] with a label in the common name (`tillit root CA <td> (<label>)`), so
    /// CAs of successive rotations have distinct subjects.
    pub fn generate_named(trust_domain: &str, label: &str, now: i64, not_after: i64) -> Result<Issued, X509Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "tillit");
        dn.push(DnType::OrganizationalUnitName, trust_domain);
        let cn = if label.is_empty() { format!("tillit root CA {trust_domain}") } else { format!("tillit root CA {trust_domain} ({label})") };
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.not_before = ts(now - BACKDATE_SECS)?;
        p.not_after = ts(not_after)?;
        let (serial, serial_hex) = random_serial()?;
        p.serial_number = Some(serial);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = p.self_signed(&key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: SecretString::new(key.serialize_pem()),
            serial: serial_hex,
            not_after,
        })
    }

    /// Load a CA from its certificate and private key (PEM).
    pub fn load(cert_pem: &str, key_pem: &SecretString) -> Result<Self, X509Error> {
        let key = KeyPair::from_pem(key_pem.expose())?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(CertAuthority { cert_pem: cert_pem.to_string(), issuer, urls: None, ocsp_ids: Default::default() })
    }

    /// Put these revocation URLs into every leaf certificate issued from now on.
    pub fn with_revocation_urls(mut self, urls: RevocationUrls) -> Self {
        self.urls = Some(urls);
        self
    }

    fn add_revocation_urls(&self, p: &mut CertificateParams) {
        if let Some(u) = &self.urls {
            p.custom_extensions.push(aia_ocsp(&u.ocsp));
            p.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: u.crl.clone() }];
        }
    }

    /// Sign `msg` with the CA key (ECDSA P-256 with SHA-256, DER signature).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, X509Error> {
        use rcgen::SigningKey;
        Ok(self.issuer.key().sign(msg)?)
    }

    /// A DER CRL listing `revoked` (serial hex, revocation time), valid from `now` to `next`.
    pub fn crl(&self, revoked: &[(String, i64, rcgen::RevocationReason)], crl_number: u64, now: i64, next: i64) -> Result<Vec<u8>, X509Error> {
        let mut list = Vec::with_capacity(revoked.len());
        for (serial, at, reason) in revoked {
            let bytes = data_encoding::HEXLOWER_PERMISSIVE.decode(serial.as_bytes()).map_err(|_| X509Error::San(serial.clone()))?;
            list.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: ts(*at)?,
                reason_code: Some(*reason),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: ts(now)?,
            next_update: ts(next)?,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: list,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    /// The root certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for a nats-server: serverAuth and clientAuth (leafnode remotes present it as
    /// a client), SANs for every host given. The server's key is generated here, because the
    /// server is set up by the operator who runs `tillit init`.
    pub fn issue_server(&self, name: &str, hosts: &[String], now: i64, not_after: i64) -> Result<Issued, X509Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let (cert_pem, serial) = self.issue_server_for(&key, name, hosts, None, now, not_after)?;
        Ok(Issued { cert_pem, key_pem: SecretString::new(key.serialize_pem()), serial, not_after })
    }

    /// A server certificate (serverAuth + clientAuth, so it also dials leafnode remotes) for
    /// `public_key`, naming `hosts` and, when given, a SPIFFE id.
    pub fn issue_server_for(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        name: &str,
        hosts: &[String],
        spiffe_id: Option<&str>,
        now: i64,
        not_after: i64,
    ) -> Result<(String, String), X509Error> {
        let (mut p, serial) = leaf_params(name, now, not_after)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let mut sans = Vec::new();
        if let Some(id) = spiffe_id {
            sans.push(SanType::URI(id.to_string().try_into().map_err(|_| X509Error::San(id.into()))?));
        }
        for h in hosts {
            let san = san_for_host(h)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        p.subject_alt_names = sans;
        self.add_revocation_urls(&mut p);
        let cert = p.signed_by(public_key, &self.issuer)?;
        Ok((cert.pem(), serial))
    }

    /// A client certificate for `public_key` with SPIFFE id `spiffe_id` (clientAuth only).
    pub fn issue_client(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        spiffe_id: &str,
        cn: &str,
        now: i64,
        not_after: i64,
    ) -> Result<(String, String), X509Error> {
        self.client_cert(public_key, spiffe_id, cn, now, not_after, true)
    }

    fn client_cert(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        spiffe_id: &str,
        cn: &str,
        now: i64,
        not_after: i64,
        revocable: bool,
    ) -> Result<(String, String), X509Error> {
        let (mut p, serial) = leaf_params(cn, now, not_after)?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.subject_alt_names =
            vec![SanType::URI(spiffe_id.to_string().try_into().map_err(|_| X509Error::San(spiffe_id.into()))?)];
        if revocable {
            self.add_revocation_urls(&mut p);
        }
        let cert = p.signed_by(public_key, &self.issuer)?;
        Ok((cert.pem(), serial))
    }

    /// [`CertAuthority::issue_client_with_new_key`] without an OCSP responder or CRL in the
    /// certificate: nats-server's `ocsp_peer` lets such a chain through without asking anyone.
    /// Only for the control plane's store access, which must connect while no responder runs
    /// (every replica down); its user JWT is what revokes it.
    pub fn issue_client_without_revocation_urls(
        &self,
        spiffe_id: &str,
        cn: &str,
        now: i64,
        not_after: i64,
    ) -> Result<Issued, X509Error> {
        self.client_with_new_key(spiffe_id, cn, now, not_after, false)
    }

    /// Generate a P-256 key locally and a client certificate for it (identities whose owner is
    /// the process running this, e.g. the admin identity written by `init`).
    pub fn issue_client_with_new_key(
        &self,
        spiffe_id: &str,
        cn: &str,
        now: i64,
        not_after: i64,
    ) -> Result<Issued, X509Error> {
        self.client_with_new_key(spiffe_id, cn, now, not_after, true)
    }

    fn client_with_new_key(&self, spiffe_id: &str, cn: &str, now: i64, not_after: i64, revocable: bool) -> Result<Issued, X509Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let (cert_pem, serial) = self.client_cert(&key, spiffe_id, cn, now, not_after, revocable)?;
        Ok(Issued { cert_pem, key_pem: SecretString::new(key.serialize_pem()), serial, not_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;

    const NOW: i64 = 1_780_000_000;

    fn ca() -> CertAuthority {
        let root = CertAuthority::generate("example.org", NOW, NOW + 86_400 * 365).unwrap();
        CertAuthority::load(&root.cert_pem, &root.key_pem).unwrap()
    }

    #[test]
    fn root_is_a_ca_with_explicit_validity() {
        let root = CertAuthority::generate("example.org", NOW, NOW + 1000).unwrap();
        let der = first_cert_der(&root.cert_pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(c.is_ca());
        assert_eq!(c.validity().not_before.timestamp(), NOW - BACKDATE_SECS);
        assert_eq!(c.validity().not_after.timestamp(), NOW + 1000);
        assert!(root.key_pem.expose().contains("PRIVATE KEY"));
        assert!(fingerprint(&root.cert_pem).unwrap().starts_with("sha256:"));
    }

    #[test]
    fn client_cert_carries_spiffe_id_and_client_auth_only() {
        let ca = ca();
        let id = "spiffe://example.org/acme/shop/prod/orders";
        let a = ca.issue_client_with_new_key(id, "orders", NOW, NOW + 3600).unwrap();
        let b = ca.issue_client_with_new_key(id, "orders", NOW, NOW + 3600).unwrap();
        assert_ne!(a.serial, b.serial, "serials are random");
        let der = first_cert_der(&a.cert_pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!c.is_ca());
        assert_eq!(not_after(&a.cert_pem).unwrap(), NOW + 3600);
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, vec![GeneralName::URI(id)]);
        let eku = c.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert_eq!(data_encoding::HEXLOWER.encode(c.raw_serial()), a.serial);
        assert!(c.raw_serial()[0] & 0x80 == 0, "serial is positive");
    }

    #[test]
    fn server_cert_names_every_host() {
        let ca = ca();
        let s = ca
            .issue_server("nats", &["127.0.0.1".into(), "localhost".into(), "[::1]".into(), "localhost".into()], NOW, NOW + 60)
            .unwrap();
        let der = first_cert_der(&s.cert_pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let names = &c.subject_alternative_name().unwrap().unwrap().value.general_names;
        assert_eq!(names.len(), 3);
        assert!(names.contains(&GeneralName::DNSName("localhost")));
        let eku = c.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth);
    }

    #[test]
    fn leaves_carry_revocation_urls_and_the_crl_lists_revoked_serials() {
        let ca = ca().with_revocation_urls(RevocationUrls {
            ocsp: vec!["http://127.0.0.1:8080/ocsp".into(), "http://127.0.0.1:8081/ocsp".into()],
            crl: vec!["http://127.0.0.1:8080/crl".into()],
        });
        let a = ca.issue_client_with_new_key("spiffe://example.org/a/b/c/d", "d", NOW, NOW + 60).unwrap();
        let der = first_cert_der(&a.cert_pem).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let mut saw_aia = false;
        let mut saw_crl = false;
        for ext in c.extensions() {
            match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(aia) => {
                    saw_aia = aia.accessdescs.iter().any(|d| matches!(d.access_location, GeneralName::URI("http://127.0.0.1:8080/ocsp")));
                }
                x509_parser::extensions::ParsedExtension::CRLDistributionPoints(_) => saw_crl = true,
                _ => {}
            }
        }
        assert!(saw_aia && saw_crl);
        let crl = ca.crl(&[(a.serial.clone(), NOW + 10, rcgen::RevocationReason::KeyCompromise)], 7, NOW + 20, NOW + 620).unwrap();
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).unwrap();
        let serials: Vec<String> = parsed.iter_revoked_certificates().map(|r| data_encoding::HEXLOWER.encode(r.raw_serial())).collect();
        assert_eq!(serials, vec![a.serial]);
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        assert!(first_cert_der("garbage").is_err());
        assert!(CertAuthority::load("garbage", &SecretString::new("nope".into())).is_err());
    }
}

/// Checks on a CSR: a valid self-signature (the requester holds the key), an ECDSA P-256 key,
/// and a subject CN equal to `bound_to` (the enrolling nkey), so a CSR cannot be lifted from
/// one request into another's.
pub fn parse_csr(csr_pem: &str, bound_to: &str) -> Result<rcgen::PublicKey, CsrError> {
    if csr_pem.len() > 8 * 1024 {
        return Err(CsrError::Malformed("CSR is larger than 8 KiB".into()));
    }
    let params = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CsrError::Signature,
        other => CsrError::Malformed(other.to_string()),
    })?;
    if params.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
        return Err(CsrError::Algorithm);
    }
    let cn = params.params.distinguished_name.get(&DnType::CommonName).and_then(|v| match v {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        _ => None,
    });
    if cn.as_deref() != Some(bound_to) {
        return Err(CsrError::Binding);
    }
    Ok(params.public_key)
}

/// A fresh P-256 key and a CSR for it with subject CN `cn` (the requester's nkey).
pub fn make_csr(cn: &str) -> Result<(String, SecretString), X509Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let csr = p.serialize_request(&key)?;
    Ok((csr.pem()?, SecretString::new(key.serialize_pem())))
}

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("CSR is malformed: {0}")]
    Malformed(String),
    #[error("CSR signature does not verify (the requester does not hold its key)")]
    Signature,
    #[error("CSR key must be ECDSA P-256")]
    Algorithm,
    #[error("CSR subject CN must be the requesting nkey (the CSR is bound to the proof-of-possession key)")]
    Binding,
}

#[cfg(test)]
mod csr_tests {
    use super::*;

    #[test]
    fn csr_checks() {
        let (csr, _key) = make_csr("UABC").unwrap();
        parse_csr(&csr, "UABC").unwrap();
        assert_eq!(parse_csr(&csr, "UOTHER").unwrap_err(), CsrError::Binding);
        assert!(matches!(parse_csr("garbage", "UABC").unwrap_err(), CsrError::Malformed(_)));
        // An Ed25519 key is refused.
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "UABC");
        let ed_csr = p.serialize_request(&ed).unwrap().pem().unwrap();
        assert_eq!(parse_csr(&ed_csr, "UABC").unwrap_err(), CsrError::Algorithm);
        // A tampered CSR fails its signature.
        let der = crate::token::pem_to_der(&csr).unwrap();
        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 10] ^= 0x55;
        let bad_pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            data_encoding::BASE64.encode(&bad)
        );
        assert!(parse_csr(&bad_pem, "UABC").is_err());
    }
}

//! Revocation the servers can check: OCSP responses (RFC 6960) and a DER CRL, signed by the CA.
//!
//! nats-server's `ocsp_peer` asks the responder named in each client certificate (AIA) at the TLS
//! handshake; a certificate whose identity was revoked gets `revoked` and the handshake fails,
//! whatever JWT comes with it. Responses are valid for [`NEXT_UPDATE_SECS`]: that bounds how long a
//! server may keep a cached "good" after a revocation (the JWT revocation, pushed at once, covers
//! connections already open).

use crate::issuer::x509::CertAuthority;
use der::asn1::{BitString, GeneralizedTime, Null, OctetString};
use der::{Decode, Encode};
use sha1::Digest as _;
use x509_ocsp::{
    BasicOcspResponse, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse, OcspResponseStatus, ResponderId,
    ResponseBytes, ResponseData, RevokedInfo, SingleResponse, Version,
};

/// How long an OCSP response or CRL is valid.
pub const NEXT_UPDATE_SECS: i64 = 600;
/// Largest OCSP request read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

const OID_SHA1: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_ECDSA_SHA256: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_OCSP_BASIC: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const OID_OCSP_NONCE: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");

/// What the responder says of one serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    /// Revoked at this Unix time.
    Revoked(i64),
    Unknown,
}

fn gtime(unix: i64) -> Option<OcspGeneralizedTime> {
    GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(unix.max(0) as u64)).ok().map(OcspGeneralizedTime)
}

fn status_only(s: OcspResponseStatus) -> Vec<u8> {
    OcspResponse { response_status: s, response_bytes: None }.to_der().unwrap_or_default()
}

/// Answer a DER OCSP request. `lookup` maps a lower-case hex serial to its status. The answer
/// is signed by the CA (of `cas`, the trusted set) that issued the first certificate asked about.
pub fn respond<C: AsRef<CertAuthority>>(cas: &[C], request_der: &[u8], lookup: impl Fn(&str) -> Status, now: i64) -> Vec<u8> {
    if request_der.len() > MAX_REQUEST_BYTES {
        return status_only(OcspResponseStatus::MalformedRequest);
    }
    let Ok(req) = OcspRequest::from_der(request_der) else {
        return status_only(OcspResponseStatus::MalformedRequest);
    };
    let ids: Vec<(&CertAuthority, IssuerIds)> = cas.iter().filter_map(|c| Some((c.as_ref(), IssuerIds::of(c.as_ref())?))).collect();
    let Some(first) = req.tbs_request.request_list.first() else {
        return status_only(OcspResponseStatus::MalformedRequest);
    };
    let Some((ca, issuer)) = ids.iter().find(|(_, i)| i.matches(&first.req_cert)).or(ids.first()) else {
        return status_only(OcspResponseStatus::InternalError);
    };
    match build(ca, issuer, &req, lookup, now) {
        Some(der) => der,
        None => status_only(OcspResponseStatus::InternalError),
    }
}

/// The hashes an OCSP CertID names its issuer by.
struct IssuerIds {
    sha1_name: Vec<u8>,
    sha1_key: Vec<u8>,
    sha256_name: Vec<u8>,
    sha256_key: Vec<u8>,
}

impl IssuerIds {
    fn of(ca: &CertAuthority) -> Option<Self> {
        let ca_der = crate::issuer::x509::first_cert_der(ca.cert_pem()).ok()?;
        let ca_cert = x509_cert::Certificate::from_der(&ca_der).ok()?;
        let name_der = ca_cert.tbs_certificate.subject.to_der().ok()?;
        let key_bits = ca_cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes().to_vec();
        Some(IssuerIds {
            sha1_name: sha1::Sha1::digest(&name_der).to_vec(),
            sha1_key: sha1::Sha1::digest(&key_bits).to_vec(),
            sha256_name: crate::crypto::sha256(&name_der).to_vec(),
            sha256_key: crate::crypto::sha256(&key_bits).to_vec(),
        })
    }

    fn matches(&self, id: &x509_ocsp::CertId) -> bool {
        match id.hash_algorithm.oid {
            o if o == OID_SHA1 => id.issuer_name_hash.as_bytes() == self.sha1_name && id.issuer_key_hash.as_bytes() == self.sha1_key,
            o if o == OID_SHA256 => id.issuer_name_hash.as_bytes() == self.sha256_name && id.issuer_key_hash.as_bytes() == self.sha256_key,
            _ => false,
        }
    }
}

fn build(ca: &CertAuthority, issuer: &IssuerIds, req: &OcspRequest, lookup: impl Fn(&str) -> Status, now: i64) -> Option<Vec<u8>> {
    let this = gtime(now)?;
    let next = gtime(now + NEXT_UPDATE_SECS)?;
    let mut responses = Vec::new();
    for r in &req.tbs_request.request_list {
        let id = &r.req_cert;
        let ours = issuer.matches(id);
        let status = if ours {
            lookup(&data_encoding::HEXLOWER.encode(id.serial_number.as_bytes()))
        } else {
            Status::Unknown
        };
        let cert_status = match status {
            Status::Good => CertStatus::Good(Null),
            Status::Revoked(at) => CertStatus::Revoked(RevokedInfo { revocation_time: gtime(at)?, revocation_reason: None }),
            Status::Unknown => CertStatus::Unknown(Null),
        };
        responses.push(SingleResponse {
            cert_id: id.clone(),
            cert_status,
            this_update: this,
            next_update: Some(next),
            single_extensions: None,
        });
    }
    // Echo a nonce if the client sent one.
    let nonce = req
        .tbs_request
        .request_extensions
        .as_ref()
        .and_then(|exts| exts.iter().find(|e| e.extn_id == OID_OCSP_NONCE).cloned());
    let data = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(OctetString::new(issuer.sha1_key.clone()).ok()?),
        produced_at: this,
        responses,
        response_extensions: nonce.map(|n| vec![n]),
    };
    let tbs = data.to_der().ok()?;
    let sig = ca.sign(&tbs).ok()?;
    let basic = BasicOcspResponse {
        tbs_response_data: data,
        signature_algorithm: spki::AlgorithmIdentifierOwned { oid: OID_ECDSA_SHA256, parameters: None },
        signature: BitString::from_bytes(&sig).ok()?,
        certs: None,
    };
    OcspResponse {
        response_status: OcspResponseStatus::Successful,
        response_bytes: Some(ResponseBytes { response_type: OID_OCSP_BASIC, response: OctetString::new(basic.to_der().ok()?).ok()? }),
    }
    .to_der()
    .ok()
}

/// Decode the path of a GET request (`/ocsp/<url-encoded base64 DER>`).
pub fn decode_get(path: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(path.len());
    let raw = path.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(bytes).ok()?;
    let text = text.trim_start_matches('/');
    data_encoding::BASE64.decode(text.as_bytes()).ok().or_else(|| data_encoding::BASE64_NOPAD.decode(text.trim_end_matches('=').as_bytes()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_paths_decode() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0xff, 0xfe, 0xfb];
        let b64 = data_encoding::BASE64.encode(&der);
        let encoded = b64.replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
        assert_eq!(decode_get(&encoded), Some(der.clone()));
        assert_eq!(decode_get(&b64), Some(der));
        assert_eq!(decode_get("%zz"), None);
        assert_eq!(decode_get("!!!"), None);
    }

    #[test]
    fn garbage_requests_get_malformed_request() {
        let root = CertAuthority::generate("example.org", 1_780_000_000, 1_790_000_000).unwrap();
        let ca = CertAuthority::load(&root.cert_pem, &root.key_pem).unwrap();
        let der = respond(std::slice::from_ref(&ca), b"garbage", |_| Status::Good, 1_780_000_100);
        let r = OcspResponse::from_der(&der).unwrap();
        assert_eq!(r.response_status, OcspResponseStatus::MalformedRequest);
        assert!(r.response_bytes.is_none());
    }
}

//! Revocation the servers can check: OCSP responses (RFC 6960) and a DER CRL, signed by the CA.
//!
//! nats-server's `ocsp_peer` asks the responders named in each client certificate (AIA), in
//! order, at the TLS handshake; a certificate whose identity was revoked gets `revoked` and the
//! handshake fails, whatever JWT comes with it.
//!
//! Two ways to answer:
//! - [`respond`]: signed on request by the control plane, which holds the CA key (valid for
//!   [`NEXT_UPDATE_SECS`]).
//! - [`presign`]: signed ahead of time, one answer per certificate, valid until the certificate
//!   expires (at most [`PRESIGN_MAX_SECS`]). The control plane publishes them in a KV bucket
//!   ([`copy`]); responders next to every nats-server (`serve`, `tillit responder` at the hub, the
//!   site agent) keep a copy and answer from it without the CA key and without the control
//!   plane. A revocation replaces the answer with a `revoked` one. nats-server keeps no OCSP cache
//!   of its own (`ocsp_cache { type: none }`), so the next handshake sees the change.

pub mod copy;
pub mod follow;
pub mod responder;
pub mod table;

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
/// Longest validity of a pre-signed answer; answers for longer-lived certificates are signed
/// again before half of it is gone.
pub const PRESIGN_MAX_SECS: i64 = 7 * 86_400;
/// How far back a pre-signed answer's `thisUpdate` is set (servers whose clock runs behind).
pub const PRESIGN_BACKDATE_SECS: i64 = 300;
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
    let ids: Vec<(&CertAuthority, std::sync::Arc<IssuerIds>)> = cas.iter().filter_map(|c| Some((c.as_ref(), IssuerIds::of(c.as_ref())?))).collect();
    let Some(first) = req.tbs_request.request_list.first() else {
        return status_only(OcspResponseStatus::MalformedRequest);
    };
    let Some((ca, issuer)) = ids.iter().find(|(_, i)| i.matches(&first.req_cert)).or(ids.first()) else {
        return status_only(OcspResponseStatus::InternalError);
    };
    let items = req
        .tbs_request
        .request_list
        .iter()
        .map(|r| {
            let id = &r.req_cert;
            let status = if issuer.matches(id) { lookup(&data_encoding::HEXLOWER.encode(id.serial_number.as_bytes())) } else { Status::Unknown };
            (id.clone(), status)
        })
        .collect();
    // Echo a nonce if the client sent one.
    let nonce = req.tbs_request.request_extensions.as_ref().and_then(|exts| exts.iter().find(|e| e.extn_id == OID_OCSP_NONCE).cloned());
    match build(ca, issuer, items, now, now + NEXT_UPDATE_SECS, nonce) {
        Some(der) => der,
        None => status_only(OcspResponseStatus::InternalError),
    }
}

/// Answers for `serial_hex` (the certificate serial's bytes, lower-case hex) signed ahead of
/// time: one per CA of `cas` (the trusted set; only the issuer's verifies), each valid from
/// `this` until `next`, with a SHA-1 CertID as nat-server's (Go's) requests carry. Empty if the
/// serial is not hex or signing failed.
pub fn presign<C: AsRef<CertAuthority>>(cas: &[C], serial_hex: &str, status: Status, this: i64, next: i64) -> Vec<Vec<u8>> {
    let Ok(raw) = data_encoding::HEXLOWER.decode(serial_hex.as_bytes()) else { return vec![] };
    let Some(serial) = serial_from_raw(&raw) else { return vec![] };
    cas.iter()
        .filter_map(|c| {
            let ca = c.as_ref();
            let issuer = IssuerIds::of(ca)?;
            let id = x509_ocsp::CertId {
                hash_algorithm: spki::AlgorithmIdentifierOwned { oid: OID_SHA1, parameters: Some(der::Any::null()) },
                issuer_name_hash: OctetString::new(issuer.sha1_name.clone()).ok()?,
                issuer_key_hash: OctetString::new(issuer.sha1_key.clone()).ok()?,
                serial_number: serial.clone(),
            };
            build(ca, &issuer, vec![(id, status)], this, next, None)
        })
        .collect()
}

/// An OCSP request for `serial_hex` issued by `ca`, as nats-server (Go's `ocsp.CreateRequest`)
/// makes it: one SHA-1 CertID, no nonce. For probes and tests.
pub fn request(ca: &CertAuthority, serial_hex: &str) -> Option<Vec<u8>> {
    request_to(ca.cert_pem(), serial_hex)
}

/// [`request`] for the CA whose certificate (PEM, the first of a bundle) is `ca_pem`: what a
/// client that holds only the CA bundle asks.
pub fn request_to(ca_pem: &str, serial_hex: &str) -> Option<Vec<u8>> {
    let issuer = IssuerIds::of_pem(ca_pem)?;
    let raw = data_encoding::HEXLOWER.decode(serial_hex.as_bytes()).ok()?;
    let id = x509_ocsp::CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned { oid: OID_SHA1, parameters: Some(der::Any::null()) },
        issuer_name_hash: OctetString::new(issuer.sha1_name.clone()).ok()?,
        issuer_key_hash: OctetString::new(issuer.sha1_key.clone()).ok()?,
        serial_number: serial_from_raw(&raw)?,
    };
    OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request { req_cert: id, single_request_extensions: None }],
            request_extensions: None,
        },
        optional_signature: None,
    }
    .to_der()
    .ok()
}

/// A serial number from its content bytes as a certificate carries them.
fn serial_from_raw(raw: &[u8]) -> Option<x509_cert::serial_number::SerialNumber> {
    if raw.is_empty() || raw.len() > 20 {
        return None;
    }
    let mut der = vec![0x02, raw.len() as u8];
    der.extend_from_slice(raw);
    x509_cert::serial_number::SerialNumber::from_der(&der).ok()
}

/// What one pre-signed answer says: the CertID it answers, its status, until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub serial_hex: String,
    pub hash_oid: der::asn1::ObjectIdentifier,
    pub issuer_name_hash: Vec<u8>,
    pub issuer_key_hash: Vec<u8>,
    pub status: Status,
    pub next_update: i64,
}

/// Read back an answer [`presign`] made (one single response). `None` if it is not one.
pub fn read_answer(der_bytes: &[u8]) -> Option<Answer> {
    let r = OcspResponse::from_der(der_bytes).ok()?;
    let bytes = r.response_bytes?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).ok()?;
    let [single] = basic.tbs_response_data.responses.as_slice() else { return None };
    let unix = |t: &OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
    Some(Answer {
        serial_hex: data_encoding::HEXLOWER.encode(single.cert_id.serial_number.as_bytes()),
        hash_oid: single.cert_id.hash_algorithm.oid,
        issuer_name_hash: single.cert_id.issuer_name_hash.as_bytes().to_vec(),
        issuer_key_hash: single.cert_id.issuer_key_hash.as_bytes().to_vec(),
        status: match &single.cert_status {
            CertStatus::Good(_) => Status::Good,
            CertStatus::Revoked(info) => Status::Revoked(unix(&info.revocation_time)),
            CertStatus::Unknown(_) => Status::Unknown,
        },
        next_update: single.next_update.as_ref().map(unix).unwrap_or(0),
    })
}

/// The one CertID an OCSP request asks about (nats-server asks one at a time). `None` for a
/// malformed request or one asking about several.
pub fn requested(request_der: &[u8]) -> Option<x509_ocsp::CertId> {
    if request_der.len() > MAX_REQUEST_BYTES {
        return None;
    }
    let req = OcspRequest::from_der(request_der).ok()?;
    match req.tbs_request.request_list.as_slice() {
        [one] => Some(one.req_cert.clone()),
        _ => None,
    }
}

/// The hashes an OCSP CertID names its issuer by.
pub(crate) struct IssuerIds {
    sha1_name: Vec<u8>,
    sha1_key: Vec<u8>,
    sha256_name: Vec<u8>,
    sha256_key: Vec<u8>,
}

impl IssuerIds {
    /// `ca`'s, worked out at its first use.
    fn of(ca: &CertAuthority) -> Option<std::sync::Arc<Self>> {
        ca.ocsp_ids.get_or_init(|| Self::of_pem(ca.cert_pem()).map(std::sync::Arc::new)).clone()
    }

    fn of_pem(ca_pem: &str) -> Option<Self> {
        let ca_der = crate::issuer::x509::first_cert_der(ca_pem).ok()?;
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

    pub(crate) fn matches(&self, id: &x509_ocsp::CertId) -> bool {
        match id.hash_algorithm.oid {
            o if o == OID_SHA1 => id.issuer_name_hash.as_bytes() == self.sha1_name && id.issuer_key_hash.as_bytes() == self.sha1_key,
            o if o == OID_SHA256 => id.issuer_name_hash.as_bytes() == self.sha256_name && id.issuer_key_hash.as_bytes() == self.sha256_key,
            _ => false,
        }
    }
}

fn build(ca: &CertAuthority, issuer: &IssuerIds, items: Vec<(x509_ocsp::CertId, Status)>, this_unix: i64, next_unix: i64, nonce: Option<x509_cert::ext::Extension>) -> Option<Vec<u8>> {
    let this = gtime(this_unix)?;
    let next = gtime(next_unix)?;
    let mut responses = Vec::new();
    for (id, status) in items {
        let cert_status = match status {
            Status::Good => CertStatus::Good(Null),
            Status::Revoked(at) => CertStatus::Revoked(RevokedInfo { revocation_time: gtime(at)?, revocation_reason: None }),
            Status::Unknown => CertStatus::Unknown(Null),
        };
        responses.push(SingleResponse { cert_id: id, cert_status, this_update: this, next_update: Some(next), single_extensions: None });
    }
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

    pub(crate) fn request_for(ca: &CertAuthority, serial_hex: &str) -> Vec<u8> {
        request(ca, serial_hex).unwrap()
    }

    #[test]
    fn presigned_answers_read_back_and_match_live_ones() {
        let root = CertAuthority::generate("example.org", 1_780_000_000, 1_790_000_000).unwrap();
        let ca = CertAuthority::load(&root.cert_pem, &root.key_pem).unwrap();
        let serial = "00ff10";
        let ders = presign(std::slice::from_ref(&ca), serial, Status::Revoked(1_780_000_500), 1_780_000_000, 1_780_003_600);
        let a = read_answer(&ders[0]).unwrap();
        assert_eq!(a.serial_hex, serial);
        assert_eq!(a.status, Status::Revoked(1_780_000_500));
        assert_eq!(a.next_update, 1_780_003_600);
        // The live responder names the same CertID for the same request.
        let live = respond(std::slice::from_ref(&ca), &request_for(&ca, serial), |_| Status::Good, 1_780_000_100);
        let l = read_answer(&live).unwrap();
        assert_eq!((l.serial_hex, l.issuer_name_hash, l.issuer_key_hash), (a.serial_hex, a.issuer_name_hash, a.issuer_key_hash));
        assert!(presign(std::slice::from_ref(&ca), "not hex", Status::Good, 0, 1).is_empty());
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

//! OCSP requests: `ocsp::respond` on the DER of a POST body, and `ocsp::decode_get` on a GET
//! path (an input starting with `/`) then `respond`. Every answer must itself be valid DER.
#![no_main]
use der::Decode;
use libfuzzer_sys::fuzz_target;
use tillit::ocsp::{self, Status};
use tillit_fuzz::*;

fn lookup(serial: &str) -> Status {
    match serial.len() % 3 {
        0 => Status::Good,
        1 => Status::Revoked(NOW - 10),
        _ => Status::Unknown,
    }
}

fuzz_target!(|data: &[u8]| {
    let decoded;
    let der: &[u8] = if data.first() == Some(&b'/') {
        let Ok(path) = std::str::from_utf8(data) else { return };
        match ocsp::decode_get(path) {
            Some(d) => {
                decoded = d;
                &decoded
            }
            None => return,
        }
    } else {
        data
    };
    let cas = [ca()];
    let answer = ocsp::respond(&cas, der, lookup, NOW);
    x509_ocsp::OcspResponse::from_der(&answer).expect("the responder's answer is valid DER");
});

//! Pre-signed OCSP answers as responders read them: a `TILLIT_OCSP` bucket value
//! (`ocsp::copy::Published::parse`, `Copy::apply`, then `Copy::answer` to a request for that
//! serial, which must be valid DER when given) and a responder's saved copy (`Copy::load`). An
//! input starting with `#` is `#<status>:<serial hex>`: the harness presigns that answer with the
//! fixed CA first, so the happy path is fuzzed too.
#![no_main]
use der::Decode;
use libfuzzer_sys::fuzz_target;
use tillit::ocsp::copy::{Copy, Published};
use tillit::ocsp::{self, Status};
use tillit_fuzz::*;

const SERIAL: &str = "4a1b2c3d4e5f60718293a4b5c6d7e8f9";

fuzz_target!(|data: &[u8]| {
    let presigned;
    let (serial, value): (&str, &[u8]) = match data.strip_prefix(b"#") {
        Some(rest) => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let Some((status, serial)) = text.split_once(':') else { return };
            let status = match status {
                "good" => Status::Good,
                "unknown" => Status::Unknown,
                _ => Status::Revoked(NOW - 10),
            };
            presigned = Published::new(&ocsp::presign(&[ca()], serial, status, NOW - 300, NOW + 3600)).to_bytes();
            (serial, &presigned)
        }
        None => (SERIAL, data),
    };
    let _ = Published::parse(value);
    let copy = Copy::in_memory();
    copy.apply(1, serial, Some(value));
    if let Some(der) = copy.get(serial).and_then(|_| copy.answer(&ocsp::request(ca(), serial).unwrap_or_default(), NOW)) {
        x509_ocsp::OcspResponse::from_der(&der).expect("a held answer is valid DER");
        assert!(ocsp::read_answer(&der).is_some(), "a held answer reads back");
    }
    // The saved form: any bytes as the file a responder loads at start.
    let file = scratch("ocsp_answers").join("copy.json");
    put_file(&file, Some(data));
    let loaded = Copy::load(file.clone());
    let _ = loaded.answer(&ocsp::request(ca(), SERIAL).unwrap_or_default(), NOW);
    loaded.save();
});

//! CSRs (the enrollment request's PKCS#10, PEM): `issuer::x509::parse_csr`, then issuing a
//! client certificate for the key it carries, as enrollment does.
//!
//! An input starting with 0x30 (a DER SEQUENCE) is wrapped in PEM by the harness, so the
//! fuzzer mutates the DER directly rather than its base64.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tillit_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let owned;
    let pem: &str = if data.first() == Some(&0x30) {
        owned = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            data_encoding::BASE64.encode(data)
        );
        &owned
    } else {
        match std::str::from_utf8(data) {
            Ok(s) => s,
            Err(_) => return,
        }
    };
    let bound = user_key().public_key();
    let Ok(key) = tillit::issuer::x509::parse_csr(pem, &bound) else { return };
    let _ = ca().issue_client(&key, "spiffe://example.org/acme/shop/prod/orders", &bound, NOW, NOW + 3600);
});

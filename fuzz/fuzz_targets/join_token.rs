//! Join tokens (`tillit1.<base64url(JSON)>`): `JoinToken::decode`, then everything the enrolling
//! client does with a decoded token (PEM rendering, bootstrap connection parameters).
//!
//! An input starting with `{` is token JSON: the harness puts the right `ca_fingerprint` in (a
//! fuzzer cannot match a SHA-256 pin) and encodes it, so the checks after the pin are reached.
#![no_main]
use data_encoding::{BASE64URL_NOPAD, BASE64_NOPAD};
use libfuzzer_sys::fuzz_target;
use tillit::token::JoinToken;

fn with_pin(json: &[u8]) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_slice(json).ok()?;
    if let Some(first) = v.get("ca").and_then(|c| c.get(0)).and_then(|c| c.as_str()) {
        if let Ok(der) = BASE64_NOPAD.decode(first.trim_end_matches('=').as_bytes()) {
            v["ca_fingerprint"] = format!("sha256:{}", tillit::crypto::sha256_hex(&der)).into();
        }
    }
    Some(format!("{}{}", tillit::token::TOKEN_PREFIX, BASE64URL_NOPAD.encode(&serde_json::to_vec(&v).ok()?)))
}

fuzz_target!(|data: &[u8]| {
    let owned;
    let text: &str = if data.first() == Some(&b'{') {
        match with_pin(data) {
            Some(t) => {
                owned = t;
                &owned
            }
            None => return,
        }
    } else {
        match std::str::from_utf8(data) {
            Ok(s) => s,
            Err(_) => return,
        }
    };
    let _ = tillit::token::pem_to_der(text);
    let Ok(t) = JoinToken::decode(text) else { return };
    let _ = format!("{t:?}");
    let _ = t.ca_pem();
    let _ = t.cert_pem();
    let _ = t.key_pem();
    let _ = tillit::client::enroll::bootstrap_params(&t, t.nats_urls.clone());
    // What decode accepts, encode must give back unchanged.
    let again = JoinToken::decode(t.encode().expose()).expect("a re-encoded token decodes");
    assert!(again == t, "token does not round-trip");
});

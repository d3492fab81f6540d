//! Signed requests: `proto::verify_request` exactly as the control plane's dispatcher calls it
//! (body kept raw), then the body parsed as every request type.
//!
//! An input starting with `{` is request claims, signed by the harness with a fixed user nkey
//! (`HEADER\nCLAIMS` signs a header of the input's choice), so the claim checks are reached.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use tillit::proto::*;
use tillit_fuzz::*;

fn body<T: serde::de::DeserializeOwned>(raw: &RawValue) {
    let _ = serde_json::from_str::<T>(raw.get());
}

fuzz_target!(|data: &[u8]| {
    let owned;
    let payload: &[u8] = if data.first() == Some(&b'{') {
        let (h, c) = split_header(data, JWT_HEADER);
        owned = sign_compact(h, c, signer_for(c));
        owned.as_bytes()
    } else {
        data
    };
    // Route by the claimed type so every verb's checks are reachable (the signature decides).
    let kind = std::str::from_utf8(payload)
        .ok()
        .and_then(peek_claims)
        .and_then(|c| c["type"].as_str().map(str::to_string))
        .unwrap_or_else(|| tillit::proto::Enroll::KIND.to_string());
    let subject = kind.strip_prefix("io.").unwrap_or(tillit::proto::Enroll::SUBJECT).to_string();
    let Ok(claims) = verify_request::<Box<RawValue>>(payload, &subject, &kind, TD, NOW) else { return };
    assert!(claims.iss.starts_with('U'));
    assert!(claims.exp > NOW && claims.exp - claims.iat <= MAX_REQUEST_LIFETIME);
    let b = &claims.body;
    body::<TokenCreateRequest>(b);
    body::<EnrollRequest>(b);
    body::<RenewRequest>(b);
    body::<GrantRequest>(b);
    body::<ServiceRequest>(b);
    body::<RevokeRequest>(b);
    body::<ListRequest>(b);
    body::<SecretPutRequest>(b);
    body::<SecretRotateRequest>(b);
    body::<SecretPathRequest>(b);
    body::<SecretListRequest>(b);
    body::<SecretGetRequest>(b);
    body::<RotateSigningKeyRequest>(b);
    body::<SiteAddRequest>(b);
    body::<SiteRemoveRequest>(b);
    body::<SiteListRequest>(b);
    body::<AckRequest>(b);
    body::<RotateCaRequest>(b);
    body::<SiteRenewRequest>(b);
    body::<StatusRequest>(b);
});

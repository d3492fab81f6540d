//! NATS JWTs: `issuer::jwt::decode` (user, account, operator claims) and `decode_from`.
//!
//! An input starting with `{` is claims, signed by the harness with the fixed nkey its `iss`
//! names (operator, account or user; `HEADER\nCLAIMS` signs a header of the input's choice).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tillit::issuer::jwt::{self, AccountNats, OperatorNats, UserNats};
use tillit_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let owned;
    let token: &str = if data.first() == Some(&b'{') {
        let (h, c) = split_header(data, JWT_HEADER);
        owned = sign_compact(h, c, signer_for(c));
        &owned
    } else {
        match std::str::from_utf8(data) {
            Ok(s) => s,
            Err(_) => return,
        }
    };
    // One signature check for every input; the typed decodes only for those that pass it.
    let Ok(any) = jwt::decode::<serde_json::Value>(token) else { return };
    let _ = jwt::decode::<UserNats>(token);
    let _ = jwt::decode::<AccountNats>(token);
    let _ = jwt::decode::<OperatorNats>(token);
    let trusted = [account_key().public_key(), operator_key().public_key()];
    let trusted: Vec<&str> = trusted.iter().map(String::as_str).collect();
    let r = jwt::decode_from::<serde_json::Value>(token, &trusted);
    assert_eq!(r.is_ok(), trusted.contains(&any.iss.as_str()));
});

//! Signed event envelopes (JWS over CloudEvents): `Verifier::verify` / `check` with a pinned
//! trust set, as the agent, the client session and the control plane (site acks) call them.
//!
//! An input starting with `{` is the envelope body, signed by the harness with the pinned key
//! (`HEADER\nBODY` signs a header of the input's choice), so the body checks are reached.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tillit::envelope::Verifier;
use tillit::proto::AckData;
use tillit_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let owned;
    let token: &str = if data.first() == Some(&b'{') {
        let header = format!(r#"{{"alg":"EdDSA","kid":"{}","typ":"tillit-envelope+jwt"}}"#, envelope_kid());
        let (h, b) = split_header(data, header.as_bytes());
        owned = sign_compact(h, b, account_key());
        &owned
    } else {
        match std::str::from_utf8(data) {
            Ok(s) => s,
            Err(_) => return,
        }
    };
    let kind = peek_claims(token)
        .and_then(|c| c["type"].as_str().map(str::to_string))
        .unwrap_or_else(|| "io.tillit.v1.secret.rotated".to_string());
    let v = Verifier::new(trust_set().clone(), vec!["site:east".into(), envelope_issuer()], 4);
    if kind == tillit::subjects::ENVELOPE_AGENT_ACK {
        let _ = v.check::<AckData>(token, &kind, NOW);
    } else if let Ok(ev) = v.verify::<serde_json::Value>(token, &kind, NOW) {
        assert!(ev.exp > NOW);
        // Its id is now remembered: the same envelope again is a replay.
        assert!(v.verify::<serde_json::Value>(token, &kind, NOW).is_err(), "replayed envelope accepted");
    }
});

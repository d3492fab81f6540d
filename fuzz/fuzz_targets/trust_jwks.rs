//! `trust.jwks` (file input of every identity dir; pushed on trust rotation):
//! `TrustSet::from_jwks`, the control-plane xkey lookup, and `TrustSet::single` on nkey text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tillit::envelope::TrustSet;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = TrustSet::from_jwks(s);
    if let Ok(x) = tillit::client::secrets::control_plane_xkey(s) {
        let _ = nkeys::XKey::from_public_key(&x);
    }
    let _ = TrustSet::single("tillit://example.org", s.trim());
});

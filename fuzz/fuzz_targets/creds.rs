//! `.creds` files: `issuer::creds::parse`, then the seed as the client loads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok((_jwt, seed)) = tillit::issuer::creds::parse(s) else { return };
    assert!(seed.expose().starts_with("SU"));
    let _ = nkeys::KeyPair::from_seed(seed.expose());
});

//! Identity dirs: `identity::load` (and with it `read_info` and the `.creds` parser) on a dir
//! written from the input, then what a client does with the files: connection parameters (TLS
//! key and certificate, user seed), the TLS config over the CA bundle, the CA fingerprint and
//! expiry, the trust set, the secrets opener (xkey seed), and the user JWT.
//!
//! Input: the files' contents separated by NUL bytes, in this order: identity.json, nats.creds,
//! tls/cert.pem, tls/key.pem, tls/ca.pem, trust.jwks, xkey.seed. A missing part is a missing file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tillit::layout::IdentityDir;
use tillit_fuzz::*;

fuzz_target!(|data: &[u8]| {
    let root = scratch("identity").join("id");
    let dir = IdentityDir::new(&root);
    let paths = [dir.identity_json(), dir.creds(), dir.cert(), dir.key(), dir.ca(), dir.trust_jwks(), dir.xkey()];
    let mut parts = data.split(|&b| b == 0);
    for p in &paths {
        put_file(p, parts.next());
    }
    let Ok(files) = tillit::identity::load(&dir) else { return };
    if let Ok(params) = tillit::client::ConnectParams::from_identity(&files, None) {
        let _ = tillit::client::tls::client_config(&files.ca_pem, params.cert.clone());
    }
    let _ = tillit::pem::key_matches(&files.cert_pem, files.key_pem.expose());
    let _ = tillit::issuer::x509::fingerprint(&files.ca_pem);
    let _ = tillit::issuer::x509::not_after(&files.cert_pem);
    if let Some(j) = &files.trust_jwks {
        let _ = tillit::envelope::TrustSet::from_jwks(j);
    }
    let _ = tillit::client::secrets::Opener::new(&files);
    let _ = tillit::issuer::jwt::decode::<tillit::issuer::jwt::UserNats>(&files.user_jwt);
});

//! Interop with tools nobody here wrote: nats-py reads the identity dir; openssl reads the PEM.

use crate::harness::*;

#[test]
fn nats_py_connects_with_the_admin_identity() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/admin_connect.py");
    let out = std::process::Command::new("python3").arg(script).arg(e.admin()).output().expect("python3");
    assert!(
        out.status.success(),
        "nats-py failed (is `pip install nats-py nkeys` done? .ci/run does it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(v["ping_name"], "tillit");
    assert!(v["endpoints"].as_array().unwrap().iter().any(|s| s == "tillit.v1.admin.status"), "{v}");
}

#[test]
fn openssl_reads_every_certificate_and_key() {
    let e = Estate::init("example.org");
    let admin = e.dir.admin();
    let tls = e.dir.nats_tls();
    for (cert, ca) in [(admin.cert(), admin.ca()), (tls.join("cert.pem"), tls.join("ca.pem"))] {
        let out = std::process::Command::new("openssl").arg("verify").arg("-CAfile").arg(&ca).arg(&cert).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for key in [admin.key(), tls.join("key.pem")] {
        let out = std::process::Command::new("openssl").args(["pkey", "-noout", "-in"]).arg(&key).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = std::process::Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(admin.cert()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("URI:spiffe://example.org/tillit/admin/admin"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
}

#[test]
fn nats_py_and_openssl_use_an_enrolled_service_identity() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let token = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let dir = e.tmp.path().join("orders");
    let out = enroll_cli(&token, &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/service_pubsub.py");
    let out = std::process::Command::new("python3").arg(script).arg(&dir).output().expect("python3");
    assert!(out.status.success(), "nats-py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(v["received"], "from nats-py");
    assert_eq!(v["subject"], "shop.orders.hello");
    let errs = v["errors"].to_string().to_lowercase();
    assert!(errs.contains("permissions violation") && errs.contains("elsewhere.secret"), "{v}");

    let tls = dir.join("tls");
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(tls.join("ca.pem"))
        .arg(tls.join("cert.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(tls.join("cert.pem")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("URI:spiffe://example.org/acme/shop/prod/orders"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"));
}

#[test]
fn a_generic_jose_library_verifies_an_envelope_with_trust_jwks() {
    let e = Estate::init("example.org");
    let estate = tillit::estate::Estate::open(e.dir.clone(), std::sync::Arc::new(tillit::clock::SystemClock)).unwrap();
    let signer = estate.envelope_signer().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = signer
        .sign("io.tillit.v1.secret.rotated", "acme/shop/prod/db", "all", 300, Some(1), serde_json::json!({"path": "acme/shop/prod/db", "version": 2}), now)
        .unwrap();
    drop(estate);
    let env_file = e.tmp.path().join("envelope.jws");
    std::fs::write(&env_file, &token).unwrap();
    let jwks = e.dir.admin().trust_jwks();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/verify_envelope.py");
    let out = std::process::Command::new("python3").arg(script).arg(&jwks).arg(&env_file).output().expect("python3");
    assert!(out.status.success(), "joserfc failed (pip install joserfc; .ci/run does it):\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(v["alg"], "EdDSA");
    assert_eq!(v["body"]["type"], "io.tillit.v1.secret.rotated");
    assert_eq!(v["body"]["specversion"], "1.0");
    assert_eq!(v["body"]["source"], "tillit://example.org");
    assert_eq!(v["tampered_refused"], true);
    // And tillit's own verifier, from the same trust.jwks, accepts it once.
    let trust = tillit::envelope::TrustSet::from_jwks(&std::fs::read_to_string(&jwks).unwrap()).unwrap();
    let verifier = tillit::envelope::Verifier::new(trust, vec!["site:east".into()], 100);
    verifier.verify::<serde_json::Value>(&token, "io.tillit.v1.secret.rotated", now).unwrap();
    assert!(verifier.verify::<serde_json::Value>(&token, "io.tillit.v1.secret.rotated", now).is_err(), "replay refused");
}

/// Caller tokens with a JOSE library nobody here wrote (joserfc), from the published key sets:
/// issuer-bound selection (the claimed issuer's set, then the `kid` in it) accepts A's honest
/// token and refuses A's key claiming to be B; naive selection (one set of every service's keys,
/// the key by `kid` alone) accepts the forgery. That is why tillit selects by issuer.
#[test]
fn a_jose_library_verifies_caller_tokens_issuer_bound_and_naive_selection_is_fooled() {
    use tillit::service::{sign, KeySetDoc};
    let (a, b) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let (ia, ib) = ("spiffe://example.org/acme/shop/prod/orders", "spiffe://example.org/acme/shop/prod/billing");
    let callee = "spiffe://example.org/acme/shop/prod/payments";
    let now = tillit::clock::Clock::now_unix(&tillit::clock::SystemClock);
    let set = |iss: &str, k: &nkeys::KeyPair| KeySetDoc { iss: iss.into(), keys: vec![KeySetDoc::jwk(&k.public_key(), now + 3600).unwrap()], revoked: vec![] };
    let cases = serde_json::json!({
        "sets": { ia: set(ia, &a), ib: set(ib, &b) },
        "tokens": {
            "honest": sign(&a, ia, callee, "shop.payments.charge", 30, now).unwrap(),
            "a_signed_as_b": sign(&a, ib, callee, "shop.payments.charge", 30, now).unwrap(),
        },
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, cases.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/verify_caller.py");
    let out = std::process::Command::new("python3").arg(script).arg(&file).output().expect("python3");
    assert!(out.status.success(), "joserfc failed (pip install joserfc; .ci/run does it):\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["honest"], serde_json::json!({ "issuer_bound": true, "naive": true }), "{v}");
    assert_eq!(v["a_signed_as_b"], serde_json::json!({ "issuer_bound": false, "naive": true }), "naive selection must be fooled, bound must not: {v}");
    // tillit's own verifier refuses the forgery, naming why.
    let verifier = tillit::service::Callers::new(callee, "example.org");
    verifier.set_keys(ia, set(ia, &a).key_set());
    verifier.set_keys(ib, set(ib, &b).key_set());
    let forged = cases["tokens"]["a_signed_as_b"].as_str().unwrap();
    let err = verifier.verify(Some(forged), "shop.payments.charge", now).unwrap_err();
    assert!(matches!(err, tillit::service::CallerRefusal::KeyOfAnotherIssuer { .. }), "{err:?}");
}

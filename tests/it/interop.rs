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

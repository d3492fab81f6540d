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

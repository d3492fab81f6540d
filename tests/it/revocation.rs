//! Certificate revocation the server enforces: OCSP (nats-server's ocsp_peer) and the CRL.

use crate::harness::*;
use tillit::layout::IdentityDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_at_the_handshake_even_with_a_valid_jwt() {
    let e = Estate::init("example.org");
    let nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let pay = enroll_one(&e, "acme/shop/prod/payments", "payments");
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    // The CRL as it is before the revocation (`serve` keeps it until a revoking change).
    let crl_text = || {
        let crl = e.tmp.path().join("crl.der");
        let out = std::process::Command::new("curl").arg("-s").arg("-o").arg(&crl).arg(format!("http://127.0.0.1:{}/crl", e.http_port)).status();
        assert!(out.map(|s| s.success()).unwrap_or(false), "curl fetched the CRL");
        let text = std::process::Command::new("openssl").args(["crl", "-inform", "DER", "-noout", "-text", "-in"]).arg(&crl).output().unwrap();
        String::from_utf8_lossy(&text.stdout).to_uppercase()
    };
    // A certificate renewed away is still valid until its notAfter: a revocation reaches it too
    // (listed in the identity's record, not found by reading every serial).
    let before_renewal = e.tmp.path().join("pay-before-renewal");
    std::fs::create_dir_all(before_renewal.join("tls")).unwrap();
    for f in ["cert.pem", "ca.pem"] {
        std::fs::copy(pay.join("tls").join(f), before_renewal.join("tls").join(f)).unwrap();
    }
    let old_serial = tillit::identity::load(&IdentityDir::new(&pay)).unwrap().info.cert_serial;
    let out = tillit(&["renew", "--identity", pay.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let serial = tillit::identity::load(&IdentityDir::new(&pay)).unwrap().info.cert_serial.to_uppercase();
    assert_ne!(serial, old_serial.to_uppercase(), "the renewal issued a new certificate");
    assert!(!crl_text().contains(&serial), "not revoked yet");
    let out = tillit(&["revoke", "acme/shop/prod/payments", "--reason", "key leaked", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Control: orders' own certificate and JWT connect.
    connect_with_cert_of(&nats.url(), &orders, &orders).await.expect("valid cert + valid JWT");
    // The revoked payments certificate with orders' perfectly valid JWT: refused by OCSP.
    let err = connect_with_cert_of(&nats.url(), &pay, &orders).await.expect_err("a revoked certificate must be refused");
    eprintln!("refused: {err}");
    let log = nats.log_text();
    assert!(log.to_lowercase().contains("ocsp") || log.contains("revoked"), "server log says why:\n{log}");

    // openssl reads the OCSP answers (POST) and the CRL.
    let url = format!("http://127.0.0.1:{}/ocsp", e.http_port);
    let check = |dir: &std::path::Path| {
        let tls_dir = dir.join("tls");
        let out = std::process::Command::new("openssl")
            .args(["ocsp", "-issuer"])
            .arg(tls_dir.join("ca.pem"))
            .arg("-cert")
            .arg(tls_dir.join("cert.pem"))
            .args(["-url", &url, "-CAfile"])
            .arg(tls_dir.join("ca.pem"))
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (o, err) = check(&pay);
    assert!(o.contains("cert.pem: revoked"), "{o}\n{err}");
    assert!(err.contains("Response verify OK"), "{err}");
    let (o, err) = check(&before_renewal);
    assert!(o.contains("cert.pem: revoked"), "the certificate renewed away: {o}\n{err}");
    let (o, _) = check(&orders);
    assert!(o.contains("cert.pem: good"), "{o}");

    // GET form: the same request, base64 in the path.
    let req = e.tmp.path().join("req.der");
    let out = std::process::Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(pay.join("tls/ca.pem"))
        .arg("-cert")
        .arg(pay.join("tls/cert.pem"))
        .arg("-reqout")
        .arg(&req)
        .output()
        .unwrap();
    assert!(out.status.success());
    let b64 = data_encoding::BASE64.encode(&std::fs::read(&req).unwrap()).replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
    let (code, _) = http_get(e.http_port, &format!("/ocsp/{b64}")).unwrap();
    assert_eq!(code, 200);

    let (code, _) = http_get(e.http_port, "/crl").unwrap();
    assert_eq!(code, 200);
    // The kept CRL was built again for the revocation.
    let text = crl_text();
    assert!(text.contains(&serial), "CRL lists {serial}:\n{text}");
    // The reason given (`key leaked`) is the CRL's reason code.
    assert!(text.contains("KEY COMPROMISE"), "the CRL says why:\n{text}");
}

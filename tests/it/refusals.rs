//! What must be refused: connections without the right certificate or JWT, bad requests, bad
//! input to the CLI. Each refusal sits beside the accepted case it differs from, so the check
//! can be seen to fail.

use crate::harness::*;
use std::time::Duration;
use tillit::client::{self, tls, ConnectParams};
use tillit::layout::IdentityDir;

fn admin_files(e: &Estate) -> tillit::identity::IdentityFiles {
    tillit::identity::load(&IdentityDir::new(e.admin())).unwrap()
}

/// Connect with the admin's creds and an arbitrary rustls config.
async fn connect_with(url: &str, tls_cfg: rustls::ClientConfig, creds: Option<&str>) -> Result<async_nats::Client, String> {
    let opts = match creds {
        Some(c) => async_nats::ConnectOptions::with_credentials(c).unwrap(),
        None => async_nats::ConnectOptions::new(),
    };
    opts.require_tls(true)
        .tls_client_config(tls_cfg)
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| e.to_string())
}

fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in tls::certs_from_pem(ca_pem).unwrap() {
        r.add(c).unwrap();
    }
    r
}

fn creds_text(f: &tillit::identity::IdentityFiles) -> String {
    tillit::issuer::creds::format(&f.user_jwt, &f.user_seed).expose().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_missing_cert_foreign_cert_missing_jwt_and_foreign_operator() {
    let e = Estate::init("example.org");
    let nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let url = nats.url();
    let files = admin_files(&e);
    let creds = creds_text(&files);

    // Accepted: the admin's own certificate and JWT.
    let own = tls::client_config(&files.ca_pem, tls::SwappableCert::new(tls::certified_key(&files.cert_pem, files.key_pem.expose()).unwrap())).unwrap();
    connect_with(&url, own.clone(), Some(&creds)).await.expect("the real identity connects");

    // 1. No client certificate.
    let no_cert = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&files.ca_pem))
        .with_no_client_auth();
    let err = connect_with(&url, no_cert, Some(&creds)).await.expect_err("no client cert must be refused");
    eprintln!("no cert: {err}");

    // 2. A certificate from another CA (same SPIFFE id, same JWT).
    let other = tillit::issuer::x509::CertAuthority::generate("example.org", now(), now() + 3600).unwrap();
    let other_ca = tillit::issuer::x509::CertAuthority::load(&other.cert_pem, &other.key_pem).unwrap();
    let forged = other_ca.issue_client_with_new_key(&files.info.id, "admin", now(), now() + 3600).unwrap();
    let foreign = tls::client_config(&files.ca_pem, tls::SwappableCert::new(tls::certified_key(&forged.cert_pem, forged.key_pem.expose()).unwrap())).unwrap();
    let err = connect_with(&url, foreign, Some(&creds)).await.expect_err("a foreign CA's cert must be refused");
    eprintln!("foreign cert: {err}");

    // 3. The right certificate but no JWT.
    let err = connect_with(&url, own.clone(), None).await.expect_err("no JWT must be refused");
    assert!(err.to_lowercase().contains("authorization violation"), "{err}");

    // 4. A JWT (and CA) from another operator: a whole second estate's admin.
    let other_estate = Estate::init("example.org");
    let other_files = admin_files(&other_estate);
    let err = connect_with(&url, own.clone(), Some(&creds_text(&other_files))).await.expect_err("a foreign operator's JWT must be refused");
    assert!(err.to_lowercase().contains("authorization violation"), "{err}");

    // tillit saw nats-server's own auth failures ($SYS events): counted and recorded.
    let mut metrics = String::new();
    let counted = wait_for(Duration::from_secs(10), || {
        metrics = http_get(e.http_port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        metrics.contains("tillit_auth_failures_total{reason=")
    });
    assert!(counted.is_some(), "no auth failure counted:\n{metrics}");
    let out = tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "100"]);
    let recorded = stdout(&out).lines().any(|l| l.contains("\"action\":\"connect\"") && l.contains("denied:"));
    assert!(recorded, "no auth failure in the audit log:\n{}", stdout(&out));
    // The server logged the refusals (operators see why a handshake or login failed).
    let log = nats.log_text();
    assert!(log.contains("authentication error") || log.contains("Authorization Violation") || log.contains("TLS handshake error"), "{log}");
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors() {
    use tillit::error::ErrorCode;
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let files = admin_files(&e);
    let nc = client::connect(&ConnectParams::from_identity(&files, None).unwrap()).await.unwrap();
    let signer = nkeys::KeyPair::from_seed(files.user_seed.expose()).unwrap();
    let subject = tillit::proto::Status::SUBJECT;
    let kind = "io.tillit.v1.admin.status";

    async fn ask(nc: &async_nats::Client, subject: &str, payload: Vec<u8>) -> serde_json::Value {
        let m = nc.request(subject.to_string(), payload.into()).await.expect("a reply, not a timeout");
        serde_json::from_slice(&m.payload).expect("JSON reply")
    }
    let code = |v: &serde_json::Value| v["error"]["code"].as_str().unwrap_or("none").to_string();

    // Accepted.
    let good = tillit::proto::sign_request(&signer, "example.org", subject, kind, serde_json::json!({}), now()).unwrap();
    let v = ask(&nc, subject, good.clone().into_bytes()).await;
    assert_eq!(v["result"]["trust_domain"], "example.org", "{v}");
    // The same request again: replay.
    assert_eq!(code(&ask(&nc, subject, good.into_bytes()).await), ErrorCode::Replayed.as_str());
    // Garbage bytes.
    assert_eq!(code(&ask(&nc, subject, vec![0xff, 0x00, 0x13]).await), "bad_request");
    assert_eq!(code(&ask(&nc, subject, b"{\"json\": true}".to_vec()).await), "bad_request");
    // Oversized.
    assert_eq!(code(&ask(&nc, subject, vec![b'a'; 70 * 1024]).await), "too_large");
    // Signed by a key that belongs to no identity.
    let stranger = nkeys::KeyPair::new_user();
    let t = tillit::proto::sign_request(&stranger, "example.org", subject, kind, serde_json::json!({}), now()).unwrap();
    assert_eq!(code(&ask(&nc, subject, t.into_bytes()).await), "unauthenticated");
    // For another trust domain.
    let t = tillit::proto::sign_request(&signer, "other.org", subject, kind, serde_json::json!({}), now()).unwrap();
    assert_eq!(code(&ask(&nc, subject, t.into_bytes()).await), "unauthenticated");
    // Expired.
    let t = tillit::proto::sign_request(&signer, "example.org", subject, kind, serde_json::json!({}), now() - 600).unwrap();
    assert_eq!(code(&ask(&nc, subject, t.into_bytes()).await), "expired");
    // Unknown body fields.
    let t = tillit::proto::sign_request(&signer, "example.org", subject, kind, serde_json::json!({"all": true}), now()).unwrap();
    assert_eq!(code(&ask(&nc, subject, t.into_bytes()).await), "bad_request");
    // The micro-protocol error headers ride along.
    let m = nc.request(subject.to_string(), vec![1u8, 2, 3].into()).await.unwrap();
    let h = m.headers.expect("error headers");
    assert_eq!(h.get(tillit::subjects::HDR_SERVICE_ERROR_CODE).map(|v| v.as_str()), Some("400"));
}

#[test]
fn bad_cli_input_is_one_clear_line_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let ds = d.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["init", "--data-dir", ds, "--trust-domain", "Bad Domain", "--nats-url", "nats://127.0.0.1:4222"], "trust domain"),
        (&["init", "--data-dir", ds, "--trust-domain", "td", "--nats-url", "http://127.0.0.1:4222"], "NATS URL"),
        (&["init", "--data-dir", ds, "--trust-domain", "td", "--nats-url", "nats://127.0.0.1:99999"], "NATS URL"),
        (&["init", "--data-dir", ds, "--trust-domain", "td", "--http-addr", "nowhere"], "http.addr"),
    ];
    for (args, needle) in cases {
        let out = tillit(args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!d.exists(), "{args:?} wrote {ds}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no staging dir left");
    }
    // A malformed flag: clap's usage error, exit 2.
    let out = tillit(&["init", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    // A dir that is not ours is never overwritten.
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("precious.txt"), "x").unwrap();
    let out = tillit(&["init", "--data-dir", ds, "--trust-domain", "td", "--force"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a tillit data dir"), "{}", stderr(&out));
    assert!(d.join("precious.txt").exists());
}

#[test]
fn serve_refuses_bad_master_keys_and_mismatched_trust_domains() {
    use std::os::unix::fs::PermissionsExt;
    let e = Estate::init("example.org");
    let run = |env: &[(&str, &str)]| {
        let out = tillit_env(&["serve", "--data-dir", e.data()], env);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        err
    };
    let other = "11".repeat(32);
    assert!(run(&[("TILLIT_MASTER_KEY", &other)]).contains("master key does not open"));
    assert!(run(&[("TILLIT_MASTER_KEY", "zz")]).contains("malformed"));
    let key = e.dir.master_key();
    let good = std::fs::read(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(run(&[]).contains("chmod 600"));
    std::fs::write(&key, "not hex at all").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(run(&[]).contains("malformed"));
    std::fs::remove_file(&key).unwrap();
    assert!(run(&[]).contains("master key not found"));
    std::fs::write(&key, &good).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Config from another trust domain.
    let cfg = e.dir.config_file();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("example.org", "other.org")).unwrap();
    let err = run(&[]);
    assert!(err.contains("belongs to trust domain \"example.org\""), "{err}");
    std::fs::write(&cfg, text).unwrap();
    // Not a data dir at all.
    let empty = tempfile::tempdir().unwrap();
    let out = tillit(&["serve", "--data-dir", empty.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tillit.toml"), "{}", stderr(&out));
}

#[test]
fn status_against_an_unreachable_server_says_so() {
    let e = Estate::init("example.org");
    let out = tillit(&["status", "--identity", &e.admin()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("connection refused") && err.contains(&e.nats_url()), "{err}");
    let out = tillit(&["status", "--identity", "/nonexistent/identity"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no such directory"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_changes_and_refusals_and_detects_tampering() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let token = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let dir = e.tmp.path().join("svc");
    assert!(enroll_cli(&token, &dir).status.success());
    assert!(!enroll_cli(&token, &e.tmp.path().join("again")).status.success());
    assert!(tillit(&["renew", "--identity", dir.to_str().unwrap()]).status.success());
    // A service calling an admin subject directly (it may publish tillit.v1.svc.> only, so the
    // refusal is the server's; sign a request as the service to the admin endpoint through the
    // admin's connection to reach the control plane).
    let svc = tillit::identity::load(&tillit::layout::IdentityDir::new(&dir)).unwrap();
    let admin = tillit::identity::load(&tillit::layout::IdentityDir::new(e.admin())).unwrap();
    let nc = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&admin, None).unwrap()).await.unwrap();
    let signer = nkeys::KeyPair::from_seed(svc.user_seed.expose()).unwrap();
    let t = tillit::proto::sign_request(&signer, "example.org", "tillit.v1.admin.status", "io.tillit.v1.admin.status", serde_json::json!({}), now()).unwrap();
    let m = nc.request("tillit.v1.admin.status", t.into_bytes().into()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["error"]["code"], "forbidden", "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "50"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recs: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |action: &str, outcome: &str| recs.iter().any(|r| r["action"] == action && r["outcome"].as_str().unwrap().starts_with(outcome));
    assert!(has("init", "ok"), "{recs:?}");
    assert!(has("token.create", "ok"));
    assert!(has("enroll", "ok"));
    assert!(has("enroll", "denied:token_used"));
    assert!(has("renew", "ok"));
    assert!(has("status", "denied:forbidden"));
    for r in &recs {
        for k in ["seq", "time", "actor", "action", "target", "outcome", "prev"] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        assert!(!r.to_string().contains(&svc.user_seed.expose()[..20]), "no secrets in the audit log");
    }
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("audit chain ok"));

    // Tampering is found and named, while serve keeps running.
    let path = e.dir.audit().join("audit.jsonl");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, original.replacen("\"enroll\"", "\"enro11\"", 1)).unwrap();
    let out = tillit(&["audit", "verify", "--data-dir", e.data(), "--json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert!(stderr(&out).contains("audit chain broken at line"), "{}", stderr(&out));
    let lines: Vec<&str> = original.lines().collect();
    let deleted: String = lines.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| format!("{l}\n")).collect();
    std::fs::write(&path, deleted).unwrap();
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(stderr(&out).contains("line 3") && stderr(&out).contains("expected seq 3"), "deleted: {}", stderr(&out));
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    std::fs::write(&path, swapped.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(stderr(&out).contains("line 3"), "reordered: {}", stderr(&out));
    std::fs::write(&path, &original).unwrap();
    assert!(tillit(&["audit", "verify", "--data-dir", e.data()]).status.success());
}

#[test]
fn an_admin_command_with_a_service_identity_is_refused_at_once() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let started = std::time::Instant::now();
    let out = tillit(&["list", "--identity", orders.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not an admin's"), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(stderr(&out).lines().filter(|l| !l.trim().is_empty()).count(), 1, "{}", stderr(&out));
}

/// A read slower than one attempt (a page of a large listing, `audit verify`): the client asks
/// again with a request signed afresh, never the same bytes (which the control plane refuses as
/// `replayed`: it keeps no reply of a read), and still takes the first attempt's reply when that
/// one finishes first. Against a real nats-server and a responder on the verb's subject that
/// applies the control plane's replay rule (the first request takes 3 s, the next 6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_is_asked_again_signed_afresh_and_the_first_reply_still_counts() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("plain.conf");
    std::fs::write(&conf, format!("listen: \"127.0.0.1:{port}\"\n")).unwrap();
    let server = NatsServer::start(&conf, port);
    let nc = async_nats::connect(server.url()).await.unwrap();
    let mut sub = nc.subscribe(tillit::proto::List::SUBJECT).await.unwrap();
    let responder = nc.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let seen_by = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let (nc, seen) = (responder.clone(), seen_by.clone());
            tokio::spawn(async move {
                let (first, replay) = {
                    let mut s = seen.lock().unwrap();
                    let replay = s.iter().any(|p| p[..] == m.payload[..]);
                    s.push(m.payload.to_vec());
                    (s.len() == 1, replay)
                };
                let reply = if replay {
                    r#"{"error":{"code":"replayed","message":"this request id was already used"}}"#.to_string()
                } else {
                    tokio::time::sleep(Duration::from_secs(if first { 3 } else { 6 })).await;
                    format!(r#"{{"result":"{}"}}"#, String::from_utf8_lossy(&m.payload))
                };
                let _ = nc.publish(m.reply.unwrap(), reply.into()).await;
            });
        }
    });
    let n = std::sync::atomic::AtomicUsize::new(0);
    let sign = || Ok(format!("signed-request-{}", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
    let started = std::time::Instant::now();
    let got: String = tillit::client::call::read(&nc, tillit::proto::List::SUBJECT, sign).await.expect("the read is answered");
    let took = started.elapsed();
    assert_eq!(got, "signed-request-0", "the first attempt's reply");
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_millis(5000), "{took:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one more attempt while the first was slow: {seen:?}");
    assert_ne!(seen[0], seen[1], "the same bytes were sent again");
}

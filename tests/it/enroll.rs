//! Enrollment over request-reply: join tokens, scoped user JWTs, TLS client certificates,
//! renewal, and every refusal, against a real nats-server.

use crate::harness::*;
use futures::StreamExt;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tillit::client::enroll::{bootstrap_params, LocalKeys};
use tillit::client::session::Session;
use tillit::clock::{Clock, ManualClock, SystemClock};
use tillit::layout::IdentityDir;
use tillit::proto::EnrollRequest;
use tillit::token::JoinToken;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A raw connection as an identity dir, with server errors collected.
async fn raw_connect(dir: &IdentityDir) -> (async_nats::Client, Arc<std::sync::Mutex<Vec<String>>>) {
    let files = tillit::identity::load(dir).unwrap();
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let errs = errors.clone();
    let tls = tillit::client::tls::client_config(
        &files.ca_pem,
        tillit::client::tls::SwappableCert::new(tillit::client::tls::certified_key(&files.cert_pem, files.key_pem.expose()).unwrap()),
    )
    .unwrap();
    let creds = tillit::issuer::creds::format(&files.user_jwt, &files.user_seed);
    let nc = async_nats::ConnectOptions::with_credentials(creds.expose())
        .unwrap()
        .require_tls(true)
        .tls_client_config(tls)
        .custom_inbox_prefix(&files.info.inbox_prefix)
        .event_callback(move |ev| {
            let errs = errs.clone();
            async move {
                if let async_nats::Event::ServerError(e) = ev {
                    errs.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(files.info.nats_urls[0].as_str())
        .await
        .expect("connect as enrolled identity");
    (nc, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_services_connect_in_their_namespace_and_tenants_are_isolated() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let tokens = create_tokens(&e, "acme/shop/prod/orders", 2, "15m");
    let globex_token = create_tokens(&e, "globex/shop/prod/orders", 1, "15m").remove(0);

    let a1 = e.tmp.path().join("orders-1");
    let out = enroll_cli(&tokens[0], &a1);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("spiffe://example.org/acme/shop/prod/orders"));
    let a2 = e.tmp.path().join("orders-2");
    assert!(enroll_cli(&tokens[1], &a2).status.success());
    let g = e.tmp.path().join("globex-orders");
    assert!(enroll_cli(&globex_token, &g).status.success());

    // The identity dir contract.
    let d = IdentityDir::new(&a1);
    for p in [d.creds(), d.cert(), d.key(), d.ca(), d.trust_jwks(), d.identity_json(), d.xkey()] {
        assert!(p.is_file(), "{} missing", p.display());
    }
    assert_eq!(mode(&d.creds()), 0o600);
    assert_eq!(mode(&d.key()), 0o600);
    assert_eq!(mode(&d.xkey()), 0o600);
    assert_eq!(mode(d.root()), 0o700);
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(d.identity_json()).unwrap()).unwrap();
    assert_eq!(info["id"], "spiffe://example.org/acme/shop/prod/orders");
    assert_eq!(info["account"], "acme-prod");
    let jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(d.trust_jwks()).unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    // The JWT: scoped (no permissions of its own), not bearer, expiring with the certificate.
    let files = tillit::identity::load(&d).unwrap();
    let claims: tillit::issuer::jwt::Claims<tillit::issuer::jwt::UserNats> = tillit::issuer::jwt::decode(&files.user_jwt).unwrap();
    assert!(!claims.nats.bearer_token);
    assert!(claims.nats.permissions.publish.allow.is_empty() && claims.nats.permissions.subscribe.allow.is_empty());
    assert_eq!(claims.exp, Some(tillit::issuer::x509::not_after(&files.cert_pem).unwrap()));
    assert_eq!(claims.exp.unwrap() - claims.iat, 86_400, "default validity 24h");

    // In its namespace: works. Two instances of the same service see each other.
    let (c1, errs1) = raw_connect(&d).await;
    let (c2, _) = raw_connect(&IdentityDir::new(&a2)).await;
    let (cg, _) = raw_connect(&IdentityDir::new(&g)).await;
    let mut s2 = c2.subscribe("shop.orders.>").await.unwrap();
    let mut sg = cg.subscribe("shop.orders.>").await.unwrap();
    barrier(&c2).await;
    barrier(&cg).await;
    c1.publish("shop.orders.created", "o-1".into()).await.unwrap();
    c1.flush().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), s2.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], b"o-1");
    // Another tenant never sees it.
    assert!(tokio::time::timeout(Duration::from_millis(500), sg.next()).await.is_err(), "globex saw acme's message");
    // Outside the namespace: a permissions violation, and nothing delivered.
    let mut other = c2.subscribe("shop.payments.>").await.unwrap();
    barrier(&c2).await;
    c1.publish("shop.payments.charged", "x".into()).await.unwrap();
    c1.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let errs = errs1.lock().unwrap().clone();
    assert!(errs.iter().any(|e| e.to_lowercase().contains("permissions violation") && e.contains("shop.payments.charged")), "{errs:?}");
    assert!(tokio::time::timeout(Duration::from_millis(200), other.next()).await.is_err());

    // Status counts them.
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["counts"]["identities"], 4, "admin + 3 services");
    assert_eq!(s["accounts"]["acme-prod"]["kind"], "tenant");
    assert_eq!(s["accounts"]["globex-prod"]["kind"], "tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_refusals_are_typed_and_change_nothing() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let clock = Arc::new(ManualClock::new(SystemClock.now_unix()));
    let serve = InProcessServe::start(&e, clock.clone()).await;
    let token_text = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let token = JoinToken::decode(&token_text).unwrap();
    let nc = tillit::client::connect(&bootstrap_params(&token, token.nats_urls.clone()).unwrap()).await.unwrap();
    let keys = LocalKeys::generate().unwrap();
    let good_body = || keys.enroll_request(&token);
    let sign = |kp: &nkeys::KeyPair, body: EnrollRequest| {
        tillit::proto::sign_request(kp, "example.org", "tillit.v1.enroll", "io.tillit.v1.enroll", body, clock.now_unix()).unwrap()
    };
    async fn ask(nc: &async_nats::Client, payload: Vec<u8>) -> String {
        let m = nc.request("tillit.v1.enroll", payload.into()).await.expect("a reply");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        v["error"]["code"].as_str().map(str::to_string).unwrap_or_else(|| format!("ok: {v}"))
    }
    let identities_before = count_identities(&e);

    // Garbage, oversized.
    assert_eq!(ask(&nc, b"\x00\xffgarbage".to_vec()).await, "bad_request");
    assert_eq!(ask(&nc, vec![b'x'; 100 * 1024]).await, "too_large");
    // A tampered secret.
    let mut b = good_body();
    b.token_secret = data_encoding::BASE64URL_NOPAD.encode(&[9u8; 32]);
    assert_eq!(ask(&nc, sign(&keys.user, b).into_bytes()).await, "token_invalid");
    // An unknown token id.
    let mut b = good_body();
    b.token_id = "NOSUCHTOKEN".into();
    assert_eq!(ask(&nc, sign(&keys.user, b).into_bytes()).await, "token_invalid");
    // The token for orders used to claim payments.
    let mut b = good_body();
    b.identity = tillit::names::ServiceId::parse("acme/shop/prod/payments").unwrap();
    assert_eq!(ask(&nc, sign(&keys.user, b).into_bytes()).await, "forbidden");
    // No valid proof of possession: claims name one nkey, signed by another.
    let other = nkeys::KeyPair::new_user();
    let claims = tillit::proto::RequestClaims {
        jti: "pop-1".into(),
        iat: clock.now_unix(),
        exp: clock.now_unix() + 60,
        iss: keys.user.public_key(),
        aud: "tillit:example.org".into(),
        sub: "tillit.v1.enroll".into(),
        kind: "io.tillit.v1.enroll".into(),
        body: good_body(),
    };
    let forged = tillit::issuer::jwt::encode_any(&claims, &other).unwrap();
    assert_eq!(ask(&nc, forged.into_bytes()).await, "unauthenticated");
    // A CSR whose key is bound to another nkey than the one proving possession.
    let (foreign_csr, _) = tillit::issuer::x509::make_csr(&other.public_key()).unwrap();
    let mut b = good_body();
    b.csr = foreign_csr;
    let code = ask(&nc, sign(&keys.user, b).into_bytes()).await;
    assert_eq!(code, "bad_request");
    // A CSR that does not parse, an all-zero xkey.
    let mut b = good_body();
    b.csr = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    assert_eq!(ask(&nc, sign(&keys.user, b).into_bytes()).await, "bad_request");
    // The same signed request twice: the second is a replay.
    let mut b = good_body();
    b.identity = tillit::names::ServiceId::parse("acme/shop/prod/payments").unwrap();
    let once = sign(&keys.user, b);
    assert_eq!(ask(&nc, once.clone().into_bytes()).await, "forbidden");
    assert_eq!(ask(&nc, once.into_bytes()).await, "replayed");

    // Nothing was issued or burned: the token still works.
    assert_eq!(count_identities(&e), identities_before);
    let out_dir = e.tmp.path().join("svc");
    let info = tillit::client::enroll::enroll(&token_text, &out_dir, None, clock.clone()).await.expect("token still good");
    assert_eq!(info.service.unwrap().to_string(), "acme/shop/prod/orders");
    // Reuse.
    let err = tillit::client::enroll::enroll(&token_text, &e.tmp.path().join("again"), None, clock.clone()).await.unwrap_err();
    assert!(err.to_string().contains("token_used"), "{err}");
    assert!(!e.tmp.path().join("again").exists(), "nothing written on refusal");

    // Expired: a fresh token, then time passes. (The bootstrap connection is made first: the
    // OCSP answers nats-server checks carry the control plane's clock, which jumped ahead.)
    let t2 = create_tokens(&e, "acme/shop/prod/orders", 1, "1m").remove(0);
    let t2 = JoinToken::decode(&t2).unwrap();
    let nc2 = tillit::client::connect(&bootstrap_params(&t2, t2.nats_urls.clone()).unwrap()).await.unwrap();
    clock.advance(120);
    let keys2 = LocalKeys::generate().unwrap();
    let body = keys2.enroll_request(&t2);
    let late = tillit::proto::sign_request(&keys2.user, "example.org", "tillit.v1.enroll", "io.tillit.v1.enroll", body, clock.now_unix()).unwrap();
    assert_eq!(ask(&nc2, late.into_bytes()).await, "token_expired");
    serve.stop().await;
    assert_eq!(count_identities(&e), identities_before + 1);
}

fn count_identities(e: &Estate) -> usize {
    // Read through the CLI would need serve; the store is locked by serve, so count via status.
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    if out.status.success() {
        let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        return s["counts"]["identities"].as_u64().unwrap() as usize;
    }
    let estate = tillit::estate::Estate::open(e.dir.clone(), Arc::new(SystemClock)).unwrap();
    estate.identity_count().unwrap()
}

#[test]
fn a_damaged_token_is_refused_before_anything_is_written() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let token = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let mut chars: Vec<char> = token.chars().collect();
    let i = chars.len() / 3;
    chars[i] = if chars[i] == 'Q' { 'R' } else { 'Q' };
    let damaged: String = chars.into_iter().collect();
    let out_dir = e.tmp.path().join("svc");
    let out = enroll_cli(&damaged, &out_dir);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("token"), "{err}");
    assert!(!out_dir.exists());
    let out = tillit(&["enroll", "--out", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no join token"), "{}", stderr(&out));
    // The genuine token still enrolls, via TILLIT_TOKEN.
    let out = tillit_env(&["enroll", "--out", out_dir.to_str().unwrap()], &[("TILLIT_TOKEN", &token)]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_tokens_bootstrap_user_is_revoked() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let token_text = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let token = JoinToken::decode(&token_text).unwrap();
    let params = bootstrap_params(&token, token.nats_urls.clone()).unwrap();
    tillit::client::connect(&params).await.expect("bootstrap creds connect before use");
    assert!(enroll_cli(&token_text, &e.tmp.path().join("svc")).status.success());
    let mut refused = None;
    for _ in 0..100 {
        match tillit::client::connect(&params).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(err) => {
                refused = Some(err.to_string());
                break;
            }
        }
    }
    let err = refused.expect("bootstrap user still connects 5s after its token was used");
    assert!(err.contains("authorization violation"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_control_plane_restart() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    let token = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    assert!(serve.terminate(Duration::from_secs(10)).success());
    let _serve = e.start_serve_ready();
    let out = enroll_cli(&token, &e.tmp.path().join("svc"));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_publishing_client_connected_with_no_message_lost() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let tokens = create_tokens(&e, "acme/shop/prod/orders", 2, "15m");
    let pub_dir = IdentityDir::new(e.tmp.path().join("publisher"));
    let sub_dir = IdentityDir::new(e.tmp.path().join("subscriber"));
    assert!(enroll_cli(&tokens[0], pub_dir.root()).status.success());
    assert!(enroll_cli(&tokens[1], sub_dir.root()).status.success());

    let publisher = Session::connect(&pub_dir, None).await.unwrap();
    let subscriber = Session::connect(&sub_dir, None).await.unwrap();
    let mut sub = subscriber.client().subscribe("shop.orders.seq").await.unwrap();
    barrier(&subscriber.client()).await;

    let before = tillit::identity::load(&pub_dir).unwrap();
    const N: u32 = 3000;
    let client = publisher.client();
    let pub_task = tokio::spawn(async move {
        for i in 0..N {
            client.publish("shop.orders.seq", i.to_string().into()).await.unwrap();
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        client.flush().await.unwrap();
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        publisher.renew_now().await.expect("renewal");
    }
    pub_task.await.unwrap();
    let mut next = 0u32;
    while next < N {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("lost messages: received {next} of {N}"))
            .unwrap();
        let got: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        assert_eq!(got, next, "in order, none lost");
        next += 1;
    }
    let after = tillit::identity::load(&pub_dir).unwrap();
    assert_ne!(after.info.cert_serial, before.info.cert_serial, "new certificate");
    assert_ne!(after.key_pem.expose(), before.key_pem.expose(), "new TLS key");
    assert_ne!(after.user_jwt, before.user_jwt, "new JWT");
    assert_eq!(after.info.user_public_key, before.info.user_public_key, "same nkey");
    assert_eq!(publisher.identity().cert_serial, after.info.cert_serial);
    let c = publisher.client();
    let mut connected = false;
    for _ in 0..100 {
        if c.connection_state() == async_nats::connection::State::Connected {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(connected, "the publisher is connected again after its renewals");
    // The renewed files work for a fresh connection too (what `tillit renew` leaves on disk).
    raw_connect(&pub_dir).await;
    // And the CLI renews in place.
    let out = tillit(&["renew", "--identity", pub_dir.root().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(tillit::identity::load(&pub_dir).unwrap().info.cert_serial, after.info.cert_serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_identities_cannot_renew() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let clock = Arc::new(ManualClock::new(SystemClock.now_unix()));
    let _serve = InProcessServe::start(&e, clock.clone()).await;
    let token = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let dir = IdentityDir::new(e.tmp.path().join("svc"));
    tillit::client::enroll::enroll(&token, dir.root(), None, clock.clone()).await.unwrap();
    let session = Session::connect_with_clock(&dir, None, clock.clone()).await.unwrap();
    session.renew_now().await.expect("renews while valid");
    clock.advance(2 * 86_400);
    let err = session.renew_now().await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_entry_point_loads_and_connects() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let dir = enroll_one(&e, "acme/shop/prod/orders", "svc");
    let id = tillit::client::Identity::load(&dir).unwrap();
    assert_eq!(id.info().service.as_ref().unwrap().to_string(), "acme/shop/prod/orders");
    let session = id.connect().await.unwrap();
    let mut sub = session.client().subscribe("shop.orders.>").await.unwrap();
    session.client().publish("shop.orders.x", "1".into()).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().is_some());
    // A damaged key is refused at load time, with the file named.
    std::fs::write(dir.join("tls/key.pem"), "not a key").unwrap();
    let err = tillit::client::Identity::load(&dir).unwrap_err().to_string();
    assert!(err.contains("key"), "{err}");
}

#[test]
fn enrolling_into_a_missing_directory_keeps_the_token_unused() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let token = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let deep = e.tmp.path().join("no/such/dir/orders");
    let file = e.tmp.path().join("orders.token");
    std::fs::write(&file, &token).unwrap();
    let out = tillit(&["enroll", "--token-file", file.to_str().unwrap(), "--out", deep.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist") && stderr(&out).contains("still unused"), "{}", stderr(&out));
    assert!(!e.tmp.path().join("no").exists(), "the path was created");
    // The token still enrolls where the directory exists.
    let out = enroll_cli(&token, &e.tmp.path().join("orders"));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_reused_or_expired_token_says_token_used_or_token_expired() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let token = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    assert!(enroll_cli(&token, &e.tmp.path().join("first")).status.success());
    // Once the bootstrap credentials are revoked (a few seconds after use), the server refuses
    // them at connect: the user still hears `token_used`.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let out = enroll_cli(&token, &e.tmp.path().join("second"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token_used"), "{}", stderr(&out));
    // A token past its expiry (as it would be after its TTL) is refused before anything is sent.
    let fresh = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let mut t = tillit::token::JoinToken::decode(&fresh).unwrap();
    t.expires_at = 1_000_000_000;
    let out = enroll_cli(t.encode().expose(), &e.tmp.path().join("third"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token_expired"), "{}", stderr(&out));
}

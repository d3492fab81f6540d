//! Secrets end to end: sealed writes, sealed reads, versions, and every refusal.

use crate::harness::*;
use tillit::client::Identity;

fn put(e: &Estate, path: &str, value: &str, readers: &[&str]) -> std::process::Output {
    secret_put(e, path, value, readers)
}

fn get(dir: &std::path::Path, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["secret", "get", name, "--identity", dir.to_str().unwrap()];
    args.extend(extra);
    tillit(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_get_sealed_values_and_versions() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let out = put(&e, "acme/shop/prod/db-password", "hunter2-v1", &["acme/shop/prod/orders"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // By bare name and by path, through the CLI and the library.
    let out = get(&orders, "db-password", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hunter2-v1");
    let session = Identity::load(&orders).unwrap().connect().await.unwrap();
    assert_eq!(session.secret("acme/shop/prod/db-password").await.unwrap().expose(), "hunter2-v1");

    // Rotate with a given value, then with a generated one.
    let file = e.tmp.path().join("v2");
    std::fs::write(&file, "hunter2-v2").unwrap();
    let out = tillit(&["secret", "rotate", "acme/shop/prod/db-password", "--value-file", file.to_str().unwrap(), "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&get(&orders, "db-password", &[])), "hunter2-v2");
    let out = tillit(&["secret", "rotate", "acme/shop/prod/db-password", "--generate", "32", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v3: serde_json::Value = serde_json::from_str(&stdout(&get(&orders, "db-password", &["--json"]))).unwrap();
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["value"].as_str().unwrap().len(), 43, "32 random bytes, base64url");
    assert_eq!(stdout(&get(&orders, "db-password", &["--version", "1"])), "hunter2-v1");

    // Metadata lists versions, never values.
    let out = tillit(&["secret", "versions", "acme/shop/prod/db-password", "--identity", &e.admin(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 3);
    let out = tillit(&["secret", "list", "acme/", "--identity", &e.admin(), "--json"]);
    assert!(stdout(&out).contains("acme/shop/prod/db-password") && !stdout(&out).contains("hunter2"));

    // Nothing in clear at rest.
    for entry in walk(e.dir.store()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(8).any(|w| w == b"hunter2-"), "plaintext at rest in {}", entry.display());
    }
    // Every read and write is in the audit log.
    let out = tillit(&["audit", "tail", "--data-dir", e.data(), "-n", "100", "--json"]);
    let audit = stdout(&out);
    for action in ["secret.put", "secret.rotate", "secret.get"] {
        assert!(audit.contains(&format!("\"action\":\"{action}\"")), "{action} not audited");
    }
    assert!(!audit.contains("hunter2"));

    // Delete: then nobody reads it.
    assert!(tillit(&["secret", "delete", "acme/shop/prod/db-password", "--identity", &e.admin()]).status.success());
    assert!(stderr(&get(&orders, "db-password", &[])).contains("forbidden"));
}

fn walk(dir: std::path::PathBuf) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_refusals_leak_nothing_and_change_nothing() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let payments = enroll_one(&e, "acme/shop/prod/payments", "payments");
    let orders_test = enroll_one(&e, "acme/shop/test/orders", "orders-test");
    let globex = enroll_one(&e, "globex/shop/prod/orders", "globex");
    assert!(put(&e, "acme/shop/prod/db", "s3cret-value", &["acme/shop/prod/orders"]).status.success());

    // Another service in the same env, the same service in another env, another tenant: refused,
    // and the answer is the same as for a secret that does not exist.
    for (dir, name) in [(&payments, "acme/shop/prod/db"), (&orders_test, "acme/shop/prod/db"), (&globex, "acme/shop/prod/db"), (&orders, "acme/shop/prod/nope")] {
        let out = get(dir, name, &[]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
        assert!(!stdout(&out).contains("s3cret"));
    }
    // Bad paths; unknown version.
    for bad in ["../db", "acme/shop/prod/*", "acme/shop/prod/a.b"] {
        let out = get(&orders, bad, &[]);
        assert!(stderr(&out).contains("bad_request"), "{bad}: {}", stderr(&out));
    }
    assert!(stderr(&get(&orders, "db", &["--version", "9"])).contains("not_found"));
    // Writes: readers may not cross tenant or env; paths are checked; values are bounded.
    assert!(stderr(&put(&e, "acme/shop/prod/x", "v", &["acme/shop/test/orders"])).contains("never cross"));
    assert!(stderr(&put(&e, "acme/shop/prod/x", "v", &["globex/shop/prod/*"])).contains("never cross"));
    assert!(!put(&e, "acme/shop/prod/../x", "v", &["acme/shop/prod/orders"]).status.success());
    assert!(stderr(&put(&e, "acme/shop/prod/db", "again", &["acme/shop/prod/orders"])).contains("conflict"));
    let big = "x".repeat(40 * 1024);
    let out = put(&e, "acme/shop/prod/big", &big, &["acme/shop/prod/orders"]);
    assert!(stderr(&out).contains("at most 32768 bytes"), "{}", stderr(&out));
    // A revoked reader reads nothing.
    assert!(tillit(&["revoke", "acme/shop/prod/orders", "--identity", &e.admin()]).status.success());
    let out = get(&orders, "db", &[]);
    assert!(!out.status.success() && !stdout(&out).contains("s3cret"));
    // Nothing changed: still one version.
    let out = tillit(&["secret", "versions", "acme/shop/prod/db", "--identity", &e.admin(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["current_version"], 1);
    let out = tillit(&["secret", "list", "--identity", &e.admin(), "--json"]);
    let l: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(l["secrets"].as_array().unwrap().len(), 1, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_cross_the_broker_in_clear() {
    let e = Estate::init("example.org");
    // nats-server -V logs every message payload it routes.
    let nats = NatsServer::start_args(&e.dir.server_conf(), e.nats_port, &["-V"]);
    let _serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let session = Identity::load(&orders).unwrap().connect().await.unwrap();
    // Control: a payload published in clear does appear in the trace.
    let canary = "CANARY-IN-CLEAR-7f3a";
    session.client().publish("shop.orders.canary", canary.into()).await.unwrap();
    barrier(&session.client()).await;
    let secret = "TOP-SECRET-VALUE-91c2";
    assert!(put(&e, "acme/shop/prod/db", secret, &["acme/shop/prod/orders"]).status.success());
    assert_eq!(session.secret("db").await.unwrap().expose(), secret);
    let file = e.tmp.path().join("v2");
    std::fs::write(&file, format!("{secret}-v2")).unwrap();
    assert!(tillit(&["secret", "rotate", "acme/shop/prod/db", "--value-file", file.to_str().unwrap(), "--identity", &e.admin()]).status.success());
    assert_eq!(stdout(&get(&orders, "db", &[])), format!("{secret}-v2"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = nats.log_text();
    assert!(log.contains(canary), "the trace shows payloads (control)");
    assert!(log.contains("tillit.v1.svc.secret.get"), "the reads went through this server");
    assert!(!log.contains(secret), "a secret value crossed the broker in clear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_are_broadcast_as_signed_envelopes_without_the_value() {
    use futures::StreamExt;
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let (admin, nc) = admin_connect(&e).await;
    let mut events = nc.subscribe("tillit.v1.events.>").await.unwrap();
    barrier(&nc).await;
    assert!(put(&e, "acme/shop/prod/db", "value-one", &["acme/shop/prod/orders", "site:east"]).status.success());
    assert!(tillit(&["secret", "rotate", "acme/shop/prod/db", "--generate", "16", "--identity", &e.admin()]).status.success());
    let trust = tillit::envelope::TrustSet::from_jwks(admin.trust_jwks.as_deref().unwrap()).unwrap();
    let verifier = tillit::envelope::Verifier::new(trust, vec!["site:east".into()], 100);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut seqs = vec![];
    for want_version in [1, 2] {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await.unwrap().unwrap();
        assert_eq!(m.subject.as_str(), "tillit.v1.events.east.secret.rotated");
        let token = std::str::from_utf8(&m.payload).unwrap();
        assert!(!token.contains("value-one"));
        let ev: tillit::envelope::Event<serde_json::Value> = verifier.verify(token, "io.tillit.v1.secret.rotated", now).unwrap();
        assert_eq!(ev.data["path"], "acme/shop/prod/db");
        assert_eq!(ev.data["version"], want_version);
        assert!(ev.data.get("value").is_none());
        assert_eq!(ev.aud, "site:east");
        seqs.push(ev.seq.unwrap());
    }
    assert_eq!(seqs[1], seqs[0] + 1, "stream sequence in the envelope");
    // A revocation is announced to all.
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let _ = orders;
    assert!(tillit(&["revoke", "acme/shop/prod/orders", "--identity", &e.admin()]).status.success());
    let m = loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await.unwrap().unwrap();
        if m.subject.as_str().ends_with("identity.revoked") {
            break m;
        }
    };
    assert_eq!(m.subject.as_str(), "tillit.v1.events.all.identity.revoked");
    let ev: tillit::envelope::Event<serde_json::Value> =
        verifier.verify(std::str::from_utf8(&m.payload).unwrap(), "io.tillit.v1.identity.revoked", now).unwrap();
    assert_eq!(ev.data["service"], "acme/shop/prod/orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_with_overlap() {
    use futures::StreamExt;
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let (admin, nc) = admin_connect(&e).await;
    let mut events = nc.subscribe("tillit.v1.events.>").await.unwrap();
    barrier(&nc).await;
    let old_trust = tillit::envelope::TrustSet::from_jwks(admin.trust_jwks.as_deref().unwrap()).unwrap();
    assert_eq!(old_trust.len(), 1);
    let out = tillit(&["rotate", "signing-key", "--retire-after", "1h", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_ne!(r["current"], r["previous"]);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // The new trust set arrives signed by the key everyone already trusts.
    let m = tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await.unwrap().unwrap();
    assert_eq!(m.subject.as_str(), "tillit.v1.events.all.trust.rotated");
    let old = tillit::envelope::Verifier::new(old_trust, vec![], 100);
    let ev: tillit::envelope::Event<serde_json::Value> = old.verify(std::str::from_utf8(&m.payload).unwrap(), "io.tillit.v1.trust.rotated", now).unwrap();
    let new_jwks = ev.data["trust_jwks"].to_string();
    let new_trust = tillit::envelope::TrustSet::from_jwks(&new_jwks).unwrap();
    assert_eq!(new_trust.len(), 2, "old and new keys overlap");
    // Events from now on are signed by the new key: the new set verifies them, the old one does not know the key.
    assert!(put(&e, "acme/shop/prod/db", "v", &["acme/shop/prod/orders"]).status.success());
    let m = tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await.unwrap().unwrap();
    let token = std::str::from_utf8(&m.payload).unwrap();
    let new = tillit::envelope::Verifier::new(new_trust, vec![], 100);
    new.verify::<serde_json::Value>(token, "io.tillit.v1.secret.rotated", now).unwrap();
    assert!(matches!(old.verify::<serde_json::Value>(token, "io.tillit.v1.secret.rotated", now), Err(tillit::envelope::EnvelopeError::UnknownKey(_))));
    // New identities get both keys in their trust.jwks.
    let dir = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let jwks = std::fs::read_to_string(dir.join("trust.jwks")).unwrap();
    assert_eq!(tillit::envelope::TrustSet::from_jwks(&jwks).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_reads_refuse_replays_and_borrowed_signatures() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let payments = enroll_one(&e, "acme/shop/prod/payments", "payments");
    assert!(put(&e, "acme/shop/prod/db", "s3cret", &["acme/shop/prod/orders"]).status.success());
    let o = tillit::identity::load(&tillit::layout::IdentityDir::new(&orders)).unwrap();
    let p = tillit::identity::load(&tillit::layout::IdentityDir::new(&payments)).unwrap();
    let o_key = nkeys::KeyPair::from_seed(o.user_seed.expose()).unwrap();
    let body = serde_json::json!({"name": "db"});
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signed = tillit::proto::sign_request(&o_key, "example.org", "tillit.v1.svc.secret.get", "io.tillit.v1.svc.secret.get", &body, now).unwrap();
    async fn ask(nc: &async_nats::Client, t: &str) -> serde_json::Value {
        let m = nc.request("tillit.v1.svc.secret.get", t.to_string().into()).await.unwrap();
        serde_json::from_slice(&m.payload).unwrap()
    }
    // orders' signature sent over payments' connection: the server stamps payments as the sender.
    let pc = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&p, None).unwrap()).await.unwrap();
    let v = ask(&pc, &signed).await;
    assert_eq!(v["error"]["code"], "unauthenticated", "{v}");
    // The same signed request twice over orders' own connection: the second is a replay.
    let oc = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&o, None).unwrap()).await.unwrap();
    let signed2 = tillit::proto::sign_request(&o_key, "example.org", "tillit.v1.svc.secret.get", "io.tillit.v1.svc.secret.get", &body, now).unwrap();
    let v = ask(&oc, &signed2).await;
    assert!(v["result"]["value"]["sealed"].is_string(), "{v}");
    assert!(!v.to_string().contains("s3cret"), "sealed, never in clear");
    assert_eq!(ask(&oc, &signed2).await["error"]["code"], "replayed");
}

//! The adversarial suite: each test plays an attacker with real clients and real servers and
//! checks that a promise of tillit holds. The rogue site server is a plain nats-server (no
//! operator, an open local port) started with nothing but the files `tillit site add` wrote into
//! a site directory: its leafnode links carry the site's SYS and TILLIT credentials into the
//! hub, and the attacker publishes and subscribes through them at will.

use crate::harness::*;
use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A rogue leaf server holding a site directory's files: local account `R` is linked to the
/// hub's SYS account with `leaf-sys.creds`, local account `T` to TILLIT with
/// `leaf-tillit.creds`. Clients reach it with user/password `r`/`r` and `t`/`t`.
pub struct RogueLeaf {
    pub server: NatsServer,
    pub port: u16,
}

impl RogueLeaf {
    pub fn start(site: &SiteDir) -> Self {
        let conf_text = std::fs::read_to_string(site.conf()).unwrap();
        let urls = conf_text.split("urls: [").nth(1).and_then(|r| r.split(']').next()).expect("hub urls in the site's server.conf");
        let port = free_port();
        let f = |n: &str| serde_json::to_string(site.dir.join(n).to_str().unwrap()).unwrap();
        let tls = format!("tls {{ cert_file: {}, key_file: {}, ca_file: {}, timeout: 2 }}", f("tls/cert.pem"), f("tls/key.pem"), f("ca.pem"));
        let conf = format!(
            "listen: \"127.0.0.1:{port}\"\nserver_name: rogue-{site}\n\
             accounts {{\n  R: {{ users: [ {{ user: r, password: r }} ] }}\n  T: {{ users: [ {{ user: t, password: t }} ] }}\n}}\n\
             leafnodes {{\n  reconnect: \"1s\"\n  remotes: [\n    {{ urls: [{urls}], account: R, credentials: {sys}, {tls} }}\n    \
             {{ urls: [{urls}], account: T, credentials: {til}, {tls} }}\n  ]\n}}\n",
            site = site.name,
            sys = f("leaf-sys.creds"),
            til = f("leaf-tillit.creds"),
        );
        let path = site.dir.with_file_name(format!("rogue-{}.conf", site.name));
        std::fs::write(&path, conf).unwrap();
        let server = NatsServer::start(&path, port);
        let s = RogueLeaf { server, port };
        wait_for(Duration::from_secs(10), || s.server.log_text().matches("Leafnode connection created").count() >= 2)
            .unwrap_or_else(|| panic!("the rogue's leafnode links never came up:\n{}", s.server.log_text()));
        s
    }

    /// Request until answered: the hub's interest reaches a fresh leaf a moment after its link
    /// comes up (no responders until then).
    pub async fn request_until_answered(&self, c: &async_nats::Client, subject: &str, body: &'static str) -> async_nats::Message {
        for _ in 0..50 {
            match tokio::time::timeout(Duration::from_secs(2), c.request(subject.to_string(), body.into())).await {
                Ok(Ok(m)) => return m,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("no answer on {subject} through the rogue's links:\n{}", self.server.log_text());
    }

    /// A client of the rogue in local account `R` (SYS at the hub) or `T` (TILLIT).
    pub async fn client(&self, user: &str, inbox_prefix: &str) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
            .custom_inbox_prefix(inbox_prefix)
            .connect(format!("nats://127.0.0.1:{}", self.port))
            .await
            .expect("connect to the rogue leaf")
    }
}

/// The account JWT the hub's full resolver holds for `account` (its file in the resolver dir).
fn resolver_jwt(e: &Estate, account_public_key: &str) -> String {
    let p = e.dir.root().join("nats").join("resolver").join(format!("{account_public_key}.jwt"));
    std::fs::read_to_string(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()))
}

fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&data_encoding::BASE64URL_NOPAD.decode(payload.trim_end_matches('=').as_bytes()).unwrap()).unwrap()
}

fn identity_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("identity.json")).unwrap()).unwrap()
}

/// Prove the rogue's SYS link carries what it must (an account lookup, answered on the site
/// server's own resolver inbox), so a refusal below is not a dead link.
async fn sys_link_reads(rogue_sys: &async_nats::Client, site: &str, account_public_key: &str) -> String {
    let hash = tillit::subjects::server_name_hash(&tillit::subjects::site_server_name(site));
    let inbox = format!("$SYS._INBOX.{hash}.probe{}", free_port());
    let mut sub = rogue_sys.subscribe(inbox.clone()).await.unwrap();
    rogue_sys.flush().await.unwrap();
    for _ in 0..20 {
        rogue_sys.publish_with_reply(tillit::subjects::account_lookup(account_public_key), inbox.clone(), "".into()).await.unwrap();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            // A resolver without the account answers with an empty body; the hub's has it.
            if !m.payload.is_empty() {
                return String::from_utf8_lossy(&m.payload).to_string();
            }
        }
    }
    panic!("the rogue's SYS link never answered a lookup on its own inbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_server_cannot_roll_an_account_back_to_undo_a_revocation() {
    let (e, _leaf) = Estate::init_with_leaf("rollback.example");
    let _nats = e.start_nats();
    let serve = e.start_serve_ready();
    let a = enroll_one(&e, "acme/shop/prod/orders", "orders-a");
    let acct = identity_json(&a)["account_public_key"].as_str().unwrap().to_string();
    let user = identity_json(&a)["user_public_key"].as_str().unwrap().to_string();
    let before = resolver_jwt(&e, &acct);
    let site = site_add(&e, "east");
    let rogue = RogueLeaf::start(&site);
    let sys = rogue.client("r", "_INBOX.rogue").await;
    let looked_up = sys_link_reads(&sys, "east", &acct).await;
    assert!(looked_up.starts_with("eyJ"), "lookups are readable: {looked_up:?}");

    let out = tillit(&["revoke", "acme/shop/prod/orders", "--reason", "leaked", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let revoked = resolver_jwt(&e, &acct);
    assert!(jwt_claims(&revoked)["nats"]["revocations"].get(&user).is_some(), "the hub holds the revocation");

    // The rogue replays the JWT from before the revocation on every claims-update subject.
    for subject in [
        "$SYS.REQ.CLAIMS.UPDATE".to_string(),
        format!("$SYS.REQ.ACCOUNT.{acct}.CLAIMS.UPDATE"),
        format!("$SYS.ACCOUNT.{acct}.CLAIMS.UPDATE"),
    ] {
        sys.publish(subject, before.clone().into()).await.unwrap();
    }
    sys.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let now = resolver_jwt(&e, &acct);
    assert_eq!(jwt_claims(&now)["jti"], jwt_claims(&revoked)["jti"], "the hub's account JWT was rolled back by a site:\n{}", serve.log_text());
    assert!(jwt_claims(&now)["nats"]["revocations"].get(&user).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_server_reads_no_reply_but_its_own_and_never_a_join_token() {
    let (e, _leaf) = Estate::init_with_leaf("inbox.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let site = site_add(&e, "east");
    let rogue = RogueLeaf::start(&site);
    // Its link works for what a site needs: a request to the service API, answered on its own
    // agents' inbox root.
    let own = rogue.client("t", "_INBOX.site-east.rogue").await;
    let reply = rogue.request_until_answered(&own, "tillit.v1.svc.renew", "{}").await;
    assert!(reply.headers.as_ref().map(|h| h.get("Nats-Service-Error-Code").is_some()).unwrap_or(false), "typed refusal");

    let t = rogue.client("t", "_INBOX.rogue").await;
    let mut everything = t.subscribe(">").await.unwrap();
    let mut inboxes = t.subscribe("_INBOX.>").await.unwrap();
    t.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tokens = create_tokens(&e, "acme/shop/prod/orders", 2, "15m");
    assert_eq!(tokens.len(), 2);
    let out = tillit(&["token", "create", "--site", "east", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut seen = Vec::new();
    loop {
        tokio::select! {
            Some(m) = everything.next() => seen.push((m.subject.to_string(), String::from_utf8_lossy(&m.payload).to_string())),
            Some(m) = inboxes.next() => seen.push((m.subject.to_string(), String::from_utf8_lossy(&m.payload).to_string())),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    for (subject, body) in &seen {
        assert!(!body.contains("tillit1."), "a join token reached the site on {subject}");
        assert!(!subject.starts_with("_INBOX.") || subject.starts_with("_INBOX.site-east."), "another identity's reply reached the site: {subject}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_server_cannot_forge_server_events_into_the_audit_log_or_metrics() {
    let (e, _leaf) = Estate::init_with_leaf("events.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let site = site_add(&e, "east");
    let rogue = RogueLeaf::start(&site);
    let sys = rogue.client("r", "_INBOX.rogue").await;
    for i in 0..5 {
        let ev = serde_json::json!({ "reason": format!("forged reason {i}"), "client": { "host": "203.0.113.9", "port": 1, "user": "forged-user" },
            "server": { "name": "forged-server" } });
        sys.publish(format!("$SYS.SERVER.FORGED{i}.CLIENT.AUTH.ERR"), ev.to_string().into()).await.unwrap();
    }
    sys.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Then a real refusal at the hub (the admin's certificate without a JWT): once it is in the
    // audit log, anything the site sent before would be too.
    let admin = tillit::identity::load(&tillit::layout::IdentityDir::new(e.admin())).unwrap();
    let tls = tillit::client::tls::client_config(
        &admin.ca_pem,
        tillit::client::tls::SwappableCert::new(tillit::client::tls::certified_key(&admin.cert_pem, admin.key_pem.expose()).unwrap()),
    )
    .unwrap();
    let refused = async_nats::ConnectOptions::new().require_tls(true).tls_client_config(tls).connect(e.nats_url()).await;
    assert!(refused.is_err());
    let mut out = tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "200"]);
    let recorded = wait_for(Duration::from_secs(10), || {
        out = tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "200"]);
        stdout(&out).lines().any(|l| l.contains("\"action\":\"connect\"") && l.contains("denied:"))
    });
    assert!(recorded.is_some(), "the real refusal was never recorded:\n{}", stdout(&out));
    assert!(!stdout(&out).contains("forged"), "a site's forged event is in the audit log:\n{}", stdout(&out));
    let (_, metrics) = http_get(e.http_port, "/metrics").expect("metrics");
    assert!(!metrics.contains("forged"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_names_that_join_alike_never_share_an_account() {
    let e = Estate::init("names.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let a = enroll_one(&e, "acme-corp/shop/prod/orders", "acme-corp-orders");
    let a2 = enroll_one(&e, "acme-corp/shop/prod/orders", "acme-corp-orders-2");
    let b = enroll_one(&e, "acme/shop/corp-prod/orders", "acme-orders");
    let (ia, ib) = (identity_json(&a), identity_json(&b));
    assert_ne!(ia["account"], ib["account"]);
    assert_ne!(ia["account_public_key"], ib["account_public_key"]);
    assert_eq!(ia["account"], "acme--corp-prod");
    assert_eq!(ib["account"], "acme-corp--prod");

    let connect = |d: PathBuf| async move {
        let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&d)).unwrap();
        tillit::client::connect(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()).await.unwrap()
    };
    let (ca, ca2, cb) = (connect(a).await, connect(a2).await, connect(b).await);
    let mut other_tenant = cb.subscribe("shop.orders.>").await.unwrap();
    let mut same_service = ca2.subscribe("shop.orders.>").await.unwrap();
    barrier(&cb).await;
    barrier(&ca2).await;
    ca.publish("shop.orders.created", "o-1".into()).await.unwrap();
    ca.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), same_service.next()).await.expect("delivered within the tenant").unwrap();
    assert_eq!(&got.payload[..], b"o-1");
    assert!(tokio::time::timeout(Duration::from_millis(500), other_tenant.next()).await.is_err(), "another tenant read the traffic");
}

/// Someone who can write the data dir but does not hold the master key appends a record that is
/// chained correctly and carries redo ops moving an identity into another tenant. `serve`
/// refuses to apply it (and to start on it), and `audit verify` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_appended_to_the_audit_log_is_never_obeyed() {
    let e = Estate::init("audit.example");
    let _nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    let a = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let user = identity_json(&a)["user_public_key"].as_str().unwrap().to_string();
    assert!(serve.terminate(Duration::from_secs(10)).success());

    let path = e.dir.audit().join("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let last = text.lines().last().unwrap();
    let last_rec: serde_json::Value = serde_json::from_str(last).unwrap();
    let mut ident = last_rec["redo"].as_array().and_then(|r| r.iter().find(|op| op["key"] == user.as_str())).map(|op| op["value"].clone());
    if ident.is_none() {
        // The enrollment is an earlier record: find its identity write.
        ident = text.lines().rev().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|r| {
            r["redo"].as_array().and_then(|ops| ops.iter().find(|op| op["space"] == "identities" && op["key"] == user.as_str())).map(|op| op["value"].clone())
        });
    }
    let mut ident = ident.expect("the enrollment's identity record is in the log");
    ident["service"] = serde_json::json!("globex/shop/prod/orders");
    ident["account"] = serde_json::json!("globex-prod");
    let forged = serde_json::json!({
        "seq": last_rec["seq"].as_u64().unwrap() + 1, "time": "2026-01-01T00:00:00Z", "time_unix": 0, "actor": "tillit",
        "action": "renew", "target": "x", "outcome": "ok",
        "redo": [{ "space": "identities", "key": user, "value": ident }],
        "prev": tillit::crypto::sha256_hex(last.as_bytes()),
    });
    std::fs::write(&path, format!("{text}{forged}\n")).unwrap();
    // The hash chain alone cannot tell.
    assert!(tillit(&["audit", "verify", "--data-dir", e.data(), "--chain-only"]).status.success());
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(!out.status.success());
    let seq = last_rec["seq"].as_u64().unwrap() + 1;
    assert!(stderr(&out).contains(&format!("seq {seq}")) && stderr(&out).contains("MAC"), "{}", stderr(&out));

    // serve stops at the forged record instead of applying it.
    let mut again = e.start_serve();
    let exited = wait_for(Duration::from_secs(15), || matches!(again.child.try_wait(), Ok(Some(_))));
    assert!(exited.is_some(), "serve started on a forged audit record:\n{}", again.log_text());
    assert!(again.log_text().contains("not authenticated"), "{}", again.log_text());
    // Taking the forged line out lets it start, with the identity unchanged.
    std::fs::write(&path, &text).unwrap();
    let _serve = e.start_serve_ready();
    let out = tillit(&["list", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("globex"), "{}", stdout(&out));
    assert!(stdout(&out).contains("acme/shop/prod/orders"));
}

/// A hub whose resolver serves an account JWT older than the store's (a resolver directory
/// restored from a backup, or a claims update replayed by anyone holding SYS credentials) is put
/// right by the control plane within its reconcile interval, with an audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_re_pushes_an_account_jwt_the_hub_serves_out_of_date() {
    let e = Estate::init("reconcile.example");
    // Check every second (the default is 10 s).
    let conf_path = e.dir.root().join("tillit.toml");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    assert!(conf.contains("reconcile_interval = \"10s\""), "{conf}");
    std::fs::write(&conf_path, conf.replacen("reconcile_interval = \"10s\"", "reconcile_interval = \"1s\"", 1)).unwrap();
    let mut nats = e.start_nats();
    let serve = e.start_serve_ready();
    let a = enroll_one(&e, "acme/shop/prod/orders", "orders-a");
    let acct = identity_json(&a)["account_public_key"].as_str().unwrap().to_string();
    let user = identity_json(&a)["user_public_key"].as_str().unwrap().to_string();
    let before = resolver_jwt(&e, &acct);
    let out = tillit(&["revoke", "acme/shop/prod/orders", "--reason", "leaked", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let current = resolver_jwt(&e, &acct);
    assert_ne!(before, current);

    // The hub comes back with the resolver file from before the revocation.
    nats.stop();
    let file = e.dir.root().join("nats").join("resolver").join(format!("{acct}.jwt"));
    std::fs::write(&file, &before).unwrap();
    let _nats = e.start_nats();
    let repaired = wait_for(Duration::from_secs(15), || resolver_jwt(&e, &acct) == current);
    assert!(repaired.is_some(), "the rolled-back account JWT stayed:\n{}", serve.log_text());
    assert!(jwt_claims(&resolver_jwt(&e, &acct))["nats"]["revocations"].get(&user).is_some());
    let mut out = tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "50"]);
    let recorded = wait_for(Duration::from_secs(5), || {
        out = tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "50"]);
        stdout(&out).lines().any(|l| l.contains("\"action\":\"account.rollback\"") && l.contains("\"served\":\"older\""))
    });
    assert!(recorded.is_some(), "{}", stdout(&out));
    let (_, metrics) = http_get(e.http_port, "/metrics").unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("tillit_account_rollbacks_total ") && !l.ends_with(" 0")), "{metrics}");
}

/// Anyone on the HTTP port opens 1,100 connections and sends half a request on each (the
/// descriptors `serve` had). nats-server's OCSP queries, which every new connection of the
/// estate waits for, are still answered: a fresh service enrolls and connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_http_requests_cannot_starve_the_ocsp_responder() {
    use std::io::Write;
    let e = Estate::init("flood.example");
    let _nats = e.start_nats();
    // This process opens the half-sent requests itself: as many as it can spare, up to 1,100,
    // and `serve` starts with no more descriptors than that (the usual soft limit of 1,024 on
    // most hosts), so they would exhaust it.
    tillit::server::http::raise_fd_limit();
    let n = tillit::server::http::fd_limit().saturating_sub(64).min(1100);
    let log = e.dir.root().join("serve-flood.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -Sn {n} && exec {} serve --data-dir {}", tillit_bin(), e.data()))
        .env_remove("TILLIT_MASTER_KEY")
        .env("RUST_LOG", "info")
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let ready = wait_for(Duration::from_secs(20), || http_get(e.http_port, "/readyz").map(|(c, _)| c == 200).unwrap_or(false));
    assert!(ready.is_some(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let mut held = Vec::new();
    for _ in 0..n {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", e.http_port)) else { continue };
        let _ = s.write_all(b"POST /ocsp HTTP/1.1\r\nHost: tillit\r\nContent-Length: 100\r\n");
        held.push(s);
    }
    assert!(held.len() + 10 >= n, "only {} of {n} connections opened", held.len());
    assert_eq!(http_get(e.http_port, "/healthz").map(|(c, _)| c), Some(200), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    // A fresh enrollment and connection: the hub asks the OCSP responder about both
    // certificates (bootstrap, then the service's own) while the half-sent requests are held.
    let dir = enroll_one(&e, "acme/shop/prod/orders", "fresh");
    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&dir)).unwrap();
    let nc = tokio::time::timeout(
        Duration::from_secs(10),
        tillit::client::connect(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()),
    )
    .await
    .expect("connect in time")
    .expect("a fresh identity connects while the HTTP port is flooded");
    nc.flush().await.unwrap();
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
}

/// `/metrics` on a listener of its own: not on the OCSP/CRL port any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_move_off_the_ocsp_port() {
    let e = Estate::init("metrics.example");
    let mport = free_port();
    let conf_path = e.dir.root().join("tillit.toml");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    assert!(conf.contains("[http]"), "{conf}");
    std::fs::write(&conf_path, conf.replacen("[http]", &format!("[http]\nmetrics_addr = \"127.0.0.1:{mport}\""), 1)).unwrap();
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    assert_eq!(http_get(e.http_port, "/metrics").map(|(c, _)| c), Some(404));
    let (code, body) = http_get(mport, "/metrics").expect("metrics listener");
    assert_eq!(code, 200);
    assert!(body.contains("tillit_build_info"), "{body}");
    assert_eq!(http_get(e.http_port, "/healthz").map(|(c, _)| c), Some(200));
}

/// A site server holding east's files pulls, inspects or acknowledges the consumers of west's
/// agents: refused, whichever stream it names. Its own site's consumers stay reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_server_cannot_read_or_drain_another_sites_consumers() {
    let (e, _leaf) = Estate::init_with_leaf("drain.example");
    let _nats = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let west = site_add(&e, "west");
    let _west_srv = west.start();
    let wid = e.tmp.path().join("west-agent");
    let mut agent = AgentProc::start(&west, &wid, &e.tmp.path().join("west-files"), &west.url(), None);
    let enrolled = wait_for(Duration::from_secs(20), || wid.join("identity.json").is_file());
    assert!(enrolled.is_some(), "agent:\n{}\nserve:\n{}", agent.log_text(), serve.log_text());
    let consumer = tillit::subjects::agent_consumer("west", identity_json(&wid)["user_public_key"].as_str().unwrap());
    agent.kill();

    let rogue = RogueLeaf::start(&east);
    let t = rogue.client("t", "_INBOX.site-east.rogue").await;
    // Its own site's JetStream API answers (a consumer that does not exist: an error reply).
    let own = rogue.request_until_answered(&t, "$JS.hub.API.CONSUMER.INFO.TILLIT_SITE_east.nope", "").await;
    assert!(String::from_utf8_lossy(&own.payload).contains("consumer not found"), "{:?}", own.payload);
    for stream in ["TILLIT_SITE_west", "TILLIT_EVENTS"] {
        for (api, body) in [("MSG.NEXT", r#"{"batch":10,"no_wait":true}"#), ("INFO", "")] {
            let subject = format!("$JS.hub.API.CONSUMER.{api}.{stream}.{consumer}");
            let r = tokio::time::timeout(Duration::from_secs(1), t.request(subject.clone(), body.into())).await;
            assert!(!matches!(r, Ok(Ok(_))), "east's server reached west's consumer on {subject}: {r:?}");
        }
    }

    // The agent row of the matrix: west's agent itself, dialing the hub directly.
    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&wid)).unwrap();
    let (nc, errs) = connect_collecting(&tillit::client::ConnectParams::from_identity(&files, Some(&e.nats_url())).unwrap()).await;
    let own_next = format!("$JS.API.CONSUMER.MSG.NEXT.TILLIT_SITE_west.{consumer}");
    let own_inbox = format!("{}.x", files.info.inbox_prefix);
    let allowed = refused(&nc, &errs, &[&own_next, "tillit.v1.svc.ack"], &[&own_inbox]).await;
    assert!(allowed.is_empty(), "the agent was refused its own rights: {allowed:?}");
    let east_next = format!("$JS.API.CONSUMER.MSG.NEXT.TILLIT_SITE_east.{}", consumer.replace("west", "east"));
    let other_west = "$JS.API.CONSUMER.MSG.NEXT.TILLIT_SITE_west.agent-west-other".to_string();
    let denied_pub = [east_next.as_str(), other_west.as_str(), "$JS.API.STREAM.DELETE.TILLIT_EVENTS", "tillit.v1.admin.status", "tillit.v1.events.all.x"];
    let denied_sub = ["_INBOX.>", "_INBOX.site-east.>", "tillit.v1.>"];
    let got = refused(&nc, &errs, &denied_pub, &denied_sub).await;
    assert_eq!(got.len(), denied_pub.len() + denied_sub.len(), "agent rights beyond its row; refused only {got:?}");
}

/// A connection with the server's asynchronous errors (permission violations) collected.
async fn connect_collecting(params: &tillit::client::ConnectParams) -> (async_nats::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let errs = errors.clone();
    let tls = tillit::client::tls::client_config(&params.ca_pem, params.cert.clone()).unwrap();
    let (jwt, seed) = {
        let c = params.creds.read().unwrap();
        (c.user_jwt.clone(), c.user_seed.expose().to_string())
    };
    let creds = tillit::issuer::creds::format(&jwt, &tillit::crypto::SecretString::new(seed));
    let nc = async_nats::ConnectOptions::with_credentials(creds.expose())
        .unwrap()
        .require_tls(true)
        .tls_client_config(tls)
        .custom_inbox_prefix(&params.inbox_prefix)
        .event_callback(move |ev| {
            let errs = errs.clone();
            async move {
                if let async_nats::Event::ServerError(e) = ev {
                    errs.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(params.urls[0].as_str())
        .await
        .expect("connect");
    (nc, errors)
}

/// Publish on each subject and subscribe to each pattern; return the ones nats-server refused.
async fn refused(nc: &async_nats::Client, errors: &std::sync::Mutex<Vec<String>>, publish: &[&str], subscribe: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for s in publish {
        errors.lock().unwrap().clear();
        nc.publish(s.to_string(), "x".into()).await.unwrap();
        nc.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        if errors.lock().unwrap().iter().any(|e| e.to_lowercase().contains("permissions violation for publish")) {
            out.push(format!("pub {s}"));
        }
    }
    for s in subscribe {
        errors.lock().unwrap().clear();
        let sub = nc.subscribe(s.to_string()).await.unwrap();
        nc.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        if errors.lock().unwrap().iter().any(|e| e.to_lowercase().contains("permissions violation for subscription")) {
            out.push(format!("sub {s}"));
        }
        drop(sub);
    }
    out
}

/// The README's permission matrix, row by row, against the real server: what each actor may
/// do goes through, everything named beside it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permission_matrix_holds_row_by_row() {
    let e = Estate::init("matrix.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let svc = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&svc)).unwrap();
    let inbox = files.info.inbox_prefix.clone();

    // Service: its namespace, the service API, its inbox and notifications; nothing else.
    let (nc, errs) = connect_collecting(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()).await;
    let own_inbox = format!("{inbox}.x");
    let allowed = refused(&nc, &errs, &["shop.orders.created", "tillit.v1.svc.renew"], &["shop.orders.>", &own_inbox, "tillit.v1.notify.acme-prod.shop.orders"]).await;
    assert!(allowed.is_empty(), "service refused its own rights: {allowed:?}");
    let denied_pub = ["shop.billing.x", "tillit.v1.admin.status", "tillit.v1.events.all.secret.rotated", "$SYS.REQ.CLAIMS.UPDATE", "$JS.API.STREAM.LIST", "_INBOX.other"];
    let denied_sub = ["shop.billing.>", "_INBOX.>", "tillit.v1.>", ">", "tillit.v1.notify.acme-prod.shop.billing"];
    let got = refused(&nc, &errs, &denied_pub, &denied_sub).await;
    assert_eq!(got.len(), denied_pub.len() + denied_sub.len(), "service rights beyond its row; refused only {got:?}");

    // Admin: the admin and service APIs, discovery, its inbox and the events; not a service's
    // subjects, not the stream's own API (no forged or deleted events), no system subjects.
    let admin = tillit::identity::load(&tillit::layout::IdentityDir::new(e.admin())).unwrap();
    let (nc, errs) = connect_collecting(&tillit::client::ConnectParams::from_identity(&admin, None).unwrap()).await;
    let own_inbox = format!("{}.x", admin.info.inbox_prefix);
    let allowed = refused(&nc, &errs, &["tillit.v1.admin.status", "tillit.v1.svc.renew", "$SRV.PING"], &[&own_inbox, "tillit.v1.events.>"]).await;
    assert!(allowed.is_empty(), "admin refused its own rights: {allowed:?}");
    let denied_pub = ["shop.orders.x", "tillit.v1.events.all.secret.rotated", "$JS.API.STREAM.DELETE.TILLIT_EVENTS", "$SYS.REQ.CLAIMS.UPDATE", "tillit.v1.notify.acme-prod.shop.orders"];
    let denied_sub = ["_INBOX.>", "tillit.v1.admin.>", ">"];
    let got = refused(&nc, &errs, &denied_pub, &denied_sub).await;
    assert_eq!(got.len(), denied_pub.len() + denied_sub.len(), "admin rights beyond its row; refused only {got:?}");

    // Bootstrap: enrollment and its inbox only.
    let token = create_tokens(&e, "acme/shop/prod/orders", 1, "15m").remove(0);
    let token = tillit::token::JoinToken::decode(&token).unwrap();
    let params = tillit::client::enroll::bootstrap_params(&token, vec![e.nats_url()]).unwrap();
    let (nc, errs) = connect_collecting(&params).await;
    let own_inbox = format!("{}.x", params.inbox_prefix);
    let allowed = refused(&nc, &errs, &["tillit.v1.enroll"], &[&own_inbox]).await;
    assert!(allowed.is_empty(), "bootstrap refused its own rights: {allowed:?}");
    let denied_pub = ["tillit.v1.svc.renew", "tillit.v1.admin.token.create", "shop.orders.x", "$SYS.REQ.CLAIMS.UPDATE"];
    let denied_sub = ["_INBOX.>", ">", "tillit.v1.>"];
    let got = refused(&nc, &errs, &denied_pub, &denied_sub).await;
    assert_eq!(got.len(), denied_pub.len() + denied_sub.len(), "bootstrap rights beyond its row; refused only {got:?}");
}

/// A TILLIT-account caller names a reply subject outside any inbox (the event stream's
/// subjects): the control plane neither answers there nor acts on the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_answers_only_on_inboxes() {
    let e = Estate::init("reply.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let (admin, nc) = admin_connect(&e).await;
    let mut events = nc.subscribe("tillit.v1.events.>").await.unwrap();
    nc.flush().await.unwrap();
    let signer = nkeys::KeyPair::from_seed(admin.user_seed.expose()).unwrap();
    let now = tillit::clock::Clock::now_unix(&tillit::clock::SystemClock);
    let body = tillit::proto::sign_request(&signer, "reply.example", tillit::proto::Status::SUBJECT, tillit::proto::Status::KIND, serde_json::json!({}), now).unwrap();
    nc.publish_with_reply(tillit::proto::Status::SUBJECT, "tillit.v1.events.all.secret.rotated", body.into()).await.unwrap();
    nc.publish_with_reply(tillit::proto::Status::SUBJECT, "tillit.v1.events.all.ca.rotated", "garbage".into()).await.unwrap();
    nc.flush().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(800), events.next()).await.is_err(), "the control plane wrote into the event stream");
    // The same request on an inbox is answered.
    let body = tillit::proto::sign_request(&signer, "reply.example", tillit::proto::Status::SUBJECT, tillit::proto::Status::KIND, serde_json::json!({}), now).unwrap();
    let r = nc.request(tillit::proto::Status::SUBJECT, body.into()).await.expect("answered on an inbox");
    assert!(String::from_utf8_lossy(&r.payload).contains("\"result\""), "{:?}", r.payload);
}

/// An admin identity can be revoked, by another admin; never the last live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_can_be_revoked_by_another_and_the_last_one_stays() {
    let e = Estate::init("admins.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let out = tillit(&["admin", "revoke", "admin", "--identity", &e.admin()]);
    assert!(!out.status.success() && stderr(&out).contains("last live owner"), "{}", stderr(&out));

    let out = tillit(&["admin", "add", "bob", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(token.starts_with("tillit1."));
    let bob = e.tmp.path().join("bob");
    let out = enroll_cli(&token, &bob);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(identity_json(&bob)["id"], "spiffe://admins.example/tillit/admin/bob");
    let bob_s = bob.to_str().unwrap();
    assert!(tillit(&["status", "--identity", bob_s]).status.success(), "bob acts as an admin");
    // Bob's token was single-use; a service cannot claim the admins' names.
    assert!(!enroll_cli(&token, &e.tmp.path().join("bob-again")).status.success());

    let out = tillit(&["admin", "revoke", "admin", "--reason", "left the team", "--identity", bob_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tillit(&["status", "--identity", &e.admin()]);
    assert!(!out.status.success(), "a revoked admin still acts: {}", stdout(&out));
    let out = tillit(&["admin", "revoke", "bob", "--identity", bob_s]);
    assert!(!out.status.success() && stderr(&out).contains("last live owner"), "{}", stderr(&out));
    let audit = stdout(&tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "50"]));
    assert!(audit.lines().any(|l| l.contains("\"action\":\"revoke\"") && l.contains("tillit/admins/admin/admin") && l.contains("spiffe://admins.example/tillit/admin/bob")), "{audit}");
}

/// A TILLIT-account publisher (here an admin's connection) sends a service's signed request
/// with a `Nats-Request-Info` header it wrote itself, claiming the service's account and user:
/// refused, because nats-server stamps that header only on requests crossing a service import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_request_info_header_is_refused() {
    let e = Estate::init("reqinfo.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let svc = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&svc)).unwrap();
    let signer = nkeys::KeyPair::from_seed(files.user_seed.expose()).unwrap();
    let (_, admin) = admin_connect(&e).await;
    let now = tillit::clock::Clock::now_unix(&tillit::clock::SystemClock);
    let csr = tillit::issuer::x509::make_csr(&files.info.user_public_key).unwrap().0;
    let body = tillit::proto::sign_request(&signer, "reqinfo.example", tillit::proto::Renew::SUBJECT, tillit::proto::Renew::KIND, serde_json::json!({ "csr": csr }), now).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    let forged = serde_json::json!({ "acc": files.info.account_public_key, "user": files.info.user_public_key });
    headers.insert("Nats-Request-Info", forged.to_string().as_str());
    let r = admin.request_with_headers(tillit::proto::Renew::SUBJECT, headers, body.into()).await.expect("a reply");
    let text = String::from_utf8_lossy(&r.payload).to_string();
    assert!(text.contains("\"error\"") && text.contains("unauthenticated"), "a forged Nats-Request-Info was believed: {text}");
}

/// A site added before sites were confined holds leafnode JWTs with the old, broad permissions.
/// At start the control plane asks its agent (once) to re-issue the site server's credentials,
/// which come with the confined permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_from_before_confinement_gets_confined_credentials() {
    let (e, _leaf) = Estate::init_with_leaf("upgrade.example");
    let _nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let _srv = east.start();
    let aid = e.tmp.path().join("east-agent");
    let agent = AgentProc::start(&east, &aid, &east.dir, &east.url(), Some("true"));
    let enrolled = wait_for(Duration::from_secs(20), || aid.join("identity.json").is_file());
    assert!(enrolled.is_some(), "{}", agent.log_text());
    assert!(serve.terminate(Duration::from_secs(10)).success());
    {
        // The record as an older release left it.
        let est = tillit::estate::Estate::open(tillit::layout::DataDir::new(e.data()), std::sync::Arc::new(tillit::clock::SystemClock)).unwrap();
        let mut site = est.site("east").unwrap().unwrap();
        assert_eq!(site.leaf_perms, tillit::estate::sites::LEAF_PERMS_VERSION);
        site.leaf_perms = 0;
        let mut b = tillit::store::Batch::new();
        b.put_json(tillit::store::Space::Sites, "site/east", &site).unwrap();
        est.store().commit(b).unwrap();
    }
    let before = std::fs::read_to_string(east.dir.join("leaf-tillit.creds")).unwrap();
    let serve = e.start_serve_ready();
    let reissued = wait_for(Duration::from_secs(30), || std::fs::read_to_string(east.dir.join("leaf-tillit.creds")).unwrap_or_default() != before);
    assert!(reissued.is_some(), "agent:\n{}\nserve:\n{}", agent.log_text(), serve.log_text());
    let audit = stdout(&tillit(&["audit", "tail", "--data-dir", e.data(), "--json", "-n", "100"]));
    assert!(audit.contains("\"action\":\"site.upgrade\"") && audit.contains("\"action\":\"site.renew\""), "{audit}");
}

/// Callout mode lets a site's TILLIT link publish authorization requests (leaf permissions
/// v4). A rogue leaf with a site directory's files forges one for `orders`, whose certificate
/// and JWT it holds, with a nonce signature by a key that is not orders': tillit refuses it, and
/// the answer, sealed to the rogue, carries no user JWT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_server_cannot_get_a_callout_answer_for_an_identity_that_never_connected_to_it() {
    let leaf = free_port();
    let e = Estate::init_args("rogue-callout.example", &["--auth", "callout", "--leaf-port", &leaf.to_string()]);
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let site = site_add(&e, "east");
    let rogue = RogueLeaf::start(&site);
    let st: serde_json::Value = serde_json::from_str(&stdout(&tillit(&["status", "--identity", &e.admin(), "--json"]))).unwrap();
    let acct = st["accounts"]["acme-prod"]["public_key"].as_str().unwrap().to_string();
    let callout_xkey = jwt_claims(&resolver_jwt(&e, &acct))["nats"]["authorization"]["xkey"].as_str().unwrap().to_string();

    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(&orders)).unwrap();
    let (server, xkey, stranger) = (nkeys::KeyPair::new_server(), nkeys::XKey::new(), nkeys::KeyPair::new_user());
    let nonce = "rogue-nonce";
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = tillit::issuer::jwt::Claims {
        jti: "forged".into(),
        iat: now,
        iss: server.public_key(),
        sub: acct.clone(),
        name: None,
        aud: Some(tillit::estate::callout::AUTH_REQUEST_AUDIENCE.into()),
        exp: Some(now + 2),
        nbf: None,
        nats: serde_json::json!({
            "type": "authorization_request",
            "server_id": { "name": "rogue-east", "id": server.public_key(), "xkey": xkey.public_key() },
            "user_nkey": nkeys::KeyPair::new_user().public_key(),
            "client_info": { "host": "127.0.0.1", "id": 7, "nonce": nonce, "kind": "Client" },
            "connect_opts": { "jwt": files.user_jwt, "sig": data_encoding::BASE64URL_NOPAD.encode(&stranger.sign(nonce.as_bytes()).unwrap()) },
            "client_tls": { "verified_chains": [[files.cert_pem]] },
        }),
    };
    let token = tillit::issuer::jwt::encode(&claims, &server).unwrap();
    let sealer = tillit::crypto::Sealer::new(&xkey).unwrap();
    let sealed = sealer.seal(token.as_bytes(), &callout_xkey).unwrap();
    let c = rogue.client("t", "_INBOX.site-east.rogue").await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Server-Xkey", xkey.public_key().as_str());
    let mut answer = None;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_secs(2), c.request_with_headers(format!("tillit.v1.callout.{}", "acme-prod"), headers.clone(), sealed.clone().into())).await {
            Ok(Ok(m)) => {
                answer = Some(m);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let answer = answer.unwrap_or_else(|| panic!("no answer through the rogue's TILLIT link:\n{}", rogue.server.log_text()));
    let jwt = sealer.open(&answer.payload, &callout_xkey).expect("the answer is sealed to the asking server");
    let nats = &jwt_claims(std::str::from_utf8(&jwt).unwrap())["nats"];
    assert!(nats.get("jwt").is_none(), "tillit admitted a forged request: {nats}");
    assert!(nats["error"].as_str().unwrap_or_default().contains("nonce signature"), "{nats}");
}

//! Sites: a hub and leaf servers on loopback, agents that apply rotations and acknowledge them.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

fn put_secret(e: &Estate, path: &str, value: &str, readers: &[&str]) {
    let out = secret_put(e, path, value, readers);
    assert!(out.status.success(), "secret put: {}", stderr(&out));
}

fn rotate_secret(e: &Estate, path: &str, value: &str) {
    let file = e.tmp.path().join(format!("value-{}", path.replace('/', "_")));
    std::fs::write(&file, value).unwrap();
    let out = tillit(&["secret", "rotate", path, "--value-file", file.to_str().unwrap(), "--identity", &e.admin()]);
    assert!(out.status.success(), "secret rotate: {}", stderr(&out));
}

fn secret_file(files: &Path, path: &str) -> std::path::PathBuf {
    files.join("secrets").join(path)
}

/// Site `east` (`tillit site add`), its leaf server running, `acme/shop/prod/db` = `v1` readable
/// by it, and an agent (files in `east-files`) that applied it.
fn east_with_agent(e: &Estate, serve: &Serve, v1: &str) -> (SiteDir, NatsServer, std::path::PathBuf, AgentProc, std::path::PathBuf) {
    let east = site_add(e, "east");
    let east_srv = east.start();
    put_secret(e, "acme/shop/prod/db", v1, &["site:east"]);
    let files = e.tmp.path().join("east-files");
    let agent = AgentProc::start(&east, &e.tmp.path().join("east-agent"), &files, &east.url(), None);
    let db = secret_file(&files, "acme/shop/prod/db");
    let l = || format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());
    wait_file(&db, v1, Duration::from_secs(30), "v1", &l);
    (east, east_srv, files, agent, db)
}

fn wait_file(path: &Path, want: &str, within: Duration, what: &str, logs: &dyn Fn() -> String) {
    wait_for(within, || std::fs::read_to_string(path).map(|v| v == want).unwrap_or(false)).unwrap_or_else(|| {
        panic!("{what}: {} never became {want:?} (now {:?})\n{}", path.display(), std::fs::read_to_string(path).ok(), logs())
    });
}

fn site_status(e: &Estate, name: &str) -> serde_json::Value {
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v["sites"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap_or_else(|| panic!("no site {name} in {v}"))
}

#[test]
fn a_rotation_reaches_both_sites_through_their_leaf_servers_and_both_ack() {
    let (e, _leaf) = Estate::init_with_leaf("sites.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let west = site_add(&e, "west");
    // The site directory holds what a leaf server needs, keys private.
    for f in ["server.conf", "operator.jwt", "ca.pem", "tls/cert.pem", "leaf-sys.creds", "leaf-tillit.creds", "agent.token"] {
        assert!(east.dir.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    for f in ["tls/key.pem", "leaf-sys.creds", "leaf-tillit.creds", "agent.token"] {
        assert_eq!(std::fs::metadata(east.dir.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    let east_srv = east.start();
    let west_srv = west.start();
    put_secret(&e, "acme/shop/prod/db", "v1-secret", &["acme/shop/prod/orders", "site:east", "site:west"]);
    let logs = |a: &AgentProc, b: &AgentProc| {
        format!("serve:\n{}\neast agent:\n{}\nwest agent:\n{}\neast server:\n{}", serve.log_text(), a.log_text(), b.log_text(), east_srv.log_text())
    };
    let ef = e.tmp.path().join("east-files");
    let wf = e.tmp.path().join("west-files");
    let hook_out = e.tmp.path().join("east-hook.count");
    let hook = format!("echo applied >> {}", hook_out.display());
    let a_east = AgentProc::start(&east, &e.tmp.path().join("east-agent"), &ef, &east.url(), Some(&hook));
    let a_west = AgentProc::start(&west, &e.tmp.path().join("west-agent"), &wf, &west.url(), None);
    let l = || logs(&a_east, &a_west);
    wait_file(&secret_file(&ef, "acme/shop/prod/db"), "v1-secret", Duration::from_secs(30), "east v1", &l);
    wait_file(&secret_file(&wf, "acme/shop/prod/db"), "v1-secret", Duration::from_secs(30), "west v1", &l);
    rotate_secret(&e, "acme/shop/prod/db", "v2-secret");
    wait_file(&secret_file(&ef, "acme/shop/prod/db"), "v2-secret", Duration::from_secs(10), "east v2", &l);
    wait_file(&secret_file(&wf, "acme/shop/prod/db"), "v2-secret", Duration::from_secs(10), "west v2", &l);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(secret_file(&ef, "acme/shop/prod/db")).unwrap().mode() & 0o777, 0o600);
    assert!(ef.join("ca.pem").exists());
    // Both sites acknowledged; status says how far each is.
    wait_for(Duration::from_secs(10), || {
        let (s1, s2) = (site_status(&e, "east"), site_status(&e, "west"));
        s1["agents"] == 1 && s2["agents"] == 1 && s1["lag_events"] == 0 && s2["lag_events"] == 0
            && s1["last_applied_seq"].as_u64().unwrap_or(0) > 0 && s1["last_ack_unix"].is_i64() && s2["last_ack_unix"].is_i64()
    })
    .unwrap_or_else(|| panic!("sites never acked: {} {}\n{}", site_status(&e, "east"), site_status(&e, "west"), l()));
    let hooks = std::fs::read_to_string(&hook_out).unwrap();
    assert!(hooks.lines().count() >= 1 && hooks.lines().count() <= 2, "the hook runs once per applied batch: {hooks:?}");
    let (_, metrics) = http_get(e.http_port, "/metrics").unwrap();
    assert!(metrics.contains("tillit_site_acks_total"), "{metrics}");
    let list = tillit(&["site", "list", "--identity", &e.admin(), "--json"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(v["sites"].as_array().unwrap().len(), 2);
    // By pages of one: east, then west, then nothing more.
    let admin = e.admin();
    let page = |after: Option<&str>| {
        let mut args = vec!["site", "list", "--identity", admin.as_str(), "--json", "--limit", "1"];
        args.extend(after.map(|a| ["--after", a]).into_iter().flatten());
        let out = tillit(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()
    };
    let first = page(None);
    assert_eq!(first["sites"][0]["name"], "east");
    let second = page(first["next"].as_str());
    assert_eq!(second["sites"][0]["name"], "west");
    assert!(second.get("next").is_none(), "{second}");
    drop(west_srv);
}

#[test]
fn a_site_cut_off_misses_two_rotations_and_converges_after_its_server_restarts() {
    let (e, _leaf) = Estate::init_with_leaf("partition.example");
    let mut hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let mut east_srv = east.start();
    put_secret(&e, "acme/shop/prod/db", "v1", &["site:east"]);
    let files = e.tmp.path().join("east-files");
    let hook_out = e.tmp.path().join("hook.log");
    let agent = AgentProc::start(&east, &e.tmp.path().join("east-agent"), &files, &east.url(), Some(&format!("cat {}/secrets/acme/shop/prod/db >> {}; echo >> {}", files.display(), hook_out.display(), hook_out.display())));
    let l = || format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());
    let db = secret_file(&files, "acme/shop/prod/db");
    wait_file(&db, "v1", Duration::from_secs(30), "v1", &l);
    // Cut the site off: its leaf server dies. Two rotations happen meanwhile.
    east_srv.stop();
    std::thread::sleep(Duration::from_millis(300));
    let file = e.tmp.path().join("vx");
    std::fs::write(&file, "v2").unwrap();
    let out = tillit(&["secret", "rotate", "acme/shop/prod/db", "--value-file", file.to_str().unwrap(), "--identity", &e.admin()]);
    assert!(out.status.success(), "secret rotate: {}\n{}\nHUB\n{}", stderr(&out), serve.log_text(), hub.log_text());
    let file = e.tmp.path().join("vx");
    std::fs::write(&file, "v3").unwrap();
    let out = tillit(&["secret", "rotate", "acme/shop/prod/db", "--value-file", file.to_str().unwrap(), "--identity", &e.admin()]);
    assert!(out.status.success(), "secret rotate: {}\n{}\nHUB\n{}", stderr(&out), serve.log_text(), hub.log_text());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&db).unwrap(), "v1", "nothing reaches a site that is cut off");
    assert!(site_status(&e, "east")["lag_events"].as_u64().unwrap() >= 2, "status shows the site behind: {}", site_status(&e, "east"));
    // The heal: no operator action but starting the site's server again.
    east_srv = east.start();
    let l = || format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());
    wait_file(&db, "v3", Duration::from_secs(30), "converged", &l);
    wait_for(Duration::from_secs(10), || site_status(&e, "east")["lag_events"] == 0).unwrap_or_else(|| panic!("lag: {}", site_status(&e, "east")));
    let st = site_status(&e, "east");
    assert_eq!(st["failures"], 0);
    // The hook saw v1, then the converged value; v2 was never half-applied after v3.
    let seen = std::fs::read_to_string(&hook_out).unwrap();
    let seen: Vec<&str> = seen.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(seen.first(), Some(&"v1"), "{seen:?}");
    assert_eq!(seen.last(), Some(&"v3"), "{seen:?}");
    // A hub restart is also survived. The agent's consumer kept its position in the hub's
    // memory: the control plane makes it again, the agent re-reads its site's stream from the
    // start and applies only what its state file says it has not (the hook runs once, for v4).
    let hooks_before = seen.len();
    hub.stop();
    hub = e.start_nats();
    wait_for(Duration::from_secs(20), || tillit(&["status", "--identity", &e.admin()]).status.success())
        .unwrap_or_else(|| panic!("serve never came back after the hub restart\n{}", serve.log_text()));
    rotate_secret(&e, "acme/shop/prod/db", "v4");
    wait_file(&db, "v4", Duration::from_secs(30), "after hub restart", &l);
    assert!(serve.log_text().contains("consumers made again"), "{}", serve.log_text());
    wait_for(Duration::from_secs(10), || site_status(&e, "east")["lag_events"] == 0).unwrap_or_else(|| panic!("lag: {}", site_status(&e, "east")));
    let seen = std::fs::read_to_string(&hook_out).unwrap();
    let seen: Vec<&str> = seen.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(seen[hooks_before..], ["v4"], "after the hub restart only v4 is applied: {seen:?}\n{}", l());
    drop(hub);
}

#[test]
fn an_agent_killed_mid_apply_leaves_old_or_new_and_catches_up_on_restart() {
    let (e, _leaf) = Estate::init_with_leaf("sigkill.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let east_srv = east.start();
    let big = |v: &str| format!("{v}:{}", "x".repeat(16 * 1024));
    put_secret(&e, "acme/shop/prod/cert", &big("v1"), &["site:east"]);
    let files = e.tmp.path().join("east-files");
    let ident = e.tmp.path().join("east-agent");
    let marker = e.tmp.path().join("hook-started");
    let hook = format!("touch {}; sleep 30", marker.display());
    let mut agent = AgentProc::start(&east, &ident, &files, &east.url(), Some(&hook));
    let file = secret_file(&files, "acme/shop/prod/cert");
    let l = |a: &AgentProc| format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), a.log_text(), east_srv.log_text());
    // The first batch is applied and its hook hangs: SIGKILL the agent inside it.
    wait_for(Duration::from_secs(30), || marker.exists()).unwrap_or_else(|| panic!("hook never ran\n{}", l(&agent)));
    agent.kill();
    let now = std::fs::read_to_string(&file).unwrap();
    assert!(now == big("v1"), "a killed agent leaves a whole file");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(files.join(".tillit-agent.json")).unwrap_or_else(|_| b"{}".to_vec())).unwrap();
    assert!(state["last_seq"].as_u64().unwrap_or(0) == 0, "nothing is recorded as applied before its hook succeeded: {state}");
    // While it is down, a rotation and a new secret; on restart (no hook now) it re-applies the
    // unacknowledged batch first, then the rest, in order.
    rotate_secret(&e, "acme/shop/prod/cert", &big("v2"));
    put_secret(&e, "acme/shop/prod/other", "o1", &["site:east"]);
    std::fs::remove_file(&marker).unwrap();
    let ok_hook = e.tmp.path().join("ok-hook");
    let agent = AgentProc::start(&east, &ident, &files, &east.url(), Some(&format!("echo ran >> {}", ok_hook.display())));
    wait_file(&file, &big("v2"), Duration::from_secs(30), "caught up", &|| l(&agent));
    wait_file(&secret_file(&files, "acme/shop/prod/other"), "o1", Duration::from_secs(30), "caught up", &|| l(&agent));
    wait_for(Duration::from_secs(10), || site_status(&e, "east")["lag_events"] == 0).unwrap_or_else(|| panic!("{}", site_status(&e, "east")));
    assert!(std::fs::read_to_string(&ok_hook).unwrap().lines().count() >= 1, "the unacknowledged batch's hook ran after the restart");
    // No temp files left behind by the killed write.
    let dir = file.parent().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|d| d.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec!["cert".to_string(), "other".to_string()], "{names:?}");
}

/// A user of the TILLIT account allowed to write the event stream (what a compromised publisher
/// could do), and the control plane's genuine envelope signer: minted before serve starts.
fn stream_writer(e: &Estate) -> (tillit::client::ConnectParams, tillit::envelope::Signer) {
    use tillit::clock::SystemClock;
    let estate = tillit::estate::Estate::open(e.dir.clone(), std::sync::Arc::new(SystemClock)).unwrap();
    let perms = tillit::issuer::jwt::UserPermissions::new(vec![">".into()], vec![">".into()]);
    let (creds, user) = estate.control_plane_creds("TILLIT", perms).unwrap();
    let params = tillit::client::ConnectParams {
        urls: vec![e.nats_url()],
        name: "attacker".into(),
        inbox_prefix: format!("_INBOX.{user}"),
        ca_pem: estate.meta.ca_cert_pem.clone(),
        creds: std::sync::Arc::new(std::sync::RwLock::new(tillit::client::NatsCreds { user_jwt: creds.user_jwt, user_seed: creds.user_seed })),
        cert: tillit::client::tls::SwappableCert::new(tillit::client::tls::certified_key(&creds.cert_pem, creds.key_pem.expose()).unwrap()),
        max_reconnects: None,
    };
    (params, estate.envelope_signer().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_misaddressed_events_are_rejected_and_never_applied() {
    let (e, _leaf) = Estate::init_with_leaf("forged.example");
    let (writer, genuine) = stream_writer(&e);
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let (_east, east_srv, files, agent, db) = east_with_agent(&e, &serve, "real-v1");
    let l = || format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());

    let nc = tillit::client::connect(&writer).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    let subject = "tillit.v1.events.east.secret.rotated";
    let last = js.get_stream("TILLIT_EVENTS").await.unwrap().info().await.unwrap().state.last_sequence;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let data = serde_json::json!({ "path": "acme/shop/prod/db", "version": 1 });
    // 1. Forged: a key outside the trust set, claiming to be the control plane.
    let mallory = nkeys::KeyPair::new_account();
    let forger = tillit::envelope::Signer::new(&mallory.public_key(), &tillit::envelope::issuer("forged.example"), std::sync::Arc::new(mallory));
    let forged = forger.sign("io.tillit.v1.secret.rotated", "acme/shop/prod/db", "site:east", 600, Some(last + 1), &data, now).unwrap();
    // 2. Replayed: a genuine envelope published again at a later stream position.
    let original = genuine.sign("io.tillit.v1.secret.rotated", "acme/shop/prod/db", "site:east", 600, Some(last + 2), &data, now).unwrap();
    // 3. Misaddressed: genuine, in order, but for site west.
    let west = genuine.sign("io.tillit.v1.secret.rotated", "acme/shop/prod/db", "site:west", 600, Some(last + 3), &data, now).unwrap();
    for (i, tok) in [forged, original.clone(), west].into_iter().enumerate() {
        let ack = js.publish(subject, tok.into()).await.unwrap().await.unwrap();
        assert_eq!(ack.sequence, last + 1 + i as u64);
    }
    // The genuine one, again (its seq was last + 2: now it lands at last + 4).
    let ack = js.publish(subject, original.into()).await.unwrap().await.unwrap();
    assert_eq!(ack.sequence, last + 4);
    // A real rotation after them still applies: the agent was not stuck on them.
    let file = e.tmp.path().join("v2");
    std::fs::write(&file, "real-v2").unwrap();
    let out = tillit(&["secret", "rotate", "acme/shop/prod/db", "--value-file", file.to_str().unwrap(), "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_file(&db, "real-v2", Duration::from_secs(30), "v2", &l);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(files.join(".tillit-agent.json")).unwrap()).unwrap();
    // The forged one, the misaddressed one and the re-published copy are refused; the copy at
    // its own position (last + 2) is genuine and names version 1, which is already applied.
    assert_eq!(state["rejected"], 3, "{state}\n{}", l());
    let log = agent.log_text();
    assert!(log.contains("not in the trust set"), "{log}");
    assert!(log.contains("not its stream sequence"), "{log}");
    assert!(log.contains("site:west"), "{log}");
}

use tillit::proto::AckRequest;

/// Connect afresh (a full TLS handshake) with the identity in `dir` as it is on disk now, publish
/// and flush. `None` when the files were caught mid-rewrite (not a connection attempt).
async fn fresh_connect(dir: &Path, url: &str) -> Option<Result<(), String>> {
    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(dir)).ok()?;
    let ck = tillit::client::tls::certified_key(&files.cert_pem, files.key_pem.expose()).ok()?;
    ck.keys_match().ok()?;
    let params = tillit::client::ConnectParams::from_identity(&files, Some(url)).ok()?;
    let r = async {
        let nc = tillit::client::connect(&params).await.map_err(|e| e.to_string())?;
        nc.publish("shop.orders.ping", "x".into()).await.map_err(|e| e.to_string())?;
        nc.flush().await.map_err(|e| e.to_string())?;
        Ok(())
    }
    .await;
    Some(r)
}

fn status_json(e: &Estate) -> serde_json::Value {
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|_| serde_json::json!({ "status_failed": stderr(&out) }))
}

/// Wait until issuance switched to the new CA (a previous CA, no rollout pending).
fn wait_switched(e: &Estate, logs: &dyn Fn() -> String) {
    wait_for(Duration::from_secs(30), || {
        let s = status_json(e);
        s["cas"].as_array().map(|c| c.iter().any(|x| x["state"] == "previous")).unwrap_or(false) && s["ca_rollout"].is_null()
    })
    .unwrap_or_else(|| panic!("issuance never switched: {}\n{}", status_json(e), logs()));
}

fn issuer_cn(dir: &Path) -> String {
    let pem = std::fs::read_to_string(dir.join("tls/cert.pem")).unwrap();
    let der = tillit::issuer::x509::first_cert_der(&pem).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.issuer().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_with_clients_connecting_throughout_fails_no_connection() {
    let (e, _leaf) = Estate::init_with_leaf("carot.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let east_srv = east.start();
    // The agent materialises into the site directory itself: its ca.pem is the leaf server's
    // trust file, and the hook reloads the leaf server (through the pid file its config names).
    let pid_file = east.dir.join("nats-server.pid");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), east_srv.pid().unwrap().to_string());
    let agent = AgentProc::start(&east, &e.tmp.path().join("east-agent"), &east.dir, &east.url(), Some(&format!("kill -HUP $(cat {})", pid_file.display())));
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let before = issuer_cn(&orders);
    assert!(!before.contains("gen 2"), "{before}");
    // A long-lived session, and clients that keep connecting afresh to the hub and the site.
    let session = tillit::client::Identity::load(&orders).unwrap().connect().await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tally = std::sync::Arc::new(std::sync::Mutex::new((0u32, Vec::<String>::new())));
    let mut loops = Vec::new();
    for url in [e.nats_url(), east.url()] {
        let (stop, tally, dir) = (stop.clone(), tally.clone(), orders.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(r) = fresh_connect(&dir, &url).await {
                    let mut t = tally.lock().unwrap();
                    t.0 += 1;
                    if let Err(err) = r {
                        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
                        t.1.push(format!("{url} at {at}: {err}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    let l = || format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());
    // Wait for the agent to be up before rotating (its consumer exists once it enrolled).
    wait_for(Duration::from_secs(30), || site_status(&e, "east")["agents"] == 1).unwrap_or_else(|| panic!("agent never enrolled\n{}", l()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = tillit(&["rotate", "ca", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "rotate ca: {}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["phase"], "distributing", "{r}");
    assert_eq!(r["rollout"]["sites_pending"], serde_json::json!(["east"]), "{r}");
    // The site applies the bundle, reloads, acknowledges; then issuance switches.
    wait_switched(&e, &l);
    let bundle = std::fs::read_to_string(east.dir.join("ca.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "the site trusts old and new");
    assert_eq!(tillit_cas_in(&e, &e.dir.nats_tls().join("ca.pem")), 2, "the hub trusts old and new");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The service renews: its new certificate is from the new CA, on disk and in the session.
    session.renew_now().await.unwrap();
    let after = issuer_cn(&orders);
    assert!(after.contains("gen 2"), "renewed from the new CA: {after}");
    let ca_pem = std::fs::read_to_string(orders.join("tls/ca.pem")).unwrap();
    assert_eq!(ca_pem.matches("BEGIN CERTIFICATE").count(), 2, "the service trusts old and new");
    tokio::time::sleep(Duration::from_secs(1)).await;
    session.client().publish("shop.orders.after", "y".into()).await.unwrap();
    session.client().flush().await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for h in loops {
        h.await.unwrap();
    }
    let (attempts, failures) = tally.lock().unwrap().clone();
    assert!(attempts >= 20, "the clients kept connecting: {attempts}");
    assert!(failures.is_empty(), "{} of {attempts} connections failed during the rollover: {failures:?}\n{}", failures.len(), l());
    // The old CA stays trusted until its last certificate expired.
    let s = status_json(&e);
    let prev = s["cas"].as_array().unwrap().iter().find(|x| x["state"] == "previous").unwrap().clone();
    assert!(prev["retire_at"].is_string(), "{prev}");
    eprintln!("CA rollover: {attempts} fresh connections, 0 failed");
}

#[test]
fn a_failing_hook_is_retried_and_reported_never_acked_and_other_sites_events_never_arrive() {
    let (e, _leaf) = Estate::init_with_leaf("hook.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let east_srv = east.start();
    let files = e.tmp.path().join("east-files");
    let tries = e.tmp.path().join("tries");
    // Fails twice (saying why on stderr), then succeeds.
    let hook = format!("echo x >> {t}; [ $(wc -l < {t}) -ge 3 ] || {{ echo 'reload refused' >&2; exit 7; }}", t = tries.display());
    let agent = AgentProc::start(&east, &e.tmp.path().join("east-agent"), &files, &east.url(), Some(&hook));
    let l = || format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());
    wait_for(Duration::from_secs(30), || site_status(&e, "east")["agents"] == 1).unwrap_or_else(|| panic!("{}", l()));
    put_secret(&e, "acme/shop/prod/west-only", "w", &["site:west"]);
    put_secret(&e, "acme/shop/prod/db", "v1", &["site:east"]);
    // Reported while failing: not acknowledged, the failure and its reason visible.
    wait_for(Duration::from_secs(20), || site_status(&e, "east")["failures"].as_u64().unwrap_or(0) >= 1)
        .unwrap_or_else(|| panic!("no failure reported: {}\n{}", site_status(&e, "east"), l()));
    let st = site_status(&e, "east");
    assert!(st["last_error"].as_str().unwrap_or("").contains("reload refused"), "{st}");
    // Then the retry succeeds and the batch is acknowledged once.
    wait_file(&secret_file(&files, "acme/shop/prod/db"), "v1", Duration::from_secs(30), "applied", &l);
    wait_for(Duration::from_secs(20), || {
        let s = site_status(&e, "east");
        s["lag_events"] == 0 && s["last_ack_unix"].is_i64()
    })
    .unwrap_or_else(|| panic!("never acknowledged: {}\n{}", site_status(&e, "east"), l()));
    let st = site_status(&e, "east");
    assert!(st["failures"].as_u64().unwrap() >= 2, "both failures were reported: {st}");
    assert_eq!(std::fs::read_to_string(&tries).unwrap().lines().count(), 3, "retried until it worked, then not again");
    // The west-only secret never reached east (its events are not in east's consumer).
    assert!(!secret_file(&files, "acme/shop/prod/west-only").exists());
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(files.join(".tillit-agent.json")).unwrap()).unwrap();
    assert_eq!(state["rejected"], 0, "nothing for another site was even delivered: {state}");
    let (_, metrics) = http_get(e.http_port, "/metrics").unwrap();
    assert!(metrics.contains("tillit_site_failures_total"), "{metrics}");
    wait_for(Duration::from_secs(10), || {
        http_get(e.http_port, "/metrics").map(|(_, m)| m.contains("tillit_site_lag_events{site=\"east\"} 0") && m.contains("tillit_site_last_ack_timestamp_seconds{site=\"east\"}")).unwrap_or(false)
    })
    .unwrap_or_else(|| panic!("site gauges missing:\n{}", http_get(e.http_port, "/metrics").unwrap().1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_and_ack_refusals_are_typed_and_change_nothing() {
    use tillit::proto::AckData;
    // A hub without a leafnode listener cannot have sites.
    let plain = Estate::init("noleaf.example");
    let _n = plain.start_nats();
    let _s = plain.start_serve_ready();
    let out = tillit(&["site", "add", "east", "--nats-port", "4999", "--out", plain.tmp.path().join("s").to_str().unwrap(), "--identity", &plain.admin()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("leafnode listener"), "{}", stderr(&out));
    assert!(!plain.tmp.path().join("s").exists(), "nothing written");

    let (e, _leaf) = Estate::init_with_leaf("refuse.example");
    let _hub = e.start_nats();
    let _serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    // Same name again, a bad name.
    let again = tillit(&["site", "add", "east", "--nats-port", "4998", "--out", e.tmp.path().join("again").to_str().unwrap(), "--identity", &e.admin()]);
    assert!(!again.status.success() && stderr(&again).contains("already exists"), "{}", stderr(&again));
    let bad = tillit(&["site", "add", "a.b", "--nats-port", "4998", "--out", e.tmp.path().join("bad").to_str().unwrap(), "--identity", &e.admin()]);
    assert!(!bad.status.success(), "{}", stdout(&bad));
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    // Tokens: for an unknown site, and the reserved tenant.
    let t = tillit(&["token", "create", "--site", "nowhere", "--identity", &e.admin()]);
    assert!(!t.status.success() && stderr(&t).contains("no site nowhere"), "{}", stderr(&t));
    let t = tillit(&["token", "create", "--tenant", "tillit", "--project", "x", "--env", "y", "--service", "z", "--identity", &e.admin()]);
    assert!(!t.status.success() && stderr(&t).contains("reserved"), "{}", stderr(&t));

    // An agent, enrolled (through the hub here), and what it may not acknowledge.
    let agent_dir = e.tmp.path().join("agent");
    let out = tillit(&["enroll", "--token-file", east.agent_token().to_str().unwrap(), "--out", agent_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let agent = tillit::client::Identity::load(&agent_dir).unwrap().connect().await.unwrap();
    let service = tillit::client::Identity::load(&orders).unwrap().connect().await.unwrap();
    let aud = tillit::envelope::issuer("refuse.example");
    let data = |site: &str| AckData { site: site.into(), outcome: tillit::proto::AckOutcome::Applied, seqs: vec![1], event_ids: vec!["x".into()], last_event_type: None, error: None };
    let good = agent.sign_envelope(tillit::subjects::ENVELOPE_AGENT_ACK, "site:east", &aud, 60, data("east")).unwrap();
    async fn call(s: &tillit::client::session::Session, envelope: String) -> Result<tillit::proto::AckReply, String> {
        s.call::<tillit::proto::Ack>(AckRequest { envelope }).await.map_err(|e| e.to_string())
    }
    // A service is not an agent.
    let r = call(&service, service.sign_envelope(tillit::subjects::ENVELOPE_AGENT_ACK, "site:east", &aud, 60, data("east")).unwrap()).await;
    assert!(r.as_ref().unwrap_err().contains("forbidden"), "{r:?}");
    // Another site's acknowledgement.
    let r = call(&agent, agent.sign_envelope(tillit::subjects::ENVELOPE_AGENT_ACK, "site:west", &aud, 60, data("west")).unwrap()).await;
    assert!(r.as_ref().unwrap_err().contains("forbidden"), "{r:?}");
    // Signed by a key that is not the agent's.
    let mallory = nkeys::KeyPair::new_user();
    let forged = tillit::envelope::Signer::new(&mallory.public_key(), &agent.identity().id, std::sync::Arc::new(mallory))
        .sign(tillit::subjects::ENVELOPE_AGENT_ACK, "site:east", &aud, 60, None, data("east"), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64)
        .unwrap();
    let r = call(&agent, forged).await;
    assert!(r.as_ref().unwrap_err().contains("unauthenticated"), "{r:?}");
    // For all parties instead of the control plane; another type.
    let r = call(&agent, agent.sign_envelope(tillit::subjects::ENVELOPE_AGENT_ACK, "site:east", "all", 60, data("east")).unwrap()).await;
    assert!(r.as_ref().unwrap_err().contains("unauthenticated"), "{r:?}");
    let r = call(&agent, agent.sign_envelope("io.tillit.v1.secret.rotated", "site:east", &aud, 60, data("east")).unwrap()).await;
    assert!(r.as_ref().unwrap_err().contains("unauthenticated"), "{r:?}");
    // Nothing was recorded by any of those.
    let st = site_status(&e, "east");
    assert!(st["last_ack_unix"].is_null(), "{st}");
    // The genuine one is recorded once; the same envelope again is a replay.
    let r = call(&agent, good.clone()).await;
    assert!(r.is_ok(), "{r:?}");
    let r = call(&agent, good).await;
    assert!(r.as_ref().unwrap_err().contains("replayed"), "{r:?}");
    let _ = &tillit::proto::AckRequest { envelope: String::new() };
    // The agent may not touch anything but its own consumer and the service API.
    let nc = agent.client();
    for subject in ["$JS.hub.API.STREAM.INFO.TILLIT_EVENTS", "$JS.API.STREAM.INFO.TILLIT_EVENTS", "tillit.v1.admin.status"] {
        let r = tokio::time::timeout(Duration::from_secs(1), nc.request(subject, "".into())).await;
        assert!(!matches!(r, Ok(Ok(_))), "agents may not publish to {subject}: {r:?}");
    }
    // A site's agents are revoked like any service: cut off, and nothing they sign counts.
    let out = tillit(&["revoke", "tillit/sites/east/agent", "--reason", "site decommissioned", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let late = agent.sign_envelope(tillit::subjects::ENVELOPE_AGENT_ACK, "site:east", &aud, 60, data("east")).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), call(&agent, late)).await;
    assert!(!matches!(r, Ok(Ok(_))), "a revoked agent's acknowledgement was taken: {r:?}");
    assert_eq!(site_status(&e, "east")["agents"], 0, "a revoked agent no longer counts for its site");
}

#[test]
fn a_removed_site_is_cut_off_and_no_longer_holds_a_ca_rotation() {
    let (e, _leaf) = Estate::init_with_leaf("remove.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let west = site_add(&e, "west");
    let east_srv = east.start();
    let west_srv = west.start();
    let agent = AgentProc::start(&east, &e.tmp.path().join("east-agent"), &e.tmp.path().join("east-files"), &east.url(), None);
    let l = || format!("serve:\n{}\nagent:\n{}\nwest:\n{}", serve.log_text(), agent.log_text(), west_srv.log_text());
    wait_for(Duration::from_secs(30), || site_status(&e, "east")["agents"] == 1).unwrap_or_else(|| panic!("{}", l()));
    // West has no agent: a CA rotation waits for it.
    let out = tillit(&["rotate", "ca", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), l());
    let status = || status_json(&e);
    wait_for(Duration::from_secs(20), || status()["ca_rollout"]["sites_pending"] == serde_json::json!(["west"]))
        .unwrap_or_else(|| panic!("{}\n{}", status(), l()));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status()["ca_rollout"]["sites_pending"], serde_json::json!(["west"]), "still waiting for west");
    // Removing west: its server's links to the hub are revoked, and the rollout proceeds.
    let out = tillit(&["site", "remove", "west", "--reason", "decommissioned", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["leaf_users_revoked"].as_array().unwrap().len(), 2, "{r}");
    wait_for(Duration::from_secs(20), || {
        let s = status();
        s["ca_rollout"].is_null() && s["cas"].as_array().map(|c| c.iter().any(|x| x["state"] == "previous")).unwrap_or(false)
    })
    .unwrap_or_else(|| panic!("the rollout did not proceed: {}\n{}", status(), l()));
    let s = status();
    assert!(s["sites"].as_array().unwrap().iter().all(|x| x["name"] != "west"), "{s}");
    wait_for(Duration::from_secs(10), || west_srv.log_text().matches("Leafnode Error 'Authorization Violation'").count() >= 2)
        .unwrap_or_else(|| panic!("west's leaf links were not cut:\n{}", west_srv.log_text()));
    let again = tillit(&["site", "remove", "west", "--identity", &e.admin()]);
    assert!(!again.status.success() && stderr(&again).contains("no site west"), "{}", stderr(&again));
    drop(east_srv);
}

/// Step 3 of a CA rotation, driven by an injected clock: once the last certificate the old CA
/// issued has expired, the hub's certificate is re-issued by the new CA and the old CA leaves
/// the bundle (and the hub's trust file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_ca_leaves_the_bundle_after_its_last_certificate_expired() {
    use std::sync::Arc;
    use tillit::clock::{Clock, ManualClock, SystemClock};
    let e = Estate::init("retire.example");
    let _hub = e.start_nats();
    let clock = Arc::new(ManualClock::new(SystemClock.now_unix()));
    let serve = InProcessServe::start(&e, clock.clone()).await;
    // No site: issuance switches at once.
    let out = tokio::task::spawn_blocking({
        let admin = e.admin();
        move || tillit(&["rotate", "ca", "--identity", &admin, "--json"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["phase"], "switched", "{r}");
    let prev = r["cas"].as_array().unwrap().iter().find(|c| c["state"] == "previous").cloned().unwrap();
    let current = r["cas"].as_array().unwrap().iter().find(|c| c["state"] == "current").cloned().unwrap();
    let tls = e.dir.nats_tls();
    let certs = |f: &str| tillit_cas_in(&e, &tls.join(f));
    assert_eq!(tillit_cas_in(&e, &tls.join("ca.pem")), 2, "old and new are trusted");
    let issuer = |f: &str| {
        let der = tillit::issuer::x509::first_cert_der(&std::fs::read_to_string(tls.join(f)).unwrap()).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        c.issuer().to_string()
    };
    assert!(!issuer("cert.pem").contains("gen 2"), "the hub's certificate is still the old CA's");
    // Nothing happens before the old CA's last certificate expired…
    clock.advance(3600);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(certs("ca.pem"), 2, "retired too early");
    // …and after it, the hub's certificate comes from the new CA and the old CA is gone.
    let retire_at = prev["retire_at"].as_str().unwrap().to_string();
    assert!(current["fingerprint"].is_string());
    clock.advance(60 * 86_400);
    wait_for_async(Duration::from_secs(10), || certs("ca.pem") == 1).await.unwrap_or_else(|| panic!("old CA (retire at {retire_at}) never left the hub's bundle"));
    assert!(issuer("cert.pem").contains("gen 2"), "the hub's certificate is re-issued by the new CA: {}", issuer("cert.pem"));
    serve.stop().await;
}

async fn wait_for_async(within: Duration, mut f: impl FnMut() -> bool) -> Option<()> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f() {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// `rotate ca --finish` with a site: the site's agent is asked (`ca.rotated` phase `reissue`) and
/// re-issues its server's certificate from the new CA (its key made at the site) and its
/// leafnode users' JWTs, the hub's certificate is re-issued, and only then the old CA leaves
/// every bundle. A client enrolled afterwards reaches both servers, and the site server works on
/// its re-issued leafnode credentials after a restart. Before that, the site certificate cannot
/// be renewed (not every client trusts the new CA), and only agents may ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_ca_rotation_moves_the_site_servers_certificate_first_then_drops_the_old_ca() {
    use std::os::unix::fs::PermissionsExt;
    let (e, _leaf) = Estate::init_with_leaf("finish.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let mut east_srv = east.start();
    let pid_file = east.dir.join("nats-server.pid");
    let agent_dir = e.tmp.path().join("east-agent");
    let agent = AgentProc::start(&east, &agent_dir, &east.dir, &east.url(), Some(&format!("kill -HUP $(cat {})", pid_file.display())));
    let l = || format!("serve:\n{}\nagent:\n{}", serve.log_text(), agent.log_text());
    wait_for(Duration::from_secs(30), || site_status(&e, "east")["agents"] == 1).unwrap_or_else(|| panic!("agent never enrolled\n{}", l()));
    assert_eq!(site_status(&e, "east")["cert_from_current_ca"], true);

    let out = tillit(&["rotate", "ca", "--finish", "--identity", &e.admin()]);
    assert!(!out.status.success(), "nothing to finish yet");
    assert!(stderr(&out).contains("no CA rotation to finish"), "{}", stderr(&out));
    let out = tillit(&["rotate", "ca", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "rotate ca: {}", stderr(&out));
    wait_switched(&e, &l);
    assert!(!issuer_cn(&east.dir).contains("gen 2"), "the site server keeps the old CA's certificate while clients may not trust the new one");
    assert_eq!(site_status(&e, "east")["cert_from_current_ca"], false);

    // Only an agent may ask, and not while the rotation is under way.
    let agent_session = tillit::client::session::Session::connect(&tillit::layout::IdentityDir::new(&agent_dir), Some(&east.url())).await.unwrap();
    let (csr, _key) = tillit::issuer::x509::make_csr("UNOTTHESITEUSER").unwrap();
    let req = tillit::proto::SiteRenewRequest { csr };
    let r: Result<tillit::proto::SiteRenewReply, _> =
        agent_session.call::<tillit::proto::SiteRenew>(req.clone()).await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("rotation is in progress"), "{err}");
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let service = tillit::client::session::Session::connect(&tillit::layout::IdentityDir::new(&orders), None).await.unwrap();
    let r: Result<tillit::proto::SiteRenewReply, _> = service.call::<tillit::proto::SiteRenew>(req).await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("only a site's agent"), "{err}");
    let creds_before = std::fs::read_to_string(east.dir.join("leaf-tillit.creds")).unwrap();

    let out = tillit(&["rotate", "ca", "--finish", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "rotate ca --finish: {}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["phase"], "retiring", "{r}");
    wait_for(Duration::from_secs(30), || issuer_cn(&east.dir).contains("gen 2"))
        .unwrap_or_else(|| panic!("the site server's certificate was never re-issued by the new CA\n{}", l()));
    let count = |p: &Path| std::fs::read_to_string(p).unwrap_or_default().matches("BEGIN CERTIFICATE").count();
    let tls = e.dir.nats_tls();
    wait_for(Duration::from_secs(30), || tillit_cas_in(&e, &tls.join("ca.pem")) == 1 && count(&east.dir.join("ca.pem")) == 1)
        .unwrap_or_else(|| panic!("the old CA never left the hub's and the site's bundles\n{}", l()));
    assert!(issuer_cn(e.dir.nats_tls().parent().unwrap()).contains("gen 2"), "the hub's certificate is the new CA's");
    assert_eq!(site_status(&e, "east")["cert_from_current_ca"], true);
    let key = east.dir.join("tls/key.pem");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the new key stays private");
    assert_ne!(std::fs::read_to_string(east.dir.join("leaf-tillit.creds")).unwrap(), creds_before, "leafnode JWTs re-issued");

    // A client enrolled now (new CA only) reaches the hub and the reloaded site server.
    let fresh = enroll_one(&e, "acme/shop/prod/billing", "billing");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for url in [e.nats_url(), east.url()] {
        let r = fresh_connect(&fresh, &url).await.expect("identity files readable");
        assert!(r.is_ok(), "{url}: {r:?}\n{}", l());
    }
    // The site server runs on its re-issued credentials: restarted, it relays a rotation again.
    east_srv.stop();
    let east_srv2 = east.start();
    put_secret(&e, "acme/shop/prod/db", "v1", &["site:east"]);
    wait_file(&secret_file(&east.dir, "acme/shop/prod/db"), "v1", Duration::from_secs(40), "after the site server restart", &|| {
        format!("{}\nleaf:\n{}", l(), east_srv2.log_text())
    });
}

#[test]
fn the_agent_of_a_removed_site_says_so_once_and_stops() {
    let (e, _leaf) = Estate::init_with_leaf("gone.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let _east_srv = east.start();
    let mut agent = AgentProc::start(&east, &e.tmp.path().join("east-agent"), &e.tmp.path().join("east-files"), &east.url(), None);
    wait_for(Duration::from_secs(30), || site_status(&e, "east")["agents"] == 1)
        .unwrap_or_else(|| panic!("serve:\n{}\nagent:\n{}", serve.log_text(), agent.log_text()));
    let out = tillit(&["site", "remove", "east", "--reason", "decommissioned", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = exited_within(&mut agent.child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the removed site's agent kept running:\n{}", agent.log_text()));
    // An exit code, not a signal: a daemon dying of SIGPIPE on the connection the server closed
    // would say nothing at all.
    assert_eq!(status.code(), Some(1), "it exits 1, saying why: {status:?}\n{}", agent.log_text());
    let log = agent.log_text();
    assert_eq!(log.matches("refuse this agent's credentials").count(), 1, "said once:\n{log}");
}

#[test]
fn site_add_refuses_when_the_hubs_leafnode_listener_is_not_there() {
    let (e, _leaf) = Estate::init_with_leaf("noleaf.example");
    // The hub runs without the leafnodes block tillit wrote.
    let conf = std::fs::read_to_string(e.dir.server_conf()).unwrap();
    let start = conf.find("leafnodes {").unwrap();
    let end = start + conf[start..].find("\n}\n").unwrap() + 3;
    std::fs::write(e.dir.server_conf(), format!("{}{}", &conf[..start], &conf[end..])).unwrap();
    let _hub = e.start_nats();
    let _serve = e.start_serve_ready();
    let dir = e.tmp.path().join("site-east");
    let out = tillit(&["site", "add", "east", "--nats-port", &free_port().to_string(), "--out", dir.to_str().unwrap(), "--identity", &e.admin()]);
    assert!(!out.status.success(), "site add with no leafnode listener");
    assert!(stderr(&out).contains("does not answer"), "{}", stderr(&out));
    assert!(!dir.join("server.conf").exists(), "nothing written");
}

#[test]
fn rotate_ca_wait_follows_the_phases() {
    let e = Estate::init("wait.example");
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let out = tillit(&["rotate", "ca", "--wait", "60s", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("switched: new certificates come from the new CA"), "{}", stdout(&out));
    let out = tillit(&["rotate", "ca", "--finish", "--wait", "90s", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("done: one CA left"), "{}", stdout(&out));
}

/// An idle agent's pulls are ended by the server (its 408 after the wait, on the pull's own
/// subject under the agent's one pull inbox), not by the agent giving up on them; the next
/// rotation still arrives at once.
#[test]
fn an_idle_agents_pulls_end_cleanly_and_the_next_rotation_arrives_at_once() {
    let (e, _leaf) = Estate::init_with_leaf("idle.example");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let (_east, east_srv, _files, agent, db) = east_with_agent(&e, &serve, "v1");
    let l = || format!("serve:\n{}\nagent:\n{}\nleaf:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());
    // Two idle waits of 5 s each: a pull the server did not end would fail after 10 s.
    std::thread::sleep(Duration::from_millis(11_500));
    let log = agent.log_text();
    assert!(!log.contains("no end to a pull") && !log.contains("retrying"), "idle pulls failed:\n{}", l());
    let started = std::time::Instant::now();
    rotate_secret(&e, "acme/shop/prod/db", "v2");
    wait_file(&db, "v2", Duration::from_secs(10), "v2 after an idle spell", &l);
    assert!(started.elapsed() < Duration::from_secs(3), "the rotation waited for a pull: {:?}\n{}", started.elapsed(), l());
}

//! The data plane without the control plane: pre-signed OCSP answers served next to every
//! nats-server keep valid certificates connecting and revoked ones refused while no `serve`
//! runs, and while a site is cut off from the hub.

use crate::harness::*;
use std::time::{Duration, Instant};

/// A fresh connection works end to end (a request through the server and back).
async fn usable(url: &str, cert_of: &std::path::Path, creds_of: &std::path::Path) -> Result<(), String> {
    let c = connect_with_cert_of(url, cert_of, creds_of).await?;
    c.flush().await.map_err(|e| e.to_string())?;
    Ok(())
}

pub(crate) fn serial_of(dir: &std::path::Path) -> String {
    tillit::issuer::x509::serial_hex(&std::fs::read_to_string(dir.join("tls/cert.pem")).unwrap()).unwrap()
}

/// Wait until the responder's saved copy (or serve's) holds `serial` with `status`.
pub(crate) fn copy_says(file: &std::path::Path, serial: &str, revoked: bool, within: Duration) -> Option<tillit::ocsp::copy::Held> {
    let deadline = Instant::now() + within;
    loop {
        let held = tillit::ocsp::copy::Copy::load(file.to_path_buf()).get(serial);
        if let Some(h) = &held {
            if matches!(h.status(), tillit::ocsp::Status::Revoked(_)) == revoked {
                return held;
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_stopped_the_hub_admits_valid_certificates_and_refuses_revoked_ones() {
    let e = Estate::init("example.org");
    let nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    // Without a responder next to the hub, status says the control plane is a single point of failure.
    let status = |e: &Estate| -> serde_json::Value {
        let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()["availability"].clone()
    };
    let a = status(&e);
    assert_eq!(a["local_responder_answers"], false, "{a}");
    assert_eq!(a["when_unreachable"], "refuse", "{a}");
    let warns = a["warnings"].as_array().unwrap();
    assert!(warns.iter().any(|w| w.as_str().unwrap().contains("no OCSP responder answers")), "{a}");
    assert!(warns.iter().any(|w| w.as_str().unwrap().contains("one `serve` replica")), "{a}");
    // A hub server of a release with a known fault is named, with the release that fixes it
    // (the pinned test server, 2.14.0, is one).
    let version = String::from_utf8_lossy(&std::process::Command::new(nats_server_bin()).arg("--version").output().unwrap().stdout).trim().rsplit(' ').next().unwrap_or("").to_string();
    let named = warns.iter().any(|w| w.as_str().unwrap().contains("fixed in nats-server 2.14.3"));
    assert_eq!(named, tillit::natsbin::known_fault(&version).is_some(), "nats-server {version}: {a}");
    let text = stdout(&tillit(&["status", "--identity", &e.admin()]));
    assert!(text.contains("WARNING") && text.contains("tillit responder"), "{text}");
    let responder = e.start_responder();
    let a = status(&e);
    assert_eq!(a["local_responder_answers"], true, "{a}");
    assert!(!a["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("no OCSP responder answers")), "{a}");
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    let pay = enroll_one(&e, "acme/shop/prod/payments", "payments");
    // Both connect while serve runs: the hub has checked payments' certificate as good.
    usable(&nats.url(), &orders, &orders).await.expect("orders connects");
    usable(&nats.url(), &pay, &pay).await.expect("payments connects");
    let answers = e.dir.responder_answers();
    let held = copy_says(&answers, &serial_of(&orders), false, Duration::from_secs(5)).unwrap_or_else(|| panic!("the responder holds orders' answer:\n{}\n--- serve:\n{}", responder.log_text(), serve.log_text()));
    // Answers last as long as the certificate (24 h here): far past a 30-minute outage.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(held.next_update() > now + 3 * 3600, "a pre-signed answer lasts hours: {} vs now {now}", held.next_update());

    // Revoked while serve runs: refused within 2 s, the certificate as well as the JWT.
    let started = Instant::now();
    let out = tillit(&["revoke", "acme/shop/prod/payments", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut refused_after = None;
    while started.elapsed() < Duration::from_secs(3) {
        if usable(&nats.url(), &pay, &orders).await.is_err() {
            refused_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = refused_after.expect("payments' certificate (checked good before) still admitted 3 s after the revocation");
    eprintln!("revoked certificate refused after {took:?}");
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    copy_says(&answers, &serial_of(&pay), true, Duration::from_secs(5)).expect("the responder's copy says revoked");

    // Every replica stopped.
    serve.terminate(Duration::from_secs(15));
    assert!(http_get(e.http_port, "/healthz").is_none(), "serve is down");
    for round in 0..3 {
        // Fresh connections (new instances, reconnects) of the valid service keep working.
        usable(&nats.url(), &orders, &orders).await.unwrap_or_else(|err| panic!("round {round}: orders refused with serve down: {err}"));
        // The revoked one stays refused: with its own JWT, and its certificate with a valid JWT.
        assert!(usable(&nats.url(), &pay, &pay).await.is_err(), "round {round}: revoked payments admitted");
        assert!(usable(&nats.url(), &pay, &orders).await.is_err(), "round {round}: revoked certificate admitted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = nats.log_text();
    assert!(log.contains("Revoked") || log.contains("revoked"), "the hub says why:\n{}", &log[log.len().saturating_sub(3000)..]);
}

/// Poll until a fresh connection of `cert_of` + `creds_of` at `url` is refused; how long it took.
async fn refused_within(url: &str, cert_of: &std::path::Path, creds_of: &std::path::Path, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if usable(url, cert_of, creds_of).await.is_err() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Start `east`'s agent answering OCSP next to its server (on the estate's local responder
/// port), enroll `services` (identity, name), and wait until the agent's copy holds each one's
/// answer and each connects at the site. The agent, its files dir, the identity dirs.
pub(crate) async fn agent_and_services(e: &Estate, serve: &Serve, east: &SiteDir, east_srv: &NatsServer, services: &[(&str, &str)]) -> (AgentProc, std::path::PathBuf, Vec<std::path::PathBuf>) {
    let files = e.tmp.path().join("east-files");
    let ocsp_addr = format!("127.0.0.1:{}", e.ocsp_port);
    let agent = AgentProc::start_args(east, &e.tmp.path().join("east-agent"), &files, &east.url(), None, &["--ocsp-addr", &ocsp_addr]);
    let logs = || format!("serve:\n{}\nagent:\n{}\nsite:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());
    let copy = tillit::layout::SiteDir::new(&files).ocsp_answers();
    let mut dirs = Vec::new();
    for (id, name) in services {
        let dir = enroll_one(e, id, name);
        copy_says(&copy, &serial_of(&dir), false, Duration::from_secs(15)).unwrap_or_else(|| panic!("the agent's copy never got {}:\n{}", dir.display(), logs()));
        usable(&east.url(), &dir, &dir).await.unwrap_or_else(|err| panic!("{} at the site: {err}\n{}", dir.display(), logs()));
        dirs.push(dir);
    }
    (agent, files, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_cut_off_from_the_hub_keeps_admitting_its_valid_services_and_refusing_revoked_ones() {
    let (e, _leaf) = Estate::init_with_leaf("partition.example");
    let mut hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let east_srv = east.start();
    let (agent, files, dirs) = agent_and_services(&e, &serve, &east, &east_srv, &[("acme/shop/prod/orders", "orders"), ("acme/shop/prod/payments", "payments")]).await;
    let (orders, pay) = (dirs[0].clone(), dirs[1].clone());
    let logs = || format!("serve:\n{}\nagent:\n{}\nsite:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());

    // Revoked while connected: refused at the site within 2 s (certificate and JWT).
    let out = tillit(&["revoke", "acme/shop/prod/payments", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let took = refused_within(&east.url(), &pay, &orders, Duration::from_secs(3)).await.unwrap_or_else(|| panic!("the site still admits a revoked certificate:\n{}", logs()));
    eprintln!("site refused the revoked certificate after {took:?}");
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    let took = refused_within(&east.url(), &orders, &pay, Duration::from_secs(3)).await.unwrap_or_else(|| panic!("the site still admits a revoked JWT:\n{}", logs()));
    assert!(took <= Duration::from_secs(2), "took {took:?}");

    // The cut: the hub goes away (and with it every path to the control plane).
    hub.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..3 {
        usable(&east.url(), &orders, &orders).await.unwrap_or_else(|err| panic!("round {round}: orders refused at the cut-off site: {err}\n{}", logs()));
        assert!(usable(&east.url(), &pay, &pay).await.is_err(), "round {round}: revoked payments admitted");
        assert!(usable(&east.url(), &pay, &orders).await.is_err(), "round {round}: revoked certificate admitted");
        assert!(usable(&east.url(), &orders, &pay).await.is_err(), "round {round}: revoked JWT admitted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The agent keeps running and keeps its files (the site server's CA bundle among them).
    let mut agent = agent;
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent stopped when the hub went away:\n{}", agent.log_text());
    let ca = tillit::layout::SiteDir::new(&files).ca();
    assert!(std::fs::read_to_string(&ca).unwrap().contains("BEGIN CERTIFICATE"), "the agent's files are gone");
}

/// A TCP relay the site's leafnode links go through: `cut` drops every link and refuses new
/// ones (a partition between the site and the hub, both servers running), `heal` lets them
/// through again.
struct Relay {
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(port: u16, target: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let (o, l) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused while cut
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(task);
            }
        });
        Relay { open, links }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for t in self.links.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn heal(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_made_while_a_site_was_cut_off_bite_there_within_five_seconds_of_the_heal() {
    let (e, leaf) = Estate::init_with_leaf("heal.example");
    // The site's leafnode links go through a relay; the hub advertises the relay's port, so a
    // reconnecting site never dials around it.
    let relay_port = free_port();
    let relay = Relay::start(relay_port, leaf).await;
    let hub_conf = std::fs::read_to_string(e.dir.server_conf()).unwrap();
    let hub_conf = hub_conf.replacen("leafnodes {\n", &format!("leafnodes {{\n  advertise: \"127.0.0.1:{relay_port}\"\n"), 1);
    std::fs::write(e.dir.server_conf(), hub_conf).unwrap();
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    let east = site_add(&e, "east");
    let conf = std::fs::read_to_string(east.conf()).unwrap();
    assert!(conf.contains(&format!("tls://127.0.0.1:{leaf}")), "{conf}");
    std::fs::write(east.conf(), conf.replace(&format!("tls://127.0.0.1:{leaf}"), &format!("tls://127.0.0.1:{relay_port}"))).unwrap();
    let east_srv = east.start();
    let (agent, files, dirs) = agent_and_services(&e, &serve, &east, &east_srv, &[("acme/shop/prod/orders", "orders"), ("acme/shop/prod/shipping", "shipping")]).await;
    let (orders, ship) = (dirs[0].clone(), dirs[1].clone());
    let logs = || format!("serve:\n{}\nagent:\n{}\nsite:\n{}", serve.log_text(), agent.log_text(), east_srv.log_text());
    let copy = tillit::layout::SiteDir::new(&files).ocsp_answers();

    relay.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Revoked during the cut: the site cannot know yet, and keeps serving.
    let out = tillit(&["revoke", "acme/shop/prod/shipping", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_secs(2)).await;
    usable(&east.url(), &orders, &orders).await.unwrap_or_else(|err| panic!("orders refused at the cut-off site: {err}\n{}", logs()));
    if let Err(err) = usable(&east.url(), &ship, &orders).await {
        let held = tillit::ocsp::copy::Copy::load(copy.clone()).get(&serial_of(&ship)).map(|h| h.status());
        panic!("the cut-off site refused shipping before the heal ({err}; agent's copy: {held:?}): is the relay bypassed?\n{}", logs());
    }
    // The heal: certificate and JWT revocation both bite within 5 s.
    let healed = Instant::now();
    relay.heal();
    let cert = refused_within(&east.url(), &ship, &orders, Duration::from_secs(10)).await.unwrap_or_else(|| panic!("the site never learnt the revocation made during the cut:\n{}", logs()));
    let jwt = refused_within(&east.url(), &orders, &ship, Duration::from_secs(10)).await.unwrap_or_else(|| panic!("the site never learnt the JWT revocation made during the cut:\n{}", logs()));
    let both = healed.elapsed();
    eprintln!("after the heal: certificate refused after {cert:?}, the JWT {jwt:?} later, both after {both:?}");
    assert!(both <= Duration::from_secs(5), "certificate {cert:?}, both {both:?}");
    usable(&east.url(), &orders, &orders).await.expect("orders still admitted after the heal");
}

/// A single `serve` keeps the replies of changing requests across a clean restart: the very same
/// signed grant, sent again after the restart (a client whose reply was lost while `serve`
/// restarted), gets the first reply and changes nothing; the kept reply lies sealed in the data
/// dir's spill files meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_again_across_a_clean_restart_gets_its_first_reply() {
    let e = Estate::init("spill.example");
    let _nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    let (admin, anc) = admin_connect(&e).await;
    let admin_key = nkeys::KeyPair::from_seed(admin.user_seed.expose()).unwrap();
    let body = serde_json::json!({ "service": "acme/shop/prod/orders", "pub": ["kept.across.restart"], "sub": [] });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let signed = tillit::proto::sign_request(&admin_key, "spill.example", "tillit.v1.admin.grant", "io.tillit.v1.admin.grant", body, now).unwrap();
    let first = anc.request("tillit.v1.admin.grant", signed.clone().into_bytes().into()).await.expect("a reply");
    let first = String::from_utf8(first.payload.to_vec()).unwrap();
    assert!(first.contains("\"result\""), "{first}");

    assert!(serve.terminate(Duration::from_secs(15)).success());
    let spilled: Vec<u8> = e.dir.reply_spill().iter().flat_map(|p| std::fs::read(p).unwrap_or_default()).collect();
    assert!(!spilled.is_empty(), "the kept reply was saved for the next run");
    for p in e.dir.reply_spill() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
    }
    let needle = b"kept.across.restart";
    assert!(!spilled.windows(needle.len()).any(|w| w == needle), "the kept reply lies in clear in the data dir");

    let _serve = e.start_serve_ready();
    let again = anc.request("tillit.v1.admin.grant", signed.into_bytes().into()).await.expect("a reply");
    assert_eq!(String::from_utf8(again.payload.to_vec()).unwrap(), first, "the first reply, after the restart");
    let out = tillit(&["audit", "tail", "--data-dir", e.data(), "-n", "100", "--json"]);
    let grants = stdout(&out).lines().filter(|l| l.contains("\"action\":\"grant\"") && l.contains("kept.across.restart")).count();
    assert_eq!(grants, 1, "one change for two sends: {}", stdout(&out));
}

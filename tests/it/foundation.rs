//! `init`, `serve`, `status`, health and metrics, tenant accounts, against a real nats-server.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use tillit::layout::IdentityDir;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_the_contract_layout_and_refuses_to_overwrite() {
    let e = Estate::init("example.org");
    let d = &e.dir;
    let admin = d.admin();
    for p in [d.config_file(), d.master_key(), d.server_conf(), d.operator_jwt(), admin.creds(), admin.cert(), admin.key(), admin.ca(), admin.identity_json()] {
        assert!(p.is_file(), "{} missing", p.display());
    }
    assert_eq!(mode(&d.master_key()), 0o600);
    assert_eq!(mode(&admin.creds()), 0o600);
    assert_eq!(mode(&admin.key()), 0o600);
    assert_eq!(mode(&d.nats_tls().join("key.pem")), 0o600);
    assert_eq!(mode(d.root()) & 0o077, 0, "data dir is private");
    assert_eq!(mode(&d.store()) & 0o077, 0, "store dir is private");
    let conf = std::fs::read_to_string(d.server_conf()).unwrap();
    assert!(conf.contains(&format!("listen: \"127.0.0.1:{}\"", e.nats_port)), "{conf}");
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(admin.identity_json()).unwrap()).unwrap();
    assert_eq!(info["trust_domain"], "example.org");
    assert_eq!(info["kind"], "admin");
    assert_eq!(info["nats_urls"][0], e.nats_url());
    assert!(info["id"].as_str().unwrap().starts_with("spiffe://example.org/"));

    // No nkey seed (S[OAU] + 56 base32 characters) or PEM private key in clear in the store.
    for entry in walk(&d.store()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"), "PEM key in clear in {}", entry.display());
        let seed_like = bytes.windows(58).any(|w| {
            w[0] == b'S' && matches!(w[1], b'O' | b'A' | b'U') && w[2..].iter().all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(c))
        });
        assert!(!seed_like, "nkey seed in clear in {}", entry.display());
    }

    // A second init without --force is refused and changes nothing.
    let key_before = std::fs::read(d.master_key()).unwrap();
    let out = tillit(&["init", "--data-dir", e.data(), "--trust-domain", "other.org", "--nats-url", "nats://127.0.0.1:4222"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--force") && err.contains("example.org"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert_eq!(std::fs::read(d.master_key()).unwrap(), key_before);

    // With --force the estate is new.
    let out = tillit(&["init", "--data-dir", e.data(), "--trust-domain", "other.org", "--nats-url", "nats://127.0.0.1:4222", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(d.master_key()).unwrap(), key_before);
    let leftovers: Vec<_> = std::fs::read_dir(e.tmp.path()).unwrap().map(|x| x.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no staging or replaced dirs left: {leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_identity_connects_with_mutual_tls_and_jwt() {
    let e = Estate::init("example.org");
    let _nats = e.start_nats();
    // nats-server checks every client certificate with tillit's OCSP responder: serve must run.
    let _serve = e.start_serve_ready();
    let files = tillit::identity::load(&IdentityDir::new(e.admin())).unwrap();
    let params = tillit::client::ConnectParams::from_identity(&files, None).unwrap();
    let nc = tillit::client::connect(&params).await.expect("admin connects");
    nc.flush().await.expect("a full round trip to the server");
    // It may publish the admin API and subscribe to its own inbox: a request on a subject
    // nothing serves comes back as "no responders" (a status message delivered to that inbox).
    let err = nc.request("tillit.v1.admin.nothing", "x".into()).await.unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders, "{err}");
    // openssl reads the PEM and verifies the chain.
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(IdentityDir::new(e.admin()).ca())
        .arg(IdentityDir::new(e.admin()).cert())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_status_health_metrics_and_micro_discovery() {
    let e = Estate::init("example.org");
    // serve first: it waits for NATS, healthy but not ready.
    let mut serve = e.start_serve();
    wait_for(Duration::from_secs(10), || http_get(e.http_port, "/healthz").map(|(c, _)| c == 200).unwrap_or(false))
        .expect("healthz answers while NATS is down");
    assert_eq!(http_get(e.http_port, "/readyz").unwrap().0, 503);
    let _nats = e.start_nats();
    wait_for(Duration::from_secs(20), || http_get(e.http_port, "/readyz").map(|(c, _)| c == 200).unwrap_or(false))
        .unwrap_or_else(|| panic!("not ready:\n{}", serve.log_text()));

    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["trust_domain"], "example.org");
    assert!(s["accounts"]["SYS"]["public_key"].as_str().unwrap().starts_with('A'));
    assert!(s["accounts"]["TILLIT"]["public_key"].as_str().unwrap().starts_with('A'));
    assert_eq!(s["counts"]["identities"], 1);
    assert_eq!(s["counts"]["accounts"], 3, "SYS, TILLIT, BOOTSTRAP");
    assert_eq!(s["accounts"]["BOOTSTRAP"]["kind"], "bootstrap");
    assert_eq!(s["caller"], "spiffe://example.org/tillit/admin/admin");

    let human = tillit(&["status", "--identity", &e.admin()]);
    assert!(stdout(&human).contains("trust domain   example.org"));

    let (code, metrics) = http_get(e.http_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("tillit_requests_total{endpoint=\"tillit.v1.admin.status\",outcome=\"ok\"} 2"), "{metrics}");
    assert!(metrics.contains("tillit_nats_connected{connection=\"api\"} 1"));
    assert!(metrics.contains("tillit_identities 1"));
    // No `Accept`: the Prometheus text format 0.0.4 (`tests/it/metrics.rs` checks both formats).
    assert!(metrics.contains("# TYPE tillit_requests_total counter\n") && !metrics.contains("# EOF"), "{metrics}");

    // Standard micro-service discovery.
    let files = tillit::identity::load(&IdentityDir::new(e.admin())).unwrap();
    let nc = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()).await.unwrap();
    let ping = nc.request("$SRV.PING.tillit", "".into()).await.expect("ping");
    let v: serde_json::Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(v["name"], "tillit");
    assert_eq!(v["type"], "io.nats.micro.v1.ping_response");
    let info = nc.request("$SRV.INFO.tillit", "".into()).await.expect("info");
    let v: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    let subjects: Vec<&str> = v["endpoints"].as_array().unwrap().iter().map(|x| x["subject"].as_str().unwrap()).collect();
    assert!(subjects.contains(&"tillit.v1.admin.status"), "{subjects:?}");
    let stats = nc.request("$SRV.STATS.tillit", "".into()).await.expect("stats");
    assert!(String::from_utf8_lossy(&stats.payload).contains("stats_response"));

    // Clean shutdown on SIGTERM.
    let st = serve.terminate(Duration::from_secs(10));
    assert!(st.success(), "serve exit {st:?}:\n{}", serve.log_text());
    assert!(serve.log_text().contains("stopped"));
}

#[test]
fn dev_runs_the_whole_stack_and_stops_it_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dev");
    let nats_port = free_port();
    let http_port = free_port();
    let log = tmp.path().join("dev.log");
    let mut child = std::process::Command::new(tillit_bin())
        .args(["dev", "--data-dir", data.to_str().unwrap()])
        .args(["--nats-url", &format!("nats://127.0.0.1:{nats_port}"), "--http-addr", &format!("127.0.0.1:{http_port}")])
        .env("NATS_SERVER_BIN", nats_server_bin())
        .env_remove("TILLIT_MASTER_KEY")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("dev.err")).unwrap())
        .spawn()
        .unwrap();
    let ready = wait_for(Duration::from_secs(30), || http_get(http_port, "/readyz").map(|(c, _)| c == 200).unwrap_or(false));
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    if ready.is_none() {
        let _ = child.kill();
        panic!("dev stack never ready:\n{printed}\n{}", std::fs::read_to_string(tmp.path().join("dev.err")).unwrap_or_default());
    }
    assert!(printed.contains("tillit status --identity"), "prints how to connect: {printed}");
    let admin = data.join("admin");
    let out = tillit(&["status", "--identity", admin.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["trust_domain"], "dev.tillit.local");

    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let stopped = wait_for(Duration::from_secs(15), || matches!(child.try_wait(), Ok(Some(_))));
    assert!(stopped.is_some(), "dev did not exit on SIGTERM");
    assert!(child.wait().unwrap().success());
    // nats-server went with it.
    assert!(
        wait_for(Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err()).is_some(),
        "nats-server still listening after dev stopped"
    );
    // A second `dev` on the same dir reuses it (no re-init).
    let key = std::fs::read(data.join("master.key")).unwrap();
    let mut again = std::process::Command::new(tillit_bin())
        .args(["dev", "--data-dir", data.to_str().unwrap()])
        .env("NATS_SERVER_BIN", nats_server_bin())
        .env_remove("TILLIT_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), || http_get(http_port, "/readyz").map(|(c, _)| c == 200).unwrap_or(false)).expect("ready again");
    let _ = std::process::Command::new("kill").arg("-TERM").arg(again.id().to_string()).status();
    wait_for(Duration::from_secs(15), || matches!(again.try_wait(), Ok(Some(_)))).expect("stops again");
    assert_eq!(std::fs::read(data.join("master.key")).unwrap(), key);
}

#[test]
fn serve_stops_on_sigterm_even_when_nats_is_gone() {
    let e = Estate::init("example.org");
    // Never connected.
    let mut serve = e.start_serve();
    wait_for(Duration::from_secs(10), || http_get(e.http_port, "/healthz").is_some()).expect("healthz");
    assert!(serve.terminate(Duration::from_secs(10)).success());
    // Connected, then the server dies.
    let mut nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    nats.stop();
    wait_for(Duration::from_secs(10), || http_get(e.http_port, "/readyz").map(|(c, _)| c == 503).unwrap_or(false))
        .expect("readyz reports the lost connection");
    let st = serve.terminate(Duration::from_secs(15));
    assert!(st.success(), "{}", serve.log_text());
}

#[test]
fn dev_refuses_a_taken_port_and_settings_it_would_ignore() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dev");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let http_port = free_port();
    let run = |args: &[&str]| {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(tillit_bin())
            .arg("dev")
            .args(args)
            .env("NATS_SERVER_BIN", nats_server_bin())
            .env_remove("TILLIT_MASTER_KEY")
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let (out, took) = run(&["--data-dir", data.to_str().unwrap(), "--nats-url", &format!("nats://127.0.0.1:{taken_port}"), "--http-addr", &format!("127.0.0.1:{http_port}")]);
    assert!(!out.status.success(), "dev ran with its NATS port taken: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(&out).contains("is not free"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("stack running"), "said running: {}", String::from_utf8_lossy(&out.stdout));
    // The data dir now exists: settings for a new one are refused, not ignored.
    let (out, _) = run(&["--data-dir", data.to_str().unwrap(), "--http-addr", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--http-addr only apply when"), "{}", stderr(&out));
    drop(taken);
}

#[test]
fn config_render_carries_a_changed_setting_to_the_server_and_keeps_the_keys() {
    let e = Estate::init("example.org");
    let out = tillit(&["config", "render", "--data-dir", e.data(), "--check"]);
    assert!(out.status.success() && stdout(&out).contains("is current"), "{}{}", stdout(&out), stderr(&out));
    let key_before = std::fs::read(e.dir.nats_key()).unwrap();
    let toml = std::fs::read_to_string(e.dir.config_file()).unwrap();
    assert!(toml.contains("when_unreachable = \"refuse\""), "{toml}");
    std::fs::write(e.dir.config_file(), toml.replace("when_unreachable = \"refuse\"", "when_unreachable = \"admit\"")).unwrap();
    let out = tillit(&["config", "render", "--data-dir", e.data(), "--check"]);
    assert!(!out.status.success() && stdout(&out).contains("would change"), "{}", stdout(&out));
    let out = tillit(&["config", "render", "--data-dir", e.data()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let conf = std::fs::read_to_string(e.dir.server_conf()).unwrap();
    assert!(conf.contains("allow_when_ca_unreachable: true"), "{conf}");
    assert!(!conf.contains("init --force"), "the header no longer advises init --force");
    assert_eq!(std::fs::read(e.dir.nats_key()).unwrap(), key_before, "keys stay");
    // The rendered config runs, and the estate serves on it.
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["availability"]["when_unreachable"], "admit");
}

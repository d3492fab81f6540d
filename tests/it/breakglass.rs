//! Break-glass: the bundle `init` writes opens the system account with tillit down (no `serve`,
//! no OCSP responder), its use shows in `status` and the audit log once `serve` is back, and a
//! rotation shuts the old bundle out. Real nats-server, real `tillit` binaries.

use crate::harness::*;
use std::time::Duration;
use tillit::breakglass::Bundle;

fn load(path: &std::path::Path) -> Bundle {
    Bundle::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Connect with a bundle's creds and client certificate, and ask every server for its PING.
async fn sys_ping(b: &Bundle) -> Result<serde_json::Value, String> {
    let nc = tillit::client::connect(&b.connect_params().map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
    let msg = tokio::time::timeout(Duration::from_secs(5), nc.request("$SYS.REQ.SERVER.PING", "".into()))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())
}

fn status_json(e: &Estate) -> serde_json::Value {
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn audit_lines(e: &Estate, action: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(e.dir.audit_log())
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["action"] == action)
        .collect()
}

fn total(e: &Estate) -> u64 {
    status_json(e)["break_glass"]["connections_total"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_opens_the_estate_while_tillit_is_down_and_is_seen_once_it_is_back() {
    let e = Estate::init("bg.example");
    let path = e.dir.break_glass_bundle();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let b = load(&path);

    // verify, alone and against the estate.
    let out = tillit(&["break-glass", "verify", path.to_str().unwrap(), "--data-dir", e.data()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("verified against the estate"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("FAIL"));

    // Pinned where the hub verifies clients, nowhere a client verifies a server.
    let ca = b.ca_cert_pem.trim_end();
    assert!(std::fs::read_to_string(e.dir.nats_ca()).unwrap().contains(ca));
    let admin_ca = std::fs::read_to_string(tillit::layout::IdentityDir::new(e.admin()).ca()).unwrap();
    assert!(!admin_ca.contains(ca), "an identity's ca.pem must not trust the break-glass CA");
    assert!(!b.hub_ca_pem.contains(ca));

    // serve ran once (it makes the stream that keeps connect events), then tillit is down:
    // no serve, no OCSP responder.
    let _nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    serve.terminate(Duration::from_secs(10));
    let files = tillit::identity::load(&tillit::layout::IdentityDir::new(e.admin())).unwrap();
    let admin_down = tillit::client::connect(&tillit::client::ConnectParams::from_identity(&files, None).unwrap()).await;
    assert!(admin_down.is_err(), "with every responder down an ordinary identity is refused (the posture is refuse)");
    let ping = sys_ping(&b).await.expect("the bundle connects and administers the system account with tillit down");
    assert!(ping["server"]["id"].is_string(), "{ping}");

    // tillit is back: status and the audit log show the connection.
    let _serve = e.start_serve_ready();
    wait_for(Duration::from_secs(15), || total(&e) >= 1).unwrap_or_else(|| panic!("status never showed the connection: {}", status_json(&e)));
    let st = status_json(&e);
    let bgs = &st["break_glass"];
    assert_eq!(bgs["fingerprint"], b.fingerprint.as_str());
    assert_eq!(bgs["connections"][0]["user"], b.user_public_key.as_str());
    assert_eq!(bgs["connections"][0]["host"], "127.0.0.1");
    assert_eq!(bgs["bundle_in_data_dir"], true);
    let text = stdout(&tillit(&["status", "--identity", &e.admin()]));
    assert!(text.contains("WARNING") && text.contains("connection(s) made with a break-glass bundle"), "{text}");
    let rec = audit_lines(&e, "break-glass.connect");
    assert_eq!(rec.len(), 1, "{} break-glass.connect records", rec.len());
    assert_eq!(rec[0]["detail"]["user"], b.user_public_key.as_str());
    assert_eq!(rec[0]["detail"]["bundle"], b.fingerprint.as_str());
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_shuts_the_old_bundle_out_and_the_new_one_in() {
    let e = Estate::init("bg-rotate.example");
    let old_path = e.dir.break_glass_bundle();
    let old = load(&old_path);
    let mut nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    serve.terminate(Duration::from_secs(10));

    // Refused while serve holds the store? It is stopped: rotate.
    let new_path = e.tmp.path().join("new.bundle");
    let out = tillit(&["break-glass", "rotate", "--data-dir", e.data(), "--out", new_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("restart the hub"), "{}", stdout(&out));
    let new = load(&new_path);
    assert_ne!(new.fingerprint, old.fingerprint);
    // --out never overwrites.
    let again = tillit(&["break-glass", "rotate", "--data-dir", e.data(), "--out", new_path.to_str().unwrap()]);
    assert!(!again.status.success());

    // verify: the new one passes, the old one is named as rotated away.
    let ok = tillit(&["break-glass", "verify", new_path.to_str().unwrap(), "--data-dir", e.data()]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    let bad = tillit(&["break-glass", "verify", old_path.to_str().unwrap(), "--data-dir", e.data()]);
    assert!(!bad.status.success());
    let lines = stdout(&bad);
    assert!(lines.lines().any(|l| l.starts_with("FAIL") && l.contains("rotated away")), "{lines}");
    assert!(lines.lines().any(|l| l.starts_with("FAIL") && l.contains("does not list the bundle's signing key")), "{lines}");
    assert!(lines.lines().any(|l| l.starts_with("FAIL") && l.contains("does not hold the bundle's CA")), "{lines}");
    // Without the estate it is still a well-formed bundle.
    assert!(tillit(&["break-glass", "verify", old_path.to_str().unwrap()]).status.success());

    // The hub restarts (it reads the operator JWT only at start).
    nats.stop();
    let _nats = e.start_nats();
    let refused = sys_ping(&old).await;
    assert!(refused.is_err(), "the old bundle still connects: {refused:?}");
    sys_ping(&new).await.expect("the new bundle connects");

    // serve pushes the SYS account with the old user revoked before it is ready: from then on,
    // even with a certificate the hub trusts (the new bundle's), the old creds are refused.
    let _serve = e.start_serve_ready();
    let mut mixed = old.connect_params().unwrap();
    mixed.cert = new.connect_params().unwrap().cert;
    let err = tillit::client::connect(&mixed).await.expect_err("the old user's JWT is still accepted");
    assert!(err.to_string().contains("authorization") || err.to_string().contains("revoked"), "{err}");

    // The new bundle's connection (made while serve was down) is recorded once; another
    // restart of serve does not record it again.
    wait_for(Duration::from_secs(15), || total(&e) >= 1).unwrap_or_else(|| panic!("no connection recorded: {}", status_json(&e)));
    let rotated = audit_lines(&e, "break-glass.rotate");
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0]["detail"]["revoked_user"], old.user_public_key.as_str());
    drop(_serve);
    let _serve = e.start_serve_ready();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connects = audit_lines(&e, "break-glass.connect");
    assert_eq!(connects.len(), 1, "{} break-glass.connect records", connects.len());
    assert_eq!(connects[0]["detail"]["bundle"], new.fingerprint.as_str());
    assert_eq!(total(&e), 1);
}

#[test]
fn a_damaged_or_foreign_bundle_fails_verify_with_one_line_each() {
    let e = Estate::init("bg-verify.example");
    let path = e.dir.break_glass_bundle();
    let text = std::fs::read_to_string(&path).unwrap();
    let damaged = e.tmp.path().join("damaged.bundle");
    // One character of the client certificate changed.
    let i = text.find("client_cert_pem").unwrap() + 80;
    let mut bytes = text.clone().into_bytes();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(&damaged, &bytes).unwrap();
    let out = tillit(&["break-glass", "verify", damaged.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stdout(&out).lines().any(|l| l.starts_with("FAIL") && l.contains("damaged or edited")), "{}", stdout(&out));
    assert!(stderr(&out).contains("check(s) failed"), "{}", stderr(&out));
    // Another estate's bundle, checked against this one.
    let other = Estate::init("bg-verify.example");
    let out = tillit(&["break-glass", "verify", other.dir.break_glass_bundle().to_str().unwrap(), "--data-dir", e.data(), "--json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    let failed: Vec<&str> = v["findings"].as_array().unwrap().iter().filter(|f| f["ok"] == false).map(|f| f["check"].as_str().unwrap()).collect();
    assert!(failed.contains(&"current") && failed.contains(&"operator") && failed.contains(&"pinned"), "{failed:?}");
    // Not a bundle at all.
    let out = tillit(&["break-glass", "verify", e.dir.config_file().to_str().unwrap()]);
    assert!(!out.status.success());
}

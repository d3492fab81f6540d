//! Sites: a hub and leaf servers on loopback, agents that apply rotations and acknowledge them.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

fn put_secret(e: &Estate, path: &str, value: &str, readers: &[&str]) {
    let file = e.tmp.path().join(format!("value-{}", path.replace('/', "_")));
    std::fs::write(&file, value).unwrap();
    let mut args = vec!["secret", "put", path, "--value-file", file.to_str().unwrap()];
    for r in readers {
        args.push("--reader");
        args.push(r);
    }
    let admin = e.admin();
    args.extend(["--identity", &admin]);
    let out = tillit(&args);
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
    drop(west_srv);
}

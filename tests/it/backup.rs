//! Backups taken while `serve` runs and requests are in flight, restored into a new data dir
//! that serves the same estate: identities renew, secrets read, the site's agent continues, the
//! audit chain verifies. And every refusal: truncated, edited, wrong key, non-empty target.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const SERVICES: [&str; 3] = ["acme/shop/prod/orders", "acme/shop/prod/pay", "acme/shop/prod/ship"];

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}{}", stderr(out), stdout(out));
    stdout(out)
}

/// `tillit restore FILE --data-dir TO --master-key KEY`.
fn restore(file: &Path, to: &Path, key: &Path) -> std::process::Output {
    tillit(&["restore", file.to_str().unwrap(), "--data-dir", to.to_str().unwrap(), "--master-key", key.to_str().unwrap()])
}

/// A refused restore: one line saying `says`, exit non-zero, nothing at `to`.
fn refused(out: std::process::Output, to: &Path, says: &str) {
    let err = stderr(&out);
    assert!(!out.status.success(), "accepted: {}", stdout(&out));
    assert!(err.contains(says), "expected {says:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!to.exists() || std::fs::read_dir(to).unwrap().next().is_none(), "nothing written to {}", to.display());
}

/// The decoded content of every line of a backup: (type, path or space/key, sealed, bytes).
fn contents(file: &Path) -> Vec<(String, String, bool, Vec<u8>)> {
    let b64 = |v: &serde_json::Value| data_encoding::BASE64.decode(v.as_str().unwrap_or("").as_bytes()).unwrap();
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| match v["type"].as_str().unwrap() {
            "io.tillit.v1.backup.file" => ("file".into(), v["path"].as_str().unwrap().into(), v["sealed"] == true, b64(&v["data_b64"])),
            "io.tillit.v1.backup.record" => ("record".into(), format!("{}/{}", v["space"].as_str().unwrap(), v["key"].as_str().unwrap()), false, b64(&v["value_b64"])),
            t => (t.to_string(), String::new(), false, l_bytes(&v)),
        })
        .collect()
}

fn l_bytes(v: &serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_backup_taken_while_serving_restores_an_estate_whose_parties_carry_on() {
    let (mut e, _leaf_port) = Estate::init_with_leaf("backup.example");
    let mut hub = e.start_nats();
    let mut serve = e.start_serve_ready();
    let dirs: Vec<PathBuf> = SERVICES.iter().map(|s| enroll_one(&e, s, s.rsplit('/').next().unwrap())).collect();
    for (i, s) in SERVICES.iter().enumerate() {
        ok(&secret_put(&e, &format!("acme/shop/prod/secret-{i}"), &format!("s3cr3t-value-{i}"), &[s]), "secret put");
    }
    ok(&tillit(&["grant", SERVICES[0], "--pub", "shop.audit.>", "--identity", &e.admin()]), "grant");
    // A site whose agent applies a secret.
    let east = site_add(&e, "east");
    let east_srv = east.start();
    ok(&secret_put(&e, "acme/shop/prod/site-db", "site-v1", &["site:east"]), "site secret");
    let files = e.tmp.path().join("east-files");
    let agent = AgentProc::start(&east, &e.tmp.path().join("east-agent"), &files, &east.url(), None);
    let site_db = files.join("secrets/acme/shop/prod/site-db");
    let logs = |serve: &Serve, agent: &AgentProc| format!("serve:\n{}\nagent:\n{}", serve.log_text(), agent.log_text());
    wait_for(Duration::from_secs(30), || std::fs::read_to_string(&site_db).is_ok_and(|v| v == "site-v1"))
        .unwrap_or_else(|| panic!("the agent never applied site-v1\n{}", logs(&serve, &agent)));

    // The backup is taken while secrets keep being written (each a journal record, then a
    // sealed value and its metadata) and a service enrolls.
    let file = e.tmp.path().join("estate.tillit");
    let stop = AtomicBool::new(false);
    let written = AtomicUsize::new(0);
    let (before, flight, out) = std::thread::scope(|sc| {
        let puts = sc.spawn(|| {
            let mut done = vec![];
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let out = secret_put(&e, &format!("acme/shop/prod/flight-{i}"), &format!("flight-value-{i}"), &[SERVICES[0]]);
                if out.status.success() {
                    done.push(i);
                    written.fetch_add(1, Ordering::SeqCst);
                }
            }
            done
        });
        // An enrollment in flight too (whether it lands before the snapshot or after, the
        // restored chain and records agree).
        let enrolling = sc.spawn(|| enroll_one(&e, "acme/shop/prod/late", "late"));
        wait_for(Duration::from_secs(20), || written.load(Ordering::SeqCst) >= 3).expect("puts in flight");
        let before = written.load(Ordering::SeqCst);
        let out = tillit(&["backup", "--data-dir", e.data(), "--out", file.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let flight = puts.join().unwrap();
        enrolling.join().unwrap();
        (before, flight, out)
    });
    let text = ok(&out, "backup");
    assert!(text.contains("taken by the running serve"), "{text}");
    assert!(flight.len() > before, "puts went on during the backup: {} of {}", before, flight.len());
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // Nothing private is readable in it: sealed values stay sealed, private files are sealed.
    let creds = std::fs::read_to_string(e.dir.admin().creds()).unwrap();
    let seed = creds.lines().find(|l| l.starts_with("SU")).unwrap().to_string();
    let lines = contents(&file);
    for (kind, name, sealed, data) in &lines {
        for secret in [b"s3cr3t-value-".as_slice(), b"flight-value-", b"site-v1", b"PRIVATE KEY", seed.as_bytes()] {
            assert!(!contains(data, secret), "{kind} {name} shows {:?}", String::from_utf8_lossy(secret));
        }
        if ["nats/tls/key.pem", "admin/tls/key.pem", "admin/nats.creds"].contains(&name.as_str()) {
            assert!(sealed, "{name} is sealed");
        }
    }
    let names: Vec<&str> = lines.iter().filter(|l| l.0 == "file").map(|l| l.1.as_str()).collect();
    assert!(names.contains(&"tillit.toml") && names.contains(&"nats/server.conf"), "{names:?}");
    assert!(!names.iter().any(|n| *n == "master.key" || n.starts_with("store/") || n.starts_with("nats/jetstream") || n.ends_with(".log")), "{names:?}");

    // Verify without restoring, with the master key kept apart from the data dir.
    let key = e.tmp.path().join("kept-master.key");
    std::fs::copy(e.dir.master_key(), &key).unwrap();
    let v = ok(&tillit(&["backup", "--verify", file.to_str().unwrap(), "--master-key", key.to_str().unwrap(), "--json"]), "verify");
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert!(v["manifest"]["records"]["identities"].as_u64().unwrap() >= 5, "{v}");
    assert!(v["manifest"]["audit"]["records"].as_u64().unwrap() > 10, "{v}");
    assert_eq!(v["manifest"]["audit"]["applied"], v["manifest"]["audit"]["records"], "taken by serve: the store matches the chain head");
    assert!(v["manifest"]["events_last_seq"].as_u64().unwrap() >= 1, "{v}");

    // The disaster: everything stops, the data dir is gone.
    serve.terminate(Duration::from_secs(15));
    hub.stop();
    std::fs::remove_dir_all(e.dir.root()).unwrap();

    // Refusals first: each leaves nothing behind.
    let to = e.tmp.path().join("restored");
    let bytes = std::fs::read(&file).unwrap();
    let truncated = e.tmp.path().join("truncated.tillit");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    refused(restore(&truncated, &to, &key), &to, "truncated");
    let edited = e.tmp.path().join("edited.tillit");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let toml = text.find("\"path\":\"tillit.toml\"").unwrap();
    let at = toml + text[toml..].find("\"data_b64\":\"").unwrap() + 30;
    let mut changed = bytes.clone();
    changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&edited, &changed).unwrap();
    refused(restore(&edited, &to, &key), &to, "was altered");
    let other = e.tmp.path().join("other.key");
    std::fs::write(&other, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused(restore(&file, &to, &other), &to, "another master key");
    let full = e.tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep-me"), "x").unwrap();
    let out = restore(&file, &full, &key);
    assert!(!out.status.success() && stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1, "the full dir is untouched");
    let out = tillit(&["backup", "--verify", truncated.to_str().unwrap(), "--master-key", key.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("truncated"), "{}", stderr(&out));

    // The restore, and the estate runs from it.
    let text = ok(&restore(&file, &to, &key), "restore");
    assert!(text.contains("restored"), "{text}");
    e.relocate(&to);
    assert_eq!(std::fs::metadata(e.dir.master_key()).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(e.dir.nats_key()).unwrap().permissions().mode() & 0o777, 0o600);
    ok(&tillit(&["audit", "verify", "--data-dir", e.data()]), "audit verify of the restored dir");
    let _hub = e.start_nats();
    let serve = e.start_serve_ready();
    for d in &dirs {
        ok(&tillit(&["renew", "--identity", d.to_str().unwrap()]), &format!("renew {}", d.display()));
    }
    for (i, d) in dirs.iter().enumerate() {
        let out = tillit(&["secret", "get", &format!("secret-{i}"), "--identity", d.to_str().unwrap()]);
        assert_eq!(ok(&out, "secret get"), format!("s3cr3t-value-{i}"));
    }
    // Every put finished before the backup began reads; one in flight reads whole or is absent.
    for (n, i) in flight.iter().enumerate() {
        let out = tillit(&["secret", "get", &format!("flight-{i}"), "--identity", dirs[0].to_str().unwrap()]);
        if n < before {
            assert_eq!(ok(&out, "secret get"), format!("flight-value-{i}"), "flight-{i}");
        } else if out.status.success() {
            assert_eq!(stdout(&out), format!("flight-value-{i}"), "flight-{i}");
        } else {
            // Absent (the control plane does not say whether a secret it will not serve exists).
            assert!(stderr(&out).contains("may not read"), "flight-{i} is whole or absent: {}", stderr(&out));
        }
    }
    let grants = ok(&tillit(&["grants", SERVICES[0], "--identity", &e.admin(), "--json"]), "grants");
    assert!(grants.contains("shop.audit.>"), "{grants}");
    // The site's agent carries on: a rotation after the restore reaches it.
    let v2 = e.tmp.path().join("site-v2");
    std::fs::write(&v2, "site-v2").unwrap();
    ok(&tillit(&["secret", "rotate", "acme/shop/prod/site-db", "--value-file", v2.to_str().unwrap(), "--identity", &e.admin()]), "rotate");
    wait_for(Duration::from_secs(40), || std::fs::read_to_string(&site_db).is_ok_and(|v| v == "site-v2"))
        .unwrap_or_else(|| panic!("the agent never applied site-v2 after the restore\n{}", logs(&serve, &agent)));
    ok(&tillit(&["audit", "verify", "--data-dir", e.data()]), "audit verify after the restored estate ran");
    // A restored estate backs up too.
    let again = e.tmp.path().join("again.tillit");
    ok(&tillit(&["backup", "--data-dir", e.data(), "--out", again.to_str().unwrap()]), "backup of the restored estate");
    drop(east_srv);
}

#[test]
fn a_backup_without_serve_and_of_a_jetstream_estate() {
    // Sled, serve stopped: the CLI opens the store itself.
    let e = Estate::init("offline.example");
    let file = e.tmp.path().join("offline.tillit");
    let text = ok(&tillit(&["backup", "--data-dir", e.data(), "--out", file.to_str().unwrap()]), "offline backup");
    assert!(text.contains("taken from the store directly"), "{text}");
    let out = tillit(&["backup", "--data-dir", e.data(), "--out", file.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("--force"), "{}", stderr(&out));
    ok(&tillit(&["backup", "--data-dir", e.data(), "--out", file.to_str().unwrap(), "--force"]), "--force");
    // TILLIT_MASTER_KEY instead of a key file: the restored dir gets no master.key.
    let hex = std::fs::read_to_string(e.dir.master_key()).unwrap();
    let to = e.tmp.path().join("from-env");
    let out = tillit_env(&["restore", file.to_str().unwrap(), "--data-dir", to.to_str().unwrap()], &[("TILLIT_MASTER_KEY", hex.trim())]);
    ok(&out, "restore with TILLIT_MASTER_KEY");
    assert!(!to.join("master.key").exists());
    let out = tillit(&["restore", file.to_str().unwrap(), "--data-dir", e.tmp.path().join("nokey").to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("master key"), "{}", stderr(&out));

    // JetStream: the CLI reads the bucket and the journal; the restore keeps its records in sled.
    let port = free_port();
    let mut js = Estate::init_args("js.example", &["--store", "jetstream", "--replica-url", &format!("http://127.0.0.1:{port}")]);
    let mut hub = js.start_nats();
    let mut serve = js.start_serve_ready();
    let orders = enroll_one(&js, SERVICES[0], "orders");
    ok(&secret_put(&js, "acme/shop/prod/db", "js-secret", &[SERVICES[0]]), "secret put");
    let file = js.tmp.path().join("js.tillit");
    let text = ok(&tillit(&["backup", "--data-dir", js.data(), "--out", file.to_str().unwrap()]), "jetstream backup");
    assert!(text.contains("JetStream bucket and journal"), "{text}");
    assert!(text.contains("jetstream store"), "{text}");
    let key = js.tmp.path().join("kept.key");
    std::fs::copy(js.dir.master_key(), &key).unwrap();
    serve.terminate(Duration::from_secs(15));
    hub.stop();
    std::fs::remove_dir_all(js.dir.root()).unwrap();
    let to = js.tmp.path().join("restored");
    let text = ok(&restore(&file, &to, &key), "restore");
    assert!(text.contains("sled"), "{text}");
    js.relocate(&to);
    assert!(std::fs::read_to_string(js.dir.config_file()).unwrap().contains("backend = \"sled\""));
    let _hub = js.start_nats();
    let _serve = js.start_serve_ready();
    ok(&tillit(&["renew", "--identity", orders.to_str().unwrap()]), "renew");
    let out = tillit(&["secret", "get", "db", "--identity", orders.to_str().unwrap()]);
    assert_eq!(ok(&out, "secret get"), "js-secret");
    ok(&tillit(&["audit", "verify", "--data-dir", js.data()]), "audit verify");
}

//! The format: what a backup holds and hides, and every way a reader refuses one.

use super::*;
use crate::audit::{Entry, Writer};
use crate::clock::ManualClock;
use crate::config::{raw_for_init, Config};
use crate::estate::Estate;
use crate::layout::DataDir;
use crate::store::{Batch, SledStore, Store};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

const CLEAR_KEY: &str = "-----BEGIN PRIVATE KEY-----\nnot really a key\n-----END PRIVATE KEY-----\n";

/// A small estate on disk: trust roots, a few audited records, a private and a public file,
/// and runtime leftovers a backup must skip. Its store stays open (as `serve` holds it).
fn estate() -> (tempfile::TempDir, DataDir, Arc<dyn Store>, MasterKey) {
    let t = tempfile::tempdir().unwrap();
    let dir = DataDir::new(t.path().join("data"));
    std::fs::create_dir_all(dir.nats_tls()).unwrap();
    let cfg = Config::from_raw(raw_for_init("example.org", "nats://127.0.0.1:4222", None)).unwrap();
    std::fs::write(dir.config_file(), cfg.to_toml()).unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.store()).unwrap());
    let master = MasterKey::generate().unwrap();
    let clock = Arc::new(ManualClock::new(1_780_000_000));
    let e = Estate::create(dir.clone(), cfg, store.clone(), master.clone(), clock.clone()).unwrap();
    let mut w = Writer::open(&dir.audit(), store.clone(), clock, e.audit_key()).unwrap();
    for i in 0..5 {
        let mut b = Batch::new();
        b.put(Space::Identities, format!("U{i}"), format!("{{\"n\":{i}}}").into_bytes());
        w.append(vec![Entry::ok("tillit", "enroll", &format!("svc-{i}")).batch(b)]).unwrap();
    }
    let mut b = Batch::new();
    b.put(Space::Replies, "r1", b"kept reply".to_vec());
    store.commit(b).unwrap();
    crate::fsutil::write_atomic(&dir.nats_key(), CLEAR_KEY.as_bytes(), 0o600).unwrap();
    crate::fsutil::write_atomic(&dir.nats_cert(), b"PUBLIC CERT", 0o644).unwrap();
    std::fs::write(dir.master_key(), master.to_hex().as_bytes()).unwrap();
    std::fs::create_dir_all(dir.jetstream()).unwrap();
    std::fs::write(dir.jetstream().join("x"), b"runtime").unwrap();
    std::fs::write(dir.root().join("serve-1.log"), b"log").unwrap();
    (t, dir, store, master)
}

fn take(dir: &DataDir, store: &dyn Store, master: &MasterKey, out: &Path) -> Manifest {
    let key = master.derive(crate::audit::AUDIT_KEY_LABEL);
    let taken = snapshot::of_sled(store, dir.audit_log(), &key, true, Some(7)).unwrap();
    let mut f = std::fs::File::create(out).unwrap();
    write(&mut f, &taken, dir, master, "example.org", 1_780_000_100).unwrap()
}

/// The lines of a backup, changed by `edit`, with the MAC made again (as only the master key's
/// holder could): what the checks behind the MAC catch.
fn remac(file: &Path, master: &MasterKey, edit: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.pop();
    edit(&mut lines);
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let sha = data_encoding::HEXLOWER.encode(&crate::crypto::sha256(body.as_bytes()));
    let mac = serde_json::to_string(&Line::Mac { mac: content_mac(master, &sha), sha256: sha }).unwrap();
    std::fs::write(file, format!("{body}{mac}\n")).unwrap();
}

fn lines_of(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_backup_holds_the_estate_sealed_and_reads_back() {
    let (t, dir, store, master) = estate();
    let out = t.path().join("b.tillit");
    let m = take(&dir, store.as_ref(), &master, &out);
    assert_eq!(m.records["identities"], 5);
    assert_eq!(m.records["replies"], 0, "kept replies are runtime");
    assert_eq!((m.audit.records, m.audit.applied), (5, 5));
    assert_eq!(m.events_last_seq, Some(7));
    let text = std::fs::read_to_string(&out).unwrap();
    let all = lines_of(&out);
    let files: Vec<&str> = all.iter().filter(|l| l["type"] == TYPE_FILE).map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(files, ["nats/tls/cert.pem", "nats/tls/key.pem", "tillit.toml"], "master.key, store, audit, jetstream and logs stay out");
    assert!(!text.contains(&master.to_hex()[..]), "the master key is never in a backup");
    let key_line = all.iter().find(|l| l["path"] == "nats/tls/key.pem").unwrap();
    assert_eq!((key_line["sealed"].as_bool(), key_line["mode"].as_u64()), (Some(true), Some(0o600)));
    let clear = |s: &str| data_encoding::BASE64.encode(s.as_bytes());
    assert!(!text.contains(&clear(CLEAR_KEY)) && !text.contains("PRIVATE KEY"), "a private file is sealed");
    assert!(text.contains(&clear("PUBLIC CERT")), "a public one is readable");
    assert_eq!(all.first().unwrap()["type"], TYPE_HEADER);
    assert_eq!(all.last().unwrap()["type"], TYPE_MAC);

    let mut seen = (0, 0, 0);
    let v = read(&out, &master, |item| {
        match item {
            Item::Record { .. } => seen.0 += 1,
            Item::File { path, data, .. } if path == Path::new("nats/tls/key.pem") => {
                assert_eq!(&data[..], CLEAR_KEY.as_bytes());
                seen.1 += 1
            }
            Item::File { .. } => seen.1 += 1,
            Item::Audit { .. } => seen.2 += 1,
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(v.manifest, m);
    assert_eq!(seen, (m.records_total(), 3, 5));
    assert_eq!(v.header.trust_domain, "example.org");
    assert_eq!(v.sha256, crate::crypto::sha256_hex(text.as_bytes()));
}

#[test]
fn a_reader_refuses_wrong_keys_truncation_edits_and_what_hides_behind_a_good_mac() {
    let (t, dir, store, master) = estate();
    let good = t.path().join("good");
    take(&dir, store.as_ref(), &master, &good);
    let bytes = std::fs::read(&good).unwrap();
    let at = |name: &str| t.path().join(name);
    let refuse = |p: &Path, k: &MasterKey| read(p, k, |_| Ok(())).unwrap_err();

    assert!(matches!(refuse(&good, &MasterKey::generate().unwrap()), BackupError::WrongKey { .. }));
    for cut in [bytes.len() / 2, bytes.len() - 1, bytes.len() - 40] {
        std::fs::write(at("cut"), &bytes[..cut]).unwrap();
        assert!(matches!(refuse(&at("cut"), &master), BackupError::Truncated { .. }), "cut at {cut}");
    }
    // Whole lines dropped from the end.
    let text = String::from_utf8(bytes.clone()).unwrap();
    let n = text.lines().count();
    for keep in [1, n - 1] {
        let lines: String = text.lines().take(keep).map(|l| format!("{l}\n")).collect();
        std::fs::write(at("short"), lines).unwrap();
        assert!(matches!(refuse(&at("short"), &master), BackupError::Truncated { .. }), "{keep} lines");
    }
    // One byte of a record's value changed to another base64 character.
    let i = text.find("\"value_b64\":\"").unwrap() + 20;
    let mut edited = bytes.clone();
    edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(at("edited"), &edited).unwrap();
    assert!(matches!(refuse(&at("edited"), &master), BackupError::Altered { .. }));
    std::fs::write(at("trailing"), [bytes.as_slice(), b"{}\n"].concat()).unwrap();
    assert!(matches!(refuse(&at("trailing"), &master), BackupError::Damaged { .. }));
    std::fs::write(at("empty"), b"").unwrap();
    assert!(matches!(refuse(&at("empty"), &master), BackupError::NotABackup { .. }));
    std::fs::write(at("junk"), b"hello\n").unwrap();
    assert!(matches!(refuse(&at("junk"), &master), BackupError::NotABackup { .. }));

    // Behind a good MAC: a file that climbs out of the data dir, a master key, an altered
    // audit record, a lying manifest, sections out of order.
    type Edit = Box<dyn Fn(&mut Vec<String>)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("traversal", Box::new(|l: &mut Vec<String>| {
            let f = serde_json::json!({"type": TYPE_FILE, "path": "../../etc/evil", "mode": 420, "sealed": false, "data_b64": ""});
            let at = l.iter().position(|x| x.contains(TYPE_FILE)).unwrap();
            l.insert(at, f.to_string());
        }), "not a plain relative path"),
        ("master", Box::new(|l: &mut Vec<String>| {
            let f = serde_json::json!({"type": TYPE_FILE, "path": "master.key", "mode": 384, "sealed": false, "data_b64": ""});
            let at = l.iter().position(|x| x.contains(TYPE_FILE)).unwrap();
            l.insert(at, f.to_string());
        }), "never holds it"),
        ("audit", Box::new(|l: &mut Vec<String>| {
            let at = l.iter().position(|x| x.contains(TYPE_AUDIT)).unwrap() + 1;
            l[at] = l[at].replace("svc-1", "svc-X");
        }), "audit chain"),
        ("manifest", Box::new(|l: &mut Vec<String>| {
            let at = l.iter().position(|x| x.contains(TYPE_AUDIT)).unwrap();
            l.remove(at + 4);
            l.remove(at + 3);
        }), "manifest says"),
        ("order", Box::new(|l: &mut Vec<String>| {
            let rec = l.iter().position(|x| x.contains(TYPE_RECORD)).unwrap();
            let moved = l.remove(rec);
            let at = l.iter().position(|x| x.contains(TYPE_AUDIT)).unwrap();
            l.insert(at, moved);
        }), "after the"),
    ];
    for (name, edit, says) in cases {
        std::fs::copy(&good, at(name)).unwrap();
        remac(&at(name), &master, edit);
        let e = refuse(&at(name), &master);
        assert!(matches!(e, BackupError::Damaged { .. }) && e.to_string().contains(says), "{name}: {e}");
    }
    read(&good, &master, |_| Ok(())).unwrap();
}

#[test]
fn restore_writes_a_data_dir_that_opens_or_nothing() {
    let (t, dir, store, master) = estate();
    let file = t.path().join("b");
    take(&dir, store.as_ref(), &master, &file);
    drop(store);

    // A full target is refused; a failed restore leaves nothing.
    let full = t.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    assert!(matches!(restore(&file, &full, &master, true, 1).unwrap_err(), BackupError::NotEmpty { .. }));
    let fresh = t.path().join("fresh");
    assert!(matches!(restore(&file, &fresh, &MasterKey::generate().unwrap(), true, 1).unwrap_err(), BackupError::WrongKey { .. }));
    assert!(!fresh.exists());
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let before = names();

    let r = restore(&file, &fresh, &master, true, 1).unwrap();
    assert_eq!(names().len(), before.len() + 1, "the target, no staging dir left: {:?}", names());
    assert!(r.master_key_written && !r.switched_to_sled);
    assert_eq!(r.events_first_seq, 8);
    let new = DataDir::new(&fresh);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&new.nats_key()), 0o600);
    assert_eq!(mode(&new.master_key()), 0o600);
    assert_eq!(std::fs::read(new.nats_key()).unwrap(), CLEAR_KEY.as_bytes());
    assert!(!new.jetstream().exists());
    let key = master.derive(crate::audit::AUDIT_KEY_LABEL);
    let v = crate::audit::verify(&new.audit_log(), Some(&key)).unwrap().unwrap();
    assert_eq!((v.records, v.anchored), (5, true));
    // The estate opens with its master key, its records as they were.
    let e = Estate::open(new.clone(), Arc::new(ManualClock::new(1_780_000_200))).unwrap();
    assert_eq!(e.trust_domain(), "example.org");
    assert_eq!(e.store().count(Space::Identities).unwrap(), 5);
    assert_eq!(e.store().count(Space::Replies).unwrap(), 0);
    // The log reopens at its end: nothing to replay, the next record follows.
    let mut w = Writer::open(&new.audit(), e.store_arc(), e.clock().clone(), e.audit_key()).unwrap();
    assert_eq!(w.append(vec![Entry::ok("tillit", "x", "y")]).unwrap(), vec![6]);
    drop(w);
    drop(e);
    // Into an empty target too (it is replaced); not into the restored one.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    restore(&file, &empty, &master, false, 1).unwrap();
    assert!(!DataDir::new(&empty).master_key().exists());
    assert!(matches!(restore(&file, &fresh, &master, true, 1).unwrap_err(), BackupError::NotEmpty { .. }));
}

#[test]
fn records_after_the_checkpoint_are_replayed_by_the_restored_estate() {
    // Offline, after a crash between a group's log write and its apply: the log holds a
    // record the store does not; the backup says so and the restored log replays it.
    let (t, dir, store, master) = estate();
    let key = master.derive(crate::audit::AUDIT_KEY_LABEL);
    let taken_before = snapshot::of_sled(store.as_ref(), dir.audit_log(), &key, false, None).unwrap();
    // Append a record as the writer would, without applying it (the checkpoint stays).
    let mut w = Writer::open(&dir.audit(), store.clone(), Arc::new(ManualClock::new(1_780_000_050)), key.clone()).unwrap();
    let cp = store.get(Space::Meta, crate::audit::FILE_CHECKPOINT_KEY).unwrap().unwrap();
    let mut b = Batch::new();
    b.put(Space::Identities, "U9", b"{\"n\":9}".to_vec());
    w.append(vec![Entry::ok("tillit", "enroll", "svc-9").batch(b)]).unwrap();
    let mut undo = Batch::new();
    undo.delete(Space::Identities, "U9").put(Space::Meta, crate::audit::FILE_CHECKPOINT_KEY, cp);
    store.commit(undo).unwrap();
    drop(w);
    let taken = snapshot::of_sled(store.as_ref(), dir.audit_log(), &key, false, None).unwrap();
    assert_eq!(taken.applied, taken_before.applied);
    let file = t.path().join("b");
    let m = write(&mut std::fs::File::create(&file).unwrap(), &taken, &dir, &master, "example.org", 0).unwrap();
    assert_eq!((m.audit.records, m.audit.applied), (6, 5));
    drop(store);
    let new = DataDir::new(t.path().join("new"));
    restore(&file, new.root(), &master, true, EVENTS_GAP).unwrap();
    let s: Arc<dyn Store> = Arc::new(SledStore::open(&new.store()).unwrap());
    assert!(s.get(Space::Identities, "U9").unwrap().is_none());
    Writer::open(&new.audit(), s.clone(), Arc::new(ManualClock::new(0)), key).unwrap();
    assert!(s.get(Space::Identities, "U9").unwrap().is_some(), "replayed at the restored estate's first start");
}

#[test]
fn a_restore_moves_the_hub_configs_paths_into_the_new_data_dir() {
    let conf = b"operator: \"/old/data/nats/operator.jwt\"\nstore_dir: \"/old/data2/js\"\nother: \"/old/data\"\n";
    let moved = restore::moved_paths(conf, "/old/data", Path::new("/new/place"));
    assert_eq!(
        String::from_utf8(moved.to_vec()).unwrap(),
        "operator: \"/new/place/nats/operator.jwt\"\nstore_dir: \"/old/data2/js\"\nother: \"/old/data\"\n"
    );
    assert_eq!(&restore::moved_paths(conf, "", Path::new("/x"))[..], conf);
}

//! Faults that must fail closed: a full disk and a read-only data dir under the control plane
//! (its store and its audit log on their own small tmpfs), a store that cannot be opened, a
//! master key that does not match. Each refused change leaves one clear line and nothing
//! half-written; once the fault is gone the estate carries on and `audit verify` passes.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A small tmpfs mounted over a directory of the data dir, with its contents.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Move `dir`'s contents onto a fresh tmpfs of `size` mounted at `dir`. `None` when this
    /// machine does not let us mount (not root, or no CAP_SYS_ADMIN).
    fn over(dir: &Path, size: &str) -> Option<Tmpfs> {
        let aside = dir.with_extension("orig");
        std::fs::rename(dir, &aside).unwrap();
        std::fs::create_dir(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(dir).status().is_ok_and(|s| s.success());
        if !ok {
            std::fs::remove_dir(dir).unwrap();
            std::fs::rename(&aside, dir).unwrap();
            return None;
        }
        let copied = Command::new("cp").arg("-a").arg(format!("{}/.", aside.display())).arg(dir).status().unwrap();
        assert!(copied.success());
        Some(Tmpfs { at: dir.to_path_buf() })
    }

    /// Fill it: one file takes every byte left.
    fn fill(&self) {
        let _ = Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", self.filler().display())).stderr(std::process::Stdio::null()).status();
    }

    fn unfill(&self) {
        let _ = std::fs::remove_file(self.filler());
    }

    /// Remount read-only (nothing may hold a file of it open for writing) or read-write.
    fn read_only(&self, ro: bool) {
        let st = Command::new("mount").args(["-o", if ro { "remount,ro" } else { "remount,rw" }]).arg(&self.at).status().unwrap();
        assert!(st.success(), "remount {} {}", if ro { "ro" } else { "rw" }, self.at.display());
    }

    fn filler(&self) -> PathBuf {
        self.at.join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// `tillit secret rotate PATH` to `value` as the admin.
fn rotate(e: &Estate, path: &str, value: &str) -> std::process::Output {
    let file = e.tmp.path().join("rotate-value");
    std::fs::write(&file, value).unwrap();
    tillit(&["secret", "rotate", path, "--value-file", file.to_str().unwrap(), "--identity", &e.admin()])
}

/// Wait (up to 30 s) for `serve` to stop by itself; its exit status.
fn exits_by_itself(serve: &mut Serve, on: &str) -> std::process::ExitStatus {
    exited_within(&mut serve.child, Duration::from_secs(30)).unwrap_or_else(|| panic!("serve kept running on {on}:\n{}", serve.log_text()))
}

fn one_clear_line(out: &std::process::Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} succeeded on a faulty disk");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: one line, got {err:?}");
    lines[0].to_string()
}

#[test]
fn a_full_disk_refuses_a_change_whole_a_read_only_data_dir_stops_serve_and_the_estate_carries_on() {
    let e = Estate::init("faults.example");
    let (Some(store), Some(audit)) = (Tmpfs::over(&e.dir.store(), "64m"), Tmpfs::over(&e.dir.audit(), "8m")) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root with CAP_SYS_ADMIN");
        return;
    };
    let _nats = e.start_nats();
    let mut serve = e.start_serve_ready();
    let admin = e.admin();
    let orders = enroll_one(&e, "acme/shop/prod/orders", "orders");
    assert!(secret_put(&e, "acme/shop/prod/db", "v1", &["acme/shop/prod/orders"]).status.success());
    let token = create_tokens(&e, "acme/shop/prod/payments", 1, "15m").remove(0);

    // A full disk: changes go on until one needs space there is not; that one is refused whole.
    store.fill();
    audit.fill();
    let mut last_ok = 1;
    let mut refused = None;
    for v in 2..400 {
        let out = rotate(&e, "acme/shop/prod/db", &format!("v{v}-{}", "x".repeat(2000)));
        if out.status.success() {
            last_ok = v;
        } else {
            refused = Some(one_clear_line(&out, "secret put"));
            break;
        }
    }
    let refused = refused.unwrap_or_else(|| panic!("400 secret versions fit on a full disk?\n{}", serve.log_text()));
    eprintln!("disk full: secret put refused after {} more versions: {refused}", last_ok - 1);
    let got = tillit(&["secret", "get", "acme/shop/prod/db", "--identity", orders.to_str().unwrap()]);
    assert!(stdout(&got).trim().starts_with(&format!("v{last_ok}")), "disk full: the refused version was half-written? {}", stdout(&got).chars().take(20).collect::<String>());
    // With the disk full, the other changes are refused whole too.
    let grants_before = stdout(&tillit(&["grants", "acme/shop/prod/orders", "--identity", &admin, "--json"]));
    let list_before = stdout(&tillit(&["list", "--identity", &admin, "--json"]));
    let out = enroll_cli(&token, &e.tmp.path().join("payments"));
    eprintln!("disk full: enroll: {}", one_clear_line(&out, "enroll"));
    assert!(!e.tmp.path().join("payments").join("identity.json").exists(), "disk full: no identity dir written");
    let out = tillit(&["grant", "acme/shop/prod/orders", "--pub", "shop.audit.>", "--identity", &admin]);
    eprintln!("disk full: grant: {}", one_clear_line(&out, "grant"));
    let out = tillit(&["rotate", "ca", "--identity", &admin]);
    eprintln!("disk full: rotate ca: {}", one_clear_line(&out, "rotate ca"));
    assert_eq!(stdout(&tillit(&["grants", "acme/shop/prod/orders", "--identity", &admin, "--json"])), grants_before, "disk full: grants changed");
    assert_eq!(stdout(&tillit(&["list", "--identity", &admin, "--json"])), list_before, "disk full: identities changed");
    let cas = stdout(&tillit(&["status", "--identity", &admin, "--json"]));
    let cas: serde_json::Value = serde_json::from_str(&cas).unwrap();
    assert_eq!(cas["cas"].as_array().map(|a| a.len()), Some(1), "disk full: a CA was added: {}", cas["cas"]);
    store.unfill();
    audit.unfill();
    // A data dir that went read-only (the kernel remounts a failing disk so): serve refuses to
    // start on it with one line, and starts once it is writable again.
    serve.terminate(Duration::from_secs(15));
    store.read_only(true);
    audit.read_only(true);
    let mut stuck = e.start_serve();
    let status = exits_by_itself(&mut stuck, "a read-only data dir");
    assert!(!status.success());
    let log = stuck.log_text();
    assert!(log.contains("Read-only file system") || log.contains("read-only"), "serve says why:\n{log}");
    // Reads still work offline.
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(out.status.success(), "audit verify on a read-only data dir: {}{}", stdout(&out), stderr(&out));
    store.read_only(false);
    audit.read_only(false);
    serve = e.start_serve_ready();

    // The estate carries on: the same changes now succeed.
    let out = enroll_cli(&token, &e.tmp.path().join("payments"));
    assert!(out.status.success(), "enroll after the faults: {}\n{}", stderr(&out), serve.log_text());
    let out = tillit(&["grant", "acme/shop/prod/orders", "--pub", "shop.audit.>", "--identity", &admin]);
    assert!(out.status.success(), "grant after the faults: {}", stderr(&out));
    let out = rotate(&e, "acme/shop/prod/db", "after");
    assert!(out.status.success(), "secret rotate after the fault: {}", stderr(&out));
    let out = tillit(&["rotate", "ca", "--identity", &admin]);
    assert!(out.status.success(), "rotate ca after the faults: {}", stderr(&out));
    let got = tillit(&["secret", "get", "acme/shop/prod/db", "--identity", orders.to_str().unwrap()]);
    assert_eq!(stdout(&got).trim(), "after");
    drop(serve);
    let out = tillit(&["audit", "verify", "--data-dir", e.data()]);
    assert!(out.status.success(), "audit verify: {}{}", stdout(&out), stderr(&out));
}

#[test]
fn a_store_that_cannot_be_opened_stops_serve_with_one_line_and_writes_nothing() {
    let e = Estate::init("faults.example");
    let store = e.dir.store();
    let aside = store.with_extension("aside");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, b"this is not a sled database").unwrap();
    let audit_before = std::fs::read(e.dir.audit_log()).unwrap();
    let mut serve = e.start_serve();
    let status = exits_by_itself(&mut serve, "a store it cannot open");
    assert!(!status.success(), "serve ran on a store it cannot open");
    let log = serve.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("rror")).collect();
    assert!(!errors.is_empty() && errors.iter().any(|l| l.contains("store")), "one line naming the store: {log}");
    assert_eq!(std::fs::read(e.dir.audit_log()).unwrap(), audit_before, "the audit log was written");
    assert_eq!(std::fs::read(&store).unwrap(), b"this is not a sled database", "the broken store was touched");
    // Put back, the estate opens and serves.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    let _nats = e.start_nats();
    let _serve = e.start_serve_ready();
    let out = tillit(&["status", "--identity", &e.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

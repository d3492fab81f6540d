//! The README as a newcomer uses it: every `sh` block, copied literally, runs in order against a
//! `tillit dev` stack started as the quick start says (NATS on 4222, HTTP on 8080), in a scratch
//! dir where `./target/release/tillit` is the binary under test. `text` blocks (production
//! set-ups, options) are not run.

use crate::harness::*;
use std::time::Duration;

/// The `sh` blocks of a Markdown text, in order.
fn sh_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) if info.trim() == "sh" => cur = Some(String::new()),
            (None, Some(_)) => cur = Some("\u{0}".into()), // another block: skipped
            (Some(_), Some(_)) => {
                if let Some(b) = cur.take().filter(|b| !b.starts_with('\u{0}')) {
                    out.push(b);
                }
            }
            (Some(b), None) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// Lines the test does itself: installing (pip, cargo) and starting the dev stack.
fn set_up(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("pip ") || l.starts_with("cargo ") || l.contains("tillit dev")
}

#[test]
fn every_sh_block_of_the_readme_runs_as_written_against_a_dev_stack() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 8, "the README's walkthrough lost its runnable blocks: {}", blocks.len());
    for (k, b) in blocks.iter().enumerate() {
        for line in b.lines().filter(|l| l.trim_start().starts_with("tillit ")) {
            assert!(!line.contains(" DATA/") && !line.contains("[--"), "block {k}: a placeholder in a runnable line: {line}");
        }
    }
    for port in [4222u16, 8080] {
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} is taken: the quick start uses it");
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("target/release");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(tillit_bin(), bin.join("tillit")).unwrap();
    let dev_log = tmp.path().join("dev.log");
    let mut dev = std::process::Command::new(bin.join("tillit"))
        .arg("dev")
        .current_dir(tmp.path())
        .env("NATS_SERVER_BIN", nats_server_bin())
        .env_remove("TILLIT_MASTER_KEY")
        .env_remove("TILLIT_DATA_DIR")
        .stdout(std::fs::File::create(&dev_log).unwrap())
        .stderr(std::fs::File::create(tmp.path().join("dev.err")).unwrap())
        .spawn()
        .unwrap();
    let ready = wait_for(Duration::from_secs(60), || http_get(8080, "/readyz").map(|(c, _)| c == 200).unwrap_or(false));
    if ready.is_none() {
        let _ = dev.kill();
        panic!("the dev stack never got ready:\n{}", std::fs::read_to_string(tmp.path().join("dev.err")).unwrap_or_default());
    }
    let mut script = String::from("set -euo pipefail\nset -x\n");
    for b in &blocks {
        for line in b.lines() {
            if !set_up(line) {
                script.push_str(line);
                script.push('\n');
            }
        }
    }
    std::fs::write(tmp.path().join("readme.sh"), &script).unwrap();
    let out = std::process::Command::new("bash")
        .arg("readme.sh")
        .current_dir(tmp.path())
        .env("NATS_SERVER_BIN", nats_server_bin())
        .env_remove("TILLIT_MASTER_KEY")
        .env_remove("TILLIT_IDENTITY")
        .env_remove("TILLIT_DATA_DIR")
        .output()
        .unwrap();
    let _ = std::process::Command::new("kill").arg("-TERM").arg(dev.id().to_string()).status();
    let _ = dev.wait();
    assert!(
        out.status.success(),
        "a README command failed:\n{}\n--- stdout\n{}\n--- dev\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(tmp.path().join("dev.err")).unwrap_or_default()
    );
    let trace = String::from_utf8_lossy(&out.stderr);
    for cmd in ["+ tillit enroll", "+ tillit grant", "+ tillit revoke", "+ tillit secret get", "+ tillit backup --verify", "+ tillit break-glass verify", "+ tillit admin add", "+ tillit export", "+ tillit apply", "+ tillit dashboard"] {
        assert!(trace.contains(cmd), "the walkthrough did not run `{cmd}`:\n{trace}");
    }
    // Nothing the README runs leaves files named like flags (an unquoted `>` would).
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('-'), "a README command wrote a file named {name}");
    }
}

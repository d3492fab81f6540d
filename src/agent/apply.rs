//! Applying a verified event: writing secrets, the CA bundle and the trust set atomically,
//! and running the hook.

use crate::subjects::EventKind;
use super::decide::Verified;
use super::{io_err, keep_alive, Agent, AgentError, AgentState, HOOK_TIMEOUT, PROGRESS_EVERY};
use crate::client::ClientError;
use crate::envelope::{TrustSet, Verifier};
use crate::fsutil::write_atomic;
use crate::layout::{IdentityDir, SiteDir};
use crate::secrets::SecretPath;
use async_nats::jetstream;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Deserialize)]
struct SecretRotated {
    path: String,
    version: u32,
}

#[derive(Debug, Deserialize)]
struct CaRotated {
    bundle_pem: String,
    /// `added`, `switched`, `reissue` (re-issue the site server's certificate) or `retired`.
    #[serde(default)]
    phase: Option<crate::proto::CaEventPhase>,
}

#[derive(Debug, Deserialize)]
struct TrustRotated {
    trust_jwks: serde_json::Value,
}

impl Agent {
    /// Apply one verified event to `next` and the files; true if a file changed.
    pub(super) async fn apply(&mut self, next: &mut AgentState, v: &Verified) -> Result<bool, AgentError> {
        match EventKind::from_name(&v.kind) {
            Some(EventKind::SecretRotated) => {
                let Ok(d) = serde_json::from_value::<SecretRotated>(v.data.clone()) else {
                    tracing::warn!(seq = v.seq, "secret.rotated without path/version; skipped");
                    return Ok(false);
                };
                let Ok(path) = SecretPath::parse(&d.path) else {
                    tracing::warn!(seq = v.seq, path = %d.path, "secret.rotated names a malformed path; skipped");
                    return Ok(false);
                };
                if next.secrets.get(&d.path).is_some_and(|have| *have >= d.version) {
                    return Ok(false);
                }
                let (value, version) = match self.session.secret_version(&d.path, Some(d.version)).await {
                    Ok(v) => v,
                    // Deleted since, or this site is no longer a reader: nothing to write, and
                    // retrying would wedge every event behind it.
                    Err(ClientError::Api(e)) if matches!(e.code, crate::error::ErrorCode::Forbidden | crate::error::ErrorCode::NotFound) => {
                        tracing::warn!(seq = v.seq, path = %d.path, "secret.rotated names a secret this site cannot read now ({}); skipped", e.message);
                        return Ok(false);
                    }
                    Err(e) => return Err(e.into()),
                };
                let file = SiteDir::new(&self.opts.files).secret(&path);
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                }
                write_atomic(&file, value.expose().as_bytes(), 0o600).map_err(io_err(&file))?;
                next.secrets.insert(d.path.clone(), version);
                tracing::info!(path = %d.path, version, "secret written");
                Ok(true)
            }
            Some(EventKind::CaRotated) => {
                let Ok(d) = serde_json::from_value::<CaRotated>(v.data.clone()) else {
                    tracing::warn!(seq = v.seq, "ca.rotated without a bundle; skipped");
                    return Ok(false);
                };
                if crate::pem::certs(&d.bundle_pem).map(|c| c.is_empty()).unwrap_or(true) {
                    tracing::warn!(seq = v.seq, "ca.rotated bundle holds no certificate; skipped");
                    return Ok(false);
                }
                // The set of CAs, not their order: a switch of the issuing CA reorders the bundle,
                // which needs no rewrite and no server reload.
                let digest = bundle_set_digest(&d.bundle_pem);
                // The control plane asks for the site server's certificate from the current CA
                // before the old one leaves the bundle.
                let reissue = d.phase == Some(crate::proto::CaEventPhase::Reissue) && v.seq >= next.ca_seq;
                if reissue {
                    // The agent's own certificate too: the old CA is about to leave the bundle.
                    self.session.renew_now().await?;
                }
                let reissued = reissue && self.renew_site_server().await?;
                if v.seq < next.ca_seq || next.ca_bundle_sha256.as_deref() == Some(digest.as_str()) {
                    next.ca_seq = next.ca_seq.max(v.seq);
                    return Ok(reissued);
                }
                let file = SiteDir::new(&self.opts.files).ca();
                write_atomic(&file, d.bundle_pem.as_bytes(), 0o600).map_err(io_err(&file))?;
                next.ca_bundle_sha256 = Some(digest);
                next.ca_seq = v.seq;
                tracing::info!("CA bundle written");
                Ok(true)
            }
            Some(EventKind::TrustRotated) => {
                // Signed by a key we trust: adopt the new trust set for the next envelopes.
                if let Ok(d) = serde_json::from_value::<TrustRotated>(v.data.clone()) {
                    let text = d.trust_jwks.to_string();
                    if let Ok(set) = TrustSet::from_jwks(&text) {
                        if !set.is_empty() {
                            self.verifier = Verifier::new(set, vec![format!("site:{}", self.site)], 1);
                            let file = IdentityDir::new(&self.opts.identity).trust_jwks();
                            write_atomic(&file, text.as_bytes(), 0o644).map_err(io_err(&file))?;
                            tracing::info!("trust set updated");
                        }
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Run the hook; on failure report it, keep the batch in progress, and retry with backoff.
    pub(super) async fn run_hook_until_ok(&self, msgs: &[jetstream::Message], applied: &[(u64, String, String)]) -> Result<(), AgentError> {
        let Some(cmd) = &self.opts.exec else { return Ok(()) };
        let mut delay = Duration::from_millis(500);
        loop {
            let hook = run_hook(cmd, &self.site, &self.opts.files);
            tokio::pin!(hook);
            let result = loop {
                tokio::select! {
                    r = &mut hook => break r,
                    _ = tokio::time::sleep(PROGRESS_EVERY) => keep_alive(msgs).await,
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(why) => {
                    tracing::error!(site = %self.site, "hook failed: {why}; retrying in {delay:?} (events stay unacknowledged)");
                    if let Err(e) = self.report(applied, crate::proto::AckOutcome::Failed, Some(why)).await {
                        tracing::warn!("cannot report the failure: {e}");
                    }
                    keep_alive(msgs).await;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
            }
        }
    }
}

/// A digest of the certificates in a PEM bundle, independent of their order.
fn bundle_set_digest(pem: &str) -> String {
    let mut ders: Vec<Vec<u8>> = crate::pem::certs(pem).map(|c| c.iter().map(|d| d.to_vec()).collect()).unwrap_or_default();
    ders.sort();
    crate::crypto::sha256_hex(&ders.concat())
}

/// Run `cmd` with `sh -c`, bounded; an error says why.
pub(super) async fn run_hook(cmd: &str, site: &str, files: &Path) -> Result<(), String> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c").arg(cmd).env("TILLIT_SITE", site).env("TILLIT_FILES", files).kill_on_drop(true);
    let out = tokio::time::timeout(HOOK_TIMEOUT, c.output())
        .await
        .map_err(|_| format!("hook did not finish within {HOOK_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run hook: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("hook exited with {}: {}", out.status, err.trim().chars().take(300).collect::<String>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hooks_report_failure_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        run_hook("test \"$TILLIT_SITE\" = east", "east", dir.path()).await.unwrap();
        let err = run_hook("echo broken >&2; exit 3", "east", dir.path()).await.unwrap_err();
        assert!(err.contains("broken") && err.contains('3'), "{err}");
    }
}

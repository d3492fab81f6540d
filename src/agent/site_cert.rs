//! The site server's certificate: when it is due, and re-issuing it (with the leafnode users'
//! JWTs) from the agent.

use super::apply::run_hook;
use super::{io_err, Agent, AgentError};
use crate::fsutil::write_atomic;
use crate::layout::SiteDir;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The files of the site server an agent looks after.
struct SiteServerFiles {
    cert: PathBuf,
    key: PathBuf,
    sys_creds: PathBuf,
    tillit_creds: PathBuf,
}

/// How often an agent checks its site server's certificate.
pub(super) const SITE_CHECK_EVERY: Duration = Duration::from_secs(3600);

impl Agent {
    /// The site server's files in the directory this agent materialises into (`site add` wrote
    /// them there); `None` when it manages no site server.
    fn site_server_files(&self) -> Option<SiteServerFiles> {
        let d = SiteDir::new(&self.opts.files);
        let f = SiteServerFiles { cert: d.cert(), key: d.key(), sys_creds: d.sys_creds(), tillit_creds: d.tillit_creds() };
        [&f.cert, &f.key, &f.sys_creds, &f.tillit_creds].iter().all(|p| p.exists()).then_some(f)
    }

    /// Whether the site server's certificate should be re-issued now: a third of its life left,
    /// or its key and certificate do not match (a crash between the two writes).
    pub fn site_server_due(&self) -> Option<String> {
        let f = self.site_server_files()?;
        match (std::fs::read_to_string(&f.cert), std::fs::read_to_string(&f.key)) {
            (Ok(cert), Ok(key)) => crate::policy::renew::server_cert_due(&cert, &key, self.clock.now_unix()),
            _ => Some("the site server's certificate or key cannot be read".into()),
        }
    }

    /// Re-issue the site server's certificate (a new key made here, never sent) and its leafnode
    /// users' JWTs (their seeds stay in the creds files); false when this agent manages no site
    /// server. The caller runs the hook so the server reloads them.
    pub async fn renew_site_server(&self) -> Result<bool, AgentError> {
        let Some(f) = self.site_server_files() else {
            tracing::debug!("no site server files beside the agent's; nothing to re-issue");
            return Ok(false);
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
        let bad = |what: &str, e: String| AgentError::SiteFiles(format!("{what}: {e}"));
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (_, tillit_seed) = crate::issuer::creds::parse(&read(&f.tillit_creds)?).map_err(|e| bad(&name(&f.tillit_creds), e.to_string()))?;
        let (_, sys_seed) = crate::issuer::creds::parse(&read(&f.sys_creds)?).map_err(|e| bad(&name(&f.sys_creds), e.to_string()))?;
        let tillit_user = nkeys::KeyPair::from_seed(tillit_seed.expose())
            .map_err(|e| bad(&format!("{} seed", name(&f.tillit_creds)), e.to_string()))?;
        let (csr, key_pem) = crate::issuer::x509::make_csr(&tillit_user.public_key()).map_err(|e| bad("CSR", e.to_string()))?;
        let r: crate::proto::SiteRenewReply =
            self.session.call::<crate::proto::SiteRenew>(crate::proto::SiteRenewRequest { csr }).await?;
        crate::pem::key_matches(&r.cert_pem, key_pem.expose()).map_err(|e| bad("the re-issued certificate", e.to_string()))?;
        // Key first, then certificate: a crash between leaves a mismatch that the next check
        // (`site_server_due`) repairs; the hook reloads the server only after both.
        write_atomic(&f.key, key_pem.expose().as_bytes(), 0o600).map_err(io_err(&f.key))?;
        write_atomic(&f.cert, r.cert_pem.as_bytes(), 0o644).map_err(io_err(&f.cert))?;
        for (path, jwt, seed) in [(&f.tillit_creds, &r.tillit_user_jwt, &tillit_seed), (&f.sys_creds, &r.sys_user_jwt, &sys_seed)] {
            write_atomic(path, crate::issuer::creds::format(jwt, seed).expose().as_bytes(), 0o600).map_err(io_err(path))?;
        }
        tracing::info!(site = %self.site, expires = %r.expires_at, ca = %r.ca_fingerprint, "site server certificate and leafnode users re-issued");
        Ok(true)
    }

    /// Check the site server's certificate; re-issue it and run the hook when due.
    pub(super) async fn maintain_site_server(&self) {
        let Some(why) = self.site_server_due() else { return };
        tracing::info!(site = %self.site, "{why}: re-issuing");
        match self.renew_site_server().await {
            Ok(true) => {
                if let Some(cmd) = &self.opts.exec {
                    if let Err(why) = run_hook(cmd, &self.site, &self.opts.files).await {
                        tracing::error!(site = %self.site, "hook after re-issuing the site server's certificate failed: {why}");
                    }
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(site = %self.site, "cannot re-issue the site server's certificate yet: {e}; trying again later"),
        }
    }
}

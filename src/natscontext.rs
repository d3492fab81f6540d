//! A `nats` CLI context for an identity dir (`tillit context`): the one file that lets the tool
//! every NATS user has connect as the identity — server URLs, creds, client certificate and key,
//! the CA to trust, and the inbox prefix the identity may subscribe to (without it, every
//! `nats req` would wait on an inbox the server refuses).
//!
//! The file format is natscli's (`natscontext` package: `description`, `url`, `creds`, `cert`,
//! `key`, `ca`, `inbox_prefix`, …), in `$XDG_CONFIG_HOME/nats/context/<name>.json`
//! ([`NatsConfigDir`]); selecting it writes the name to `context.txt` beside. The context holds
//! paths only: the keys stay in the identity dir, and renewal (which rewrites those files in
//! place) keeps the context valid.

use crate::identity::{IdentityInfo, IdentityKind};
use crate::layout::{IdentityDir, NatsConfigDir};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Why a context was not written.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("context name {0:?} is invalid: use 1-64 characters of A-Z, a-z, 0-9, '.', '-' and '_', not starting with '.'")]
    Name(String),
    #[error("context {name:?} already exists at {path}; pass --force to replace it")]
    Exists { name: String, path: String },
    #[error("identity dir {0} has no {1}")]
    Missing(String, &'static str),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// A `nats` CLI context (the fields tillit sets; natscli reads absent ones as empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsContext {
    pub description: String,
    /// The identity's NATS URLs, comma-separated.
    pub url: String,
    /// The identity's `nats.creds`.
    pub creds: String,
    /// Client certificate and key (`tls/cert.pem`, `tls/key.pem`).
    pub cert: String,
    pub key: String,
    /// The CA bundle to verify servers with (`tls/ca.pem`).
    pub ca: String,
    /// The identity's own inbox prefix: the only inboxes it may subscribe to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub inbox_prefix: String,
}

impl NatsContext {
    /// The context for identity dir `dir` (its paths as given: pass an absolute dir) described by `info`.
    pub fn for_identity(dir: &IdentityDir, info: &IdentityInfo) -> Self {
        let s = |p: std::path::PathBuf| p.display().to_string();
        NatsContext {
            description: format!("tillit {} identity {} ({})", info.kind.as_str(), info.id, dir.root().display()),
            url: info.nats_urls.join(","),
            creds: s(dir.creds()),
            cert: s(dir.cert()),
            key: s(dir.key()),
            ca: s(dir.ca()),
            inbox_prefix: info.inbox_prefix.clone(),
        }
    }
}

/// The default context name: `tillit-<tenant>-<project>-<env>-<service>` for a service,
/// `tillit-admin-<name>` for an admin, `tillit-agent-<site>` for a site agent.
pub fn default_name(info: &IdentityInfo) -> String {
    let own = info.service.as_ref().and_then(|s| match info.kind {
        IdentityKind::Service => Some(format!("{}-{}-{}-{}", s.tenant, s.project, s.env, s.service)),
        IdentityKind::Admin => crate::names::admin_name(s).map(str::to_string),
        IdentityKind::Agent => crate::names::agent_site(s).map(str::to_string),
        IdentityKind::ControlPlane => None,
    });
    let name = match own {
        Some(n) if info.kind == IdentityKind::Service => format!("tillit-{n}"),
        Some(n) => format!("tillit-{}-{n}", info.kind.as_str()),
        None => {
            let n: String = info.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
            format!("tillit-{}-{n}", info.kind.as_str())
        }
    };
    name.chars().take(64).collect()
}

/// A context name the `nats` CLI and a file system both take: 1-64 of `[A-Za-z0-9._-]`, not
/// starting with `.` (no path separators, no `..`).
pub fn check_name(name: &str) -> Result<(), ContextError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ContextError::Name(name.to_string()))
    }
}

/// Write context `name` for identity dir `dir` into `cfg`; with `select`, make it the `nats`
/// CLI's selected context too. Refuses to replace an existing context unless `force`.
/// Returns the context and the path written.
pub fn write(
    cfg: &NatsConfigDir,
    dir: &IdentityDir,
    name: Option<&str>,
    force: bool,
    select: bool,
) -> Result<(NatsContext, std::path::PathBuf), ContextError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ContextError::Io { path, source }
    };
    let root = std::path::absolute(dir.root()).map_err(io(dir.root()))?;
    let dir = IdentityDir::new(root);
    let info = crate::identity::read_info(&dir).map_err(|e| ContextError::Io {
        path: dir.identity_json().display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for (p, what) in [(dir.creds(), "nats.creds"), (dir.cert(), "tls/cert.pem"), (dir.key(), "tls/key.pem"), (dir.ca(), "tls/ca.pem")] {
        if !p.is_file() {
            return Err(ContextError::Missing(dir.root().display().to_string(), what));
        }
    }
    let name = name.map(str::to_string).unwrap_or_else(|| default_name(&info));
    check_name(&name)?;
    let ctx = NatsContext::for_identity(&dir, &info);
    let path = cfg.context(&name);
    if path.exists() && !force {
        return Err(ContextError::Exists { name, path: path.display().to_string() });
    }
    std::fs::create_dir_all(cfg.contexts()).map_err(io(&cfg.contexts()))?;
    let mut text = serde_json::to_vec_pretty(&ctx).map_err(|e| io(&path)(std::io::Error::other(e)))?;
    text.push(b'\n');
    crate::fsutil::write_atomic(&path, &text, crate::fsutil::PRIVATE).map_err(io(&path))?;
    if select {
        crate::fsutil::write_atomic(&cfg.selected(), name.as_bytes(), crate::fsutil::PRIVATE).map_err(io(&cfg.selected()))?;
    }
    Ok((ctx, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: IdentityKind, service: Option<&str>) -> IdentityInfo {
        IdentityInfo {
            format: crate::identity::IDENTITY_FORMAT,
            kind,
            id: "spiffe://example.org/acme/shop/prod/orders".into(),
            name: "orders".into(),
            trust_domain: "example.org".into(),
            account: "acme-prod".into(),
            account_public_key: "A".into(),
            user_public_key: "U".into(),
            inbox_prefix: "_INBOX_UABC".into(),
            nats_urls: vec!["tls://a:4222".into(), "tls://b:4222".into()],
            ca_fingerprint: String::new(),
            cert_serial: String::new(),
            issued_at: String::new(),
            expires_at: String::new(),
            renew_at: String::new(),
            issued_at_unix: 0,
            expires_at_unix: 0,
            renew_at_unix: 0,
            service: service.map(|s| crate::names::ServiceId::parse(s).unwrap()),
            xkey_public_key: None,
        }
    }

    #[test]
    fn the_context_names_the_identity_files_and_its_inbox_prefix() {
        let dir = IdentityDir::new("/etc/orders/identity");
        let c = NatsContext::for_identity(&dir, &info(IdentityKind::Service, Some("acme/shop/prod/orders")));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "description": "tillit service identity spiffe://example.org/acme/shop/prod/orders (/etc/orders/identity)",
                "url": "tls://a:4222,tls://b:4222",
                "creds": "/etc/orders/identity/nats.creds",
                "cert": "/etc/orders/identity/tls/cert.pem",
                "key": "/etc/orders/identity/tls/key.pem",
                "ca": "/etc/orders/identity/tls/ca.pem",
                "inbox_prefix": "_INBOX_UABC",
            })
        );
        let mut i = info(IdentityKind::Service, None);
        i.inbox_prefix.clear();
        let v = serde_json::to_value(NatsContext::for_identity(&dir, &i)).unwrap();
        assert!(v.get("inbox_prefix").is_none(), "no prefix, no field (natscli's default _INBOX)");
    }

    #[test]
    fn default_names_and_name_checks() {
        assert_eq!(default_name(&info(IdentityKind::Service, Some("acme/shop/prod/orders"))), "tillit-acme-shop-prod-orders");
        assert_eq!(default_name(&info(IdentityKind::Admin, Some(&crate::names::admin_service_id("ops").unwrap().to_string()))), "tillit-admin-ops");
        assert_eq!(default_name(&info(IdentityKind::Agent, Some(&crate::names::agent_service_id("east").unwrap().to_string()))), "tillit-agent-east");
        assert_eq!(default_name(&info(IdentityKind::Admin, None)), "tillit-admin-orders");
        for ok in ["tillit-acme-shop-prod-orders", "a", "A.b_c-1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", "a b", "ü", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_refuses_to_overwrite_and_selects() {
        let tmp = tempfile::tempdir().unwrap();
        let id = IdentityDir::new(tmp.path().join("id"));
        std::fs::create_dir_all(id.tls()).unwrap();
        for p in [id.creds(), id.cert(), id.key(), id.ca()] {
            std::fs::write(p, "x").unwrap();
        }
        let i = info(IdentityKind::Service, Some("acme/shop/prod/orders"));
        std::fs::write(id.identity_json(), serde_json::to_vec(&i).unwrap()).unwrap();
        let cfg = NatsConfigDir::new(tmp.path().join("nats"));
        let (c, path) = write(&cfg, &id, None, false, false).unwrap();
        assert_eq!(path, cfg.context("tillit-acme-shop-prod-orders"));
        let back: NatsContext = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(!cfg.selected().exists(), "not selected unless asked");
        assert!(matches!(write(&cfg, &id, None, false, true), Err(ContextError::Exists { .. })));
        assert!(!cfg.selected().exists(), "a refused write selects nothing");
        write(&cfg, &id, None, true, true).unwrap();
        assert_eq!(std::fs::read_to_string(cfg.selected()).unwrap(), "tillit-acme-shop-prod-orders");
        assert!(matches!(write(&cfg, &id, Some("../evil"), true, false), Err(ContextError::Name(_))));
        std::fs::remove_file(id.key()).unwrap();
        assert!(matches!(write(&cfg, &id, Some("other"), false, false), Err(ContextError::Missing(_, "tls/key.pem"))));
    }
}

//! Secrets: paths, reader patterns and who may read what (pure, table-tested).
//!
//! A secret lives at `tenant/project/env/name`. Its readers are service identities
//! (`acme/shop/prod/orders`), every service of a project (`acme/shop/prod/*`), or a site
//! (`site:east`). Readers never cross tenant or environment: a reader pattern must name the
//! secret's own tenant and env.

use crate::names::{check_segment, NameError, ServiceId};
use serde::{Deserialize, Serialize};

/// Largest secret value.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Most readers per secret.
pub const MAX_READERS: usize = 64;

/// `tenant/project/env/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretPath {
    pub tenant: String,
    pub project: String,
    pub env: String,
    pub name: String,
}

impl SecretPath {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [t, p, e, n] => {
                check_segment("tenant", t)?;
                check_segment("project", p)?;
                check_segment("env", e)?;
                check_segment("secret name", n)?;
                Ok(SecretPath { tenant: t.to_string(), project: p.to_string(), env: e.to_string(), name: n.to_string() })
            }
            _ => Err(NameError::Segment { what: "secret path (tenant/project/env/name)", value: s.into() }),
        }
    }

    /// A bare name resolved inside a service's own tenant/project/env, or a full path.
    pub fn resolve(name_or_path: &str, caller: &ServiceId) -> Result<Self, NameError> {
        if name_or_path.contains('/') {
            Self::parse(name_or_path)
        } else {
            Self::parse(&format!("{}/{}/{}/{name_or_path}", caller.tenant, caller.project, caller.env))
        }
    }
}

impl std::fmt::Display for SecretPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}/{}", self.tenant, self.project, self.env, self.name)
    }
}

impl TryFrom<String> for SecretPath {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        SecretPath::parse(&s)
    }
}

impl From<SecretPath> for String {
    fn from(p: SecretPath) -> String {
        p.to_string()
    }
}

/// Who may read a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Reader {
    /// One service.
    Service(ServiceId),
    /// Every service of `tenant/project/env/*`.
    Project { tenant: String, project: String, env: String },
    /// A site's agent.
    Site(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReaderError {
    #[error("reader {0:?} is not a service (tenant/project/env/service), a project (tenant/project/env/*) or a site (site:NAME)")]
    Malformed(String),
    #[error("reader {reader} is in another tenant or environment than {path}; readers never cross them")]
    Crosses { reader: String, path: String },
}

impl Reader {
    pub fn parse(s: &str) -> Result<Self, ReaderError> {
        let bad = || ReaderError::Malformed(s.into());
        if let Some(site) = s.strip_prefix("site:") {
            check_segment("site", site).map_err(|_| bad())?;
            return Ok(Reader::Site(site.into()));
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [t, p, e, "*"] => {
                for (w, v) in [("tenant", t), ("project", p), ("env", e)] {
                    check_segment(w, v).map_err(|_| bad())?;
                }
                Ok(Reader::Project { tenant: t.to_string(), project: p.to_string(), env: e.to_string() })
            }
            _ => ServiceId::parse(s).map(Reader::Service).map_err(|_| bad()),
        }
    }

    /// Check that this reader stays within `path`'s tenant and env.
    pub fn check_scope(&self, path: &SecretPath) -> Result<(), ReaderError> {
        let same = match self {
            Reader::Service(s) => s.tenant == path.tenant && s.env == path.env,
            Reader::Project { tenant, env, .. } => *tenant == path.tenant && *env == path.env,
            Reader::Site(_) => true,
        };
        if same {
            Ok(())
        } else {
            Err(ReaderError::Crosses { reader: self.to_string(), path: path.to_string() })
        }
    }

    /// Whether service `who` matches this reader.
    pub fn admits_service(&self, who: &ServiceId) -> bool {
        match self {
            Reader::Service(s) => s == who,
            Reader::Project { tenant, project, env } => who.tenant == *tenant && who.project == *project && who.env == *env,
            Reader::Site(_) => false,
        }
    }
}

impl std::fmt::Display for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reader::Service(s) => write!(f, "{s}"),
            Reader::Project { tenant, project, env } => write!(f, "{tenant}/{project}/{env}/*"),
            Reader::Site(s) => write!(f, "site:{s}"),
        }
    }
}

impl TryFrom<String> for Reader {
    type Error = ReaderError;
    fn try_from(s: String) -> Result<Self, ReaderError> {
        Reader::parse(&s)
    }
}

impl From<Reader> for String {
    fn from(r: Reader) -> String {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = SecretPath::parse("acme/shop/prod/db-password").unwrap();
        assert_eq!(p.to_string(), "acme/shop/prod/db-password");
        let me = ServiceId::parse("acme/shop/prod/orders").unwrap();
        assert_eq!(SecretPath::resolve("db-password", &me).unwrap(), p);
        for bad in ["acme/shop/prod", "acme/shop/prod/../x", "acme/shop/prod/..", "acme/*/prod/x", "acme/shop/prod/x/y", "acme/shop/prod/>", "", "acme/shop/prod/a b"] {
            assert!(SecretPath::parse(bad).is_err(), "{bad}");
        }
        assert!(SecretPath::resolve("..", &me).is_err());
        assert!(SecretPath::resolve("*", &me).is_err());
    }
}

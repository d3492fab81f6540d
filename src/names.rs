//! Names tillit mints into JWTs, subjects, templates and SPIFFE ids, and their validation.
//!
//! nats-server expands scoped-key templates (`{{name()}}`, `{{tag(…)}}`) unchecked, and subjects
//! treat `.`, `*`, `>` and whitespace as syntax; so every name segment tillit accepts is
//! `[a-z0-9]` followed by up to 62 of `[a-z0-9_-]`. Trust domains follow the SPIFFE rules.

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{what} {value:?} is invalid: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    Segment { what: &'static str, value: String },
    #[error("trust domain {0:?} is invalid: use 1-255 characters of a-z, 0-9, '.', '-' and '_' (a SPIFFE trust domain, e.g. example.org)")]
    TrustDomain(String),
}

/// Check one name segment (tenant, project, env, service, site, admin name).
pub fn check_segment(what: &'static str, value: &str) -> Result<(), NameError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'-' || b == b'_'))
        });
    if ok {
        Ok(())
    } else {
        Err(NameError::Segment { what, value: value.to_string() })
    }
}

/// Check a SPIFFE trust domain (lower case; no scheme, port, path or user info).
pub fn check_trust_domain(value: &str) -> Result<(), NameError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('.')
        && !value.ends_with('.')
        && !value.contains("..")
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NameError::TrustDomain(value.to_string()))
    }
}

/// `spiffe://<trust-domain>/<segments joined by '/'>`.
pub fn spiffe_id(trust_domain: &str, segments: &[&str]) -> String {
    format!("spiffe://{trust_domain}/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments() {
        for ok in ["acme", "prod", "orders-v2", "a", "0rders", "x_y", &"a".repeat(63)] {
            assert!(check_segment("service", ok).is_ok(), "{ok}");
        }
        for bad in ["", "*", ">", "a.b", "a b", "A", "-a", "_a", "a/b", "ø", "a\n", &"a".repeat(64), "{{name()}}"] {
            assert!(check_segment("service", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trust_domains() {
        for ok in ["example.org", "dev.tillit.local", "td", "a-b_c.d9"] {
            assert!(check_trust_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Example.org", "spiffe://x", "x/y", ".x", "x.", "a..b", "x:443", "a b", &"a".repeat(256)] {
            assert!(check_trust_domain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(spiffe_id("example.org", &["acme", "shop", "prod", "orders"]), "spiffe://example.org/acme/shop/prod/orders");
    }
}

/// A service identity: `tenant/project/env/service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceId {
    pub tenant: String,
    pub project: String,
    pub env: String,
    pub service: String,
}

impl ServiceId {
    /// Build from parts, each checked.
    pub fn new(tenant: &str, project: &str, env: &str, service: &str) -> Result<Self, NameError> {
        check_segment("tenant", tenant)?;
        check_segment("project", project)?;
        check_segment("env", env)?;
        check_segment("service", service)?;
        Ok(ServiceId { tenant: tenant.into(), project: project.into(), env: env.into(), service: service.into() })
    }

    /// Parse `tenant/project/env/service`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [t, p, e, svc] => Self::new(t, p, e, svc),
            _ => Err(NameError::Segment { what: "service identity (tenant/project/env/service)", value: s.into() }),
        }
    }

    /// The NATS account of this tenant + environment, e.g. `acme-prod`.
    pub fn account_name(&self) -> String {
        format!("{}-{}", self.tenant, self.env)
    }

    /// The role (scoped signing key) name inside the account: `project/service`.
    pub fn role(&self) -> String {
        format!("{}/{}", self.project, self.service)
    }

    /// The subject namespace the service owns: `project.service`.
    pub fn subject_prefix(&self) -> String {
        format!("{}.{}", self.project, self.service)
    }

    /// `spiffe://<td>/<tenant>/<project>/<env>/<service>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        spiffe_id(trust_domain, &[&self.tenant, &self.project, &self.env, &self.service])
    }
}

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}/{}", self.tenant, self.project, self.env, self.service)
    }
}

impl TryFrom<String> for ServiceId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        ServiceId::parse(&s)
    }
}

impl From<ServiceId> for String {
    fn from(s: ServiceId) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod service_id_tests {
    use super::*;

    #[test]
    fn parses_and_derives_names() {
        let s = ServiceId::parse("acme/shop/prod/orders").unwrap();
        assert_eq!(s.account_name(), "acme-prod");
        assert_eq!(s.subject_prefix(), "shop.orders");
        assert_eq!(s.role(), "shop/orders");
        assert_eq!(s.spiffe_id("example.org"), "spiffe://example.org/acme/shop/prod/orders");
        assert_eq!(s.to_string(), "acme/shop/prod/orders");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"acme/shop/prod/orders\"");
        for bad in ["acme/shop/prod", "acme/shop/prod/orders/x", "acme/*/prod/orders", "acme/shop/prod/>", "a.b/shop/prod/x", ""] {
            assert!(ServiceId::parse(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<ServiceId>(&format!("\"{bad}\"")).is_err());
        }
    }
}

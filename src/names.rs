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

// === tillit's own identities ===

/// The tenant of tillit's own identities (site agents, admins); refused for anyone else's.
pub const AGENT_TENANT: &str = "tillit";
const AGENT_PROJECT: &str = "sites";
const AGENT_SERVICE: &str = "agent";
/// Project segment of admin identities' join tokens (`tillit/admins/<name>/admin`).
const ADMIN_PROJECT: &str = "admins";
const ADMIN_SERVICE: &str = "admin";

/// The id a join token for a new admin identity `name` is bound to.
pub fn admin_service_id(name: &str) -> Result<ServiceId, NameError> {
    ServiceId::new(AGENT_TENANT, ADMIN_PROJECT, name, ADMIN_SERVICE)
}

/// The admin name a service id stands for, if it is an admin's.
pub fn admin_name(sid: &ServiceId) -> Option<&str> {
    (sid.tenant == AGENT_TENANT && sid.project == ADMIN_PROJECT && sid.service == ADMIN_SERVICE).then_some(sid.env.as_str())
}

/// The service id of a site's agents.
pub fn agent_service_id(site: &str) -> Result<ServiceId, NameError> {
    ServiceId::new(AGENT_TENANT, AGENT_PROJECT, site, AGENT_SERVICE)
}

/// The site a service id names, if it is a site agent's.
pub fn agent_site(sid: &ServiceId) -> Option<&str> {
    (sid.tenant == AGENT_TENANT && sid.project == AGENT_PROJECT && sid.service == AGENT_SERVICE).then_some(sid.env.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_round_trip() {
        let sid = agent_service_id("east").unwrap();
        assert_eq!(sid.to_string(), "tillit/sites/east/agent");
        assert_eq!(agent_site(&sid), Some("east"));
        assert_eq!(agent_site(&ServiceId::parse("acme/shop/prod/orders").unwrap()), None);
        assert!(agent_service_id("a.b").is_err());
        assert!(agent_service_id("*").is_err());
        let admin = admin_service_id("alice").unwrap();
        assert_eq!(admin.to_string(), "tillit/admins/alice/admin");
        assert_eq!(admin_name(&admin), Some("alice"));
        assert_eq!(admin_name(&sid), None);
        assert_eq!(agent_site(&admin), None);
    }

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

/// The NATS account of a (tenant, env) pair: `tenant-env` where every `-` inside either name is
/// written twice. The mapping is injective, so no two pairs ever share an account (with a plain
/// join, `acme-corp`+`prod` and `acme`+`corp-prod` were both `acme-corp-prod`): inside a name a
/// run of dashes is doubled (even), the separator adds one (odd), and an env never starts with
/// `-`, so exactly one run of the result is odd and it holds the separator. Names without a dash
/// keep their familiar account (`acme`+`prod` → `acme-prod`). The result is a valid subject
/// token (no `.`, `*`, `>` or whitespace).
pub fn account_name(tenant: &str, env: &str) -> String {
    format!("{}-{}", tenant.replace('-', "--"), env.replace('-', "--"))
}

/// The (tenant, env) pair an account name was made from, if it is one ([`account_name`]'s
/// inverse; `None` for SYS, TILLIT, BOOTSTRAP and anything not of that form).
pub fn parse_account_name(account: &str) -> Option<(String, String)> {
    let b = account.as_bytes();
    let (mut i, mut sep) = (0, None);
    while i < b.len() {
        if b[i] == b'-' {
            let start = i;
            while i < b.len() && b[i] == b'-' {
                i += 1;
            }
            if (i - start) % 2 == 1 {
                if sep.is_some() {
                    return None;
                }
                sep = Some(i - 1);
            }
        } else {
            i += 1;
        }
    }
    let sep = sep?;
    let (t, e) = (account[..sep].replace("--", "-"), account[sep + 1..].replace("--", "-"));
    (check_segment("tenant", &t).is_ok() && check_segment("env", &e).is_ok() && account_name(&t, &e) == account).then_some((t, e))
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

    /// The NATS account of this tenant + environment, e.g. `acme-prod` ([`account_name`]).
    pub fn account_name(&self) -> String {
        account_name(&self.tenant, &self.env)
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
        assert_eq!(parse_account_name("acme-prod"), Some(("acme".into(), "prod".into())));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"acme/shop/prod/orders\"");
        for bad in ["acme/shop/prod", "acme/shop/prod/orders/x", "acme/*/prod/orders", "acme/shop/prod/>", "a.b/shop/prod/x", ""] {
            assert!(ServiceId::parse(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<ServiceId>(&format!("\"{bad}\"")).is_err());
        }
    }
}

#[cfg(test)]
mod account_name_tests {
    use super::*;

    /// Every split of every name built from a few dash-heavy pieces: no two (tenant, env) pairs
    /// share an account, and every account parses back to its pair.
    #[test]
    fn no_two_tenant_env_pairs_share_an_account() {
        let pieces = ["a", "acme", "corp", "prod", "a-", "-", "--", "x_y", "b-c"];
        let mut names: Vec<String> = Vec::new();
        for p in pieces {
            for q in pieces {
                for r in ["", "-", "--"] {
                    let n = format!("{p}{r}{q}");
                    if check_segment("x", &n).is_ok() && !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
        let mut seen: std::collections::HashMap<String, (String, String)> = std::collections::HashMap::new();
        let mut pairs = 0;
        for t in &names {
            for e in &names {
                let acct = account_name(t, e);
                if let Some(prev) = seen.insert(acct.clone(), (t.clone(), e.clone())) {
                    panic!("{prev:?} and {:?} share account {acct}", (t, e));
                }
                assert_eq!(parse_account_name(&acct), Some((t.clone(), e.clone())), "{acct}");
                assert!(!acct.contains(['.', '*', '>', ' ', '/']));
                pairs += 1;
            }
        }
        assert!(pairs > 1000, "{pairs}");
        // The pair from the report, spelled out.
        assert_ne!(account_name("acme-corp", "prod"), account_name("acme", "corp-prod"));
        assert_eq!(account_name("acme-corp", "prod"), "acme--corp-prod");
        assert_eq!(account_name("acme", "corp-prod"), "acme-corp--prod");
        // Roles inside an account are `project/service`: '/' is in no name, so they cannot meet.
        let a = ServiceId::parse("acme-corp/shop/prod/orders").unwrap();
        let b = ServiceId::parse("acme/shop/corp-prod/orders").unwrap();
        assert_ne!((a.account_name(), a.role()), (b.account_name(), b.role()));
        for bad in ["SYS", "TILLIT", "BOOTSTRAP", "acme", "a-b-c", "-a", "a-", "a---", "acme.prod-x"] {
            assert_eq!(parse_account_name(bad), None, "{bad}");
        }
    }
}

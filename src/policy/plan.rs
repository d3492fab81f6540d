//! The estate as code (pure, table-tested): what `tillit apply` would change to make the live
//! estate ([`EstateDoc`] from `estate.export`) what a document says, and what it cannot do.

use crate::proto::{EstateDoc, ServiceDoc, SiteDoc, ESTATE_DOC_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One change, in the order `apply` makes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Grant subjects to a service (`tillit grant`).
    Grant { service: String, #[serde(rename = "pub")] publish: Vec<String>, #[serde(rename = "sub")] subscribe: Vec<String> },
    /// Take granted subjects back (`tillit ungrant`).
    Ungrant { service: String, #[serde(rename = "pub")] publish: Vec<String>, #[serde(rename = "sub")] subscribe: Vec<String> },
    /// Replace a secret's readers.
    Readers { path: String, from: Vec<String>, to: Vec<String> },
    /// Register a site (`tillit site add`: its directory is written where `apply` runs).
    AddSite { name: String, listen: String, hosts: Vec<String> },
    /// Remove a site (`tillit site remove`: its agents and links are revoked).
    RemoveSite { name: String },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let subjects = |p: &[String], s: &[String]| {
            let mut parts = vec![];
            if !p.is_empty() {
                parts.push(format!("pub {}", p.join(" ")));
            }
            if !s.is_empty() {
                parts.push(format!("sub {}", s.join(" ")));
            }
            parts.join("; ")
        };
        match self {
            Step::Grant { service, publish, subscribe } => write!(f, "+ grant    {service}: {}", subjects(publish, subscribe)),
            Step::Ungrant { service, publish, subscribe } => write!(f, "- ungrant  {service}: {}", subjects(publish, subscribe)),
            Step::Readers { path, from, to } => write!(f, "~ readers  {path}: [{}] -> [{}]", from.join(", "), to.join(", ")),
            Step::AddSite { name, listen, .. } => write!(f, "+ site     {name} (listens on {listen})"),
            Step::RemoveSite { name } => write!(f, "- site     {name} (its agents and links are revoked)"),
        }
    }
}

/// What `apply` would do, and why it would not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The changes.
    pub steps: Vec<Step>,
    /// What the document asks that tillit cannot do; `apply` changes nothing while any is left.
    pub problems: Vec<String>,
    /// What it leaves alone on purpose (said so nobody is surprised).
    pub notes: Vec<String>,
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn minus(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

/// A desired site's certificate names, without those every site gets anyway.
fn extra_hosts(s: &SiteDoc) -> BTreeSet<String> {
    let derived = crate::estate::sites::derived_site_hosts(&s.name, &s.listen);
    s.hosts.iter().filter(|h| !derived.contains(h)).cloned().collect()
}

fn tenant_of(id: &str) -> &str {
    id.split('/').next().unwrap_or_default()
}

/// The plan that makes `live` what `desired` says, for an admin confined to `confined_to`
/// (empty: the whole estate).
pub fn plan(live: &EstateDoc, desired: &EstateDoc, confined_to: &[String]) -> Plan {
    let mut p = Plan::default();
    if desired.version != ESTATE_DOC_VERSION {
        p.problems.push(format!("version {} is not one this tillit reads (it reads {ESTATE_DOC_VERSION})", desired.version));
        return p;
    }
    let managed: BTreeSet<&str> = desired.tenants.iter().map(String::as_str).collect();
    for t in &managed {
        if crate::names::check_segment("tenant", t).is_err() || *t == crate::names::AGENT_TENANT {
            p.problems.push(format!("tenant {t:?} is not a tenant name"));
        } else if !confined_to.is_empty() && !confined_to.iter().any(|c| c == t) {
            p.problems.push(format!("tenant {t} is outside this admin's tenants ({})", confined_to.join(", ")));
        }
    }
    if desired.manage_sites && !confined_to.is_empty() {
        p.problems.push("manage_sites: sites belong to the whole estate; this admin is confined to tenants".into());
    }
    if !desired.manage_sites && !desired.sites.is_empty() {
        p.problems.push("the document lists sites but manage_sites is false: set it, or drop the sites".into());
    }

    // Services: exactly the grants the document says, for every service of a managed tenant.
    let mut want: BTreeMap<&str, &ServiceDoc> = BTreeMap::new();
    for s in &desired.services {
        match crate::names::ServiceId::parse(&s.id) {
            Err(e) => p.problems.push(format!("service {:?}: {e}", s.id)),
            Ok(_) if !managed.contains(tenant_of(&s.id)) => {
                p.problems.push(format!("service {}: its tenant is not in `tenants`", s.id));
            }
            Ok(_) => {
                if want.insert(&s.id, s).is_some() {
                    p.problems.push(format!("service {} is listed twice", s.id));
                }
            }
        }
    }
    // (A live entry whose id does not parse is no service: it is planned neither way.)
    let have: BTreeMap<&str, &ServiceDoc> = live
        .services
        .iter()
        .filter(|s| managed.contains(tenant_of(&s.id)) && crate::names::ServiceId::parse(&s.id).is_ok())
        .map(|s| (s.id.as_str(), s))
        .collect();
    let empty = ServiceDoc::default();
    let ids: BTreeSet<&str> = want.keys().chain(have.keys()).copied().collect();
    for id in ids {
        let (w, h) = (want.get(id).copied().unwrap_or(&empty), have.get(id).copied().unwrap_or(&empty));
        let (wp, ws, hp, hs) = (set(&w.publish), set(&w.subscribe), set(&h.publish), set(&h.subscribe));
        let (take_p, take_s) = (minus(&hp, &wp), minus(&hs, &ws));
        if !take_p.is_empty() || !take_s.is_empty() {
            p.steps.push(Step::Ungrant { service: id.into(), publish: take_p, subscribe: take_s });
        }
        let (give_p, give_s) = (minus(&wp, &hp), minus(&ws, &hs));
        if !give_p.is_empty() || !give_s.is_empty() {
            p.steps.push(Step::Grant { service: id.into(), publish: give_p, subscribe: give_s });
        }
    }

    // Secrets: readers as the document says; values never travel here.
    // The first entry of a path counts, on both sides (a second is a problem below).
    let mut have_secrets: BTreeMap<&str, &Vec<String>> = BTreeMap::new();
    for s in live.secrets.iter().filter(|s| managed.contains(tenant_of(&s.path))) {
        have_secrets.entry(s.path.as_str()).or_insert(&s.readers);
    }
    let mut named = BTreeSet::new();
    for s in &desired.secrets {
        if !named.insert(s.path.as_str()) {
            p.problems.push(format!("secret {} is listed twice", s.path));
            continue;
        }
        if !managed.contains(tenant_of(&s.path)) {
            p.problems.push(format!("secret {}: its tenant is not in `tenants`", s.path));
            continue;
        }
        match have_secrets.get(s.path.as_str()) {
            None => p.problems.push(format!("secret {} does not exist: store its value first (`tillit secret put {} …`)", s.path, s.path)),
            Some(r) if set(r) != set(&s.readers) => {
                p.steps.push(Step::Readers { path: s.path.clone(), from: (*r).clone(), to: s.readers.clone() })
            }
            Some(_) => {}
        }
    }
    for path in have_secrets.keys().filter(|k| !named.contains(*k)) {
        p.notes.push(format!("secret {path} is not in the document: kept (delete it with `tillit secret delete`)"));
    }

    // Sites, when managed.
    if desired.manage_sites && confined_to.is_empty() {
        let want: BTreeMap<&str, &SiteDoc> = desired.sites.iter().map(|s| (s.name.as_str(), s)).collect();
        if want.len() != desired.sites.len() {
            p.problems.push("a site is listed twice".into());
        }
        let have: BTreeMap<&str, &SiteDoc> = live.sites.iter().map(|s| (s.name.as_str(), s)).collect();
        for (name, w) in &want {
            match have.get(name) {
                None => p.steps.push(Step::AddSite { name: name.to_string(), listen: w.listen.clone(), hosts: w.hosts.clone() }),
                Some(h) if h.listen != w.listen || set(&h.hosts) != extra_hosts(w) => p.problems.push(format!(
                    "site {name}: its listen address or certificate names differ from the live site's; remove and add it again to change them"
                )),
                Some(_) => {}
            }
        }
        for name in have.keys().filter(|n| !want.contains_key(*n)) {
            p.steps.push(Step::RemoveSite { name: name.to_string() });
        }
    } else if !live.sites.is_empty() && confined_to.is_empty() {
        p.notes.push("sites are not managed by this document (manage_sites = false): left alone".into());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SecretDoc;

    fn svc(id: &str, p: &[&str], s: &[&str]) -> ServiceDoc {
        ServiceDoc { id: id.into(), publish: p.iter().map(|x| x.to_string()).collect(), subscribe: s.iter().map(|x| x.to_string()).collect() }
    }

    fn doc(tenants: &[&str]) -> EstateDoc {
        EstateDoc { version: 1, tenants: tenants.iter().map(|t| t.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn the_same_document_plans_nothing() {
        let mut live = doc(&["acme"]);
        live.services = vec![svc("acme/shop/prod/orders", &["shop.events.>"], &[])];
        live.secrets = vec![SecretDoc { path: "acme/shop/prod/db".into(), readers: vec!["acme/shop/prod/orders".into()] }];
        assert_eq!(plan(&live, &live, &[]), Plan::default());
    }

    /// Found by the `estate_doc` fuzz target: a malformed service id planned against itself.
    #[test]
    fn a_malformed_service_planned_against_itself_is_a_problem_not_an_ungrant() {
        let mut d = doc(&["acme"]);
        d.services = vec![svc("acme/shop/vev<evrders", &["shop.events.>"], &[])];
        let p = plan(&d, &d, &[]);
        assert!(p.steps.is_empty(), "{p:?}");
        assert_eq!(p.problems.len(), 1, "{p:?}");
    }

    /// Found by the `estate_doc` fuzz target: a secret listed twice planned against itself.
    #[test]
    fn a_secret_listed_twice_planned_against_itself_changes_nothing() {
        let mut d = doc(&["acme"]);
        d.secrets = vec![
            SecretDoc { path: "acme/a/b/db".into(), readers: vec!["acme/a/b/x".into()] },
            SecretDoc { path: "acme/a/b/db".into(), readers: vec!["acme/a/b/*".into()] },
        ];
        let p = plan(&d, &d, &[]);
        assert!(p.steps.is_empty(), "{p:?}");
        assert!(p.problems.iter().any(|m| m.contains("listed twice")), "{p:?}");
    }

    #[test]
    fn grants_readers_and_sites_are_planned() {
        let mut live = doc(&["acme", "globex"]);
        live.services = vec![svc("acme/shop/prod/orders", &["a.x", "a.y"], &["a.z"]), svc("globex/w/dev/api", &["g.x"], &[])];
        live.secrets = vec![SecretDoc { path: "acme/shop/prod/db".into(), readers: vec!["acme/shop/prod/orders".into()] }];
        live.sites = vec![SiteDoc { name: "old".into(), listen: "h:1".into(), hosts: vec![] }];
        let mut want = doc(&["acme"]);
        want.manage_sites = true;
        want.services = vec![svc("acme/shop/prod/orders", &["a.x", "a.new"], &[]), svc("acme/shop/prod/new", &["n.x"], &[])];
        want.secrets = vec![SecretDoc { path: "acme/shop/prod/db".into(), readers: vec!["acme/shop/prod/*".into()] }];
        want.sites = vec![SiteDoc { name: "east".into(), listen: "h:2".into(), hosts: vec![] }];
        let p = plan(&live, &want, &[]);
        assert!(p.problems.is_empty(), "{p:?}");
        assert_eq!(
            p.steps,
            vec![
                Step::Grant { service: "acme/shop/prod/new".into(), publish: vec!["n.x".into()], subscribe: vec![] },
                Step::Ungrant { service: "acme/shop/prod/orders".into(), publish: vec!["a.y".into()], subscribe: vec!["a.z".into()] },
                Step::Grant { service: "acme/shop/prod/orders".into(), publish: vec!["a.new".into()], subscribe: vec![] },
                Step::Readers { path: "acme/shop/prod/db".into(), from: vec!["acme/shop/prod/orders".into()], to: vec!["acme/shop/prod/*".into()] },
                Step::AddSite { name: "east".into(), listen: "h:2".into(), hosts: vec![] },
                Step::RemoveSite { name: "old".into() },
            ],
            "globex is not managed, so its grants stay"
        );
    }

    #[test]
    fn what_cannot_be_done_is_a_problem_and_nothing_is_planned_around_it() {
        let live = doc(&["acme"]);
        let cases: Vec<(EstateDoc, &str)> = vec![
            (EstateDoc { version: 2, ..doc(&["acme"]) }, "version 2"),
            (EstateDoc { services: vec![svc("globex/a/b/c", &["x"], &[])], ..doc(&["acme"]) }, "not in `tenants`"),
            (EstateDoc { services: vec![svc("not-a-service", &["x"], &[])], ..doc(&["acme"]) }, "not-a-service"),
            (EstateDoc { secrets: vec![SecretDoc { path: "acme/a/b/new".into(), readers: vec![] }], ..doc(&["acme"]) }, "store its value first"),
            (EstateDoc { sites: vec![SiteDoc { name: "x".into(), listen: "h:1".into(), hosts: vec![] }], ..doc(&["acme"]) }, "manage_sites is false"),
            (doc(&["tillit"]), "not a tenant name"),
        ];
        for (want, says) in cases {
            let p = plan(&live, &want, &[]);
            assert!(p.problems.iter().any(|m| m.contains(says)), "{says}: {p:?}");
        }
        let p = plan(&live, &doc(&["globex"]), &["acme".to_string()]);
        assert!(p.problems.iter().any(|m| m.contains("outside this admin's tenants")), "{p:?}");
        let p = plan(&live, &EstateDoc { manage_sites: true, ..doc(&["acme"]) }, &["acme".to_string()]);
        assert!(p.problems.iter().any(|m| m.contains("confined")), "{p:?}");
    }
}

//! Sites: leaf nats-servers in other datacenters and the agents that apply rotations there.
//!
//! A site is a record (name, where its server listens, the users its leafnode remotes log in
//! as). Its agents are identities of the TILLIT account signed by one *scoped* signing key whose
//! template confines each agent to its own durable consumer of `TILLIT_EVENTS` (named by the
//! agent's user name, `{{name()}}`), its own inbox and the service API. What each agent last
//! applied and acknowledged is kept per agent and summed up per site.

use super::*;

/// Tenant segment reserved for site agents' service ids (`tillit/sites/<site>/agent`).
pub use crate::names::AGENT_TENANT;
/// Meta record of the agents' scoped signing key.
const META_AGENT_ROLE: &str = "agent_role";
/// Most sites one estate registers.
pub const MAX_SITES: usize = 256;

/// A registered site.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteRecord {
    pub name: String,
    /// `host:port` its leaf server listens on for clients.
    pub listen: String,
    pub created_at: i64,
    pub created_by: String,
    /// Users its leafnode remotes log in as (SYS, TILLIT): revoked if the site is removed.
    pub leaf_users: Vec<String>,
    pub cert_serial: String,
    pub cert_expires_at: i64,
    /// Names on the server certificate (kept for re-issuing it).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Fingerprint of the CA that issued the server certificate in use (`None`: before this was
    /// recorded). An old CA is retired only once every site's certificate comes from the current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_ca: Option<String>,
    /// Version of the leafnode users' permissions its JWTs carry ([`LEAF_PERMS_VERSION`]); an
    /// older site is asked to re-issue its server's credentials.
    #[serde(default)]
    pub leaf_perms: u32,
}

/// The leafnode permissions' version: 2 confines a site to its own replies, consumers and
/// read-only account sync; 3 adds the read of the pre-signed OCSP answers (the agent's
/// responder); 4 adds the auth callout's requests (callout mode: the site's server asks tillit
/// at the hub about each connection to a tenant account).
pub const LEAF_PERMS_VERSION: u32 = 4;

/// The serial record of a site server's certificate.
pub fn site_serial(site: &SiteRecord) -> SerialRecord {
    SerialRecord {
        user_public_key: site.leaf_users.get(1).cloned().unwrap_or_default(),
        not_after: site.cert_expires_at,
        what: Some(format!("site:{}", site.name)),
        ..Default::default()
    }
}

/// The names a site server's certificate carries: the site name, loopback, the listen host, and
/// the extra names given at `site add`.
/// The names every site server's certificate carries besides the extra ones asked for.
pub fn derived_site_hosts(name: &str, listen: &str) -> Vec<String> {
    site_hosts(name, listen, &[])
}

fn site_hosts(name: &str, listen: &str, extra: &[String]) -> Vec<String> {
    let mut all = vec![name.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
    if let Some((h, _)) = listen.rsplit_once(':') {
        let h = h.trim_start_matches('[').trim_end_matches(']');
        if !h.is_empty() && h != "0.0.0.0" && h != "::" {
            all.push(h.to_string());
        }
    }
    for h in extra {
        if !all.contains(h) {
            all.push(h.clone());
        }
    }
    all
}

/// What one agent last did (`sites/agent/<user public key>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub site: String,
    pub user_public_key: String,
    pub consumer: String,
    /// Stream sequence of the last event applied and acknowledged.
    pub last_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_type: Option<String>,
    #[serde(default)]
    pub applied: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack_at: Option<i64>,
    #[serde(default)]
    pub failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<i64>,
}

/// The agents' scoped signing key (public part and template).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRole {
    pub key: String,
    pub permissions: UserPermissions,
}

impl AgentRole {
    pub fn scope(&self) -> jwt::ScopedSigningKey {
        jwt::ScopedSigningKey { kind: "user_scope".into(), key: self.key.clone(), role: "site-agent".into(), template: self.permissions.clone(), description: None }
    }
}

/// What an agent may do: read its own durable consumer (by the hub's JetStream domain, or
/// directly when it dials the hub), acknowledge its messages, call the service API, receive on
/// its own inbox. `{{name()}}` is the agent's consumer name, minted and validated by tillit.
pub fn agent_permissions() -> UserPermissions {
    let s = subjects::site_stream("{{tag(site)}}");
    let mut publish = vec![subjects::SVC_EXPORT.to_string()];
    for api in [format!("$JS.{}.API", subjects::HUB_DOMAIN), "$JS.API".to_string()] {
        publish.push(format!("{api}.CONSUMER.MSG.NEXT.{s}.{{{{name()}}}}"));
        publish.push(format!("{api}.CONSUMER.INFO.{s}.{{{{name()}}}}"));
    }
    publish.push(format!("$JS.ACK.{s}.{{{{name()}}}}.>"));
    // The pre-signed OCSP answers (public), read for the agent's responder.
    publish.push(subjects::ocsp_direct_get(&format!("$JS.{}.API", subjects::HUB_DOMAIN)));
    publish.push(subjects::ocsp_direct_get("$JS.API"));
    // The inbox sits below the site's root ({{tag(site)}} is the agent's `site:<name>` tag), the
    // only inboxes the site server's link to the hub may receive on.
    UserPermissions::new(publish, vec![format!("{}.{{{{subject()}}}}.>", subjects::site_inbox_root("{{tag(site)}}"))])
}


/// A site server's certificate and leafnode users' JWTs, freshly signed.
struct SiteCreds {
    cert_pem: String,
    serial: String,
    sys_user_jwt: String,
    tillit_user_jwt: String,
}

/// What `site add` (and a site's renewal) issues: the private keys stay at the site, which sent
/// public keys and a CSR.
#[derive(Debug, Clone)]
pub struct SiteIssue {
    pub site: SiteRecord,
    pub cert_pem: String,
    pub sys_user_jwt: String,
    pub tillit_user_jwt: String,
}

/// Where sites and agents' statuses live in [`Space::Sites`].
const SITE_PREFIX: &str = "site/";
pub(crate) const AGENT_PREFIX: &str = "agent/";
fn site_key(name: &str) -> String {
    format!("{SITE_PREFIX}{name}")
}
fn agent_key(user_public_key: &str) -> String {
    format!("{AGENT_PREFIX}{user_public_key}")
}

impl Estate {
    /// The agents' scoped key, if sites were ever added.
    pub fn agent_role(&self) -> Result<Option<AgentRole>> {
        Ok(get_json(self.store(), Space::Meta, META_AGENT_ROLE)?)
    }

    /// Create the agents' scoped key in TILLIT if missing (hold [`Self::account_lock`]); returns
    /// the TILLIT account and whether its JWT changed (the caller pushes it).
    pub fn ensure_agent_role_locked(&self) -> Result<(AccountRecord, bool)> {
        let (tillit, rev) = self.account_rev(TILLIT_ACCOUNT)?.ok_or_else(|| EstateError::NoSuchAccount(TILLIT_ACCOUNT.into()))?;
        if let Some((mut role, role_rev)) = crate::store::get_json_rev::<AgentRole>(self.store(), Space::Meta, META_AGENT_ROLE)? {
            if role.permissions == agent_permissions() {
                if tillit.carries_key(&role.key) {
                    return Ok((tillit, false));
                }
                // The replica that made the role stopped, or lost a race, before TILLIT's JWT
                // carried its key: sign TILLIT again.
                let tillit = self.resign_for_roles(TILLIT_ACCOUNT)?;
                return Ok((tillit, true));
            }
            // An estate from before the agents' inboxes moved below their site's root: the
            // template changes (nats-server reconnects the agents with it).
            role.permissions = agent_permissions();
            return self.store_agent_role((tillit, rev), &role, role_rev.map(crate::store::Expect::Revision), Batch::new());
        }
        let key = KeyPair::new_account();
        let role = AgentRole { key: key.public_key(), permissions: agent_permissions() };
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::Keys, &keys_scoped(&role.key), seed_of(&key, "agent scoped key")?.expose().as_bytes())?;
        self.store_agent_role((tillit, rev), &role, Some(crate::store::Expect::Absent), b)
    }

    /// Store the agents' role (with `b`; as `expect` says it is), then TILLIT (read at `rev`)
    /// re-signed with it; returns TILLIT.
    fn store_agent_role(&self, (tillit, rev): (AccountRecord, Option<u64>), role: &AgentRole, expect: Option<crate::store::Expect>, mut b: Batch) -> Result<(AccountRecord, bool)> {
        b.put_json_expect(Space::Meta, META_AGENT_ROLE, role, expect)?;
        self.store().apply(b)?;
        let tillit = self.resign_account(tillit)?;
        let mut b = Batch::new();
        b.put_json_at(Space::Accounts, &tillit.name, &tillit, rev)?;
        self.store().commit(b)?;
        Ok((tillit, true))
    }

    /// A site by name.
    pub fn site(&self, name: &str) -> Result<Option<SiteRecord>> {
        Ok(get_json(self.store(), Space::Sites, &site_key(name))?)
    }

    /// Every site.
    pub fn sites(&self) -> Result<Vec<SiteRecord>> {
        self.scan_json(Space::Sites, SITE_PREFIX)
    }

    /// The status of every agent whose identity is live (not revoked, not expired): the agents
    /// a site's progress and a CA rollout wait for.
    pub fn agent_statuses(&self) -> Result<Vec<AgentStatus>> {
        let now = self.clock.now_unix();
        let mut out = Vec::new();
        for st in self.scan_json::<AgentStatus>(Space::Sites, AGENT_PREFIX)? {
            if self.agent_live(&st, now)? {
                out.push(st);
            }
        }
        Ok(out)
    }

    /// Whether the agent of `st` is live at `now`: its identity not revoked, not expired.
    pub fn agent_live(&self, st: &AgentStatus, now: i64) -> Result<bool> {
        Ok(self.identity(&st.user_public_key)?.is_some_and(|i| i.state == IdentityState::Active && i.expires_at > now))
    }

    /// Every agent status on record, live or not.
    pub fn all_agent_statuses(&self) -> Result<Vec<AgentStatus>> {
        self.scan_json(Space::Sites, AGENT_PREFIX)
    }

    /// One agent's status.
    pub fn agent_status(&self, user_public_key: &str) -> Result<Option<AgentStatus>> {
        Ok(get_json(self.store(), Space::Sites, &agent_key(user_public_key))?)
    }

    /// Store an agent's status (not fsynced: it is re-derived from the next ack).
    pub fn put_agent_status(&self, st: &AgentStatus) -> Result<()> {
        let mut b = Batch::new();
        b.put_json(Space::Sites, agent_key(&st.user_public_key), st)?;
        self.store().apply(b)?;
        Ok(())
    }

    /// Register site `name`: its record, the users its leafnode remotes log in as (public keys
    /// `sys_user`, `tillit_user`, made by the caller), and its server certificate for the
    /// caller's CSR (bound to `tillit_user`). Not stored: the caller commits the batch with its
    /// audit record.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_site(
        &self,
        name: &str,
        listen: &str,
        hosts: &[String],
        csr_key: &impl rcgen::PublicKeyData,
        sys_user: &str,
        tillit_user: &str,
        by: &str,
    ) -> Result<(SiteIssue, Batch)> {
        names::check_segment("site name", name)?;
        for u in [sys_user, tillit_user] {
            if KeyPair::from_public_key(u).map(|k| k.key_pair_type()).ok() != Some(nkeys::KeyPairType::User) {
                return Err(EstateError::Invalid(format!("{u:?} is not a user public key")));
            }
        }
        if self.site(name)?.is_some() {
            return Err(EstateError::Limit(format!("site {name} already exists; pick another name")));
        }
        if self.sites()?.len() >= MAX_SITES {
            return Err(EstateError::Limit(format!("this estate already has {MAX_SITES} sites")));
        }
        let now = self.clock.now_unix();
        let expires = now + self.config.server_cert_ttl.as_secs() as i64;
        let all_hosts = site_hosts(name, listen, hosts);
        let issue = self.site_credentials(name, sys_user, tillit_user, &all_hosts, csr_key, now, expires)?;
        let SiteCreds { cert_pem, serial, sys_user_jwt: sys_jwt, tillit_user_jwt: tillit_jwt } = issue;
        let site = SiteRecord {
            name: name.to_string(),
            listen: listen.to_string(),
            created_at: now,
            created_by: by.to_string(),
            leaf_users: vec![sys_user.to_string(), tillit_user.to_string()],
            cert_serial: serial,
            cert_expires_at: expires,
            hosts: all_hosts,
            cert_ca: Some(self.ca_fingerprint()),
            leaf_perms: LEAF_PERMS_VERSION,
        };
        let mut b = Batch::new();
        b.put_json(Space::Sites, site_key(name), &site)?;
        b.put_json(Space::Serials, &site.cert_serial, &site_serial(&site))?;
        Ok((SiteIssue { site, cert_pem, sys_user_jwt: sys_jwt, tillit_user_jwt: tillit_jwt }, b))
    }

    /// A site server's certificate (for `csr_key`, from the current CA) and its two leafnode
    /// users' JWTs, valid until `expires`.
    #[allow(clippy::too_many_arguments)]
    fn site_credentials(
        &self,
        name: &str,
        sys_user: &str,
        tillit_user: &str,
        hosts: &[String],
        csr_key: &impl rcgen::PublicKeyData,
        now: i64,
        expires: i64,
    ) -> Result<SiteCreds> {
        let sys = self.account(SYS_ACCOUNT)?;
        let tillit = self.account(TILLIT_ACCOUNT)?;
        let sys_user_jwt = self.sign_user(&sys, sys_user, &format!("site {name} leafnode (SYS)"), site_sys_permissions(name), expires)?;
        let tillit_user_jwt =
            self.sign_user(&tillit, tillit_user, &format!("site {name} leafnode (TILLIT)"), site_tillit_permissions(name), expires)?;
        let spiffe = names::spiffe_id(self.trust_domain(), &["tillit", "site", name]);
        let (cert_pem, serial) = self.ca().issue_server_for(csr_key, &format!("tillit site {name}"), hosts, Some(&spiffe), now, expires)?;
        Ok(SiteCreds { cert_pem, serial, sys_user_jwt, tillit_user_jwt })
    }

    /// The server certificate (from the current CA, for the names on record, bound to `csr_key`
    /// made at the site) and the leafnode users' JWTs of site `name` again, for a full server
    /// lifetime; with the batch of its updated record.
    pub fn reissue_site(&self, name: &str, csr_key: &impl rcgen::PublicKeyData) -> Result<(SiteIssue, Batch)> {
        let mut site = self.site(name)?.ok_or_else(|| EstateError::Limit(format!("no site {name}")))?;
        let [sys_user, tillit_user] = site.leaf_users.as_slice() else {
            return Err(EstateError::Key(format!("site {name}"), "its record does not name two leafnode users".into()));
        };
        let now = self.clock.now_unix();
        let expires = now + self.config.server_cert_ttl.as_secs() as i64;
        if site.hosts.is_empty() {
            site.hosts = site_hosts(name, &site.listen, &[]);
        }
        let issue = self.site_credentials(name, sys_user, tillit_user, &site.hosts, csr_key, now, expires)?;
        let SiteCreds { cert_pem, serial, sys_user_jwt: sys_jwt, tillit_user_jwt: tillit_jwt } = issue;
        let mut b = Batch::new();
        // The certificate it replaces (and its key, made at the site) is revoked.
        if let Some(mut old) = get_json::<SerialRecord>(self.store(), Space::Serials, &site.cert_serial)? {
            old.revoked_at = Some(now);
            b.put_json(Space::Serials, &site.cert_serial, &old)?;
        }
        site.cert_serial = serial;
        site.cert_expires_at = expires;
        site.cert_ca = Some(self.ca_fingerprint());
        site.leaf_perms = LEAF_PERMS_VERSION;
        b.put_json(Space::Serials, &site.cert_serial, &site_serial(&site))?;
        b.put_json(Space::Sites, site_key(name), &site)?;
        Ok((SiteIssue { site, cert_pem, sys_user_jwt: sys_jwt, tillit_user_jwt: tillit_jwt }, b))
    }

    /// Sign an agent's user JWT (by the agents' scoped key; its name is its consumer, its tag
    /// its site) and its client certificate for `public_key`.
    pub fn issue_agent(&self, site: &str, user_public_key: &str, public_key: &impl rcgen::PublicKeyData) -> Result<ServiceIssue> {
        let role = self.agent_role()?.ok_or_else(|| EstateError::Key("agent role".into(), "no site was added yet".into()))?;
        let tillit = self.account(TILLIT_ACCOUNT)?;
        let now = self.clock.now_unix();
        let expires_at = now + self.config.service_ttl.as_secs() as i64;
        let key = self.key(&keys_scoped(&role.key))?;
        let consumer = subjects::agent_consumer(site, user_public_key);
        let jwt = self.sign_user_with(&key, &tillit, user_public_key, &consumer, UserPermissions::default(), expires_at, vec![format!("site:{site}")])?;
        let spiffe = names::spiffe_id(self.trust_domain(), &["tillit", "site", site, "agent"]);
        let (cert_pem, serial) = self.ca().issue_client(public_key, &spiffe, &consumer, now, expires_at)?;
        Ok(ServiceIssue { user_jwt: jwt, cert_pem, serial, issued_at: now, expires_at, role_key: None })
    }
}

/// What a site's SYS leafnode user may carry (a leafnode user's *publish* permission is what
/// the site may send into the hub, its *subscribe* permission what the hub forwards to it):
/// account JWT sync and nothing else. The site's resolver may ask for account JWTs (lookups and
/// packs) and receive the replies on its own server's inbox only, and it receives the claims
/// updates the control plane pushes. It can never push a claims update into the hub (a stale
/// account JWT would undo revocations), never answer the hub's own lookups or packs (it does not
/// receive them), never read other servers' replies, and never publish server events.
pub fn site_sys_permissions(site: &str) -> UserPermissions {
    UserPermissions::new(
        vec![subjects::SYS_ACCOUNT_LOOKUP.into(), subjects::SYS_CLAIMS_PACK.into()],
        vec![
            subjects::SYS_CLAIMS_UPDATE.into(),
            subjects::SYS_ACCOUNT_CLAIMS_UPDATE.into(),
            subjects::SYS_ACCOUNT_CLAIMS_UPDATE_OLD.into(),
            format!("$SYS._INBOX.{}.*", subjects::server_name_hash(&subjects::site_server_name(site))),
        ],
    )
}

/// What a site's TILLIT leafnode user may carry: requests to the control plane (enrollment,
/// the service API, in callout mode the authorization requests of its server, which tillit
/// answers only for a certificate and an nkey of one live identity) and agents' reads of their
/// consumers towards the hub; back, only replies to
/// its own agents' inboxes and to its own service imports (`_R_.`). A site server can never
/// answer the control plane's subjects, read another identity's inbox (an operator's join
/// tokens), or read the stream's admin API.
pub fn site_tillit_permissions(site: &str) -> UserPermissions {
    let s = subjects::site_stream(site);
    let hub = subjects::HUB_DOMAIN;
    UserPermissions::new(
        vec![
            crate::proto::Enroll::SUBJECT.into(),
            subjects::SVC_EXPORT.into(),
            subjects::CALLOUT_EXPORT.into(),
            format!("$JS.{hub}.API.CONSUMER.MSG.NEXT.{s}.*"),
            format!("$JS.{hub}.API.CONSUMER.INFO.{s}.*"),
            format!("$JS.ACK.{s}.>"),
            subjects::ocsp_direct_get(&format!("$JS.{hub}.API")),
        ],
        vec![format!("{}.>", subjects::site_inbox_root(site)), "_R_.>".into()],
    )
}

// === batches the handlers record ===

impl Estate {
    /// Removing site `site`: its agents revoked (`agents`, as of now), their statuses and the
    /// site record gone, the TILLIT and SYS accounts as re-signed with the revocations
    /// (`tillit`, `sys`), and its server's certificate revoked.
    pub fn site_removal_batch(&self, site: &SiteRecord, agents: &[IdentityRecord], tillit: &AccountRecord, sys: &AccountRecord, now: i64) -> Result<Batch> {
        let mut b = Batch::new();
        for a in agents {
            let mut r = a.clone();
            r.state = IdentityState::Revoked;
            r.revoked_at = Some(now);
            r.revoke_reason = Some(format!("site {} removed", site.name));
            super::identities::put_identity(&mut b, &r)?;
        }
        for st in self.all_agent_statuses()?.iter().filter(|s| s.site == site.name) {
            b.delete(Space::Sites, agent_key(&st.user_public_key));
        }
        b.put_json(Space::Accounts, &tillit.name, tillit)?;
        b.put_json(Space::Accounts, &sys.name, sys)?;
        b.delete(Space::Sites, site_key(&site.name));
        let mut serial = site_serial(site);
        serial.revoked_at = Some(now);
        b.put_json(Space::Serials, &site.cert_serial, &serial)?;
        Ok(b)
    }

    /// A new agent's status record (written with its enrollment).
    pub(crate) fn put_new_agent_status(&self, b: &mut Batch, st: &AgentStatus) -> Result<()> {
        b.put_json(Space::Sites, agent_key(&st.user_public_key), st)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_confined_to_their_own_consumer() {
        let p = agent_permissions();
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("$JS.hub.API.CONSUMER.MSG.NEXT.TILLIT_SITE_{{tag(site)}}.{{name()}}"), "{text}");
        assert!(!text.contains("CONSUMER.CREATE"), "agents never create consumers");
        assert!(!text.contains("STREAM."), "agents never touch the stream API");
        assert!(!text.contains("tillit.v1.admin"));
        assert!(text.contains("_INBOX.site-{{tag(site)}}.{{subject()}}.>"), "{text}");
    }

    #[test]
    fn site_servers_are_confined() {
        let sys = serde_json::to_string(&site_sys_permissions("east")).unwrap();
        for never in ["$SYS.SERVER", "$SYS.ACCOUNT.>", "_INBOX.>"] {
            assert!(!sys.contains(never), "{never} in {sys}");
        }
        let p = site_sys_permissions("east");
        assert!(p.publish.allow.iter().all(|s| !s.contains("UPDATE")), "{sys}");
        assert!(p.subscribe.allow.iter().all(|s| !s.contains("LOOKUP") && !s.contains("PACK")), "{sys}");
        // The inbox nats-server's resolver uses on a server named tillit-site-east.
        assert!(p.subscribe.allow.iter().any(|s| s.starts_with("$SYS._INBOX.") && s.ends_with(".*") && s.len() == "$SYS._INBOX.".len() + 10));
        let t = site_tillit_permissions("east");
        assert_eq!(t.subscribe.allow, vec!["_INBOX.site-east.>".to_string(), "_R_.>".to_string()]);
        // Only its own site's stream: another site's consumers cannot be pulled or inspected.
        // (and the public pre-signed OCSP answers, read-only).
        let ocsp = crate::subjects::ocsp_direct_get("$JS.hub.API");
        assert!(t.publish.allow.iter().filter(|s| s.starts_with("$JS.") && **s != ocsp).all(|s| s.contains(".TILLIT_SITE_east.")), "{:?}", t.publish.allow);
        assert!(t.publish.allow.contains(&ocsp));
        assert_ne!(site_sys_permissions("west").subscribe.allow, p.subscribe.allow);
    }
}

//! Identities: identity and serial records, issuing and renewing admins, services' user JWTs
//! and certificates, the control plane's own credentials, the hub's server certificate, and
//! what OCSP and the CRL say of a serial.

use super::*;
use crate::names::ServiceId;

/// Lifecycle state of an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityState {
    Active,
    Revoked,
}

/// An identity record (`identities/<user public key>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub id: String,
    pub kind: IdentityKind,
    pub name: String,
    pub account: String,
    pub user_public_key: String,
    pub cert_serial: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub state: IdentityState,
    /// For services: `tenant/project/env/service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::names::ServiceId>,
    /// The identity's public xkey (curve25519), for sealed deliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// Why it was revoked (`tillit revoke --reason`; the CRL's reason code is derived from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_reason: Option<String>,
    /// For site agents: their site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// For admins: the role (absent on admins from before roles: they are owners) and the
    /// tenants it is confined to (empty: the whole estate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_role: Option<crate::proto::AdminRole>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_tenants: Vec<String>,
    /// For services: the scoped key that signed the current user JWT (a permission change
    /// retires the old key early once every instance moved off it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_key: Option<String>,
    /// The scoped key of the JWT before that one: a renewal whose reply was lost leaves the
    /// instance holding it, so it stays usable until the next renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_role_key: Option<String>,
    /// The certificates issued to this identity before `cert_serial` that had not expired at its
    /// last renewal: (serial, notAfter). A revocation re-publishes their OCSP answers from this
    /// list instead of reading every serial of the estate (at 100,000 services, each revocation
    /// read 200,000 serial records). `None` in a record from before the list was kept; an
    /// entry [`UNLISTED_SERIALS`] stands for certificates issued before it, unlisted, that expire
    /// no later than its notAfter ([`IdentityRecord::renewed_from`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier_serials: Option<Vec<(String, i64)>>,
}

/// In [`IdentityRecord::earlier_serials`]: certificates issued before the list was kept.
pub const UNLISTED_SERIALS: &str = "*";

impl IdentityRecord {
    /// The certificates a revocation of this identity must reach, at `now`: `None` when some
    /// of them are not listed (a record from before the list, or one renewed from such a record
    /// while its older certificates may still be valid), and they must be found among all serials.
    pub fn serials_to_revoke(&self, now: i64) -> Option<Vec<String>> {
        let earlier = self.earlier_serials.as_ref()?;
        if earlier.iter().any(|(s, not_after)| s == UNLISTED_SERIALS && *not_after > now) {
            return None;
        }
        let current = Some(&self.cert_serial).filter(|s| !s.is_empty());
        Some(current.into_iter().chain(earlier.iter().map(|(s, _)| s).filter(|s| *s != UNLISTED_SERIALS)).cloned().collect())
    }

    /// Before a renewal replaces the certificate: list the one it replaces with those still
    /// valid at `now`. From a record without a list, the certificates before the current one
    /// are unknown, but none outlives it: they are kept as one [`UNLISTED_SERIALS`] entry.
    pub fn renewed_from(&mut self, now: i64) {
        let mut earlier = match self.earlier_serials.take() {
            Some(list) => list,
            None => vec![(UNLISTED_SERIALS.to_string(), self.expires_at)],
        };
        if !self.cert_serial.is_empty() {
            earlier.push((self.cert_serial.clone(), self.expires_at));
        }
        earlier.retain(|(_, not_after)| *not_after > now);
        self.earlier_serials = Some(earlier);
    }

    /// What the call policy needs of it ([`crate::policy::check_caller`]).
    pub fn facts(&self) -> crate::policy::CallerFacts {
        crate::policy::CallerFacts { kind: self.kind, revoked: self.state == IdentityState::Revoked, expires_at: self.expires_at }
    }

    /// An active admin identity's record (in TILLIT).
    pub fn admin(id: &str, name: &str, user_public_key: &str, cert_serial: &str, issued_at: i64, expires_at: i64) -> Self {
        IdentityRecord {
            id: id.to_string(),
            kind: IdentityKind::Admin,
            name: name.to_string(),
            account: TILLIT_ACCOUNT.into(),
            user_public_key: user_public_key.to_string(),
            cert_serial: cert_serial.to_string(),
            issued_at,
            expires_at,
            state: IdentityState::Active,
            service: None,
            xkey: None,
            revoked_at: None,
            revoke_reason: None,
            site: None,
            role_key: None,
            prev_role_key: None,
            admin_role: Some(crate::proto::AdminRole::Owner),
            admin_tenants: vec![],
            earlier_serials: Some(vec![]),
        }
    }

    /// An admin identity's powers (an admin from before roles is an owner).
    pub fn access(&self) -> crate::policy::roles::Access {
        crate::policy::roles::Access {
            role: self.admin_role.unwrap_or(crate::proto::AdminRole::Owner),
            tenants: self.admin_tenants.clone(),
        }
    }
}

/// Credentials minted in memory for a party of the control plane itself (never written to disk).
#[derive(Debug)]
pub struct EphemeralCreds {
    pub user_jwt: String,
    pub user_seed: SecretString,
    pub cert_pem: String,
    pub key_pem: SecretString,
    pub expires_at: i64,
}

/// An issued certificate (`serials/<hex>`), for OCSP and the CRL. Every certificate tillit
/// issues has one (identities, join tokens' bootstrap certificates, the control plane's own,
/// site and hub servers'); OCSP answers `unknown` for any other serial, which nats-server
/// refuses.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SerialRecord {
    pub user_public_key: String,
    pub not_after: i64,
    /// Revoked on its own (a removed site's server, a replaced server certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// A join token's bootstrap certificate: revoked once the token is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// What it is for, when not an identity's: `bootstrap`, `control-plane`, `site:<name>`, `hub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
}

impl SerialRecord {
    /// A server's certificate (the hub's, a site's), not a client's.
    pub fn is_server(&self) -> bool {
        self.what.as_deref().is_some_and(|w| w == "hub" || w.starts_with("site:"))
    }

    /// The record of an identity's certificate.
    pub fn of_identity(user_public_key: &str, not_after: i64) -> Self {
        SerialRecord { user_public_key: user_public_key.into(), not_after, ..Default::default() }
    }
}

/// What an admin identity may do on NATS: call the admin and service APIs and micro discovery,
/// receive on its own inbox, watch events.
fn admin_permissions(inbox: &str) -> UserPermissions {
    UserPermissions::new(
        subjects::ADMIN_PUBLISH.iter().map(|s| s.to_string()).collect(),
        vec![format!("{inbox}.>"), subjects::EVENTS_ALL.to_string()],
    )
}

/// What enrollment or renewal issues to a service.
#[derive(Debug, Clone)]
pub struct ServiceIssue {
    pub user_jwt: String,
    pub cert_pem: String,
    pub serial: String,
    pub issued_at: i64,
    pub expires_at: i64,
    /// The role key that signed `user_jwt` (JWT mode); `None` when the account's own signing
    /// key did (callout mode, or not a service).
    pub role_key: Option<String>,
}

impl Estate {
    /// Issue an admin identity (user in TILLIT + client certificate), record it, and return the
    /// files of its identity dir. Keys are generated here: `init` runs on the admin's machine.
    pub fn issue_admin(&self, name: &str) -> Result<IdentityFiles> {
        names::check_segment("admin name", name)?;
        let now = self.clock.now_unix();
        let expires = now + self.config.admin_ttl.as_secs() as i64;
        let account = self.account(TILLIT_ACCOUNT)?;
        let user = KeyPair::new_user();
        let inbox = crate::subjects::inbox_prefix(&user.public_key());
        let perms = admin_permissions(&inbox);
        let spiffe = names::spiffe_id(self.trust_domain(), &["tillit", "admin", name]);
        let jwt = self.sign_user(&account, &user.public_key(), &format!("admin {name}"), perms, expires)?;
        let cert = self.ca().issue_client_with_new_key(&spiffe, &format!("admin {name}"), now, expires)?;
        let rec = IdentityRecord::admin(&spiffe, name, &user.public_key(), &cert.serial, now, expires);
        let mut b = Batch::new();
        put_identity(&mut b, &rec)?;
        b.put_json(Space::Serials, &rec.cert_serial, &SerialRecord::of_identity(&rec.user_public_key, expires))?;
        self.store().commit(b)?;
        let reply = self.issued_reply(&rec, &account, jwt, cert.cert_pem);
        let renew = crate::policy::renew::renew_at(now, expires, crate::policy::renew::random_jitter());
        let info = reply.identity_info(reply.nats_urls.clone(), None, renew);
        Ok(IdentityFiles {
            info,
            user_jwt: reply.user_jwt,
            user_seed: seed_of(&user, "admin user")?,
            cert_pem: reply.cert_pem,
            key_pem: cert.key_pem,
            ca_pem: reply.ca_pem,
            trust_jwks: Some(reply.trust_jwks),
            xkey_seed: None,
        })
    }

    /// Renew an admin identity: a new JWT for the same nkey and a certificate for `public_key`.
    pub fn reissue_admin(&self, rec: &IdentityRecord, public_key: &impl rcgen::PublicKeyData) -> Result<ServiceIssue> {
        let now = self.clock.now_unix();
        let expires_at = now + self.config.admin_ttl.as_secs() as i64;
        let account = self.account(TILLIT_ACCOUNT)?;
        let perms = admin_permissions(&crate::subjects::inbox_prefix(&rec.user_public_key));
        let user_jwt = self.sign_user(&account, &rec.user_public_key, &format!("admin {}", rec.name), perms, expires_at)?;
        let (cert_pem, serial) = self.ca().issue_client(public_key, &rec.id, &format!("admin {}", rec.name), now, expires_at)?;
        Ok(ServiceIssue { user_jwt, cert_pem, serial, issued_at: now, expires_at, role_key: None })
    }

    /// Credentials for the control plane's own connections, minted in memory: a user of `account`
    /// (TILLIT for the API, SYS for account pushes and server events) and a client certificate.
    pub fn control_plane_creds(&self, account_name: &str, permissions: UserPermissions) -> Result<(EphemeralCreds, String)> {
        let now = self.clock.now_unix();
        let expires = now + self.config.control_plane_ttl.as_secs() as i64;
        let account = self.account(account_name)?;
        let user = KeyPair::new_user();
        let name = format!("tillit control plane ({account_name})");
        let jwt = self.sign_user(&account, &user.public_key(), &name, permissions, expires)?;
        let spiffe = names::spiffe_id(self.trust_domain(), &["tillit", "control-plane", &account_name.to_lowercase()]);
        let cert = self.ca().issue_client_with_new_key(&spiffe, &name, now, expires)?;
        let mut b = Batch::new();
        let rec = SerialRecord { user_public_key: user.public_key(), not_after: expires, what: Some("control-plane".into()), ..Default::default() };
        b.put_json(Space::Serials, &cert.serial, &rec)?;
        self.store().commit(b)?;
        Ok((
            EphemeralCreds {
                user_jwt: jwt,
                user_seed: seed_of(&user, "control plane user")?,
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
                expires_at: expires,
            },
            user.public_key(),
        ))
    }

    /// Credentials for a replica's connection to a JetStream store ([`crate::store::StoreAccess`]):
    /// a TILLIT user allowed the bucket and the journal, valid for `ttl`, and a certificate
    /// without an OCSP responder (the store must be reachable while no replica answers OCSP).
    /// With the batch that records its certificate's serial, for the caller to commit where
    /// the records live.
    pub fn store_access(&self, bucket: &str, ttl: std::time::Duration) -> Result<(crate::store::StoreAccess, Batch)> {
        self.tillit_access("tillit store access", "store", "store-access", ttl, |inbox| {
            crate::store::access_permissions(bucket, crate::subjects::JOURNAL, inbox)
        })
    }

    /// Credentials for `tillit responder` (an OCSP responder next to a hub nats-server): a
    /// TILLIT user that may only read the bucket of pre-signed answers, and a certificate
    /// without an OCSP responder of its own.
    pub fn responder_access(&self, ttl: std::time::Duration) -> Result<(crate::store::StoreAccess, Batch)> {
        self.tillit_access("tillit OCSP responder", "responder", "responder", ttl, |inbox| {
            UserPermissions::new(vec![crate::subjects::ocsp_direct_get("$JS.API")], vec![format!("{inbox}.>")])
        })
    }

    /// A TILLIT user with `perms(inbox)` and a certificate without revocation URLs, valid for
    /// `ttl`, with the batch recording the certificate's serial.
    fn tillit_access(
        &self,
        name: &str,
        spiffe_leaf: &str,
        what: &str,
        ttl: std::time::Duration,
        perms: impl FnOnce(&str) -> UserPermissions,
    ) -> Result<(crate::store::StoreAccess, Batch)> {
        let now = self.clock.now_unix();
        let expires = now + ttl.as_secs() as i64;
        let account = self.account(TILLIT_ACCOUNT)?;
        let user = KeyPair::new_user();
        let inbox = crate::subjects::inbox_prefix(&user.public_key());
        let jwt = self.sign_user(&account, &user.public_key(), name, perms(&inbox), expires)?;
        let spiffe = names::spiffe_id(self.trust_domain(), &["tillit", "control-plane", spiffe_leaf]);
        let cert = self.ca().issue_client_without_revocation_urls(&spiffe, name, now, expires)?;
        let mut b = Batch::new();
        let rec = SerialRecord { user_public_key: user.public_key(), not_after: expires, what: Some(what.into()), ..Default::default() };
        b.put_json(Space::Serials, &cert.serial, &rec)?;
        let access = crate::store::StoreAccess {
            user_jwt: jwt,
            user_seed: seed_of(&user, "store access user")?,
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            ca_pem: self.ca_bundle_pem(),
            expires_at: expires,
        };
        Ok((access, b))
    }

    /// Renew this data dir's store access once half its life is gone (every replica keeps its
    /// own file current); true if it was renewed.
    pub fn refresh_store_access(&self, ttl: std::time::Duration) -> Result<bool> {
        let crate::config::StoreBackend::JetStream { bucket, .. } = &self.config.store else { return Ok(false) };
        let now = self.clock.now_unix();
        let current = crate::store::StoreAccess::read(&self.dir, self.vault.master())?;
        if current.expires_at - now > ttl.as_secs() as i64 / 2 {
            return Ok(false);
        }
        let (access, serial) = self.store_access(bucket, ttl)?;
        self.store().commit(serial)?;
        access.write(&self.dir, self.vault.master())?;
        Ok(true)
    }

    /// Renew this data dir's OCSP responder access (`DATA/responder/access.json`) once half its
    /// life is gone or when it is missing; true if it was written.
    pub fn refresh_responder_access(&self, ttl: std::time::Duration) -> Result<bool> {
        let path = self.dir.responder_access();
        let now = self.clock.now_unix();
        if let Ok(current) = crate::store::StoreAccess::read_plain(&path) {
            if current.expires_at - now > ttl.as_secs() as i64 / 2 {
                return Ok(false);
            }
        }
        let (access, serial) = self.responder_access(ttl)?;
        self.store().commit(serial)?;
        access.write_plain(&path)?;
        Ok(true)
    }

    /// Issue one clustered hub node's certificate (`name`, the config's hosts).
    pub fn issue_node_cert(&self, name: &str) -> Result<x509::Issued> {
        let now = self.clock.now_unix();
        let expires = now + self.config.server_cert_ttl.as_secs() as i64;
        let issued = self.ca().issue_server(name, &self.config.server_cert_hosts(), now, expires)?;
        let mut b = Batch::new();
        b.put_json(Space::Serials, &issued.serial, &SerialRecord { not_after: expires, what: Some(format!("hub node {name}")), ..Default::default() })?;
        self.store().commit(b)?;
        Ok(issued)
    }

    /// Issue the hub nats-server's certificate.
    pub fn issue_server_cert(&self) -> Result<x509::Issued> {
        let now = self.clock.now_unix();
        let expires = now + self.config.server_cert_ttl.as_secs() as i64;
        let issued = self.ca().issue_server(&self.config.server_name, &self.config.server_cert_hosts(), now, expires)?;
        let mut b = Batch::new();
        b.put_json(Space::Serials, &issued.serial, &SerialRecord { not_after: expires, what: Some("hub".into()), ..Default::default() })?;
        self.store().commit(b)?;
        Ok(issued)
    }

    /// An identity record by user public key.
    pub fn identity(&self, user_public_key: &str) -> Result<Option<IdentityRecord>> {
        Ok(get_json(self.store(), Space::Identities, user_public_key)?)
    }

    /// What OCSP says of a serial (lower-case hex): unknown if tillit never recorded it;
    /// revoked if it was revoked on its own, if its join token was used, or if its identity is
    /// revoked; good otherwise.
    pub fn revocation_status(&self, serial: &str) -> Result<crate::ocsp::Status> {
        match get_json::<SerialRecord>(self.store(), Space::Serials, serial)? {
            Some(s) => self.serial_status(&s),
            None => Ok(crate::ocsp::Status::Unknown),
        }
    }

    /// [`Estate::revocation_status`] of a serial record already read.
    pub fn serial_status(&self, s: &SerialRecord) -> Result<crate::ocsp::Status> {
        Ok(self.serial_revoked(s)?.map(crate::ocsp::Status::Revoked).unwrap_or(crate::ocsp::Status::Good))
    }

    /// When the certificate of `s` was revoked, if it was.
    fn serial_revoked(&self, s: &SerialRecord) -> Result<Option<i64>> {
        if let Some(t) = s.revoked_at {
            return Ok(Some(t));
        }
        if let Some(id) = &s.token {
            return Ok(match self.token(id)? {
                Some(t) if t.state == TokenState::Used => Some(t.used_at.unwrap_or(0)),
                _ => None,
            });
        }
        Ok(match self.identity(&s.user_public_key)? {
            Some(i) if i.state == IdentityState::Revoked => Some(i.revoked_at.unwrap_or(0)),
            _ => None,
        })
    }

    /// Serials of unexpired certificates whose identities are revoked, with the revocation time
    /// and the CRL reason (derived from the recorded reason).
    pub fn revoked_serials(&self) -> Result<Vec<(String, i64, rcgen::RevocationReason)>> {
        let now = self.clock.now_unix();
        let mut out = Vec::new();
        let mut failed = None;
        // Streaming: what is held is the revoked serials, not every serial.
        self.store().visit_prefix(Space::Serials, "", &mut |serial, v| {
            let mut step = || -> Result<()> {
                let s: SerialRecord = serde_json::from_slice(v)
                    .map_err(|e| EstateError::Store(StoreError::Corrupt(format!("serials/{serial}"), e.to_string())))?;
                if s.not_after <= now {
                    return Ok(());
                }
                if let Some(at) = self.serial_revoked(&s)? {
                    let reason = if s.token.is_some() {
                        rcgen::RevocationReason::Superseded // a used join token's bootstrap certificate
                    } else if s.is_server() || s.revoked_at.is_some() {
                        rcgen::RevocationReason::CessationOfOperation // a removed site, a replaced server certificate
                    } else {
                        let why = self.identity(&s.user_public_key)?.and_then(|i| i.revoke_reason);
                        crate::policy::crl_reason(why.as_deref())
                    };
                    out.push((serial.to_string(), if at == 0 { now } else { at }, reason));
                }
                Ok(())
            };
            match step() {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Every identity record.
    pub fn identities(&self) -> Result<Vec<IdentityRecord>> {
        self.scan_json(Space::Identities, "")
    }

    /// Visit every identity record in key order until `f` says stop (false), without holding
    /// them all: what a pass over a large estate uses.
    pub fn visit_identities(&self, f: impl FnMut(IdentityRecord) -> bool) -> Result<()> {
        self.visit_json(Space::Identities, "", f)
    }

    /// How many identities are recorded.
    pub fn identity_count(&self) -> Result<usize> {
        Ok(self.store().count(Space::Identities)?)
    }

    /// Every identity of a service: from the index ([`Space::ServiceIdentities`]), or, in an
    /// estate whose index is not built yet ([`Estate::build_service_index`]), from all of them.
    pub fn identities_of(&self, sid: &ServiceId) -> Result<Vec<IdentityRecord>> {
        if self.meta_flag::<u32>(META_SERVICE_INDEX)?.is_none() {
            return Ok(self.identities()?.into_iter().filter(|i| i.service.as_ref() == Some(sid)).collect());
        }
        let mut out = vec![];
        for (key, _) in self.store().scan_prefix(Space::ServiceIdentities, &format!("{sid}/"))? {
            let user = key.rsplit('/').next().unwrap_or_default();
            if let Some(rec) = self.identity(user)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Every service that has an identity, each once ([`Self::services_page`], page by page; the
    /// caller-key sweep walks the pages itself).
    #[cfg(test)]
    fn services(&self) -> Result<Vec<ServiceId>> {
        let mut out: Vec<ServiceId> = vec![];
        loop {
            let page = self.services_page(out.last(), 1024)?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    /// Up to `limit` services that have an identity, each once, in the service index's order,
    /// after `after`: a caller walks the estate holding one page of names at a time (at 100,000
    /// services, the whole list was 12.6 MiB while a sweep ran). An estate from before the
    /// index gives every service in its first page and nothing after.
    pub fn services_page(&self, after: Option<&ServiceId>, limit: usize) -> Result<Vec<ServiceId>> {
        let mut out: Vec<ServiceId> = vec![];
        if self.meta_flag::<u32>(META_SERVICE_INDEX)?.is_none() {
            if after.is_some() {
                return Ok(out);
            }
            let mut all = std::collections::BTreeSet::new();
            self.visit_identities(|r| {
                if let Some(sid) = r.service {
                    all.insert(sid);
                }
                true
            })?;
            return Ok(all.into_iter().collect());
        }
        // Keys are `<tenant>/<project>/<env>/<service>/<user key>`; user keys are ASCII, so
        // `<service>/\x7f` sorts after every key of that service and before the next one's.
        let from = after.map(|sid| format!("{sid}/\u{7f}")).unwrap_or_default();
        let mut last = String::new();
        self.store().visit_after(Space::ServiceIdentities, "", &from, &mut |key, _| {
            if let Some((sid, _)) = key.rsplit_once('/') {
                if sid != last {
                    last = sid.to_string();
                    if let Ok(parsed) = ServiceId::parse(sid) {
                        out.push(parsed);
                    }
                }
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Index every service identity by its service (once per estate; estates made since the
    /// index exists have it from the start). Idempotent: a replica doing it again writes the
    /// same entries.
    pub fn build_service_index(&self) -> Result<usize> {
        if self.meta_flag::<u32>(META_SERVICE_INDEX)?.is_some() {
            return Ok(0);
        }
        let mut b = Batch::new();
        let mut n = 0;
        for rec in self.identities()? {
            if let Some(sid) = &rec.service {
                b.put(Space::ServiceIdentities, service_index_key(sid, &rec.user_public_key), b"1".to_vec());
                n += 1;
            }
        }
        b.put_json(Space::Meta, META_SERVICE_INDEX, &1u32)?;
        self.store().commit(b)?;
        Ok(n)
    }

    /// Index every identity in list order ([`Space::IdentityOrder`]) in an estate from before
    /// that index; the number indexed (0 when it was complete).
    pub fn build_identity_order(&self) -> Result<usize> {
        if self.meta_flag::<u32>(META_IDENTITY_ORDER)?.is_some() {
            return Ok(0);
        }
        let mut b = Batch::new();
        let mut n = 0;
        self.visit_identities(|rec| {
            b.put(Space::IdentityOrder, list_key(&rec), b"1".to_vec());
            n += 1;
            true
        })?;
        b.put_json(Space::Meta, META_IDENTITY_ORDER, &1u32)?;
        self.store().commit(b)?;
        Ok(n)
    }

    /// Visit the identities in list order after cursor key `after` (none: from the first),
    /// until `f` says stop; `Ok(false)` when the order index is not built yet (the caller
    /// reads them all instead).
    pub fn visit_identities_in_order(&self, after: Option<&str>, mut f: impl FnMut(IdentityRecord) -> bool) -> Result<bool> {
        if self.meta_flag::<u32>(META_IDENTITY_ORDER)?.is_none() {
            return Ok(false);
        }
        let mut failed = None;
        self.store().visit_after(Space::IdentityOrder, "", after.unwrap_or(""), &mut |key, _| {
            let user = key.rsplit(' ').next().unwrap_or_default();
            match self.identity(user) {
                Ok(Some(rec)) => f(rec),
                // An entry whose record is gone: nothing to show.
                Ok(None) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        failed.map_or(Ok(true), Err)
    }

    /// Sign a service's user JWT (by its role's scoped key, no permissions of its own) and its
    /// client certificate for `public_key`, both expiring together.
    pub fn issue_service(
        &self,
        acct: &AccountRecord,
        role: &RoleRecord,
        user_public_key: &str,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<ServiceIssue> {
        let now = self.clock.now_unix();
        let expires_at = now + self.config.service_ttl.as_secs() as i64;
        let sid = &role.service;
        let tags = vec![format!("project:{}", sid.project), format!("service:{}", sid.service)];
        // JWT mode: the role's scoped key signs, and its template is the permissions. Callout
        // mode: the account's own key signs a JWT that reaches only the control plane (the
        // callout answers each connection with the real permissions), so no key per service
        // has to sit in the account JWT, and the JWT still works if the estate goes back to
        // JWT mode (enough to renew onto the role key).
        let callout = self.auth_settings()?.is_some_and(|a| a.mode == super::callout::AuthMode::Callout);
        let (jwt, role_key) = if callout {
            let key = self.account_signing_key(acct)?;
            let reach = super::roles::control_plane_reach(sid, user_public_key);
            // Without `exp`: the certificate (checked at the TLS handshake and by the callout)
            // bounds the identity's life. nats-server 2.14 arms a timer for the expiry of the
            // JWT a client presents and, when the callout answers, arms a second one for the
            // answer's expiry without stopping the first, which keeps every closed connection
            // in memory until the first would have fired (~60 KB each, measured).
            (self.sign_user_with(&key, acct, user_public_key, &sid.service, reach, 0, tags)?, None)
        } else {
            let key = self.key(&keys_scoped(&role.key))?;
            (self.sign_user_with(&key, acct, user_public_key, &sid.service, UserPermissions::default(), expires_at, tags)?, Some(role.key.clone()))
        };
        let (cert_pem, serial) = self.ca().issue_client(public_key, &sid.spiffe_id(self.trust_domain()), &sid.service, now, expires_at)?;
        Ok(ServiceIssue { user_jwt: jwt, cert_pem, serial, issued_at: now, expires_at, role_key })
    }
}

// === batches the handlers record ===

impl Estate {
    /// What an identity is told it was issued: everything its identity dir holds but its keys.
    pub fn issued_reply(&self, rec: &IdentityRecord, acct: &AccountRecord, user_jwt: String, cert_pem: String) -> crate::proto::IssuedReply {
        crate::proto::IssuedReply {
            id: rec.id.clone(),
            kind: rec.kind,
            name: rec.name.clone(),
            service: rec.service.clone(),
            trust_domain: self.trust_domain().to_string(),
            account: acct.name.clone(),
            account_public_key: acct.public_key.clone(),
            user_public_key: rec.user_public_key.clone(),
            inbox_prefix: match &rec.site {
                Some(site) => crate::subjects::agent_inbox_prefix(site, &rec.user_public_key),
                None => crate::subjects::inbox_prefix(&rec.user_public_key),
            },
            user_jwt,
            cert_pem,
            ca_pem: self.ca_bundle_pem(),
            trust_jwks: self.trust_jwks(),
            nats_urls: self.config.urls(),
            ca_fingerprint: self.ca_fingerprint(),
            cert_serial: rec.cert_serial.clone(),
            issued_at_unix: rec.issued_at,
            expires_at_unix: rec.expires_at,
        }
    }

    /// An enrollment: the new identity, its certificate's serial, the token burned by it, and
    /// (for a site's agent) its status record. Durable together, with their audit record.
    pub fn enrollment_batch(&self, rec: &IdentityRecord, token: &TokenRecord, agent: Option<&crate::estate::sites::AgentStatus>) -> Result<Batch> {
        let mut b = Batch::new();
        put_identity(&mut b, rec)?;
        if let Some(st) = agent {
            self.put_new_agent_status(&mut b, st)?;
        }
        b.put_json(Space::Tokens, &token.id, &self.used_token(token, &rec.user_public_key))?;
        b.put_json(Space::Serials, &rec.cert_serial, &SerialRecord::of_identity(&rec.user_public_key, rec.expires_at))?;
        Ok(b)
    }

    /// A renewal (or any re-issue): the identity as it is now, and its new certificate's serial.
    pub fn reissue_batch(&self, rec: &IdentityRecord) -> Result<Batch> {
        let mut b = Batch::new();
        put_identity(&mut b, rec)?;
        b.put_json(Space::Serials, &rec.cert_serial, &SerialRecord::of_identity(&rec.user_public_key, rec.expires_at))?;
        Ok(b)
    }

    /// Revoking `targets` at `now`: the records as revoked, and `account` as re-signed with
    /// their revocations ([`Estate::preview_revocation`]). Returns the batch and the records.
    pub fn revocation_batch(&self, targets: &[IdentityRecord], account: &AccountRecord, now: i64, reason: Option<&str>) -> Result<(Batch, Vec<IdentityRecord>)> {
        let mut b = Batch::new();
        let mut revoked = Vec::with_capacity(targets.len());
        for t in targets {
            let mut r = t.clone();
            r.state = IdentityState::Revoked;
            r.revoked_at = Some(now);
            r.revoke_reason = reason.map(str::to_string);
            put_identity(&mut b, &r)?;
            revoked.push(r);
        }
        b.put_json(Space::Accounts, &account.name, account)?;
        Ok((b, revoked))
    }
}

/// The meta flag set once [`Space::ServiceIdentities`] holds every service identity.
pub(crate) const META_SERVICE_INDEX: &str = "service_index";

fn service_index_key(sid: &ServiceId, user_public_key: &str) -> String {
    format!("{sid}/{user_public_key}")
}

/// The meta flag set once [`Space::IdentityOrder`] holds every identity.
pub(crate) const META_IDENTITY_ORDER: &str = "identity_order_index";

/// Where an identity sorts in `tillit list` (its cursor key, [`Space::IdentityOrder`]): by
/// SPIFFE id, then user key (ids hold no space, which sorts below every character they do).
pub(crate) fn list_key(rec: &IdentityRecord) -> String {
    format!("{} {}", rec.id, rec.user_public_key)
}

/// Write an identity's record into `b`, with its index entries.
pub(crate) fn put_identity(b: &mut Batch, rec: &IdentityRecord) -> Result<()> {
    b.put_json(Space::Identities, &rec.user_public_key, rec)?;
    b.put(Space::IdentityOrder, list_key(rec), b"1".to_vec());
    if let Some(sid) = &rec.service {
        b.put(Space::ServiceIdentities, service_index_key(sid, &rec.user_public_key), b"1".to_vec());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::estate::tests::new_estate;

    /// A service's identities come from the index (with a name that prefixes another's kept
    /// apart), and an estate from before the index gets the same answers before and after it
    /// is built.
    #[test]
    fn a_services_identities_come_from_the_index_and_old_estates_are_indexed_once() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, store, _m) = new_estate(clock);
        let rec = |svc: &str| {
            let kp = nkeys::KeyPair::new_user();
            let mut r = IdentityRecord::admin("x", "x", &kp.public_key(), "", 0, 1_790_000_000);
            r.kind = IdentityKind::Service;
            r.service = Some(ServiceId::parse(svc).unwrap());
            r
        };
        let orders = [rec("acme/shop/prod/orders"), rec("acme/shop/prod/orders")];
        let others = [rec("acme/shop/prod/orders-2"), rec("acme/shop/dev/orders")];
        let mut b = Batch::new();
        for r in orders.iter().chain(&others) {
            put_identity(&mut b, r).unwrap();
        }
        store.commit(b).unwrap();
        let sid = ServiceId::parse("acme/shop/prod/orders").unwrap();
        let keys = |v: Vec<IdentityRecord>| v.into_iter().map(|r| r.user_public_key).collect::<std::collections::BTreeSet<_>>();
        let want: std::collections::BTreeSet<String> = orders.iter().map(|r| r.user_public_key.clone()).collect();
        assert_eq!(keys(e.identities_of(&sid).unwrap()), want);
        // Each once (sorted here: the index's order puts `orders-2/…` before `orders/…`).
        let names = |v: Vec<ServiceId>| {
            let mut n = v.into_iter().map(|s| s.to_string()).collect::<Vec<_>>();
            n.sort();
            n
        };
        let services = ["acme/shop/dev/orders", "acme/shop/prod/orders", "acme/shop/prod/orders-2"];
        assert_eq!(names(e.services().unwrap()), services, "each service once, from the index");
        // Page by page, each once whatever the page size (`orders` has two identities).
        for limit in [1, 2] {
            let (mut walked, mut after) = (vec![], None);
            loop {
                let page = e.services_page(after.as_ref(), limit).unwrap();
                assert!(page.len() <= limit);
                let Some(last) = page.last().cloned() else { break };
                walked.extend(page);
                after = Some(last);
            }
            assert_eq!(names(walked), services, "pages of {limit}");
        }
        // An estate from before the index: records without entries, no flag.
        let old = rec("acme/shop/prod/orders");
        let mut b = Batch::new();
        b.put_json(Space::Identities, &old.user_public_key, &old).unwrap();
        b.delete(Space::Meta, META_SERVICE_INDEX);
        store.commit(b).unwrap();
        let mut want = want;
        want.insert(old.user_public_key.clone());
        assert_eq!(keys(e.identities_of(&sid).unwrap()), want, "without the index, every identity is read");
        assert_eq!(names(e.services().unwrap()), services, "and the services from the identities");
        assert_eq!(e.build_service_index().unwrap(), 5, "every service identity indexed");
        assert_eq!(e.build_service_index().unwrap(), 0, "once");
        assert_eq!(keys(e.identities_of(&sid).unwrap()), want, "the index gives the same answer");
    }

    /// The list order index gives the identities in the order a full read sorts them (`orders`
    /// before `orders-2`, though `orders-2/` sorts first by service path), from any cursor; an
    /// estate from before the index lists from a full read until it is built, once.
    #[test]
    fn the_list_order_index_pages_as_a_full_read_sorts() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, store, _m) = new_estate(clock);
        let mut b = Batch::new();
        for svc in ["acme/shop/prod/orders-2", "acme/shop/prod/orders", "acme/shop/dev/orders", "acme/shop/prod/orders"] {
            let kp = nkeys::KeyPair::new_user();
            let mut r = IdentityRecord::admin("x", "x", &kp.public_key(), "", 0, 1_790_000_000);
            r.kind = IdentityKind::Service;
            let sid = ServiceId::parse(svc).unwrap();
            r.id = sid.spiffe_id(e.trust_domain());
            r.service = Some(sid);
            put_identity(&mut b, &r).unwrap();
        }
        store.commit(b).unwrap();
        let mut sorted: Vec<String> = e.identities().unwrap().iter().map(list_key).collect();
        sorted.sort();
        assert_eq!(sorted.len(), 4);
        let from = |after: Option<&str>| {
            let mut out = vec![];
            assert!(e.visit_identities_in_order(after, |r| { out.push(list_key(&r)); true }).unwrap(), "indexed");
            out
        };
        assert_eq!(from(None), sorted);
        assert!(sorted[1].contains("/orders ") && sorted[3].contains("/orders-2 "), "{sorted:?}");
        assert_eq!(from(Some(&sorted[1])), sorted[2..]);
        assert!(from(Some(&sorted[3])).is_empty());
        // An estate from before the index.
        let mut b = Batch::new();
        for k in &sorted {
            b.delete(Space::IdentityOrder, k.clone());
        }
        b.delete(Space::Meta, META_IDENTITY_ORDER);
        store.commit(b).unwrap();
        assert!(!e.visit_identities_in_order(None, |_| true).unwrap(), "not indexed: the caller reads them all");
        assert_eq!(e.build_identity_order().unwrap(), 4);
        assert_eq!(e.build_identity_order().unwrap(), 0, "once");
        assert_eq!(from(None), sorted);
    }

    /// Admins recorded before roles existed (no `admin_role`) are owners: estates upgrade in place.
    #[test]
    fn admins_from_before_roles_are_owners() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock);
        let files = e.issue_admin("admin").unwrap();
        let rec = e.identity(&files.info.user_public_key).unwrap().unwrap();
        assert_eq!(rec.access(), crate::policy::roles::Access::owner(), "the init admin is the first owner");
        let mut old = serde_json::to_value(&rec).unwrap();
        old.as_object_mut().unwrap().remove("admin_role");
        assert!(old.get("admin_tenants").is_none(), "an unconfined admin's record names no tenants");
        let old: IdentityRecord = serde_json::from_value(old).unwrap();
        assert_eq!(old.access(), crate::policy::roles::Access::owner());
        let mut auditor = rec.clone();
        auditor.admin_role = Some(crate::proto::AdminRole::Auditor);
        auditor.admin_tenants = vec!["acme".into()];
        let back: IdentityRecord = serde_json::from_str(&serde_json::to_string(&auditor).unwrap()).unwrap();
        assert_eq!(back.access(), crate::policy::roles::Access { role: crate::proto::AdminRole::Auditor, tenants: vec!["acme".into()] });
    }

    #[test]
    fn admin_identity_is_recorded_and_scoped() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock);
        let files = e.issue_admin("admin").unwrap();
        let rec = e.identity(&files.info.user_public_key).unwrap().unwrap();
        assert_eq!(rec.kind, IdentityKind::Admin);
        assert_eq!(rec.state, IdentityState::Active);
        let tillit = e.account(TILLIT_ACCOUNT).unwrap();
        let c: Claims<UserNats> = jwt::decode_from(&files.user_jwt, &[&tillit.signing_key]).unwrap();
        assert_eq!(c.nats.issuer_account.as_deref(), Some(tillit.public_key.as_str()));
        assert!(!c.nats.bearer_token);
        assert_eq!(c.exp, Some(1_780_000_000 + 30 * 86_400));
        assert!(c.nats.permissions.subscribe.allow.contains(&format!("{}.>", files.info.inbox_prefix)));
        assert!(!c.nats.permissions.subscribe.allow.iter().any(|s| s == ">" || s == "_INBOX.>"));
        assert_eq!(e.identity_count().unwrap(), 1);
        assert!(files.info.renew_at_unix > files.info.issued_at_unix && files.info.renew_at_unix < files.info.expires_at_unix);
    }

    /// A revocation reaches every certificate of an identity that may still be valid: the
    /// current one and those renewed away before their notAfter, from the record; a record
    /// from before the list says it cannot tell until its unlisted certificates have expired.
    #[test]
    fn a_record_lists_the_certificates_a_revocation_must_reach() {
        let mut r = IdentityRecord::admin("x", "x", "UKEY", "s1", 1_000, 2_000);
        assert_eq!(r.serials_to_revoke(1_000), Some(vec!["s1".to_string()]));
        let no_cert = IdentityRecord::admin("x", "x", "UKEY", "", 1_000, 2_000);
        assert_eq!(no_cert.serials_to_revoke(1_000), Some(vec![]), "an identity without a certificate names none");
        // Renewed at 1,500 (s1 valid until 2,000), then at 2,500 (s2 valid until 3,000; s1 gone).
        r.renewed_from(1_500);
        (r.cert_serial, r.expires_at) = ("s2".into(), 3_000);
        assert_eq!(r.serials_to_revoke(1_600), Some(vec!["s2".to_string(), "s1".into()]));
        r.renewed_from(2_500);
        (r.cert_serial, r.expires_at) = ("s3".into(), 4_000);
        assert_eq!(r.serials_to_revoke(2_600), Some(vec!["s3".to_string(), "s2".into()]));

        // A record from before the list.
        let mut old = IdentityRecord::admin("x", "x", "UKEY", "o1", 1_000, 2_000);
        old.earlier_serials = None;
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("earlier_serials"), "absent, as in records written before it");
        let mut old: IdentityRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(old.serials_to_revoke(1_000), None, "unknown: every serial must be read");
        // Renewed at 1,500: what came before o1 expires by 2,000, so until then it is unknown.
        old.renewed_from(1_500);
        (old.cert_serial, old.expires_at) = ("o2".into(), 3_000);
        assert_eq!(old.serials_to_revoke(1_999), None);
        assert_eq!(old.serials_to_revoke(2_000), Some(vec!["o2".to_string(), "o1".into()]), "listed from then on");
        // The next renewal drops the expired entries, the unlisted one among them.
        old.renewed_from(2_500);
        assert_eq!(old.earlier_serials, Some(vec![("o2".to_string(), 3_000)]));
    }

    /// Every certificate tillit issues is known to OCSP and the CRL; anything else is unknown.
    #[test]
    fn ocsp_knows_every_certificate_and_nothing_else() {
        use crate::ocsp::Status;
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock.clone());
        assert_eq!(e.revocation_status("00deadbeef").unwrap(), Status::Unknown);
        // A join token's bootstrap certificate: good until the token is used.
        let sid = crate::names::ServiceId::parse("acme/shop/prod/orders").unwrap();
        let (tokens, b) = e.create_tokens(&sid, 900, 1, "test", None).unwrap();
        e.store().commit(b).unwrap();
        let cert = tokens[0].cert_pem().unwrap();
        let serial = crate::issuer::x509::serial_hex(&cert).unwrap();
        assert_eq!(e.revocation_status(&serial).unwrap(), Status::Good);
        let mut t = e.token(&tokens[0].id).unwrap().unwrap();
        t.state = TokenState::Used;
        t.used_at = Some(1_780_000_100);
        let mut b = Batch::new();
        b.put_json(Space::Tokens, &t.id, &t).unwrap();
        e.store().commit(b).unwrap();
        assert_eq!(e.revocation_status(&serial).unwrap(), Status::Revoked(1_780_000_100));
        assert!(e.revoked_serials().unwrap().iter().any(|(s, ..)| *s == serial), "the CRL lists it");
        // The control plane's own and the hub's certificates are recorded as they are made.
        let (cp, _) = e.control_plane_creds(TILLIT_ACCOUNT, UserPermissions::default()).unwrap();
        assert_eq!(e.revocation_status(&crate::issuer::x509::serial_hex(&cp.cert_pem).unwrap()).unwrap(), Status::Good);
        let hub = e.issue_server_cert().unwrap();
        assert_eq!(e.revocation_status(&hub.serial).unwrap(), Status::Good);
    }
}

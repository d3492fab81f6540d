//! Service identities: roles (one scoped signing key per service), join tokens and their
//! bootstrap users, and what enrollment and renewal issue.

use super::*;
use crate::names::ServiceId;
use crate::token::{self, JoinToken};

/// Store key of the control plane's xkey seed.
pub const KEYS_XKEY: &str = "xkey/control-plane";

/// Metadata of one version of a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretVersion {
    pub version: u32,
    pub created_at: i64,
    pub created_by: String,
    pub bytes: usize,
}

/// A secret's metadata (`secrets/<path>`): never the value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretMeta {
    pub path: crate::secrets::SecretPath,
    pub readers: Vec<crate::secrets::Reader>,
    pub versions: Vec<SecretVersion>,
    pub created_at: i64,
    pub created_by: String,
}

impl SecretMeta {
    pub fn current(&self) -> u32 {
        self.versions.last().map(|v| v.version).unwrap_or(0)
    }
}

fn value_key(path: &crate::secrets::SecretPath, version: u32) -> String {
    format!("{path}#{version}")
}

/// Most tokens one `token create` may mint (a token is about 4 KiB; the reply must stay well
/// under nats-server's 1 MiB max_payload). The CLI asks in chunks for larger counts.
pub const MAX_TOKENS_PER_REQUEST: u32 = 200;
/// Longest a join token may live.
pub const MAX_TOKEN_TTL_SECS: i64 = 7 * 86_400;
/// Most services (scoped signing keys) per tenant-env account. A scoped key with tillit's default
/// template is about 380 bytes of the account JWT (`tillit bench account-size`), which
/// nats-server caps at 1 MiB; 2,000 services take ~765 KB and leave headroom for grants and
/// revocations. Larger tenants split across environments (accounts), e.g. `acme-prod-eu`, or move
/// to auth-callout mode (DESIGN.md §9), where permissions are not carried in the account JWT.
pub const MAX_SERVICES_PER_ACCOUNT: usize = 2_000;
/// The largest account JWT tillit pushes (nats-server refuses more than 1 MiB).
pub const MAX_ACCOUNT_JWT_BYTES: usize = 1_000_000;

/// Most live bootstrap revocations kept in the BOOTSTRAP account JWT (~75 bytes each; every
/// push re-sends the whole JWT, and nats-server re-checks the account's connections). Past it,
/// the oldest burned tokens' bootstrap users are left to expire with their tokens: the tokens
/// themselves are already refused, and those users may only request enrollment.
pub const MAX_BOOTSTRAP_REVOCATIONS: usize = 2_000;

// === roles ===

/// A service's role: its scoped signing key in the tenant account, and the permission template
/// users signed by that key get.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleRecord {
    pub account: String,
    pub service: ServiceId,
    /// Public key of the scoped signing key.
    pub key: String,
    pub permissions: UserPermissions,
    pub created_at: i64,
    pub updated_at: i64,
    /// Keys this role signed with before its last permission change, still in the account so
    /// their users stay connected until they move to the new key (or `retire_at` passes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<RetiringKey>,
}

/// A role's former scoped key after a permission change. During the grace period it keeps the
/// old template, so its users stay connected until they move to the new key; then its template
/// becomes the new permissions (its remaining users are reconnected by the server and get them);
/// it leaves the account once no JWT it signed can still be valid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetiringKey {
    pub key: String,
    pub permissions: UserPermissions,
    /// End of the grace period.
    pub retire_at: i64,
    /// When the last JWT it signed has expired.
    pub remove_at: i64,
}

impl RoleRecord {
    /// Entries of the account JWT for this role: the current key, then the retiring ones.
    pub fn scopes(&self) -> Vec<jwt::ScopedSigningKey> {
        let mut v = vec![self.scope()];
        for p in &self.previous {
            v.push(jwt::ScopedSigningKey {
                kind: "user_scope".into(),
                key: p.key.clone(),
                role: self.service.role(),
                template: p.permissions.clone(),
                description: None,
            });
        }
        v
    }

    pub fn store_key(sid: &ServiceId) -> String {
        format!("{}/{}", sid.account_name(), sid.role())
    }
    /// The scoped-key entry of the account JWT.
    pub fn scope(&self) -> jwt::ScopedSigningKey {
        jwt::ScopedSigningKey {
            kind: "user_scope".into(),
            key: self.key.clone(),
            role: self.service.role(),
            template: self.permissions.clone(),
            // The role names the service; a description would cost ~40 bytes per service of the
            // 1 MiB account JWT.
            description: None,
        }
    }
}

/// What a service may do before any grant: publish and subscribe its own namespace
/// `<project>.<service>.>`, receive on its own inbox and its notification subject, and call
/// the tillit service API.
pub fn default_permissions(sid: &ServiceId) -> UserPermissions {
    let ns = format!("{}.>", sid.subject_prefix());
    UserPermissions::new(
        vec![ns.clone(), subjects::SVC_EXPORT.into()],
        vec![
            ns,
            format!("{}.{{{{subject()}}}}.>", subjects::INBOX_ROOT),
            subjects::notify_subject(&sid.account_name(), &sid.project, &sid.service),
        ],
    )
}

/// The control plane's xkey as a JWK (OKP/X25519, `use: enc`), so admins can seal to it.
fn xkey_jwk(public: &str, issuer: &str) -> Option<serde_json::Value> {
    let raw = data_encoding::BASE32_NOPAD.decode(public.as_bytes()).ok()?;
    let key = raw.get(1..33)?;
    Some(serde_json::json!({
        "kty": "OKP",
        "crv": "X25519",
        "x": data_encoding::BASE64URL_NOPAD.encode(key),
        "kid": public,
        "use": "enc",
        "iss": issuer,
        "tillit_xkey": public,
    }))
}

// === tokens ===

/// State of a join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Unused,
    Used,
}

/// A join token as the control plane keeps it: never the secret, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub identity: ServiceId,
    pub expires_at: i64,
    pub bootstrap_user: String,
    pub created_at: i64,
    pub created_by: String,
    pub state: TokenState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<i64>,
}

/// What enrollment or renewal issues to a service.
#[derive(Debug, Clone)]
pub struct ServiceIssue {
    pub user_jwt: String,
    pub cert_pem: String,
    pub serial: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl Estate {
    /// Every role of an account.
    pub fn roles_of(&self, account: &str) -> Result<Vec<RoleRecord>> {
        self.scan_json(Space::Roles, &format!("{account}/"))
    }

    /// A service's role, if it has one.
    pub fn role(&self, sid: &ServiceId) -> Result<Option<RoleRecord>> {
        Ok(get_json(self.store(), Space::Roles, &RoleRecord::store_key(sid))?)
    }

    /// The tenant account and role of `sid`, creating either if missing. Returns whether the
    /// account JWT changed (the caller pushes it while still holding [`Self::account_lock`]).
    pub fn ensure_role_locked(&self, sid: &ServiceId) -> Result<(AccountRecord, RoleRecord, bool)> {
        let (acct, created) = self.ensure_tenant_account_locked(&sid.tenant, &sid.env)?;
        if let Some(role) = self.role(sid)? {
            return Ok((acct, role, created));
        }
        if self.roles_of(&acct.name)?.len() >= MAX_SERVICES_PER_ACCOUNT {
            return Err(EstateError::Limit(format!(
                "account {} already has {MAX_SERVICES_PER_ACCOUNT} services, the most one account JWT can carry; \
                 put further services in another environment (account), e.g. {}-2",
                acct.name, sid.env
            )));
        }
        let now = self.clock.now_unix();
        let key = KeyPair::new_account();
        let role = RoleRecord {
            account: acct.name.clone(),
            service: sid.clone(),
            key: key.public_key(),
            permissions: default_permissions(sid),
            created_at: now,
            updated_at: now,
            previous: vec![],
        };
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::Keys, &keys_scoped(&role.key), seed_of(&key, "scoped key")?.expose().as_bytes())?;
        b.put_json(Space::Roles, RoleRecord::store_key(sid), &role)?;
        // The account JWT is rendered from the role records, so store the role first.
        self.store().apply(b)?;
        let acct = self.resign_account(acct)?;
        let mut b = Batch::new();
        b.put_json(Space::Accounts, &acct.name, &acct)?;
        self.store().commit(b)?;
        Ok((acct, role, true))
    }

    /// `role` with `permissions` under a *new* scoped key; the current key joins `previous`
    /// until `retire_at` (adding a key to an account closes no connection, changing or removing
    /// one closes its users'). Returns the new role and the batch holding the new key's seed.
    pub fn rekey_role(&self, role: &RoleRecord, permissions: UserPermissions, retire_at: i64) -> Result<(RoleRecord, Batch)> {
        let key = KeyPair::new_account();
        let mut next = role.clone();
        let remove_at = self.clock.now_unix() + self.config.service_ttl.as_secs() as i64 + 60;
        next.previous.push(RetiringKey { key: role.key.clone(), permissions: role.permissions.clone(), retire_at, remove_at });
        next.key = key.public_key();
        next.permissions = permissions;
        next.updated_at = self.clock.now_unix();
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::Keys, &keys_scoped(&next.key), seed_of(&key, "scoped key")?.expose().as_bytes())?;
        Ok((next, b))
    }

    /// `role` after its grace periods: former keys whose grace is over (or all, when `now_all`)
    /// carry the current permissions, and those no valid JWT can name any more (every holder
    /// renewed onto a newer key, or the JWTs expired) are gone. None when nothing changes.
    /// `held` says whether an identity may still hold a valid JWT signed by a key.
    pub fn role_settled(&self, role: &RoleRecord, now: i64, now_all: bool, held: impl Fn(&str) -> bool) -> Option<RoleRecord> {
        let mut next = role.clone();
        next.previous.retain(|p| p.remove_at > now && held(&p.key));
        for p in next.previous.iter_mut() {
            if (now_all || p.retire_at <= now) && p.permissions != role.permissions {
                p.permissions = role.permissions.clone();
            }
        }
        (next.previous != role.previous).then_some(next)
    }

    /// The account of `role` re-signed with `role` as given (not stored): the caller pushes it,
    /// then records both. Revocations older than any JWT still valid are pruned.
    pub fn preview_role_change(&self, acct: &AccountRecord, role: &RoleRecord) -> Result<AccountRecord> {
        let tillit = self.account(TILLIT_ACCOUNT)?;
        let mut rec = acct.clone();
        self.prune_revocations(&mut rec);
        let nats = self.render_account_with(&rec, &tillit.public_key, Some(role))?;
        let signed = self.sign_account(rec, nats)?;
        self.check_jwt_size(&signed)?;
        Ok(signed)
    }

    /// The account with `users` revoked as of now (not stored), each revocation kept until
    /// `until`: the expiry of the last JWT any of them was issued.
    pub fn preview_revocation(&self, acct: &AccountRecord, users: &[String], until: i64) -> Result<AccountRecord> {
        let now = self.clock.now_unix();
        let mut rec = acct.clone();
        self.prune_revocations(&mut rec);
        for u in users {
            rec.revocations.insert(u.clone(), now);
            let keep = rec.revoked_until.get(u).copied().unwrap_or(0).max(until);
            rec.revoked_until.insert(u.clone(), keep);
        }
        let signed = self.resign_account(rec)?;
        self.check_jwt_size(&signed)?;
        Ok(signed)
    }

    /// A revocation only matters while a JWT issued before it can still be valid: it leaves once
    /// the longest-lived JWT it covers expired ([`AccountRecord::revoked_until`], plus an hour of
    /// clock skew). Revocations recorded before that was kept stay as long as the longest JWT
    /// tillit issues in that account could live.
    fn prune_revocations(&self, rec: &mut AccountRecord) {
        let now = self.clock.now_unix();
        let longest = match rec.kind {
            AccountKind::Tenant => self.config.service_ttl,
            _ => self.config.service_ttl.max(self.config.server_cert_ttl).max(self.config.admin_ttl),
        }
        .as_secs() as i64;
        let AccountRecord { revocations, revoked_until, .. } = rec;
        revocations.retain(|u, t| revoked_until.get(u).copied().unwrap_or(*t + longest) + 3600 > now);
        revoked_until.retain(|u, _| revocations.contains_key(u));
    }

    fn check_jwt_size(&self, rec: &AccountRecord) -> Result<()> {
        if rec.jwt.len() > MAX_ACCOUNT_JWT_BYTES {
            return Err(EstateError::Limit(format!(
                "account {} JWT would be {} bytes, over nats-server's 1 MiB cap; remove grants or split the tenant",
                rec.name,
                rec.jwt.len()
            )));
        }
        Ok(())
    }

    /// Every identity of a service.
    pub fn identities_of(&self, sid: &ServiceId) -> Result<Vec<IdentityRecord>> {
        Ok(self.identities()?.into_iter().filter(|i| i.service.as_ref() == Some(sid)).collect())
    }

    /// The envelope trust set (`trust.jwks`): an RFC 7517 JWK Set of OKP/Ed25519 keys, each
    /// bound to its issuer (`iss`).
    pub fn trust_jwks(&self) -> String {
        let issuer = crate::envelope::issuer(self.trust_domain());
        let keys: Vec<serde_json::Value> = self
            .envelope_keys()
            .iter()
            .filter(|k| k.state != "retired")
            .filter_map(|k| crate::envelope::jwk(&k.kid, &issuer, &k.public_key, &k.state))
            .chain(self.meta.xkey_public.as_ref().and_then(|x| xkey_jwk(x, &issuer)))
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_else(|_| "{\"keys\":[]}".into())
    }

    /// The control plane's xkey (opens values sealed to it, seals values to readers).
    pub fn xkey(&self) -> Result<nkeys::XKey> {
        let seed = self
            .vault
            .get_sealed(Space::Keys, KEYS_XKEY)?
            .ok_or_else(|| EstateError::Key("xkey".into(), "no control-plane xkey in the store".into()))?;
        nkeys::XKey::from_seed(std::str::from_utf8(&seed).unwrap_or("")).map_err(key_err("xkey"))
    }

    /// A secret's metadata.
    pub fn secret(&self, path: &crate::secrets::SecretPath) -> Result<Option<SecretMeta>> {
        Ok(get_json(self.store(), Space::Secrets, &path.to_string())?)
    }

    /// Secrets whose path starts with `prefix`.
    pub fn secrets(&self, prefix: &str) -> Result<Vec<SecretMeta>> {
        self.scan_json(Space::Secrets, prefix)
    }

    /// Store a new version of a secret (value sealed under the master key), durably.
    pub fn write_secret(
        &self,
        path: &crate::secrets::SecretPath,
        readers: Option<Vec<crate::secrets::Reader>>,
        value: &[u8],
        by: &str,
    ) -> Result<SecretMeta> {
        let now = self.clock.now_unix();
        let mut meta = match self.secret(path)? {
            Some(m) => m,
            None => SecretMeta { path: path.clone(), readers: vec![], versions: vec![], created_at: now, created_by: by.into() },
        };
        if let Some(r) = readers {
            meta.readers = r;
        }
        let version = meta.current() + 1;
        meta.versions.push(SecretVersion { version, created_at: now, created_by: by.into(), bytes: value.len() });
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::SecretValues, &value_key(path, version), value)?;
        b.put_json(Space::Secrets, path.to_string(), &meta)?;
        self.store().commit(b)?;
        Ok(meta)
    }

    /// One version's value.
    pub fn secret_value(&self, path: &crate::secrets::SecretPath, version: u32) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        Ok(self.vault.get_sealed(Space::SecretValues, &value_key(path, version))?)
    }

    /// Delete a secret: metadata and every version.
    pub fn delete_secret(&self, meta: &SecretMeta) -> Result<()> {
        let mut b = Batch::new();
        for v in &meta.versions {
            b.delete(Space::SecretValues, value_key(&meta.path, v.version));
        }
        b.delete(Space::Secrets, meta.path.to_string());
        self.store().commit(b)?;
        Ok(())
    }

    /// A signer with the current envelope key.
    pub fn envelope_signer(&self) -> Result<crate::envelope::Signer> {
        let keys = self.envelope_keys();
        let k = keys
            .iter()
            .find(|k| k.state == "current")
            .ok_or_else(|| EstateError::Key("envelope".into(), "no current envelope key".into()))?;
        let key = self.key(&keys_envelope(&k.public_key))?;
        Ok(crate::envelope::Signer::new(&k.kid, &crate::envelope::issuer(self.trust_domain()), key))
    }

    /// The envelope keys now.
    pub fn envelope_keys(&self) -> Vec<EnvelopeKey> {
        self.envelope_keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    fn store_envelope_keys(&self, keys: Vec<EnvelopeKey>, extra: Batch) -> Result<()> {
        let mut b = extra;
        b.put_json(Space::Meta, "envelope_keys", &keys)?;
        self.store().commit(b)?;
        if let Ok(mut k) = self.envelope_keys.write() {
            *k = keys;
        }
        Ok(())
    }

    /// Rotation, step 1: add a `next` key (published in the trust set, not yet signing).
    pub fn add_next_envelope_key(&self) -> Result<EnvelopeKey> {
        let mut keys = self.envelope_keys();
        if let Some(n) = keys.iter().find(|k| k.state == "next") {
            return Ok(n.clone());
        }
        let kp = KeyPair::new_account();
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::Keys, &keys_envelope(&kp.public_key()), seed_of(&kp, "envelope key")?.expose().as_bytes())?;
        let next = EnvelopeKey { kid: kp.public_key(), public_key: kp.public_key(), state: "next".into(), created_at: self.clock.now_unix(), retire_at: None };
        keys.push(next.clone());
        self.store_envelope_keys(keys, b)?;
        Ok(next)
    }

    /// Rotation, step 2: `next` signs from now on; the old key keeps verifying until `retire_at`.
    pub fn switch_envelope_key(&self, retire_after_secs: i64) -> Result<(String, String, i64)> {
        let now = self.clock.now_unix();
        let mut keys = self.envelope_keys();
        let next = keys.iter().position(|k| k.state == "next").ok_or_else(|| EstateError::Key("envelope".into(), "no next key".into()))?;
        let mut old = String::new();
        let retire_at = now + retire_after_secs;
        for k in keys.iter_mut() {
            if k.state == "current" {
                k.state = "previous".into();
                k.retire_at = Some(retire_at);
                old = k.kid.clone();
            }
        }
        keys[next].state = "current".into();
        let new = keys[next].kid.clone();
        self.store_envelope_keys(keys, Batch::new())?;
        Ok((new, old, retire_at))
    }

    /// Retire `previous` keys whose time has come; true if any changed.
    pub fn retire_envelope_keys(&self) -> Result<bool> {
        let now = self.clock.now_unix();
        let mut keys = self.envelope_keys();
        let mut changed = false;
        for k in keys.iter_mut() {
            if k.state == "previous" && k.retire_at.is_some_and(|t| t <= now) {
                k.state = "retired".into();
                changed = true;
            }
        }
        if changed {
            self.store_envelope_keys(keys, Batch::new())?;
        }
        Ok(changed)
    }

    /// Mint `count` join tokens for `sid`, valid for `ttl_secs`, with the batch of their records
    /// (the caller commits it with its audit record). The printable tokens exist only in the
    /// return value.
    pub fn create_tokens(&self, sid: &ServiceId, ttl_secs: i64, count: u32, created_by: &str) -> Result<(Vec<JoinToken>, Batch)> {
        let now = self.clock.now_unix();
        let expires_at = now + ttl_secs;
        let bootstrap = self.account(BOOTSTRAP_ACCOUNT)?;
        let boot_key = self.account_signing_key(&bootstrap)?;
        let bundle = self.ca_bundle_pem();
        let ca_ders: Vec<String> = crate::client::tls::certs_from_pem(&bundle)
            .map_err(|e| EstateError::Key("CA bundle".into(), e))?
            .iter()
            .map(|c| token::b64(c.as_ref()))
            .collect();
        let ca_fingerprint = self.ca_fingerprint();
        let mut out = Vec::with_capacity(count as usize);
        let mut b = Batch::new();
        for _ in 0..count {
            let id = data_encoding::BASE32_NOPAD.encode(&crypto::random_bytes(15)?);
            let secret = data_encoding::BASE64URL_NOPAD.encode(&crypto::random_bytes(32)?);
            let user = KeyPair::new_user();
            let inbox = Self::inbox_prefix(&user.public_key());
            let perms = UserPermissions::new(vec![subjects::ENROLL.into()], vec![format!("{inbox}.>")]);
            let jwt = self.sign_user_with(&boot_key, &bootstrap, &user.public_key(), &format!("bootstrap {id}"), perms, expires_at, vec![])?;
            let spiffe = names::spiffe_id(self.trust_domain(), &["tillit", "bootstrap", &id.to_lowercase()]);
            let cert = self.ca().issue_client_with_new_key(&spiffe, &format!("bootstrap {id}"), now, expires_at)?;
            let cert_der = token::pem_to_der(&cert.cert_pem).ok_or_else(|| EstateError::Key("bootstrap cert".into(), "PEM".into()))?;
            let key_der = zeroize::Zeroizing::new(
                token::pem_to_der(cert.key_pem.expose()).ok_or_else(|| EstateError::Key("bootstrap key".into(), "PEM".into()))?,
            );
            let rec = TokenRecord {
                id: id.clone(),
                secret_sha256: JoinToken::secret_hash(&secret),
                identity: sid.clone(),
                expires_at,
                bootstrap_user: user.public_key(),
                created_at: now,
                created_by: created_by.to_string(),
                state: TokenState::Unused,
                used_by: None,
                used_at: None,
            };
            b.put_json(Space::Tokens, &id, &rec)?;
            let serial = SerialRecord {
                user_public_key: user.public_key(),
                not_after: expires_at,
                token: Some(id.clone()),
                what: Some("bootstrap".into()),
                ..Default::default()
            };
            b.put_json(Space::Serials, &cert.serial, &serial)?;
            out.push(JoinToken {
                id,
                secret,
                trust_domain: self.trust_domain().to_string(),
                identity: sid.clone(),
                expires_at,
                nats_urls: self.config.urls(),
                ca_fingerprint: ca_fingerprint.clone(),
                ca: ca_ders.clone(),
                bootstrap_jwt: jwt,
                bootstrap_seed: seed_of(&user, "bootstrap user")?.expose().to_string(),
                cert: token::b64(&cert_der),
                key: token::b64(&key_der),
            });
        }
        Ok((out, b))
    }

    /// A token record.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        Ok(get_json(self.store(), Space::Tokens, id)?)
    }

    /// The record of `rec` once used by `by_user`.
    pub fn used_token(&self, rec: &TokenRecord, by_user: &str) -> TokenRecord {
        let mut used = rec.clone();
        used.state = TokenState::Used;
        used.used_by = Some(by_user.into());
        used.used_at = Some(self.clock.now_unix());
        used
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
        let key = self.key(&keys_scoped(&role.key))?;
        let sid = &role.service;
        let jwt = self.sign_user_with(
            &key,
            acct,
            user_public_key,
            &sid.service,
            UserPermissions::default(),
            expires_at,
            vec![format!("project:{}", sid.project), format!("service:{}", sid.service)],
        )?;
        let (cert_pem, serial) = self.ca().issue_client(public_key, &sid.spiffe_id(self.trust_domain()), &sid.service, now, expires_at)?;
        Ok(ServiceIssue { user_jwt: jwt, cert_pem, serial, issued_at: now, expires_at })
    }

    /// The bootstrap users that must stay revoked: those of used tokens whose bootstrap JWTs
    /// have not expired yet (user → (revoked at, bootstrap JWT expiry)). Derived from the token
    /// records, so it survives restarts without being stored twice.
    pub fn live_bootstrap_revocations(&self) -> Result<BTreeMap<String, (i64, i64)>> {
        let now = self.clock.now_unix();
        let mut out = BTreeMap::new();
        for t in self.scan_json::<TokenRecord>(Space::Tokens, "")? {
            if t.state == TokenState::Used && t.expires_at > now {
                out.insert(t.bootstrap_user, (t.used_at.unwrap_or(now), t.expires_at));
            }
        }
        Ok(out)
    }

    /// The BOOTSTRAP account JWT with `revocations` (at most [`MAX_BOOTSTRAP_REVOCATIONS`], the
    /// newest kept), `iat` above `min_iat`. Not stored: the revocations are derived from the
    /// token records. Hold [`Self::account_lock`] and push the result.
    pub fn sign_bootstrap(&self, revocations: &BTreeMap<String, (i64, i64)>, min_iat: i64) -> Result<AccountRecord> {
        let mut acct = self.account(BOOTSTRAP_ACCOUNT)?;
        let mut live: Vec<(&String, &(i64, i64))> = revocations.iter().collect();
        if live.len() > MAX_BOOTSTRAP_REVOCATIONS {
            tracing::warn!(
                live = live.len(),
                "more live bootstrap revocations than the BOOTSTRAP account JWT holds; the oldest are left to expire on their own"
            );
            live.sort_by_key(|(_, (at, _))| std::cmp::Reverse(*at));
            live.truncate(MAX_BOOTSTRAP_REVOCATIONS);
        }
        acct.revocations = live.into_iter().map(|(u, (at, _))| (u.clone(), *at)).collect();
        acct.iat = acct.iat.max(min_iat);
        self.resign_account(acct)
    }
}

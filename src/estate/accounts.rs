//! Accounts: the account records (SYS, TILLIT, BOOTSTRAP, tenant accounts), rendering and
//! signing their JWTs, signing user JWTs, and revocation previews.

use super::*;

/// The largest account JWT tillit pushes (nats-server refuses more than 1 MiB).
pub const MAX_ACCOUNT_JWT_BYTES: usize = 1_000_000;
/// In callout mode, the most JSON the role keys may take in a tenant account JWT (base64 makes
/// it 4/3 larger; nats-server refuses a JWT over 1 MiB).
const CALLOUT_ROLE_KEYS_BYTES: usize = 640_000;

/// What an account is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    System,
    Tillit,
    Bootstrap,
    Tenant,
    /// Taken over from another tool (`tillit import nsc`) and kept as it was: not a tenant,
    /// nothing enrolls into it.
    Adopted,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::System => "system",
            AccountKind::Tillit => "tillit",
            AccountKind::Bootstrap => "bootstrap",
            AccountKind::Tenant => "tenant",
            AccountKind::Adopted => "adopted",
        }
    }
}

/// An account record (`accounts/<name>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    pub name: String,
    pub kind: AccountKind,
    pub public_key: String,
    /// The account signing key that signs its users (the identity key signs nothing: the operator
    /// sets `strict_signing_key_usage`).
    pub signing_key: String,
    pub jwt: String,
    pub iat: i64,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Revoked user keys → revocation time (covers JWTs issued at or before it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, i64>,
    /// Revoked user keys → when the revocation may leave: the expiry of the longest-lived JWT
    /// that key held when it was revoked. A revocation pruned earlier would let that JWT in again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked_until: BTreeMap<String, i64>,
    /// What the account was before tillit adopted it (`tillit import nsc`): its claims go into
    /// every JWT tillit signs for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
    /// Callout mode: the epoch of each bucket's signing key that was rotated
    /// ([`callout::CALLOUT_BUCKETS`]; a bucket not named is at epoch 0).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub callout_epochs: BTreeMap<u16, u32>,
}

impl AccountRecord {
    /// Whether identities signed with scoped key `key` are accepted by this account's JWT: it
    /// names `key` as one of its signing keys, or it delegates authentication to tillit's
    /// callout (which checks the role key itself, so scoped keys stay out of the account JWT).
    pub fn carries_key(&self, key: &str) -> bool {
        crate::issuer::jwt::decode_any::<serde_json::Value>(&self.jwt)
            .map(|(claims, _)| {
                let nats = &claims["nats"];
                let delegated = nats["authorization"]["auth_users"].as_array().is_some_and(|u| !u.is_empty());
                delegated || nats["signing_keys"].as_array().is_some_and(|keys| keys.iter().any(|k| k == key || k["key"] == key))
            })
            .unwrap_or(false)
    }
}

/// The claims of an adopted account that tillit keeps verbatim (`Estate::sign_account`
/// merges them with its own): exports, imports, limits, revocations, mappings and whatever else
/// its `nats` section held, and the signing keys whose seeds it took over (sealed under
/// `account-signing/<key>` like its own), so the users they signed keep connecting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Adopted {
    /// The tool it came from: `nsc`.
    pub from: String,
    /// Its name there.
    pub source_name: String,
    /// Its JWT's `nats` section without `type`, `version` and `signing_keys`.
    #[serde(default)]
    pub nats: serde_json::Map<String, serde_json::Value>,
    /// Its signing key entries as it listed them (a key, or a scoped key with its template).
    #[serde(default)]
    pub signing_keys: Vec<serde_json::Value>,
}

/// The `nats` section tillit signs for an adopted account: tillit's own (`n`) with the adopted
/// claims merged in. tillit's signing keys, exports and imports come first and the adopted ones
/// follow (an adopted entry for the same key or import, or an export overlapping one of tillit's,
/// is left out: nats-server refuses overlapping exports); revocations are
/// the union (the later time wins); `limits` and every other adopted claim are the adopted ones.
pub(crate) fn merge_adopted(n: &AccountNats, a: &Adopted) -> Result<serde_json::Value> {
    use serde_json::Value;
    let json = |e: serde_json::Error| EstateError::Jwt(jwt::JwtError::Json(e.to_string()));
    let mut v = serde_json::to_value(n).map_err(json)?;
    let Some(obj) = v.as_object_mut() else { return Ok(v) };
    let same = |k: &str, x: &Value, y: &Value| match k {
        "signing_keys" => {
            let key = |e: &Value| e.as_str().or_else(|| e.get("key").and_then(Value::as_str)).map(str::to_string);
            key(x) == key(y)
        }
        "imports" => ["subject", "account", "type"].iter().all(|f| x.get(f) == y.get(f)),
        _ => {
            x.get("type") == y.get("type")
                && matches!((x.get("subject").and_then(Value::as_str), y.get("subject").and_then(Value::as_str)), (Some(a), Some(b)) if subjects::subjects_overlap(a, b))
        }
    };
    let append = |obj: &mut serde_json::Map<String, Value>, k: &str, items: &[Value]| {
        let slot = obj.entry(k.to_string()).or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(arr) = slot {
            for x in items {
                if !arr.iter().any(|y| same(k, x, y)) {
                    arr.push(x.clone());
                }
            }
        }
    };
    append(obj, "signing_keys", &a.signing_keys);
    for (k, val) in &a.nats {
        match k.as_str() {
            "type" | "version" | "signing_keys" => {}
            "exports" | "imports" => append(obj, k, val.as_array().map(Vec::as_slice).unwrap_or_default()),
            "revocations" => {
                let slot = obj.entry(k.clone()).or_insert_with(|| Value::Object(Default::default()));
                if let (Value::Object(mine), Some(theirs)) = (slot, val.as_object()) {
                    for (u, t) in theirs {
                        let later = mine.get(u).and_then(Value::as_i64).unwrap_or(i64::MIN).max(t.as_i64().unwrap_or(0));
                        mine.insert(u.clone(), Value::from(later));
                    }
                }
            }
            _ => {
                obj.insert(k.clone(), val.clone());
            }
        }
    }
    Ok(v)
}

/// An export of the TILLIT account; services answer one reply each.
fn export(name: &str, subject: &str, kind: &str, description: &str) -> Export {
    Export {
        name: name.into(),
        subject: subject.into(),
        kind: kind.into(),
        response_type: (kind == "service").then(|| "Singleton".to_string()),
        description: Some(description.into()),
    }
}

impl Estate {
    /// The `nats` section of an account as its records say it is now: base limits, exports or
    /// imports by kind, its signing key, the scoped keys of its roles, its revocations.
    pub(crate) fn render_account(&self, rec: &AccountRecord, tillit_pub: &str) -> Result<AccountNats> {
        self.render_account_with(rec, tillit_pub, None)
    }

    /// [`Self::render_account`], with one role as it is about to be (not yet stored).
    pub(crate) fn render_account_with(&self, rec: &AccountRecord, tillit_pub: &str, role: Option<&RoleRecord>) -> Result<AccountNats> {
        self.render_account_for(rec, tillit_pub, role, None)
    }

    /// [`Self::render_account_with`] for the auth settings `auth` (`None`: as stored).
    pub(crate) fn render_account_for(
        &self,
        rec: &AccountRecord,
        tillit_pub: &str,
        role: Option<&RoleRecord>,
        auth: Option<&callout::AuthSettings>,
    ) -> Result<AccountNats> {
        let stored;
        let auth = match auth {
            Some(a) => Some(a),
            None if matches!(rec.kind, AccountKind::Tenant | AccountKind::Tillit) => {
                stored = self.auth_settings()?;
                stored.as_ref()
            }
            None => None,
        };
        let callout = auth.filter(|a| a.mode == callout::AuthMode::Callout);
        let mut n = match rec.kind {
            AccountKind::System => {
                let mut n = AccountNats::new(AccountLimits::unlimited_without_jetstream());
                n.description = Some("nats-server system account".into());
                // Its connect events, for the TILLIT account's stream of them: break-glass
                // connections are seen even when they happen while `serve` is down.
                n.exports = vec![export("sys connect events", &subjects::account_connect_events(&rec.public_key), "stream", "connections of system account users")];
                n
            }
            AccountKind::Tillit => {
                let mut n = AccountNats::new(AccountLimits::unlimited_with_jetstream());
                n.description = Some("tillit control plane and admins".into());
                n.exports = vec![
                    export("tillit service api", subjects::SVC_EXPORT, "service", "requests services make of the control plane"),
                    export("tillit enrollment", crate::proto::Enroll::SUBJECT, "service", "enrollment with a join token"),
                    export("tillit events", subjects::EVENTS_EXPORT, "stream", "signed event envelopes"),
                    export("tillit notifications", subjects::NOTIFY_EXPORT, "stream", "notifications to the instances of one service"),
                ];
                if callout.is_some() {
                    n.exports.push(export("tillit auth callout", subjects::CALLOUT_EXPORT, "service", "tenant accounts' connections, decided by tillit"));
                }
                let sys = jwt::decode::<OperatorNats>(&self.meta.operator_jwt)?.nats.system_account;
                n.imports = vec![Import {
                    name: "sys connect events".into(),
                    subject: subjects::account_connect_events(&sys),
                    account: sys,
                    kind: "stream".into(),
                    local_subject: Some(subjects::SYS_CONNECT_EVENTS.into()),
                    share: false,
                }];
                n
            }
            AccountKind::Bootstrap => {
                let mut limits = AccountLimits::unlimited_without_jetstream();
                limits.wildcards = false;
                let mut n = AccountNats::new(limits);
                n.description = Some("join-token bootstrap users: enrollment only".into());
                n.imports = vec![Import {
                    name: "tillit enrollment".into(),
                    subject: crate::proto::Enroll::SUBJECT.into(),
                    account: tillit_pub.into(),
                    kind: "service".into(),
                    local_subject: None,
                    share: true,
                }];
                n
            }
            // Its claims are the adopted ones ([`merge_adopted`]).
            AccountKind::Adopted => AccountNats::new(AccountLimits::unlimited_without_jetstream()),
            AccountKind::Tenant => {
                let mut n = AccountNats::new(AccountLimits::unlimited_with_jetstream());
                n.description = Some(format!(
                    "tenant {}, environment {}",
                    rec.tenant.as_deref().unwrap_or("?"),
                    rec.env.as_deref().unwrap_or("?")
                ));
                n.imports = vec![
                    Import {
                        name: "tillit service api".into(),
                        subject: subjects::SVC_EXPORT.into(),
                        account: tillit_pub.into(),
                        kind: "service".into(),
                        local_subject: None,
                        share: true,
                    },
                    Import {
                        name: "tillit notifications".into(),
                        subject: subjects::notify_import(&rec.name),
                        account: tillit_pub.into(),
                        kind: "stream".into(),
                        local_subject: None,
                        share: false,
                    },
                ];
                if let Some(a) = callout {
                    // nats-server publishes the account's authorization requests on
                    // `$SYS.REQ.USER.AUTH` in the account; the import carries them to TILLIT.
                    n.imports.push(Import {
                        name: "tillit auth callout".into(),
                        subject: subjects::callout_subject(&rec.name),
                        account: tillit_pub.into(),
                        kind: "service".into(),
                        local_subject: Some(subjects::SYS_AUTH_CALLOUT.into()),
                        share: false,
                    });
                    n.authorization = Some(jwt::ExternalAuthorization {
                        auth_users: vec![a.no_bypass_user.clone()],
                        allowed_accounts: vec![],
                        xkey: Some(a.xkey_public.clone()),
                    });
                }
                n
            }
        };
        n.signing_keys = vec![SigningKeyEntry::Plain(rec.signing_key.clone())];
        if rec.kind == AccountKind::Tillit {
            if let Some(agents) = self.agent_role()? {
                n.signing_keys.push(SigningKeyEntry::Scoped(Box::new(agents.scope())));
            }
        }
        // Each role's scoped key (its template is the permissions). In callout mode the
        // permissions travel in each connection's answer instead, and the keys stay only while
        // they fit: credentials issued in JWT mode keep connecting after a switch, until their
        // next renewal signs them with the account's own key.
        if rec.kind == AccountKind::Tenant {
            let plain_keys = n.signing_keys.len();
            // Callout mode, past the window of credentials issued in JWT mode, or an account whose
            // role keys did not fit at this many roles (they still do not; counting keys costs
            // far less than reading every role): the roles are not read.
            let skip_roles = match callout {
                // Past the window where credentials issued in JWT mode can be valid.
                Some(a) if !a.role_keys_needed(self.clock.now_unix()) => true,
                Some(_) => {
                    let over = self.callout_role_keys_over.lock().ok().and_then(|m| m.get(&rec.name).copied());
                    match over {
                        Some(over) => self.role_count(&rec.name)? >= over,
                        None => false,
                    }
                }
                None => false,
            };
            if !skip_roles {
                let mut replaced = false;
                let mut roles = 0;
                for stored in self.roles_of(&rec.name)? {
                    roles += 1;
                    match role {
                        Some(r) if r.service == stored.service => {
                            n.signing_keys.extend(r.scopes().into_iter().map(|k| SigningKeyEntry::Scoped(Box::new(k))));
                            replaced = true;
                        }
                        _ => n.signing_keys.extend(stored.scopes().into_iter().map(|k| SigningKeyEntry::Scoped(Box::new(k)))),
                    }
                }
                if let (Some(r), false) = (role, replaced) {
                    n.signing_keys.extend(r.scopes().into_iter().map(|k| SigningKeyEntry::Scoped(Box::new(k))));
                }
                // Callout mode keeps them only while the JWT stays well inside nats-server's cap
                // (base64 adds a third): past that, the callout alone carries permissions.
                if callout.is_some() && serde_json::to_vec(&n.signing_keys).map(|v| v.len()).unwrap_or(usize::MAX) > CALLOUT_ROLE_KEYS_BYTES {
                    n.signing_keys.truncate(plain_keys);
                    if let Ok(mut m) = self.callout_role_keys_over.lock() {
                        m.insert(rec.name.clone(), roles);
                    }
                }
            }
            // The keys the callout's answers are signed with, one per bucket of identities.
            if callout.is_some() {
                n.signing_keys.extend(self.callout_bucket_keys(rec)?.into_iter().map(SigningKeyEntry::Plain));
            }
        }
        n.revocations = rec.revocations.clone();
        Ok(n)
    }

    /// Sign `rec` with `nats` as its new JWT (an adopted account's claims merged in,
    /// [`merge_adopted`]); `iat` strictly above the previous one.
    pub(crate) fn sign_account(&self, mut rec: AccountRecord, nats: AccountNats) -> Result<AccountRecord> {
        let now = self.clock.now_unix();
        let iat = if rec.iat >= now { rec.iat + 1 } else { now };
        let nats = match &rec.adopted {
            Some(a) => merge_adopted(&nats, a)?,
            None => serde_json::to_value(&nats).map_err(|e| EstateError::Jwt(jwt::JwtError::Json(e.to_string())))?,
        };
        let claims = Claims {
            jti: jwt::new_jti()?,
            iat,
            iss: self.operator_signing.public_key(),
            sub: rec.public_key.clone(),
            name: Some(rec.name.clone()),
            aud: None,
            exp: None,
            nbf: None,
            nats,
        };
        rec.jwt = jwt::encode(&claims, &self.operator_signing)?;
        rec.iat = iat;
        Ok(rec)
    }

    /// Re-render and re-sign an account from its records (after a role or revocation change).
    pub(crate) fn resign_account(&self, rec: AccountRecord) -> Result<AccountRecord> {
        let tillit = self.account(TILLIT_ACCOUNT)?;
        let nats = self.render_account(&rec, &tillit.public_key)?;
        self.sign_account(rec, nats)
    }

    /// One account by name.
    pub fn account(&self, name: &str) -> Result<AccountRecord> {
        get_json(self.store(), Space::Accounts, name)?.ok_or_else(|| EstateError::NoSuchAccount(name.into()))
    }

    /// An account record as the store holds it now ([`crate::store::Store::get_fresh`]).
    pub fn account_fresh(&self, name: &str) -> Result<AccountRecord> {
        match self.store().get_fresh(Space::Accounts, name)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("accounts/{name}"), e.to_string()).into()),
            None => Err(EstateError::NoSuchAccount(name.into())),
        }
    }

    /// Every account, by name.
    pub fn accounts(&self) -> Result<Vec<AccountRecord>> {
        self.scan_json(Space::Accounts, "")
    }

    /// The account of `tenant` + `env` (`acme-prod`), created if missing. Returns the record and
    /// whether it was created (then the caller pushes its JWT). Hold [`Self::account_lock`].
    pub fn ensure_tenant_account_locked(&self, tenant: &str, env: &str) -> Result<(AccountRecord, bool)> {
        self.ensure_tenant_account_rev(tenant, env).map(|(rec, created, _)| (rec, created))
    }

    /// An account record with the store revision it was read at ([`crate::store::Store::get_rev`]).
    pub(crate) fn account_rev(&self, name: &str) -> Result<Option<(AccountRecord, Option<u64>)>> {
        Ok(crate::store::get_json_rev(self.store(), Space::Accounts, name)?)
    }

    /// [`Self::ensure_tenant_account_locked`], with the revision the record is at: a change
    /// computed from it names that revision, so it cannot land over another replica's.
    pub(crate) fn ensure_tenant_account_rev(&self, tenant: &str, env: &str) -> Result<(AccountRecord, bool, Option<u64>)> {
        names::check_segment("tenant", tenant)?;
        names::check_segment("env", env)?;
        let name = names::account_name(tenant, env);
        if let Some((rec, rev)) = self.account_rev(&name)? {
            // The record says whose it is: an account is never handed to another pair.
            if rec.kind != AccountKind::Tenant || rec.tenant.as_deref() != Some(tenant) || rec.env.as_deref() != Some(env) {
                return Err(EstateError::Key(
                    format!("account {name}"),
                    format!("it belongs to {:?}/{:?}, not {tenant}/{env}", rec.tenant, rec.env),
                ));
            }
            return Ok((rec, false, rev));
        }
        let mut b = Batch::new();
        let (id, signing) = new_account_keys(&self.vault, &mut b, &name)?;
        let signing_public = signing.public_key();
        // Rendering it in callout mode derives keys from its signing key, not stored yet.
        self.remember_key(&keys_account_signing(&signing_public), signing);
        let draft = AccountRecord {
            name: name.clone(),
            kind: AccountKind::Tenant,
            public_key: id.public_key(),
            signing_key: signing_public,
            jwt: String::new(),
            iat: 0,
            created_at: self.clock.now_unix(),
            tenant: Some(tenant.into()),
            env: Some(env.into()),
            revocations: BTreeMap::new(),
            revoked_until: BTreeMap::new(),
            callout_epochs: BTreeMap::new(),
            adopted: None,
        };
        let rec = self.resign_account(draft)?;
        // Another replica creating the same account at the same time wins or loses as a whole:
        // two accounts of one name (two keys) would split its services.
        b.create_json(Space::Accounts, &name, &rec)?;
        self.store().commit(b)?;
        let (rec, rev) = self.account_rev(&name)?.ok_or_else(|| EstateError::NoSuchAccount(name.clone()))?;
        Ok((rec, true, rev))
    }

    /// [`Self::ensure_tenant_account_locked`], taking the lock.
    pub async fn ensure_tenant_account(&self, tenant: &str, env: &str) -> Result<(AccountRecord, bool)> {
        let _guard = self.account_lock.lock().await;
        self.ensure_tenant_account_locked(tenant, env)
    }

    /// Sign a user JWT in `account` (by its plain signing key) with explicit permissions.
    pub fn sign_user(
        &self,
        account: &AccountRecord,
        user_public_key: &str,
        name: &str,
        permissions: UserPermissions,
        expires_at: i64,
    ) -> Result<String> {
        let key = self.account_signing_key(account)?;
        self.sign_user_with(&key, account, user_public_key, name, permissions, expires_at, vec![])
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sign_user_with(
        &self,
        key: &KeyPair,
        account: &AccountRecord,
        user_public_key: &str,
        name: &str,
        permissions: UserPermissions,
        expires_at: i64,
        tags: Vec<String>,
    ) -> Result<String> {
        let claims = Claims {
            jti: jwt::new_jti()?,
            iat: self.clock.now_unix(),
            iss: key.public_key(),
            sub: user_public_key.to_string(),
            name: Some(name.to_string()),
            aud: None,
            // 0: no expiry (a callout-mode service JWT, [`Estate::issue_service`]).
            exp: (expires_at > 0).then_some(expires_at),
            nbf: None,
            nats: UserNats {
                kind: "user".into(),
                version: 2,
                permissions,
                bearer_token: false,
                issuer_account: Some(account.public_key.clone()),
                tags,
            },
        };
        Ok(jwt::encode(&claims, key)?)
    }

    /// The account with `users` revoked as of now (not stored), each revocation kept until
    /// `until`: the expiry of the last JWT any of them was issued.
    pub fn preview_revocation(&self, acct: &AccountRecord, users: &[String], until: i64) -> Result<AccountRecord> {
        let now = self.clock.now_unix();
        let mut rec = acct.clone();
        // Callout mode: the revocations do not name the connections' keys (nats-server's own),
        // the answer keys that admitted them are replaced instead. Once no credentials issued in
        // JWT mode can be valid, nothing checks the account's revocations: they are not added
        // (each would grow the account JWT, re-signed and pushed on every revocation, until it
        // hit nats-server's 1 MiB cap at ~14,000 revoked identities). Back in JWT mode they are
        // listed again from the identity records ([`Self::set_auth_mode`]).
        let mut listed = true;
        if rec.kind == AccountKind::Tenant {
            if let Some(a) = self.auth_settings()?.filter(|a| a.mode == callout::AuthMode::Callout) {
                rec = self.rotate_callout_buckets(&rec, users);
                listed = a.role_keys_needed(now);
            }
        }
        self.prune_revocations(&mut rec);
        for u in users.iter().filter(|_| listed) {
            rec.revocations.insert(u.clone(), now);
            let keep = rec.revoked_until.get(u).copied().unwrap_or(0).max(until);
            rec.revoked_until.insert(u.clone(), keep);
        }
        let signed = self.resign_account(rec)?;
        self.check_jwt_size(&signed)?;
        Ok(signed)
    }

    /// Callout mode: `acct` with the answer keys of `users`' buckets replaced, signed, and the
    /// batch that stores it. Once pushed, every server the account JWT reaches drops the
    /// connections those keys admitted ([`callout::CALLOUT_BUCKETS`]).
    pub fn callout_rotation(&self, acct: &AccountRecord, users: &[String]) -> Result<(AccountRecord, Batch)> {
        let signed = self.resign_account(self.rotate_callout_buckets(acct, users))?;
        self.check_jwt_size(&signed)?;
        let mut b = Batch::new();
        b.put_json(Space::Accounts, &signed.name, &signed)?;
        Ok((signed, b))
    }

    /// A revocation only matters while a JWT issued before it can still be valid: it leaves once
    /// the longest-lived JWT it covers expired ([`AccountRecord::revoked_until`], plus an hour of
    /// clock skew). Revocations recorded before that was kept stay as long as the longest JWT
    /// tillit issues in that account could live.
    pub(super) fn prune_revocations(&self, rec: &mut AccountRecord) {
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

    pub(super) fn check_jwt_size(&self, rec: &AccountRecord) -> Result<()> {
        if rec.jwt.len() > MAX_ACCOUNT_JWT_BYTES {
            return Err(EstateError::Limit(format!(
                "account {} JWT would be {} bytes, over nats-server's 1 MiB cap; remove grants or split the tenant",
                rec.name,
                rec.jwt.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::estate::tests::new_estate;

    #[tokio::test]
    async fn tenant_accounts_are_created_once_and_names_are_checked() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, store, _m) = new_estate(clock);
        let (a, created) = e.ensure_tenant_account("acme", "prod").await.unwrap();
        assert!(created);
        assert_eq!(a.name, "acme-prod");
        let (b, created) = e.ensure_tenant_account("acme", "prod").await.unwrap();
        assert!(!created);
        assert_eq!(a.public_key, b.public_key);
        let raw = store.get(Space::Keys, &keys_account(&a.public_key)).unwrap().unwrap();
        let seed = e.vault.get_sealed(Space::Keys, &keys_account(&a.public_key)).unwrap().unwrap();
        assert!(seed.starts_with(b"SA"));
        assert!(!raw.windows(seed.len()).any(|w| w == &seed[..]), "account seed is sealed");
        for (t, env) in [("*", "prod"), ("acme", ">"), ("a.b", "prod"), ("acme", "")] {
            assert!(e.ensure_tenant_account(t, env).await.is_err(), "{t}/{env}");
        }
        assert_eq!(e.accounts().unwrap().len(), 4, "SYS, TILLIT, BOOTSTRAP, acme-prod");
    }

    /// An adopted account's claims merged with tillit's: tillit's entries first, the adopted
    /// ones after, duplicates and overlapping exports left out, revocations joined, the adopted
    /// limits and other claims verbatim (fields tillit has no type for included).
    #[test]
    fn adopted_claims_merge_with_tillits_own() {
        use serde_json::json;
        let mut n = AccountNats::new(AccountLimits::unlimited_with_jetstream());
        n.signing_keys = vec![SigningKeyEntry::Plain("ATILLIT".into())];
        n.exports = vec![export("connect events", "$SYS.ACCOUNT.ASYS.CONNECT", "stream", "d")];
        n.imports = vec![Import { name: "api".into(), subject: "tillit.v1.svc.>".into(), account: "AT".into(), kind: "service".into(), local_subject: None, share: true }];
        n.revocations = BTreeMap::from([("UA".to_string(), 10), ("UB".to_string(), 30)]);
        let scoped = json!({ "kind": "user_scope", "key": "ASCOPED", "role": "ops", "template": { "pub": { "allow": ["ops.>"] }, "times": [{ "start": "08:00:00", "end": "17:00:00" }] } });
        let a = Adopted {
            from: "nsc".into(),
            source_name: "SYS".into(),
            nats: serde_json::from_value(json!({
                "limits": { "subs": -1, "conn": 5, "wildcards": true, "max_ack_pending": 100 },
                "exports": [
                    { "name": "monitoring", "subject": "$SYS.ACCOUNT.*.>", "type": "stream", "account_token_position": 3 },
                    { "name": "monitoring services", "subject": "$SYS.REQ.ACCOUNT.*.*", "type": "service", "account_token_position": 4 },
                ],
                "imports": [
                    { "name": "api again", "subject": "tillit.v1.svc.>", "account": "AT", "type": "service" },
                    { "name": "orders", "subject": "orders.>", "account": "AO", "type": "stream", "to": "x" },
                ],
                "revocations": { "UA": 20, "UB": 5, "UC": 1 },
                "mappings": { "old.>": [{ "subject": "new.>", "weight": 100 }] },
                "type": "ignored", "version": 9,
            }))
            .unwrap(),
            signing_keys: vec![json!("ATILLIT"), json!("ANSC"), scoped.clone()],
        };
        let m = merge_adopted(&n, &a).unwrap();
        assert_eq!(m["type"], "account");
        assert_eq!(m["version"], 2);
        assert_eq!(m["signing_keys"], json!(["ATILLIT", "ANSC", scoped]), "a scoped key's template kept whole");
        let exports: Vec<&str> = m["exports"].as_array().unwrap().iter().map(|x| x["subject"].as_str().unwrap()).collect();
        assert_eq!(exports, ["$SYS.ACCOUNT.ASYS.CONNECT", "$SYS.REQ.ACCOUNT.*.*"], "the overlapping stream export is left out");
        assert_eq!(m["exports"][1]["account_token_position"], 4);
        let imports: Vec<&str> = m["imports"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
        assert_eq!(imports, ["api", "orders"]);
        assert_eq!(m["imports"][1]["to"], "x");
        assert_eq!(m["revocations"], json!({ "UA": 20, "UB": 30, "UC": 1 }));
        assert_eq!(m["limits"], json!({ "subs": -1, "conn": 5, "wildcards": true, "max_ack_pending": 100 }));
        assert_eq!(m["mappings"]["old.>"][0]["subject"], "new.>");
    }

    #[test]
    fn account_iat_strictly_increases() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock.clone());
        let t = e.account(TILLIT_ACCOUNT).unwrap();
        let again = e.resign_account(t.clone()).unwrap();
        assert!(again.iat > t.iat, "same second: iat bumped");
        clock.advance(100);
        let later = e.resign_account(again).unwrap();
        assert_eq!(later.iat, 1_780_000_100);
    }

    /// A removed site's leafnode users hold JWTs for a year: their revocations must stay as long
    /// (they used to leave after a day, and the next push let the site link to the hub again).
    #[test]
    fn revocations_stay_until_the_jwts_they_cover_expired() {
        use crate::clock::Clock;
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock.clone());
        let t0 = clock.now_unix();
        let year = 365 * 86_400;
        let tillit = e.account(TILLIT_ACCOUNT).unwrap();
        let leaf = KeyPair::new_user().public_key();
        let agent = KeyPair::new_user().public_key();
        let a = e.preview_revocation(&tillit, std::slice::from_ref(&leaf), t0 + year).unwrap();
        let a = e.preview_revocation(&a, std::slice::from_ref(&agent), t0 + 86_400).unwrap();
        let in_jwt = |rec: &AccountRecord, u: &str| {
            let c: Claims<AccountNats> = jwt::decode(&rec.jwt).unwrap();
            serde_json::to_value(&c.nats).unwrap()["revocations"].get(u).is_some()
        };
        assert!(in_jwt(&a, &leaf) && in_jwt(&a, &agent));
        // Two days on, another revocation is pushed: the agent's (its JWT expired) leaves, the
        // leafnode user's stays.
        clock.advance(2 * 86_400);
        let other = KeyPair::new_user().public_key();
        let b = e.preview_revocation(&a, std::slice::from_ref(&other), clock.now_unix() + 3600).unwrap();
        assert!(in_jwt(&b, &leaf), "a year-long JWT's revocation was pruned after two days");
        assert!(!in_jwt(&b, &agent), "an expired JWT's revocation is pruned");
        assert!(in_jwt(&b, &other));
        // After the year (and the hour of skew) it may go.
        clock.advance(year);
        let c = e.preview_revocation(&b, &[], clock.now_unix()).unwrap();
        assert!(!in_jwt(&c, &leaf));
        assert!(c.revoked_until.is_empty() && c.revocations.is_empty());
        // A revocation recorded before `revoked_until` existed stays as long as the longest JWT
        // of that account can live.
        let mut legacy = e.account(TILLIT_ACCOUNT).unwrap();
        legacy.revocations.insert(leaf.clone(), clock.now_unix());
        clock.advance(30 * 86_400);
        let d = e.preview_revocation(&legacy, &[], clock.now_unix()).unwrap();
        assert!(d.revocations.contains_key(&leaf));
    }
}

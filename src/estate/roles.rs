//! Roles: one scoped signing key per service in its tenant account, the permission template
//! its users get, and permission changes (re-keying, grace periods, previews).

use super::*;
use crate::names::ServiceId;

/// Most services in one tenant account in JWT mode: each service's scoped signing key with its
/// default template (its namespace, inbox, notifications and caller-key subjects) takes about
/// 820 bytes of the account JWT, which nats-server caps at 1 MiB, so about 1,200 services fit;
/// grants make roles larger and reach the cap sooner (refused as `limit_exceeded` by size).
/// Larger tenants split across environments (accounts), e.g. `acme-prod-eu`, or use callout
/// mode, where the account JWT carries no key per service.
pub const MAX_SERVICES_PER_ACCOUNT: usize = 1_200;

/// Where account `account`'s roles are kept (`<account>/<project>/<service>`).
fn roles_prefix(account: &str) -> String {
    format!("{account}/")
}

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
    let mut publish = vec![ns.clone(), subjects::SVC_EXPORT.into()];
    publish.extend(caller_keys_read());
    let mut p = UserPermissions::new(
        publish,
        vec![
            ns,
            format!("{}.{{{{subject()}}}}.>", subjects::INBOX_ROOT),
            subjects::notify_subject(&sid.account_name(), &sid.project, &sid.service),
        ],
    );
    // It may answer the requests it receives (one reply each, within 10 s): services call
    // services (with caller tokens, `crate::service`).
    p.resp = Some(crate::issuer::jwt::ResponsePermission { max: 1, ttl: 10_000_000_000 });
    p
}

/// What a service's JWT carries in callout mode (signed by the account's own key): the control
/// plane's API, its own inbox and its notifications. Enough to renew; everything else comes
/// from the callout's answer for each connection.
pub(crate) fn control_plane_reach(sid: &ServiceId, user_public_key: &str) -> UserPermissions {
    UserPermissions::new(
        vec![subjects::SVC_EXPORT.into()],
        vec![format!("{}.>", subjects::inbox_prefix(user_public_key)), subjects::notify_subject(&sid.account_name(), &sid.project, &sid.service)],
    )
}

/// What a service may publish to watch its account's caller key sets (the JetStream API of
/// that one bucket, read-only: an ordered consumer and direct gets; never `$KV.` puts).
pub(crate) fn caller_keys_read() -> Vec<String> {
    let b = format!("KV_{}", crate::service::CALLERS_BUCKET);
    vec![
        format!("$JS.API.STREAM.INFO.{b}"),
        format!("$JS.API.CONSUMER.CREATE.{b}"),
        format!("$JS.API.CONSUMER.CREATE.{b}.>"),
        format!("$JS.API.CONSUMER.DELETE.{b}.>"),
        format!("$JS.API.DIRECT.GET.{b}.>"),
        format!("$JS.FC.{b}.>"),
    ]
}

impl Estate {
    /// Every role of an account.
    pub fn roles_of(&self, account: &str) -> Result<Vec<RoleRecord>> {
        self.scan_json(Space::Roles, &roles_prefix(account))
    }

    /// Visit every role of the estate until `f` says stop (false), without holding them all.
    pub fn visit_roles(&self, f: impl FnMut(RoleRecord) -> bool) -> Result<()> {
        self.visit_json(Space::Roles, "", f)
    }

    /// How many roles (services) account `account` has, without reading them.
    pub fn role_count(&self, account: &str) -> Result<usize> {
        Ok(self.store().count_prefix(Space::Roles, &roles_prefix(account))?)
    }

    /// A service's role, if it has one.
    pub fn role(&self, sid: &ServiceId) -> Result<Option<RoleRecord>> {
        Ok(get_json(self.store(), Space::Roles, &RoleRecord::store_key(sid))?)
    }

    /// [`Estate::role`] as the store holds it now, not as this replica's copy last saw it (a
    /// change computed from a copy that lags would undo another replica's change).
    pub fn role_fresh(&self, sid: &ServiceId) -> Result<Option<RoleRecord>> {
        match self.store().get_fresh(Space::Roles, &RoleRecord::store_key(sid))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(format!("roles/{sid}"), e.to_string()))?)),
            None => Ok(None),
        }
    }

    /// The tenant account and role of `sid`, creating either if missing. Returns whether the
    /// account JWT changed (the caller pushes it while still holding [`Self::account_lock`]).
    pub fn ensure_role_locked(&self, sid: &ServiceId) -> Result<(AccountRecord, RoleRecord, bool)> {
        let (acct, created, rev) = self.ensure_tenant_account_rev(&sid.tenant, &sid.env)?;
        if let Some(role) = self.role(sid)? {
            return Ok((acct, role, created));
        }
        // Callout mode carries no scoped key per service in the account JWT: no ceiling there.
        if self.auth_mode() == callout::AuthMode::Jwt && self.role_count(&acct.name)? >= MAX_SERVICES_PER_ACCOUNT {
            return Err(EstateError::Limit(format!(
                "account {} already has {MAX_SERVICES_PER_ACCOUNT} services, about the most one account JWT can carry; \
                 put further services in another environment (account), e.g. {}-2, or switch to callout mode",
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
        let tillit = self.account(TILLIT_ACCOUNT)?;
        let before = self.render_account(&acct, &tillit.public_key)?;
        let mut b = Batch::new();
        self.vault.put_sealed(&mut b, Space::Keys, &keys_scoped(&role.key), seed_of(&key, "scoped key")?.expose().as_bytes())?;
        // Created once: another replica's role for the same service, made at the same time,
        // is not overwritten (its identities are signed with its key).
        b.create_json(Space::Roles, RoleRecord::store_key(sid), &role)?;
        // The account JWT is rendered from the role records, so store the role first.
        self.store().apply(b)?;
        let after = self.render_account(&acct, &tillit.public_key)?;
        // In callout mode past the window of JWT-mode credentials the account JWT lists no role
        // keys: a new service changes nothing in it, and signing and pushing it again for each
        // new service made enrollment cost grow with the account's size.
        if after == before {
            return Ok((acct, role, true));
        }
        let acct = self.sign_account(acct, after)?;
        // Over the account as read, never over another replica's newer version. Refused, the
        // role is stored and its key not in the account yet: [`Self::resign_for_roles`] mends it.
        let mut b = Batch::new();
        b.put_json_at(Space::Accounts, &acct.name, &acct, rev)?;
        self.store().commit(b)?;
        Ok((acct, role, true))
    }

    /// Re-sign `account` from the store's current record and role records: a role stored by a
    /// replica that stopped (or lost a race) before its account JWT carried the role's key.
    /// Hold [`Self::account_lock`]. The record as stored after.
    pub fn resign_for_roles(&self, account: &str) -> Result<AccountRecord> {
        // The bucket's record, not this replica's copy of it (the read refreshes the copy).
        self.store().get_fresh(Space::Accounts, account)?;
        let (acct, rev) = self.account_rev(account)?.ok_or_else(|| EstateError::NoSuchAccount(account.into()))?;
        let acct = self.resign_account(acct)?;
        self.check_jwt_size(&acct)?;
        let mut b = Batch::new();
        b.put_json_at(Space::Accounts, &acct.name, &acct, rev)?;
        self.store().commit(b)?;
        Ok(acct)
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
}

// === batches the handlers record ===

/// A role change, decided: the role and its account as they will be, whether the permissions
/// went to a new key, and the batch to record.
#[derive(Debug)]
pub struct RoleChange {
    pub role: RoleRecord,
    pub account: AccountRecord,
    /// Whether the permissions went to a new scoped key (the old one keeps its users for a
    /// grace period) rather than changing the template in place.
    pub rekeyed: bool,
    pub batch: Batch,
}

impl Estate {
    /// Give `role` of `acct` new `permissions`: under a new scoped key when the account JWT has
    /// room for one (the current key keeps its users until `retire_at`; adding a key closes no
    /// connection), else in place (the server reconnects the role's users at once). A new key's
    /// seed is made durable here, before the account that names it can reach a server (the
    /// audit log, the redo log of records, never carries key material).
    pub fn change_role(&self, acct: &AccountRecord, role: &RoleRecord, permissions: UserPermissions, retire_at: i64) -> Result<RoleChange> {
        let mut in_place = role.clone();
        in_place.permissions = permissions.clone();
        let (rekeyed, key_batch) = self.rekey_role(role, permissions, retire_at)?;
        let (role, account, rekeyed) = match self.preview_role_change(acct, &rekeyed) {
            Ok(signed) => {
                self.store().commit(key_batch)?;
                (rekeyed, signed, true)
            }
            Err(EstateError::Limit(_)) => {
                let signed = self.preview_role_change(acct, &in_place)?;
                (in_place, signed, false)
            }
            Err(other) => return Err(other),
        };
        let batch = self.role_batch(&role, &account, &[])?;
        Ok(RoleChange { role, account, rekeyed, batch })
    }

    /// A role change: the role as it is now, its account as re-signed for it
    /// ([`Estate::preview_role_change`]), and the seeds of `removed` former keys deleted.
    pub fn role_batch(&self, role: &RoleRecord, account: &AccountRecord, removed: &[String]) -> Result<Batch> {
        let mut b = Batch::new();
        b.put_json(Space::Roles, RoleRecord::store_key(&role.service), role)?;
        b.put_json(Space::Accounts, &account.name, account)?;
        for k in removed {
            b.delete(Space::Keys, keys_scoped(k));
        }
        Ok(b)
    }
}

//! Auth callout mode: nats-server asks tillit about every new connection to a tenant account,
//! and tillit answers from the **verified certificate chain** and the **nkey the client proved**
//! (its signature over the server's nonce), which must belong to the same live identity.
//!
//! How it is wired (no server config changes; all of it is in the account JWTs tillit signs):
//! - each tenant account carries `authorization { auth_users, xkey }`: every connection to it
//!   goes to the callout (`auth_users` names a key nobody holds, so nothing bypasses it), and
//!   nats-server seals each request to tillit's callout xkey;
//! - the request is published in the tenant account on `$SYS.REQ.USER.AUTH`, which that account
//!   imports from TILLIT as `tillit.v1.callout.<account>`: every `serve` replica answers it in a
//!   queue group on its own TILLIT connection, one connection for any number of accounts;
//! - the answer is a user JWT for the server's per-connection user key, signed by the tenant
//!   account's signing key, carrying the identity's permissions **inline**: the account JWT holds
//!   no scoped key per service, so there is no ceiling of services per account.
//!
//! Services keep the creds they were issued in JWT mode (signed by their role's scoped key): the
//! callout checks that JWT itself, so a switch of mode needs no re-enrollment either way.

use super::*;
use crate::issuer::jwt::{Claims, UserNats};

/// The estate's auth mode and what callout mode needs (`meta/auth`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// The callout xkey's public half (its seed is sealed under `keys/callout-xkey`).
    pub xkey_public: String,
    /// The `auth_users` entry of tenant accounts: a user key whose seed was thrown away, so no
    /// connection bypasses the callout (nats-server enables a callout only with one listed).
    pub no_bypass_user: String,
    /// When the mode last changed.
    pub since: i64,
    /// Callout mode: until when credentials issued in JWT mode (signed by role keys) may still be
    /// valid, so the account JWTs keep the role keys (while they fit); `None` (settings from
    /// before this was kept): always. After it, accounts are rendered without reading roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_creds_until: Option<i64>,
}

impl AuthSettings {
    /// Whether tenant account JWTs carry the roles' scoped keys at `now`.
    pub fn role_keys_needed(&self, now: i64) -> bool {
        self.mode == AuthMode::Jwt || self.jwt_creds_until.is_none_or(|t| now < t)
    }
}

/// How nats-server authenticates connections to tenant accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// The default: nats-server checks the user JWT and the certificate separately.
    #[default]
    Jwt,
    /// tillit decides each connection (certificate and nkey bound to one identity).
    Callout,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Jwt => "jwt",
            AuthMode::Callout => "callout",
        }
    }

    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "jwt" => Some(AuthMode::Jwt),
            "callout" => Some(AuthMode::Callout),
            _ => None,
        }
    }
}

pub(crate) const META_AUTH: &str = "auth";
pub(crate) const KEYS_CALLOUT_XKEY: &str = "callout-xkey";
/// `aud` of nats-server's authorization requests.
pub const AUTH_REQUEST_AUDIENCE: &str = "nats-authorization-request";
/// Largest authorization request tillit reads (a chain of a few certificates and a user JWT).
pub const MAX_AUTH_REQUEST_BYTES: usize = 64 * 1024;
/// Lifetime of an authorization response (nats-server reads it at once).
const RESPONSE_TTL: i64 = 60;
/// How many keys sign the callout's answers in one tenant account. An identity's connections
/// are signed by the key of its bucket (from its user key); revoking it or narrowing its
/// permissions replaces that one key in the account JWT, and nats-server, wherever the account
/// JWT reaches (the hub, every site, a site cut off once it heals), drops the connections the
/// old key admitted: the identity's, and about 1/64 of the account's others, which come back
/// through the callout at once. (nats-server matches an account's revocations against the
/// per-connection key of a callout user, which is the server's, not the identity's.)
pub const CALLOUT_BUCKETS: u16 = 64;

/// The bucket of the identity with user key `user_key`.
pub fn callout_bucket(user_key: &str) -> u16 {
    use sha2::Digest;
    let h = sha2::Sha256::digest(user_key.as_bytes());
    u16::from_be_bytes([h[0], h[1]]) % CALLOUT_BUCKETS
}

/// The buckets of the identities with user keys `user_keys`.
pub fn callout_buckets(user_keys: &[String]) -> std::collections::BTreeSet<u16> {
    user_keys.iter().map(|u| callout_bucket(u)).collect()
}

/// `nats` of an authorization request (the fields tillit reads).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct AuthRequestNats {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub server_id: ServerId,
    #[serde(default)]
    pub user_nkey: String,
    #[serde(default)]
    pub client_info: ClientInfo,
    #[serde(default)]
    pub connect_opts: ConnectOpts,
    #[serde(default)]
    pub client_tls: Option<ClientTls>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ServerId {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub xkey: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ClientInfo {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ConnectOpts {
    #[serde(default)]
    pub jwt: String,
    #[serde(default)]
    pub sig: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ClientTls {
    #[serde(default)]
    pub verified_chains: Vec<Vec<String>>,
}

/// Why a connection was refused: the reason label (`/metrics`) and the text nats-server logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { reason, message: message.into() }
}

/// A connection tillit lets in.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The SPIFFE id of the identity (the control plane's own for its connections).
    pub id: String,
    /// The identity's user key (what its creds name), not the per-connection key.
    pub user_public_key: String,
    pub permissions: UserPermissions,
    pub expires_at: i64,
    pub tags: Vec<String>,
}

/// A decoded, signature-checked authorization request, with the account it came for.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub server_key: String,
    pub account: String,
    pub nats: AuthRequestNats,
}

impl AuthRequest {
    /// Parse nats-server's request JWT (signed by the server's key) for tenant account `account`
    /// (its public key must be the JWT's `sub`).
    pub fn parse(token: &[u8], account_public_key: &str, now: i64) -> std::result::Result<AuthRequest, Refusal> {
        if token.len() > MAX_AUTH_REQUEST_BYTES {
            return Err(refuse("malformed", format!("authorization request over {MAX_AUTH_REQUEST_BYTES} bytes")));
        }
        let text = std::str::from_utf8(token).map_err(|_| refuse("malformed", "authorization request is not UTF-8"))?;
        let (c, iss) = jwt::decode_any::<Claims<AuthRequestNats>>(text).map_err(|e| refuse("malformed", format!("authorization request: {e}")))?;
        if !iss.starts_with('N') {
            return Err(refuse("malformed", "authorization request not signed by a server key"));
        }
        if c.nats.kind != "authorization_request" || c.aud.as_deref() != Some(AUTH_REQUEST_AUDIENCE) {
            return Err(refuse("malformed", "not an authorization request"));
        }
        if c.sub != account_public_key {
            return Err(refuse("malformed", format!("authorization request is for account {}, asked on another's subject", c.sub)));
        }
        if c.exp.is_some_and(|e| e + 5 < now) {
            return Err(refuse("malformed", "authorization request expired"));
        }
        if !c.nats.user_nkey.starts_with('U') || KeyPair::from_public_key(&c.nats.user_nkey).is_err() {
            return Err(refuse("malformed", "authorization request names no user key"));
        }
        if !c.nats.server_id.id.starts_with('N') {
            return Err(refuse("malformed", "authorization request names no server id"));
        }
        Ok(AuthRequest { server_key: iss, account: c.sub, nats: c.nats })
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    data_encoding::BASE64URL_NOPAD
        .decode(s.trim_end_matches('=').as_bytes())
        .ok()
        .or_else(|| data_encoding::BASE64.decode(s.as_bytes()).ok())
}

/// The SPIFFE id, serial and notAfter of the leaf of the first verified chain.
fn verified_leaf(tls: Option<&ClientTls>) -> std::result::Result<(String, String, i64), Refusal> {
    let pem = tls
        .and_then(|t| t.verified_chains.first())
        .and_then(|c| c.first())
        .ok_or_else(|| refuse("no_certificate", "no verified client certificate: connect with the identity's certificate (tls verify is on)"))?;
    let der = x509::first_cert_der(pem).map_err(|e| refuse("no_certificate", format!("client certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| refuse("no_certificate", format!("client certificate: {e}")))?;
    let id = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|s| {
            s.value.general_names.iter().find_map(|g| match g {
                x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
                _ => None,
            })
        })
        .ok_or_else(|| refuse("no_spiffe_id", "the client certificate carries no SPIFFE id"))?;
    Ok((id, data_encoding::HEXLOWER.encode(cert.raw_serial()), cert.validity().not_after.timestamp()))
}

impl Estate {
    /// The auth settings (`None`: JWT mode, as every estate was before callout mode existed).
    pub fn auth_settings(&self) -> Result<Option<AuthSettings>> {
        Ok(get_json(self.store(), Space::Meta, META_AUTH)?)
    }

    /// The current mode.
    pub fn auth_mode(&self) -> AuthMode {
        match self.auth_settings() {
            Ok(Some(s)) => s.mode,
            Ok(None) => AuthMode::Jwt,
            Err(e) => {
                tracing::error!("cannot read the auth mode: {e}; rendering accounts for JWT mode");
                AuthMode::Jwt
            }
        }
    }

    /// The key that signs the callout's answers for `bucket` of `acct`, at the bucket's current
    /// epoch.
    pub(crate) fn callout_bucket_key(&self, acct: &AccountRecord, bucket: u16) -> Result<Arc<KeyPair>> {
        self.callout_bucket_key_at(acct, bucket, acct.callout_epochs.get(&bucket).copied().unwrap_or(0))
    }

    /// The answer key of `bucket` of `acct` at `epoch`: derived from the account's signing key
    /// (HMAC-SHA256 of its seed over the account, bucket and epoch), so every replica derives
    /// the same and nothing more is stored.
    fn callout_bucket_key_at(&self, acct: &AccountRecord, bucket: u16, epoch: u32) -> Result<Arc<KeyPair>> {
        self.cached_key(&format!("callout-bucket/{}/{bucket}/{epoch}", acct.public_key), || {
            let signing = self.account_signing_key(acct)?;
            let seed = zeroize::Zeroizing::new(signing.seed().map_err(key_err("account signing key"))?);
            let label = format!("tillit callout answer key v1/{}/{bucket}/{epoch}", acct.public_key);
            let raw = zeroize::Zeroizing::new(crypto::hmac_sha256(seed.as_bytes(), label.as_bytes()));
            KeyPair::new_from_raw(nkeys::KeyPairType::Account, *raw).map_err(key_err("callout answer key"))
        })
    }

    /// The public keys the account JWT of `acct` lists in callout mode: each bucket's key at its
    /// current epoch, and at the next. The next is listed before any answer is signed with it:
    /// when a rotation drops the current key, the answers signed with its successor are already
    /// known to every server the account JWT reached, and no connection made meanwhile is
    /// refused for an unknown issuer (a site's server learns of a new account JWT only at its
    /// resolver's next fetch).
    pub(crate) fn callout_bucket_keys(&self, acct: &AccountRecord) -> Result<Vec<String>> {
        let mut keys = Vec::with_capacity(2 * CALLOUT_BUCKETS as usize);
        for b in 0..CALLOUT_BUCKETS {
            let epoch = acct.callout_epochs.get(&b).copied().unwrap_or(0);
            keys.push(self.callout_bucket_key_at(acct, b, epoch)?.public_key());
            keys.push(self.callout_bucket_key_at(acct, b, epoch.wrapping_add(1))?.public_key());
        }
        Ok(keys)
    }

    /// `acct` with the buckets of `user_keys` moved to their next epoch (not signed): once its
    /// JWT is pushed, the connections their old keys admitted are dropped everywhere.
    pub fn rotate_callout_buckets(&self, acct: &AccountRecord, user_keys: &[String]) -> AccountRecord {
        let mut rec = acct.clone();
        for b in callout_buckets(user_keys) {
            let e = rec.callout_epochs.entry(b).or_insert(0);
            *e = e.wrapping_add(1);
        }
        rec
    }

    /// The callout xkey (sealed in the store), for opening requests and sealing answers.
    pub fn callout_xkey(&self) -> Result<nkeys::XKey> {
        let seed = self.vault.get_sealed(Space::Keys, KEYS_CALLOUT_XKEY)?.ok_or_else(|| EstateError::Key("callout xkey".into(), "missing: switch to callout mode first".into()))?;
        let seed = std::str::from_utf8(&seed).map_err(|_| EstateError::Key("callout xkey".into(), "not UTF-8".into()))?;
        nkeys::XKey::from_seed(seed).map_err(key_err("callout xkey"))
    }

    /// Switch the estate to `mode`: the settings (a callout xkey made on the first switch) and
    /// every account JWT re-signed for it, in one batch. Returns the re-signed accounts (push
    /// them). Back to JWT mode is refused while an account has more services than its JWT can
    /// carry scoped keys for.
    pub fn set_auth_mode(&self, mode: AuthMode) -> Result<Vec<AccountRecord>> {
        let now = self.clock.now_unix();
        let mut b = Batch::new();
        let current = self.auth_settings()?;
        // Credentials issued in JWT mode live at most a service lifetime (and an hour of clock
        // skew) after the switch; an estate without tenant accounts has issued none.
        let accounts = self.accounts()?;
        let jwt_creds_until = if accounts.iter().any(|a| a.kind == AccountKind::Tenant) { now + self.config.service_ttl.as_secs() as i64 + 3600 } else { now };
        let settings = match (current, mode) {
            (Some(s), m) if s.mode == m => s,
            (Some(s), m) => AuthSettings { mode: m, since: now, jwt_creds_until: Some(jwt_creds_until), ..s },
            (None, AuthMode::Jwt) => return Ok(vec![]),
            (None, AuthMode::Callout) => {
                let x = nkeys::XKey::new();
                self.vault.put_sealed(&mut b, Space::Keys, KEYS_CALLOUT_XKEY, SecretString::new(x.seed().map_err(key_err("callout xkey"))?).expose().as_bytes())?;
                AuthSettings { mode, xkey_public: x.public_key(), no_bypass_user: KeyPair::new_user().public_key(), since: now, jwt_creds_until: Some(jwt_creds_until) }
            }
        };
        // The accounts this mode renders differently: TILLIT (the callout export) and the tenants.
        let accounts: Vec<AccountRecord> = accounts.into_iter().filter(|a| matches!(a.kind, AccountKind::Tenant | AccountKind::Tillit)).collect();
        if mode == AuthMode::Jwt {
            for acct in accounts.iter().filter(|a| a.kind == AccountKind::Tenant) {
                let n = self.role_count(&acct.name)?;
                if n > MAX_SERVICES_PER_ACCOUNT {
                    return Err(EstateError::Key(
                        format!("account {}", acct.name),
                        format!("{n} services: JWT mode carries at most {MAX_SERVICES_PER_ACCOUNT} per account; stay in callout mode"),
                    ));
                }
            }
        }
        b.put_json(Space::Meta, META_AUTH, &settings)?;
        // Back in JWT mode nats-server checks user JWTs itself again: every revoked identity
        // whose last JWT is still valid goes back into its account's revocations (callout mode
        // stops listing them once no JWT-mode credentials can be left, [`Self::preview_revocation`]).
        let mut accounts = accounts;
        if mode == AuthMode::Jwt {
            let mut revoked: BTreeMap<String, Vec<(String, i64, i64)>> = BTreeMap::new();
            self.visit_identities(|r: IdentityRecord| {
                if r.state == IdentityState::Revoked && r.expires_at > now {
                    revoked.entry(r.account.clone()).or_default().push((r.user_public_key, r.revoked_at.unwrap_or(now), r.expires_at));
                }
                true
            })?;
            for acct in accounts.iter_mut().filter(|a| a.kind == AccountKind::Tenant) {
                for (user, at, until) in revoked.remove(&acct.name).unwrap_or_default() {
                    acct.revocations.entry(user.clone()).or_insert(at);
                    let keep = acct.revoked_until.get(&user).copied().unwrap_or(0).max(until);
                    acct.revoked_until.insert(user, keep);
                }
            }
        }
        // Render with the new settings before they are stored: the same batch holds both.
        let tillit = self.account(TILLIT_ACCOUNT)?;
        let mut out = vec![];
        for acct in accounts {
            let nats = self.render_account_for(&acct, &tillit.public_key, None, Some(&settings))?;
            let signed = self.sign_account(acct, nats)?;
            self.check_jwt_size(&signed)?;
            b.put_json(Space::Accounts, &signed.name, &signed)?;
            out.push(signed);
        }
        self.store().commit(b)?;
        Ok(out)
    }

    /// Decide one connection to tenant account `acct` (the record the request's subject named).
    /// The certificate (from the verified chain) and the nkey (the client's signature over the
    /// server's nonce, and the JWT it presented) must be the same live identity of that account.
    pub fn decide_connection(&self, acct: &AccountRecord, req: &AuthRequest, now: i64) -> std::result::Result<Admitted, Refusal> {
        let internal = |e: EstateError| refuse("internal", format!("tillit could not decide: {e}"));
        let account_name = acct.name.as_str();
        if acct.kind != AccountKind::Tenant || acct.public_key != req.account {
            return Err(refuse("malformed", format!("{account_name} is not a tenant account")));
        }
        // The JWT the client presented: tillit's own, for this account, unexpired.
        let (user, iss) = jwt::decode_any::<Claims<UserNats>>(&req.nats.connect_opts.jwt).map_err(|e| refuse("bad_jwt", format!("the client's user JWT: {e}")))?;
        if user.nats.issuer_account.as_deref().unwrap_or(&iss) != acct.public_key {
            return Err(refuse("bad_jwt", "the client's user JWT is not of this account"));
        }
        if user.exp.is_some_and(|e| e <= now) {
            return Err(refuse("expired", "the client's user JWT has expired: renew"));
        }
        // Possession of the nkey the JWT names: its signature over this connection's nonce.
        let sig = decode_b64(&req.nats.connect_opts.sig).ok_or_else(|| refuse("no_nonce_signature", "the client did not sign the server's nonce"))?;
        if req.nats.client_info.nonce.is_empty() {
            return Err(refuse("no_nonce_signature", "no nonce in the request"));
        }
        let kp = KeyPair::from_public_key(&user.sub).map_err(|_| refuse("bad_jwt", "the user JWT's subject is not a user key"))?;
        kp.verify(req.nats.client_info.nonce.as_bytes(), &sig).map_err(|_| refuse("bad_nonce_signature", "the nonce signature does not verify with the JWT's user key"))?;
        let (cert_id, serial, cert_exp) = verified_leaf(req.nats.client_tls.as_ref())?;
        if cert_exp <= now {
            return Err(refuse("expired", "the client certificate has expired"));
        }
        if let Ok(crate::ocsp::Status::Revoked(_)) = self.revocation_status(&serial) {
            return Err(refuse("revoked", format!("certificate {serial} is revoked")));
        }
        let Some(rec) = self.identity(&user.sub).map_err(internal)? else {
            // tillit's own connections (signed by the account's own signing key): their JWT's
            // permissions, for the control plane's certificate only.
            if iss == acct.signing_key {
                let want = names::spiffe_id(self.trust_domain(), &["tillit", "control-plane", &acct.name.to_lowercase()]);
                if cert_id != want {
                    return Err(refuse("identity_mismatch", format!("certificate {cert_id} presented with the control plane's credentials")));
                }
                return Ok(Admitted {
                    id: cert_id,
                    user_public_key: user.sub,
                    permissions: user.nats.permissions,
                    expires_at: user.exp.unwrap_or(cert_exp).min(cert_exp),
                    tags: vec![],
                });
            }
            return Err(refuse("unknown_identity", format!("no identity has user key {}", user.sub)));
        };
        let sid = rec.service.clone().filter(|_| rec.account == acct.name).ok_or_else(|| refuse("unknown_identity", "that key is not a service of this account"))?;
        let id = sid.spiffe_id(self.trust_domain());
        if cert_id != id {
            return Err(refuse("identity_mismatch", format!("certificate of {cert_id} presented with the nkey of {id}: both must be one identity's")));
        }
        if rec.state == IdentityState::Revoked {
            return Err(refuse("revoked", format!("{id} is revoked")));
        }
        if rec.expires_at <= now {
            return Err(refuse("expired", format!("{id} expired: renew")));
        }
        let role = self.role(&sid).map_err(internal)?.ok_or_else(|| refuse("unknown_identity", format!("{id} has no role")))?;
        // The role's keys (JWT mode issued it) or the account's own key (callout mode did).
        let keys: Vec<&str> = [role.key.as_str(), acct.signing_key.as_str()]
            .into_iter()
            .chain(role.previous.iter().map(|p| p.key.as_str()))
            .chain(rec.role_key.as_deref())
            .chain(rec.prev_role_key.as_deref())
            .collect();
        if !keys.contains(&iss.as_str()) {
            return Err(refuse("bad_jwt", format!("the user JWT of {id} was not signed by its role's key or its account's")));
        }
        let permissions = expand_subject(&role.permissions, &rec.user_public_key);
        Ok(Admitted {
            id,
            user_public_key: rec.user_public_key.clone(),
            permissions,
            expires_at: cert_exp.min(rec.expires_at),
            tags: vec![format!("project:{}", sid.project), format!("service:{}", sid.service)],
        })
    }

    /// The authorization response JWT for `req`: the admitted user's JWT, or the refusal's text
    /// (nats-server logs it). Signed by the tenant account's signing key.
    pub fn callout_response(&self, acct: &AccountRecord, req: &AuthRequest, decision: &std::result::Result<Admitted, Refusal>) -> Result<String> {
        let now = self.clock.now_unix();
        if acct.kind != AccountKind::Tenant || acct.public_key != req.account {
            return Err(EstateError::NoSuchAccount(req.account.clone()));
        }
        let key = self.account_signing_key(acct)?;
        let mut nats = serde_json::json!({ "issuer_account": acct.public_key, "type": "authorization_response", "version": 2 });
        // nats-server reads `jwt` or `error`, never both: only one is set.
        match decision {
            Ok(a) => {
                let bucket = self.callout_bucket_key(acct, callout_bucket(&a.user_public_key))?;
                // The name is the identity's own user key: nats-server makes a callout user's
                // name its user in `Nats-Request-Info` (the per-connection key is forgotten), and
                // the control plane checks that user against the signer of each request. A SPIFFE
                // id there would refuse every renewal and secret read of a callout-mode service.
                nats["jwt"] = self.sign_user_with(&bucket, acct, &req.nats.user_nkey, &a.user_public_key, a.permissions.clone(), a.expires_at, a.tags.clone())?.into()
            }
            Err(r) => nats["error"] = format!("tillit: {}", r.message).into(),
        }
        let claims = Claims {
            jti: jwt::new_jti()?,
            iat: now,
            iss: key.public_key(),
            sub: req.nats.user_nkey.clone(),
            name: None,
            aud: Some(req.nats.server_id.id.clone()),
            exp: Some(now + RESPONSE_TTL),
            nbf: None,
            nats,
        };
        Ok(jwt::encode(&claims, &key)?)
    }
}

/// A role's permissions with `{{subject()}}` (the user key, in the inbox rule) filled in: in
/// callout mode the user JWT is signed by a plain key, so nats-server expands no template.
fn expand_subject(p: &UserPermissions, user_key: &str) -> UserPermissions {
    let fill = |v: &Vec<String>| v.iter().map(|s| s.replace("{{subject()}}", user_key)).collect::<Vec<_>>();
    let mut out = p.clone();
    out.publish.allow = fill(&p.publish.allow);
    out.publish.deny = fill(&p.publish.deny);
    out.subscribe.allow = fill(&p.subscribe.allow);
    out.subscribe.deny = fill(&p.subscribe.deny);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In callout mode (past the window of JWT-mode credentials) the account JWT lists no role
    /// keys: a new service is stored without signing the account again. In JWT mode its key
    /// joins the account JWT.
    #[test]
    fn a_new_service_in_callout_mode_leaves_the_account_jwt_as_it_was() {
        use crate::clock::ManualClock;
        use crate::names::ServiceId;
        let clock = Arc::new(ManualClock::new(1_900_000_000));
        let (_d, e, _store, _master) = super::super::tests::new_estate(clock.clone());
        e.set_auth_mode(AuthMode::Callout).unwrap();
        let (acct, _, _) = e.ensure_role_locked(&ServiceId::parse("acme/shop/prod/orders").unwrap()).unwrap();
        clock.advance(10);
        let payments = ServiceId::parse("acme/shop/prod/payments").unwrap();
        let (after, role, created) = e.ensure_role_locked(&payments).unwrap();
        assert!(created);
        assert_eq!(e.role(&payments).unwrap().map(|r| r.key), Some(role.key.clone()), "the role is stored");
        assert_eq!((after.iat, &after.jwt), (acct.iat, &acct.jwt), "the account was signed again for a new service");
        assert_eq!(e.account(&acct.name).unwrap().jwt, acct.jwt);

        e.set_auth_mode(AuthMode::Jwt).unwrap();
        clock.advance(10);
        let before = e.account(&acct.name).unwrap();
        let (after, role, _) = e.ensure_role_locked(&ServiceId::parse("acme/shop/prod/ledger").unwrap()).unwrap();
        assert!(after.iat > before.iat && after.jwt.len() > before.jwt.len(), "JWT mode signs the account with the new key");
        let (claims, _) = jwt::decode_any::<Claims<serde_json::Value>>(&after.jwt).unwrap();
        assert!(claims.nats["signing_keys"].as_array().unwrap().iter().any(|k| k["key"] == role.key.as_str()), "{}", claims.nats);
        assert_eq!(e.account(&acct.name).unwrap().jwt, after.jwt, "and stores it");
    }

    /// Callout mode, past the window of JWT-mode credentials: a revocation rotates the answer
    /// keys and leaves the account's revocations (nothing checks them) as they were, so the
    /// account JWT does not grow with every revoked identity. Back in JWT mode, every revoked
    /// identity whose JWT is still valid is listed again.
    #[test]
    fn callout_revocations_leave_the_account_jwt_small_and_jwt_mode_lists_them_again() {
        use crate::clock::ManualClock;
        let clock = Arc::new(ManualClock::new(1_900_000_000));
        let (_d, e, store, _master) = super::super::tests::new_estate(clock.clone());
        e.set_auth_mode(AuthMode::Callout).unwrap();
        let (acct, _) = e.ensure_tenant_account_locked("acme", "prod").unwrap();
        let mut targets = vec![];
        for i in 0..200 {
            let user = KeyPair::new_user().public_key();
            let mut r = IdentityRecord::admin(&format!("spiffe://t/acme/shop/prod/s{i}"), &format!("s{i}"), &user, &format!("{i:032x}"), e.clock().now_unix(), e.clock().now_unix() + 3400 + i as i64);
            r.kind = IdentityKind::Service;
            r.account = acct.name.clone();
            r.admin_role = None;
            targets.push(r);
        }
        let mut acct = acct;
        let epochs_before = acct.callout_epochs.clone();
        for t in &targets {
            clock.advance(1);
            let next = e.preview_revocation(&acct, std::slice::from_ref(&t.user_public_key), t.expires_at).unwrap();
            let (b, _) = e.revocation_batch(std::slice::from_ref(t), &next, e.clock().now_unix(), None).unwrap();
            store.commit(b).unwrap();
            acct = next;
        }
        assert!(acct.revocations.is_empty(), "callout mode lists no revocations: {}", acct.revocations.len());
        assert_ne!(acct.callout_epochs, epochs_before, "the answer keys were rotated instead");
        let first = e.account(&acct.name).unwrap();
        assert_eq!(first.jwt.len(), acct.jwt.len());

        // Back in JWT mode (nats-server checks user JWTs itself): every still-valid revoked JWT
        // is listed; one whose JWT expired is not.
        clock.advance(3350); // JWTs s151..s199 are still valid
        let out = e.set_auth_mode(AuthMode::Jwt).unwrap();
        let back = out.iter().find(|a| a.name == acct.name).expect("the tenant account is re-signed");
        let listed: Vec<&String> = back.revocations.keys().collect();
        assert_eq!(listed.len(), 49, "the revoked identities whose JWT is still valid");
        assert!(targets.iter().rev().take(40).all(|t| back.revocations.contains_key(&t.user_public_key)), "the newest are listed");
        assert!(!back.revocations.contains_key(&targets[0].user_public_key), "an expired JWT needs no revocation");
        let (claims, _) = jwt::decode_any::<Claims<serde_json::Value>>(&back.jwt).unwrap();
        assert_eq!(claims.nats["revocations"].as_object().map(|m| m.len()), Some(listed.len()), "and the JWT carries them");
    }

    #[test]
    fn answer_keys_are_derived_per_bucket_listed_in_the_account_and_rotate_alone() {
        use crate::clock::ManualClock;
        let clock = Arc::new(ManualClock::new(1_900_000_000));
        let (d, e, store, master) = super::super::tests::new_estate(clock.clone());
        e.set_auth_mode(AuthMode::Callout).unwrap();
        let (acct, _) = e.ensure_tenant_account_locked("acme", "prod").unwrap();
        let current = |a: &AccountRecord| (0..CALLOUT_BUCKETS).map(|b| e.callout_bucket_key(a, b).unwrap().public_key()).collect::<Vec<_>>();
        let keys = current(&acct);
        let announced = e.callout_bucket_keys(&acct).unwrap();
        assert_eq!(announced.len(), 2 * CALLOUT_BUCKETS as usize, "each bucket's key and its successor");
        assert_eq!(announced.iter().collect::<std::collections::BTreeSet<_>>().len(), announced.len(), "one key per bucket and epoch");
        assert!(keys.iter().all(|k| announced.contains(k)));
        assert!(announced.iter().all(|k| k.starts_with('A') && *k != acct.signing_key && *k != acct.public_key));
        // The account JWT lists every one (nats-server takes answers signed by them).
        let (claims, _) = jwt::decode_any::<Claims<serde_json::Value>>(&acct.jwt).unwrap();
        let listed = claims.nats["signing_keys"].to_string();
        assert!(announced.iter().all(|k| listed.contains(k.as_str())), "{listed}");
        // Derived, not stored: another process over the same store derives the same keys.
        let again = Estate::open_with(crate::layout::DataDir::new(d.path()), e.config.clone(), store, master, clock).unwrap();
        assert_eq!(again.callout_bucket_keys(&acct).unwrap(), announced);
        // Rotating for one identity replaces its bucket's key and no other, with the successor
        // the JWT already listed; the old key leaves the JWT and the next successor joins it.
        let user = KeyPair::new_user().public_key();
        let b = callout_bucket(&user) as usize;
        let (rotated, _batch) = e.callout_rotation(&acct, std::slice::from_ref(&user)).unwrap();
        let after = current(&rotated);
        for (i, (k0, k1)) in keys.iter().zip(&after).enumerate() {
            assert_eq!(k0 == k1, i != b, "bucket {i}");
        }
        assert!(announced.contains(&after[b]), "the new key was announced before it signed");
        let (claims, _) = jwt::decode_any::<Claims<serde_json::Value>>(&rotated.jwt).unwrap();
        let listed = claims.nats["signing_keys"].to_string();
        assert!(!listed.contains(keys[b].as_str()) && listed.contains(after[b].as_str()));
        let successors = e.callout_bucket_keys(&rotated).unwrap();
        assert!(successors.iter().all(|k| listed.contains(k.as_str())) && !announced.contains(&successors[2 * b + 1]));
        // JWT mode lists none of them.
        e.set_auth_mode(AuthMode::Jwt).unwrap();
        let acct = e.account(&acct.name).unwrap();
        let (claims, _) = jwt::decode_any::<Claims<serde_json::Value>>(&acct.jwt).unwrap();
        assert!(!claims.nats["signing_keys"].to_string().contains(after[(b + 1) % keys.len()].as_str()));
    }

    #[test]
    fn templates_are_filled_with_the_identity_key() {
        let p = UserPermissions::new(vec!["a.>".into()], vec!["_INBOX.{{subject()}}.>".into()]);
        let e = expand_subject(&p, "UABC");
        assert_eq!(e.subscribe.allow, vec!["_INBOX.UABC.>".to_string()]);
        assert_eq!(e.publish.allow, vec!["a.>".to_string()]);
    }

    #[test]
    fn requests_that_are_not_nats_server_authorization_requests_are_refused() {
        let now = 1_900_000_000;
        let server = KeyPair::new_server();
        let acct = KeyPair::new_account();
        let user = KeyPair::new_user();
        let mk = |kind: &str, aud: &str, sub: &str, signer: &KeyPair| {
            let c = Claims {
                jti: "j".into(),
                iat: now,
                iss: signer.public_key(),
                sub: sub.into(),
                name: None,
                aud: Some(aud.into()),
                exp: Some(now + 2),
                nbf: None,
                nats: serde_json::json!({"type": kind, "user_nkey": user.public_key(), "server_id": {"id": server.public_key(), "name": "n"}}),
            };
            jwt::encode(&c, signer).unwrap()
        };
        let ok = mk("authorization_request", AUTH_REQUEST_AUDIENCE, &acct.public_key(), &server);
        let r = AuthRequest::parse(ok.as_bytes(), &acct.public_key(), now).unwrap();
        assert_eq!(r.nats.user_nkey, user.public_key());
        assert_eq!(r.server_key, server.public_key());
        // Asked for one account on another's subject.
        assert_eq!(AuthRequest::parse(ok.as_bytes(), &KeyPair::new_account().public_key(), now).unwrap_err().reason, "malformed");
        // Not signed by a server key.
        let by_account = mk("authorization_request", AUTH_REQUEST_AUDIENCE, &acct.public_key(), &acct);
        assert!(AuthRequest::parse(by_account.as_bytes(), &acct.public_key(), now).is_err());
        // Another claim type or audience.
        assert!(AuthRequest::parse(mk("user", AUTH_REQUEST_AUDIENCE, &acct.public_key(), &server).as_bytes(), &acct.public_key(), now).is_err());
        assert!(AuthRequest::parse(mk("authorization_request", "x", &acct.public_key(), &server).as_bytes(), &acct.public_key(), now).is_err());
        // Tampered.
        let mut t = ok.clone().into_bytes();
        let i = t.len() - 3;
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        assert!(AuthRequest::parse(&t, &acct.public_key(), now).is_err());
        // Expired long ago; oversized; garbage.
        assert!(AuthRequest::parse(ok.as_bytes(), &acct.public_key(), now + 60).is_err());
        assert!(AuthRequest::parse(&vec![b'a'; MAX_AUTH_REQUEST_BYTES + 1], &acct.public_key(), now).is_err());
        assert!(AuthRequest::parse(b"\xff\xfe", &acct.public_key(), now).is_err());
    }
}

//! Join tokens: their records, minting them with their bootstrap users and certificates, and
//! the BOOTSTRAP account's revocations of used tokens' bootstrap users.

use super::*;
use crate::names::ServiceId;
use crate::token::{self, JoinToken};

/// Most tokens one `token create` may mint (a token is about 4 KiB; the reply must stay well
/// under nats-server's 1 MiB max_payload). The CLI asks in chunks for larger counts.
pub const MAX_TOKENS_PER_REQUEST: u32 = 200;
/// Longest a join token may live.
pub const MAX_TOKEN_TTL_SECS: i64 = 7 * 86_400;

/// Most live bootstrap revocations kept in the BOOTSTRAP account JWT (~75 bytes each; every
/// push re-sends the whole JWT, and nats-server re-checks the account's connections). Past it,
/// the oldest burned tokens' bootstrap users are left to expire with their tokens: the tokens
/// themselves are already refused, and those users may only request enrollment.
pub const MAX_BOOTSTRAP_REVOCATIONS: usize = 2_000;

/// Keep in `live` (user → (revoked at, expiry)) every revocation made after `due_by` and the
/// newest [`MAX_BOOTSTRAP_REVOCATIONS`] of those made at or before it; drop the rest. Those are
/// the ones [`Estate::sign_bootstrap`] would leave out of the JWT anyway. Ties on the second
/// keep the greater user key, so the same records always give the same set.
pub fn bound_revocations(live: &mut BTreeMap<String, (i64, i64)>, due_by: i64) {
    let mut due: Vec<(i64, &str)> = live.iter().filter(|(_, (at, _))| *at <= due_by).map(|(u, (at, _))| (*at, u.as_str())).collect();
    if due.len() <= MAX_BOOTSTRAP_REVOCATIONS {
        return;
    }
    let cut = due.len() - MAX_BOOTSTRAP_REVOCATIONS;
    due.select_nth_unstable(cut);
    let drop: Vec<String> = due[..cut].iter().map(|(_, u)| u.to_string()).collect();
    for u in drop {
        live.remove(&u);
    }
}

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
    /// For a new admin's token: the role and tenants its identity gets (`tillit admin add`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_role: Option<crate::proto::AdminRole>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_tenants: Vec<String>,
}

impl Estate {
    /// Mint `count` join tokens for `sid`, valid for `ttl_secs`, with the batch of their records
    /// (the caller commits it with its audit record). The printable tokens exist only in the
    /// return value. A new admin's token carries the `admin` access its identity gets.
    pub fn create_tokens(
        &self,
        sid: &ServiceId,
        ttl_secs: i64,
        count: u32,
        created_by: &str,
        admin: Option<&crate::policy::roles::Access>,
    ) -> Result<(Vec<JoinToken>, Batch)> {
        let now = self.clock.now_unix();
        let expires_at = now + ttl_secs;
        let bootstrap = self.account(BOOTSTRAP_ACCOUNT)?;
        let boot_key = self.account_signing_key(&bootstrap)?;
        let bundle = self.ca_bundle_pem();
        let ca_ders: Vec<String> = crate::pem::certs(&bundle)
            .map_err(|e| EstateError::Key("CA bundle".into(), e.to_string()))?
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
            let inbox = crate::subjects::inbox_prefix(&user.public_key());
            let perms = UserPermissions::new(vec![crate::proto::Enroll::SUBJECT.into()], vec![format!("{inbox}.>")]);
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
                admin_role: admin.map(|a| a.role),
                admin_tenants: admin.map(|a| a.tenants.clone()).unwrap_or_default(),
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

    /// The bootstrap users that must stay revoked: those of used tokens whose bootstrap JWTs
    /// have not expired yet (user → (revoked at, bootstrap JWT expiry)). Derived from the token
    /// records, so it survives restarts without being stored twice.
    ///
    /// Held within [`bound_revocations`], also while the tokens are read: every user of a token
    /// used after `due_by` (still in its reply grace), and of those used at or before it only the
    /// newest [`MAX_BOOTSTRAP_REVOCATIONS`], the most the BOOTSTRAP account JWT ever carries. An
    /// estate that enrolled 100,000 services within a token lifetime held all of their users
    /// here, twice.
    pub fn live_bootstrap_revocations(&self, due_by: i64) -> Result<BTreeMap<String, (i64, i64)>> {
        let now = self.clock.now_unix();
        let mut out = BTreeMap::new();
        // How many of `out` were made at or before `due_by`: cut back to the bound whenever
        // they reach twice it, so the pass never holds more.
        let mut due = 0usize;
        self.visit_json(Space::Tokens, "", |t: TokenRecord| {
            if t.state == TokenState::Used && t.expires_at > now {
                let at = t.used_at.unwrap_or(now);
                due += usize::from(at <= due_by);
                out.insert(t.bootstrap_user, (at, t.expires_at));
                if due >= 2 * MAX_BOOTSTRAP_REVOCATIONS {
                    bound_revocations(&mut out, due_by);
                    due = MAX_BOOTSTRAP_REVOCATIONS;
                }
            }
            true
        })?;
        bound_revocations(&mut out, due_by);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::estate::tests::new_estate;

    /// However many tokens were used within their lifetime, what is held is every revocation
    /// still in its grace and the newest [`MAX_BOOTSTRAP_REVOCATIONS`] of the others: the ones
    /// the BOOTSTRAP account JWT carries. Unused and expired tokens are not held.
    #[test]
    fn live_bootstrap_revocations_hold_the_young_and_the_newest_the_jwt_carries() {
        let now = 1_780_000_000;
        let clock = Arc::new(ManualClock::new(now));
        let (_d, e, store, _m) = new_estate(clock);
        let sid = ServiceId::parse("acme/shop/prod/orders").unwrap();
        let (tokens, b) = e.create_tokens(&sid, 900, 1, "test", None).unwrap();
        store.commit(b).unwrap();
        let template = e.token(&tokens[0].id).unwrap().unwrap();
        let due_by = now - 3;
        let (old, young) = (MAX_BOOTSTRAP_REVOCATIONS + 2_300, 300);
        let mut b = Batch::new();
        let mut put = |i: usize, state: TokenState, used_at: i64, expires_at: i64| {
            let mut t = template.clone();
            t.id = format!("tok-{i:05}");
            t.bootstrap_user = format!("U{i:05}");
            t.state = state;
            t.used_at = Some(used_at);
            t.expires_at = expires_at;
            b.put_json(Space::Tokens, &t.id, &t).unwrap();
        };
        // Used before `due_by`, one a second: the newest are the highest numbers.
        for i in 0..old {
            put(i, TokenState::Used, due_by - (old - i) as i64, now + 600);
        }
        for i in old..old + young {
            put(i, TokenState::Used, now, now + 600);
        }
        put(90_000, TokenState::Unused, now, now + 600);
        put(90_001, TokenState::Used, now - 10, now - 1);
        store.commit(b).unwrap();

        let live = e.live_bootstrap_revocations(due_by).unwrap();
        assert_eq!(live.len(), MAX_BOOTSTRAP_REVOCATIONS + young);
        for i in 0..old + young {
            assert_eq!(live.contains_key(&format!("U{i:05}")), i >= old - MAX_BOOTSTRAP_REVOCATIONS, "token {i}");
        }
        assert!(!live.contains_key("U90000") && !live.contains_key("U90001"), "unused and expired tokens are not revocations");

        // The same bound on a map that grew by burns keeps the same set.
        let mut grown = live.clone();
        grown.insert("UOLDEST".into(), (due_by - 100_000, now + 600));
        bound_revocations(&mut grown, due_by);
        assert_eq!(grown, live);
        // And a later `due_by` lets the young ones compete with the rest.
        let mut later = live.clone();
        bound_revocations(&mut later, now);
        assert_eq!(later.len(), MAX_BOOTSTRAP_REVOCATIONS);
        assert!((old..old + young).all(|i| later.contains_key(&format!("U{i:05}"))), "the newest are kept");
    }
}

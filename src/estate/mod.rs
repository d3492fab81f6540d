//! The trust roots of one NATS estate and the operations on them.
//!
//! An [`Estate`] is a data dir opened with its master key: the operator (identity key + signing
//! key), the SYS and TILLIT accounts, tenant accounts (one per tenant + environment, created on
//! demand), the internal CA, and the identity records. Every private key lives sealed in the
//! store and is opened only to sign.
//!
//! Ordering rule for account JWTs: nats-server's resolver accepts an *older* account JWT, so
//! account updates are serialised here ([`Estate::account_lock`]) and each new account JWT gets an
//! `iat` strictly greater than the previous one for that account.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::{self, MasterKey, SecretString};
use crate::identity::{IdentityFiles, IdentityInfo, IdentityKind, IDENTITY_FORMAT};
use crate::issuer::jwt::{
    self, AccountLimits, AccountNats, Claims, Export, Import, OperatorNats, SigningKeyEntry, UserNats, UserPermissions,
};
use std::collections::BTreeMap;
use crate::issuer::x509::{self, CertAuthority};
use crate::layout::DataDir;
use crate::names;
use crate::store::{get_json, Batch, SledStore, Space, Store, StoreError, Vault};
use crate::subjects;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Mutex;

pub mod ca;
pub mod services;
pub mod sites;
pub use services::{RoleRecord, TokenRecord, TokenState};

/// Name of the system account.
pub const SYS_ACCOUNT: &str = "SYS";
/// Name of the control plane's own account.
pub const TILLIT_ACCOUNT: &str = "TILLIT";
/// Name of the account join-token bootstrap users live in (may only request enrollment).
pub const BOOTSTRAP_ACCOUNT: &str = "BOOTSTRAP";
const MASTER_CHECK: &[u8] = b"tillit master key check v1";
const ESTATE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum EstateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error("the master key does not open this data dir ({0}); use the master.key that `tillit init` wrote for it, or the matching TILLIT_MASTER_KEY")]
    WrongMasterKey(String),
    #[error("data dir {dir} is not initialised (no trust roots in its store); run `tillit init --data-dir {dir} …` first")]
    NotInitialised { dir: String },
    #[error("data dir {dir} belongs to trust domain {store:?} but its config says {config:?}; restore the matching tillit.toml or point --data-dir at the right estate")]
    TrustDomainMismatch { dir: String, store: String, config: String },
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("JWT: {0}")]
    Jwt(#[from] jwt::JwtError),
    #[error("X.509: {0}")]
    X509(#[from] x509::X509Error),
    #[error("key material for {0} is damaged: {1}")]
    Key(String, String),
    #[error("{0}")]
    Name(#[from] names::NameError),
    #[error("account {0} does not exist")]
    NoSuchAccount(String),
    #[error("{0}")]
    Limit(String),
}

pub type Result<T, E = EstateError> = std::result::Result<T, E>;

/// Estate-wide public facts (`meta/estate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EstateMeta {
    pub format: u32,
    pub trust_domain: String,
    pub created_at: i64,
    pub operator_public_key: String,
    pub operator_signing_key: String,
    pub operator_jwt: String,
    pub ca_cert_pem: String,
    pub ca_fingerprint: String,
    /// Keys that sign envelopes, published as `trust.jwks`.
    #[serde(default)]
    pub envelope_keys: Vec<EnvelopeKey>,
    /// The control plane's public xkey (curve25519): what admins seal secret values to.
    #[serde(default)]
    pub xkey_public: Option<String>,
}

/// An envelope signing key (Ed25519), by its public nkey.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeKey {
    pub kid: String,
    pub public_key: String,
    /// `current` signs; `next` is published ahead of a switch; `previous` still verifies until
    /// `retire_at`; `retired` is kept for the record only.
    pub state: String,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
}

/// What an account is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    System,
    Tillit,
    Bootstrap,
    Tenant,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::System => "system",
            AccountKind::Tillit => "tillit",
            AccountKind::Bootstrap => "bootstrap",
            AccountKind::Tenant => "tenant",
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
}

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
    /// For site agents: their site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// For services: the scoped key that signed the current user JWT (a permission change
    /// retires the old key early once every instance moved off it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_key: Option<String>,
    /// The scoped key of the JWT before that one: a renewal whose reply was lost leaves the
    /// instance holding it, so it stays usable until the next renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_role_key: Option<String>,
}

impl IdentityRecord {
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
            site: None,
            role_key: None,
            prev_role_key: None,
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

fn key_err(what: &str) -> impl FnOnce(nkeys::error::Error) -> EstateError + '_ {
    move |e| EstateError::Key(what.to_string(), e.to_string())
}

fn seed_of(kp: &KeyPair, what: &str) -> Result<SecretString> {
    kp.seed().map(SecretString::new).map_err(key_err(what))
}

fn keys_account(public_key: &str) -> String {
    format!("account/{public_key}")
}

fn keys_account_signing(public_key: &str) -> String {
    format!("account-signing/{public_key}")
}

pub(crate) fn keys_envelope(public_key: &str) -> String {
    format!("envelope/{public_key}")
}

pub(crate) fn keys_scoped(public_key: &str) -> String {
    format!("scoped/{public_key}")
}

/// A new account: identity key and signing key, both sealed into `b`.
fn new_account_keys(vault: &Vault, b: &mut Batch, name: &str) -> Result<(KeyPair, KeyPair)> {
    let id = KeyPair::new_account();
    let signing = KeyPair::new_account();
    vault.put_sealed(b, Space::Keys, &keys_account(&id.public_key()), seed_of(&id, name)?.expose().as_bytes())?;
    vault.put_sealed(
        b,
        Space::Keys,
        &keys_account_signing(&signing.public_key()),
        seed_of(&signing, name)?.expose().as_bytes(),
    )?;
    Ok((id, signing))
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

/// The OCSP and CRL URLs certificates carry.
fn revocation_urls(config: &Config) -> x509::RevocationUrls {
    x509::RevocationUrls {
        ocsp: format!("{}/ocsp", config.http_public_url),
        crl: format!("{}/crl", config.http_public_url),
    }
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

// === impl Estate ===

/// An opened estate.
pub struct Estate {
    pub dir: DataDir,
    pub config: Config,
    pub meta: EstateMeta,
    vault: Vault,
    clock: SharedClock,
    cas: std::sync::RwLock<ca::CaSet>,
    operator_signing: KeyPair,
    account_lock: Mutex<()>,
    keys: std::sync::Mutex<std::collections::HashMap<String, Arc<KeyPair>>>,
    /// The envelope keys as they are now (rotation changes them at run time).
    envelope_keys: std::sync::RwLock<Vec<EnvelopeKey>>,
}

impl std::fmt::Debug for Estate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Estate").field("trust_domain", &self.meta.trust_domain).finish_non_exhaustive()
    }
}

impl Estate {
    /// Create the trust roots of a new estate in `store` (an empty store), returning the opened
    /// estate. Files are the caller's business ([`crate::init`]).
    pub fn create(
        dir: DataDir,
        config: Config,
        store: Arc<dyn Store>,
        master: MasterKey,
        clock: SharedClock,
    ) -> Result<Estate> {
        let now = clock.now_unix();
        let vault = Vault::new(store, master);
        let operator = KeyPair::new_operator();
        let operator_signing = KeyPair::new_operator();
        let mut b = Batch::new();
        let sys = new_account_keys(&vault, &mut b, SYS_ACCOUNT)?;
        let tillit = new_account_keys(&vault, &mut b, TILLIT_ACCOUNT)?;
        let bootstrap = new_account_keys(&vault, &mut b, BOOTSTRAP_ACCOUNT)?;
        let envelope = KeyPair::new_account();
        let xkey = nkeys::XKey::new();
        vault.put_sealed(
            &mut b,
            Space::Keys,
            services::KEYS_XKEY,
            SecretString::new(xkey.seed().map_err(key_err("xkey"))?).expose().as_bytes(),
        )?;
        vault.put_sealed(
            &mut b,
            Space::Keys,
            &keys_envelope(&envelope.public_key()),
            seed_of(&envelope, "envelope key")?.expose().as_bytes(),
        )?;

        let ca_not_after = now + config.ca_ttl.as_secs() as i64;
        let ca = CertAuthority::generate(&config.trust_domain, now, ca_not_after)?;

        let op_claims = Claims {
            jti: jwt::new_jti()?,
            iat: now,
            iss: operator.public_key(),
            sub: operator.public_key(),
            name: Some(format!("tillit {}", config.trust_domain)),
            aud: None,
            exp: None,
            nbf: None,
            nats: OperatorNats {
                kind: "operator".into(),
                version: 2,
                signing_keys: vec![operator_signing.public_key()],
                system_account: sys.0.public_key(),
                strict_signing_key_usage: true,
            },
        };
        let operator_jwt = jwt::encode(&op_claims, &operator)?;
        let meta = EstateMeta {
            format: ESTATE_FORMAT,
            trust_domain: config.trust_domain.clone(),
            created_at: now,
            operator_public_key: operator.public_key(),
            operator_signing_key: operator_signing.public_key(),
            operator_jwt,
            ca_fingerprint: x509::fingerprint(&ca.cert_pem)?,
            ca_cert_pem: ca.cert_pem.clone(),
            envelope_keys: vec![EnvelopeKey {
                kid: envelope.public_key(),
                public_key: envelope.public_key(),
                state: "current".into(),
                created_at: now,
                retire_at: None,
            }],
            xkey_public: Some(xkey.public_key()),
        };

        vault.put_sealed(&mut b, Space::Meta, "master_check", MASTER_CHECK)?;
        b.put_json(Space::Meta, "estate", &meta)?;
        vault.put_sealed(&mut b, Space::Keys, "operator", seed_of(&operator, "operator")?.expose().as_bytes())?;
        vault.put_sealed(
            &mut b,
            Space::Keys,
            "operator-signing",
            seed_of(&operator_signing, "operator signing key")?.expose().as_bytes(),
        )?;
        vault.put_sealed(&mut b, Space::Keys, "ca", ca.key_pem.expose().as_bytes())?;

        let cas = std::sync::RwLock::new(ca::CaSet::initial(
            &meta,
            CertAuthority::load(&ca.cert_pem, &ca.key_pem)?.with_revocation_urls(revocation_urls(&config)),
        ));
        let estate = Estate {
            cas,
            dir,
            config,
            meta,
            vault,
            clock,
            operator_signing,
            account_lock: Mutex::new(()),
            keys: Default::default(),
            envelope_keys: std::sync::RwLock::new(vec![]),
        };
        if let Ok(mut k) = estate.envelope_keys.write() {
            *k = estate.meta.envelope_keys.clone();
        }
        // TILLIT first: the others import from it.
        for (name, kind, (id, signing)) in [
            (TILLIT_ACCOUNT, AccountKind::Tillit, &tillit),
            (SYS_ACCOUNT, AccountKind::System, &sys),
            (BOOTSTRAP_ACCOUNT, AccountKind::Bootstrap, &bootstrap),
        ] {
            let draft = AccountRecord {
                name: name.into(),
                kind,
                public_key: id.public_key(),
                signing_key: signing.public_key(),
                jwt: String::new(),
                iat: 0,
                created_at: now,
                tenant: None,
                env: None,
                revocations: BTreeMap::new(),
                revoked_until: BTreeMap::new(),
            };
            let tillit_pub = tillit.0.public_key();
            let nats = estate.render_account(&draft, &tillit_pub)?;
            let rec = estate.sign_account(draft, nats)?;
            b.put_json(Space::Accounts, name, &rec)?;
        }
        estate.vault.store().commit(b)?;
        Ok(estate)
    }

    /// Open an existing estate: its config, master key and store, each checked.
    pub fn open(dir: DataDir, clock: SharedClock) -> Result<Estate> {
        let config = Config::load(&dir.config_file())?;
        let master = MasterKey::load(dir.root())?;
        if !dir.store().is_dir() {
            return Err(EstateError::NotInitialised { dir: dir.root().display().to_string() });
        }
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.store())?);
        Self::open_with(dir, config, store, master, clock)
    }

    /// Open an estate from parts (tests, other backends).
    pub fn open_with(
        dir: DataDir,
        config: Config,
        store: Arc<dyn Store>,
        master: MasterKey,
        clock: SharedClock,
    ) -> Result<Estate> {
        let vault = Vault::new(store, master);
        let not_init = || EstateError::NotInitialised { dir: dir.root().display().to_string() };
        match vault.get_sealed(Space::Meta, "master_check") {
            Ok(Some(v)) if crypto::ct_eq(&v, MASTER_CHECK) => {}
            Ok(Some(_)) | Err(StoreError::Crypto(_)) => {
                return Err(EstateError::WrongMasterKey(dir.root().display().to_string()))
            }
            Ok(None) => return Err(not_init()),
            Err(e) => return Err(e.into()),
        }
        let meta: EstateMeta = get_json(vault.store(), Space::Meta, "estate")?.ok_or_else(not_init)?;
        if meta.trust_domain != config.trust_domain {
            return Err(EstateError::TrustDomainMismatch {
                dir: dir.root().display().to_string(),
                store: meta.trust_domain,
                config: config.trust_domain,
            });
        }
        let signing_seed = vault.get_sealed(Space::Keys, "operator-signing")?.ok_or_else(not_init)?;
        let operator_signing = KeyPair::from_seed(std::str::from_utf8(&signing_seed).unwrap_or(""))
            .map_err(key_err("operator signing key"))?;
        if vault.get_sealed(Space::Keys, "ca")?.is_none() {
            return Err(not_init());
        }
        let cas = std::sync::RwLock::new(Self::load_cas(&vault, &meta, &config)?);
        let envelope_keys: Vec<EnvelopeKey> =
            get_json(vault.store(), Space::Meta, "envelope_keys")?.unwrap_or_else(|| meta.envelope_keys.clone());
        Ok(Estate {
            dir,
            config,
            meta,
            vault,
            clock,
            cas,
            operator_signing,
            account_lock: Mutex::new(()),
            keys: Default::default(),
            envelope_keys: std::sync::RwLock::new(envelope_keys),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.meta.trust_domain
    }
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }
    pub fn store(&self) -> &dyn Store {
        self.vault.store()
    }
    /// A key derived from the master key for `label`.
    pub fn vault_key(&self, label: &str) -> crate::crypto::MacKey {
        self.vault.derive_key(label)
    }
    /// The key that authenticates audit records ([`crate::audit::AUDIT_KEY_LABEL`]).
    pub fn audit_key(&self) -> crate::crypto::MacKey {
        self.vault.derive_key(crate::audit::AUDIT_KEY_LABEL)
    }
    /// The store, shared (for the group committer).
    pub fn store_arc(&self) -> Arc<dyn Store> {
        self.vault.store_arc()
    }
    /// Held while an account JWT is re-signed and pushed, so updates never interleave.
    pub fn account_lock(&self) -> &Mutex<()> {
        &self.account_lock
    }

    /// The `nats` section of an account as its records say it is now: base limits, exports or
    /// imports by kind, its signing key, the scoped keys of its roles, its revocations.
    pub(crate) fn render_account(&self, rec: &AccountRecord, tillit_pub: &str) -> Result<AccountNats> {
        self.render_account_with(rec, tillit_pub, None)
    }

    /// [`Self::render_account`], with one role as it is about to be (not yet stored).
    pub(crate) fn render_account_with(&self, rec: &AccountRecord, tillit_pub: &str, role: Option<&RoleRecord>) -> Result<AccountNats> {
        let mut n = match rec.kind {
            AccountKind::System => {
                let mut n = AccountNats::new(AccountLimits::unlimited_without_jetstream());
                n.description = Some("nats-server system account".into());
                n
            }
            AccountKind::Tillit => {
                let mut n = AccountNats::new(AccountLimits::unlimited_with_jetstream());
                n.description = Some("tillit control plane and admins".into());
                n.exports = vec![
                    export("tillit service api", subjects::SVC_EXPORT, "service", "requests services make of the control plane"),
                    export("tillit enrollment", subjects::ENROLL, "service", "enrollment with a join token"),
                    export("tillit events", subjects::EVENTS_EXPORT, "stream", "signed event envelopes"),
                    export("tillit notifications", subjects::NOTIFY_EXPORT, "stream", "notifications to the instances of one service"),
                ];
                n
            }
            AccountKind::Bootstrap => {
                let mut limits = AccountLimits::unlimited_without_jetstream();
                limits.wildcards = false;
                let mut n = AccountNats::new(limits);
                n.description = Some("join-token bootstrap users: enrollment only".into());
                n.imports = vec![Import {
                    name: "tillit enrollment".into(),
                    subject: subjects::ENROLL.into(),
                    account: tillit_pub.into(),
                    kind: "service".into(),
                    local_subject: None,
                    share: true,
                }];
                n
            }
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
                n
            }
        };
        n.signing_keys = vec![SigningKeyEntry::Plain(rec.signing_key.clone())];
        if rec.kind == AccountKind::Tillit {
            if let Some(agents) = self.agent_role()? {
                n.signing_keys.push(SigningKeyEntry::Scoped(Box::new(agents.scope())));
            }
        }
        if rec.kind == AccountKind::Tenant {
            let mut replaced = false;
            for stored in self.roles_of(&rec.name)? {
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
        }
        n.revocations = rec.revocations.clone();
        Ok(n)
    }

    /// Sign `rec` with `nats` as its new JWT; `iat` strictly above the previous one.
    pub(crate) fn sign_account(&self, mut rec: AccountRecord, nats: AccountNats) -> Result<AccountRecord> {
        let now = self.clock.now_unix();
        let iat = if rec.iat >= now { rec.iat + 1 } else { now };
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

    /// Every account, by name.
    pub fn accounts(&self) -> Result<Vec<AccountRecord>> {
        self.scan_json(Space::Accounts, "")
    }

    /// Every JSON record of `space` whose key starts with `prefix`, in key order.
    pub(crate) fn scan_json<T: serde::de::DeserializeOwned>(&self, space: Space, prefix: &str) -> Result<Vec<T>> {
        self.store()
            .scan_prefix(space, prefix)?
            .into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v)
                    .map_err(|e| EstateError::Store(StoreError::Corrupt(format!("{}/{k}", space.as_str()), e.to_string())))
            })
            .collect()
    }

    /// A key pair from the sealed store, cached in memory after the first use.
    pub(crate) fn key(&self, store_key: &str) -> Result<Arc<KeyPair>> {
        if let Ok(cache) = self.keys.lock() {
            if let Some(k) = cache.get(store_key) {
                return Ok(k.clone());
            }
        }
        let seed = self
            .vault
            .get_sealed(Space::Keys, store_key)?
            .ok_or_else(|| EstateError::Key(store_key.into(), "no key in store".into()))?;
        let kp = Arc::new(KeyPair::from_seed(std::str::from_utf8(&seed).unwrap_or("")).map_err(key_err(store_key))?);
        if let Ok(mut cache) = self.keys.lock() {
            cache.insert(store_key.to_string(), kp.clone());
        }
        Ok(kp)
    }

    /// The account's signing key pair.
    fn account_signing_key(&self, rec: &AccountRecord) -> Result<Arc<KeyPair>> {
        self.key(&keys_account_signing(&rec.signing_key))
    }

    /// The account of `tenant` + `env` (`acme-prod`), created if missing. Returns the record and
    /// whether it was created (then the caller pushes its JWT). Hold [`Self::account_lock`].
    pub fn ensure_tenant_account_locked(&self, tenant: &str, env: &str) -> Result<(AccountRecord, bool)> {
        names::check_segment("tenant", tenant)?;
        names::check_segment("env", env)?;
        let name = names::account_name(tenant, env);
        if let Some(rec) = get_json::<AccountRecord>(self.store(), Space::Accounts, &name)? {
            // The record says whose it is: an account is never handed to another pair.
            if rec.kind != AccountKind::Tenant || rec.tenant.as_deref() != Some(tenant) || rec.env.as_deref() != Some(env) {
                return Err(EstateError::Key(
                    format!("account {name}"),
                    format!("it belongs to {:?}/{:?}, not {tenant}/{env}", rec.tenant, rec.env),
                ));
            }
            return Ok((rec, false));
        }
        let mut b = Batch::new();
        let (id, signing) = new_account_keys(&self.vault, &mut b, &name)?;
        let draft = AccountRecord {
            name: name.clone(),
            kind: AccountKind::Tenant,
            public_key: id.public_key(),
            signing_key: signing.public_key(),
            jwt: String::new(),
            iat: 0,
            created_at: self.clock.now_unix(),
            tenant: Some(tenant.into()),
            env: Some(env.into()),
            revocations: BTreeMap::new(),
            revoked_until: BTreeMap::new(),
        };
        let rec = self.resign_account(draft)?;
        b.put_json(Space::Accounts, &name, &rec)?;
        self.store().commit(b)?;
        Ok((rec, true))
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
            exp: Some(expires_at),
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

    /// The inbox prefix of a user: only its holder may subscribe below it.
    pub fn inbox_prefix(user_public_key: &str) -> String {
        format!("{}.{user_public_key}", subjects::INBOX_ROOT)
    }

    /// Issue an admin identity (user in TILLIT + client certificate), record it, and return the
    /// files of its identity dir. Keys are generated here: `init` runs on the admin's machine.
    pub fn issue_admin(&self, name: &str) -> Result<IdentityFiles> {
        names::check_segment("admin name", name)?;
        let now = self.clock.now_unix();
        let expires = now + self.config.admin_ttl.as_secs() as i64;
        let account = self.account(TILLIT_ACCOUNT)?;
        let user = KeyPair::new_user();
        let inbox = Self::inbox_prefix(&user.public_key());
        let perms = admin_permissions(&inbox);
        let spiffe = names::spiffe_id(self.trust_domain(), &["tillit", "admin", name]);
        let jwt = self.sign_user(&account, &user.public_key(), &format!("admin {name}"), perms, expires)?;
        let cert = self.ca().issue_client_with_new_key(&spiffe, &format!("admin {name}"), now, expires)?;
        let rec = IdentityRecord::admin(&spiffe, name, &user.public_key(), &cert.serial, now, expires);
        let mut b = Batch::new();
        b.put_json(Space::Identities, &rec.user_public_key, &rec)?;
        b.put_json(Space::Serials, &rec.cert_serial, &SerialRecord::of_identity(&rec.user_public_key, expires))?;
        self.store().commit(b)?;
        let renew = crate::policy::renew::renew_at(now, expires, crate::policy::renew::random_jitter());
        let info = IdentityInfo {
            format: IDENTITY_FORMAT,
            kind: IdentityKind::Admin,
            id: spiffe,
            name: name.to_string(),
            trust_domain: self.trust_domain().to_string(),
            account: TILLIT_ACCOUNT.into(),
            account_public_key: account.public_key.clone(),
            user_public_key: user.public_key(),
            inbox_prefix: inbox,
            nats_urls: self.config.urls(),
            ca_fingerprint: self.meta.ca_fingerprint.clone(),
            cert_serial: cert.serial,
            issued_at: String::new(),
            expires_at: String::new(),
            renew_at: String::new(),
            issued_at_unix: 0,
            expires_at_unix: 0,
            renew_at_unix: 0,
            service: None,
            xkey_public_key: None,
        }
        .with_times(now, expires, renew);
        Ok(IdentityFiles {
            info,
            user_jwt: jwt,
            user_seed: seed_of(&user, "admin user")?,
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            ca_pem: self.meta.ca_cert_pem.clone(),
            trust_jwks: Some(self.trust_jwks()),
            xkey_seed: None,
        })
    }

    /// Renew an admin identity: a new JWT for the same nkey and a certificate for `public_key`.
    pub fn reissue_admin(&self, rec: &IdentityRecord, public_key: &impl rcgen::PublicKeyData) -> Result<services::ServiceIssue> {
        let now = self.clock.now_unix();
        let expires_at = now + self.config.admin_ttl.as_secs() as i64;
        let account = self.account(TILLIT_ACCOUNT)?;
        let perms = admin_permissions(&Self::inbox_prefix(&rec.user_public_key));
        let user_jwt = self.sign_user(&account, &rec.user_public_key, &format!("admin {}", rec.name), perms, expires_at)?;
        let (cert_pem, serial) = self.ca().issue_client(public_key, &rec.id, &format!("admin {}", rec.name), now, expires_at)?;
        Ok(services::ServiceIssue { user_jwt, cert_pem, serial, issued_at: now, expires_at })
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
        let Some(s) = get_json::<SerialRecord>(self.store(), Space::Serials, serial)? else {
            return Ok(crate::ocsp::Status::Unknown);
        };
        Ok(self.serial_revoked(&s)?.map(crate::ocsp::Status::Revoked).unwrap_or(crate::ocsp::Status::Good))
    }

    /// When the certificate of `s` was revoked, if it was.
    fn serial_revoked(&self, s: &SerialRecord) -> Result<Option<i64>> {
        if let Some(t) = s.revoked_at {
            return Ok(Some(t));
        }
        if let Some(id) = &s.token {
            return Ok(match self.token(id)? {
                Some(t) if t.state == services::TokenState::Used => Some(t.used_at.unwrap_or(0)),
                _ => None,
            });
        }
        Ok(match self.identity(&s.user_public_key)? {
            Some(i) if i.state == IdentityState::Revoked => Some(i.revoked_at.unwrap_or(0)),
            _ => None,
        })
    }

    /// Serials of unexpired certificates whose identities are revoked, with the revocation time.
    pub fn revoked_serials(&self) -> Result<Vec<(String, i64)>> {
        let now = self.clock.now_unix();
        let mut out = Vec::new();
        for (serial, v) in self.store().scan(Space::Serials)? {
            let s: SerialRecord = serde_json::from_slice(&v)
                .map_err(|e| EstateError::Store(StoreError::Corrupt(format!("serials/{serial}"), e.to_string())))?;
            if s.not_after <= now {
                continue;
            }
            if let Some(at) = self.serial_revoked(&s)? {
                out.push((serial, if at == 0 { now } else { at }));
            }
        }
        Ok(out)
    }

    /// Every identity record.
    pub fn identities(&self) -> Result<Vec<IdentityRecord>> {
        self.scan_json(Space::Identities, "")
    }

    /// How many identities are recorded.
    pub fn identity_count(&self) -> Result<usize> {
        Ok(self.store().count(Space::Identities)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::raw_for_init;

    fn new_estate(clock: Arc<ManualClock>) -> (tempfile::TempDir, Estate, Arc<dyn Store>, MasterKey) {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::from_raw(raw_for_init("example.org", "nats://127.0.0.1:4222", None)).unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&d.path().join("store")).unwrap());
        let master = MasterKey::generate().unwrap();
        let e = Estate::create(DataDir::new(d.path()), cfg, store.clone(), master.clone(), clock).unwrap();
        (d, e, store, master)
    }

    #[test]
    fn creates_roots_whose_jwts_chain_to_the_operator() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock);
        let op: Claims<OperatorNats> = jwt::decode_from(&e.meta.operator_jwt, &[&e.meta.operator_public_key]).unwrap();
        assert_eq!(op.nats.kind, "operator");
        assert_eq!(op.nats.signing_keys, vec![e.meta.operator_signing_key.clone()]);
        let sys = e.account(SYS_ACCOUNT).unwrap();
        assert_eq!(op.nats.system_account, sys.public_key);
        for acct in e.accounts().unwrap() {
            let c: Claims<AccountNats> = jwt::decode_from(&acct.jwt, &[&e.meta.operator_signing_key]).unwrap();
            assert_eq!(c.sub, acct.public_key);
            assert_eq!(c.nats.limits.conn, -1);
        }
        let tillit = e.account(TILLIT_ACCOUNT).unwrap();
        let c: Claims<AccountNats> = jwt::decode(&tillit.jwt).unwrap();
        assert!(c.nats.exports.iter().any(|x| x.subject == subjects::SVC_EXPORT && x.kind == "service"));
        let tillit = e.account(TILLIT_ACCOUNT).unwrap();
        let boot: Claims<AccountNats> = jwt::decode(&e.account(BOOTSTRAP_ACCOUNT).unwrap().jwt).unwrap();
        assert_eq!(boot.nats.imports[0].subject, subjects::ENROLL);
        assert_eq!(boot.nats.imports[0].account, tillit.public_key);
        assert!(boot.nats.imports[0].share);
    }

    #[test]
    fn reopens_only_with_the_right_master_key_and_trust_domain() {
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (d, e, store, master) = new_estate(clock.clone());
        let cfg = e.config.clone();
        drop(e);
        let dir = DataDir::new(d.path());
        let err = Estate::open_with(dir.clone(), cfg.clone(), store.clone(), MasterKey::generate().unwrap(), clock.clone()).unwrap_err();
        assert!(matches!(err, EstateError::WrongMasterKey(_)), "{err}");
        let mut other_cfg = cfg.clone();
        other_cfg.trust_domain = "other.org".into();
        let err = Estate::open_with(dir.clone(), other_cfg, store.clone(), master.clone(), clock.clone()).unwrap_err();
        assert!(matches!(err, EstateError::TrustDomainMismatch { .. }), "{err}");
        Estate::open_with(dir, cfg, store, master, clock).unwrap();
    }

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

    /// Every certificate tillit issues is known to OCSP and the CRL; anything else is unknown.
    #[test]
    fn ocsp_knows_every_certificate_and_nothing_else() {
        use crate::ocsp::Status;
        let clock = Arc::new(ManualClock::new(1_780_000_000));
        let (_d, e, _s, _m) = new_estate(clock.clone());
        assert_eq!(e.revocation_status("00deadbeef").unwrap(), Status::Unknown);
        // A join token's bootstrap certificate: good until the token is used.
        let sid = crate::names::ServiceId::parse("acme/shop/prod/orders").unwrap();
        let (tokens, b) = e.create_tokens(&sid, 900, 1, "test").unwrap();
        e.store().commit(b).unwrap();
        let cert = tokens[0].cert_pem().unwrap();
        let serial = crate::issuer::x509::serial_hex(&cert).unwrap();
        assert_eq!(e.revocation_status(&serial).unwrap(), Status::Good);
        let mut t = e.token(&tokens[0].id).unwrap().unwrap();
        t.state = services::TokenState::Used;
        t.used_at = Some(1_780_000_100);
        let mut b = Batch::new();
        b.put_json(Space::Tokens, &t.id, &t).unwrap();
        e.store().commit(b).unwrap();
        assert_eq!(e.revocation_status(&serial).unwrap(), Status::Revoked(1_780_000_100));
        assert!(e.revoked_serials().unwrap().iter().any(|(s, _)| *s == serial), "the CRL lists it");
        // The control plane's own and the hub's certificates are recorded as they are made.
        let (cp, _) = e.control_plane_creds(TILLIT_ACCOUNT, UserPermissions::default()).unwrap();
        assert_eq!(e.revocation_status(&crate::issuer::x509::serial_hex(&cp.cert_pem).unwrap()).unwrap(), Status::Good);
        let hub = e.issue_server_cert().unwrap();
        assert_eq!(e.revocation_status(&hub.serial).unwrap(), Status::Good);
    }
}

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
use crate::identity::{IdentityFiles, IdentityKind};
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

mod accounts;
pub mod callout;
pub mod adopt;
pub mod breakglass;
pub mod ca;
mod envelope_keys;
mod identities;
pub(crate) use identities::list_key;
pub mod lease;
mod roles;
mod secrets;
pub mod sites;
mod tokens;
pub use accounts::{AccountKind, AccountRecord, Adopted, MAX_ACCOUNT_JWT_BYTES};
pub use envelope_keys::{EnvelopeKey, KEYS_XKEY};
pub use identities::{EphemeralCreds, IdentityRecord, IdentityState, SerialRecord, ServiceIssue, UNLISTED_SERIALS};
pub use roles::{default_permissions, RetiringKey, RoleChange, RoleRecord, MAX_SERVICES_PER_ACCOUNT};
pub use secrets::{SecretMeta, SecretVersion};
pub use tokens::{bound_revocations, TokenRecord, TokenState, MAX_BOOTSTRAP_REVOCATIONS, MAX_TOKENS_PER_REQUEST, MAX_TOKEN_TTL_SECS};

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
    /// The caller asked for something malformed (the request is refused, nothing changed).
    #[error("{0}")]
    Invalid(String),
    /// The estate is mid-way through something that must finish first.
    #[error("{0}")]
    Conflict(String),
}

/// How an estate error reaches the wire: the caller's mistakes and limits by their codes,
/// everything else as `internal` (its detail stays in the log).
impl From<EstateError> for crate::error::ApiError {
    fn from(e: EstateError) -> Self {
        use crate::error::{ApiError, ErrorCode};
        match e {
            EstateError::Limit(m) => ApiError::new(ErrorCode::LimitExceeded, m),
            // An account JWT that would pass nats-server's 1 MiB cap: too many services (or
            // grants) in one tenant-environment for JWT mode.
            EstateError::Jwt(crate::issuer::jwt::JwtError::TooLarge) => ApiError::new(
                ErrorCode::LimitExceeded,
                "the account JWT would exceed nats-server's 1 MiB limit: this tenant-environment holds as many services (and grants) as JWT mode allows; remove some, split the environment, or switch to callout mode (tillit auth-mode)",
            ),
            EstateError::Name(n) => ApiError::bad_request(n.to_string()),
            EstateError::Invalid(m) => ApiError::bad_request(m),
            EstateError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            // Another replica wrote the record first: the request is served again.
            EstateError::Store(StoreError::Conflict(_)) => ApiError::new(ErrorCode::Unavailable, crate::server::RACED),
            EstateError::Store(StoreError::Backend(m)) => {
                tracing::warn!("store: {m}");
                ApiError::new(ErrorCode::Unavailable, crate::server::STORE_AWAY)
            }
            other => ApiError::internal(other),
        }
    }
}

pub type Result<T, E = EstateError> = std::result::Result<T, E>;

/// Open the store the config names. A JetStream bucket found empty on the first start of a
/// data dir whose estate is in sled (`tillit init --store jetstream`) is filled from it first
/// (copied, checked record by record; the sled store is left as it was).
pub fn open_store(dir: &DataDir, config: &Config, master: &MasterKey) -> Result<Arc<dyn Store>> {
    let not_init = || EstateError::NotInitialised { dir: dir.root().display().to_string() };
    let crate::config::StoreBackend::JetStream { bucket, replicas, .. } = &config.store else {
        if !dir.store().is_dir() {
            return Err(not_init());
        }
        return Ok(Arc::new(SledStore::open(&dir.store())?));
    };
    let js = Arc::new(open_bucket(dir, config, master, bucket, *replicas)?);
    if js.count(Space::Meta)? > 0 {
        return Ok(js);
    }
    // The marker a data dir keeps once its sled store was copied into a JetStream bucket: an
    // empty bucket is then an accident (or an attack), never a reason to copy the old records again.
    let marker = dir.migrated_marker();
    if marker.exists() {
        return Err(EstateError::Store(StoreError::Backend(format!(
            "the KV bucket {bucket} is empty, but this data dir's estate was copied into it before ({}): restore the bucket from a backup; the sled store here is older than the bucket was",
            marker.display()
        ))));
    }
    if !dir.store().is_dir() {
        return Err(EstateError::Store(StoreError::Backend(format!(
            "the KV bucket {bucket} is empty and {} holds no estate to copy into it: run `tillit init --store jetstream` (or `tillit store migrate`) on the first replica",
            dir.root().display()
        ))));
    }
    migrate_into(dir, js.as_ref(), bucket)?;
    Ok(js)
}

/// Connect with the data dir's store access and open `bucket`.
pub fn open_bucket(dir: &DataDir, config: &Config, master: &MasterKey, bucket: &str, replicas: usize) -> Result<crate::store::JetStreamStore> {
    let access = crate::store::StoreAccess::read(dir, master)?;
    let params = access.connect_params(config.urls(), "tillit-store").map_err(StoreError::Backend)?;
    // NATS may come up after `serve` (a compose stack, a reboot): wait for it, a minute at most.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        let p = params.clone();
        let connect: crate::store::Connect =
            Box::new(move || Box::pin(async move { crate::client::connect(&p).await.map_err(|e| e.to_string()) }));
        match crate::store::JetStreamStore::open(connect, bucket, replicas) {
            Ok(s) => return Ok(s),
            // NATS not up yet, or a clustered JetStream still electing its leader.
            Err(StoreError::Backend(m)) if std::time::Instant::now() < deadline => {
                tracing::warn!("waiting for NATS and JetStream to reach the store: {m}; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copy the data dir's sled store into the (empty) `target`, check it, and leave the marker.
pub fn migrate_into(dir: &DataDir, target: &dyn Store, bucket: &str) -> Result<crate::store::Copied> {
    let sled = SledStore::open(&dir.store())?;
    tracing::info!(bucket, "copying the sled store into the JetStream bucket");
    let copied = crate::store::copy_all(&sled, target, |space, n| tracing::info!(space = space.as_str(), records = n, "copied"))?;
    crate::store::verify(&sled, target)?;
    let note = format!("{{\"bucket\":\"{bucket}\",\"records\":{},\"at\":{}}}\n", copied.total(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    crate::fsutil::write_atomic(&dir.migrated_marker(), note.as_bytes(), crate::fsutil::PRIVATE)
        .map_err(|e| StoreError::Backend(format!("cannot write the migration marker: {e}")))?;
    tracing::info!(records = copied.total(), bucket, "sled store copied into JetStream and checked; the sled store is left as it was");
    Ok(copied)
}

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
    /// Callout mode: per tenant account, the number of roles at which their keys last did not fit
    /// in its JWT (rendering it again with as many skips reading them).
    callout_role_keys_over: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The envelope keys as they are now (rotation changes them at run time).
    envelope_keys: std::sync::RwLock<Vec<EnvelopeKey>>,
    /// `trust.jwks` as last rendered, with the keys it was rendered from.
    trust_jwks: std::sync::Mutex<Option<(Vec<EnvelopeKey>, String)>>,
}

impl std::fmt::Debug for Estate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Estate").field("trust_domain", &self.meta.trust_domain).finish_non_exhaustive()
    }
}

impl Estate {
    /// Create the trust roots of a new estate in `store` (an empty store), returning the opened
    /// estate. Files are the caller's business (`init.rs`).
    pub fn create(
        dir: DataDir,
        config: Config,
        store: Arc<dyn Store>,
        master: MasterKey,
        clock: SharedClock,
    ) -> Result<Estate> {
        Self::create_with(dir, config, store, master, clock, None)
    }

    /// [`Estate::create`], taking over the operator key (and the system account) of `roots`
    /// instead of making new ones (`tillit import nsc`).
    pub fn create_with(
        dir: DataDir,
        config: Config,
        store: Arc<dyn Store>,
        master: MasterKey,
        clock: SharedClock,
        roots: Option<&adopt::AdoptedRoots>,
    ) -> Result<Estate> {
        let now = clock.now_unix();
        let vault = Vault::new(store, master);
        let operator = match roots {
            Some(r) => KeyPair::from_seed(r.operator_seed.expose()).map_err(key_err("adopted operator"))?,
            None => KeyPair::new_operator(),
        };
        let operator_signing = KeyPair::new_operator();
        let mut b = Batch::new();
        let adopted_sys = roots.and_then(|r| r.sys.as_ref());
        let sys = match adopted_sys {
            Some(a) => adopt::account_keys(&vault, &mut b, a)?,
            None => new_account_keys(&vault, &mut b, SYS_ACCOUNT)?,
        };
        let tillit = new_account_keys(&vault, &mut b, TILLIT_ACCOUNT)?;
        let bootstrap = new_account_keys(&vault, &mut b, BOOTSTRAP_ACCOUNT)?;
        let envelope = KeyPair::new_account();
        let xkey = nkeys::XKey::new();
        vault.put_sealed(
            &mut b,
            Space::Keys,
            KEYS_XKEY,
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
            name: Some(roots.map(|r| r.operator_name.clone()).unwrap_or_else(|| format!("tillit {}", config.trust_domain))),
            aud: None,
            exp: None,
            nbf: None,
            nats: OperatorNats {
                kind: "operator".into(),
                version: 2,
                signing_keys: vec![operator_signing.public_key()],
                system_account: sys.0.public_key(),
                strict_signing_key_usage: roots.is_none_or(|r| r.strict),
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
        // A new estate's service index is complete (empty).
        b.put_json(Space::Meta, identities::META_SERVICE_INDEX, &1u32)?;
        b.put_json(Space::Meta, identities::META_IDENTITY_ORDER, &1u32)?;
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
            CertAuthority::load(&ca.cert_pem, &ca.key_pem)?.with_revocation_urls(ca::revocation_urls_for(&config, None)),
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
            callout_role_keys_over: Default::default(),
            envelope_keys: std::sync::RwLock::new(vec![]),
            trust_jwks: Default::default(),
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
                callout_epochs: BTreeMap::new(),
                adopted: if kind == AccountKind::System { adopted_sys.map(|a| a.adopted.clone()) } else { None },
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
        Self::open_serving(dir, clock, None)
    }

    /// [`Estate::open`] for `serve`, listening for HTTP at `http_addr` rather than the config's.
    pub fn open_serving(dir: DataDir, clock: SharedClock, http_addr: Option<std::net::SocketAddr>) -> Result<Estate> {
        let mut config = Config::load(&dir.config_file())?;
        if let Some(a) = http_addr {
            config.http_addr = a;
        }
        let master = MasterKey::load(dir.root())?;
        let store = open_store(&dir, &config, &master)?;
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
            callout_role_keys_over: Default::default(),
            envelope_keys: std::sync::RwLock::new(envelope_keys),
            trust_jwks: Default::default(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.meta.trust_domain
    }

    /// Re-read what this estate keeps in memory from the store (another replica changed it):
    /// the CA set when its records changed, the envelope keys, and the cached nkeys.
    pub fn reload_caches(&self) {
        let stored: Option<Vec<ca::CaRecord>> = get_json(self.store(), Space::Meta, ca::META_CAS).ok().flatten();
        let current = self.cas.read().map(|c| c.records.clone()).unwrap_or_default();
        if stored.as_ref().is_some_and(|s| *s != current) {
            match Self::load_cas(&self.vault, &self.meta, &self.config) {
                Ok(set) => {
                    if let Ok(mut c) = self.cas.write() {
                        *c = set;
                    }
                }
                Err(e) => tracing::error!("cannot reload the CA set another replica changed: {e}"),
            }
        }
        if let Ok(Some(keys)) = get_json::<Vec<EnvelopeKey>>(self.store(), Space::Meta, "envelope_keys") {
            if let Ok(mut k) = self.envelope_keys.write() {
                *k = keys;
            }
        }
        if let Ok(mut k) = self.keys.lock() {
            k.clear();
        }
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
    /// The master key (to seal a backup's private files and MAC it).
    pub(crate) fn master_key(&self) -> &MasterKey {
        self.vault.master()
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
    /// A small fact the control plane keeps about itself in `meta` (e.g. which CA a reissue was
    /// last asked for), if set.
    pub fn meta_flag<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        Ok(get_json(self.store(), Space::Meta, key)?)
    }

    /// Set a [`Estate::meta_flag`], durably.
    pub fn set_meta_flag<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let mut b = Batch::new();
        b.put_json(Space::Meta, key, value)?;
        self.store().commit(b)?;
        Ok(())
    }

    pub fn account_lock(&self) -> &Mutex<()> {
        &self.account_lock
    }

    /// Every JSON record of `space` whose key starts with `prefix`, in key order.
    pub(crate) fn scan_json<T: serde::de::DeserializeOwned>(&self, space: Space, prefix: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.visit_json(space, prefix, |r| {
            out.push(r);
            true
        })?;
        Ok(out)
    }

    /// Visit the JSON records of `space` whose key starts with `prefix`, in key order, until `f`
    /// says stop (false), without holding them all (on sled). A record that does not parse
    /// stops the visit with [`StoreError::Corrupt`].
    pub(crate) fn visit_json<T: serde::de::DeserializeOwned>(&self, space: Space, prefix: &str, mut f: impl FnMut(T) -> bool) -> Result<()> {
        let mut bad = None;
        self.store().visit_prefix(space, prefix, &mut |k, v| match serde_json::from_slice::<T>(v) {
            Ok(r) => f(r),
            Err(e) => {
                bad = Some(EstateError::Store(StoreError::Corrupt(format!("{}/{k}", space.as_str()), e.to_string())));
                false
            }
        })?;
        bad.map_or(Ok(()), Err)
    }

    /// A key pair from the sealed store, cached in memory after the first use.
    pub(crate) fn key(&self, store_key: &str) -> Result<Arc<KeyPair>> {
        self.cached_key(store_key, || {
            let seed = self
                .vault
                .get_sealed(Space::Keys, store_key)?
                .ok_or_else(|| EstateError::Key(store_key.into(), "no key in store".into()))?;
            KeyPair::from_seed(std::str::from_utf8(&seed).unwrap_or("")).map_err(key_err(store_key))
        })
    }

    /// The key pair cached under `name`, or `make`'s, cached from now on.
    pub(crate) fn cached_key(&self, name: &str, make: impl FnOnce() -> Result<KeyPair>) -> Result<Arc<KeyPair>> {
        if let Some(k) = self.keys.lock().ok().and_then(|cache| cache.get(name).cloned()) {
            return Ok(k);
        }
        let kp = Arc::new(make()?);
        if let Ok(mut cache) = self.keys.lock() {
            cache.insert(name.to_string(), kp.clone());
        }
        Ok(kp)
    }

    /// Keep `kp` (just made, sealed into a batch not committed yet) as the key under `store_key`.
    fn remember_key(&self, store_key: &str, kp: KeyPair) {
        if let Ok(mut cache) = self.keys.lock() {
            cache.insert(store_key.to_string(), Arc::new(kp));
        }
    }

    /// The account's signing key pair.
    fn account_signing_key(&self, rec: &AccountRecord) -> Result<Arc<KeyPair>> {
        self.key(&keys_account_signing(&rec.signing_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::raw_for_init;

    pub(super) fn new_estate(clock: Arc<ManualClock>) -> (tempfile::TempDir, Estate, Arc<dyn Store>, MasterKey) {
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
        assert_eq!(boot.nats.imports[0].subject, crate::proto::Enroll::SUBJECT);
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
}

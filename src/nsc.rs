//! `tillit import nsc`: reading an operator that `nsc` manages, and the plan of taking it over.
//!
//! nsc keeps JWTs in a store and seeds in a keys dir (both laid out as nats-io/nsc documents):
//!
//! ```text
//! STORE/<operator>/<operator>.jwt
//! STORE/<operator>/accounts/<account>/<account>.jwt
//! STORE/<operator>/accounts/<account>/users/<user>.jwt
//! KEYS/keys/<O|A|U>/<2nd and 3rd character of the public key>/<public key>.nk   (the seed)
//! KEYS/creds/<operator>/<account>/<user>.creds
//! ```
//!
//! [`read`] loads and checks both — the operator JWT is self-signed, every account JWT verifies
//! and is issued by the operator or one of its signing keys, every seed is the key it is filed
//! under — and decides, writing nothing, what tillit adopts and what it cannot represent
//! ([`Plan`]). `init` then builds the new data dir from the [`Adoption`]
//! ([`crate::estate::adopt`] holds what the estate makes of it).
//!
//! What becomes what:
//! - the operator keeps its identity key (its seed is sealed in tillit's store); tillit signs the
//!   accounts with a signing key of its own, and nsc's operator signing keys are dropped: nothing
//!   nsc still holds can sign an account the hub accepts;
//! - the operator's system account becomes tillit's SYS (same key);
//! - an account named like a tenant account (`tenant-env`, [`crate::names::account_name`]) or
//!   mapped with `--map ACCOUNT=TENANT/ENV` becomes that tenant and environment's account (same
//!   key): tillit enrolls services into it;
//! - every other account is adopted as it is: kept live and re-signed with its claims, not a
//!   tenant (nothing enrolls into it);
//! - each account keeps its exports, imports, limits and other claims verbatim, and the signing
//!   keys whose seeds are present (sealed like tillit's own), so users nsc issued keep connecting
//!   until their JWTs expire. tillit adds its own signing key (and its role keys) beside them.

use crate::crypto::SecretString;
use crate::issuer::jwt;
use crate::names;
use nkeys::KeyPair;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// nsc's names inside an operator dir and a keys dir.
const ACCOUNTS_DIR: &str = "accounts";
const USERS_DIR: &str = "users";
const KEYS_DIR: &str = "keys";
const CREDS_DIR: &str = "creds";
/// The environment variable nsc reads its keys dir from.
pub const NKEYS_PATH_ENV: &str = "NKEYS_PATH";
/// The longest a client certificate for nsc's users is valid (users whose JWTs never expire
/// included): they enroll through tillit before it runs out.
pub const NSC_CLIENTS_MAX_TTL_SECS: i64 = 90 * 86_400;
/// The shortest: a user expiring within the hour still gets a certificate that outlives it.
const NSC_CLIENTS_MIN_TTL_SECS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum NscError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0} holds no nsc operator (expected <operator>/<operator>.jwt in it, or <name>.jwt in an operator dir); point --store at nsc's store dir (`nsc env` shows it)")]
    NoOperator(String),
    #[error("{store} holds several operators ({names}); choose one with --operator NAME")]
    SeveralOperators { store: String, names: String },
    #[error("{store} has no operator {name:?} (it has: {names})")]
    NoSuchOperator { store: String, name: String, names: String },
    #[error("{path}: {reason}")]
    Malformed { path: String, reason: String },
    #[error("{path}: the JWT does not verify ({reason}); the store was altered: restore it with nsc (or from a backup) and import again")]
    Signature { path: String, reason: String },
    #[error("{path}: account {account} is signed by {issuer}, which is neither the operator {operator} nor one of its signing keys: it does not belong to this operator; remove it from the store or leave it out with --skip {account}")]
    ForeignIssuer { path: String, account: String, issuer: String, operator: String },
    #[error("the seed of {what} ({public_key}) is not in {keys}: tillit needs it to take {what} over; point --keys at nsc's keys dir (`nsc env` shows it){}", if what.starts_with("account") { ", or leave the account out with --skip" } else { "" })]
    SeedMissing { what: String, public_key: String, keys: String },
    #[error("{path}: the seed there is for {found}, not for {public_key}")]
    SeedMismatch { path: String, public_key: String, found: String },
    #[error("--map {0}")]
    Map(String),
    #[error("{0}")]
    Conflict(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NscError + '_ {
    move |source| NscError::Io { path: path.display().to_string(), source }
}

fn malformed(path: &Path, reason: impl Into<String>) -> NscError {
    NscError::Malformed { path: path.display().to_string(), reason: reason.into() }
}

// === the source ===

/// `--map ACCOUNT=TENANT/ENV`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub account: String,
    pub tenant: String,
    pub env: String,
}

impl std::str::FromStr for Mapping {
    type Err = NscError;
    fn from_str(s: &str) -> Result<Self, NscError> {
        let bad = |why: &str| NscError::Map(format!("{s:?}: {why} (expected ACCOUNT=TENANT/ENV, e.g. legacy=globex/dev)"));
        let (account, pair) = s.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (tenant, env) = pair.split_once('/').ok_or_else(|| bad("no `/`"))?;
        names::check_segment("tenant", tenant).map_err(|e| bad(&e.to_string()))?;
        names::check_segment("env", env).map_err(|e| bad(&e.to_string()))?;
        if account.is_empty() {
            return Err(bad("no account"));
        }
        Ok(Mapping { account: account.into(), tenant: tenant.into(), env: env.into() })
    }
}

/// What to read and how to map it.
#[derive(Debug, Clone)]
pub struct Source {
    /// nsc's store dir, or one operator's dir in it.
    pub store: PathBuf,
    /// nsc's keys dir (holding `keys/`), or its `keys/` itself.
    pub keys: PathBuf,
    /// Which operator, when the store holds several.
    pub operator: Option<String>,
    pub map: Vec<Mapping>,
    /// Accounts to leave out (not adopted; their users stop connecting).
    pub skip: Vec<String>,
}

/// The keys dir nsc uses when `--keys` is not given: `$NKEYS_PATH`, else
/// `$XDG_DATA_HOME/nats/nsc/keys` (`~/.local/share/nats/nsc/keys`), else the `~/.nkeys` of older
/// nsc releases when only that exists.
pub fn default_keys_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(NKEYS_PATH_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let data = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".local/share")));
    let current = data.map(|d| d.join("nats/nsc/keys"));
    let old = home.map(|h| h.join(".nkeys"));
    match (current, old) {
        (Some(c), Some(o)) if !c.is_dir() && o.is_dir() => Some(o),
        (c, o) => c.or(o),
    }
}

// === what was read ===

/// What an nsc account becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Becomes {
    /// tillit's SYS (it is the operator's system account).
    System,
    /// The account of a tenant and environment.
    Tenant { tenant: String, env: String },
    /// Adopted as it is, under its nsc name.
    AsIs,
}

/// A signing key of an nsc account that is kept: its entry as nsc wrote it (a key, or a scoped
/// key with its template) and its seed.
#[derive(Debug)]
pub struct KeptKey {
    pub entry: Value,
    pub public_key: String,
    pub seed: SecretString,
}

/// One nsc account, checked.
#[derive(Debug)]
pub struct Account {
    /// Its name in nsc.
    pub name: String,
    pub public_key: String,
    pub becomes: Becomes,
    pub seed: Option<SecretString>,
    pub signing: Vec<KeptKey>,
    /// Its JWT's `nats` section without `type`, `version` and `signing_keys`: kept verbatim.
    pub nats: Map<String, Value>,
}

impl Account {
    /// The name of its tillit account record.
    pub fn tillit_name(&self) -> String {
        self.becomes.tillit_name(&self.name)
    }
}

impl Becomes {
    /// What the nsc account `name` (key `public_key`) becomes: SYS when it is the operator's
    /// system account, the tenant `--map` names, the tenant its name is the account of
    /// (`tenant-env`), else itself (pure).
    pub fn of(name: &str, public_key: &str, system_account: &str, map: &[Mapping]) -> Becomes {
        if public_key == system_account {
            return Becomes::System;
        }
        if let Some(m) = map.iter().find(|m| m.account == name) {
            return Becomes::Tenant { tenant: m.tenant.clone(), env: m.env.clone() };
        }
        match names::parse_account_name(name) {
            Some((tenant, env)) if names::check_segment("tenant", &tenant).is_ok() && names::check_segment("env", &env).is_ok() => {
                Becomes::Tenant { tenant, env }
            }
            _ => Becomes::AsIs,
        }
    }

    /// The name of the tillit account record the nsc account `name` becomes.
    pub fn tillit_name(&self, name: &str) -> String {
        match self {
            Becomes::System => crate::estate::SYS_ACCOUNT.into(),
            Becomes::Tenant { tenant, env } => names::account_name(tenant, env),
            Becomes::AsIs => name.to_string(),
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Becomes::System => "system",
            Becomes::Tenant { .. } => "tenant",
            Becomes::AsIs => "as-is",
        }
    }
}

/// Whether an nsc account name can be kept as a tillit account record's name (pure).
fn as_is_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) && !name.starts_with('.')
}

/// Why a user JWT nsc issued in an account will not connect after the import (`None`: it
/// keeps working): `claims` as decoded (`None`: it did not verify, `why` says how), the keys
/// the account keeps as signers (its identity key first), as of `now` (pure).
pub fn user_fails(claims: &Value, account: &str, signers: &[String], now: i64) -> Option<String> {
    let iss = str_of(claims, "iss");
    let issuer_account = claims.pointer("/nats/issuer_account").and_then(Value::as_str);
    if claims.pointer("/nats/type").and_then(Value::as_str) != Some("user") {
        return Some("it is not a user JWT".into());
    }
    if !signers.iter().any(|s| s == iss) {
        return Some(format!("it is signed by {iss}, a key the account does not keep"));
    }
    if iss != account && issuer_account != Some(account) {
        return Some("its issuer_account is not the account".into());
    }
    if claims.get("exp").and_then(Value::as_i64).is_some_and(|e| e <= now) {
        return Some("it has expired".into());
    }
    None
}

/// The operator, checked.
#[derive(Debug)]
pub struct Operator {
    pub name: String,
    pub public_key: String,
    pub seed: Option<SecretString>,
    pub system_account: String,
    /// Whether tillit's operator JWT sets `strict_signing_key_usage`: only while no user that
    /// keeps working was signed by an account's identity key (the server refuses those then).
    pub strict: bool,
}

/// Everything [`read`] found, and what it means.
#[derive(Debug)]
pub struct Adoption {
    pub operator: Operator,
    pub accounts: Vec<Account>,
    /// Until when the client certificate for nsc's users is valid (`None`: no user keeps working).
    pub nsc_clients_until: Option<i64>,
    pub plan: Plan,
    /// Why the import would be refused (the plan lists them as `blocking`).
    refusals: Vec<NscError>,
}

impl Adoption {
    /// Ready to adopt, or the first reason it is not.
    pub fn ready(mut self) -> Result<Self, NscError> {
        match self.refusals.is_empty() {
            true => Ok(self),
            false => Err(self.refusals.remove(0)),
        }
    }
}

// === the plan ===

/// What `tillit import nsc --plan` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub operator: PlanOperator,
    pub accounts: Vec<PlanAccount>,
    /// Accounts left out with `--skip`.
    pub skipped: Vec<String>,
    /// What tillit drops or cannot carry over (the import goes ahead without it).
    pub cannot_represent: Vec<String>,
    /// Why the import would be refused (nothing is written).
    pub blocking: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanOperator {
    pub name: String,
    pub public_key: String,
    pub system_account: String,
    pub strict_signing_key_usage: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanAccount {
    /// Its name in nsc.
    pub name: String,
    pub public_key: String,
    /// `system`, `tenant` or `as-is`.
    pub becomes: String,
    /// `tenant/env` when it becomes a tenant's account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The name of its tillit account.
    pub tillit_name: String,
    /// Signing keys kept (their seeds sealed in tillit's store).
    pub signing_keys: Vec<String>,
    pub exports: usize,
    pub imports: usize,
    pub users: Vec<PlanUser>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanUser {
    pub name: String,
    pub public_key: String,
    /// `account` (its identity key) or the signing key.
    pub signed_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Connects after the import (until it expires).
    pub keeps_working: bool,
    /// nsc wrote a `.creds` file for it.
    pub creds: bool,
}

impl Plan {
    /// The plan as text, one fact a line.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let o = &self.operator;
        let _ = writeln!(s, "operator {} ({}): adopted, its key kept; tillit signs accounts with a signing key of its own", o.name, o.public_key);
        let _ = writeln!(s, "  strict signing key usage: {}", if o.strict_signing_key_usage { "on" } else { "off (users signed by an account's identity key keep working)" });
        for a in &self.accounts {
            let to = match a.becomes.as_str() {
                "system" => "tillit's system account SYS".to_string(),
                "tenant" => format!("tenant {} (account {})", a.tenant.as_deref().unwrap_or("?"), a.tillit_name),
                _ => format!("adopted as-is (account {}, not a tenant)", a.tillit_name),
            };
            let _ = writeln!(s, "account {} ({}) -> {to}", a.name, a.public_key);
            let _ = writeln!(s, "  signing keys kept: {}", if a.signing_keys.is_empty() { "none".into() } else { a.signing_keys.join(", ") });
            let _ = writeln!(s, "  exports: {}, imports: {}", a.exports, a.imports);
            for u in &a.users {
                let until = u.expires_at.map(|t| format!("until {}", crate::clock::rfc3339(t))).unwrap_or_else(|| "no expiry".into());
                let state = if u.keeps_working { format!("keeps working {until}") } else { "will not connect".into() };
                let _ = writeln!(s, "  user {} ({}), signed by {}: {state}{}", u.name, u.public_key, u.signed_by, if u.creds { ", creds file found" } else { "" });
            }
        }
        for k in &self.skipped {
            let _ = writeln!(s, "skipped: account {k}");
        }
        for c in &self.cannot_represent {
            let _ = writeln!(s, "cannot represent: {c}");
        }
        for b in &self.blocking {
            let _ = writeln!(s, "BLOCKING: {b}");
        }
        if self.blocking.is_empty() {
            let _ = writeln!(s, "nothing written (--plan); run again without --plan to import");
        } else {
            let _ = writeln!(s, "nothing written (--plan); the import would be refused until the blocking problems are solved");
        }
        s
    }
}

// === reading ===

/// The operator dir in `store`: `store` itself when it holds `<its name>.jwt`, else the one
/// operator dir inside it (or `operator`'s).
fn operator_dir(store: &Path, operator: Option<&str>) -> Result<PathBuf, NscError> {
    let own = store.file_name().and_then(|n| n.to_str()).filter(|n| store.join(format!("{n}.jwt")).is_file());
    if let Some(own) = own {
        return match operator {
            Some(op) if op != own => Err(NscError::NoSuchOperator { store: store.display().to_string(), name: op.into(), names: own.into() }),
            _ => Ok(store.to_path_buf()),
        };
    }
    let mut found = vec![];
    for e in std::fs::read_dir(store).map_err(io(store))? {
        let e = e.map_err(io(store))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        if e.path().join(format!("{name}.jwt")).is_file() {
            found.push(name);
        }
    }
    found.sort();
    let names = found.join(", ");
    match (operator, found.as_slice()) {
        (Some(op), _) if found.iter().any(|f| f == op) => Ok(store.join(op)),
        (Some(op), _) => Err(NscError::NoSuchOperator { store: store.display().to_string(), name: op.into(), names }),
        (None, []) => Err(NscError::NoOperator(store.display().to_string())),
        (None, [one]) => Ok(store.join(one)),
        (None, _) => Err(NscError::SeveralOperators { store: store.display().to_string(), names }),
    }
}

/// The dir the `O/`, `A/`, `U/` key dirs are in: `keys/keys` or `keys` itself.
fn keys_root(keys: &Path) -> PathBuf {
    let inner = keys.join(KEYS_DIR);
    if inner.is_dir() {
        inner
    } else {
        keys.to_path_buf()
    }
}

/// The seed of `public_key` from the keys dir (`None`: not there), checked to be that key's.
fn seed_for(root: &Path, public_key: &str) -> Result<Option<SecretString>, NscError> {
    let (Some(kind), Some(two)) = (public_key.get(..1), public_key.get(1..3)) else {
        return Ok(None);
    };
    let path = root.join(kind).join(two).join(format!("{public_key}.nk"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => SecretString::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let seed = SecretString::new(text.expose().trim().to_string());
    let kp = KeyPair::from_seed(seed.expose()).map_err(|e| malformed(&path, format!("not an nkey seed: {e}")))?;
    if kp.public_key() != public_key {
        return Err(NscError::SeedMismatch { path: path.display().to_string(), public_key: public_key.into(), found: kp.public_key() });
    }
    Ok(Some(seed))
}

/// Read and verify a JWT file: its claims as JSON, its `nats` section and its issuer.
fn read_jwt(path: &Path, kind: &str) -> Result<(Value, Map<String, Value>), NscError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let claims: Value = match jwt::decode_any::<Value>(text.trim()) {
        Ok((c, _)) => c,
        Err(e @ (jwt::JwtError::Signature | jwt::JwtError::Issuer(_))) => {
            return Err(NscError::Signature { path: path.display().to_string(), reason: e.to_string() })
        }
        Err(e) => return Err(malformed(path, format!("not a {kind} JWT: {e}"))),
    };
    let nats = claims.get("nats").and_then(Value::as_object).cloned().ok_or_else(|| malformed(path, "no `nats` section"))?;
    if nats.get("type").and_then(Value::as_str) != Some(kind) {
        return Err(malformed(path, format!("not a {kind} JWT (type {:?})", nats.get("type"))));
    }
    Ok((claims, nats))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The public key a `signing_keys` entry names (a bare key, or `{"key": …}` for a scoped one).
fn entry_key(entry: &Value) -> Option<&str> {
    entry.as_str().or_else(|| entry.get("key").and_then(Value::as_str))
}

/// Files named `*.jwt` in `dir`, by name (empty when `dir` is missing).
fn jwt_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, NscError> {
    if !dir.is_dir() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = e.map_err(io(dir))?.path();
        if p.extension().and_then(|x| x.to_str()) == Some("jwt") {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                out.push((stem.to_string(), p.clone()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Read the nsc store and keys dir of `src`, check them, and plan the adoption (as of `now`).
/// Tampered or foreign JWTs and a malformed store are errors; missing seeds are in the plan as
/// blocking ([`Adoption::ready`] refuses them).
pub fn read(src: &Source, now: i64) -> Result<Adoption, NscError> {
    for m in &src.map {
        if src.skip.contains(&m.account) {
            return Err(NscError::Map(format!("{}: the account is also --skip'ped", m.account)));
        }
    }
    let op_dir = operator_dir(&src.store, src.operator.as_deref())?;
    let op_name = op_dir.file_name().and_then(|n| n.to_str()).unwrap_or("operator").to_string();
    let keys = keys_root(&src.keys);
    let keys_shown = keys.display().to_string();
    let op_path = op_dir.join(format!("{op_name}.jwt"));
    let (op_claims, op_nats) = read_jwt(&op_path, "operator")?;
    let op_pub = str_of(&op_claims, "sub").to_string();
    if !op_pub.starts_with('O') || KeyPair::from_public_key(&op_pub).is_err() {
        return Err(malformed(&op_path, format!("subject {op_pub:?} is not an operator key")));
    }
    if str_of(&op_claims, "iss") != op_pub {
        return Err(NscError::Signature { path: op_path.display().to_string(), reason: format!("signed by {}, not by the operator itself", str_of(&op_claims, "iss")) });
    }
    let op_signing: Vec<String> = op_nats.get("signing_keys").and_then(Value::as_array).map(|a| a.iter().filter_map(entry_key).map(str::to_string).collect()).unwrap_or_default();
    let system_account = op_nats.get("system_account").and_then(Value::as_str).unwrap_or("").to_string();
    let mut cannot = vec![];
    let mut refusals = vec![];
    let op_seed = seed_for(&keys, &op_pub)?;
    if op_seed.is_none() {
        refusals.push(NscError::SeedMissing { what: format!("operator {op_name}"), public_key: op_pub.clone(), keys: keys_shown.clone() });
    }
    for k in &op_signing {
        cannot.push(format!("operator signing key {k} is dropped: tillit signs accounts with its own, so nothing nsc holds can sign an account the hub accepts"));
    }
    for (k, _) in op_nats.iter().filter(|(k, _)| !["type", "version", "signing_keys", "system_account", "strict_signing_key_usage"].contains(&k.as_str())) {
        cannot.push(format!("operator setting `{k}` is dropped (tillit writes the hub's configuration)"));
    }

    let mut accounts = vec![];
    let mut plan_accounts = vec![];
    let mut skipped = vec![];
    let mut identity_signed_users = false;
    let mut clients_until: Option<i64> = None;
    let accounts_dir = op_dir.join(ACCOUNTS_DIR);
    let mut dirs: Vec<(String, PathBuf)> = vec![];
    if accounts_dir.is_dir() {
        for e in std::fs::read_dir(&accounts_dir).map_err(io(&accounts_dir))? {
            let e = e.map_err(io(&accounts_dir))?;
            if e.path().is_dir() {
                if let Some(n) = e.file_name().to_str() {
                    dirs.push((n.to_string(), e.path()));
                }
            }
        }
    }
    dirs.sort();
    for m in &src.map {
        if !dirs.iter().any(|(n, _)| *n == m.account) {
            return Err(NscError::Map(format!("{}: no such account under {}", m.account, accounts_dir.display())));
        }
    }
    let mut taken: std::collections::BTreeMap<String, String> = Default::default();
    for (name, dir) in dirs {
        let path = dir.join(format!("{name}.jwt"));
        if !path.is_file() {
            return Err(malformed(&dir, format!("an account dir without {name}.jwt")));
        }
        let (claims, mut nats) = read_jwt(&path, "account")?;
        let public_key = str_of(&claims, "sub").to_string();
        if !public_key.starts_with('A') || KeyPair::from_public_key(&public_key).is_err() {
            return Err(malformed(&path, format!("subject {public_key:?} is not an account key")));
        }
        let issuer = str_of(&claims, "iss").to_string();
        if issuer != op_pub && !op_signing.contains(&issuer) {
            return Err(NscError::ForeignIssuer { path: path.display().to_string(), account: name, issuer, operator: op_pub });
        }
        if src.skip.contains(&name) {
            skipped.push(name);
            continue;
        }
        for claim in ["exp", "nbf"].iter().filter(|c| claims.get(**c).is_some()) {
            cannot.push(format!("account {name}: its JWT's `{claim}` is dropped (tillit's account JWTs do not expire)"));
        }
        if public_key == system_account && src.map.iter().any(|m| m.account == name) {
            return Err(NscError::Map(format!("{name}: it is the operator's system account, which becomes tillit's SYS")));
        }
        let becomes = Becomes::of(&name, &public_key, &system_account, &src.map);
        // An as-is account keeps its nsc name as tillit's record name: plain, short, printable.
        if becomes == Becomes::AsIs && !as_is_name_ok(&name) {
            return Err(NscError::Map(format!(
                "{name:?}: an account adopted as it is keeps its name, which must be 1 to 64 letters, digits, '-', '_' or '.'; map it (--map {name}=TENANT/ENV) or leave it out (--skip {name})"
            )));
        }
        let seed = seed_for(&keys, &public_key)?;
        if seed.is_none() {
            refusals.push(NscError::SeedMissing { what: format!("account {name}"), public_key: public_key.clone(), keys: keys_shown.clone() });
        }
        // Signing keys: kept when their seed is here.
        let mut signing = vec![];
        let mut signers = vec![public_key.clone()];
        for entry in nats.remove("signing_keys").and_then(|v| v.as_array().cloned()).unwrap_or_default() {
            let Some(k) = entry_key(&entry).map(str::to_string) else {
                return Err(malformed(&path, "a signing key entry without a key"));
            };
            match seed_for(&keys, &k)? {
                Some(seed) => {
                    signers.push(k.clone());
                    signing.push(KeptKey { entry, public_key: k, seed });
                }
                None => cannot.push(format!("account {name}: signing key {k} is dropped (its seed is not in {keys_shown}); users it signed stop connecting")),
            }
        }
        nats.remove("type");
        nats.remove("version");
        if becomes == Becomes::System {
            // tillit's SYS exports its own connect events to TILLIT; nats-server refuses an
            // account with overlapping exports, so an nsc export covering them goes.
            let own = crate::subjects::account_connect_events(&public_key);
            if let Some(Value::Array(exports)) = nats.get_mut("exports") {
                exports.retain(|x| {
                    let subject = str_of(x, "subject");
                    let keep = str_of(x, "type") != "stream" || !crate::subjects::subjects_overlap(subject, &own);
                    if !keep {
                        cannot.push(format!("account {name}: stream export {subject} ({}) is dropped: it overlaps the system account's connect events tillit exports to itself (nats-server refuses overlapping exports); imports of it stop", str_of(x, "name")));
                    }
                    keep
                });
            }
        }
        let count = |k: &str| nats.get(k).and_then(Value::as_array).map(Vec::len).unwrap_or(0);
        let (exports, imports) = (count("exports"), count("imports"));
        let tillit_name = becomes.tillit_name(&name);
        if becomes == Becomes::AsIs && [crate::estate::SYS_ACCOUNT, crate::estate::TILLIT_ACCOUNT, crate::estate::BOOTSTRAP_ACCOUNT].contains(&tillit_name.as_str()) {
            return Err(NscError::Conflict(format!("account {name} has the name of one of tillit's own accounts: map it to a tenant with --map {name}=TENANT/ENV or leave it out with --skip {name}")));
        }
        if let Some(other) = taken.insert(tillit_name.clone(), name.clone()) {
            return Err(NscError::Conflict(format!("accounts {other} and {name} would both become {tillit_name}: map one elsewhere with --map")));
        }
        // Users: which keep working.
        let mut users = vec![];
        for (uname, upath) in jwt_files(&dir.join(USERS_DIR))? {
            let creds_in = |k: &Path| k.join(CREDS_DIR).join(&op_name).join(&name).join(format!("{uname}.creds")).is_file();
            let creds = creds_in(&src.keys) || src.keys.parent().is_some_and(creds_in);
            let text = std::fs::read_to_string(&upath).map_err(io(&upath))?;
            let (claims, why_not) = match jwt::decode_any::<Value>(text.trim()) {
                Ok((c, _)) => {
                    let why = user_fails(&c, &public_key, &signers, now);
                    (c, why)
                }
                Err(e) => (Value::Null, Some(format!("its JWT does not verify ({e})"))),
            };
            let upub = str_of(&claims, "sub").to_string();
            let iss = str_of(&claims, "iss").to_string();
            let exp = claims.get("exp").and_then(Value::as_i64);
            if let Some(why) = &why_not {
                cannot.push(format!("user {uname} of account {name} will not connect: {why}"));
            } else {
                if claims.pointer("/nats/bearer_token").and_then(Value::as_bool) == Some(true) {
                    cannot.push(format!("user {uname} of account {name} is a bearer token (its JWT connects without its seed): tillit never issues those; it keeps working until it expires"));
                }
                if iss == public_key {
                    identity_signed_users = true;
                }
                let until = exp.unwrap_or(now + NSC_CLIENTS_MAX_TTL_SECS);
                clients_until = Some(clients_until.unwrap_or(0).max(until));
            }
            users.push(PlanUser {
                name: uname,
                public_key: upub,
                signed_by: if iss == public_key { "account".into() } else { iss.clone() },
                expires_at: exp,
                keeps_working: why_not.is_none(),
                creds,
            });
        }
        if users.iter().any(|u| u.keeps_working) {
            cannot.push(format!("account {name}: users nsc issued are not re-issued by tillit; they keep working until their JWTs expire, then enroll through tillit"));
        }
        plan_accounts.push(PlanAccount {
            name: name.clone(),
            public_key: public_key.clone(),
            becomes: becomes.as_str().into(),
            tenant: match &becomes {
                Becomes::Tenant { tenant, env } => Some(format!("{tenant}/{env}")),
                _ => None,
            },
            tillit_name,
            signing_keys: signing.iter().map(|k| k.public_key.clone()).collect(),
            exports,
            imports,
            users,
        });
        tracing::debug!(account = %name, public_key = %public_key, ?becomes, kept_keys = signing.len(), exports, imports, "read nsc account");
        accounts.push(Account { name, public_key, becomes, seed, signing, nats });
    }
    if !system_account.is_empty() && !accounts.iter().any(|a| a.becomes == Becomes::System) {
        cannot.push(format!("the operator's system account {system_account} is not adopted (not in the store, or skipped): tillit makes a SYS account of its own"));
    }
    for c in &cannot {
        tracing::debug!("nsc import cannot represent: {c}");
    }
    let strict = !identity_signed_users;
    if !strict {
        cannot.push("strict signing key usage stays off while users signed by an account's identity key keep working: the operator's identity key could sign accounts, so keep its seed offline once imported".into());
    }
    let clients_until = clients_until.map(|u| u.clamp(now + NSC_CLIENTS_MIN_TTL_SECS, now + NSC_CLIENTS_MAX_TTL_SECS));
    if let Some(until) = clients_until {
        cannot.push(format!(
            "nsc's users have no client certificate and the hub requires one: they present the one written to DATA/nsc-clients/tls/ with their .creds, valid until {} (the last of them expires; {} days at most)",
            crate::clock::rfc3339(until),
            NSC_CLIENTS_MAX_TTL_SECS / 86_400
        ));
    }
    let plan = Plan {
        operator: PlanOperator { name: op_name.clone(), public_key: op_pub.clone(), system_account: system_account.clone(), strict_signing_key_usage: strict },
        accounts: plan_accounts,
        skipped,
        cannot_represent: cannot,
        blocking: refusals.iter().map(|e| e.to_string()).collect(),
    };
    Ok(Adoption {
        operator: Operator { name: op_name, public_key: op_pub, seed: op_seed, system_account, strict },
        accounts,
        nsc_clients_until: clients_until,
        plan,
        refusals,
    })
}

// === into the estate ===

impl Adoption {
    fn adopted_account(&self, a: &Account) -> Result<crate::estate::adopt::AdoptedAccount, NscError> {
        use crate::estate::AccountKind;
        let seed = a.seed.clone().ok_or_else(|| NscError::SeedMissing { what: format!("account {}", a.name), public_key: a.public_key.clone(), keys: "the keys dir".into() })?;
        let (kind, tenant, env) = match &a.becomes {
            Becomes::System => (AccountKind::System, None, None),
            Becomes::Tenant { tenant, env } => (AccountKind::Tenant, Some(tenant.clone()), Some(env.clone())),
            Becomes::AsIs => (AccountKind::Adopted, None, None),
        };
        Ok(crate::estate::adopt::AdoptedAccount {
            name: a.tillit_name(),
            kind,
            tenant,
            env,
            identity_seed: seed,
            kept: a.signing.iter().map(|k| (k.public_key.clone(), k.seed.clone())).collect(),
            adopted: crate::estate::Adopted {
                from: "nsc".into(),
                source_name: a.name.clone(),
                nats: a.nats.clone(),
                signing_keys: a.signing.iter().map(|k| k.entry.clone()).collect(),
            },
        })
    }

    /// The roots `init` takes over: the operator key and the system account.
    pub fn roots(&self) -> Result<crate::estate::adopt::AdoptedRoots, NscError> {
        let o = &self.operator;
        let seed = o.seed.clone().ok_or_else(|| NscError::SeedMissing { what: format!("operator {}", o.name), public_key: o.public_key.clone(), keys: "the keys dir".into() })?;
        let sys = self.accounts.iter().find(|a| a.becomes == Becomes::System).map(|a| self.adopted_account(a)).transpose()?;
        Ok(crate::estate::adopt::AdoptedRoots { operator_seed: seed, operator_name: o.name.clone(), strict: o.strict, sys })
    }

    /// The other accounts, to adopt once the estate exists.
    pub fn other_accounts(&self) -> Result<Vec<crate::estate::adopt::AdoptedAccount>, NscError> {
        self.accounts.iter().filter(|a| a.becomes != Becomes::System).map(|a| self.adopted_account(a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_is_names_are_plain() {
        for (n, ok) in [("billing", true), ("Billing_2.old", true), ("a-b", true), ("", false), (".hidden", false), ("with space", false), ("ünï", false), (&"x".repeat(65), false)] {
            assert_eq!(as_is_name_ok(n), ok, "{n:?}");
        }
    }

    #[test]
    fn mappings_parse_and_refuse_bad_names() {
        let m: Mapping = "legacy=globex/dev".parse().unwrap();
        assert_eq!(m, Mapping { account: "legacy".into(), tenant: "globex".into(), env: "dev".into() });
        for bad in ["legacy", "legacy=globex", "=globex/dev", "legacy=glo.bex/dev", "legacy=*/dev", "legacy=globex/>", "legacy=globex/"] {
            assert!(bad.parse::<Mapping>().is_err(), "{bad}");
        }
    }

    #[test]
    fn what_an_account_becomes_table() {
        let map = vec!["legacy=globex/dev".parse::<Mapping>().unwrap()];
        let t = |tenant: &str, env: &str| Becomes::Tenant { tenant: tenant.into(), env: env.into() };
        for (name, key, becomes, tillit) in [
            ("SYS", "ASYS", Becomes::System, "SYS"),
            ("anything", "ASYS", Becomes::System, "SYS"),
            ("legacy", "AL", t("globex", "dev"), "globex-dev"),
            ("acme-prod", "AP", t("acme", "prod"), "acme-prod"),
            ("acme--corp-prod", "AP", t("acme-corp", "prod"), "acme--corp-prod"),
            ("billing", "AB", Becomes::AsIs, "billing"),
            ("a-b-c", "AB", Becomes::AsIs, "a-b-c"),
            ("SYS", "AOTHER", Becomes::AsIs, "SYS"),
        ] {
            let b = Becomes::of(name, key, "ASYS", &map);
            assert_eq!(b, becomes, "{name}");
            assert_eq!(b.tillit_name(name), tillit, "{name}");
        }
    }

    #[test]
    fn which_users_keep_working_table() {
        let signers = vec!["AACCT".to_string(), "ASIGN".to_string()];
        let user = |iss: &str, ia: Option<&str>, exp: Option<i64>| {
            let mut c = serde_json::json!({ "iss": iss, "sub": "UX", "nats": { "type": "user" } });
            if let Some(a) = ia {
                c["nats"]["issuer_account"] = a.into();
            }
            if let Some(e) = exp {
                c["exp"] = e.into();
            }
            c
        };
        let now = 1_000;
        for (claims, fails) in [
            (user("AACCT", None, None), None),
            (user("ASIGN", Some("AACCT"), Some(2_000)), None),
            (user("ASIGN", None, None), Some("issuer_account")),
            (user("ASIGN", Some("AOTHER"), None), Some("issuer_account")),
            (user("ADROPPED", Some("AACCT"), None), Some("does not keep")),
            (user("ASIGN", Some("AACCT"), Some(1_000)), Some("expired")),
            (serde_json::json!({ "iss": "AACCT", "nats": { "type": "account" } }), Some("not a user")),
        ] {
            let got = user_fails(&claims, "AACCT", &signers, now);
            match fails {
                None => assert!(got.is_none(), "{claims}: {got:?}"),
                Some(why) => assert!(got.as_deref().is_some_and(|g| g.contains(why)), "{claims}: {got:?}"),
            }
        }
    }

    #[test]
    fn seeds_are_found_by_nscs_layout_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let kp = KeyPair::new_account();
        let pk = kp.public_key();
        let file = d.path().join("keys").join("A").join(&pk[1..3]).join(format!("{pk}.nk"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, format!("{}\n", kp.seed().unwrap())).unwrap();
        for given in [d.path().to_path_buf(), d.path().join("keys")] {
            let root = keys_root(&given);
            assert_eq!(seed_for(&root, &pk).unwrap().unwrap().expose(), kp.seed().unwrap());
            assert!(seed_for(&root, &KeyPair::new_account().public_key()).unwrap().is_none());
        }
        // Another key's seed filed under this key: refused.
        std::fs::write(&file, KeyPair::new_account().seed().unwrap()).unwrap();
        assert!(matches!(seed_for(&keys_root(d.path()), &pk), Err(NscError::SeedMismatch { .. })));
    }
}

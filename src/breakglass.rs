//! Break-glass: a way into the NATS estate when tillit itself is broken (a lost master key, a
//! corrupted store, a bad release).
//!
//! `tillit init` (and `tillit break-glass rotate`) mints a **bundle**, one JSON file meant to be
//! stored offline, holding a credential of its own:
//! - a break-glass **CA** (ECDSA P-256, ~10 years, its own name), pinned in the hub's client trust
//!   file (`DATA/nats/tls/ca.pem`) but in no identity's `ca.pem`: it can vouch for a client of the
//!   hub, never for a server anyone connects to;
//! - a **client certificate** from that CA without AIA/CRL URLs: nats-server's `ocsp_peer` treats
//!   a chain with no OCSP URL as valid without asking anyone (`peerOCSPValid`, "a trust-store
//!   verified chain that is not OCSP eligible is always OCSP Valid"), so it works with every
//!   responder down;
//! - a **SYS-account user** (JWT signed by the SYS account's signing key, no permission limits),
//!   as `.creds` text: it can administer the system account (reloads, claims updates, kicks);
//! - an **operator signing key**, listed in the operator JWT: with it, account JWTs can be
//!   re-signed (a revocation, say) while tillit cannot;
//! - the hub's URLs and the CA bundle that verifies the hub's certificate.
//!
//! Only public parts stay in the estate ([`PublicRecord`]: in the store's `meta/break_glass` and,
//! for `verify` without the master key, in `DATA/break-glass.json`). The bundle's private keys
//! exist nowhere else, so the data dir alone cannot break glass.
//!
//! This module is pure: minting takes the time and the SYS signer as parameters, [`verify`]
//! takes the bundle text, the time and what the estate's public files say, and returns one
//! finding per failed check. The estate's writes are in `estate/breakglass.rs`.

use crate::crypto::SecretString;
use crate::issuer::jwt::{self, OperatorNats, UserNats};
use crate::issuer::{creds, x509};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// `type` of a bundle file.
pub const BUNDLE_TYPE: &str = "io.tillit.v1.break-glass";
/// `type` of the public record.
pub const RECORD_TYPE: &str = "io.tillit.v1.break-glass.public";
/// The bundle format this build writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;
/// How long a bundle lives (CA, client certificate, user JWT): ten years. It sits in a safe;
/// rotation, not expiry, is what retires it.
pub const BUNDLE_TTL_SECS: i64 = 10 * 365 * 86_400;
/// The largest bundle file read (it is a few KiB).
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;
/// The user name of break-glass users (in their JWT, and nats-server's connect events).
pub const USER_NAME: &str = "tillit break-glass";
/// How many break-glass connections the estate remembers for `status`.
pub const KEEP_CONNECTIONS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BreakGlassError {
    #[error("X.509: {0}")]
    X509(#[from] x509::X509Error),
    #[error("JWT: {0}")]
    Jwt(#[from] jwt::JwtError),
    #[error("key: {0}")]
    Key(String),
    #[error("{0}")]
    Format(String),
}

// === the bundle ===

/// The bundle as written to disk. Private fields are [`SecretString`]s (redacted in `Debug`,
/// zeroized on drop); [`Bundle::to_json`] is the only place they are exposed together.
#[derive(Debug)]
pub struct Bundle {
    pub trust_domain: String,
    /// `sha256:<hex>` of the break-glass CA certificate: the bundle's name (status, audit, `ca.pem`).
    pub fingerprint: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub nats_urls: Vec<String>,
    /// The CA bundle that verifies the hub's server certificate (at the time of minting).
    pub hub_ca_pem: String,
    pub operator_public_key: String,
    pub system_account: String,
    pub ca_cert_pem: String,
    pub ca_key_pem: SecretString,
    pub client_cert_pem: String,
    pub client_key_pem: SecretString,
    pub operator_signing_key: String,
    pub operator_signing_seed: SecretString,
    pub user_public_key: String,
    /// `.creds` text (user JWT + seed).
    pub user_creds: SecretString,
}

/// The serde face of [`Bundle`]; zeroized when dropped.
#[derive(Serialize, Deserialize, Zeroize)]
#[zeroize(drop)]
struct BundleFile {
    #[serde(rename = "type")]
    kind: String,
    format: u32,
    trust_domain: String,
    fingerprint: String,
    created_at: i64,
    expires_at: i64,
    nats_urls: Vec<String>,
    hub_ca_pem: String,
    operator_public_key: String,
    system_account: String,
    ca_cert_pem: String,
    ca_key_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    operator_signing_key: String,
    operator_signing_seed: String,
    user_public_key: String,
    user_creds: String,
    /// `sha256:<hex>` over every field above in order ([`digest_of`]): damage shows at once.
    digest: String,
}

fn digest_of(f: &BundleFile) -> String {
    let mut s = String::new();
    for part in [
        f.kind.as_str(),
        &f.format.to_string(),
        &f.trust_domain,
        &f.fingerprint,
        &f.created_at.to_string(),
        &f.expires_at.to_string(),
        &f.nats_urls.join("\n"),
        &f.hub_ca_pem,
        &f.operator_public_key,
        &f.system_account,
        &f.ca_cert_pem,
        &f.ca_key_pem,
        &f.client_cert_pem,
        &f.client_key_pem,
        &f.operator_signing_key,
        &f.operator_signing_seed,
        &f.user_public_key,
        &f.user_creds,
    ] {
        s.push_str(&part.len().to_string());
        s.push(':');
        s.push_str(part);
        s.push('\n');
    }
    let out = format!("sha256:{}", crate::crypto::sha256_hex(s.as_bytes()));
    s.zeroize();
    out
}

impl Bundle {
    /// The file text (JSON, one object). Keep it 0600 and offline.
    pub fn to_json(&self) -> SecretString {
        let mut f = BundleFile {
            kind: BUNDLE_TYPE.into(),
            format: BUNDLE_FORMAT,
            trust_domain: self.trust_domain.clone(),
            fingerprint: self.fingerprint.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            nats_urls: self.nats_urls.clone(),
            hub_ca_pem: self.hub_ca_pem.clone(),
            operator_public_key: self.operator_public_key.clone(),
            system_account: self.system_account.clone(),
            ca_cert_pem: self.ca_cert_pem.clone(),
            ca_key_pem: self.ca_key_pem.expose().to_string(),
            client_cert_pem: self.client_cert_pem.clone(),
            client_key_pem: self.client_key_pem.expose().to_string(),
            operator_signing_key: self.operator_signing_key.clone(),
            operator_signing_seed: self.operator_signing_seed.expose().to_string(),
            user_public_key: self.user_public_key.clone(),
            user_creds: self.user_creds.expose().to_string(),
            digest: String::new(),
        };
        f.digest = digest_of(&f);
        let mut text = serde_json::to_string_pretty(&f).unwrap_or_default();
        text.push('\n');
        SecretString::new(text)
    }

    /// Parse a bundle file: its type, format and digest (nothing else is checked here; see
    /// [`verify`]).
    pub fn parse(text: &str) -> Result<Bundle, BreakGlassError> {
        if text.len() > MAX_BUNDLE_BYTES {
            return Err(BreakGlassError::Format(format!("the file is {} bytes, more than a bundle ever is ({MAX_BUNDLE_BYTES})", text.len())));
        }
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| BreakGlassError::Format(format!("not JSON: {e}")))?;
        match v.get("type").and_then(|t| t.as_str()) {
            Some(BUNDLE_TYPE) => {}
            Some(other) => return Err(BreakGlassError::Format(format!("type {other:?} is not a break-glass bundle ({BUNDLE_TYPE})"))),
            None => return Err(BreakGlassError::Format(format!("no type: not a break-glass bundle ({BUNDLE_TYPE})"))),
        }
        drop(v);
        let f: BundleFile = serde_json::from_str(text).map_err(|e| BreakGlassError::Format(format!("malformed bundle: {e}")))?;
        if f.format != BUNDLE_FORMAT {
            return Err(BreakGlassError::Format(format!("bundle format {} is not {BUNDLE_FORMAT}, the one this tillit reads", f.format)));
        }
        if !crate::crypto::ct_eq(digest_of(&f).as_bytes(), f.digest.as_bytes()) {
            return Err(BreakGlassError::Format("its digest does not match its contents: the file was damaged or edited".into()));
        }
        Ok(Bundle {
            trust_domain: f.trust_domain.clone(),
            fingerprint: f.fingerprint.clone(),
            created_at: f.created_at,
            expires_at: f.expires_at,
            nats_urls: f.nats_urls.clone(),
            hub_ca_pem: f.hub_ca_pem.clone(),
            operator_public_key: f.operator_public_key.clone(),
            system_account: f.system_account.clone(),
            ca_cert_pem: f.ca_cert_pem.clone(),
            ca_key_pem: SecretString::new(f.ca_key_pem.clone()),
            client_cert_pem: f.client_cert_pem.clone(),
            client_key_pem: SecretString::new(f.client_key_pem.clone()),
            operator_signing_key: f.operator_signing_key.clone(),
            operator_signing_seed: SecretString::new(f.operator_signing_seed.clone()),
            user_public_key: f.user_public_key.clone(),
            user_creds: SecretString::new(f.user_creds.clone()),
        })
    }

    /// Connection parameters for this bundle's SYS user (tests, tooling): its creds, its
    /// client certificate, the hub's CA.
    pub fn connect_params(&self) -> Result<crate::client::ConnectParams, BreakGlassError> {
        use crate::client::{tls, ConnectParams, NatsCreds};
        let (user_jwt, user_seed) = creds::parse(self.user_creds.expose()).map_err(|e| BreakGlassError::Key(e.to_string()))?;
        let ck = tls::certified_key(&self.client_cert_pem, self.client_key_pem.expose()).map_err(|e| BreakGlassError::Key(e.to_string()))?;
        Ok(ConnectParams {
            urls: self.nats_urls.clone(),
            name: USER_NAME.into(),
            inbox_prefix: crate::subjects::INBOX_ROOT.into(),
            ca_pem: self.hub_ca_pem.clone(),
            creds: std::sync::Arc::new(std::sync::RwLock::new(NatsCreds { user_jwt, user_seed })),
            cert: tls::SwappableCert::new(ck),
            max_reconnects: Some(0),
        })
    }

    /// The public facts of this bundle.
    pub fn public(&self, sys_signing_key: &str) -> PublicRecord {
        PublicRecord {
            kind: RECORD_TYPE.into(),
            fingerprint: self.fingerprint.clone(),
            ca_cert_pem: self.ca_cert_pem.clone(),
            operator_signing_key: self.operator_signing_key.clone(),
            user_public_key: self.user_public_key.clone(),
            sys_signing_key: sys_signing_key.into(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            previous: vec![],
        }
    }
}

/// The public facts of the current bundle, and of the ones rotated away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicRecord {
    #[serde(rename = "type")]
    pub kind: String,
    pub fingerprint: String,
    pub ca_cert_pem: String,
    pub operator_signing_key: String,
    pub user_public_key: String,
    /// The SYS account signing key that signed the user JWT.
    pub sys_signing_key: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Bundles rotated away, oldest first.
    #[serde(default)]
    pub previous: Vec<Retired>,
}

/// A bundle rotated away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retired {
    pub fingerprint: String,
    pub user_public_key: String,
    pub operator_signing_key: String,
    pub rotated_at: i64,
}

impl PublicRecord {
    /// The bundle fingerprint a user key belongs to (current or rotated away).
    pub fn owner_of(&self, user_public_key: &str) -> Option<&str> {
        if self.user_public_key == user_public_key {
            return Some(&self.fingerprint);
        }
        self.previous.iter().find(|p| p.user_public_key == user_public_key).map(|p| p.fingerprint.as_str())
    }
}

/// What minting needs from the estate: who signs the SYS user, and what to tell the holder.
pub struct MintInputs<'a> {
    pub trust_domain: &'a str,
    pub nats_urls: Vec<String>,
    pub hub_ca_pem: String,
    pub operator_public_key: &'a str,
    pub system_account: &'a str,
    /// Signs the SYS user JWT: `(user public key, expires_at) → JWT`.
    pub sign_user: &'a dyn Fn(&str, i64) -> Result<String, BreakGlassError>,
    pub now: i64,
}

/// Mint a new bundle: CA, client certificate, SYS user, operator signing key.
pub fn mint(inp: &MintInputs<'_>) -> Result<Bundle, BreakGlassError> {
    let expires_at = inp.now + BUNDLE_TTL_SECS;
    let ca = x509::CertAuthority::generate_named(inp.trust_domain, "break-glass", inp.now, expires_at)?;
    let fingerprint = x509::fingerprint(&ca.cert_pem)?;
    // No revocation URLs: the holder connects with every responder down.
    let authority = x509::CertAuthority::load(&ca.cert_pem, &ca.key_pem)?;
    let spiffe = crate::names::spiffe_id(inp.trust_domain, &["tillit", "break-glass"]);
    let client = authority.issue_client_without_revocation_urls(&spiffe, USER_NAME, inp.now, expires_at)?;
    let user = nkeys::KeyPair::new_user();
    let user_seed = SecretString::new(user.seed().map_err(|e| BreakGlassError::Key(e.to_string()))?);
    let user_jwt = (inp.sign_user)(&user.public_key(), expires_at)?;
    let op = nkeys::KeyPair::new_operator();
    Ok(Bundle {
        trust_domain: inp.trust_domain.into(),
        fingerprint,
        created_at: inp.now,
        expires_at,
        nats_urls: inp.nats_urls.clone(),
        hub_ca_pem: inp.hub_ca_pem.clone(),
        operator_public_key: inp.operator_public_key.into(),
        system_account: inp.system_account.into(),
        ca_cert_pem: ca.cert_pem,
        ca_key_pem: ca.key_pem,
        client_cert_pem: client.cert_pem,
        client_key_pem: client.key_pem,
        operator_signing_key: op.public_key(),
        operator_signing_seed: SecretString::new(op.seed().map_err(|e| BreakGlassError::Key(e.to_string()))?),
        user_public_key: user.public_key(),
        user_creds: creds::format(&user_jwt, &user_seed),
    })
}

// === verify ===

/// What the estate's public files say (`verify --data-dir`): read without the master key and
/// without the store, so it works while `serve` holds the store and when the store is gone.
#[derive(Debug, Clone, Default)]
pub struct EstateFacts {
    /// `DATA/nats/operator.jwt`.
    pub operator_jwt: Option<String>,
    /// `DATA/nats/tls/ca.pem` (what the hub verifies clients with).
    pub hub_trust_pem: Option<String>,
    /// `DATA/break-glass.json`.
    pub record: Option<PublicRecord>,
}

impl EstateFacts {
    /// Read the files of `dir` that exist (a missing one is a finding in [`verify`]).
    pub fn read(dir: &crate::layout::DataDir) -> EstateFacts {
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
        EstateFacts {
            operator_jwt: read(dir.operator_jwt()),
            hub_trust_pem: read(dir.nats_ca()),
            record: read(dir.break_glass_record()).and_then(|t| serde_json::from_str(&t).ok()),
        }
    }
}

/// One check of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// A short stable name (`ca_key`, `client_chain`, `rotated`, …).
    pub check: &'static str,
    pub ok: bool,
    /// What was found, one line.
    pub message: String,
}

fn ok(check: &'static str, message: impl Into<String>) -> Finding {
    Finding { check, ok: true, message: message.into() }
}
fn bad(check: &'static str, message: impl Into<String>) -> Finding {
    Finding { check, ok: false, message: message.into() }
}

/// Whether `key_pem` is the private half of `cert_pem`'s key (the crate's one PEM parser).
fn key_matches(cert_pem: &str, key_pem: &SecretString) -> Result<bool, String> {
    match crate::pem::key_matches(cert_pem, key_pem.expose()) {
        Ok(()) => Ok(true),
        Err(crate::pem::PemError::Key(m)) if m.starts_with("does not match") => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether `client_pem` chains to `ca_pem` as a TLS client certificate at `now` (webpki, as a
/// TLS server checks it: signature, validity, clientAuth).
fn chains_to(client_pem: &str, ca_pem: &str, now: i64) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(x509::first_cert_der(ca_pem).map_err(|e| e.to_string())?)).map_err(|e| e.to_string())?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let leaf = CertificateDer::from(x509::first_cert_der(client_pem).map_err(|e| e.to_string())?);
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    verifier.verify_client_cert(&leaf, &[], at).map(|_| ()).map_err(|e| e.to_string())
}

/// Every certificate (DER) in a PEM bundle.
fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    crate::pem::certs(pem).map(|v| v.into_iter().map(|c| c.to_vec()).collect()).unwrap_or_default()
}

/// Check a bundle without using it: one [`Finding`] per check, failures included. `facts`
/// adds the checks against the estate (pinned, listed, not rotated away).
pub fn verify(text: &str, now: i64, facts: Option<&EstateFacts>) -> Vec<Finding> {
    let mut out = Vec::new();
    let b = match Bundle::parse(text) {
        Ok(b) => {
            out.push(ok("format", format!("{BUNDLE_TYPE} format {BUNDLE_FORMAT}, digest matches")));
            b
        }
        Err(e) => {
            out.push(bad("format", e.to_string()));
            return out;
        }
    };
    match x509::fingerprint(&b.ca_cert_pem) {
        Ok(fp) if fp == b.fingerprint => out.push(ok("fingerprint", format!("CA {fp}"))),
        Ok(fp) => out.push(bad("fingerprint", format!("the CA certificate's fingerprint is {fp}, the bundle says {}", b.fingerprint))),
        Err(e) => out.push(bad("fingerprint", format!("the CA certificate is unreadable: {e}"))),
    }
    match key_matches(&b.ca_cert_pem, &b.ca_key_pem) {
        Ok(true) => out.push(ok("ca_key", "the CA key is the CA certificate's")),
        Ok(false) => out.push(bad("ca_key", "the CA key is not the CA certificate's key")),
        Err(e) => out.push(bad("ca_key", format!("CA: {e}"))),
    }
    match key_matches(&b.client_cert_pem, &b.client_key_pem) {
        Ok(true) => out.push(ok("client_key", "the client key is the client certificate's")),
        Ok(false) => out.push(bad("client_key", "the client key is not the client certificate's key")),
        Err(e) => out.push(bad("client_key", format!("client certificate: {e}"))),
    }
    match chains_to(&b.client_cert_pem, &b.ca_cert_pem, now) {
        Ok(()) => out.push(ok("client_chain", format!("the client certificate chains to the CA and is valid until {}", crate::clock::rfc3339(x509::not_after(&b.client_cert_pem).unwrap_or(0))))),
        Err(e) => out.push(bad("client_chain", format!("the client certificate does not pass as a TLS client of the CA now: {e}"))),
    }
    // The user: creds parse, seed matches the JWT's subject, JWT signed, SYS account, not expired.
    match creds::parse(b.user_creds.expose()) {
        Err(e) => out.push(bad("user", format!("the .creds text: {e}"))),
        Ok((user_jwt, seed)) => {
            let seed_key = nkeys::KeyPair::from_seed(seed.expose()).map(|k| k.public_key());
            match jwt::decode::<UserNats>(&user_jwt) {
                Err(e) => out.push(bad("user", format!("the user JWT does not verify: {e}"))),
                Ok(c) => {
                    let mut problems = vec![];
                    if seed_key.as_deref().ok() != Some(c.sub.as_str()) {
                        problems.push("its seed is not the JWT's user key".to_string());
                    }
                    if c.sub != b.user_public_key {
                        problems.push(format!("the JWT is for {}, the bundle names {}", c.sub, b.user_public_key));
                    }
                    if c.nats.issuer_account.as_deref() != Some(b.system_account.as_str()) {
                        problems.push(format!("the JWT is in account {:?}, not the system account {}", c.nats.issuer_account, b.system_account));
                    }
                    match c.exp {
                        Some(exp) if exp <= now => problems.push(format!("the JWT expired at {}", crate::clock::rfc3339(exp))),
                        _ => {}
                    }
                    if let Some(r) = facts.and_then(|f| f.record.as_ref()) {
                        if c.iss != r.sys_signing_key && r.previous.iter().all(|p| p.user_public_key != c.sub) {
                            problems.push(format!("the JWT is signed by {}, not the SYS signing key {}", c.iss, r.sys_signing_key));
                        }
                    }
                    if problems.is_empty() {
                        out.push(ok("user", format!("SYS user {} (JWT signed by {}, seed matches)", c.sub, c.iss)));
                    } else {
                        out.push(bad("user", format!("the SYS user: {}", problems.join("; "))));
                    }
                }
            }
        }
    }
    match nkeys::KeyPair::from_seed(b.operator_signing_seed.expose()) {
        Ok(k) if k.public_key() == b.operator_signing_key && b.operator_signing_key.starts_with('O') => {
            out.push(ok("operator_key", format!("operator signing key {}", b.operator_signing_key)))
        }
        Ok(k) => out.push(bad("operator_key", format!("the operator signing seed is {}'s, the bundle names {}", k.public_key(), b.operator_signing_key))),
        Err(e) => out.push(bad("operator_key", format!("the operator signing seed is unreadable: {e}"))),
    }
    if b.expires_at <= now {
        out.push(bad("expiry", format!("the bundle expired at {}", crate::clock::rfc3339(b.expires_at))));
    } else {
        out.push(ok("expiry", format!("valid until {}", crate::clock::rfc3339(b.expires_at))));
    }
    if let Some(f) = facts {
        verify_against(&b, f, &mut out);
    }
    out
}

/// The checks against the estate's public files.
fn verify_against(b: &Bundle, f: &EstateFacts, out: &mut Vec<Finding>) {
    if let Some(r) = &f.record {
        if r.fingerprint == b.fingerprint {
            out.push(ok("current", "this is the estate's current break-glass bundle"));
        } else if let Some(p) = r.previous.iter().find(|p| p.fingerprint == b.fingerprint) {
            out.push(bad(
                "current",
                format!("this bundle was rotated away at {} (the current one is {}): it no longer opens anything", crate::clock::rfc3339(p.rotated_at), r.fingerprint),
            ));
        } else {
            out.push(bad("current", format!("this bundle is not this estate's (its current bundle is {})", r.fingerprint)));
        }
    } else {
        out.push(bad("current", "the data dir has no break-glass record (break-glass.json)"));
    }
    match f.operator_jwt.as_deref().map(|t| jwt::decode::<OperatorNats>(t.trim())) {
        Some(Ok(op)) => {
            if op.sub != b.operator_public_key {
                out.push(bad("operator", format!("the estate's operator is {}, the bundle's {}", op.sub, b.operator_public_key)));
            } else if op.nats.system_account != b.system_account {
                out.push(bad("operator", format!("the estate's system account is {}, the bundle's {}", op.nats.system_account, b.system_account)));
            } else if !op.nats.signing_keys.contains(&b.operator_signing_key) {
                out.push(bad("operator", format!("the operator JWT (nats/operator.jwt) does not list the bundle's signing key {}", b.operator_signing_key)));
            } else {
                out.push(ok("operator", "the operator JWT lists the bundle's signing key"));
            }
        }
        Some(Err(e)) => out.push(bad("operator", format!("nats/operator.jwt does not verify: {e}"))),
        None => out.push(bad("operator", "the data dir has no nats/operator.jwt")),
    }
    match &f.hub_trust_pem {
        Some(pem) => {
            let pinned = x509::first_cert_der(&b.ca_cert_pem).map(|der| pem_certs(pem).contains(&der)).unwrap_or(false);
            if pinned {
                out.push(ok("pinned", "the hub trusts the bundle's CA (nats/tls/ca.pem)"));
            } else {
                out.push(bad("pinned", "the hub's trust file (nats/tls/ca.pem) does not hold the bundle's CA: the hub refuses its certificate"));
            }
        }
        None => out.push(bad("pinned", "the data dir has no nats/tls/ca.pem")),
    }
}

// === connections ===

/// A connection made with a break-glass user, as nats-server reported it
/// (`io.nats.server.advisory.v1.client_connect` on `$SYS.ACCOUNT.<SYS>.CONNECT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// The event stream's sequence.
    pub seq: u64,
    /// When the server saw it (RFC 3339, the server's clock).
    pub at: String,
    /// The server's name.
    pub server: String,
    /// The client's IP address.
    pub host: String,
    /// The break-glass user key.
    pub user: String,
    /// The bundle it belongs to.
    pub fingerprint: String,
    /// The client's connection name.
    #[serde(default)]
    pub name: String,
}

/// The connect event fields tillit reads.
#[derive(Debug, Deserialize)]
struct ConnectEvent {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    timestamp: String,
    #[serde(default)]
    server: EventServer,
    #[serde(default)]
    client: EventClient,
}
#[derive(Debug, Default, Deserialize)]
struct EventServer {
    #[serde(default)]
    name: String,
}
#[derive(Debug, Default, Deserialize)]
struct EventClient {
    #[serde(default)]
    host: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    acc: String,
    #[serde(default)]
    name: String,
}

/// nats-server's connect event type.
pub const CONNECT_EVENT_TYPE: &str = "io.nats.server.advisory.v1.client_connect";

/// Whether a stored connect event is a break-glass connection (pure): a connect event, in the
/// system account, of a user key some bundle (current or rotated away) holds.
pub fn judge_event(seq: u64, payload: &[u8], system_account: &str, record: &PublicRecord) -> Option<Connection> {
    let ev: ConnectEvent = serde_json::from_slice(payload).ok()?;
    if ev.kind != CONNECT_EVENT_TYPE || ev.client.acc != system_account {
        return None;
    }
    let fingerprint = record.owner_of(&ev.client.user)?.to_string();
    let clip = |s: &str| s.chars().take(128).collect::<String>();
    Some(Connection {
        seq,
        at: clip(&ev.timestamp),
        server: clip(&ev.server.name),
        host: clip(&ev.client.host),
        user: ev.client.user,
        fingerprint,
        name: clip(&ev.client.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::jwt::Claims;

    const NOW: i64 = 1_780_000_000;

    fn bundle() -> Bundle {
        let sys = nkeys::KeyPair::new_account();
        let sys_pub = sys.public_key();
        let signer = nkeys::KeyPair::new_account();
        let sign = move |user: &str, exp: i64| -> Result<String, BreakGlassError> {
            let c = Claims {
                jti: jwt::new_jti()?,
                iat: NOW,
                iss: signer.public_key(),
                sub: user.into(),
                name: Some(USER_NAME.into()),
                aud: None,
                exp: Some(exp),
                nbf: None,
                nats: UserNats {
                    kind: "user".into(),
                    version: 2,
                    permissions: jwt::UserPermissions::new(vec![], vec![]),
                    bearer_token: false,
                    issuer_account: Some(sys_pub.clone()),
                    tags: vec![],
                },
            };
            Ok(jwt::encode(&c, &signer)?)
        };
        mint(&MintInputs {
            trust_domain: "example.org",
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            hub_ca_pem: String::new(),
            operator_public_key: "OXXX",
            system_account: &sys.public_key(),
            sign_user: &sign,
            now: NOW,
        })
        .unwrap()
    }

    #[test]
    fn a_fresh_bundle_verifies_and_round_trips() {
        let b = bundle();
        let text = b.to_json();
        let findings = verify(text.expose(), NOW + 60, None);
        assert!(findings.iter().all(|f| f.ok), "{findings:#?}");
        let again = Bundle::parse(text.expose()).unwrap();
        assert_eq!(again.fingerprint, b.fingerprint);
        assert_eq!(format!("{:?}", again.ca_key_pem), "<redacted>");
        assert!(!format!("{again:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn damage_and_edits_are_named() {
        let b = bundle();
        let text = b.to_json().expose().to_string();
        // One byte of the CA key changed: the digest no longer matches.
        let edited = text.replacen("MIG", "MIH", 1);
        let f = verify(&edited, NOW, None);
        assert!(f.iter().any(|f| !f.ok && f.check == "format" && f.message.contains("digest")), "{f:#?}");
        // An edit that recomputes the digest (someone swapped the client key): the key check fails.
        let other = bundle();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["client_key_pem"] = other.client_key_pem.expose().into();
        let mut file: BundleFile = serde_json::from_value(v).unwrap();
        file.digest = digest_of(&file);
        let f = verify(&serde_json::to_string(&file).unwrap(), NOW, None);
        assert!(f.iter().any(|f| !f.ok && f.check == "client_key"), "{f:#?}");
        // Another bundle's CA: the client certificate no longer chains.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["ca_cert_pem"] = other.ca_cert_pem.clone().into();
        v["ca_key_pem"] = other.ca_key_pem.expose().into();
        v["fingerprint"] = other.fingerprint.clone().into();
        let mut file: BundleFile = serde_json::from_value(v).unwrap();
        file.digest = digest_of(&file);
        let f = verify(&serde_json::to_string(&file).unwrap(), NOW, None);
        assert!(f.iter().any(|f| !f.ok && f.check == "client_chain"), "{f:#?}");
        // Not a bundle at all.
        assert!(!verify("{\"type\":\"io.tillit.v1.backup\"}", NOW, None)[0].ok);
        assert!(!verify("garbage", NOW, None)[0].ok);
        // Expired.
        let f = verify(&text, NOW + BUNDLE_TTL_SECS + 1, None);
        assert!(f.iter().any(|f| !f.ok && f.check == "expiry"));
    }

    #[test]
    fn estate_facts_name_a_rotated_bundle() {
        let b = bundle();
        let text = b.to_json();
        let newer = bundle();
        let mut rec = newer.public("ASYS");
        rec.previous.push(Retired { fingerprint: b.fingerprint.clone(), user_public_key: b.user_public_key.clone(), operator_signing_key: b.operator_signing_key.clone(), rotated_at: NOW });
        let facts = EstateFacts { operator_jwt: None, hub_trust_pem: Some(newer.ca_cert_pem.clone()), record: Some(rec) };
        let f = verify(text.expose(), NOW, Some(&facts));
        let failed: Vec<_> = f.iter().filter(|f| !f.ok).map(|f| f.check).collect();
        assert_eq!(failed, vec!["current", "operator", "pinned"], "{f:#?}");
        assert!(f.iter().any(|f| f.message.contains("rotated away")));
    }

    #[test]
    fn only_break_glass_users_in_sys_are_connections() {
        let b = bundle();
        let rec = b.public("ASYS");
        let ev = |acc: &str, user: &str, kind: &str| {
            serde_json::to_vec(&serde_json::json!({
                "type": kind, "timestamp": "2026-01-01T00:00:00Z",
                "server": {"name": "hub"}, "client": {"host": "10.0.0.1", "user": user, "acc": acc, "name": "x"}
            }))
            .unwrap()
        };
        let c = judge_event(7, &ev("ASYSACC", &b.user_public_key, CONNECT_EVENT_TYPE), "ASYSACC", &rec).unwrap();
        assert_eq!((c.seq, c.server.as_str(), c.host.as_str(), c.fingerprint.as_str()), (7, "hub", "10.0.0.1", b.fingerprint.as_str()));
        assert!(judge_event(7, &ev("OTHER", &b.user_public_key, CONNECT_EVENT_TYPE), "ASYSACC", &rec).is_none());
        assert!(judge_event(7, &ev("ASYSACC", "UOTHER", CONNECT_EVENT_TYPE), "ASYSACC", &rec).is_none());
        assert!(judge_event(7, &ev("ASYSACC", &b.user_public_key, "io.nats.server.advisory.v1.client_disconnect"), "ASYSACC", &rec).is_none());
        assert!(judge_event(7, b"not json", "ASYSACC", &rec).is_none());
    }
}

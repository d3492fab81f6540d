//! Every file name tillit reads or writes, in one place (house rule 1).
//!
//! Two layouts are *contract*: the data dir of a control plane ([`DataDir`]) and the identity dir
//! every enrolled party holds ([`IdentityDir`]).

use std::path::{Path, PathBuf};

/// The control plane's data dir (`--data-dir`).
#[derive(Debug, Clone)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(p: impl Into<PathBuf>) -> Self {
        DataDir(p.into())
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// `tillit.toml`: the validated settings `init` wrote; `serve` reads it.
    pub fn config_file(&self) -> PathBuf {
        self.0.join("tillit.toml")
    }
    /// `master.key` (0600) unless `TILLIT_MASTER_KEY` is set.
    pub fn master_key(&self) -> PathBuf {
        self.0.join(crate::crypto::MASTER_KEY_FILE)
    }
    /// sled database.
    pub fn store(&self) -> PathBuf {
        self.0.join("store")
    }
    /// Everything the hub nats-server reads.
    pub fn nats(&self) -> PathBuf {
        self.0.join("nats")
    }
    pub fn server_conf(&self) -> PathBuf {
        self.nats().join("server.conf")
    }
    pub fn operator_jwt(&self) -> PathBuf {
        self.nats().join("operator.jwt")
    }
    /// The full resolver's JWT directory.
    pub fn resolver(&self) -> PathBuf {
        self.nats().join("resolver")
    }
    /// JetStream storage of the hub server.
    pub fn jetstream(&self) -> PathBuf {
        self.nats().join("jetstream")
    }
    /// The hub server's own TLS material (`cert.pem`, `key.pem`, `ca.pem`).
    pub fn nats_tls(&self) -> PathBuf {
        self.nats().join("tls")
    }
    /// The operator's CLI identity written by `init`.
    pub fn admin(&self) -> IdentityDir {
        IdentityDir::new(self.0.join("admin"))
    }
    /// Append-only audit log directory.
    pub fn audit(&self) -> PathBuf {
        self.0.join("audit")
    }
    /// The request-replay cache a stopped `serve` hands to the next one (MACed, 0600).
    pub fn replay_snapshot(&self) -> PathBuf {
        self.0.join("replay.json")
    }
}

/// An identity dir (*contract*): what an enrolled party holds.
#[derive(Debug, Clone)]
pub struct IdentityDir(PathBuf);

impl IdentityDir {
    pub fn new(p: impl Into<PathBuf>) -> Self {
        IdentityDir(p.into())
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// Standard NATS `.creds` (user JWT + seed), 0600.
    pub fn creds(&self) -> PathBuf {
        self.0.join("nats.creds")
    }
    pub fn tls(&self) -> PathBuf {
        self.0.join("tls")
    }
    /// Client certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.tls().join("cert.pem")
    }
    /// Client private key (PEM), 0600.
    pub fn key(&self) -> PathBuf {
        self.tls().join("key.pem")
    }
    /// CA bundle to verify the server with (PEM).
    pub fn ca(&self) -> PathBuf {
        self.tls().join("ca.pem")
    }
    /// Public keys that sign envelopes (RFC 7517 JWK Set).
    pub fn trust_jwks(&self) -> PathBuf {
        self.0.join("trust.jwks")
    }
    /// The xkey seed (curve25519) that opens deliveries sealed to this identity, 0600.
    pub fn xkey(&self) -> PathBuf {
        self.0.join("xkey.seed")
    }
    /// Who this is, where to connect, when it expires.
    pub fn identity_json(&self) -> PathBuf {
        self.0.join("identity.json")
    }
}

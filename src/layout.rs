//! Every file name tillit reads or writes, in one place (house rule 1).
//!
//! Three layouts are *contract*: the data dir of a control plane ([`DataDir`]), the identity dir
//! every enrolled party holds ([`IdentityDir`]) and the site dir `tillit site add` writes and the
//! site agent materialises into ([`SiteDir`]).

use crate::secrets::SecretPath;
use std::path::{Path, PathBuf};

/// `tls()`, `cert()` and `key()` of a directory with a `tls/` subdirectory (identity, site).
macro_rules! tls_files {
    ($whose:literal) => {
        /// The TLS subdirectory.
        pub fn tls(&self) -> PathBuf {
            self.0.join(TLS_DIR)
        }
        #[doc = concat!($whose, " certificate (PEM).")]
        pub fn cert(&self) -> PathBuf {
            self.tls().join(CERT_FILE)
        }
        #[doc = concat!($whose, " private key (PEM), 0600.")]
        pub fn key(&self) -> PathBuf {
            self.tls().join(KEY_FILE)
        }
    };
}

/// Names the data dir's `nats/`, the identity dir and the site dir share.
const TLS_DIR: &str = "tls";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const SERVER_CONF: &str = "server.conf";
const OPERATOR_JWT: &str = "operator.jwt";
const JETSTREAM_DIR: &str = "jetstream";
const CA_FILE: &str = "ca.pem";
const OCSP_CACHE_DIR: &str = "ocsp-cache";

/// File name of the audit log inside `DATA/audit` ([`DataDir::audit`]).
pub const AUDIT_FILE: &str = "audit.jsonl";
/// File name of the audit log's head anchor inside `DATA/audit`.
pub const AUDIT_HEAD_FILE: &str = "head.json";

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
        self.0.join("master.key")
    }
    /// sled database.
    pub fn store(&self) -> PathBuf {
        self.0.join("store")
    }
    /// `store-access.sealed` (0600): the credentials that reach a JetStream store, sealed by the
    /// master key.
    pub fn store_access(&self) -> PathBuf {
        self.0.join("store-access.sealed")
    }
    /// Everything the hub nats-server reads.
    pub fn nats(&self) -> PathBuf {
        self.0.join("nats")
    }
    pub fn server_conf(&self) -> PathBuf {
        self.nats().join(SERVER_CONF)
    }
    /// With a clustered hub: node `n`'s configuration (`DATA/nats/server-<n>.conf`).
    pub fn node_conf(&self, n: usize) -> PathBuf {
        self.nats().join(format!("server-{n}.conf"))
    }
    /// With a clustered hub: node `n`'s own files (certificate, resolver, JetStream, OCSP cache).
    pub fn node_dir(&self, n: usize) -> PathBuf {
        self.nats().join(format!("node-{n}"))
    }
    pub fn operator_jwt(&self) -> PathBuf {
        self.nats().join(OPERATOR_JWT)
    }
    /// The full resolver's JWT directory.
    pub fn resolver(&self) -> PathBuf {
        self.nats().join("resolver")
    }
    /// JetStream storage of the hub server.
    pub fn jetstream(&self) -> PathBuf {
        self.nats().join(JETSTREAM_DIR)
    }
    /// The hub server's own TLS material.
    pub fn nats_tls(&self) -> PathBuf {
        self.nats().join("tls")
    }
    /// The hub server's certificate (PEM).
    pub fn nats_cert(&self) -> PathBuf {
        self.nats_tls().join("cert.pem")
    }
    /// The hub server's private key (PEM), 0600.
    pub fn nats_key(&self) -> PathBuf {
        self.nats_tls().join("key.pem")
    }
    /// The CA bundle the hub server verifies clients and leafnodes with (PEM).
    pub fn nats_ca(&self) -> PathBuf {
        self.nats_tls().join(CA_FILE)
    }
    /// The hub server's OCSP answer cache.
    pub fn ocsp_cache(&self) -> PathBuf {
        self.nats().join(OCSP_CACHE_DIR)
    }
    /// The hub server's output under `tillit dev`.
    pub fn nats_log(&self) -> PathBuf {
        self.nats().join("nats-server.log")
    }
    /// The operator's CLI identity written by `init`.
    pub fn admin(&self) -> IdentityDir {
        IdentityDir::new(self.0.join("admin"))
    }
    /// Append-only audit log directory.
    pub fn audit(&self) -> PathBuf {
        self.0.join("audit")
    }
    /// The audit log itself.
    pub fn audit_log(&self) -> PathBuf {
        self.audit().join(AUDIT_FILE)
    }
    /// What `tillit responder` runs with (`responder/`).
    pub fn responder(&self) -> PathBuf {
        self.0.join("responder")
    }
    /// The responder's NATS access (`responder/access.json`, 0600): a user that may only read
    /// the pre-signed OCSP answers.
    pub fn responder_access(&self) -> PathBuf {
        self.responder().join("access.json")
    }
    /// The responder's copy of the answers.
    pub fn responder_answers(&self) -> PathBuf {
        self.responder().join(OCSP_ANSWERS_FILE)
    }
    /// `serve`'s copy of the pre-signed OCSP answers (public data; answered from at start).
    pub fn ocsp_answers(&self) -> PathBuf {
        self.0.join(OCSP_ANSWERS_FILE)
    }
    /// Kept replies a single `serve` could not hold in memory (two files taking turns, sealed
    /// records, 0600): `replies-0.spill`, `replies-1.spill`.
    pub fn reply_spill(&self) -> [PathBuf; 2] {
        [self.0.join("replies-0.spill"), self.0.join("replies-1.spill")]
    }
    /// The request-replay cache a stopped `serve` hands to the next one (MACed, 0600).
    pub fn replay_snapshot(&self) -> PathBuf {
        self.0.join("replay.json")
    }
    /// The marker a data dir keeps once its sled store was copied into a JetStream bucket.
    pub fn migrated_marker(&self) -> PathBuf {
        self.0.join(MIGRATED_MARKER)
    }
    /// Where `init` writes the break-glass bundle (0600), to be moved offline at once.
    pub fn break_glass_bundle(&self) -> PathBuf {
        self.0.join(BREAK_GLASS_BUNDLE)
    }
    /// The public facts of the break-glass bundle (`crate::breakglass::PublicRecord`), for
    /// `tillit break-glass verify --data-dir` without the master key.
    pub fn break_glass_record(&self) -> PathBuf {
        self.0.join(BREAK_GLASS_RECORD)
    }
    /// The client certificate (`tls/cert.pem`, `tls/key.pem` 0600, `tls/ca.pem`) the users of an
    /// operator taken over from nsc present with their `.creds` (`tillit import nsc`).
    pub fn nsc_clients(&self) -> IdentityDir {
        IdentityDir::new(self.0.join(NSC_CLIENTS_DIR))
    }
    /// The Unix socket (0600) a running `serve` on a sled store answers `tillit backup` on.
    pub fn serve_socket(&self) -> PathBuf {
        self.0.join(SERVE_SOCKET)
    }

    /// Whether the data dir entry at `rel` (relative to the root) stays out of a backup: the
    /// master key (kept separately, never in a backup), what a backup carries in another form
    /// (the store: its records; the audit log: its lines), and what is regenerated at run time
    /// (nats-server's JetStream and OCSP cache, logs, pid files, the replay cache, kept replies, the serve
    /// socket, the migration marker, temp and staging files, which are hidden).
    pub fn not_backed_up(rel: &Path) -> bool {
        let mut parts = rel.components().filter_map(|c| match c {
            std::path::Component::Normal(n) => n.to_str(),
            _ => None,
        });
        let Some(first) = parts.next() else { return true };
        // The break-glass bundle never travels with the estate, not even sealed.
        if ["master.key", "store", "audit", "replay.json", MIGRATED_MARKER, SERVE_SOCKET, BREAK_GLASS_BUNDLE].contains(&first) {
            return true;
        }
        rel.components().any(|c| {
            let n = c.as_os_str().to_string_lossy();
            n.starts_with('.')
                || n == JETSTREAM_DIR
                || n == OCSP_CACHE_DIR
                || n == OCSP_ANSWERS_FILE
                || n.ends_with(".spill")
                || n.ends_with(".log")
                || n.ends_with(".pid")
        })
    }
}

/// File name of a responder's copy of the pre-signed OCSP answers (public, read again from the
/// bucket: never backed up).
const OCSP_ANSWERS_FILE: &str = "ocsp-answers.json";
/// File name of the marker [`DataDir::migrated_marker`].
const MIGRATED_MARKER: &str = "store.migrated";
/// File name of [`DataDir::break_glass_bundle`].
const BREAK_GLASS_BUNDLE: &str = "break-glass.bundle";
/// File name of [`DataDir::break_glass_record`].
const BREAK_GLASS_RECORD: &str = "break-glass.json";
/// Directory name of [`DataDir::nsc_clients`].
const NSC_CLIENTS_DIR: &str = "nsc-clients";
/// File name of [`DataDir::serve_socket`].
const SERVE_SOCKET: &str = "serve.sock";

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
    tls_files!("Client");
    /// CA bundle to verify the server with (PEM).
    pub fn ca(&self) -> PathBuf {
        self.tls().join(CA_FILE)
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

/// A site dir (*contract*): what `tillit site add` writes for a site's leaf nats-server, and the
/// directory the site's agent materialises into (`tillit agent --out`, FILES): the CA bundle,
/// secrets, its state and, when `site add` wrote them there, the site server's files it renews.
#[derive(Debug, Clone)]
pub struct SiteDir(PathBuf);

impl SiteDir {
    pub fn new(p: impl Into<PathBuf>) -> Self {
        SiteDir(p.into())
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// The site server's configuration (`nats-server -c`).
    pub fn server_conf(&self) -> PathBuf {
        self.0.join(SERVER_CONF)
    }
    pub fn operator_jwt(&self) -> PathBuf {
        self.0.join(OPERATOR_JWT)
    }
    /// CA bundle (PEM) the site server verifies with; the agent rewrites it on a CA rotation.
    pub fn ca(&self) -> PathBuf {
        self.0.join(CA_FILE)
    }
    tls_files!("The site server's");
    /// Creds (0600) of the leafnode remote in the system account.
    pub fn sys_creds(&self) -> PathBuf {
        self.0.join("leaf-sys.creds")
    }
    /// Creds (0600) of the leafnode remote in the TILLIT account.
    pub fn tillit_creds(&self) -> PathBuf {
        self.0.join("leaf-tillit.creds")
    }
    /// The agent's join token (0600).
    pub fn agent_token(&self) -> PathBuf {
        self.0.join("agent.token")
    }
    /// Where `site add` tells the agent to enroll.
    pub fn agent_identity(&self) -> IdentityDir {
        IdentityDir::new(self.0.join("agent"))
    }
    /// The site server's full resolver JWT directory.
    pub fn resolver(&self) -> PathBuf {
        self.0.join("jwt")
    }
    /// JetStream storage of the site server.
    pub fn jetstream(&self) -> PathBuf {
        self.0.join(JETSTREAM_DIR)
    }
    /// The site server's pid (the agent's hook signals it).
    pub fn pid_file(&self) -> PathBuf {
        self.0.join("nats-server.pid")
    }
    /// The site server's OCSP answer cache.
    pub fn ocsp_cache(&self) -> PathBuf {
        self.0.join(OCSP_CACHE_DIR)
    }
    /// The agent's state (last sequence applied, secrets' versions), 0600.
    pub fn agent_state(&self) -> PathBuf {
        self.0.join(".tillit-agent.json")
    }
    /// The agent's copy of the pre-signed OCSP answers (`--ocsp-addr`).
    pub fn ocsp_answers(&self) -> PathBuf {
        self.0.join(".tillit-ocsp.json")
    }
    /// Materialised secrets.
    pub fn secrets(&self) -> PathBuf {
        self.0.join("secrets")
    }
    /// Where the secret `path` is materialised: `secrets/TENANT/PROJECT/ENV/NAME`.
    pub fn secret(&self, path: &SecretPath) -> PathBuf {
        self.secrets().join(&path.tenant).join(&path.project).join(&path.env).join(&path.name)
    }
}

/// The `nats` CLI's configuration dir (not ours; its layout is the CLI's, written by `tillit
/// context`): `$XDG_CONFIG_HOME/nats`, else `~/.config/nats`.
#[derive(Debug, Clone)]
pub struct NatsConfigDir(PathBuf);

impl NatsConfigDir {
    pub fn new(p: impl Into<PathBuf>) -> Self {
        NatsConfigDir(p.into())
    }
    /// Where the `nats` CLI looks: `$XDG_CONFIG_HOME/nats`, else `$HOME/.config/nats`.
    pub fn default_location() -> Option<Self> {
        let xdg = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
        let base = xdg.or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
        Some(NatsConfigDir(base.join("nats")))
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// The contexts: `context/<name>.json`.
    pub fn contexts(&self) -> PathBuf {
        self.0.join("context")
    }
    /// One context's file.
    pub fn context(&self, name: &str) -> PathBuf {
        self.contexts().join(format!("{name}.json"))
    }
    /// The selected context's name (`nats context select`).
    pub fn selected(&self) -> PathBuf {
        self.0.join("context.txt")
    }
}

/// Files of `tillit bench`'s cfssl baseline in its scratch dir (relative: cfssl runs there).
pub mod cfssl {
    pub const CA_CSR: &str = "ca-csr.json";
    pub const CA: &str = "ca.pem";
    pub const CA_KEY: &str = "ca-key.pem";
    pub const LOG: &str = "cfssl.log";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(root: &str, p: PathBuf) -> String {
        p.strip_prefix(root).unwrap().display().to_string()
    }

    /// The layouts are a contract: these names never change.
    #[test]
    fn file_names_are_the_contract() {
        let d = DataDir::new("/d");
        let got: Vec<String> = [
            d.config_file(),
            d.master_key(),
            d.store(),
            d.server_conf(),
            d.operator_jwt(),
            d.resolver(),
            d.jetstream(),
            d.nats_cert(),
            d.nats_key(),
            d.nats_ca(),
            d.ocsp_cache(),
            d.nats_log(),
            d.admin().creds(),
            d.audit_log(),
            d.audit().join(AUDIT_HEAD_FILE),
            d.replay_snapshot(),
            d.reply_spill()[0].clone(),
            d.reply_spill()[1].clone(),
            d.migrated_marker(),
            d.serve_socket(),
        ]
        .into_iter()
        .map(|p| rel("/d", p))
        .collect();
        assert_eq!(
            got,
            [
                "tillit.toml",
                "master.key",
                "store",
                "nats/server.conf",
                "nats/operator.jwt",
                "nats/resolver",
                "nats/jetstream",
                "nats/tls/cert.pem",
                "nats/tls/key.pem",
                "nats/tls/ca.pem",
                "nats/ocsp-cache",
                "nats/nats-server.log",
                "admin/nats.creds",
                "audit/audit.jsonl",
                "audit/head.json",
                "replay.json",
                "replies-0.spill",
                "replies-1.spill",
                "store.migrated",
                "serve.sock",
            ]
        );
        for (rel, out) in [
            ("master.key", true),
            ("store/db", true),
            ("audit/audit.jsonl", true),
            ("replay.json", true),
            ("replies-0.spill", true),
            ("serve.sock", true),
            ("nats/jetstream/x", true),
            ("nats/node-1/jetstream/y", true),
            ("nats/ocsp-cache/a", true),
            ("nats/nats-server.log", true),
            ("serve-123.log", true),
            ("nats/.key.pem.tmp-1", true),
            (".data.restore-1", true),
            ("tillit.toml", false),
            ("nats/tls/key.pem", false),
            ("nats/resolver/ABC.jwt", false),
            ("admin/nats.creds", false),
            ("store-access.sealed", false),
        ] {
            assert_eq!(DataDir::not_backed_up(Path::new(rel)), out, "{rel}");
        }
        let i = IdentityDir::new("/i");
        let got: Vec<String> =
            [i.creds(), i.cert(), i.key(), i.ca(), i.trust_jwks(), i.xkey(), i.identity_json()].into_iter().map(|p| rel("/i", p)).collect();
        assert_eq!(got, ["nats.creds", "tls/cert.pem", "tls/key.pem", "tls/ca.pem", "trust.jwks", "xkey.seed", "identity.json"]);
        let s = SiteDir::new("/s");
        let secret = SecretPath { tenant: "t".into(), project: "p".into(), env: "e".into(), name: "n".into() };
        let got: Vec<String> = [
            s.server_conf(),
            s.operator_jwt(),
            s.ca(),
            s.cert(),
            s.key(),
            s.sys_creds(),
            s.tillit_creds(),
            s.agent_token(),
            s.agent_identity().root().to_path_buf(),
            s.resolver(),
            s.jetstream(),
            s.pid_file(),
            s.ocsp_cache(),
            s.agent_state(),
            s.secret(&secret),
        ]
        .into_iter()
        .map(|p| rel("/s", p))
        .collect();
        assert_eq!(
            got,
            [
                "server.conf",
                "operator.jwt",
                "ca.pem",
                "tls/cert.pem",
                "tls/key.pem",
                "leaf-sys.creds",
                "leaf-tillit.creds",
                "agent.token",
                "agent",
                "jwt",
                "jetstream",
                "nats-server.pid",
                "ocsp-cache",
                ".tillit-agent.json",
                "secrets/t/p/e/n",
            ]
        );
    }
}

//! `tillit init --data-dir D --trust-domain TD --nats-url nats://HOST:PORT [--http-addr HOST:PORT]`

use crate::clock::SystemClock;
use crate::init::{init, InitOptions, InitSummary};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub estate: EstateArgs,
    /// Where the records live: `sled` (embedded; one `tillit serve`) or `jetstream` (a KV bucket
    /// and a journal stream on the hub's NATS; `tillit serve` may run several times). With
    /// `jetstream` the estate is made here and copied into the bucket at the first `serve`.
    #[arg(long, env = "TILLIT_STORE", default_value = "sled", value_parser = ["sled", "jetstream"])]
    pub store: String,
    /// How nats-server authenticates services: `jwt` (it checks the user JWT and the certificate
    /// separately) or `callout` (tillit decides each connection: certificate and nkey must be one
    /// identity's, and no ceiling of services per account). `tillit auth-mode` switches later.
    #[arg(long, env = "TILLIT_AUTH", default_value = "jwt", value_parser = ["jwt", "callout"])]
    pub auth: String,
}

/// The flags of the data dir to make, shared by `init` and `import nsc` (whose `--store` names
/// nsc's store, so the backend is each command's own flag).
#[derive(Debug, clap::Args)]
pub struct EstateArgs {
    /// Data dir to create (refused if it already holds one, unless --force).
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// SPIFFE trust domain, e.g. example.org.
    #[arg(long, env = "TILLIT_TRUST_DOMAIN")]
    pub trust_domain: String,
    /// URL clients dial; the generated nats-server listens on its port.
    #[arg(long, env = "TILLIT_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Address of the control plane's HTTP port (health, metrics).
    #[arg(long, env = "TILLIT_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// URL nats-servers reach the HTTP port at for OCSP (default: http://HTTP-ADDR), e.g.
    /// http://tillit:8080 in docker compose.
    #[arg(long, env = "TILLIT_HTTP_PUBLIC_URL")]
    pub http_public_url: Option<String>,
    /// A listener of its own for /metrics (HOST:PORT); without it /metrics is served on the
    /// HTTP port only when that is bound to loopback.
    #[arg(long, env = "TILLIT_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// nats-server monitoring address (HOST:PORT), off by default.
    #[arg(long, env = "TILLIT_MONITOR_ADDR")]
    pub monitor_addr: Option<String>,
    /// Add a leafnode listener (TLS) on this port for site servers (`tillit site add`).
    #[arg(long, env = "TILLIT_LEAF_PORT")]
    pub leaf_port: Option<u16>,
    /// The HTTP base URL of another `serve` replica (repeatable): certificates name every
    /// replica's OCSP responder, so new connections keep working when one replica is down.
    #[arg(long = "replica-url")]
    pub replica_urls: Vec<String>,
    /// Generate the configs of a clustered hub of this many nodes (3, 5 or 7): one
    /// `nats/server-<n>.conf` per node with its own certificate, routes with mutual TLS. Node n
    /// listens on --nats-url's port + n-1 (and --leaf-port + n-1), routes on --cluster-port + n-1.
    #[arg(long, requires = "cluster_port")]
    pub cluster: Option<usize>,
    /// The first node's route port (with --cluster).
    #[arg(long)]
    pub cluster_port: Option<u16>,
    /// Replication of the JetStream bucket and journal (1 on one server, 3 on a cluster).
    #[arg(long, default_value_t = 1)]
    pub store_replicas: usize,
    /// Base URL of the OCSP responder that runs next to every nats-server (`tillit responder`
    /// at the hub, `tillit agent --ocsp-addr` at a site), named first in every certificate;
    /// `""` for none. Default `http://127.0.0.1:7871`.
    #[arg(long, env = "TILLIT_OCSP_LOCAL_URL")]
    pub ocsp_local_url: Option<String>,
    /// What nats-servers do when no OCSP responder answers: `refuse` the connection, or `admit`
    /// it when its JWT is valid (see the README's "When the control plane or the hub is away").
    #[arg(long, env = "TILLIT_OCSP_WHEN_UNREACHABLE", value_parser = ["refuse", "admit"])]
    pub ocsp_when_unreachable: Option<String>,
    /// Replace an existing data dir (its keys and identities are lost).
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut opts = a.estate.options(a.store, None);
    opts.auth = crate::estate::callout::AuthMode::parse(&a.auth).unwrap_or_default();
    let s = init(&opts, Arc::new(SystemClock))?;
    print_summary(&s, true);
    Ok(())
}

impl EstateArgs {
    /// What `init` is asked to do, with the store backend and what to take over.
    pub(crate) fn options(self, store: String, adopt: Option<Arc<crate::nsc::Adoption>>) -> InitOptions {
        let a = self;
        InitOptions {
            data_dir: a.data_dir,
            trust_domain: a.trust_domain,
            nats_url: a.nats_url,
            http_addr: a.http_addr,
            http_public_url: a.http_public_url,
            metrics_addr: a.metrics_addr,
            monitor_addr: a.monitor_addr,
            leaf_port: a.leaf_port,
            store,
            replica_urls: a.replica_urls,
            cluster: a.cluster.zip(a.cluster_port),
            store_replicas: a.store_replicas,
            ocsp_local_url: a.ocsp_local_url,
            ocsp_when_unreachable: a.ocsp_when_unreachable,
            force: a.force,
            adopt,
            auth: crate::estate::callout::AuthMode::Jwt,
        }
    }
}

pub fn print_summary(s: &InitSummary, next_steps: bool) {
    println!("initialised trust domain {} in {}", s.trust_domain, s.data_dir.display());
    println!("  operator            {}", s.operator);
    if s.node_confs.is_empty() {
        println!("  nats-server config  {}", s.server_conf.display());
    }
    for (i, c) in s.node_confs.iter().enumerate() {
        println!("  hub node {}          {}", i + 1, c.display());
    }
    println!("  admin identity      {}", s.admin_dir.display());
    match &s.master_key_file {
        Some(p) => println!("  master key          {} (back it up: without it the data dir cannot be opened)", p.display()),
        None => println!("  master key          from TILLIT_MASTER_KEY (not written to disk)"),
    }
    println!("  break-glass bundle  {} ({})", s.break_glass_bundle.display(), s.break_glass_fingerprint);
    println!("    MOVE IT OFFLINE NOW (a safe, an offline medium) and delete it here: it opens the system account");
    println!("    with a CA and an operator signing key of its own. Check a copy with `tillit break-glass verify`.");
    if !next_steps {
        return;
    }
    // The nats-server to run: where this machine has one (the pinned PyPI package keeps it off PATH).
    let ns = crate::natsbin::locate().map(|p| p.display().to_string()).unwrap_or_else(|_| "nats-server".into());
    println!("next:");
    if s.node_confs.is_empty() {
        println!("  {ns} -c {}", s.server_conf.display());
    }
    for c in &s.node_confs {
        println!("  {ns} -c {}", c.display());
    }
    println!("  tillit responder --data-dir {}   # OCSP next to nats-server, also while serve is down", s.data_dir.display());
    println!("  tillit serve --data-dir {}", s.data_dir.display());
    println!("  tillit status --identity {}", s.admin_dir.display());
}

/// `tillit auth-mode --data-dir D jwt|callout`: switch how nats-server authenticates services,
/// with `serve` stopped. Every tenant account JWT is re-signed for the mode (the next `serve`
/// pushes them); services keep their identity dirs either way.
#[derive(Debug, clap::Args)]
pub struct AuthModeArgs {
    /// The data dir (`tillit serve` stopped: the switch is offline, then the hub's `serve` restarts).
    #[arg(long, env = "TILLIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// `jwt` or `callout`.
    #[arg(value_parser = ["jwt", "callout"])]
    pub mode: String,
}

pub fn auth_mode(a: AuthModeArgs) -> anyhow::Result<()> {
    use crate::estate::callout::AuthMode;
    let mode = AuthMode::parse(&a.mode).unwrap_or_default();
    let dir = crate::layout::DataDir::new(&a.data_dir);
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let estate = super::open_offline(&dir, clock.clone(), "auth-mode", "the switch is offline, then serve restarts and pushes the accounts")?;
    let before = estate.auth_mode();
    let accounts = estate.set_auth_mode(mode)?;
    let mut audit = crate::audit::Writer::open(&dir.audit(), estate.store_arc(), clock, estate.audit_key())?;
    audit.append(vec![crate::audit::Entry::ok("tillit", "auth.mode", mode.as_str())
        .detail(serde_json::json!({ "from": before.as_str(), "to": mode.as_str(), "accounts": accounts.iter().map(|a| &a.name).collect::<Vec<_>>() }))])?;
    println!("auth mode {} (was {}); {} account JWT(s) re-signed: start `tillit serve` to push them", mode.as_str(), before.as_str(), accounts.len());
    if before == AuthMode::Callout && mode == AuthMode::Jwt {
        // nats-server 2.14 keeps an account's callout after a JWT without it replaces the one
        // with it (nats-io/nats-server#8272, fixed after 2.14.3): only a restart clears it.
        println!(
            "once serve has pushed them, restart the hub's nats-server(s) (and the site servers): nats-server 2.14 keeps asking the callout after the account JWTs change (nats-server#8272)"
        );
    }
    Ok(())
}

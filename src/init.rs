//! `tillit init`: create a data dir with new trust roots, all or nothing.
//!
//! Everything is built in a hidden staging directory beside the target and renamed into place at
//! the end, so a failure at any step leaves no half-made data dir. An existing, non-empty data dir
//! is replaced only with `--force` (its keys are gone afterwards: the estate is new).
//!
//! `tillit import nsc` is the same path with [`InitOptions::adopt`]: the operator key, the system
//! account and the other accounts come from an nsc store ([`crate::nsc`]) instead of being made
//! new, each recorded in the audit log by `import`.

use crate::clock::SharedClock;
use crate::config::{raw_for_init, Config, ConfigError};
use crate::crypto::{CryptoError, MasterKey, MASTER_KEY_ENV};
use crate::estate::{Estate, EstateError, SYS_ACCOUNT, TILLIT_ACCOUNT};
use crate::fsutil::{self, Replace, WriteDirError, PRIVATE, PRIVATE_DIR, PUBLIC};
use crate::identity;
use crate::layout::DataDir;
use crate::natsconf::{self, ServerTrust};
use crate::store::{SledStore, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `init` is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct InitOptions {
    pub data_dir: PathBuf,
    pub trust_domain: String,
    pub nats_url: String,
    pub http_addr: Option<String>,
    /// Base URL nats-servers reach the HTTP port at (OCSP, CRL), when not the listen address.
    pub http_public_url: Option<String>,
    /// `http.metrics_addr`: `/metrics` on a listener of its own.
    pub metrics_addr: Option<String>,
    pub monitor_addr: Option<String>,
    /// Port of the hub's leafnode listener for site servers (off when absent).
    pub leaf_port: Option<u16>,
    /// `store.backend`: `sled` or `jetstream`.
    pub store: String,
    /// `store.replicas`.
    pub store_replicas: usize,
    /// `http.replica_urls`.
    pub replica_urls: Vec<String>,
    /// A clustered hub: how many nodes, and the first node's route port (the others count up
    /// from it, as their client ports count up from `nats_url`'s).
    pub cluster: Option<(usize, u16)>,
    /// `ocsp.local_url` (`None`: the default; `""`: none).
    pub ocsp_local_url: Option<String>,
    /// `ocsp.when_unreachable` (`None`: the default).
    pub ocsp_when_unreachable: Option<String>,
    pub force: bool,
    /// Take over an operator managed with nsc (`tillit import nsc`) instead of making new roots.
    pub adopt: Option<Arc<crate::nsc::Adoption>>,
    /// How nats-server authenticates connections to tenant accounts (`--auth`).
    pub auth: crate::estate::callout::AuthMode,
}

/// How long the store access `init` writes is valid; every running replica renews it.
/// How long the OCSP responder's access is valid; `serve` renews it at half its life, and a
/// responder keeps answering from its copy after it expired.
pub(crate) const RESPONDER_ACCESS_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
pub(crate) const STORE_ACCESS_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// What `init` made.
#[derive(Debug, Clone)]
pub struct InitSummary {
    pub data_dir: PathBuf,
    pub trust_domain: String,
    pub nats_urls: Vec<String>,
    pub http_addr: String,
    pub server_conf: PathBuf,
    /// With a clustered hub: every node's configuration (no `server_conf` then).
    pub node_confs: Vec<PathBuf>,
    pub admin_dir: PathBuf,
    pub master_key_file: Option<PathBuf>,
    pub operator: String,
    /// The break-glass bundle (to be moved offline) and its fingerprint.
    pub break_glass_bundle: PathBuf,
    pub break_glass_fingerprint: String,
    /// Adopted accounts (`tillit import nsc`): the tillit account each became.
    pub adopted: Vec<String>,
    /// The client certificate dir for users adopted from nsc, when any keep working.
    pub nsc_clients: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    #[error("{dir} already holds a tillit data dir{}; pass --force to replace it (its keys and identities are lost) or choose another --data-dir", trust_domain.as_ref().map(|t| format!(" for trust domain {t:?}")).unwrap_or_default())]
    Exists { dir: String, trust_domain: Option<String> },
    #[error("{dir} exists and is not a tillit data dir; choose an empty or new --data-dir")]
    NotOurs { dir: String },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    #[error("{0}")]
    Estate(#[from] EstateError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    #[error("{0}")]
    Nsc(#[from] crate::nsc::NscError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io { path: path.display().to_string(), source }
}

fn absolute(p: &Path) -> Result<PathBuf, InitError> {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map_err(io(p))?.join(p) };
    // Normalise `.` and `..` without requiring the path to exist.
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// One node of a clustered hub, as `init --cluster` lays it out.
struct ClusterNode {
    index: usize,
    url: String,
    listen: String,
    leaf_listen: Option<String>,
    route_listen: String,
    route_url: String,
}

/// The nodes of `--cluster N --cluster-port P`: node n listens for clients on `nats_url`'s
/// port plus n-1 and for routes on P plus n-1, on `nats_url`'s host (one machine; on several,
/// edit each `server-<n>.conf`'s addresses).
fn cluster_nodes(opts: &InitOptions) -> Result<Vec<ClusterNode>, InitError> {
    let Some((size, route_port)) = opts.cluster else { return Ok(vec![]) };
    if !(3..=7).contains(&size) || size % 2 == 0 {
        return Err(ConfigError::Invalid("--cluster takes an odd number of nodes from 3 to 7 (JetStream needs a majority)".into()).into());
    }
    let u = crate::config::NatsUrl::parse(&opts.nats_url)?;
    let host = u.bare_host().to_string();
    let listen_host = if host == "localhost" { "127.0.0.1".to_string() } else { host.clone() };
    let bracket = |h: &str| if h.contains(':') { format!("[{h}]") } else { h.to_string() };
    let scheme = opts.nats_url.split("://").next().unwrap_or("nats");
    let port_at = |base: u16, i: usize| -> Result<u16, InitError> {
        base.checked_add(i as u16).ok_or_else(|| ConfigError::Invalid(format!("port {base} + {i} is past 65535")).into())
    };
    (0..size)
        .map(|i| {
            let (client, route) = (port_at(u.port, i)?, port_at(route_port, i)?);
            Ok(ClusterNode {
                index: i + 1,
                url: format!("{scheme}://{}:{client}", bracket(&host)),
                listen: format!("{}:{client}", bracket(&listen_host)),
                leaf_listen: opts.leaf_port.map(|p| port_at(p, i).map(|p| format!("{}:{p}", bracket(&listen_host)))).transpose()?,
                route_listen: format!("{}:{route}", bracket(&listen_host)),
                route_url: format!("nats-route://{}:{route}", bracket(&host)),
            })
        })
        .collect()
}

/// Create a new data dir.
pub(crate) fn init(opts: &InitOptions, clock: SharedClock) -> Result<InitSummary, InitError> {
    let mut raw = raw_for_init(&opts.trust_domain, &opts.nats_url, opts.http_addr.as_deref());
    raw.nats.monitor_addr = opts.monitor_addr.clone();
    raw.nats.leaf_port = opts.leaf_port;
    raw.http.public_url = opts.http_public_url.clone();
    raw.http.metrics_addr = opts.metrics_addr.clone();
    raw.store.backend = opts.store.clone();
    raw.store.replicas = opts.store_replicas;
    raw.http.replica_urls = opts.replica_urls.clone();
    if let Some(u) = &opts.ocsp_local_url {
        raw.ocsp.local_url = u.clone();
    }
    if let Some(w) = &opts.ocsp_when_unreachable {
        raw.ocsp.when_unreachable = w.clone();
    }
    let nodes = cluster_nodes(opts)?;
    if !nodes.is_empty() {
        raw.nats.urls = nodes.iter().map(|n| n.url.clone()).collect();
    }
    let config = Config::from_raw(raw)?;
    let target = absolute(&opts.data_dir)?;

    let empty = fsutil::is_absent_or_empty_dir(&target).map_err(io(&target))?;
    if !empty {
        let existing = DataDir::new(&target);
        if !existing.config_file().exists() && !existing.store().exists() {
            return Err(InitError::NotOurs { dir: target.display().to_string() });
        }
        if !opts.force {
            let trust_domain = Config::load(&existing.config_file()).ok().map(|c| c.trust_domain);
            return Err(InitError::Exists { dir: target.display().to_string(), trust_domain });
        }
    }

    // Build in a staging dir, then swap it into place (a replaced data dir is restored if the
    // new one cannot take its place).
    let replace = if empty { Replace::IfEmpty } else { Replace::Swap };
    fsutil::write_dir_atomic(&target, "init", replace, |staging| build(staging, &target, config, &nodes, opts.adopt.as_deref(), opts.auth, clock)).map_err(|e| match e {
        WriteDirError::Fill(e) => e,
        WriteDirError::NotEmpty { path, source } | WriteDirError::Io { path, source, .. } => {
            InitError::Io { path: path.display().to_string(), source }
        }
    })
}

fn build(staging: &Path, target: &Path, config: Config, nodes: &[ClusterNode], adopt: Option<&crate::nsc::Adoption>, auth: crate::estate::callout::AuthMode, clock: SharedClock) -> Result<InitSummary, InitError> {
    let stage = DataDir::new(staging);
    let fin = DataDir::new(target);

    let (master, master_key_file) = match std::env::var(MASTER_KEY_ENV) {
        Ok(v) => (MasterKey::from_hex(&v, MASTER_KEY_ENV)?, None),
        Err(_) => {
            let k = MasterKey::generate()?;
            fsutil::write_atomic(&stage.master_key(), k.to_hex().as_bytes(), PRIVATE).map_err(io(&stage.master_key()))?;
            (k, Some(fin.master_key()))
        }
    };

    fsutil::create_dir(&stage.store(), PRIVATE_DIR).map_err(io(&stage.store()))?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&stage.store()).map_err(EstateError::from)?);
    let roots = adopt.map(|a| a.roots()).transpose()?;
    let estate = Estate::create_with(fin.clone(), config.clone(), store, master.clone(), clock, roots.as_ref())?;
    if auth != crate::estate::callout::AuthMode::Jwt {
        estate.set_auth_mode(auth)?;
    }
    let adopted = match adopt {
        Some(a) => estate.adopt_accounts(&a.other_accounts()?)?,
        None => vec![],
    };
    if let crate::config::StoreBackend::JetStream { bucket, .. } = &config.store {
        let (access, serial) = estate.store_access(bucket, STORE_ACCESS_TTL)?;
        estate.store().commit(serial).map_err(EstateError::from)?;
        access.write(&stage, &master).map_err(EstateError::from)?;
    }
    let (responder, serial) = estate.responder_access(RESPONDER_ACCESS_TTL)?;
    estate.store().commit(serial).map_err(EstateError::from)?;
    responder.write_plain(&stage.responder_access()).map_err(EstateError::from)?;
    // The break-glass bundle: its private half goes to one file only (moved offline by the
    // operator), its public half into the store, the operator JWT and the hub's trust file.
    let break_glass = estate.mint_break_glass()?;
    estate.commit_break_glass(&break_glass, true)?;
    let admin = estate.issue_admin("admin")?;
    let server = estate.issue_server_cert()?;
    let preload = preload_accounts(&estate)?;

    let w = |p: PathBuf, data: &[u8], mode: u32| fsutil::write_atomic(&p, data, mode).map_err(io(&p));
    w(stage.config_file(), config.to_toml().as_bytes(), PUBLIC)?;
    for d in [stage.nats(), stage.resolver(), stage.jetstream(), stage.nats_tls(), stage.audit()] {
        fsutil::create_dir(&d, PRIVATE_DIR).map_err(io(&d))?;
    }
    w(stage.operator_jwt(), break_glass.operator_jwt.as_bytes(), PUBLIC)?;
    w(stage.break_glass_bundle(), break_glass.bundle.to_json().expose().as_bytes(), PRIVATE)?;
    let record = serde_json::to_vec_pretty(&break_glass.record).map_err(|e| InitError::Io { path: stage.break_glass_record().display().to_string(), source: std::io::Error::other(e) })?;
    w(stage.break_glass_record(), &record, PUBLIC)?;
    w(stage.nats_cert(), server.cert_pem.as_bytes(), PUBLIC)?;
    w(stage.nats_key(), server.key_pem.expose().as_bytes(), PRIVATE)?;
    w(stage.nats_ca(), estate.server_ca_bundle_pem().as_bytes(), PUBLIC)?;
    if nodes.is_empty() {
        // The estate lives at `fin`: the config names its final paths.
        w(stage.server_conf(), render_hub_config(&estate)?.as_bytes(), PUBLIC)?;
    }
    let trust = ServerTrust {
        system_account: &preload[0].public_key,
        preload: preload.iter().map(|a| (a.public_key.as_str(), a.jwt.as_str())).collect(),
    };
    for n in nodes {
        let name = format!("{}-{}", config.server_name, n.index);
        let (sd, fd) = (DataDir::new(stage.node_dir(n.index)), DataDir::new(fin.node_dir(n.index)));
        for d in [sd.root().to_path_buf(), sd.root().join("tls"), sd.root().join("resolver"), sd.root().join("jetstream")] {
            fsutil::create_dir(&d, PRIVATE_DIR).map_err(io(&d))?;
        }
        let cert = estate.issue_node_cert(&name)?;
        w(sd.root().join("tls/cert.pem"), cert.cert_pem.as_bytes(), PUBLIC)?;
        w(sd.root().join("tls/key.pem"), cert.key_pem.expose().as_bytes(), PRIVATE)?;
        let node = natsconf::HubNode {
            server_name: name,
            listen: n.listen.clone(),
            monitor: None,
            leaf_listen: n.leaf_listen.clone(),
            cert: fd.root().join("tls/cert.pem"),
            key: fd.root().join("tls/key.pem"),
            resolver: fd.root().join("resolver"),
            jetstream: fd.root().join("jetstream"),
            cluster: Some((config.server_name.clone(), n.route_listen.clone(), nodes.iter().filter(|o| o.index != n.index).map(|o| o.route_url.clone()).collect())),
        };
        w(stage.node_conf(n.index), natsconf::render_node(&config, &fin, &trust, &node).as_bytes(), PUBLIC)?;
    }
    identity::write(&stage.admin(), &admin)?;
    // The first audit record: the estate and its first admin.
    let mut audit = crate::audit::Writer::open(&stage.audit(), estate.store_arc(), estate.clock().clone(), estate.audit_key())
        .map_err(|e| InitError::Io { path: stage.audit().display().to_string(), source: std::io::Error::other(e.to_string()) })?;
    audit
        .append(vec![crate::audit::Entry::ok("tillit", "init", &config.trust_domain).detail(serde_json::json!({
            "operator": estate.meta.operator_public_key,
            "ca_fingerprint": estate.meta.ca_fingerprint,
            "admin": { "id": admin.info.id, "user": admin.info.user_public_key, "serial": admin.info.cert_serial },
            "break_glass": {
                "fingerprint": break_glass.record.fingerprint,
                "user": break_glass.record.user_public_key,
                "operator_signing_key": break_glass.record.operator_signing_key,
                "expires_at": break_glass.record.expires_at,
            },
        }))])
        .map_err(|e| InitError::Io { path: stage.audit().display().to_string(), source: std::io::Error::other(e.to_string()) })?;
    let mut nsc_clients = None;
    if let Some(a) = adopt {
        let sys = estate.account(SYS_ACCOUNT)?;
        let entries = adoption_records(a, std::iter::once(&sys).filter(|s| s.adopted.is_some()).chain(adopted.iter()));
        audit
            .append(entries)
            .map_err(|e| InitError::Io { path: stage.audit().display().to_string(), source: std::io::Error::other(e.to_string()) })?;
        if let Some(until) = a.nsc_clients_until {
            let cert = estate.issue_adopted_clients_cert("nsc", until)?;
            let dir = stage.nsc_clients();
            for d in [dir.root().to_path_buf(), dir.tls()] {
                fsutil::create_dir(&d, PRIVATE_DIR).map_err(io(&d))?;
            }
            w(dir.cert(), cert.cert_pem.as_bytes(), PUBLIC)?;
            w(dir.key(), cert.key_pem.expose().as_bytes(), PRIVATE)?;
            w(dir.ca(), estate.ca_bundle_pem().as_bytes(), PUBLIC)?;
            nsc_clients = Some(fin.nsc_clients().root().to_path_buf());
        }
    }
    estate.store().sync().map_err(EstateError::from)?;
    let summary = InitSummary {
        data_dir: target.to_path_buf(),
        trust_domain: config.trust_domain.clone(),
        nats_urls: config.urls(),
        http_addr: config.http_addr.to_string(),
        server_conf: fin.server_conf(),
        node_confs: nodes.iter().map(|n| fin.node_conf(n.index)).collect(),
        admin_dir: fin.admin().root().to_path_buf(),
        master_key_file,
        operator: estate.meta.operator_public_key.clone(),
        break_glass_bundle: fin.break_glass_bundle(),
        break_glass_fingerprint: break_glass.record.fingerprint.clone(),
        adopted: adopted.iter().map(|r| r.name.clone()).collect(),
        nsc_clients,
    };
    drop(estate);
    Ok(summary)
}

/// One audit record per adopted item, by `import`: the operator, then each account.
fn adoption_records<'a>(a: &crate::nsc::Adoption, accounts: impl Iterator<Item = &'a crate::estate::AccountRecord>) -> Vec<crate::audit::Entry> {
    let mut entries = vec![crate::audit::Entry::ok("import", "operator.adopt", &a.operator.name).detail(serde_json::json!({
        "from": "nsc", "public_key": a.operator.public_key, "strict_signing_key_usage": a.operator.strict,
    }))];
    for rec in accounts {
        let from = rec.adopted.as_ref().map(|x| x.source_name.clone()).unwrap_or_default();
        let plan = a.plan.accounts.iter().find(|p| p.name == from);
        entries.push(crate::audit::Entry::ok("import", "account.adopt", &rec.name).detail(serde_json::json!({
            "from": "nsc", "nsc_account": from, "public_key": rec.public_key, "kind": rec.kind.as_str(),
            "tenant": rec.tenant, "env": rec.env,
            "signing_keys_kept": plan.map(|p| p.signing_keys.clone()).unwrap_or_default(),
            "exports": plan.map(|p| p.exports), "imports": plan.map(|p| p.imports),
            "users_kept": plan.map(|p| p.users.iter().filter(|u| u.keeps_working).map(|u| u.public_key.clone()).collect::<Vec<_>>()),
        })));
    }
    entries
}

/// The hub's `server.conf` as `init` writes it, from the estate's current config and accounts
/// (`tillit config render`: settings changed in `tillit.toml` reach the server; no key changes).
/// A clustered hub's node configs are not rendered here.
pub(crate) fn render_hub_config(estate: &Estate) -> Result<String, InitError> {
    let preload = preload_accounts(estate)?;
    Ok(natsconf::render(
        &estate.config,
        &estate.dir,
        &ServerTrust {
            system_account: &preload[0].public_key,
            preload: preload.iter().map(|a| (a.public_key.as_str(), a.jwt.as_str())).collect(),
        },
    ))
}

/// The accounts the hub's resolver is preloaded with, SYS first: SYS, TILLIT, and the accounts
/// adopted from nsc (their users connect before `serve` first pushes them).
fn preload_accounts(estate: &Estate) -> Result<Vec<crate::estate::AccountRecord>, InitError> {
    let mut out = vec![estate.account(SYS_ACCOUNT)?, estate.account(TILLIT_ACCOUNT)?];
    out.extend(estate.accounts()?.into_iter().filter(|a| a.adopted.is_some() && a.name != SYS_ACCOUNT));
    Ok(out)
}

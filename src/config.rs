//! Settings: raw (as written in TOML) → validated [`Config`] whose fields cannot be wrong
//! (house rule 8). `tillit init` writes `DATA/tillit.toml`; `config/tillit_full.toml` documents
//! every key with its default.

use crate::clock::{format_duration, parse_duration};
use crate::names;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

// === raw ===

/// `tillit.toml` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub trust_domain: String,
    #[serde(default)]
    pub nats: RawNats,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub issuance: RawIssuance,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub ocsp: RawOcsp,
}

/// `[ocsp]`: how nats-servers learn whether a client certificate is revoked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOcsp {
    /// Base URL of the responder that runs next to every nats-server (a site's agent with
    /// `--ocsp-addr`, `tillit responder` at the hub), named first in every certificate; the
    /// control plane's own responders follow. `""`: none.
    #[serde(default = "d_local_url")]
    pub local_url: String,
    /// What nats-server does when no responder answers: `refuse` the connection (default), or
    /// `admit` it when its JWT is valid and no `revoked` answer was seen for it.
    #[serde(default = "d_when_unreachable")]
    pub when_unreachable: String,
}

/// Where the local responder listens unless told otherwise.
pub const DEFAULT_OCSP_LOCAL_ADDR: &str = "127.0.0.1:7871";

fn d_local_url() -> String {
    format!("http://{DEFAULT_OCSP_LOCAL_ADDR}")
}
fn d_when_unreachable() -> String {
    "refuse".into()
}

impl Default for RawOcsp {
    fn default() -> Self {
        RawOcsp { local_url: d_local_url(), when_unreachable: d_when_unreachable() }
    }
}

/// `[store]`: where the estate's records live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sled` (embedded, one `serve`) or `jetstream` (KV bucket and journal stream on the hub's
    /// NATS, several `serve` replicas).
    #[serde(default = "d_backend")]
    pub backend: String,
    /// JetStream KV bucket of the records.
    #[serde(default = "d_bucket")]
    pub bucket: String,
    /// JetStream stream of the audit journal.
    #[serde(default = "d_journal")]
    pub journal: String,
    /// Replication of the bucket and the stream (1 on one server, 3 on a cluster).
    #[serde(default = "d_replicas")]
    pub replicas: usize,
    /// Lifetime of the leader lease (renewed at a third of it).
    #[serde(default = "d_lease_ttl")]
    pub lease_ttl: String,
}

fn d_backend() -> String {
    "sled".into()
}
fn d_bucket() -> String {
    "tillit".into()
}
fn d_journal() -> String {
    "TILLIT_JOURNAL".into()
}
fn d_replicas() -> usize {
    1
}
fn d_lease_ttl() -> String {
    "2s".into()
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore { backend: d_backend(), bucket: d_bucket(), journal: d_journal(), replicas: d_replicas(), lease_ttl: d_lease_ttl() }
    }
}

/// Where the estate's records live (`[store]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded sled store in the data dir, with the audit log in a local file.
    Sled,
    /// A JetStream KV bucket and a journal stream on the hub's NATS.
    JetStream {
        bucket: String,
        journal: String,
        replicas: usize,
        lease_ttl: Duration,
    },
}

impl StoreBackend {
    /// `sled` or `jetstream`.
    pub fn name(&self) -> &'static str {
        match self {
            StoreBackend::Sled => "sled",
            StoreBackend::JetStream { .. } => "jetstream",
        }
    }

    /// How many copies JetStream keeps of what tillit stores there (the store's replication;
    /// 1 with sled, where the hub's JetStream still holds the events and the OCSP answers).
    pub fn replicas(&self) -> usize {
        match self {
            StoreBackend::JetStream { replicas, .. } => *replicas,
            StoreBackend::Sled => 1,
        }
    }
}

fn store_backend(raw: &RawStore) -> Result<StoreBackend, ConfigError> {
    let token = |key: &str, v: &str, max: usize| -> Result<String, ConfigError> {
        if v.is_empty() || v.len() > max || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(invalid(format!("store.{key} {v:?}: use 1 to {max} letters, digits, '_' or '-'")));
        }
        Ok(v.to_string())
    };
    match raw.backend.as_str() {
        "sled" => Ok(StoreBackend::Sled),
        "jetstream" => {
            let lease_ttl = parse_duration(&raw.lease_ttl).map_err(|e| invalid(format!("store.lease_ttl: {e}")))?;
            if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&lease_ttl) {
                return Err(invalid("store.lease_ttl must be between 1s and 60s"));
            }
            if ![1, 3, 5].contains(&raw.replicas) {
                return Err(invalid(format!("store.replicas {}: use 1 (one server), 3 or 5 (a cluster)", raw.replicas)));
            }
            Ok(StoreBackend::JetStream {
                bucket: token("bucket", &raw.bucket, 64)?,
                journal: token("journal", &raw.journal, 64)?,
                replicas: raw.replicas,
                lease_ttl,
            })
        }
        other => Err(invalid(format!("store.backend {other:?}: use \"sled\" or \"jetstream\""))),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNats {
    /// URLs clients dial (`nats://host:port`); the hub listens on the first one's port.
    #[serde(default = "default_urls")]
    pub urls: Vec<String>,
    /// Listen address of the hub server; default: the first URL's host if it is an IP
    /// (`localhost` → 127.0.0.1), else all interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// nats-server monitoring endpoint (`host:port`), off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_addr: Option<String>,
    /// Extra DNS names / IPs for the hub server's certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_cert_hosts: Vec<String>,
    /// Port of the hub's leafnode listener (TLS) that site servers connect to; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_port: Option<u16>,
    /// How often the control plane compares every account JWT the hub serves with its own and
    /// re-pushes one that is older or other (anti-rollback).
    #[serde(default = "default_reconcile_interval")]
    pub reconcile_interval: String,
}

impl Default for RawNats {
    fn default() -> Self {
        RawNats {
            urls: default_urls(),
            listen: None,
            server_name: default_server_name(),
            monitor_addr: None,
            server_cert_hosts: vec![],
            leaf_port: None,
            reconcile_interval: default_reconcile_interval(),
        }
    }
}

fn default_urls() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".into()]
}
fn default_reconcile_interval() -> String {
    "10s".into()
}
fn default_server_name() -> String {
    "tillit-hub".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    #[serde(default = "default_http_addr")]
    pub addr: String,
    /// Base URL nats-servers and clients reach the HTTP port at (OCSP, CRL); default
    /// `http://<addr>` (an unspecified address becomes 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// The other `serve` replicas' base URLs: certificates name every replica's OCSP responder
    /// and CRL (after `public_url`), and nats-server asks the next when one does not answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_urls: Vec<String>,
    /// A listener of its own for `/metrics` (`HOST:PORT`). Without it `/metrics` is served on
    /// `addr` only when that is a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// Most HTTP connections open at once; past it the oldest connection with no request in
    /// progress is closed.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
}

fn default_http_max_connections() -> usize {
    1024
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp { addr: default_http_addr(), public_url: None, replica_urls: vec![], metrics_addr: None, max_connections: default_http_max_connections() }
    }
}

fn default_http_addr() -> String {
    "127.0.0.1:8080".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuance {
    #[serde(default = "d_service_ttl")]
    pub service_ttl: String,
    #[serde(default = "d_admin_ttl")]
    pub admin_ttl: String,
    #[serde(default = "d_control_plane_ttl")]
    pub control_plane_ttl: String,
    #[serde(default = "d_server_cert_ttl")]
    pub server_cert_ttl: String,
    #[serde(default = "d_ca_ttl")]
    pub ca_ttl: String,
    #[serde(default = "d_token_ttl")]
    pub token_ttl: String,
}

fn d_service_ttl() -> String {
    "24h".into()
}
fn d_admin_ttl() -> String {
    "30d".into()
}
fn d_control_plane_ttl() -> String {
    "24h".into()
}
fn d_server_cert_ttl() -> String {
    "365d".into()
}
fn d_ca_ttl() -> String {
    "3650d".into()
}
fn d_token_ttl() -> String {
    "15m".into()
}

impl Default for RawIssuance {
    fn default() -> Self {
        RawIssuance {
            service_ttl: d_service_ttl(),
            admin_ttl: d_admin_ttl(),
            control_plane_ttl: d_control_plane_ttl(),
            server_cert_ttl: d_server_cert_ttl(),
            ca_ttl: d_ca_ttl(),
            token_ttl: d_token_ttl(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request payload the control plane reads, in bytes.
    #[serde(default = "d_max_request")]
    pub max_request_bytes: usize,
}

fn d_max_request() -> usize {
    64 * 1024
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits { max_request_bytes: d_max_request() }
    }
}

// === validated ===

/// A NATS URL split into parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl NatsUrl {
    /// Accepts `nats://host:port` and `tls://host:port` (IPv6 as `[::1]`).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = || {
            invalid(format!("NATS URL {s:?} is invalid: expected nats://HOST:PORT (or tls://HOST:PORT), e.g. nats://127.0.0.1:4222"))
        };
        let rest = s.strip_prefix("nats://").or_else(|| s.strip_prefix("tls://")).ok_or_else(bad)?;
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad());
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        if host.starts_with('[') != host.ends_with(']') {
            return Err(bad());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_err()
            && !bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(bad());
        }
        Ok(NatsUrl { url: s.to_string(), host: host.to_string(), port })
    }

    /// The host without IPv6 brackets.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub trust_domain: String,
    pub nats_urls: Vec<NatsUrl>,
    /// `host:port` the hub nats-server listens on.
    pub nats_listen: String,
    pub server_name: String,
    pub monitor_addr: Option<SocketAddr>,
    pub server_cert_hosts: Vec<String>,
    /// `host:port` of the hub's leafnode listener, when sites are enabled.
    pub leaf_listen: Option<String>,
    /// How often served account JWTs are checked against the store (`nats.reconcile_interval`).
    pub reconcile_interval: Duration,
    pub http_addr: SocketAddr,
    /// `/metrics` on a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    /// Most HTTP connections at once (`http.max_connections`).
    pub http_max_connections: usize,
    /// Base URL of the HTTP port as others reach it (no trailing slash).
    pub http_public_url: String,
    /// The other replicas' base URLs (`http.replica_urls`), no trailing slash.
    pub http_replica_urls: Vec<String>,
    pub service_ttl: Duration,
    pub admin_ttl: Duration,
    pub control_plane_ttl: Duration,
    pub server_cert_ttl: Duration,
    pub ca_ttl: Duration,
    pub token_ttl: Duration,
    pub max_request_bytes: usize,
    /// Where the records live (`[store]`).
    pub store: StoreBackend,
    /// The responder next to every nats-server (`ocsp.local_url`), no trailing slash.
    pub ocsp_local_url: Option<String>,
    /// nats-server admits a connection whose certificate status it cannot learn
    /// (`ocsp.when_unreachable = "admit"`).
    pub ocsp_admit_when_unreachable: bool,
    raw: RawConfig,
}

fn dur(key: &str, v: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).map_err(|e| invalid(format!("issuance.{key}: {e}")))
}

fn socket(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| invalid(format!("{key} {v:?} is invalid: expected HOST:PORT with an IP address, e.g. 127.0.0.1:8080")))
}

impl Config {
    /// Validate a raw config.
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        names::check_trust_domain(&raw.trust_domain).map_err(|e| invalid(e.to_string()))?;
        if raw.nats.urls.is_empty() {
            return Err(invalid("nats.urls is empty: give at least one nats://HOST:PORT"));
        }
        let nats_urls = raw.nats.urls.iter().map(|u| NatsUrl::parse(u)).collect::<Result<Vec<_>, _>>()?;
        let first = &nats_urls[0];
        let nats_listen = match &raw.nats.listen {
            Some(l) => {
                let (h, p) = l.rsplit_once(':').ok_or_else(|| invalid(format!("nats.listen {l:?}: expected HOST:PORT")))?;
                let _: u16 = p.parse().map_err(|_| invalid(format!("nats.listen {l:?}: bad port")))?;
                if h.is_empty() {
                    return Err(invalid(format!("nats.listen {l:?}: empty host")));
                }
                l.clone()
            }
            None => {
                let host = match first.bare_host() {
                    "localhost" => "127.0.0.1".to_string(),
                    h if h.parse::<IpAddr>().is_ok() => first.host.clone(),
                    _ => "0.0.0.0".to_string(),
                };
                format!("{host}:{}", first.port)
            }
        };
        if raw.nats.server_name.is_empty() || raw.nats.server_name.contains(char::is_whitespace) {
            return Err(invalid("nats.server_name must be non-empty without spaces"));
        }
        let leaf_listen = match raw.nats.leaf_port {
            Some(0) => return Err(invalid("nats.leaf_port must be a port number (1-65535)")),
            Some(p) if p == first.port => return Err(invalid(format!("nats.leaf_port {p} is the client port; pick another"))),
            Some(p) => {
                let host = nats_listen.rsplit_once(':').map(|(h, _)| h).unwrap_or("0.0.0.0");
                Some(format!("{host}:{p}"))
            }
            None => None,
        };
        let monitor_addr = raw.nats.monitor_addr.as_deref().map(|m| socket("nats.monitor_addr", m)).transpose()?;
        let http_addr = socket("http.addr", &raw.http.addr)?;
        let http_public_url = match &raw.http.public_url {
            Some(u) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(char::is_whitespace) {
                    return Err(invalid(format!("http.public_url {u:?} must be an http:// or https:// URL")));
                }
                u.trim_end_matches('/').to_string()
            }
            None => {
                let host = if http_addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { http_addr.ip().to_string() };
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                format!("http://{host}:{}", http_addr.port())
            }
        };
        let i = &raw.issuance;
        let cfg = Config {
            trust_domain: raw.trust_domain.clone(),
            nats_listen,
            server_name: raw.nats.server_name.clone(),
            monitor_addr,
            server_cert_hosts: raw.nats.server_cert_hosts.clone(),
            leaf_listen,
            reconcile_interval: parse_duration(&raw.nats.reconcile_interval)
                .map_err(|e| invalid(format!("nats.reconcile_interval: {e}")))
                .and_then(|d| {
                    if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
                        Ok(d)
                    } else {
                        Err(invalid("nats.reconcile_interval must be between 1s and 1h"))
                    }
                })?,
            http_addr,
            metrics_addr: raw.http.metrics_addr.as_deref().map(|m| socket("http.metrics_addr", m)).transpose()?,
            http_max_connections: raw.http.max_connections,
            http_public_url,
            http_replica_urls: raw
                .http
                .replica_urls
                .iter()
                .map(|u| {
                    if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(char::is_whitespace) {
                        return Err(invalid(format!("http.replica_urls: {u:?} must be an http:// or https:// URL")));
                    }
                    Ok(u.trim_end_matches('/').to_string())
                })
                .collect::<Result<_, _>>()?,
            service_ttl: dur("service_ttl", &i.service_ttl)?,
            admin_ttl: dur("admin_ttl", &i.admin_ttl)?,
            control_plane_ttl: dur("control_plane_ttl", &i.control_plane_ttl)?,
            server_cert_ttl: dur("server_cert_ttl", &i.server_cert_ttl)?,
            ca_ttl: dur("ca_ttl", &i.ca_ttl)?,
            token_ttl: dur("token_ttl", &i.token_ttl)?,
            max_request_bytes: raw.limits.max_request_bytes,
            store: store_backend(&raw.store)?,
            ocsp_local_url: match raw.ocsp.local_url.trim() {
                "" => None,
                u if (u.starts_with("http://") || u.starts_with("https://")) && !u.contains(char::is_whitespace) => Some(u.trim_end_matches('/').to_string()),
                u => return Err(invalid(format!("ocsp.local_url: {u:?} must be an http:// URL (or \"\" for none)"))),
            },
            ocsp_admit_when_unreachable: match raw.ocsp.when_unreachable.as_str() {
                "refuse" => false,
                "admit" => true,
                other => return Err(invalid(format!("ocsp.when_unreachable: {other:?} must be \"refuse\" or \"admit\""))),
            },
            nats_urls,
            raw,
        };
        if !(16..=65_536).contains(&cfg.http_max_connections) {
            return Err(invalid("http.max_connections must be between 16 and 65536"));
        }
        if cfg.metrics_addr == Some(cfg.http_addr) {
            return Err(invalid("http.metrics_addr must differ from http.addr"));
        }
        if cfg.max_request_bytes < 1024 || cfg.max_request_bytes > 1024 * 1024 {
            return Err(invalid("limits.max_request_bytes must be between 1024 and 1048576"));
        }
        if cfg.service_ttl < Duration::from_secs(60) || cfg.control_plane_ttl < Duration::from_secs(60) {
            return Err(invalid("issuance ttls must be at least 60s"));
        }
        if cfg.ca_ttl <= cfg.server_cert_ttl || cfg.ca_ttl <= cfg.admin_ttl || cfg.ca_ttl <= cfg.service_ttl {
            return Err(invalid("issuance.ca_ttl must be longer than every certificate it signs"));
        }
        Ok(cfg)
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.message().to_string() })?;
        Self::from_raw(raw)
    }

    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConfigError::Invalid(format!(
                "{p} does not exist: this is not a data dir; create one with `tillit init --data-dir DIR --trust-domain DOMAIN` (or `tillit dev`)"
            )),
            _ => ConfigError::Read { path: p.clone(), source },
        })?;
        Self::from_toml(&text, &p)
    }

    /// The TOML this config was made from, with every value explicit.
    pub fn to_toml(&self) -> String {
        let mut raw = self.raw.clone();
        raw.issuance = RawIssuance {
            service_ttl: format_duration(self.service_ttl),
            admin_ttl: format_duration(self.admin_ttl),
            control_plane_ttl: format_duration(self.control_plane_ttl),
            server_cert_ttl: format_duration(self.server_cert_ttl),
            ca_ttl: format_duration(self.ca_ttl),
            token_ttl: format_duration(self.token_ttl),
        };
        let body = toml::to_string_pretty(&raw).unwrap_or_default();
        format!("# tillit control-plane settings, written by `tillit init`. Every key: config/tillit_full.toml\n{body}")
    }

    /// Hosts the hub server's certificate names: every URL host, loopback, and extras.
    pub fn server_cert_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.nats_urls.iter().map(|u| u.bare_host().to_string()).collect();
        hosts.extend(["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()]);
        hosts.extend(self.server_cert_hosts.iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        hosts.retain(|h| seen.insert(h.clone()));
        hosts
    }

    /// URLs site servers dial for the hub's leafnode port (`tls://host:port`, one per client URL
    /// host), empty when the hub has no leafnode listener.
    pub fn leaf_urls(&self) -> Vec<String> {
        let Some(port) = self.raw.nats.leaf_port else { return vec![] };
        let mut out: Vec<String> = self
            .nats_urls
            .iter()
            .map(|u| if u.bare_host().contains(':') { format!("tls://[{}]:{port}", u.bare_host()) } else { format!("tls://{}:{port}", u.bare_host()) })
            .collect();
        out.dedup();
        out
    }

    /// The base URLs of every replica's HTTP port, `http.public_url` first.
    pub fn responder_urls(&self) -> Vec<String> {
        let mut v = vec![self.http_public_url.clone()];
        for u in &self.http_replica_urls {
            if !v.contains(u) {
                v.push(u.clone());
            }
        }
        v
    }

    /// The OCSP responders a certificate names, in the order nats-server asks them: the one
    /// next to every server first, then every replica's.
    pub fn ocsp_urls(&self) -> Vec<String> {
        let mut v: Vec<String> = self.ocsp_local_url.iter().cloned().collect();
        for u in self.responder_urls() {
            if !v.contains(&u) {
                v.push(u);
            }
        }
        v
    }

    /// The `HOST:PORT` of `ocsp.local_url` when its host is an IP address: where a local
    /// responder listens by default, and what `status` probes.
    pub fn ocsp_local_addr(&self) -> Option<SocketAddr> {
        let rest = self.ocsp_local_url.as_deref()?.split_once("://")?.1;
        let hostport = rest.split('/').next()?;
        hostport.parse().ok().or_else(|| format!("{hostport}:80").parse().ok())
    }

    /// The URLs as plain strings.
    pub fn urls(&self) -> Vec<String> {
        self.nats_urls.iter().map(|u| u.url.clone()).collect()
    }
}

/// A minimal raw config for `init`.
pub fn raw_for_init(trust_domain: &str, nats_url: &str, http_addr: Option<&str>) -> RawConfig {
    RawConfig {
        trust_domain: trust_domain.to_string(),
        nats: RawNats { urls: vec![nats_url.to_string()], ..RawNats::default() },
        http: RawHttp { addr: http_addr.map(str::to_string).unwrap_or_else(default_http_addr), public_url: None, ..RawHttp::default() },
        issuance: RawIssuance::default(),
        limits: RawLimits::default(),
        store: RawStore::default(),
        ocsp: RawOcsp::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_responder_listens_where_its_url_says() {
        let with = |url: &str| {
            let mut raw = raw_for_init("example.org", "nats://127.0.0.1:4222", None);
            raw.ocsp.local_url = url.into();
            Config::from_raw(raw).unwrap().ocsp_local_addr()
        };
        assert_eq!(with("http://127.0.0.1:7871"), Some("127.0.0.1:7871".parse().unwrap()));
        assert_eq!(with("http://127.0.0.1:7871/ocsp"), Some("127.0.0.1:7871".parse().unwrap()));
        assert_eq!(with("http://[::1]:9"), Some("[::1]:9".parse().unwrap()));
        assert_eq!(with("http://ocsp.example:7871"), None);
        assert_eq!(with(""), None);
    }

    #[test]
    fn nats_urls() {
        let u = NatsUrl::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 4222));
        let u = NatsUrl::parse("tls://[::1]:4333").unwrap();
        assert_eq!(u.bare_host(), "::1");
        for bad in ["", "127.0.0.1:4222", "http://x:1", "nats://x", "nats://:4222", "nats://x:0", "nats://x:99999",
            "nats://u:p@x:4222", "nats://x:4222/path", "nats://bad host:1", "nats://[::1:4222"] {
            assert!(NatsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_config_round_trips_through_toml() {
        let cfg = Config::from_raw(raw_for_init("example.org", "nats://localhost:4999", Some("127.0.0.1:9090"))).unwrap();
        assert_eq!(cfg.nats_listen, "127.0.0.1:4999");
        assert_eq!(cfg.http_addr.port(), 9090);
        assert_eq!(cfg.service_ttl, Duration::from_secs(86_400));
        let again = Config::from_toml(&cfg.to_toml(), "t").unwrap();
        assert_eq!(again.trust_domain, "example.org");
        assert_eq!(again.urls(), cfg.urls());
        assert_eq!(again.token_ttl, cfg.token_ttl);
        assert!(cfg.server_cert_hosts().contains(&"localhost".to_string()));
        assert_eq!(cfg.http_public_url, "http://127.0.0.1:9090");
    }

    #[test]
    fn listen_defaults() {
        let c = Config::from_raw(raw_for_init("td", "nats://nats.example.org:4222", None)).unwrap();
        assert_eq!(c.nats_listen, "0.0.0.0:4222");
        let c = Config::from_raw(raw_for_init("td", "nats://10.1.2.3:4222", None)).unwrap();
        assert_eq!(c.nats_listen, "10.1.2.3:4222");
    }

    #[test]
    fn rejects_bad_values_with_the_key_named() {
        let cases: &[(&str, &str)] = &[
            ("trust_domain = \"Bad Domain\"", "trust domain"),
            ("trust_domain = \"td\"\n[http]\naddr = \"nope\"", "http.addr"),
            ("trust_domain = \"td\"\n[issuance]\nservice_ttl = \"10x\"", "service_ttl"),
            ("trust_domain = \"td\"\n[issuance]\nca_ttl = \"1d\"", "ca_ttl"),
            ("trust_domain = \"td\"\n[limits]\nmax_request_bytes = 10", "max_request_bytes"),
            ("trust_domain = \"td\"\n[nats]\nurls = []", "nats.urls"),
            ("trust_domain = \"td\"\nunknown_key = 1", "unknown"),
            ("not toml at all [", "TOML"),
            ("trust_domain = \"td\"\n[store]\nbackend = \"etcd\"", "store.backend"),
            ("trust_domain = \"td\"\n[store]\nbackend = \"jetstream\"\nreplicas = 2", "store.replicas"),
            ("trust_domain = \"td\"\n[store]\nbackend = \"jetstream\"\nbucket = \"a.b\"", "store.bucket"),
            ("trust_domain = \"td\"\n[store]\nbackend = \"jetstream\"\nlease_ttl = \"5m\"", "store.lease_ttl"),
        ];
        for (text, needle) in cases {
            let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} → {err}");
        }
    }
}

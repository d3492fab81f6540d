//! Logs and metrics.
//!
//! Logs go through `tracing` to stderr (stdout is for command output such as join tokens),
//! filtered by `RUST_LOG`, as text or JSON lines. Metrics are Prometheus text at `/metrics`, every
//! name prefixed `tillit_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;


/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Install the global tracing subscriber (once; later calls are ignored).
pub fn init_logging(format: LogFormat) {
    init_logging_default(format, "info,async_nats=warn")
}

/// [`init_logging`] with another filter when `RUST_LOG` is unset.
pub fn init_logging_default(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

/// Resident set size of this process in bytes (Linux `/proc/self/status`), if known.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub trust_domain: String,
}

/// Every metric the control plane exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by endpoint and outcome (`ok` or an error code).
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer a request.
    pub request_seconds: Family<EndpointLabels, Histogram>,
    /// 1 while the named NATS connection is up.
    pub nats_connected: Family<ConnectionLabels, Gauge>,
    /// Identities recorded.
    pub identities: Gauge,
    /// Accounts recorded.
    pub accounts: Gauge,
    /// Account JWT pushes to nats-server, by outcome.
    pub account_pushes: Family<RequestLabels, Counter>,
    /// Seconds until the CA certificate expires.
    pub ca_expiry_seconds: Gauge,
    /// Client certificates issued, by why (`enroll`, `renew`).
    pub certificates_issued: Family<ReasonLabels, Counter>,
    /// Active identities whose credentials expire within 24 hours.
    pub identities_expiring_24h: Gauge,
    /// OCSP responses served.
    pub ocsp_responses: Counter,
    /// Connections nats-server refused (from its `$SYS` auth error events), by reason.
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// Events a site's slowest agent has not applied yet.
    pub site_lag_events: Family<SiteLabels, Gauge>,
    /// Seconds since a site's last acknowledgement (-1: never).
    pub site_last_ack_seconds: Family<SiteLabels, Gauge>,
    /// Acknowledgements received from site agents.
    pub site_acks: Counter,
    /// Failures site agents reported (a hook or a fetch that did not work).
    pub site_failures: Counter,
    /// Account JWTs the hub served that were not the stored ones (older: a rollback), re-pushed.
    pub account_rollbacks: Counter,
    /// Requests served again because another replica changed the estate first.
    pub raced: Counter,
    /// 1 while this replica holds the leader lease (always 1 on sled).
    pub leader: Gauge,
    /// Leader lease steps that took or renewed the lease.
    pub lease_renewals: Counter,
    /// Compare-and-set writes the store refused (another replica wrote first).
    pub store_conflicts: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabels {
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(trust_domain: &str) -> Self {
        let mut registry = Registry::with_prefix("tillit");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered by the control plane", requests.clone());
        let request_seconds = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register("request_duration_seconds", "Time to answer a request", request_seconds.clone());
        let nats_connected = Family::<ConnectionLabels, Gauge>::default();
        registry.register("nats_connected", "1 while the control plane's NATS connection is up", nats_connected.clone());
        let identities = Gauge::default();
        registry.register("identities", "Identities recorded", identities.clone());
        let accounts = Gauge::default();
        registry.register("accounts", "NATS accounts managed", accounts.clone());
        let account_pushes = Family::<RequestLabels, Counter>::default();
        registry.register("account_pushes", "Account JWT pushes to nats-server", account_pushes.clone());
        let ca_expiry_seconds = Gauge::default();
        registry.register("ca_expiry_seconds", "Seconds until the CA certificate expires", ca_expiry_seconds.clone());
        let certificates_issued = Family::<ReasonLabels, Counter>::default();
        registry.register("certificates_issued", "Client certificates issued", certificates_issued.clone());
        let identities_expiring_24h = Gauge::default();
        registry.register(
            "identities_expiring_24h",
            "Active identities whose credentials expire within 24 hours",
            identities_expiring_24h.clone(),
        );
        let ocsp_responses = Counter::default();
        registry.register("ocsp_responses", "OCSP responses served", ocsp_responses.clone());
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register("auth_failures", "Connections nats-server refused, by reason", auth_failures.clone());
        let site_lag_events = Family::<SiteLabels, Gauge>::default();
        registry.register("site_lag_events", "Events a site's slowest agent has not applied yet", site_lag_events.clone());
        let site_last_ack_seconds = Family::<SiteLabels, Gauge>::default();
        registry.register("site_last_ack_seconds", "Seconds since a site's last acknowledgement (-1: never)", site_last_ack_seconds.clone());
        let site_acks = Counter::default();
        registry.register("site_acks", "Acknowledgements received from site agents", site_acks.clone());
        let site_failures = Counter::default();
        registry.register("site_failures", "Failures reported by site agents", site_failures.clone());
        let account_rollbacks = Counter::default();
        registry.register(
            "account_rollbacks",
            "Account JWTs nats-server served that were not the control plane's current ones (re-pushed)",
            account_rollbacks.clone(),
        );
        let raced = Counter::default();
        registry.register("requests_raced", "Requests served again because another replica changed the estate first", raced.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease and runs the singleton jobs", leader.clone());
        let lease_renewals = Counter::default();
        registry.register("lease_renewals", "Leader lease takes and renewals by this replica", lease_renewals.clone());
        let store_conflicts = Gauge::default();
        registry.register("store_cas_conflicts", "Compare-and-set writes the store refused since start (another replica wrote first)", store_conflicts.clone());
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into(), trust_domain: trust_domain.into() })
            .set(1);
        registry.register("build_info", "Version and trust domain of this control plane", build);
        Metrics {
            registry,
            requests,
            request_seconds,
            nats_connected,
            identities,
            accounts,
            account_pushes,
            ca_expiry_seconds,
            certificates_issued,
            identities_expiring_24h,
            ocsp_responses,
            auth_failures,
            site_lag_events,
            site_last_ack_seconds,
            site_acks,
            site_failures,
            account_rollbacks,
            raced,
            leader,
            lease_renewals,
            store_conflicts,
        }
    }

    /// Count one answered request.
    pub fn observe(&self, endpoint: &str, outcome: &str, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.into(), outcome: outcome.into() }).inc();
        self.request_seconds.get_or_create(&EndpointLabels { endpoint: endpoint.into() }).observe(seconds);
    }

    /// Set a site's gauges.
    pub fn set_site(&self, site: &str, lag: u64, since_ack: Option<i64>) {
        let l = SiteLabels { site: site.into() };
        self.site_lag_events.get_or_create(&l).set(lag as i64);
        self.site_last_ack_seconds.get_or_create(&l).set(since_ack.unwrap_or(-1));
    }

    /// Count one issued certificate.
    pub fn issued(&self, reason: &str) {
        self.certificates_issued.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new("example.org");
        m.observe("tillit.v1.admin.status", "ok", 0.001);
        m.identities.set(3);
        let text = m.render();
        assert!(text.contains("tillit_requests_total{endpoint=\"tillit.v1.admin.status\",outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("tillit_identities 3"));
        assert!(text.contains("tillit_build_info{"));
        assert!(text.ends_with("# EOF\n"));
    }
}

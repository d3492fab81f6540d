//! Logs and metrics.
//!
//! Logs go through `tracing` to stderr (stdout is for command output such as join tokens),
//! filtered by `RUST_LOG`, as text or JSON lines.
//!
//! Metrics live in one `prometheus_client` registry: the control plane's own, every name
//! prefixed `tillit_`, and the standard `process_*` ones (Linux, read from `/proc/self` at each
//! scrape). `/metrics` renders it in the format the scraper asks for ([`Format::negotiate`]):
//! OpenMetrics 1.0 when its `Accept` names `application/openmetrics-text`, else the Prometheus
//! text format 0.0.4 ([`openmetrics_to_text`]), which `promtool check metrics` reads. Times are
//! `*_timestamp_seconds` gauges (Unix time of the event); a time not known yet has no series.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
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
    /// When the control plane's own credentials of the named connection expire (Unix time).
    pub own_credentials_expiry: Family<ConnectionLabels, Gauge>,
    /// Identities recorded.
    pub identities: Gauge,
    /// Accounts recorded.
    pub accounts: Gauge,
    /// Account JWT pushes to nats-server, by outcome.
    pub account_pushes: Family<RequestLabels, Counter>,
    /// When the CA certificate expires (Unix time; no sample until known).
    pub ca_expiry: TimeGauge,
    /// Client certificates issued, by why (`enroll`, `renew`).
    pub certificates_issued: Family<ReasonLabels, Counter>,
    /// Active identities whose credentials expire within 24 hours.
    pub identities_expiring_24h: Gauge,
    /// OCSP responses served.
    pub ocsp_responses: Counter,
    /// Connections nats-server refused (from its `$SYS` auth error events), by reason.
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// Auth callout decisions by reason (`admitted` or the refusal's reason).
    pub callout_decisions: Family<ReasonLabels, Counter>,
    /// Time to decide an auth callout request.
    pub callout_seconds: Histogram,
    /// Events a site's slowest agent has not applied yet.
    pub site_lag_events: Family<SiteLabels, Gauge>,
    /// When a site's agents last acknowledged an event (Unix time; no series before the first).
    pub site_last_ack: Family<SiteLabels, Gauge>,
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

// === impl Metrics ===

impl Metrics {
    pub fn new(trust_domain: &str) -> Self {
        let mut root = Registry::default();
        #[cfg(target_os = "linux")]
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("tillit");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered by the control plane", requests.clone());
        let request_seconds = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register("request_duration_seconds", "Time to answer a request", request_seconds.clone());
        let nats_connected = Family::<ConnectionLabels, Gauge>::default();
        registry.register("nats_connected", "1 while the control plane's NATS connection is up", nats_connected.clone());
        let own_credentials_expiry = Family::<ConnectionLabels, Gauge>::default();
        registry.register(
            "own_credentials_expiry_timestamp_seconds",
            "When the control plane's own credentials for this NATS connection expire, in Unix time",
            own_credentials_expiry.clone(),
        );
        let identities = Gauge::default();
        registry.register("identities", "Identities recorded", identities.clone());
        let accounts = Gauge::default();
        registry.register("accounts", "NATS accounts managed", accounts.clone());
        let account_pushes = Family::<RequestLabels, Counter>::default();
        registry.register("account_pushes", "Account JWT pushes to nats-server", account_pushes.clone());
        let ca_expiry = TimeGauge::default();
        registry.register("ca_expiry_timestamp_seconds", "When the CA certificate expires, in Unix time", ca_expiry.clone());
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
        let callout_decisions = Family::<ReasonLabels, Counter>::default();
        registry.register("callout_decisions", "Auth callout decisions, by reason (admitted or why refused)", callout_decisions.clone());
        let callout_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register("callout_decision_duration_seconds", "Time to decide an auth callout request", callout_seconds.clone());
        let site_lag_events = Family::<SiteLabels, Gauge>::default();
        registry.register("site_lag_events", "Events a site's slowest agent has not applied yet", site_lag_events.clone());
        let site_last_ack = Family::<SiteLabels, Gauge>::default();
        registry.register(
            "site_last_ack_timestamp_seconds",
            "When a site's agents last acknowledged an event, in Unix time (no series before the first)",
            site_last_ack.clone(),
        );
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
        let build = Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION").into(), trust_domain: trust_domain.into() });
        registry.register("build", "Version and trust domain of this control plane", build);
        Metrics {
            registry: root,
            requests,
            request_seconds,
            nats_connected,
            own_credentials_expiry,
            identities,
            accounts,
            account_pushes,
            ca_expiry,
            certificates_issued,
            identities_expiring_24h,
            ocsp_responses,
            auth_failures,
            callout_decisions,
            callout_seconds,
            site_lag_events,
            site_last_ack,
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

    /// Set a site's gauges: its lag, and when it last acknowledged (no series while it never has).
    pub fn set_site(&self, site: &str, lag: u64, last_ack_unix: Option<i64>) {
        let l = SiteLabels { site: site.into() };
        self.site_lag_events.get_or_create(&l).set(lag as i64);
        match last_ack_unix {
            Some(t) => {
                self.site_last_ack.get_or_create(&l).set(t);
            }
            None => {
                self.site_last_ack.remove(&l);
            }
        }
    }

    /// Record when the control plane's own credentials for `connection` (`api`, `sys`) expire.
    pub fn set_own_credentials_expiry(&self, connection: &str, expires_at_unix: i64) {
        self.own_credentials_expiry.get_or_create(&ConnectionLabels { connection: connection.into() }).set(expires_at_unix);
    }

    /// Count one issued certificate.
    pub fn issued(&self, reason: &str) {
        self.certificates_issued.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    /// The exposition in `format`.
    pub fn render(&self, format: Format) -> String {
        let om = self.render_openmetrics();
        match format {
            Format::OpenMetrics => om,
            Format::Text => openmetrics_to_text(&om),
        }
    }

    fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A gauge of a Unix time that has no sample until it is set: a time not known yet is an absent
/// series, not a sentinel value.
#[derive(Debug, Clone)]
pub struct TimeGauge(std::sync::Arc<std::sync::atomic::AtomicI64>);

impl TimeGauge {
    /// Internal only: never rendered (no sample instead).
    const UNSET: i64 = i64::MIN;

    /// Set the time (Unix seconds).
    pub fn set(&self, unix: i64) {
        self.0.store(unix.max(Self::UNSET + 1), std::sync::atomic::Ordering::Relaxed);
    }

    /// The time, once set.
    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(std::sync::atomic::Ordering::Relaxed)).filter(|&v| v != Self::UNSET)
    }
}

impl Default for TimeGauge {
    fn default() -> Self {
        TimeGauge(std::sync::Arc::new(std::sync::atomic::AtomicI64::new(Self::UNSET)))
    }
}

impl EncodeMetric for TimeGauge {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.get() {
            Some(v) => encoder.encode_gauge(&v),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

// === exposition formats ===

/// The two text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text`), ends with `# EOF`.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`), what `promtool check metrics` reads.
    Text,
}

impl Format {
    /// The format for an `Accept` header: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality above zero and no lower than `text/plain`'s,
    /// else (no header, `*/*`, `text/plain`) the 0.0.4 text format.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut om, mut text) = (None::<f32>, None::<f32>);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut om,
                "text/plain" => &mut text,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
        match om {
            Some(q) if q > 0.0 && q >= text.unwrap_or(0.0) => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrite an OpenMetrics exposition (as `prometheus_client` writes it) in the Prometheus text
/// format 0.0.4: a counter family `x` is named by its sample `x_total` in `# HELP`/`# TYPE`
/// (its `x_created` samples go), an info family `x` becomes the gauge `x_info`, and `# UNIT`,
/// exemplars and `# EOF` are dropped. Gauges and histograms read the same in both.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // The family being written: its OpenMetrics name and type.
    let mut family: (String, String) = (String::new(), String::new());
    // `# HELP` comes before `# TYPE`, which decides the name it is written under.
    let mut help: Option<(String, String)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name.to_string(), text.to_string()));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (text_name, text_kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(h, _)| h == name) {
                out.push_str(&format!("# HELP {text_name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {text_name} {text_kind}\n"));
            family = (name.to_string(), kind.to_string());
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: OpenMetrics only.
        } else if !line.is_empty() {
            let sample = strip_exemplar(line);
            let name = &sample[..sample.find(['{', ' ']).unwrap_or(sample.len())];
            if family.1 == "counter" && name.strip_prefix(family.0.as_str()) == Some("_created") {
                continue;
            }
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

/// A sample line without its OpenMetrics exemplar (` # {…} value`), if any.
fn strip_exemplar(line: &str) -> &str {
    // Past the label set (whose quoted values may hold anything) before looking for ` # `.
    let mut start = 0;
    if let Some(open) = line.find('{').filter(|&o| !line[..o].contains(' ')) {
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in line[open..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    start = open + i;
                    break;
                }
                _ => {}
            }
        }
    }
    match line[start..].find(" # ") {
        Some(i) => &line[..start + i],
        None => line,
    }
}

// === process metrics ===

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
#[cfg(target_os = "linux")]
struct ProcessCollector;

#[cfg(target_os = "linux")]
impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::TypedMetric;
        let p = ProcessStats::read();
        if let Some(v) = p.cpu_seconds {
            let m = ConstCounter::new(v);
            m.encode(enc.encode_descriptor("process_cpu_seconds", "Total user and system CPU time spent in seconds.", None, ConstCounter::<f64>::TYPE)?)?;
        }
        let counts: [(&str, &str, Option<u64>); 4] = [
            ("process_resident_memory_bytes", "Resident memory size in bytes.", p.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes.", p.virtual_bytes),
            ("process_open_fds", "Number of open file descriptors.", p.open_fds),
            ("process_max_fds", "Maximum number of open file descriptors.", p.max_fds),
        ];
        for (name, help, value) in counts {
            if let Some(v) = value {
                ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, ConstGauge::<u64>::TYPE)?)?;
            }
        }
        if let Some(v) = p.start_time_seconds {
            let help = "Start time of the process since unix epoch in seconds.";
            ConstGauge::new(v).encode(enc.encode_descriptor("process_start_time_seconds", help, None, ConstGauge::<f64>::TYPE)?)?;
        }
        Ok(())
    }
}

/// What `/proc` says about this process; `None` where it could not be read.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    #[cfg(target_os = "linux")]
    fn read() -> ProcessStats {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| parse_boot_time(&s));
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let mut p = parse_stat(&stat, ticks, page, boot_time);
        p.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        p.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| parse_max_fds(&s));
        p
    }
}

/// CPU time, memory and start time from `/proc/self/stat` (`ticks` per second, `page` bytes per
/// page, `boot_time` from `/proc/stat`).
fn parse_stat(stat: &str, ticks: i64, page: i64, boot_time: Option<u64>) -> ProcessStats {
    // The command name (field 2) is in parentheses and may hold anything: count after the last `)`.
    let Some((_, rest)) = stat.rsplit_once(')') else { return ProcessStats::default() };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field n of proc(5) is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = (ticks > 0).then_some(ticks as f64);
    ProcessStats {
        cpu_seconds: match (num(14), num(15), ticks) {
            (Some(u), Some(s), Some(t)) => Some((u + s) as f64 / t),
            _ => None,
        },
        resident_bytes: num(24).filter(|_| page > 0).map(|pages| pages * page as u64),
        virtual_bytes: num(23),
        start_time_seconds: match (num(22), ticks, boot_time) {
            (Some(start), Some(t), Some(boot)) => Some(boot as f64 + start as f64 / t),
            _ => None,
        },
        ..ProcessStats::default()
    }
}

/// `btime` (boot time, Unix seconds) from `/proc/stat`.
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The soft open-files limit from `/proc/self/limits` (`None` when unlimited).
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metrics {
        let m = Metrics::new("example.org");
        m.observe("tillit.v1.admin.status", "ok", 0.001);
        m.identities.set(3);
        m.set_site("east", 2, Some(1_700_000_000));
        m.set_site("west", 0, None);
        m
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = sample().render(Format::OpenMetrics);
        assert!(text.contains("# TYPE tillit_requests counter\n"), "{text}");
        assert!(text.contains("tillit_requests_total{endpoint=\"tillit.v1.admin.status\",outcome=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("tillit_identities 3\n"));
        assert!(text.contains("# TYPE tillit_build info\n"), "{text}");
        assert!(text.contains(&format!("tillit_build_info{{version=\"{}\",trust_domain=\"example.org\"}} 1\n", env!("CARGO_PKG_VERSION"))), "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn text_format_names_counters_by_their_total_sample_and_build_info_as_gauge() {
        let text = sample().render(Format::Text);
        assert!(text.contains("# HELP tillit_requests_total Requests answered by the control plane.\n"), "{text}");
        assert!(text.contains("# TYPE tillit_requests_total counter\n"), "{text}");
        assert!(text.contains("tillit_requests_total{endpoint=\"tillit.v1.admin.status\",outcome=\"ok\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE tillit_ocsp_responses_total counter\ntillit_ocsp_responses_total 0\n"), "{text}");
        assert!(text.contains("# TYPE tillit_build_info gauge\n"), "{text}");
        assert!(text.contains("tillit_build_info{version="), "{text}");
        assert!(text.contains("# TYPE tillit_request_duration_seconds histogram\n"), "{text}");
        assert!(text.contains("tillit_request_duration_seconds_bucket{le=\"+Inf\",endpoint=\"tillit.v1.admin.status\"} 1\n"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT") && !text.contains(" info\n"), "{text}");
        // Every family's TYPE line names the samples that follow it.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                let name = &line[..line.find(['{', ' ']).unwrap()];
                assert!(name == family || (name.starts_with(&family) && ["_bucket", "_sum", "_count"].contains(&&name[family.len()..])), "{line} under {family}");
            }
        }
    }

    #[test]
    fn times_are_timestamps_and_an_unknown_one_has_no_series() {
        let m = sample();
        for format in [Format::OpenMetrics, Format::Text] {
            let text = m.render(format);
            assert!(text.contains("tillit_site_last_ack_timestamp_seconds{site=\"east\"} 1700000000\n"), "{text}");
            assert!(!text.contains("tillit_site_last_ack_timestamp_seconds{site=\"west\"}"), "{text}");
            assert!(text.contains("tillit_site_lag_events{site=\"west\"} 0\n"), "{text}");
            assert!(!text.contains("\ntillit_ca_expiry_timestamp_seconds "), "unset: no sample\n{text}");
            assert!(!text.contains(" -1\n"), "{text}");
        }
        m.ca_expiry.set(1_900_000_000);
        m.set_own_credentials_expiry("api", 1_800_000_000);
        let text = m.render(Format::Text);
        assert!(text.contains("# TYPE tillit_ca_expiry_timestamp_seconds gauge\ntillit_ca_expiry_timestamp_seconds 1900000000\n"), "{text}");
        assert!(text.contains("tillit_own_credentials_expiry_timestamp_seconds{connection=\"api\"} 1800000000\n"), "{text}");
        // An ack that goes away (its agents removed) takes its series with it.
        m.set_site("east", 0, None);
        assert!(!m.render(Format::Text).contains("tillit_site_last_ack_timestamp_seconds{"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_come_from_proc() {
        let text = Metrics::new("example.org").render(Format::Text);
        for (name, kind) in [
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n{name} ")), "{name}\n{text}");
        }
        let om = Metrics::new("example.org").render(Format::OpenMetrics);
        assert!(om.contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total "), "{om}");
        let p = ProcessStats::read();
        assert!(p.resident_bytes.unwrap() > 0 && p.virtual_bytes.unwrap() >= p.resident_bytes.unwrap());
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.start_time_seconds.unwrap() > 1_500_000_000.0);
    }

    #[test]
    fn proc_files_parse() {
        // A command name with spaces and a `)` of its own.
        let stat = "4242 (tillit (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 12345 104857600 2560 18446744073709551615";
        let p = parse_stat(stat, 100, 4096, Some(1_700_000_000));
        assert_eq!(p.cpu_seconds, Some(3.0));
        assert_eq!(p.virtual_bytes, Some(104_857_600));
        assert_eq!(p.resident_bytes, Some(2560 * 4096));
        assert_eq!(p.start_time_seconds, Some(1_700_000_123.45));
        assert_eq!(parse_stat("garbage", 100, 4096, None), ProcessStats::default());
        assert_eq!(parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 1048576              files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_max_fds("Max open files            unlimited            unlimited            files\n"), None);
    }

    #[test]
    fn accept_picks_the_format() {
        let prometheus_2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, want) in [
            (None, Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"), Format::Text),
            (Some(prometheus_2), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (Some("Application/OpenMetrics-Text; version=1.0.0"), Format::OpenMetrics),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (Some("application/openmetrics-text;q=0.3, text/plain;q=0.9"), Format::Text),
            (Some("text/plain;q=0.5, application/openmetrics-text;q=0.5"), Format::OpenMetrics),
            (Some("application/json"), Format::Text),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
        assert!(Format::Text.content_type().starts_with("text/plain; version=0.0.4"));
        assert!(Format::OpenMetrics.content_type().starts_with("application/openmetrics-text; version=1.0.0"));
    }

    #[test]
    fn conversion_drops_what_only_openmetrics_has() {
        let om = "# HELP a_seconds A.\n# TYPE a_seconds counter\n# UNIT a_seconds seconds\na_seconds_total{l=\"x # {y}\"} 1 # {trace=\"t\"} 1.0\na_seconds_created 1.7e9\n\
                  # TYPE s stateset\ns{s=\"a\"} 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_text(om),
            "# HELP a_seconds_total A.\n# TYPE a_seconds_total counter\na_seconds_total{l=\"x # {y}\"} 1\n# TYPE s untyped\ns{s=\"a\"} 1\n"
        );
    }
}

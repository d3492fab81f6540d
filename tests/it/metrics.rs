//! `/metrics` of a running `serve`: OpenMetrics or the Prometheus text format by `Accept`, and
//! `promtool check metrics` (Prometheus 2.x) accepts the text format.

use crate::harness::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `promtool`: `$PROMTOOL`, else on `PATH`. CI installs it (`.ci/run`); a missing one fails the
/// test rather than skipping it.
fn promtool() -> String {
    std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

/// `promtool check metrics` on `text` (stdin): its exit success and everything it said.
fn promtool_check(text: &str) -> (bool, String) {
    let bin = promtool();
    let mut child = Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({bin}: {e}); install it (apt-get install prometheus, as .ci/run does) \
                 or point PROMTOOL at it"
            )
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The value of the sample line that starts with `prefix` (name and labels).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn metrics_speak_openmetrics_or_prometheus_text_by_accept_and_promtool_passes_the_text() {
    let e = Estate::init("metrics.example");
    let _nats = e.start_nats();
    let serve = e.start_serve_ready();
    // One request, so the request counter and histogram have samples (and the CA gauge is set).
    let out = tillit(&["status", "--identity", &e.admin(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;

    // What Prometheus 2.x asks for: OpenMetrics.
    let om = http_get_with(e.http_port, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]).expect("metrics");
    assert_eq!(om.status, 200);
    assert_eq!(om.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert_eq!(om.header("vary"), Some("Accept"));
    let b = &om.body;
    assert!(b.ends_with("# EOF\n"), "{b}");
    assert!(b.contains("# TYPE tillit_requests counter\n"), "{b}");
    assert!(b.contains("tillit_requests_total{endpoint=\"tillit.v1.admin.status\",outcome=\"ok\"} 1\n"), "{b}");
    assert!(b.contains("# TYPE tillit_build info\n"), "{b}");
    assert!(b.contains("tillit_build_info{version=\""), "{b}");
    assert!(b.contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total "), "{b}");

    // No Accept (curl), `*/*` or `text/plain`: the 0.0.4 text format.
    for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4")] {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        let a = http_get_with(e.http_port, "/metrics", &headers).expect("metrics");
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"), "Accept {accept:?}");
        assert!(!a.body.contains("# EOF"), "Accept {accept:?}:\n{}", a.body);
    }
    let text = http_get_with(e.http_port, "/metrics", &[("Accept", "text/plain")]).expect("metrics").body;
    assert!(text.contains("# TYPE tillit_requests_total counter\n"), "{text}");
    assert!(text.contains("# TYPE tillit_build_info gauge\n"), "{text}");
    assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "{text}");
    for name in ["process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds", "process_max_fds"] {
        assert!(value(&text, &format!("{name} ")).is_some_and(|v| v > 0.0), "{name}:\n{text}");
    }
    let started = value(&text, "process_start_time_seconds ").expect("start time");
    assert!(started <= now + 1.0 && started > now - 600.0, "started {started}, now {now}");
    // Times are Unix timestamps in the future, never "seconds remaining" or -1.
    let ca = value(&text, "tillit_ca_expiry_timestamp_seconds ").unwrap_or_else(|| panic!("CA expiry:\n{text}"));
    assert!(ca > now + 86_400.0, "CA expiry {ca}");
    for conn in ["api", "sys"] {
        let own = value(&text, &format!("tillit_own_credentials_expiry_timestamp_seconds{{connection=\"{conn}\"}} "))
            .unwrap_or_else(|| panic!("own credentials expiry of {conn}:\n{text}"));
        assert!(own > now, "{conn}: {own}");
    }
    assert!(!text.contains("\ntillit_site_last_ack_timestamp_seconds{"), "no site, no ack series:\n{text}");
    assert!(!text.lines().any(|l| !l.starts_with('#') && l.ends_with(" -1")), "{text}");

    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics failed:\n{said}\n{text}");
    assert_eq!(said.trim(), "", "promtool has lint remarks:\n{text}");
    // And it does check: the OpenMetrics rendering is not 0.0.4.
    let (ok, said) = promtool_check(b);
    assert!(!ok || !said.trim().is_empty(), "promtool took OpenMetrics as text 0.0.4:\n{said}");
    drop(serve);
}

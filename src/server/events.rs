//! nats-server's own refusals, made visible: tillit listens to the `$SYS` auth error events,
//! counts them by reason in `/metrics` (`tillit_auth_failures_total{reason}`) and records them in
//! the audit log (at most [`MAX_RECORDS_PER_SEC`] a second, so an attack cannot fill the disk;
//! the counter sees every one).

use super::Ctx;
use crate::audit::Entry;
use crate::subjects;
use crate::telemetry::ReasonLabels;
use futures::StreamExt;
use serde::Deserialize;
use std::sync::Arc;

/// Most auth failures recorded in the audit log per second.
pub(super) const MAX_RECORDS_PER_SEC: u32 = 20;

#[derive(Debug, Deserialize)]
struct AuthError {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    client: ClientInfo,
    #[serde(default)]
    server: ServerInfo,
}

#[derive(Debug, Default, Deserialize)]
struct ClientInfo {
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    user: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    acc: String,
}

#[derive(Debug, Default, Deserialize)]
struct ServerInfo {
    #[serde(default)]
    name: String,
}

/// The reasons nats-server gives for refusing a connection, as metric labels. Anything else is
/// counted as `other`, so whatever reaches the event subject cannot grow the label set.
pub(super) const KNOWN_REASONS: &[&str] = &[
    "authentication_failure",
    "authentication_timeout",
    "authorization_violation",
    "user_authentication_expired",
    "user_authentication_revoked",
    "account_authentication_expired",
    "tls_handshake_error",
    "maximum_connections_exceeded",
    "maximum_account_connections_exceeded",
    "minimum_version_required",
    "protocol_violation",
    "bad_client_protocol_version",
    "duplicate_client_id",
    "missing_account",
];

/// A bounded metric label for a server's reason text ([`KNOWN_REASONS`], else `other`).
pub(super) fn reason_metric_label(reason: &str) -> String {
    let label = reason_label(reason);
    if KNOWN_REASONS.contains(&label.as_str()) {
        label
    } else {
        "other".into()
    }
}

/// A metric-label-safe form of a server's reason text: `Authentication Failure` →
/// `authentication_failure` (at most 48 characters).
pub(super) fn reason_label(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
        if out.len() >= 48 {
            break;
        }
    }
    let out = out.trim_end_matches('_').to_string();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

/// Watch auth errors until the subscription ends.
pub(super) async fn watch_auth_errors(ctx: Arc<Ctx>) {
    let mut sub = match ctx.sys.subscribe(subjects::SYS_AUTH_ERRORS).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot subscribe to nats-server auth error events: {e}");
            return;
        }
    };
    let mut window = std::time::Instant::now();
    let mut recorded = 0u32;
    while let Some(msg) = sub.next().await {
        let Ok(ev) = serde_json::from_slice::<AuthError>(&msg.payload) else { continue };
        let reason = reason_label(&ev.reason);
        ctx.metrics.auth_failures.get_or_create(&ReasonLabels { reason: reason_metric_label(&ev.reason) }).inc();
        tracing::info!(reason = %ev.reason, host = %ev.client.host, user = %ev.client.user, "nats-server refused a connection");
        if window.elapsed() >= std::time::Duration::from_secs(1) {
            window = std::time::Instant::now();
            recorded = 0;
        }
        if recorded >= MAX_RECORDS_PER_SEC {
            continue;
        }
        recorded += 1;
        let target = format!("{}:{}", ev.client.host, ev.client.port);
        let entry = Entry::denied(&format!("nats-server:{}", ev.server.name), "connect", &target, &reason).detail(serde_json::json!({
            "reason": ev.reason, "user": ev.client.user, "name": ev.client.name, "account": ev.client.acc,
        }));
        ctx.journal.record_relaxed(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_become_labels() {
        assert_eq!(reason_label("Authentication Failure"), "authentication_failure");
        assert_eq!(reason_label("  TLS Handshake Error: bad cert!! "), "tls_handshake_error_bad_cert");
        assert_eq!(reason_label(""), "unknown");
        assert_eq!(reason_label("!!!"), "unknown");
        assert!(reason_label(&"x".repeat(500)).len() <= 48);
        assert_eq!(reason_metric_label("Authentication Failure"), "authentication_failure");
        assert_eq!(reason_metric_label("User Authentication Revoked"), "user_authentication_revoked");
        let forged: std::collections::HashSet<String> = (0..1000).map(|i| reason_metric_label(&format!("forged {i}"))).collect();
        assert_eq!(forged.into_iter().collect::<Vec<_>>(), vec!["other".to_string()]);
    }
}

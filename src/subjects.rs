//! Every subject and header name tillit uses, in one place (house rule 1). `subjects/asyncapi.yaml`
//! is the published contract; `tests/contract.rs` checks the two agree.

/// Version prefix of every tillit subject.
pub const API_PREFIX: &str = "tillit.v1";

/// Name of the NATS micro service (`$SRV.PING.tillit`, …).
pub const SERVICE_NAME: &str = "tillit";



/// Service API group, exported to tenant accounts.
pub const SVC_EXPORT: &str = "tillit.v1.svc.>";

/// Event stream subjects: `tillit.v1.events.<site|all>.<kind>`.
pub const EVENTS_EXPORT: &str = "tillit.v1.events.>";
/// Every event subject: what admin identities may subscribe to, to watch events.
pub const EVENTS_ALL: &str = "tillit.v1.events.>";

/// The JetStream stream of signed events, created by `serve`.
pub const EVENTS_STREAM: &str = "TILLIT_EVENTS";
/// The audit journal's subject, in the TILLIT account (a JetStream store): only the control
/// plane's store user may publish it.
pub const JOURNAL: &str = "tillit.journal";
/// Event subject: `tillit.v1.events.<site|all>.<kind>`.
pub fn event_subject(scope: &str, kind: &str) -> String {
    format!("tillit.v1.events.{scope}.{kind}")
}
/// The scope and kind an event subject names (`tillit.v1.events.<scope>.<kind…>`).
pub fn parse_event_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("tillit.v1.events.")?;
    let (scope, kind) = rest.split_once('.')?;
    (!scope.is_empty() && !kind.is_empty()).then_some((scope, kind))
}
/// The envelope `type` of an event or notification of kind `name`: `io.tillit.v1.<name>`.
pub fn event_type(name: &str) -> String {
    format!("io.tillit.v1.{name}")
}

/// The events tillit broadcasts (and notifies instances of). The kind's name is the event
/// subject's last tokens and, after `io.tillit.v1.`, its envelope's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A secret has a new version (sites holding it fetch and write it).
    SecretRotated,
    /// A service's identities were revoked.
    IdentityRevoked,
    /// A service's permissions changed (its instances move to the new role key).
    PermissionsChanged,
    /// The envelope signing key rotated: the new trust set.
    TrustRotated,
    /// A CA rotation step: the bundle sites must trust.
    CaRotated,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 5] =
        [EventKind::SecretRotated, EventKind::IdentityRevoked, EventKind::PermissionsChanged, EventKind::TrustRotated, EventKind::CaRotated];

    /// Its name: `secret.rotated`, ….
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SecretRotated => "secret.rotated",
            EventKind::IdentityRevoked => "identity.revoked",
            EventKind::PermissionsChanged => "permissions.changed",
            EventKind::TrustRotated => "trust.rotated",
            EventKind::CaRotated => "ca.rotated",
        }
    }

    /// Its envelope `type` ([`event_type`]).
    pub fn envelope_type(self) -> String {
        event_type(self.name())
    }

    /// The kind named `name`, if tillit knows it.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The hub's JetStream domain (site servers run their own, `site-<name>`).
pub const HUB_DOMAIN: &str = "hub";
/// A site server's JetStream domain.
pub fn site_domain(site: &str) -> String {
    format!("site-{site}")
}
/// The durable consumer (and user name) of a site agent: `agent-<site>-<12 chars of its nkey>`.
pub fn agent_consumer(site: &str, user_public_key: &str) -> String {
    let tail: String = user_public_key.chars().skip(1).take(12).collect::<String>().to_lowercase();
    format!("agent-{site}-{tail}")
}
/// What a site receives: events for all sites and for its own.
pub fn site_filters(site: &str) -> Vec<String> {
    vec![event_subject("all", ">"), event_subject(site, ">")]
}
/// A site's own stream on the hub, `TILLIT_SITE_<site>`: the hub's JetStream sources into it
/// the events of [`EVENTS_STREAM`] the site receives, and its agents' consumers live on it, so
/// a site server's link may read its own site's consumers and no other's (a consumer name is
/// one subject token and cannot be matched by prefix; a stream name can be named exactly).
pub fn site_stream(site: &str) -> String {
    format!("TILLIT_SITE_{site}")
}
/// The header JetStream stamps on a message sourced from another stream
/// (`<stream> <sequence> …`): an agent checks an envelope's `seq` against it.
pub const HDR_STREAM_SOURCE: &str = "Nats-Stream-Source";
/// The origin stream and sequence of a sourced message, from its `Nats-Stream-Source` value.
pub fn stream_source(value: &str) -> Option<(&str, u64)> {
    let mut it = value.split(' ');
    let name = it.next()?.split(':').next()?;
    let seq = it.next()?.parse().ok()?;
    Some((name, seq))
}

/// The envelope type of an agent's acknowledgement.
pub const ENVELOPE_AGENT_ACK: &str = "io.tillit.v1.agent.ack";

/// Notifications the control plane sends to the instances of one service (stream export of
/// TILLIT; each tenant account imports its own `tillit.v1.notify.<account>.>`).
pub const NOTIFY_EXPORT: &str = "tillit.v1.notify.>";
/// What a tenant account imports.
pub fn notify_import(account: &str) -> String {
    format!("tillit.v1.notify.{account}.>")
}
/// Where the instances of `<project>.<service>` in `account` hear from the control plane.
pub fn notify_subject(account: &str, project: &str, service: &str) -> String {
    format!("tillit.v1.notify.{account}.{project}.{service}")
}

/// Root of per-identity inboxes: `_INBOX.<user public key>.…`.
pub const INBOX_ROOT: &str = "_INBOX";
/// The inbox prefix of a user, `_INBOX.<user public key>`: only its holder may subscribe below it.
pub fn inbox_prefix(user_public_key: &str) -> String {
    format!("{INBOX_ROOT}.{user_public_key}")
}
/// Root of the reply subjects nats-server makes for requests crossing a service import.
pub const SERVICE_REPLY_ROOT: &str = "_R_";
/// Whether the control plane may answer on `reply`: an inbox or a service-import reply.
pub fn is_reply_subject(reply: &str) -> bool {
    let ok_root = below(reply, INBOX_ROOT) || is_service_reply(reply);
    ok_root && !reply.contains(['*', '>', ' ']) && !reply.split('.').any(str::is_empty)
}
/// Whether `reply` is one nats-server made for a request crossing a service import (`_R_.…`).
pub fn is_service_reply(reply: &str) -> bool {
    below(reply, SERVICE_REPLY_ROOT)
}
/// Whether `subject` has at least one token below `root`.
fn below(subject: &str, root: &str) -> bool {
    subject.strip_prefix(root).and_then(|r| r.strip_prefix('.')).is_some_and(|r| !r.is_empty())
}
/// Root of the inboxes of a site's agents, `_INBOX.site-<site>.<user public key>.…`: the only
/// inboxes a site server's link to the hub may receive on (user keys start with `U`, so no
/// service inbox falls below it).
pub fn site_inbox_root(site: &str) -> String {
    format!("{INBOX_ROOT}.site-{site}")
}
/// The inbox prefix of an agent of `site`: `_INBOX.site-<site>.<user public key>`.
pub fn agent_inbox_prefix(site: &str, user_public_key: &str) -> String {
    format!("{}.{user_public_key}", site_inbox_root(site))
}
/// The hash nats-server names itself by in `$SYS` (`getHash` in its events.go: SHA-256 of the
/// server name, the first 8 bytes mapped onto base62 digits). Its account resolver receives
/// lookup and pack replies on `$SYS._INBOX.<hash>.*`.
pub fn server_name_hash(server_name: &str) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let h = crate::crypto::sha256(server_name.as_bytes());
    h[..8].iter().map(|b| DIGITS[(*b % 62) as usize] as char).collect()
}
/// A site's leaf nats-server names itself `tillit-site-<site>`.
pub fn site_server_name(site: &str) -> String {
    format!("tillit-site-{site}")
}

/// What an admin identity may publish.
pub const ADMIN_PUBLISH: &[&str] = &["tillit.v1.admin.>", "tillit.v1.svc.>", "$SRV.>"];

/// Micro-service discovery subjects.
pub const SRV_ALL: &str = "$SRV.>";

/// nats-server: push an account JWT (from a SYS user).
pub const SYS_CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";
/// nats-server: push an account JWT, per account (and the pre-2.2 form).
pub const SYS_ACCOUNT_CLAIMS_UPDATE: &str = "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE";
/// nats-server: push an account JWT, per account, in the pre-2.2 form.
pub const SYS_ACCOUNT_CLAIMS_UPDATE_OLD: &str = "$SYS.ACCOUNT.*.CLAIMS.UPDATE";
/// nats-server: look up an account JWT (any account; [`account_lookup`] for one).
pub const SYS_ACCOUNT_LOOKUP: &str = "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP";
/// The lookup subject of one account.
pub fn account_lookup(account_public_key: &str) -> String {
    format!("$SYS.REQ.ACCOUNT.{account_public_key}.CLAIMS.LOOKUP")
}
/// nats-server: full resolvers exchange the JWTs they hold.
pub const SYS_CLAIMS_PACK: &str = "$SYS.REQ.CLAIMS.PACK";

/// nats-server: a client of account `account_public_key` connected (its connect event). The
/// SYS account exports its own as a stream; TILLIT imports it as [`SYS_CONNECT_EVENTS`].
pub fn account_connect_events(account_public_key: &str) -> String {
    format!("$SYS.ACCOUNT.{account_public_key}.CONNECT")
}
/// Whether two subjects (wildcards allowed) can match a common subject. nats-server refuses an
/// account whose exports of one type overlap ("already exports"), so an adopted export that
/// overlaps one of tillit's own cannot be kept beside it.
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(p), Some(q)) if p == q || p == "*" || q == "*" => continue,
            _ => return false,
        }
    }
}

/// Where the TILLIT account receives the SYS account's connect events (the import's local
/// subject). No TILLIT user may publish here: only nats-server's own events arrive.
pub const SYS_CONNECT_EVENTS: &str = "tillit.sys.connect";
/// The stream that keeps [`SYS_CONNECT_EVENTS`] while `serve` is down: break-glass
/// connections are recorded once `serve` is back.
pub const BREAK_GLASS_STREAM: &str = "TILLIT_BREAK_GLASS";

/// Where nats-server publishes an account's auth callout requests (in that account).
pub const SYS_AUTH_CALLOUT: &str = "$SYS.REQ.USER.AUTH";

/// TILLIT's export of the auth callout: tenant account `<name>` imports
/// `tillit.v1.callout.<name>` as its [`SYS_AUTH_CALLOUT`] (callout mode).
pub const CALLOUT_EXPORT: &str = "tillit.v1.callout.*";

/// The auth callout subject of one tenant account in TILLIT.
pub fn callout_subject(account_name: &str) -> String {
    format!("tillit.v1.callout.{account_name}")
}

/// nats-server: a client failed authentication (any server).
pub const SYS_AUTH_ERRORS: &str = "$SYS.SERVER.*.CLIENT.AUTH.ERR";

/// Header the server stamps on requests that cross a service import (caller's account/user).
pub const HDR_REQUEST_INFO: &str = "Nats-Request-Info";
/// Micro-protocol error headers.
pub const HDR_SERVICE_ERROR: &str = "Nats-Service-Error";
/// Micro-protocol header of an error reply carrying the HTTP-like status of its code (`ErrorCode::status`).
pub const HDR_SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// The KV bucket of pre-signed OCSP answers (key: certificate serial, lower-case hex), in the
/// TILLIT account at the hub.
pub const OCSP_BUCKET: &str = "TILLIT_OCSP";

/// The stream behind [`OCSP_BUCKET`].
pub fn ocsp_stream() -> String {
    format!("KV_{OCSP_BUCKET}")
}

/// The direct-get subject of [`OCSP_BUCKET`]'s stream under a JetStream API prefix (`$JS.API`,
/// `$JS.hub.API`).
pub fn ocsp_direct_get(api: &str) -> String {
    format!("{api}.DIRECT.GET.{}", ocsp_stream())
}

#[cfg(test)]
mod reply_tests {
    use super::*;

    #[test]
    fn event_subjects_and_kinds() {
        assert_eq!(parse_event_subject("tillit.v1.events.all.secret.rotated"), Some(("all", "secret.rotated")));
        assert_eq!(parse_event_subject("tillit.v1.events.east.ca.rotated"), Some(("east", "ca.rotated")));
        for bad in ["tillit.v1.events.east", "tillit.v1.events..x", "tillit.v1.events.east.", "other.subject"] {
            assert_eq!(parse_event_subject(bad), None, "{bad}");
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_name(k.name()), Some(k));
            assert_eq!(parse_event_subject(&event_subject("all", k.name())), Some(("all", k.name())));
            assert_eq!(k.envelope_type(), format!("io.tillit.v1.{k}"));
        }
        assert_eq!(EventKind::from_name("nope"), None);
    }

    #[test]
    fn overlapping_subjects_table() {
        for (a, b, overlap) in [
            ("$SYS.ACCOUNT.*.>", "$SYS.ACCOUNT.AX.CONNECT", true),
            ("$SYS.REQ.ACCOUNT.*.*", "$SYS.ACCOUNT.AX.CONNECT", false),
            ("orders.>", "orders", false),
            ("orders.*", "orders.a.b", false),
            ("orders.*.b", "orders.a.*", true),
            ("a.b", "a.b", true),
            (">", "anything.at.all", true),
            ("a.b", "a.c", false),
        ] {
            assert_eq!(subjects_overlap(a, b), overlap, "{a} / {b}");
            assert_eq!(subjects_overlap(b, a), overlap, "{b} / {a}");
        }
    }

    #[test]
    fn only_inboxes_are_reply_subjects() {
        for ok in ["_INBOX.UABC.x", "_INBOX.site-east.UABC.1", "_R_.abc.def", "_INBOX.x"] {
            assert!(is_reply_subject(ok), "{ok}");
        }
        for bad in [
            "tillit.v1.events.all.x", "$JS.API.STREAM.DELETE.TILLIT_EVENTS", "_INBOX", "_INBOX.", "_INBOXX.a", "_R_", "_R_..a",
            "_INBOX.>", "_INBOX.*.x", "x._INBOX.a", "",
        ] {
            assert!(!is_reply_subject(bad), "{bad}");
        }
    }
}


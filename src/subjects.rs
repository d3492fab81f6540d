//! Every subject and header name tillit uses, in one place (house rule 1). `subjects/asyncapi.yaml`
//! is the published contract; `tests/contract.rs` checks the two agree.

/// Version prefix of every tillit subject.
pub const API_PREFIX: &str = "tillit.v1";

/// Name of the NATS micro service (`$SRV.PING.tillit`, …).
pub const SERVICE_NAME: &str = "tillit";

/// Enrollment with a join token (bootstrap users only).
pub const ENROLL: &str = "tillit.v1.enroll";

/// Admin API group and verbs (TILLIT account only).
pub const ADMIN_GROUP: &str = "tillit.v1.admin";
pub const ADMIN_STATUS: &str = "tillit.v1.admin.status";
pub const ADMIN_TOKEN_CREATE: &str = "tillit.v1.admin.token.create";
pub const ADMIN_GRANT: &str = "tillit.v1.admin.grant";
pub const ADMIN_UNGRANT: &str = "tillit.v1.admin.ungrant";
pub const ADMIN_GRANTS: &str = "tillit.v1.admin.grants";
pub const ADMIN_REVOKE: &str = "tillit.v1.admin.revoke";
pub const ADMIN_LIST: &str = "tillit.v1.admin.list";
pub const ADMIN_ROTATE_SIGNING_KEY: &str = "tillit.v1.admin.rotate.signing-key";
pub const ADMIN_SECRET_PUT: &str = "tillit.v1.admin.secret.put";
pub const ADMIN_SECRET_ROTATE: &str = "tillit.v1.admin.secret.rotate";
pub const ADMIN_SECRET_LIST: &str = "tillit.v1.admin.secret.list";
pub const ADMIN_SECRET_VERSIONS: &str = "tillit.v1.admin.secret.versions";
pub const ADMIN_SECRET_DELETE: &str = "tillit.v1.admin.secret.delete";

/// Service API group, exported to tenant accounts.
pub const SVC_GROUP: &str = "tillit.v1.svc";
pub const SVC_EXPORT: &str = "tillit.v1.svc.>";
pub const SVC_RENEW: &str = "tillit.v1.svc.renew";
pub const SVC_SECRET_GET: &str = "tillit.v1.svc.secret.get";

/// Event stream subjects: `tillit.v1.events.<site|all>.<kind>`.
pub const EVENTS_EXPORT: &str = "tillit.v1.events.>";
pub const EVENTS_ALL: &str = "tillit.v1.events.>";

/// The JetStream stream of signed events, created by `serve`.
pub const EVENTS_STREAM: &str = "TILLIT_EVENTS";
/// Event subject: `tillit.v1.events.<site|all>.<kind>`.
pub fn event_subject(scope: &str, kind: &str) -> String {
    format!("tillit.v1.events.{scope}.{kind}")
}
/// Event kinds (the subject's last tokens; the envelope type is `io.tillit.v1.<kind>`).
pub const EVENT_SECRET_ROTATED: &str = "secret.rotated";
pub const EVENT_IDENTITY_REVOKED: &str = "identity.revoked";
pub const EVENT_PERMISSIONS_CHANGED: &str = "permissions.changed";
pub const EVENT_TRUST_ROTATED: &str = "trust.rotated";

pub const EVENT_CA_ROTATED: &str = "ca.rotated";

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
/// Agents acknowledge applied events here (a signed envelope).
pub const SVC_ACK: &str = "tillit.v1.svc.ack";
pub const KIND_ACK: &str = "io.tillit.v1.svc.ack";
/// A site's agent renews its server's certificate and leafnode users' JWTs here.
pub const SVC_SITE_RENEW: &str = "tillit.v1.svc.site.renew";
pub const KIND_SITE_RENEW: &str = "io.tillit.v1.svc.site.renew";
/// The envelope type of an agent's acknowledgement.
pub const ENVELOPE_AGENT_ACK: &str = "io.tillit.v1.agent.ack";
/// Site administration.
pub const ADMIN_SITE_ADD: &str = "tillit.v1.admin.site.add";
pub const ADMIN_SITE_LIST: &str = "tillit.v1.admin.site.list";
pub const KIND_SITE_ADD: &str = "io.tillit.v1.admin.site.add";
pub const KIND_SITE_LIST: &str = "io.tillit.v1.admin.site.list";
pub const ADMIN_SITE_REMOVE: &str = "tillit.v1.admin.site.remove";
pub const KIND_SITE_REMOVE: &str = "io.tillit.v1.admin.site.remove";
/// CA rotation.
pub const ADMIN_ROTATE_CA: &str = "tillit.v1.admin.rotate.ca";
pub const KIND_ROTATE_CA: &str = "io.tillit.v1.admin.rotate.ca";

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
pub const SYS_ACCOUNT_CLAIMS_UPDATE_OLD: &str = "$SYS.ACCOUNT.*.CLAIMS.UPDATE";
/// nats-server: look up an account JWT (any account; [`account_lookup`] for one).
pub const SYS_ACCOUNT_LOOKUP: &str = "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP";
/// The lookup subject of one account.
pub fn account_lookup(account_public_key: &str) -> String {
    format!("$SYS.REQ.ACCOUNT.{account_public_key}.CLAIMS.LOOKUP")
}
/// nats-server: full resolvers exchange the JWTs they hold.
pub const SYS_CLAIMS_PACK: &str = "$SYS.REQ.CLAIMS.PACK";

/// nats-server: a client failed authentication (any server).
pub const SYS_AUTH_ERRORS: &str = "$SYS.SERVER.*.CLIENT.AUTH.ERR";

/// Header the server stamps on requests that cross a service import (caller's account/user).
pub const HDR_REQUEST_INFO: &str = "Nats-Request-Info";
/// Micro-protocol error headers.
pub const HDR_SERVICE_ERROR: &str = "Nats-Service-Error";
pub const HDR_SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// Request types (`type` of a signed request), one per subject.
pub const KIND_STATUS: &str = "io.tillit.v1.admin.status";
pub const KIND_TOKEN_CREATE: &str = "io.tillit.v1.admin.token.create";
pub const KIND_ENROLL: &str = "io.tillit.v1.enroll";
pub const KIND_GRANT: &str = "io.tillit.v1.admin.grant";
pub const KIND_UNGRANT: &str = "io.tillit.v1.admin.ungrant";
pub const KIND_GRANTS: &str = "io.tillit.v1.admin.grants";
pub const KIND_REVOKE: &str = "io.tillit.v1.admin.revoke";
pub const KIND_LIST: &str = "io.tillit.v1.admin.list";
pub const KIND_ROTATE_SIGNING_KEY: &str = "io.tillit.v1.admin.rotate.signing-key";
pub const KIND_SECRET_PUT: &str = "io.tillit.v1.admin.secret.put";
pub const KIND_SECRET_ROTATE: &str = "io.tillit.v1.admin.secret.rotate";
pub const KIND_SECRET_LIST: &str = "io.tillit.v1.admin.secret.list";
pub const KIND_SECRET_VERSIONS: &str = "io.tillit.v1.admin.secret.versions";
pub const KIND_SECRET_DELETE: &str = "io.tillit.v1.admin.secret.delete";
pub const KIND_SECRET_GET: &str = "io.tillit.v1.svc.secret.get";
pub const KIND_RENEW: &str = "io.tillit.v1.svc.renew";

#[cfg(test)]
mod reply_tests {
    use super::*;

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

//! `tillit.v1.admin.status`: the estate at a glance, and the gauges that mirror it.

use super::dispatch::{Call, Handle};
use super::Ctx;
use std::sync::Arc;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::estate::{AccountKind, IdentityRecord, IdentityState};
use crate::policy::roles::Access;
use crate::proto::{self, IdentityStatus, AccountStatus, Counts, StatusReply, StatusRequest};

impl Handle for proto::Status {
    async fn handle(ctx: &Arc<Ctx>, call: &mut Call, _req: StatusRequest) -> Result<StatusReply, ApiError> {
        let mut st = status(ctx, call.caller()?, call.access()?)?;
        let probe = match ctx.estate.config.ocsp_local_addr() {
            Some(addr) => Some(responder_answers(addr).await),
            None => None,
        };
        st.availability = Some(availability(ctx, probe, st.store.as_ref().map(|s| s.replicas.len()).unwrap_or(1)));
        st.sites = super::sites::site_infos(ctx).await?;
        st.ca_rollout = super::ca::rollout_info(ctx).await?;
        Ok(st)
    }
}

/// Refresh the gauges that mirror store counts (one scan of each space).
pub(crate) fn refresh_gauges(ctx: &Ctx) {
    if let (Ok(accounts), Ok(ids)) = (ctx.estate.accounts(), ctx.estate.identities()) {
        set_gauges(ctx, accounts.len(), &ids);
    }
}

/// Set the gauges from records already read.
fn set_gauges(ctx: &Ctx, accounts: usize, ids: &[IdentityRecord]) {
    let now = ctx.estate.clock().now_unix();
    ctx.metrics.identities.set(ids.len() as i64);
    ctx.metrics.accounts.set(accounts as i64);
    let soon = ids.iter().filter(|i| i.state == IdentityState::Active && i.expires_at > now && i.expires_at <= now + 86_400).count();
    ctx.metrics.identities_expiring_24h.set(soon as i64);
    if let Ok(exp) = crate::issuer::x509::not_after(ctx.estate.ca().cert_pem()) {
        ctx.metrics.ca_expiry.set(exp);
    }
}

/// The estate as `access` may see it: an admin confined to tenants counts only their services
/// and sees only their accounts.
fn status(ctx: &Ctx, caller: &IdentityRecord, access: &Access) -> Result<StatusReply, ApiError> {
    let e = &ctx.estate;
    let mut accounts = e.accounts().map_err(ApiError::from)?;
    let mut all = e.identities().map_err(ApiError::from)?;
    let now = e.clock().now_unix();
    set_gauges(ctx, accounts.len(), &all);
    if access.confined() {
        all.retain(|r| super::admin::sees_identity(access, r));
        accounts.retain(|a| a.kind == AccountKind::Tenant && a.tenant.as_deref().is_some_and(|t| access.sees(t)));
    }
    let by_state = |st: IdentityStatus| all.iter().filter(|r| super::admin::state_of(r, now) == st).count();
    Ok(StatusReply {
        trust_domain: e.trust_domain().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        server_time: rfc3339(e.clock().now_unix()),
        operator: e.meta.operator_public_key.clone(),
        ca_fingerprint: e.ca_fingerprint(),
        ca_expires_at: crate::issuer::x509::not_after(e.ca().cert_pem()).map(rfc3339).unwrap_or_default(),
        nats_urls: e.config.urls(),
        counts: Counts {
            identities: all.len(),
            active: by_state(IdentityStatus::Active),
            revoked: by_state(IdentityStatus::Revoked),
            expired: by_state(IdentityStatus::Expired),
            accounts: accounts.len(),
            tenant_accounts: accounts.iter().filter(|a| a.kind == AccountKind::Tenant).count(),
        },
        accounts: accounts
            .into_iter()
            .map(|a| {
                (a.name.clone(), AccountStatus { public_key: a.public_key, kind: a.kind.as_str().into(), created_at: rfc3339(a.created_at) })
            })
            .collect(),
        sites: vec![],
        cas: super::ca::ca_infos(e),
        ca_rollout: None,
        store: Some(store_status(ctx)),
        availability: None,
        break_glass: super::breakglass::status(ctx),
        rss_bytes: crate::telemetry::rss_bytes(),
        auth: Some(auth_status(ctx)),
        caller: caller.id.clone(),
        caller_role: Some(access.role),
        caller_tenants: access.tenants.clone(),
    })
}


/// The auth mode and this replica's callout decisions.
fn auth_status(ctx: &Ctx) -> crate::proto::status::AuthStatus {
    let settings = ctx.estate.auth_settings().ok().flatten();
    let (admitted, refused, p50_ms, p99_ms) = ctx.callout_stats.snapshot();
    crate::proto::status::AuthStatus {
        mode: settings.as_ref().map(|s| s.mode).unwrap_or(crate::estate::callout::AuthMode::Jwt).as_str().into(),
        since: settings.map(|s| rfc3339(s.since)),
        requests: admitted + refused,
        admitted,
        refused,
        p50_ms: (p50_ms * 1000.0).round() / 1000.0,
        p99_ms: (p99_ms * 1000.0).round() / 1000.0,
    }
}

/// Whether an OCSP responder answers `/healthz` at `addr` within 500 ms.
async fn responder_answers(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: responder\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    matches!(tokio::time::timeout(std::time::Duration::from_millis(500), attempt).await, Ok(Some(true)))
}

/// The data plane's dependence on the control plane, with warnings for each single point of
/// failure.
fn availability(ctx: &Ctx, local_answers: Option<bool>, replicas: usize) -> crate::proto::AvailabilityStatus {
    let c = &ctx.estate.config;
    let mut warnings = Vec::new();
    match (&c.ocsp_local_url, local_answers) {
        (None, _) if !c.ocsp_admit_when_unreachable => warnings.push(
            "certificates name no OCSP responder next to the nats-servers (ocsp.local_url is empty): while no `serve` replica runs, \
             every new connection is refused; set ocsp.local_url, run `tillit responder` next to each hub server and \
             `tillit agent --ocsp-addr` at each site"
                .to_string(),
        ),
        (Some(url), Some(false)) => warnings.push(format!(
            "no OCSP responder answers at {url} on this host: while no `serve` replica runs, new connections to a hub server here \
             are {}; run `tillit responder --data-dir DATA` next to it",
            if c.ocsp_admit_when_unreachable { "admitted on their JWT alone" } else { "refused" }
        )),
        _ => {}
    }
    if replicas <= 1 {
        warnings.push(
            "one `serve` replica: enrollment, renewal, grants, revocation and secret reads stop while it is down (connections keep \
             working where an OCSP responder runs next to the servers); run more replicas on the JetStream store"
                .to_string(),
        );
    }
    crate::proto::AvailabilityStatus {
        ocsp_local_url: c.ocsp_local_url.clone(),
        local_responder_answers: local_answers,
        when_unreachable: if c.ocsp_admit_when_unreachable { "admit" } else { "refuse" }.into(),
        ocsp_answers: ctx.answers.copy.len(),
        warnings,
    }
}

/// The store, the replicas and the leader, as this replica knows them.
pub(super) fn store_status(ctx: &Ctx) -> crate::proto::StoreStatus {
    let e = &ctx.estate;
    let (bucket, journal, replication) = match &e.config.store {
        crate::config::StoreBackend::JetStream { bucket, journal, replicas, .. } => (Some(bucket.clone()), Some(journal.clone()), *replicas),
        crate::config::StoreBackend::Sled => (None, None, 1),
    };
    let secs = |ms: i64| rfc3339(ms.div_euclid(1000));
    let l = &ctx.leader;
    let replicas = if l.replicated() {
        super::leader::replicas(e.store(), super::leader::live_window(ctx))
            .into_iter()
            .map(|r| crate::proto::ReplicaInfo { id: r.id, http_addr: r.http_addr, started_at: rfc3339(r.started_at), seen_at: secs(r.seen_at_ms) })
            .collect()
    } else {
        vec![crate::proto::ReplicaInfo {
            id: l.me.clone(),
            http_addr: e.config.http_addr.to_string(),
            started_at: rfc3339(l.started_at),
            seen_at: rfc3339(e.clock().now_unix()),
        }]
    };
    crate::proto::StoreStatus {
        backend: e.store().backend().into(),
        bucket,
        journal,
        replication,
        answered_by: l.me.clone(),
        reachable: e.store().reachable(),
        leader: l.lease().map(|x| crate::proto::LeaderInfo { replica: x.holder, token: x.token, expires_at: secs(x.expires_at_ms) }),
        replicas,
    }
}

//! `tillit.v1.admin.status`: the estate at a glance, and the gauges that mirror it.

use super::dispatch::{Call, Handle};
use super::Ctx;
use std::sync::Arc;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::estate::{AccountKind, IdentityRecord};
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

/// What `status` counts of the identities, by tenant (`None`: admins and site agents), from one
/// streaming pass over the records: nothing per identity is held. Refreshed in the background
/// every [`SUMMARY_EVERY`], so `status` never reads every record; its counts are at most that old
/// (`expired` counts identities whose credentials ran out by the time of the pass).
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    /// When the pass ran (unix seconds).
    pub at: i64,
    /// The journal's count of identity changes when the pass began.
    changes: u64,
    /// How long the pass took.
    took: std::time::Duration,
    by_tenant: std::collections::BTreeMap<Option<String>, Tally>,
}

/// How often the summary is made again.
pub(crate) const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    total: usize,
    active: usize,
    revoked: usize,
    expired: usize,
    expiring_24h: usize,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.total += o.total;
        self.active += o.active;
        self.revoked += o.revoked;
        self.expired += o.expired;
        self.expiring_24h += o.expiring_24h;
    }
}

impl Summary {
    /// One pass over the identities.
    fn make(e: &crate::estate::Estate, changes: u64) -> Result<Self, crate::estate::EstateError> {
        let started = std::time::Instant::now();
        let now = e.clock().now_unix();
        let mut by_tenant: std::collections::BTreeMap<Option<String>, Tally> = Default::default();
        e.visit_identities(|r| {
            let tenant = match r.kind {
                crate::identity::IdentityKind::Service => r.service.as_ref().map(|s| s.tenant.clone()),
                _ => None,
            };
            let t = by_tenant.entry(tenant).or_default();
            t.total += 1;
            match super::admin::state_of(&r, now) {
                IdentityStatus::Active => {
                    t.active += 1;
                    if r.expires_at <= now + 86_400 {
                        t.expiring_24h += 1;
                    }
                }
                IdentityStatus::Revoked => t.revoked += 1,
                IdentityStatus::Expired => t.expired += 1,
            }
            true
        })?;
        Ok(Summary { at: now, changes, took: started.elapsed(), by_tenant })
    }

    /// The tally of what `access` sees (a confined admin: its tenants' services).
    fn seen_by(&self, access: &Access) -> Tally {
        let mut out = Tally::default();
        for (tenant, t) in &self.by_tenant {
            if !access.confined() || tenant.as_deref().is_some_and(|x| access.sees(x)) {
                out.add(t);
            }
        }
        out
    }
}

/// Make the summary again and the gauges from it (off the async threads: a pass over the store).
pub(crate) fn refresh_summary(ctx: &Ctx) -> Result<Arc<Summary>, ApiError> {
    let s = Arc::new(Summary::make(&ctx.estate, ctx.journal.identity_changes()).map_err(ApiError::from)?);
    let all = s.seen_by(&Access::owner());
    ctx.metrics.identities.set(all.total as i64);
    ctx.metrics.identities_expiring_24h.set(all.expiring_24h as i64);
    if let Ok(accounts) = ctx.estate.accounts() {
        ctx.metrics.accounts.set(accounts.len() as i64);
    }
    if let Ok(exp) = crate::issuer::x509::not_after(ctx.estate.ca().cert_pem()) {
        ctx.metrics.ca_expiry.set(exp);
    }
    if let Ok(mut c) = ctx.cache.summary.write() {
        *c = Some(s.clone());
    }
    Ok(s)
}

/// The summary for `status`. In a small estate (a pass under [`EXACT_PASS`]) it is made on every
/// call: exact. In a large one the summary held is used while no identity changed through this
/// replica since, or while it is younger than its refresh (every [`SUMMARY_EVERY`], or twenty
/// times a pass when that is longer): `status` stays fast, its counts at most that old.
fn summary(ctx: &Ctx) -> Result<Arc<Summary>, ApiError> {
    let now = ctx.estate.clock().now_unix();
    let held = ctx.cache.summary.read().ok().and_then(|c| c.clone());
    match held {
        Some(s) if s.took >= EXACT_PASS && (s.changes == ctx.journal.identity_changes() || s.at >= now - super::tasks::spacing(SUMMARY_EVERY, s.took).as_secs() as i64) => Ok(s),
        _ => refresh_summary(ctx),
    }
}

/// A pass over the identities shorter than this is made for every `status`.
const EXACT_PASS: std::time::Duration = std::time::Duration::from_millis(20);

/// The estate as `access` may see it: an admin confined to tenants counts only their services
/// and sees only their accounts.
fn status(ctx: &Ctx, caller: &IdentityRecord, access: &Access) -> Result<StatusReply, ApiError> {
    let e = &ctx.estate;
    let mut accounts = e.accounts().map_err(ApiError::from)?;
    let seen = summary(ctx)?.seen_by(access);
    if access.confined() {
        accounts.retain(|a| a.kind == AccountKind::Tenant && a.tenant.as_deref().is_some_and(|t| access.sees(t)));
    }
    Ok(StatusReply {
        trust_domain: e.trust_domain().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        server_time: rfc3339(e.clock().now_unix()),
        operator: e.meta.operator_public_key.clone(),
        ca_fingerprint: e.ca_fingerprint(),
        ca_expires_at: crate::issuer::x509::not_after(e.ca().cert_pem()).map(rfc3339).unwrap_or_default(),
        nats_urls: e.config.urls(),
        counts: Counts {
            identities: seen.total,
            active: seen.active,
            revoked: seen.revoked,
            expired: seen.expired,
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
    if let Some(fault) = crate::natsbin::known_fault(&ctx.api.server_info().version) {
        warnings.push(fault);
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

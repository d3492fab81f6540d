//! The read-only dashboard, served by `serve` on its HTTP port under `/dashboard/`.
//!
//! A browser session starts from `tillit dashboard --identity ADMIN` (verb `dashboard.session`):
//! a one-time URL (valid [`CODE_TTL`], single use) that sets an `HttpOnly`, `SameSite=Strict`
//! session cookie bound to that admin. Every request re-reads the admin's identity: a revoked or
//! expired admin's session ends at once, and its role and tenants decide what the page shows (a
//! tenant-confined admin sees its tenants only). Nothing is served without a session; the page
//! is static (no inline script, a strict Content-Security-Policy), reads `/dashboard/api/state`
//! and follows `/dashboard/api/events` (server-sent events, a fresh state every second).
//!
//! Sessions live in the memory of the replica that minted the URL (its `http.public_url`); a
//! restart ends them.

use super::Ctx;
use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::estate::{IdentityRecord, IdentityState};
use crate::identity::IdentityKind;
use crate::policy::roles::Access;
use crate::proto::{DashboardSessionReply, DashboardSessionRequest};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

mod http;
pub use http::routes;

serve_verbs! { DashboardSession(caller) => session }

/// How long a one-time URL works.
pub const CODE_TTL: i64 = 60;
/// How long a browser session lasts.
pub const SESSION_TTL: i64 = 8 * 3600;
/// The most sessions and pending URLs kept (the oldest go first).
const MAX_SESSIONS: usize = 1024;
/// The session cookie's name.
pub const COOKIE: &str = "tillit_dashboard";

/// One-time codes and sessions, by the SHA-256 of their secret (the secrets are never kept).
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
    /// The last state computed per admin (its user key), with when: pages of one admin open in
    /// several tabs share one computation per second.
    recent: Mutex<HashMap<String, (std::time::Instant, serde_json::Value)>>,
    /// The control plane's context, once it is up (the HTTP port starts before NATS); weak, as
    /// the context holds these sessions (a strong link would keep both, and the store, alive).
    pub ctx: OnceLock<std::sync::Weak<Ctx>>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Grant>,
    live: HashMap<String, Grant>,
}

/// Whom a code or session stands for, until when.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The admin identity's user key (its record is read again at every request).
    pub admin_user: String,
    pub expires_at: i64,
}

fn digest(secret: &str) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(secret.as_bytes()))
}

fn secret() -> Result<String, ApiError> {
    Ok(data_encoding::BASE64URL_NOPAD.encode(&crate::crypto::random_bytes(32).map_err(ApiError::internal)?))
}

fn prune(m: &mut HashMap<String, Grant>, now: i64) {
    m.retain(|_, g| g.expires_at > now);
    while m.len() >= MAX_SESSIONS {
        let Some(oldest) = m.iter().min_by_key(|(_, g)| g.expires_at).map(|(k, _)| k.clone()) else { break };
        m.remove(&oldest);
    }
}

impl Sessions {
    /// The control plane's context, while it runs.
    pub fn ctx(&self) -> Option<Arc<Ctx>> {
        self.ctx.get().and_then(std::sync::Weak::upgrade)
    }

    /// A one-time code for `admin_user`.
    pub fn mint(&self, admin_user: &str, now: i64) -> Result<(String, i64), ApiError> {
        let code = secret()?;
        let expires_at = now + CODE_TTL;
        let mut g = self.inner.lock().map_err(|_| ApiError::internal("sessions lock"))?;
        prune(&mut g.pending, now);
        g.pending.insert(digest(&code), Grant { admin_user: admin_user.into(), expires_at });
        Ok((code, expires_at))
    }

    /// Use a one-time code (once): a new session's cookie value.
    pub fn redeem(&self, code: &str, now: i64) -> Option<(String, Grant)> {
        let mut g = self.inner.lock().ok()?;
        let grant = g.pending.remove(&digest(code)).filter(|p| p.expires_at > now)?;
        let cookie = secret().ok()?;
        prune(&mut g.live, now);
        let session = Grant { admin_user: grant.admin_user, expires_at: now + SESSION_TTL };
        g.live.insert(digest(&cookie), session.clone());
        Some((cookie, session))
    }

    /// The session a cookie value opens, if it is live.
    pub fn session(&self, cookie: &str, now: i64) -> Option<Grant> {
        let g = self.inner.lock().ok()?;
        g.live.get(&digest(cookie)).filter(|s| s.expires_at > now).cloned()
    }

    /// End a session.
    pub fn end(&self, cookie: &str) {
        if let Ok(mut g) = self.inner.lock() {
            g.live.remove(&digest(cookie));
        }
    }
}

/// `dashboard.session`: a one-time URL for the calling admin.
async fn session(ctx: &Ctx, caller: &IdentityRecord, _req: DashboardSessionRequest) -> Result<DashboardSessionReply, ApiError> {
    let now = ctx.estate.clock().now_unix();
    let (code, expires_at) = ctx.dashboard.mint(&caller.user_public_key, now)?;
    ctx.journal.record_relaxed(crate::audit::Entry::ok(&caller.id, "dashboard.session", "dashboard").detail(json!({ "expires_at": expires_at })));
    let base = ctx.estate.config.http_public_url.trim_end_matches('/');
    Ok(DashboardSessionReply { url: format!("{base}/dashboard/login?code={code}"), expires_at: rfc3339(expires_at) })
}

/// The admin a session stands for, if it may still act: active, not expired, an admin.
pub fn admin_of(ctx: &Ctx, grant: &Grant, now: i64) -> Option<IdentityRecord> {
    let rec = ctx.estate.identity(&grant.admin_user).ok().flatten()?;
    (rec.kind == IdentityKind::Admin && rec.state == IdentityState::Active && rec.expires_at > now).then_some(rec)
}

/// How long a computed state is served again to the same admin.
const STATE_REUSE: std::time::Duration = std::time::Duration::from_millis(900);

/// [`state`], computed at most once per 0.9 s for one admin.
pub async fn state_shared(ctx: &Ctx, admin: &IdentityRecord) -> Result<serde_json::Value, ApiError> {
    let key = admin.user_public_key.clone();
    if let Ok(m) = ctx.dashboard.recent.lock() {
        if let Some((at, v)) = m.get(&key) {
            if at.elapsed() < STATE_REUSE {
                return Ok(v.clone());
            }
        }
    }
    let v = state(ctx, admin).await?;
    if let Ok(mut m) = ctx.dashboard.recent.lock() {
        m.retain(|_, (at, _)| at.elapsed() < STATE_REUSE);
        m.insert(key, (std::time::Instant::now(), v.clone()));
    }
    Ok(v)
}

/// The dashboard's state as `admin` may see it (one JSON document; the page renders it).
pub async fn state(ctx: &Ctx, admin: &IdentityRecord) -> Result<serde_json::Value, ApiError> {
    let access: Access = admin.access();
    let e = &ctx.estate;
    let now = e.clock().now_unix();
    let ids: Vec<IdentityRecord> =
        e.identities().map_err(ApiError::from)?.into_iter().filter(|r| super::admin::sees_identity(&access, r)).collect();
    let state_of = |r: &IdentityRecord| super::admin::state_of(r, now);
    let count = |s: crate::proto::IdentityStatus| ids.iter().filter(|r| state_of(r) == s).count();
    let mut by_kind: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &ids {
        *by_kind.entry(r.kind.as_str()).or_default() += 1;
    }
    let mut live: Vec<&IdentityRecord> = ids.iter().filter(|r| state_of(r) == crate::proto::IdentityStatus::Active).collect();
    live.sort_by_key(|r| r.expires_at);
    let next_expiries: Vec<_> = live.iter().take(5).map(|r| json!({ "id": r.id, "expires_at": rfc3339(r.expires_at), "in_secs": r.expires_at - now })).collect();
    let identities: Vec<_> = ids
        .iter()
        .map(|r| {
            let s = r.service.as_ref();
            json!({
                "id": r.id, "kind": r.kind.as_str(), "name": r.name,
                "tenant": s.map(|s| s.tenant.as_str()), "project": s.map(|s| s.project.as_str()),
                "env": s.map(|s| s.env.as_str()), "service": s.map(|s| s.service.as_str()),
                "state": state_of(r).as_str(), "expires_at": rfc3339(r.expires_at), "last_renewal": rfc3339(r.issued_at),
                "user_public_key": r.user_public_key,
            })
        })
        .collect();
    let confined = access.confined();
    let sites = if confined { vec![] } else { super::sites::site_infos(ctx).await? };
    let rollout = if confined { None } else { super::ca::rollout_info(ctx).await? };
    let keys: Vec<_> = e
        .envelope_keys()
        .iter()
        .map(|k| json!({ "kid": k.kid, "state": k.state, "created_at": rfc3339(k.created_at), "retire_at": k.retire_at.map(rfc3339) }))
        .collect();
    let td = e.trust_domain().to_string();
    let a = access.clone();
    let tenant_of = move |r: &crate::audit::Record| {
        super::auditlog::tenant_of_record(&td, r).or_else(|| super::auditlog::record_tenant(&td, &r.actor)).map(str::to_string)
    };
    let sees = {
        let tenant_of = tenant_of.clone();
        let me = admin.id.clone();
        // Its tenants' records, and its own (its refusals name no tenant).
        move |r: &crate::audit::Record| !a.confined() || r.actor == me || tenant_of(r).is_some_and(|t| a.sees(&t))
    };
    let scan = if confined { 2_000 } else { 200 };
    let records = super::auditlog::last_records(ctx, 200, scan, None, sees).await?;
    let row = |r: &crate::audit::Record| json!({ "seq": r.seq, "time": r.time, "actor": r.actor, "action": r.action, "target": r.target, "outcome": r.outcome });
    let refused: Vec<&crate::audit::Record> = records.iter().filter(|r| r.outcome.starts_with("denied")).collect();
    let refusals: Vec<_> = refused.iter().filter(|r| !r.actor.starts_with("nats-server:")).rev().take(20).map(|r| row(r)).collect();
    let auth_failures: Vec<_> = refused.iter().filter(|r| r.actor.starts_with("nats-server:")).rev().take(20).map(|r| row(r)).collect();
    let audit: Vec<_> = records.iter().rev().take(30).map(row).collect();
    Ok(json!({
        "admin": { "id": admin.id, "name": admin.name, "role": access.role.as_str(), "tenants": access.tenants },
        "trust_domain": e.trust_domain(),
        "generated_at": rfc3339(now),
        "overview": {
            "identities": { "total": ids.len(), "active": count(crate::proto::IdentityStatus::Active),
                "revoked": count(crate::proto::IdentityStatus::Revoked), "expired": count(crate::proto::IdentityStatus::Expired), "by_kind": by_kind },
            "next_expiries": next_expiries,
            "ca": { "fingerprint": e.ca_fingerprint(), "expires_at": crate::issuer::x509::not_after(e.ca().cert_pem()).map(rfc3339).unwrap_or_default(),
                "cas": super::ca::ca_infos(e), "rollout": rollout },
            "signing_keys": keys,
        },
        "identities": identities,
        "sites": sites,
        "refusals": refusals,
        "auth_failures": auth_failures,
        "audit": audit,
    }))
}

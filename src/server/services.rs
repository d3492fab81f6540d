//! Handlers for service identities: join tokens, enrollment, renewal; pushing account JWTs;
//! revoking burned tokens' bootstrap users in batches.

use super::{After, Ctx};
use crate::error::{ApiError, ErrorCode};
use crate::estate::{AccountRecord, IdentityRecord, IdentityState, RoleRecord, SerialRecord, TILLIT_ACCOUNT};
use crate::estate::{MAX_TOKENS_PER_REQUEST, MAX_TOKEN_TTL_SECS};
use crate::identity::IdentityKind;
use crate::issuer::x509::{self, CsrError};
use crate::names::ServiceId;
use crate::proto::{EnrollRequest, IssuedReply, RenewRequest, TokenCreateReply, TokenCreateRequest};
use crate::store::{Batch, Space};
use crate::subjects;
use crate::telemetry::RequestLabels;
use crate::audit::Entry;
use crate::token::{check_token, TokenRefusal};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::mpsc;

/// The caller as nats-server stamps it on requests that cross a service import
/// (`Nats-Request-Info`, trustworthy from nats-server 2.12.6 on).
#[derive(Debug, Clone, Deserialize)]
pub struct RequestInfo {
    /// The requester's account (public key in operator mode).
    pub acc: String,
    /// The requester's user public key (JWT users).
    #[serde(default)]
    pub user: Option<String>,
}

/// Parse `Nats-Request-Info`, if present. nats-server stamps it when a request crosses a
/// service import, and then always rewrites the reply subject to one of its own (`_R_.…`); but
/// inside the TILLIT account nothing stops a publisher from sending the header itself. So a
/// header on a request whose reply is not a service-import reply was forged, and is refused.
pub fn request_info(msg: &async_nats::Message) -> Result<Option<RequestInfo>, ApiError> {
    let Some(h) = msg.headers.as_ref().and_then(|h| h.get(subjects::HDR_REQUEST_INFO)) else {
        return Ok(None);
    };
    if !msg.reply.as_deref().is_some_and(subjects::is_service_reply) {
        return Err(ApiError::unauthenticated("Nats-Request-Info on a request that did not cross a service import"));
    }
    serde_json::from_str(h.as_str())
        .map(Some)
        .map_err(|_| ApiError::bad_request("Nats-Request-Info header is malformed"))
}

/// An account's public key by name (it never changes; cached).
fn account_key(ctx: &Ctx, name: &str) -> Result<String, ApiError> {
    if let Some(k) = ctx.account_keys.read().ok().and_then(|m| m.get(name).cloned()) {
        return Ok(k);
    }
    let key = ctx.estate.account(name).map_err(ApiError::internal)?.public_key;
    if let Ok(mut m) = ctx.account_keys.write() {
        m.insert(name.to_string(), key.clone());
    }
    Ok(key)
}

/// A request must come from the signer's own account: through the service import (the server
/// stamps the account and user), or, for identities of the TILLIT account, from inside it.
pub fn check_request_origin(ctx: &Ctx, caller: &IdentityRecord, info: Option<&RequestInfo>) -> Result<(), ApiError> {
    let acct_key = account_key(ctx, &caller.account)?;
    match info {
        Some(i) => {
            if i.acc != acct_key {
                return Err(ApiError::unauthenticated("request was sent from another account than the signer's"));
            }
            if let Some(u) = &i.user {
                if u != &caller.user_public_key {
                    return Err(ApiError::unauthenticated("request was sent by another user than the signer"));
                }
            }
            Ok(())
        }
        None if caller.account == TILLIT_ACCOUNT => Ok(()),
        None => Err(ApiError::unauthenticated("request did not arrive through the tillit service import")),
    }
}

/// Push `acct`'s JWT (caller holds the account lock) and remember what the servers hold.
pub async fn push(ctx: &Ctx, acct: &AccountRecord, why: &str) -> Result<(), ApiError> {
    let r = super::push::push_account(&ctx.sys, &acct.name, &acct.jwt).await;
    let outcome = if r.is_ok() { "ok" } else { "error" };
    ctx.metrics.account_pushes.get_or_create(&RequestLabels { endpoint: why.into(), outcome: outcome.into() }).inc();
    match r {
        Ok(()) => {
            if let Ok(mut p) = ctx.pushed.lock() {
                p.insert(acct.name.clone(), acct.iat);
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!("{e}");
            Err(ApiError::new(ErrorCode::Unavailable, "could not update nats-server with the account; retry shortly"))
        }
    }
}

fn pushed_current(ctx: &Ctx, acct: &AccountRecord) -> bool {
    ctx.pushed.lock().map(|p| p.get(&acct.name) == Some(&acct.iat)).unwrap_or(false)
}

/// A service's account and role, as last pushed.
pub type RoleEntry = std::sync::Arc<(AccountRecord, RoleRecord)>;

/// The tenant account and role of `sid`, created and pushed if needed (cached in memory; every
/// change to either goes through here).
async fn ensure_role_pushed(ctx: &Ctx, sid: &ServiceId) -> Result<RoleEntry, ApiError> {
    if let Some(hit) = ctx.roles.read().ok().and_then(|m| m.get(sid).cloned()) {
        if pushed_current(ctx, &hit.0) {
            return Ok(hit);
        }
    }
    let e = &ctx.estate;
    let _g = e.account_lock().lock().await;
    let (acct, role, _changed) = e.ensure_role_locked(sid).map_err(|err| match err {
        crate::estate::EstateError::Name(n) => ApiError::bad_request(n.to_string()),
        other => ApiError::internal(other),
    })?;
    if !pushed_current(ctx, &acct) {
        push(ctx, &acct, "role").await?;
    }
    let entry = std::sync::Arc::new((acct, role));
    if let Ok(mut m) = ctx.roles.write() {
        m.insert(sid.clone(), entry.clone());
    }
    Ok(entry)
}

/// The TILLIT account (with the agents' scoped key pushed) for an agent of `site`, and its
/// durable consumer, ready before the token burns.
async fn agent_entry(ctx: &Ctx, site: &str, user_pub: &str) -> Result<RoleEntry, ApiError> {
    let e = &ctx.estate;
    if e.site(site).map_err(ApiError::internal)?.is_none() {
        return Err(ApiError::forbidden(format!("site {site} is not registered (tillit site add)")));
    }
    let acct = {
        let _g = e.account_lock().lock().await;
        let (acct, changed) = e.ensure_agent_role_locked().map_err(ApiError::internal)?;
        if changed || !pushed_current(ctx, &acct) {
            push(ctx, &acct, "agent_role").await?;
        }
        acct
    };
    let consumer = subjects::agent_consumer(site, user_pub);
    ctx.events.ensure_agent_consumer(&consumer, site).await.map_err(|err| {
        tracing::error!("cannot create the agent's consumer {consumer}: {err}");
        ApiError::new(ErrorCode::Unavailable, "could not create the agent's event consumer; retry shortly")
    })?;
    let sid = crate::estate::sites::agent_service_id(site).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let role = RoleRecord {
        account: acct.name.clone(),
        service: sid,
        key: e.agent_role().map_err(ApiError::internal)?.map(|r| r.key).unwrap_or_default(),
        permissions: crate::estate::sites::agent_permissions(),
        created_at: 0,
        updated_at: 0,
        previous: vec![],
    };
    Ok(std::sync::Arc::new((acct, role)))
}

fn csr_error(e: CsrError) -> ApiError {
    ApiError::bad_request(e.to_string())
}

fn issued_reply(ctx: &Ctx, rec: &IdentityRecord, acct: &AccountRecord, user_jwt: String, cert_pem: String) -> IssuedReply {
    let e = &ctx.estate;
    IssuedReply {
        id: rec.id.clone(),
        kind: rec.kind,
        name: rec.name.clone(),
        service: rec.service.clone(),
        trust_domain: e.trust_domain().to_string(),
        account: acct.name.clone(),
        account_public_key: acct.public_key.clone(),
        user_public_key: rec.user_public_key.clone(),
        inbox_prefix: match &rec.site {
            Some(site) => crate::estate::sites::agent_inbox_prefix(site, &rec.user_public_key),
            None => crate::estate::Estate::inbox_prefix(&rec.user_public_key),
        },
        user_jwt,
        cert_pem,
        ca_pem: e.ca_bundle_pem(),
        trust_jwks: e.trust_jwks(),
        nats_urls: e.config.urls(),
        ca_fingerprint: e.ca_fingerprint(),
        cert_serial: rec.cert_serial.clone(),
        issued_at_unix: rec.issued_at,
        expires_at_unix: rec.expires_at,
    }
}

// === token create ===

pub async fn token_create(ctx: &Ctx, caller: &IdentityRecord, req: TokenCreateRequest) -> Result<TokenCreateReply, ApiError> {
    if !(60..=MAX_TOKEN_TTL_SECS).contains(&req.ttl_secs) {
        return Err(ApiError::bad_request(format!("ttl must be between 60s and {}s", MAX_TOKEN_TTL_SECS)));
    }
    if !(1..=MAX_TOKENS_PER_REQUEST).contains(&req.count) {
        return Err(ApiError::bad_request(format!("count must be between 1 and {MAX_TOKENS_PER_REQUEST}")));
    }
    match crate::estate::sites::agent_site(&req.identity) {
        Some(site) if ctx.estate.site(site).map_err(ApiError::internal)?.is_none() => {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no site {site}; add it first with `tillit site add`")));
        }
        Some(_) => {}
        // A token for a new admin identity (`tillit admin add`).
        None if crate::estate::sites::admin_name(&req.identity).is_some() => {}
        None if req.identity.tenant == crate::estate::sites::AGENT_TENANT => {
            return Err(ApiError::bad_request(format!(
                "tenant {:?} is reserved for tillit itself; pick another tenant name",
                crate::estate::sites::AGENT_TENANT
            )));
        }
        None => {}
    }
    let estate = ctx.estate.clone();
    let by = caller.id.clone();
    let sid = req.identity.clone();
    let (tokens, batch) = tokio::task::spawn_blocking(move || estate.create_tokens(&sid, req.ttl_secs, req.count, &by))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let expires = tokens.first().map(|t| t.expires_at).unwrap_or_default();
    let ids: Vec<&str> = tokens.iter().map(|t| t.id.as_str()).collect();
    let entry = Entry::ok(&caller.id, "token.create", &req.identity.to_string())
        .detail(serde_json::json!({ "count": req.count, "expires_at": expires, "token_ids": ids }))
        .batch(batch);
    ctx.journal.record(entry).await.map_err(ApiError::internal)?;
    tracing::info!(identity = %req.identity, count = req.count, by = %caller.id, "join tokens created");
    Ok(TokenCreateReply {
        tokens: tokens.iter().map(|t| t.encode().expose().to_string()).collect(),
        identity: req.identity,
        expires_at: crate::clock::rfc3339(expires),
        expires_at_unix: expires,
    })
}

// === enroll ===

/// A token being enrolled with right now (held for the request).
struct Burning<'a> {
    ctx: &'a Ctx,
    id: String,
}

impl<'a> Burning<'a> {
    fn claim(ctx: &'a Ctx, id: &str) -> Option<Self> {
        let mut set = ctx.burning.lock().ok()?;
        set.insert(id.to_string()).then(|| Burning { ctx, id: id.to_string() })
    }
}

impl Drop for Burning<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.ctx.burning.lock() {
            set.remove(&self.id);
        }
    }
}

fn refusal(r: TokenRefusal, sid: &ServiceId) -> ApiError {
    match r {
        TokenRefusal::Invalid => ApiError::new(ErrorCode::TokenInvalid, "join token is not valid (unknown, forged or tampered with)"),
        TokenRefusal::Used => ApiError::new(ErrorCode::TokenUsed, "join token was already used; ask for a new one"),
        TokenRefusal::Expired => ApiError::new(ErrorCode::TokenExpired, "join token has expired; ask for a new one"),
        TokenRefusal::WrongIdentity => ApiError::forbidden(format!("join token is not for {sid}")),
    }
}

/// Check that a public xkey is well formed and not the all-zero key.
fn check_xkey(x: &str) -> Result<(), ApiError> {
    let bad = || ApiError::bad_request("xkey is not a valid curve25519 public key (X…)");
    nkeys::XKey::from_public_key(x).map_err(|_| bad())?;
    let raw = data_encoding::BASE32_NOPAD.decode(x.as_bytes()).map_err(|_| bad())?;
    if raw.len() != 35 {
        return Err(bad());
    }
    if raw[1..33].iter().all(|b| *b == 0) {
        return Err(ApiError::bad_request("xkey is the all-zero key"));
    }
    Ok(())
}

pub async fn enroll(
    ctx: &Ctx,
    user_pub: &str,
    info: Option<&RequestInfo>,
    req: EnrollRequest,
) -> Result<(IssuedReply, After), ApiError> {
    let e = &ctx.estate;
    let now = e.clock().now_unix();
    match info {
        Some(i) if i.acc == ctx.bootstrap_account => {}
        _ => return Err(ApiError::unauthenticated("enrollment must come from a join token's bootstrap connection")),
    }
    if req.token_id.len() > 64 || req.token_secret.len() > 128 {
        return Err(ApiError::new(ErrorCode::TokenInvalid, "join token is not valid (unknown, forged or tampered with)"));
    }
    let Some(tok) = e.token(&req.token_id).map_err(ApiError::internal)? else {
        return Err(refusal(TokenRefusal::Invalid, &req.identity));
    };
    check_token(
        &tok.secret_sha256,
        tok.state == crate::estate::TokenState::Used,
        tok.expires_at,
        &tok.identity,
        &req.token_secret,
        &req.identity,
        now,
    )
    .map_err(|r| refusal(r, &req.identity))?;
    if let Some(u) = info.and_then(|i| i.user.as_ref()) {
        if u != &tok.bootstrap_user {
            return Err(ApiError::forbidden("this connection is not the join token's bootstrap user"));
        }
    }
    check_xkey(&req.xkey)?;
    let csr_key = x509::parse_csr(&req.csr, user_pub).map_err(csr_error)?;
    if e.identity(user_pub).map_err(ApiError::internal)?.is_some() {
        return Err(ApiError::new(ErrorCode::Conflict, "this nkey is already enrolled; generate a new one"));
    }

    // Everything that can fail is done before the token burns.
    let sid = tok.identity.clone();
    let site = crate::estate::sites::agent_site(&sid).map(str::to_string);
    let admin = crate::estate::sites::admin_name(&sid).map(str::to_string);
    let (acct, role) = match (&site, &admin) {
        (Some(site), _) => (agent_entry(ctx, site, user_pub).await?.0.clone(), None),
        (None, Some(_)) => (e.account(TILLIT_ACCOUNT).map_err(ApiError::internal)?, None),
        (None, None) => {
            let entry = ensure_role_pushed(ctx, &sid).await?;
            (entry.0.clone(), Some(entry.1.clone()))
        }
    };
    let acct = &acct;
    let admin_id = admin.as_ref().map(|n| crate::names::spiffe_id(e.trust_domain(), &["tillit", "admin", n]));
    let issue = match (&site, &admin, &role) {
        (Some(site), _, _) => e.issue_agent(site, user_pub, &csr_key).map_err(ApiError::internal)?,
        (None, Some(name), _) => {
            let draft = IdentityRecord::admin(admin_id.as_deref().unwrap_or_default(), name, user_pub, "", 0, 0);
            e.reissue_admin(&draft, &csr_key).map_err(ApiError::internal)?
        }
        (None, None, Some(role)) => e.issue_service(acct, role, user_pub, &csr_key).map_err(ApiError::internal)?,
        (None, None, None) => return Err(ApiError::internal("no role for a service")),
    };
    // One enrollment per token: concurrent uses race here; the loser sees token_used.
    let _burning = Burning::claim(ctx, &tok.id).ok_or_else(|| refusal(TokenRefusal::Used, &sid))?;
    if e.token(&tok.id).map_err(ApiError::internal)?.map(|t| t.state) != Some(crate::estate::TokenState::Unused) {
        return Err(refusal(TokenRefusal::Used, &sid));
    }
    let rec = IdentityRecord {
        id: match (&site, &admin_id) {
            (Some(s), _) => crate::names::spiffe_id(e.trust_domain(), &["tillit", "site", s, "agent"]),
            (None, Some(id)) => id.clone(),
            (None, None) => sid.spiffe_id(e.trust_domain()),
        },
        kind: match (&site, &admin) {
            (Some(_), _) => IdentityKind::Agent,
            (None, Some(_)) => IdentityKind::Admin,
            (None, None) => IdentityKind::Service,
        },
        name: match (&site, &admin) {
            (Some(s), _) => subjects::agent_consumer(s, user_pub),
            (None, Some(n)) => n.clone(),
            (None, None) => sid.service.clone(),
        },
        account: acct.name.clone(),
        user_public_key: user_pub.to_string(),
        cert_serial: issue.serial.clone(),
        issued_at: issue.issued_at,
        expires_at: issue.expires_at,
        state: IdentityState::Active,
        service: admin.is_none().then(|| sid.clone()),
        xkey: Some(req.xkey.clone()),
        revoked_at: None,
        site: site.clone(),
        role_key: role.as_ref().map(|r| r.key.clone()),
        prev_role_key: None,
    };
    let mut b = Batch::new();
    b.put_json(Space::Identities, user_pub, &rec).map_err(ApiError::internal)?;
    if let Some(site) = &site {
        let st = crate::estate::sites::AgentStatus {
            site: site.clone(),
            user_public_key: user_pub.to_string(),
            consumer: rec.name.clone(),
            ..Default::default()
        };
        b.put_json(Space::Sites, format!("agent/{user_pub}"), &st).map_err(ApiError::internal)?;
    }
    b.put_json(Space::Tokens, &tok.id, &e.used_token(&tok, user_pub)).map_err(ApiError::internal)?;
    b.put_json(Space::Serials, &issue.serial, &SerialRecord::of_identity(user_pub, issue.expires_at))
        .map_err(ApiError::internal)?;
    // The token burn and the identity become durable together, with their audit record.
    let entry = Entry::ok(&rec.id, "enroll", &rec.id)
        .detail(serde_json::json!({ "user": user_pub, "serial": issue.serial, "token_id": tok.id, "expires_at": issue.expires_at }))
        .batch(b);
    ctx.journal.record(entry).await.map_err(ApiError::internal)?;
    ctx.metrics.identities.inc();
    ctx.metrics.issued("enroll");
    tracing::info!(identity = %rec.id, user = user_pub, serial = %issue.serial, "enrolled");
    Ok((issued_reply(ctx, &rec, acct, issue.user_jwt, issue.cert_pem), After::RevokeBootstrap(tok.bootstrap_user, tok.expires_at)))
}

// === renew ===

pub async fn renew(ctx: &Ctx, caller: &IdentityRecord, req: RenewRequest) -> Result<IssuedReply, ApiError> {
    let e = &ctx.estate;
    let csr_key = x509::parse_csr(&req.csr, &caller.user_public_key).map_err(csr_error)?;
    let acct = e.account(&caller.account).map_err(ApiError::internal)?;
    let mut role_key = None;
    let (jwt, cert_pem, serial, issued, expires) = match (caller.kind, &caller.service) {
        (IdentityKind::Service, Some(sid)) => {
            let entry = ensure_role_pushed(ctx, sid).await?;
            let i = e.issue_service(&entry.0, &entry.1, &caller.user_public_key, &csr_key).map_err(ApiError::internal)?;
            role_key = Some(entry.1.key.clone());
            (i.user_jwt, i.cert_pem, i.serial, i.issued_at, i.expires_at)
        }
        (IdentityKind::Admin, _) => {
            let i = e.reissue_admin(caller, &csr_key).map_err(ApiError::internal)?;
            (i.user_jwt, i.cert_pem, i.serial, i.issued_at, i.expires_at)
        }
        (IdentityKind::Agent, _) => {
            let site = caller.site.as_deref().ok_or_else(|| ApiError::internal("agent identity without a site"))?;
            if e.site(site).map_err(ApiError::internal)?.is_none() {
                return Err(ApiError::forbidden(format!("site {site} was removed; its agents cannot renew")));
            }
            let i = e.issue_agent(site, &caller.user_public_key, &csr_key).map_err(ApiError::internal)?;
            (i.user_jwt, i.cert_pem, i.serial, i.issued_at, i.expires_at)
        }
        _ => return Err(ApiError::forbidden("this kind of identity cannot renew here")),
    };
    let mut rec = caller.clone();
    if role_key.is_some() && role_key != rec.role_key {
        rec.prev_role_key = rec.role_key.take();
        rec.role_key = role_key;
    }
    rec.cert_serial = serial;
    rec.issued_at = issued;
    rec.expires_at = expires;
    let mut b = Batch::new();
    b.put_json(Space::Identities, &rec.user_public_key, &rec).map_err(ApiError::internal)?;
    b.put_json(Space::Serials, &rec.cert_serial, &SerialRecord::of_identity(&rec.user_public_key, rec.expires_at))
        .map_err(ApiError::internal)?;
    let entry = Entry::ok(&caller.id, "renew", &rec.id)
        .detail(serde_json::json!({ "user": rec.user_public_key, "serial": rec.cert_serial, "expires_at": rec.expires_at }))
        .batch(b);
    ctx.journal.record(entry).await.map_err(ApiError::internal)?;
    ctx.metrics.issued("renew");
    tracing::debug!(identity = %rec.id, user = %rec.user_public_key, "renewed");
    Ok(issued_reply(ctx, &rec, &acct, jwt, cert_pem))
}

// === bootstrap revocations ===

/// The live set of revoked bootstrap users and the last BOOTSTRAP JWT `iat` pushed.
pub struct Revocations {
    live: std::collections::BTreeMap<String, (i64, i64)>,
    last_iat: i64,
}

/// Load the live revocations from the token records and push them (serve start).
pub async fn start_revocations(ctx: &Ctx) -> Result<Revocations, ApiError> {
    let live = ctx.estate.live_bootstrap_revocations().map_err(ApiError::internal)?;
    let mut r = Revocations { live, last_iat: 0 };
    push_revocations(ctx, &mut r, "reconcile").await?;
    Ok(r)
}

async fn push_revocations(ctx: &Ctx, r: &mut Revocations, why: &str) -> Result<(), ApiError> {
    let now = ctx.estate.clock().now_unix();
    r.live.retain(|_, (_, exp)| *exp > now);
    let _g = ctx.estate.account_lock().lock().await;
    let acct = ctx.estate.sign_bootstrap(&r.live, r.last_iat).map_err(ApiError::internal)?;
    r.last_iat = acct.iat;
    push(ctx, &acct, why).await
}

/// Burned tokens' bootstrap users are revoked by pushing the BOOTSTRAP account with the live
/// revocations. Each push makes nats-server re-check every connection of that account (two user
/// JWT signature checks each), so pushes are spaced: the first revocation after a quiet spell is
/// pushed after [`REVOKE_SOON`], and while enrollments keep coming at most one push per
/// [`REVOKE_SPACING`]. Measured with 8,000 bootstrap connections open: one push a second took a
/// third of nats-server's CPU. A burned token's user can only ask for an enrollment the control
/// plane refuses (`token_used`), so these delays are a fair bound.
pub const REVOKE_SOON: Duration = Duration::from_millis(200);
pub const REVOKE_SPACING: Duration = Duration::from_secs(5);

/// When the next push may happen: soon after the first revocation, at least `spacing` after the
/// previous push.
fn next_push(first_at: tokio::time::Instant, last_push: Option<tokio::time::Instant>) -> tokio::time::Instant {
    let soon = first_at + REVOKE_SOON;
    match last_push {
        Some(p) => soon.max(p + REVOKE_SPACING),
        None => soon,
    }
}

/// Revoke burned tokens' bootstrap users, gathering those that arrive before the next allowed
/// push into one BOOTSTRAP account update.
pub async fn run_revoker(ctx: std::sync::Arc<Ctx>, mut r: Revocations, mut rx: mpsc::UnboundedReceiver<(String, i64)>) {
    let mut last_push = None;
    while let Some(first) = rx.recv().await {
        tokio::time::sleep_until(next_push(tokio::time::Instant::now(), last_push)).await;
        let now = ctx.estate.clock().now_unix();
        let mut n = 1;
        r.live.insert(first.0, (now, first.1));
        while let Ok((user, exp)) = rx.try_recv() {
            r.live.insert(user, (now, exp));
            n += 1;
        }
        last_push = Some(tokio::time::Instant::now());
        match push_revocations(&ctx, &mut r, "bootstrap_revocation").await {
            Ok(()) => tracing::debug!(count = n, live = r.live.len(), "bootstrap users revoked"),
            Err(e) => tracing::error!("cannot revoke bootstrap users: {}", e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_pushes_are_soon_after_quiet_and_spaced_under_load() {
        let t0 = tokio::time::Instant::now();
        assert_eq!(next_push(t0, None), t0 + REVOKE_SOON, "first ever: soon");
        let long_ago = t0 - Duration::from_secs(60);
        assert_eq!(next_push(t0, Some(long_ago)), t0 + REVOKE_SOON, "after a quiet spell: soon");
        let just_now = t0 - Duration::from_secs(1);
        assert_eq!(next_push(t0, Some(just_now)), just_now + REVOKE_SPACING, "under load: spaced");
    }

    #[test]
    fn xkeys_are_checked() {
        let x = nkeys::XKey::new();
        check_xkey(&x.public_key()).unwrap();
        assert!(check_xkey("XNOTAKEY").is_err());
        assert!(check_xkey(&nkeys::KeyPair::new_user().public_key()).is_err());
        // The all-zero curve25519 public key, properly encoded, is still refused.
        let encoded = encode_xkey_public(&[0u8; 32]);
        assert!(nkeys::XKey::from_public_key(&encoded).is_ok(), "the encoding itself is valid");
        assert!(check_xkey(&encoded).unwrap_err().message.contains("all-zero"), "{encoded}");
    }

    fn encode_xkey_public(raw: &[u8; 32]) -> String {
        // prefix byte for 'X' (curve) keys is 23 << 3; crc16 (xmodem) little endian; base32 no pad.
        let mut v = vec![23u8 << 3];
        v.extend_from_slice(raw);
        let crc = crc16(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        data_encoding::BASE32_NOPAD.encode(&v)
    }

    fn crc16(data: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for b in data {
            crc ^= (*b as u16) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            }
        }
        crc
    }
}
